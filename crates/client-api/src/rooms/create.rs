//! `POST /createRoom` (spec: Client-Server API, "Creation").

use axum::{Json, Router, extract::State};
use ganglion_core::{Error, ErrorKind};
use ganglion_http::{ApiResult, Authed, route};
use ganglion_rooms::{CreateRoomSpec, Preset};
use ruma::api::client::room::{Visibility, create_room};
use serde_json::{Map, Value, json};

use crate::ClientApi;

/// Registers the creation route.
pub fn routes(r: Router<ClientApi>) -> Router<ClientApi> {
    let r = route::<create_room::v3::Request, _, _, _>(r, create_room);
    route::<ruma::api::client::room::upgrade_room::v3::Request, _, _, _>(r, upgrade_room)
}

fn object(
    raw: Option<&ruma::serde::Raw<impl Sized>>,
    what: &str,
) -> ApiResult<Option<Map<String, Value>>> {
    match raw {
        None => Ok(None),
        Some(r) => match serde_json::from_str::<Value>(r.json().get()) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            _ => Err(Error::bad_json(format!("{what} must be an object")).into()),
        },
    }
}

/// `POST /_matrix/client/v3/createRoom`.
pub async fn create_room(
    State(api): State<ClientApi>,
    req: Authed<create_room::v3::Request>,
) -> ApiResult<Json<Value>> {
    api.room_limit.check(req.user().as_str())?;
    let body = &req.body;
    let preset = match &body.preset {
        None => None,
        Some(p) => Some(match p.as_str() {
            "private_chat" => Preset::PrivateChat,
            "trusted_private_chat" => Preset::TrustedPrivateChat,
            "public_chat" => Preset::PublicChat,
            other => return Err(Error::bad_json(format!("unknown preset {other}")).into()),
        }),
    };
    if let Some(v) = &body.room_version
        && v.rules().is_none()
    {
        return Err(Error::new(
            ErrorKind::UnsupportedRoomVersion,
            "this server does not support that room version",
        )
        .into());
    }
    let alias = match &body.room_alias_name {
        None => None,
        Some(local) => {
            let full = format!("#{local}:{}", api.rooms.server_name());
            if local.is_empty() || local.contains(':') || ruma::RoomAliasId::parse(&full).is_err() {
                return Err(Error::new(ErrorKind::InvalidParam, "invalid room alias").into());
            }
            if api
                .rooms
                .store()
                .select_alias(&full)
                .await
                .map_err(ganglion_rooms::storage_error)?
                .is_some()
            {
                return Err(Error::new(ErrorKind::RoomInUse, "room alias already taken").into());
            }
            Some(full)
        }
    };
    let mut initial_state = Vec::new();
    for raw in &body.initial_state {
        let v: Value =
            serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(e.to_string()))?;
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::bad_json("initial_state event without type"))?;
        let sk = v.get("state_key").and_then(Value::as_str).unwrap_or("");
        let content = v.get("content").cloned().unwrap_or_else(|| json!({}));
        initial_state.push((kind.to_owned(), sk.to_owned(), content));
    }
    let (displayname, avatar) = api
        .user_data
        .profile(req.user().as_str())
        .await
        .unwrap_or((None, None));
    let spec = CreateRoomSpec {
        creator: req.user().to_owned(),
        creator_profile: (displayname, avatar),
        version: body.room_version.clone(),
        preset,
        public: body.visibility == Visibility::Public,
        name: body.name.clone(),
        topic: body.topic.clone(),
        alias,
        invite: body.invite.clone(),
        is_direct: body.is_direct,
        initial_state,
        creation_content: object(body.creation_content.as_ref(), "creation_content")?,
        power_level_content_override: object(
            body.power_level_content_override.as_ref(),
            "power_level_content_override",
        )?,
    };
    let (room_id, _pos) = api.rooms.create_room(spec).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/upgrade`.
pub async fn upgrade_room(
    State(api): State<ClientApi>,
    req: Authed<ruma::api::client::room::upgrade_room::v3::Request>,
) -> ApiResult<Json<Value>> {
    let (new_room, _) = api
        .rooms
        .upgrade(&req.body.room_id, req.user(), req.body.new_version.clone())
        .await?;
    Ok(Json(json!({ "replacement_room": new_room })))
}
