//! Federation: the TLS listener's own checks, and interop with a real Synapse (from PyPI,
//! started by tests/synapse/start-synapse.sh in federation mode) on loopback with a test
//! CA (tests/federation/make-ca.sh).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use ganglion_tests::{Backend, Client, TestServer, client::enc};
use serde_json::{Value, json};

fn repo_tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A test CA with certificates for Ganglion and Synapse, shared by the run.
pub(crate) fn test_ca() -> PathBuf {
    let dir = std::env::temp_dir().join("ganglion-test-ca");
    let ok = Command::new(repo_tests_dir().join("federation/make-ca.sh"))
        .arg(&dir)
        .args(["ganglion", "synapse"])
        .status()
        .expect("make-ca.sh");
    assert!(ok.success(), "make-ca.sh failed");
    dir
}

/// An HTTPS client trusting only the test CA.
pub(crate) fn https(ca: &Path) -> reqwest::Client {
    ganglion_federation_client::client::install_crypto_provider();
    let pem = std::fs::read(ca.join("ca.pem")).expect("ca.pem");
    let certs = reqwest::Certificate::from_pem_bundle(&pem).expect("ca");
    ganglion_tests::http()
        .tls_certs_only(certs)
        .build()
        .expect("client")
}

/// A Synapse federating on loopback, stopped when dropped.
pub(crate) struct Synapse {
    pub(crate) client: String,
    pub(crate) server_name: String,
    pid: u32,
    port: u16,
    dir: PathBuf,
    ca: PathBuf,
}

impl Synapse {
    pub(crate) fn start(ca: &Path) -> Synapse {
        let port = ganglion_tests::server::free_port();
        let dir = std::env::temp_dir().join(format!("ganglion-synapse-{port}"));
        Self::start_at(port, dir, ca)
    }

    /// Stops it (SIGTERM) and waits until it is gone.
    fn stop(&self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while Path::new(&format!("/proc/{}", self.pid)).exists() {
            assert!(std::time::Instant::now() < deadline, "Synapse did not stop");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Starts it again on the same ports and data.
    fn restart(&mut self) {
        let (_, _, pid) = Self::launch(self.port, &self.dir, &self.ca);
        self.pid = pid;
    }

    fn start_at(port: u16, dir: PathBuf, ca: &Path) -> Synapse {
        let (client, server_name, pid) = Self::launch(port, &dir, ca);
        Synapse {
            client,
            server_name,
            pid,
            port,
            dir,
            ca: ca.to_owned(),
        }
    }

    /// Runs start-synapse.sh: (client URL, server name, pid).
    fn launch(port: u16, dir: &Path, ca: &Path) -> (String, String, u32) {
        let out = Command::new(repo_tests_dir().join("synapse/start-synapse.sh"))
            .arg(port.to_string())
            .arg(dir)
            .env("SYNAPSE_FEDERATION", "1")
            .env("SYNAPSE_CA_DIR", ca)
            .output()
            .expect("start-synapse.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "Synapse did not start: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout.lines().last().expect("a status line");
        let field = |k: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k} in {line}"))
                .to_owned()
        };
        (
            field("client"),
            field("server_name"),
            field("pid").parse().expect("pid"),
        )
    }

    pub(crate) async fn user(&self, name: &str) -> Client {
        Client::new(&self.client)
            .register(&format!("{name}{}", rand::random::<u32>()), "password-123")
            .await
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
    }
}

/// The federation listener serves our signed keys and the version, answers unknown
/// endpoints 404 M_UNRECOGNIZED, and refuses queries that are unsigned, signed for
/// another destination, signed with a key the origin does not publish, or forged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_checks_every_request() {
    let ca = test_ca();
    let (srv, name) = TestServer::start_federating(Backend::Sqlite, &ca).await;
    let http = https(&ca);
    let base = format!("https://{name}");

    let doc: Value = http
        .get(format!("{base}/_matrix/key/v2/server"))
        .send()
        .await
        .expect("keys")
        .json()
        .await
        .expect("json");
    let rows = ganglion_federation_client::keys::verify_key_document(&name, &doc)
        .unwrap_or_else(|e| panic!("our key document does not verify: {e}"));
    let key_id = rows[0].key_id.clone();
    let v: Value = http
        .get(format!("{base}/_matrix/federation/v1/version"))
        .send()
        .await
        .expect("version")
        .json()
        .await
        .expect("json");
    assert_eq!(v["server"]["name"], "Ganglion");
    let r = http
        .get(format!("{base}/_matrix/federation/v1/no_such_thing"))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.expect("json")["errcode"],
        "M_UNRECOGNIZED"
    );

    let alice = srv.user("alice").await;
    let user_id = alice.user_id.clone();
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&user_id)
    );
    let query = |auth: Option<String>| {
        let mut req = http.get(format!("{base}{path}"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        async move {
            let r = req.send().await.expect("answer");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or_default())
        }
    };
    let (status, body) = query(None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNAUTHORIZED"))
    );

    // Another server's key, claiming to be us (a forged origin).
    let dir = std::env::temp_dir().join(format!("ganglion-forger-{}", rand::random::<u32>()));
    let forger = ganglion_federation_client::ServerKey::load_or_generate(
        &dir.join("k").display().to_string(),
    )
    .expect("key");
    let sign = |origin: &str, dest: &str| {
        ganglion_federation_client::xmatrix::sign(&forger.pair, origin, dest, "GET", &path, None)
            .expect("sign")
    };
    let (status, body) = query(Some(sign(&name, &name))).await;
    assert_eq!(status, 401, "a key we do not publish: {body}");
    // Our real key id, a signature by another key.
    let forged = sign(&name, &name).replace(&forger.key_id, &key_id);
    let (status, body) = query(Some(forged)).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_INVALID_SIGNATURE")),
        "{body}"
    );
    let (status, body) = query(Some(sign(&name, "elsewhere.example"))).await;
    assert_eq!(status, 401, "another destination: {body}");
    let (status, _) = query(Some("X-Matrix origin=".into())).await;
    assert_eq!(status, 401, "a malformed header");
    srv.cleanup().await;
}

/// Profiles and room aliases cross between Ganglion and Synapse in both directions: each
/// side signs its queries, fetches and checks the other's keys over TLS with the test CA.
/// And Ganglion, as a notary, serves Synapse's key document with its own signature added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_and_aliases_cross_with_synapse() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (srv, name) = TestServer::start_federating(Backend::Postgres, &ca).await;

    let alice = srv.user("alice").await;
    let alice_id = alice.user_id.clone();
    alice
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice_id)),
            json!({ "displayname": "Alice on Ganglion" }),
        )
        .await
        .ok();
    let bob = synapse.user("bob").await;
    let bob_id = bob.user_id.clone();
    assert!(
        bob_id.ends_with(&format!(":{}", synapse.server_name)),
        "{bob_id}"
    );
    bob.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob_id)),
        json!({ "displayname": "Bob on Synapse" }),
    )
    .await
    .ok();

    // Ganglion → Synapse: our signed request; Synapse fetches our keys to check it.
    let p = alice
        .get(&format!("/_matrix/client/v3/profile/{}", enc(&bob_id)))
        .await
        .ok();
    assert_eq!(p["displayname"], "Bob on Synapse");
    // Synapse → Ganglion: we fetch Synapse's keys and check its signature.
    let p = bob
        .get(&format!("/_matrix/client/v3/profile/{}", enc(&alice_id)))
        .await
        .ok();
    assert_eq!(p["displayname"], "Alice on Ganglion");
    let f = bob
        .get(&format!(
            "/_matrix/client/v3/profile/{}/displayname",
            enc(&alice_id)
        ))
        .await
        .ok();
    assert_eq!(f["displayname"], "Alice on Ganglion");
    // An unknown user of ours is 404 on their side.
    let missing = format!("@nobody:{name}");
    let r = bob
        .get(&format!("/_matrix/client/v3/profile/{}", enc(&missing)))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);

    // As a notary we serve Synapse's keys (fetched for the queries above), countersigned.
    let http = https(&ca);
    let ours: Value = http
        .get(format!("https://{name}/_matrix/key/v2/server"))
        .send()
        .await
        .expect("keys")
        .json()
        .await
        .expect("json");
    let our_keys =
        ganglion_federation_client::keys::verify_key_document(&name, &ours).expect("ours");
    for req in [
        http.get(format!(
            "https://{name}/_matrix/key/v2/query/{}",
            synapse.server_name
        )),
        http.post(format!("https://{name}/_matrix/key/v2/query"))
            .json(&json!({ "server_keys": { &synapse.server_name: {} } })),
    ] {
        let v: Value = req
            .send()
            .await
            .expect("notary")
            .json()
            .await
            .expect("json");
        let doc = &v["server_keys"][0];
        ganglion_federation_client::keys::verify_key_document(&synapse.server_name, doc)
            .unwrap_or_else(|e| panic!("Synapse's own signature: {e}: {v}"));
        ganglion_federation_client::keys::verify_notarised(doc, &name, &our_keys)
            .unwrap_or_else(|e| panic!("our countersignature: {e}: {v}"));
    }

    // Aliases, both ways.
    let our_alias = format!("#g{}:{name}", rand::random::<u32>());
    let localpart = our_alias[1..]
        .split(':')
        .next()
        .expect("localpart")
        .to_owned();
    let room = alice
        .create_room(json!({ "room_alias_name": localpart }))
        .await;
    let r = bob
        .get(&format!(
            "/_matrix/client/v3/directory/room/{}",
            enc(&our_alias)
        ))
        .await
        .ok();
    assert_eq!(r["room_id"], room.as_str());
    let theirs_local = format!("s{}", rand::random::<u32>());
    let theirs = format!("#{theirs_local}:{}", synapse.server_name);
    let their_room = bob
        .create_room(json!({ "room_alias_name": theirs_local }))
        .await;
    let r = alice
        .get(&format!(
            "/_matrix/client/v3/directory/room/{}",
            enc(&theirs)
        ))
        .await
        .ok();
    assert_eq!(r["room_id"], their_room.as_str());
    assert_eq!(r["servers"][0], synapse.server_name.as_str());
    let r = alice
        .get(&format!(
            "/_matrix/client/v3/directory/room/{}",
            enc(&format!("#nothing:{}", synapse.server_name))
        ))
        .await;
    assert_eq!((r.status, r.errcode()), (404, "M_NOT_FOUND"), "{}", r.body);
    srv.cleanup().await;
}

