//! Fake remote homeservers: one TLS listener on 127.0.0.1 per server, named `localhost:PORT`
//! (its certificate, for "localhost", comes from the test CA, so one certificate serves every
//! port). Each answers only what a target needs from a remote server during the benchmark:
//!
//! - `GET /_matrix/key/v2/server[/{keyId}]`: its signed key document;
//! - `PUT /_matrix/federation/v1/send/{txnId}`: records the arrival time and PDUs of the
//!   transaction (handed to the scenario over a channel) and answers `{"pdus":{}}` at once,
//!   so that no target ever backs off or waits on us;
//! - `POST /_matrix/federation/v1/get_missing_events/{roomId}`: the events it sent (those
//!   the scenario registered with [`FakeServer::remember`]) before the latest ones asked
//!   for, walking prev_events back to the earliest ones the target has. Synapse asks when it
//!   takes a staged event before its prev_event (it orders its staging area by arrival
//!   millisecond, so events of one transaction can tie);
//! - `GET /_matrix/federation/v1/version`, and empty device lists and keys for its users;
//! - anything else: 404 `M_UNRECOGNIZED` (counted and reported).
//!
//! Request signatures of the targets are not checked: the fakes are measuring instruments, and
//! both targets sign their requests anyway.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::identity::Identity;
use crate::Result;

/// Largest request body a fake accepts (a transaction is at most 50 PDUs of 64 KiB and 100
/// EDUs; real ones are far smaller).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// A transaction as it reached a fake server.
pub struct Arrival {
    /// Which fake server (its index in the scenario's list).
    pub server: usize,
    /// When its body had been read in full.
    pub at: Instant,
    /// Its PDUs.
    pub pdus: Vec<Value>,
}

/// What a fake server was asked, for the report.
#[derive(Default)]
pub struct Stats {
    /// `PUT /send` transactions.
    pub transactions: AtomicU64,
    /// PDUs in them.
    pub pdus: AtomicU64,
    /// EDUs in them.
    pub edus: AtomicU64,
    /// Key document requests.
    pub key_requests: AtomicU64,
    /// `get_missing_events` requests, and the events returned by them.
    pub missing_events_requests: AtomicU64,
    pub missing_events_returned: AtomicU64,
    /// Requests answered 404 `M_UNRECOGNIZED`, and their paths (without queries).
    pub unknown: AtomicU64,
    unknown_paths: Mutex<BTreeSet<String>>,
}

impl Stats {
    /// Up to 10 distinct paths that were answered 404.
    pub fn unknown_paths(&self) -> Vec<String> {
        self.unknown_paths
            .lock()
            .map(|p| p.iter().take(10).cloned().collect())
            .unwrap_or_default()
    }
}

