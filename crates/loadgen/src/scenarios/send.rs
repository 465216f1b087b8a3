//! `send`: message sends per second. One sender user owns `rooms` rooms; `concurrency`
//! senders each take the next message number and `PUT /rooms/{room}/send/m.room.message/{txn}`
//! it into room `number % rooms`, until `messages` are sent or `max_seconds` is up. The rate
//! is successful sends over the wall time from the first send to the last answer; latency is
//! per request.
//!
//! With `members` (set-up [`setup_members`]), the messages go into one public room that
//! many other users have joined, so each send is evaluated against every member's push
//! rules: the figures are `send.members_{m}.c_{c}.*`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt, future::join_all};
use serde_json::json;

use crate::client::Session;
use crate::stats::Samples;
use crate::{Ctx, Result, SendArgs};

/// A sender and its rooms, reused by the measurements at each concurrency.
pub struct SendSetup {
    sender: Session,
    rooms: Vec<String>,
    /// Members of the one room (the sender included), when set up by [`setup_members`].
    members: Option<usize>,
}

pub async fn setup(ctx: &Ctx, rooms: usize) -> Result<SendSetup> {
    let what = format!("send{rooms}");
    let mut users = super::register_users(ctx, &what, 1).await?;
    let sender = users.pop().ok_or("no sender registered")?;
    let rooms = super::create_rooms(ctx, &sender, rooms.max(1), false).await?;
    Ok(SendSetup {
        sender,
        rooms,
        members: None,
    })
}

/// One public room of `members` users (the sender and `members - 1` who joined it).
pub async fn setup_members(ctx: &Ctx, members: usize) -> Result<SendSetup> {
    let what = format!("sendm{members}");
    let mut users = super::register_users(ctx, &what, members.max(1)).await?;
    let sender = users.remove(0);
    let rooms = super::create_rooms(ctx, &sender, 1, true).await?;
    let started = Instant::now();
    let room = &rooms[0];
    futures_util::stream::iter(users.iter())
        .map(|u| ctx.http.join(u, room))
        .buffer_unordered(ctx.setup_concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    ctx.rep.say(&format!(
        "set-up: {} user(s) joined the room in {:.1}s",
        users.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(SendSetup {
        sender,
        rooms,
        members: Some(members),
    })
}

pub async fn run(ctx: &Ctx, s: &SendSetup, a: &SendArgs) -> Result<()> {
    let (r, c) = (s.rooms.len(), a.concurrency.max(1));
    ctx.rep.say(&format!(
        "send: rooms {r}, concurrency {c}, up to {} messages or {:.0}s",
        a.messages, a.max_seconds
    ));
    let tag = format!("{}-r{r}-c{c}", ctx.prefix);
    for i in 0..a.warmup {
        let room = &s.rooms[i % r];
        ctx.http
            .send_text(&s.sender, room, &format!("{tag}-warm-{i}"), "warm-up")
            .await?;
    }

    let next = AtomicUsize::new(0);
    let cpu_before = ctx.server_cpu();
    let observed_before: Vec<Option<f64>> = ctx
        .observe
        .iter()
        .map(|(_, pid)| crate::procstat::cpu_seconds(*pid))
        .collect();
    let own_cpu_before = crate::procstat::cpu_seconds(std::process::id());
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(a.max_seconds);
    let workers = (0..c).map(|_| async {
        let mut lat = Samples::default();
        let mut errors = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= a.messages || Instant::now() >= deadline {
                break;
            }
            if a.rate > 0.0 {
                // Paced: send i is due at i / rate seconds into the run.
                let due = started + Duration::from_secs_f64(i as f64 / a.rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let room = &s.rooms[i % r];
            let t = Instant::now();
            let res = ctx
                .http
                .send_text(
                    &s.sender,
                    room,
                    &format!("{tag}-{i}"),
                    &format!("load message {i}"),
                )
                .await;
            match res {
                Ok(_) => lat.push(t.elapsed()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        (lat, errors)
    });
    let results = join_all(workers).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_before.zip(ctx.server_cpu()).map(|(b, a)| a - b);
    let own_cpu = own_cpu_before
        .zip(crate::procstat::cpu_seconds(std::process::id()))
        .map(|(b, a)| a - b);
    // Each observed process's CPU over the measurement, as a percentage of one core.
    let observed: Vec<(String, f64)> = ctx
        .observe
        .iter()
        .zip(&observed_before)
        .filter_map(|((name, pid), before)| {
            let used = crate::procstat::cpu_seconds(*pid)? - (*before)?;
            Some((name.clone(), used * 100.0 / elapsed))
        })
        .collect();

    let mut lat = Samples::default();
    let mut errors = Vec::new();
    for (l, e) in results {
        lat.extend(l);
        errors.extend(e);
    }
    if let Some(e) = errors.first() {
        ctx.rep
            .say(&format!("send: {} error(s), first: {e}", errors.len()));
    }
    let ok = lat.len();
    if ok == 0 {
        return Err("send: no message was sent".into());
    }
    let rate = ok as f64 / elapsed;
    let (p50, p99) = (lat.percentile(50.0), lat.percentile(99.0));
    ctx.rep.say(&format!(
        "send: rooms {r}, c {c}: {ok} messages in {elapsed:.2}s = {rate:.1} msgs/s; \
         latency p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms",
        lat.max()
    ));
    let cpu_ms_per_msg = cpu.map(|s| s * 1000.0 / ok as f64);
    if let Some(ms) = cpu_ms_per_msg {
        ctx.rep
            .say(&format!("send: server CPU {ms:.2} ms per message"));
    }
    let params = json!({
        "rooms": r, "members": s.members, "concurrency": c, "ok": ok, "errors": errors.len(), "seconds": elapsed,
        "mean_ms": lat.mean(), "server_cpu_s": cpu, "loadgen_cpu_s": own_cpu,
    });
    let key = match (s.members, a.rate > 0.0) {
        (Some(m), _) => format!("send.members_{m}.c_{c}"),
        (None, true) => format!("send.rooms_{r}.c_{c}.rate_{}", a.rate),
        (None, false) => format!("send.rooms_{r}.c_{c}"),
    };
    let rep = &ctx.rep;
    for (name, pct) in &observed {
        ctx.rep
            .say(&format!("send: {name} used {pct:.2}% of a core"));
        rep.figure(
            "send",
            &format!("{key}.cpu_pct.{name}"),
            *pct,
            "% of a core",
            false,
            params.clone(),
        )?;
    }
    rep.figure(
        "send",
        &format!("{key}.msgs_per_s"),
        rate,
        "msg/s",
        true,
        params.clone(),
    )?;
    rep.figure(
        "send",
        &format!("{key}.p50_ms"),
        p50,
        "ms",
        false,
        params.clone(),
    )?;
    rep.figure(
        "send",
        &format!("{key}.p99_ms"),
        p99,
        "ms",
        false,
        params.clone(),
    )?;
    if let Some(ms) = cpu_ms_per_msg {
        rep.figure(
            "send",
            &format!("{key}.server_cpu_ms_per_msg"),
            ms,
            "ms",
            false,
            params,
        )?;
    }
    Ok(())
}