/// `ganglion rotate-signing-key`: a new key signs from then on, and the old one stays
/// published in `old_verify_keys` (with its expiry) once its printed entry is added to
/// the configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_stays_published_as_old() {
    let ca = test_ca();
    let (mut srv, name) = TestServer::start_federating(Backend::Sqlite, &ca).await;
    let http = https(&ca);
    let fetch = || async {
        let doc: Value = http
            .get(format!("https://{name}/_matrix/key/v2/server"))
            .send()
            .await
            .expect("keys")
            .json()
            .await
            .expect("json");
        doc
    };
    let before = fetch().await;
    let old_id = before["verify_keys"]
        .as_object()
        .and_then(|k| k.keys().next().cloned())
        .expect("a key");
    srv.stop();
    let out = Command::new(ganglion_tests::server::binary())
        .args(["rotate-signing-key", "--config"])
        .arg(&srv.config_path)
        .output()
        .expect("rotate-signing-key");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snippet = String::from_utf8(out.stdout).expect("utf-8");
    assert!(snippet.contains(&old_id), "{snippet}");
    let mut cfg = std::fs::read_to_string(&srv.config_path).expect("config");
    cfg.push('\n');
    cfg.push_str(&snippet);
    std::fs::write(&srv.config_path, cfg).expect("config");
    srv.spawn().await;

    let after = fetch().await;
    let rows = ganglion_federation_client::keys::verify_key_document(&name, &after)
        .unwrap_or_else(|e| panic!("{e}: {after}"));
    let new_id = after["verify_keys"]
        .as_object()
        .and_then(|k| k.keys().next().cloned())
        .expect("a key");
    assert_ne!(new_id, old_id, "a new key signs now");
    let old = rows
        .iter()
        .find(|r| r.key_id == old_id)
        .expect("old key published");
    assert_eq!(
        old.public_key,
        before["verify_keys"][&old_id]["key"].as_str().expect("key")
    );
    assert!(old.valid_until_ts <= ganglion_tests_now_ms());
    srv.cleanup().await;
}

fn ganglion_tests_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A Synapse user joins a public room on Ganglion by alias: Synapse resolves the alias
/// (query/directory), asks for a join template (make_join) and sends the signed join
/// (send_join v2); Ganglion checks the signature, hash and auth rules, persists the join
/// and answers with the room's state and auth chain, which Synapse checks and adopts.
/// Then 100 messages go each way (Ganglion's sender to Synapse, Synapse's transactions
/// to Ganglion) and both servers show all 200 in the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synapse_user_joins_a_ganglion_room() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (srv, name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let alice = srv.user("alice").await;
    let local = format!("pub{}", rand::random::<u32>());
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "room_alias_name": local,
            "name": "Ganglion's room",
            "topic": "federated",
        }))
        .await;
    // History before Synapse joins: Synapse fetches it from our /backfill.
    let mut before = Vec::new();
    for i in 0..40 {
        let body = format!("early-{i}");
        alice.send_text(&room, &body).await;
        before.push(body);
    }
    let bob = synapse.user("bob").await;
    let joined = bob
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                enc(&format!("#{local}:{name}"))
            ),
            json!({}),
        )
        .await;
    assert_eq!(
        joined.status, 200,
        "Synapse could not join: {}",
        joined.body
    );
    assert_eq!(joined.body["room_id"], room.as_str());
    let mut theirs = message_bodies(&page_back(&bob, &room, 15).await);
    theirs.reverse();
    assert_eq!(
        theirs, before,
        "Synapse backfills the history before its join from us"
    );

    // Ganglion has bob as a member.
    let members = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/joined_members",
            enc(&room)
        ))
        .await
        .ok();
    assert!(
        members["joined"].get(&bob.user_id).is_some(),
        "bob is not a member on Ganglion: {members}"
    );
    // Synapse adopted the room's state from our answer.
    let name_ev = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.name/",
            enc(&room)
        ))
        .await
        .ok();
    assert_eq!(name_ev["name"], "Ganglion's room");
    let their_members = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/joined_members",
            enc(&room)
        ))
        .await
        .ok();
    assert!(
        their_members["joined"].get(&alice.user_id).is_some(),
        "Synapse does not see alice: {their_members}"
    );

    // 100 messages each way; both sides end with all 200, in the same order.
    exchange(&alice, &bob, &room, 100).await;

    // A join for a user of another server, or for a room that is not public, is refused.
    let http = https(&ca);
    let r = http
        .get(format!(
            "https://{name}/_matrix/federation/v1/make_join/{}/{}?ver=10",
            enc(&room),
            enc(&bob.user_id)
        ))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 401, "unsigned make_join");
    srv.cleanup().await;
}

/// The message bodies of a room, oldest first (up to 1,000).
async fn bodies(c: &Client, room: &str) -> Vec<String> {
    let page = c
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000",
            enc(room)
        ))
        .await;
    let mut out: Vec<String> = page.body["chunk"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|e| e["type"] == "m.room.message")
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    out.reverse();
    out
}

/// Waits (at most 60 s) until `c` sees every body in `want`.
async fn wait_for_bodies(c: &Client, room: &str, want: &[String], who: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let have = bodies(c, room).await;
        if want.iter().all(|w| have.contains(w)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{who} has {} of {} messages",
            want.iter().filter(|w| have.contains(w)).count(),
            want.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A Ganglion user joins Synapse rooms, one by alias and one by id: make_join at
/// Synapse, our signed join, send_join, the returned state and auth chain checked and
/// stored. Then 100 messages go each way in the first, and both servers show all 200 in
/// the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ganglion_user_joins_synapse_rooms() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (srv, _name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let bob = synapse.user("bob").await;
    let local = format!("syn{}", rand::random::<u32>());
    let room = bob
        .create_room(json!({
            "preset": "public_chat",
            "room_alias_name": local,
            "name": "Synapse's room",
        }))
        .await;
    let other = bob
        .create_room(json!({ "preset": "public_chat", "name": "by id" }))
        .await;
    let alice = srv.user("alice").await;
    let joined = alice
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                enc(&format!("#{local}:{}", synapse.server_name))
            ),
            json!({}),
        )
        .await;
    assert_eq!(joined.status, 200, "join by alias: {}", joined.body);
    assert_eq!(joined.body["room_id"], room.as_str());
    // Room v12 ids name no server: the client says where to ask (`via`).
    let by_id = alice
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?via={}",
                enc(&other),
                enc(&synapse.server_name)
            ),
            json!({}),
        )
        .await;
    assert_eq!(by_id.status, 200, "join by id: {}", by_id.body);

    // Both sides agree on the membership and the state came across.
    let name_ev = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.name/",
            enc(&room)
        ))
        .await
        .ok();
    assert_eq!(name_ev["name"], "Synapse's room");
    let theirs = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/joined_members",
            enc(&room)
        ))
        .await
        .ok();
    assert!(
        theirs["joined"].get(&alice.user_id).is_some(),
        "Synapse does not list alice: {theirs}"
    );

    exchange(&bob, &alice, &room, 100).await;
    srv.cleanup().await;
}

