//! federation-sender: outbound transactions (spec: Server-Server API, "Transactions";
//! docs/architecture.md, Federation, Sender). Follows the events, typing, receipts and
//! device-list streams; every event sent by one of our users in a room with members on other
//! servers is queued for each of those servers, with our users' typing changes
//! (`m.typing`) and public read receipts (`m.receipt`). One transaction in flight per
//! destination (at most 50 PDUs and 100 EDUs), retried with exponential back-off
//! (capped) until the destination takes it.
//!
//! Each destination's loop sends its events in stream order and commits the position
//! of the last one sent to `shard_cursors`. When its loop starts, and after a bus gap,
//! it first reads from the database every event of ours after its cursor (in rooms it
//! is in): live events at or below what it read are already queued, so nothing is
//! skipped or sent out of order, whatever a crash interrupts. A destination that never
//! had a transaction from us has no cursor: events it missed before its first one are
//! not caught up (backfill's job).
//!
//! Several senders share the destinations: with a [`Membership`] (the
//! `ganglion-federation-sender` role), a process sends only to the destinations it owns
//! by rendezvous hashing; when the membership changes, a destination it gains resumes
//! from the cursor its last owner committed, and one it loses is let go after its
//! transaction in flight. Without one (the single binary), it owns them all.
//!
//! A destination that contacts us while we back off from it is retried at once
//! ([`Wakers`]; only where the inbound listener and the sender share a process).
//!
//! Device-list changes of our users go as `m.device_list_update` (with an empty
//! `prev_id`, so the receiver resyncs through `/user/devices`), changes of their
//! master or self-signing key as `m.signing_key_update`. Not built yet: presence.
//!
//! To-device messages for other servers' users are durable, unlike the other EDUs: main
//! writes them to `device_federation_outbox` and rings the to-device stream with the
//! destination's name. The destination's loop reads its rows (all of them when it
//! starts), sends them before any other EDU, and deletes them once the destination has
//! taken the transaction. A crash between the two sends them again; the receiver drops
//! the repeat by its `message_id`.
//!
//! Depends on `core`, `storage`, `bus`, `cluster` and `federation-client`. It must NOT
//! depend on `rooms` or any API crate, serve HTTP, or write anything but its cursors
//! (`shard_cursors`) and the outbox rows it has delivered: it reads the record and the
//! bus and calls other servers.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ganglion_bus::{Bus, Delivery};
use ganglion_cluster::Membership;
use ganglion_core::{StreamKind, time::now_ms};
use ganglion_storage::Store;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use ganglion_federation_client::{FederationClient, Wakers};

/// Most PDUs in one transaction (spec).
const MAX_PDUS: usize = 50;
/// Most EDUs in one transaction (spec).
const MAX_EDUS: usize = 100;
/// Longest wait between two attempts at a destination.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The role name under which cursors are kept and senders share destinations.
pub const ROLE: &str = "federation-sender";
/// Most events one catch-up read takes (the loop reads again when they are sent).
const CATCH_UP_LIMIT: i64 = 5_000;
/// Most to-device EDUs one outbox read takes (the loop reads again when they are sent).
const OUTBOX_LIMIT: i64 = 500;

/// What a destination's loop is told.
#[derive(Debug, Clone)]
enum Outgoing {
    /// One of our events (with its stream position).
    Pdu { pos: i64, pdu: Value },
    /// An EDU.
    Edu(Value),
    /// Read the events after the cursor again (after a bus gap).
    CatchUp,
    /// The destination's to-device outbox got rows: read it.
    Outbox,
}

/// What the sender runs with.
#[derive(Debug, Clone)]
struct Shared {
    client: FederationClient,
    store: Store,
    counter: Arc<AtomicU64>,
    /// This process's part of transaction ids.
    nonce: Arc<str>,
    /// Back-offs that an incoming request from the destination ends.
    wakers: Wakers,
    shutdown: CancellationToken,
}

