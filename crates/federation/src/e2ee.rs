//! End-to-end encryption and device management over federation (Server-Server API,
//! "End-to-End Encryption" and "Device Management"): other servers read our users'
//! device and cross-signing keys, claim their one-time keys and list their devices.
//! The keys are as a remote server sees them: only the owners' own signatures, never a
//! user-signing key. Users of other servers in a query or claim are skipped, as Synapse
//! does (`handlers/e2e_keys.py`, `on_federation_query_client_keys`).

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    extract::{Path, State, rejection::PathRejection},
    routing::{get, post},
};
use ganglion_core::Error;
use ganglion_e2ee::keys::Viewer;
use ganglion_http::ApiError;
use ruma::{OneTimeKeyAlgorithm, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::{
    params,
    server::{FederationApi, Origin, signed_body},
};

/// The key and device routes.
pub(crate) fn routes() -> Router<FederationApi> {
    Router::new()
        .route("/_matrix/federation/v1/user/keys/query", post(query_keys))
        .route("/_matrix/federation/v1/user/keys/claim", post(claim_keys))
        .route(
            "/_matrix/federation/v1/user/devices/{user_id}",
            get(user_devices),
        )
}

/// The body of `/user/keys/query`.
#[derive(Debug, Deserialize)]
struct QueryBody {
    device_keys: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
}

/// The body of `/user/keys/claim`.
#[derive(Debug, Deserialize)]
struct ClaimBody {
    one_time_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
}

/// A signed request's body as `T` (400 `M_BAD_JSON` when it is not one).
async fn signed<T: DeserializeOwned>(
    api: &FederationApi,
    req: axum::extract::Request,
) -> Result<T, Error> {
    let (_origin, content) = signed_body(api, req).await?;
    let body: Value = serde_json::to_value(&content).unwrap_or(Value::Null);
    serde_json::from_value(body).map_err(|e| Error::bad_json(e.to_string()))
}

/// `POST /_matrix/federation/v1/user/keys/query`.
/// Spec: <https://spec.matrix.org/v1.19/server-server-api/#post_matrixfederationv1userkeysquery>
async fn query_keys(
    State(api): State<FederationApi>,
    req: axum::extract::Request,
) -> Result<Json<Value>, ApiError> {
    let body: QueryBody = signed(&api, req).await?;
    let found = api
        .e2e_keys
        .query_local(Viewer::Server, &body.device_keys)
        .await?;
    Ok(Json(json!({
        "device_keys": found.device_keys,
        "master_keys": found.master_keys,
        "self_signing_keys": found.self_signing_keys,
    })))
}

/// `POST /_matrix/federation/v1/user/keys/claim`.
/// Spec: <https://spec.matrix.org/v1.19/server-server-api/#post_matrixfederationv1userkeysclaim>
async fn claim_keys(
    State(api): State<FederationApi>,
    req: axum::extract::Request,
) -> Result<Json<Value>, ApiError> {
    let body: ClaimBody = signed(&api, req).await?;
    let claimed = api.e2e_keys.claim_local(&body.one_time_keys).await?;
    Ok(Json(json!({ "one_time_keys": claimed })))
}

/// `GET /_matrix/federation/v1/user/devices/{userId}`.
/// Spec: <https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1userdevicesuserid>
async fn user_devices(
    State(api): State<FederationApi>,
    Origin(_origin): Origin,
    user: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let user = params::path(user)?;
    let user = UserId::parse(&user).map_err(|_| Error::invalid_param("not a user id"))?;
    let d = api.e2e_keys.user_devices(&user).await?;
    let mut out = json!({
        "user_id": user,
        "stream_id": d.stream_id.0,
        "devices": d.devices,
    });
    if let Some(k) = d.master_key {
        out["master_key"] = k;
    }
    if let Some(k) = d.self_signing_key {
        out["self_signing_key"] = k;
    }
    Ok(Json(out))
}
