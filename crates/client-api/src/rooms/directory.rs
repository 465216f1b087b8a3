//! The public room directory (spec: Client-Server API, "Listing rooms").

use axum::{Json, Router, extract::State};
use ganglion_core::Error;
use ganglion_http::{ApiError, ApiResult, Authed, Identity, Ruma, route};
use ganglion_rooms::{
    directory::{DirectoryQuery, Network},
    storage_error,
};
use ruma::{
    api::client::{
        directory::{
            get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
        },
        room::Visibility,
    },
    directory::RoomNetwork,
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

/// A page of the directory: ours, or the remote `server`'s over federation.
async fn public_rooms(
    api: &ClientApi,
    server: Option<&ruma::ServerName>,
    q: DirectoryQuery,
) -> ApiResult<Json<Value>> {
    Ok(Json(api.rooms.directory_page(server, q).await?))
}

/// Our list for ruma's network choice.
fn network_of(n: &RoomNetwork) -> Network {
    match n {
        RoomNetwork::Matrix => Network::Matrix,
        RoomNetwork::All => Network::All,
        RoomNetwork::ThirdParty(i) => Network::ThirdParty(i.clone()),
        // RoomNetwork is non-exhaustive; a network we do not know is an empty list.
        #[allow(unreachable_patterns)]
        _ => Network::ThirdParty(String::new()),
    }
}

/// `GET /_matrix/client/v3/publicRooms`. Reading another server's list needs an access
/// token (Synapse, `rest/client/room.py`), so anonymous clients cannot make us query
/// other servers.
pub async fn get_public_rooms(
    State(api): State<ClientApi>,
    identity: Result<Identity, ApiError>,
    req: Ruma<get_public_rooms::v3::Request>,
) -> ApiResult<Json<Value>> {
    let r = req.0;
    if r.server
        .as_deref()
        .is_some_and(|s| s != api.rooms.server_name())
    {
        identity?;
    }
    let q = DirectoryQuery {
        limit: r.limit.map(u64::from),
        since: r.since,
        ..Default::default()
    };
    public_rooms(&api, r.server.as_deref(), q).await
}

/// `POST /_matrix/client/v3/publicRooms`.
pub async fn get_public_rooms_filtered(
    State(api): State<ClientApi>,
    req: Authed<get_public_rooms_filtered::v3::Request>,
) -> ApiResult<Json<Value>> {
    let b = req.body;
    let types: Vec<Option<String>> = b
        .filter
        .room_types
        .iter()
        .map(|t| t.as_str().map(str::to_owned))
        .collect();
    let q = DirectoryQuery {
        limit: b.limit.map(u64::from),
        since: b.since,
        search: b.filter.generic_search_term,
        room_types: (!types.is_empty()).then_some(types),
        network: network_of(&b.room_network),
    };
    public_rooms(&api, b.server.as_deref(), q).await
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
