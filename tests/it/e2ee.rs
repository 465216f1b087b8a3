//! End-to-end encryption on the server side: device keys, one-time and fallback keys,
//! cross-signing, signatures, send-to-device and device lists in /sync, with keys signed
//! for real (ed25519) so the server's signature checks are exercised.

use std::collections::{BTreeMap, BTreeSet};

use ganglion_tests::{Backend, Client, TestServer};
use ruma::{
    CanonicalJsonValue,
    serde::Base64,
    signatures::{Ed25519KeyPair, sign_json},
};
use serde_json::{Value, json};

use crate::{all3, both};

/// An ed25519 key pair and its public key in unpadded base64.
pub(crate) struct Key {
    pair: Ed25519KeyPair,
    pub(crate) public: String,
}

impl Key {
    /// A fresh key whose key name (the part after `ed25519:`) is `name`, or its own
    /// public key when `name` is `None` (as cross-signing keys are named).
    pub(crate) fn new(name: Option<&str>) -> Key {
        let der = Ed25519KeyPair::generate();
        let probe = Ed25519KeyPair::from_der(&der, "probe".into()).expect("parse");
        let public =
            Base64::<ruma::serde::base64::Standard>::new(probe.public_key().to_vec()).encode();
        let version = name.map_or_else(|| public.clone(), str::to_owned);
        Key {
            pair: Ed25519KeyPair::from_der(&der, version).expect("parse"),
            public,
        }
    }

    /// Signs `object` in place as `signer`.
    pub(crate) fn sign(&self, signer: &str, object: &mut Value) {
        let CanonicalJsonValue::Object(mut canonical) =
            CanonicalJsonValue::try_from(object.clone()).expect("canonical")
        else {
            panic!("not an object");
        };
        sign_json(signer, &self.pair, &mut canonical).expect("sign");
        *object = serde_json::to_value(canonical).expect("json");
    }
}

/// `text` as unpadded base64: what clients put in a key's `key` field.
fn b64(text: &str) -> String {
    Base64::<ruma::serde::base64::Standard>::new(text.as_bytes().to_vec()).encode()
}

/// Device keys for `c`'s device, signed by the device's own ed25519 key.
pub(crate) fn device_keys(c: &Client, key: &Key) -> Value {
    let mut keys = json!({
        "user_id": c.user_id,
        "device_id": c.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{}", c.device_id): format!("curve-{}", c.device_id),
            format!("ed25519:{}", c.device_id): key.public,
        },
    });
    key.sign(&c.user_id, &mut keys);
    keys
}

/// `n` signed one-time keys named `{prefix}{i}`.
pub(crate) fn one_time_keys(c: &Client, key: &Key, prefix: &str, n: usize) -> Value {
    let mut out = serde_json::Map::new();
    for i in 0..n {
        let mut k = json!({ "key": b64(&format!("otk-{prefix}{i}")) });
        key.sign(&c.user_id, &mut k);
        out.insert(format!("signed_curve25519:{prefix}{i}"), k);
    }
    Value::Object(out)
}

/// A cross-signing key of `usage` for `user`, signed by `signer` if given.
pub(crate) fn cross_signing_key(user: &str, usage: &str, key: &Key, signer: Option<&Key>) -> Value {
    let mut k = json!({
        "user_id": user,
        "usage": [usage],
        "keys": { format!("ed25519:{}", key.public): key.public },
    });
    if let Some(s) = signer {
        s.sign(user, &mut k);
    }
    k
}

pub(crate) fn claim_body(c: &Client) -> Value {
    json!({ "one_time_keys": { &c.user_id: { &c.device_id: "signed_curve25519" } } })
}

