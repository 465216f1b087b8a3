//! The configuration: one TOML file, every key also settable from the environment as
//! `GANGLION_<SECTION>__<KEY>` (loading lives in the server crate; this is the shape).
//!
//! Every section denies unknown keys, so a typo is refused at start with its name.
//! Defaults are the all-in-one newcomer setup: SQLite under `./data`, listening on
//! 127.0.0.1:8008 as `localhost:8008`, registration closed (as in Synapse).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Identity of the server.
    pub server: ServerConfig,
    /// Network listeners.
    pub listeners: ListenersConfig,
    /// The database.
    pub database: DatabaseConfig,
    /// Account registration.
    pub registration: RegistrationConfig,
    /// Access and refresh tokens.
    pub auth: AuthConfig,
    /// Request rate limits.
    pub rate_limits: RateLimitsConfig,
    /// Logging.
    pub logging: LoggingConfig,
    /// The replication bus.
    pub bus: BusConfig,
    /// The processes of the split shape: instance names, the internal listener's secret,
    /// membership leases.
    pub cluster: ClusterConfig,
    /// Federation (the Server-Server API).
    pub federation: FederationConfig,
    /// Push notifications.
    pub push: PushConfig,
    /// Per-process sections, `[processes.<instance>]`: the role and listeners of the
    /// process started with that instance name (`--instance`, or `cluster.instance`).
    pub processes: std::collections::BTreeMap<String, ProcessConfig>,
}

/// `[cluster]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This process's instance name: unique among live processes (a Kubernetes pod name
    /// is a good one). Unset: `<role>-<host name>-<pid>`.
    pub instance: Option<String>,
    /// The secret workers present to main's internal listener (`listeners.internal`).
    /// Required when that listener is on; at least 16 characters.
    pub internal_secret: Option<String>,
    /// Where workers reach main's internal listener, e.g. `http://ganglion-main:8090`.
    /// Set on workers: a request a worker does not serve is forwarded there instead of
    /// being answered 404.
    pub main_internal_url: Option<String>,
    /// How often a process renews its membership lease, in milliseconds.
    pub heartbeat_ms: u64,
    /// How long a lease outlives its last renewal, in milliseconds: a process that dies
    /// without leaving is dropped from its role's membership after this long.
    pub lease_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            instance: None,
            internal_secret: None,
            main_internal_url: None,
            heartbeat_ms: 1_000,
            lease_ms: 5_000,
        }
    }
}

/// `[federation]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Serve the Server-Server API on `listeners.federation` and talk to other servers.
    pub enabled: bool,
    /// PEM certificate chain of the federation listener (TLS is terminated here).
    pub tls_certificate_path: Option<String>,
    /// PEM private key of the federation listener.
    pub tls_private_key_path: Option<String>,
    /// Test mode: trust only the CA certificates in this PEM file for outbound requests
    /// (instead of the system's roots).
    pub ca_file: Option<String>,
    /// Let outbound requests reach loopback, private and link-local addresses (off by
    /// default, so that no remote server can make us call our own network).
    pub allow_private_addresses: bool,
    /// How long the keys we publish are valid, in seconds (remote servers cache them
    /// that long).
    pub key_valid_secs: u64,
    /// Timeout of one outbound request, in seconds.
    pub request_timeout_secs: u64,
    /// Notaries asked for a server's keys when the server itself cannot be reached
    /// (`/_matrix/key/v2/query`). Empty by default: no third party is trusted unless named.
    pub trusted_key_servers: Vec<String>,
    /// Keys this server signed with before a rotation, still published as
    /// `old_verify_keys` so that what they signed stays verifiable:
    /// `[federation.old_signing_keys."ed25519:abc"]` with `key` (unpadded base64 public
    /// key) and `expired_ts` (ms).
    pub old_signing_keys: std::collections::BTreeMap<String, OldSigningKey>,
    /// Outbound transactions are sent by `ganglion-federation-sender` processes, which
    /// share the destinations among themselves; main sends none. Off: main (or the single
    /// binary) sends them itself.
    pub sender_workers: bool,
    /// Test mode: send the SRV lookups of server discovery to this DNS server
    /// (`ip:port`) instead of the system's resolvers.
    pub dns_server: Option<String>,
}

