//! /sync: initial, incremental, long-poll wake-ups, typing and receipts.

use std::time::{Duration, Instant};

use ganglion_tests::{Backend, TestServer, client::enc};
use serde_json::{Value, json};

use crate::{all3, both};

fn timeline(sync: &Value, room: &str) -> Vec<Value> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn incremental_and_long_poll(b: Backend) {
    let srv = TestServer::start(b).await;
    long_poll_scenario(&srv).await;
    srv.cleanup().await;
}
all3!(incremental_and_long_poll);

/// The same scenario with the replication bus on a real Redis (Redis Streams).
async fn over_the_redis_bus(b: Backend) {
    let redis =
        std::env::var("GANGLION_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("ganglion-it-{}", rand::random::<u32>());
    let srv = TestServer::start_with(
        b,
        &format!("[bus]\nredis_url = \"{redis}\"\nkey_prefix = \"{prefix}\"\n"),
    )
    .await;
    long_poll_scenario(&srv).await;
    assert!(srv.log().contains("Redis Streams"), "{}", srv.log());
    srv.cleanup().await;
}
both!(over_the_redis_bus);

async fn long_poll_scenario(srv: &TestServer) {
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let room = alice.create_room(json!({ "invite": [bob.user_id] })).await;

    // Bob sees the invite, joins, and his next sync has the room.
    let s0 = bob.sync(None, 0).await;
    assert!(s0["rooms"]["invite"][&room]["invite_state"]["events"].is_array());
    bob.join(&room).await;
    let s1 = bob.sync(s0["next_batch"].as_str(), 0).await;
    assert!(s1["rooms"]["join"][&room].is_object());

    // A long-poll wakes when alice sends, well before its timeout.
    let since = s1["next_batch"].as_str().expect("next_batch").to_owned();
    let bob2 = bob.clone();
    let poll = tokio::spawn(async move {
        let t = Instant::now();
        let s = bob2.sync(Some(&since), 20_000).await;
        (s, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ev = alice.send_text(&room, "wake up").await;
    let (s2, took) = poll.await.expect("poll task");
    assert!(took < Duration::from_secs(10), "long-poll took {took:?}");
    let tl = timeline(&s2, &room);
    assert!(tl.iter().any(|e| e["event_id"] == ev), "{s2}");

    // An empty long-poll returns at its timeout with the same position.
    let next = s2["next_batch"].as_str().expect("next").to_owned();
    let t = Instant::now();
    let s3 = bob.sync(Some(&next), 500).await;
    assert!(t.elapsed() >= Duration::from_millis(450));
    assert!(
        s3["rooms"]["join"].as_object().is_none_or(|m| m.is_empty()),
        "{s3}"
    );

    // Typing and receipts reach the other side.
    alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(&room),
                enc(&alice.user_id)
            ),
            json!({ "typing": true, "timeout": 10000 }),
        )
        .await
        .ok();
    bob.post(
        &format!(
            "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
            enc(&room),
            enc(&ev)
        ),
        json!({}),
    )
    .await
    .ok();
    let mut got_typing = false;
    let mut since = s3["next_batch"].as_str().expect("next").to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got_typing && Instant::now() < deadline {
        let s = bob.sync(Some(&since), 2000).await;
        for e in s["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            if e["type"] == "m.typing"
                && e["content"]["user_ids"]
                    .as_array()
                    .is_some_and(|u| u.iter().any(|x| x == &json!(alice.user_id)))
            {
                got_typing = true;
            }
        }
        since = s["next_batch"].as_str().expect("next").to_owned();
    }
    assert!(got_typing, "typing never arrived");
    let a = alice.sync(None, 0).await;
    let receipts: Vec<Value> = a["rooms"]["join"][&room]["ephemeral"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let r = receipts
        .iter()
        .find(|e| e["type"] == "m.receipt")
        .expect("receipt in alice's sync");
    assert!(r["content"][&ev]["m.read"][&bob.user_id]["ts"].is_number());

    // Filters: a timeline limit of 2 gives a limited timeline with prev_batch.
    for i in 0..5 {
        alice.send_text(&room, &format!("f{i}")).await;
    }
    let fid = bob
        .post(
            &format!("/_matrix/client/v3/user/{}/filter", enc(&bob.user_id)),
            json!({ "room": { "timeline": { "limit": 2 } } }),
        )
        .await
        .ok();
    let fs = bob
        .get(&format!(
            "/_matrix/client/v3/sync?filter={}",
            fid["filter_id"].as_str().expect("id")
        ))
        .await
        .ok();
    let jr = &fs["rooms"]["join"][&room]["timeline"];
    assert_eq!(jr["events"].as_array().expect("events").len(), 2);
    assert_eq!(jr["limited"], true);
    assert!(jr["prev_batch"].is_string());
}

async fn leave_and_rejoin(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let s = bob.sync(None, 0).await;
    bob.post(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        json!({}),
    )
    .await
    .ok();
    let s2 = bob.sync(s["next_batch"].as_str(), 0).await;
    assert!(s2["rooms"]["leave"][&room].is_object(), "{s2}");
    // Rejoin with an empty POST body, as matrix-nio sends it: read as `{}`.
    bob.raw(
        reqwest::Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        Vec::new(),
    )
    .await
    .ok();
    let s3 = bob.sync(s2["next_batch"].as_str(), 0).await;
    assert!(
        s3["rooms"]["join"][&room]["state"]["events"].is_array(),
        "{s3}"
    );
    srv.cleanup().await;
}
all3!(leave_and_rejoin);