/// Every event of a room as `c` pages back through it from now (`/messages`, `limit` a
/// page), newest first; fails on a page that repeats an event.
async fn page_back(c: &Client, room: &str, limit: usize) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..200 {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}",
            enc(room)
        );
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", enc(f)));
        }
        let page = c.get(&path).await.ok();
        for e in page["chunk"].as_array().cloned().unwrap_or_default() {
            assert!(
                !out.iter().any(|o| o["event_id"] == e["event_id"]),
                "{} came twice",
                e["event_id"]
            );
            out.push(e);
        }
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => return out,
        }
    }
    panic!("the room never ended after 200 pages");
}

/// The message bodies among `events`, in the order given.
fn message_bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// Interop 7: a Ganglion user joins a Synapse room with a long history (250 messages
/// and a topic change among them) and pages back through all of it: each page past our
/// earliest event backfills from Synapse, checked event by event. Every message comes
/// once, in order, down to the room's create event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ganglion_user_back_paginates_a_long_synapse_history() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (srv, _name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let bob = synapse.user("bob").await;
    let (room, local) = public_room(&bob, "long").await;
    let mut sent = Vec::new();
    for i in 0..250 {
        if i == 120 {
            bob.put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                    enc(&room)
                ),
                json!({ "topic": "halfway" }),
            )
            .await
            .ok();
        }
        let body = format!("old-{i}");
        bob.send_text(&room, &body).await;
        sent.push(body);
    }
    let alice = srv.user("alice").await;
    let joined = alice
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                enc(&format!("#{local}:{}", synapse.server_name))
            ),
            json!({}),
        )
        .await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    let events = page_back(&alice, &room, 30).await;
    let mut bodies = message_bodies(&events);
    bodies.reverse();
    assert_eq!(bodies, sent, "every message once, in order");
    let last = events.last().expect("events");
    assert_eq!(
        last["type"], "m.room.create",
        "the history ends at the create event"
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.topic" && e["content"]["topic"] == "halfway"),
        "the topic change is in the history"
    );
    // A second reader pages the stored history again: nothing is fetched twice.
    let again = page_back(&alice, &room, 100).await;
    assert_eq!(
        again.len(),
        events.len(),
        "the same history the second time"
    );
    srv.cleanup().await;
}

/// Two Ganglion servers federate as they do with Synapse: a user of one joins a room on
/// the other by alias, and messages cross both ways in the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ganglions_federate() {
    let ca = test_ca();
    let (one, one_name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let (two, two_name) = TestServer::start_federating(Backend::Sqlite, &ca).await;
    let carol = two.user("carol").await;
    let (room, local) = public_room(&carol, "g2").await;
    // History before dave's server joins: fetched from server two by backfill.
    let mut before = Vec::new();
    for i in 0..60 {
        let body = format!("before-{i}");
        carol.send_text(&room, &body).await;
        before.push(body);
    }
    let dave = one.user("dave").await;
    join_by_alias(&dave, &local, &two_name).await;
    let mut seen = message_bodies(&page_back(&dave, &room, 25).await);
    seen.reverse();
    assert_eq!(
        seen, before,
        "dave pages back through the history before his join"
    );
    exchange(&carol, &dave, &room, 30).await;

    // The read side: server one (in the room) may read server two's state and events.
    let one_key = ganglion_federation_client::ServerKey::load_or_generate(
        &one.dir.join("signing.key").display().to_string(),
    )
    .expect("server one's key");
    let last = bodies_and_ids(&carol, &room).await.1;
    let http = https(&ca);
    let (status, v) = signed_get(
        &http,
        &one_key,
        &one_name,
        &two_name,
        &format!(
            "/_matrix/federation/v1/state_ids/{}?event_id={}",
            enc(&room),
            enc(&last)
        ),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let ids = v["pdu_ids"].as_array().cloned().unwrap_or_default();
    assert!(
        ids.len() >= 6,
        "create, power levels, join rules, history, members: {v}"
    );
    assert!(
        !v["auth_chain_ids"].as_array().is_none_or(Vec::is_empty),
        "{v}"
    );
    let (status, v) = signed_get(
        &http,
        &one_key,
        &one_name,
        &two_name,
        &format!("/_matrix/federation/v1/event/{}", enc(&last)),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["pdus"][0]["room_id"], room.as_str());
    one.cleanup().await;
    two.cleanup().await;
}

/// A room's server ACL shuts a server out: after the room's admin denies it, its
/// messages are dropped and its reads of the room get 403 `M_FORBIDDEN`. (Every server
/// here is `localhost:PORT`, and ACLs ignore ports, so the ACL names `localhost`; a
/// server never checks its own events against it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_acl_shuts_a_server_out() {
    let ca = test_ca();
    let (one, one_name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let (two, two_name) = TestServer::start_federating(Backend::Sqlite, &ca).await;
    let carol = two.user("carol").await;
    let (room, local) = public_room(&carol, "acl").await;
    let dave = one.user("dave").await;
    join_by_alias(&dave, &local, &two_name).await;
    exchange(&carol, &dave, &room, 2).await;
    let last = bodies_and_ids(&carol, &room).await.1;

    carol
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.server_acl/",
                enc(&room)
            ),
            json!({ "allow": ["*"], "deny": ["localhost"], "allow_ip_literals": false }),
        )
        .await
        .ok();
    dave.send_text(&room, "after the acl").await;
    carol.send_text(&room, "carol's own").await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let have = bodies(&carol, &room).await;
    assert!(have.contains(&"carol's own".to_owned()));
    assert!(
        !have.contains(&"after the acl".to_owned()),
        "a denied server's message was accepted"
    );
    let one_key = ganglion_federation_client::ServerKey::load_or_generate(
        &one.dir.join("signing.key").display().to_string(),
    )
    .expect("server one's key");
    let (status, v) = signed_get(
        &https(&ca),
        &one_key,
        &one_name,
        &two_name,
        &format!(
            "/_matrix/federation/v1/state_ids/{}?event_id={}",
            enc(&room),
            enc(&last)
        ),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["errcode"], "M_FORBIDDEN");
    one.cleanup().await;
    two.cleanup().await;
}

/// Back-pagination in the split shape: `/messages` goes to a sync worker, which cannot
/// fetch history from other servers; a page that runs past our earliest event is handed
/// to main, which backfills, and later pages read what main stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_ganglion_backfills_through_main() {
    let ca = test_ca();
    let (one, _one_name) = TestServer::start_federating_split(&ca).await;
    let (two, two_name) = TestServer::start_federating(Backend::Sqlite, &ca).await;
    let carol = two.user("carol").await;
    let (room, local) = public_room(&carol, "hist").await;
    let mut before = Vec::new();
    for i in 0..40 {
        let body = format!("history-{i}");
        carol.send_text(&room, &body).await;
        before.push(body);
    }
    let dave = one.user("dave").await;
    join_by_alias(&dave, &local, &two_name).await;
    let mut seen = message_bodies(&page_back(&dave, &room, 15).await);
    seen.reverse();
    assert_eq!(
        seen, before,
        "dave pages back through the history before his join"
    );
    let mut handed = 0.0;
    for i in 0..2 {
        handed += counter(one.sync_worker(i), "ganglion_worker_handed_to_main_total").await;
    }
    assert!(handed >= 1.0, "a sync worker handed a page to main");
    one.cleanup().await;
    two.cleanup().await;
}

