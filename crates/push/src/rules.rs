//! Push rules (spec: Client-Server API, "Push Rules"): each user's ruleset, the server's
//! default rules with the user's own and their changes, kept as the user's `m.push_rules`
//! global account data (`{"global": ruleset}`, what `/sync` delivers). A user who never
//! changed a rule has none stored and gets the default ruleset; a stored one is merged
//! with the current defaults when read, so defaults added by a newer server reach
//! everyone (docs/push.md).
//!
//! Changes are read-modify-write of the whole ruleset, serialized per user by a lock on
//! main, which alone writes account data.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    sync::Arc,
};

use ganglion_bus::Row;
use ganglion_core::{Error, Result};
use ganglion_rooms::{storage_error, streams::StreamWriter};
use ganglion_storage::Store;
use ruma::{
    UserId,
    push::{ConditionalPushRule, PatternedPushRule, Ruleset},
};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// The account-data type the ruleset is stored under.
pub const PUSH_RULES: &str = "m.push_rules";

/// Lock stripes: users hash onto these, so concurrent changes of one user's rules queue
/// while other users' go ahead, with a bounded number of locks.
const STRIPES: usize = 64;

/// The push-rule service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PushRules {
    store: Store,
    account_data: Arc<StreamWriter>,
    locks: Arc<Vec<Mutex<()>>>,
}

/// The server's default rules for `user`: the spec's predefined rules (ruma's
/// `Ruleset::server_default`) plus the legacy mention rules that Synapse still has and
/// v1.19 dropped: `.m.rule.contains_display_name` after `.m.rule.is_user_mention`,
/// `.m.rule.roomnotif` after `.m.rule.is_room_mention`, and the content rule
/// `.m.rule.contains_user_name`. Events without `m.mentions` (most clients' until
/// recently, and every bridge's) still highlight by name, as on Synapse.
pub fn server_default(user: &UserId) -> Ruleset {
    let mut rules = Ruleset::server_default(user);
    let highlight = json!([
        "notify",
        { "set_tweak": "sound", "value": "default" },
        { "set_tweak": "highlight" }
    ]);
    let legacy = [
        (
            ".m.rule.is_user_mention",
            json!({
                "rule_id": ".m.rule.contains_display_name", "default": true, "enabled": true,
                "conditions": [{ "kind": "contains_display_name" }],
                "actions": highlight,
            }),
        ),
        (
            ".m.rule.is_room_mention",
            json!({
                "rule_id": ".m.rule.roomnotif", "default": true, "enabled": true,
                "conditions": [
                    { "kind": "event_match", "key": "content.body", "pattern": "@room" },
                    { "kind": "sender_notification_permission", "key": "room" }
                ],
                "actions": ["notify", { "set_tweak": "highlight" }],
            }),
        ),
    ];
    for (after, rule) in legacy {
        let Ok(rule) = serde_json::from_value::<ConditionalPushRule>(rule) else {
            continue;
        };
        let at = rules
            .override_
            .get_index_of(after)
            .map_or(rules.override_.len(), |i| i + 1);
        rules.override_.shift_insert(at, rule);
    }
    let user_name = json!({
        "rule_id": ".m.rule.contains_user_name", "default": true, "enabled": true,
        "pattern": user.localpart(),
        "actions": highlight,
    });
    if let Ok(rule) = serde_json::from_value::<PatternedPushRule>(user_name) {
        rules.content.shift_insert(0, rule);
    }
    rules
}

/// The ruleset a user has: `stored` (their `m.push_rules` content, if any) merged with
/// the server's current defaults, or the defaults alone. A stored value that does not
/// parse is replaced by the defaults (and logged): rules are never a reason to fail.
pub fn ruleset_of(user: &UserId, stored: Option<&str>) -> Ruleset {
    let defaults = server_default(user);
    let Some(text) = stored else {
        return defaults;
    };
    match serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("global").cloned())
        .map(serde_json::from_value::<Ruleset>)
    {
        Some(Ok(mut rules)) => {
            rules.update_with_server_default(defaults);
            rules
        }
        _ => {
            tracing::warn!(user = %user, "stored m.push_rules does not parse; using the defaults");
            defaults
        }
    }
}

