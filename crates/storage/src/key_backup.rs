//! Server-side key backups: backup versions and the room keys stored in them.
//!
//! Versions are per user, increasing integers allocated here (`MAX + 1`, deleted ones
//! included, so a number is never reused). Each version has an `etag` counter that every
//! write changing its keys raises in the same transaction. Writes to one user's backup
//! are serialised: on PostgreSQL by a transaction-scoped advisory lock on the user, on
//! SQLite by the single writer connection. Which of two keys for a session to keep is
//! not decided here: the caller passes the rule in.

use crate::{Backend, Result, Store, Txn, flag, placeholders};

/// One backup version, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupVersionRow {
    /// The version number.
    pub version: i64,
    /// The backup algorithm (`m.megolm_backup.v1.curve25519-aes-sha2`, …).
    pub algorithm: String,
    /// The client's `auth_data`, as the JSON text it sent.
    pub auth_data: String,
    /// Raised whenever the version's keys change.
    pub etag: i64,
    /// How many keys the version holds.
    pub count: i64,
}

/// One backed-up room key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomKeyRow {
    /// The room.
    pub room_id: String,
    /// The megolm session.
    pub session_id: String,
    /// The index of the first message the key can decrypt.
    pub first_message_index: i64,
    /// How many times the key was forwarded between devices.
    pub forwarded_count: i64,
    /// Whether the uploading device had verified the key's sender.
    pub is_verified: bool,
    /// The client's encrypted `session_data`, as JSON text.
    pub session_data: String,
}

/// What became of a write to a version's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeysWrite {
    /// Written (or left as it was): the version's etag and key count afterwards.
    Done {
        /// The etag after the write.
        etag: i64,
        /// The number of keys after the write.
        count: i64,
    },
    /// The user has no (undeleted) version with that number.
    NoSuchVersion,
    /// The version exists but is not the user's latest, which is `current`.
    NotCurrent {
        /// The user's latest version.
        current: i64,
    },
}

/// Which keys of a version a read or delete is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyScope<'a> {
    /// Every room.
    All,
    /// One room.
    Room(&'a str),
    /// One session of one room.
    Session(&'a str, &'a str),
}

/// Largest number of session ids in one `IN (…)` list.
const SESSION_CHUNK: usize = 500;

type KeyTuple = (String, String, i64, i64, i64, String);

fn key_row((room_id, session_id, fmi, fc, verified, data): KeyTuple) -> RoomKeyRow {
    RoomKeyRow {
        room_id,
        session_id,
        first_message_index: fmi,
        forwarded_count: fc,
        is_verified: verified != 0,
        session_data: data,
    }
}

