//! Our copy of other servers' users' device lists: a followed user's keys are answered
//! from it (also while their server is down), kept up to date by `m.device_list_update`
//! (applied when its `prev_id` follows the copy, fetched again from `/user/devices`
//! when an update was missed) and by `m.signing_key_update`.

use ganglion_tests::Client;
use serde_json::{Value, json};

use crate::{
    e2ee::{Key, cross_signing_key, device_keys},
    federation::{https, test_ca, wait_until},
    federation_e2ee::{alice_and_bob, key_of, signed_send},
};

async fn query(alice: &Client, user: &str) -> Value {
    alice
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { user: [] } }),
        )
        .await
        .ok()
}

/// Bob (server two) shares a room with alice (server one). Her first query of his keys
/// is kept: with his server down, she still gets them. Bob's new keys reach the copy
/// (his server's update has no `prev_id`, so hers fetches `/user/devices`), and so do
/// his cross-signing keys (`m.signing_key_update`). With his server down again, an
/// update that follows the copy's position is applied to it; one that does not drops
/// the copy, and her query then reports his server as failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_device_lists_are_kept_and_resynced() {
    let ca = test_ca();
    let (one, one_name, mut two, two_name, alice, bob) = alice_and_bob(&ca).await;
    let upload = |key: &Key| {
        let body = json!({ "device_keys": device_keys(&bob, key) });
        let bob = bob.clone();
        async move {
            let r = bob.post("/_matrix/client/v3/keys/upload", body).await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
    };
    let first = Key::new(Some(&bob.device_id));
    upload(&first).await;
    let keys_of = |q: &Value| q["device_keys"][&bob.user_id][&bob.device_id]["keys"].clone();
    let q = query(&alice, &bob.user_id).await;
    assert_eq!(keys_of(&q), device_keys(&bob, &first)["keys"], "{q}");
    assert_eq!(
        one.query_strings("SELECT user_id FROM remote_device_lists")
            .await,
        vec![bob.user_id.clone()]
    );
    two.kill9();
    let q = query(&alice, &bob.user_id).await;
    assert_eq!(
        keys_of(&q),
        device_keys(&bob, &first)["keys"],
        "from the copy: {q}"
    );
    assert!(
        q["failures"].as_object().is_none_or(|f| f.is_empty()),
        "{q}"
    );

    // New device keys and cross-signing keys reach the copy.
    two.spawn().await;
    let second = Key::new(Some(&bob.device_id));
    upload(&second).await;
    let (master, self_signing) = (Key::new(None), Key::new(None));
    let r = bob
        .post(
            "/_matrix/client/v3/keys/device_signing/upload",
            json!({
                "master_key": cross_signing_key(&bob.user_id, "master", &master, None),
                "self_signing_key": cross_signing_key(&bob.user_id, "self_signing", &self_signing, Some(&master)),
            }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let master_keys = json!({ format!("ed25519:{}", master.public): master.public });
    let copy_is_current = || async {
        let copy = one
            .query_strings("SELECT keys FROM remote_device_lists")
            .await;
        copy.first()
            .and_then(|c| serde_json::from_str::<Value>(c).ok())
            .is_some_and(|c| {
                c["devices"][&bob.device_id]["keys"] == device_keys(&bob, &second)["keys"]
                    && c["master_key"]["keys"] == master_keys
            })
    };
    wait_until(copy_is_current).await;
    two.kill9();
    let q = query(&alice, &bob.user_id).await;
    assert_eq!(keys_of(&q), device_keys(&bob, &second)["keys"], "{q}");
    assert_eq!(q["master_keys"][&bob.user_id]["keys"], master_keys, "{q}");

    // Updates signed as bob's server while it is down.
    let position: i64 = one
        .query_strings("SELECT CAST(stream_id AS TEXT) FROM remote_device_lists")
        .await
        .first()
        .and_then(|p| p.parse().ok())
        .expect("the copy's position");
    assert!(position > 0, "a copy from /user/devices has a position");
    let http = https(&ca);
    let two_key = key_of(&two);
    let send = async |edu: Value| {
        let txn = json!({ "origin": two_name, "origin_server_ts": 1, "pdus": [], "edus": [edu] });
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
    let mut laptop = Client::new(&bob.base);
    laptop.user_id = bob.user_id.clone();
    laptop.device_id = "LAPTOP".into();
    let laptop_key = Key::new(Some("LAPTOP"));
    let laptop_keys = device_keys(&laptop, &laptop_key);
    send(json!({ "edu_type": "m.device_list_update", "content": {
        "user_id": bob.user_id, "device_id": "LAPTOP", "stream_id": position + 1,
        "prev_id": [position], "keys": laptop_keys } }))
    .await;
    let q = query(&alice, &bob.user_id).await;
    assert_eq!(
        q["device_keys"][&bob.user_id]["LAPTOP"]["keys"], laptop_keys["keys"],
        "applied to the copy: {q}"
    );
    assert_eq!(keys_of(&q), device_keys(&bob, &second)["keys"], "{q}");
    send(json!({ "edu_type": "m.device_list_update", "content": {
        "user_id": bob.user_id, "device_id": "LAPTOP", "stream_id": position + 5,
        "prev_id": [position + 4], "deleted": true } }))
    .await;
    let q = query(&alice, &bob.user_id).await;
    assert!(
        q["failures"].get(&two_name).is_some(),
        "a missed update drops the copy; the origin is down: {q}"
    );
    assert!(
        one.query_strings("SELECT user_id FROM remote_device_lists")
            .await
            .is_empty()
    );
    one.cleanup().await;
    two.cleanup().await;
}
