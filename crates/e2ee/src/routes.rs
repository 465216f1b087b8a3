//! The thin handlers: spec modules `keys` and `to_device`.

use std::collections::BTreeMap;

use axum::{Json, Router, extract::State};
use ganglion_core::Error;
use ganglion_http::{ApiResult, Authed, RumaResponse, route};
use ruma::{
    OwnedUserId,
    api::client::{
        dehydrated_device::{
            delete_dehydrated_device, get_dehydrated_device, get_events as dehydrated_events,
            put_dehydrated_device,
        },
        keys::{claim_keys, get_keys, upload_keys, upload_signatures, upload_signing_keys},
        to_device::send_event_to_device,
    },
};
use serde_json::{Value, json};

use crate::{
    E2eeApi,
    dehydrated::Upload,
    signing::{AuthNeeded, SigningKeysUpload},
};

/// Registers every handler of this crate.
pub(crate) fn routes(r: Router<E2eeApi>) -> Router<E2eeApi> {
    let r = route::<upload_keys::v3::Request, _, _, _>(r, upload_keys);
    let r = route::<get_keys::v3::Request, _, _, _>(r, get_keys);
    let r = route::<claim_keys::v3::Request, _, _, _>(r, claim_keys);
    let r = route::<upload_signing_keys::v3::Request, _, _, _>(r, upload_signing_keys);
    let r = route::<upload_signatures::v3::Request, _, _, _>(r, upload_signatures);
    let r = route::<send_event_to_device::v3::Request, _, _, _>(r, send_event_to_device);
    let r = route::<put_dehydrated_device::unstable::Request, _, _, _>(r, put_dehydrated);
    let r = route::<get_dehydrated_device::unstable::Request, _, _, _>(r, get_dehydrated);
    let r = route::<delete_dehydrated_device::unstable::Request, _, _, _>(r, delete_dehydrated);
    route::<dehydrated_events::unstable::Request, _, _, _>(r, dehydrated_device_events)
}

/// `POST /_matrix/client/v3/keys/upload`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3keysupload>
async fn upload_keys(
    State(api): State<E2eeApi>,
    req: Authed<upload_keys::v3::Request>,
) -> ApiResult<RumaResponse<upload_keys::v3::Response>> {
    let b = &req.body;
    let counts = api
        .keys
        .upload(
            req.user(),
            req.device(),
            b.device_keys.as_ref(),
            &b.one_time_keys,
            &b.fallback_keys,
        )
        .await?;
    Ok(RumaResponse(upload_keys::v3::Response::new(counts)))
}

/// `POST /_matrix/client/v3/keys/query`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3keysquery>
async fn get_keys(
    State(api): State<E2eeApi>,
    req: Authed<get_keys::v3::Request>,
) -> ApiResult<Json<Value>> {
    let found = api
        .keys
        .query(req.user(), &req.body.device_keys, req.body.timeout)
        .await?;
    Ok(Json(json!({
        "device_keys": found.device_keys,
        "master_keys": found.master_keys,
        "self_signing_keys": found.self_signing_keys,
        "user_signing_keys": found.user_signing_keys,
        "failures": found.failures,
    })))
}

/// `POST /_matrix/client/v3/keys/claim`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3keysclaim>
async fn claim_keys(
    State(api): State<E2eeApi>,
    req: Authed<claim_keys::v3::Request>,
) -> ApiResult<Json<Value>> {
    let (claimed, failures) = api
        .keys
        .claim(&req.body.one_time_keys, req.body.timeout)
        .await?;
    Ok(Json(
        json!({ "one_time_keys": claimed, "failures": failures }),
    ))
}

