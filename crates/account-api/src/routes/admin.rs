//! Synapse's admin API, the parts Ganglion has: shared-secret registration
//! (`/_synapse/admin/v1/register`) and registration tokens
//! (`/_synapse/admin/v1/registration_tokens`). Ruma has no types for these, so the bodies
//! are parsed here: a body that is not JSON is 400 `M_NOT_JSON`, one that is not an object
//! or has fields of the wrong type 400 `M_BAD_JSON` (registration-token fields use
//! Synapse's own codes, see `registration_tokens`).

use std::collections::HashMap;

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{
        Path, Query, State,
        rejection::{BytesRejection, PathRejection, QueryRejection},
    },
};
use ganglion_core::{Error, ErrorKind, Result, time::now_ms};
use ganglion_http::{ApiResult, AuthState, Identity};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{
    Accounts,
    password::MAX_PASSWORD_BYTES,
    registration_tokens::{NewRegistrationToken, RegistrationTokenUpdate, token_json},
    shared_secret::SharedSecretRegistration,
};

/// The caller, who must be a server admin: 401 without a valid token, 403 `M_FORBIDDEN`
/// for anyone else (Synapse's `assert_requester_is_admin`).
fn require_admin(auth: Option<Extension<AuthState>>) -> Result<Identity> {
    match auth.map(|Extension(a)| a) {
        Some(AuthState::User(identity)) if identity.is_admin => Ok(identity),
        Some(AuthState::User(_)) => Err(Error::forbidden("You are not a server admin")),
        Some(AuthState::Invalid { soft_logout }) => Err(Error::new(
            ErrorKind::UnknownToken { soft_logout },
            "unknown or expired access token",
        )),
        Some(AuthState::Anonymous) | None => {
            Err(Error::new(ErrorKind::MissingToken, "missing access token"))
        }
    }
}

/// The request body as a JSON object.
fn json_object(body: std::result::Result<Bytes, BytesRejection>) -> Result<Map<String, Value>> {
    let body = body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) => {
            Error::new(ErrorKind::TooLarge, "request body too large")
        }
        other => Error::unknown(other.body_text()),
    })?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::bad_json("Content must be a JSON object.")),
        Err(e) => Err(Error::new(
            ErrorKind::NotJson,
            format!("Content not JSON: {e}"),
        )),
    }
}

fn path_token(token: std::result::Result<Path<String>, PathRejection>) -> Result<String> {
    token
        .map(|Path(t)| t)
        .map_err(|e| Error::invalid_param(e.body_text()))
}

/// `GET /_synapse/admin/v1/register`: `{"nonce": …}`.
pub(crate) async fn get_nonce(State(accounts): State<Accounts>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "nonce": accounts.issue_nonce()? })))
}

/// The shared-secret registration body. Every field optional here so that a missing one
/// gets Synapse's "… must be specified" rather than serde's wording.
#[derive(Deserialize)]
struct RegisterBody {
    nonce: Option<String>,
    username: Option<String>,
    password: Option<String>,
    admin: Option<bool>,
    user_type: Option<String>,
    displayname: Option<String>,
    mac: Option<String>,
}

/// Checks a shared-secret registration body as Synapse's `UserRegisterServlet.on_POST`.
fn shared_secret_registration(body: Map<String, Value>) -> Result<SharedSecretRegistration> {
    let body: RegisterBody =
        serde_json::from_value(Value::Object(body)).map_err(|e| Error::bad_json(e.to_string()))?;
    let required = |field: Option<String>, name: &'static str| {
        field.ok_or_else(|| Error::bad_json(format!("{name} must be specified")))
    };
    let nonce = required(body.nonce, "nonce")?;
    let username = required(body.username, "username")?;
    if username.len() > MAX_PASSWORD_BYTES || username.contains('\0') {
        return Err(Error::unknown("Invalid username"));
    }
    let password = required(body.password, "password")?;
    if password.len() > MAX_PASSWORD_BYTES || password.contains('\0') {
        return Err(Error::unknown("Invalid password"));
    }
    let mac = required(body.mac, "mac")?;
    Ok(SharedSecretRegistration {
        nonce,
        username,
        password,
        admin: body.admin.unwrap_or(false),
        user_type: body.user_type,
        displayname: body.displayname,
        mac,
    })
}

/// `POST /_synapse/admin/v1/register`: `{access_token, user_id, home_server, device_id}`.
pub(crate) async fn register(
    State(accounts): State<Accounts>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let reg = shared_secret_registration(json_object(body)?)?;
    let grant = accounts.register_with_shared_secret(reg).await?;
    Ok(Json(json!({
        "access_token": grant.access_token,
        "user_id": grant.user_id,
        "home_server": accounts.server_name(),
        "device_id": grant.device_id,
    })))
}