/// A retired signing key (`[federation.old_signing_keys."<key id>"]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OldSigningKey {
    /// The public key, unpadded base64.
    pub key: String,
    /// When it stopped being used (ms since the epoch).
    pub expired_ts: i64,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            tls_certificate_path: None,
            tls_private_key_path: None,
            ca_file: None,
            allow_private_addresses: false,
            key_valid_secs: 86_400,
            request_timeout_secs: 30,
            trusted_key_servers: Vec::new(),
            old_signing_keys: std::collections::BTreeMap::new(),
            sender_workers: false,
            dns_server: None,
        }
    }
}

/// `[processes.<instance>]`: what differs between the processes that share one file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// `main`, `sync`, `federation-sender` or `all`; a worker binary refuses a section
    /// naming another role.
    pub role: Option<String>,
    /// The client API listener of this process.
    pub client: Option<SocketAddr>,
    /// Its metrics listener.
    pub metrics: Option<SocketAddr>,
    /// Its internal listener (main only).
    pub internal: Option<SocketAddr>,
}

/// `[bus]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// Redis URL (`redis://host:port`) for the Redis Streams bus. Unset: the in-process
    /// bus, which is all a single process needs.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    pub key_prefix: String,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            key_prefix: "ganglion".into(),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The server name: the domain part of user ids and room aliases (e.g. `example.org`).
    pub server_name: String,
    /// The public URL clients use, advertised in `/.well-known/matrix/client`.
    /// Defaults to `http://<client listener>/`.
    pub public_baseurl: Option<String>,
    /// Directory for the signing key and, by default, the SQLite database.
    pub data_dir: String,
    /// Path of the ed25519 signing key; generated on first start if missing.
    /// Defaults to `<data_dir>/signing.key`.
    pub signing_key_path: Option<String>,
    /// Room version for new rooms when the client names none.
    pub default_room_version: String,
    /// Largest request body accepted by the client API, in bytes.
    pub max_request_bytes: usize,
    /// How long shutdown waits for in-flight requests, in seconds.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            server_name: "localhost:8008".into(),
            public_baseurl: None,
            data_dir: "data".into(),
            signing_key_path: None,
            default_room_version: "11".into(),
            max_request_bytes: 1024 * 1024,
            shutdown_grace_secs: 10,
        }
    }
}

/// `[listeners]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenersConfig {
    /// Address of the public client API listener (plain HTTP; put TLS in front).
    pub client: SocketAddr,
    /// Address of the Prometheus metrics listener; empty string or absent disables it.
    pub metrics: Option<SocketAddr>,
    /// Whether the client listener sits behind a reverse proxy that sets
    /// `X-Forwarded-For`; the client IP (rate limits, device list) is then taken from it.
    pub x_forwarded: bool,
    /// main's private listener for calls from workers (authenticated with
    /// `cluster.internal_secret`; never expose it publicly). Unset: off.
    pub internal: Option<SocketAddr>,
    /// The federation listener (TLS; `federation.enabled`), e.g. `0.0.0.0:8448`.
    pub federation: Option<SocketAddr>,
}

impl Default for ListenersConfig {
    fn default() -> Self {
        Self {
            client: SocketAddr::from(([127, 0, 0, 1], 8008)),
            metrics: None,
            x_forwarded: false,
            internal: None,
            federation: None,
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://user@host:port/db`. Defaults to `sqlite://<data_dir>/ganglion.db`.
    pub url: Option<String>,
    /// Largest number of pooled connections (PostgreSQL; SQLite uses one writer plus readers).
    pub max_connections: u32,
    /// Seconds to wait for a free connection before failing a request with 503.
    pub acquire_timeout_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
            acquire_timeout_secs: 10,
        }
    }
}

/// `[push]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Whether push rules are evaluated when events are persisted (unread counts,
    /// `/notifications`). On by default; off, nobody is notified of anything.
    pub enabled: bool,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig { enabled: true }
    }
}

/// `[registration]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// Whether anyone may register (`m.login.dummy`). Off by default, as in Synapse.
    pub enabled: bool,
    /// Whether registration needs an `m.login.registration_token` (tokens are managed by
    /// admins at `/_synapse/admin/v1/registration_tokens`). Implies `enabled` for holders.
    pub requires_token: bool,
    /// Shared secret for `/_synapse/admin/v1/register` (nonce + HMAC-SHA1, as Synapse).
    /// Absent disables that endpoint.
    pub shared_secret: Option<String>,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of access tokens issued with a refresh token, in seconds.
    pub refreshable_access_token_lifetime_secs: u64,
    /// Minimum password length for new passwords.
    pub min_password_length: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            refreshable_access_token_lifetime_secs: 300,
            min_password_length: 0,
        }
    }
}

