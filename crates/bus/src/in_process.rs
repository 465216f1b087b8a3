//! The in-process bus of the all-in-one shape: publishing is a broadcast send.

use std::sync::Arc;

use crate::{BoxFuture, BusBackend, Entry, Fanout, IN_PROCESS_CAPACITY, Subscription};

/// Publishes straight into the fan-out; subscribers are in this process.
#[derive(Debug)]
pub(crate) struct InProcess {
    fanout: Fanout,
}

impl InProcess {
    pub(crate) fn new() -> InProcess {
        InProcess {
            fanout: Fanout::new(IN_PROCESS_CAPACITY),
        }
    }
}

impl BusBackend for InProcess {
    fn publish(&self, entry: Entry) {
        self.fanout.entry(Arc::new(entry));
    }

    fn subscribe(&self) -> Subscription {
        self.fanout.subscribe()
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        // Publishing already delivered to every subscriber's buffer.
        Box::pin(std::future::ready(()))
    }
}