/// One running fake server. Its listener stops when this is dropped.
pub struct FakeServer {
    pub identity: Arc<Identity>,
    pub stats: Arc<Stats>,
    sent: Arc<Mutex<HashMap<String, Value>>>,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// Keeps a PDU this server sends, by event id, for `get_missing_events`.
    pub fn remember(&self, event_id: &str, pdu: &Value) {
        if let Ok(mut sent) = self.sent.lock() {
            sent.insert(event_id.to_owned(), pdu.clone());
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The rustls server configuration of every fake, from PEM files made by
/// tests/federation/make-ca.sh.
pub fn tls_config(cert_path: &str, key_path: &str) -> Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("{cert_path}: {e}"))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("{cert_path}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| format!("{key_path}: {e}"))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // Synapse offers no ALPN and Ganglion's client speaks HTTP/1.1: HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// State shared by one server's connections.
struct Shared {
    index: usize,
    identity: Arc<Identity>,
    stats: Arc<Stats>,
    sent: Arc<Mutex<HashMap<String, Value>>>,
    // Unbounded: a full channel would make the fake answer the target late, which is the
    // one thing it must not do. The scenario drains it all the time, and the number of
    // transactions a run can cause is bounded by its messages.
    arrivals: mpsc::UnboundedSender<Arrival>,
}

/// Starts fake server number `index` on a free loopback port.
pub async fn start(
    index: usize,
    tls: Arc<rustls::ServerConfig>,
    arrivals: mpsc::UnboundedSender<Arrival>,
) -> Result<FakeServer> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let identity = Arc::new(Identity::generate(&format!("localhost:{port}"))?);
    let stats = Arc::new(Stats::default());
    let sent = Arc::new(Mutex::new(HashMap::new()));
    let shared = Arc::new(Shared {
        index,
        identity: identity.clone(),
        stats: stats.clone(),
        sent: sent.clone(),
        arrivals,
    });
    let acceptor = TlsAcceptor::from(tls);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(FakeServer {
        identity,
        stats,
        sent,
        task,
    })
}

/// The answer to `get_missing_events`: from each of `latest_events`, the chain of
/// prev_events this server sent, back to (not including) any of `earliest_events`, at most
/// `limit` (default 10) events, oldest first.
fn missing_events(shared: &Shared, ask: &Value) -> Vec<Value> {
    let ids = |k: &str| -> Vec<String> {
        ask.get(k)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let earliest: BTreeSet<String> = ids("earliest_events").into_iter().collect();
    let limit = ask
        .get("limit")
        .and_then(Value::as_u64)
        .map_or(10, |l| l.min(100) as usize);
    let Ok(sent) = shared.sent.lock() else {
        return Vec::new();
    };
    let prev_of = |pdu: &Value| -> Vec<String> {
        pdu.get("prev_events")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = ids("latest_events")
        .iter()
        .filter_map(|id| sent.get(id))
        .flat_map(prev_of)
        .collect();
    while let Some(id) = todo.pop() {
        if out.len() >= limit || earliest.contains(&id) || !seen.insert(id.clone()) {
            continue;
        }
        if let Some(pdu) = sent.get(&id) {
            todo.extend(prev_of(pdu));
            out.push(pdu.clone());
        }
    }
    out.sort_by_key(|p| p.get("depth").and_then(Value::as_i64).unwrap_or(0));
    out
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, p)
            if p == "/_matrix/key/v2/server" || p.starts_with("/_matrix/key/v2/server/") =>
        {
            shared.stats.key_requests.fetch_add(1, Ordering::Relaxed);
            reply(StatusCode::OK, shared.identity.key_document())
        }
        (&Method::PUT, p) if p.starts_with("/_matrix/federation/v1/send/") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        &json!({"errcode": "M_BAD_JSON", "error": "unreadable body"}),
                    );
                }
            };
            let at = Instant::now();
            let Ok(txn) = serde_json::from_slice::<Value>(&body) else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    &json!({"errcode": "M_NOT_JSON", "error": "not JSON"}),
                );
            };
            let pdus = txn
                .get("pdus")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let edus = txn
                .get("edus")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let stats = &shared.stats;
            stats.transactions.fetch_add(1, Ordering::Relaxed);
            stats.pdus.fetch_add(pdus.len() as u64, Ordering::Relaxed);
            stats.edus.fetch_add(edus as u64, Ordering::Relaxed);
            if !pdus.is_empty() {
                let _ = shared.arrivals.send(Arrival {
                    server: shared.index,
                    at,
                    pdus,
                });
            }
            reply(StatusCode::OK, &json!({"pdus": {}}))
        }
        (&Method::POST, p) if p.starts_with("/_matrix/federation/v1/get_missing_events/") => {
            let Ok(body) = Limited::new(req.into_body(), MAX_BODY).collect().await else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    &json!({"errcode": "M_BAD_JSON", "error": "unreadable body"}),
                );
            };
            let ask: Value = serde_json::from_slice(&body.to_bytes()).unwrap_or_default();
            let events = missing_events(shared, &ask);
            let stats = &shared.stats;
            stats
                .missing_events_requests
                .fetch_add(1, Ordering::Relaxed);
            stats
                .missing_events_returned
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            reply(StatusCode::OK, &json!({ "events": events }))
        }
        (&Method::GET, "/_matrix/federation/v1/version") => reply(
            StatusCode::OK,
            &json!({"server": {"name": "ganglion-loadgen", "version": env!("CARGO_PKG_VERSION")}}),
        ),
        (&Method::GET, p) if p.starts_with("/_matrix/federation/v1/user/devices/") => {
            let user = crate::client::dec(&p["/_matrix/federation/v1/user/devices/".len()..]);
            reply(
                StatusCode::OK,
                &json!({"user_id": user, "stream_id": 0, "devices": []}),
            )
        }
        (&Method::POST, "/_matrix/federation/v1/user/keys/query") => {
            reply(StatusCode::OK, &json!({"device_keys": {}}))
        }
        (&Method::GET, "/_matrix/federation/v1/query/profile") => reply(
            StatusCode::NOT_FOUND,
            &json!({"errcode": "M_NOT_FOUND", "error": "no profile"}),
        ),
        _ => {
            shared.stats.unknown.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut p) = shared.stats.unknown_paths.lock() {
                p.insert(format!("{method} {path}"));
            }
            reply(
                StatusCode::NOT_FOUND,
                &json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}),
            )
        }
    }
}
