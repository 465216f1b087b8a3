//! The public room directory (spec: Client-Server API, "Listing rooms").

use axum::{Json, Router, extract::State};
use ganglion_core::Error;
use ganglion_http::{ApiResult, Authed, Ruma, route};
use ganglion_rooms::storage_error;
use ruma::api::client::{
    directory::{
        get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
    },
    room::Visibility,
};
use serde_json::{Value, json};

use crate::ClientApi;

/// Registers the directory routes.
pub fn routes(r: Router<ClientApi>) -> Router<ClientApi> {
    let r = route::<get_public_rooms::v3::Request, _, _, _>(r, get_public_rooms);
    let r = route::<get_public_rooms_filtered::v3::Request, _, _, _>(r, get_public_rooms_filtered);
    let r = route::<get_room_visibility::v3::Request, _, _, _>(r, get_room_visibility);
    route::<set_room_visibility::v3::Request, _, _, _>(r, set_room_visibility)
}

/// Largest page of the directory.
const MAX_PAGE: usize = 500;

async fn public_rooms(
    api: &ClientApi,
    limit: Option<u64>,
    since: Option<&str>,
    term: Option<&str>,
) -> ApiResult<Json<Value>> {
    let offset: usize = match since {
        None => 0,
        Some(s) => s
            .strip_prefix('o')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::invalid_param("invalid since token"))?,
    };
    let limit = limit.map_or(MAX_PAGE, |l| {
        usize::try_from(l).unwrap_or(MAX_PAGE).min(MAX_PAGE)
    });
    let listed = api
        .rooms
        .store()
        .select_public_rooms()
        .await
        .map_err(storage_error)?;
    let term = term.map(str::to_lowercase).filter(|t| !t.is_empty());
    let mut chunk = Vec::new();
    for (room_id, joined) in listed {
        let state = |kind: &'static str| {
            let api = api.clone();
            let room_id = room_id.clone();
            async move { api.rooms.current_state_content(&room_id, kind, "").await }
        };
        let name = state("m.room.name")
            .await?
            .and_then(|c| c.get("name").and_then(Value::as_str).map(str::to_owned));
        let topic = state("m.room.topic")
            .await?
            .and_then(|c| c.get("topic").and_then(Value::as_str).map(str::to_owned));
        let alias = state("m.room.canonical_alias")
            .await?
            .and_then(|c| c.get("alias").and_then(Value::as_str).map(str::to_owned));
        let avatar = state("m.room.avatar")
            .await?
            .and_then(|c| c.get("url").and_then(Value::as_str).map(str::to_owned));
        let join_rule = state("m.room.join_rules").await?.and_then(|c| {
            c.get("join_rule")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let hv = state("m.room.history_visibility").await?.and_then(|c| {
            c.get("history_visibility")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let guest = state("m.room.guest_access").await?.and_then(|c| {
            c.get("guest_access")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let room_type = state("m.room.create")
            .await?
            .and_then(|c| c.get("type").and_then(Value::as_str).map(str::to_owned));
        if let Some(t) = &term {
            let hay = [&name, &topic, &alias]
                .iter()
                .filter_map(|s| s.as_deref())
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
                .join(" ");
            if !hay.contains(t.as_str()) {
                continue;
            }
        }
        let mut entry = json!({
            "room_id": room_id,
            "num_joined_members": joined,
            "world_readable": hv.as_deref() == Some("world_readable"),
            "guest_can_join": guest.as_deref() == Some("can_join"),
            "join_rule": join_rule.unwrap_or_else(|| "public".into()),
        });
        for (k, v) in [
            ("name", name),
            ("topic", topic),
            ("canonical_alias", alias),
            ("avatar_url", avatar),
            ("room_type", room_type),
        ] {
            if let Some(v) = v {
                entry[k] = json!(v);
            }
        }
        chunk.push(entry);
    }
    let total = chunk.len();
    let page: Vec<Value> = chunk.into_iter().skip(offset).take(limit).collect();
    let mut out = json!({ "chunk": page, "total_room_count_estimate": total });
    if offset + limit < total {
        out["next_batch"] = json!(format!("o{}", offset + limit));
    }
    if offset > 0 {
        out["prev_batch"] = json!(format!("o{}", offset.saturating_sub(limit)));
    }
    Ok(Json(out))
}

/// `GET /_matrix/client/v3/publicRooms`.
pub async fn get_public_rooms(
    State(api): State<ClientApi>,
    req: Ruma<get_public_rooms::v3::Request>,
) -> ApiResult<Json<Value>> {
    if req
        .0
        .server
        .as_ref()
        .is_some_and(|s| s != api.rooms.server_name())
    {
        return Err(
            Error::forbidden("querying other servers' directories needs federation").into(),
        );
    }
    public_rooms(
        &api,
        req.0.limit.map(u64::from),
        req.0.since.as_deref(),
        None,
    )
    .await
}

/// `POST /_matrix/client/v3/publicRooms`.
pub async fn get_public_rooms_filtered(
    State(api): State<ClientApi>,
    req: Authed<get_public_rooms_filtered::v3::Request>,
) -> ApiResult<Json<Value>> {
    let b = &req.body;
    if b.server
        .as_ref()
        .is_some_and(|s| s != api.rooms.server_name())
    {
        return Err(
            Error::forbidden("querying other servers' directories needs federation").into(),
        );
    }
    public_rooms(
        &api,
        b.limit.map(u64::from),
        b.since.as_deref(),
        b.filter.generic_search_term.as_deref(),
    )
    .await
}

/// `GET /_matrix/client/v3/directory/list/room/{roomId}`.
pub async fn get_room_visibility(
    State(api): State<ClientApi>,
    req: Ruma<get_room_visibility::v3::Request>,
) -> ApiResult<Json<Value>> {
    let room = api
        .rooms
        .store()
        .select_room(req.0.room_id.as_str())
        .await
        .map_err(storage_error)?
        .ok_or_else(|| Error::not_found("unknown room"))?;
    Ok(Json(
        json!({ "visibility": if room.is_public { "public" } else { "private" } }),
    ))
}

/// `PUT /_matrix/client/v3/directory/list/room/{roomId}`: room members with the power to
/// set the canonical alias may publish (Synapse's default publication rule).
pub async fn set_room_visibility(
    State(api): State<ClientApi>,
    req: Authed<set_room_visibility::v3::Request>,
) -> ApiResult<Json<Value>> {
    let room_id = req.body.room_id.as_str();
    if api
        .rooms
        .store()
        .select_room(room_id)
        .await
        .map_err(storage_error)?
        .is_none()
    {
        return Err(Error::not_found("unknown room").into());
    }
    if !req.identity.is_admin
        && !api
            .rooms
            .may_send_state(req.user(), room_id, "m.room.canonical_alias")
            .await?
    {
        return Err(Error::forbidden("you lack the power to publish this room").into());
    }
    let public = req.body.visibility == Visibility::Public;
    api.rooms
        .store()
        .update_room_public(room_id, public)
        .await
        .map_err(storage_error)?;
    Ok(Json(json!({})))
}
