//! federation: the Server-Server API (ARCHITECTURE §6).
//!
//! - [`xmatrix`]: request authentication (signing, parsing, verifying `X-Matrix`);
//! - [`client`]: the outbound client (server-name resolution, private-address guard,
//!   signed requests, test-mode CA);
//! - [`keys`]: our published key document and the key ring for remote keys;
//! - [`server`]: the inbound endpoints built so far (keys, version, profile and
//!   directory queries);
//! - [`listener`]: the TLS listener.
//!
//! Not built yet (they answer 404 `M_UNRECOGNIZED`): transactions, joins, invites,
//! backfill, state and event reads, and the federation sender.

pub mod client;
pub mod invite;
pub mod join;
pub mod keys;
pub mod listener;
pub mod pdu;
pub mod sender;
pub mod server;
pub mod xmatrix;

pub use client::{FedError, FederationClient};
pub use keys::KeyRing;

/// What the client API needs to reach other servers: the client, the key ring, our key.
#[derive(Clone, Debug)]
pub struct Federation {
    /// The outbound client.
    pub client: FederationClient,
    /// Remote keys.
    pub keys: KeyRing,
    /// Our signing key.
    pub key: std::sync::Arc<ganglion_rooms::ServerKey>,
}
pub use server::{FederationApi, router};

/// A fresh signing key in a temporary file, for unit tests.
#[cfg(test)]
pub(crate) fn test_key() -> ganglion_rooms::ServerKey {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "ganglion-fedkey-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    ganglion_rooms::ServerKey::load_or_generate(&path.display().to_string())
        .unwrap_or_else(|e| panic!("{e}"))
}