/// The history and membership-template endpoints refuse bad input with the spec's
/// errors: `/backfill` without `v` or with a bad `limit` or room id, `/event_auth` of an
/// unknown event, `/get_missing_events` with a malformed body, templates for another
/// server's user or for a room that takes no knocks; and they answer what is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_template_endpoints_refuse_bad_input() {
    let ca = test_ca();
    let (one, one_name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let (two, two_name) = TestServer::start_federating(Backend::Sqlite, &ca).await;
    let carol = two.user("carol").await;
    let (room, local) = public_room(&carol, "bad").await;
    for i in 0..8 {
        carol.send_text(&room, &format!("m{i}")).await;
    }
    let dave = one.user("dave").await;
    join_by_alias(&dave, &local, &two_name).await;
    let last = bodies_and_ids(&carol, &room).await.1;
    let key = ganglion_federation_client::ServerKey::load_or_generate(
        &one.dir.join("signing.key").display().to_string(),
    )
    .expect("server one's key");
    let http = https(&ca);
    let get = |path: String| {
        let (http, key, one_name, two_name) = (&http, &key, &one_name, &two_name);
        async move { signed_get(http, key, one_name, two_name, &path).await }
    };
    let r = enc(&room);
    let (status, v) = get(format!("/_matrix/federation/v1/backfill/{r}?limit=10")).await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_MISSING_PARAM")),
        "{v}"
    );
    let (status, v) = get(format!(
        "/_matrix/federation/v1/backfill/{r}?v={}&limit=many",
        enc(&last)
    ))
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{v}"
    );
    let (status, v) = get("/_matrix/federation/v1/backfill/not-a-room?v=x&limit=1".into()).await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{v}"
    );
    let (status, v) = get(format!(
        "/_matrix/federation/v1/backfill/{r}?v={}&limit=5",
        enc(&last)
    ))
    .await;
    assert_eq!(status, 200, "{v}");
    let pdus = v["pdus"].as_array().cloned().unwrap_or_default();
    assert_eq!(pdus.len(), 5, "{v}");
    // v is dave's join, the room's last event; then the messages, newest first.
    assert_eq!(pdus[0]["state_key"], dave.user_id.as_str(), "{v}");
    assert_eq!(pdus[1]["content"]["body"], "m7", "newest first: {v}");
    assert_eq!(pdus[4]["content"]["body"], "m4", "{v}");
    let (status, v) = get(format!(
        "/_matrix/federation/v1/event_auth/{r}/{}",
        enc("$unknown")
    ))
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{v}"
    );
    let (status, v) = get(format!(
        "/_matrix/federation/v1/event_auth/{r}/{}",
        enc(&last)
    ))
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["auth_chain"].as_array().is_some_and(|a| a.len() >= 3),
        "{v}"
    );
    let carol_id = enc(&carol.user_id);
    let (status, v) = get(format!("/_matrix/federation/v1/make_leave/{r}/{carol_id}")).await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "another server's user: {v}"
    );
    let dave_id = enc(&dave.user_id);
    let (status, v) = get(format!(
        "/_matrix/federation/v1/make_knock/{r}/{dave_id}?ver=10&ver=11&ver=12"
    ))
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "a public room: {v}"
    );

    let path = format!("/_matrix/federation/v1/get_missing_events/{r}");
    let body = json!({ "earliest_events": "not a list", "latest_events": [last] });
    let auth = ganglion_federation_client::xmatrix::sign(
        &key.pair,
        &one_name,
        &two_name,
        "POST",
        &path,
        Some(ruma_value(&body)),
    )
    .expect("sign");
    let resp = http
        .post(format!("https://{two_name}{path}"))
        .header("authorization", auth)
        .json(&body)
        .send()
        .await
        .expect("answer");
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or_default();
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_BAD_JSON")),
        "{v}"
    );
    one.cleanup().await;
    two.cleanup().await;
}

/// The sum of one counter in a worker's Prometheus metrics.
async fn counter(w: &ganglion_tests::server::Worker, name: &str) -> f64 {
    w.metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Two Ganglions, one in the split shape (main, sync workers behind nginx, Redis) with
/// two `ganglion-federation-sender` processes, the other a single binary. Messages cross
/// both ways; one sender owns the destination. Then, mid-stream, that sender is killed
/// with -9: once its lease runs out the other takes the destination over from its
/// cursor, and every message arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_ganglion_shares_destinations_between_two_senders() {
    let ca = test_ca();
    let (one, one_name) = TestServer::start_federating_split(&ca).await;
    let s1 = one.worker("ganglion-federation-sender", "fs-1").await;
    let s2 = one.worker("ganglion-federation-sender", "fs-2").await;
    let (two, _two_name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let alice = one.user("alice").await;
    let (room, local) = public_room(&alice, "split").await;
    let bob = two.user("bob").await;
    join_by_alias(&bob, &local, &one_name).await;
    exchange(&alice, &bob, &room, 15).await;

    // Exactly one sender sent to server two.
    let sent1 = counter(&s1, "ganglion_federation_pdus_sent_total").await;
    let sent2 = counter(&s2, "ganglion_federation_pdus_sent_total").await;
    assert!(
        (sent1 > 0.0) != (sent2 > 0.0),
        "one owner: fs-1 sent {sent1}, fs-2 sent {sent2}"
    );
    let (owner, survivor) = if sent1 > 0.0 { (s1, s2) } else { (s2, s1) };
    let before = counter(&survivor, "ganglion_federation_pdus_sent_total").await;

    let mut sent = Vec::new();
    let mut owner = Some(owner);
    for i in 0..60 {
        if i == 20 {
            // SIGKILL: no clean leave; its lease has to run out.
            drop(owner.take());
        }
        let body = format!("failover-{i}");
        alice.send_text(&room, &body).await;
        sent.push(body);
    }
    wait_for_bodies(&bob, &room, &sent, "bob after the failover").await;
    let have = bodies(&bob, &room).await;
    assert_eq!(
        have[have.len() - sent.len()..],
        sent[..],
        "in order, once each, after the failover"
    );
    let after = counter(&survivor, "ganglion_federation_pdus_sent_total").await;
    assert!(
        after > before,
        "the surviving sender took the destination over ({before} -> {after})"
    );
    one.cleanup().await;
    two.cleanup().await;
}

/// Bad input from a remote server, each refused with the right error and nothing from
/// it accepted: a transaction whose origin is not its signer, one over the PDU limit, a
/// PDU with a bad signature, one with a wrong content hash, one from a server whose
/// user is not in the room (failing the auth rules), and an unsigned request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_from_a_remote_is_refused() {
    let ca = test_ca();
    let (home, home_name) = TestServer::start_federating(Backend::Sqlite, &ca).await;
    // The "remote": a real server, so that its keys are published; the test signs with
    // its key file.
    let (evil, evil_name) = TestServer::start_federating(Backend::Sqlite, &ca).await;
    let evil_key = ganglion_federation_client::ServerKey::load_or_generate(
        &evil.dir.join("signing.key").display().to_string(),
    )
    .expect("the remote's key");
    let alice = home.user("alice").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "11" }))
        .await;
    let last = bodies_and_ids(&alice, &room).await;
    let http = https(&ca);

    let send = |txn: Value, origin_header: &str, path: &str| {
        let auth = ganglion_federation_client::xmatrix::sign(
            &evil_key.pair,
            origin_header,
            &home_name,
            "PUT",
            path,
            Some(ruma_value(&txn)),
        )
        .expect("sign");
        let req = http
            .put(format!("https://{home_name}{path}"))
            .header("authorization", auth)
            .json(&txn);
        async move {
            let r = req.send().await.expect("answer");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or_default())
        }
    };
    // A message from a user of the remote, who is not in the room.
    let mut pdu = json!({
        "type": "m.room.message",
        "room_id": room,
        "sender": format!("@mallory:{evil_name}"),
        "content": { "msgtype": "m.text", "body": "let me in" },
        "origin_server_ts": 1_700_000_000_000_i64,
        "depth": 100,
        "prev_events": [last.1],
        "auth_events": [],
    });
    sign_pdu(&mut pdu, &evil_key, &evil_name);
    let good_sig = pdu.clone();

    let path = "/_matrix/federation/v1/send/t1";
    let txn = |pdus: Vec<Value>, origin: &str| json!({ "origin": origin, "origin_server_ts": 1, "pdus": pdus, "edus": [] });
    // The transaction claims another origin than the signer.
    let (status, body) = send(txn(vec![good_sig.clone()], &home_name), &evil_name, path).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{body}"
    );
    // Over the limit.
    let many: Vec<Value> = (0..51).map(|_| good_sig.clone()).collect();
    let (status, body) = send(
        txn(many, &evil_name),
        &evil_name,
        "/_matrix/federation/v1/send/t2",
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (413, Some("M_TOO_LARGE")),
        "{body}"
    );
    // Fails the auth rules (mallory is not a member).
    let (status, body) = send(
        txn(vec![good_sig.clone()], &evil_name),
        &evil_name,
        "/_matrix/federation/v1/send/t3",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let result = body["pdus"]
        .as_object()
        .and_then(|m| m.values().next())
        .cloned()
        .unwrap_or_default();
    assert!(
        result["error"].as_str().is_some_and(|e| e.contains("auth")),
        "{body}"
    );
    // A bad signature.
    let mut bad_sig = good_sig.clone();
    bad_sig["signatures"][&evil_name] = json!({ &evil_key.key_id: "AAAA" });
    let (_, body) = send(
        txn(vec![bad_sig], &evil_name),
        &evil_name,
        "/_matrix/federation/v1/send/t4",
    )
    .await;
    let result = body["pdus"]
        .as_object()
        .and_then(|m| m.values().next())
        .cloned()
        .unwrap_or_default();
    assert!(
        result["error"]
            .as_str()
            .is_some_and(|e| e.contains("signature")),
        "{body}"
    );
    // A wrong content hash (the content changed after signing).
    let mut bad_hash = good_sig.clone();
    bad_hash["content"]["body"] = json!("changed");
    let (_, body) = send(
        txn(vec![bad_hash], &evil_name),
        &evil_name,
        "/_matrix/federation/v1/send/t5",
    )
    .await;
    let result = body["pdus"]
        .as_object()
        .and_then(|m| m.values().next())
        .cloned()
        .unwrap_or_default();
    assert!(
        result["error"].is_string(),
        "a changed event is refused: {body}"
    );
    // A server outside the room asking for its state or events.
    for path in [
        format!(
            "/_matrix/federation/v1/state_ids/{}?event_id={}",
            enc(&room),
            enc(&last.1)
        ),
        format!(
            "/_matrix/federation/v1/state/{}?event_id={}",
            enc(&room),
            enc(&last.1)
        ),
        format!("/_matrix/federation/v1/event/{}", enc(&last.1)),
    ] {
        let (status, body) = signed_get(&http, &evil_key, &evil_name, &home_name, &path).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{path}: {body}"
        );
    }
    // Unsigned.
    let r = http
        .put(format!("https://{home_name}/_matrix/federation/v1/send/t6"))
        .json(&txn(vec![], &evil_name))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 401);
    // Nothing of it reached the room.
    assert_eq!(bodies_and_ids(&alice, &room).await, last);
    home.cleanup().await;
    evil.cleanup().await;
}