/// Starts the sender; it stops with `shutdown`. With `membership`, it sends only to the
/// destinations this process owns among the role's members.
pub fn start(
    client: FederationClient,
    store: Store,
    bus: &Bus,
    shutdown: CancellationToken,
    membership: Option<Membership>,
    wakers: Wakers,
) {
    let sub = bus.subscribe();
    let shared = Shared {
        client,
        store,
        counter: Arc::new(AtomicU64::new(0)),
        nonce: format!("{:08x}", rand::random::<u32>()).into(),
        wakers,
        shutdown,
    };
    tokio::spawn(follow(shared, sub, membership));
}

/// The destination loops of this process.
struct Queues {
    shared: Shared,
    membership: Option<Membership>,
    loops: HashMap<String, mpsc::UnboundedSender<Outgoing>>,
}

impl Queues {
    fn owns(&self, destination: &str) -> bool {
        self.membership.as_ref().is_none_or(|m| m.owns(destination))
    }

    /// The loop of a destination this process owns, started on first use.
    fn get(&mut self, destination: &str) -> Option<&mpsc::UnboundedSender<Outgoing>> {
        if !self.owns(destination) {
            return None;
        }
        if !self.loops.contains_key(destination) {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(destination_loop(
                self.shared.clone(),
                destination.to_owned(),
                rx,
            ));
            self.loops.insert(destination.to_owned(), tx);
            metrics::gauge!("ganglion_federation_destinations").set(self.loops.len() as f64);
        }
        self.loops.get(destination)
    }

    fn send(&mut self, destination: &str, m: Outgoing) {
        if let Some(q) = self.get(destination) {
            let _ = q.send(m);
        }
    }

    /// Starts the loop of every owned destination with a cursor (each catches up from
    /// it) and lets go of destinations owned no more.
    async fn rebalance(&mut self) {
        self.loops
            .retain(|d, _| self.membership.as_ref().is_none_or(|m| m.owns(d)));
        match self.shared.store.select_shard_cursors(ROLE).await {
            Ok(cursors) => {
                for (d, _) in cursors {
                    let _ = self.get(&d);
                }
            }
            Err(e) => tracing::warn!(error = %e, "federation sender: cannot read the cursors"),
        }
        // A started loop reads its whole outbox first.
        match self
            .shared
            .store
            .select_federation_outbox_destinations()
            .await
        {
            Ok(ds) => {
                for d in ds {
                    let _ = self.get(&d);
                }
            }
            Err(e) => tracing::warn!(error = %e, "federation sender: cannot read the outbox"),
        }
        metrics::gauge!("ganglion_federation_destinations").set(self.loops.len() as f64);
    }
}

