//! The `/pushrules` handlers (spec: Client-Server API, "Push Rules: API"; docs/push.md).
//! A user's ruleset is their `m.push_rules` account data, so a change is a
//! read-modify-write of it, one at a time per user (this process is main, the only
//! writer of account data), followed by dropping the evaluator's cached copy.
//!
//! Written over plain paths rather than ruma's request types so that every bad input
//! gets Synapse's answer (an unknown kind, a malformed rule or a missing `before` rule
//! is 400 `M_UNKNOWN`, as `synapse/rest/client/push_rule.py` has it) instead of a parse
//! error.

use std::{
    collections::{HashMap, hash_map::DefaultHasher},
    hash::{Hash, Hasher},
    sync::Arc,
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    routing::get,
};
use bytes::Bytes;
use ganglion_core::{Error, Result};
use ganglion_http::{ApiResult, Authed, Identity, route};
use ganglion_push::{
    RulesetCache,
    rules::{PUSH_RULES, content, ruleset_of},
};
use ganglion_rooms::{
    format::{Shape, Viewer},
    storage_error,
};
use ruma::{
    OwnedRoomId, OwnedUserId, UserId,
    api::client::push::get_notifications,
    push::{
        Action, InsertPushRuleError, NewConditionalPushRule, NewPatternedPushRule, NewPushRule,
        NewSimplePushRule, PushCondition, RemovePushRuleError, RuleKind, Ruleset,
    },
};
use serde_json::{Value, json};

use crate::ClientApi;

/// Lock stripes: users hash onto these, so concurrent changes of one user's rules queue
/// while other users' go ahead, with a bounded number of locks.
const STRIPES: usize = 64;

/// What the push-rule handlers share: the per-user change locks and the evaluator's
/// ruleset cache. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PushRulesState {
    cache: RulesetCache,
    locks: Arc<Vec<tokio::sync::Mutex<()>>>,
}

impl PushRulesState {
    /// The state over the cache the evaluator reads.
    pub fn new(cache: RulesetCache) -> PushRulesState {
        PushRulesState {
            cache,
            locks: Arc::new((0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect()),
        }
    }

    /// The user's ruleset as stored (merged with the current defaults).
    async fn ruleset(&self, api: &ClientApi, user: &UserId) -> Result<Ruleset> {
        let stored = match api
            .user_data
            .account_data(user.as_str(), "", PUSH_RULES)
            .await
        {
            Ok(v) => Some(v.to_string()),
            Err(e) if e.kind == ganglion_core::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(ruleset_of(user, stored.as_deref()))
    }

    /// Applies `change` to the user's ruleset and stores it as account data (so the
    /// user's long-polls wake with the new rules), then drops the evaluator's copy. An
    /// error from `change` stores nothing.
    async fn change<F>(&self, api: &ClientApi, user: &UserId, change: F) -> Result<()>
    where
        F: FnOnce(&mut Ruleset) -> Result<()>,
    {
        let _queue = self.lock(user).lock().await;
        let mut rules = self.ruleset(api, user).await?;
        change(&mut rules)?;
        api.user_data
            .set_account_data(user.as_str(), "", PUSH_RULES, &content(&rules)?)
            .await?;
        self.cache.invalidate(user);
        Ok(())
    }

    fn lock(&self, user: &UserId) -> &tokio::sync::Mutex<()> {
        let mut h = DefaultHasher::new();
        user.as_str().hash(&mut h);
        let i = usize::try_from(h.finish() % STRIPES as u64).unwrap_or(0);
        &self.locks[i]
    }
}

/// The rule kinds of the `global` scope, in priority order.
const KINDS: [&str; 5] = ["override", "content", "room", "sender", "underride"];

/// Registers every `/pushrules` route, under `r0` and `v3`, and `/notifications`.
pub(crate) fn routes(r: Router<ClientApi>) -> Router<ClientApi> {
    let mut r = route::<get_notifications::v3::Request, _, _, _>(r, get_notifications);
    for v in ["r0", "v3"] {
        let base = format!("/_matrix/client/{v}/pushrules");
        r = r
            .route(&format!("{base}/"), get(get_all))
            .route(&format!("{base}/global/"), get(get_global))
            .route(&format!("{base}/global/{{kind}}/"), get(get_kind))
            .route(
                &format!("{base}/global/{{kind}}/{{rule_id}}"),
                get(get_rule).put(put_rule).delete(delete_rule),
            )
            .route(
                &format!("{base}/global/{{kind}}/{{rule_id}}/{{attr}}"),
                get(get_attr).put(put_attr),
            );
    }
    r
}

fn kind_of(kind: &str) -> Result<RuleKind, Error> {
    if KINDS.contains(&kind) {
        Ok(RuleKind::from(kind))
    } else {
        Err(Error::unknown(format!("unknown rule kind: {kind}")))
    }
}

/// The ruleset as JSON (the shape `GET /pushrules/global/` answers).
fn as_json(rules: &Ruleset) -> ApiResult<Value> {
    serde_json::to_value(rules).map_err(|e| Error::internal(format!("push rules: {e}")).into())
}

/// One rule of the ruleset, as JSON; 404 `M_NOT_FOUND` when there is none.
fn rule_json(rules: &Ruleset, kind: &str, rule_id: &str) -> ApiResult<Value> {
    let all = as_json(rules)?;
    all[kind]
        .as_array()
        .and_then(|list| list.iter().find(|r| r["rule_id"] == rule_id))
        .cloned()
        .ok_or_else(|| not_found().into())
}

fn not_found() -> Error {
    Error::not_found("The push rule was not found.")
}

/// The body as JSON (`{}` when empty).
fn body_json(body: &Bytes) -> ApiResult<Value> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| {
        Error::new(
            ganglion_core::ErrorKind::NotJson,
            format!("content not JSON: {e}"),
        )
        .into()
    })
}

