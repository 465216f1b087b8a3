//! `fanout`: how long a message takes to reach long-polling clients. `clients` users join one
//! public room and each long-polls `GET /sync?since=…&timeout=30000` in a loop (with a filter
//! that leaves out presence, account data and ephemeral events, so that only room events wake
//! them). A separate sender sends `messages` messages one at a time; each waits until every
//! client has it (or `deliver_timeout_s`), then `interval_ms` more so that every client is back
//! in its long poll. A sample is the time from the start of the send request to the moment a
//! client has the sync response that carries the event: one sample per client per message.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::client::{Http, Session};
use crate::stats::Samples;
use crate::{Ctx, FanoutArgs, Result};

/// What a client saw: message number `k`, client index, and when.
enum Seen {
    Event {
        k: usize,
        client: usize,
        at: Instant,
    },
    SyncError(String),
}

pub async fn run(ctx: &Ctx, a: &FanoutArgs) -> Result<()> {
    let n = a.clients.max(1);
    ctx.rep.say(&format!(
        "fanout: {n} long-polling clients, {} messages",
        a.messages
    ));
    let mut users = super::register_users(ctx, "fan", n + 1).await?;
    let sender = users.remove(0);
    let room = ctx
        .http
        .create_room(&sender, true, "loadgen fan-out")
        .await?;
    stream::iter(users.iter())
        .map(|u| ctx.http.join(u, &room))
        .buffer_unordered(ctx.setup_concurrency)
        .try_collect::<()>()
        .await?;

    // Upload the filter; fall back to no filter if the server has no filter API.
    let filter = json!({
        "presence": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
        "room": {
            "ephemeral": {"not_types": ["*"]},
            "account_data": {"not_types": ["*"]},
            "timeline": {"limit": 50},
        },
    });
    let filters: Vec<Option<String>> = match stream::iter(users.iter())
        .map(|u| ctx.http.upload_filter(u, &filter))
        .buffered(ctx.setup_concurrency)
        .try_collect::<Vec<String>>()
        .await
    {
        Ok(ids) => ids.into_iter().map(Some).collect(),
        Err(e) => {
            ctx.rep.say(&format!(
                "fanout: filter upload failed ({e}); syncing without a filter"
            ));
            vec![None; n]
        }
    };
    let filtered = filters.iter().all(Option::is_some);

    // Initial syncs, then the long-poll loops.
    let since: Vec<String> = stream::iter(users.iter().zip(&filters))
        .map(|(u, f)| async move {
            let v = ctx.http.sync(u, None, f.as_deref(), 0).await?;
            crate::client::str_field(&v, "next_batch")
        })
        .buffered(ctx.setup_concurrency)
        .try_collect()
        .await?;

    let marker = format!("fanout {} ", ctx.prefix);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let room = Arc::new(room);
    let mut tasks = Vec::with_capacity(n);
    for (i, ((user, filter), since)) in users.into_iter().zip(filters).zip(since).enumerate() {
        let poll = Poller {
            http: ctx.http.clone(),
            user,
            filter,
            room: Arc::clone(&room),
            marker: marker.clone(),
            timeout_ms: a.sync_timeout_ms,
            client: i,
            tx: tx.clone(),
        };
        tasks.push(tokio::spawn(poll.run(since)));
    }
    drop(tx);
    // Let every client settle into its long poll.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut starts: Vec<Instant> = Vec::with_capacity(a.messages);
    let mut seen: HashSet<(usize, usize)> = HashSet::new();
    let mut lat = Samples::default();
    let mut send_lat = Samples::default();
    let mut duplicates = 0usize;
    let mut sync_errors = Vec::new();
    let mut record = |s: Seen, starts: &[Instant], seen: &mut HashSet<(usize, usize)>| match s {
        Seen::Event { k, client, at } => {
            if let Some(t0) = starts.get(k) {
                if seen.insert((k, client)) {
                    lat.push(at.saturating_duration_since(*t0));
                } else {
                    duplicates += 1;
                }
            }
        }
        Seen::SyncError(e) => sync_errors.push(e),
    };
    for k in 0..a.messages {
        let t0 = Instant::now();
        starts.push(t0);
        let txn = format!("{}-fan-{k}", ctx.prefix);
        ctx.http
            .send_text(&sender, &room, &txn, &format!("{marker}{k}"))
            .await?;
        send_lat.push(t0.elapsed());
        let deadline =
            tokio::time::Instant::from_std(t0 + Duration::from_secs_f64(a.deliver_timeout_s));
        while (0..n).any(|c| !seen.contains(&(k, c))) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => record(s, &starts, &mut seen),
                Ok(None) | Err(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(a.interval_ms)).await;
        while let Ok(s) = rx.try_recv() {
            record(s, &starts, &mut seen);
        }
    }
    for t in &tasks {
        t.abort();
    }

    if let Some(e) = sync_errors.first() {
        ctx.rep.say(&format!(
            "fanout: {} sync error(s), first: {e}",
            sync_errors.len()
        ));
    }
    let expected = n * a.messages;
    let missed = expected - seen.len();
    if lat.len() == 0 {
        return Err("fanout: no client received any message".into());
    }
    let (p50, p99, max) = (lat.percentile(50.0), lat.percentile(99.0), lat.max());
    ctx.rep.say(&format!(
        "fanout: {} deliveries of {expected}: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; \
         send p50 {:.1} ms; missed {missed}, duplicates {duplicates}",
        lat.len(),
        send_lat.percentile(50.0)
    ));
    let params = json!({
        "clients": n, "messages": a.messages, "deliveries": lat.len(), "missed": missed,
        "duplicates": duplicates, "sync_errors": sync_errors.len(), "filtered": filtered,
        "max_ms": max, "send_p50_ms": send_lat.percentile(50.0),
    });
    let key = format!("fanout.clients_{n}");
    let rep = &ctx.rep;
    rep.figure(
        "fanout",
        &format!("{key}.p50_ms"),
        p50,
        "ms",
        false,
        params.clone(),
    )?;
    rep.figure("fanout", &format!("{key}.p99_ms"), p99, "ms", false, params)?;
    if missed > 0 || duplicates > 0 {
        return Err(format!("fanout: {missed} deliveries missed, {duplicates} duplicated").into());
    }
    Ok(())
}

