//! The inbound Server-Server API: key publication, version, and the queries. Every
//! endpoint but the key and version ones requires a valid X-Matrix signature from the
//! origin, checked against the origin's published key.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{FromRequestParts, Query, State},
    http::{header::AUTHORIZATION, request::Parts},
    routing::get,
};
use ganglion_core::{Error, ErrorKind, time::now_ms};
use ganglion_http::ApiError;
use ganglion_rooms::ServerKey;
use ganglion_storage::Store;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{keys, xmatrix};

/// What the inbound handlers share.
#[derive(Clone, Debug)]
pub struct FederationApi {
    /// Our server name.
    pub server_name: String,
    /// Our signing key.
    pub key: Arc<ServerKey>,
    /// Remote keys.
    pub keys: keys::KeyRing,
    /// The database.
    pub store: Store,
    /// How long our published keys are valid (ms).
    pub key_valid_ms: i64,
    /// Our retired keys.
    pub old_keys: std::collections::BTreeMap<String, ganglion_core::config::OldSigningKey>,
}

/// The federation routes (the listener adds the 404 `M_UNRECOGNIZED` fallback).
pub fn router(api: FederationApi) -> Router {
    Router::new()
        .route("/_matrix/key/v2/server", get(server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(server_keys))
        .route("/_matrix/key/v2/query", axum::routing::post(query_keys))
        .route(
            "/_matrix/key/v2/query/{server_name}",
            get(query_server_keys),
        )
        .route("/_matrix/federation/v1/version", get(version))
        .route("/_matrix/federation/v1/query/profile", get(query_profile))
        .route(
            "/_matrix/federation/v1/query/directory",
            get(query_directory),
        )
        .with_state(api)
}

async fn server_keys(State(api): State<FederationApi>) -> Json<Value> {
    Json(keys::publish(
        &api.key,
        &api.server_name,
        api.key_valid_ms,
        &api.old_keys,
    ))
}

/// The notary: key documents of `server` valid until at least `min`, each with our
/// signature added. Our own document for our own name.
async fn notarise(api: &FederationApi, server: &str, min: i64) -> Vec<Value> {
    if server == api.server_name {
        return vec![keys::publish(
            &api.key,
            &api.server_name,
            api.key_valid_ms,
            &api.old_keys,
        )];
    }
    if ruma::ServerName::parse(server).is_err() {
        return Vec::new();
    }
    api.keys
        .documents(server, min)
        .await
        .iter()
        .filter_map(|d| keys::countersign(&api.key, &api.server_name, d))
        .collect()
}

#[derive(Debug, Deserialize)]
struct MinValid {
    minimum_valid_until_ts: Option<i64>,
}

/// `GET /_matrix/key/v2/query/{serverName}`.
async fn query_server_keys(
    State(api): State<FederationApi>,
    axum::extract::Path(server): axum::extract::Path<String>,
    Query(q): Query<MinValid>,
) -> Json<Value> {
    let min = q.minimum_valid_until_ts.unwrap_or_else(now_ms);
    Json(json!({ "server_keys": notarise(&api, &server, min).await }))
}

/// Most servers one notary query may ask about.
const MAX_NOTARY_SERVERS: usize = 100;

/// `POST /_matrix/key/v2/query`.
async fn query_keys(
    State(api): State<FederationApi>,
    raw: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: Value = serde_json::from_slice(&raw)
        .map_err(|_| Error::new(ErrorKind::NotJson, "the body is not JSON"))?;
    let wanted = body
        .get("server_keys")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::bad_json("server_keys must be an object"))?;
    if wanted.len() > MAX_NOTARY_SERVERS {
        return Err(Error::new(ErrorKind::TooLarge, "too many servers in one query").into());
    }
    let mut out = Vec::new();
    for (server, key_ids) in wanted {
        let min = key_ids
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|c| c.get("minimum_valid_until_ts").and_then(Value::as_i64))
            .max()
            .unwrap_or_else(now_ms);
        out.extend(notarise(&api, server, min).await);
    }
    Ok(Json(json!({ "server_keys": out })))
}

async fn version() -> Json<Value> {
    Json(json!({ "server": { "name": "Ganglion", "version": env!("CARGO_PKG_VERSION") } }))
}

/// The authenticated origin of a request without a body (GET).
#[derive(Debug, Clone)]
pub struct Origin(pub String);