/// The key ids claimed for `c`'s device in a claim answer.
pub(crate) fn claimed_ids(answer: &Value, c: &Client) -> Vec<String> {
    answer["one_time_keys"][&c.user_id][&c.device_id]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

async fn keys_upload_query_and_claim(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let key = Key::new(Some(&alice.device_id));
    let keys = device_keys(&alice, &key);
    let mut fallback = json!({ "key": b64("fallback-key"), "fallback": true });
    key.sign(&alice.user_id, &mut fallback);
    let up = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({
                "device_keys": keys,
                "one_time_keys": one_time_keys(&alice, &key, "A", 3),
                "fallback_keys": { "signed_curve25519:F1": fallback },
            }),
        )
        .await
        .ok();
    assert_eq!(up["one_time_key_counts"]["signed_curve25519"], json!(3));

    // Uploading the same keys again is harmless; the counts stay.
    let again = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": keys, "one_time_keys": one_time_keys(&alice, &key, "A", 3) }),
        )
        .await
        .ok();
    assert_eq!(again["one_time_key_counts"]["signed_curve25519"], json!(3));

    // Bob sees alice's device keys as uploaded, with the device's display name.
    alice
        .put(
            &format!("/_matrix/client/v3/devices/{}", alice.device_id),
            json!({ "display_name": "Alice's phone" }),
        )
        .await
        .ok();
    let q = bob
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice.user_id: [] } }),
        )
        .await
        .ok();
    let got = &q["device_keys"][&alice.user_id][&alice.device_id];
    for field in ["user_id", "device_id", "algorithms", "keys", "signatures"] {
        assert_eq!(got[field], keys[field], "{field}: {q}");
    }
    assert_eq!(
        got["unsigned"]["device_display_name"],
        json!("Alice's phone")
    );
    // A device asked for by id that has no keys is simply absent; so is a stranger.
    let q = bob
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice.user_id: ["NOPE"], "@nobody:localhost": [] } }),
        )
        .await
        .ok();
    assert!(
        q["device_keys"][&alice.user_id]
            .get(&alice.device_id)
            .is_none(),
        "{q}"
    );

    // Alice's /sync reports her counts and the unused fallback key.
    let s = alice.sync(None, 0).await;
    assert_eq!(
        s["device_one_time_keys_count"]["signed_curve25519"],
        json!(3)
    );
    assert_eq!(
        s["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );

    // Three claims take the three one-time keys, each once; then the fallback key.
    let mut ids = BTreeSet::new();
    for _ in 0..3 {
        let c = bob
            .post("/_matrix/client/v3/keys/claim", claim_body(&alice))
            .await
            .ok();
        let got = claimed_ids(&c, &alice);
        assert_eq!(got.len(), 1, "{c}");
        assert!(ids.insert(got[0].clone()), "claimed twice: {c}");
    }
    assert_eq!(
        ids,
        [
            "signed_curve25519:A0",
            "signed_curve25519:A1",
            "signed_curve25519:A2"
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
    for _ in 0..2 {
        let c = bob
            .post("/_matrix/client/v3/keys/claim", claim_body(&alice))
            .await
            .ok();
        assert_eq!(claimed_ids(&c, &alice), ["signed_curve25519:F1"], "{c}");
        assert_eq!(
            c["one_time_keys"][&alice.user_id][&alice.device_id]["signed_curve25519:F1"]["key"],
            json!(b64("fallback-key"))
        );
    }
    let s = alice.sync(None, 0).await;
    assert_eq!(s["device_one_time_keys_count"], json!({}), "{s}");
    assert_eq!(s["device_unused_fallback_key_types"], json!([]));

    // A device with neither gives nothing (no failure: it is ours).
    let c = bob
        .post("/_matrix/client/v3/keys/claim", claim_body(&bob))
        .await
        .ok();
    assert!(claimed_ids(&c, &bob).is_empty(), "{c}");
    srv.cleanup().await;
}
all3!(keys_upload_query_and_claim);

/// Concurrent claims of one device's keys: every one-time key goes to exactly one
/// claimer, and the claimers who find none left get the fallback key.
async fn concurrent_claims_take_each_key_once(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let key = Key::new(Some(&alice.device_id));
    let mut fallback = json!({ "key": b64("fb") });
    key.sign(&alice.user_id, &mut fallback);
    alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({
                "device_keys": device_keys(&alice, &key),
                "one_time_keys": one_time_keys(&alice, &key, "K", 20),
                "fallback_keys": { "signed_curve25519:FB": fallback },
            }),
        )
        .await
        .ok();
    let mut claimers = Vec::new();
    for i in 0..6 {
        claimers.push(srv.user(&format!("claimer{i}")).await);
    }
    let mut tasks = Vec::new();
    for c in &claimers {
        for _ in 0..5 {
            let (c, body) = (c.clone(), claim_body(&alice));
            tasks.push(tokio::spawn(async move {
                c.post("/_matrix/client/v3/keys/claim", body).await.ok()
            }));
        }
    }
    let mut otks: Vec<String> = Vec::new();
    let mut fallbacks = 0;
    for t in tasks {
        let answer = t.await.expect("task");
        let ids = claimed_ids(&answer, &alice);
        assert_eq!(ids.len(), 1, "{answer}");
        if ids[0] == "signed_curve25519:FB" {
            fallbacks += 1;
        } else {
            otks.push(ids[0].clone());
        }
    }
    let distinct: BTreeSet<&String> = otks.iter().collect();
    assert_eq!((otks.len(), distinct.len(), fallbacks), (20, 20, 10));
    srv.cleanup().await;
}
both!(concurrent_claims_take_each_key_once);

/// Concurrent claims of many devices each, overlapping: a request claims all its devices
/// in a few statements, and two that race for the same keys neither deadlock nor hand
/// a key out twice.
async fn concurrent_claims_of_many_devices(b: Backend) {
    let srv = TestServer::start(b).await;
    let mut owners = Vec::new();
    for i in 0..8 {
        let owner = srv.user(&format!("owner{i}")).await;
        let key = Key::new(Some(&owner.device_id));
        let mut fallback = json!({ "key": b64(&format!("fb{i}")) });
        key.sign(&owner.user_id, &mut fallback);
        owner
            .post(
                "/_matrix/client/v3/keys/upload",
                json!({
                    "device_keys": device_keys(&owner, &key),
                    "one_time_keys": one_time_keys(&owner, &key, "K", 10),
                    "fallback_keys": { "signed_curve25519:FB": fallback },
                }),
            )
            .await
            .ok();
        owners.push(owner);
    }
    let mut wanted = serde_json::Map::new();
    for o in &owners {
        wanted.insert(
            o.user_id.clone(),
            json!({ &o.device_id: "signed_curve25519" }),
        );
    }
    let body = json!({ "one_time_keys": wanted });
    let claimer = srv.user("claimer").await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (c, body) = (claimer.clone(), body.clone());
            tokio::spawn(async move { c.post("/_matrix/client/v3/keys/claim", body).await.ok() })
        })
        .collect();
    let mut otks: Vec<(String, String)> = Vec::new();
    let mut fallbacks = 0;
    for t in tasks {
        let answer = t.await.expect("task");
        for o in &owners {
            let ids = claimed_ids(&answer, o);
            assert_eq!(ids.len(), 1, "{answer}");
            if ids[0] == "signed_curve25519:FB" {
                fallbacks += 1;
            } else {
                otks.push((o.user_id.clone(), ids[0].clone()));
            }
        }
    }
    let distinct: BTreeSet<&(String, String)> = otks.iter().collect();
    assert_eq!((otks.len(), distinct.len(), fallbacks), (80, 80, 80));
    srv.cleanup().await;
}
both!(concurrent_claims_of_many_devices);

