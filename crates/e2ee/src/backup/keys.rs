//! The keys of a backup version: upload (with the better-key rule), read, delete, at
//! the three levels the spec has (every room, one room, one session).

use std::collections::BTreeMap;

use ganglion_core::{Error, ErrorKind, Result};
use ganglion_rooms::storage_error;
use ganglion_storage::key_backup::{KeyScope, KeysWrite, RoomKeyRow};
use ruma::{OwnedRoomId, RoomId, UInt, UserId, api::client::backup::KeyBackupData, serde::Raw};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    Backup, KeyCount, parse_version,
    rule::{KeyRank, replaces},
};

/// One uploaded key: its room, its session, and the client's `KeyBackupData`.
pub type UploadedKey<'a> = (&'a RoomId, &'a str, &'a Raw<KeyBackupData>);

/// Backed-up keys by room, then by session.
pub type RoomKeys = BTreeMap<OwnedRoomId, BTreeMap<String, Raw<KeyBackupData>>>;

/// `KeyBackupData` as uploaded: the three ranking fields, and `session_data` kept as
/// the client's text (its shape belongs to the backup algorithm, not to us).
#[derive(Deserialize)]
struct Uploaded {
    first_message_index: UInt,
    forwarded_count: UInt,
    is_verified: bool,
    session_data: Box<RawValue>,
}

/// `KeyBackupData` on its way out.
#[derive(Serialize)]
struct Stored<'a> {
    first_message_index: i64,
    forwarded_count: i64,
    is_verified: bool,
    session_data: &'a RawValue,
}

fn rank(row: &RoomKeyRow) -> KeyRank {
    KeyRank {
        is_verified: row.is_verified,
        first_message_index: row.first_message_index,
        forwarded_count: row.forwarded_count,
    }
}

fn parse_key((room_id, session_id, raw): UploadedKey<'_>) -> Result<RoomKeyRow> {
    let key: Uploaded = serde_json::from_str(raw.json().get())
        .map_err(|e| Error::bad_json(format!("key for session {session_id} in {room_id}: {e}")))?;
    if !key.session_data.get().starts_with('{') {
        return Err(Error::bad_json(format!(
            "session_data for session {session_id} in {room_id} must be an object"
        )));
    }
    Ok(RoomKeyRow {
        room_id: room_id.as_str().to_owned(),
        session_id: session_id.to_owned(),
        first_message_index: i64::from(key.first_message_index),
        forwarded_count: i64::from(key.forwarded_count),
        is_verified: key.is_verified,
        session_data: key.session_data.get().to_owned(),
    })
}

fn key_data(row: &RoomKeyRow) -> Result<Raw<KeyBackupData>> {
    let corrupt = |e: serde_json::Error| {
        Error::internal(format!(
            "stored key for session {} in {}: {e}",
            row.session_id, row.room_id
        ))
    };
    let session_data = RawValue::from_string(row.session_data.clone()).map_err(corrupt)?;
    let json = serde_json::value::to_raw_value(&Stored {
        first_message_index: row.first_message_index,
        forwarded_count: row.forwarded_count,
        is_verified: row.is_verified,
        session_data: &session_data,
    })
    .map_err(corrupt)?;
    Ok(Raw::from_json(json))
}

fn unknown_version() -> Error {
    Error::not_found("Unknown backup version")
}

