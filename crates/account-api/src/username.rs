//! Which localparts a new account may take.
//!
//! Spec: Appendices, "User Identifiers": new localparts use only `a-z 0-9 . _ = - / +`, and
//! the whole id is at most 255 bytes. On top of that, as Synapse's `check_username`
//! (`synapse/handlers/register.py`): no leading `_` (reserved for bridges) and no purely
//! numeric localparts (reserved for generated ids).

use ganglion_core::{Error, ErrorKind, Result};
use ruma::{OwnedUserId, ServerName, UserId};

/// Longest user id, in bytes (spec: "The length of a user ID ... MUST NOT exceed 255").
const MAX_USER_ID_BYTES: usize = 255;

fn invalid(message: &'static str) -> Error {
    Error::new(ErrorKind::InvalidUsername, message)
}

/// Whether `c` may appear in a newly registered localpart.
fn allowed(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+')
}

/// Checks a localpart a client or admin chose and builds the user id it names.
/// Refusals are 400 `M_INVALID_USERNAME`. Does not lowercase: callers that accept any case
/// (registration) lowercase first, the availability check does not.
pub(crate) fn check_localpart(localpart: &str, server_name: &ServerName) -> Result<OwnedUserId> {
    if localpart.is_empty() {
        return Err(invalid("User ID cannot be empty"));
    }
    if !localpart.chars().all(allowed) {
        return Err(invalid(
            "User ID can only contain characters a-z, 0-9, or '=_-./+'",
        ));
    }
    if localpart.starts_with('_') {
        return Err(invalid("User ID may not begin with _"));
    }
    if localpart.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("Numeric user IDs are reserved for guest users."));
    }
    user_id(localpart, server_name)
}

/// The user id `@localpart:server_name`, refused as `M_INVALID_USERNAME` if too long.
pub(crate) fn user_id(localpart: &str, server_name: &ServerName) -> Result<OwnedUserId> {
    let full = format!("@{localpart}:{server_name}");
    if full.len() > MAX_USER_ID_BYTES {
        return Err(invalid("User ID may not be longer than 255 characters"));
    }
    UserId::parse(full).map_err(|_| invalid("Invalid user ID"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(l: &str) -> Result<OwnedUserId> {
        check_localpart(l, ruma::server_name!("example.org"))
    }

    #[test]
    fn accepts_the_spec_charset() {
        assert_eq!(
            check("alice").expect("valid").as_str(),
            "@alice:example.org"
        );
        check("a.b_c=d-e/f+g9").expect("every allowed character");
        check("1a").expect("digits are fine when not all digits");
    }

    #[test]
    fn refuses_the_rest() {
        for bad in [
            "", "Alice", "al ice", "al!ce", "al:ce", "é", "_bridge", "12345",
        ] {
            assert_eq!(
                check(bad).map_err(|e| e.kind),
                Err(ErrorKind::InvalidUsername),
                "{bad:?}"
            );
        }
        let long = "a".repeat(255 - "@:example.org".len());
        check(&long).expect("exactly 255 bytes");
        assert!(check(&format!("{long}a")).is_err(), "256 bytes");
    }
}
