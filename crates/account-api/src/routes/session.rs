//! Spec module `session`: login types, login, logout, refresh.

use axum::{
    Extension,
    body::{Body, to_bytes},
    extract::{FromRequest, Request, State},
};
use ganglion_core::{Error, ErrorKind};
use ganglion_http::{ApiError, ApiResult, Authed, BodyLimit, ClientIp, Ruma, RumaResponse};
use ruma::api::client::session::{
    get_login_types::{
        self,
        v3::{LoginType, PasswordLoginType},
    },
    login, logout, logout_all, refresh_token,
};

use crate::Accounts;

/// Body limit when the server set none (the same default as `ganglion_http`'s extractors).
const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// A `POST /login` body. ruma 0.25's `LoginInfo` deserializer indexes `type` unchecked and
/// panics when it is absent, so a body without `type` is refused here first (400
/// `M_BAD_JSON`, the code ruma gives any other missing field).
pub(crate) struct LoginBody(login::v3::Request);

impl<S: Send + Sync> FromRequest<S> for LoginBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let limit = parts
            .extensions
            .get::<BodyLimit>()
            .map_or(DEFAULT_BODY_LIMIT, |l| l.0);
        let bytes = to_bytes(body, limit).await.map_err(|_| {
            Error::new(
                ErrorKind::TooLarge,
                format!("request body over {limit} bytes"),
            )
        })?;
        if let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(&bytes)
            && !fields.contains_key("type")
        {
            return Err(Error::bad_json("missing field `type`").into());
        }
        let req = Request::from_parts(parts, Body::from(bytes));
        let Ruma(login) = Ruma::<login::v3::Request>::from_request(req, state).await?;
        Ok(LoginBody(login))
    }
}

/// `GET /_matrix/client/v3/login`: password login only.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3login>
pub(crate) async fn get_login_types(
    Ruma(_): Ruma<get_login_types::v3::Request>,
) -> RumaResponse<get_login_types::v3::Response> {
    RumaResponse(get_login_types::v3::Response::new(vec![
        LoginType::Password(PasswordLoginType::new()),
    ]))
}

/// `POST /_matrix/client/v3/login`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3login>
pub(crate) async fn login(
    State(accounts): State<Accounts>,
    ip: Option<Extension<ClientIp>>,
    LoginBody(req): LoginBody,
) -> ApiResult<RumaResponse<login::v3::Response>> {
    let grant = accounts
        .login(req, ip.map(|Extension(ClientIp(ip))| ip))
        .await?;
    let mut resp = login::v3::Response::new(grant.user_id, grant.access_token, grant.device_id);
    // Deprecated since r0.4.0 but still sent by Synapse; older clients read it.
    #[allow(deprecated)]
    {
        resp.home_server = Some(accounts.server_name().to_owned());
    }
    resp.refresh_token = grant.refresh_token;
    resp.expires_in = grant.expires_in;
    Ok(RumaResponse(resp))
}

/// `POST /_matrix/client/v3/logout`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3logout>
pub(crate) async fn logout(
    State(accounts): State<Accounts>,
    req: Authed<logout::v3::Request>,
) -> ApiResult<RumaResponse<logout::v3::Response>> {
    accounts.logout(&req.identity).await?;
    Ok(RumaResponse(logout::v3::Response::new()))
}

/// `POST /_matrix/client/v3/logout/all`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3logoutall>
pub(crate) async fn logout_all(
    State(accounts): State<Accounts>,
    req: Authed<logout_all::v3::Request>,
) -> ApiResult<RumaResponse<logout_all::v3::Response>> {
    accounts.logout_all(&req.identity).await?;
    Ok(RumaResponse(logout_all::v3::Response::new()))
}

/// `POST /_matrix/client/v3/refresh`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3refresh>
pub(crate) async fn refresh_token(
    State(accounts): State<Accounts>,
    Ruma(req): Ruma<refresh_token::v3::Request>,
) -> ApiResult<RumaResponse<refresh_token::v3::Response>> {
    let grant = accounts.refresh(&req.refresh_token).await?;
    let mut resp = refresh_token::v3::Response::new(grant.access_token);
    resp.refresh_token = grant.refresh_token;
    resp.expires_in_ms = grant.expires_in;
    Ok(RumaResponse(resp))
}
