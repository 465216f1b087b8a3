//! The federation sender, in-process (ARCHITECTURE §6): follows the events stream, and
//! for every event sent by one of our users in a room with members on other servers,
//! queues it for each of those servers; one transaction in flight per destination (at
//! most 50 PDUs), retried with exponential back-off (capped) until the destination
//! takes it. A destination's last sent position is committed to `shard_cursors`.
//!
//! Not built yet: catching up after a restart or a bus gap from those cursors (events
//! committed while the sender was down are not sent), EDUs, waking a backed-off
//! destination when it contacts us, and sharing destinations among several senders.

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

/// One event to send: its stream position and federation JSON.
#[derive(Debug, Clone)]
struct Outgoing {
    pos: i64,
    pdu: Value,
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
    loop {
        let delivery = tokio::select! {
            d = sub.recv() => d,
            () = shutdown.cancelled() => break,
        };
        let entry = match delivery {
            Delivery::Entry(e) if e.stream == StreamKind::Events as i32 => e,
            Delivery::Entry(_) => continue,
            Delivery::Gap => {
                tracing::warn!(
                    "federation sender: bus gap; events in it are not sent (catch-up is not built)"
                );
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
        for row in rows {
            let ours = ruma::UserId::parse(&row.sender)
                .map(|u| u.server_name().as_str() == client.origin())
                .unwrap_or(false);
            if !ours {
                continue;
            }
            let destinations = match destinations(&store, &row.room_id, client.origin()).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "federation sender: cannot list the room's servers");
                    continue;
                }
            };
            let Ok(pdu) = serde_json::from_str::<Value>(&row.json) else {
                continue;
            };
            for d in destinations {
                let q = queues.entry(d.clone()).or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(destination_loop(
                        client.clone(),
                        store.clone(),
                        d.clone(),
                        rx,
                        txn_counter.clone(),
                        shutdown.clone(),
                    ));
                    tx
                });
                let _ = q.send(Outgoing {
                    pos: row.stream_ordering,
                    pdu: pdu.clone(),
                });
            }
        }
    }
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
        let mut batch = vec![first];
        while batch.len() < MAX_PDUS {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let txn = format!("{}-{}", now_ms(), counter.fetch_add(1, Ordering::Relaxed));
        let body = json!({
            "origin": client.origin(),
            "origin_server_ts": now_ms(),
            "pdus": batch.iter().map(|o| o.pdu.clone()).collect::<Vec<_>>(),
            "edus": [],
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
                    let last = batch.iter().map(|o| o.pos).max().unwrap_or(0);
                    if let Err(e) = store
                        .advance_shard_cursor(ROLE, &destination, last, client.origin())
                        .await
                    {
                        tracing::warn!(%destination, error = %e, "cannot commit the destination's cursor");
                    }
                    metrics::counter!("ganglion_federation_pdus_sent_total")
                        .increment(batch.len() as u64);
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
