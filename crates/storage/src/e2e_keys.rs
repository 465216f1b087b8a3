//! End-to-end encryption keys: device keys, one-time and fallback keys, cross-signing keys
//! and uploaded signatures. Every key is the JSON text the client sent, unchanged.

use sqlx::AssertSqlSafe;

use crate::{Error, Result, Store, flag, placeholders};

/// A device's keys as `/keys/query` returns them.
#[derive(Debug, Clone)]
pub struct DeviceKeysRow {
    /// The owner.
    pub user_id: String,
    /// The device.
    pub device_id: String,
    /// The signed `device_keys` object, as uploaded.
    pub key_json: String,
    /// The device's display name (for `unsigned.device_display_name`).
    pub display_name: Option<String>,
}

/// A one-time or fallback key to store: (algorithm, key id, key JSON).
pub type NewKey = (String, String, String);

/// A signature to store: (target user, target key id, signer user, signer key id, signature).
pub type SignatureRow = (String, String, String, String, String);

impl Store {
    /// Stores a device's identity keys. Returns whether they differ from what was stored
    /// (so the owner's device list changed).
    pub async fn upsert_device_keys(
        &self,
        user_id: &str,
        device_id: &str,
        key_json: &str,
    ) -> Result<bool> {
        let mut tx = self.begin("upsert_device_keys").await?;
        let old: Option<(String,)> = sqlx::query_as(
            "SELECT key_json FROM e2e_device_keys WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_optional(tx.conn())
        .await?;
        if old.as_ref().is_some_and(|(j,)| j == key_json) {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO e2e_device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(key_json)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The device keys of `users`, with each device's display name; only devices that
    /// still exist.
    pub async fn select_device_keys(&self, users: &[String]) -> Result<Vec<DeviceKeysRow>> {
        let mut out = Vec::new();
        // Bounded IN lists: SQLite allows 32,766 parameters, PostgreSQL 65,535.
        for chunk in users.chunks(500) {
            let sql = format!(
                "SELECT k.user_id, k.device_id, k.key_json, d.display_name
                 FROM e2e_device_keys k JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id
                 WHERE k.user_id IN {} ORDER BY k.user_id, k.device_id",
                placeholders(1, chunk.len())
            );
            let mut q =
                sqlx::query_as::<_, (String, String, String, Option<String>)>(AssertSqlSafe(sql));
            for u in chunk {
                q = q.bind(u);
            }
            out.extend(q.fetch_all(self.reader()).await?.into_iter().map(
                |(user_id, device_id, key_json, display_name)| DeviceKeysRow {
                    user_id,
                    device_id,
                    key_json,
                    display_name,
                },
            ));
        }
        Ok(out)
    }

    /// Stores one-time keys. A key id already stored with the same content is skipped; one
    /// stored with other content refuses the whole upload with [`Error::Conflict`] naming
    /// the key, and nothing is stored.
    pub async fn insert_one_time_keys(
        &self,
        user_id: &str,
        device_id: &str,
        keys: &[NewKey],
    ) -> Result<()> {
        let mut tx = self.begin("insert_one_time_keys").await?;
        for (algorithm, key_id, key_json) in keys {
            let old: Option<(String,)> = sqlx::query_as(
                "SELECT key_json FROM e2e_one_time_keys
                 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(algorithm)
            .bind(key_id)
            .fetch_optional(tx.conn())
            .await?;
            match old {
                Some((j,)) if &j == key_json => continue,
                Some(_) => return Err(Error::Conflict(format!("{algorithm}:{key_id}"))),
                None => {}
            }
            sqlx::query(
                "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(algorithm)
            .bind(key_id)
            .bind(key_json)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await
    }

    /// Replaces a device's fallback key per algorithm. The same key uploaded again keeps
    /// its `used` mark; a new key starts unused.
    pub async fn upsert_fallback_keys(
        &self,
        user_id: &str,
        device_id: &str,
        keys: &[NewKey],
    ) -> Result<()> {
        let mut tx = self.begin("upsert_fallback_keys").await?;
        for (algorithm, key_id, key_json) in keys {
            let old: Option<(String, String)> = sqlx::query_as(
                "SELECT key_id, key_json FROM e2e_fallback_keys
                 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(algorithm)
            .fetch_optional(tx.conn())
            .await?;
            if old
                .as_ref()
                .is_some_and(|(id, j)| id == key_id && j == key_json)
            {
                continue;
            }
            sqlx::query(
                "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)
                 VALUES ($1, $2, $3, $4, $5, 0)
                 ON CONFLICT (user_id, device_id, algorithm)
                 DO UPDATE SET key_id = excluded.key_id, key_json = excluded.key_json, used = 0",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(algorithm)
            .bind(key_id)
            .bind(key_json)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await
    }

    /// How many one-time keys a device has left, per algorithm.
    pub async fn count_one_time_keys(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT algorithm, COUNT(*) FROM e2e_one_time_keys
             WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm ORDER BY algorithm",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_all(self.reader())
        .await?)
    }

    /// The algorithms of a device's fallback keys that nobody has claimed yet.
    pub async fn select_unused_fallback_algorithms(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT algorithm FROM e2e_fallback_keys
             WHERE user_id = $1 AND device_id = $2 AND used = 0 ORDER BY algorithm",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_all(self.reader())
        .await?;
        Ok(rows.into_iter().map(|(a,)| a).collect())
    }

    /// Claims a key for each (user, device, algorithm) of `wanted`, all in one
    /// transaction: a one-time key, removed as it is handed out, else the fallback key
    /// (marked used, kept). `None` where the device has neither. Answers in the order of
    /// `wanted`.
    ///
    /// Each one-time key goes to one claimer only: the DELETE decides, and a claimer that
    /// lost a race for a key tries the next one. Callers pass `wanted` sorted (by user,
    /// then device), so concurrent claims take their row locks in the same order and
    /// cannot deadlock.
    pub async fn claim_keys(
        &self,
        wanted: &[(String, String, String)],
    ) -> Result<Vec<Option<(String, String)>>> {
        let mut tx = self.begin("claim_keys").await?;
        let mut out = Vec::with_capacity(wanted.len());
        for (user_id, device_id, algorithm) in wanted {
            out.push(claim_one(&mut tx, user_id, device_id, algorithm).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Stores a user's cross-signing key of one type (`master`, `self_signing`,
    /// `user_signing`), replacing the previous one.
    pub async fn upsert_cross_signing_keys(
        &self,
        user_id: &str,
        keys: &[(&str, String)],
    ) -> Result<()> {
        let mut tx = self.begin("upsert_cross_signing_keys").await?;
        for (key_type, key_json) in keys {
            sqlx::query(
                "INSERT INTO e2e_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
            )
            .bind(user_id)
            .bind(*key_type)
            .bind(key_json)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await
    }

    /// The cross-signing keys of `users`: (user, key type, key JSON).
    pub async fn select_cross_signing_keys(
        &self,
        users: &[String],
    ) -> Result<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        for chunk in users.chunks(500) {
            let sql = format!(
                "SELECT user_id, key_type, key_json FROM e2e_cross_signing_keys WHERE user_id IN {}",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query_as::<_, (String, String, String)>(AssertSqlSafe(sql));
            for u in chunk {
                q = q.bind(u);
            }
            out.extend(q.fetch_all(self.reader()).await?);
        }
        Ok(out)
    }

    /// Stores uploaded signatures (a signature already stored is replaced).
    pub async fn upsert_signatures(&self, rows: &[SignatureRow]) -> Result<()> {
        let mut tx = self.begin("upsert_signatures").await?;
        for (target_user, target_key, signer_user, signer_key, signature) in rows {
            sqlx::query(
                "INSERT INTO e2e_signatures (target_user, target_key_id, signer_user, signer_key_id, signature)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (target_user, target_key_id, signer_user, signer_key_id)
                 DO UPDATE SET signature = excluded.signature",
            )
            .bind(target_user)
            .bind(target_key)
            .bind(signer_user)
            .bind(signer_key)
            .bind(signature)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await
    }

    /// The uploaded signatures on keys of `users`.
    pub async fn select_signatures(&self, users: &[String]) -> Result<Vec<SignatureRow>> {
        let mut out = Vec::new();
        for chunk in users.chunks(500) {
            let sql = format!(
                "SELECT target_user, target_key_id, signer_user, signer_key_id, signature
                 FROM e2e_signatures WHERE target_user IN {}",
                placeholders(1, chunk.len())
            );
            let mut q =
                sqlx::query_as::<_, (String, String, String, String, String)>(AssertSqlSafe(sql));
            for u in chunk {
                q = q.bind(u);
            }
            out.extend(q.fetch_all(self.reader()).await?);
        }
        Ok(out)
    }
}

/// One claim inside a [`Store::claim_keys`] transaction.
async fn claim_one(
    tx: &mut crate::Txn,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> Result<Option<(String, String)>> {
    loop {
        let candidate: Option<(String, String)> = sqlx::query_as(
            "SELECT key_id, key_json FROM e2e_one_time_keys
             WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 ORDER BY key_id LIMIT 1",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .fetch_optional(tx.conn())
        .await?;
        let Some((key_id, key_json)) = candidate else {
            break;
        };
        let taken = sqlx::query(
            "DELETE FROM e2e_one_time_keys
             WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .bind(&key_id)
        .execute(tx.conn())
        .await?
        .rows_affected();
        if taken == 1 {
            return Ok(Some((key_id, key_json)));
        }
    }
    let fallback: Option<(String, String)> = sqlx::query_as(
        "SELECT key_id, key_json FROM e2e_fallback_keys
         WHERE user_id = $1 AND device_id = $2 AND algorithm = $3",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(algorithm)
    .fetch_optional(tx.conn())
    .await?;
    if fallback.is_some() {
        sqlx::query(
            "UPDATE e2e_fallback_keys SET used = $4
             WHERE user_id = $1 AND device_id = $2 AND algorithm = $3",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .bind(flag(true))
        .execute(tx.conn())
        .await?;
    }
    Ok(fallback)
}
