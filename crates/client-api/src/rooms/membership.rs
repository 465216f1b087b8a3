//! Membership endpoints (spec: Client-Server API, "Room membership").

use axum::{Json, Router, extract::State};
use ganglion_core::Error;
use ganglion_http::{ApiResult, Authed, route};
use ganglion_rooms::storage_error;
use ruma::{
    OwnedRoomId, RoomOrAliasId,
    api::client::{
        knock::knock_room,
        membership::{
            ban_user, forget_room, invite_user, join_room_by_id, join_room_by_id_or_alias,
            joined_rooms, kick_user, leave_room, unban_user,
        },
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

/// A room id, or an alias resolved (ours from the database, another server's over
/// federation), with the servers that can be asked about it.
async fn resolve_room_and_servers(
    api: &ClientApi,
    target: &RoomOrAliasId,
) -> ApiResult<(OwnedRoomId, Vec<String>)> {
    let alias = match <&ruma::RoomId>::try_from(target) {
        Ok(id) => return Ok((id.to_owned(), Vec::new())),
        Err(alias) => alias,
    };
    if alias.server_name() != api.rooms.server_name()
        && let Some(fed) = &api.federation
    {
        return Ok(fed.query_directory(alias).await?);
    }
    let (room_id, _) = api
        .rooms
        .store()
        .select_alias(alias.as_str())
        .await
        .map_err(storage_error)?
        .ok_or_else(|| Error::not_found("room alias not found"))?;
    let room_id =
        OwnedRoomId::try_from(room_id).map_err(|_| Error::internal("stored room id is invalid"))?;
    Ok((room_id, Vec::new()))
}

/// Joins a room we know, or one we do not through the servers given (and the room id's
/// own server, for versions whose ids carry one).
async fn join_anywhere(
    api: &ClientApi,
    room_id: &ruma::RoomId,
    user: &ruma::UserId,
    reason: Option<&str>,
    mut via: Vec<String>,
) -> ApiResult<OwnedRoomId> {
    let known = api
        .rooms
        .store()
        .select_room(room_id.as_str())
        .await
        .map_err(storage_error)?
        .is_some();
    // A room we are in (any of our users is joined) is joined locally; one we know only
    // from an invite, or not at all, through another server.
    if known && (api.federation.is_none() || api.rooms.has_local_members(room_id).await?) {
        return Ok(api.rooms.join(room_id, user, reason).await?.room_id);
    }
    let Some(fed) = &api.federation else {
        return Err(Error::not_found("unknown room (federation is off)").into());
    };
    if known {
        let membership = api
            .rooms
            .store()
            .select_membership(room_id.as_str(), user.as_str())
            .await
            .map_err(storage_error)?;
        if membership.as_ref().is_some_and(|(m, _)| m == "ban") {
            return Err(Error::forbidden("you are banned from this room").into());
        }
        // The inviter's server can let us in.
        if let Some((m, event_id)) = membership
            && m == "invite"
        {
            via.extend(servers_of_invite(api, room_id, &event_id).await?);
        }
    }
    if let Some(server) = room_id.server_name() {
        via.push(server.to_string());
    }
    via.dedup();
    Ok(ganglion_federation::join::join_remote(
        &fed.client,
        &fed.keys,
        &fed.key,
        &api.rooms,
        room_id,
        user,
        &via,
    )
    .await?)
}

/// The servers that can answer for an invite to a room we do not have: the inviter's,
/// then the room id's own (room versions whose ids name one).
async fn servers_of_invite(
    api: &ClientApi,
    room_id: &ruma::RoomId,
    invite_event_id: &str,
) -> ApiResult<Vec<String>> {
    let mut via = Vec::new();
    if let Some(ev) = api
        .rooms
        .store()
        .select_event(invite_event_id)
        .await
        .map_err(storage_error)?
        && let Ok(inviter) = ruma::UserId::parse(&ev.sender)
    {
        via.push(inviter.server_name().to_string());
    }
    if let Some(server) = room_id.server_name() {
        via.push(server.to_string());
    }
    via.dedup();
    Ok(via)
}

/// `POST /_matrix/client/v3/rooms/{roomId}/join`.
pub async fn join_room_by_id(
    State(api): State<ClientApi>,
    req: Authed<join_room_by_id::v3::Request>,
) -> ApiResult<Json<Value>> {
    api.room_limit.check(req.user().as_str())?;
    let room_id = join_anywhere(
        &api,
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
    let (room_id, mut servers) = resolve_room_and_servers(&api, &req.body.room_id_or_alias).await?;
    servers.extend(req.body.via.iter().map(ToString::to_string));
    let room_id = join_anywhere(
        &api,
        &room_id,
        req.user(),
        req.body.reason.as_deref(),
        servers,
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
    let room_id = &req.body.room_id;
    // An invite to a room none of our users is in is rejected through the inviter's
    // server: we cannot build events in a room whose state we do not have.
    if let Some(fed) = &api.federation
        && let Some((m, event_id)) = api
            .rooms
            .store()
            .select_membership(room_id.as_str(), req.user().as_str())
            .await
            .map_err(storage_error)?
        && m == "invite"
        && !api.rooms.has_local_members(room_id).await?
    {
        let via = servers_of_invite(&api, room_id, &event_id).await?;
        ganglion_federation::join::leave_remote(
            &fed.client,
            &fed.key,
            &api.rooms,
            room_id,
            req.user(),
            &via,
        )
        .await?;
        return Ok(Json(json!({})));
    }
    api.rooms
        .leave(room_id, req.user(), req.body.reason.as_deref())
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
    let (room_id, mut servers) = resolve_room_and_servers(&api, &req.body.room_id_or_alias).await?;
    // A room none of our users is in is knocked on through another server.
    if let Some(fed) = &api.federation
        && !api.rooms.has_local_members(&room_id).await?
    {
        servers.extend(req.body.via.iter().map(ToString::to_string));
        if let Some(server) = room_id.server_name() {
            servers.push(server.to_string());
        }
        servers.dedup();
        ganglion_federation::join::knock_remote(
            &fed.client,
            &fed.key,
            &api.rooms,
            &room_id,
            req.user(),
            &servers,
        )
        .await?;
        return Ok(Json(json!({ "room_id": room_id })));
    }
    let out = api
        .rooms
        .knock(&room_id, req.user(), req.body.reason.as_deref())
        .await?;
    Ok(Json(json!({ "room_id": out.room_id })))
}

/// `GET /_matrix/client/v3/joined_rooms`.
pub async fn joined_rooms(
    State(api): State<ClientApi>,
    req: Authed<joined_rooms::v3::Request>,
) -> ApiResult<Json<Value>> {
    let rooms = api.rooms.joined_rooms(req.user()).await?;
    Ok(Json(json!({ "joined_rooms": rooms })))
}