impl Store {
    /// Takes the lock on `user_id`'s backup for the rest of `tx` (PostgreSQL; SQLite's one
    /// writer connection already serialises every write).
    async fn lock_backup(&self, tx: &mut Txn, user_id: &str) -> Result<()> {
        match self.backend {
            Backend::Postgres => {
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext('key_backup:' || $1))")
                    .bind(user_id)
                    .execute(tx.conn())
                    .await?;
            }
            Backend::Sqlite => {}
        }
        Ok(())
    }

    /// Creates the user's next backup version, which becomes the current one. Returns
    /// its number.
    pub async fn insert_backup_version(
        &self,
        user_id: &str,
        algorithm: &str,
        auth_data: &str,
    ) -> Result<i64> {
        let mut tx = self.begin("insert_backup_version").await?;
        self.lock_backup(&mut tx, user_id).await?;
        let (max,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(version) FROM e2e_room_keys_versions WHERE user_id = $1")
                .bind(user_id)
                .fetch_one(tx.conn())
                .await?;
        let version = max.unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO e2e_room_keys_versions (user_id, version, algorithm, auth_data, etag, deleted)
             VALUES ($1, $2, $3, $4, 0, 0)",
        )
        .bind(user_id)
        .bind(version)
        .bind(algorithm)
        .bind(auth_data)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    /// A backup version with its key count: `version`, or the latest when `None`.
    /// Deleted versions are not found.
    pub async fn select_backup_version(
        &self,
        user_id: &str,
        version: Option<i64>,
    ) -> Result<Option<BackupVersionRow>> {
        let row: Option<(i64, String, String, i64)> = match version {
            Some(v) => {
                sqlx::query_as(
                    "SELECT version, algorithm, auth_data, etag FROM e2e_room_keys_versions
                     WHERE user_id = $1 AND version = $2 AND deleted = 0",
                )
                .bind(user_id)
                .bind(v)
                .fetch_optional(self.reader())
                .await?
            }
            None => {
                sqlx::query_as(
                    "SELECT version, algorithm, auth_data, etag FROM e2e_room_keys_versions
                     WHERE user_id = $1 AND deleted = 0 ORDER BY version DESC LIMIT 1",
                )
                .bind(user_id)
                .fetch_optional(self.reader())
                .await?
            }
        };
        let Some((version, algorithm, auth_data, etag)) = row else {
            return Ok(None);
        };
        let (count,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM e2e_room_keys WHERE user_id = $1 AND version = $2",
        )
        .bind(user_id)
        .bind(version)
        .fetch_one(self.reader())
        .await?;
        Ok(Some(BackupVersionRow {
            version,
            algorithm,
            auth_data,
            etag,
            count,
        }))
    }

    /// Replaces a version's `auth_data`. False if the user has no such (undeleted) version.
    pub async fn update_backup_auth_data(
        &self,
        user_id: &str,
        version: i64,
        auth_data: &str,
    ) -> Result<bool> {
        let mut tx = self.begin("update_backup_auth_data").await?;
        self.lock_backup(&mut tx, user_id).await?;
        let done = sqlx::query(
            "UPDATE e2e_room_keys_versions SET auth_data = $3
             WHERE user_id = $1 AND version = $2 AND deleted = 0",
        )
        .bind(user_id)
        .bind(version)
        .bind(auth_data)
        .execute(tx.conn())
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(done > 0)
    }

    /// Deletes a version and every key in it. False if the user has no such (undeleted)
    /// version.
    pub async fn delete_backup_version(&self, user_id: &str, version: i64) -> Result<bool> {
        let mut tx = self.begin("delete_backup_version").await?;
        self.lock_backup(&mut tx, user_id).await?;
        let done = sqlx::query(
            "UPDATE e2e_room_keys_versions SET deleted = 1
             WHERE user_id = $1 AND version = $2 AND deleted = 0",
        )
        .bind(user_id)
        .bind(version)
        .execute(tx.conn())
        .await?
        .rows_affected();
        if done > 0 {
            sqlx::query("DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2")
                .bind(user_id)
                .bind(version)
                .execute(tx.conn())
                .await?;
        }
        tx.commit().await?;
        Ok(done > 0)
    }

    /// Stores `keys` in `version`, which must be the user's current version. Where a
    /// session already has a key, `replace(existing, new)` decides whether the new one
    /// takes its place. The etag is raised when anything was written.
    pub async fn upsert_room_keys(
        &self,
        user_id: &str,
        version: i64,
        keys: &[RoomKeyRow],
        replace: impl Fn(&RoomKeyRow, &RoomKeyRow) -> bool + Send,
    ) -> Result<KeysWrite> {
        let mut tx = self.begin("upsert_room_keys").await?;
        self.lock_backup(&mut tx, user_id).await?;
        let etag = match current_version(&mut tx, user_id, version).await? {
            Ok(etag) => etag,
            Err(refusal) => return Ok(refusal),
        };
        let mut changed = false;
        for room in distinct_rooms(keys) {
            let in_room: Vec<&RoomKeyRow> = keys.iter().filter(|k| k.room_id == room).collect();
            let existing = select_sessions(&mut tx, user_id, version, room, &in_room).await?;
            for new in in_room {
                match existing.iter().find(|e| e.session_id == new.session_id) {
                    None => {
                        sqlx::query(
                            "INSERT INTO e2e_room_keys (user_id, version, room_id, session_id,
                                first_message_index, forwarded_count, is_verified, session_data)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        )
                        .bind(user_id)
                        .bind(version)
                        .bind(&new.room_id)
                        .bind(&new.session_id)
                        .bind(new.first_message_index)
                        .bind(new.forwarded_count)
                        .bind(flag(new.is_verified))
                        .bind(&new.session_data)
                        .execute(tx.conn())
                        .await?;
                        changed = true;
                    }
                    Some(old) if replace(old, new) => {
                        sqlx::query(
                            "UPDATE e2e_room_keys SET first_message_index = $5, forwarded_count = $6,
                                is_verified = $7, session_data = $8
                             WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4",
                        )
                        .bind(user_id)
                        .bind(version)
                        .bind(&new.room_id)
                        .bind(&new.session_id)
                        .bind(new.first_message_index)
                        .bind(new.forwarded_count)
                        .bind(flag(new.is_verified))
                        .bind(&new.session_data)
                        .execute(tx.conn())
                        .await?;
                        changed = true;
                    }
                    Some(_) => {}
                }
            }
        }
        let etag = if changed {
            bump_etag(&mut tx, user_id, version, etag).await?
        } else {
            etag
        };
        let count = count_keys(&mut tx, user_id, version).await?;
        tx.commit().await?;
        Ok(KeysWrite::Done { etag, count })
    }

    /// The keys of `version` in `scope`, sorted by room and session. Empty if the version
    /// has none there (the caller checks that the version exists).
    pub async fn select_room_keys(
        &self,
        user_id: &str,
        version: i64,
        scope: KeyScope<'_>,
    ) -> Result<Vec<RoomKeyRow>> {
        const COLUMNS: &str = "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data
             FROM e2e_room_keys WHERE user_id = $1 AND version = $2";
        let rows: Vec<KeyTuple> = match scope {
            KeyScope::All => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{COLUMNS} ORDER BY room_id, session_id"
                )))
                .bind(user_id)
                .bind(version)
                .fetch_all(self.reader())
                .await?
            }
            KeyScope::Room(room) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{COLUMNS} AND room_id = $3 ORDER BY session_id"
                )))
                .bind(user_id)
                .bind(version)
                .bind(room)
                .fetch_all(self.reader())
                .await?
            }
            KeyScope::Session(room, session) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{COLUMNS} AND room_id = $3 AND session_id = $4"
                )))
                .bind(user_id)
                .bind(version)
                .bind(room)
                .bind(session)
                .fetch_all(self.reader())
                .await?
            }
        };
        Ok(rows.into_iter().map(key_row).collect())
    }

    /// Deletes the keys of `version` in `scope` and raises its etag. The version must
    /// exist but need not be the current one.
    pub async fn delete_room_keys(
        &self,
        user_id: &str,
        version: i64,
        scope: KeyScope<'_>,
    ) -> Result<KeysWrite> {
        let mut tx = self.begin("delete_room_keys").await?;
        self.lock_backup(&mut tx, user_id).await?;
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT etag FROM e2e_room_keys_versions WHERE user_id = $1 AND version = $2 AND deleted = 0",
        )
        .bind(user_id)
        .bind(version)
        .fetch_optional(tx.conn())
        .await?;
        let Some((etag,)) = row else {
            return Ok(KeysWrite::NoSuchVersion);
        };
        const DELETE: &str = "DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2";
        let q = match scope {
            KeyScope::All => sqlx::query(DELETE).bind(user_id).bind(version),
            KeyScope::Room(room) => {
                sqlx::query(sqlx::AssertSqlSafe(format!("{DELETE} AND room_id = $3")))
                    .bind(user_id)
                    .bind(version)
                    .bind(room)
            }
            KeyScope::Session(room, session) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "{DELETE} AND room_id = $3 AND session_id = $4"
            )))
            .bind(user_id)
            .bind(version)
            .bind(room)
            .bind(session),
        };
        q.execute(tx.conn()).await?;
        // Raised even when nothing matched, as Synapse does (handlers/e2e_room_keys.py).
        let etag = bump_etag(&mut tx, user_id, version, etag).await?;
        let count = count_keys(&mut tx, user_id, version).await?;
        tx.commit().await?;
        Ok(KeysWrite::Done { etag, count })
    }
}

