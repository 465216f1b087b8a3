//! Push-rule evaluation and unread counts: a scripted conversation (a plain message,
//! mentions by display name, by `m.mentions` and by `@room`, a notice, an edit, a
//! reaction, a reply, a keyword rule, a thread, a one-to-one room and a muted room) and
//! the counts bob's /sync shows per room and per thread, before and after read receipts
//! (unthreaded, threaded, private). The same script runs on Ganglion and on Synapse from
//! PyPI in one test, and the counts must be equal; on Ganglion they must also be the
//! numbers the spec's default rules give. `/notifications` is checked on Ganglion.

use std::time::Duration;

use ganglion_tests::{Backend, Client, TestServer, client::enc};
use serde_json::{Value, json};

use crate::{
    all3,
    federation::{Synapse, test_ca},
};

/// Sends an event of `kind` with `content`; its event id.
async fn send(c: &Client, room: &str, kind: &str, content: Value) -> String {
    let txn = format!("t{}", rand::random::<u64>());
    let r = c
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/{kind}/{txn}", enc(room)),
            content,
        )
        .await
        .ok();
    r["event_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no event id: {r}"))
        .to_owned()
}

fn text(body: &str) -> Value {
    json!({ "msgtype": "m.text", "body": body })
}

async fn receipt(c: &Client, room: &str, kind: &str, event: &str, thread: Option<&str>) {
    let body = thread.map_or_else(|| json!({}), |t| json!({ "thread_id": t }));
    c.post(
        &format!(
            "/_matrix/client/v3/rooms/{}/receipt/{kind}/{}",
            enc(room),
            enc(event)
        ),
        body,
    )
    .await
    .ok();
}

/// The rooms and events of one run, by what they are for.
struct Run {
    bob: Client,
    main: String,
    dm: String,
    muted: String,
    root: String,
    after_mentions: String,
    in_thread: String,
    dm_last: String,
}

/// The conversation, from user registration to the last message, on the server at
/// `base`. Bob is the user whose counts are read.
async fn converse(base: &str) -> Run {
    let tag = rand::random::<u32>();
    let user = |name: &str| {
        let name = format!("{name}{tag}");
        async move { Client::new(base).register(&name, "password-123").await }
    };
    let alice = user("alice").await;
    let bob = user("bob").await;
    let carol = user("carol").await;
    bob.put(
        &format!(
            "/_matrix/client/v3/profile/{}/displayname",
            enc(&bob.user_id)
        ),
        json!({ "displayname": "Bobby Tables" }),
    )
    .await
    .ok();
    let room = |invite: Vec<String>| {
        let alice = alice.clone();
        async move {
            alice
                .create_room(json!({ "preset": "private_chat", "invite": invite }))
                .await
        }
    };
    let main = room(vec![bob.user_id.clone(), carol.user_id.clone()]).await;
    let dm = room(vec![bob.user_id.clone()]).await;
    let muted = room(vec![bob.user_id.clone()]).await;
    for r in [&main, &dm, &muted] {
        bob.join(r).await;
    }
    carol.join(&main).await;
    // Bob mutes a room and highlights a keyword.
    bob.put(
        &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&muted)),
        json!({ "actions": [] }),
    )
    .await
    .ok();
    bob.put(
        "/_matrix/client/v3/pushrules/global/content/cake",
        json!({ "pattern": "cake", "actions": ["notify", { "set_tweak": "highlight" }] }),
    )
    .await
    .ok();

    let root = send(&alice, &main, "m.room.message", text("hello all")).await;
    send(
        &alice,
        &main,
        "m.room.message",
        text("hey Bobby Tables, how are you"),
    )
    .await;
    let mut mention = text("ping");
    mention["m.mentions"] = json!({ "user_ids": [bob.user_id] });
    send(&alice, &main, "m.room.message", mention).await;
    let mut everyone = text("@room meeting now");
    everyone["m.mentions"] = json!({ "room": true });
    let after_mentions = send(&alice, &main, "m.room.message", everyone).await;
    send(
        &alice,
        &main,
        "m.room.message",
        json!({ "msgtype": "m.notice", "body": "a bot speaks" }),
    )
    .await;
    send(
        &alice,
        &main,
        "m.room.message",
        json!({
            "msgtype": "m.text", "body": "* hello everyone",
            "m.new_content": { "msgtype": "m.text", "body": "hello everyone" },
            "m.relates_to": { "rel_type": "m.replace", "event_id": root },
        }),
    )
    .await;
    send(
        &alice,
        &main,
        "m.reaction",
        json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": root, "key": "👍" } }),
    )
    .await;
    send(
        &alice,
        &main,
        "m.room.message",
        json!({
            "msgtype": "m.text", "body": "a reply", "m.mentions": {},
            "m.relates_to": { "m.in_reply_to": { "event_id": root } },
        }),
    )
    .await;
    send(&alice, &main, "m.room.message", text("who wants cake?")).await;
    let in_thread = send(
        &carol,
        &main,
        "m.room.message",
        json!({
            "msgtype": "m.text", "body": "in a thread",
            "m.relates_to": { "rel_type": "m.thread", "event_id": root,
                "is_falling_back": true, "m.in_reply_to": { "event_id": root } },
        }),
    )
    .await;
    send(&carol, &main, "m.room.message", text("hi from carol")).await;
    send(&alice, &dm, "m.room.message", text("just us")).await;
    let dm_last = send(&alice, &dm, "m.room.message", text("still just us")).await;
    send(&alice, &muted, "m.room.message", text("nobody hears this")).await;
    Run {
        bob,
        main,
        dm,
        muted,
        root,
        after_mentions,
        in_thread,
        dm_last,
    }
}

