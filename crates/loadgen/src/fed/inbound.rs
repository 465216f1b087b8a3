//! `fed-inbound`: how fast the target applies events from another server. A local user of
//! the target creates a public room; the user of one fake server joins it over federation
//! (make_join + send_join), then the fake sends `transactions` transactions of
//! `pdus_per_txn` `m.room.message` PDUs each (`PUT /_matrix/federation/v1/send/{txnId}`,
//! X-Matrix signed). Every PDU is hashed and signed by the fake, cites the create event
//! (where the room version wants it), the power levels and its sender's join, and has the
//! previous PDU as its only prev_event, so the target checks the signatures, hash and auth
//! rules of each and needs nothing it was not sent. All PDUs and request signatures are made
//! before the clock starts.
//!
//! One transaction at a time, and the next one only once the previous one is *applied*: its
//! last PDU readable by the local user (`GET /rooms/{roomId}/event/{eventId}` answers 200).
//! Two reasons, both Synapse's (`federation/federation_server.py`, `_handle_received_pdu`;
//! `storage/databases/main/event_federation.py`, `prune_staged_events_in_room`):
//! - Synapse answers a transaction once it has checked signatures and hashes and put the
//!   PDUs in its inbound staging area; a background task applies them later. An answer
//!   therefore says little about throughput.
//! - When 100 or more events of one room are staged, Synapse drops all but the newest
//!   (leaving them to `get_missing_events` and back-pagination). Sending on at the rate of
//!   its answers would make it throw away most of what it measured.
//!
//! The applied check polls cheaply: once right after the answer, then from 90% of the
//! previous transaction's applied time on, every 2% of it (at least 1 ms, at most 100 ms),
//! so it adds a few requests per transaction and at most about 2% to the figure. Should
//! the target handle a PDU before its prev_event anyway, the fake answers
//! `get_missing_events` (the count is reported).
//!
//! Figures: accepted PDUs / wall time from the first measured transaction's start until the
//! last one was applied; each transaction's time to applied and to its answer. Every PDU
//! must be accepted (an entry without `error` in the answer's `pdus`), and afterwards the
//! local user must see every one in `/messages`, or the scenario fails.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::FedInboundArgs;
use super::fake;
use super::identity::now_ms;
use super::remote::{Remote, join};
use crate::client::Session;
use crate::stats::Samples;
use crate::{Ctx, Result, procstat};

/// The longest a transaction may take to be applied.
const APPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// One transaction, built and signed before the measurement.
struct Txn {
    path: String,
    body: Value,
    auth: String,
    event_ids: Vec<String>,
}

/// What the target said about one transaction's PDUs.
#[derive(Default)]
struct Outcome {
    accepted: usize,
    refused: usize,
    missing: usize,
    first_error: Option<String>,
}

impl Outcome {
    fn add(&mut self, txn: &Txn, status: StatusCode, answer: &Value) {
        if !status.is_success() {
            self.refused += txn.event_ids.len();
            self.first_error
                .get_or_insert_with(|| format!("transaction answered {status}: {answer}"));
            return;
        }
        for id in &txn.event_ids {
            match answer.pointer("/pdus").and_then(|p| p.get(id)) {
                Some(r) if r.get("error").is_some() => {
                    self.refused += 1;
                    self.first_error.get_or_insert_with(|| format!("{id}: {r}"));
                }
                Some(_) => self.accepted += 1,
                None => self.missing += 1,
            }
        }
    }
}

/// Timings of one transaction.
struct Timed {
    answered: Duration,
    applied: Duration,
}

