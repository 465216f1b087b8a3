//! Membership endpoints (spec: Client-Server API, "Room membership").

use axum::{Json, Router, extract::State};
use ganglion_core::Error;
use ganglion_http::{ApiResult, Authed, route};
use ruma::api::client::{
    knock::knock_room,
    membership::{
        ban_user, forget_room, invite_user, join_room_by_id, join_room_by_id_or_alias,
        joined_rooms, kick_user, leave_room, unban_user,
    },
};
use serde_json::{Value, json};

use crate::ClientApi;

/// Registers the membership routes.
pub fn routes(r: Router<ClientApi>) -> Router<ClientApi> {
    let r = route::<join_room_by_id::v3::Request, _, _, _>(r, join_room_by_id);
    let r = route::<join_room_by_id_or_alias::v3::Request, _, _, _>(r, join_room_by_id_or_alias);
    let r = route::<invite_user::v3::Request, _, _, _>(r, invite_user);
    let r = route::<leave_room::v3::Request, _, _, _>(r, leave_room);
    let r = route::<forget_room::v3::Request, _, _, _>(r, forget_room);
    let r = route::<kick_user::v3::Request, _, _, _>(r, kick_user);
    let r = route::<ban_user::v3::Request, _, _, _>(r, ban_user);
    let r = route::<unban_user::v3::Request, _, _, _>(r, unban_user);
    let r = route::<knock_room::v3::Request, _, _, _>(r, knock_room);
    route::<joined_rooms::v3::Request, _, _, _>(r, joined_rooms)
}

/// `POST /_matrix/client/v3/rooms/{roomId}/join`.
pub async fn join_room_by_id(
    State(api): State<ClientApi>,
    req: Authed<join_room_by_id::v3::Request>,
) -> ApiResult<Json<Value>> {
    api.room_limit.check(req.user().as_str())?;
    let room_id = api
        .rooms
        .join_anywhere(
            &req.body.room_id,
            req.user(),
            req.body.reason.as_deref(),
            Vec::new(),
        )
        .await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `POST /_matrix/client/v3/join/{roomIdOrAlias}`.
pub async fn join_room_by_id_or_alias(
    State(api): State<ClientApi>,
    req: Authed<join_room_by_id_or_alias::v3::Request>,
) -> ApiResult<Json<Value>> {
    api.room_limit.check(req.user().as_str())?;
    let via: Vec<String> = req.body.via.iter().map(ToString::to_string).collect();
    let room_id = api
        .rooms
        .join_by_id_or_alias(
            &req.body.room_id_or_alias,
            req.user(),
            req.body.reason.as_deref(),
            &via,
        )
        .await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/invite`.
pub async fn invite_user(
    State(api): State<ClientApi>,
    req: Authed<invite_user::v3::Request>,
) -> ApiResult<Json<Value>> {
    match &req.body.recipient {
        invite_user::v3::InvitationRecipient::UserId(invitee) => {
            api.rooms
                .invite(
                    &req.body.room_id,
                    req.user(),
                    &invitee.user_id,
                    invitee.reason.as_deref(),
                    false,
                )
                .await?;
            Ok(Json(json!({})))
        }
        _ => Err(Error::forbidden("third-party invites are not supported").into()),
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/leave`.
pub async fn leave_room(
    State(api): State<ClientApi>,
    req: Authed<leave_room::v3::Request>,
) -> ApiResult<Json<Value>> {
    api.rooms
        .leave_anywhere(&req.body.room_id, req.user(), req.body.reason.as_deref())
        .await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/forget`.
pub async fn forget_room(
    State(api): State<ClientApi>,
    req: Authed<forget_room::v3::Request>,
) -> ApiResult<Json<Value>> {
    api.rooms.forget(&req.body.room_id, req.user()).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/kick`.
pub async fn kick_user(
    State(api): State<ClientApi>,
    req: Authed<kick_user::v3::Request>,
) -> ApiResult<Json<Value>> {
    api.rooms
        .set_membership_of(
            &req.body.room_id,
            req.user(),
            &req.body.user_id,
            "leave",
            req.body.reason.as_deref(),
        )
        .await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/ban`.
pub async fn ban_user(
    State(api): State<ClientApi>,
    req: Authed<ban_user::v3::Request>,
) -> ApiResult<Json<Value>> {
    api.rooms
        .set_membership_of(
            &req.body.room_id,
            req.user(),
            &req.body.user_id,
            "ban",
            req.body.reason.as_deref(),
        )
        .await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/unban`.
pub async fn unban_user(
    State(api): State<ClientApi>,
    req: Authed<unban_user::v3::Request>,
) -> ApiResult<Json<Value>> {
    api.rooms
        .unban(
            &req.body.room_id,
            req.user(),
            &req.body.user_id,
            req.body.reason.as_deref(),
        )
        .await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/knock/{roomIdOrAlias}`.
pub async fn knock_room(
    State(api): State<ClientApi>,
    req: Authed<knock_room::v3::Request>,
) -> ApiResult<Json<Value>> {
    let via: Vec<String> = req.body.via.iter().map(ToString::to_string).collect();
    let room_id = api
        .rooms
        .knock_anywhere(
            &req.body.room_id_or_alias,
            req.user(),
            req.body.reason.as_deref(),
            &via,
        )
        .await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `GET /_matrix/client/v3/joined_rooms`.
pub async fn joined_rooms(
    State(api): State<ClientApi>,
    req: Authed<joined_rooms::v3::Request>,
) -> ApiResult<Json<Value>> {
    let rooms = api.rooms.joined_rooms(req.user()).await?;
    Ok(Json(json!({ "joined_rooms": rooms })))
}
