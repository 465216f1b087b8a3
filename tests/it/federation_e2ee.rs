//! End-to-end encryption across servers: `/keys/query` and `/keys/claim` for another
//! server's users go over federation (`/user/keys/query`, `/user/keys/claim`), the
//! inbound endpoints (and `/user/devices`) refuse bad requests with the spec's errors,
//! and device-list changes of remote users reach `/sync` through `m.device_list_update`.

use std::path::Path;

use ganglion_federation_client::ServerKey;
use ganglion_tests::{Backend, Client, TestServer, client::enc};
use serde_json::{Value, json};

use crate::{
    e2ee::{Key, claim_body, claimed_ids, cross_signing_key, device_keys, one_time_keys},
    federation::{
        Synapse, bob_joins_alices_room, https, join_by_alias, public_room, signed_get, test_ca,
        wait_until,
    },
};

/// A server's signing key, read from its directory.
pub(crate) fn key_of(srv: &TestServer) -> ServerKey {
    ServerKey::load_or_generate(&srv.dir.join("signing.key").display().to_string())
        .expect("the server's key")
}

/// A request with a JSON body signed as `origin` (unsigned when `key` is None), to
/// `dest`'s federation listener.
pub(crate) async fn signed_send(
    http: &reqwest::Client,
    key: Option<&ServerKey>,
    (origin, dest): (&str, &str),
    method: reqwest::Method,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let mut req = http
        .request(method.clone(), format!("https://{dest}{path}"))
        .json(body);
    if let Some(key) = key {
        let content = ruma::CanonicalJsonValue::try_from(body.clone()).expect("canonical");
        let auth = ganglion_federation_client::xmatrix::sign(
            &key.pair,
            origin,
            dest,
            method.as_str(),
            path,
            Some(content),
        )
        .expect("sign");
        req = req.header("authorization", auth);
    }
    let r = req.send().await.expect("answer");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// Two federating servers, alice on the first and bob on the second, in bob's room.
pub(crate) async fn alice_and_bob(
    ca: &Path,
) -> (TestServer, String, TestServer, String, Client, Client) {
    let (one, one_name) = TestServer::start_federating(Backend::Postgres, ca).await;
    let (two, two_name) = TestServer::start_federating(Backend::Sqlite, ca).await;
    let bob = two.user("bob").await;
    let (_room, local) = public_room(&bob, "e2e").await;
    let alice = one.user("alice").await;
    join_by_alias(&alice, &local, &two_name).await;
    (one, one_name, two, two_name, alice, bob)
}

/// Alice reads bob's device and cross-signing keys and claims his one-time keys through
/// her server; his server's endpoints refuse unsigned requests and other servers' users;
/// with his server down, her query answers 200 with a `failure` naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_queried_and_claimed_over_federation() {
    let ca = test_ca();
    let (one, one_name, mut two, two_name, alice, bob) = alice_and_bob(&ca).await;
    let bob_key = Key::new(Some(&bob.device_id));
    let uploaded_device = device_keys(&bob, &bob_key);
    let r = bob
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({
                "device_keys": uploaded_device,
                "one_time_keys": one_time_keys(&bob, &bob_key, "b", 2),
            }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (master, self_signing, user_signing) = (Key::new(None), Key::new(None), Key::new(None));
    let r = bob
        .post(
            "/_matrix/client/v3/keys/device_signing/upload",
            json!({
                "master_key": cross_signing_key(&bob.user_id, "master", &master, None),
                "self_signing_key": cross_signing_key(&bob.user_id, "self_signing", &self_signing, Some(&master)),
                "user_signing_key": cross_signing_key(&bob.user_id, "user_signing", &user_signing, Some(&master)),
            }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Query: bob's keys as he uploaded them, his master and self-signing keys, and never
    // his user-signing key.
    let q = alice
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &bob.user_id: [] } }),
        )
        .await
        .ok();
    let got = &q["device_keys"][&bob.user_id][&bob.device_id];
    for field in ["keys", "signatures", "algorithms", "user_id", "device_id"] {
        assert_eq!(got[field], uploaded_device[field], "{field}: {q}");
    }
    assert_eq!(
        q["master_keys"][&bob.user_id]["keys"],
        json!({ format!("ed25519:{}", master.public): master.public }),
        "{q}"
    );
    assert!(q["self_signing_keys"][&bob.user_id].is_object(), "{q}");
    assert!(q["user_signing_keys"].get(&bob.user_id).is_none(), "{q}");
    assert!(
        q["failures"].as_object().is_none_or(|f| f.is_empty()),
        "{q}"
    );

    // Claim: each claim takes a different key, gone from bob's server.
    let first = alice
        .post("/_matrix/client/v3/keys/claim", claim_body(&bob))
        .await
        .ok();
    let second = alice
        .post("/_matrix/client/v3/keys/claim", claim_body(&bob))
        .await
        .ok();
    let (a, b) = (claimed_ids(&first, &bob), claimed_ids(&second, &bob));
    assert_eq!(a.len(), 1, "{first}");
    assert_eq!(b.len(), 1, "{second}");
    assert_ne!(a, b, "two claims, two keys");
    let counts = bob
        .post("/_matrix/client/v3/keys/upload", json!({}))
        .await
        .ok();
    assert_eq!(
        counts["one_time_key_counts"]["signed_curve25519"]
            .as_u64()
            .unwrap_or(0),
        0,
        "both keys are gone on bob's server: {counts}"
    );
    let third = alice
        .post("/_matrix/client/v3/keys/claim", claim_body(&bob))
        .await
        .ok();
    assert!(claimed_ids(&third, &bob).is_empty(), "{third}");

    // The endpoints themselves, called as server one.
    let http = https(&ca);
    let one_key = key_of(&one);
    let names = (one_name.as_str(), two_name.as_str());
    let query = json!({ "device_keys": { &bob.user_id: [] } });
    let path = "/_matrix/federation/v1/user/keys/query";
    let (status, v) = signed_send(&http, None, names, reqwest::Method::POST, path, &query).await;
    assert_eq!(status, 401, "unsigned: {v}");
    let (status, v) = signed_send(
        &http,
        Some(&one_key),
        names,
        reqwest::Method::POST,
        path,
        &query,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["device_keys"][&bob.user_id][&bob.device_id].is_object(),
        "{v}"
    );
    assert!(v.get("user_signing_keys").is_none(), "{v}");
    let (status, v) = signed_send(
        &http,
        Some(&one_key),
        names,
        reqwest::Method::POST,
        "/_matrix/federation/v1/user/keys/claim",
        &json!({ "one_time_keys": { &bob.user_id: { &bob.device_id: "m.unknown" } } }),
    )
    .await;
    assert_eq!(status, 400, "an unknown algorithm: {v}");
    let devices = |user: &str| format!("/_matrix/federation/v1/user/devices/{}", enc(user));
    let (status, v) = signed_get(
        &http,
        &one_key,
        &one_name,
        &two_name,
        &devices(&bob.user_id),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["user_id"], bob.user_id.as_str(), "{v}");
    assert!(v["stream_id"].is_i64(), "{v}");
    assert_eq!(v["devices"][0]["device_id"], bob.device_id.as_str(), "{v}");
    assert_eq!(
        v["devices"][0]["keys"]["keys"], uploaded_device["keys"],
        "{v}"
    );
    assert!(
        v["master_key"].is_object() && v["self_signing_key"].is_object(),
        "{v}"
    );
    assert!(v.get("user_signing_key").is_none(), "{v}");
    let (status, v) = signed_get(
        &http,
        &one_key,
        &one_name,
        &two_name,
        &devices(&alice.user_id),
    )
    .await;
    assert_eq!(status, 400, "a user of another server: {v}");
    assert_eq!(v["errcode"], "M_INVALID_PARAM", "{v}");
    let (status, v) = signed_get(
        &http,
        &one_key,
        &one_name,
        &two_name,
        &devices("not-a-user"),
    )
    .await;
    assert_eq!(status, 400, "not a user id: {v}");

    // Bob's server down: a query of a user there whom we do not follow (no shared
    // room, so no copy of their keys) answers 200 with a failure naming it; bob's keys
    // come from our copy (tests/it/federation_devices.rs).
    let carol = two.user("carol").await;
    two.stop();
    let r = alice
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &carol.user_id: [], &bob.user_id: [] }, "timeout": 3000 }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["failures"][&two_name].is_object(), "{}", r.body);
    assert!(
        r.body["device_keys"][&bob.user_id][&bob.device_id].is_object(),
        "{}",
        r.body
    );
    let r = alice
        .post("/_matrix/client/v3/keys/claim", claim_body(&bob))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["failures"][&two_name].is_object(), "{}", r.body);
    one.cleanup().await;
    two.cleanup().await;
}

