//! Push rules (spec: Client-Server API, "Push Rules"): each user's ruleset, the server's
//! default rules with the user's own and their changes, kept as the user's `m.push_rules`
//! global account data (`{"global": ruleset}`, what `/sync` delivers). A user who never
//! changed a rule has none stored and gets the default ruleset; a stored one is merged
//! with the current defaults when read, so defaults added by a newer server reach
//! everyone (docs/push.md).
//!
//! The `/pushrules` handlers (in `client-api`) change the stored ruleset; this module
//! reads it, and caches it for the evaluator.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use ganglion_core::{Error, Result};
use ganglion_storage::Store;
use ruma::{
    UserId,
    push::{ConditionalPushRule, PatternedPushRule, Ruleset},
};
use serde_json::{Value, json};

/// The account-data type the ruleset is stored under.
pub const PUSH_RULES: &str = "m.push_rules";

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

/// Every user's ruleset, cached on main for the evaluator: loaded from the store on
/// first use and dropped when the user changes a rule ([`RulesetCache::invalidate`],
/// called by the `/pushrules` handlers after they write, on main too). A load that
/// overlaps an invalidation is not kept (an epoch counter tells), so a stale ruleset
/// never outlives a change. Bounded: past `CAPACITY` users it starts again empty.
#[derive(Clone, Debug)]
pub struct RulesetCache {
    store: Store,
    inner: Arc<Mutex<HashMap<String, Arc<Ruleset>>>>,
    epoch: Arc<AtomicU64>,
}

/// Users whose rulesets the cache holds at most (about 8 KiB each).
const CAPACITY: usize = 10_000;

impl RulesetCache {
    /// An empty cache over the store.
    pub fn new(store: Store) -> RulesetCache {
        RulesetCache {
            store,
            inner: Arc::new(Mutex::new(HashMap::new())),
            epoch: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The user's ruleset, from the cache or the store.
    pub async fn get(&self, user: &UserId) -> Result<Arc<Ruleset>> {
        if let Some(r) = self.lock().get(user.as_str()) {
            return Ok(r.clone());
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let stored = self
            .store
            .select_account_data(user.as_str(), "", PUSH_RULES)
            .await
            .map_err(|e| Error::internal(format!("push rules of {user}: {e}")))?;
        let rules = Arc::new(ruleset_of(user, stored.as_deref()));
        let mut map = self.lock();
        if self.epoch.load(Ordering::Acquire) == epoch {
            if map.len() >= CAPACITY {
                map.clear();
            }
            map.insert(user.to_string(), rules.clone());
        }
        Ok(rules)
    }

    /// Forgets the user's ruleset (they changed it).
    pub fn invalidate(&self, user: &UserId) {
        let mut map = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        map.remove(user.as_str());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Ruleset>>> {
        // A panic while holding the lock leaves a map that is still valid.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