/// The `m.push_rules` account-data content for `rules`.
pub fn content(rules: &Ruleset) -> Result<Value> {
    let global =
        serde_json::to_value(rules).map_err(|e| Error::internal(format!("push rules: {e}")))?;
    Ok(json!({ "global": global }))
}

impl PushRules {
    /// The service over the store and main's account-data writer.
    pub fn new(store: Store, account_data: Arc<StreamWriter>) -> PushRules {
        PushRules {
            store,
            account_data,
            locks: Arc::new((0..STRIPES).map(|_| Mutex::new(())).collect()),
        }
    }

    /// The user's ruleset.
    pub async fn ruleset(&self, user: &UserId) -> Result<Ruleset> {
        let stored = self
            .store
            .select_account_data(user.as_str(), "", PUSH_RULES)
            .await
            .map_err(storage_error)?;
        Ok(ruleset_of(user, stored.as_deref()))
    }

    /// Applies `change` to the user's ruleset and stores the result, at the next
    /// account-data position (so the user's long-polls wake with the new rules). Changes
    /// of one user are applied one at a time; an error from `change` stores nothing.
    pub async fn change<F>(&self, user: &UserId, change: F) -> Result<()>
    where
        F: FnOnce(&mut Ruleset) -> Result<()>,
    {
        let _queue = self.lock(user).lock().await;
        let mut rules = self.ruleset(user).await?;
        change(&mut rules)?;
        let text = content(&rules)?.to_string();
        let row = Row {
            user_id: user.to_string(),
            kind: PUSH_RULES.to_owned(),
            ..Default::default()
        };
        let (store, user_id) = (&self.store, user.as_str());
        self.account_data
            .write(vec![row], |pos| async move {
                store
                    .upsert_account_data(user_id, "", PUSH_RULES, &text, pos)
                    .await
                    .map_err(storage_error)
            })
            .await?;
        Ok(())
    }

    fn lock(&self, user: &UserId) -> &Mutex<()> {
        let mut h = DefaultHasher::new();
        user.as_str().hash(&mut h);
        let i = usize::try_from(h.finish() % STRIPES as u64).unwrap_or(0);
        &self.locks[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> ruma::OwnedUserId {
        UserId::parse("@alice:example.org").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn nothing_stored_is_the_default_ruleset() {
        let rules = ruleset_of(&alice(), None);
        let v = serde_json::to_value(&rules).unwrap_or_default();
        let ids: Vec<&str> = v["override"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["rule_id"].as_str())
            .collect();
        assert_eq!(ids.first(), Some(&".m.rule.master"));
        // The legacy mention rules sit where Synapse has them.
        let at = |id: &str| ids.iter().position(|i| *i == id);
        assert_eq!(
            at(".m.rule.contains_display_name"),
            at(".m.rule.is_user_mention").map(|i| i + 1),
            "{ids:?}"
        );
        assert_eq!(
            at(".m.rule.roomnotif"),
            at(".m.rule.is_room_mention").map(|i| i + 1),
            "{ids:?}"
        );
        assert_eq!(v["content"][0]["pattern"], "alice");
    }

    #[test]
    fn a_stored_ruleset_keeps_changes_and_gains_new_defaults() {
        let mut rules = ruleset_of(&alice(), None);
        rules
            .set_enabled(ruma::push::RuleKind::Override, ".m.rule.master", true)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut stored = content(&rules).unwrap_or_default();
        // A ruleset stored by an older server that lacked a default rule.
        if let Some(list) = stored["global"]["override"].as_array_mut() {
            list.retain(|r| r["rule_id"] != ".m.rule.tombstone");
        }
        let back = ruleset_of(&alice(), Some(&stored.to_string()));
        let master = back.get(ruma::push::RuleKind::Override, ".m.rule.master");
        assert!(master.is_some_and(|r| r.enabled()));
        assert!(
            back.get(ruma::push::RuleKind::Override, ".m.rule.tombstone")
                .is_some()
        );
    }

    #[test]
    fn an_unreadable_stored_ruleset_falls_back_to_the_defaults() {
        let rules = ruleset_of(&alice(), Some("{\"global\": 5}"));
        assert!(
            rules
                .get(ruma::push::RuleKind::Override, ".m.rule.master")
                .is_some_and(|r| !r.enabled())
        );
    }
}
