//! The federation listener: TLS (rustls, ring) terminated here, HTTP/1.1 and HTTP/2 by
//! ALPN, keep-alive, the federation router behind it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use ganglion_core::{Error, ErrorKind};
use ganglion_http::ApiError;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use ganglion_federation_client::client::install_crypto_provider;

/// The rustls server configuration from PEM files.
pub fn tls_config(cert_path: &str, key_path: &str) -> Result<rustls::ServerConfig, String> {
    install_crypto_provider();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("federation.tls_certificate_path {cert_path}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("federation.tls_certificate_path {cert_path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "federation.tls_certificate_path {cert_path}: no certificate in it"
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("federation.tls_private_key_path {key_path}: {e}"))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("federation TLS: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The router with the spec's answers for unknown endpoints and wrong methods.
pub fn with_fallbacks(router: Router) -> Router {
    router
        .fallback(|| async {
            ApiError(Error::new(ErrorKind::Unrecognized, "Unrecognized request"))
        })
        .method_not_allowed_fallback(|| async {
            ApiError(Error::new(
                ErrorKind::MethodNotAllowed,
                "Unrecognized request",
            ))
        })
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("federation handler panicked");
                axum::response::IntoResponse::into_response(ApiError(Error::internal(
                    "handler panicked",
                )))
            },
        ))
}

/// Serves `router` over TLS on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    router: Router,
    stop: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let router = with_fallbacks(router);
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "federation listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "federation TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let service = router.map_request(move |mut req: axum::http::Request<_>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req
            });
            let builder = Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(
                TokioIo::new(tls),
                TowerToHyperService::new(service),
            );
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "federation connection ended with an error");
                    }
                }
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                }
            }
        });
    }
}
