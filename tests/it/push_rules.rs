//! Push rules over HTTP: the default ruleset in /sync and at /pushrules, the user's own
//! rules (put with before/after, get, delete, enabled, actions) waking long-polls, and
//! the errors, none of which stores anything.

use std::time::Duration;

use ganglion_tests::{Backend, Client, TestServer, client::enc};
use reqwest::Method;
use serde_json::{Value, json};

use crate::all3;

const RULES: &str = "/_matrix/client/v3/pushrules";

fn ids(rules: &Value, kind: &str) -> Vec<String> {
    rules[kind]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["rule_id"].as_str().map(str::to_owned))
        .collect()
}

/// The `m.push_rules` content of a sync response, if it has one.
fn synced_rules(s: &Value) -> Option<Value> {
    s["account_data"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .map(|e| e["content"]["global"].clone())
}

fn rule_path(kind: &str, id: &str) -> String {
    format!("{RULES}/global/{kind}/{}", enc(id))
}

async fn global(c: &Client) -> Value {
    c.get(&format!("{RULES}/")).await.ok()["global"].clone()
}

async fn push_rules_defaults_and_changes(b: Backend) {
    let srv = TestServer::start(b).await;
    let alice = srv.user("alice").await;
    let localpart = alice
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();

    // The default ruleset, in the initial sync and at /pushrules alike.
    let first = alice.sync(None, 0).await;
    let synced = synced_rules(&first).unwrap_or_else(|| panic!("no m.push_rules: {first}"));
    let rules = global(&alice).await;
    assert_eq!(synced, rules);
    let overrides = ids(&rules, "override");
    assert_eq!(
        overrides.first().map(String::as_str),
        Some(".m.rule.master")
    );
    for id in [
        ".m.rule.suppress_notices",
        ".m.rule.invite_for_me",
        ".m.rule.member_event",
        ".m.rule.is_user_mention",
        ".m.rule.contains_display_name",
        ".m.rule.is_room_mention",
        ".m.rule.roomnotif",
        ".m.rule.tombstone",
        ".m.rule.reaction",
        ".m.rule.room.server_acl",
        ".m.rule.suppress_edits",
    ] {
        assert!(
            overrides.contains(&id.to_owned()),
            "{id} missing: {overrides:?}"
        );
    }
    let underrides = ids(&rules, "underride");
    for id in [
        ".m.rule.call",
        ".m.rule.encrypted_room_one_to_one",
        ".m.rule.room_one_to_one",
        ".m.rule.message",
        ".m.rule.encrypted",
    ] {
        assert!(
            underrides.contains(&id.to_owned()),
            "{id} missing: {underrides:?}"
        );
    }
    let user_name = &rules["content"][0];
    assert_eq!(user_name["rule_id"], ".m.rule.contains_user_name");
    assert_eq!(user_name["pattern"], json!(localpart));
    assert_eq!(user_name["default"], json!(true));

    // A new room rule wakes an incremental long-poll with the new rules.
    let since = first["next_batch"].as_str().unwrap_or_default().to_owned();
    let poll = {
        let alice = alice.clone();
        tokio::spawn(async move { alice.sync(Some(&since), 20_000).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice
        .put(
            &rule_path("room", "!foo:example.com"),
            json!({ "actions": ["notify", { "set_tweak": "sound", "value": "default" }] }),
        )
        .await
        .ok();
    let woke = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap_or_else(|_| panic!("the long-poll did not wake"))
        .unwrap_or_else(|e| panic!("{e}"));
    let after = synced_rules(&woke).unwrap_or_else(|| panic!("no m.push_rules: {woke}"));
    assert_eq!(ids(&after, "room"), ["!foo:example.com"]);
    let room_rule = alice.get(&rule_path("room", "!foo:example.com")).await.ok();
    assert_eq!(room_rule["default"], json!(false));
    assert_eq!(room_rule["enabled"], json!(true));
    assert_eq!(room_rule["actions"][1]["set_tweak"], "sound");

    // Override rules in the order before/after ask for, always below the master rule.
    let cond = json!({ "conditions": [{ "kind": "event_match", "key": "content.msgtype", "pattern": "m.notice" }], "actions": [] });
    alice
        .put(&rule_path("override", "a"), cond.clone())
        .await
        .ok();
    alice
        .put(&rule_path("override", "b"), cond.clone())
        .await
        .ok();
    alice
        .put(
            &format!("{}?after=a", rule_path("override", "c")),
            cond.clone(),
        )
        .await
        .ok();
    alice
        .put(
            &format!("{}?before=b", rule_path("override", "d")),
            cond.clone(),
        )
        .await
        .ok();
    let order = ids(&global(&alice).await, "override");
    assert_eq!(
        order[..5],
        [".m.rule.master", "d", "b", "a", "c"],
        "{order:?}"
    );

    // A content rule with a glob; replaced in place by a second PUT.
    alice
        .put(
            &rule_path("content", "cake"),
            json!({ "pattern": "cake*lie", "actions": ["notify"] }),
        )
        .await
        .ok();
    alice
        .put(
            &rule_path("content", "cake"),
            json!({ "pattern": "pie*", "actions": ["notify"] }),
        )
        .await
        .ok();
    let cake = alice.get(&rule_path("content", "cake")).await.ok();
    assert_eq!(cake["pattern"], "pie*");

    // Default rules can be disabled, enabled and given other actions.
    let master = rule_path("override", ".m.rule.master");
    alice
        .put(&format!("{master}/enabled"), json!({ "enabled": true }))
        .await
        .ok();
    let enabled = alice.get(&format!("{master}/enabled")).await.ok();
    assert_eq!(enabled, json!({ "enabled": true }));
    let message = rule_path("underride", ".m.rule.message");
    alice
        .put(&format!("{message}/actions"), json!({ "actions": [] }))
        .await
        .ok();
    let actions = alice.get(&format!("{message}/actions")).await.ok();
    assert_eq!(actions, json!({ "actions": [] }));

    // A user's rule can be deleted; a default one cannot.
    alice
        .req(Method::DELETE, &rule_path("content", "cake"), None)
        .await
        .ok();
    alice
        .get(&rule_path("content", "cake"))
        .await
        .expect_err(404, "M_NOT_FOUND");
    alice
        .req(Method::DELETE, &master, None)
        .await
        .expect_err(404, "M_NOT_FOUND");
    assert!(ids(&global(&alice).await, "override").contains(&".m.rule.master".to_owned()));

    // Another user's rules are their own.
    let bob = srv.user("bob").await;
    assert!(ids(&global(&bob).await, "room").is_empty());

    // Bad input: the spec's (and Synapse's) errors, and nothing changes.
    let before = global(&alice).await;
    let bad = [
        (
            rule_path("nonsense", "x"),
            json!({ "actions": [] }),
            400,
            "M_UNKNOWN",
        ),
        (
            rule_path("override", "with/slash"),
            cond.clone(),
            400,
            "M_UNKNOWN",
        ),
        (
            rule_path("override", ".mine"),
            cond.clone(),
            400,
            "M_UNKNOWN",
        ),
        (
            format!("{}?before=missing", rule_path("override", "e")),
            cond.clone(),
            400,
            "M_UNKNOWN",
        ),
        (
            rule_path("override", "f"),
            json!({ "actions": [] }),
            400,
            "M_UNKNOWN",
        ),
        (
            rule_path("override", "g"),
            json!({ "conditions": [{ "key": "x", "pattern": "y" }], "actions": [] }),
            400,
            "M_UNKNOWN",
        ),
        (
            rule_path("override", "h"),
            json!({ "conditions": [{ "kind": "event_match", "pattern": 5 }], "actions": [] }),
            400,
            "M_UNKNOWN",
        ),
        (
            rule_path("content", "i"),
            json!({ "actions": [] }),
            400,
            "M_UNKNOWN",
        ),
        (
            rule_path("room", "not-a-room"),
            json!({ "actions": [] }),
            400,
            "M_UNKNOWN",
        ),
        (
            rule_path("sender", "j"),
            json!({ "actions": ["bark"] }),
            400,
            "M_UNKNOWN",
        ),
        (
            rule_path("underride", "k"),
            json!({ "conditions": [] }),
            400,
            "M_UNKNOWN",
        ),
        (
            format!("{master}/enabled"),
            json!({ "enabled": "yes" }),
            400,
            "M_UNKNOWN",
        ),
        (
            format!("{}/enabled", rule_path("override", "missing")),
            json!({ "enabled": true }),
            404,
            "M_NOT_FOUND",
        ),
        (
            format!("{}/actions", rule_path("override", "missing")),
            json!({ "actions": [] }),
            404,
            "M_NOT_FOUND",
        ),
        (format!("{master}/colour"), json!({}), 404, "M_UNRECOGNIZED"),
    ];
    for (path, body, status, errcode) in bad {
        let r = alice.put(&path, body.clone()).await;
        assert_eq!(
            (r.status, r.errcode()),
            (status, errcode),
            "PUT {path} {body}: {}",
            r.body
        );
    }
    alice
        .raw(
            Method::PUT,
            &rule_path("override", "l"),
            b"{not json".to_vec(),
        )
        .await
        .expect_err(400, "M_NOT_JSON");
    alice
        .get(&rule_path("override", "missing"))
        .await
        .expect_err(404, "M_NOT_FOUND");
    srv.client()
        .get(&format!("{RULES}/"))
        .await
        .expect_err(401, "M_MISSING_TOKEN");
    assert_eq!(global(&alice).await, before);
    srv.cleanup().await;
}
all3!(push_rules_defaults_and_changes);