/// The room's message count and newest event id, as seen by `c`.
async fn bodies_and_ids(c: &Client, room: &str) -> (usize, String) {
    let page = c
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000",
            enc(room)
        ))
        .await;
    let chunk = page.body["chunk"].as_array().cloned().unwrap_or_default();
    let newest = chunk
        .first()
        .and_then(|e| e["event_id"].as_str())
        .unwrap_or_default()
        .to_owned();
    (chunk.len(), newest)
}

fn ruma_value(v: &Value) -> ruma::CanonicalJsonValue {
    ruma::CanonicalJsonValue::try_from(v.clone()).expect("canonical JSON")
}

/// Hashes and signs a PDU (room v11 rules) as `server`.
fn sign_pdu(pdu: &mut Value, key: &ganglion_federation_client::ServerKey, server: &str) {
    let rules = ruma::RoomVersionId::V11.rules().expect("v11");
    let ruma::CanonicalJsonValue::Object(mut obj) = ruma_value(pdu) else {
        panic!("an object")
    };
    ruma::signatures::hash_and_sign_event(server, &key.pair, &mut obj, &rules.redaction)
        .expect("sign");
    *pdu = serde_json::to_value(ruma::CanonicalJsonValue::Object(obj)).expect("json");
}

/// Synapse stopped while a Ganglion user sends 50 messages into a room it shares, then
/// restarted: Ganglion's sender keeps retrying the same transaction with back-off, and
/// all 50 arrive, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_synapse_is_down_arrive_after_it_restarts() {
    let ca = test_ca();
    let mut synapse = Synapse::start(&ca);
    let (srv, name) = TestServer::start_federating(Backend::Sqlite, &ca).await;
    let (alice, bob, room) = bob_joins_alices_room(&srv, &name, &synapse).await;

    synapse.stop();
    let mut sent = Vec::new();
    for i in 0..50 {
        alice.send_text(&room, &format!("while-down-{i}")).await;
        sent.push(format!("while-down-{i}"));
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    synapse.restart();
    wait_for_bodies(&bob, &room, &sent, "Synapse after its restart").await;
    assert_eq!(bodies(&bob, &room).await, sent, "in order");
    srv.cleanup().await;
}

/// A gap filled with /get_missing_events: server one is down while a user of server
/// two sends 10 messages, and server two's sender then skips them (its cursor is moved
/// past them, as Synapse's catch-up mode does: it sends a room's latest event only).
/// When the next message reaches server one, its `prev_events` are unknown there;
/// server one asks server two for the events in between, checks each, and its user sees
/// all 10, once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_filled_with_get_missing_events() {
    let ca = test_ca();
    let (mut one, _one_name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let (mut two, two_name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let carol = two.user("carol").await;
    let (room, local) = public_room(&carol, "gap").await;
    let dave = one.user("dave").await;
    join_by_alias(&dave, &local, &two_name).await;
    exchange(&carol, &dave, &room, 2).await;

    one.stop();
    let mut sent = Vec::new();
    for i in 0..10 {
        let body = format!("gap-{i}");
        carol.send_text(&room, &body).await;
        sent.push(body);
    }
    two.stop();
    let moved = two
        .query_strings(
            "UPDATE shard_cursors SET position = (SELECT MAX(stream_ordering) FROM events)
             WHERE role = 'federation-sender' RETURNING shard_key",
        )
        .await;
    assert_eq!(moved.len(), 1, "server two had one destination: {moved:?}");
    two.spawn().await;
    one.spawn().await;
    carol.send_text(&room, "after").await;
    sent.push("after".into());
    wait_for_bodies(&dave, &room, &sent, "dave after the gap").await;
    let have = bodies(&dave, &room).await;
    assert_eq!(
        have[have.len() - sent.len()..],
        sent[..],
        "once each, in order"
    );
    assert!(
        one.log().contains("filled a gap with get_missing_events"),
        "the events came through /get_missing_events"
    );
    one.cleanup().await;
    two.cleanup().await;
}

/// A destination that contacts us ends our back-off from it: Synapse is down long
/// enough for Ganglion's retries to be 16 s apart; once back, a message from its user
/// reaches us, and Ganglion retries at once instead of waiting the back-off out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_contacts_us_is_retried_at_once() {
    let ca = test_ca();
    let mut synapse = Synapse::start(&ca);
    let (srv, name) = TestServer::start_federating(Backend::Sqlite, &ca).await;
    let (alice, bob, room) = bob_joins_alices_room(&srv, &name, &synapse).await;
    synapse.stop();
    alice.send_text(&room, "while away").await;
    // Retries after 0.5, 1, 2, 4 and 8 s: by now the next wait is 16 s.
    tokio::time::sleep(std::time::Duration::from_secs(17)).await;
    synapse.restart();
    bob.send_text(&room, "I am back").await;
    wait_for_bodies(&alice, &room, &["I am back".to_owned()], "alice").await;
    wait_for_bodies(&bob, &room, &["while away".to_owned()], "bob").await;
    assert!(
        srv.log()
            .contains("back-off ended: the destination contacted us"),
        "the back-off was cut short"
    );
    srv.cleanup().await;
}

