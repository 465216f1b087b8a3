//! Spaces over federation (Server-Server API, "Spaces"): `GET
//! /_matrix/federation/v1/hierarchy/{roomId}` summarises a space we are in and its
//! children we are in, for a server that may see them (the room is public, open to
//! knocks or world readable, or one of the server's users is joined or invited, or may
//! join a restricted room through an allowed room). Rooms whose server ACL denies the
//! server count as ones it may not see.

use axum::{
    Json, Router,
    extract::{Path, State, rejection::PathRejection},
    http::Uri,
    routing::get,
};
use ganglion_core::Error;
use ganglion_http::ApiError;
use serde::Deserialize;
use serde_json::Value;

use crate::{
    params,
    server::{FederationApi, Origin},
};

/// The hierarchy route.
pub(crate) fn routes() -> Router<FederationApi> {
    Router::new().route(
        "/_matrix/federation/v1/hierarchy/{room_id}",
        get(get_hierarchy),
    )
}

#[derive(Debug, Deserialize)]
struct HierarchyParams {
    #[serde(default)]
    suggested_only: bool,
}

/// `GET /_matrix/federation/v1/hierarchy/{roomId}?suggested_only=`: 404 `M_NOT_FOUND`
/// for a room we are not in or that the server may not see.
async fn get_hierarchy(
    State(api): State<FederationApi>,
    Origin(origin): Origin,
    room_id: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let room = ruma::RoomId::parse(params::path(room_id)?)
        .map_err(|_| Error::invalid_param("not a room id"))?;
    let p: HierarchyParams = params::query(&uri)?;
    let out = api
        .rooms
        .server_hierarchy(&origin, &room, p.suggested_only, |s| {
            s.server_acl
                .as_ref()
                .is_none_or(|acl| crate::acl::allows(acl, &origin))
        })
        .await?;
    Ok(Json(out))
}
