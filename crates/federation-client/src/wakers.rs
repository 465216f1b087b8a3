//! Waking a destination we back off from when it contacts us: its request proves it is
//! up again. The inbound listener wakes, the sender's destination loops wait; both
//! sides sit above this crate, so the handle lives here.

use std::{collections::HashMap, sync::Arc};

/// Wakes a destination that is backed off when it contacts us (its request proves it
/// is up again): the inbound listener calls [`Wakers::wake`] for every authenticated
/// origin. Only destinations sent to from this process can be woken.
#[derive(Debug, Clone, Default)]
pub struct Wakers {
    inner: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Notify>>>>,
}

impl Wakers {
    /// Ends the back-off of `server`'s loop, if it is waiting.
    pub fn wake(&self, server: &str) {
        let notify = self.inner.lock().ok().and_then(|m| m.get(server).cloned());
        if let Some(n) = notify {
            n.notify_one();
        }
    }

    /// The signal a destination's loop waits on during its back-off (the sender's side).
    pub fn register(&self, server: &str) -> Arc<tokio::sync::Notify> {
        let n = Arc::new(tokio::sync::Notify::new());
        if let Ok(mut m) = self.inner.lock() {
            m.insert(server.to_owned(), n.clone());
        }
        n
    }
}