async fn follow(
    shared: Shared,
    mut sub: ganglion_bus::Subscription,
    membership: Option<Membership>,
) {
    let mut changes = membership.as_ref().map(Membership::changes);
    let mut queues = Queues {
        shared: shared.clone(),
        membership,
        loops: HashMap::new(),
    };
    // Our users typing in each room, as last announced (typing entries carry the list).
    let mut typing: HashMap<String, Vec<String>> = HashMap::new();
    queues.rebalance().await;
    loop {
        let delivery = tokio::select! {
            d = sub.recv() => d,
            changed = async {
                match changes.as_mut() {
                    Some(c) => c.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => {
                if changed {
                    queues.rebalance().await;
                    tracing::info!(owned = queues.loops.len(), "federation sender: membership changed");
                } else {
                    changes = None;
                }
                continue;
            }
            () = shared.shutdown.cancelled() => break,
        };
        let entry = match delivery {
            Delivery::Entry(e) if e.stream == StreamKind::Events as i32 => e,
            Delivery::Entry(e)
                if e.stream == StreamKind::Typing as i32
                    || e.stream == StreamKind::Receipts as i32 =>
            {
                for (room_id, edu) in edus_of(&e, shared.client.origin(), &mut typing) {
                    let Ok(dests) =
                        destinations(&shared.store, &room_id, shared.client.origin()).await
                    else {
                        continue;
                    };
                    for d in dests {
                        queues.send(&d, Outgoing::Edu(edu.clone()));
                    }
                }
                continue;
            }
            Delivery::Entry(e) if e.stream == StreamKind::ToDevice as i32 => {
                for row in e.rows.iter().filter(|r| !r.server.is_empty()) {
                    queues.send(&row.server, Outgoing::Outbox);
                }
                continue;
            }
            Delivery::Entry(e) if e.stream == StreamKind::DeviceLists as i32 => {
                for (dest, edu) in device_list_edus(&shared, &e).await {
                    queues.send(&dest, Outgoing::Edu(edu));
                }
                continue;
            }
            Delivery::Entry(_) => continue,
            Delivery::Gap => {
                tracing::warn!(
                    "federation sender: bus gap; every destination catches up from its cursor"
                );
                for q in queues.loops.values() {
                    let _ = q.send(Outgoing::CatchUp);
                }
                queues.rebalance().await;
                continue;
            }
            Delivery::Closed => break,
        };
        let ids: Vec<String> = entry.rows.iter().map(|r| r.event_id.clone()).collect();
        if ids.is_empty() {
            continue;
        }
        let rows = match shared.store.select_events(&ids).await {
            Ok(r) => r,
            Err(e) => {
                // The destinations read them from their cursors at the next gap or start.
                tracing::warn!(error = %e, "federation sender: cannot load events");
                continue;
            }
        };
        let mut rooms: HashMap<String, Vec<String>> = HashMap::new();
        for row in rows {
            if !ours(&row.sender, shared.client.origin()) {
                continue;
            }
            // One membership query per room of the entry, not per event.
            if !rooms.contains_key(&row.room_id) {
                match destinations(&shared.store, &row.room_id, shared.client.origin()).await {
                    Ok(d) => {
                        rooms.insert(row.room_id.clone(), d);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "federation sender: cannot list the room's servers");
                        continue;
                    }
                }
            }
            let Ok(pdu) = serde_json::from_str::<Value>(&row.json) else {
                continue;
            };
            for d in rooms.get(&row.room_id).cloned().unwrap_or_default() {
                queues.send(
                    &d,
                    Outgoing::Pdu {
                        pos: row.stream_ordering,
                        pdu: pdu.clone(),
                    },
                );
            }
        }
    }
}

fn ours(user: &str, origin: &str) -> bool {
    ruma::UserId::parse(user).is_ok_and(|u| u.server_name().as_str() == origin)
}

/// The EDUs a typing or receipts entry stands for, per room: typing changes of our
/// users (against the last list seen), and our users' public read receipts.
fn edus_of(
    entry: &ganglion_bus::Entry,
    origin: &str,
    typing: &mut HashMap<String, Vec<String>>,
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for row in &entry.rows {
        if entry.stream == StreamKind::Typing as i32 {
            let now: Vec<String> = row
                .user_ids
                .iter()
                .filter(|u| ours(u, origin))
                .cloned()
                .collect();
            let before = typing
                .insert(row.room_id.clone(), now.clone())
                .unwrap_or_default();
            for u in now.iter().filter(|u| !before.contains(u)) {
                out.push((row.room_id.clone(), json!({ "edu_type": "m.typing", "content": { "room_id": row.room_id, "user_id": u, "typing": true } })));
            }
            for u in before.iter().filter(|u| !now.contains(u)) {
                out.push((row.room_id.clone(), json!({ "edu_type": "m.typing", "content": { "room_id": row.room_id, "user_id": u, "typing": false } })));
            }
        } else if row.kind == "m.read" && ours(&row.user_id, origin) {
            // Private receipts (m.read.private) never leave the server.
            out.push((
                row.room_id.clone(),
                json!({ "edu_type": "m.receipt", "content": { &row.room_id: { "m.read": { &row.user_id: {
                    "event_ids": [row.event_id], "data": { "ts": now_ms() } } } } } }),
            ));
        }
    }
    out
}

/// The `m.device_list_update` EDUs a device-list entry stands for, per destination: one
/// for each of our users whose row it carries, to every server sharing a joined room
/// with them. `prev_id` is always empty, which tells the receiver to fetch the whole
/// list again (`/user/devices`) instead of applying the change (spec: Server-Server
/// API, "Device Management"); `device_id` is the device whose keys changed, or empty
/// when the change was not one device's (cross-signing keys, a deleted device). An EDU
/// lost while a destination is unreachable for long is not caught up.
async fn device_list_edus(shared: &Shared, entry: &ganglion_bus::Entry) -> Vec<(String, Value)> {
    let origin = shared.client.origin();
    let mut out = Vec::new();
    for row in &entry.rows {
        if row.user_id.is_empty() || !ours(&row.user_id, origin) {
            continue;
        }
        let rooms = match shared
            .store
            .select_user_rooms(&row.user_id, &["join"])
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "federation sender: cannot list a user's rooms");
                continue;
            }
        };
        let mut servers = HashSet::new();
        for (room_id, ..) in rooms {
            match destinations(&shared.store, &room_id, origin).await {
                Ok(d) => servers.extend(d),
                Err(e) => {
                    tracing::warn!(error = %e, "federation sender: cannot list the room's servers");
                }
            }
        }
        let edu = if row.kind == SIGNING_KEY_UPDATE {
            match signing_key_update(&shared.store, &row.user_id).await {
                Some(edu) => edu,
                None => continue,
            }
        } else {
            json!({ "edu_type": "m.device_list_update", "content": {
                "user_id": row.user_id,
                "device_id": row.device_id,
                "stream_id": entry.pos,
                "prev_id": [],
            } })
        };
        out.extend(servers.into_iter().map(|d| (d, edu.clone())));
    }
    out
}

