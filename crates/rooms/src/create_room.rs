//! `createRoom` (spec: Client-Server API, "Creation"): the create event, the creator's
//! join, power levels, the preset's rules, initial state, name, topic and invites, each
//! through the ordinary send path.

use ganglion_core::{Error, ErrorKind, Result, StreamPos};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, RoomVersionId};
use serde_json::{Map, Value, json};

use crate::{
    Rooms,
    builder::EventTemplate,
    send::{Creating, SendRequest},
};

/// The `preset` of `createRoom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Invite-only, shared history, guests may join.
    PrivateChat,
    /// As private, and every invitee gets the creator's power level.
    TrustedPrivateChat,
    /// Anyone may join, shared history, no guests.
    PublicChat,
}

/// Everything `createRoom` asks for, validated by the handler.
#[derive(Debug, Clone)]
pub struct CreateRoomSpec {
    /// The creator.
    pub creator: OwnedUserId,
    /// The creator's profile, for their member event.
    pub creator_profile: (Option<String>, Option<String>),
    /// Room version (default: the server's).
    pub version: Option<RoomVersionId>,
    /// Preset (default from visibility).
    pub preset: Option<Preset>,
    /// `visibility: public` (also lists the room in the directory).
    pub public: bool,
    /// `m.room.name`.
    pub name: Option<String>,
    /// `m.room.topic`.
    pub topic: Option<String>,
    /// Full canonical alias to create (`#localpart:server`), already checked free.
    pub alias: Option<String>,
    /// Users to invite.
    pub invite: Vec<OwnedUserId>,
    /// Marks invites as direct.
    pub is_direct: bool,
    /// Extra state events: (type, state key, content).
    pub initial_state: Vec<(String, String, Value)>,
    /// Extra keys for the create event's content.
    pub creation_content: Option<Map<String, Value>>,
    /// Keys that override the default power levels.
    pub power_level_content_override: Option<Map<String, Value>>,
}

