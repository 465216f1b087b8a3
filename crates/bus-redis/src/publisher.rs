//! The publisher task: drains the publish queue in order and XADDs each entry to its
//! stream's key, a pipeline per batch. While Redis is unreachable it drops entries (warn
//! log and `ganglion_bus_dropped_total`) and retries with back-off; readers find the hole
//! through `prev` and the writers' heartbeats, and catch up from the database.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ganglion_bus::Entry;
use ganglion_core::StreamKind;
use prost::Message;
use redis::aio::MultiplexedConnection;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use crate::{
    ENTRY_FIELD, MAXLEN,
    link::{self, Backoff, LinkError},
};

/// Entries sent to Redis in one pipeline (one round trip).
const BATCH: usize = 512;

/// Bounds each XADD pipeline; a Redis that hangs longer is treated as gone.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Work for the publisher task, in queue order.
pub(crate) enum Job {
    /// Send this entry.
    Entry(Entry),
    /// Answer once everything queued before this has been sent or dropped.
    Flush(oneshot::Sender<()>),
}

/// Counts entries that never reached Redis.
pub(crate) fn count_dropped(reason: &'static str, n: usize) {
    metrics::counter!("ganglion_bus_dropped_total", "reason" => reason).increment(n as u64);
}

/// Since when Redis has been unreachable, and when to try again.
struct Outage {
    since: Instant,
    retry_at: Instant,
    backoff: Backoff,
    dropped: usize,
}

impl Outage {
    fn new() -> Outage {
        let mut backoff = Backoff::new();
        let now = Instant::now();
        Outage {
            since: now,
            retry_at: now + backoff.next_delay(),
            backoff,
            dropped: 0,
        }
    }
}

/// Sends queued entries to Redis.
pub(crate) struct Publisher {
    client: redis::Client,
    /// Stream keys, indexed by `StreamKind`.
    keys: Vec<String>,
    name: String,
    queue_full: Arc<AtomicU64>,
}

impl Publisher {
    pub(crate) fn new(
        client: redis::Client,
        keys: Vec<String>,
        name: String,
        queue_full: Arc<AtomicU64>,
    ) -> Publisher {
        Publisher {
            client,
            keys,
            name,
            queue_full,
        }
    }

    /// Opens the publishing connection.
    pub(crate) async fn open(&self) -> Result<MultiplexedConnection, LinkError> {
        link::open(&self.client, &self.name, Some(RESPONSE_TIMEOUT)).await
    }

    /// Drains `jobs` until every sender is gone. `conn` is the connection `connect` opened,
    /// if it could.
    pub(crate) async fn run(
        self,
        mut jobs: mpsc::Receiver<Job>,
        mut conn: Option<MultiplexedConnection>,
    ) {
        let mut outage = conn.is_none().then(Outage::new);
        let mut batch = Vec::with_capacity(BATCH);
        while jobs.recv_many(&mut batch, BATCH).await > 0 {
            let mut entries = Vec::with_capacity(batch.len());
            let mut flushed = Vec::new();
            for job in batch.drain(..) {
                match job {
                    Job::Entry(e) => entries.push(e),
                    Job::Flush(done) => flushed.push(done),
                }
            }
            if !entries.is_empty() {
                self.send(&mut conn, &mut outage, entries).await;
            }
            for done in flushed {
                let _ = done.send(());
            }
        }
        tracing::debug!("bus publisher stopped");
    }

    async fn send(
        &self,
        conn: &mut Option<MultiplexedConnection>,
        outage: &mut Option<Outage>,
        entries: Vec<Entry>,
    ) {
        if let Some(o) = outage.as_mut()
            && Instant::now() >= o.retry_at
        {
            match self.open().await {
                Ok(c) => {
                    tracing::warn!(
                        down_for = ?o.since.elapsed(),
                        dropped = o.dropped,
                        "bus publisher reached Redis again"
                    );
                    *conn = Some(c);
                    *outage = None;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "bus publisher still cannot reach Redis");
                    o.retry_at = Instant::now() + o.backoff.next_delay();
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            if let Some(o) = outage.as_mut() {
                o.dropped += entries.len();
            }
            count_dropped("redis_unavailable", entries.len());
            return;
        };
        let mut pipe = redis::pipe();
        let mut sent = 0;
        for entry in &entries {
            let key = StreamKind::from_index(entry.stream).and_then(|k| self.keys.get(k as usize));
            let Some(key) = key else {
                tracing::warn!(
                    stream = entry.stream,
                    "bus entry for an unknown stream; dropped"
                );
                count_dropped("unknown_stream", 1);
                continue;
            };
            pipe.cmd("XADD")
                .arg(key)
                .arg("MAXLEN")
                .arg("~")
                .arg(MAXLEN)
                .arg("*")
                .arg(ENTRY_FIELD)
                .arg(entry.encode_to_vec())
                .ignore();
            sent += 1;
        }
        if sent == 0 {
            return;
        }
        match pipe.query_async::<()>(c).await {
            Ok(()) => {
                let full = self.queue_full.swap(0, Ordering::Relaxed);
                if full > 0 {
                    tracing::warn!(
                        dropped = full,
                        "bus publish queue drained; entries were dropped while it was full"
                    );
                }
            }
            Err(e) => {
                // Some of the batch may have reached Redis; count it all as lost, which is
                // what readers must assume anyway.
                tracing::warn!(
                    error = %e,
                    dropped = sent,
                    "bus publisher lost Redis; dropping entries until it is back"
                );
                count_dropped("redis_unavailable", sent);
                *conn = None;
                let mut o = Outage::new();
                o.dropped = sent;
                *outage = Some(o);
            }
        }
    }
}
