//! federation: the Server-Server API (spec: Server-Server API; docs/architecture.md,
//! Federation).
//!
//! - [`server`]: the inbound endpoints (keys, transactions, joins, leaves, knocks,
//!   invites, the room reads, backfill, queries), with [`acl`] for server ACLs;
//! - [`join`]: the outbound membership handshakes;
//! - [`sender`]: outbound transactions, in-process or as `ganglion-federation-sender`;
//! - [`listener`]: the TLS listener.
//!
//! Signing keys, the key ring, X-Matrix, PDU signature checks and the outbound client
//! live below `rooms`, in `federation-client`.
//!
//! What is not built yet is listed in docs/architecture.md (Federation).

pub mod acl;
pub mod directory;
pub mod join;
pub mod listener;
pub mod openid;
mod params;
pub mod sender;
pub mod server;
pub mod spaces;
pub mod timestamp;

pub use ganglion_federation_client::{FedError, FederationClient, KeyRing};

/// What the client API needs to reach other servers: the client, the key ring, our key.
#[derive(Clone, Debug)]
pub struct Federation {
    /// The outbound client.
    pub client: FederationClient,
    /// Remote keys.
    pub keys: KeyRing,
    /// Our signing key.
    pub key: std::sync::Arc<ganglion_federation_client::ServerKey>,
}
pub use server::{FederationApi, router};

impl Federation {
    /// Resolves another server's room alias (`/query/directory`): the room and the
    /// servers to join it through (the alias's own server last).
    pub async fn query_directory(
        &self,
        alias: &ruma::RoomAliasId,
    ) -> Result<(ruma::OwnedRoomId, Vec<String>), ganglion_core::Error> {
        let path = format!(
            "/_matrix/federation/v1/query/directory?room_alias={}",
            ganglion_core::percent::percent_encode(alias.as_str())
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
            ganglion_core::percent::percent_encode(user_id.as_str())
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