/// Whether `user` is in `since`..now's `device_lists.changed` for `c`.
async fn changed_since(c: &Client, since: &str, user: &str) -> bool {
    let s = c.sync(Some(since), 0).await;
    s["device_lists"]["changed"]
        .as_array()
        .is_some_and(|a| a.iter().any(|u| u == user))
}

/// An `m.device_list_update` from bob's server about bob shows bob in alice's
/// `device_lists.changed`; one about a user of another server is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_list_update_edu_reaches_sync() {
    let ca = test_ca();
    let (one, one_name, two, two_name, alice, bob) = alice_and_bob(&ca).await;
    let since = alice.sync(None, 0).await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let http = https(&ca);
    let two_key = key_of(&two);
    let edu = |user: &str| {
        json!({ "edu_type": "m.device_list_update", "content": {
            "user_id": user, "device_id": "NEWDEVICE", "stream_id": 1, "prev_id": [] } })
    };
    let txn = |edus: Vec<Value>| json!({ "origin": two_name, "origin_server_ts": 1, "pdus": [], "edus": edus });
    // About alice, who is not of bob's server: refused silently.
    let (status, v) = signed_send(
        &http,
        Some(&two_key),
        (&two_name, &one_name),
        reqwest::Method::PUT,
        &format!("/_matrix/federation/v1/send/t{}", rand::random::<u32>()),
        &txn(vec![edu(&alice.user_id)]),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(!changed_since(&alice, &since, &alice.user_id).await);
    let (status, v) = signed_send(
        &http,
        Some(&two_key),
        (&two_name, &one_name),
        reqwest::Method::PUT,
        &format!("/_matrix/federation/v1/send/t{}", rand::random::<u32>()),
        &txn(vec![edu(&bob.user_id)]),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    wait_until(|| changed_since(&alice, &since, &bob.user_id)).await;
    one.cleanup().await;
    two.cleanup().await;
}

/// Bob uploads device keys on his server: its sender tells alice's server
/// (`m.device_list_update`), alice's `/sync` shows bob in `device_lists.changed`, and
/// her query then finds the new keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_keys_reach_the_other_server_s_sync() {
    let ca = test_ca();
    let (one, _one_name, two, _two_name, alice, bob) = alice_and_bob(&ca).await;
    let since = alice.sync(None, 0).await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let key = Key::new(Some(&bob.device_id));
    let uploaded = device_keys(&bob, &key);
    let r = bob
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": uploaded }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_until(|| changed_since(&alice, &since, &bob.user_id)).await;
    let q = alice
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &bob.user_id: [] } }),
        )
        .await
        .ok();
    assert_eq!(
        q["device_keys"][&bob.user_id][&bob.device_id]["keys"], uploaded["keys"],
        "{q}"
    );
    one.cleanup().await;
    two.cleanup().await;
}

