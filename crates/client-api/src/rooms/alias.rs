//! Room aliases (spec: Client-Server API, "Room aliases").

use axum::{Json, Router, extract::State};
use ganglion_core::{Error, ErrorKind};
use ganglion_http::{ApiResult, Authed, route};
use ganglion_rooms::storage_error;
use ruma::api::client::{
    alias::{create_alias, delete_alias, get_alias},
    room::aliases,
};
use serde_json::{Value, json};

use crate::ClientApi;

/// Registers the alias routes.
pub fn routes(r: Router<ClientApi>) -> Router<ClientApi> {
    let r = route::<create_alias::v3::Request, _, _, _>(r, create_alias);
    let r = route::<get_alias::v3::Request, _, _, _>(r, get_alias);
    let r = route::<delete_alias::v3::Request, _, _, _>(r, delete_alias);
    route::<aliases::v3::Request, _, _, _>(r, get_room_aliases)
}

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}`.
pub async fn create_alias(
    State(api): State<ClientApi>,
    req: Authed<create_alias::v3::Request>,
) -> ApiResult<Json<Value>> {
    let alias = &req.body.room_alias;
    if alias.server_name() != api.rooms.server_name() {
        return Err(Error::invalid_param("aliases must be on this server").into());
    }
    if !api
        .rooms
        .is_joined(req.user().as_str(), req.body.room_id.as_str())
        .await?
    {
        return Err(Error::forbidden("you must be in the room to give it an alias").into());
    }
    api.rooms
        .store()
        .insert_alias(
            alias.as_str(),
            req.body.room_id.as_str(),
            req.user().as_str(),
        )
        .await
        .map_err(|e| match e {
            ganglion_storage::Error::Conflict(_) => {
                Error::new(ErrorKind::Conflict, "room alias already exists")
            }
            other => storage_error(other),
        })?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/directory/room/{roomAlias}`.
pub async fn get_alias(
    State(api): State<ClientApi>,
    req: ganglion_http::Ruma<get_alias::v3::Request>,
) -> ApiResult<Json<Value>> {
    let (room_id, servers) = api.rooms.alias_room(&req.0.room_alias).await?;
    Ok(Json(json!({ "room_id": room_id, "servers": servers })))
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}`.
pub async fn delete_alias(
    State(api): State<ClientApi>,
    req: Authed<delete_alias::v3::Request>,
) -> ApiResult<Json<Value>> {
    let alias = req.body.room_alias.as_str();
    let (_, creator) = api
        .rooms
        .store()
        .select_alias(alias)
        .await
        .map_err(storage_error)?
        .ok_or_else(|| Error::not_found("room alias not found"))?;
    if creator != req.user().as_str() && !req.identity.is_admin {
        return Err(Error::forbidden("only the alias's creator or an admin may delete it").into());
    }
    api.rooms
        .store()
        .delete_alias(alias)
        .await
        .map_err(storage_error)?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/aliases`.
pub async fn get_room_aliases(
    State(api): State<ClientApi>,
    req: Authed<aliases::v3::Request>,
) -> ApiResult<Json<Value>> {
    let room_id = req.body.room_id.as_str();
    let world = api.rooms.history_visibility(room_id).await? == "world_readable";
    if !world && !api.rooms.is_joined(req.user().as_str(), room_id).await? {
        return Err(Error::forbidden("you are not in this room").into());
    }
    let list = api
        .rooms
        .store()
        .select_room_aliases(room_id)
        .await
        .map_err(storage_error)?;
    Ok(Json(json!({ "aliases": list })))
}
