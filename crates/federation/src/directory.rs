//! The public room directory over federation (Server-Server API, "Public Room
//! Directory"): `GET` and `POST /_matrix/federation/v1/publicRooms` answer from our
//! published list, and [`Federation::public_rooms`] reads another server's for our
//! clients (`/publicRooms?server=`).
//!
//! Another server sees neither rooms created with `m.federate: false` nor rooms whose
//! server ACL denies it (Synapse `handlers/room_list.py`).

use axum::{Json, Router, extract::State, http::Uri, routing::get};
use ganglion_core::{Error, ErrorKind, Result};
use ganglion_http::ApiError;
use ganglion_rooms::directory::{DirectoryQuery, MAX_DIRECTORY_PAGE, Network, RoomSummary};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{
    FedError, Federation, params,
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

/// Most rooms of another server's answer passed on to a client.
const MAX_REMOTE_CHUNK: usize = 2 * MAX_DIRECTORY_PAGE;

impl Federation {
    /// A page of another server's directory. With a filter, asks with `POST` (MSC2197);
    /// a server that does not know it (404, 405, `M_UNRECOGNIZED`) is asked with `GET`
    /// for its whole list, filtered here and not paginated (Synapse
    /// `handlers/room_list.py`, `get_remote_public_room_list`).
    pub async fn public_rooms(
        &self,
        server: &ruma::ServerName,
        q: &DirectoryQuery,
    ) -> Result<Value> {
        let path = "/_matrix/federation/v1/publicRooms";
        let server = server.as_str();
        let (all, instance) = match &q.network {
            Network::Matrix => (false, None),
            Network::All => (true, None),
            Network::ThirdParty(i) => (false, Some(i.as_str())),
        };
        let filtered = q.search.is_some() || q.room_types.is_some();
        if filtered {
            let mut body = json!({ "include_all_networks": all, "filter": {} });
            if let Some(i) = instance {
                body["third_party_instance_id"] = json!(i);
            }
            if let Some(l) = q.limit.filter(|l| *l > 0) {
                body["limit"] = json!(l);
            }
            if let Some(s) = &q.since {
                body["since"] = json!(s);
            }
            if let Some(t) = &q.search {
                body["filter"]["generic_search_term"] = json!(t);
            }
            if let Some(t) = &q.room_types {
                body["filter"]["room_types"] = json!(t);
            }
            match self
                .client
                .request(Method::POST, server, path, Some(&body))
                .await
            {
                Ok(v) => return Ok(checked_page(&v, |_| true)),
                Err(FedError::Remote { status, body, .. })
                    if status == 404
                        || status == 405
                        || body.get("errcode").and_then(Value::as_str)
                            == Some("M_UNRECOGNIZED") =>
                {
                    tracing::debug!(%server, "no filtered /publicRooms; filtering here");
                }
                Err(e) => return Err(remote_error(server, e)),
            }
        }
        let mut query = vec![format!("include_all_networks={all}")];
        if let Some(i) = instance {
            query.push(format!(
                "third_party_instance_id={}",
                ganglion_http::percent_encode(i)
            ));
        }
        if !filtered {
            if let Some(l) = q.limit.filter(|l| *l > 0) {
                query.push(format!("limit={l}"));
            }
            if let Some(s) = &q.since {
                query.push(format!("since={}", ganglion_http::percent_encode(s)));
            }
        }
        let v = self
            .client
            .get(server, &format!("{path}?{}", query.join("&")))
            .await
            .map_err(|e| remote_error(server, e))?;
        if !filtered {
            return Ok(checked_page(&v, |_| true));
        }
        let term = q.search.as_deref().map(str::to_lowercase);
        let mut page = checked_page(&v, |e| {
            entry_matches(e, term.as_deref(), q.room_types.as_deref())
        });
        // The whole list, filtered here: no tokens into it.
        if let Some(o) = page.as_object_mut() {
            o.remove("next_batch");
            o.remove("prev_batch");
            o.remove("total_room_count_estimate");
        }
        Ok(page)
    }
}

/// A remote directory error for our client: a refusal stays a refusal; anything else
/// says which server failed.
fn remote_error(server: &str, e: FedError) -> Error {
    match &e {
        FedError::Remote { status: 403, .. } => Error::forbidden(format!(
            "You are not allowed to view the public rooms list of {server}"
        )),
        FedError::Remote { .. } | FedError::BadResponse { .. } => Error::new(
            ErrorKind::Unavailable,
            format!("Failed to fetch the room list of {server}: {e}"),
        ),
        _ => e.into(),
    }
}

/// Whether a remote chunk entry matches a filter (for servers that cannot filter).
fn entry_matches(e: &Value, term: Option<&str>, types: Option<&[Option<String>]>) -> bool {
    if let Some(types) = types
        && !types.is_empty()
    {
        let kind = e
            .get("room_type")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if !types.contains(&kind) {
            return false;
        }
    }
    let Some(term) = term.filter(|t| !t.is_empty()) else {
        return true;
    };
    ["name", "topic", "canonical_alias"]
        .iter()
        .filter_map(|k| e.get(*k).and_then(Value::as_str))
        .any(|s| s.to_lowercase().contains(term))
}

/// Another server's directory page, rebuilt from the fields the spec defines, with the
/// right types: entries without a valid room id are dropped.
fn checked_page(v: &Value, keep: impl Fn(&Value) -> bool) -> Value {
    let chunk: Vec<Value> = v
        .get("chunk")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(checked_entry)
                .filter(|e| keep(e))
                .take(MAX_REMOTE_CHUNK)
                .collect()
        })
        .unwrap_or_default();
    let mut out = json!({ "chunk": chunk });
    for k in ["next_batch", "prev_batch"] {
        if let Some(s) = v.get(k).and_then(Value::as_str) {
            out[k] = json!(s);
        }
    }
    if let Some(n) = v.get("total_room_count_estimate").and_then(Value::as_u64) {
        out["total_room_count_estimate"] = json!(n);
    }
    out
}

