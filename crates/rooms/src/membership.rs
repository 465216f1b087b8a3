//! Membership changes (spec: Client-Server API, "Room membership"): join, invite, leave,
//! kick, ban, unban, knock. The auth rules decide who may; this adds the content.

use ganglion_core::{Error, Result};
use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::{Value, json};

use crate::{Rooms, SendOutcome, SendRequest, builder::EventTemplate, storage_error};

impl Rooms {
    async fn member_event(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        mut content: Value,
        txn: Option<(String, String)>,
    ) -> Result<SendOutcome> {
        // A member event carries the target's profile when they are local (Synapse does this
        // for joins and invites).
        let membership = content
            .get("membership")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if matches!(membership.as_str(), "join" | "invite" | "knock")
            && target.server_name() == self.server_name()
            && let Some(user) = self
                .inner
                .store
                .select_user(target.as_str())
                .await
                .map_err(storage_error)?
        {
            if let Some(d) = user.displayname {
                content["displayname"] = json!(d);
            }
            if let Some(a) = user.avatar_url {
                content["avatar_url"] = json!(a);
            }
        }
        self.send(SendRequest {
            room_id: room_id.to_owned(),
            sender: sender.to_owned(),
            template: EventTemplate::state("m.room.member", target.as_str(), content),
            txn,
        })
        .await
    }

    /// Joins a local room. Unknown rooms answer `M_NOT_FOUND` (remote joins come with
    /// federation).
    pub async fn join(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
    ) -> Result<SendOutcome> {
        let room = self
            .inner
            .store
            .select_room(room_id.as_str())
            .await
            .map_err(storage_error)?
            .ok_or_else(|| Error::not_found("no known servers to join this room through"))?;
        // Already joined: joining again is a no-op that returns the room (Synapse sends a
        // profile-refresh event; we answer with the current membership).
        if let Some((m, event_id)) = self
            .inner
            .store
            .select_membership(&room.room_id, user.as_str())
            .await
            .map_err(storage_error)?
            && m == "join"
            && let Some(row) = self
                .inner
                .store
                .select_event(&event_id)
                .await
                .map_err(storage_error)?
        {
            return Ok(SendOutcome {
                event_id: event_id
                    .as_str()
                    .try_into()
                    .map_err(|_| Error::internal("bad stored id"))?,
                room_id: room_id.to_owned(),
                pos: ganglion_core::StreamPos(row.stream_ordering),
            });
        }
        let mut content = membership_content("join", reason);
        if let Some(via) = self.restricted_join_authoriser(room_id, user).await? {
            content["join_authorised_via_users_server"] = json!(via);
        }
        self.member_event(room_id, user, user, content, None).await
    }

