//! To-device messages across servers (Server-Server API, "Send-to-device messaging"):
//! a message for another server's user leaves as an `m.direct_to_device` EDU from the
//! durable outbox, arrives in its `/sync` exactly once (through a stopped receiver and a
//! killed sender), inbound EDUs are checked and deduplicated by `message_id`, and the
//! same holds with Synapse and in the split shape with its processes killed mid-burst.
//! Cross-signing key changes reach Synapse as `m.signing_key_update`.

use std::time::{Duration, Instant};

use ganglion_tests::{Backend, Client, TestServer, client::enc};
use serde_json::{Value, json};

use crate::{
    e2ee::{Key, cross_signing_key},
    federation::{Synapse, bob_joins_alices_room, https, test_ca, wait_until},
    federation_e2ee::{alice_and_bob, key_of, signed_send},
};

/// One `/sync` from `since`, or None when the server does not answer (it is down or
/// restarting) or answers an error.
async fn try_sync(c: &Client, since: Option<&str>, timeout_ms: u64) -> Option<Value> {
    let mut url = format!("{}/_matrix/client/v3/sync?timeout={timeout_ms}", c.base);
    if let Some(s) = since {
        url.push_str(&format!("&since={}", enc(s)));
    }
    let r = c
        .http
        .get(url)
        .bearer_auth(c.token.as_deref()?)
        .timeout(Duration::from_millis(timeout_ms + 10_000))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// A device's to-device messages as its client sees them: each `/sync` goes from the
/// last `next_batch`, which acknowledges everything before it.
struct Inbox {
    client: Client,
    since: Option<String>,
    got: Vec<Value>,
}

impl Inbox {
    async fn new(client: Client) -> Inbox {
        let mut inbox = Inbox {
            client,
            since: None,
            got: Vec::new(),
        };
        while !inbox.poll(0).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        inbox
    }

    /// One `/sync`; false when it failed (nothing acknowledged then).
    async fn poll(&mut self, timeout_ms: u64) -> bool {
        let Some(s) = try_sync(&self.client, self.since.as_deref(), timeout_ms).await else {
            return false;
        };
        self.got.extend(
            s["to_device"]["events"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        self.since = s["next_batch"].as_str().map(str::to_owned);
        true
    }

    /// Polls until `n` messages have come (two minutes at most), then twice more, so
    /// that a message delivered again after its acknowledgement would show.
    async fn until(&mut self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.got.len() < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} to-device messages for {} in 120 s: {:?}",
                self.got.len(),
                self.client.user_id,
                self.got
            );
            if !self.poll(1_000).await {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        for _ in 0..2 {
            while !self.poll(300).await {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// The `content.i` of every message, sorted.
    fn numbers(&self) -> Vec<i64> {
        let mut out: Vec<i64> = self
            .got
            .iter()
            .filter_map(|e| e["content"]["i"].as_i64())
            .collect();
        out.sort_unstable();
        out
    }
}

/// `PUT /sendToDevice/m.test/{txn}` until the server answers 200, the way a client
/// retries (same transaction id) while its server is down or restarting.
async fn send_until_acked(c: &Client, txn: &str, messages: Value) {
    let url = format!("{}/_matrix/client/v3/sendToDevice/m.test/{txn}", c.base);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let answer = c
            .http
            .put(&url)
            .bearer_auth(c.token.as_deref().unwrap_or_default())
            .json(&json!({ "messages": messages }))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => return,
            Ok(r) if r.status().is_client_error() => {
                panic!("sendToDevice refused: {}", r.status())
            }
            _ => {
                assert!(Instant::now() < deadline, "sendToDevice not acknowledged");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Alice (server one) and bob (server two) exchange to-device messages both ways, to a
/// named device and to `*`; a retried transaction id is not sent twice. With bob's
/// server down, alice's messages wait in her server's outbox, through a kill -9 of her
/// server too, and each reaches bob once when his server is back; the outbox is then
/// empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_messages_cross_servers_once() {
    let ca = test_ca();
    let (mut one, _one_name, mut two, _two_name, alice, bob) = alice_and_bob(&ca).await;
    let mut bob_inbox = Inbox::new(bob.clone()).await;
    let mut alice_inbox = Inbox::new(alice.clone()).await;
    let to_bob = |i: i64| json!({ &bob.user_id: { &bob.device_id: { "i": i } } });

    send_until_acked(&alice, "first", to_bob(100)).await;
    // The same transaction again (a client retrying): sent once.
    send_until_acked(&alice, "first", to_bob(100)).await;
    bob_inbox.until(1).await;
    assert_eq!(bob_inbox.got.len(), 1, "{:?}", bob_inbox.got);
    let got = &bob_inbox.got[0];
    assert_eq!(got["sender"], alice.user_id.as_str(), "{got}");
    assert_eq!(got["type"], "m.test", "{got}");
    assert_eq!(got["content"], json!({ "i": 100 }), "{got}");

    send_until_acked(
        &bob,
        "reply",
        json!({ &alice.user_id: { "*": { "i": 200 } } }),
    )
    .await;
    alice_inbox.until(1).await;
    assert_eq!(alice_inbox.numbers(), vec![200], "{:?}", alice_inbox.got);
    assert_eq!(alice_inbox.got[0]["sender"], bob.user_id.as_str());

    // Bob's server down; alice's server killed and restarted before it comes back.
    two.kill9();
    for i in 0..10 {
        send_until_acked(&alice, &format!("down{i}"), to_bob(i)).await;
    }
    one.kill9();
    one.spawn().await;
    two.spawn().await;
    bob_inbox.until(11).await;
    let mut want: Vec<i64> = (0..10).collect();
    want.push(100);
    assert_eq!(bob_inbox.numbers(), want, "each message once");
    wait_until(|| async {
        one.query_strings("SELECT destination FROM device_federation_outbox")
            .await
            .is_empty()
    })
    .await;
    one.cleanup().await;
    two.cleanup().await;
}

/// Inbound `m.direct_to_device` EDUs, signed as bob's server: one is delivered to the
/// named device of alice; the same `message_id` in a later transaction is not delivered
/// again; one whose sender is not of the origin, and one for a user who does not
/// exist, are dropped without failing the transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_to_device_edus_are_checked_and_deduplicated() {
    let ca = test_ca();
    let (one, one_name, two, two_name, alice, bob) = alice_and_bob(&ca).await;
    let mut inbox = Inbox::new(alice.clone()).await;
    let http = https(&ca);
    let two_key = key_of(&two);
    let edu = |sender: &str, target: &str, id: &str| {
        json!({ "edu_type": "m.direct_to_device", "content": {
            "sender": sender, "type": "m.test", "message_id": id,
            "messages": { target: { &alice.device_id: { "id": id } } } } })
    };
    let send = async |edus: Vec<Value>| {
        let txn = json!({ "origin": two_name, "origin_server_ts": 1, "pdus": [], "edus": edus });
        let (status, v) = signed_send(
            &http,
            Some(&two_key),
            (&two_name, &one_name),
            reqwest::Method::PUT,
            &format!("/_matrix/federation/v1/send/t{}", rand::random::<u32>()),
            &txn,
        )
        .await;
        assert_eq!(status, 200, "{v}");
    };
    send(vec![edu(&bob.user_id, &alice.user_id, "m1")]).await;
    send(vec![
        edu(&bob.user_id, &alice.user_id, "m1"),
        edu(&format!("@mallory:{one_name}"), &alice.user_id, "m2"),
        edu(&bob.user_id, &format!("@ghost:{one_name}"), "m3"),
        edu(&bob.user_id, &alice.user_id, "m4"),
    ])
    .await;
    inbox.until(2).await;
    let ids: Vec<&str> = inbox
        .got
        .iter()
        .filter_map(|e| e["content"]["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["m1", "m4"], "{:?}", inbox.got);
    assert!(
        inbox
            .got
            .iter()
            .all(|e| e["sender"] == bob.user_id.as_str()),
        "{:?}",
        inbox.got
    );
    one.cleanup().await;
    two.cleanup().await;
}

/// With Synapse: alice (Ganglion) and bob (Synapse) exchange to-device messages both
/// ways. Bob's server has alice's keys cached (they share a room); when alice uploads
/// cross-signing keys, `m.signing_key_update` tells it, and bob's query shows her new
/// master key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_and_signing_keys_cross_with_synapse() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (srv, name) = TestServer::start_federating(Backend::Sqlite, &ca).await;
    let (alice, bob, _room) = bob_joins_alices_room(&srv, &name, &synapse).await;
    let mut bob_inbox = Inbox::new(bob.clone()).await;
    let mut alice_inbox = Inbox::new(alice.clone()).await;

    send_until_acked(
        &alice,
        "to-synapse",
        json!({ &bob.user_id: { &bob.device_id: { "i": 1 } } }),
    )
    .await;
    bob_inbox.until(1).await;
    assert_eq!(bob_inbox.numbers(), vec![1], "{:?}", bob_inbox.got);
    assert_eq!(bob_inbox.got[0]["sender"], alice.user_id.as_str());
    assert_eq!(bob_inbox.got[0]["type"], "m.test");

    send_until_acked(
        &bob,
        "to-ganglion",
        json!({ &alice.user_id: { "*": { "i": 2 } } }),
    )
    .await;
    alice_inbox.until(1).await;
    assert_eq!(alice_inbox.numbers(), vec![2], "{:?}", alice_inbox.got);
    assert_eq!(alice_inbox.got[0]["sender"], bob.user_id.as_str());

    // Synapse caches the keys of users it shares a room with once it has asked.
    let query = || async {
        bob.post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice.user_id: [] } }),
        )
        .await
        .ok()
    };
    let before = query().await;
    assert!(
        before["master_keys"].get(&alice.user_id).is_none(),
        "{before}"
    );
    let (master, self_signing, user_signing) = (Key::new(None), Key::new(None), Key::new(None));
    let r = alice
        .post(
            "/_matrix/client/v3/keys/device_signing/upload",
            json!({
                "master_key": cross_signing_key(&alice.user_id, "master", &master, None),
                "self_signing_key": cross_signing_key(&alice.user_id, "self_signing", &self_signing, Some(&master)),
                "user_signing_key": cross_signing_key(&alice.user_id, "user_signing", &user_signing, Some(&master)),
            }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let want = json!({ format!("ed25519:{}", master.public): master.public });
    wait_until(|| async { query().await["master_keys"][&alice.user_id]["keys"] == want }).await;
    srv.cleanup().await;
}

/// The split shape (main, two sync workers behind nginx, a federation sender) sends a
/// burst of to-device messages, each to a local device and to a device on another
/// server, while a sync worker, then the other, then main, then the federation sender
/// are killed with -9 and restarted (a new sender takes over). Both receivers, polling
/// throughout, get every acknowledged message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_faults_in_the_split_shape_lose_nothing() {
    const N: i64 = 60;
    let ca = test_ca();
    let (mut one, _one_name) = TestServer::start_federating_split(&ca).await;
    let mut sender = one.worker("ganglion-federation-sender", "fs-1").await;
    let (two, _two_name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let carol = one.user("carol").await;
    let dave = one.user("dave").await;
    let bob = two.user("bob").await;
    let poll = |c: Client| {
        tokio::spawn(async move {
            let mut inbox = Inbox::new(c).await;
            inbox.until(N as usize).await;
            inbox.numbers()
        })
    };
    let (dave_polls, bob_polls) = (poll(dave.clone()), poll(bob.clone()));
    for i in 0..N {
        match i {
            15 => one.restart_sync_worker(0).await,
            25 => one.restart_sync_worker(1).await,
            35 => {
                one.kill9();
                one.spawn().await;
            }
            45 => {
                drop(sender);
                sender = one.worker("ganglion-federation-sender", "fs-2").await;
            }
            _ => {}
        }
        send_until_acked(
            &carol,
            &format!("burst{i}"),
            json!({
                &dave.user_id: { &dave.device_id: { "i": i } },
                &bob.user_id: { &bob.device_id: { "i": i } },
            }),
        )
        .await;
    }
    let want: Vec<i64> = (0..N).collect();
    assert_eq!(
        dave_polls.await.expect("dave's poller"),
        want,
        "dave (local)"
    );
    assert_eq!(bob_polls.await.expect("bob's poller"), want, "bob (remote)");
    drop(sender);
    one.cleanup().await;
    two.cleanup().await;
}
