//! Server-side key backups (spec: Client-Server API, "Server-side key backups"): the
//! [`Backup`] service, its thin handlers, and [`routes`], which registers them.
//!
//! The server never sees a key in the clear: it stores each version's `algorithm` and
//! `auth_data` and each session's encrypted `session_data` as the JSON text the client
//! sent, and reads only the three fields the better-key rule compares ([`rule`]).
//! Versions are per user, increasing integers; a version string that is not one names no
//! backup (404), as in Synapse. Behaviour the spec leaves open follows Synapse's
//! handlers/e2e_room_keys.py and rest/client/room_keys.py.

mod keys;
mod routes;
pub mod rule;
mod versions;

use ganglion_storage::Store;
use ruma::UInt;

pub use ganglion_storage::key_backup::KeyScope;
pub use keys::{RoomKeys, UploadedKey};
pub(crate) use routes::routes;
pub use versions::VersionInfo;

/// The key backup service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Backup {
    store: Store,
}

impl Backup {
    /// The service over the store.
    pub fn new(store: Store) -> Backup {
        Backup { store }
    }
}

/// A version's `etag` and key `count` after a write to its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCount {
    /// Changes whenever the version's keys change.
    pub etag: String,
    /// How many keys the version holds.
    pub count: UInt,
}

impl KeyCount {
    fn new(etag: i64, count: i64) -> KeyCount {
        KeyCount {
            etag: etag.to_string(),
            count: UInt::try_from(count).unwrap_or(UInt::MAX),
        }
    }
}

/// A version number from the client: only the canonical decimal spelling of a positive
/// integer names a version (`"01"` and `"+1"` name none).
fn parse_version(version: &str) -> Option<i64> {
    version
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0 && v.to_string() == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_positive_numbers_are_versions() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(parse_version("42"), Some(42));
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "01",
            " 1",
            "1.0",
            "abc",
            "99999999999999999999",
        ] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
    }
}
