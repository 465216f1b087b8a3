//! The outbound federation client: resolves a server name (Server-Server API, "Resolving
//! server names"), refuses private addresses unless allowed, signs every request with
//! X-Matrix, and maps answers to errors.
//!
//! Resolution: an IP literal or a name with an explicit port is used as is; a bare host
//! name is looked up at `https://<host>/.well-known/matrix/server` (cached). The
//! delegated name (or the host itself), when it has no port and is not an IP literal,
//! is looked up as SRV `_matrix-fed._tcp.<name>`, then the deprecated `_matrix._tcp`
//! (cached): a record gives the port, and its target's addresses are what the name
//! resolves to when we connect, so the URL, SNI, certificate check and Host header stay
//! the name, as the spec requires. Otherwise port 8448.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::signing_key::ServerKey;
use ganglion_core::config::FederationConfig;
use reqwest::Method;
use ruma::CanonicalJsonValue;
use serde_json::Value;

use crate::xmatrix;

/// Why an outbound request failed.
#[derive(Debug, thiserror::Error)]
pub enum FedError {
    /// The destination could not be reached (DNS, connection, TLS, timeout).
    #[error("{destination} is unreachable: {reason}")]
    Unreachable {
        /// The server.
        destination: String,
        /// Why.
        reason: String,
    },
    /// The destination resolves only to addresses we refuse to call.
    #[error("{0} resolves to a private address, which federation.allow_private_addresses forbids")]
    PrivateAddress(String),
    /// The destination answered with an error.
    #[error("{destination} answered {status}: {body}")]
    Remote {
        /// The server.
        destination: String,
        /// HTTP status.
        status: u16,
        /// Its JSON body (an `errcode` and `error`, usually).
        body: Value,
    },
    /// The destination answered something that is not what the spec says.
    #[error("{destination} answered badly: {reason}")]
    BadResponse {
        /// The server.
        destination: String,
        /// What was wrong.
        reason: String,
    },
    /// The server name is not one.
    #[error("not a server name: {0}")]
    BadServerName(String),
}

impl From<FedError> for ganglion_core::Error {
    fn from(e: FedError) -> Self {
        use ganglion_core::{Error, ErrorKind};
        match &e {
            FedError::Remote { status: 404, .. } => Error::not_found(e.to_string()),
            FedError::Remote { status: 403, .. } => Error::forbidden(e.to_string()),
            FedError::BadServerName(_) => Error::invalid_param(e.to_string()),
            _ => Error::new(ErrorKind::Unavailable, e.to_string()),
        }
    }
}

/// Makes sure one rustls crypto provider (ring) is installed for the process.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Whether outbound federation must refuse to call `ip` (loopback, private, link-local,
/// shared, unspecified, multicast and documentation ranges).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// Resolves names for reqwest, dropping addresses federation may not call.
#[derive(Debug)]
struct Guarded {
    allow_private: bool,
    /// Names found through SRV: name → the record's target host.
    srv_targets: Arc<Mutex<HashMap<String, String>>>,
    /// Test mode (`federation.dns_server`): addresses come from that server too.
    dns: Option<hickory_resolver::TokioResolver>,
}

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        let host = self
            .srv_targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&host)
            .cloned()
            .unwrap_or(host);
        let dns = self.dns.clone();
        Box::pin(async move {
            let found: Vec<SocketAddr> = match dns {
                Some(dns) => dns
                    .lookup_ip(host.as_str())
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?
                    .iter()
                    .map(|ip| SocketAddr::new(ip, 0))
                    .collect(),
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            let addrs: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| allow_private || !is_private(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{host}: no address federation may call"),
                ))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An SRV record's target host and port.
type SrvTarget = (String, u16);

/// The resolver for SRV lookups: the system's, or (test mode) one DNS server.
fn dns_resolver(server: Option<&str>) -> Result<Option<hickory_resolver::TokioResolver>, String> {
    use hickory_resolver::{
        config::{ConnectionConfig, NameServerConfig, ResolverConfig},
        net::runtime::TokioRuntimeProvider,
    };
    let built = match server {
        Some(addr) => {
            let addr: SocketAddr = addr
                .parse()
                .map_err(|e| format!("federation.dns_server {addr}: {e}"))?;
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            hickory_resolver::TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            )
            .build()
        }
        None => match hickory_resolver::TokioResolver::builder_tokio() {
            Ok(b) => b.build(),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS configuration: SRV lookups are off");
                return Ok(None);
            }
        },
    };
    match built {
        Ok(r) => Ok(Some(r)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the DNS resolver: SRV lookups are off");
            Ok(None)
        }
    }
}

/// A server name split into host and optional port.
fn split_server_name(name: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = name.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((ip, port));
    }
    match name.rsplit_once(':') {
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((name, None)),
    }
}