/// Moderation crosses servers: a power-level change made on one side is enforced on the
/// other, and a Synapse admin's kick and ban of a Ganglion user are obeyed by Ganglion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_levels_kicks_and_bans_cross() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (srv, name) = TestServer::start_federating(Backend::Sqlite, &ca).await;

    // A Ganglion room: alice makes sending need power 50; bob (0) is refused on Synapse.
    let (alice, bob, ours) = bob_joins_alices_room(&srv, &name, &synapse).await;
    let pl_path = |room: &str| {
        format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
            enc(room)
        )
    };
    let mut pl = alice.get(&pl_path(&ours)).await.ok();
    pl["events_default"] = json!(50);
    alice.put(&pl_path(&ours), pl).await.ok();
    wait_until(|| async { bob.get(&pl_path(&ours)).await.body["events_default"] == json!(50) })
        .await;
    let refused = bob
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                enc(&ours)
            ),
            json!({ "msgtype": "m.text", "body": "may I?" }),
        )
        .await;
    assert_eq!(
        refused.status, 403,
        "Synapse enforces our power levels: {}",
        refused.body
    );

    // A Synapse room: bob raises events_default; alice is refused on Ganglion. Then bob
    // kicks her, and after that bans her: Ganglion obeys both.
    let theirs_local = format!("mod{}", rand::random::<u32>());
    let theirs = bob
        .create_room(json!({ "preset": "public_chat", "room_alias_name": theirs_local }))
        .await;
    let joined = alice
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                enc(&format!("#{theirs_local}:{}", synapse.server_name))
            ),
            json!({}),
        )
        .await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    let mut pl = bob.get(&pl_path(&theirs)).await.ok();
    pl["events_default"] = json!(50);
    bob.put(&pl_path(&theirs), pl).await.ok();
    wait_until(|| async { alice.get(&pl_path(&theirs)).await.body["events_default"] == json!(50) })
        .await;
    let refused = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                enc(&theirs)
            ),
            json!({ "msgtype": "m.text", "body": "may I?" }),
        )
        .await;
    assert_eq!(
        refused.status, 403,
        "Ganglion enforces Synapse's power levels: {}",
        refused.body
    );

    let member_path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        enc(&theirs),
        enc(&alice.user_id)
    );
    bob.post(
        &format!("/_matrix/client/v3/rooms/{}/kick", enc(&theirs)),
        json!({ "user_id": alice.user_id, "reason": "out" }),
    )
    .await
    .ok();
    wait_until(|| async { alice.get(&member_path).await.body["membership"] == json!("leave") })
        .await;
    // A ban of a joined Ganglion user (Synapse sends it to the servers in the room).
    let erin = srv.user("erin").await;
    let joined = erin
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                enc(&format!("#{theirs_local}:{}", synapse.server_name))
            ),
            json!({}),
        )
        .await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    let erin_path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        enc(&theirs),
        enc(&erin.user_id)
    );
    wait_until(|| async { bob.get(&erin_path).await.body["membership"] == json!("join") }).await;
    bob.post(
        &format!("/_matrix/client/v3/rooms/{}/ban", enc(&theirs)),
        json!({ "user_id": erin.user_id, "reason": "gone" }),
    )
    .await
    .ok();
    wait_until(|| async { erin.get(&erin_path).await.body["membership"] == json!("ban") }).await;
    let r = erin
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&theirs)),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 403, "a banned user cannot rejoin: {}", r.body);
    srv.cleanup().await;
}

/// Polls `check` every 200 ms for up to 30 s.
pub(crate) async fn wait_until<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A Ganglion user invites a Synapse user to a private room: Synapse countersigns the
/// invite (invite v2), shows it to its user, who accepts by joining through Ganglion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ganglion_user_invites_a_synapse_user() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (srv, _name) = TestServer::start_federating(Backend::Sqlite, &ca).await;
    let alice = srv.user("alice").await;
    let room = alice
        .create_room(json!({ "preset": "private_chat", "name": "invite only" }))
        .await;
    let bob = synapse.user("bob").await;
    let invited = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(invited.status, 200, "{}", invited.body);
    // Ganglion stored the invite with Synapse's signature on it.
    let member = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(&room),
            enc(&bob.user_id)
        ))
        .await
        .ok();
    assert_eq!(member["membership"], "invite");
    // Synapse shows it to bob.
    wait_until(|| async {
        bob.sync(None, 0).await["rooms"]["invite"]
            .get(&room)
            .is_some()
    })
    .await;
    let joined = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            json!({}),
        )
        .await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    let members = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/joined_members",
            enc(&room)
        ))
        .await
        .ok();
    assert!(members["joined"].get(&bob.user_id).is_some(), "{members}");
    srv.cleanup().await;
}

/// Typing notifications, read receipts and profile changes cross in both directions
/// (m.typing and m.receipt EDUs; profile changes as member events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_receipts_and_profiles_cross() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (srv, name) = TestServer::start_federating(Backend::Sqlite, &ca).await;
    let (alice, bob, room) = bob_joins_alices_room(&srv, &name, &synapse).await;
    let from_alice = alice.send_text(&room, "read me").await;
    wait_for_bodies(&bob, &room, &["read me".to_owned()], "Synapse").await;
    let from_bob = bob.send_text(&room, "and me").await;
    wait_for_bodies(&alice, &room, &["and me".to_owned()], "Ganglion").await;

    let ephemeral = |c: Client, kind: &'static str| {
        let room = room.clone();
        async move {
            // Synapse answers an identical initial sync from a cache for two minutes: a
            // different timeline limit each time makes each request its own.
            let filter = enc(
                &json!({ "room": { "timeline": { "limit": 20 + rand::random::<u8>() as u32 } } })
                    .to_string(),
            );
            let s = c
                .get(&format!(
                    "/_matrix/client/v3/sync?timeout=0&filter={filter}"
                ))
                .await
                .body;
            s["rooms"]["join"][&room]["ephemeral"]["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .find(|e| e["type"] == kind)
                .map(|e| e["content"].clone())
                .unwrap_or_default()
        }
    };
    let typing = |c: &Client, who: &Client| {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/typing/{}",
            enc(&room),
            enc(&who.user_id)
        );
        let c = c.clone();
        async move {
            c.put(&path, json!({ "typing": true, "timeout": 20000 }))
                .await
                .ok();
        }
    };
    // Typing, both ways.
    typing(&alice, &alice).await;
    wait_until(|| async {
        ephemeral(bob.clone(), "m.typing").await["user_ids"]
            .as_array()
            .is_some_and(|u| u.contains(&json!(alice.user_id)))
    })
    .await;
    typing(&bob, &bob).await;
    wait_until(|| async {
        ephemeral(alice.clone(), "m.typing").await["user_ids"]
            .as_array()
            .is_some_and(|u| u.contains(&json!(bob.user_id)))
    })
    .await;
    // Receipts, both ways.
    bob.post(
        &format!(
            "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
            enc(&room),
            enc(&from_alice)
        ),
        json!({}),
    )
    .await
    .ok();
    wait_until(|| async {
        !ephemeral(alice.clone(), "m.receipt").await[&from_alice]["m.read"][&bob.user_id].is_null()
    })
    .await;
    alice
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc(&from_bob)
            ),
            json!({}),
        )
        .await
        .ok();
    wait_until(|| async {
        !ephemeral(bob.clone(), "m.receipt").await[&from_bob]["m.read"][&alice.user_id].is_null()
    })
    .await;
    // Profile changes, both ways (the member events carry them).
    let rename = |c: &Client, to: &'static str| {
        let c = c.clone();
        async move {
            c.put(
                &format!("/_matrix/client/v3/profile/{}/displayname", enc(&c.user_id)),
                json!({ "displayname": to }),
            )
            .await
            .ok();
        }
    };
    let member_name = |c: Client, of: String| {
        let room = room.clone();
        async move {
            c.get(&format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&of)
            ))
            .await
            .body["displayname"]
                .clone()
        }
    };
    rename(&alice, "Alice Renamed").await;
    wait_until(|| async {
        member_name(bob.clone(), alice.user_id.clone()).await == json!("Alice Renamed")
    })
    .await;
    rename(&bob, "Bob Renamed").await;
    wait_until(|| async {
        member_name(alice.clone(), bob.user_id.clone()).await == json!("Bob Renamed")
    })
    .await;
    srv.cleanup().await;
}

/// The federation sender killed with -9 (with main: in these shapes it runs in-process)
/// while transactions to a stopped Synapse are pending, then restarted: it catches up
/// from the destination's durable cursor, and Synapse's user gets every message exactly
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sender_catches_up_from_its_cursor() {
    let ca = test_ca();
    let mut synapse = Synapse::start(&ca);
    let (mut srv, name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let (alice, bob, room) = bob_joins_alices_room(&srv, &name, &synapse).await;
    let mut sent = vec!["before".to_owned()];
    alice.send_text(&room, "before").await;
    wait_for_bodies(&bob, &room, &sent, "Synapse").await;

    synapse.stop();
    for i in 0..20 {
        alice.send_text(&room, &format!("pending-{i}")).await;
        sent.push(format!("pending-{i}"));
    }
    srv.kill9();
    srv.spawn().await;
    synapse.restart();
    wait_for_bodies(&bob, &room, &sent, "Synapse after both restarts").await;
    assert_eq!(bodies(&bob, &room).await, sent, "exactly once, in order");
    srv.cleanup().await;
}

/// alice (Ganglion) makes a public room with an alias; bob (Synapse) joins it by alias.
pub(crate) async fn bob_joins_alices_room(
    srv: &TestServer,
    name: &str,
    synapse: &Synapse,
) -> (Client, Client, String) {
    let alice = srv.user("alice").await;
    let (room, local) = public_room(&alice, "r").await;
    let bob = synapse.user("bob").await;
    let joined = bob
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                enc(&format!("#{local}:{name}"))
            ),
            json!({}),
        )
        .await;
    assert_eq!(
        joined.status, 200,
        "Synapse could not join: {}",
        joined.body
    );
    (alice, bob, room)
}

