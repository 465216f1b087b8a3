//! The reader task: follows every stream key with plain `XREAD BLOCK` on a connection of
//! its own (with no response timeout: a blocking read must not time out) and fans entries
//! out to this process's subscribers.
//!
//! It delivers [`ganglion_bus::Delivery::Gap`] whenever it cannot be sure it saw every
//! entry since the last one it delivered:
//! - after reconnecting (Redis restarted, connection killed, network lost, or Redis was
//!   unreachable when the bus was created). Cursors are first reset to the streams' ends,
//!   then the gap is sent, so everything older is covered by the reader's catch-up from
//!   the database and everything newer is delivered;
//! - when a stream no longer holds, at its cursor, the entry last read there: trimmed past
//!   it, or deleted (`DEL`, `FLUSHALL`) and perhaps recreated, even with ids at or below
//!   the cursor that `XREAD` would skip. Checked after the empty `XREAD` that ends each
//!   block and at least once a second while entries come, so it is found within one
//!   block even if nothing new comes;
//!   (A stream that was empty when reading began has no entry to check until one is read;
//!   losing its very first entries in that window is left to readers' `prev` check.)
//! - for an entry it cannot decode.
//!
//! Subscribers that fall behind get their own gap from [`ganglion_bus::Fanout`].

use std::{sync::Arc, time::Duration};

use ganglion_bus::{Entry, Fanout};
use prost::Message;
use redis::{Value, aio::MultiplexedConnection};
use tokio_util::sync::CancellationToken;

use crate::{
    CONNECT_TIMEOUT, ENTRY_FIELD,
    id::StreamId,
    link::{self, Backoff, LinkError, within},
};

/// How long one `XREAD` blocks server-side.
const BLOCK: Duration = Duration::from_secs(5);
/// Extra time allowed for a blocked read's answer before the connection is deemed dead
/// (the connection itself has no response timeout).
const BLOCK_GRACE: Duration = Duration::from_secs(5);
/// Longest time between two cursor checks while entries keep coming.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Most entries taken from one stream by one `XREAD`.
const READ_COUNT: usize = 1_000;

/// Entries of one stream as read: id, and the encoded entry if the field was there.
type Batch = Vec<(StreamId, Option<Vec<u8>>)>;

/// Where reading a stream key stands.
#[derive(Debug, Clone)]
struct Cursor {
    /// The last id read (or the end when reading began).
    id: StreamId,
    /// What that entry held, to recognise it later; `None` when there is nothing to
    /// check (no entry there, no payload, or a loss there was already reported).
    payload: Option<Vec<u8>>,
}

/// A live connection and the cursor of each stream key.
pub(crate) struct Link {
    conn: MultiplexedConnection,
    cursors: Vec<Cursor>,
}

/// How following ended.
enum Stop {
    Cancelled,
    Failed(LinkError),
}

/// Follows the bus for one process.
pub(crate) struct Reader {
    client: redis::Client,
    /// Stream keys, indexed by `StreamKind`.
    keys: Vec<String>,
    name: String,
    fanout: Fanout,
    stop: CancellationToken,
}

impl Reader {
    pub(crate) fn new(
        client: redis::Client,
        keys: Vec<String>,
        name: String,
        fanout: Fanout,
        stop: CancellationToken,
    ) -> Reader {
        Reader {
            client,
            keys,
            name,
            fanout,
            stop,
        }
    }

