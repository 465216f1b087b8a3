//! Server-side key backups (Client-Server API "Server-side key backups"): versions, keys
//! at the three levels, the better-key rule, etags and counts, and the errors.

use ganglion_tests::{Backend, Client, TestServer, client::enc};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{all3, both};

const ALG: &str = "m.megolm_backup.v1.curve25519-aes-sha2";
const VERSION: &str = "/_matrix/client/v3/room_keys/version";
const KEYS: &str = "/_matrix/client/v3/room_keys/keys";

fn auth_data(public_key: &str) -> Value {
    json!({
        "public_key": public_key,
        "signatures": { "@alice:example.org": { "ed25519:DEV": "sig" } },
    })
}

/// A `KeyBackupData` whose `session_data` names `tag`, so tests can tell keys apart.
fn key(verified: bool, first_message_index: u64, forwarded_count: u64, tag: &str) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": verified,
        "session_data": { "ephemeral": "eph", "ciphertext": tag, "mac": "mac" },
    })
}

async fn create_version(c: &Client, public_key: &str) -> String {
    let r = c
        .post(
            VERSION,
            json!({ "algorithm": ALG, "auth_data": auth_data(public_key) }),
        )
        .await
        .ok();
    r["version"]
        .as_str()
        .expect("version is a string")
        .to_owned()
}

fn session_path(room: &str, session: &str, version: &str) -> String {
    format!("{KEYS}/{}/{}?version={version}", enc(room), enc(session))
}

fn room_path(room: &str, version: &str) -> String {
    format!("{KEYS}/{}?version={version}", enc(room))
}

/// `(etag, count)` of a PUT or DELETE answer.
fn etag_count(v: &Value) -> (String, u64) {
    (
        v["etag"].as_str().expect("etag is a string").to_owned(),
        v["count"].as_u64().expect("count"),
    )
}

async fn backup_versions_lifecycle(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;

    let none = alice.get(VERSION).await;
    none.expect_err(404, "M_NOT_FOUND");
    assert_eq!(none.body["error"], "No backup found");

    assert_eq!(create_version(&alice, "key1").await, "1");
    let latest = alice.get(VERSION).await.ok();
    assert_eq!(latest["version"], "1");
    assert_eq!(latest["algorithm"], ALG);
    assert_eq!(latest["auth_data"], auth_data("key1"));
    assert_eq!(latest["count"], 0);
    assert!(latest["etag"].is_string(), "{latest}");
    assert_eq!(alice.get(&format!("{VERSION}/1")).await.ok(), latest);

    assert_eq!(create_version(&alice, "key2").await, "2");
    assert_eq!(alice.get(VERSION).await.ok()["version"], "2");
    assert_eq!(
        alice.get(&format!("{VERSION}/1")).await.ok()["auth_data"],
        auth_data("key1"),
        "older versions stay readable"
    );

    // Update: new auth_data; the body's version, when present, must be the path's; the
    // algorithm cannot change.
    alice
        .put(
            &format!("{VERSION}/2"),
            json!({ "algorithm": ALG, "auth_data": auth_data("key2b"), "version": "2" }),
        )
        .await
        .ok();
    assert_eq!(
        alice.get(&format!("{VERSION}/2")).await.ok()["auth_data"],
        auth_data("key2b")
    );
    alice
        .put(
            &format!("{VERSION}/2"),
            json!({ "algorithm": ALG, "auth_data": auth_data("key2c") }),
        )
        .await
        .ok();
    alice
        .put(
            &format!("{VERSION}/2"),
            json!({ "algorithm": ALG, "auth_data": auth_data("x"), "version": "1" }),
        )
        .await
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .put(
            &format!("{VERSION}/2"),
            json!({ "algorithm": "org.example.other", "auth_data": auth_data("x") }),
        )
        .await
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .put(
            &format!("{VERSION}/9"),
            json!({ "algorithm": ALG, "auth_data": auth_data("x") }),
        )
        .await
        .expect_err(404, "M_NOT_FOUND");
    assert_eq!(
        alice.get(&format!("{VERSION}/2")).await.ok()["auth_data"],
        auth_data("key2c"),
        "refused updates change nothing"
    );

    // Backups are per user.
    bob.get(VERSION).await.expect_err(404, "M_NOT_FOUND");
    bob.get(&format!("{VERSION}/1"))
        .await
        .expect_err(404, "M_NOT_FOUND");
    bob.req(Method::DELETE, &format!("{VERSION}/1"), None)
        .await
        .expect_err(404, "M_NOT_FOUND");
    assert_eq!(create_version(&bob, "bobkey").await, "1");

    // Delete: the version is gone everywhere, and its number is not handed out again.
    alice
        .req(Method::DELETE, &format!("{VERSION}/2"), None)
        .await
        .ok();
    alice
        .get(&format!("{VERSION}/2"))
        .await
        .expect_err(404, "M_NOT_FOUND");
    alice
        .req(Method::DELETE, &format!("{VERSION}/2"), None)
        .await
        .expect_err(404, "M_NOT_FOUND");
    alice
        .get(&format!("{KEYS}?version=2"))
        .await
        .expect_err(404, "M_NOT_FOUND");
    assert_eq!(alice.get(VERSION).await.ok()["version"], "1");
    assert_eq!(create_version(&alice, "key3").await, "3");
    assert_eq!(alice.get(VERSION).await.ok()["version"], "3");
    assert_eq!(
        alice.get(&format!("{VERSION}/1")).await.ok()["auth_data"],
        auth_data("key1"),
        "bob's backup did not touch alice's"
    );
    srv.cleanup().await;
}
all3!(backup_versions_lifecycle);