/// `POST /_matrix/client/v3/keys/device_signing/upload`: replacing existing keys needs
/// user-interactive auth; the first upload does not (MSC3967).
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3keysdevice_signingupload>
async fn upload_signing_keys(
    State(api): State<E2eeApi>,
    req: Authed<upload_signing_keys::v3::Request>,
) -> ApiResult<RumaResponse<upload_signing_keys::v3::Response>> {
    let b = &req.body;
    let upload = SigningKeysUpload {
        master: b.master_key.as_ref(),
        self_signing: b.self_signing_key.as_ref(),
        user_signing: b.user_signing_key.as_ref(),
    };
    if api
        .keys
        .signing_upload_needs_auth(req.user(), &upload)
        .await?
        == AuthNeeded::Yes
    {
        api.accounts
            .authorize_with_password("device_signing_upload", req.user(), b.auth.as_ref())
            .await?;
    }
    api.keys.upload_signing_keys(req.user(), &upload).await?;
    Ok(RumaResponse(upload_signing_keys::v3::Response::new()))
}

/// `POST /_matrix/client/v3/keys/signatures/upload`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3keyssignaturesupload>
async fn upload_signatures(
    State(api): State<E2eeApi>,
    req: Authed<upload_signatures::v3::Request>,
) -> ApiResult<Json<Value>> {
    let mut signed: BTreeMap<OwnedUserId, BTreeMap<String, Value>> = BTreeMap::new();
    for (user, keys) in &req.body.signed_keys {
        for (key_id, raw) in keys {
            let value: Value = serde_json::from_str(raw.get())
                .map_err(|e| Error::bad_json(format!("signed key {key_id}: {e}")))?;
            signed
                .entry(user.clone())
                .or_default()
                .insert(key_id.to_owned(), value);
        }
    }
    let failures = api.keys.upload_signatures(req.user(), &signed).await?;
    Ok(Json(json!({ "failures": failures })))
}

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#put_matrixclientv3sendtodeviceeventtypetxnid>
async fn send_event_to_device(
    State(api): State<E2eeApi>,
    req: Authed<send_event_to_device::v3::Request>,
) -> ApiResult<RumaResponse<send_event_to_device::v3::Response>> {
    let b = &req.body;
    api.to_device
        .send(
            req.user(),
            req.device(),
            &b.event_type.to_string(),
            b.txn_id.as_str(),
            &b.messages,
        )
        .await?;
    Ok(RumaResponse(send_event_to_device::v3::Response::new()))
}

/// `PUT /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device`.
/// MSC3814: <https://github.com/matrix-org/matrix-spec-proposals/pull/3814>
async fn put_dehydrated(
    State(api): State<E2eeApi>,
    req: Authed<put_dehydrated_device::unstable::Request>,
) -> ApiResult<RumaResponse<put_dehydrated_device::unstable::Response>> {
    let b = &req.body;
    let upload = Upload {
        device_id: &b.device_id,
        display_name: b.initial_device_display_name.as_deref(),
        device_data: b.device_data.json(),
        device_keys: &b.device_keys,
        one_time_keys: &b.one_time_keys,
        fallback_keys: &b.fallback_keys,
    };
    let device_id = api.dehydrated.put(req.user(), &upload).await?;
    Ok(RumaResponse(
        put_dehydrated_device::unstable::Response::new(device_id),
    ))
}

/// `GET /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device`.
async fn get_dehydrated(
    State(api): State<E2eeApi>,
    req: Authed<get_dehydrated_device::unstable::Request>,
) -> ApiResult<Json<Value>> {
    let (device_id, device_data) = api.dehydrated.get(req.user()).await?;
    Ok(Json(
        json!({ "device_id": device_id, "device_data": device_data }),
    ))
}

/// `DELETE /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device`.
async fn delete_dehydrated(
    State(api): State<E2eeApi>,
    req: Authed<delete_dehydrated_device::unstable::Request>,
) -> ApiResult<RumaResponse<delete_dehydrated_device::unstable::Response>> {
    let device_id = api.dehydrated.delete(req.user()).await?;
    Ok(RumaResponse(
        delete_dehydrated_device::unstable::Response::new(device_id),
    ))
}

/// `POST /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{deviceId}/events`.
async fn dehydrated_device_events(
    State(api): State<E2eeApi>,
    req: Authed<dehydrated_events::unstable::Request>,
) -> ApiResult<Json<Value>> {
    let b = &req.body;
    let (events, next_batch) = api
        .dehydrated
        .events(req.user(), &b.device_id, b.next_batch.as_deref())
        .await?;
    Ok(Json(json!({ "events": events, "next_batch": next_batch })))
}