fn checked_entry(e: &Value) -> Option<Value> {
    let room_id = e.get("room_id").and_then(Value::as_str)?;
    ruma::RoomId::parse(room_id).ok()?;
    let mut out = Map::new();
    out.insert("room_id".into(), json!(room_id));
    out.insert(
        "num_joined_members".into(),
        json!(
            e.get("num_joined_members")
                .and_then(Value::as_u64)
                .unwrap_or(0)
        ),
    );
    for k in ["world_readable", "guest_can_join"] {
        out.insert(
            k.into(),
            json!(e.get(k).and_then(Value::as_bool).unwrap_or(false)),
        );
    }
    for k in [
        "name",
        "topic",
        "canonical_alias",
        "avatar_url",
        "join_rule",
        "room_type",
    ] {
        if let Some(s) = e.get(k).and_then(Value::as_str) {
            out.insert(k.into(), json!(s));
        }
    }
    Some(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_pages_keep_only_the_specs_fields() {
        let v = json!({
            "chunk": [
                { "room_id": "!a:x", "num_joined_members": 3, "world_readable": true, "name": "A", "evil": 1 },
                { "room_id": "not a room", "num_joined_members": 1 },
                { "room_id": "!b:x", "num_joined_members": "many", "topic": 5, "room_type": "m.space" },
                "garbage",
            ],
            "next_batch": "n1",
            "prev_batch": 7,
            "total_room_count_estimate": 2,
        });
        let p = checked_page(&v, |_| true);
        assert_eq!(p["chunk"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            p["chunk"][0],
            json!({ "room_id": "!a:x", "num_joined_members": 3, "world_readable": true, "guest_can_join": false, "name": "A" })
        );
        assert_eq!(p["chunk"][1]["num_joined_members"], 0);
        assert!(p["chunk"][1].get("topic").is_none());
        assert_eq!(p["next_batch"], "n1");
        assert!(p.get("prev_batch").is_none());
        let spaces = checked_page(&v, |e| {
            entry_matches(e, None, Some(&[Some("m.space".into())]))
        });
        assert_eq!(spaces["chunk"][0]["room_id"], "!b:x");
        let named = checked_page(&v, |e| entry_matches(e, Some("a"), None));
        assert_eq!(named["chunk"][0]["room_id"], "!a:x");
        assert_eq!(named["chunk"].as_array().map(Vec::len), Some(1));
    }

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
