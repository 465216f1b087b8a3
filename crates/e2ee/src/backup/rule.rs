//! Which of two backed-up keys for one session to keep: a pure function, no I/O.

/// The metadata of a backed-up key that decides which one is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRank {
    /// Whether the uploading device had verified the key's sender.
    pub is_verified: bool,
    /// The index of the first message the key can decrypt.
    pub first_message_index: i64,
    /// How many times the key was forwarded between devices.
    pub forwarded_count: i64,
}

/// Whether `new` replaces `existing` in the backup. In the order the spec gives
/// (Client-Server API, "Server-side key backups"): a verified key beats an unverified
/// one; with the same verification, the lower `first_message_index` wins; with that equal
/// too, the lower `forwarded_count` wins. A tie keeps the existing key.
///
/// Synapse (handlers/e2e_room_keys.py, `_should_replace_room_key`) skips the "same
/// verification" condition of the second and third steps, so it would let an unverified
/// key with a lower index replace a verified one; we follow the spec.
pub fn replaces(existing: KeyRank, new: KeyRank) -> bool {
    if existing.is_verified != new.is_verified {
        return new.is_verified;
    }
    if existing.first_message_index != new.first_message_index {
        return new.first_message_index < existing.first_message_index;
    }
    new.forwarded_count < existing.forwarded_count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(is_verified: bool, first_message_index: i64, forwarded_count: i64) -> KeyRank {
        KeyRank {
            is_verified,
            first_message_index,
            forwarded_count,
        }
    }

    #[test]
    fn verification_comes_first() {
        assert!(replaces(rank(false, 0, 0), rank(true, 9, 9)));
        assert!(!replaces(rank(true, 9, 9), rank(false, 0, 0)));
    }

    #[test]
    fn then_the_lower_first_message_index() {
        assert!(replaces(rank(true, 5, 0), rank(true, 4, 9)));
        assert!(!replaces(rank(true, 4, 0), rank(true, 5, 0)));
        assert!(replaces(rank(false, 5, 0), rank(false, 4, 9)));
    }

    #[test]
    fn then_the_lower_forwarded_count() {
        assert!(replaces(rank(false, 3, 2), rank(false, 3, 1)));
        assert!(!replaces(rank(false, 3, 1), rank(false, 3, 2)));
    }

    #[test]
    fn a_tie_keeps_the_existing_key() {
        assert!(!replaces(rank(true, 3, 1), rank(true, 3, 1)));
        assert!(!replaces(rank(false, 0, 0), rank(false, 0, 0)));
    }
}
