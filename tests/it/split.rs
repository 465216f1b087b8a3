//! The first cut of the split shape: main writes, sync workers serve /sync over the Redis
//! bus and the shared PostgreSQL.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use ganglion_tests::{Backend, Client, TestServer};
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
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut turn = 0;
    while seen.len() < 60 && Instant::now() < deadline {
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

/// A client long-polling through nginx in a loop, recording the room's messages.
struct Poller {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Polled>,
}

/// What a poller saw.
struct Polled {
    /// Message event ids in the order received.
    seen: Vec<String>,
    /// The longest 2 s long-poll.
    worst: Duration,
    /// Statuses other than 200, retried.
    errors: Vec<u16>,
}

impl Poller {
    async fn start(client: &Client, room: &str) -> Poller {
        let mut since = client.sync(None, 0).await["next_batch"]
            .as_str()
            .expect("next")
            .to_owned();
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let client = client.clone();
        let room = room.to_owned();
        let task = tokio::spawn(async move {
            // A timeline limit above any burst: a gap during a fault must not turn into a
            // limited timeline, which a client would fill from prev_batch instead.
            let filter = ganglion_tests::client::enc(
                &json!({ "room": { "timeline": { "limit": 1000 } } }).to_string(),
            );
            let mut out = Polled {
                seen: Vec::new(),
                worst: Duration::ZERO,
                errors: Vec::new(),
            };
            loop {
                let t = Instant::now();
                let path =
                    format!("/_matrix/client/v3/sync?timeout=2000&since={since}&filter={filter}");
                let r = tokio::select! {
                    r = client.get(&path) => r,
                    _ = stop_rx.changed() => break,
                };
                out.worst = out.worst.max(t.elapsed());
                if r.status != 200 {
                    // A worker going away: nginx may answer 502 once; retry.
                    out.errors.push(r.status);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                for e in r.body["rooms"]["join"][&room]["timeline"]["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    if e["type"] == "m.room.message" {
                        out.seen
                            .push(e["event_id"].as_str().unwrap_or_default().to_owned());
                    }
                }
                since = r.body["next_batch"].as_str().unwrap_or(&since).to_owned();
            }
            out
        });
        Poller { stop, task }
    }

    /// Stops the poller (call [`settle`] first) and checks it saw exactly `want`, in
    /// order, with no long-poll past 15 s.
    async fn finish(self, want: &[String], who: &str) -> Polled {
        let _ = self.stop.send(true);
        let polled = self.task.await.expect("poller");
        let unique: HashSet<&String> = polled.seen.iter().collect();
        assert_eq!(
            unique.len(),
            polled.seen.len(),
            "{who}: an event delivered twice"
        );
        assert_eq!(
            polled.seen, want,
            "{who}: every acknowledged event exactly once, in order"
        );
        assert!(
            polled.worst < Duration::from_secs(15),
            "{who}: a long-poll of 2 s took {:?}",
            polled.worst
        );
        polled
    }
}

/// Sends message `i`, retrying with the same transaction id until answered (so a fault
/// costs time, never an event, and never duplicates one). Returns the event id.
async fn send_acked(client: &Client, room: &str, i: usize) -> String {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/f{i}",
        ganglion_tests::client::enc(room)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client
            .http
            .put(format!("{}{path}", client.base))
            .bearer_auth(client.token.as_deref().unwrap_or_default())
            .body(json!({ "msgtype": "m.text", "body": format!("f{i}") }).to_string())
            .send()
            .await;
        if let Ok(resp) = r
            && resp.status() == 200
        {
            let v: Value = resp.json().await.unwrap_or_default();
            return v["event_id"].as_str().expect("event id").to_owned();
        }
        assert!(Instant::now() < deadline, "send f{i} never succeeded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the room's history holds `n` messages (read through nginx), then a little
/// longer for long-polls to deliver them.
async fn settle(client: &Client, room: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let page = client
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000",
                ganglion_tests::client::enc(room)
            ))
            .await;
        let have = page.body["chunk"].as_array().map_or(0, |c| {
            c.iter().filter(|e| e["type"] == "m.room.message").count()
        });
        if have >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// A room with a sender and `n` members long-polling it through nginx.
async fn room_with_pollers(srv: &TestServer, n: usize) -> (Client, String, Vec<Poller>) {
    let alice = srv.user("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let mut pollers = Vec::new();
    for i in 0..n {
        let c = srv.user(&format!("reader{i}")).await;
        c.join(&room).await;
        pollers.push(Poller::start(&c, &room).await);
    }
    (alice, room, pollers)
}

/// Faults during a burst of sends with clients long-polling through nginx: each sync
/// worker killed with -9 and restarted, this deployment's Redis streams deleted (what
/// FLUSHALL does to it), and main killed with -9 and restarted. Every client sees every
/// acknowledged event exactly once, in order, and no long-poll outlives its timeout by much.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_during_a_burst_lose_nothing() {
    let mut srv = TestServer::start(Backend::Split).await;
    let (alice, room, pollers) = room_with_pollers(&srv, 2).await;
    let mut acked = Vec::new();
    for i in 0..120 {
        match i {
            // Both workers, one after the other: whichever serves a poller is hit.
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
        acked.push(send_acked(&alice, &room, i).await);
    }
    settle(&alice, &room, acked.len()).await;
    for (i, p) in pollers.into_iter().enumerate() {
        p.finish(&acked, &format!("reader{i}")).await;
    }
    srv.cleanup().await;
}

/// A Redis of the test's own, on a free port, restartable (it keeps nothing on disk, so
/// a restart is also a FLUSHALL).
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let mut r = OwnRedis { port, child: None };
        r.up();
        r
    }

    fn up(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (tests/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.down();
    }
}

/// Redis killed and restarted (empty) twice during a burst, once staying down for two
/// seconds, and a real FLUSHALL in between: processes reconnect, catch up from
/// PostgreSQL, and every client still gets every event exactly once, in order, with no
/// long-poll hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarts_during_a_burst_lose_nothing() {
    let port = ganglion_tests::server::free_port();
    let mut redis = OwnRedis::start(port);
    let srv = TestServer::start_split_on_redis(&format!("redis://127.0.0.1:{port}")).await;
    let (alice, room, pollers) = room_with_pollers(&srv, 2).await;
    let mut acked = Vec::new();
    for i in 0..100 {
        match i {
            30 => {
                redis.down();
                redis.up();
            }
            45 => {
                let status = std::process::Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "FLUSHALL"])
                    .status()
                    .expect("redis-cli");
                assert!(status.success());
            }
            60 => redis.down(),
            70 => redis.up(),
            _ => {}
        }
        if (60..70).contains(&i) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        acked.push(send_acked(&alice, &room, i).await);
    }
    settle(&alice, &room, acked.len()).await;
    for (i, p) in pollers.into_iter().enumerate() {
        p.finish(&acked, &format!("reader{i}")).await;
    }
    srv.cleanup().await;
}

