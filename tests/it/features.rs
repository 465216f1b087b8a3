//! The rest of the room and account surface: profile propagation, account data and tags,
//! filters on /messages, private and threaded receipts, read markers, timestamp lookup,
//! knocking, forgetting, aliases, directory visibility and /sync details.

use ganglion_tests::{Backend, TestServer, client::enc};
use serde_json::{Value, json};

use crate::all3;

fn events<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

async fn profile_account_data_filters(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let r = enc(&room);
    bob.join(&room).await;

    // A profile change updates the member event in every joined room.
    alice
        .put(
            &format!(
                "/_matrix/client/v3/profile/{}/displayname",
                enc(&alice.user_id)
            ),
            json!({ "displayname": "Alice A." }),
        )
        .await
        .ok();
    let member = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{r}/state/m.room.member/{}",
            enc(&alice.user_id)
        ))
        .await
        .ok();
    assert_eq!(member["displayname"], "Alice A.");
    let jm = bob
        .get(&format!("/_matrix/client/v3/rooms/{r}/joined_members"))
        .await
        .ok();
    assert_eq!(jm["joined"][&alice.user_id]["display_name"], "Alice A.");

    // Account data, global and per room, and tags.
    let u = enc(&alice.user_id);
    alice
        .put(
            &format!("/_matrix/client/v3/user/{u}/account_data/org.example.x"),
            json!({ "a": 1 }),
        )
        .await
        .ok();
    assert_eq!(
        alice
            .get(&format!(
                "/_matrix/client/v3/user/{u}/account_data/org.example.x"
            ))
            .await
            .ok()["a"],
        1
    );
    alice
        .get(&format!(
            "/_matrix/client/v3/user/{u}/account_data/org.example.none"
        ))
        .await
        .expect_err(404, "M_NOT_FOUND");
    bob.get(&format!(
        "/_matrix/client/v3/user/{u}/account_data/org.example.x"
    ))
    .await
    .expect_err(403, "M_FORBIDDEN");
    alice
        .put(
            &format!("/_matrix/client/v3/user/{u}/rooms/{r}/account_data/org.example.y"),
            json!({ "b": 2 }),
        )
        .await
        .ok();
    alice
        .put(
            &format!("/_matrix/client/v3/user/{u}/rooms/{r}/tags/m.favourite"),
            json!({ "order": 0.5 }),
        )
        .await
        .ok();
    let tags = alice
        .get(&format!("/_matrix/client/v3/user/{u}/rooms/{r}/tags"))
        .await
        .ok();
    assert_eq!(tags["tags"]["m.favourite"]["order"], 0.5);
    let s = alice.sync(None, 0).await;
    assert!(
        events(&s, &["account_data", "events"])
            .iter()
            .any(|e| e["type"] == "org.example.x")
    );
    let room_ad = events(&s["rooms"]["join"][&room], &["account_data", "events"]);
    assert!(room_ad.iter().any(|e| e["type"] == "m.tag"));
    assert!(room_ad.iter().any(|e| e["type"] == "org.example.y"));
    alice
        .req(
            reqwest::Method::DELETE,
            &format!("/_matrix/client/v3/user/{u}/rooms/{r}/tags/m.favourite"),
            None,
        )
        .await
        .ok();
    let tags = alice
        .get(&format!("/_matrix/client/v3/user/{u}/rooms/{r}/tags"))
        .await
        .ok();
    assert_eq!(tags["tags"], json!({}));

    // Filters: stored, fetched, honoured by /messages (senders, types).
    let fid = alice
        .post(
            &format!("/_matrix/client/v3/user/{u}/filter"),
            json!({ "room": { "timeline": { "limit": 3 } } }),
        )
        .await
        .ok()["filter_id"]
        .as_str()
        .expect("filter id")
        .to_owned();
    let f = alice
        .get(&format!("/_matrix/client/v3/user/{u}/filter/{fid}"))
        .await
        .ok();
    assert_eq!(f["room"]["timeline"]["limit"], 3);
    alice
        .get(&format!("/_matrix/client/v3/user/{u}/filter/999"))
        .await
        .expect_err(404, "M_NOT_FOUND");
    alice.send_text(&room, "from alice").await;
    bob.send_text(&room, "from bob").await;
    let only_bob = json!({ "senders": [bob.user_id], "types": ["m.room.message"] }).to_string();
    let page = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{r}/messages?dir=b&limit=10&filter={}",
            enc(&only_bob)
        ))
        .await
        .ok();
    let chunk = events(&page, &["chunk"]);
    assert_eq!(chunk.len(), 1);
    assert_eq!(chunk[0]["sender"], bob.user_id);
    let lazy = json!({ "lazy_load_members": true }).to_string();
    let page = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{r}/messages?dir=b&limit=1&filter={}",
            enc(&lazy)
        ))
        .await
        .ok();
    assert!(
        events(&page, &["state"])
            .iter()
            .all(|e| e["type"] == "m.room.member")
    );
    assert!(!events(&page, &["state"]).is_empty());
    srv.cleanup().await;
}
all3!(profile_account_data_filters);