    /// Opens the reading connection, with every cursor at its stream's current end (what
    /// `$` would mean now, made concrete so later reads cannot skip anything).
    pub(crate) async fn open(&self) -> Result<Link, LinkError> {
        let mut conn = link::open(&self.client, &self.name, None).await?;
        let mut pipe = redis::pipe();
        for key in &self.keys {
            pipe.cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        let ends: Vec<Value> = within(CONNECT_TIMEOUT, "reading stream ends", async {
            Ok(pipe.query_async(&mut conn).await?)
        })
        .await?;
        let cursors = ends
            .into_iter()
            .map(|v| {
                Ok(match parse_range(v)?.pop() {
                    Some((id, payload)) => Cursor { id, payload },
                    None => Cursor {
                        id: StreamId::ZERO,
                        payload: None,
                    },
                })
            })
            .collect::<Result<Vec<_>, LinkError>>()?;
        Ok(Link { conn, cursors })
    }

    /// Follows until the bus is dropped. `link` is the one `connect` opened, if it could;
    /// any later connection starts with a gap.
    pub(crate) async fn run(self, mut link: Option<Link>) {
        let mut backoff = Backoff::new();
        loop {
            let mut current = match link.take() {
                Some(l) => l,
                None => match self.reconnect(&mut backoff).await {
                    Some(l) => {
                        tracing::info!("bus reader reached Redis; catching up from the database");
                        self.fanout.gap();
                        l
                    }
                    None => break,
                },
            };
            match self.follow(&mut current, &mut backoff).await {
                Stop::Cancelled => break,
                Stop::Failed(e) => {
                    tracing::warn!(error = %e, "bus reader lost Redis; reconnecting");
                }
            }
            drop(current);
            if !self.pause(backoff.next_delay()).await {
                break;
            }
        }
        tracing::debug!("bus reader stopped");
    }

    /// Reconnects with back-off; `None` once the bus is dropped.
    async fn reconnect(&self, backoff: &mut Backoff) -> Option<Link> {
        loop {
            let opened = tokio::select! {
                () = self.stop.cancelled() => return None,
                r = self.open() => r,
            };
            match opened {
                Ok(l) => return Some(l),
                Err(e) => tracing::warn!(error = %e, "bus reader cannot reach Redis; retrying"),
            }
            if !self.pause(backoff.next_delay()).await {
                return None;
            }
        }
    }

    /// Sleeps `delay`; false if the bus was dropped meanwhile.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    async fn follow(&self, link: &mut Link, backoff: &mut Backoff) -> Stop {
        let mut last_check = tokio::time::Instant::now();
        loop {
            let mut xread = redis::cmd("XREAD");
            xread
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.keys[..]);
            for cursor in &link.cursors {
                xread.arg(cursor.id.to_string());
            }
            let read = within(BLOCK + BLOCK_GRACE, "XREAD", async {
                Ok(xread.query_async::<Value>(&mut link.conn).await?)
            });
            let reply = tokio::select! {
                () = self.stop.cancelled() => return Stop::Cancelled,
                r = read => r,
            };
            let batches = match reply.and_then(|v| self.parse_read(v)) {
                Ok(b) => b,
                Err(e) => return Stop::Failed(e),
            };
            backoff.reset();
            // The cursor check costs a round trip and a reply per stream: under a steady
            // trickle of entries it ran once per entry, half of a follower's CPU. Run it
            // when a block ends empty (idle), and otherwise at most once per CHECK_EVERY;
            // readers' `prev` check and the replication check against the database cover
            // a loss in between.
            let due = batches.is_empty() || last_check.elapsed() >= CHECK_EVERY;
            let intact = if due {
                last_check = tokio::time::Instant::now();
                match self.check_cursors(link).await {
                    Ok(c) => c,
                    Err(e) => return Stop::Failed(e),
                }
            } else {
                true
            };
            if !intact {
                tracing::warn!(
                    "a bus stream was trimmed or deleted past this reader's cursor; catching up from the database"
                );
                self.fanout.gap();
            }
            let mut entries = Vec::new();
            for (key, batch) in batches {
                if let Some((id, payload)) = batch.last() {
                    link.cursors[key] = Cursor {
                        id: *id,
                        payload: payload.clone(),
                    };
                }
                entries.extend(batch.into_iter().map(|(id, raw)| (id, key, raw)));
            }
            // Per-stream order is Redis's; across streams, ids order by time, roughly.
            entries.sort_by_key(|(id, key, _)| (*id, *key));
            for (id, key, raw) in entries {
                match raw.as_deref().map(Entry::decode) {
                    Some(Ok(entry)) => self.fanout.entry(Arc::new(entry)),
                    _ => {
                        tracing::warn!(key = %self.keys[key], %id, "undecodable bus entry; treating it as a gap");
                        self.fanout.gap();
                    }
                }
            }
        }
    }

    /// Whether every stream still holds, at its cursor, the entry last read there: if so,
    /// nothing after it can have been trimmed or deleted unread. A stream found broken is
    /// reported once: its cursor is not checked again until an entry is read from it.
    async fn check_cursors(&self, link: &mut Link) -> Result<bool, LinkError> {
        let mut pipe = redis::pipe();
        let mut checked = Vec::new();
        for (key, cursor) in link.cursors.iter().enumerate() {
            if cursor.payload.is_some() {
                let id = cursor.id.to_string();
                pipe.cmd("XRANGE").arg(&self.keys[key]).arg(&id).arg(&id);
                checked.push(key);
            }
        }
        if checked.is_empty() {
            return Ok(true);
        }
        let found: Vec<Value> = within(BLOCK, "checking cursors", async {
            Ok(pipe.query_async(&mut link.conn).await?)
        })
        .await?;
        let mut intact = true;
        for (key, v) in checked.into_iter().zip(found) {
            let cursor = &mut link.cursors[key];
            let same = matches!(parse_range(v)?.as_slice(), [(id, payload)] if *id == cursor.id && *payload == cursor.payload);
            if !same {
                intact = false;
                cursor.payload = None;
            }
        }
        Ok(intact)
    }

    /// An `XREAD` reply as (key index, entries) pairs. Nil (the block timed out) is empty.
    fn parse_read(&self, reply: Value) -> Result<Vec<(usize, Batch)>, LinkError> {
        let pairs = match reply {
            Value::Nil => return Ok(Vec::new()),
            // RESP2: [[key, entries], …]
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::Array(kv) if kv.len() == 2 => {
                        let mut kv = kv.into_iter();
                        match (kv.next(), kv.next()) {
                            (Some(k), Some(v)) => Ok((k, v)),
                            _ => Err(reply_error("XREAD key entry")),
                        }
                    }
                    _ => Err(reply_error("XREAD key entry")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            // RESP3: {key: entries, …}
            Value::Map(kv) => kv,
            _ => return Err(reply_error("XREAD reply")),
        };
        pairs
            .into_iter()
            .map(|(k, v)| {
                let name = text(k)?;
                let key = self
                    .keys
                    .iter()
                    .position(|known| *known == name)
                    .ok_or_else(|| reply_error("XREAD key"))?;
                Ok((key, parse_range(v)?))
            })
            .collect()
    }
}