impl Rooms {
    /// Creates a room. Returns its id and the position of its last initial event.
    pub async fn create_room(&self, spec: CreateRoomSpec) -> Result<(OwnedRoomId, StreamPos)> {
        let version = spec
            .version
            .clone()
            .unwrap_or_else(|| self.inner.default_version.clone());
        let rules = version.rules().ok_or_else(|| {
            Error::new(
                ErrorKind::UnsupportedRoomVersion,
                "this server does not support that room version",
            )
        })?;
        let v12 = rules.authorization.explicitly_privilege_room_creators;
        let preset = spec.preset.unwrap_or(if spec.public {
            Preset::PublicChat
        } else {
            Preset::PrivateChat
        });
        let creator = spec.creator.clone();

        // 1. m.room.create
        let mut create = spec.creation_content.clone().unwrap_or_default();
        create.insert("room_version".into(), json!(version.as_str()));
        if rules.authorization.use_room_create_sender {
            create.remove("creator");
        } else {
            create.insert("creator".into(), json!(creator));
        }
        if v12 && preset == Preset::TrustedPrivateChat && !spec.invite.is_empty() {
            let mut extra: Vec<Value> = create
                .get("additional_creators")
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            extra.extend(spec.invite.iter().map(|u| json!(u)));
            create.insert("additional_creators".into(), Value::Array(extra));
        }
        let room_id: OwnedRoomId =
            if rules.room_id_format == ruma::room_version_rules::RoomIdFormatVersion::V2 {
                // Placeholder: a v12 room's id is derived from its create event by the builder.
                RoomId::new_v2("placeholder0000000000000000000000000000000")
                    .map_err(|e| Error::internal(e.to_string()))?
            } else {
                RoomId::new_v1(self.server_name())
            };
        let created = self
            .send_inner(
                SendRequest {
                    room_id: room_id.clone(),
                    sender: creator.clone(),
                    template: EventTemplate::state("m.room.create", "", Value::Object(create)),
                    txn: None,
                },
                Some(Creating {
                    version: version.clone(),
                }),
            )
            .await?;
        let room_id = created.room_id.clone();
        let send = |tpl: EventTemplate| {
            let req = SendRequest {
                room_id: room_id.clone(),
                sender: creator.clone(),
                template: tpl,
                txn: None,
            };
            async move { self.send(req).await }
        };

        // 2. the creator joins
        let mut member = json!({ "membership": "join" });
        if let Some(d) = &spec.creator_profile.0 {
            member["displayname"] = json!(d);
        }
        if let Some(a) = &spec.creator_profile.1 {
            member["avatar_url"] = json!(a);
        }
        send(EventTemplate::state(
            "m.room.member",
            creator.as_str(),
            member,
        ))
        .await?;

        // 3. power levels
        let mut users = Map::new();
        if !v12 {
            users.insert(creator.to_string(), json!(100));
        }
        if preset == Preset::TrustedPrivateChat && !v12 {
            for u in &spec.invite {
                users.insert(u.to_string(), json!(100));
            }
        }
        let mut pl = json!({
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                "m.room.tombstone": 100,
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": 0,
            "historical": 100,
        });
        if let (Some(over), Some(obj)) = (&spec.power_level_content_override, pl.as_object_mut()) {
            for (k, v) in over {
                obj.insert(k.clone(), v.clone());
            }
        }
        let mut last = send(EventTemplate::state("m.room.power_levels", "", pl))
            .await?
            .pos;

        // 4. canonical alias
        if let Some(alias) = &spec.alias {
            self.inner
                .store
                .insert_alias(alias, room_id.as_str(), creator.as_str())
                .await
                .map_err(|e| match e {
                    ganglion_storage::Error::Conflict(_) => {
                        Error::new(ErrorKind::RoomInUse, "room alias already taken")
                    }
                    other => crate::storage_error(other),
                })?;
            last = send(EventTemplate::state(
                "m.room.canonical_alias",
                "",
                json!({ "alias": alias }),
            ))
            .await?
            .pos;
        }

        // 5. the preset's rules (unless initial_state sets them)
        let has_initial = |t: &str| {
            spec.initial_state
                .iter()
                .any(|(k, sk, _)| k == t && sk.is_empty())
        };
        let (join_rule, guest) = match preset {
            Preset::PublicChat => ("public", "forbidden"),
            Preset::PrivateChat | Preset::TrustedPrivateChat => ("invite", "can_join"),
        };
        if !has_initial("m.room.join_rules") {
            last = send(EventTemplate::state(
                "m.room.join_rules",
                "",
                json!({ "join_rule": join_rule }),
            ))
            .await?
            .pos;
        }
        if !has_initial("m.room.history_visibility") {
            last = send(EventTemplate::state(
                "m.room.history_visibility",
                "",
                json!({ "history_visibility": "shared" }),
            ))
            .await?
            .pos;
        }
        if !has_initial("m.room.guest_access") {
            last = send(EventTemplate::state(
                "m.room.guest_access",
                "",
                json!({ "guest_access": guest }),
            ))
            .await?
            .pos;
        }

        // 6. initial state
        for (kind, sk, content) in &spec.initial_state {
            last = send(EventTemplate::state(kind, sk, content.clone()))
                .await?
                .pos;
        }

        // 7. name and topic
        if let Some(name) = &spec.name {
            last = send(EventTemplate::state(
                "m.room.name",
                "",
                json!({ "name": name }),
            ))
            .await?
            .pos;
        }
        if let Some(topic) = &spec.topic {
            let content = json!({
                "topic": topic,
                "m.topic": { "m.text": [{ "mimetype": "text/plain", "body": topic }] },
            });
            last = send(EventTemplate::state("m.room.topic", "", content))
                .await?
                .pos;
        }

        // 8. invites
        for invitee in &spec.invite {
            last = self
                .invite(&room_id, &creator, invitee, None, spec.is_direct)
                .await?
                .pos;
        }

        if spec.public {
            self.inner
                .store
                .update_room_public(room_id.as_str(), true)
                .await
                .map_err(crate::storage_error)?;
        }
        Ok((room_id, last))
    }
}
