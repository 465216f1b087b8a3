//! Rooms: creation, membership, sending, history, redaction, state, aliases, directory.

use ganglion_tests::{Backend, TestServer, client::enc};
use serde_json::{Value, json};

use crate::all3;

async fn room_lifecycle(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let room = alice
        .create_room(json!({ "preset": "private_chat", "name": "Lounge", "topic": "chat", "invite": [bob.user_id], "room_alias_name": format!("lounge{}", srv.port) }))
        .await;
    let r = enc(&room);
    // Bob is invited and joins by alias.
    let alias = format!("#lounge{}:localhost:{}", srv.port, srv.port);
    let resolved = bob
        .get(&format!(
            "/_matrix/client/v3/directory/room/{}",
            enc(&alias)
        ))
        .await
        .ok();
    assert_eq!(resolved["room_id"], room);
    bob.join(&alias).await;
    let joined = bob.get("/_matrix/client/v3/joined_rooms").await.ok();
    assert_eq!(joined["joined_rooms"], json!([room]));

    // Messages, both ways, then back-pagination returns them newest first.
    let mut sent = Vec::new();
    for i in 0..15 {
        let who = if i % 2 == 0 { &alice } else { &bob };
        sent.push(who.send_text(&room, &format!("m{i}")).await);
    }
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut path = format!("/_matrix/client/v3/rooms/{r}/messages?dir=b&limit=4");
        if let Some(f) = &from {
            path.push_str(&format!("&from={f}"));
        }
        let page = bob.get(&path).await.ok();
        for ev in page["chunk"].as_array().expect("chunk") {
            if ev["type"] == "m.room.message" {
                seen.push(ev["event_id"].as_str().expect("id").to_owned());
            }
        }
        match page["end"].as_str() {
            Some(e) => from = Some(e.to_owned()),
            None => break,
        }
    }
    seen.reverse();
    assert_eq!(seen, sent);

    // State and power: bob (power 0) cannot rename; alice can.
    bob.put(
        &format!("/_matrix/client/v3/rooms/{r}/state/m.room.name/"),
        json!({ "name": "Bob's" }),
    )
    .await
    .expect_err(403, "M_FORBIDDEN");
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{r}/state/m.room.name"),
            json!({ "name": "Renamed" }),
        )
        .await
        .ok();
    let name = bob
        .get(&format!("/_matrix/client/v3/rooms/{r}/state/m.room.name/"))
        .await
        .ok();
    assert_eq!(name["name"], "Renamed");
    let members = alice
        .get(&format!("/_matrix/client/v3/rooms/{r}/joined_members"))
        .await
        .ok();
    assert_eq!(members["joined"].as_object().expect("joined").len(), 2);

    // Redaction: the content is gone for both.
    let victim = &sent[3];
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{r}/redact/{}/red1", enc(victim)),
            json!({ "reason": "oops" }),
        )
        .await
        .ok();
    for who in [&alice, &bob] {
        let ev = who
            .get(&format!(
                "/_matrix/client/v3/rooms/{r}/event/{}",
                enc(victim)
            ))
            .await
            .ok();
        assert_eq!(
            ev["content"],
            json!({}),
            "redacted content for {}",
            who.user_id
        );
        assert!(ev["unsigned"]["redacted_because"].is_object());
    }

    // Context around a message.
    let ctx = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{r}/context/{}?limit=4",
            enc(&sent[7])
        ))
        .await
        .ok();
    assert_eq!(ctx["event"]["event_id"], sent[7]);
    assert_eq!(ctx["events_before"][0]["event_id"], sent[6]);
    assert_eq!(ctx["events_after"][0]["event_id"], sent[8]);

    // Kick and ban.
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{r}/kick"),
            json!({ "user_id": bob.user_id }),
        )
        .await
        .ok();
    bob.send_text_expect_forbidden(&room).await;
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{r}/ban"),
            json!({ "user_id": bob.user_id, "reason": "spam" }),
        )
        .await
        .ok();
    bob.post(&format!("/_matrix/client/v3/join/{r}"), json!({}))
        .await
        .expect_err(403, "M_FORBIDDEN");
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{r}/unban"),
            json!({ "user_id": bob.user_id }),
        )
        .await
        .ok();

    // Members filtered by membership.
    let m = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{r}/members?membership=leave"
        ))
        .await
        .ok();
    let leavers: Vec<&Value> = m["chunk"].as_array().expect("chunk").iter().collect();
    assert_eq!(leavers.len(), 1);
    srv.cleanup().await;
}
all3!(room_lifecycle);

