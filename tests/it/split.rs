//! The first cut of the split shape: main writes, sync workers serve /sync over the Redis
//! bus and the shared PostgreSQL.

use std::collections::HashSet;

use ganglion_tests::{Backend, TestServer};
use serde_json::{Value, json};

/// A client whose every /sync goes to a different worker still sees every event exactly
/// once, in order; sends go to main.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_workers_deliver_every_event_once() {
    let redis =
        std::env::var("GANGLION_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("ganglion-split-{}", rand::random::<u32>());
    let srv = TestServer::start_with(
        Backend::Postgres,
        &format!("[bus]\nredis_url = \"{redis}\"\nkey_prefix = \"{prefix}\"\n"),
    )
    .await;
    let w1 = srv.worker("ganglion-sync", "sync-1").await;
    let w2 = srv.worker("ganglion-sync", "sync-2").await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;

    // Bob's syncs alternate between the two workers.
    let mut via = [bob.clone(), bob.clone()];
    via[0].base = w1.base.clone();
    via[1].base = w2.base.clone();
    let first = via[0].sync(None, 0).await;
    let mut since = first["next_batch"].as_str().expect("next_batch").to_owned();

    let sender = alice.clone();
    let r2 = room.clone();
    let sends = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..60 {
            ids.push(sender.send_text(&r2, &format!("s{i}")).await);
        }
        ids
    });
    let mut seen: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut turn = 0;
    while seen.len() < 60 && std::time::Instant::now() < deadline {
        let s = via[turn % 2].sync(Some(&since), 5000).await;
        turn += 1;
        for e in s["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            if e["type"] == "m.room.message" {
                seen.push(e["event_id"].as_str().expect("id").to_owned());
            }
        }
        since = s["next_batch"].as_str().expect("next_batch").to_owned();
    }
    let sent = sends.await.expect("sender");
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "an event was delivered twice across workers"
    );
    assert_eq!(seen, sent, "every event exactly once, in send order");
    assert!(turn >= 2, "both workers served syncs");

    // A worker never writes: a send that reaches it is refused, not lost.
    let mut misrouted = alice.clone();
    misrouted.base = w1.base.clone();
    let r = misrouted
        .post("/_matrix/client/v3/createRoom", json!({}))
        .await;
    assert_eq!(r.status, 404, "workers do not serve writes: {}", r.body);
    let _: Value = r.body;
    drop((w1, w2));
    srv.cleanup().await;
}
