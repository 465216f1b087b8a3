//! federation: the Server-Server API (ARCHITECTURE §6).
//!
//! - [`xmatrix`]: request authentication (signing, parsing, verifying `X-Matrix`);
//! - [`client`]: the outbound client (server-name resolution with `.well-known` and SRV,
//!   private-address guard, signed requests, test-mode CA and DNS server);
//! - [`keys`]: our published key document and the key ring for remote keys;
//! - [`server`]: the inbound endpoints (keys, transactions, joins, leaves, knocks,
//!   invites, the room reads, backfill, queries), with [`acl`] for server ACLs;
//! - [`join`], [`invite`], [`history`]: the outbound membership handshakes, invites and
//!   history fetching;
//! - [`sender`]: outbound transactions, in-process or as `ganglion-federation-sender`;
//! - [`listener`]: the TLS listener.
//!
//! What is not built yet is listed in docs/architecture.md (Federation).

pub mod acl;
pub mod client;
pub mod directory;
pub mod history;
pub mod invite;
pub mod join;
pub mod keys;
pub mod listener;
pub mod openid;
mod params;
pub mod pdu;
pub mod sender;
pub mod server;
pub mod spaces;
pub mod timestamp;
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

impl Federation {
    /// Resolves another server's room alias (`/query/directory`): the room and the
    /// servers to join it through (the alias's own server last).
    pub async fn query_directory(
        &self,
        alias: &ruma::RoomAliasId,
    ) -> Result<(ruma::OwnedRoomId, Vec<String>), ganglion_core::Error> {
        let path = format!(
            "/_matrix/federation/v1/query/directory?room_alias={}",
            ganglion_http::percent_encode(alias.as_str())
        );
        let v = self.client.get(alias.server_name().as_str(), &path).await?;
        let room_id = v
            .get("room_id")
            .and_then(serde_json::Value::as_str)
            .and_then(|r| ruma::OwnedRoomId::try_from(r).ok())
            .ok_or_else(|| ganglion_core::Error::not_found("the alias's server gave no room id"))?;
        let mut servers: Vec<String> = v
            .get("servers")
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(serde_json::Value::as_str)
                    .filter(|s| ruma::ServerName::parse(s).is_ok())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let own = alias.server_name().to_string();
        if !servers.contains(&own) {
            servers.push(own);
        }
        Ok((room_id, servers))
    }

    /// Another server's user's profile (`/query/profile`): display name and avatar.
    pub async fn query_profile(
        &self,
        user_id: &ruma::UserId,
    ) -> Result<(Option<String>, Option<String>), ganglion_core::Error> {
        let path = format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            ganglion_http::percent_encode(user_id.as_str())
        );
        let v = self
            .client
            .get(user_id.server_name().as_str(), &path)
            .await?;
        let field = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        Ok((field("displayname"), field("avatar_url")))
    }
}
