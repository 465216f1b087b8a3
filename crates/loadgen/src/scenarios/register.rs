//! `register`: registrations per second through `POST /register` with the `m.login.dummy`
//! stage, `concurrency` in flight. Each registration also logs the new user in (a device and
//! an access token), as a client's sign-up does.

use std::time::Instant;

use futures_util::stream::{self, StreamExt};
use serde_json::json;

use crate::stats::Samples;
use crate::{Ctx, RegisterArgs, Result};

pub async fn run(ctx: &Ctx, a: &RegisterArgs) -> Result<()> {
    let c = a.concurrency.max(1);
    ctx.rep
        .say(&format!("register: {} users, concurrency {c}", a.users));
    // One unmeasured registration: connection set-up and first-request costs.
    ctx.http
        .register(&ctx.username("regwarm", 0), &ctx.password)
        .await?;

    let started = Instant::now();
    let results: Vec<_> = stream::iter(0..a.users)
        .map(|i| {
            let name = ctx.username("reg", i);
            async move {
                let t = Instant::now();
                let r = ctx.http.register(&name, &ctx.password).await;
                (t.elapsed(), r)
            }
        })
        .buffer_unordered(c)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();

    let mut lat = Samples::default();
    let mut errors = 0usize;
    let mut first_error = None;
    for (d, r) in results {
        match r {
            Ok(_) => lat.push(d),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    if let Some(e) = &first_error {
        ctx.rep
            .say(&format!("register: {errors} error(s), first: {e}"));
    }
    let ok = lat.len();
    if ok == 0 {
        return Err(format!(
            "register: every registration failed: {}",
            first_error.unwrap_or_default()
        )
        .into());
    }
    let rate = ok as f64 / elapsed;
    let (p50, p99) = (lat.percentile(50.0), lat.percentile(99.0));
    ctx.rep.say(&format!(
        "register: {ok} users in {elapsed:.2}s = {rate:.1} regs/s; latency p50 {p50:.1} ms, p99 {p99:.1} ms"
    ));
    let params =
        json!({"users": a.users, "concurrency": c, "ok": ok, "errors": errors, "seconds": elapsed});
    let r = &ctx.rep;
    r.figure(
        "register",
        &format!("register.c_{c}.regs_per_s"),
        rate,
        "reg/s",
        true,
        params.clone(),
    )?;
    r.figure(
        "register",
        &format!("register.c_{c}.p50_ms"),
        p50,
        "ms",
        false,
        params.clone(),
    )?;
    r.figure(
        "register",
        &format!("register.c_{c}.p99_ms"),
        p99,
        "ms",
        false,
        params,
    )?;
    Ok(())
}
