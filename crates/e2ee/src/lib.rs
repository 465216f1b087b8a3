//! e2ee: end-to-end encryption support on the server side. Device keys, one-time and
//! fallback keys, cross-signing keys and signatures, send-to-device messages, the
//! device-list stream, server-side key backup and dehydrated devices; each a service,
//! with the thin Client-Server handlers that call it (spec: Client-Server API,
//! "End-to-End Encryption", "Send-to-Device messaging", "Server-side key backups";
//! MSC3814).
//!
//! Depends on `core`, `storage`, `bus`, `rooms` (stream writers), `http`,
//! `account-api` (user-interactive auth for replacing cross-signing keys) and
//! `federation-client` (other servers' users' keys, `remote`). Holds no SQL:
//! every statement is a `Store` method. Must NOT know about `/sync` (the sync crate reads
//! what these services write, and serves `/keys/changes` beside `/sync`) or the
//! federation listener.

pub mod backup;
pub mod dehydrated;
mod device_cache;
pub mod keys;
mod remote;
mod routes;
pub mod signing;
pub mod to_device;

use axum::Router;
use ganglion_account_api::Accounts;

pub use keys::Keys;
pub use to_device::ToDevice;

/// The state every e2ee handler receives.
#[derive(Clone, Debug)]
pub struct E2eeApi {
    /// Device, one-time, fallback and cross-signing keys.
    pub keys: Keys,
    /// Send-to-device messages.
    pub to_device: ToDevice,
    /// User-interactive auth (replacing cross-signing keys).
    pub accounts: Accounts,
    /// Server-side key backups.
    pub backup: backup::Backup,
    /// Dehydrated devices (MSC3814).
    pub dehydrated: dehydrated::Dehydrated,
}

/// Every e2ee route, with state applied.
pub fn router(api: E2eeApi) -> Router {
    let r = Router::new();
    let r = routes::routes(r);
    let r = backup::routes(r);
    r.with_state(api)
}
