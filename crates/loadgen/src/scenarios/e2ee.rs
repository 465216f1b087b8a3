//! `e2ee`: the end-to-end encryption endpoints at the size of a large encrypted room.
//!
//! - **claim**: one `POST /keys/claim` for a `signed_curve25519` one-time key of each of
//!   `claim_users × claim_devices` devices (what a client does before it can share a room
//!   key with devices it has no Olm session with). Every device first uploads device keys
//!   and `otks` one-time keys; they are topped up (unmeasured) whenever a claim has used
//!   them up, so every measured claim finds a key on every device.
//! - **query**: one `POST /keys/query` for every device of `query_users` users with one
//!   device each (what a client does when it first sees a room's members).
//! - **to-device**: one sender, `td_users × td_devices` recipient devices each long-polling
//!   `GET /sync?since=…&timeout=30000` (after an initial sync for its token; a filter leaves
//!   out presence and account data, and the users share no room, so only to-device messages
//!   wake them). The sender sends one `PUT /sendToDevice/m.room.encrypted/{txn}` with an
//!   Olm-shaped message for every recipient device (as a room-key share does). A sample is
//!   the time from the start of the PUT until a device's sync response carrying its message
//!   has been read: one sample per device per repetition. After every device has its
//!   message (or `deliver_timeout_s`), `interval_ms` more so that all are back in their poll.
//!
//! Key material is random bytes of the right sizes in unpadded base64: neither Synapse nor
//! Ganglion checks device-key signatures on upload. Each measurement starts with one
//! unmeasured repetition (`warmup`). Every answer is checked (every device's key claimed,
//! every user's device returned, every message delivered once); a shortfall fails the
//! measurement after its figures are written.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::client::{Http, Session};
use crate::stats::Samples;
use crate::{Ctx, E2eeArgs, Result};

/// The one-time key algorithm claimed.
const OTK_ALGORITHM: &str = "signed_curve25519";

/// The content key that carries a to-device message's run marker and repetition number.
const SEQ_FIELD: &str = "org.matrix.loadgen.seq";
const RUN_FIELD: &str = "org.matrix.loadgen.run";

