//! `GET /_matrix/federation/v1/timestamp_to_event/{roomId}` (Server-Server API,
//! "Timestamp to event"): the event of ours closest to a time, for a server in the room
//! whose server ACL allows it.

use axum::{
    Json, Router,
    extract::{Path, State, rejection::PathRejection},
    http::Uri,
    routing::get,
};
use ganglion_core::Error;
use ganglion_http::ApiError;
use ganglion_rooms::storage_error;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    params,
    server::{FederationApi, Origin},
};

/// The route.
pub(crate) fn routes() -> Router<FederationApi> {
    Router::new().route(
        "/_matrix/federation/v1/timestamp_to_event/{room_id}",
        get(timestamp_to_event),
    )
}

/// `f`orwards or `b`ackwards.
#[derive(Debug, Clone, Copy, Deserialize)]
enum Dir {
    #[serde(rename = "f")]
    Forward,
    #[serde(rename = "b")]
    Backward,
}

#[derive(Debug, Deserialize)]
struct TsParams {
    ts: i64,
    dir: Dir,
}

/// `GET /_matrix/federation/v1/timestamp_to_event/{roomId}?ts=&dir=`: 404 `M_NOT_FOUND`
/// when no event lies in that direction.
async fn timestamp_to_event(
    State(api): State<FederationApi>,
    Origin(origin): Origin,
    room_id: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let room = ruma::RoomId::parse(params::path(room_id)?)
        .map_err(|_| Error::invalid_param("not a room id"))?;
    let p: TsParams = params::query(&uri)?;
    crate::server::origin_in_room(&api, &origin, room.as_str()).await?;
    let forwards = matches!(p.dir, Dir::Forward);
    let (event_id, ts) = api
        .store
        .select_event_near_ts(room.as_str(), p.ts, forwards)
        .await
        .map_err(storage_error)?
        .ok_or_else(|| {
            Error::not_found(format!(
                "Unable to find event from {} in {} direction",
                p.ts,
                if forwards { "forward" } else { "backward" }
            ))
        })?;
    Ok(Json(
        json!({ "event_id": event_id, "origin_server_ts": ts }),
    ))
}
