//! `fed-fanout`: how fast the target delivers one room's messages to many servers. A local
//! user of the target creates a public room; `destinations` fake servers (one listener,
//! one key and one server name each) join one user each over federation, one after
//! another. Once the joins have been passed around (no transaction for 2 s), the local
//! user sends messages through the client API in two phases:
//!
//! - paced: `messages` sends at `rate` per second, each started on schedule (not waiting
//!   for the previous answer). A sample is the time from the start of a send request to the
//!   moment a fake server has read the transaction carrying that event: one sample per
//!   destination per message. Figures p50 and p99.
//! - burst: `burst_messages` sends one after another, each as soon as the previous one was
//!   answered. Figure: messages per second fully fanned out = messages / time from the
//!   first send's start until every destination had every message.
//!
//! A delivery missed (within `deliver_timeout_s` of a phase's last send) fails the scenario;
//! an event delivered twice to one destination is counted, not failed (a target may resend).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::FedFanoutArgs;
use super::fake::{self, Arrival, FakeServer};
use super::remote::join;
use crate::client::Session;
use crate::stats::Samples;
use crate::{Ctx, Result, procstat};

/// Most paced sends in flight at once: a target that answers slower than the rate gets at
/// most this many requests queued before the schedule slips.
const MAX_IN_FLIGHT: usize = 64;
/// The joins are settled once no transaction reached any fake for this long.
const QUIET: Duration = Duration::from_secs(2);

/// Deliveries of one phase.
struct Deliveries {
    /// First arrival of message `k` at destination `d`: `(d, k) -> when`.
    first: HashMap<(usize, usize), Instant>,
    duplicates: usize,
    /// Transactions that carried at least one of the phase's events, and those events.
    txns: usize,
    pdus: usize,
}