/// One long-polling client.
struct Poller {
    http: Http,
    user: Session,
    filter: Option<String>,
    room: Arc<String>,
    marker: String,
    timeout_ms: u64,
    client: usize,
    tx: mpsc::UnboundedSender<Seen>,
}

impl Poller {
    async fn run(self, mut since: String) {
        loop {
            let res = self
                .http
                .sync(
                    &self.user,
                    Some(&since),
                    self.filter.as_deref(),
                    self.timeout_ms,
                )
                .await;
            let at = Instant::now();
            match res {
                Ok(v) => {
                    for k in self.marked(&v) {
                        let _ = self.tx.send(Seen::Event {
                            k,
                            client: self.client,
                            at,
                        });
                    }
                    if let Some(next) = v.get("next_batch").and_then(Value::as_str) {
                        since = next.to_owned();
                    }
                }
                Err(e) => {
                    let _ = self.tx.send(Seen::SyncError(e.to_string()));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// The message numbers of this run's fan-out messages in a sync response.
    fn marked(&self, v: &Value) -> Vec<usize> {
        let events = v
            .pointer("/rooms/join")
            .and_then(|j| j.get(self.room.as_str()))
            .and_then(|r| r.pointer("/timeline/events"))
            .and_then(Value::as_array);
        events
            .into_iter()
            .flatten()
            .filter_map(|e| e.pointer("/content/body").and_then(Value::as_str))
            .filter_map(|b| b.strip_prefix(self.marker.as_str()))
            .filter_map(|k| k.parse().ok())
            .collect()
    }
}
