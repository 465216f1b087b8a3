//! Between two Ganglions, and one: who may read what over federation, the errors for
//! bad parameters, and `/hierarchy` for clients.

use std::collections::BTreeSet;

use ganglion_tests::{Backend, TestServer, client::enc};
use serde_json::{Value, json};

use super::{add_child, hierarchy_ids, now_ms, room_ids};
use crate::{
    both,
    federation::{https, signed_get, test_ca},
};

/// Between two Ganglions, with requests signed by hand as server `one`: `/hierarchy`
/// shows what a server may see (and nothing of a room it may not, or that we are not
/// in), `/timestamp_to_event` answers servers in the room only, `/publicRooms` filters
/// by body, and every bad parameter gets the spec's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_reads_check_who_asks_and_what() {
    let ca = test_ca();
    let (one, one_name) = TestServer::start_federating(Backend::Postgres, &ca).await;
    let (two, two_name) = TestServer::start_federating(Backend::Sqlite, &ca).await;
    let one_key = ganglion_federation_client::ServerKey::load_or_generate(
        &one.dir.join("signing.key").display().to_string(),
    )
    .expect("server one's key");
    let http = https(&ca);
    let get = |path: String| {
        let (http, key, one_name, two_name) = (&http, &one_key, &one_name, &two_name);
        async move { signed_get(http, key, one_name, two_name, &path).await }
    };
    let carol = two.user("carol").await;

    // A space on two with a public child, an invite-only child, and one server one is in.
    let space = carol
        .create_room(json!({ "preset": "public_chat", "name": "S", "visibility": "public", "creation_content": { "type": "m.space" } }))
        .await;
    let open = carol
        .create_room(json!({ "preset": "public_chat", "name": "Open", "visibility": "public" }))
        .await;
    let closed = carol
        .create_room(json!({ "preset": "private_chat", "name": "Closed" }))
        .await;
    let shared = carol
        .create_room(json!({ "preset": "private_chat", "name": "Shared" }))
        .await;
    add_child(
        &carol,
        &space,
        &open,
        &two_name,
        json!({ "suggested": true }),
    )
    .await;
    add_child(&carol, &space, &closed, &two_name, json!({})).await;
    add_child(&carol, &space, &shared, &two_name, json!({})).await;
    // A child no one here is in, and a removed child (no via).
    add_child(&carol, &space, "!nowhere:localhost", &two_name, json!({})).await;
    carol
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                enc(&space),
                enc("!gone:localhost")
            ),
            json!({}),
        )
        .await
        .ok();
    let dave = one.user("dave").await;
    carol
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&shared)),
            json!({ "user_id": dave.user_id }),
        )
        .await
        .ok();
    let r = dave
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&shared)),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let (status, h) = get(format!("/_matrix/federation/v1/hierarchy/{}", enc(&space))).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["room"]["room_id"], space.as_str());
    assert_eq!(h["room"]["room_type"], "m.space");
    let states: BTreeSet<&str> = h["room"]["children_state"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["state_key"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        states,
        BTreeSet::from([
            open.as_str(),
            closed.as_str(),
            shared.as_str(),
            "!nowhere:localhost"
        ]),
        "the removed child is left out: {h}"
    );
    assert_eq!(
        room_ids(&h, "children"),
        BTreeSet::from([open.clone(), shared.clone()]),
        "{h}"
    );
    assert_eq!(h["inaccessible_children"], json!([closed]), "{h}");
    let (_, h) = get(format!(
        "/_matrix/federation/v1/hierarchy/{}?suggested_only=true",
        enc(&space)
    ))
    .await;
    assert_eq!(
        room_ids(&h, "children"),
        BTreeSet::from([open.clone()]),
        "{h}"
    );
    assert_eq!(
        h["room"]["children_state"].as_array().map(Vec::len),
        Some(1)
    );
    let (status, h) = get(format!("/_matrix/federation/v1/hierarchy/{}", enc(&closed))).await;
    assert_eq!(
        (status, h["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{h}"
    );
    let (status, h) = get(format!("/_matrix/federation/v1/hierarchy/{}", enc(&shared))).await;
    assert_eq!(
        status, 200,
        "a server with a member sees a private room: {h}"
    );
    assert_eq!(h["room"]["children_state"], json!([]));
    for (path, code) in [
        (
            format!(
                "/_matrix/federation/v1/hierarchy/{}",
                enc("!nowhere:localhost")
            ),
            "M_NOT_FOUND",
        ),
        (
            "/_matrix/federation/v1/hierarchy/not-a-room".to_owned(),
            "M_INVALID_PARAM",
        ),
        (
            "/_matrix/federation/v1/hierarchy/%FF".to_owned(),
            "M_INVALID_PARAM",
        ),
        (
            "/_matrix/federation/v1/timestamp_to_event/%FF?ts=0&dir=f".to_owned(),
            "M_INVALID_PARAM",
        ),
        (
            format!(
                "/_matrix/federation/v1/hierarchy/{}?suggested_only=maybe",
                enc(&space)
            ),
            "M_INVALID_PARAM",
        ),
    ] {
        let (status, v) = get(path.clone()).await;
        assert_eq!(v["errcode"], code, "{path}: {status} {v}");
        assert!(status == 400 || status == 404, "{path}: {status}");
    }

    // /timestamp_to_event: server one is in `shared`, not in `open`.
    let first = carol.send_text(&shared, "hello").await;
    let ts = now_ms() + 60_000;
    let (status, v) = get(format!(
        "/_matrix/federation/v1/timestamp_to_event/{}?ts=0&dir=f",
        enc(&shared)
    ))
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["origin_server_ts"].as_i64().is_some(), "{v}");
    let (status, v) = get(format!(
        "/_matrix/federation/v1/timestamp_to_event/{}?ts={ts}&dir=b",
        enc(&shared)
    ))
    .await;
    assert_eq!(
        (status, v["event_id"].as_str()),
        (200, Some(first.as_str())),
        "{v}"
    );
    for (query, status, code) in [
        (format!("ts={ts}&dir=f"), 404, "M_NOT_FOUND"),
        ("ts=0&dir=x".to_owned(), 400, "M_INVALID_PARAM"),
        ("ts=soon&dir=f".to_owned(), 400, "M_INVALID_PARAM"),
        ("dir=f".to_owned(), 400, "M_MISSING_PARAM"),
        ("ts=0".to_owned(), 400, "M_MISSING_PARAM"),
    ] {
        let (s, v) = get(format!(
            "/_matrix/federation/v1/timestamp_to_event/{}?{query}",
            enc(&shared)
        ))
        .await;
        assert_eq!(
            (s, v["errcode"].as_str()),
            (status, Some(code)),
            "{query}: {v}"
        );
    }
    let (s, v) = get(format!(
        "/_matrix/federation/v1/timestamp_to_event/{}?ts=0&dir=f",
        enc(&open)
    ))
    .await;
    assert_eq!(
        (s, v["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{v}"
    );
    let r = http
        .get(format!(
            "https://{two_name}/_matrix/federation/v1/timestamp_to_event/{}?ts=0&dir=f",
            enc(&shared)
        ))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 401, "unsigned");

    // /publicRooms: GET and a signed POST with a filter; bad parameters.
    let (status, v) = get("/_matrix/federation/v1/publicRooms".to_owned()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        room_ids(&v, "chunk"),
        BTreeSet::from([space.clone(), open.clone()])
    );
    let (_, v) = get("/_matrix/federation/v1/publicRooms?limit=1".to_owned()).await;
    assert_eq!(v["chunk"].as_array().map(Vec::len), Some(1), "{v}");
    let next = v["next_batch"].as_str().expect("next_batch").to_owned();
    let (_, v2) = get(format!(
        "/_matrix/federation/v1/publicRooms?limit=1&since={}",
        enc(&next)
    ))
    .await;
    assert_eq!(v2["chunk"].as_array().map(Vec::len), Some(1), "{v2}");
    assert_ne!(v["chunk"][0]["room_id"], v2["chunk"][0]["room_id"]);
    assert!(v2.get("next_batch").is_none(), "{v2}");
    let (_, v) =
        get("/_matrix/federation/v1/publicRooms?third_party_instance_id=irc".to_owned()).await;
    assert_eq!(v["chunk"], json!([]), "no third-party networks here: {v}");
    for query in [
        "limit=ten",
        "limit=-1",
        "since=garbage",
        "include_all_networks=maybe",
        "include_all_networks=true&third_party_instance_id=irc",
    ] {
        let (s, v) = get(format!("/_matrix/federation/v1/publicRooms?{query}")).await;
        assert_eq!(
            (s, v["errcode"].as_str()),
            (400, Some("M_INVALID_PARAM")),
            "{query}: {v}"
        );
    }
    let post = |body: Vec<u8>| {
        let path = "/_matrix/federation/v1/publicRooms";
        let content = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| ruma::CanonicalJsonValue::try_from(v).ok());
        let auth = ganglion_federation_client::xmatrix::sign(
            &one_key.pair,
            &one_name,
            &two_name,
            "POST",
            path,
            content,
        )
        .expect("sign");
        let req = http
            .post(format!("https://{two_name}{path}"))
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(body);
        async move {
            let r = req.send().await.expect("answer");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or_default())
        }
    };
    let (status, v) = post(
        serde_json::to_vec(&json!({ "filter": { "generic_search_term": "open" } })).expect("json"),
    )
    .await;
    assert_eq!(
        (status, room_ids(&v, "chunk")),
        (200, BTreeSet::from([open.clone()])),
        "{v}"
    );
    let (_, v) = post(
        serde_json::to_vec(&json!({ "filter": { "room_types": ["m.space"] } })).expect("json"),
    )
    .await;
    assert_eq!(
        room_ids(&v, "chunk"),
        BTreeSet::from([space.clone()]),
        "{v}"
    );
    let (_, v) =
        post(serde_json::to_vec(&json!({ "filter": { "room_types": [null] } })).expect("json"))
            .await;
    assert_eq!(room_ids(&v, "chunk"), BTreeSet::from([open.clone()]), "{v}");
    for (body, code) in [
        (b"{not json".to_vec(), "M_NOT_JSON"),
        (br#"{"limit":"ten"}"#.to_vec(), "M_BAD_JSON"),
        (br#"[1]"#.to_vec(), "M_BAD_JSON"),
        (
            br#"{"include_all_networks":true,"third_party_instance_id":"irc"}"#.to_vec(),
            "M_INVALID_PARAM",
        ),
        (br#"{"since":"x"}"#.to_vec(), "M_INVALID_PARAM"),
    ] {
        let text = String::from_utf8_lossy(&body).into_owned();
        let (s, v) = post(body).await;
        assert_eq!((s, v["errcode"].as_str()), (400, Some(code)), "{text}: {v}");
    }

    // Server one's own client reads server two's directory over federation, filtered.
    let filtered = dave
        .post(
            &format!("/_matrix/client/v3/publicRooms?server={}", enc(&two_name)),
            json!({ "filter": { "room_types": ["m.space"] } }),
        )
        .await
        .ok();
    assert_eq!(
        room_ids(&filtered, "chunk"),
        BTreeSet::from([space.clone()]),
        "{filtered}"
    );
    one.cleanup().await;
    two.cleanup().await;
}

/// `/hierarchy` for clients: depth first in the spec's child order, only rooms the user
/// may see, `suggested_only`, `max_depth`, pages (`limit`, `from`) that may not change
/// those, loops walked once, and 403 for a room the user may not see.
async fn space_hierarchy_for_clients(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let bob = srv.user("bob").await;
    let name = alice
        .user_id
        .split_once(':')
        .map(|(_, s)| s.to_owned())
        .unwrap_or_default();
    let space = |n: &str, preset: &str| {
        alice.create_room(
            json!({ "preset": preset, "name": n, "creation_content": { "type": "m.space" } }),
        )
    };
    let root = space("root", "public_chat").await;
    let sub = space("sub", "public_chat").await;
    let a = alice
        .create_room(json!({ "preset": "public_chat", "name": "a" }))
        .await;
    let b_room = alice
        .create_room(json!({ "preset": "public_chat", "name": "b" }))
        .await;
    let secret = alice
        .create_room(json!({ "preset": "private_chat", "name": "secret" }))
        .await;
    let deep = alice
        .create_room(json!({ "preset": "public_chat", "name": "deep" }))
        .await;
    // root: sub (order "1"), secret ("2"), a ("3", suggested), b (no order); sub: deep,
    // and root again (a loop).
    add_child(&alice, &root, &sub, &name, json!({ "order": "1" })).await;
    add_child(&alice, &root, &secret, &name, json!({ "order": "2" })).await;
    add_child(
        &alice,
        &root,
        &a,
        &name,
        json!({ "order": "3", "suggested": true }),
    )
    .await;
    add_child(&alice, &root, &b_room, &name, json!({})).await;
    add_child(&alice, &sub, &deep, &name, json!({})).await;
    add_child(&alice, &sub, &root, &name, json!({})).await;
    let path = |q: &str| format!("/_matrix/client/v1/rooms/{}/hierarchy{q}", enc(&root));

    // Alice sees everything, depth first; bob not the invite-only room.
    let all = alice.get(&path("")).await.ok();
    assert_eq!(
        hierarchy_ids(&all),
        vec![
            root.clone(),
            sub.clone(),
            deep.clone(),
            secret.clone(),
            a.clone(),
            b_room.clone()
        ],
        "{all}"
    );
    assert!(all.get("next_batch").is_none());
    let first = &all["rooms"][0];
    assert_eq!(first["name"], "root");
    assert_eq!(first["room_type"], "m.space");
    assert_eq!(first["num_joined_members"], 1);
    assert!(first["room_version"].is_string(), "{first}");
    assert_eq!(first["children_state"].as_array().map(Vec::len), Some(4));
    assert_eq!(first["children_state"][0]["type"], "m.space.child");
    assert_eq!(first["children_state"][0]["sender"], alice.user_id.as_str());
    assert!(first["children_state"][0]["origin_server_ts"].is_i64());
    assert_eq!(all["rooms"][2]["children_state"], json!([]), "not a space");
    let bobs = bob.get(&path("")).await.ok();
    assert_eq!(
        hierarchy_ids(&bobs),
        vec![
            root.clone(),
            sub.clone(),
            deep.clone(),
            a.clone(),
            b_room.clone()
        ],
        "{bobs}"
    );
    let suggested = alice.get(&path("?suggested_only=true")).await.ok();
    assert_eq!(
        hierarchy_ids(&suggested),
        vec![root.clone(), a.clone()],
        "{suggested}"
    );
    let shallow = alice.get(&path("?max_depth=1")).await.ok();
    assert_eq!(
        hierarchy_ids(&shallow),
        vec![
            root.clone(),
            sub.clone(),
            secret.clone(),
            a.clone(),
            b_room.clone()
        ],
        "{shallow}"
    );
    let only = alice.get(&path("?max_depth=0")).await.ok();
    assert_eq!(hierarchy_ids(&only), vec![root.clone()], "{only}");

    // Pages of two, then the token with other parameters.
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let q = match &from {
            Some(f) => format!("?limit=2&from={}", enc(f)),
            None => "?limit=2".to_owned(),
        };
        let page = bob.get(&path(&q)).await.ok();
        let ids = hierarchy_ids(&page);
        assert!(!ids.is_empty() && ids.len() <= 2, "{page}");
        seen.extend(ids);
        match page["next_batch"].as_str() {
            Some(n) => from = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, hierarchy_ids(&bobs));
    let token = bob.get(&path("?limit=1")).await.ok()["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    for q in [
        format!("?from={}&suggested_only=true", enc(&token)),
        format!("?from={}&max_depth=3", enc(&token)),
        "?from=nonsense".to_owned(),
        "?limit=0".to_owned(),
        "?limit=-1".to_owned(),
        "?max_depth=-1".to_owned(),
        "?suggested_only=maybe".to_owned(),
    ] {
        bob.get(&path(&q)).await.expect_err(400, "M_INVALID_PARAM");
    }

    // A room the user may not see, one we do not have, and no token.
    bob.get(&format!(
        "/_matrix/client/v1/rooms/{}/hierarchy",
        enc(&secret)
    ))
    .await
    .expect_err(403, "M_FORBIDDEN");
    bob.get(&format!(
        "/_matrix/client/v1/rooms/{}/hierarchy",
        enc(&format!("!unknown:{name}"))
    ))
    .await
    .expect_err(403, "M_FORBIDDEN");
    srv.client()
        .get(&path(""))
        .await
        .expect_err(401, "M_MISSING_TOKEN");
    // Once invited, bob sees the secret room too.
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&secret)),
            json!({ "user_id": bob.user_id }),
        )
        .await
        .ok();
    let h = bob.get(&path("?max_depth=1")).await.ok();
    assert!(hierarchy_ids(&h).contains(&secret), "{h}");
    srv.cleanup().await;
}
both!(space_hierarchy_for_clients);
