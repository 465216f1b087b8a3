//! The `/pushrules` handlers (spec: Client-Server API, "Push Rules: API"). Written over
//! plain paths rather than ruma's request types so that every bad input gets Synapse's
//! answer (an unknown kind, a malformed rule or a missing `before` rule is 400 `M_UNKNOWN`,
//! as `synapse/rest/client/push_rule.py` has it) instead of a parse error.

use std::collections::HashMap;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    routing::get,
};
use bytes::Bytes;
use ganglion_core::Error;
use ganglion_http::{ApiResult, Identity};
use ruma::{
    OwnedRoomId, OwnedUserId,
    push::{
        Action, InsertPushRuleError, NewConditionalPushRule, NewPatternedPushRule, NewPushRule,
        NewSimplePushRule, PushCondition, RemovePushRuleError, RuleKind, Ruleset,
    },
};
use serde_json::{Value, json};

use crate::PushApi;

/// The rule kinds of the `global` scope, in priority order.
const KINDS: [&str; 5] = ["override", "content", "room", "sender", "underride"];

/// Registers every `/pushrules` route, under `r0` and `v3`.
pub(crate) fn routes(mut r: Router<PushApi>) -> Router<PushApi> {
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
async fn get_all(State(api): State<PushApi>, who: Identity) -> ApiResult<Json<Value>> {
    let rules = api.rules.ruleset(&who.user_id).await?;
    Ok(Json(json!({ "global": as_json(&rules)? })))
}

/// `GET /pushrules/global/`.
async fn get_global(State(api): State<PushApi>, who: Identity) -> ApiResult<Json<Value>> {
    let rules = api.rules.ruleset(&who.user_id).await?;
    Ok(Json(as_json(&rules)?))
}

/// `GET /pushrules/global/{kind}/`: the rules of one kind (as Synapse).
async fn get_kind(
    State(api): State<PushApi>,
    who: Identity,
    Path(kind): Path<String>,
) -> ApiResult<Json<Value>> {
    kind_of(&kind)?;
    let rules = api.rules.ruleset(&who.user_id).await?;
    Ok(Json(as_json(&rules)?[kind.as_str()].take()))
}

/// `GET /pushrules/global/{kind}/{ruleId}`.
async fn get_rule(
    State(api): State<PushApi>,
    who: Identity,
    Path((kind, rule_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    kind_of(&kind)?;
    let rules = api.rules.ruleset(&who.user_id).await?;
    Ok(Json(rule_json(&rules, &kind, &rule_id)?))
}

/// `GET /pushrules/global/{kind}/{ruleId}/{enabled|actions}`.
async fn get_attr(
    State(api): State<PushApi>,
    who: Identity,
    Path((kind, rule_id, attr)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    kind_of(&kind)?;
    check_attr(&attr)?;
    let rules = api.rules.ruleset(&who.user_id).await?;
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
    State(api): State<PushApi>,
    who: Identity,
    Path((kind, rule_id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let kind = kind_of(&kind)?;
    let body = body_json(&body)?;
    let rule = new_rule(kind, &rule_id, &body)?;
    let (after, before) = (q.get("after").cloned(), q.get("before").cloned());
    api.rules
        .change(&who.user_id, |rules| {
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
    State(api): State<PushApi>,
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
        api.rules
            .change(&who.user_id, |rules| {
                rules
                    .set_enabled(kind, &rule_id, enabled)
                    .map_err(|_| not_found())
            })
            .await?;
    } else {
        let actions = actions_of(&body)?;
        api.rules
            .change(&who.user_id, |rules| {
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
    State(api): State<PushApi>,
    who: Identity,
    Path((kind, rule_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let kind = kind_of(&kind)?;
    api.rules
        .change(&who.user_id, |rules| {
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
