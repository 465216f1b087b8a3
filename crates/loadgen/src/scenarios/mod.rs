//! The scenarios, and the set-up steps they share (users, rooms, seed messages). Set-up is
//! never measured; it runs with `--setup-concurrency` requests in flight.

pub mod e2ee;
pub mod fanout;
pub mod initial_sync;
pub mod register;
pub mod send;

use std::time::Instant;

use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::client::Session;
use crate::{Ctx, Result};

/// Registers `n` fresh users named `<prefix>_<what>_<i>`, in order.
pub async fn register_users(ctx: &Ctx, what: &str, n: usize) -> Result<Vec<Session>> {
    let started = Instant::now();
    let users: Vec<Session> = stream::iter(0..n)
        .map(|i| {
            let name = ctx.username(what, i);
            async move { ctx.http.register(&name, &ctx.password).await }
        })
        .buffered(ctx.setup_concurrency)
        .try_collect()
        .await?;
    ctx.rep.say(&format!(
        "set-up: registered {n} {what} user(s) in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(users)
}

/// Creates `n` rooms owned by `owner`, in order.
pub async fn create_rooms(
    ctx: &Ctx,
    owner: &Session,
    n: usize,
    public: bool,
) -> Result<Vec<String>> {
    let started = Instant::now();
    let rooms: Vec<String> = stream::iter(0..n)
        .map(|i| {
            let name = format!("loadgen room {i}");
            async move { ctx.http.create_room(owner, public, &name).await }
        })
        .buffered(ctx.setup_concurrency)
        .try_collect()
        .await?;
    ctx.rep.say(&format!(
        "set-up: created {n} room(s) in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(rooms)
}

/// Sends `per_room` text messages into each room (unmeasured seeding).
pub async fn seed_messages(
    ctx: &Ctx,
    sender: &Session,
    rooms: &[String],
    per_room: usize,
) -> Result<()> {
    let started = Instant::now();
    let total = rooms.len() * per_room;
    // Message j of every room before message j+1 of any, so rooms fill evenly.
    stream::iter(0..total)
        .map(|k| {
            let room = &rooms[k % rooms.len()];
            let j = k / rooms.len();
            let txn = format!("{}-seed-{k}", ctx.prefix);
            async move {
                ctx.http
                    .send_text(sender, room, &txn, &format!("seed message {j}"))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(ctx.setup_concurrency)
        .try_collect::<()>()
        .await?;
    ctx.rep.say(&format!(
        "set-up: seeded {total} message(s) in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
