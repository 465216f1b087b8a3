//! Spec module `device`: the caller's own device list.

use axum::extract::State;
use ganglion_http::{ApiResult, Authed, RumaResponse};
use ruma::api::client::device::{
    delete_device, delete_devices, get_device, get_devices, update_device,
};

use crate::Accounts;

/// `GET /_matrix/client/v3/devices`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3devices>
pub(crate) async fn get_devices(
    State(accounts): State<Accounts>,
    req: Authed<get_devices::v3::Request>,
) -> ApiResult<RumaResponse<get_devices::v3::Response>> {
    let devices = accounts.devices(req.user()).await?;
    Ok(RumaResponse(get_devices::v3::Response::new(devices)))
}

/// `GET /_matrix/client/v3/devices/{deviceId}`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3devicesdeviceid>
pub(crate) async fn get_device(
    State(accounts): State<Accounts>,
    req: Authed<get_device::v3::Request>,
) -> ApiResult<RumaResponse<get_device::v3::Response>> {
    let device = accounts.device(req.user(), &req.body.device_id).await?;
    Ok(RumaResponse(get_device::v3::Response::new(device)))
}

/// `PUT /_matrix/client/v3/devices/{deviceId}`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3devicesdeviceid>
pub(crate) async fn update_device(
    State(accounts): State<Accounts>,
    req: Authed<update_device::v3::Request>,
) -> ApiResult<RumaResponse<update_device::v3::Response>> {
    accounts
        .rename_device(
            req.user(),
            &req.body.device_id,
            req.body.display_name.as_deref(),
        )
        .await?;
    Ok(RumaResponse(update_device::v3::Response::new()))
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#delete_matrixclientv3devicesdeviceid>
pub(crate) async fn delete_device(
    State(accounts): State<Accounts>,
    req: Authed<delete_device::v3::Request>,
) -> ApiResult<RumaResponse<delete_device::v3::Response>> {
    accounts
        .delete_device(&req.identity, req.body.device_id, req.body.auth.as_ref())
        .await?;
    Ok(RumaResponse(delete_device::v3::Response::new()))
}

/// `POST /_matrix/client/v3/delete_devices`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3delete_devices>
pub(crate) async fn delete_devices(
    State(accounts): State<Accounts>,
    req: Authed<delete_devices::v3::Request>,
) -> ApiResult<RumaResponse<delete_devices::v3::Response>> {
    accounts
        .delete_devices(&req.identity, &req.body.devices, req.body.auth.as_ref())
        .await?;
    Ok(RumaResponse(delete_devices::v3::Response::new()))
}
