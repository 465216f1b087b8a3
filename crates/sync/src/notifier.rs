//! The notifier: follows the bus, keeps this process's view of every stream position,
//! the typing cache, and wakes long-polling clients (ARCHITECTURE §3–§4).
//!
//! Apply, then advance: an entry's effect on caches (typing) is applied before the
//! position it announces becomes visible, so no token handed out claims data the caches
//! do not show. A gap (lagging subscriber, flushed Redis) re-reads positions from the
//! database and wakes everyone.

use std::{collections::HashMap, sync::Arc, time::Duration};

use ganglion_bus::{Bus, Delivery, Entry};
use ganglion_core::{StreamKind, StreamPos, SyncToken};
use ganglion_storage::Store;
use tokio::sync::{RwLock, broadcast, watch};
use tokio_util::sync::CancellationToken;

/// Wake-ups buffered per waiter; a waiter that falls this far behind just recomputes.
const WAKE_CAPACITY: usize = 4096;

/// What woke a waiter.
#[derive(Debug, Clone)]
pub enum Wake {
    /// A bus entry (check whether it concerns you).
    Entry(Arc<Entry>),
    /// Positions were re-read after a gap: everyone recomputes.
    All,
}

/// The typing state of one room as last announced.
#[derive(Debug, Clone, Default)]
pub struct RoomTyping {
    /// Users typing.
    pub user_ids: Vec<String>,
    /// Typing-stream position of the last change.
    pub pos: i64,
}

/// This process's view of the streams. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Notifier {
    current: watch::Receiver<SyncToken>,
    wakes: broadcast::Sender<Wake>,
    typing: Arc<RwLock<HashMap<String, RoomTyping>>>,
}

impl Notifier {
    /// Starts following `bus`, with positions first read from the database.
    pub async fn start(
        store: Store,
        bus: &Bus,
        shutdown: CancellationToken,
    ) -> Result<Notifier, ganglion_storage::Error> {
        // Subscribe before reading positions, so nothing committed in between is missed.
        let sub = bus.subscribe();
        let token = positions_from_db(&store, SyncToken::default()).await?;
        let (tx, current) = watch::channel(token);
        let (wakes, _) = broadcast::channel(WAKE_CAPACITY);
        let typing: Arc<RwLock<HashMap<String, RoomTyping>>> = Arc::default();
        let notifier = Notifier {
            current,
            wakes: wakes.clone(),
            typing: typing.clone(),
        };
        tokio::spawn(follow(store, sub, tx, wakes, typing, shutdown));
        Ok(notifier)
    }

    /// The current token: every stream as far as this process has applied it.
    pub fn current(&self) -> SyncToken {
        *self.current.borrow()
    }

    /// A watch of the current token (for services that follow one stream's position).
    pub fn current_watch(&self) -> watch::Receiver<SyncToken> {
        self.current.clone()
    }

    /// Subscribes to wake-ups.
    pub fn subscribe(&self) -> broadcast::Receiver<Wake> {
        self.wakes.subscribe()
    }

    /// Waits (bounded) until this process has applied everything `token` claims.
    /// Returns whether it got there.
    pub async fn wait_for(&self, token: &SyncToken, limit: Duration) -> bool {
        let mut rx = self.current.clone();
        let wait = rx.wait_for(|cur| cur.covers(token));
        matches!(tokio::time::timeout(limit, wait).await, Ok(Ok(_)))
    }

    /// The typing state of some rooms.
    pub async fn typing(&self, rooms: &[String]) -> HashMap<String, RoomTyping> {
        let t = self.typing.read().await;
        rooms
            .iter()
            .filter_map(|r| t.get(r).map(|v| (r.clone(), v.clone())))
            .collect()
    }
}

async fn positions_from_db(
    store: &Store,
    mut token: SyncToken,
) -> Result<SyncToken, ganglion_storage::Error> {
    for kind in StreamKind::ALL {
        let db = store.select_stream_max(kind).await?;
        if db > token.get(kind).0 {
            token.set(kind, StreamPos(db));
        }
    }
    Ok(token)
}

async fn follow(
    store: Store,
    mut sub: ganglion_bus::Subscription,
    tx: watch::Sender<SyncToken>,
    wakes: broadcast::Sender<Wake>,
    typing: Arc<RwLock<HashMap<String, RoomTyping>>>,
    shutdown: CancellationToken,
) {
    loop {
        let delivery = tokio::select! {
            d = sub.recv() => d,
            () = shutdown.cancelled() => break,
        };
        match delivery {
            Delivery::Entry(entry) => {
                let Some(kind) = StreamKind::from_index(entry.stream) else {
                    continue;
                };
                let cur = *tx.borrow();
                if entry.prev > cur.get(kind).0 && kind != StreamKind::Typing {
                    // We missed something: catch up from the record first.
                    catch_up(&store, &tx, &wakes).await;
                }
                if kind == StreamKind::Typing {
                    let mut t = typing.write().await;
                    for row in &entry.rows {
                        t.insert(
                            row.room_id.clone(),
                            RoomTyping {
                                user_ids: row.user_ids.clone(),
                                pos: entry.pos,
                            },
                        );
                    }
                }
                // Apply, then advance.
                tx.send_modify(|tok| {
                    if entry.pos > tok.get(kind).0 || kind == StreamKind::Typing {
                        tok.set(
                            kind,
                            StreamPos(entry.pos.max(if kind == StreamKind::Typing {
                                0
                            } else {
                                tok.get(kind).0
                            })),
                        );
                    }
                });
                if !entry.rows.is_empty() {
                    let _ = wakes.send(Wake::Entry(entry));
                }
            }
            Delivery::Gap => catch_up(&store, &tx, &wakes).await,
            Delivery::Closed => break,
        }
    }
}

async fn catch_up(store: &Store, tx: &watch::Sender<SyncToken>, wakes: &broadcast::Sender<Wake>) {
    let mut delay = Duration::from_millis(50);
    loop {
        let cur = *tx.borrow();
        match positions_from_db(store, cur).await {
            Ok(token) => {
                tx.send_replace(token);
                let _ = wakes.send(Wake::All);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "catch-up from the database failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
