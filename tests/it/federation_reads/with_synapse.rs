//! Interop with Synapse: directories, space hierarchies, timestamps and OpenID tokens
//! both ways.

use std::collections::BTreeSet;

use ganglion_tests::{Backend, Client, TestServer, client::enc};
use reqwest::Method;
use serde_json::{Value, json};

use super::{add_child, hierarchy_ids, now_ms, room_ids};
use crate::federation::{Synapse, https, test_ca};

/// Every room of a directory read `limit` at a time through `c`, following
/// `next_batch` (at most 20 pages).
async fn all_pages(c: &Client, server: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut since: Option<String> = None;
    for _ in 0..20 {
        let mut path = format!(
            "/_matrix/client/v3/publicRooms?server={}&limit={limit}",
            enc(server)
        );
        if let Some(s) = &since {
            path.push_str(&format!("&since={}", enc(s)));
        }
        let page = c.get(&path).await.ok();
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        assert!(chunk.len() <= limit, "{page}");
        out.extend(
            chunk
                .iter()
                .filter_map(|r| r["room_id"].as_str().map(str::to_owned)),
        );
        match page["next_batch"].as_str() {
            Some(n) => since = Some(n.to_owned()),
            None => return out,
        }
    }
    panic!("more than 20 pages")
}

/// The public room directory both ways: a Synapse user lists, searches and pages
/// through Ganglion's directory (Synapse's `GET` and `POST /publicRooms` to us), and a
/// Ganglion user does the same with Synapse's. Rooms created with `m.federate: false`
/// and rooms whose server ACL denies the asking server stay out of what other servers
/// see; anonymous clients may not make us ask another server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_rooms_cross_with_synapse() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (srv, name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let alice = srv.user("alice").await;
    let plaza = alice
        .create_room(json!({ "preset": "public_chat", "visibility": "public", "name": "Ganglion plaza", "topic": "meet here" }))
        .await;
    let annex = alice
        .create_room(
            json!({ "preset": "public_chat", "visibility": "public", "name": "Ganglion annex" }),
        )
        .await;
    let local_only = alice
        .create_room(json!({ "preset": "public_chat", "visibility": "public", "name": "Local only", "creation_content": { "m.federate": false } }))
        .await;
    // Every server here is `localhost:PORT` and ACLs ignore ports: this denies Synapse.
    let fenced = alice
        .create_room(json!({
            "preset": "public_chat", "visibility": "public", "name": "Fenced",
            "initial_state": [{ "type": "m.room.server_acl", "state_key": "", "content": { "allow": ["*"], "deny": ["localhost"] } }],
        }))
        .await;
    // Our own clients see all four.
    let ours = alice.get("/_matrix/client/v3/publicRooms").await.ok();
    for r in [&plaza, &annex, &local_only, &fenced] {
        assert!(room_ids(&ours, "chunk").contains(r), "{ours}");
    }

    let bob = synapse.user("bob").await;
    let square = bob
        .create_room(
            json!({ "preset": "public_chat", "visibility": "public", "name": "Synapse square" }),
        )
        .await;
    let market = bob
        .create_room(
            json!({ "preset": "public_chat", "visibility": "public", "name": "Synapse market" }),
        )
        .await;

    // Synapse → Ganglion, GET: only the rooms another server may see.
    let theirs = bob
        .get(&format!(
            "/_matrix/client/v3/publicRooms?server={}",
            enc(&name)
        ))
        .await
        .ok();
    assert_eq!(
        room_ids(&theirs, "chunk"),
        BTreeSet::from([plaza.clone(), annex.clone()]),
        "{theirs}"
    );
    let entry = theirs["chunk"]
        .as_array()
        .and_then(|c| c.iter().find(|r| r["room_id"] == plaza.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["name"], "Ganglion plaza");
    assert_eq!(entry["topic"], "meet here");
    assert_eq!(entry["num_joined_members"], 1);
    assert_eq!(entry["join_rule"], "public");
    // Synapse → Ganglion, POST with a filter (MSC2197, which we serve).
    let found = bob
        .post(
            &format!("/_matrix/client/v3/publicRooms?server={}", enc(&name)),
            json!({ "filter": { "generic_search_term": "PLAZA" } }),
        )
        .await
        .ok();
    assert_eq!(
        room_ids(&found, "chunk"),
        BTreeSet::from([plaza.clone()]),
        "{found}"
    );
    // Pages of one through Synapse: our tokens pass through it.
    let paged = all_pages(&bob, &name, 1).await;
    assert_eq!(
        paged.iter().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([plaza.clone(), annex.clone()]),
        "{paged:?}"
    );
    assert_eq!(paged.len(), 2, "{paged:?}");

    // Ganglion → Synapse. Synapse lists new rooms once its room stats catch up.
    let want = BTreeSet::from([square.clone(), market.clone()]);
    let path = format!(
        "/_matrix/client/v3/publicRooms?server={}",
        enc(&synapse.server_name)
    );
    crate::federation::wait_until(|| async {
        room_ids(&alice.get(&path).await.body, "chunk").is_superset(&want)
    })
    .await;
    let found = alice
        .post(
            &path,
            json!({ "filter": { "generic_search_term": "square" } }),
        )
        .await
        .ok();
    assert_eq!(
        room_ids(&found, "chunk"),
        BTreeSet::from([square.clone()]),
        "{found}"
    );
    let none = alice
        .post(
            &path,
            json!({ "filter": { "generic_search_term": "no such room" } }),
        )
        .await
        .ok();
    assert!(room_ids(&none, "chunk").is_empty(), "{none}");
    let paged = all_pages(&alice, &synapse.server_name, 1).await;
    assert!(
        paged
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .is_superset(&want),
        "{paged:?}"
    );

    // Asking for another server's list needs a token; bad servers are client errors.
    srv.client()
        .get(&path)
        .await
        .expect_err(401, "M_MISSING_TOKEN");
    alice
        .get("/_matrix/client/v3/publicRooms?server=not%20a%20server")
        .await
        .expect_err(400, "M_INVALID_PARAM");
    let r = alice
        .get(&format!(
            "/_matrix/client/v3/publicRooms?server={}",
            enc(&format!(
                "localhost:{}",
                ganglion_tests::server::free_port()
            ))
        ))
        .await;
    assert_eq!(
        (r.status, r.errcode()),
        (503, "M_UNKNOWN"),
        "an unreachable server: {}",
        r.body
    );
    srv.cleanup().await;
}

