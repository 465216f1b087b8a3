//! `initial-sync`: the time of `GET /sync` with no `since` token (no filter, the server's
//! default timeline limit) for a user in `rooms` rooms with `messages_per_room` messages each,
//! the time to the last byte of the response. Each run logs in afresh, so every sync is a new
//! device's first (as after a sign-in), and no server-side cache of a previous identical
//! request can answer it. The figure is the median of `runs`; the first run is reported too.

use std::time::Instant;

use serde_json::{Value, json};

use crate::stats::Samples;
use crate::{Ctx, InitialSyncArgs, Result};

pub async fn run(ctx: &Ctx, a: &InitialSyncArgs) -> Result<()> {
    ctx.rep.say(&format!(
        "initial-sync: {} rooms x {} messages, {} runs",
        a.rooms, a.messages_per_room, a.runs
    ));
    let mut users = super::register_users(ctx, "isync", 1).await?;
    let user = users.pop().ok_or("no user registered")?;
    let rooms = super::create_rooms(ctx, &user, a.rooms, false).await?;
    super::seed_messages(ctx, &user, &rooms, a.messages_per_room).await?;

    let mut times = Samples::default();
    let mut first_ms = 0.0;
    let mut joined = 0usize;
    let mut timeline_events = 0usize;
    for run in 0..a.runs.max(1) {
        let session = ctx.http.login(&user.user_id, &ctx.password).await?;
        let t = Instant::now();
        let v = ctx.http.sync(&session, None, None, 0).await?;
        let d = t.elapsed();
        times.push(d);
        let ms = d.as_secs_f64() * 1000.0;
        if run == 0 {
            first_ms = ms;
        }
        let join = v.pointer("/rooms/join").and_then(Value::as_object);
        joined = join.map_or(0, |j| {
            rooms.iter().filter(|r| j.contains_key(r.as_str())).count()
        });
        timeline_events = join.map_or(0, |j| {
            j.values()
                .filter_map(|r| r.pointer("/timeline/events").and_then(Value::as_array))
                .map(Vec::len)
                .sum()
        });
        ctx.rep.say(&format!(
            "initial-sync: run {run}: {ms:.1} ms, {joined} of {} rooms, {timeline_events} timeline events",
            rooms.len()
        ));
    }
    if joined != rooms.len() {
        return Err(format!(
            "initial-sync: response lists {joined} of {} rooms",
            rooms.len()
        )
        .into());
    }
    let median = times.percentile(50.0);
    ctx.rep.say(&format!(
        "initial-sync: median {median:.1} ms, first {first_ms:.1} ms"
    ));
    let params = json!({
        "rooms": a.rooms, "messages_per_room": a.messages_per_room, "runs": times.len(),
        "first_ms": first_ms, "max_ms": times.max(), "timeline_events": timeline_events,
    });
    let key = format!(
        "initial_sync.rooms_{}.msgs_{}",
        a.rooms, a.messages_per_room
    );
    ctx.rep.figure(
        "initial-sync",
        &format!("{key}.median_ms"),
        median,
        "ms",
        false,
        params,
    )?;
    Ok(())
}
