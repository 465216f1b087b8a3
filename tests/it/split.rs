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

/// Faults during a burst of sends with a client long-polling through nginx: each sync
/// worker killed with -9 and restarted, this deployment's Redis streams deleted (what FLUSHALL
/// does to it), and main killed with -9 and restarted. The client sees every acknowledged
/// event exactly once, in order, and no long-poll outlives its timeout by much.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_during_a_burst_lose_nothing() {
    use std::time::{Duration, Instant};

    let mut srv = TestServer::start(Backend::Split).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let start = bob.sync(None, 0).await["next_batch"]
        .as_str()
        .expect("next")
        .to_owned();

    // Bob long-polls in a loop, through nginx, and records what he sees.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let poller = {
        let bob = bob.clone();
        let room = room.clone();
        tokio::spawn(async move {
            let mut since = start;
            let filter = ganglion_tests::client::enc(
                &json!({ "room": { "timeline": { "limit": 1000 } } }).to_string(),
            );
            let mut seen: Vec<String> = Vec::new();
            let mut worst = Duration::ZERO;
            loop {
                let t = Instant::now();
                // A timeline limit above the burst: a gap during a fault must not turn into a
                // limited timeline, which a client would fill from prev_batch instead.
                let path =
                    format!("/_matrix/client/v3/sync?timeout=2000&since={since}&filter={filter}");
                let r = tokio::select! {
                    r = bob.get(&path) => r,
                    _ = stop_rx.changed() => break,
                };
                worst = worst.max(t.elapsed());
                if r.status != 200 {
                    // A worker restarting: nginx may answer 502 once; retry.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                for e in r.body["rooms"]["join"][&room]["timeline"]["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    if e["type"] == "m.room.message" {
                        seen.push(e["event_id"].as_str().unwrap_or_default().to_owned());
                    }
                }
                since = r.body["next_batch"].as_str().unwrap_or(&since).to_owned();
            }
            (seen, worst)
        })
    };

    // Alice sends 120 messages; each send retries with its transaction id until answered,
    // so a main restart costs nothing and duplicates nothing.
    let mut acked = Vec::new();
    for i in 0..120 {
        match i {
            // Both workers, one after the other: whichever serves bob is hit.
            30 => srv.restart_sync_worker(0).await,
            45 => srv.restart_sync_worker(1).await,
            60 => {
                let prefix = srv.bus_prefix().expect("prefix");
                let keys: Vec<String> = [
                    "events",
                    "typing",
                    "receipts",
                    "account_data",
                    "to_device",
                    "device_lists",
                    "presence",
                    "push_rules",
                ]
                .iter()
                .map(|k| format!("{prefix}:stream:{k}"))
                .collect();
                let status = std::process::Command::new("redis-cli")
                    .arg("DEL")
                    .args(&keys)
                    .status()
                    .expect("redis-cli");
                assert!(status.success());
            }
            90 => {
                srv.kill9();
                srv.spawn().await;
            }
            _ => {}
        }
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/f{i}",
            ganglion_tests::client::enc(&room)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = alice
                .http
                .put(format!("{}{path}", alice.base))
                .bearer_auth(alice.token.as_deref().unwrap_or_default())
                .body(json!({ "msgtype": "m.text", "body": format!("f{i}") }).to_string())
                .send()
                .await;
            if let Ok(resp) = r
                && resp.status() == 200
            {
                let v: Value = resp.json().await.unwrap_or_default();
                acked.push(v["event_id"].as_str().expect("event id").to_owned());
                break;
            }
            assert!(Instant::now() < deadline, "send f{i} never succeeded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Wait until bob has everything (or time out), then stop the poller.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if Instant::now() > deadline || poller.is_finished() {
            break;
        }
        // Peek: a fresh sync from the start tells us whether everything is readable.
        let page = alice
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=200",
                ganglion_tests::client::enc(&room)
            ))
            .await;
        let n = page.body["chunk"].as_array().map_or(0, |c| {
            c.iter().filter(|e| e["type"] == "m.room.message").count()
        });
        if n >= acked.len() {
            tokio::time::sleep(Duration::from_secs(3)).await;
            break;
        }
    }
    let _ = stop_tx.send(true);
    let (seen, worst) = poller.await.expect("poller");
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an event was delivered twice");
    assert_eq!(
        seen, acked,
        "every acknowledged event exactly once, in order"
    );
    assert!(
        worst < Duration::from_secs(15),
        "a long-poll of 2 s took {worst:?}"
    );
    srv.cleanup().await;
}