async fn keys_at_three_levels(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let v = create_version(&alice, "k").await;
    let (r1, r2) = ("!one:example.org", "!two:example.org");
    let etag0 = alice.get(VERSION).await.ok()["etag"]
        .as_str()
        .expect("etag")
        .to_owned();

    // One session.
    let put = alice
        .put(&session_path(r1, "s1", &v), key(false, 0, 0, "r1s1"))
        .await
        .ok();
    let (etag1, count) = etag_count(&put);
    assert_eq!(count, 1);
    assert_ne!(etag1, etag0, "new keys change the etag");

    // One room.
    let put = alice
        .put(
            &room_path(r1, &v),
            json!({ "sessions": { "s2": key(false, 0, 0, "r1s2"), "s3": key(true, 1, 0, "r1s3") } }),
        )
        .await
        .ok();
    let (etag2, count) = etag_count(&put);
    assert_eq!(count, 3);
    assert_ne!(etag2, etag1);

    // Every room.
    let put = alice
        .put(
            &format!("{KEYS}?version={v}"),
            json!({ "rooms": {
                r2: { "sessions": { "s1": key(false, 2, 1, "r2s1") } },
                r1: { "sessions": { "s4": key(false, 0, 0, "r1s4") } },
            } }),
        )
        .await
        .ok();
    let (etag3, count) = etag_count(&put);
    assert_eq!(count, 5);
    assert_ne!(etag3, etag2);
    let info = alice.get(&format!("{VERSION}/{v}")).await.ok();
    assert_eq!(
        (info["count"].as_u64(), info["etag"].as_str()),
        (Some(5), Some(etag3.as_str()))
    );

    // Reads at each level.
    let all = alice.get(&format!("{KEYS}?version={v}")).await.ok();
    let rooms = all["rooms"].as_object().expect("rooms");
    assert_eq!(rooms.len(), 2);
    assert_eq!(
        rooms[r1]["sessions"].as_object().expect("sessions").len(),
        4
    );
    assert_eq!(rooms[r2]["sessions"]["s1"], key(false, 2, 1, "r2s1"));
    let room = alice.get(&room_path(r1, &v)).await.ok();
    assert_eq!(room["sessions"]["s3"], key(true, 1, 0, "r1s3"));
    assert_eq!(room["sessions"].as_object().expect("sessions").len(), 4);
    assert_eq!(
        alice.get(&session_path(r1, "s2", &v)).await.ok(),
        key(false, 0, 0, "r1s2")
    );

    // Nothing stored: an empty room is an empty map, a missing session a 404.
    assert_eq!(
        alice.get(&room_path("!empty:example.org", &v)).await.ok(),
        json!({ "sessions": {} })
    );
    alice
        .get(&session_path(r1, "nope", &v))
        .await
        .expect_err(404, "M_NOT_FOUND");
    alice
        .get(&session_path("!empty:example.org", "s1", &v))
        .await
        .expect_err(404, "M_NOT_FOUND");

    // Deletes at each level answer the new etag and count.
    let del = alice
        .req(Method::DELETE, &session_path(r1, "s1", &v), None)
        .await
        .ok();
    let (etag4, count) = etag_count(&del);
    assert_eq!(count, 4);
    assert_ne!(etag4, etag3);
    alice
        .get(&session_path(r1, "s1", &v))
        .await
        .expect_err(404, "M_NOT_FOUND");
    let del = alice
        .req(Method::DELETE, &room_path(r1, &v), None)
        .await
        .ok();
    let (etag5, count) = etag_count(&del);
    assert_eq!(count, 1);
    assert_ne!(etag5, etag4);
    assert_eq!(
        alice.get(&room_path(r1, &v)).await.ok(),
        json!({ "sessions": {} })
    );
    let del = alice
        .req(Method::DELETE, &format!("{KEYS}?version={v}"), None)
        .await
        .ok();
    let (etag6, count) = etag_count(&del);
    assert_eq!(count, 0);
    assert_ne!(etag6, etag5);
    assert_eq!(
        alice.get(&format!("{KEYS}?version={v}")).await.ok(),
        json!({ "rooms": {} })
    );

    // Keys live in their version: a new version starts empty, and deleting a version
    // deletes its keys.
    alice
        .put(&session_path(r1, "s1", &v), key(false, 0, 0, "again"))
        .await
        .ok();
    let v2 = create_version(&alice, "k2").await;
    assert_eq!(alice.get(VERSION).await.ok()["count"], 0);
    assert_eq!(
        alice.get(&format!("{KEYS}?version={v}")).await.ok()["rooms"][r1]["sessions"]["s1"],
        key(false, 0, 0, "again"),
        "an older version's keys stay readable"
    );
    alice
        .req(Method::DELETE, &format!("{VERSION}/{v}"), None)
        .await
        .ok();
    alice
        .get(&session_path(r1, "s1", &v))
        .await
        .expect_err(404, "M_NOT_FOUND");
    alice
        .req(Method::DELETE, &format!("{KEYS}?version={v}"), None)
        .await
        .expect_err(404, "M_NOT_FOUND");
    assert_eq!(
        alice.get(&format!("{KEYS}?version={v2}")).await.ok(),
        json!({ "rooms": {} })
    );
    srv.cleanup().await;
}
both!(keys_at_three_levels);