    /// For a restricted room the user is not invited to: a joined local member with
    /// invite power, if the user is in one of the allowed rooms.
    pub(crate) async fn restricted_join_authoriser(
        &self,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<Option<OwnedUserId>> {
        let Some(jr) = self
            .current_state_content(room_id.as_str(), "m.room.join_rules", "")
            .await?
        else {
            return Ok(None);
        };
        let rule = jr
            .get("join_rule")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if rule != "restricted" && rule != "knock_restricted" {
            return Ok(None);
        }
        if let Some((m, _)) = self
            .inner
            .store
            .select_membership(room_id.as_str(), user.as_str())
            .await
            .map_err(storage_error)?
            && (m == "invite" || m == "join")
        {
            return Ok(None);
        }
        let allowed: Vec<String> = jr
            .get("allow")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter(|e| e.get("type").and_then(Value::as_str) == Some("m.room_membership"))
                    .filter_map(|e| e.get("room_id").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut member_of_allowed = false;
        for r in &allowed {
            if let Some((m, _)) = self
                .inner
                .store
                .select_membership(r, user.as_str())
                .await
                .map_err(storage_error)?
                && m == "join"
            {
                member_of_allowed = true;
                break;
            }
        }
        if !member_of_allowed {
            return Err(Error::forbidden("you are not allowed to join this room"));
        }
        let pl = self
            .current_state_content(room_id.as_str(), "m.room.power_levels", "")
            .await?;
        let invite_level = pl
            .as_ref()
            .and_then(|p| p.get("invite"))
            .and_then(crate::send::as_int)
            .unwrap_or(0);
        let creators = self.creators(room_id).await?;
        for (member, _, _) in self
            .inner
            .store
            .select_room_members(room_id.as_str(), &["join"])
            .await
            .map_err(storage_error)?
        {
            let Ok(uid) = OwnedUserId::try_from(member.as_str()) else {
                continue;
            };
            if uid.server_name() == self.server_name()
                && crate::send::power_level_of(pl.as_ref(), uid.as_str(), &creators) >= invite_level
            {
                return Ok(Some(uid));
            }
        }
        Err(Error::forbidden("no local member can authorise this join"))
    }

    /// Invites a user.
    pub async fn invite(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
        is_direct: bool,
    ) -> Result<SendOutcome> {
        let remote = target.server_name() != self.server_name();
        if remote && self.inner.federation.is_none() {
            return Err(Error::forbidden(
                "inviting users on other servers needs federation, which is not enabled",
            ));
        }
        // A remote user's existence is for their server to say (it countersigns).
        if !remote
            && self
                .inner
                .store
                .select_user(target.as_str())
                .await
                .map_err(storage_error)?
                .is_none()
        {
            return Err(Error::not_found("unknown user"));
        }
        let mut content = membership_content("invite", reason);
        if is_direct {
            content["is_direct"] = json!(true);
        }
        self.member_event(room_id, sender, target, content, None)
            .await
    }

    /// Leaves a room (or rejects an invite, or withdraws a knock).
    pub async fn leave(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
    ) -> Result<SendOutcome> {
        match self
            .inner
            .store
            .select_membership(room_id.as_str(), user.as_str())
            .await
            .map_err(storage_error)?
        {
            Some((m, _)) if m == "join" || m == "invite" || m == "knock" => {}
            _ => return Err(Error::forbidden("you are not in this room")),
        }
        let content = membership_content("leave", reason);
        self.member_event(room_id, user, user, content, None).await
    }

    /// Kicks, bans or unbans `target`; `membership` is `leave` (kick or unban) or `ban`.
    pub async fn set_membership_of(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        membership: &str,
        reason: Option<&str>,
    ) -> Result<SendOutcome> {
        let current = self
            .inner
            .store
            .select_membership(room_id.as_str(), target.as_str())
            .await
            .map_err(storage_error)?;
        match (membership, current.as_ref().map(|(m, _)| m.as_str())) {
            ("leave", Some("join" | "invite" | "knock" | "ban")) | ("ban", _) => {}
            ("leave", _) => return Err(Error::forbidden("the user is not in the room")),
            _ => return Err(Error::bad_json("unsupported membership change")),
        }
        let content = membership_content(membership, reason);
        self.member_event(room_id, sender, target, content, None)
            .await
    }

    /// Knocks on a room.
    pub async fn knock(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
    ) -> Result<SendOutcome> {
        if self
            .inner
            .store
            .select_room(room_id.as_str())
            .await
            .map_err(storage_error)?
            .is_none()
        {
            return Err(Error::not_found("no known servers to knock through"));
        }
        let content = membership_content("knock", reason);
        self.member_event(room_id, user, user, content, None).await
    }

    /// Re-sends a local user's member events after a profile change (spec: profile changes
    /// "SHOULD" update member events in every joined room).
    pub async fn refresh_member_profile(
        &self,
        user: &UserId,
    ) -> Result<Option<ganglion_core::StreamPos>> {
        let rooms = self
            .inner
            .store
            .select_user_rooms(user.as_str(), &["join"])
            .await
            .map_err(storage_error)?;
        let mut last = None;
        for (room_id, _, event_id, _) in rooms {
            let Ok(room_id) = ruma::OwnedRoomId::try_from(room_id.as_str()) else {
                continue;
            };
            let mut content = self
                .load_pdu(&event_id)
                .await?
                .and_then(|p| p.content_as::<Value>())
                .unwrap_or_else(|| json!({}));
            if let Some(obj) = content.as_object_mut() {
                obj.remove("displayname");
                obj.remove("avatar_url");
                obj.remove("join_authorised_via_users_server");
                obj.insert("membership".into(), json!("join"));
            }
            match self.member_event(&room_id, user, user, content, None).await {
                Ok(o) => last = Some(o.pos),
                Err(e) => {
                    tracing::warn!(room = %room_id, error = %e, "could not refresh member profile")
                }
            }
        }
        Ok(last)
    }

    /// Unbans a banned user (their membership becomes `leave`).
    pub async fn unban(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<SendOutcome> {
        match self
            .inner
            .store
            .select_membership(room_id.as_str(), target.as_str())
            .await
            .map_err(storage_error)?
        {
            Some((m, _)) if m == "ban" => {
                self.set_membership_of(room_id, sender, target, "leave", reason)
                    .await
            }
            _ => Err(Error::forbidden("the user is not banned")),
        }
    }

    /// Forgets a room the user has left.
    pub async fn forget(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        match self
            .inner
            .store
            .select_membership(room_id.as_str(), user.as_str())
            .await
            .map_err(storage_error)?
        {
            Some((m, _)) if m == "join" || m == "invite" || m == "knock" => Err(Error::unknown(
                "you must leave the room before forgetting it",
            )),
            None => Err(Error::not_found("you were never in this room")),
            Some(_) => self
                .inner
                .store
                .insert_forgotten(user.as_str(), room_id.as_str())
                .await
                .map_err(storage_error),
        }
    }

    /// The rooms a user is joined to.
    pub async fn joined_rooms(&self, user: &UserId) -> Result<Vec<String>> {
        let rooms = self
            .inner
            .store
            .select_user_rooms(user.as_str(), &["join"])
            .await
            .map_err(storage_error)?;
        Ok(rooms.into_iter().map(|(r, _, _, _)| r).collect())
    }
}

/// A member event's content: the membership and the optional reason.
fn membership_content(membership: &str, reason: Option<&str>) -> Value {
    let mut content = json!({ "membership": membership });
    if let Some(r) = reason {
        content["reason"] = json!(r);
    }
    content
}
