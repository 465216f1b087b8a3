//! bus: the replication doorbell (docs/architecture.md, "Streams and positions").
//!
//! Writers publish an [`Entry`] after their transaction commits; readers follow every
//! entry and fetch payloads from the database. This crate holds the [`Bus`] handle, the
//! [`BusBackend`] trait behind it, the in-process implementation the all-in-one shape uses
//! and [`Fanout`], the in-process delivery every implementation ends in. The Redis Streams
//! implementation lives in `bus-redis` and plugs in through [`Bus::from_backend`].
//! Depends on `core` and `proto`. Knows nothing of HTTP, SQL, Redis or Matrix semantics
//! beyond ids. Nothing here may block or fail a publisher: the database is the record, and
//! a lost entry is found by readers through `prev` and heartbeats.

use std::{fmt, future::Future, pin::Pin, sync::Arc};

pub use ganglion_proto::bus::{Entry, Row};

mod fanout;
mod in_process;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
#[cfg(test)]
mod tests;

pub use fanout::{Fanout, Subscription};

/// How many entries an in-process subscriber may fall behind before it is told it lagged
/// (and then catches up from the database, as after a Redis gap).
pub const IN_PROCESS_CAPACITY: usize = 16_384;

/// A boxed, sendable future, for the object-safe [`BusBackend`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// The next entry.
    Entry(Arc<Entry>),
    /// Entries were lost (lagging reader, flushed Redis): re-read positions from the database.
    Gap,
    /// The bus is shutting down.
    Closed,
}

/// A transport behind [`Bus`]: in-process broadcast or Redis Streams.
///
/// Implementations must keep per-stream publish order, must never block or fail
/// [`BusBackend::publish`], and must report [`Delivery::Gap`] to subscribers whenever they
/// cannot be sure a subscriber saw every entry published after it subscribed.
pub trait BusBackend: Send + Sync + fmt::Debug + 'static {
    /// Hands `entry` (its writer already filled in) to the transport. Returns at once;
    /// an entry that cannot be sent is dropped (and counted), never waited on.
    fn publish(&self, entry: Entry);

    /// A subscription to every entry this process receives from now on.
    fn subscribe(&self) -> Subscription;

    /// Resolves once every entry published before the call has been handed to the
    /// transport or dropped. For shutdown ("flush the bus") and tests.
    fn flush(&self) -> BoxFuture<'_, ()>;
}

/// The bus handle. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Bus {
    backend: Arc<dyn BusBackend>,
    writer: Arc<str>,
}

impl Bus {
    /// An in-process bus (the all-in-one shape). `writer` names this process in entries.
    pub fn in_process(writer: &str) -> Bus {
        Bus::from_backend(writer, Arc::new(in_process::InProcess::new()))
    }

    /// A bus over another transport (e.g. `ganglion_bus_redis::connect`). `writer` names
    /// this process in the entries it publishes.
    pub fn from_backend(writer: &str, backend: Arc<dyn BusBackend>) -> Bus {
        Bus {
            backend,
            writer: writer.into(),
        }
    }

    /// This process's writer name.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// Publishes an entry. Call only after the change it announces has committed.
    /// Never blocks and never fails: having no subscriber, a full queue or an unreachable
    /// transport only loses the doorbell, and readers catch up from the database.
    pub fn publish(&self, mut entry: Entry) {
        if entry.writer.is_empty() {
            entry.writer = self.writer.to_string();
        }
        self.backend.publish(entry);
    }

    /// Subscribes to every stream from now on.
    pub fn subscribe(&self) -> Subscription {
        self.backend.subscribe()
    }

    /// Waits until every entry published through this process's bus before the call has
    /// been handed to the transport (or dropped). Shutdown calls it before closing pools.
    pub async fn flush(&self) {
        self.backend.flush().await;
    }
}
