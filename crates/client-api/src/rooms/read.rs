//! Reading rooms (spec: Client-Server API, "Getting events for a room", "/context").

use axum::{
    Json, Router,
    extract::{FromRef, Path, State},
    routing::get,
};
use ganglion_core::{Error, token::PageToken};
use ganglion_http::{ApiResult, Authed, Identity, route};
use ganglion_rooms::{
    Rooms,
    format::{Shape, Viewer},
    reads::MessagesQuery,
};
use ruma::api::{
    Direction,
    client::{
        context::get_context,
        membership::{get_member_events, joined_members},
        message::get_message_events,
        room::{get_event_by_timestamp, get_room_event},
        state::{get_state_event_for_key, get_state_events},
    },
};
use serde_json::{Map, Value, json};

use crate::rooms::event_filter;

/// Registers the read routes: stateless reads of the record, which any process with a
/// (read-only) [`Rooms`] can serve, so sync workers serve them too.
pub fn routes<S>(r: Router<S>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Rooms: FromRef<S>,
{
    let r = route::<get_message_events::v3::Request, _, _, _>(r, get_message_events);
    let r = route::<get_context::v3::Request, _, _, _>(r, get_context);
    let r = route::<get_room_event::v3::Request, _, _, _>(r, get_room_event);
    let r = route::<get_state_events::v3::Request, _, _, _>(r, get_state_events);
    let r = route::<get_state_event_for_key::v3::Request, _, _, _>(r, get_state_event_for_key);
    let r = route::<get_member_events::v3::Request, _, _, _>(r, get_member_events);
    let r = route::<joined_members::v3::Request, _, _, _>(r, joined_members);
    let mut r = route::<get_event_by_timestamp::v1::Request, _, _, _>(r, get_event_by_timestamp);
    for prefix in ["/_matrix/client/r0", "/_matrix/client/v3"] {
        r = r.route(
            &format!("{prefix}/rooms/{{roomId}}/state/{{eventType}}/"),
            get(get_state_empty_key),
        );
        r = r.route(
            &format!("{prefix}/rooms/{{roomId}}/state/{{eventType}}"),
            get(get_state_empty_key),
        );
    }
    r
}

fn page_token(s: &Option<String>) -> ApiResult<Option<PageToken>> {
    match s {
        None => Ok(None),
        Some(t) => t
            .parse()
            .map(Some)
            .map_err(|_| Error::invalid_param("invalid pagination token").into()),
    }
}

/// `GET /_matrix/client/v3/rooms/{roomId}/messages`.
pub async fn get_message_events(
    State(rooms): State<Rooms>,
    req: Authed<get_message_events::v3::Request>,
) -> ApiResult<(http::HeaderMap, Json<Value>)> {
    let b = &req.body;
    let from = page_token(&b.from)?;
    let to = page_token(&b.to)?;
    let limit = usize::try_from(u64::from(b.limit)).unwrap_or(10);
    let filter = event_filter(&b.filter);
    let q = MessagesQuery {
        from,
        to,
        backwards: b.dir == Direction::Backward,
        limit,
        filter: &filter,
    };
    let page = rooms
        .messages(req.user().as_str(), b.room_id.as_str(), &q)
        .await?;
    let viewer = Viewer {
        user_id: req.user().as_str(),
        device_id: req.device().as_str(),
    };
    let chunk = rooms
        .format_events(&page.chunk, Some(viewer), Shape::Client)
        .await?;
    let mut out = json!({ "start": page.start.to_string(), "chunk": chunk });
    if let Some(end) = page.end {
        out["end"] = json!(end.to_string());
    }
    if !page.state.is_empty() {
        out["state"] = json!(
            rooms
                .format_events(&page.state, Some(viewer), Shape::Client)
                .await?
        );
    }
    // A worker's page ended where main could fetch more: the worker hands the request on.
    let mut headers = http::HeaderMap::new();
    if page.needs_backfill {
        headers.insert(
            NEEDS_MAIN_HEADER,
            http::HeaderValue::from_static("backfill"),
        );
    }
    Ok((headers, Json(out)))
}

/// Set on a worker's answer that main should give instead (the worker's forwarding layer
/// resends the request to main and never lets the header out).
pub const NEEDS_MAIN_HEADER: &str = "x-ganglion-needs-main";

/// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`.
pub async fn get_context(
    State(rooms): State<Rooms>,
    req: Authed<get_context::v3::Request>,
) -> ApiResult<Json<Value>> {
    let b = &req.body;
    let limit = usize::try_from(u64::from(b.limit)).unwrap_or(10).min(100);
    let filter = event_filter(&b.filter);
    let (before, event, after, state, start, end) = rooms
        .context(
            req.user().as_str(),
            b.room_id.as_str(),
            b.event_id.as_str(),
            limit,
            &filter,
        )
        .await?;
    let viewer = Some(Viewer {
        user_id: req.user().as_str(),
        device_id: req.device().as_str(),
    });
    Ok(Json(json!({
        "start": start.to_string(),
        "end": end.to_string(),
        "events_before": rooms.format_events(&before, viewer, Shape::Client).await?,
        "event": rooms.format_events(std::slice::from_ref(&event), viewer, Shape::Client).await?.pop(),
        "events_after": rooms.format_events(&after, viewer, Shape::Client).await?,
        "state": rooms.format_events(&state, viewer, Shape::Client).await?,
    })))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}`.
pub async fn get_room_event(
    State(rooms): State<Rooms>,
    req: Authed<get_room_event::v3::Request>,
) -> ApiResult<Json<Value>> {
    let row = rooms
        .event_for(
            req.user().as_str(),
            req.body.room_id.as_str(),
            req.body.event_id.as_str(),
        )
        .await?;
    let viewer = Some(Viewer {
        user_id: req.user().as_str(),
        device_id: req.device().as_str(),
    });
    let mut out = rooms
        .format_events(std::slice::from_ref(&row), viewer, Shape::Client)
        .await?;
    Ok(Json(out.pop().unwrap_or(Value::Null)))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state`.
pub async fn get_state_events(
    State(rooms): State<Rooms>,
    req: Authed<get_state_events::v3::Request>,
) -> ApiResult<Json<Value>> {
    let rows = rooms
        .state_for(req.user().as_str(), req.body.room_id.as_str())
        .await?;
    Ok(Json(Value::Array(
        rooms.format_events(&rows, None, Shape::Client).await?,
    )))
}

async fn state_event(
    rooms: &Rooms,
    user: &str,
    room_id: &str,
    kind: &str,
    sk: &str,
    full: bool,
) -> ApiResult<Json<Value>> {
    let row = rooms.state_event_for(user, room_id, kind, sk).await?;
    let mut event = rooms
        .format_events(std::slice::from_ref(&row), None, Shape::Client)
        .await?
        .pop()
        .unwrap_or(Value::Null);
    if full {
        Ok(Json(event))
    } else {
        Ok(Json(
            event
                .get_mut("content")
                .map(Value::take)
                .unwrap_or_else(|| json!({})),
        ))
    }
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`.
pub async fn get_state_event_for_key(
    State(rooms): State<Rooms>,
    req: Authed<get_state_event_for_key::v3::Request>,
) -> ApiResult<Json<Value>> {
    let b = &req.body;
    let full = matches!(
        b.format,
        get_state_event_for_key::v3::StateEventFormat::Event
    );
    state_event(
        &rooms,
        req.user().as_str(),
        b.room_id.as_str(),
        &b.event_type.to_string(),
        &b.state_key,
        full,
    )
    .await
}

/// The empty-state-key form `GET …/state/{eventType}`.
pub async fn get_state_empty_key(
    State(rooms): State<Rooms>,
    identity: Identity,
    Path((room_id, kind)): Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> ApiResult<Json<Value>> {
    let full = query.is_some_and(|q| q.split('&').any(|kv| kv == "format=event"));
    state_event(&rooms, identity.user_id.as_str(), &room_id, &kind, "", full).await
}

/// `GET /_matrix/client/v3/rooms/{roomId}/members`.
pub async fn get_member_events(
    State(rooms): State<Rooms>,
    req: Authed<get_member_events::v3::Request>,
) -> ApiResult<Json<Value>> {
    let b = &req.body;
    let at = page_token(&b.at)?;
    let rows = rooms
        .members_for(
            req.user().as_str(),
            b.room_id.as_str(),
            at,
            b.membership.as_ref().map(|m| m.as_str()),
            b.not_membership.as_ref().map(|m| m.as_str()),
        )
        .await?;
    Ok(Json(
        json!({ "chunk": rooms.format_events(&rows, None, Shape::Client).await? }),
    ))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/joined_members`.
pub async fn joined_members(
    State(rooms): State<Rooms>,
    req: Authed<joined_members::v3::Request>,
) -> ApiResult<Json<Value>> {
    let room_id = req.body.room_id.as_str();
    if !rooms.is_joined(req.user().as_str(), room_id).await? {
        return Err(Error::forbidden("you are not in this room").into());
    }
    let rows = rooms
        .members_for(req.user().as_str(), room_id, None, Some("join"), None)
        .await?;
    let mut joined = Map::new();
    for row in rows {
        let content = serde_json::from_str::<Value>(&row.json)
            .ok()
            .and_then(|v| v.get("content").cloned())
            .unwrap_or_default();
        joined.insert(
            row.state_key.unwrap_or_default(),
            json!({ "display_name": content.get("displayname"), "avatar_url": content.get("avatar_url") }),
        );
    }
    Ok(Json(json!({ "joined": joined })))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event`.
pub async fn get_event_by_timestamp(
    State(rooms): State<Rooms>,
    req: Authed<get_event_by_timestamp::v1::Request>,
) -> ApiResult<Json<Value>> {
    let b = &req.body;
    let ts = i64::from(b.ts.get());
    let (event_id, origin_ts) = rooms
        .event_near_ts(
            req.user().as_str(),
            b.room_id.as_str(),
            ts,
            b.dir == Direction::Forward,
        )
        .await?;
    Ok(Json(
        json!({ "event_id": event_id, "origin_server_ts": origin_ts }),
    ))
}