async fn receipts_markers_and_lookup(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let r = enc(&room);
    bob.join(&room).await;
    let e1 = alice.send_text(&room, "one").await;
    let e2 = alice.send_text(&room, "two").await;

    // A private receipt is seen only by its owner; a threaded one carries its thread.
    bob.post(
        &format!(
            "/_matrix/client/v3/rooms/{r}/receipt/m.read.private/{}",
            enc(&e1)
        ),
        json!({}),
    )
    .await
    .ok();
    bob.post(
        &format!("/_matrix/client/v3/rooms/{r}/receipt/m.read/{}", enc(&e2)),
        json!({ "thread_id": "main" }),
    )
    .await
    .ok();
    let a = alice.sync(None, 0).await;
    let receipts = events(&a["rooms"]["join"][&room], &["ephemeral", "events"])
        .into_iter()
        .find(|e| e["type"] == "m.receipt")
        .cloned()
        .expect("receipts");
    assert!(
        receipts["content"][&e1].is_null(),
        "private receipt leaked: {receipts}"
    );
    assert_eq!(
        receipts["content"][&e2]["m.read"][&bob.user_id]["thread_id"],
        "main"
    );
    let bs = bob.sync(None, 0).await;
    let mine = events(&bs["rooms"]["join"][&room], &["ephemeral", "events"])
        .into_iter()
        .find(|e| e["type"] == "m.receipt")
        .cloned()
        .expect("own receipts");
    assert!(mine["content"][&e1]["m.read.private"][&bob.user_id].is_object());

    // Read markers set m.fully_read account data.
    bob.post(
        &format!("/_matrix/client/v3/rooms/{r}/read_markers"),
        json!({ "m.fully_read": e2, "m.read": e2 }),
    )
    .await
    .ok();
    let fr = bob
        .get(&format!(
            "/_matrix/client/v3/user/{}/rooms/{r}/account_data/m.fully_read",
            enc(&bob.user_id)
        ))
        .await
        .ok();
    assert_eq!(fr["event_id"], e2);

    // timestamp_to_event finds the event on each side of a time.
    let ev = alice
        .get(&format!("/_matrix/client/v3/rooms/{r}/event/{}", enc(&e2)))
        .await
        .ok();
    let ts = ev["origin_server_ts"].as_i64().expect("ts");
    let back = alice
        .get(&format!(
            "/_matrix/client/v1/rooms/{r}/timestamp_to_event?ts={ts}&dir=b"
        ))
        .await
        .ok();
    assert_eq!(back["event_id"], e2);
    let fwd = alice
        .get(&format!(
            "/_matrix/client/v1/rooms/{r}/timestamp_to_event?ts={}&dir=f",
            ts + 3_600_000
        ))
        .await;
    fwd.expect_err(404, "M_NOT_FOUND");
    srv.cleanup().await;
}
all3!(receipts_markers_and_lookup);