impl FromRequestParts<FederationApi> for Origin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        api: &FederationApi,
    ) -> Result<Origin, ApiError> {
        let uri = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
        authenticate(api, parts.method.as_str(), &uri, parts, None)
            .await
            .map(Origin)
            .map_err(ApiError)
    }
}

/// Checks a request's X-Matrix signature: returns the origin. Several `Authorization`
/// headers (one per key) are allowed; one that verifies is enough.
pub async fn authenticate(
    api: &FederationApi,
    method: &str,
    uri: &str,
    parts: &Parts,
    content: Option<ruma::CanonicalJsonValue>,
) -> Result<String, Error> {
    let unauthorized = |m: String| Error::new(ErrorKind::Unauthorized, m);
    let mut headers = parts.headers.get_all(AUTHORIZATION).iter().peekable();
    if headers.peek().is_none() {
        return Err(unauthorized("Missing Authorization headers".into()));
    }
    let mut last = unauthorized("no valid X-Matrix signature".into());
    for h in headers {
        let Ok(text) = h.to_str() else { continue };
        let auth = match xmatrix::XMatrix::parse(text) {
            Ok(a) => a,
            Err(e) => {
                last = unauthorized(e.to_string());
                continue;
            }
        };
        if let Some(d) = &auth.destination
            && *d != api.server_name
        {
            return Err(unauthorized(format!(
                "Destination mismatch in auth header: {d} is not {}",
                api.server_name
            )));
        }
        if ruma::ServerName::parse(&auth.origin).is_err() {
            last = unauthorized("the origin is not a server name".into());
            continue;
        }
        let public = match api.keys.key(&auth.origin, &auth.key, now_ms()).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(origin = %auth.origin, key = %auth.key, error = %e, "cannot get the origin's key");
                last = unauthorized(format!(
                    "cannot get {}'s key {}: {e}",
                    auth.origin, auth.key
                ));
                continue;
            }
        };
        if xmatrix::verify(
            &auth,
            &public,
            &api.server_name,
            method,
            uri,
            content.clone(),
        ) {
            return Ok(auth.origin);
        }
        tracing::warn!(origin = %auth.origin, %uri, "bad X-Matrix signature");
        last = Error::new(ErrorKind::InvalidSignature, "Invalid signature");
    }
    Err(last)
}

#[derive(Debug, Deserialize)]
struct ProfileQuery {
    user_id: String,
    field: Option<String>,
}

/// `GET /_matrix/federation/v1/query/profile`.
async fn query_profile(
    State(api): State<FederationApi>,
    Origin(_origin): Origin,
    Query(q): Query<ProfileQuery>,
) -> Result<Json<Value>, ApiError> {
    let user = ruma::UserId::parse(&q.user_id)
        .map_err(|_| Error::invalid_param("user_id is not a user id"))?;
    if user.server_name().as_str() != api.server_name {
        return Err(Error::invalid_param("user_id is not a user of this server").into());
    }
    let row = api
        .store
        .select_user(user.as_str())
        .await
        .map_err(|e| Error::internal(e.to_string()))?
        .ok_or_else(|| Error::not_found("profile not found"))?;
    let mut out = serde_json::Map::new();
    let want = |f: &str| q.field.as_deref().is_none_or(|x| x == f);
    if want("displayname")
        && let Some(n) = row.displayname
    {
        out.insert("displayname".into(), json!(n));
    }
    if want("avatar_url")
        && let Some(a) = row.avatar_url
    {
        out.insert("avatar_url".into(), json!(a));
    }
    Ok(Json(Value::Object(out)))
}

#[derive(Debug, Deserialize)]
struct DirectoryQuery {
    room_alias: String,
}

/// `GET /_matrix/federation/v1/query/directory`.
async fn query_directory(
    State(api): State<FederationApi>,
    Origin(_origin): Origin,
    Query(q): Query<DirectoryQuery>,
) -> Result<Json<Value>, ApiError> {
    let alias = ruma::RoomAliasId::parse(&q.room_alias)
        .map_err(|_| Error::invalid_param("room_alias is not a room alias"))?;
    let (room_id, _) = api
        .store
        .select_alias(alias.as_str())
        .await
        .map_err(|e| Error::internal(e.to_string()))?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    Ok(Json(
        json!({ "room_id": room_id, "servers": [api.server_name] }),
    ))
}