pub async fn run(ctx: &Ctx, a: &FedInboundArgs) -> Result<()> {
    let version = a.target.version()?;
    let remote = a.target.remote()?;
    let per_txn = a.pdus_per_txn.clamp(1, 50);
    ctx.rep.say(&format!(
        "fed-inbound: {} transactions of {per_txn} PDUs into one room (version {version}) of {}",
        a.transactions, remote.name
    ));
    // The fake's inbox: the target may send it the room's events; nothing is measured there.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let fake = fake::start(0, a.target.tls()?, tx).await?;
    let me = fake.identity.clone();

    let owner = crate::scenarios::register_users(ctx, "fedin", 1)
        .await?
        .remove(0);
    let room = ctx
        .http
        .create_room_with(
            &owner,
            &json!({"preset": "public_chat", "name": "loadgen fed-inbound", "room_version": version.as_str()}),
        )
        .await?;
    let user_id = format!("@{}_fedin:{}", ctx.prefix, me.name);
    let joined_at = Instant::now();
    let mut joined = join(&remote, &me, &user_id, &room, &version).await?;
    ctx.rep.say(&format!(
        "set-up: {user_id} joined {room} over federation in {:.2}s",
        joined_at.elapsed().as_secs_f64()
    ));

    let marker = format!("fedin {} ", ctx.prefix);
    let total = a.warmup + a.transactions;
    let mut txns = Vec::with_capacity(total);
    for t in 0..total {
        let mut pdus = Vec::with_capacity(per_txn);
        let mut event_ids = Vec::with_capacity(per_txn);
        for i in 0..per_txn {
            let (pdu, id) = joined.next_message(&me, &format!("{marker}{}", t * per_txn + i))?;
            fake.remember(&id, &pdu);
            pdus.push(pdu);
            event_ids.push(id);
        }
        let body =
            json!({"origin": me.name, "origin_server_ts": now_ms(), "pdus": pdus, "edus": []});
        let path = format!("/_matrix/federation/v1/send/{}-in-{t}", ctx.prefix);
        let auth = me.authorization(&remote.name, "PUT", &path, Some(&body))?;
        txns.push(Txn {
            path,
            body,
            auth,
            event_ids,
        });
    }

    let mut expect: Option<Duration> = None;
    let mut warm = Outcome::default();
    for txn in &txns[..a.warmup] {
        let t = send_applied(ctx, &remote, &owner, &room, txn, expect, &mut warm).await?;
        expect = Some(t.applied);
    }
    if let Some(e) = &warm.first_error {
        return Err(format!("the warm-up transaction was refused: {e}").into());
    }

    let cpu0 = ctx.server_cpu();
    let own0 = procstat::cpu_seconds(std::process::id());
    let mut out = Outcome::default();
    let (mut applied, mut answered) = (Samples::default(), Samples::default());
    let t0 = Instant::now();
    for txn in &txns[a.warmup..] {
        let t = send_applied(ctx, &remote, &owner, &room, txn, expect, &mut out).await?;
        applied.push(t.applied);
        answered.push(t.answered);
        expect = Some(t.applied);
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = ctx.server_cpu().zip(cpu0).map(|(b, a)| b - a);
    let own = procstat::cpu_seconds(std::process::id())
        .zip(own0)
        .map(|(b, a)| b - a);
    drain.abort();

    // Everything the target accepted must be in the room for its local user.
    let want: HashSet<String> = (0..total * per_txn)
        .map(|k| format!("{marker}{k}"))
        .collect();
    let visible = count_visible(ctx, &owner, &room, &want).await?;

    let rate = out.accepted as f64 / wall;
    let sent = a.transactions * per_txn;
    ctx.rep.say(&format!(
        "fed-inbound: {} of {sent} PDUs accepted and applied in {wall:.2}s = {rate:.1} events/s; \
         per transaction: applied p50 {:.1} ms, p99 {:.1} ms, answered p50 {:.1} ms; \
         refused {}, unanswered {}; {visible} of {} visible to the local user",
        out.accepted,
        applied.percentile(50.0),
        applied.percentile(99.0),
        answered.percentile(50.0),
        out.refused,
        out.missing,
        want.len()
    ));
    let stats = &fake.stats;
    let params = json!({
        "transactions": a.transactions, "pdus_per_txn": per_txn, "warmup_transactions": a.warmup,
        "sent": sent, "accepted": out.accepted, "refused": out.refused, "unanswered": out.missing,
        "first_error": out.first_error, "visible": visible, "expected_visible": want.len(),
        "wall_s": wall, "answered_p99_ms": answered.percentile(99.0),
        "room_version": version.as_str(), "server_cpu_s": cpu, "loadgen_cpu_s": own,
        "fake_key_requests": stats.key_requests.load(Ordering::Relaxed),
        "get_missing_events_requests": stats.missing_events_requests.load(Ordering::Relaxed),
        "get_missing_events_returned": stats.missing_events_returned.load(Ordering::Relaxed),
        "fake_unknown_requests": stats.unknown_paths(),
    });
    let key = format!("fed_inbound.txn_{per_txn}");
    let rep = &ctx.rep;
    let fig = |name: &str, v: f64, unit: &'static str, hib: bool| {
        rep.figure(
            "fed_inbound",
            &format!("{key}.{name}"),
            v,
            unit,
            hib,
            params.clone(),
        )
    };
    fig("events_per_s", rate, "events/s", true)?;
    fig("txn_applied_p50_ms", applied.percentile(50.0), "ms", false)?;
    fig("txn_applied_p99_ms", applied.percentile(99.0), "ms", false)?;
    fig(
        "txn_answered_p50_ms",
        answered.percentile(50.0),
        "ms",
        false,
    )?;
    if let Some(cpu) = cpu
        && out.accepted > 0
    {
        fig(
            "server_cpu_ms_per_event",
            cpu * 1000.0 / out.accepted as f64,
            "ms",
            false,
        )?;
    }
    if out.accepted != sent || visible != want.len() {
        return Err(format!(
            "{} of {sent} PDUs accepted ({} refused, {} unanswered; first error: {}), {visible} of {} visible",
            out.accepted,
            out.refused,
            out.missing,
            out.first_error.as_deref().unwrap_or("none"),
            want.len()
        )
        .into());
    }
    Ok(())
}

