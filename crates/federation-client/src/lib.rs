//! federation-client: everything Ganglion needs to call other servers, below every
//! service that calls them (spec: Server-Server API).
//!
//! - [`signing_key`]: our ed25519 signing key ([`ServerKey`]), which signs events and
//!   requests;
//! - [`keys`]: our published key document and the [`KeyRing`] that fetches, verifies,
//!   caches and expires other servers' keys (directly, then through notaries);
//! - [`xmatrix`]: request authentication (signing, parsing, verifying `X-Matrix`);
//! - [`pdu`]: checking a PDU another server sent (reference-hash id, signatures,
//!   content hash);
//! - [`client`]: the signed outbound HTTP client ([`FederationClient`]): server-name
//!   resolution with `.well-known` and SRV, private-address guard, test-mode CA and DNS
//!   server;
//! - [`wakers`]: ending the back-off from a destination that has just contacted us.
//!
//! Depends on `core` and `storage` (for `server_signing_keys`) only. It must NOT depend
//! on `rooms`, `http` or any crate above them, serve HTTP, or know what a request is for:
//! the services that call other servers (rooms, e2ee, the sender, the inbound API) build
//! their own paths and bodies and read the answers.

pub mod client;
pub mod keys;
pub mod pdu;
pub mod signing_key;
pub mod wakers;
pub mod xmatrix;

pub use client::{FedError, FederationClient};
pub use keys::KeyRing;
/// The HTTP method of a [`FederationClient::request`], so callers need no reqwest of
/// their own.
pub use reqwest::Method;
pub use signing_key::{KeyError, ServerKey};
pub use wakers::Wakers;

/// A fresh signing key in a temporary file, for unit tests.
#[cfg(test)]
pub(crate) fn test_key() -> ServerKey {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "ganglion-fedkey-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    ServerKey::load_or_generate(&path.display().to_string()).unwrap_or_else(|e| panic!("{e}"))
}

/// What a service needs to reach other servers: the signed client, and the key ring to
/// check what they send back. Cheap to clone; services hold `Option<Federation>`, `None`
/// where federation is off.
#[derive(Clone, Debug)]
pub struct Federation {
    /// The outbound client (it holds our signing key: [`FederationClient::key`]).
    pub client: FederationClient,
    /// Remote keys.
    pub keys: KeyRing,
}