impl Backup {
    /// `PUT /room_keys/keys[/{roomId}[/{sessionId}]]`: stores `keys` in `version`, which
    /// must be the current version (403 `M_WRONG_ROOM_KEYS_VERSION` with
    /// `current_version` otherwise, 404 if it does not exist). A session that already
    /// has a key keeps the better of the two ([`replaces`]).
    pub async fn put_keys(
        &self,
        user: &UserId,
        version: &str,
        keys: Vec<UploadedKey<'_>>,
    ) -> Result<KeyCount> {
        let not_found = || Error::not_found(format!("Version '{version}' not found"));
        let number = parse_version(version).ok_or_else(not_found)?;
        let rows = keys
            .into_iter()
            .map(parse_key)
            .collect::<Result<Vec<_>>>()?;
        let written = self
            .store
            .upsert_room_keys(user.as_str(), number, &rows, |old, new| {
                replaces(rank(old), rank(new))
            })
            .await
            .map_err(storage_error)?;
        match written {
            KeysWrite::Done { etag, count } => Ok(KeyCount::new(etag, count)),
            KeysWrite::NoSuchVersion => Err(not_found()),
            KeysWrite::NotCurrent { current } => Err(Error::new(
                ErrorKind::WrongRoomKeysVersion {
                    current_version: current.to_string(),
                },
                "Wrong room_keys version",
            )),
        }
    }

    /// `GET /room_keys/keys`: every key of `version`, by room and session.
    pub async fn all_keys(&self, user: &UserId, version: &str) -> Result<RoomKeys> {
        self.keys(user, version, KeyScope::All).await
    }

    /// `GET /room_keys/keys/{roomId}`: the room's keys by session; none is an empty map,
    /// not an error (Synapse's rest/client/room_keys.py).
    pub async fn room_keys(
        &self,
        user: &UserId,
        version: &str,
        room_id: &RoomId,
    ) -> Result<BTreeMap<String, Raw<KeyBackupData>>> {
        let mut rooms = self
            .keys(user, version, KeyScope::Room(room_id.as_str()))
            .await?;
        Ok(rooms.remove(room_id).unwrap_or_default())
    }

    /// `GET /room_keys/keys/{roomId}/{sessionId}`: 404 `M_NOT_FOUND` when the session has
    /// no key in the backup.
    pub async fn session_key(
        &self,
        user: &UserId,
        version: &str,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Raw<KeyBackupData>> {
        let rooms = self
            .keys(
                user,
                version,
                KeyScope::Session(room_id.as_str(), session_id),
            )
            .await?;
        rooms
            .into_values()
            .flat_map(BTreeMap::into_values)
            .next()
            .ok_or_else(|| Error::not_found("No room_keys found"))
    }

    /// `DELETE /room_keys/keys[/{roomId}[/{sessionId}]]`: the keys in `scope` go from
    /// `version` (which need not be the current one; 404 if it does not exist).
    pub async fn delete_keys(
        &self,
        user: &UserId,
        version: &str,
        scope: KeyScope<'_>,
    ) -> Result<KeyCount> {
        let number = parse_version(version).ok_or_else(unknown_version)?;
        let written = self
            .store
            .delete_room_keys(user.as_str(), number, scope)
            .await
            .map_err(storage_error)?;
        match written {
            KeysWrite::Done { etag, count } => Ok(KeyCount::new(etag, count)),
            KeysWrite::NoSuchVersion | KeysWrite::NotCurrent { .. } => Err(unknown_version()),
        }
    }

    /// The keys of an existing `version` in `scope`; 404 if the version does not exist.
    async fn keys(&self, user: &UserId, version: &str, scope: KeyScope<'_>) -> Result<RoomKeys> {
        let number = parse_version(version).ok_or_else(unknown_version)?;
        self.store
            .select_backup_version(user.as_str(), Some(number))
            .await
            .map_err(storage_error)?
            .ok_or_else(unknown_version)?;
        let rows = self
            .store
            .select_room_keys(user.as_str(), number, scope)
            .await
            .map_err(storage_error)?;
        let mut out = RoomKeys::new();
        for row in &rows {
            let room_id = OwnedRoomId::try_from(row.room_id.as_str())
                .map_err(|e| Error::internal(format!("stored room id {}: {e}", row.room_id)))?;
            out.entry(room_id)
                .or_default()
                .insert(row.session_id.clone(), key_data(row)?);
        }
        Ok(out)
    }
}