async fn the_better_key_is_kept(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let v = create_version(&alice, "k").await;
    let room = "!r:example.org";
    let path = session_path(room, "sess", &v);

    // Each upload: (key, whether it replaces what is stored). The spec's order:
    // verification, then the lower first_message_index, then the lower forwarded_count;
    // a tie keeps the stored key.
    let steps = [
        (key(false, 5, 2, "first"), true),
        (key(false, 6, 0, "later index"), false),
        (key(false, 5, 3, "more forwards"), false),
        (key(false, 5, 2, "tie"), false),
        (key(false, 5, 1, "fewer forwards"), true),
        (key(false, 4, 9, "lower index"), true),
        (key(true, 20, 9, "verified"), true),
        // Spec: with different verification the verified key stays, whatever the index
        // (Synapse would take this one).
        (key(false, 0, 0, "unverified, index 0"), false),
        (key(true, 19, 9, "verified, lower index"), true),
    ];
    let mut etag = String::new();
    let mut stored = Value::Null;
    for (i, (upload, replaces)) in steps.into_iter().enumerate() {
        let put = alice.put(&path, upload.clone()).await.ok();
        let (new_etag, count) = etag_count(&put);
        assert_eq!(count, 1, "step {i}");
        if replaces {
            stored = upload;
            assert_ne!(new_etag, etag, "step {i}: a replaced key changes the etag");
        } else {
            assert_eq!(new_etag, etag, "step {i}: a kept key leaves the etag");
        }
        etag = new_etag;
        assert_eq!(alice.get(&path).await.ok(), stored, "step {i}");
    }

    // The same rule through the room and all-rooms uploads, mixed with new sessions.
    let put = alice
        .put(
            &format!("{KEYS}?version={v}"),
            json!({ "rooms": { room: { "sessions": {
                "sess": key(false, 0, 0, "worse"),
                "other": key(false, 0, 0, "new"),
            } } } }),
        )
        .await
        .ok();
    assert_eq!(etag_count(&put).1, 2);
    assert_ne!(etag_count(&put).0, etag, "a new session changes the etag");
    let got = alice.get(&room_path(room, &v)).await.ok();
    assert_eq!(got["sessions"]["sess"], stored);
    assert_eq!(got["sessions"]["other"], key(false, 0, 0, "new"));
    srv.cleanup().await;
}
both!(the_better_key_is_kept);