/// Bad input gets the spec's error and nothing is stored.
async fn bad_key_input_is_refused(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let key = Key::new(Some(&alice.device_id));
    let upload = |body: Value| {
        let alice = alice.clone();
        async move { alice.post("/_matrix/client/v3/keys/upload", body).await }
    };
    // Device keys of another user, or of another device.
    let mut other_user = device_keys(&alice, &key);
    other_user["user_id"] = json!(bob.user_id);
    upload(json!({ "device_keys": other_user }))
        .await
        .expect_err(400, "M_INVALID_PARAM");
    let mut other_device = device_keys(&alice, &key);
    other_device["device_id"] = json!("SOMEONEELSE");
    upload(json!({ "device_keys": other_device }))
        .await
        .expect_err(400, "M_INVALID_PARAM");
    // Device keys that are not an object, and a key id without an algorithm.
    upload(json!({ "device_keys": "keys" }))
        .await
        .expect_err(400, "M_BAD_JSON");
    upload(json!({ "one_time_keys": { "no-colon": { "key": "x" } } }))
        .await
        .expect_err(400, "M_BAD_JSON");

    // A one-time key re-uploaded with other content refuses the whole upload.
    upload(json!({ "one_time_keys": one_time_keys(&alice, &key, "X", 2) }))
        .await
        .ok();
    let mut changed = one_time_keys(&alice, &key, "X", 3);
    changed["signed_curve25519:X1"]["key"] = json!(b64("something else"));
    upload(json!({ "one_time_keys": changed }))
        .await
        .expect_err(400, "M_UNKNOWN");
    let counts = upload(json!({})).await.ok();
    assert_eq!(
        counts["one_time_key_counts"]["signed_curve25519"],
        json!(2),
        "nothing of the refused upload is stored: {counts}"
    );

    // An algorithm that is not a one-time key algorithm.
    bob.post(
        "/_matrix/client/v3/keys/claim",
        json!({ "one_time_keys": { &alice.user_id: { &alice.device_id: "m.megolm.v1.aes-sha2" } } }),
    )
    .await
    .expect_err(400, "M_INVALID_PARAM");
    // Not sync tokens.
    alice
        .get("/_matrix/client/v3/keys/changes?from=abc&to=def")
        .await
        .expect_err(400, "M_INVALID_PARAM");

    // A to-device message to a user who does not exist is dropped, not an error; an
    // oversized body is refused.
    alice
        .put(
            "/_matrix/client/v3/sendToDevice/m.test/t1",
            json!({ "messages": { "@ghost:localhost": { "*": { "a": 1 } } } }),
        )
        .await
        .ok();
    let big = "x".repeat(2 * 1024 * 1024);
    alice
        .put(
            "/_matrix/client/v3/sendToDevice/m.test/t2",
            json!({ "messages": { &bob.user_id: { "*": { "big": big } } } }),
        )
        .await
        .expect_err(413, "M_TOO_LARGE");
    let s = bob.sync(None, 0).await;
    assert_eq!(s["to_device"]["events"], json!([]), "{s}");
    srv.cleanup().await;
}
both!(bad_key_input_is_refused);

