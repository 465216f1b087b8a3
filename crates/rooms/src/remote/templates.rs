//! Membership templates for remote users (Server-Server API, "Joining Rooms", "Knocking
//! upon a room", "Leaving Rooms"): the unsigned events `make_join`, `make_knock` and
//! `make_leave` answer with, built against the room's current state.

use ganglion_core::{Error, ErrorKind, Result, time::now_ms};
use ruma::{
    RoomId, RoomVersionId, UserId, events::TimelineEventType,
    room_version_rules::EventsReferenceFormatVersion, state_res,
};
use serde_json::{Value, json};

use super::join_content;
use crate::{Rooms, storage_error};

impl Rooms {
    /// The unsigned join event a remote server fills in for `user_id`: current forward
    /// extremities as `prev_events`, the auth events the rules select from current
    /// state. `versions` are the room versions the remote supports.
    pub async fn make_join(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        versions: &[String],
    ) -> Result<(RoomVersionId, Value)> {
        let (version, rules) = self.room_version(room_id.as_str()).await?;
        if !versions.iter().any(|v| v == version.as_str()) {
            return Err(Error::new(
                ErrorKind::IncompatibleRoomVersion,
                format!("the room is version {version}, which your server does not support"),
            ));
        }
        if rules.events_reference_format == EventsReferenceFormatVersion::V1 {
            return Err(Error::new(
                ErrorKind::IncompatibleRoomVersion,
                "joining rooms of versions 1 and 2 over federation is not supported yet",
            ));
        }
        // Only what the auth rules would allow: a public room, or an invited user.
        let join_rule = self
            .current_state_content(room_id.as_str(), "m.room.join_rules", "")
            .await?
            .and_then(|c| {
                c.get("join_rule")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
        let membership = self
            .inner
            .store
            .select_membership(room_id.as_str(), user_id.as_str())
            .await
            .map_err(storage_error)?
            .map(|(m, _)| m);
        let allowed = join_rule.as_deref() == Some("public")
            || matches!(membership.as_deref(), Some("invite" | "join"));
        let mut content = join_content();
        if !allowed {
            // A restricted room: one of our members with invite power vouches for a user
            // joined to an allowed room (the join then needs our signature too).
            let restricted = matches!(
                join_rule.as_deref(),
                Some("restricted" | "knock_restricted")
            ) && rules.authorization.restricted_join_rule;
            if !restricted {
                return Err(Error::forbidden(
                    "you are not invited to this room and it is not public",
                ));
            }
            let Some(via) = self.restricted_join_authoriser(room_id, user_id).await? else {
                return Err(Error::forbidden("you are not allowed to join this room"));
            };
            content["join_authorised_via_users_server"] = json!(via);
        }
        let event = self
            .member_template(room_id, user_id, content, &rules)
            .await?;
        Ok((version, event))
    }

    /// The unsigned knock a remote server fills in for `user_id` (`make_knock`): the
    /// room's version must have knocking and be one the remote supports, and its join
    /// rule must be `knock` (or `knock_restricted`).
    pub async fn make_knock(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        versions: &[String],
    ) -> Result<(RoomVersionId, Value)> {
        let (version, rules) = self.room_version(room_id.as_str()).await?;
        if !versions.iter().any(|v| v == version.as_str()) || !rules.authorization.knocking {
            return Err(Error::new(
                ErrorKind::IncompatibleRoomVersion,
                format!("the room is version {version}, which cannot be knocked on here"),
            ));
        }
        let join_rule = self
            .current_state_content(room_id.as_str(), "m.room.join_rules", "")
            .await?
            .and_then(|c| {
                c.get("join_rule")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
        let knockable = join_rule.as_deref() == Some("knock")
            || (join_rule.as_deref() == Some("knock_restricted")
                && rules.authorization.knock_restricted_join_rule);
        if !knockable {
            return Err(Error::forbidden("this room does not accept knocks"));
        }
        let membership = self
            .inner
            .store
            .select_membership(room_id.as_str(), user_id.as_str())
            .await
            .map_err(storage_error)?
            .map(|(m, _)| m);
        if matches!(membership.as_deref(), Some("ban" | "join")) {
            return Err(Error::forbidden("a banned or joined user cannot knock"));
        }
        let event = self
            .member_template(room_id, user_id, json!({ "membership": "knock" }), &rules)
            .await?;
        Ok((version, event))
    }

    /// The unsigned leave event a remote server fills in for `user_id`, invited or
    /// joined (`make_leave`: rejecting an invite, or leaving through us).
    pub async fn make_leave(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<(RoomVersionId, Value)> {
        let (version, rules) = self.room_version(room_id.as_str()).await?;
        let membership = self
            .inner
            .store
            .select_membership(room_id.as_str(), user_id.as_str())
            .await
            .map_err(storage_error)?
            .map(|(m, _)| m);
        if !matches!(membership.as_deref(), Some("invite" | "join" | "knock")) {
            return Err(Error::forbidden("you are not in this room and not invited"));
        }
        let event = self
            .member_template(room_id, user_id, json!({ "membership": "leave" }), &rules)
            .await?;
        Ok((version, event))
    }

    /// A member event of `user_id` about themselves, unsigned: current forward
    /// extremities as `prev_events`, the auth events the rules select from current state.
    pub(crate) async fn member_template(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        content: Value,
        rules: &ruma::room_version_rules::RoomVersionRules,
    ) -> Result<Value> {
        let raw = serde_json::value::to_raw_value(&content)
            .map_err(|e| Error::internal(e.to_string()))?;
        let auth_types = state_res::auth_types_for_event(
            &TimelineEventType::RoomMember,
            user_id,
            Some(user_id.as_str()),
            &raw,
            &rules.authorization,
        )
        .map_err(Error::internal)?;
        let keys: Vec<(String, String)> = auth_types
            .iter()
            .map(|(t, k)| (t.to_string(), k.clone()))
            .collect();
        let head = self
            .head_view(room_id.as_str(), &keys)
            .await?
            .ok_or_else(|| Error::not_found("unknown room"))?;
        let auth_events: Vec<&String> = head
            .state
            .iter()
            .filter(|((t, k), _)| {
                (rules.event_format.allow_room_create_in_auth_events || t != "m.room.create")
                    && auth_types
                        .iter()
                        .any(|(at, ak)| at.to_string() == *t && ak == k)
            })
            .map(|(_, id)| id)
            .collect();
        let depth = head.extremities.iter().map(|(_, d)| *d).max().unwrap_or(0) + 1;
        let prev_events: Vec<&String> =
            head.extremities.iter().take(10).map(|(id, _)| id).collect();
        Ok(json!({
            "type": "m.room.member",
            "state_key": user_id,
            "sender": user_id,
            "content": content,
            "room_id": room_id,
            "origin_server_ts": now_ms(),
            "depth": depth,
            "prev_events": prev_events,
            "auth_events": auth_events,
        }))
    }
}
