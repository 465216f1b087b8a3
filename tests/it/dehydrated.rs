//! Dehydrated devices (MSC3814) over HTTP: upload with keys, found by other users'
//! `/keys/query` and `/keys/claim`, to-device messages kept for it and read in batches
//! without being acknowledged, replaced whole, deleted; and the errors.

use ganglion_tests::{Backend, Client, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    all3, both,
    e2ee::{Key, device_keys, one_time_keys},
};

const PATH: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";

fn events_path(device_id: &str) -> String {
    format!("{PATH}/{device_id}/events")
}

/// `owner` as seen from a device named `device_id` (for signing that device's keys).
fn as_device(owner: &Client, device_id: &str) -> Client {
    let mut c = owner.clone();
    c.device_id = device_id.to_owned();
    c
}

/// A `PUT /dehydrated_device` body for `device_id`, with keys signed by its own key.
fn upload(owner: &Client, device_id: &str, pickle: &str) -> Value {
    let dev = as_device(owner, device_id);
    let key = Key::new(Some(device_id));
    json!({
        "device_id": device_id,
        "device_data": { "algorithm": "org.matrix.msc3814.v1.olm", "device_pickle": pickle },
        "initial_device_display_name": "Dehydrated device",
        "device_keys": device_keys(&dev, &key),
        "one_time_keys": one_time_keys(&dev, &key, "D", 3),
    })
}

async fn device_ids(c: &Client) -> Vec<String> {
    let answer = c.get("/_matrix/client/v3/devices").await.ok();
    let mut ids: Vec<String> = answer["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["device_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// The device ids of `user` that `viewer`'s `/keys/query` finds.
async fn queried(viewer: &Client, user: &str) -> Vec<String> {
    let answer = viewer
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { user: [] } }),
        )
        .await
        .ok();
    let mut ids: Vec<String> = answer["device_keys"][user]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

/// One batch: the `n` of each message and the next token.
async fn batch(c: &Client, device_id: &str, next: Option<&str>) -> (Vec<i64>, String) {
    let body = next.map_or_else(|| json!({}), |t| json!({ "next_batch": t }));
    let answer = c.post(&events_path(device_id), body).await.ok();
    let ns = answer["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            assert_eq!(e["type"], json!("m.room_key.test"), "{e}");
            assert!(e["sender"].is_string(), "{e}");
            e["content"]["n"].as_i64().unwrap_or(-1)
        })
        .collect();
    let next = answer["next_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("no next_batch: {answer}"))
        .to_owned();
    (ns, next)
}