/// A public room made by `c` with a fresh alias `#<prefix><random>`: (room id, alias
/// local part).
pub(crate) async fn public_room(c: &Client, prefix: &str) -> (String, String) {
    let local = format!("{prefix}{}", rand::random::<u32>());
    let room = c
        .create_room(json!({ "preset": "public_chat", "room_alias_name": local }))
        .await;
    (room, local)
}

/// `user`'s membership in `room`, as `c` reads it (`null` when it has none).
async fn membership_in(c: &Client, room: &str, user: &str) -> Value {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        enc(room),
        enc(user)
    );
    c.get(&path).await.body["membership"].clone()
}

/// `c` joins `#local:server` (another server's room, by alias); fails unless 200.
pub(crate) async fn join_by_alias(c: &Client, local: &str, server: &str) {
    let joined = c
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                enc(&format!("#{local}:{server}"))
            ),
            json!({}),
        )
        .await;
    assert_eq!(
        joined.status, 200,
        "{} joining #{local}:{server}: {}",
        c.user_id, joined.body
    );
}

/// `first` sends `n` messages, which `second` must see; then `second` sends `n`, which
/// `first` must see; both must end with all of them in the same order.
async fn exchange(first: &Client, second: &Client, room: &str, n: usize) {
    let mut sent = Vec::new();
    for (from, to) in [(first, second), (second, first)] {
        for i in 0..n {
            let body = format!("{}-{i}", from.user_id);
            from.send_text(room, &body).await;
            sent.push(body);
        }
        wait_for_bodies(to, room, &sent, &to.user_id).await;
    }
    for c in [first, second] {
        // Earlier history may come first; the exchange itself ends the room, once each.
        let have = bodies(c, room).await;
        let (earlier, last) = have.split_at(have.len().saturating_sub(sent.len()));
        assert_eq!(last, sent.as_slice(), "{}'s order", c.user_id);
        assert!(
            !earlier.iter().any(|b| sent.contains(b)),
            "{} has duplicates",
            c.user_id
        );
    }
}

/// A Synapse user invites a Ganglion user to a private room: Ganglion checks and
/// countersigns the invite, shows it to its user with the room's stripped state, and the
/// user accepts by joining through the inviter's server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synapse_user_invites_a_ganglion_user() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (srv, _name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let bob = synapse.user("bob").await;
    let room = bob
        .create_room(json!({ "preset": "private_chat", "name": "Bob's secret room" }))
        .await;
    let alice = srv.user("alice").await;
    let invited = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({ "user_id": alice.user_id }),
        )
        .await;
    assert_eq!(
        invited.status, 200,
        "Synapse could not invite: {}",
        invited.body
    );
    let invite = alice.sync(None, 0).await["rooms"]["invite"][&room].clone();
    let events = invite["invite_state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Bob's secret room"),
        "the invite shows the room's name: {invite}"
    );
    assert!(
        events.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == alice.user_id.as_str()
            && e["content"]["membership"] == "invite"),
        "{invite}"
    );
    let joined = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            json!({}),
        )
        .await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    exchange(&alice, &bob, &room, 5).await;
    srv.cleanup().await;
}

/// Invites rejected both ways over make_leave/send_leave: a Ganglion user rejects a
/// Synapse user's invite (Ganglion has only the stub room, so it leaves through
/// Synapse), and a Synapse user rejects a Ganglion user's invite (Synapse leaves
/// through us). Each side then shows the rejection as a leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_are_rejected_both_ways() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (srv, _name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let bob = synapse.user("bob").await;
    let alice = srv.user("alice").await;

    let theirs = bob
        .create_room(json!({ "preset": "private_chat", "invite": [alice.user_id] }))
        .await;
    wait_until(|| async {
        alice.sync(None, 0).await["rooms"]["invite"]
            .get(&theirs)
            .is_some()
    })
    .await;
    let left = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&theirs)),
            json!({}),
        )
        .await;
    assert_eq!(left.status, 200, "{}", left.body);
    assert_eq!(membership_in(&bob, &theirs, &alice.user_id).await, "leave");
    assert!(
        alice.sync(None, 0).await["rooms"]["invite"]
            .get(&theirs)
            .is_none(),
        "the invite is gone for alice"
    );

    let ours = alice
        .create_room(json!({ "preset": "private_chat", "invite": [bob.user_id] }))
        .await;
    // Synapse countersigned the invite before our createRoom returned: it has it.
    let left = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&ours)),
            json!({}),
        )
        .await;
    assert_eq!(left.status, 200, "Synapse's reject: {}", left.body);
    assert_eq!(membership_in(&alice, &ours, &bob.user_id).await, "leave");
    srv.cleanup().await;
}

/// Knocks both ways (make_knock, send_knock): a Ganglion user knocks on a Synapse room
/// whose join rule is `knock`, Synapse shows the knock, its admin invites, and the user
/// joins; then a Synapse user knocks on a Ganglion room, Ganglion shows the knock with
/// the stripped state handed back, and an invite lets the Synapse user in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knocks_cross_both_ways() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (srv, name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let bob = synapse.user("bob").await;
    let alice = srv.user("alice").await;
    let knock_rules = json!([{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }]);

    let local = format!("knock{}", rand::random::<u32>());
    let theirs = bob
        .create_room(
            json!({ "room_alias_name": local, "name": "Knock here", "initial_state": knock_rules }),
        )
        .await;
    let knocked = alice
        .post(
            &format!(
                "/_matrix/client/v3/knock/{}",
                enc(&format!("#{local}:{}", synapse.server_name))
            ),
            json!({ "reason": "let me in" }),
        )
        .await;
    assert_eq!(knocked.status, 200, "{}", knocked.body);
    assert_eq!(knocked.body["room_id"], theirs.as_str());
    assert_eq!(membership_in(&bob, &theirs, &alice.user_id).await, "knock");
    let knock = alice.sync(None, 0).await["rooms"]["knock"][&theirs].clone();
    assert!(
        knock["knock_state"]["events"].as_array().is_some_and(|a| a
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Knock here")),
        "the knock shows the room's name: {knock}"
    );
    bob.post(
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&theirs)),
        json!({ "user_id": alice.user_id }),
    )
    .await
    .ok();
    wait_until(|| async {
        alice.sync(None, 0).await["rooms"]["invite"]
            .get(&theirs)
            .is_some()
    })
    .await;
    let joined = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&theirs)),
            json!({}),
        )
        .await;
    assert_eq!(joined.status, 200, "{}", joined.body);

    let local = format!("knock{}", rand::random::<u32>());
    let ours = alice
        .create_room(
            json!({ "room_alias_name": local, "name": "Our door", "initial_state": knock_rules }),
        )
        .await;
    let knocked = bob
        .post(
            &format!(
                "/_matrix/client/v3/knock/{}",
                enc(&format!("#{local}:{name}"))
            ),
            json!({}),
        )
        .await;
    assert_eq!(knocked.status, 200, "Synapse's knock: {}", knocked.body);
    assert_eq!(membership_in(&alice, &ours, &bob.user_id).await, "knock");
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&ours)),
            json!({ "user_id": bob.user_id }),
        )
        .await
        .ok();
    let joined = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&ours)),
            json!({}),
        )
        .await;
    assert_eq!(joined.status, 200, "Synapse's join: {}", joined.body);
    assert_eq!(membership_in(&alice, &ours, &bob.user_id).await, "join");
    srv.cleanup().await;
}