/// A third sync worker added and one removed while messages flow and clients long-poll:
/// nginx reloads its upstreams (gracefully), no Ganglion process restarts, every client
/// sees every event exactly once in order, and the only errors clients see are retried
/// connections to the removed worker. The membership follows: the joiner appears, the
/// leaver is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_joins_and_one_leaves_under_load() {
    let mut srv = TestServer::start(Backend::Split).await;
    let (alice, room, pollers) = room_with_pollers(&srv, 4).await;
    let members = "SELECT instance FROM cluster_members WHERE role = 'sync' AND expires_ms > (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT ORDER BY instance";
    assert_eq!(srv.query_strings(members).await, ["sync-1", "sync-2"]);
    let mut acked = Vec::new();
    for i in 0..90 {
        match i {
            30 => {
                let idx = srv.add_sync_worker("sync-3").await;
                assert_eq!(idx, 2);
                // The joiner takes its share: reads of 30 rooms, balanced by room.
                for _ in 0..30 {
                    let r = alice.create_room(json!({})).await;
                    alice
                        .get(&format!(
                            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
                            ganglion_tests::client::enc(&r)
                        ))
                        .await
                        .ok();
                }
                let served = srv.sync_worker(2).requests_served("/messages").await;
                assert!(served > 0, "sync-3 served none of 30 rooms' reads");
            }
            60 => {
                let status = srv.remove_sync_worker(0).expect("sync-1 stopped");
                assert!(status.success(), "sync-1 shut down cleanly: {status}");
                // A clean leave drops the lease at once (leases here last 2 s).
                let now = srv.query_strings(members).await;
                assert!(
                    !now.contains(&"sync-1".to_owned()),
                    "sync-1 still a member: {now:?}"
                );
            }
            _ => {}
        }
        acked.push(send_acked(&alice, &room, i).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    settle(&alice, &room, acked.len()).await;
    for (i, p) in pollers.into_iter().enumerate() {
        let polled = p.finish(&acked, &format!("reader{i}")).await;
        assert!(
            polled.errors.iter().all(|s| [502, 503, 504].contains(s)),
            "reader{i} saw more than retried connections: {:?}",
            polled.errors
        );
    }
    // A clean leave drops the lease at once; the joiner holds one.
    assert_eq!(srv.query_strings(members).await, ["sync-2", "sync-3"]);
    // main was never restarted: its log has one start.
    assert_eq!(srv.log().matches("Ganglion starting").count(), 1);
    srv.cleanup().await;
}

/// A worker serves /sync and the room reads itself and forwards everything else to main's
/// internal listener (which refuses callers without the secret), so a client talking
/// to a worker alone can do everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_forwards_what_it_does_not_serve() {
    let srv = TestServer::start(Backend::Split).await;
    let direct = srv.sync_workers()[0].clone();
    let mut alice = Client::new(&direct);
    alice = alice
        .register(&format!("fw{}", rand::random::<u32>()), "password-123")
        .await;
    let room = alice
        .create_room(json!({ "name": "through a worker" }))
        .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(alice.send_text(&room, &format!("m{i}")).await);
    }
    // A state write on a path the worker serves for reading goes to main too.
    let topic = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                ganglion_tests::client::enc(&room)
            ),
            json!({ "topic": "forwarded" }),
        )
        .await;
    assert_eq!(topic.status, 200, "{}", topic.body);
    // Read-your-writes on the worker itself, right after main answered.
    let state = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
            ganglion_tests::client::enc(&room)
        ))
        .await;
    assert_eq!(state.body["topic"], "forwarded", "{}", state.body);
    let page = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10",
            ganglion_tests::client::enc(&room)
        ))
        .await;
    let mut got: Vec<String> = page.body["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .map(|e| e["event_id"].as_str().unwrap_or_default().to_owned())
        .filter(|id| ids.contains(id))
        .collect();
    got.reverse();
    assert_eq!(
        got, ids,
        "the worker's /messages has every send, right away"
    );
    // Errors from main come back unchanged.
    alice
        .post("/_matrix/client/v3/join/%23nowhere:localhost", json!({}))
        .await
        .expect_err(404, "M_NOT_FOUND");

    // The worker reports itself caught up, its lag per stream, and its role's members.
    let worker = srv.sync_worker(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = worker.metrics_text().await;
        let lag = text
            .lines()
            .find(|l| l.starts_with("ganglion_replication_lag{stream=\"events\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        if lag == Some(0.0) && text.contains("ganglion_cluster_members{role=\"sync\"} 2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no zero events lag or two sync members: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        worker.ready_status().await,
        200,
        "a caught-up worker is ready"
    );

    // main's internal listener wants the secret.
    let cfg = std::fs::read_to_string(&srv.config_path).expect("config");
    let internal = cfg
        .lines()
        .find_map(|l| l.strip_prefix("internal = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("internal listener");
    let http = ganglion_tests::http().build().expect("http client");
    for secret in [None, Some("wrong-secret-0123456789")] {
        let mut req = http.get(format!(
            "http://{internal}/_matrix/client/v3/account/whoami"
        ));
        if let Some(s) = secret {
            req = req.header("x-ganglion-internal-secret", s);
        }
        let r = req
            .bearer_auth(alice.token.as_deref().unwrap_or_default())
            .send()
            .await
            .expect("internal listener answers");
        assert_eq!(r.status(), 403);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["errcode"], "M_FORBIDDEN");
    }
    srv.cleanup().await;
}