/// How long a `.well-known` answer (or its absence) is trusted.
const WELL_KNOWN_TTL: Duration = Duration::from_secs(3600);

/// The outbound client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FederationClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    key: Arc<ServerKey>,
    origin: String,
    allow_private: bool,
    well_known: Mutex<HashMap<String, (Option<String>, Instant)>>,
    /// SRV answers: name → (port and target, or none), cached.
    srv: Mutex<HashMap<String, (Option<SrvTarget>, Instant)>>,
    /// Shared with the connector's resolver.
    srv_targets: Arc<Mutex<HashMap<String, String>>>,
    /// `None` when no DNS configuration could be read (SRV lookups are then skipped).
    dns: Option<hickory_resolver::TokioResolver>,
}

impl FederationClient {
    /// A client signing as `origin` with `key`.
    pub fn new(
        config: &FederationConfig,
        key: Arc<ServerKey>,
        origin: &str,
    ) -> Result<FederationClient, String> {
        install_crypto_provider();
        let srv_targets = Arc::new(Mutex::new(HashMap::new()));
        let dns = dns_resolver(config.dns_server.as_deref())?;
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("Ganglion/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(config.request_timeout_secs.max(1)))
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(Guarded {
                allow_private: config.allow_private_addresses,
                srv_targets: srv_targets.clone(),
                dns: dns.clone().filter(|_| config.dns_server.is_some()),
            }));
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("federation.ca_file {path}: {e}"))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("federation.ca_file {path}: {e}"))?;
            builder = builder.tls_certs_only(certs);
        }
        let http = builder
            .build()
            .map_err(|e| format!("federation client: {e}"))?;
        Ok(FederationClient {
            inner: Arc::new(Inner {
                http,
                key,
                origin: origin.to_owned(),
                allow_private: config.allow_private_addresses,
                well_known: Mutex::new(HashMap::new()),
                srv: Mutex::new(HashMap::new()),
                srv_targets,
                dns,
            }),
        })
    }

    /// Our server name.
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// Our signing key.
    pub fn key(&self) -> &ServerKey {
        &self.inner.key
    }

    /// `https://host:port` for a destination (see the module docs).
    pub async fn base_url(&self, destination: &str) -> Result<String, FedError> {
        let (host, port) = split_server_name(destination)
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| FedError::BadServerName(destination.to_owned()))?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            if !self.inner.allow_private && is_private(ip) {
                return Err(FedError::PrivateAddress(destination.to_owned()));
            }
            let shown = if ip.is_ipv6() {
                format!("[{ip}]")
            } else {
                ip.to_string()
            };
            return Ok(format!("https://{shown}:{}", port.unwrap_or(8448)));
        }
        if let Some(p) = port {
            return Ok(format!("https://{host}:{p}"));
        }
        let delegated = self.well_known(host).await;
        // The delegated name (or the host itself) with its port, its SRV port, or 8448.
        let (name, port) = match delegated.as_deref().and_then(split_server_name) {
            Some((h, p)) if !h.is_empty() => (h.to_owned(), p),
            _ => (host.to_owned(), None),
        };
        if let Some(p) = port {
            return Ok(format!("https://{name}:{p}"));
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            if !self.inner.allow_private && is_private(ip) {
                return Err(FedError::PrivateAddress(destination.to_owned()));
            }
            return Ok(format!("https://{name}:8448"));
        }
        match self.srv(&name).await {
            Some((target, port)) => {
                self.inner
                    .srv_targets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.clone(), target);
                Ok(format!("https://{name}:{port}"))
            }
            None => Ok(format!("https://{name}:8448")),
        }
    }

    /// The SRV record of a name (`_matrix-fed._tcp`, then `_matrix._tcp`): its target
    /// and port, the lowest priority first (then the highest weight). Cached.
    async fn srv(&self, name: &str) -> Option<SrvTarget> {
        {
            let cache = self.inner.srv.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((v, at)) = cache.get(name)
                && at.elapsed() < WELL_KNOWN_TTL
            {
                return v.clone();
            }
        }
        let dns = self.inner.dns.as_ref()?;
        let mut found = None;
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let Ok(lookup) = dns.srv_lookup(format!("{service}.{name}.")).await else {
                continue;
            };
            let best = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::SRV(srv) => Some(srv.clone()),
                    _ => None,
                })
                .min_by_key(|s| (s.priority, std::cmp::Reverse(s.weight)));
            if let Some(s) = best {
                let target = s.target.to_utf8();
                let target = target.trim_end_matches('.').to_owned();
                // "." means the service is not offered.
                if !target.is_empty() {
                    found = Some((target, s.port));
                }
                break;
            }
        }
        self.inner
            .srv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), (found.clone(), Instant::now()));
        found
    }

    /// The `m.server` of `https://<host>/.well-known/matrix/server`, cached.
    async fn well_known(&self, host: &str) -> Option<String> {
        {
            let cache = self
                .inner
                .well_known
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some((v, at)) = cache.get(host)
                && at.elapsed() < WELL_KNOWN_TTL
            {
                return v.clone();
            }
        }
        let found = async {
            let r = self
                .inner
                .http
                .get(format!("https://{host}/.well-known/matrix/server"))
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .ok()?;
            if !r.status().is_success() {
                return None;
            }
            let bytes = r.bytes().await.ok()?;
            if bytes.len() > 64 * 1024 {
                return None;
            }
            let v: Value = serde_json::from_slice(&bytes).ok()?;
            v.get("m.server")?
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        }
        .await;
        self.inner
            .well_known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_owned(), (found.clone(), Instant::now()));
        found
    }

    /// A signed GET; `path` includes the query string, percent-encoded as sent.
    pub async fn get(&self, destination: &str, path: &str) -> Result<Value, FedError> {
        self.request(Method::GET, destination, path, None).await
    }

    /// A signed request with an optional JSON body; returns the JSON answer.
    pub async fn request(
        &self,
        method: Method,
        destination: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, FedError> {
        let base = self.base_url(destination).await?;
        let content = match body {
            Some(b) => Some(CanonicalJsonValue::try_from(b.clone()).map_err(|e| {
                FedError::BadResponse {
                    destination: destination.to_owned(),
                    reason: format!("our own request body is not canonical JSON: {e}"),
                }
            })?),
            None => None,
        };
        let auth = xmatrix::sign(
            &self.inner.key.pair,
            &self.inner.origin,
            destination,
            method.as_str(),
            path,
            content,
        )
        .map_err(|e| FedError::BadResponse {
            destination: destination.to_owned(),
            reason: format!("signing failed: {e}"),
        })?;
        let mut req = self
            .inner
            .http
            .request(method, format!("{base}{path}"))
            .header(reqwest::header::AUTHORIZATION, auth);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| FedError::Unreachable {
            destination: destination.to_owned(),
            reason: error_chain(&e),
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| FedError::Unreachable {
            destination: destination.to_owned(),
            reason: error_chain(&e),
        })?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(FedError::Remote {
                destination: destination.to_owned(),
                status,
                body: value,
            });
        }
        if value.is_null() {
            return Err(FedError::BadResponse {
                destination: destination.to_owned(),
                reason: "the answer is not JSON".into(),
            });
        }
        Ok(value)
    }
}