pub async fn run(ctx: &Ctx, a: &E2eeArgs) -> Result<()> {
    let mut failures = Vec::new();
    let client = super::register_users(ctx, "e2c", 1)
        .await?
        .pop()
        .ok_or("e2ee: no client user")?;
    if let Err(e) = claim(ctx, &client, a).await {
        ctx.rep.say(&format!("e2ee claim FAILED: {e}"));
        failures.push(format!("claim: {e}"));
    }
    if let Err(e) = query(ctx, &client, a).await {
        ctx.rep.say(&format!("e2ee query FAILED: {e}"));
        failures.push(format!("query: {e}"));
    }
    if let Err(e) = to_device(ctx, &client, a).await {
        ctx.rep.say(&format!("e2ee to-device FAILED: {e}"));
        failures.push(format!("to-device: {e}"));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}

/// `users` fresh users named `<prefix>_<what>_<i>` with `per_user` devices each (the one
/// registration made, and `per_user - 1` logins), in user order.
async fn devices(ctx: &Ctx, what: &str, users: usize, per_user: usize) -> Result<Vec<Session>> {
    let first = super::register_users(ctx, what, users).await?;
    let started = Instant::now();
    let extra: Vec<Session> = stream::iter(
        first
            .iter()
            .flat_map(|u| std::iter::repeat_n(u.user_id.as_str(), per_user.saturating_sub(1))),
    )
    .map(|user_id| ctx.http.login(user_id, &ctx.password))
    .buffered(ctx.setup_concurrency)
    .try_collect()
    .await?;
    if !extra.is_empty() {
        ctx.rep.say(&format!(
            "set-up: logged in {} more device(s) in {:.1}s",
            extra.len(),
            started.elapsed().as_secs_f64()
        ));
    }
    let mut all = first;
    all.extend(extra);
    all.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    if let Some(s) = all.iter().find(|s| s.device_id.is_empty()) {
        return Err(format!("the server named no device_id for {}", s.user_id).into());
    }
    Ok(all)
}

/// Unpadded standard base64 of `n` random bytes.
fn random_b64(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(bytes).encode()
}

/// A signature block by `s`'s device key over something (random: nobody checks it).
fn signatures(s: &Session) -> Value {
    json!({ s.user_id.as_str(): { format!("ed25519:{}", s.device_id): random_b64(64) } })
}

/// `count` signed one-time keys for `s`, with key ids `AAAA<first>`… (unique per device).
fn one_time_keys(s: &Session, first: usize, count: usize) -> Value {
    let keys: Map<String, Value> = (first..first + count)
        .map(|i| {
            let key = json!({ "key": random_b64(32), "signatures": signatures(s) });
            (format!("{OTK_ALGORITHM}:AAAA{i:06}"), key)
        })
        .collect();
    Value::Object(keys)
}

/// Uploads device keys and `otks` one-time keys for every session; returns each device's
/// curve25519 identity key, in session order.
async fn upload_device_keys(ctx: &Ctx, sessions: &[Session], otks: usize) -> Result<Vec<String>> {
    let started = Instant::now();
    let curve: Vec<String> = stream::iter(sessions)
        .map(|s| async move {
            let curve = random_b64(32);
            let body = json!({
                "device_keys": {
                    "user_id": s.user_id,
                    "device_id": s.device_id,
                    "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                    "keys": {
                        format!("curve25519:{}", s.device_id): curve,
                        format!("ed25519:{}", s.device_id): random_b64(32),
                    },
                    "signatures": signatures(s),
                },
                "one_time_keys": one_time_keys(s, 0, otks),
            });
            let answer = ctx.http.upload_keys(s, &body).await?;
            check_otk_count(&answer, otks)?;
            Ok::<_, crate::Error>(curve)
        })
        .buffered(ctx.setup_concurrency)
        .try_collect()
        .await?;
    ctx.rep.say(&format!(
        "set-up: uploaded device keys and {otks} one-time key(s) for {} device(s) in {:.1}s",
        sessions.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(curve)
}

/// A `/keys/upload` answer must count at least `want` `signed_curve25519` keys.
fn check_otk_count(answer: &Value, want: usize) -> Result<()> {
    let have = answer
        .pointer(&format!("/one_time_key_counts/{OTK_ALGORITHM}"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if usize::try_from(have).unwrap_or(0) < want {
        return Err(
            format!("keys/upload counted {have} one-time keys, expected {want}: {answer}").into(),
        );
    }
    Ok(())
}

/// Writes `<key>.p50_ms` and `<key>.p99_ms`.
fn p50_p99(ctx: &Ctx, key: &str, lat: &Samples, params: &Value) -> Result<()> {
    ctx.rep.figure(
        "e2ee",
        &format!("{key}.p50_ms"),
        lat.percentile(50.0),
        "ms",
        false,
        params.clone(),
    )?;
    ctx.rep.figure(
        "e2ee",
        &format!("{key}.p99_ms"),
        lat.percentile(99.0),
        "ms",
        false,
        params.clone(),
    )
}

/// Measurement 1: `/keys/claim` for every device of `claim_users × claim_devices`.
async fn claim(ctx: &Ctx, client: &Session, a: &E2eeArgs) -> Result<()> {
    let otks = a.otks.max(1);
    let targets = devices(ctx, "e2k", a.claim_users, a.claim_devices).await?;
    let n = targets.len();
    upload_device_keys(ctx, &targets, otks).await?;
    let mut wanted: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for s in &targets {
        wanted
            .entry(s.user_id.as_str())
            .or_default()
            .insert(s.device_id.as_str(), OTK_ALGORITHM);
    }
    let body = json!({ "one_time_keys": wanted, "timeout": 10_000 });
    ctx.rep.say(&format!(
        "e2ee: /keys/claim for {n} devices of {} users, {} repetitions",
        a.claim_users, a.reps_claim
    ));

    let mut lat = Samples::default();
    let (mut left, mut uploaded) = (otks, otks);
    let mut short = 0usize;
    let mut first_short = None;
    for rep in 0..a.warmup + a.reps_claim {
        if left == 0 {
            // Top up every device (unmeasured) so that this claim finds a key everywhere.
            stream::iter(&targets)
                .map(|s| async move {
                    let body = json!({ "one_time_keys": one_time_keys(s, uploaded, otks) });
                    check_otk_count(&ctx.http.upload_keys(s, &body).await?, otks)
                })
                .buffer_unordered(ctx.setup_concurrency)
                .try_collect::<()>()
                .await?;
            left = otks;
            uploaded += otks;
        }
        let t0 = Instant::now();
        let answer = ctx.http.claim_keys(client, &body).await?;
        let took = t0.elapsed();
        left -= 1;
        let got = claimed_devices(&answer, &targets);
        if got < n {
            short += n - got;
            first_short.get_or_insert_with(|| answer.to_string());
        }
        if rep >= a.warmup {
            lat.push(took);
        }
    }
    let params = json!({
        "devices": n, "users": a.claim_users, "repetitions": lat.len(), "warmup": a.warmup,
        "keys_missing": short, "otks_per_upload": otks, "max_ms": lat.max(),
    });
    ctx.rep.say(&format!(
        "e2ee claim: {n} devices: p50 {:.1} ms, p99 {:.1} ms over {} claims; {short} key(s) missing",
        lat.percentile(50.0),
        lat.percentile(99.0),
        lat.len()
    ));
    p50_p99(ctx, &format!("e2ee.claim_{n}_devices"), &lat, &params)?;
    if let Some(answer) = first_short {
        let answer: String = answer.chars().take(600).collect();
        return Err(format!("{short} device(s) got no key; first short answer: {answer}").into());
    }
    Ok(())
}

/// How many of `targets` have a `signed_curve25519` key in a `/keys/claim` answer.
fn claimed_devices(answer: &Value, targets: &[Session]) -> usize {
    targets
        .iter()
        .filter(|s| {
            answer
                .get("one_time_keys")
                .and_then(|k| k.get(&s.user_id))
                .and_then(|k| k.get(&s.device_id))
                .and_then(Value::as_object)
                .is_some_and(|keys| {
                    keys.keys()
                        .any(|id| id.starts_with(&format!("{OTK_ALGORITHM}:")))
                })
        })
        .count()
}

/// Measurement 2: `/keys/query` for `query_users` users with one device each.
async fn query(ctx: &Ctx, client: &Session, a: &E2eeArgs) -> Result<()> {
    let targets = devices(ctx, "e2q", a.query_users, 1).await?;
    let n = targets.len();
    upload_device_keys(ctx, &targets, a.otks).await?;
    let wanted: Map<String, Value> = targets
        .iter()
        .map(|s| (s.user_id.clone(), json!([])))
        .collect();
    let body = json!({ "device_keys": wanted, "timeout": 10_000 });
    ctx.rep.say(&format!(
        "e2ee: /keys/query for {n} users, {} repetitions",
        a.reps_query
    ));
    let mut lat = Samples::default();
    let mut short = 0usize;
    let mut first_short = None;
    for rep in 0..a.warmup + a.reps_query {
        let t0 = Instant::now();
        let answer = ctx.http.query_keys(client, &body).await?;
        let took = t0.elapsed();
        let got = targets
            .iter()
            .filter(|s| {
                answer
                    .get("device_keys")
                    .and_then(|k| k.get(&s.user_id))
                    .and_then(|k| k.get(&s.device_id))
                    .and_then(|d| d.get("keys"))
                    .is_some()
            })
            .count();
        if got < n {
            short += n - got;
            first_short.get_or_insert_with(|| answer.to_string());
        }
        if rep >= a.warmup {
            lat.push(took);
        }
    }
    let params = json!({
        "users": n, "devices_per_user": 1, "repetitions": lat.len(), "warmup": a.warmup,
        "devices_missing": short, "max_ms": lat.max(),
    });
    ctx.rep.say(&format!(
        "e2ee query: {n} users: p50 {:.1} ms, p99 {:.1} ms over {} queries; {short} device(s) missing",
        lat.percentile(50.0),
        lat.percentile(99.0),
        lat.len()
    ));
    p50_p99(ctx, &format!("e2ee.query_{n}_users"), &lat, &params)?;
    if let Some(answer) = first_short {
        let answer: String = answer.chars().take(600).collect();
        return Err(format!("{short} device(s) missing; first short answer: {answer}").into());
    }
    Ok(())
}

/// What a recipient device saw: repetition `k` of the run's messages, at `at`.
enum Seen {
    Message {
        k: usize,
        device: usize,
        at: Instant,
    },
    SyncError(String),
}

/// Measurement 3: one `/sendToDevice` to `td_users × td_devices`, until each has it in sync.
async fn to_device(ctx: &Ctx, sender: &Session, a: &E2eeArgs) -> Result<()> {
    let recipients = devices(ctx, "e2t", a.td_users, a.td_devices).await?;
    let n = recipients.len();
    let curve = upload_device_keys(ctx, &recipients, a.otks).await?;
    let filter = json!({
        "presence": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
        "room": {"ephemeral": {"not_types": ["*"]}, "account_data": {"not_types": ["*"]}},
    });
    // One filter per user, used by all of its devices (filter ids belong to the user).
    // Uploaded from one device each: Ganglion answers 500 to concurrent uploads by one
    // user (two get the same new filter id).
    let mut firsts: Vec<&Session> = recipients.iter().collect();
    firsts.dedup_by(|a, b| a.user_id == b.user_id);
    let filter = &filter;
    let per_user: BTreeMap<String, String> = stream::iter(firsts)
        .map(|s| async move {
            let id = ctx.http.upload_filter(s, filter).await?;
            Ok::<_, crate::Error>((s.user_id.clone(), id))
        })
        .buffered(ctx.setup_concurrency)
        .try_collect()
        .await?;
    let filters: Vec<String> = recipients
        .iter()
        .map(|s| per_user.get(&s.user_id).cloned().unwrap_or_default())
        .collect();
    let since: Vec<String> = stream::iter(recipients.iter().zip(&filters))
        .map(|(s, f)| async move {
            let v = ctx.http.sync(s, None, Some(f), 0).await?;
            crate::client::str_field(&v, "next_batch")
        })
        .buffered(ctx.setup_concurrency)
        .try_collect()
        .await?;

    // Every device's message, built once: the Olm-shaped body a room-key share carries.
    let sender_key = random_b64(32);
    let contents: Vec<Value> = curve
        .iter()
        .map(|key| {
            json!({
                "algorithm": "m.olm.v1.curve25519-aes-sha2",
                "sender_key": sender_key,
                "ciphertext": { key.as_str(): { "type": 0, "body": random_b64(600) } },
                RUN_FIELD: ctx.prefix,
            })
        })
        .collect();

    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(n);
    for (i, ((s, f), since)) in recipients.iter().zip(filters).zip(since).enumerate() {
        let poll = Poller {
            http: ctx.http.clone(),
            user: s.clone(),
            filter: f,
            sender: sender.user_id.clone(),
            run: ctx.prefix.clone(),
            timeout_ms: a.sync_timeout_ms,
            device: i,
            tx: tx.clone(),
        };
        tasks.push(tokio::spawn(poll.run(since)));
    }
    drop(tx);
    ctx.rep.say(&format!(
        "e2ee: /sendToDevice to {n} devices of {} users, {} repetitions",
        a.td_users, a.reps_to_device
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut starts: Vec<Instant> = Vec::new();
    let mut seen: HashSet<(usize, usize)> = HashSet::new();
    let mut lat = Samples::default();
    let mut put_lat = Samples::default();
    let mut all_lat = Samples::default();
    let mut duplicates = 0usize;
    let mut sync_errors = Vec::new();
    let reps = a.warmup + a.reps_to_device;
    for k in 0..reps {
        let mut messages: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
        for (s, content) in recipients.iter().zip(&contents) {
            let mut content = content.clone();
            content[SEQ_FIELD] = json!(k);
            messages
                .entry(s.user_id.as_str())
                .or_default()
                .insert(s.device_id.clone(), content);
        }
        let body = json!({ "messages": messages });
        let txn = format!("{}-td-{k}", ctx.prefix);
        let t0 = Instant::now();
        starts.push(t0);
        ctx.http
            .send_to_device(sender, "m.room.encrypted", &txn, &body)
            .await?;
        let put = t0.elapsed();
        let deadline =
            tokio::time::Instant::from_std(t0 + Duration::from_secs_f64(a.deliver_timeout_s));
        let mut last = None;
        while (0..n).any(|d| !seen.contains(&(k, d))) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Seen::Message { k: mk, device, at })) => {
                    if mk >= starts.len() {
                        continue;
                    }
                    if !seen.insert((mk, device)) {
                        duplicates += 1;
                    } else if mk == k {
                        last = Some(at);
                        if k >= a.warmup {
                            lat.push(at.saturating_duration_since(t0));
                        }
                    }
                }
                Ok(Some(Seen::SyncError(e))) => sync_errors.push(e),
                Ok(None) | Err(_) => break,
            }
        }
        if k >= a.warmup {
            put_lat.push(put);
            if let Some(at) = last.filter(|_| (0..n).all(|d| seen.contains(&(k, d)))) {
                all_lat.push(at.saturating_duration_since(t0));
            }
        }
        tokio::time::sleep(Duration::from_millis(a.interval_ms)).await;
        while let Ok(s) = rx.try_recv() {
            match s {
                Seen::Message { k: mk, device, .. } => {
                    // Late arrivals of an earlier repetition are missed, not samples.
                    if !seen.insert((mk, device)) {
                        duplicates += 1;
                    }
                }
                Seen::SyncError(e) => sync_errors.push(e),
            }
        }
    }
    for t in &tasks {
        t.abort();
    }

    if let Some(e) = sync_errors.first() {
        ctx.rep.say(&format!(
            "e2ee to-device: {} sync error(s), first: {e}",
            sync_errors.len()
        ));
    }
    let expected = n * a.reps_to_device;
    let missed = expected.saturating_sub(lat.len());
    let params = json!({
        "devices": n, "users": a.td_users, "repetitions": a.reps_to_device, "warmup": a.warmup,
        "deliveries": lat.len(), "missed": missed, "duplicates": duplicates,
        "sync_errors": sync_errors.len(), "max_ms": lat.max(),
        "put_p50_ms": put_lat.percentile(50.0), "put_p99_ms": put_lat.percentile(99.0),
        "all_delivered_p50_ms": all_lat.percentile(50.0),
        "all_delivered_max_ms": all_lat.max(),
    });
    ctx.rep.say(&format!(
        "e2ee to-device: {} deliveries of {expected}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         PUT p50 {:.1} ms; all {n} delivered p50 {:.1} ms; missed {missed}, duplicates {duplicates}",
        lat.len(),
        lat.percentile(50.0),
        lat.percentile(99.0),
        lat.max(),
        put_lat.percentile(50.0),
        all_lat.percentile(50.0),
    ));
    if lat.len() == 0 {
        return Err("no device received any message".into());
    }
    p50_p99(ctx, &format!("e2ee.to_device_{n}"), &lat, &params)?;
    if missed > 0 || duplicates > 0 {
        return Err(format!("{missed} deliveries missed, {duplicates} duplicated").into());
    }
    Ok(())
}

/// One long-polling recipient device.
struct Poller {
    http: Http,
    user: Session,
    filter: String,
    sender: String,
    run: String,
    timeout_ms: u64,
    device: usize,
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
                    Some(&self.filter),
                    self.timeout_ms,
                )
                .await;
            let at = Instant::now();
            match res {
                Ok(v) => {
                    for k in self.marked(&v) {
                        let _ = self.tx.send(Seen::Message {
                            k,
                            device: self.device,
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

    /// The repetition numbers of this run's to-device messages in a sync response.
    fn marked(&self, v: &Value) -> Vec<usize> {
        v.pointer("/to_device/events")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| e.get("sender").and_then(Value::as_str) == Some(self.sender.as_str()))
            .filter(|e| e.get("type").and_then(Value::as_str) == Some("m.room.encrypted"))
            .filter_map(|e| e.get("content"))
            .filter(|c| c.get(RUN_FIELD).and_then(Value::as_str) == Some(self.run.as_str()))
            .filter_map(|c| c.get(SEQ_FIELD).and_then(Value::as_u64))
            .filter_map(|k| usize::try_from(k).ok())
            .collect()
    }
}
