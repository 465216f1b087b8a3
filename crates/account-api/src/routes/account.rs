//! Spec module `account`: registration, availability, whoami, password, deactivation.

use axum::{
    Extension, Json,
    extract::State,
    response::{IntoResponse, Response},
};
use ganglion_http::{ApiResult, AuthState, Authed, ClientIp, Ruma, RumaResponse};
use ruma::{
    OwnedDeviceId, OwnedUserId,
    api::client::account::{
        ThirdPartyIdRemovalStatus, change_password, check_registration_token_validity, deactivate,
        get_username_availability, register, whoami,
    },
};
use serde::Serialize;
use serde_json::json;

use crate::Accounts;

/// `POST /_matrix/client/v3/register`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3register>
pub(crate) async fn register(
    State(accounts): State<Accounts>,
    ip: Option<Extension<ClientIp>>,
    auth: Option<Extension<AuthState>>,
    Ruma(req): Ruma<register::v3::Request>,
) -> ApiResult<Response> {
    let sent_access_token = matches!(
        auth.as_deref(),
        Some(AuthState::User(_) | AuthState::Invalid { .. })
    );
    let registered = accounts
        .register(req, ip.map(|Extension(ClientIp(ip))| ip), sent_access_token)
        .await?;
    let Some(login) = registered.login else {
        // With `inhibit_login` there is no device. Ruma would send `"device_id": null`;
        // the spec only requires it when logging in, and Synapse leaves it out.
        return Ok(Json(json!({ "user_id": registered.user_id })).into_response());
    };
    let mut resp = register::v3::Response::new(registered.user_id);
    resp.access_token = Some(login.access_token);
    resp.device_id = Some(login.device_id);
    resp.refresh_token = login.refresh_token;
    resp.expires_in = login.expires_in;
    Ok(RumaResponse(resp).into_response())
}

/// `GET /_matrix/client/v3/register/available`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3registeravailable>
pub(crate) async fn get_username_availability(
    State(accounts): State<Accounts>,
    Ruma(req): Ruma<get_username_availability::v3::Request>,
) -> ApiResult<RumaResponse<get_username_availability::v3::Response>> {
    accounts.check_username_available(&req.username).await?;
    Ok(RumaResponse(get_username_availability::v3::Response::new(
        true,
    )))
}

/// `GET /_matrix/client/v1/register/m.login.registration_token/validity`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv1registermloginregistration_tokenvalidity>
pub(crate) async fn check_registration_token_validity(
    State(accounts): State<Accounts>,
    Ruma(req): Ruma<check_registration_token_validity::v1::Request>,
) -> ApiResult<RumaResponse<check_registration_token_validity::v1::Response>> {
    let valid = accounts.registration_token_validity(&req.token).await?;
    Ok(RumaResponse(
        check_registration_token_validity::v1::Response::new(valid),
    ))
}

/// The whoami body. Not ruma's response: ruma leaves out `is_guest` when false, and
/// Synapse (like the spec's example) sends it.
#[derive(Serialize)]
pub(crate) struct WhoamiBody {
    user_id: OwnedUserId,
    device_id: OwnedDeviceId,
    is_guest: bool,
}

/// `GET /_matrix/client/v3/account/whoami`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3accountwhoami>
pub(crate) async fn whoami(req: Authed<whoami::v3::Request>) -> Json<WhoamiBody> {
    Json(WhoamiBody {
        user_id: req.identity.user_id,
        device_id: req.identity.device_id,
        is_guest: false,
    })
}

/// `POST /_matrix/client/v3/account/password`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3accountpassword>
pub(crate) async fn change_password(
    State(accounts): State<Accounts>,
    req: Authed<change_password::v3::Request>,
) -> ApiResult<RumaResponse<change_password::v3::Response>> {
    let body = req.body;
    accounts
        .change_password(
            &req.identity,
            body.new_password,
            body.logout_devices,
            body.auth.as_ref(),
        )
        .await?;
    Ok(RumaResponse(change_password::v3::Response::new()))
}

/// `POST /_matrix/client/v3/account/deactivate`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3accountdeactivate>
pub(crate) async fn deactivate(
    State(accounts): State<Accounts>,
    req: Authed<deactivate::v3::Request>,
) -> ApiResult<RumaResponse<deactivate::v3::Response>> {
    accounts
        .deactivate(&req.identity, req.body.auth.as_ref())
        .await?;
    Ok(RumaResponse(deactivate::v3::Response::new(
        ThirdPartyIdRemovalStatus::NoSupport,
    )))
}