/// The device-list row kind of a change of a user's cross-signing keys.
const SIGNING_KEY_UPDATE: &str = "m.signing_key_update";

/// `m.signing_key_update` for `user`: their master and self-signing keys as stored now
/// (the user-signing key never leaves the server). None when they have neither or the
/// read fails (the receiver's next `/user/keys/query` gets them anyway).
async fn signing_key_update(store: &Store, user: &str) -> Option<Value> {
    let keys = match store.select_cross_signing_keys(&[user.to_owned()]).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "federation sender: cannot read cross-signing keys");
            return None;
        }
    };
    let mut content = serde_json::Map::new();
    content.insert("user_id".into(), Value::String(user.to_owned()));
    for (_, kind, text) in keys {
        let field = match kind.as_str() {
            "master" => "master_key",
            "self_signing" => "self_signing_key",
            _ => continue,
        };
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            content.insert(field.into(), v);
        }
    }
    (content.len() > 1)
        .then(|| json!({ "edu_type": SIGNING_KEY_UPDATE, "content": Value::Object(content) }))
}

/// The other servers with joined members in a room.
async fn destinations(
    store: &Store,
    room_id: &str,
    ours: &str,
) -> Result<Vec<String>, ganglion_storage::Error> {
    let mut out = store.select_joined_servers(room_id).await?;
    out.retain(|s| s != ours);
    Ok(out)
}

/// One destination's queue: events by position, EDUs in arrival order.
struct Pending {
    /// Events not sent yet, by stream position.
    pdus: BTreeMap<i64, Value>,
    /// EDUs not sent yet.
    edus: Vec<Value>,
    /// To-device EDUs read from the outbox and not taken yet, by position.
    durable: BTreeMap<i64, Value>,
    /// An outbox read is due.
    outbox_due: bool,
    /// The last outbox read stopped at its limit: read again when `durable` empties.
    outbox_more: bool,
    /// Every event at or below this was read from the database (or sent): a live event
    /// at or below it is already here.
    read_to: i64,
    /// The last catch-up read stopped at its limit: read again when the queue empties.
    more: bool,
    /// A catch-up read is due.
    catch_up: bool,
}

