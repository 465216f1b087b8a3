//! main's internal listener and the workers' forwarding to it (docs/architecture.md,
//! "Roles and shapes": internal calls from a worker to main go over a private HTTP
//! listener authenticated with a shared secret, never on the public port).
//!
//! A worker answers what it serves; any other request that reaches it (a write sent to
//! the wrong place by a proxy without the route table, or a client talking to a worker
//! directly) is forwarded to main's internal listener with the secret and the client's
//! address, and main's answer goes back unchanged. main's internal listener serves the
//! same routes as its public one, behind the secret, and trusts the forwarded address.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderName, HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use ganglion_core::{Error, ErrorKind};
use ganglion_http::{ApiError, ClientIp};

/// The header carrying the shared secret.
pub const SECRET_HEADER: &str = "x-ganglion-internal-secret";

/// Refuses every request to the internal listener without the secret (403 M_FORBIDDEN).
pub fn require_secret(app: Router, secret: &str) -> Router {
    let secret: Arc<[u8]> = secret.as_bytes().into();
    app.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
        let secret = secret.clone();
        async move {
            let given = req
                .headers()
                .get(SECRET_HEADER)
                .map(HeaderValue::as_bytes)
                .unwrap_or_default();
            if constant_time_eq(given, &secret) {
                next.run(req).await
            } else {
                tracing::warn!(path = %req.uri().path(), "internal listener: missing or wrong secret");
                ApiError(Error::forbidden("internal listener: bad or missing secret"))
                    .into_response()
            }
        }
    }))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Forwards requests a worker does not serve to main.
#[derive(Clone, Debug)]
pub struct Forwarder {
    client: reqwest::Client,
    base: Arc<str>,
    secret: Arc<str>,
    body_limit: usize,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those the forwarder sets itself.
fn forwardable(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | "x-forwarded-for"
            | SECRET_HEADER
    )
}

impl Forwarder {
    /// A forwarder to `base` (main's internal URL).
    pub fn new(base: &str, secret: &str, body_limit: usize) -> Result<Forwarder, String> {
        ganglion_federation_client::client::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Above the longest request main holds open (a long-poll is at most 120 s
            // behind the proxy).
            .timeout(Duration::from_secs(180))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cluster.main_internal_url: cannot build a client: {e}"))?;
        Ok(Forwarder {
            client,
            base: base.trim_end_matches('/').into(),
            secret: secret.into(),
            body_limit,
        })
    }

    /// The fallback handler of a worker's router.
    pub async fn handle(State(f): State<Forwarder>, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, f.body_limit).await else {
            return ApiError(Error::new(ErrorKind::TooLarge, "request body too large"))
                .into_response();
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut out = f
            .client
            .request(parts.method.clone(), format!("{}{path}", f.base))
            .header(SECRET_HEADER, &*f.secret)
            .body(bytes);
        for (name, value) in &parts.headers {
            if forwardable(name) {
                out = out.header(name, value);
            }
        }
        if let Some(ClientIp(ip)) = parts.extensions.get::<ClientIp>() {
            out = out.header("x-forwarded-for", ip.to_string());
        }
        let resp = match out.send().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, %path, "forwarding to main failed");
                metrics::counter!("ganglion_forwarded_requests_total", "outcome" => "failed")
                    .increment(1);
                return ApiError(Error::new(
                    ErrorKind::Unavailable,
                    "the main process is unreachable; try again",
                ))
                .into_response();
            }
        };
        metrics::counter!("ganglion_forwarded_requests_total", "outcome" => "ok").increment(1);
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, %path, "reading main's answer failed");
                return ApiError(Error::new(
                    ErrorKind::Unavailable,
                    "the main process's answer was cut off; try again",
                ))
                .into_response();
            }
        };
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        for (name, value) in &headers {
            if forwardable(name) && name != header::ACCESS_CONTROL_ALLOW_ORIGIN {
                response.headers_mut().append(name, value.clone());
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdef", b"0123456789abcdeg"));
        assert!(!constant_time_eq(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        assert!(forwardable(&header::AUTHORIZATION));
        assert!(forwardable(&header::CONTENT_TYPE));
        assert!(!forwardable(&header::CONNECTION));
        assert!(!forwardable(&HeaderName::from_static(SECRET_HEADER)));
        assert!(!forwardable(&header::HOST));
    }
}
