//! bus: the replication doorbell (ARCHITECTURE §3).
//!
//! Writers publish an [`Entry`] after their transaction commits; readers follow every
//! entry and fetch payloads from the database. This crate holds the [`Bus`] handle and
//! the in-process implementation the all-in-one shape uses; the Redis Streams
//! implementation plugs in behind the same handle.
//! Depends on `core` and `proto`. Knows nothing of HTTP, SQL or Matrix semantics beyond ids.

use std::sync::Arc;

pub use ganglion_proto::bus::{Entry, Row};
use tokio::sync::broadcast;

/// How many entries an in-process subscriber may fall behind before it is told it lagged
/// (and then catches up from the database, as after a Redis gap).
pub const IN_PROCESS_CAPACITY: usize = 16_384;

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

/// A subscription to every stream.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Entry>>,
}

impl Subscription {
    /// Waits for the next delivery.
    pub async fn recv(&mut self) -> Delivery {
        match self.rx.recv().await {
            Ok(e) => Delivery::Entry(e),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "bus subscriber lagged; catching up from the database"
                );
                Delivery::Gap
            }
            Err(broadcast::error::RecvError::Closed) => Delivery::Closed,
        }
    }
}

/// The bus handle. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Bus {
    tx: broadcast::Sender<Arc<Entry>>,
    writer: Arc<str>,
}

impl Bus {
    /// An in-process bus (the all-in-one shape). `writer` names this process in entries.
    pub fn in_process(writer: &str) -> Bus {
        let (tx, _) = broadcast::channel(IN_PROCESS_CAPACITY);
        Bus {
            tx,
            writer: writer.into(),
        }
    }

    /// This process's writer name.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// Publishes an entry. Call only after the change it announces has committed.
    /// Having no subscriber is not an error: the database is the record.
    pub fn publish(&self, mut entry: Entry) {
        if entry.writer.is_empty() {
            entry.writer = self.writer.to_string();
        }
        let _ = self.tx.send(Arc::new(entry));
    }

    /// Subscribes to every stream from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_in_order_and_reports_gaps() {
        let bus = Bus::in_process("main");
        let mut sub = bus.subscribe();
        for pos in 1..=3 {
            bus.publish(Entry {
                stream: 0,
                prev: pos - 1,
                pos,
                ..Default::default()
            });
        }
        for pos in 1..=3 {
            match sub.recv().await {
                Delivery::Entry(e) => {
                    assert_eq!(e.pos, pos);
                    assert_eq!(e.writer, "main");
                }
                other => panic!("expected entry, got {other:?}"),
            }
        }
        for pos in 0..(IN_PROCESS_CAPACITY as i64 + 10) {
            bus.publish(Entry {
                stream: 0,
                prev: pos,
                pos: pos + 1,
                ..Default::default()
            });
        }
        assert!(matches!(sub.recv().await, Delivery::Gap));
    }
}
