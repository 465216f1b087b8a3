//! End-to-end encryption keys: device keys, one-time and fallback keys, cross-signing keys
//! and uploaded signatures. Every key is the JSON text the client sent, unchanged.

use std::collections::HashMap;

use sqlx::AssertSqlSafe;

use crate::{Backend, Error, Result, Store, flag, placeholders};

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
    /// `wanted`, where each (user, device) appears once.
    ///
    /// A few statements per chunk of devices, whatever its size: one finds each device's
    /// lowest one-time key id, one deletes those keys and returns the ones it deleted,
    /// one marks the fallback keys of the devices left. Each one-time key goes to one
    /// claimer only: the DELETE decides, and a device whose key another claimer took
    /// meanwhile is claimed again alone. On PostgreSQL the rows are locked in key order
    /// (`ORDER BY … FOR UPDATE`) before they are changed, so concurrent claims cannot
    /// deadlock; SQLite has one writer at a time.
    pub async fn claim_keys(
        &self,
        wanted: &[(String, String, String)],
    ) -> Result<Vec<Option<(String, String)>>> {
        let mut tx = self.begin("claim_keys").await?;
        let mut out = vec![None; wanted.len()];
        let lock_rows = self.backend() == Backend::Postgres;
        for (c, chunk) in wanted.chunks(CLAIM_CHUNK).enumerate() {
            let base = c * CLAIM_CHUNK;
            let position: HashMap<(&str, &str, &str), usize> = chunk
                .iter()
                .enumerate()
                .map(|(i, (u, d, a))| ((u.as_str(), d.as_str(), a.as_str()), base + i))
                .collect();
            let lowest = lowest_one_time_keys(&mut tx, chunk).await?;
            let mut taken = take_one_time_keys(&mut tx, &lowest, lock_rows).await?;
            for (u, d, a, key_id, json) in taken.drain(..) {
                if let Some(&i) = position.get(&(u.as_str(), d.as_str(), a.as_str())) {
                    out[i] = Some((key_id, json));
                }
            }
            // Lost races: another claim took the key we found; try the next one.
            for (u, d, a, _) in &lowest {
                if let Some(&i) = position.get(&(u.as_str(), d.as_str(), a.as_str()))
                    && out[i].is_none()
                {
                    out[i] = claim_one_time_key(&mut tx, u, d, a).await?;
                }
            }
            let left: Vec<&(String, String, String)> = chunk
                .iter()
                .enumerate()
                .filter(|(i, _)| out[base + i].is_none())
                .map(|(_, w)| w)
                .collect();
            for (u, d, a, key_id, json) in use_fallback_keys(&mut tx, &left, lock_rows).await? {
                if let Some(&i) = position.get(&(u.as_str(), d.as_str(), a.as_str())) {
                    out[i] = Some((key_id, json));
                }
            }
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

/// Devices per round of [`Store::claim_keys`] (at most 4 parameters each).
const CLAIM_CHUNK: usize = 500;

/// A key found or taken: (user, device, algorithm, key id, key JSON).
type KeyHit = (String, String, String, String, String);

/// `(($1, $2, $3), ($4, $5, $6), …)`: `rows` tuples of `width` placeholders from `$start`.
fn tuples(start: usize, rows: usize, width: usize) -> String {
    let list: Vec<String> = (0..rows)
        .map(|r| placeholders(start + r * width, width))
        .collect();
    format!("(VALUES {})", list.join(", "))
}

/// The lowest one-time key id of each wanted device: (user, device, algorithm, key id).
async fn lowest_one_time_keys(
    tx: &mut crate::Txn,
    wanted: &[(String, String, String)],
) -> Result<Vec<(String, String, String, String)>> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT user_id, device_id, algorithm, MIN(key_id) FROM e2e_one_time_keys
         WHERE (user_id, device_id, algorithm) IN {}
         GROUP BY user_id, device_id, algorithm",
        tuples(1, wanted.len(), 3)
    );
    let mut q = sqlx::query_as(AssertSqlSafe(sql));
    for (u, d, a) in wanted {
        q = q.bind(u).bind(d).bind(a);
    }
    Ok(q.fetch_all(tx.conn()).await?)
}

/// Deletes the named one-time keys (locking them in key order first when `lock_rows`)
/// and returns those this transaction deleted: a key another claim took is not among
/// them.
async fn take_one_time_keys(
    tx: &mut crate::Txn,
    keys: &[(String, String, String, String)],
    lock_rows: bool,
) -> Result<Vec<KeyHit>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "DELETE FROM e2e_one_time_keys WHERE (user_id, device_id, algorithm, key_id) IN (
             SELECT user_id, device_id, algorithm, key_id FROM e2e_one_time_keys
             WHERE (user_id, device_id, algorithm, key_id) IN {}{lock})
         RETURNING user_id, device_id, algorithm, key_id, key_json",
        tuples(1, keys.len(), 4),
        lock = if lock_rows {
            " ORDER BY user_id, device_id, algorithm, key_id FOR UPDATE"
        } else {
            ""
        },
    );
    let mut q = sqlx::query_as(AssertSqlSafe(sql));
    for (u, d, a, k) in keys {
        q = q.bind(u).bind(d).bind(a).bind(k);
    }
    Ok(q.fetch_all(tx.conn()).await?)
}

/// Marks the fallback keys of `devices` used (locking them in order first when
/// `lock_rows`) and returns them; devices without one are not among them.
async fn use_fallback_keys(
    tx: &mut crate::Txn,
    devices: &[&(String, String, String)],
    lock_rows: bool,
) -> Result<Vec<KeyHit>> {
    if devices.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "UPDATE e2e_fallback_keys SET used = $1 WHERE (user_id, device_id, algorithm) IN (
             SELECT user_id, device_id, algorithm FROM e2e_fallback_keys
             WHERE (user_id, device_id, algorithm) IN {}{lock})
         RETURNING user_id, device_id, algorithm, key_id, key_json",
        tuples(2, devices.len(), 3),
        lock = if lock_rows {
            " ORDER BY user_id, device_id, algorithm FOR UPDATE"
        } else {
            ""
        },
    );
    let mut q = sqlx::query_as(AssertSqlSafe(sql)).bind(flag(true));
    for (u, d, a) in devices {
        q = q.bind(u).bind(d).bind(a);
    }
    Ok(q.fetch_all(tx.conn()).await?)
}

/// One device's one-time key, alone, for a device whose key a concurrent claim took:
/// the lowest left, retried while others keep winning; `None` when none is left.
async fn claim_one_time_key(
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
            return Ok(None);
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
}
