//! Stream positions and the tokens clients hold.
//!
//! Every change other processes must learn about is a row in a stream with a
//! monotonically allocated position (docs/architecture.md, "Streams and positions", "Token formats"). A `/sync` token is a tuple of
//! positions, one per stream. Its text form is versioned and positional:
//!
//! `g1_{events}_{typing}_{receipts}_{account_data}_{to_device}_{device_lists}_{presence}_{push_rules}`
//!
//! Missing trailing fields read as 0 and unknown trailing fields are ignored, so new
//! streams can be appended without breaking tokens clients already hold. A stream that
//! later gains several writers will write its field as `min~writer.pos.writer.pos`; the
//! parser already reads the leading `min` of such a field.

use std::{fmt, str::FromStr};

/// A position in one stream. Positions only grow; 0 is "before everything".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamPos(pub i64);

impl fmt::Display for StreamPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The replicated streams, in token order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKind {
    /// Room events (timeline and state), written by main's persister.
    Events = 0,
    /// Typing notifications (ephemeral, main's memory).
    Typing = 1,
    /// Read receipts.
    Receipts = 2,
    /// Global and per-room account data, including tags.
    AccountData = 3,
    /// Send-to-device messages.
    ToDevice = 4,
    /// Device list changes.
    DeviceLists = 5,
    /// Presence.
    Presence = 6,
    /// Push rules.
    PushRules = 7,
}

impl StreamKind {
    /// Every stream, in token order.
    pub const ALL: [StreamKind; 8] = [
        StreamKind::Events,
        StreamKind::Typing,
        StreamKind::Receipts,
        StreamKind::AccountData,
        StreamKind::ToDevice,
        StreamKind::DeviceLists,
        StreamKind::Presence,
        StreamKind::PushRules,
    ];

    /// The stream's name in metrics, logs and bus keys.
    pub fn name(self) -> &'static str {
        match self {
            StreamKind::Events => "events",
            StreamKind::Typing => "typing",
            StreamKind::Receipts => "receipts",
            StreamKind::AccountData => "account_data",
            StreamKind::ToDevice => "to_device",
            StreamKind::DeviceLists => "device_lists",
            StreamKind::Presence => "presence",
            StreamKind::PushRules => "push_rules",
        }
    }

    /// The stream with this wire number, if any.
    pub fn from_index(i: i32) -> Option<StreamKind> {
        Self::ALL.get(usize::try_from(i).ok()?).copied()
    }
}

/// A `/sync` token: one position per stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SyncToken {
    positions: [i64; StreamKind::ALL.len()],
}

/// A token string that is not a token we issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stream token")]
pub struct InvalidToken;

impl SyncToken {
    /// The position of one stream.
    pub fn get(&self, kind: StreamKind) -> StreamPos {
        StreamPos(self.positions[kind as usize])
    }

    /// Sets the position of one stream.
    pub fn set(&mut self, kind: StreamKind, pos: StreamPos) {
        self.positions[kind as usize] = pos.0;
    }

    /// A copy with one stream's position replaced.
    pub fn with(mut self, kind: StreamKind, pos: StreamPos) -> Self {
        self.set(kind, pos);
        self
    }

    /// Streamwise minimum: never claims more than either token.
    pub fn min(&self, other: &SyncToken) -> SyncToken {
        let mut out = *self;
        for (i, p) in out.positions.iter_mut().enumerate() {
            *p = (*p).min(other.positions[i]);
        }
        out
    }

    /// Whether every stream of `self` is at or beyond `other`.
    pub fn covers(&self, other: &SyncToken) -> bool {
        self.positions
            .iter()
            .zip(other.positions.iter())
            .all(|(a, b)| a >= b)
    }
}

impl fmt::Display for SyncToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("g1")?;
        for p in self.positions {
            write!(f, "_{p}")?;
        }
        Ok(())
    }
}

impl FromStr for SyncToken {
    type Err = InvalidToken;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('_');
        if parts.next() != Some("g1") {
            return Err(InvalidToken);
        }
        let mut token = SyncToken::default();
        for (slot, part) in token.positions.iter_mut().zip(parts) {
            // A multi-writer field reads `min~writer.pos…`; its minimum is safe to resume from.
            let min = part.split('~').next().unwrap_or(part);
            let pos: i64 = min.parse().map_err(|_| InvalidToken)?;
            if pos < 0 {
                return Err(InvalidToken);
            }
            *slot = pos;
        }
        Ok(token)
    }
}

/// A pagination token for `/messages` and `prev_batch`: a position in the events stream.
///
/// Written `t{pos}`; negative positions are backfilled history. `/messages` also accepts a `/sync` token (its events position), as
/// the spec allows `next_batch` to be used as `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PageToken(pub StreamPos);

impl fmt::Display for PageToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

impl FromStr for PageToken {
    type Err = InvalidToken;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix('t') {
            // Negative positions are backfilled history (older than anything else).
            let pos: i64 = rest.parse().map_err(|_| InvalidToken)?;
            return Ok(PageToken(StreamPos(pos)));
        }
        let sync: SyncToken = s.parse()?;
        Ok(PageToken(sync.get(StreamKind::Events)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_token_round_trips() {
        let t = SyncToken::default()
            .with(StreamKind::Events, StreamPos(42))
            .with(StreamKind::PushRules, StreamPos(7));
        let s = t.to_string();
        assert_eq!(s, "g1_42_0_0_0_0_0_0_7");
        assert_eq!(s.parse::<SyncToken>(), Ok(t));
    }

    #[test]
    fn short_and_long_tokens_parse() {
        let t: SyncToken = "g1_5_6".parse().expect("short token parses");
        assert_eq!(t.get(StreamKind::Events), StreamPos(5));
        assert_eq!(t.get(StreamKind::Typing), StreamPos(6));
        assert_eq!(t.get(StreamKind::Receipts), StreamPos(0));
        let long: SyncToken = "g1_1_2_3_4_5_6_7_8_9_10"
            .parse()
            .expect("extra fields ignored");
        assert_eq!(long.get(StreamKind::PushRules), StreamPos(8));
        let multi: SyncToken = "g1_3~a.5.b.9_1".parse().expect("multi-writer field");
        assert_eq!(multi.get(StreamKind::Events), StreamPos(3));
    }

    #[test]
    fn garbage_is_refused() {
        for bad in ["", "s1", "g1_x", "g2_1", "g1_-4", "t--1", "t1-", "tx"] {
            assert!(
                bad.parse::<SyncToken>().is_err() || bad.starts_with('t'),
                "{bad}"
            );
            if bad.starts_with('t') {
                assert!(bad.parse::<PageToken>().is_err(), "{bad}");
            }
        }
        assert_eq!("t12".parse::<PageToken>(), Ok(PageToken(StreamPos(12))));
        assert_eq!("t-7".parse::<PageToken>(), Ok(PageToken(StreamPos(-7))));
        assert_eq!("g1_9_1".parse::<PageToken>(), Ok(PageToken(StreamPos(9))));
    }

    #[test]
    fn covers_and_min() {
        let a = SyncToken::default().with(StreamKind::Events, StreamPos(5));
        let b = SyncToken::default().with(StreamKind::Typing, StreamPos(2));
        assert!(!a.covers(&b));
        assert!(!b.covers(&a));
        assert_eq!(a.min(&b), SyncToken::default());
    }
}