/// Space hierarchies both ways. A Synapse user in a space of ours sees, through
/// Synapse's `/hierarchy`, the children Synapse is not in, which Synapse reads from our
/// federation `/hierarchy` (a child space's own children come in its `children`); the
/// invite-only child we refuse to show Synapse is left out. A Ganglion user in a
/// Synapse space sees the space and the children we are in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn space_hierarchies_cross_with_synapse() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (srv, name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let alice = srv.user("alice").await;
    let local = format!("space{}", rand::random::<u32>());
    let space = alice
        .create_room(json!({ "preset": "public_chat", "name": "Ganglion space", "room_alias_name": local, "creation_content": { "type": "m.space" } }))
        .await;
    let lobby = alice
        .create_room(json!({ "preset": "public_chat", "name": "Lobby" }))
        .await;
    let private = alice
        .create_room(json!({ "preset": "private_chat", "name": "Private" }))
        .await;
    let inner = alice
        .create_room(json!({ "preset": "public_chat", "name": "Inner space", "creation_content": { "type": "m.space" } }))
        .await;
    let deep = alice
        .create_room(json!({ "preset": "public_chat", "name": "Deep" }))
        .await;
    add_child(
        &alice,
        &space,
        &lobby,
        &name,
        json!({ "order": "a", "suggested": true }),
    )
    .await;
    add_child(&alice, &space, &private, &name, json!({ "order": "b" })).await;
    add_child(&alice, &space, &inner, &name, json!({ "order": "c" })).await;
    add_child(&alice, &inner, &deep, &name, json!({})).await;

    let bob = synapse.user("bob").await;
    let joined = bob
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                enc(&format!("#{local}:{name}"))
            ),
            json!({}),
        )
        .await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    let h = bob
        .get(&format!(
            "/_matrix/client/v1/rooms/{}/hierarchy",
            enc(&space)
        ))
        .await
        .ok();
    assert_eq!(
        hierarchy_ids(&h),
        vec![space.clone(), lobby.clone(), inner.clone(), deep.clone()],
        "{h}"
    );
    let rooms = h["rooms"].as_array().cloned().unwrap_or_default();
    assert_eq!(rooms[1]["name"], "Lobby");
    assert_eq!(rooms[2]["room_type"], "m.space");
    assert_eq!(rooms[3]["name"], "Deep", "from the inner space's children");
    assert_eq!(
        rooms[2]["children_state"][0]["state_key"],
        deep.as_str(),
        "{h}"
    );
    let suggested = bob
        .get(&format!(
            "/_matrix/client/v1/rooms/{}/hierarchy?suggested_only=true",
            enc(&space)
        ))
        .await
        .ok();
    assert_eq!(
        hierarchy_ids(&suggested),
        vec![space.clone(), lobby.clone()],
        "{suggested}"
    );

    // A Synapse space: we show the space and the child we are in.
    let theirs = bob
        .create_room(json!({ "preset": "public_chat", "name": "Synapse space", "creation_content": { "type": "m.space" } }))
        .await;
    let joined_child = bob
        .create_room(json!({ "preset": "public_chat", "name": "Joined child" }))
        .await;
    let other_child = bob
        .create_room(json!({ "preset": "public_chat", "name": "Other child" }))
        .await;
    add_child(
        &bob,
        &theirs,
        &joined_child,
        &synapse.server_name,
        json!({ "order": "1" }),
    )
    .await;
    add_child(
        &bob,
        &theirs,
        &other_child,
        &synapse.server_name,
        json!({ "order": "2" }),
    )
    .await;
    for room in [&theirs, &joined_child] {
        let r = alice
            .post(
                &format!(
                    "/_matrix/client/v3/join/{}?via={}",
                    enc(room),
                    enc(&synapse.server_name)
                ),
                json!({}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let h = alice
        .get(&format!(
            "/_matrix/client/v1/rooms/{}/hierarchy",
            enc(&theirs)
        ))
        .await
        .ok();
    assert_eq!(
        hierarchy_ids(&h),
        vec![theirs.clone(), joined_child.clone()],
        "{h}"
    );
    let children: Vec<&str> = h["rooms"][0]["children_state"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["state_key"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        children,
        vec![joined_child.as_str(), other_child.as_str()],
        "{h}"
    );
    assert_eq!(h["rooms"][0]["name"], "Synapse space");
    srv.cleanup().await;
}

/// Synapse asks us for the event nearest a time: its user joined our room after its
/// history was written, so Synapse's nearest event is its join, next to a gap, and it
/// asks us (`/timestamp_to_event`), fetches the event we name and answers with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_asks_us_for_the_event_nearest_a_time() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (srv, name) = TestServer::start_federating(Backend::Sqlite, &ca).await;
    let alice = srv.user("alice").await;
    let local = format!("ts{}", rand::random::<u32>());
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_alias_name": local }))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let before = now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let first = alice.send_text(&room, "first").await;
    for i in 0..5 {
        alice.send_text(&room, &format!("later-{i}")).await;
    }
    let bob = synapse.user("bob").await;
    let joined = bob
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                enc(&format!("#{local}:{name}"))
            ),
            json!({}),
        )
        .await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    let found = bob
        .get(&format!(
            "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={before}&dir=f",
            enc(&room)
        ))
        .await
        .ok();
    assert_eq!(found["event_id"], first.as_str(), "{found}");
    srv.cleanup().await;
}

