//! The federation sender, in-process (ARCHITECTURE §6): follows the events, typing and
//! receipts streams; every event sent by one of our users in a room with members on
//! other servers is queued for each of those servers, with our users' typing changes
//! (`m.typing`) and public read receipts (`m.receipt`). One transaction in flight per
//! destination (at most 50 PDUs and 100 EDUs), retried with exponential back-off
//! (capped) until the destination takes it. A destination's last sent events position is
//! committed to `shard_cursors`.
//!
//! On start and after a bus gap it catches up: every destination with a cursor gets our
//! users' events after it (in rooms it is in). A destination that never had a
//! transaction from us has no cursor, so events it missed before its first one are not
//! caught up (backfill's job).
//!
//! Not built yet: presence and device-list EDUs, waking a backed-off destination when it
//! contacts us, and sharing destinations among several senders.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ganglion_bus::{Bus, Delivery};
use ganglion_core::{StreamKind, time::now_ms};
use ganglion_storage::Store;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::FederationClient;

/// Most PDUs in one transaction (spec).
const MAX_PDUS: usize = 50;
/// Longest wait between two attempts at a destination.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The role name under which cursors are kept.
const ROLE: &str = "federation-sender";

/// Most EDUs in one transaction (spec).
const MAX_EDUS: usize = 100;

/// One thing to send: an event (with its stream position) or an EDU.
#[derive(Debug, Clone)]
enum Outgoing {
    Pdu { pos: i64, pdu: Value },
    Edu(Value),
}

/// Starts the sender; it stops with `shutdown`.
pub fn start(client: FederationClient, store: Store, bus: &Bus, shutdown: CancellationToken) {
    let sub = bus.subscribe();
    tokio::spawn(follow(client, store, sub, shutdown));
}

async fn follow(
    client: FederationClient,
    store: Store,
    mut sub: ganglion_bus::Subscription,
    shutdown: CancellationToken,
) {
    let mut queues: HashMap<String, mpsc::UnboundedSender<Outgoing>> = HashMap::new();
    let txn_counter = Arc::new(AtomicU64::new(0));
    // Our users typing in each room, as last announced (typing entries carry the list).
    let mut typing: HashMap<String, Vec<String>> = HashMap::new();
    // What was committed but not sent before a restart: from each destination's cursor.
    catch_up(&client, &store, &mut queues, &txn_counter, &shutdown).await;
    loop {
        let delivery = tokio::select! {
            d = sub.recv() => d,
            () = shutdown.cancelled() => break,
        };
        let entry = match delivery {
            Delivery::Entry(e) if e.stream == StreamKind::Events as i32 => e,
            Delivery::Entry(e)
                if e.stream == StreamKind::Typing as i32
                    || e.stream == StreamKind::Receipts as i32 =>
            {
                for (room_id, edu) in edus_of(&e, client.origin(), &mut typing) {
                    let Ok(dests) = destinations(&store, &room_id, client.origin()).await else {
                        continue;
                    };
                    for d in dests {
                        let q = queue(&mut queues, &d, &client, &store, &txn_counter, &shutdown);
                        let _ = q.send(Outgoing::Edu(edu.clone()));
                    }
                }
                continue;
            }
            Delivery::Entry(_) => continue,
            Delivery::Gap => {
                tracing::warn!(
                    "federation sender: bus gap; catching up from the destinations' cursors"
                );
                catch_up(&client, &store, &mut queues, &txn_counter, &shutdown).await;
                continue;
            }
            Delivery::Closed => break,
        };
        let ids: Vec<String> = entry.rows.iter().map(|r| r.event_id.clone()).collect();
        if ids.is_empty() {
            continue;
        }
        let rows = match store.select_events(&ids).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "federation sender: cannot load events");
                continue;
            }
        };
        let mut rooms: HashMap<String, Vec<String>> = HashMap::new();
        for row in rows {
            let ours = ruma::UserId::parse(&row.sender)
                .map(|u| u.server_name().as_str() == client.origin())
                .unwrap_or(false);
            if !ours {
                continue;
            }
            // One membership query per room of the entry, not per event.
            if !rooms.contains_key(&row.room_id) {
                match destinations(&store, &row.room_id, client.origin()).await {
                    Ok(d) => {
                        rooms.insert(row.room_id.clone(), d);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "federation sender: cannot list the room's servers");
                        continue;
                    }
                }
            }
            let destinations = rooms.get(&row.room_id).cloned().unwrap_or_default();
            let Ok(pdu) = serde_json::from_str::<Value>(&row.json) else {
                continue;
            };
            for d in destinations {
                let q = queue(&mut queues, &d, &client, &store, &txn_counter, &shutdown);
                let _ = q.send(Outgoing::Pdu {
                    pos: row.stream_ordering,
                    pdu: pdu.clone(),
                });
            }
        }
    }
}

/// Most events one catch-up pass queues (a later gap or restart continues from the
/// cursors).
const CATCH_UP_LIMIT: i64 = 10_000;