async fn knock_forget_aliases_visibility(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    // Knocking on a knock room; the knock shows in bob's sync and alice can invite him in.
    let room = alice.create_room(json!({ "room_version": "11", "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }] })).await;
    let r = enc(&room);
    bob.post(
        &format!("/_matrix/client/v3/knock/{r}"),
        json!({ "reason": "let me in" }),
    )
    .await
    .ok();
    let s = bob.sync(None, 0).await;
    assert!(
        s["rooms"]["knock"][&room]["knock_state"]["events"].is_array(),
        "{s}"
    );
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{r}/invite"),
            json!({ "user_id": bob.user_id }),
        )
        .await
        .ok();
    bob.join(&room).await;

    // Leave then forget: the room no longer appears in left rooms.
    bob.post(&format!("/_matrix/client/v3/rooms/{r}/forget"), json!({}))
        .await
        .expect_err(400, "M_UNKNOWN");
    bob.post(&format!("/_matrix/client/v3/rooms/{r}/leave"), json!({}))
        .await
        .ok();
    bob.post(&format!("/_matrix/client/v3/rooms/{r}/forget"), json!({}))
        .await
        .ok();
    let s = bob
        .get(&format!(
            "/_matrix/client/v3/sync?filter={}",
            enc(&json!({ "room": { "include_leave": true } }).to_string())
        ))
        .await
        .ok();
    assert!(
        s["rooms"]["leave"][&room].is_null(),
        "forgotten room still listed: {s}"
    );

    // Aliases: create, list, conflict, delete by a stranger refused.
    let alias = format!("#extra{}:localhost:{}", srv.port, srv.port);
    alice
        .put(
            &format!("/_matrix/client/v3/directory/room/{}", enc(&alias)),
            json!({ "room_id": room }),
        )
        .await
        .ok();
    alice
        .put(
            &format!("/_matrix/client/v3/directory/room/{}", enc(&alias)),
            json!({ "room_id": room }),
        )
        .await
        .expect_err(409, "M_UNKNOWN");
    let list = alice
        .get(&format!("/_matrix/client/v3/rooms/{r}/aliases"))
        .await
        .ok();
    assert_eq!(list["aliases"], json!([alias]));
    bob.req(
        reqwest::Method::DELETE,
        &format!("/_matrix/client/v3/directory/room/{}", enc(&alias)),
        None,
    )
    .await
    .expect_err(403, "M_FORBIDDEN");
    alice
        .req(
            reqwest::Method::DELETE,
            &format!("/_matrix/client/v3/directory/room/{}", enc(&alias)),
            None,
        )
        .await
        .ok();
    alice
        .get(&format!(
            "/_matrix/client/v3/directory/room/{}",
            enc(&alias)
        ))
        .await
        .expect_err(404, "M_NOT_FOUND");

    // Directory visibility per room.
    assert_eq!(
        alice
            .get(&format!("/_matrix/client/v3/directory/list/room/{r}"))
            .await
            .ok()["visibility"],
        "private"
    );
    alice
        .put(
            &format!("/_matrix/client/v3/directory/list/room/{r}"),
            json!({ "visibility": "public" }),
        )
        .await
        .ok();
    assert_eq!(
        alice
            .get(&format!("/_matrix/client/v3/directory/list/room/{r}"))
            .await
            .ok()["visibility"],
        "public"
    );
    srv.cleanup().await;
}
all3!(knock_forget_aliases_visibility);

async fn sync_details(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let carol = srv.user("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    carol.join(&room).await;
    for i in 0..6 {
        carol.send_text(&room, &format!("c{i}")).await;
    }
    bob.send_text(&room, "b").await;

    // Summary: heroes for an unnamed room, counts.
    let s = alice.sync(None, 0).await;
    let summary = &s["rooms"]["join"][&room]["summary"];
    assert_eq!(summary["m.joined_member_count"], 3);
    let heroes: Vec<&Value> = summary["m.heroes"]
        .as_array()
        .expect("heroes")
        .iter()
        .collect();
    assert!(heroes.contains(&&json!(bob.user_id)) && heroes.contains(&&json!(carol.user_id)));

    // Lazy-loaded members: only the timeline's senders (and yourself) in state.
    let lazy =
        json!({ "room": { "timeline": { "limit": 1 }, "state": { "lazy_load_members": true } } })
            .to_string();
    let s = alice
        .get(&format!("/_matrix/client/v3/sync?filter={}", enc(&lazy)))
        .await
        .ok();
    let members: Vec<String> = events(&s["rooms"]["join"][&room], &["state", "events"])
        .into_iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().expect("sk").to_owned())
        .collect();
    assert!(members.contains(&bob.user_id), "{members:?}");
    assert!(!members.contains(&carol.user_id), "{members:?}");

    // full_state on an incremental sync returns the room's state again.
    let next = s["next_batch"].as_str().expect("next").to_owned();
    let full = alice
        .get(&format!(
            "/_matrix/client/v3/sync?since={next}&full_state=true"
        ))
        .await
        .ok();
    assert!(
        events(&full["rooms"]["join"][&room], &["state", "events"])
            .iter()
            .any(|e| e["type"] == "m.room.create")
    );
    srv.cleanup().await;
}
all3!(sync_details);

/// Filters uploaded at the same moment by one user (each of their devices starting up)
/// all get ids, each a different one; before, two could pick the same id and one got a
/// 500.
async fn concurrent_filter_uploads_get_distinct_ids(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let path = format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id));
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (alice, path) = (alice.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            alice
                .post(&path, json!({ "room": { "timeline": { "limit": i + 1 } } }))
                .await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let r = t.await.expect("task").ok();
        let id = r["filter_id"].as_str().expect("filter_id").to_owned();
        assert!(ids.insert(id), "an id was handed out twice: {ids:?}");
    }
    assert_eq!(ids.len(), 12);
    srv.cleanup().await;
}
crate::both!(concurrent_filter_uploads_get_distinct_ids);
