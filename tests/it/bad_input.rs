//! Bad input gets the spec's error, and the server stays healthy for the next request.

use ganglion_tests::{Backend, TestServer, client::enc};
use reqwest::Method;
use serde_json::json;

use crate::{all3, both};

async fn bad_input_gets_spec_errors(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let r = enc(&room);

    // Broken JSON and wrong types.
    alice
        .raw(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            b"{not json".to_vec(),
        )
        .await
        .expect_err(400, "M_NOT_JSON");
    alice
        .post("/_matrix/client/v3/createRoom", json!({ "name": 42 }))
        .await
        .expect_err(400, "M_BAD_JSON");
    alice
        .post(
            "/_matrix/client/v3/createRoom",
            json!({ "invite": "not-a-list" }),
        )
        .await
        .expect_err(400, "M_BAD_JSON");
    alice
        .raw(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/b1"),
            b"[1,2".to_vec(),
        )
        .await
        .expect_err(400, "M_NOT_JSON");
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/b2"),
            json!(["array"]),
        )
        .await
        .expect_err(400, "M_BAD_JSON");

    // Oversized request body and oversized event.
    // On its own connection: the server answers before reading the whole body and then
    // closes the connection, which a pooled client could trip over on its next request.
    let huge = vec![b'a'; 2 * 1024 * 1024];
    let mut lone = alice.clone();
    lone.http = ganglion_tests::http()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    lone.raw(
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/b3"),
        huge,
    )
    .await
    .expect_err(413, "M_TOO_LARGE");
    let big = "x".repeat(70_000);
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/b4"),
            json!({ "msgtype": "m.text", "body": big }),
        )
        .await
        .expect_err(413, "M_TOO_LARGE");

    // Tokens.
    let mut anon = srv.client();
    anon.get("/_matrix/client/v3/account/whoami")
        .await
        .expect_err(401, "M_MISSING_TOKEN");
    anon.token = Some("gl_not_a_token".into());
    anon.get("/_matrix/client/v3/account/whoami")
        .await
        .expect_err(401, "M_UNKNOWN_TOKEN");
    let r2 = srv
        .client()
        .get("/_matrix/client/v3/account/whoami?access_token=nope")
        .await;
    r2.expect_err(401, "M_UNKNOWN_TOKEN");

    // Power: bob joins and may not rename; a stranger may not send.
    bob.join(&room).await;
    bob.put(
        &format!("/_matrix/client/v3/rooms/{r}/state/m.room.name/"),
        json!({ "name": "x" }),
    )
    .await
    .expect_err(403, "M_FORBIDDEN");
    let carol = srv.user("carol").await;
    carol
        .put(
            &format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/c1"),
            json!({ "body": "hi" }),
        )
        .await
        .expect_err(403, "M_FORBIDDEN");
    carol
        .put(
            "/_matrix/client/v3/rooms/!nowhere:localhost/send/m.room.message/c2",
            json!({ "body": "hi" }),
        )
        .await
        .expect_err(403, "M_FORBIDDEN");

    // Bad ids and params.
    alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{r}/messages?dir=sideways"
        ))
        .await
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{r}/messages?from=garbage&dir=b"
        ))
        .await
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .get("/_matrix/client/v3/sync?since=garbage")
        .await
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .get("/_matrix/client/v3/rooms/not-a-room-id/state")
        .await
        .expect_err(400, "M_INVALID_PARAM");

    // Replaying a transaction id returns the same event and makes no second one.
    let path = format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/same-txn");
    let first = alice
        .put(&path, json!({ "msgtype": "m.text", "body": "once" }))
        .await
        .ok();
    let again = alice
        .put(&path, json!({ "msgtype": "m.text", "body": "once" }))
        .await
        .ok();
    assert_eq!(first["event_id"], again["event_id"]);
    let page = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{r}/messages?dir=b&limit=50"
        ))
        .await
        .ok();
    let count = page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|e| e["content"]["body"] == "once")
        .count();
    assert_eq!(count, 1);

    // Still healthy.
    let ok = srv.client().get("/_matrix/client/versions").await;
    assert_eq!(ok.status, 200);
    assert!(
        !srv.log().contains("panicked"),
        "a handler panicked:\n{}",
        srv.log()
    );
    srv.cleanup().await;
}
all3!(bad_input_gets_spec_errors);

async fn rate_limits_answer_429(b: Backend) {
    let srv = TestServer::start_with(
        b,
        "[rate_limits]\nenabled = true\nmessage = { per_second = 0.1, burst = 3.0 }\n",
    )
    .await;
    let alice = srv.user("alice").await;
    let room = alice.create_room(json!({})).await;
    let mut limited = None;
    for i in 0..10 {
        let r = alice
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/rl{i}",
                    enc(&room)
                ),
                json!({ "body": "x" }),
            )
            .await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("a send was rate limited");
    r.expect_err(429, "M_LIMIT_EXCEEDED");
    assert!(r.body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0));
    srv.cleanup().await;
}
both!(rate_limits_answer_429);

async fn per_ip_limits_follow_x_forwarded_for(b: Backend) {
    let srv = TestServer::start_with(
        b,
        "[rate_limits]\nenabled = true\nper_ip = { per_second = 0.01, burst = 3.0 }\n",
    )
    .await;
    // Behind a proxy every request comes from the proxy's address; with x_forwarded on,
    // each client is limited on its own.
    let cfg = std::fs::read_to_string(&srv.config_path).expect("config");
    std::fs::write(
        &srv.config_path,
        cfg.replace("[listeners]\n", "[listeners]\nx_forwarded = true\n"),
    )
    .expect("config");
    let mut srv = srv;
    srv.kill9();
    srv.spawn().await;
    let http = ganglion_tests::http().build().expect("http client");
    let get = |ip: &'static str| {
        http.get(format!("{}/_matrix/client/versions", srv.base))
            .header("x-forwarded-for", format!("203.0.113.9, {ip}"))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(get("198.51.100.1").await.expect("req").status(), 200);
    }
    assert_eq!(get("198.51.100.1").await.expect("req").status(), 429);
    assert_eq!(
        get("198.51.100.2").await.expect("req").status(),
        200,
        "another client is not limited"
    );
    srv.cleanup().await;
}
both!(per_ip_limits_follow_x_forwarded_for);

async fn txn_ids_are_scoped_per_room(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let one = alice.create_room(json!({})).await;
    let two = alice.create_room(json!({})).await;
    let body = json!({ "msgtype": "m.text", "body": "same txn" });
    let a = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                enc(&one)
            ),
            body.clone(),
        )
        .await
        .ok();
    let b2 = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                enc(&two)
            ),
            body.clone(),
        )
        .await
        .ok();
    assert_ne!(
        a["event_id"], b2["event_id"],
        "one txn id in two rooms names two events"
    );
    let again = alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                enc(&two)
            ),
            body,
        )
        .await
        .ok();
    assert_eq!(again["event_id"], b2["event_id"]);
    let ev = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(&two),
            enc(b2["event_id"].as_str().expect("id"))
        ))
        .await
        .ok();
    assert_eq!(ev["room_id"], two);
    srv.cleanup().await;
}
all3!(txn_ids_are_scoped_per_room);
