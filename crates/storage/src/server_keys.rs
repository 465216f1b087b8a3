//! Remote servers' verified signing keys.

use crate::{Result, Store};

/// One verified key of a remote server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKeyRow {
    /// The server.
    pub server_name: String,
    /// `ed25519:<version>`.
    pub key_id: String,
    /// Unpadded base64 public key.
    pub public_key: String,
    /// Signatures made up to this time (ms) may be checked with it.
    pub valid_until_ts: i64,
    /// When we fetched it (ms).
    pub fetched_ts: i64,
    /// The signed key document it came from.
    pub key_json: String,
}

impl Store {
    /// Stores verified keys (a later fetch replaces an earlier one's validity).
    pub async fn upsert_server_keys(&self, keys: &[ServerKeyRow]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin("upsert_server_keys").await?;
        for k in keys {
            sqlx::query(
                "INSERT INTO server_signing_keys (server_name, key_id, public_key, valid_until_ts, fetched_ts, key_json)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (server_name, key_id) DO UPDATE SET
                     public_key = $3, valid_until_ts = $4, fetched_ts = $5, key_json = $6",
            )
            .bind(&k.server_name)
            .bind(&k.key_id)
            .bind(&k.public_key)
            .bind(k.valid_until_ts)
            .bind(k.fetched_ts)
            .bind(&k.key_json)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await
    }

    /// Every stored key of a server.
    pub async fn select_server_keys(&self, server_name: &str) -> Result<Vec<ServerKeyRow>> {
        let rows: Vec<(String, String, String, i64, i64, String)> = sqlx::query_as(
            "SELECT server_name, key_id, public_key, valid_until_ts, fetched_ts, key_json
             FROM server_signing_keys WHERE server_name = $1 ORDER BY key_id",
        )
        .bind(server_name)
        .fetch_all(self.reader())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ServerKeyRow {
                server_name: r.0,
                key_id: r.1,
                public_key: r.2,
                valid_until_ts: r.3,
                fetched_ts: r.4,
                key_json: r.5,
            })
            .collect())
    }
}
