//! The notifier: follows the bus, keeps this process's view of every stream position,
//! the typing cache, and wakes long-polling clients (docs/architecture.md, "Streams and positions", "Token formats").
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
    tx: Arc<watch::Sender<SyncToken>>,
    wakes: broadcast::Sender<Wake>,
    typing: Arc<RwLock<HashMap<String, RoomTyping>>>,
}

/// How well this process follows replication (for readiness and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replication {
    /// Everything committed one check ago has been applied.
    pub caught_up: bool,
    /// When the last check succeeded (ms since the epoch); 0 before the first.
    pub checked_ms: i64,
    /// Catch-ups from the database forced by the check since start.
    pub forced_catch_ups: u64,
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
        let tx = Arc::new(tx);
        let (wakes, _) = broadcast::channel(WAKE_CAPACITY);
        let typing: Arc<RwLock<HashMap<String, RoomTyping>>> = Arc::default();
        let notifier = Notifier {
            current,
            tx: tx.clone(),
            wakes: wakes.clone(),
            typing: typing.clone(),
        };
        tokio::spawn(follow(store, sub, tx, wakes, typing, shutdown));
        Ok(notifier)
    }

    /// Checks replication every `period` until `shutdown`: reads the committed maximum of
    /// each database-backed stream, publishes how far behind this process is
    /// (`ganglion_replication_lag{stream}`, in positions), and when something committed
    /// a whole period ago has still not come over the bus (Redis down or flushed, an
    /// entry lost) catches up from the database and wakes everyone. Redis is only a
    /// doorbell: without it a process still moves, a period late.
    pub fn monitor(
        &self,
        store: Store,
        period: Duration,
        shutdown: CancellationToken,
    ) -> watch::Receiver<Replication> {
        let (state_tx, state) = watch::channel(Replication::default());
        let notifier = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // What was committed at the previous check: it must be applied by now.
            let mut previous: Option<[(StreamKind, i64); 5]> = None;
            let mut forced = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => break,
                }
                let maxes = match store.select_stream_maxes().await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "replication check: database unreachable");
                        state_tx.send_modify(|s| s.caught_up = false);
                        continue;
                    }
                };
                let applied = notifier.current();
                let behind = previous
                    .iter()
                    .flatten()
                    .any(|(kind, pos)| applied.get(*kind).0 < *pos);
                for (kind, pos) in maxes {
                    let lag = (pos - applied.get(kind).0).max(0);
                    metrics::gauge!("ganglion_replication_lag", "stream" => kind.name())
                        .set(lag as f64);
                }
                if behind {
                    forced += 1;
                    metrics::counter!("ganglion_replication_forced_catch_ups_total").increment(1);
                    tracing::warn!(
                        ?applied,
                        "replication: entries committed a period ago have not arrived over the bus; catching up from the database"
                    );
                    raise_from(&notifier.tx, &notifier.wakes, maxes);
                }
                previous = Some(maxes);
                state_tx.send_replace(Replication {
                    caught_up: true,
                    checked_ms: ganglion_core::time::now_ms(),
                    forced_catch_ups: forced,
                });
            }
        });
        state
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
    tx: Arc<watch::Sender<SyncToken>>,
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

/// Raises positions to `maxes` (never lowers one: the follower may have moved on
/// meanwhile) and wakes everyone.
fn raise_from(
    tx: &watch::Sender<SyncToken>,
    wakes: &broadcast::Sender<Wake>,
    maxes: impl IntoIterator<Item = (StreamKind, i64)>,
) {
    tx.send_modify(|tok| {
        for (kind, pos) in maxes {
            if pos > tok.get(kind).0 {
                tok.set(kind, StreamPos(pos));
            }
        }
    });
    let _ = wakes.send(Wake::All);
}

async fn catch_up(store: &Store, tx: &watch::Sender<SyncToken>, wakes: &broadcast::Sender<Wake>) {
    let mut delay = Duration::from_millis(50);
    loop {
        let cur = *tx.borrow();
        match positions_from_db(store, cur).await {
            Ok(token) => {
                raise_from(tx, wakes, StreamKind::ALL.map(|k| (k, token.get(k).0)));
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
