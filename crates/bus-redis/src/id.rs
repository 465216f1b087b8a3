//! Redis stream entry ids (`<ms>-<seq>`): the reader's cursors, nothing more.

use std::{fmt, str::FromStr};

/// A stream entry id. Orders as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    /// Below every entry: the cursor of a stream that was empty or absent.
    pub(crate) const ZERO: StreamId = StreamId { ms: 0, seq: 0 };
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = String;

    fn from_str(s: &str) -> Result<StreamId, String> {
        let (ms, seq) = s
            .split_once('-')
            .ok_or_else(|| format!("bad stream id {s:?}"))?;
        Ok(StreamId {
            ms: ms.parse().map_err(|_| format!("bad stream id {s:?}"))?,
            seq: seq.parse().map_err(|_| format!("bad stream id {s:?}"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_orders_and_prints() {
        let a: StreamId = "1700000000000-5".parse().expect("valid id");
        let b: StreamId = "1700000000001-0".parse().expect("valid id");
        assert!(StreamId::ZERO < a && a < b);
        assert_eq!(a.to_string(), "1700000000000-5");
        assert!("17".parse::<StreamId>().is_err());
        assert!("a-1".parse::<StreamId>().is_err());
    }
}