/// An error with its sources, for logs ("error sending request: … : connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.0.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(
                is_private(ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))),
                "{ip}"
            );
        }
        for ip in ["1.1.1.1", "8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert!(
                !is_private(ip.parse().unwrap_or(IpAddr::from([127, 0, 0, 1]))),
                "{ip}"
            );
        }
    }

    #[test]
    fn server_names_split_into_host_and_port() {
        assert_eq!(
            split_server_name("example.org"),
            Some(("example.org", None))
        );
        assert_eq!(
            split_server_name("localhost:8448"),
            Some(("localhost", Some(8448)))
        );
        assert_eq!(split_server_name("[::1]:80"), Some(("::1", Some(80))));
        assert_eq!(split_server_name("[::1]"), Some(("::1", None)));
        assert_eq!(split_server_name("host:notaport"), None);
        assert_eq!(split_server_name("[::1]x"), None);
    }

    #[tokio::test]
    async fn private_destinations_are_refused_unless_allowed() {
        let key = Arc::new(crate::test_key());
        let strict = FederationClient::new(&FederationConfig::default(), key.clone(), "us.test")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            strict.base_url("127.0.0.1:8448").await,
            Err(FedError::PrivateAddress(_))
        ));
        assert!(matches!(
            strict.base_url("[::1]").await,
            Err(FedError::PrivateAddress(_))
        ));
        // A name that resolves only to loopback: the resolver drops every address.
        match strict
            .get("localhost:9", "/_matrix/federation/v1/version")
            .await
        {
            Err(FedError::Unreachable { reason, .. }) => {
                assert!(
                    reason.contains("no address federation may call"),
                    "{reason}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let open = FederationClient::new(
            &FederationConfig {
                allow_private_addresses: true,
                ..FederationConfig::default()
            },
            key,
            "us.test",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            open.base_url("127.0.0.1:8448").await.ok().as_deref(),
            Some("https://127.0.0.1:8448")
        );
        assert_eq!(
            open.base_url("localhost:8008").await.ok().as_deref(),
            Some("https://localhost:8008")
        );
        assert!(matches!(
            open.base_url(":80").await,
            Err(FedError::BadServerName(_))
        ));
    }
}