/// Bob's counts as (main room, main's thread, one-to-one room, muted room), each
/// `[notifications, highlights]`, read by an initial sync that counts threads apart.
/// Polls until two reads a moment apart agree (a server may count after it answers).
async fn counts(run: &Run) -> [[i64; 2]; 4] {
    let read = || async {
        // A filter never used before: Synapse answers a repeated sync from a cache.
        let nonce = format!("x.nonce.{}", rand::random::<u64>());
        let filter = json!({ "room": { "timeline": {
            "limit": 1, "unread_thread_notifications": true, "not_types": [nonce] } } });
        let path = format!(
            "/_matrix/client/v3/sync?filter={}",
            enc(&filter.to_string())
        );
        let s = run.bob.get(&path).await.ok();
        let room = |id: &str| s["rooms"]["join"][id].clone();
        let pair = |v: &Value| {
            [
                v["notification_count"].as_i64().unwrap_or(0),
                v["highlight_count"].as_i64().unwrap_or(0),
            ]
        };
        let main = room(&run.main);
        [
            pair(&main["unread_notifications"]),
            pair(&main["unread_thread_notifications"][&run.root]),
            pair(&room(&run.dm)["unread_notifications"]),
            pair(&room(&run.muted)["unread_notifications"]),
        ]
    };
    let mut last = read().await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = read().await;
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// The receipts: unthreaded on the `@room` message, threaded on the thread's message,
/// private on the one-to-one room's last.
async fn read_some(run: &Run) {
    receipt(&run.bob, &run.main, "m.read", &run.after_mentions, None).await;
    receipt(
        &run.bob,
        &run.main,
        "m.read",
        &run.in_thread,
        Some(&run.root),
    )
    .await;
    receipt(&run.bob, &run.dm, "m.read.private", &run.dm_last, None).await;
}

/// What the spec's default rules (with Synapse's legacy mention rules) give: main has
/// the plain message, the display-name mention, the `m.mentions` mention, the `@room`,
/// the reply, the keyword and carol's message (4 highlights); its thread one message;
/// the one-to-one room two; the muted room none.
const BEFORE: [[i64; 2]; 4] = [[7, 4], [1, 0], [2, 0], [0, 0]];
/// After the receipts: main keeps the reply, the keyword and carol's message.
const AFTER: [[i64; 2]; 4] = [[3, 1], [0, 0], [0, 0], [0, 0]];

async fn unread_counts_follow_the_rules(b: Backend) {
    let srv = TestServer::start(b).await;
    let run = converse(&srv.base.clone()).await;
    assert_eq!(counts(&run).await, BEFORE);

    // /notifications: newest first, pages, highlights only.
    let all = run
        .bob
        .get("/_matrix/client/v3/notifications?limit=100")
        .await
        .ok();
    let list = all["notifications"].as_array().cloned().unwrap_or_default();
    // The counted ten, and the three invites (listed, not counted: they came before
    // bob joined).
    assert_eq!(list.len(), 13, "{all}");
    let invites = list
        .iter()
        .filter(|n| n["event"]["content"]["membership"] == "invite")
        .count();
    assert_eq!(invites, 3);
    assert_eq!(list[0]["event"]["content"]["body"], "still just us");
    assert_eq!(list[0]["room_id"], json!(run.dm));
    assert_eq!(list[0]["read"], json!(false));
    assert!(
        list.iter()
            .all(|n| n["actions"].is_array() && n["ts"].is_i64())
    );
    let page = run
        .bob
        .get("/_matrix/client/v3/notifications?limit=4")
        .await
        .ok();
    let next = page["next_token"].as_str().unwrap_or_default().to_owned();
    let rest = run
        .bob
        .get(&format!(
            "/_matrix/client/v3/notifications?limit=100&from={next}"
        ))
        .await
        .ok();
    let body = |n: &Value| n["event"]["event_id"].clone();
    let paged: Vec<Value> = page["notifications"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(rest["notifications"].as_array().into_iter().flatten())
        .map(body)
        .collect();
    assert_eq!(paged, list.iter().map(body).collect::<Vec<_>>());
    let highlights = run
        .bob
        .get("/_matrix/client/v3/notifications?only=highlight")
        .await
        .ok();
    assert_eq!(
        highlights["notifications"].as_array().map_or(0, Vec::len),
        4
    );
    run.bob
        .get("/_matrix/client/v3/notifications?from=nonsense")
        .await
        .expect_err(400, "M_INVALID_PARAM");

    read_some(&run).await;
    assert_eq!(counts(&run).await, AFTER);
    let after = run.bob.get("/_matrix/client/v3/notifications").await.ok();
    let read: Vec<bool> = after["notifications"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["read"].as_bool())
        .collect();
    // Unread: main's last three, and the muted room's invite (no receipt there).
    assert_eq!(read.iter().filter(|r| !**r).count(), 4, "{after}");
    srv.cleanup().await;
}
all3!(unread_counts_follow_the_rules);

/// The same conversation on Synapse and on Ganglion: the same counts, before and after
/// the receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_match_synapse() {
    let ca = test_ca();
    let synapse = Synapse::start(&ca);
    let srv = TestServer::start(Backend::Sqlite).await;
    let theirs = converse(&synapse.client).await;
    let ours = converse(&srv.base.clone()).await;
    let (theirs_before, ours_before) = (counts(&theirs).await, counts(&ours).await);
    assert_eq!(
        ours_before, theirs_before,
        "before the receipts (Ganglion, Synapse)"
    );
    read_some(&theirs).await;
    read_some(&ours).await;
    let ours_after = counts(&ours).await;
    // Synapse applies receipts to its counts in the background: wait (up to 30 s) for
    // it to settle on ours, then compare.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut theirs_after = counts(&theirs).await;
    while theirs_after != ours_after && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        theirs_after = counts(&theirs).await;
    }
    assert_eq!(
        ours_after, theirs_after,
        "after the receipts (Ganglion, Synapse)"
    );
    srv.cleanup().await;
}

/// `push.enabled = false`: the same conversation notifies nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_off_counts_nothing() {
    let srv = TestServer::start_with(Backend::Sqlite, "[push]\nenabled = false\n").await;
    let run = converse(&srv.base.clone()).await;
    assert_eq!(counts(&run).await, [[0, 0]; 4]);
    let list = run.bob.get("/_matrix/client/v3/notifications").await.ok();
    assert_eq!(list["notifications"], json!([]));
    srv.cleanup().await;
}