/// To-device messages: per device and `*`, each delivered once, deleted once
/// acknowledged, a retried transaction not sent twice, and more than one page in order.
async fn to_device_messages_arrive_once(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let bob2 = srv.client().login(&bob.user_id, "password-123").await;
    let s_bob = bob.sync(None, 0).await;
    let s_bob2 = bob2.sync(None, 0).await;
    let send = |txn: &str, body: Value| {
        let (alice, txn) = (alice.clone(), txn.to_owned());
        async move {
            alice
                .put(
                    &format!("/_matrix/client/v3/sendToDevice/m.test/{txn}"),
                    body,
                )
                .await
                .ok()
        }
    };
    send(
        "one",
        json!({ "messages": { &bob.user_id: { &bob.device_id: { "n": 1 } } } }),
    )
    .await;
    send(
        "all",
        json!({ "messages": { &bob.user_id: { "*": { "n": 2 } } } }),
    )
    .await;
    // A retry of the same transaction is not sent again.
    send(
        "all",
        json!({ "messages": { &bob.user_id: { "*": { "n": 2 } } } }),
    )
    .await;

    let events = |s: &Value| -> Vec<Value> {
        s["to_device"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let s1 = bob.sync(s_bob["next_batch"].as_str(), 0).await;
    let ns = |s: &Value| -> Vec<i64> {
        events(s)
            .iter()
            .map(|e| e["content"]["n"].as_i64().unwrap_or(-1))
            .collect()
    };
    assert_eq!(ns(&s1), [1, 2], "{s1}");
    for e in events(&s1) {
        assert_eq!(e["sender"], json!(alice.user_id));
        assert_eq!(e["type"], json!("m.test"));
    }
    let s2 = bob2.sync(s_bob2["next_batch"].as_str(), 0).await;
    assert_eq!(ns(&s2), [2], "{s2}");
    // Acknowledged with the next since: gone.
    let s1b = bob.sync(s1["next_batch"].as_str(), 0).await;
    assert!(events(&s1b).is_empty(), "{s1b}");
    // Not acknowledged (the same since again): delivered again.
    let s2b = bob2.sync(s_bob2["next_batch"].as_str(), 0).await;
    assert_eq!(ns(&s2b), [2], "{s2b}");

    // 150 messages in 150 requests: two pages, in order, each once.
    for i in 0..150 {
        send(
            &format!("m{i}"),
            json!({ "messages": { &bob.user_id: { &bob.device_id: { "n": 100 + i } } } }),
        )
        .await;
    }
    let mut since = s1b["next_batch"].as_str().expect("next_batch").to_owned();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let s = bob.sync(Some(&since), 0).await;
        seen.extend(ns(&s));
        since = s["next_batch"].as_str().expect("next_batch").to_owned();
    }
    assert_eq!(seen, (100..250).collect::<Vec<_>>());

    // A long-poll wakes for a to-device message.
    let (bob_c, since_c) = (bob.clone(), since.clone());
    let poll = tokio::spawn(async move { bob_c.sync(Some(&since_c), 20_000).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let t = std::time::Instant::now();
    send(
        "wake",
        json!({ "messages": { &bob.user_id: { &bob.device_id: { "n": 999 } } } }),
    )
    .await;
    let s = poll.await.expect("poll");
    assert_eq!(ns(&s), [999]);
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
    srv.cleanup().await;
}
all3!(to_device_messages_arrive_once);

/// Messages delivered and deleted, then the server killed: the stream does not restart
/// below the positions clients hold, so the next message is not lost.
async fn to_device_positions_survive_a_restart(b: Backend) {
    let mut srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let s0 = bob.sync(None, 0).await;
    let send = |txn: &str, n: i64| {
        let (alice, txn, bob) = (alice.clone(), txn.to_owned(), bob.clone());
        async move {
            alice
                .put(
                    &format!("/_matrix/client/v3/sendToDevice/m.test/{txn}"),
                    json!({ "messages": { &bob.user_id: { &bob.device_id: { "n": n } } } }),
                )
                .await
                .ok()
        }
    };
    for i in 0..3 {
        send(&format!("a{i}"), i).await;
    }
    let s1 = bob.sync(s0["next_batch"].as_str(), 0).await;
    assert_eq!(s1["to_device"]["events"].as_array().map(Vec::len), Some(3));
    // Acknowledge (the rows are deleted), then kill.
    let s2 = bob.sync(s1["next_batch"].as_str(), 0).await;
    srv.kill9();
    srv.spawn().await;
    send("after", 42).await;
    let s3 = bob.sync(s2["next_batch"].as_str(), 0).await;
    let got: Vec<&Value> = s3["to_device"]["events"]
        .as_array()
        .map(|a| a.iter().map(|e| &e["content"]["n"]).collect())
        .unwrap_or_default();
    assert_eq!(got, [&json!(42)], "{s3}");
    srv.cleanup().await;
}
both!(to_device_positions_survive_a_restart);

/// `device_lists` in /sync and `/keys/changes`: new keys of someone in a shared room,
/// someone joining, someone leaving; long-polls wake for them.
async fn device_lists_follow_keys_and_membership(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let carol = srv.user("carol").await;
    let stranger = srv.user("stranger").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let s0 = bob.sync(None, 0).await;
    let t0 = s0["next_batch"].as_str().expect("next_batch").to_owned();
    let changed = |s: &Value| -> Vec<String> {
        s["device_lists"]["changed"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let left = |s: &Value| -> Vec<String> {
        s["device_lists"]["left"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };

    // Alice uploads device keys while bob long-polls: he wakes and sees her change; a
    // stranger's upload is not reported to him.
    let (bob_c, t0_c) = (bob.clone(), t0.clone());
    let poll = tokio::spawn(async move { bob_c.sync(Some(&t0_c), 20_000).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let skey = Key::new(Some(&stranger.device_id));
    stranger
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": device_keys(&stranger, &skey) }),
        )
        .await
        .ok();
    let akey = Key::new(Some(&alice.device_id));
    alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": device_keys(&alice, &akey) }),
        )
        .await
        .ok();
    let s1 = poll.await.expect("poll");
    let mut all_changed = changed(&s1);
    let mut t1 = s1["next_batch"].as_str().expect("next_batch").to_owned();
    // The stranger's upload may have woken the poll first: sync until alice shows.
    for _ in 0..3 {
        if all_changed.contains(&alice.user_id) {
            break;
        }
        let s = bob.sync(Some(&t1), 2_000).await;
        all_changed.extend(changed(&s));
        t1 = s["next_batch"].as_str().expect("next_batch").to_owned();
    }
    assert!(all_changed.contains(&alice.user_id), "{all_changed:?}");
    assert!(!all_changed.contains(&stranger.user_id), "{all_changed:?}");

    // Carol joins: bob sees her as changed; then she leaves: left.
    carol.join(&room).await;
    let s2 = bob.sync(Some(&t1), 0).await;
    assert!(changed(&s2).contains(&carol.user_id), "{s2}");
    let t2 = s2["next_batch"].as_str().expect("next_batch").to_owned();
    carol
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/leave",
                ganglion_tests::client::enc(&room)
            ),
            json!({}),
        )
        .await
        .ok();
    let s3 = bob.sync(Some(&t2), 0).await;
    assert!(left(&s3).contains(&carol.user_id), "{s3}");
    assert!(!changed(&s3).contains(&carol.user_id), "{s3}");
    let t3 = s3["next_batch"].as_str().expect("next_batch").to_owned();

    // A device deleted (logout) is a change too.
    let alice2 = srv.client().login(&alice.user_id, "password-123").await;
    alice2
        .post("/_matrix/client/v3/logout", json!({}))
        .await
        .ok();
    let s4 = bob.sync(Some(&t3), 0).await;
    assert!(changed(&s4).contains(&alice.user_id), "{s4}");

    // /keys/changes over the whole range says the same.
    let t4 = s4["next_batch"].as_str().expect("next_batch");
    let kc = bob
        .get(&format!(
            "/_matrix/client/v3/keys/changes?from={t0}&to={t4}"
        ))
        .await
        .ok();
    let kc_changed: BTreeSet<&str> = kc["changed"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(kc_changed.contains(alice.user_id.as_str()), "{kc}");
    assert!(!kc_changed.contains(stranger.user_id.as_str()), "{kc}");
    assert_eq!(kc["left"], json!([carol.user_id]), "{kc}");
    srv.cleanup().await;
}
all3!(device_lists_follow_keys_and_membership);

/// Cross-signing keys: the first upload needs no auth, a replacement does; keys not
/// signed by the master key are refused; signatures are checked, and a user-signing
/// signature is shown only to the user who made it.
async fn cross_signing_and_signatures(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let (a_dev, a_master, a_self, a_user) = (
        Key::new(Some(&alice.device_id)),
        Key::new(None),
        Key::new(None),
        Key::new(None),
    );
    alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": device_keys(&alice, &a_dev) }),
        )
        .await
        .ok();
    let upload_signing = |c: &Client, body: Value| {
        let c = c.clone();
        async move {
            c.post("/_matrix/client/v3/keys/device_signing/upload", body)
                .await
        }
    };
    // A self-signing key not signed by the master key.
    upload_signing(
        &alice,
        json!({
            "master_key": cross_signing_key(&alice.user_id, "master", &a_master, None),
            "self_signing_key": cross_signing_key(&alice.user_id, "self_signing", &a_self, Some(&a_user)),
        }),
    )
    .await
    .expect_err(400, "M_INVALID_SIGNATURE");
    // A key of another user.
    upload_signing(
        &alice,
        json!({ "master_key": cross_signing_key(&bob.user_id, "master", &a_master, None) }),
    )
    .await
    .expect_err(400, "M_INVALID_PARAM");
    // The first real upload: no auth needed.
    let a_keys = json!({
        "master_key": cross_signing_key(&alice.user_id, "master", &a_master, None),
        "self_signing_key": cross_signing_key(&alice.user_id, "self_signing", &a_self, Some(&a_master)),
        "user_signing_key": cross_signing_key(&alice.user_id, "user_signing", &a_user, Some(&a_master)),
    });
    upload_signing(&alice, a_keys.clone()).await.ok();
    // The same keys again: still no auth.
    upload_signing(&alice, a_keys.clone()).await.ok();
    // A new master key: auth needed, and the password completes it.
    let new_master = Key::new(None);
    let replace =
        json!({ "master_key": cross_signing_key(&alice.user_id, "master", &new_master, None) });
    let challenge = upload_signing(&alice, replace.clone()).await;
    assert_eq!(challenge.status, 401, "{}", challenge.body);
    assert!(challenge.body["flows"].is_array(), "{}", challenge.body);
    // Leave the master as it was: the rest of the test signs with it.
    drop(replace);

    // Bob sees alice's master and self-signing keys, not her user-signing key.
    let q = bob
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice.user_id: [] } }),
        )
        .await
        .ok();
    assert_eq!(
        q["master_keys"][&alice.user_id]["keys"],
        a_keys["master_key"]["keys"]
    );
    assert_eq!(
        q["self_signing_keys"][&alice.user_id]["keys"],
        a_keys["self_signing_key"]["keys"]
    );
    assert!(q["user_signing_keys"].get(&alice.user_id).is_none(), "{q}");
    let q = alice
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice.user_id: [] } }),
        )
        .await
        .ok();
    assert_eq!(
        q["user_signing_keys"][&alice.user_id]["keys"],
        a_keys["user_signing_key"]["keys"]
    );

    // Alice signs her device with her self-signing key: everyone sees the signature.
    let mut signed_device = device_keys(&alice, &a_dev);
    a_self.sign(&alice.user_id, &mut signed_device);
    let mut forged = device_keys(&alice, &a_dev);
    forged["signatures"][&alice.user_id][format!("ed25519:{}", a_self.public)] =
        json!("bm90IGEgc2lnbmF0dXJl");
    let up = alice
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({ &alice.user_id: { &alice.device_id: forged } }),
        )
        .await
        .ok();
    assert_eq!(
        up["failures"][&alice.user_id][&alice.device_id]["errcode"],
        json!("M_INVALID_SIGNATURE"),
        "{up}"
    );
    let up = alice
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({ &alice.user_id: { &alice.device_id: signed_device } }),
        )
        .await
        .ok();
    assert_eq!(up["failures"], json!({}), "{up}");
    let q = bob
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice.user_id: [] } }),
        )
        .await
        .ok();
    let sigs = &q["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id];
    assert!(
        sigs.get(format!("ed25519:{}", a_self.public)).is_some(),
        "{q}"
    );

    // Bob has cross-signing keys too; alice signs his master key with her user-signing
    // key. Alice sees that signature, bob does not.
    let (b_master, b_self) = (Key::new(None), Key::new(None));
    let b_master_key = cross_signing_key(&bob.user_id, "master", &b_master, None);
    upload_signing(
        &bob,
        json!({
            "master_key": b_master_key,
            "self_signing_key": cross_signing_key(&bob.user_id, "self_signing", &b_self, Some(&b_master)),
        }),
    )
    .await
    .ok();
    let mut signed_master = b_master_key.clone();
    a_user.sign(&alice.user_id, &mut signed_master);
    let up = alice
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({ &bob.user_id: { &b_master.public: signed_master } }),
        )
        .await
        .ok();
    assert_eq!(up["failures"], json!({}), "{up}");
    let usk_id = format!("ed25519:{}", a_user.public);
    let query_bob = |c: &Client| {
        let (c, bob_id) = (c.clone(), bob.user_id.clone());
        async move {
            c.post(
                "/_matrix/client/v3/keys/query",
                json!({ "device_keys": { &bob_id: [] } }),
            )
            .await
            .ok()
        }
    };
    let by_alice = query_bob(&alice).await;
    assert!(
        by_alice["master_keys"][&bob.user_id]["signatures"][&alice.user_id]
            .get(&usk_id)
            .is_some(),
        "{by_alice}"
    );
    let by_bob = query_bob(&bob).await;
    assert!(
        by_bob["master_keys"][&bob.user_id]["signatures"]
            .get(&alice.user_id)
            .is_none(),
        "{by_bob}"
    );
    // An unknown key id is a failure, not an error.
    let up = alice
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({ &alice.user_id: { "NOTADEVICE": { "user_id": alice.user_id } } }),
        )
        .await
        .ok();
    assert_eq!(
        up["failures"][&alice.user_id]["NOTADEVICE"]["errcode"],
        json!("M_NOT_FOUND"),
        "{up}"
    );
    srv.cleanup().await;
}
both!(cross_signing_and_signatures);