pub async fn run(ctx: &Ctx, a: &FedFanoutArgs) -> Result<()> {
    let version = a.target.version()?;
    let remote = a.target.remote()?;
    let n = a.destinations.max(1);
    ctx.rep.say(&format!(
        "fed-fanout: one room (version {version}) of {} with {n} remote servers; {} messages at {}/s, then {} as fast as answered",
        remote.name, a.messages, a.rate, a.burst_messages
    ));
    let tls = a.target.tls()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut fakes: Vec<FakeServer> = Vec::with_capacity(n);
    for i in 0..n {
        fakes.push(fake::start(i, tls.clone(), tx.clone()).await?);
    }
    drop(tx);

    let sender = crate::scenarios::register_users(ctx, "fedfan", 1)
        .await?
        .remove(0);
    let room = ctx
        .http
        .create_room_with(
            &sender,
            &json!({"preset": "public_chat", "name": "loadgen fed-fanout", "room_version": version.as_str()}),
        )
        .await?;
    let started = Instant::now();
    for f in &fakes {
        let user = format!("@{}_fedfan:{}", ctx.prefix, f.identity.name);
        join(&remote, &f.identity, &user, &room, &version).await?;
    }
    // Let the target pass the joins around before measuring.
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < settle_deadline {
        match tokio::time::timeout(QUIET, rx.recv()).await {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    ctx.rep.say(&format!(
        "set-up: {n} remote servers joined {room} and settled in {:.1}s",
        started.elapsed().as_secs_f64()
    ));

    let mut failures = Vec::new();
    let key = format!("fed_fanout.dests_{n}");

    // ---- paced ----------------------------------------------------------------------
    if a.messages > 0 {
        let marker = format!("ffp {} ", ctx.prefix);
        let cpu0 = ctx.server_cpu();
        let (starts, last_ack, send_errors) =
            send_paced(ctx, &sender, &room, &marker, a.messages, a.rate).await;
        let deadline = last_ack + Duration::from_secs_f64(a.deliver_timeout_s);
        let got = collect(&mut rx, &room, &marker, n, a.messages, deadline).await;
        let cpu = ctx.server_cpu().zip(cpu0).map(|(b, a)| b - a);
        let lat = latencies(&got, &starts);
        let missed = n * a.messages - got.first.len();
        let params = phase_params(&got, &lat, n, a.messages, missed, send_errors, cpu, &fakes);
        ctx.rep.say(&format!(
            "fed-fanout paced: {} deliveries of {}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {:.1} PDUs per transaction; missed {missed}",
            lat.len(),
            n * a.messages,
            lat.percentile(50.0),
            lat.percentile(99.0),
            lat.max(),
            got.pdus as f64 / got.txns.max(1) as f64,
        ));
        let pk = format!("{key}.paced_{}_msgs_{}", a.rate, a.messages);
        let rep = &ctx.rep;
        rep.figure(
            "fed_fanout",
            &format!("{pk}.p50_ms"),
            lat.percentile(50.0),
            "ms",
            false,
            params.clone(),
        )?;
        rep.figure(
            "fed_fanout",
            &format!("{pk}.p99_ms"),
            lat.percentile(99.0),
            "ms",
            false,
            params.clone(),
        )?;
        if let Some(cpu) = cpu {
            rep.figure(
                "fed_fanout",
                &format!("{pk}.server_cpu_ms_per_msg"),
                cpu * 1000.0 / a.messages as f64,
                "ms",
                false,
                params,
            )?;
        }
        if missed > 0 || send_errors > 0 {
            failures.push(format!(
                "paced: {missed} deliveries missed, {send_errors} sends failed"
            ));
        }
    }

    // ---- burst ----------------------------------------------------------------------
    if a.burst_messages > 0 {
        let marker = format!("ffb {} ", ctx.prefix);
        let m = a.burst_messages;
        let cpu0 = ctx.server_cpu();
        let own0 = procstat::cpu_seconds(std::process::id());
        let mut starts = Vec::with_capacity(m);
        let mut send_errors = 0usize;
        let mut last_ack = Instant::now();
        for k in 0..m {
            let t0 = Instant::now();
            starts.push(t0);
            let txn = format!("{}-ffb-{k}", ctx.prefix);
            if ctx
                .http
                .send_text(&sender, &room, &txn, &format!("{marker}{k}"))
                .await
                .is_err()
            {
                send_errors += 1;
            }
            last_ack = Instant::now();
        }
        let deadline = last_ack + Duration::from_secs_f64(a.deliver_timeout_s);
        let got = collect(&mut rx, &room, &marker, n, m, deadline).await;
        let cpu = ctx.server_cpu().zip(cpu0).map(|(b, a)| b - a);
        let own = procstat::cpu_seconds(std::process::id())
            .zip(own0)
            .map(|(b, a)| b - a);
        let lat = latencies(&got, &starts);
        let missed = n * m - got.first.len();
        let done = got.first.values().max().copied();
        let first = starts.first().copied();
        let (secs, drain_ms) = match (done, first) {
            (Some(done), Some(first)) => (
                done.saturating_duration_since(first).as_secs_f64(),
                done.saturating_duration_since(last_ack).as_secs_f64() * 1000.0,
            ),
            _ => (0.0, 0.0),
        };
        let send_s = first.map_or(0.0, |f| last_ack.saturating_duration_since(f).as_secs_f64());
        let rate = if secs > 0.0 { m as f64 / secs } else { 0.0 };
        let mut params = phase_params(&got, &lat, n, m, missed, send_errors, cpu, &fakes);
        if let Some(obj) = params.as_object_mut() {
            obj.insert("all_delivered_s".into(), json!(secs));
            obj.insert("sending_s".into(), json!(send_s));
            obj.insert(
                "send_rate_per_s".into(),
                json!(if send_s > 0.0 { m as f64 / send_s } else { 0.0 }),
            );
            obj.insert("drain_after_last_ack_ms".into(), json!(drain_ms));
            obj.insert("loadgen_cpu_s".into(), json!(own));
        }
        ctx.rep.say(&format!(
            "fed-fanout burst: {m} messages sent in {send_s:.2}s, at all {n} servers after {secs:.2}s = {rate:.1} msg/s \
             ({:.1} deliveries/s); latency p50 {:.1} ms, p99 {:.1} ms; {:.1} PDUs per transaction; missed {missed}",
            rate * n as f64,
            lat.percentile(50.0),
            lat.percentile(99.0),
            got.pdus as f64 / got.txns.max(1) as f64,
        ));
        let bk = format!("{key}.burst_{m}");
        let rep = &ctx.rep;
        rep.figure(
            "fed_fanout",
            &format!("{bk}.msgs_per_s"),
            rate,
            "msg/s",
            true,
            params.clone(),
        )?;
        rep.figure(
            "fed_fanout",
            &format!("{bk}.p50_ms"),
            lat.percentile(50.0),
            "ms",
            false,
            params.clone(),
        )?;
        rep.figure(
            "fed_fanout",
            &format!("{bk}.p99_ms"),
            lat.percentile(99.0),
            "ms",
            false,
            params.clone(),
        )?;
        if let Some(cpu) = cpu {
            rep.figure(
                "fed_fanout",
                &format!("{bk}.server_cpu_ms_per_msg"),
                cpu * 1000.0 / m as f64,
                "ms",
                false,
                params,
            )?;
        }
        if missed > 0 || send_errors > 0 {
            failures.push(format!(
                "burst: {missed} deliveries missed, {send_errors} sends failed"
            ));
        }
    }

    let unknown: Vec<String> = fakes.iter().flat_map(|f| f.stats.unknown_paths()).collect();
    if !unknown.is_empty() {
        ctx.rep.say(&format!(
            "fed-fanout: the fakes answered 404 to: {unknown:?}"
        ));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}

/// Sends `m` messages at `rate` per second, each started on schedule: returns each send's
/// start, when the last answer came, and how many failed.
async fn send_paced(
    ctx: &Ctx,
    sender: &Session,
    room: &str,
    marker: &str,
    m: usize,
    rate: f64,
) -> (Vec<Instant>, Instant, usize) {
    let gate = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let t0 = tokio::time::Instant::now();
    let mut starts = Vec::with_capacity(m);
    let mut tasks = JoinSet::new();
    for k in 0..m {
        tokio::time::sleep_until(t0 + period * k as u32).await;
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        starts.push(Instant::now());
        let http = ctx.http.clone();
        let sender = sender.clone();
        let room = room.to_owned();
        let txn = format!("{}-ffp-{k}", ctx.prefix);
        let body = format!("{marker}{k}");
        tasks.spawn(async move {
            let r = http.send_text(&sender, &room, &txn, &body).await;
            drop(permit);
            (r.is_ok(), Instant::now())
        });
    }
    let mut errors = 0;
    let mut last = Instant::now();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok((ok, at)) => {
                errors += usize::from(!ok);
                last = last.max(at);
            }
            Err(_) => errors += 1,
        }
    }
    (starts, last, errors)
}

/// Reads arrivals until every destination has every one of the phase's `m` messages (or
/// `deadline`): first arrival per (destination, message), duplicates, and transaction
/// counts. Events of other phases are ignored.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Arrival>,
    room: &str,
    marker: &str,
    n: usize,
    m: usize,
    deadline: Instant,
) -> Deliveries {
    let mut got = Deliveries {
        first: HashMap::new(),
        duplicates: 0,
        txns: 0,
        pdus: 0,
    };
    let deadline = tokio::time::Instant::from_std(deadline);
    while got.first.len() < n * m {
        let Ok(Some(arrival)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        let mut ours = 0;
        for pdu in &arrival.pdus {
            if pdu.get("room_id").and_then(Value::as_str) != Some(room) {
                continue;
            }
            let Some(k) = pdu
                .pointer("/content/body")
                .and_then(Value::as_str)
                .and_then(|b| b.strip_prefix(marker))
                .and_then(|k| k.parse::<usize>().ok())
                .filter(|k| *k < m)
            else {
                continue;
            };
            ours += 1;
            if got.first.insert((arrival.server, k), arrival.at).is_some() {
                got.duplicates += 1;
            }
        }
        if ours > 0 {
            got.txns += 1;
            got.pdus += ours;
        }
    }
    got
}

/// One sample per delivery: arrival − the send's start.
fn latencies(got: &Deliveries, starts: &[Instant]) -> Samples {
    let mut lat = Samples::default();
    for (&(_, k), at) in &got.first {
        if let Some(t0) = starts.get(k) {
            lat.push(at.saturating_duration_since(*t0));
        }
    }
    lat
}

#[allow(clippy::too_many_arguments)]
fn phase_params(
    got: &Deliveries,
    lat: &Samples,
    n: usize,
    m: usize,
    missed: usize,
    send_errors: usize,
    cpu: Option<f64>,
    fakes: &[FakeServer],
) -> Value {
    let sum = |f: fn(&fake::Stats) -> u64| fakes.iter().map(|x| f(&x.stats)).sum::<u64>();
    json!({
        "destinations": n, "messages": m, "deliveries": got.first.len(), "missed": missed,
        "duplicates": got.duplicates, "send_errors": send_errors, "max_ms": lat.max(),
        "mean_ms": lat.mean(), "transactions_with_these_events": got.txns,
        "mean_pdus_per_txn": got.pdus as f64 / got.txns.max(1) as f64, "server_cpu_s": cpu,
        "fake_transactions_total": sum(|s| s.transactions.load(Ordering::Relaxed)),
        "fake_edus_total": sum(|s| s.edus.load(Ordering::Relaxed)),
        "fake_unknown_requests_total": sum(|s| s.unknown.load(Ordering::Relaxed)),
    })
}