/// With Synapse: alice (Ganglion) queries and claims the keys of bob (Synapse) through
/// her server; alice's new keys reach Synapse as `m.device_list_update`, bob's `/sync`
/// shows her in `device_lists.changed`, and his query finds her keys (Synapse reads
/// them from our `/user/devices` or `/user/keys/query`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cross_with_synapse() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (srv, name) = TestServer::start_federating(Backend::Sqlite, &ca).await;
    let (alice, bob, _room) = bob_joins_alices_room(&srv, &name, &synapse).await;
    let bob_key = Key::new(Some(&bob.device_id));
    let bob_device = device_keys(&bob, &bob_key);
    let r = bob
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({
                "device_keys": bob_device,
                "one_time_keys": one_time_keys(&bob, &bob_key, "s", 1),
            }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let q = alice
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &bob.user_id: [] } }),
        )
        .await
        .ok();
    assert_eq!(
        q["device_keys"][&bob.user_id][&bob.device_id]["keys"], bob_device["keys"],
        "{q}"
    );
    let claimed = alice
        .post("/_matrix/client/v3/keys/claim", claim_body(&bob))
        .await
        .ok();
    assert_eq!(
        claimed_ids(&claimed, &bob),
        vec!["signed_curve25519:s0".to_owned()],
        "{claimed}"
    );

    let since = bob.sync(None, 0).await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let alice_key = Key::new(Some(&alice.device_id));
    let alice_device = device_keys(&alice, &alice_key);
    let r = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({ "device_keys": alice_device }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_until(|| changed_since(&bob, &since, &alice.user_id)).await;
    let q = bob
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { &alice.user_id: [] } }),
        )
        .await
        .ok();
    assert_eq!(
        q["device_keys"][&alice.user_id][&alice.device_id]["keys"], alice_device["keys"],
        "{q}"
    );
    srv.cleanup().await;
}
