//! Typing, receipts and read markers (spec: Client-Server API, "Typing Notifications",
//! "Receipts", "Fully read markers").

use axum::{Json, Router, extract::State};
use ganglion_http::{ApiResult, Authed, route};
use ruma::api::client::{
    read_marker::set_read_marker, receipt::create_receipt, typing::create_typing_event,
};
use serde_json::{Value, json};

use crate::ClientApi;

/// Registers the ephemeral routes.
pub fn routes(r: Router<ClientApi>) -> Router<ClientApi> {
    let r = route::<create_typing_event::v3::Request, _, _, _>(r, create_typing_event);
    let r = route::<create_receipt::v3::Request, _, _, _>(r, create_receipt);
    route::<set_read_marker::v3::Request, _, _, _>(r, set_read_marker)
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}`.
pub async fn create_typing_event(
    State(api): State<ClientApi>,
    req: Authed<create_typing_event::v3::Request>,
) -> ApiResult<Json<Value>> {
    req.ensure_self(&req.body.user_id)?;
    let timeout = match &req.body.state {
        create_typing_event::v3::Typing::Yes(info) => Some(info.timeout),
        _ => None,
    };
    api.ephemeral
        .set_typing(req.body.room_id.as_str(), req.user().as_str(), timeout)
        .await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}`.
pub async fn create_receipt(
    State(api): State<ClientApi>,
    req: Authed<create_receipt::v3::Request>,
) -> ApiResult<Json<Value>> {
    let b = &req.body;
    let thread = b.thread.as_str().unwrap_or("");
    if b.receipt_type.to_string() == "m.fully_read" && !thread.is_empty() {
        return Err(
            ganglion_core::Error::bad_json("m.fully_read receipts cannot be threaded").into(),
        );
    }
    api.ephemeral
        .set_receipt(
            b.room_id.as_str(),
            req.user().as_str(),
            b.receipt_type.as_ref(),
            b.event_id.as_str(),
            thread,
        )
        .await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/read_markers`.
pub async fn set_read_marker(
    State(api): State<ClientApi>,
    req: Authed<set_read_marker::v3::Request>,
) -> ApiResult<Json<Value>> {
    let b = &req.body;
    let user = req.user().as_str();
    let room = b.room_id.as_str();
    if let Some(e) = &b.fully_read {
        api.ephemeral
            .set_receipt(room, user, "m.fully_read", e.as_str(), "")
            .await?;
    }
    if let Some(e) = &b.read_receipt {
        api.ephemeral
            .set_receipt(room, user, "m.read", e.as_str(), "")
            .await?;
    }
    if let Some(e) = &b.private_read_receipt {
        api.ephemeral
            .set_receipt(room, user, "m.read.private", e.as_str(), "")
            .await?;
    }
    Ok(Json(json!({})))
}