/// Sends one transaction and waits until its last PDU is applied (see the module header
/// for the polling); `expect` is the previous transaction's applied time.
async fn send_applied(
    ctx: &Ctx,
    remote: &Remote,
    user: &Session,
    room: &str,
    txn: &Txn,
    expect: Option<Duration>,
    out: &mut Outcome,
) -> Result<Timed> {
    let start = Instant::now();
    let (status, answer) = remote
        .send(Method::PUT, &txn.path, Some(&txn.body), &txn.auth)
        .await?;
    let answered = start.elapsed();
    out.add(txn, status, &answer);
    let Some(last) = txn.event_ids.last() else {
        return Ok(Timed {
            answered,
            applied: answered,
        });
    };
    let mut first = true;
    loop {
        if ctx.http.room_event_status(user, room, last).await? == StatusCode::OK {
            return Ok(Timed {
                answered,
                applied: start.elapsed(),
            });
        }
        let elapsed = start.elapsed();
        if elapsed > APPLY_TIMEOUT {
            return Err(format!(
                "{last} was not applied {}s after its transaction was sent",
                APPLY_TIMEOUT.as_secs()
            )
            .into());
        }
        let step = expect
            .map_or(elapsed / 20, |e| e / 50)
            .clamp(Duration::from_millis(1), Duration::from_millis(100));
        let wake = match expect {
            Some(e) if first => (start + e.mul_f64(0.9)).max(Instant::now() + step),
            _ => Instant::now() + step,
        };
        first = false;
        tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
    }
}

/// How many of `want` (message bodies) the local user sees in the room, paging back from
/// the newest event until all are found or the room's start.
async fn count_visible(
    ctx: &Ctx,
    user: &Session,
    room: &str,
    want: &HashSet<String>,
) -> Result<usize> {
    let mut seen = HashSet::new();
    let mut from: Option<String> = None;
    for _ in 0..1000 {
        let page = ctx
            .http
            .messages_back(user, room, from.as_deref(), 500)
            .await?;
        let chunk = page.get("chunk").and_then(Value::as_array);
        for ev in chunk.into_iter().flatten() {
            if let Some(body) = ev.pointer("/content/body").and_then(Value::as_str)
                && want.contains(body)
            {
                seen.insert(body.to_owned());
            }
        }
        let end = page.get("end").and_then(Value::as_str).map(str::to_owned);
        if seen.len() == want.len()
            || chunk.is_none_or(Vec::is_empty)
            || end.is_none()
            || end == from
        {
            break;
        }
        from = end;
    }
    Ok(seen.len())
}
