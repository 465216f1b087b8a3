//! Sending events (spec: Client-Server API, "Sending events to a room", "Redactions").

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::put,
};
use ganglion_core::Error;
use ganglion_http::{ApiResult, Authed, route};
use ganglion_rooms::{EventTemplate, SendRequest};
use ruma::{
    OwnedRoomId,
    api::client::{message::send_message_event, redact::redact_event, state::send_state_event},
};
use serde_json::{Value, json};

use crate::ClientApi;

/// Registers the send routes, including the empty-state-key forms without a trailing
/// segment, which the router cannot match through ruma's path.
pub fn routes(r: Router<ClientApi>) -> Router<ClientApi> {
    let r = route::<send_message_event::v3::Request, _, _, _>(r, send_message_event);
    let r = route::<send_state_event::v3::Request, _, _, _>(r, send_state_event);
    let r = route::<redact_event::v3::Request, _, _, _>(r, redact_event);
    let mut r = r;
    for prefix in ["/_matrix/client/r0", "/_matrix/client/v3"] {
        r = r.route(
            &format!("{prefix}/rooms/{{roomId}}/state/{{eventType}}/"),
            put(send_state_empty_key),
        );
        r = r.route(
            &format!("{prefix}/rooms/{{roomId}}/state/{{eventType}}"),
            put(send_state_empty_key),
        );
    }
    r
}

fn content_of(raw: &str) -> ApiResult<Value> {
    match serde_json::from_str::<Value>(raw) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Error::bad_json("event content must be a JSON object").into()),
        Err(e) => Err(Error::bad_json(e.to_string()).into()),
    }
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`.
pub async fn send_message_event(
    State(api): State<ClientApi>,
    req: Authed<send_message_event::v3::Request>,
) -> ApiResult<Json<Value>> {
    api.message_limit.check(req.user().as_str())?;
    let content = content_of(req.body.body.json().get())?;
    let out = api
        .rooms
        .send(SendRequest {
            room_id: req.body.room_id.clone(),
            sender: req.user().to_owned(),
            template: EventTemplate::message(&req.body.event_type.to_string(), content),
            txn: Some((req.device().to_string(), req.body.txn_id.to_string())),
        })
        .await?;
    Ok(Json(json!({ "event_id": out.event_id })))
}

async fn send_state(
    api: &ClientApi,
    user: &ruma::UserId,
    room_id: OwnedRoomId,
    kind: String,
    state_key: String,
    content: Value,
) -> ApiResult<Json<Value>> {
    api.message_limit.check(user.as_str())?;
    if kind == "m.room.canonical_alias" {
        check_aliases(api, &room_id, &content).await?;
    }
    let out = api
        .rooms
        .send(SendRequest {
            room_id,
            sender: user.to_owned(),
            template: EventTemplate::state(&kind, &state_key, content),
            txn: None,
        })
        .await?;
    Ok(Json(json!({ "event_id": out.event_id })))
}

/// Spec: a canonical alias event naming an alias that does not point to the room is
/// refused with `M_BAD_ALIAS`… we answer `M_BAD_JSON`-class 400s via `InvalidParam`.
async fn check_aliases(api: &ClientApi, room_id: &OwnedRoomId, content: &Value) -> ApiResult<()> {
    let mut aliases: Vec<&str> = content
        .get("alt_aliases")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(a) = content.get("alias").and_then(Value::as_str) {
        aliases.push(a);
    }
    for alias in aliases {
        if ruma::RoomAliasId::parse(alias).is_err() {
            return Err(Error::invalid_param(format!("{alias} is not a valid alias")).into());
        }
        let target = api
            .rooms
            .store()
            .select_alias(alias)
            .await
            .map_err(ganglion_rooms::storage_error)?;
        if target.is_none_or(|(r, _)| r != room_id.as_str()) {
            return Err(Error::new(
                ganglion_core::ErrorKind::InvalidParam,
                format!("{alias} does not point to this room"),
            )
            .into());
        }
    }
    Ok(())
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`.
pub async fn send_state_event(
    State(api): State<ClientApi>,
    req: Authed<send_state_event::v3::Request>,
) -> ApiResult<Json<Value>> {
    let content = content_of(req.body.body.json().get())?;
    send_state(
        &api,
        req.user(),
        req.body.room_id.clone(),
        req.body.event_type.to_string(),
        req.body.state_key.clone(),
        content,
    )
    .await
}

/// The empty-state-key form `PUT …/state/{eventType}` (and with a trailing slash).
pub async fn send_state_empty_key(
    State(api): State<ClientApi>,
    Path((room_id, kind)): Path<(String, String)>,
    identity: ganglion_http::Identity,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let room_id =
        OwnedRoomId::try_from(room_id).map_err(|e| Error::invalid_param(e.to_string()))?;
    let content = match serde_json::from_slice::<Value>(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return Err(Error::bad_json("event content must be a JSON object").into()),
        Err(e) if e.is_syntax() || e.is_eof() => {
            return Err(Error::new(ganglion_core::ErrorKind::NotJson, e.to_string()).into());
        }
        Err(e) => return Err(Error::bad_json(e.to_string()).into()),
    };
    send_state(
        &api,
        &identity.user_id,
        room_id,
        kind,
        String::new(),
        content,
    )
    .await
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}`.
pub async fn redact_event(
    State(api): State<ClientApi>,
    req: Authed<redact_event::v3::Request>,
) -> ApiResult<Json<Value>> {
    api.message_limit.check(req.user().as_str())?;
    let (_, rules) = api.rooms.room_version(req.body.room_id.as_str()).await?;
    let mut content = json!({});
    if let Some(r) = &req.body.reason {
        content["reason"] = json!(r);
    }
    if rules.redaction.content_field_redacts {
        content["redacts"] = json!(req.body.event_id);
    }
    let out = api
        .rooms
        .send(SendRequest {
            room_id: req.body.room_id.clone(),
            sender: req.user().to_owned(),
            template: EventTemplate {
                kind: "m.room.redaction".into(),
                content,
                state_key: None,
                redacts: Some(req.body.event_id.clone()),
            },
            txn: Some((
                req.device().to_string(),
                format!("redact:{}", req.body.txn_id),
            )),
        })
        .await?;
    Ok(Json(json!({ "event_id": out.event_id })))
}