/// `GET /_synapse/admin/v1/registration_tokens[?valid=true|false]`.
pub(crate) async fn list_registration_tokens(
    State(accounts): State<Accounts>,
    auth: Option<Extension<AuthState>>,
    query: std::result::Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    require_admin(auth)?;
    let Query(query) = query.map_err(|e| Error::invalid_param(e.body_text()))?;
    let valid = match query.get("valid").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            return Err(Error::invalid_param(
                "Boolean query parameter 'valid' must be one of ['true', 'false']",
            )
            .into());
        }
    };
    let tokens = accounts.registration_tokens(valid).await?;
    Ok(Json(
        json!({ "registration_tokens": tokens.iter().map(token_json).collect::<Vec<_>>() }),
    ))
}

/// `POST /_synapse/admin/v1/registration_tokens/new`.
pub(crate) async fn new_registration_token(
    State(accounts): State<Accounts>,
    auth: Option<Extension<AuthState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    require_admin(auth)?;
    let new = NewRegistrationToken::from_json(&json_object(body)?, now_ms())?;
    let token = accounts.create_registration_token(new).await?;
    Ok(Json(token_json(&token)))
}

/// `GET /_synapse/admin/v1/registration_tokens/{token}`.
pub(crate) async fn get_registration_token(
    State(accounts): State<Accounts>,
    auth: Option<Extension<AuthState>>,
    token: std::result::Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    require_admin(auth)?;
    let token = accounts.registration_token(&path_token(token)?).await?;
    Ok(Json(token_json(&token)))
}

/// `PUT /_synapse/admin/v1/registration_tokens/{token}`.
pub(crate) async fn update_registration_token(
    State(accounts): State<Accounts>,
    auth: Option<Extension<AuthState>>,
    token: std::result::Result<Path<String>, PathRejection>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    require_admin(auth)?;
    let token = path_token(token)?;
    let update = RegistrationTokenUpdate::from_json(&json_object(body)?, now_ms())?;
    let token = accounts.update_registration_token(&token, update).await?;
    Ok(Json(token_json(&token)))
}

/// `DELETE /_synapse/admin/v1/registration_tokens/{token}`: `{}`.
pub(crate) async fn delete_registration_token(
    State(accounts): State<Accounts>,
    auth: Option<Extension<AuthState>>,
    token: std::result::Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    require_admin(auth)?;
    accounts
        .delete_registration_token(&path_token(token)?)
        .await?;
    Ok(Json(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> std::result::Result<Bytes, BytesRejection> {
        Ok(Bytes::from(v.to_string()))
    }

    #[test]
    fn bodies_must_be_json_objects() {
        assert_eq!(
            json_object(Ok(Bytes::from_static(b"{nope"))).map_err(|e| e.kind),
            Err(ErrorKind::NotJson)
        );
        assert_eq!(
            json_object(Ok(Bytes::new())).map_err(|e| e.kind),
            Err(ErrorKind::NotJson)
        );
        assert_eq!(
            json_object(body(json!([1]))).map_err(|e| e.kind),
            Err(ErrorKind::BadJson)
        );
        assert!(json_object(body(json!({}))).is_ok());
    }

    #[test]
    fn shared_secret_bodies() {
        let ok =
            json!({ "nonce": "n", "username": "u", "password": "p", "mac": "m", "admin": true });
        let reg =
            shared_secret_registration(json_object(body(ok)).expect("object")).expect("valid");
        assert!(reg.admin);
        for (bad, kind) in [
            (
                json!({ "username": "u", "password": "p", "mac": "m" }),
                ErrorKind::BadJson,
            ),
            (
                json!({ "nonce": "n", "username": 5, "password": "p", "mac": "m" }),
                ErrorKind::BadJson,
            ),
            (
                json!({ "nonce": "n", "username": "u", "password": "p", "mac": "m", "admin": "yes" }),
                ErrorKind::BadJson,
            ),
            (
                json!({ "nonce": "n", "username": "u", "password": "p" }),
                ErrorKind::BadJson,
            ),
            (
                json!({ "nonce": "n", "username": "u", "password": "p\u{0}", "mac": "m" }),
                ErrorKind::Unknown,
            ),
        ] {
            let err =
                shared_secret_registration(json_object(body(bad.clone())).expect("object")).err();
            assert_eq!(err.map(|e| e.kind), Some(kind), "{bad}");
        }
    }

    #[test]
    fn admin_only() {
        let identity = |is_admin| Identity {
            user_id: ruma::owned_user_id!("@a:example.org"),
            device_id: "D".into(),
            is_admin,
            access_token: "gl_x".into(),
        };
        assert!(require_admin(Some(Extension(AuthState::User(identity(true))))).is_ok());
        let kind = |a| require_admin(a).map(drop).map_err(|e| e.kind);
        assert_eq!(
            kind(Some(Extension(AuthState::User(identity(false))))),
            Err(ErrorKind::Forbidden)
        );
        assert_eq!(kind(None), Err(ErrorKind::MissingToken));
        assert_eq!(
            kind(Some(Extension(AuthState::Invalid { soft_logout: true }))),
            Err(ErrorKind::UnknownToken { soft_logout: true })
        );
    }
}