/// `GET /pushrules/`.
async fn get_all(State(api): State<ClientApi>, who: Identity) -> ApiResult<Json<Value>> {
    let rules = api.push_rules.ruleset(&api, &who.user_id).await?;
    Ok(Json(json!({ "global": as_json(&rules)? })))
}

/// `GET /pushrules/global/`.
async fn get_global(State(api): State<ClientApi>, who: Identity) -> ApiResult<Json<Value>> {
    let rules = api.push_rules.ruleset(&api, &who.user_id).await?;
    Ok(Json(as_json(&rules)?))
}

/// `GET /pushrules/global/{kind}/`: the rules of one kind (as Synapse).
async fn get_kind(
    State(api): State<ClientApi>,
    who: Identity,
    Path(kind): Path<String>,
) -> ApiResult<Json<Value>> {
    kind_of(&kind)?;
    let rules = api.push_rules.ruleset(&api, &who.user_id).await?;
    Ok(Json(as_json(&rules)?[kind.as_str()].take()))
}

/// `GET /pushrules/global/{kind}/{ruleId}`.
async fn get_rule(
    State(api): State<ClientApi>,
    who: Identity,
    Path((kind, rule_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    kind_of(&kind)?;
    let rules = api.push_rules.ruleset(&api, &who.user_id).await?;
    Ok(Json(rule_json(&rules, &kind, &rule_id)?))
}

/// `GET /pushrules/global/{kind}/{ruleId}/{enabled|actions}`.
async fn get_attr(
    State(api): State<ClientApi>,
    who: Identity,
    Path((kind, rule_id, attr)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    kind_of(&kind)?;
    check_attr(&attr)?;
    let rules = api.push_rules.ruleset(&api, &who.user_id).await?;
    let rule = rule_json(&rules, &kind, &rule_id)?;
    Ok(Json(json!({ attr.as_str(): rule[attr.as_str()] })))
}

fn check_attr(attr: &str) -> ApiResult<()> {
    if attr == "enabled" || attr == "actions" {
        Ok(())
    } else {
        Err(Error::new(
            ganglion_core::ErrorKind::Unrecognized,
            format!("unknown push rule attribute: {attr}"),
        )
        .into())
    }
}

/// `PUT /pushrules/global/{kind}/{ruleId}?before=…&after=…`: creates or replaces a rule
/// of the user's own. Server-default rules (ids starting with `.`) cannot be created or
/// replaced, only enabled, disabled or given other actions.
async fn put_rule(
    State(api): State<ClientApi>,
    who: Identity,
    Path((kind, rule_id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let kind = kind_of(&kind)?;
    let body = body_json(&body)?;
    let rule = new_rule(kind, &rule_id, &body)?;
    let (after, before) = (q.get("after").cloned(), q.get("before").cloned());
    api.push_rules
        .change(&api, &who.user_id, |rules| {
            rules
                .insert(rule, after.as_deref(), before.as_deref())
                .map_err(|e| insert_error(&e))
        })
        .await?;
    Ok(Json(json!({})))
}

fn insert_error(e: &InsertPushRuleError) -> Error {
    match e {
        InsertPushRuleError::UnknownRuleId => Error::unknown("before/after rule not found"),
        InsertPushRuleError::ServerDefaultRuleId => {
            Error::unknown("cannot add new rule_ids that start with '.'")
        }
        InsertPushRuleError::InvalidRuleId => Error::unknown("rule_id may not contain slashes"),
        other => Error::unknown(other.to_string()),
    }
}

/// The rule a `PUT` body describes. Checks what Synapse checks: override and underride
/// rules need `conditions` (each with a `kind`), content rules a `pattern`, room and
/// sender rules an id that is a room or user id, and every rule known `actions`.
fn new_rule(kind: RuleKind, rule_id: &str, body: &Value) -> Result<NewPushRule, Error> {
    if rule_id.contains('/') || rule_id.contains('\\') {
        return Err(Error::unknown("rule_id may not contain slashes"));
    }
    if rule_id.starts_with('.') {
        return Err(Error::unknown(
            "cannot add new rule_ids that start with '.'",
        ));
    }
    let actions = actions_of(body)?;
    let id = rule_id.to_owned();
    Ok(match kind {
        RuleKind::Override | RuleKind::Underride => {
            let conditions = conditions_of(body)?;
            let rule = NewConditionalPushRule::new(id, conditions, actions);
            if kind == RuleKind::Override {
                NewPushRule::Override(rule)
            } else {
                NewPushRule::Underride(rule)
            }
        }
        RuleKind::Content => {
            let Some(pattern) = body.get("pattern").and_then(Value::as_str) else {
                return Err(Error::unknown("Content rule missing 'pattern'"));
            };
            NewPushRule::Content(NewPatternedPushRule::new(id, pattern.to_owned(), actions))
        }
        RuleKind::Room => {
            let room = OwnedRoomId::try_from(rule_id)
                .map_err(|_| Error::unknown("a room rule's id must be a room id"))?;
            NewPushRule::Room(NewSimplePushRule::new(room, actions))
        }
        RuleKind::Sender => {
            let user = OwnedUserId::try_from(rule_id)
                .map_err(|_| Error::unknown("a sender rule's id must be a user id"))?;
            NewPushRule::Sender(NewSimplePushRule::new(user, actions))
        }
        _ => return Err(Error::unknown("unknown rule kind")),
    })
}

/// `conditions`: an array of objects with a `kind` each, in the spec's shape for the
/// kinds it defines (a kind it does not define is kept, and never matches).
fn conditions_of(body: &Value) -> Result<Vec<PushCondition>, Error> {
    let Some(list) = body.get("conditions").and_then(Value::as_array) else {
        return Err(Error::unknown("Missing 'conditions'"));
    };
    list.iter()
        .map(|c| {
            if !c.get("kind").is_some_and(Value::is_string) {
                return Err(Error::unknown("Condition without 'kind'"));
            }
            serde_json::from_value(c.clone())
                .map_err(|e| Error::unknown(format!("malformed condition {c}: {e}")))
        })
        .collect()
}

/// `actions`: each `notify`, `dont_notify`, `coalesce` or a `set_tweak` object.
fn actions_of(body: &Value) -> Result<Vec<Action>, Error> {
    let Some(list) = body.get("actions").and_then(Value::as_array) else {
        return Err(Error::unknown("No actions found"));
    };
    let mut out = Vec::with_capacity(list.len());
    for a in list {
        let known = match a {
            Value::String(s) => matches!(s.as_str(), "notify" | "dont_notify" | "coalesce"),
            Value::Object(o) => o.get("set_tweak").is_some_and(Value::is_string),
            _ => false,
        };
        if !known {
            return Err(Error::unknown(format!("Unrecognised action {a}")));
        }
        // `dont_notify` and `coalesce` are obsolete: they mean no action (spec).
        if matches!(a.as_str(), Some("dont_notify" | "coalesce")) {
            continue;
        }
        out.push(
            serde_json::from_value(a.clone())
                .map_err(|e| Error::unknown(format!("Unrecognised action {a}: {e}")))?,
        );
    }
    Ok(out)
}

/// `PUT /pushrules/global/{kind}/{ruleId}/{enabled|actions}`: also for server-default
/// rules; 404 `M_NOT_FOUND` for a rule the user does not have.
async fn put_attr(
    State(api): State<ClientApi>,
    who: Identity,
    Path((kind, rule_id, attr)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let kind = kind_of(&kind)?;
    check_attr(&attr)?;
    let body = body_json(&body)?;
    if attr == "enabled" {
        let Some(enabled) = body.get("enabled").and_then(Value::as_bool) else {
            return Err(Error::unknown("'enabled' must be true or false").into());
        };
        api.push_rules
            .change(&api, &who.user_id, |rules| {
                rules
                    .set_enabled(kind, &rule_id, enabled)
                    .map_err(|_| not_found())
            })
            .await?;
    } else {
        let actions = actions_of(&body)?;
        api.push_rules
            .change(&api, &who.user_id, |rules| {
                rules
                    .set_actions(kind, &rule_id, actions)
                    .map_err(|_| not_found())
            })
            .await?;
    }
    Ok(Json(json!({})))
}

/// `DELETE /pushrules/global/{kind}/{ruleId}`: only the user's own rules; a
/// server-default rule is 404 `M_NOT_FOUND`, as Synapse answers (it is not theirs).
async fn delete_rule(
    State(api): State<ClientApi>,
    who: Identity,
    Path((kind, rule_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let kind = kind_of(&kind)?;
    api.push_rules
        .change(&api, &who.user_id, |rules| {
            rules.remove(kind, &rule_id).map_err(|e| match e {
                RemovePushRuleError::ServerDefault => {
                    Error::not_found("server-default rules cannot be deleted")
                }
                _ => not_found(),
            })
        })
        .await?;
    Ok(Json(json!({})))
}

/// Notifications per `/notifications` page when the client gives no `limit`.
const NOTIFICATIONS_PAGE: i64 = 20;

/// `GET /_matrix/client/v3/notifications?from=…&limit=…&only=highlight`: the user's
/// notifications, newest first, each with whether it is read; `next_token` continues
/// (spec: "Listing Notifications").
pub async fn get_notifications(
    State(api): State<ClientApi>,
    req: Authed<get_notifications::v3::Request>,
) -> ApiResult<Json<Value>> {
    let b = &req.body;
    let before = match b.from.as_deref() {
        None | Some("") => None,
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| Error::invalid_param(format!("invalid from token {t:?}")))?,
        ),
    };
    let limit = b
        .limit
        .map_or(NOTIFICATIONS_PAGE, |l| {
            i64::try_from(u64::from(l)).unwrap_or(i64::MAX)
        })
        .clamp(1, 100);
    let only_highlight = match b.only.as_deref() {
        None | Some("") => false,
        Some("highlight") => true,
        Some(other) => {
            return Err(Error::invalid_param(format!("unknown `only` value {other:?}")).into());
        }
    };
    let store = api.rooms.store();
    let rows = store
        .select_notifications(req.user().as_str(), before, limit, only_highlight)
        .await
        .map_err(storage_error)?;
    let ids: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
    let events = store.select_events(&ids).await.map_err(storage_error)?;
    let viewer = Viewer {
        user_id: req.user().as_str(),
        device_id: req.device().as_str(),
    };
    let formatted = api
        .rooms
        .format_events(&events, Some(viewer), Shape::Client)
        .await?;
    let by_id: HashMap<&str, &Value> = events
        .iter()
        .map(|e| e.event_id.as_str())
        .zip(formatted.iter())
        .collect();
    let mut notifications = Vec::with_capacity(rows.len());
    for r in &rows {
        let Some(event) = by_id.get(r.event_id.as_str()) else {
            continue;
        };
        let actions: Value = serde_json::from_str(&r.actions).unwrap_or_else(|_| json!([]));
        notifications.push(json!({
            "actions": actions,
            "event": event,
            "read": r.read,
            "room_id": r.room_id,
            "ts": r.ts,
        }));
    }
    let next = (i64::try_from(rows.len()).unwrap_or(0) == limit)
        .then(|| rows.last().map(|r| r.stream_ordering.to_string()))
        .flatten();
    let mut body = json!({ "notifications": notifications });
    if let Some(next) = next {
        body["next_token"] = json!(next);
    }
    Ok(Json(body))
}
