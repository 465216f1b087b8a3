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
}

impl Default for ListenersConfig {
    fn default() -> Self {
        Self {
            client: SocketAddr::from(([127, 0, 0, 1], 8008)),
            metrics: None,
            x_forwarded: false,
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
        if let Some(url) = &self.server.public_baseurl
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return bad("server.public_baseurl", "must be an http(s) URL");
        }
        Ok(())
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
    }
}
