//! The public room directory over federation (Server-Server API, "Public Room
//! Directory"): `GET` and `POST /_matrix/federation/v1/publicRooms` answer from our
//! published list. Reading another server's list for our clients
//! (`/publicRooms?server=`) is `rooms`' job (`Rooms::directory_page`).
//!
//! Another server sees neither rooms created with `m.federate: false` nor rooms whose
//! server ACL denies it (Synapse `handlers/room_list.py`).

use axum::{Json, Router, extract::State, http::Uri, routing::get};
use ganglion_core::{Error, Result};
use ganglion_http::ApiError;
use ganglion_rooms::directory::{DirectoryQuery, Network, RoomSummary};
use serde::Deserialize;
use serde_json::Value;

use crate::{
    params,
    server::{FederationApi, Origin},
};

/// The directory routes.
pub(crate) fn routes() -> Router<FederationApi> {
    Router::new().route(
        "/_matrix/federation/v1/publicRooms",
        get(get_public_rooms).post(post_public_rooms),
    )
}

/// The query string of `GET /publicRooms`.
#[derive(Debug, Deserialize)]
struct ListParams {
    limit: Option<u64>,
    since: Option<String>,
    #[serde(default)]
    include_all_networks: bool,
    third_party_instance_id: Option<String>,
}

/// The body of `POST /publicRooms`.
#[derive(Debug, Deserialize)]
struct ListBody {
    limit: Option<u64>,
    since: Option<String>,
    filter: Option<FilterBody>,
    #[serde(default)]
    include_all_networks: bool,
    third_party_instance_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FilterBody {
    generic_search_term: Option<String>,
    room_types: Option<Vec<Option<String>>>,
}

/// The list a request asks for; both `include_all_networks` and a network is 400
/// `M_INVALID_PARAM` (the spec allows the network only without the flag).
fn network_of(all: bool, instance: Option<String>) -> Result<Network> {
    match (all, instance) {
        (true, Some(_)) => Err(Error::invalid_param(
            "third_party_instance_id cannot be used with include_all_networks",
        )),
        (true, None) => Ok(Network::All),
        (false, Some(i)) => Ok(Network::ThirdParty(i)),
        (false, None) => Ok(Network::Matrix),
    }
}

/// Whether `origin` may see a published room.
fn admits(origin: &str) -> impl Fn(&RoomSummary) -> bool + '_ {
    move |s| {
        s.federate
            && s.server_acl
                .as_ref()
                .is_none_or(|acl| crate::acl::allows(acl, origin))
    }
}

/// `GET /_matrix/federation/v1/publicRooms`.
async fn get_public_rooms(
    State(api): State<FederationApi>,
    Origin(origin): Origin,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let p: ListParams = params::query(&uri)?;
    let q = DirectoryQuery {
        limit: p.limit,
        since: p.since,
        network: network_of(p.include_all_networks, p.third_party_instance_id)?,
        ..Default::default()
    };
    let page = api.rooms.public_rooms(&q, admits(&origin)).await?;
    Ok(Json(page.to_json()))
}

/// `POST /_matrix/federation/v1/publicRooms`: the same with a filter in the body.
async fn post_public_rooms(
    State(api): State<FederationApi>,
    req: axum::extract::Request,
) -> Result<Json<Value>, ApiError> {
    let (origin, content) = crate::server::signed_body(&api, req).await?;
    let body: Value = serde_json::to_value(&content).unwrap_or(Value::Null);
    if !body.is_object() {
        return Err(Error::bad_json("the body must be a JSON object").into());
    }
    let b: ListBody = serde_json::from_value(body).map_err(|e| Error::bad_json(e.to_string()))?;
    let filter = b.filter.unwrap_or(FilterBody {
        generic_search_term: None,
        room_types: None,
    });
    let q = DirectoryQuery {
        limit: b.limit,
        since: b.since,
        search: filter.generic_search_term,
        room_types: filter.room_types,
        network: network_of(b.include_all_networks, b.third_party_instance_id)?,
    };
    let page = api.rooms.public_rooms(&q, admits(&origin)).await?;
    Ok(Json(page.to_json()))
}

#[cfg(test)]
mod tests {
    use ganglion_core::ErrorKind;

    use super::*;

    #[test]
    fn networks() {
        assert_eq!(network_of(false, None).ok(), Some(Network::Matrix));
        assert_eq!(network_of(true, None).ok(), Some(Network::All));
        assert_eq!(
            network_of(false, Some("irc".into())).ok(),
            Some(Network::ThirdParty("irc".into()))
        );
        assert_eq!(
            network_of(true, Some("irc".into()))
                .map_err(|e| e.kind)
                .err(),
            Some(ErrorKind::InvalidParam)
        );
    }
}