/// A token bucket: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once.
    pub burst: f64,
}

/// `[rate_limits]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Master switch; off makes every limit below unlimited (benchmarks, tests).
    pub enabled: bool,
    /// Event sends per user.
    pub message: RateLimit,
    /// Registrations per client IP.
    pub registration: RateLimit,
    /// Login attempts per client IP.
    pub login: RateLimit,
    /// Room creations and joins per user.
    pub rooms: RateLimit,
    /// Every request per client IP (a coarse flood guard).
    pub per_ip: RateLimit,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            message: RateLimit {
                per_second: 0.2,
                burst: 10.0,
            },
            registration: RateLimit {
                per_second: 0.17,
                burst: 3.0,
            },
            login: RateLimit {
                per_second: 0.17,
                burst: 3.0,
            },
            rooms: RateLimit {
                per_second: 0.5,
                burst: 10.0,
            },
            per_ip: RateLimit {
                per_second: 100.0,
                burst: 500.0,
            },
        }
    }
}

/// `[logging]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,ganglion_rooms=debug`.
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration value that parses but cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid value for `{key}`: {reason}")]
pub struct InvalidConfig {
    /// The dotted key, e.g. `server.server_name`.
    pub key: &'static str,
    /// Why it is refused.
    pub reason: String,
}

impl Config {
    /// Checks what serde cannot: values that parse but would not work.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let bad = |key, reason: &str| {
            Err(InvalidConfig {
                key,
                reason: reason.to_owned(),
            })
        };
        if ruma::ServerName::parse(&self.server.server_name).is_err() {
            return bad("server.server_name", "not a valid Matrix server name");
        }
        if ruma::RoomVersionId::try_from(self.server.default_room_version.as_str())
            .ok()
            .and_then(|v| v.rules())
            .is_none()
        {
            return bad(
                "server.default_room_version",
                "not a supported room version",
            );
        }
        if let Some(url) = &self.database.url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            return bad("database.url", "must start with sqlite: or postgres://");
        }
        if let Some(url) = &self.bus.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return bad("bus.redis_url", "must start with redis:// or rediss://");
        }
        if self.bus.key_prefix.is_empty() {
            return bad("bus.key_prefix", "must not be empty");
        }
        if self.database.max_connections == 0 {
            return bad("database.max_connections", "must be at least 1");
        }
        if self.server.max_request_bytes < 65_536 {
            return bad("server.max_request_bytes", "must be at least 65536");
        }
        for (key, limit) in [
            ("rate_limits.message", self.rate_limits.message),
            ("rate_limits.registration", self.rate_limits.registration),
            ("rate_limits.login", self.rate_limits.login),
            ("rate_limits.rooms", self.rate_limits.rooms),
            ("rate_limits.per_ip", self.rate_limits.per_ip),
        ] {
            if !(limit.per_second > 0.0 && limit.burst >= 1.0) {
                return bad(key, "per_second must be > 0 and burst >= 1");
            }
        }
        if self.listeners.internal.is_some()
            && self
                .cluster
                .internal_secret
                .as_ref()
                .is_none_or(|s| s.len() < 16)
        {
            return bad(
                "cluster.internal_secret",
                "listeners.internal needs a secret of at least 16 characters",
            );
        }
        if self.federation.enabled {
            if self.listeners.federation.is_none() {
                return bad(
                    "listeners.federation",
                    "federation.enabled needs the federation listener",
                );
            }
            if self.federation.tls_certificate_path.is_none()
                || self.federation.tls_private_key_path.is_none()
            {
                return bad(
                    "federation.tls_certificate_path",
                    "the federation listener needs a certificate and its private key",
                );
            }
        }
        for name in &self.federation.trusted_key_servers {
            if ruma::ServerName::parse(name).is_err() {
                return bad("federation.trusted_key_servers", "not a server name");
            }
        }
        for (id, k) in &self.federation.old_signing_keys {
            if !id.starts_with("ed25519:") || k.key.is_empty() {
                return bad(
                    "federation.old_signing_keys",
                    "keys are \"ed25519:<version>\" = { key = \"<base64>\", expired_ts = <ms> }",
                );
            }
        }
        if let Some(url) = &self.cluster.main_internal_url {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return bad("cluster.main_internal_url", "must be an http(s) URL");
            }
            if self.cluster.internal_secret.is_none() {
                return bad(
                    "cluster.internal_secret",
                    "cluster.main_internal_url needs the internal secret",
                );
            }
        }
        if self.cluster.heartbeat_ms == 0 || self.cluster.lease_ms < 2 * self.cluster.heartbeat_ms {
            return bad(
                "cluster.lease_ms",
                "heartbeat_ms must be > 0 and lease_ms at least twice heartbeat_ms",
            );
        }
        if let Some(name) = &self.cluster.instance
            && !valid_instance(name)
        {
            return bad(
                "cluster.instance",
                "1 to 64 characters of a-z, A-Z, 0-9, '-', '_', '.'",
            );
        }
        for (name, p) in &self.processes {
            if !valid_instance(name) {
                return bad(
                    "processes",
                    "instance names are 1 to 64 characters of a-z, A-Z, 0-9, '-', '_', '.'",
                );
            }
            if let Some(role) = &p.role
                && !["all", "main", "sync", "federation-sender"].contains(&role.as_str())
            {
                return bad(
                    "processes.<instance>.role",
                    "one of all, main, sync, federation-sender",
                );
            }
        }
        if let Some(url) = &self.server.public_baseurl
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return bad("server.public_baseurl", "must be an http(s) URL");
        }
        Ok(())
    }

    /// Takes the `[processes.<instance>]` section of `instance` (if any) into the
    /// listeners and records the instance name; returns the role it names.
    pub fn select_process(&mut self, instance: &str) -> Option<String> {
        self.cluster.instance = Some(instance.to_owned());
        let p = self.processes.get(instance)?.clone();
        if let Some(a) = p.client {
            self.listeners.client = a;
        }
        if p.metrics.is_some() {
            self.listeners.metrics = p.metrics;
        }
        if p.internal.is_some() {
            self.listeners.internal = p.internal;
        }
        p.role
    }

    /// The database URL, defaulting to a SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        self.database
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}/ganglion.db", self.server.data_dir))
    }

    /// The signing key path, defaulting to `<data_dir>/signing.key`.
    pub fn signing_key_path(&self) -> String {
        self.server
            .signing_key_path
            .clone()
            .unwrap_or_else(|| format!("{}/signing.key", self.server.data_dir))
    }
}