/// OpenID: a Ganglion user's token is exchanged at our federation listener for the
/// user's id (no X-Matrix signature needed), and a Synapse user's at Synapse's, the same
/// way; neither server accepts the other's token, and bad requests get the spec's
/// errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_tokens_both_ways() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let (srv, name) = TestServer::start_federating(Backend::Sqlite, &ca).await;
    let alice = srv.user("alice").await;
    let bob = synapse.user("bob").await;
    let http = https(&ca);
    let token_of = |c: &Client| {
        let c = c.clone();
        async move {
            c.post(
                &format!(
                    "/_matrix/client/v3/user/{}/openid/request_token",
                    enc(&c.user_id)
                ),
                json!({}),
            )
            .await
            .ok()
        }
    };
    let userinfo = |server: &str, token: Option<&str>| {
        let mut url = format!("https://{server}/_matrix/federation/v1/openid/userinfo");
        if let Some(t) = token {
            url.push_str(&format!("?access_token={}", enc(t)));
        }
        let req = http.get(url);
        async move {
            let r = req.send().await.expect("answer");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or_default())
        }
    };

    let ours = token_of(&alice).await;
    assert_eq!(ours["token_type"], "Bearer");
    assert_eq!(ours["matrix_server_name"], name.as_str());
    assert_eq!(ours["expires_in"], 3600);
    let our_token = ours["access_token"].as_str().expect("token").to_owned();
    let theirs = token_of(&bob).await;
    assert_eq!(theirs["matrix_server_name"], synapse.server_name.as_str());
    let their_token = theirs["access_token"].as_str().expect("token").to_owned();

    let (status, v) = userinfo(&name, Some(&our_token)).await;
    assert_eq!((status, &v), (200, &json!({ "sub": alice.user_id })));
    let (status, v) = userinfo(&synapse.server_name, Some(&their_token)).await;
    assert_eq!(
        (status, &v),
        (200, &json!({ "sub": bob.user_id })),
        "Synapse's shape is ours"
    );
    for (server, token) in [(&name, &their_token), (&synapse.server_name, &our_token)] {
        let (status, v) = userinfo(server, Some(token)).await;
        assert_eq!(
            (status, v["errcode"].as_str()),
            (401, Some("M_UNKNOWN_TOKEN")),
            "{server}: {v}"
        );
    }
    let (status, v) = userinfo(&name, None).await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (401, Some("M_MISSING_TOKEN")),
        "{v}"
    );
    // An access token is not an OpenID token.
    let (status, v) = userinfo(&name, alice.token.as_deref()).await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (401, Some("M_UNKNOWN_TOKEN")),
        "{v}"
    );

    // Only for oneself; the body must be a JSON object; a token is needed.
    alice
        .post(
            &format!(
                "/_matrix/client/v3/user/{}/openid/request_token",
                enc(&bob.user_id)
            ),
            json!({}),
        )
        .await
        .expect_err(403, "M_FORBIDDEN");
    let path = format!(
        "/_matrix/client/v3/user/{}/openid/request_token",
        enc(&alice.user_id)
    );
    alice
        .raw(Method::POST, &path, b"{nope".to_vec())
        .await
        .expect_err(400, "M_NOT_JSON");
    srv.client()
        .post(&path, json!({}))
        .await
        .expect_err(401, "M_MISSING_TOKEN");
    srv.cleanup().await;
}
