//! OpenID (Client-Server API, "OpenID"): tokens a user hands to a third-party service,
//! which exchanges them with us over federation (`/openid/userinfo`) for the user's id.

use axum::{
    Json, Router,
    extract::{FromRequest, FromRequestParts, State},
};
use ganglion_core::{Error, ErrorKind};
use ganglion_http::{ApiResult, Authed, BodyLimit, Identity, route};
use ruma::api::client::account::request_openid_token;
use serde_json::{Value, json};

use crate::ClientApi;

/// Registers the OpenID route.
pub fn routes(r: Router<ClientApi>) -> Router<ClientApi> {
    route::<request_openid_token::v3::Request, _, _, _>(r, request_openid_token)
}

/// `POST /_matrix/client/v3/user/{userId}/openid/request_token`: for oneself only; the
/// body must be a JSON object (`{}`; Synapse refuses anything else with `M_NOT_JSON`),
/// which ruma's request type, having no body fields, does not check. Spec:
/// <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3useruseridopenidrequest_token>
pub async fn request_openid_token(
    State(api): State<ClientApi>,
    req: axum::extract::Request,
) -> ApiResult<Json<Value>> {
    let req = with_object_body(req).await?;
    let req = Authed::<request_openid_token::v3::Request>::from_request(req, &api).await?;
    req.ensure_self(&req.body.user_id)?;
    let (token, expires_in) = api.user_data.issue_openid_token(req.user()).await?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "matrix_server_name": api.rooms.server_name(),
        "expires_in": expires_in.as_secs(),
    })))
}

/// The request again once its body is known to be a JSON object (an empty body counts
/// as `{}`, as everywhere else). A caller without a valid token gets its 401 first.
async fn with_object_body(req: axum::extract::Request) -> ApiResult<axum::extract::Request> {
    let (mut parts, body) = req.into_parts();
    Identity::from_request_parts(&mut parts, &()).await?;
    let limit = parts
        .extensions
        .get::<BodyLimit>()
        .map_or(MAX_BODY, |l| l.0);
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        Error::new(
            ErrorKind::TooLarge,
            format!("request body over {limit} bytes"),
        )
    })?;
    if !bytes.is_empty() {
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::new(ErrorKind::NotJson, format!("content not JSON: {e}")))?;
        if !v.is_object() {
            return Err(Error::new(ErrorKind::NotJson, "the body must be a JSON object").into());
        }
    }
    Ok(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
}

/// The body limit when the server set none (the default of `server.max_request_bytes`).
const MAX_BODY: usize = 1024 * 1024;
