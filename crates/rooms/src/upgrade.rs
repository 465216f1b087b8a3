//! Room upgrades (spec: Client-Server API, "Room Upgrades"): a new room with the old one
//! as predecessor, its important state copied, the aliases moved, and a tombstone in the
//! old room that points to it.

use ganglion_core::{Error, ErrorKind, Result, StreamPos};
use ruma::{OwnedRoomId, RoomId, RoomVersionId, UserId};
use serde_json::{Value, json};

use crate::{CreateRoomSpec, Rooms, SendRequest, builder::EventTemplate, storage_error};

/// State copied into the replacement room (Synapse's list, `handlers/room.py`).
const COPIED_STATE: &[&str] = &[
    "m.room.join_rules",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.encryption",
    "m.room.server_acl",
    "m.room.power_levels",
];

impl Rooms {
    /// Upgrades `room_id` to `new_version`; returns the replacement room.
    pub async fn upgrade(
        &self,
        room_id: &RoomId,
        user: &UserId,
        new_version: RoomVersionId,
    ) -> Result<(OwnedRoomId, StreamPos)> {
        if new_version.rules().is_none() {
            return Err(Error::new(
                ErrorKind::UnsupportedRoomVersion,
                "this server does not support that room version",
            ));
        }
        if !self
            .may_send_state(user, room_id.as_str(), "m.room.tombstone")
            .await?
        {
            return Err(Error::forbidden("you lack the power to upgrade this room"));
        }
        let store = &self.inner.store;
        let last = store
            .select_room_events(room_id.as_str(), 0, self.events_position().0, true, 1)
            .await
            .map_err(storage_error)?
            .pop()
            .ok_or_else(|| Error::not_found("unknown room"))?;
        let mut initial_state = Vec::new();
        let mut power_levels = None;
        for kind in COPIED_STATE {
            if let Some(content) = self
                .current_state_content(room_id.as_str(), kind, "")
                .await?
            {
                if *kind == "m.room.power_levels" {
                    power_levels = Some(content);
                } else {
                    initial_state.push(((*kind).to_owned(), String::new(), content));
                }
            }
        }
        let old_create = self
            .current_state_content(room_id.as_str(), "m.room.create", "")
            .await?
            .unwrap_or_else(|| json!({}));
        let mut creation = serde_json::Map::new();
        creation.insert(
            "predecessor".into(),
            json!({ "room_id": room_id, "event_id": last.event_id }),
        );
        if let Some(t) = old_create.get("type") {
            creation.insert("type".into(), t.clone());
        }
        // The upgrader needs power to set the copied state; keep the old levels otherwise.
        let v12 = new_version
            .rules()
            .is_some_and(|r| r.authorization.explicitly_privilege_room_creators);
        let mut pl_override = power_levels
            .and_then(|p| p.as_object().cloned())
            .unwrap_or_default();
        if let Some(users) = pl_override.get_mut("users").and_then(Value::as_object_mut) {
            if v12 {
                users.remove(user.as_str());
            } else {
                users.insert(user.to_string(), json!(100));
            }
        }
        let (profile_name, profile_avatar) = match store
            .select_user(user.as_str())
            .await
            .map_err(storage_error)?
        {
            Some(u) => (u.displayname, u.avatar_url),
            None => (None, None),
        };
        let (new_room, _) = self
            .create_room(CreateRoomSpec {
                creator: user.to_owned(),
                creator_profile: (profile_name, profile_avatar),
                version: Some(new_version),
                preset: None,
                public: false,
                name: None,
                topic: None,
                alias: None,
                invite: Vec::new(),
                is_direct: false,
                initial_state,
                creation_content: Some(creation),
                power_level_content_override: Some(pl_override),
            })
            .await?;
        // Move local aliases and the canonical alias.
        let aliases = store
            .select_room_aliases(room_id.as_str())
            .await
            .map_err(storage_error)?;
        for alias in &aliases {
            store.delete_alias(alias).await.map_err(storage_error)?;
            store
                .insert_alias(alias, new_room.as_str(), user.as_str())
                .await
                .map_err(storage_error)?;
        }
        if let Some(canonical) = self
            .current_state_content(room_id.as_str(), "m.room.canonical_alias", "")
            .await?
        {
            self.send(SendRequest {
                room_id: new_room.clone(),
                sender: user.to_owned(),
                template: EventTemplate::state("m.room.canonical_alias", "", canonical),
                txn: None,
            })
            .await?;
        }
        if store
            .select_room(room_id.as_str())
            .await
            .map_err(storage_error)?
            .is_some_and(|r| r.is_public)
        {
            store
                .update_room_public(room_id.as_str(), false)
                .await
                .map_err(storage_error)?;
            store
                .update_room_public(new_room.as_str(), true)
                .await
                .map_err(storage_error)?;
        }
        // The tombstone, then restrict the old room so conversation moves on.
        let tomb = self
            .send(SendRequest {
                room_id: room_id.to_owned(),
                sender: user.to_owned(),
                template: EventTemplate::state(
                    "m.room.tombstone",
                    "",
                    json!({ "body": "This room has been replaced", "replacement_room": new_room }),
                ),
                txn: None,
            })
            .await?;
        let mut pos = tomb.pos;
        if let Some(mut pl) = self
            .current_state_content(room_id.as_str(), "m.room.power_levels", "")
            .await?
        {
            let restrict = |v: Option<&Value>| {
                json!(
                    crate::send::as_int(v.unwrap_or(&json!(0)))
                        .unwrap_or(0)
                        .max(50)
                )
            };
            pl["events_default"] = restrict(pl.get("events_default"));
            pl["invite"] = restrict(pl.get("invite"));
            if let Ok(o) = self
                .send(SendRequest {
                    room_id: room_id.to_owned(),
                    sender: user.to_owned(),
                    template: EventTemplate::state("m.room.power_levels", "", pl),
                    txn: None,
                })
                .await
            {
                pos = o.pos;
            }
        }
        Ok((new_room, pos))
    }
}