trait ForbiddenSend {
    async fn send_text_expect_forbidden(&self, room: &str);
}

impl ForbiddenSend for ganglion_tests::Client {
    async fn send_text_expect_forbidden(&self, room: &str) {
        self.put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/x1",
                enc(room)
            ),
            json!({ "body": "hi", "msgtype": "m.text" }),
        )
        .await
        .expect_err(403, "M_FORBIDDEN");
    }
}

async fn room_versions_and_directory(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    for v in ["2", "6", "10", "11", "12"] {
        let room = alice.create_room(json!({ "room_version": v })).await;
        let create = alice
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.create/",
                enc(&room)
            ))
            .await
            .ok();
        assert_eq!(create["room_version"], v);
        alice.send_text(&room, "hello").await;
    }
    alice
        .post(
            "/_matrix/client/v3/createRoom",
            json!({ "room_version": "99" }),
        )
        .await
        .expect_err(400, "M_UNSUPPORTED_ROOM_VERSION");

    let public = alice
        .create_room(json!({ "visibility": "public", "name": "Town square" }))
        .await;
    let list = srv
        .client()
        .get("/_matrix/client/v3/publicRooms")
        .await
        .ok();
    assert!(
        list["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .any(|c| c["room_id"] == public)
    );
    let filtered = alice
        .post(
            "/_matrix/client/v3/publicRooms",
            json!({ "filter": { "generic_search_term": "square" } }),
        )
        .await
        .ok();
    assert_eq!(filtered["chunk"].as_array().expect("chunk").len(), 1);
    let none = alice
        .post(
            "/_matrix/client/v3/publicRooms",
            json!({ "filter": { "generic_search_term": "nothing-like-it" } }),
        )
        .await
        .ok();
    assert_eq!(none["chunk"].as_array().expect("chunk").len(), 0);
    srv.cleanup().await;
}
all3!(room_versions_and_directory);

async fn room_upgrade(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let local = format!("up{}", srv.port);
    let old = alice.create_room(json!({ "preset": "public_chat", "name": "Old", "room_alias_name": local, "room_version": "10" })).await;
    bob.join(&old).await;
    bob.post(
        &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&old)),
        json!({ "new_version": "12" }),
    )
    .await
    .expect_err(403, "M_FORBIDDEN");
    let up = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&old)),
            json!({ "new_version": "12" }),
        )
        .await
        .ok();
    let new = up["replacement_room"]
        .as_str()
        .expect("replacement")
        .to_owned();
    let create = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.create/",
            enc(&new)
        ))
        .await
        .ok();
    assert_eq!(create["room_version"], "12");
    assert_eq!(create["predecessor"]["room_id"], old);
    let name = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.name/",
            enc(&new)
        ))
        .await
        .ok();
    assert_eq!(name["name"], "Old");
    let tomb = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.tombstone/",
            enc(&old)
        ))
        .await
        .ok();
    assert_eq!(tomb["replacement_room"], new);
    let alias = format!("#{local}:localhost:{}", srv.port);
    let resolved = bob
        .get(&format!(
            "/_matrix/client/v3/directory/room/{}",
            enc(&alias)
        ))
        .await
        .ok();
    assert_eq!(resolved["room_id"], new);
    // The old room is now read-mostly for ordinary members.
    bob.put(
        &format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/late",
            enc(&old)
        ),
        json!({ "body": "hi" }),
    )
    .await
    .expect_err(403, "M_FORBIDDEN");
    bob.join(&new).await;
    bob.send_text(&new, "moved").await;
    srv.cleanup().await;
}
all3!(room_upgrade);