/// Restricted joins both ways: a Synapse user who is in the allowed room joins our
/// restricted room (we vouch with `join_authorised_via_users_server` and countersign),
/// a Synapse user who is not is refused; a Ganglion user joins Synapse's restricted
/// room through its allowed room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_joins_cross_both_ways() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (srv, name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let alice = srv.user("alice").await;
    let bob = synapse.user("bob").await;
    let eve = synapse.user("eve").await;
    let restricted = |allowed: &str| {
        json!({ "preset": "private_chat", "initial_state": [{
            "type": "m.room.join_rules", "state_key": "",
            "content": { "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": allowed }] }
        }] })
    };

    let (lobby, local) = public_room(&alice, "door").await;
    let inner = alice.create_room(restricted(&lobby)).await;
    let via = format!("?via={}", enc(&name));
    let refused = eve
        .post(
            &format!("/_matrix/client/v3/join/{}{via}", enc(&inner)),
            json!({}),
        )
        .await;
    assert_ne!(
        refused.status, 200,
        "eve is in no allowed room: {}",
        refused.body
    );
    let in_lobby = bob
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                enc(&format!("#{local}:{name}"))
            ),
            json!({}),
        )
        .await;
    assert_eq!(in_lobby.status, 200, "{}", in_lobby.body);
    let joined = bob
        .post(
            &format!("/_matrix/client/v3/join/{}{via}", enc(&inner)),
            json!({}),
        )
        .await;
    assert_eq!(
        joined.status, 200,
        "Synapse's restricted join: {}",
        joined.body
    );
    let member = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            enc(&inner),
            enc(&bob.user_id)
        ))
        .await
        .ok();
    assert_eq!(member["membership"], "join");
    assert_eq!(
        member["join_authorised_via_users_server"],
        alice.user_id.as_str()
    );

    let (hall, local) = public_room(&bob, "hall").await;
    let theirs = bob.create_room(restricted(&hall)).await;
    let in_hall = alice
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                enc(&format!("#{local}:{}", synapse.server_name))
            ),
            json!({}),
        )
        .await;
    assert_eq!(in_hall.status, 200, "{}", in_hall.body);
    let joined = alice
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?via={}",
                enc(&theirs),
                enc(&synapse.server_name)
            ),
            json!({}),
        )
        .await;
    assert_eq!(joined.status, 200, "our restricted join: {}", joined.body);
    exchange(&alice, &bob, &inner, 2).await;
    srv.cleanup().await;
}

/// State resolution of a fork: Ganglion is down while a Synapse user sets the topic;
/// once it is back, a Ganglion user sets it too before Synapse's change arrives. Both
/// changes follow the same event, so each server must resolve the two branches, and the
/// algorithm (v2.1 for room version 12: same power level, so the later one wins) must
/// give both servers the same topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_topic_resolves_the_same_on_both_servers() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (mut srv, name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let alice = srv.user("alice").await;
    let local = format!("fork{}", rand::random::<u32>());
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "room_alias_name": local,
            "power_level_content_override": { "state_default": 0 },
        }))
        .await;
    let bob = synapse.user("bob").await;
    join_by_alias(&bob, &local, &name).await;
    exchange(&alice, &bob, &room, 1).await;

    srv.stop();
    let topic_path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
        enc(&room)
    );
    bob.put(&topic_path, json!({ "topic": "bob's" })).await.ok();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    srv.spawn().await;
    alice
        .put(&topic_path, json!({ "topic": "alice's" }))
        .await
        .ok();
    // Both servers have both changes once each has the other's message.
    alice.send_text(&room, "after the fork").await;
    bob.send_text(&room, "me too").await;
    wait_for_bodies(&bob, &room, &["after the fork".to_owned()], "bob").await;
    wait_for_bodies(&alice, &room, &["me too".to_owned()], "alice").await;
    let topic = |c: &Client| {
        let c = c.clone();
        let path = topic_path.clone();
        async move { c.get(&path).await.body["topic"].clone() }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while topic(&alice).await != topic(&bob).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the servers disagree: Ganglion says {}, Synapse says {}",
            topic(&alice).await,
            topic(&bob).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        topic(&alice).await,
        "alice's",
        "the later change wins on both"
    );
    srv.cleanup().await;
}

/// Soft-fail: while Ganglion is down, a Synapse user sends a message; once Ganglion is
/// back, its admin bans that user before the message arrives. The message is allowed
/// by the state before it (the user was joined) but not by current state (banned):
/// Ganglion keeps it out of its users' timelines (and its forward extremities), and
/// the room goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_a_user_banned_meanwhile_is_soft_failed() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (mut srv, name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let (alice, bob, room) = bob_joins_alices_room(&srv, &name, &synapse).await;
    exchange(&alice, &bob, &room, 1).await;

    srv.stop();
    bob.send_text(&room, "sent before the ban").await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    srv.spawn().await;
    let banned = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(banned.status, 200, "{}", banned.body);
    alice.send_text(&room, "after the ban").await;
    wait_until(|| async { srv.log().contains("soft-failed") }).await;
    let seen = bodies(&alice, &room).await;
    assert!(seen.contains(&"after the ban".to_owned()), "{seen:?}");
    assert!(
        !seen.contains(&"sent before the ban".to_owned()),
        "a soft-failed event reached a client"
    );
    srv.cleanup().await;
}

/// A DNS server on loopback that answers one SRV record:
/// `_matrix-fed._tcp.srv.ganglion.test` → `localhost:port`; every other question gets
/// NXDOMAIN. Returns its address.
fn srv_dns(port: u16) -> std::net::SocketAddr {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("dns socket");
    let addr = sock.local_addr().expect("dns address");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let q = &buf[..n];
            if q.len() < 12 {
                continue;
            }
            // The question: labels up to the root, then type and class.
            let mut i = 12;
            let mut labels = Vec::new();
            while i < q.len() && q[i] != 0 {
                let len = q[i] as usize;
                labels.push(
                    String::from_utf8_lossy(&q[i + 1..(i + 1 + len).min(q.len())]).to_lowercase(),
                );
                i += 1 + len;
            }
            let end = (i + 5).min(q.len());
            let qtype = q
                .get(i + 1..i + 3)
                .map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
            let hit = qtype == 33 && labels.join(".") == "_matrix-fed._tcp.srv.ganglion.test";
            let mut out = Vec::new();
            out.extend_from_slice(&q[0..2]);
            out.extend_from_slice(&[0x81, if hit { 0x80 } else { 0x83 }]);
            out.extend_from_slice(&[0, 1, 0, u8::from(hit), 0, 0, 0, 0]);
            out.extend_from_slice(&q[12..end]);
            if hit {
                let target = b"\x09localhost\x00";
                out.extend_from_slice(&[0xc0, 0x0c, 0, 33, 0, 1, 0, 0, 0, 60]);
                out.extend_from_slice(&((6 + target.len()) as u16).to_be_bytes());
                out.extend_from_slice(&[0, 10, 0, 5]);
                out.extend_from_slice(&port.to_be_bytes());
                out.extend_from_slice(target);
            }
            let _ = sock.send_to(&out, from);
        }
    });
    addr
}

/// Server discovery through SRV: a server named `srv.ganglion.test` (no port) listens
/// for federation on a random port that only an SRV record tells (it has no address
/// record, so no `.well-known` either; the record's target is `localhost`). Another server, sending its SRV lookups to
/// a test DNS server, joins a room there by alias, fetches its keys and exchanges
/// messages with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_found_through_srv_federates() {
    let ca = test_ca();
    let fed_port = ganglion_tests::server::free_port();
    let dns = srv_dns(fed_port);
    let srv_named =
        TestServer::start_federating_as(Backend::Sqlite, &ca, "srv.ganglion.test", fed_port, "")
            .await;
    let two_port = ganglion_tests::server::free_port();
    let two = TestServer::start_federating_as(
        Backend::Postgres,
        &ca,
        &format!("localhost:{two_port}"),
        two_port,
        &format!("dns_server = \"{dns}\"\n"),
    )
    .await;
    let carol = srv_named.user("carol").await;
    assert!(
        carol.user_id.ends_with(":srv.ganglion.test"),
        "{}",
        carol.user_id
    );
    let (room, local) = public_room(&carol, "srv").await;
    let dave = two.user("dave").await;
    let joined = dave
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                enc(&format!("#{local}:srv.ganglion.test"))
            ),
            json!({}),
        )
        .await;
    assert_eq!(joined.status, 200, "a join through SRV: {}", joined.body);
    exchange(&carol, &dave, &room, 3).await;
    srv_named.cleanup().await;
    two.cleanup().await;
}

/// A GET signed as `origin` with `key`, to `dest`'s federation listener.
pub(crate) async fn signed_get(
    http: &reqwest::Client,
    key: &ganglion_federation_client::ServerKey,
    origin: &str,
    dest: &str,
    path: &str,
) -> (u16, Value) {
    let auth =
        ganglion_federation_client::xmatrix::sign(&key.pair, origin, dest, "GET", path, None)
            .expect("sign");
    let r = http
        .get(format!("https://{dest}{path}"))
        .header("authorization", auth)
        .send()
        .await
        .expect("answer");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}
