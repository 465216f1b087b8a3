//! Backup versions: create, read, update `auth_data`, delete.

use ganglion_core::{Error, Result};
use ganglion_rooms::storage_error;
use ganglion_storage::key_backup::BackupVersionRow;
use ruma::{UInt, UserId, api::client::backup::BackupAlgorithm, serde::Raw};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Backup, parse_version};

/// A backup version as the GET endpoints describe it.
#[derive(Debug, Clone)]
pub struct VersionInfo {
    /// `algorithm` and `auth_data`.
    pub algorithm: Raw<BackupAlgorithm>,
    /// How many keys the version holds.
    pub count: UInt,
    /// Changes whenever the version's keys change.
    pub etag: String,
    /// The version.
    pub version: String,
}

/// The body of `POST /room_keys/version` and `PUT /room_keys/version/{version}`.
#[derive(Deserialize)]
struct AlgorithmBody {
    algorithm: String,
    auth_data: Box<RawValue>,
    /// Only in PUT, and optional there.
    #[serde(default)]
    version: Option<String>,
}

/// `algorithm` and `auth_data` again, for the answers.
#[derive(Serialize)]
struct AlgorithmOut<'a> {
    algorithm: &'a str,
    auth_data: &'a RawValue,
}

fn parse_body(raw: &Raw<BackupAlgorithm>) -> Result<AlgorithmBody> {
    let body: AlgorithmBody = serde_json::from_str(raw.json().get())
        .map_err(|e| Error::bad_json(format!("backup version: {e}")))?;
    if !body.auth_data.get().starts_with('{') {
        return Err(Error::bad_json("auth_data must be an object"));
    }
    Ok(body)
}

fn unknown_version() -> Error {
    Error::not_found("Unknown backup version")
}

fn info_from_row(row: BackupVersionRow) -> Result<VersionInfo> {
    let auth_data = RawValue::from_string(row.auth_data)
        .map_err(|e| Error::internal(format!("stored auth_data of backup {}: {e}", row.version)))?;
    let json = serde_json::value::to_raw_value(&AlgorithmOut {
        algorithm: &row.algorithm,
        auth_data: &auth_data,
    })
    .map_err(|e| Error::internal(format!("backup version {}: {e}", row.version)))?;
    Ok(VersionInfo {
        algorithm: Raw::from_json(json),
        count: UInt::try_from(row.count).unwrap_or(UInt::MAX),
        etag: row.etag.to_string(),
        version: row.version.to_string(),
    })
}

impl Backup {
    /// `POST /room_keys/version`: a new version, which becomes the current one.
    pub async fn create_version(
        &self,
        user: &UserId,
        algorithm: &Raw<BackupAlgorithm>,
    ) -> Result<String> {
        let body = parse_body(algorithm)?;
        let version = self
            .store
            .insert_backup_version(user.as_str(), &body.algorithm, body.auth_data.get())
            .await
            .map_err(storage_error)?;
        Ok(version.to_string())
    }

    /// `GET /room_keys/version`: the current version; 404 `M_NOT_FOUND` without one.
    pub async fn latest_version(&self, user: &UserId) -> Result<VersionInfo> {
        let row = self
            .store
            .select_backup_version(user.as_str(), None)
            .await
            .map_err(storage_error)?;
        info_from_row(row.ok_or_else(|| Error::not_found("No backup found"))?)
    }

    /// `GET /room_keys/version/{version}`: 404 `M_NOT_FOUND` for a version that does not
    /// exist or was deleted.
    pub async fn version(&self, user: &UserId, version: &str) -> Result<VersionInfo> {
        let number = parse_version(version).ok_or_else(unknown_version)?;
        let row = self
            .store
            .select_backup_version(user.as_str(), Some(number))
            .await
            .map_err(storage_error)?;
        info_from_row(row.ok_or_else(unknown_version)?)
    }

    /// `PUT /room_keys/version/{version}`: replaces `auth_data`. A `version` in the body
    /// must be the path's, and the algorithm must stay the same (400 `M_INVALID_PARAM`,
    /// as Synapse's `update_version`).
    pub async fn update_version(
        &self,
        user: &UserId,
        version: &str,
        algorithm: &Raw<BackupAlgorithm>,
    ) -> Result<()> {
        let body = parse_body(algorithm)?;
        if body.version.as_deref().is_some_and(|v| v != version) {
            return Err(Error::invalid_param("Version in body does not match"));
        }
        let number = parse_version(version).ok_or_else(unknown_version)?;
        let existing = self
            .store
            .select_backup_version(user.as_str(), Some(number))
            .await
            .map_err(storage_error)?
            .ok_or_else(unknown_version)?;
        if existing.algorithm != body.algorithm {
            return Err(Error::invalid_param("Algorithm does not match"));
        }
        let updated = self
            .store
            .update_backup_auth_data(user.as_str(), number, body.auth_data.get())
            .await
            .map_err(storage_error)?;
        if updated {
            Ok(())
        } else {
            Err(unknown_version())
        }
    }

    /// `DELETE /room_keys/version/{version}`: the version and its keys go; the version
    /// is then unknown to every endpoint.
    pub async fn delete_version(&self, user: &UserId, version: &str) -> Result<()> {
        let number = parse_version(version).ok_or_else(unknown_version)?;
        let deleted = self
            .store
            .delete_backup_version(user.as_str(), number)
            .await
            .map_err(storage_error)?;
        if deleted {
            Ok(())
        } else {
            Err(unknown_version())
        }
    }
}