/// Keys of a deleted device go with it.
async fn deleted_devices_lose_their_keys(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let alice2 = srv.client().login(&alice.user_id, "password-123").await;
    let key = Key::new(Some(&alice2.device_id));
    alice2
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({
                "device_keys": device_keys(&alice2, &key),
                "one_time_keys": one_time_keys(&alice2, &key, "D", 2),
            }),
        )
        .await
        .ok();
    let devices = |q: &Value| -> BTreeMap<String, Value> {
        q["device_keys"][&alice.user_id]
            .as_object()
            .map(|m| m.clone().into_iter().collect())
            .unwrap_or_default()
    };
    let query = json!({ "device_keys": { &alice.user_id: [] } });
    let q = bob
        .post("/_matrix/client/v3/keys/query", query.clone())
        .await
        .ok();
    assert!(devices(&q).contains_key(&alice2.device_id), "{q}");
    alice2
        .post("/_matrix/client/v3/logout", json!({}))
        .await
        .ok();
    let q = bob.post("/_matrix/client/v3/keys/query", query).await.ok();
    assert!(devices(&q).is_empty(), "{q}");
    let c = bob
        .post("/_matrix/client/v3/keys/claim", claim_body(&alice2))
        .await
        .ok();
    assert!(claimed_ids(&c, &alice2).is_empty(), "{c}");
    srv.cleanup().await;
}
both!(deleted_devices_lose_their_keys);