/// Entries of an `XRANGE`-shaped reply: `[[id, [field, value, …]], …]`, with the value of
/// [`ENTRY_FIELD`] if present.
fn parse_range(v: Value) -> Result<Batch, LinkError> {
    let Value::Array(items) = v else {
        return Err(reply_error("stream entries"));
    };
    items
        .into_iter()
        .map(|item| {
            let Value::Array(parts) = item else {
                return Err(reply_error("stream entry"));
            };
            let mut parts = parts.into_iter();
            let id = text(parts.next().unwrap_or(Value::Nil))?
                .parse::<StreamId>()
                .map_err(LinkError::Reply)?;
            let fields = match parts.next() {
                Some(Value::Array(f)) => f,
                Some(Value::Map(m)) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                _ => Vec::new(),
            };
            let mut fields = fields.into_iter();
            let mut payload = None;
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                if matches!(&name, Value::BulkString(n) if n == ENTRY_FIELD.as_bytes())
                    && let Value::BulkString(bytes) = value
                {
                    payload = Some(bytes);
                }
            }
            Ok((id, payload))
        })
        .collect()
}

fn text(v: Value) -> Result<String, LinkError> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).map_err(|_| reply_error("non-UTF-8 text")),
        Value::SimpleString(s) => Ok(s),
        _ => Err(reply_error("text")),
    }
}

fn reply_error(what: &str) -> LinkError {
    LinkError::Reply(what.to_owned())
}