/// Instance names go into Redis keys, database rows and metric labels.
fn valid_instance(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().expect("defaults are valid");
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = Config::default();
        c.server.server_name = "not a name".into();
        assert_eq!(c.validate().expect_err("refused").key, "server.server_name");
        let mut c = Config::default();
        c.server.default_room_version = "99".into();
        assert_eq!(
            c.validate().expect_err("refused").key,
            "server.default_room_version"
        );
        let mut c = Config::default();
        c.database.url = Some("mysql://x".into());
        assert_eq!(c.validate().expect_err("refused").key, "database.url");
        let mut c = Config::default();
        c.listeners.internal = Some(SocketAddr::from(([127, 0, 0, 1], 8090)));
        assert_eq!(
            c.validate().expect_err("refused").key,
            "cluster.internal_secret"
        );
        c.cluster.internal_secret = Some("0123456789abcdef".into());
        c.validate().expect("a 16-character secret is enough");
        let mut c = Config::default();
        c.cluster.instance = Some("sync 1".into());
        assert_eq!(c.validate().expect_err("refused").key, "cluster.instance");
        let mut c = Config::default();
        c.processes.insert(
            "fed-1".into(),
            ProcessConfig {
                role: Some("federation".into()),
                ..Default::default()
            },
        );
        assert_eq!(
            c.validate().expect_err("refused").key,
            "processes.<instance>.role"
        );
    }

    #[test]
    fn a_process_section_overrides_listeners_and_names_the_role() {
        let mut c = Config::default();
        c.listeners.metrics = Some(SocketAddr::from(([127, 0, 0, 1], 9000)));
        c.processes.insert(
            "sync-2".into(),
            ProcessConfig {
                role: Some("sync".into()),
                client: Some(SocketAddr::from(([127, 0, 0, 1], 8102))),
                ..Default::default()
            },
        );
        let mut other = c.clone();
        assert_eq!(c.select_process("sync-2").as_deref(), Some("sync"));
        assert_eq!(c.listeners.client.port(), 8102);
        assert_eq!(c.listeners.metrics.map(|a| a.port()), Some(9000));
        assert_eq!(c.cluster.instance.as_deref(), Some("sync-2"));
        assert_eq!(other.select_process("sync-9"), None);
        assert_eq!(other.listeners.client.port(), 8008);
        assert_eq!(other.cluster.instance.as_deref(), Some("sync-9"));
    }
}
