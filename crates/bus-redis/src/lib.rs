//! bus-redis: the replication bus over Redis Streams (docs/architecture.md, "Streams and positions").
//!
//! [`connect`] returns a [`ganglion_bus::Bus`], the same handle the in-process bus gives.
//! Each entry is prost-encoded into the field [`ENTRY_FIELD`] of an `XADD` to its stream
//! kind's key, `{prefix}:stream:{name}`, capped with `MAXLEN ~` [`MAXLEN`]. Every process
//! reads every key with plain `XREAD BLOCK` (no consumer groups: every reader needs every
//! entry) on a connection of its own, and fans what it reads out to its subscribers.
//! Redis entry ids are delivery cursors only, never Matrix positions.
//! Depends on `core`, `proto`, `bus` and redis. Knows nothing of SQL, HTTP or Matrix.
//! It must never block or fail a publisher, and never let a subscriber miss entries
//! silently: whenever it cannot be sure, it delivers `Delivery::Gap` and the reader
//! catches up from PostgreSQL, which is the record.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ganglion_bus::{BoxFuture, Bus, BusBackend, Entry, Fanout, Subscription};
use ganglion_core::StreamKind;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

mod id;
mod link;
mod publisher;
mod reader;

use publisher::{Job, Publisher};
use reader::Reader;

/// The stream field that holds the prost-encoded [`Entry`].
pub const ENTRY_FIELD: &str = "e";

/// Each stream key is trimmed to about this many entries (`XADD … MAXLEN ~`). A reader
/// that falls this far behind has its cursor trimmed away and is told of a gap.
pub const MAXLEN: u64 = 100_000;

/// Entries waiting to be sent to Redis, per process. When the queue is full, `publish`
/// drops the entry (warn log, `ganglion_bus_dropped_total{reason="queue_full"}`) instead
/// of waiting: `publish` is a plain fn called on runtime threads, and waiting there could
/// starve the very task that drains the queue. The writers' heartbeats (`prev == pos`,
/// every second) then let readers notice the hole and catch up from the database.
pub const PUBLISH_QUEUE: usize = 32_768;

/// How many entries a subscriber may fall behind the process's reader before it is told
/// [`ganglion_bus::Delivery::Gap`].
pub const SUBSCRIBER_CAPACITY: usize = ganglion_bus::IN_PROCESS_CAPACITY;

/// Time allowed to open a connection (TCP, handshake, first commands).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First and longest wait before reconnecting after Redis fails.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why [`connect`] refused. An unreachable Redis is not an error: the bus keeps trying.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is not a Redis URL.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(String),
    /// The key prefix is empty.
    #[error("the bus key prefix must not be empty")]
    EmptyKeyPrefix,
}

/// The Redis key of one stream kind's bus stream.
pub fn stream_key(key_prefix: &str, kind: StreamKind) -> String {
    format!("{key_prefix}:stream:{}", kind.name())
}

/// The `CLIENT SETNAME` of the connection that follows the bus for process `writer`, so
/// operators (and tests) can find it in `CLIENT LIST`.
pub fn reader_client_name(key_prefix: &str, writer: &str) -> String {
    client_name("reader", key_prefix, writer)
}

/// The `CLIENT SETNAME` of the connection that publishes for process `writer`.
pub fn publisher_client_name(key_prefix: &str, writer: &str) -> String {
    client_name("publisher", key_prefix, writer)
}

fn client_name(role: &str, key_prefix: &str, writer: &str) -> String {
    // Redis refuses spaces and control characters in client names.
    format!("ganglion-bus-{role}:{key_prefix}:{writer}")
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
}

/// Connects the replication bus to Redis at `url` (`redis://…`), publishing as `writer`,
/// with every key under `key_prefix`.
///
/// Returns once the first connections were tried: at once if Redis answers or refuses,
/// after at most about six seconds if it does not answer at all. If Redis is unreachable,
/// the bus still returns: publishes are dropped (and counted) until Redis
/// answers, and subscribers get [`ganglion_bus::Delivery::Gap`] once it does. Must be
/// called inside a Tokio runtime; the bus's tasks stop when its last handle is dropped
/// (queued entries are still sent first).
pub async fn connect(url: &str, writer: &str, key_prefix: &str) -> Result<Bus, Error> {
    if key_prefix.is_empty() {
        return Err(Error::EmptyKeyPrefix);
    }
    let client = redis::Client::open(url).map_err(|e| Error::InvalidUrl(e.to_string()))?;
    let keys: Vec<String> = StreamKind::ALL
        .into_iter()
        .map(|kind| stream_key(key_prefix, kind))
        .collect();
    let fanout = Fanout::new(SUBSCRIBER_CAPACITY);
    let stop_reader = CancellationToken::new();
    let queue_full = Arc::new(AtomicU64::new(0));
    let reader = Reader::new(
        client.clone(),
        keys.clone(),
        reader_client_name(key_prefix, writer),
        fanout.clone(),
        stop_reader.clone(),
    );
    let publisher = Publisher::new(
        client,
        keys,
        publisher_client_name(key_prefix, writer),
        queue_full.clone(),
    );
    let (read_link, publish_link) = tokio::join!(reader.open(), publisher.open());
    let read_link = read_link
        .inspect_err(|e| {
            tracing::warn!(error = %e, "bus reader cannot reach Redis yet; retrying in the background");
        })
        .ok();
    let publish_link = publish_link
        .inspect_err(|e| {
            tracing::warn!(error = %e, "bus publisher cannot reach Redis yet; dropping entries until it can");
        })
        .ok();
    let (jobs, rx) = mpsc::channel(PUBLISH_QUEUE);
    tokio::spawn(reader.run(read_link));
    tokio::spawn(publisher.run(rx, publish_link));
    let backend = RedisBus {
        jobs,
        fanout,
        queue_full,
        stop_reader,
    };
    Ok(Bus::from_backend(writer, Arc::new(backend)))
}

/// The [`BusBackend`] over Redis: a queue to the publisher task, and the fan-out the
/// reader task fills.
struct RedisBus {
    jobs: mpsc::Sender<Job>,
    fanout: Fanout,
    /// Entries dropped because the queue was full, since the publisher last reported them.
    queue_full: Arc<AtomicU64>,
    stop_reader: CancellationToken,
}

impl fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBus")
            .field("queued", &(PUBLISH_QUEUE - self.jobs.capacity()))
            .finish_non_exhaustive()
    }
}

impl BusBackend for RedisBus {
    fn publish(&self, entry: Entry) {
        match self.jobs.try_send(Job::Entry(entry)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                publisher::count_dropped("queue_full", 1);
                // Warn once per episode; the publisher reports the total when it drains.
                if self.queue_full.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        capacity = PUBLISH_QUEUE,
                        "bus publish queue full; dropping entries (readers catch up from the database)"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // Only if the publisher task died; nothing else ends it while we live.
                publisher::count_dropped("closed", 1);
                tracing::error!("bus publisher task is gone; entry dropped");
            }
        }
    }

    fn subscribe(&self) -> Subscription {
        self.fanout.subscribe()
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (done, flushed) = oneshot::channel();
            // Waiting for room here is fine: flush is async, and the publisher drains the
            // queue without needing anything from us.
            if self.jobs.send(Job::Flush(done)).await.is_ok() {
                let _ = flushed.await;
            }
        })
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        // The publisher ends by itself once the queue's sender is gone and it has drained.
        self.stop_reader.cancel();
    }
}