/// Queues, for every destination with a cursor, our users' events after it in rooms
/// where the destination has joined members. A destination may get an event twice
/// (once here, once live); receivers ignore events they already have.
async fn catch_up(
    client: &FederationClient,
    store: &Store,
    queues: &mut HashMap<String, mpsc::UnboundedSender<Outgoing>>,
    counter: &Arc<AtomicU64>,
    shutdown: &CancellationToken,
) {
    let cursors: HashMap<String, i64> = match store.select_shard_cursors(ROLE).await {
        Ok(c) => c.into_iter().collect(),
        Err(e) => {
            tracing::warn!(error = %e, "federation sender: cannot read the cursors");
            return;
        }
    };
    let Some(from) = cursors.values().min().copied() else {
        return;
    };
    let events = match store
        .select_events_by_server_since(client.origin(), from, CATCH_UP_LIMIT)
        .await
    {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "federation sender: cannot read events to catch up");
            return;
        }
    };
    let mut rooms: HashMap<String, Vec<String>> = HashMap::new();
    let mut queued = 0usize;
    for row in events {
        if !rooms.contains_key(&row.room_id) {
            let d = destinations(store, &row.room_id, client.origin())
                .await
                .unwrap_or_default();
            rooms.insert(row.room_id.clone(), d);
        }
        let Ok(pdu) = serde_json::from_str::<Value>(&row.json) else {
            continue;
        };
        for d in rooms.get(&row.room_id).into_iter().flatten() {
            if cursors.get(d).is_some_and(|c| row.stream_ordering > *c) {
                let q = queue(queues, d, client, store, counter, shutdown);
                let _ = q.send(Outgoing::Pdu {
                    pos: row.stream_ordering,
                    pdu: pdu.clone(),
                });
                queued += 1;
            }
        }
    }
    if queued > 0 {
        tracing::info!(
            queued,
            "federation sender: caught up from the destinations' cursors"
        );
    }
}

/// A destination's queue, its task started on first use.
fn queue<'a>(
    queues: &'a mut HashMap<String, mpsc::UnboundedSender<Outgoing>>,
    destination: &str,
    client: &FederationClient,
    store: &Store,
    counter: &Arc<AtomicU64>,
    shutdown: &CancellationToken,
) -> &'a mpsc::UnboundedSender<Outgoing> {
    queues.entry(destination.to_owned()).or_insert_with(|| {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(destination_loop(
            client.clone(),
            store.clone(),
            destination.to_owned(),
            rx,
            counter.clone(),
            shutdown.clone(),
        ));
        tx
    })
}

/// The EDUs a typing or receipts entry stands for, per room: typing changes of our
/// users (against the last list seen), and our users' public read receipts.
fn edus_of(
    entry: &ganglion_bus::Entry,
    origin: &str,
    typing: &mut HashMap<String, Vec<String>>,
) -> Vec<(String, Value)> {
    let ours = |u: &str| ruma::UserId::parse(u).is_ok_and(|u| u.server_name().as_str() == origin);
    let mut out = Vec::new();
    for row in &entry.rows {
        if entry.stream == StreamKind::Typing as i32 {
            let now: Vec<String> = row.user_ids.iter().filter(|u| ours(u)).cloned().collect();
            let before = typing
                .insert(row.room_id.clone(), now.clone())
                .unwrap_or_default();
            for u in now.iter().filter(|u| !before.contains(u)) {
                out.push((row.room_id.clone(), json!({ "edu_type": "m.typing", "content": { "room_id": row.room_id, "user_id": u, "typing": true } })));
            }
            for u in before.iter().filter(|u| !now.contains(u)) {
                out.push((row.room_id.clone(), json!({ "edu_type": "m.typing", "content": { "room_id": row.room_id, "user_id": u, "typing": false } })));
            }
        } else if row.kind == "m.read" && ours(&row.user_id) {
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

/// The other servers with joined members in a room.
async fn destinations(
    store: &Store,
    room_id: &str,
    ours: &str,
) -> Result<Vec<String>, ganglion_storage::Error> {
    let members = store.select_room_members(room_id, &["join"]).await?;
    let mut out: Vec<String> = members
        .iter()
        .filter_map(|(user, _, _)| ruma::UserId::parse(user).ok())
        .map(|u| u.server_name().to_string())
        .filter(|s| s != ours)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

async fn destination_loop(
    client: FederationClient,
    store: Store,
    destination: String,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    counter: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => break },
            () = shutdown.cancelled() => break,
        };
        let (mut pdus, mut edus, mut last) = (Vec::new(), Vec::new(), 0);
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Outgoing::Pdu { pos, pdu } => {
                    pdus.push(pdu);
                    last = last.max(pos);
                }
                Outgoing::Edu(e) => edus.push(e),
            }
            if pdus.len() >= MAX_PDUS || edus.len() >= MAX_EDUS {
                break;
            }
            next = rx.try_recv().ok();
        }
        let txn = format!("{}-{}", now_ms(), counter.fetch_add(1, Ordering::Relaxed));
        let body = json!({
            "origin": client.origin(),
            "origin_server_ts": now_ms(),
            "pdus": pdus,
            "edus": edus,
        });
        let path = format!("/_matrix/federation/v1/send/{txn}");
        // The same transaction, id and all, until the destination takes it.
        loop {
            match client
                .request(reqwest::Method::PUT, &destination, &path, Some(&body))
                .await
            {
                Ok(_) => {
                    backoff = Duration::from_millis(500);
                    if last > 0
                        && let Err(e) = store
                            .advance_shard_cursor(ROLE, &destination, last, client.origin())
                            .await
                    {
                        tracing::warn!(%destination, error = %e, "cannot commit the destination's cursor");
                    }
                    metrics::counter!("ganglion_federation_pdus_sent_total")
                        .increment(pdus.len() as u64);
                    metrics::counter!("ganglion_federation_edus_sent_total")
                        .increment(edus.len() as u64);
                    break;
                }
                Err(e) => {
                    tracing::warn!(%destination, error = %e, retry_in_ms = backoff.as_millis() as u64, "transaction not delivered");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
