//! In-process fan-out to subscribers: the last hop of every bus implementation.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::{Delivery, Entry};

/// What travels on the fan-out channel.
#[derive(Debug, Clone)]
enum Signal {
    Entry(Arc<Entry>),
    Gap,
}

/// Hands entries and gaps to every current [`Subscription`] of this process.
///
/// A bounded broadcast: a subscriber that falls `capacity` signals behind loses the oldest
/// and is told [`Delivery::Gap`]. Subscribers see [`Delivery::Closed`] once every clone of
/// the `Fanout` is dropped. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Fanout {
    tx: broadcast::Sender<Signal>,
}

impl Fanout {
    /// A fan-out buffering at most `capacity` signals per subscriber.
    pub fn new(capacity: usize) -> Fanout {
        let (tx, _) = broadcast::channel(capacity);
        Fanout { tx }
    }

    /// Delivers `entry` to every current subscriber. No subscriber is not an error.
    pub fn entry(&self, entry: Arc<Entry>) {
        let _ = self.tx.send(Signal::Entry(entry));
    }

    /// Tells every current subscriber that entries may have been lost.
    pub fn gap(&self) {
        let _ = self.tx.send(Signal::Gap);
    }

    /// A subscription to every signal sent from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
        }
    }
}

/// A subscription to every stream.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Signal>,
}

impl Subscription {
    /// Waits for the next delivery.
    pub async fn recv(&mut self) -> Delivery {
        match self.rx.recv().await {
            Ok(Signal::Entry(e)) => Delivery::Entry(e),
            Ok(Signal::Gap) => Delivery::Gap,
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