/// `Ok(etag)` if `version` is the user's current version; otherwise the refusal.
async fn current_version(
    tx: &mut Txn,
    user_id: &str,
    version: i64,
) -> Result<Result<i64, KeysWrite>> {
    let latest: Option<(i64, i64)> = sqlx::query_as(
        "SELECT version, etag FROM e2e_room_keys_versions
         WHERE user_id = $1 AND deleted = 0 ORDER BY version DESC LIMIT 1",
    )
    .bind(user_id)
    .fetch_optional(tx.conn())
    .await?;
    let Some((current, etag)) = latest else {
        return Ok(Err(KeysWrite::NoSuchVersion));
    };
    if current == version {
        return Ok(Ok(etag));
    }
    let exists: Option<(i64,)> = sqlx::query_as(
        "SELECT version FROM e2e_room_keys_versions WHERE user_id = $1 AND version = $2 AND deleted = 0",
    )
    .bind(user_id)
    .bind(version)
    .fetch_optional(tx.conn())
    .await?;
    Ok(Err(match exists {
        Some(_) => KeysWrite::NotCurrent { current },
        None => KeysWrite::NoSuchVersion,
    }))
}

/// The rooms of `keys`, each once, in first-seen order.
fn distinct_rooms(keys: &[RoomKeyRow]) -> Vec<&str> {
    let mut rooms: Vec<&str> = Vec::new();
    for k in keys {
        if !rooms.contains(&k.room_id.as_str()) {
            rooms.push(&k.room_id);
        }
    }
    rooms
}

/// The stored keys of `room` for the sessions of `keys`.
async fn select_sessions(
    tx: &mut Txn,
    user_id: &str,
    version: i64,
    room: &str,
    keys: &[&RoomKeyRow],
) -> Result<Vec<RoomKeyRow>> {
    let mut out = Vec::new();
    for chunk in keys.chunks(SESSION_CHUNK) {
        let sql = format!(
            "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data
             FROM e2e_room_keys WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id IN {}",
            placeholders(4, chunk.len())
        );
        let mut q = sqlx::query_as::<_, KeyTuple>(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(version)
            .bind(room);
        for k in chunk {
            q = q.bind(&k.session_id);
        }
        out.extend(q.fetch_all(tx.conn()).await?.into_iter().map(key_row));
    }
    Ok(out)
}

/// Raises a version's etag from `etag` by one; returns the new value.
async fn bump_etag(tx: &mut Txn, user_id: &str, version: i64, etag: i64) -> Result<i64> {
    let next = etag + 1;
    sqlx::query("UPDATE e2e_room_keys_versions SET etag = $3 WHERE user_id = $1 AND version = $2")
        .bind(user_id)
        .bind(version)
        .bind(next)
        .execute(tx.conn())
        .await?;
    Ok(next)
}

/// How many keys a version holds.
async fn count_keys(tx: &mut Txn, user_id: &str, version: i64) -> Result<i64> {
    let (count,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM e2e_room_keys WHERE user_id = $1 AND version = $2")
            .bind(user_id)
            .bind(version)
            .fetch_one(tx.conn())
            .await?;
    Ok(count)
}