impl Pending {
    fn take(&mut self, m: Outgoing) {
        match m {
            Outgoing::Pdu { pos, pdu } if pos > self.read_to => {
                self.pdus.insert(pos, pdu);
            }
            Outgoing::Pdu { .. } => {}
            Outgoing::Edu(e) => self.edus.push(e),
            Outgoing::CatchUp => {
                self.catch_up = true;
                self.outbox_due = true;
            }
            Outgoing::Outbox => self.outbox_due = true,
        }
    }
}

async fn destination_loop(
    shared: Shared,
    destination: String,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut pending = Pending {
        pdus: BTreeMap::new(),
        edus: Vec::new(),
        durable: BTreeMap::new(),
        outbox_due: true,
        outbox_more: false,
        read_to: 0,
        more: false,
        catch_up: true,
    };
    let mut backoff = Duration::from_millis(500);
    let woken = shared.wakers.register(&destination);
    loop {
        if pending.catch_up || (pending.more && pending.pdus.is_empty()) {
            pending.catch_up = false;
            catch_up(&shared, &destination, &mut pending).await;
        }
        if pending.outbox_due || (pending.outbox_more && pending.durable.is_empty()) {
            pending.outbox_due = false;
            read_outbox(&shared, &destination, &mut pending).await;
        }
        if rx.is_closed() {
            // Let go (another sender owns it now), after the transaction in flight.
            break;
        }
        if pending.is_empty() {
            // A read that failed is tried again after a pause, news or not.
            let retry = pending.outbox_due || pending.catch_up;
            let m = tokio::select! {
                m = rx.recv() => match m { Some(m) => Some(m), None => break },
                () = tokio::time::sleep(Duration::from_secs(1)), if retry => None,
                () = shared.shutdown.cancelled() => break,
            };
            if let Some(m) = m {
                pending.take(m);
            }
        }
        while let Ok(m) = rx.try_recv() {
            pending.take(m);
        }
        if pending.is_empty() {
            continue;
        }
        // The oldest events first; the cursor then never passes an unsent one.
        let mut pdus = Vec::new();
        let mut last = 0;
        while pdus.len() < MAX_PDUS {
            let Some((pos, pdu)) = pending.pdus.pop_first() else {
                break;
            };
            last = pos;
            pdus.push(pdu);
        }
        // To-device EDUs first: they are the ones that must not be lost.
        let mut taken = Vec::new();
        let mut edus: Vec<Value> = Vec::new();
        while edus.len() < MAX_EDUS {
            let Some((pos, edu)) = pending.durable.pop_first() else {
                break;
            };
            taken.push(pos);
            edus.push(edu);
        }
        let n = pending.edus.len().min(MAX_EDUS - edus.len());
        edus.extend(pending.edus.drain(..n));
        // Unique across senders: two may briefly share a destination after a change.
        let txn = format!(
            "{}-{}-{}",
            shared.nonce,
            now_ms(),
            shared.counter.fetch_add(1, Ordering::Relaxed)
        );
        let body = json!({
            "origin": shared.client.origin(),
            "origin_server_ts": now_ms(),
            "pdus": pdus,
            "edus": edus,
        });
        let path = format!("/_matrix/federation/v1/send/{txn}");
        // The same transaction, id and all, until the destination takes it.
        loop {
            match shared
                .client
                .request(
                    ganglion_federation_client::Method::PUT,
                    &destination,
                    &path,
                    Some(&body),
                )
                .await
            {
                Ok(_) => {
                    backoff = Duration::from_millis(500);
                    if last > 0 {
                        pending.read_to = pending.read_to.max(last);
                        if let Err(e) = shared
                            .store
                            .advance_shard_cursor(ROLE, &destination, last, shared.client.origin())
                            .await
                        {
                            tracing::warn!(%destination, error = %e, "cannot commit the destination's cursor");
                        }
                    }
                    if !taken.is_empty() {
                        if let Err(e) = shared
                            .store
                            .delete_federation_outbox(&destination, &taken)
                            .await
                        {
                            // They go again after a restart; the destination drops repeats.
                            tracing::warn!(%destination, error = %e, "cannot clear delivered to-device EDUs");
                        }
                        metrics::counter!("ganglion_federation_to_device_sent_total")
                            .increment(taken.len() as u64);
                    }
                    metrics::counter!("ganglion_federation_pdus_sent_total")
                        .increment(pdus.len() as u64);
                    metrics::counter!("ganglion_federation_edus_sent_total")
                        .increment(edus.len() as u64);
                    break;
                }
                Err(_) if rx.is_closed() => {
                    // Owned by another sender now: it resumes from the cursor.
                    return;
                }
                Err(e) => {
                    tracing::warn!(%destination, error = %e, retry_in_ms = backoff.as_millis() as u64, "transaction not delivered");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                        () = woken.notified() => {
                            tracing::info!(%destination, "back-off ended: the destination contacted us");
                            backoff = Duration::from_millis(500);
                        }
                        () = shared.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.pdus.is_empty() && self.edus.is_empty() && self.durable.is_empty()
    }
}

/// Reads the destination's to-device outbox (its oldest rows) into its queue. Rows in
/// the queue already are read again harmlessly (same position, same EDU).
async fn read_outbox(shared: &Shared, destination: &str, pending: &mut Pending) {
    match shared
        .store
        .select_federation_outbox(destination, OUTBOX_LIMIT)
        .await
    {
        Ok(rows) => {
            pending.outbox_more = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= OUTBOX_LIMIT;
            for (pos, content) in rows {
                match serde_json::from_str::<Value>(&content) {
                    Ok(content) => {
                        pending.durable.insert(
                            pos,
                            json!({ "edu_type": "m.direct_to_device", "content": content }),
                        );
                    }
                    Err(e) => {
                        tracing::warn!(%destination, pos, error = %e, "unreadable to-device EDU in the outbox");
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(%destination, error = %e, "cannot read the to-device outbox");
            pending.outbox_due = true;
        }
    }
}

/// Reads our users' events after the destination's cursor, in rooms where it has
/// joined members now, into its queue.
async fn catch_up(shared: &Shared, destination: &str, pending: &mut Pending) {
    let cursor = match shared.store.select_shard_cursor(ROLE, destination).await {
        Ok(Some(c)) => c,
        // Never sent to: nothing to catch up, and every live event is new.
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(%destination, error = %e, "cannot read the destination's cursor");
            pending.catch_up = true;
            return;
        }
    };
    // Taken before the read: every event up to it is committed (one writer, in order),
    // so the read below has them all.
    let committed = match shared.store.select_stream_max(StreamKind::Events).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(%destination, error = %e, "cannot read the events position");
            pending.catch_up = true;
            return;
        }
    };
    let rows = match shared
        .store
        .select_events_by_server_since(shared.client.origin(), cursor, CATCH_UP_LIMIT)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%destination, error = %e, "cannot read events to catch up");
            pending.catch_up = true;
            return;
        }
    };
    pending.more = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= CATCH_UP_LIMIT;
    let mut rooms: HashMap<String, bool> = HashMap::new();
    let mut queued = 0usize;
    let mut seen = HashSet::new();
    for row in rows {
        pending.read_to = pending.read_to.max(row.stream_ordering);
        if !seen.insert(row.event_id.clone()) {
            continue;
        }
        let inside = match rooms.get(&row.room_id) {
            Some(b) => *b,
            None => {
                let b = destinations(&shared.store, &row.room_id, shared.client.origin())
                    .await
                    .is_ok_and(|d| d.iter().any(|x| x == destination));
                rooms.insert(row.room_id.clone(), b);
                b
            }
        };
        if !inside {
            continue;
        }
        if let Ok(pdu) = serde_json::from_str::<Value>(&row.json) {
            pending.pdus.insert(row.stream_ordering, pdu);
            queued += 1;
        }
    }
    if !pending.more {
        // Everything committed before the read was read: later live events are new.
        pending.read_to = pending.read_to.max(committed);
    }
    if queued > 0 {
        tracing::info!(%destination, queued, cursor, "federation sender: caught up from the cursor");
    }
}