async fn wrong_version_and_bad_input(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let room = "!r:example.org";
    let k = key(false, 0, 0, "x");

    // No backup at all: uploads and reads name no version.
    alice
        .put(&session_path(room, "s", "1"), k.clone())
        .await
        .expect_err(404, "M_NOT_FOUND");
    alice
        .get(&format!("{KEYS}?version=1"))
        .await
        .expect_err(404, "M_NOT_FOUND");

    let v1 = create_version(&alice, "a").await;
    let v2 = create_version(&alice, "b").await;

    // An older version: 403 with the current one named.
    for path in [
        session_path(room, "s", &v1),
        room_path(room, &v1),
        format!("{KEYS}?version={v1}"),
    ] {
        let body = if path.starts_with(&format!("{KEYS}?")) {
            json!({ "rooms": { room: { "sessions": { "s": k.clone() } } } })
        } else if path.contains("/s?") {
            k.clone()
        } else {
            json!({ "sessions": { "s": k.clone() } })
        };
        let r = alice.put(&path, body).await;
        r.expect_err(403, "M_WRONG_ROOM_KEYS_VERSION");
        assert_eq!(r.body["current_version"], v2.as_str(), "{path}: {}", r.body);
    }
    assert_eq!(
        alice.get(&format!("{KEYS}?version={v1}")).await.ok(),
        json!({ "rooms": {} }),
        "the refused uploads stored nothing"
    );

    // Unknown and non-numeric versions name no backup.
    for v in ["7", "abc", "01", "-1"] {
        alice
            .put(&session_path(room, "s", v), k.clone())
            .await
            .expect_err(404, "M_NOT_FOUND");
        alice
            .get(&session_path(room, "s", v))
            .await
            .expect_err(404, "M_NOT_FOUND");
        alice
            .get(&room_path(room, v))
            .await
            .expect_err(404, "M_NOT_FOUND");
        alice
            .req(Method::DELETE, &room_path(room, v), None)
            .await
            .expect_err(404, "M_NOT_FOUND");
        alice
            .get(&format!("{VERSION}/{v}"))
            .await
            .expect_err(404, "M_NOT_FOUND");
        alice
            .req(Method::DELETE, &format!("{VERSION}/{v}"), None)
            .await
            .expect_err(404, "M_NOT_FOUND");
    }

    // The version query parameter is required.
    let room_only = format!("{KEYS}/{}", enc(room));
    let session_only = format!("{room_only}/s");
    alice
        .put(&session_only, k.clone())
        .await
        .expect_err(400, "M_MISSING_PARAM");
    alice
        .get(&session_only)
        .await
        .expect_err(400, "M_MISSING_PARAM");
    alice
        .get(&room_only)
        .await
        .expect_err(400, "M_MISSING_PARAM");
    alice.get(KEYS).await.expect_err(400, "M_MISSING_PARAM");
    alice
        .req(Method::DELETE, KEYS, None)
        .await
        .expect_err(400, "M_MISSING_PARAM");

    // Malformed bodies.
    let current = session_path(room, "s", &v2);
    alice
        .raw(Method::PUT, &current, b"{not json".to_vec())
        .await
        .expect_err(400, "M_NOT_JSON");
    for bad in [
        json!({ "first_message_index": 0, "forwarded_count": 0, "session_data": {} }),
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": "yes", "session_data": {} }),
        json!({ "first_message_index": -1, "forwarded_count": 0, "is_verified": false, "session_data": {} }),
        json!({ "first_message_index": 0, "forwarded_count": 0, "is_verified": false, "session_data": "text" }),
        json!(["not", "an", "object"]),
    ] {
        alice
            .put(&current, bad.clone())
            .await
            .expect_err(400, "M_BAD_JSON");
    }
    alice
        .put(&format!("{KEYS}?version={v2}"), json!({ "rooms": "nope" }))
        .await
        .expect_err(400, "M_BAD_JSON");
    alice
        .put(
            &format!("{KEYS}?version={v2}"),
            json!({ "rooms": { room: { "sessions": { "s": { "is_verified": true } } } } }),
        )
        .await
        .expect_err(400, "M_BAD_JSON");
    alice
        .put(&room_path(room, &v2), json!({ "sessions": [] }))
        .await
        .expect_err(400, "M_BAD_JSON");
    alice
        .put(&format!("{KEYS}/not-a-room/s?version={v2}"), k.clone())
        .await
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .raw(Method::POST, VERSION, b"[1,".to_vec())
        .await
        .expect_err(400, "M_NOT_JSON");
    for bad in [
        json!({}),
        json!({ "algorithm": ALG }),
        json!({ "algorithm": ALG, "auth_data": "not an object" }),
        json!({ "algorithm": 5, "auth_data": {} }),
    ] {
        alice.post(VERSION, bad).await.expect_err(400, "M_BAD_JSON");
    }
    alice
        .put(
            &format!("{VERSION}/{v2}"),
            json!({ "algorithm": ALG, "auth_data": {}, "version": 2 }),
        )
        .await
        .expect_err(400, "M_BAD_JSON");
    assert_eq!(
        alice.get(VERSION).await.ok()["version"],
        v2.as_str(),
        "no bad request created a version"
    );
    assert_eq!(alice.get(VERSION).await.ok()["count"], 0);

    // Only with a token.
    srv.client()
        .get(VERSION)
        .await
        .expect_err(401, "M_MISSING_TOKEN");
    srv.client()
        .put(&current, k)
        .await
        .expect_err(401, "M_MISSING_TOKEN");
    srv.cleanup().await;
}
both!(wrong_version_and_bad_input);
