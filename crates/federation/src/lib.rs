//! federation: the Server-Server API (spec: Server-Server API; docs/architecture.md,
//! Federation).
//!
//! - [`server`]: the inbound endpoints (keys, transactions, joins, leaves, knocks,
//!   invites, the room reads, backfill, queries), with [`acl`] for server ACLs;
//! - [`e2ee`]: our users' device and one-time keys and device lists for other servers
//!   (the `Keys` service of `e2ee` does the work);
//! - [`listener`]: the TLS listener.
//!
//! Signing keys, the key ring, X-Matrix, PDU signature checks and the outbound client
//! live below `rooms`, in `federation-client`; outbound transactions in
//! `federation-sender`.
//!
//! What is not built yet is listed in docs/architecture.md (Federation).

pub mod acl;
pub mod directory;
pub mod e2ee;
pub mod listener;
pub mod openid;
mod params;
pub mod server;
pub mod spaces;
pub mod timestamp;

pub use server::{FederationApi, router};