async fn dehydrated_device_lifecycle(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    // They share a room, so bob's /sync hears of alice's device-list changes.
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let since = bob.sync(None, 0).await["next_batch"]
        .as_str()
        .map(str::to_owned);

    alice.get(PATH).await.expect_err(404, "M_NOT_FOUND");

    // Upload: answered with the id; read back as stored; an ordinary device otherwise.
    let body = upload(&alice, "DEHYD1", "pickle-one");
    let put = alice.put(PATH, body.clone()).await.ok();
    assert_eq!(put["device_id"], json!("DEHYD1"));
    let got = alice.get(PATH).await.ok();
    assert_eq!(got["device_id"], json!("DEHYD1"));
    assert_eq!(got["device_data"], body["device_data"]);
    let mut mine = vec!["DEHYD1".to_owned(), alice.device_id.clone()];
    mine.sort();
    assert_eq!(device_ids(&alice).await, mine);
    let one = alice.get("/_matrix/client/v3/devices/DEHYD1").await.ok();
    assert_eq!(one["display_name"], json!("Dehydrated device"));

    // Others find its keys, claim its one-time keys, and hear of the new device.
    assert!(
        queried(&bob, &alice.user_id)
            .await
            .contains(&"DEHYD1".to_owned())
    );
    let claim = bob
        .post(
            "/_matrix/client/v3/keys/claim",
            json!({ "one_time_keys": { &alice.user_id: { "DEHYD1": "signed_curve25519" } } }),
        )
        .await
        .ok();
    let claimed = claim["one_time_keys"][&alice.user_id]["DEHYD1"]
        .as_object()
        .map_or(0, |m| m.len());
    assert_eq!(claimed, 1, "{claim}");
    let s = bob.sync(since.as_deref(), 0).await;
    let changed = s["device_lists"]["changed"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(changed.contains(&json!(alice.user_id)), "{s}");

    // 130 messages to all of alice's devices: the dehydrated one keeps its copy.
    for n in 0..130 {
        bob.put(
            &format!("/_matrix/client/v3/sendToDevice/m.room_key.test/k{n}"),
            json!({ "messages": { &alice.user_id: { "*": { "n": n } } } }),
        )
        .await
        .ok();
    }
    // Batches of 100, in order; the batch after the last is empty and keeps the token.
    let (first, t1) = batch(&alice, "DEHYD1", None).await;
    assert_eq!(first, (0..100).collect::<Vec<_>>());
    let (second, t2) = batch(&alice, "DEHYD1", Some(&t1)).await;
    assert_eq!(second, (100..130).collect::<Vec<_>>());
    let (third, t3) = batch(&alice, "DEHYD1", Some(&t2)).await;
    assert!(third.is_empty(), "{third:?}");
    assert_eq!(t3, t2);
    // Reading acknowledged nothing: a client that starts again gets them all again.
    let (again, _) = batch(&alice, "DEHYD1", None).await;
    assert_eq!(again.len(), 100);
    // Alice's own device got its copies through /sync as usual.
    let s = alice.sync(None, 0).await;
    let own = s["to_device"]["events"].as_array().map_or(0, Vec::len);
    assert_eq!(own, 100, "the first /sync page of alice's own device");

    // Only the dehydrated device's messages, and only with a real token.
    alice
        .post(&events_path(&alice.device_id), json!({}))
        .await
        .expect_err(403, "M_FORBIDDEN");
    bob.post(&events_path("DEHYD1"), json!({}))
        .await
        .expect_err(403, "M_FORBIDDEN");
    alice
        .post(&events_path("DEHYD1"), json!({ "next_batch": "nonsense" }))
        .await
        .expect_err(400, "M_INVALID_PARAM");

    // A new upload replaces it: the old device goes with its keys and its messages.
    let since = bob.sync(since.as_deref(), 0).await["next_batch"]
        .as_str()
        .map(str::to_owned);
    alice
        .put(PATH, upload(&alice, "DEHYD2", "pickle-two"))
        .await
        .ok();
    assert_eq!(alice.get(PATH).await.ok()["device_id"], json!("DEHYD2"));
    let mut mine = vec!["DEHYD2".to_owned(), alice.device_id.clone()];
    mine.sort();
    assert_eq!(device_ids(&alice).await, mine);
    let found = queried(&bob, &alice.user_id).await;
    assert!(!found.contains(&"DEHYD1".to_owned()), "{found:?}");
    assert!(found.contains(&"DEHYD2".to_owned()), "{found:?}");
    alice
        .post(&events_path("DEHYD1"), json!({}))
        .await
        .expect_err(403, "M_FORBIDDEN");
    let (fresh, _) = batch(&alice, "DEHYD2", None).await;
    assert!(fresh.is_empty(), "{fresh:?}");
    let s = bob.sync(since.as_deref(), 0).await;
    let changed = s["device_lists"]["changed"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(changed.contains(&json!(alice.user_id)), "{s}");

    // Delete: answered with the id, then there is none.
    let gone = alice.req(Method::DELETE, PATH, None).await.ok();
    assert_eq!(gone["device_id"], json!("DEHYD2"));
    alice.get(PATH).await.expect_err(404, "M_NOT_FOUND");
    alice
        .req(Method::DELETE, PATH, None)
        .await
        .expect_err(404, "M_NOT_FOUND");
    assert_eq!(device_ids(&alice).await, vec![alice.device_id.clone()]);
    assert!(
        !queried(&bob, &alice.user_id)
            .await
            .contains(&"DEHYD2".to_owned())
    );
    srv.cleanup().await;
}
all3!(dehydrated_device_lifecycle);

/// Bad uploads are refused with the spec's error and store nothing.
async fn bad_dehydrated_devices_are_refused(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let good = upload(&alice, "DEHYD", "p");

    let refused = |body: Value, status: u16, errcode: &'static str| {
        let alice = alice.clone();
        async move {
            alice.put(PATH, body).await.expect_err(status, errcode);
            alice.get(PATH).await.expect_err(404, "M_NOT_FOUND");
        }
    };
    // Keys naming another device, or another user.
    let mut other_device = good.clone();
    other_device["device_keys"] = upload(&alice, "ELSE", "p")["device_keys"].clone();
    refused(other_device, 400, "M_INVALID_PARAM").await;
    let mut other_user = good.clone();
    other_user["device_keys"] = upload(&bob, "DEHYD", "p")["device_keys"].clone();
    refused(other_user, 400, "M_INVALID_PARAM").await;
    // device_data that is not an object with an algorithm.
    let mut no_algorithm = good.clone();
    no_algorithm["device_data"] = json!({ "device_pickle": "p" });
    refused(no_algorithm, 400, "M_BAD_JSON").await;
    let mut not_object = good.clone();
    not_object["device_data"] = json!("p");
    refused(not_object, 400, "M_BAD_JSON").await;
    // A one-time key that is neither a string nor an object.
    let mut bad_key = good.clone();
    bad_key["one_time_keys"] = json!({ "signed_curve25519:X": 5 });
    refused(bad_key, 400, "M_BAD_JSON").await;
    // No device keys at all.
    let mut no_keys = good.clone();
    no_keys.as_object_mut().map(|o| o.remove("device_keys"));
    refused(no_keys, 400, "M_BAD_JSON").await;
    assert_eq!(device_ids(&alice).await, vec![alice.device_id.clone()]);

    // The id of a device alice is logged in on: refused, and that device is untouched.
    let hijack = upload(&alice, &alice.device_id, "p");
    refused(hijack, 400, "M_INVALID_PARAM").await;
    alice.get("/_matrix/client/v3/account/whoami").await.ok();
    assert_eq!(device_ids(&alice).await, vec![alice.device_id.clone()]);

    // Without a token.
    srv.client()
        .put(PATH, good.clone())
        .await
        .expect_err(401, "M_MISSING_TOKEN");
    srv.client()
        .post(&events_path("DEHYD"), json!({}))
        .await
        .expect_err(401, "M_MISSING_TOKEN");
    // No dehydrated device yet: its events are forbidden.
    alice
        .post(&events_path("DEHYD"), json!({}))
        .await
        .expect_err(403, "M_FORBIDDEN");
    srv.cleanup().await;
}
both!(bad_dehydrated_devices_are_refused);
