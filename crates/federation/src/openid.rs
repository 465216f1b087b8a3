//! OpenID (Server-Server API, "OpenID"): a third-party service exchanges the OpenID
//! token one of our users gave it for the user's id. The request is not signed: the
//! caller need not be a homeserver.

use axum::{Json, Router, extract::State, http::Uri, routing::get};
use ganglion_core::{Error, ErrorKind, time::now_ms};
use ganglion_http::ApiError;
use ganglion_rooms::storage_error;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{params, server::FederationApi};

/// The userinfo route.
pub(crate) fn routes() -> Router<FederationApi> {
    Router::new().route("/_matrix/federation/v1/openid/userinfo", get(userinfo))
}

#[derive(Debug, Deserialize)]
struct UserInfoParams {
    access_token: Option<String>,
}

/// `GET /_matrix/federation/v1/openid/userinfo?access_token=`: `{"sub": user id}`; 401
/// `M_UNKNOWN_TOKEN` for a token that is unknown or expired, 401 `M_MISSING_TOKEN`
/// without one (Synapse `federation/transport/server/__init__.py`, `OpenIdUserInfo`).
async fn userinfo(State(api): State<FederationApi>, uri: Uri) -> Result<Json<Value>, ApiError> {
    let p: UserInfoParams = params::query(&uri)?;
    let token = p
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::new(ErrorKind::MissingToken, "Access Token required"))?;
    let user = api
        .store
        .select_openid_token_owner(&token, now_ms())
        .await
        .map_err(storage_error)?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::UnknownToken { soft_logout: false },
                "Access Token unknown or expired",
            )
        })?;
    Ok(Json(json!({ "sub": user })))
}
