//! Rooms we know only in part: stripped state for invitees and knockers, stub rooms
//! holding an invite, knock or leave of one of our users, and the small queries the
//! other remote-room modules share (auth chains, whether we have a room or members in it).

use std::{collections::HashMap, sync::Arc};

use ganglion_core::{Error, ErrorKind, Pdu, Result, StreamPos};
use ganglion_storage::events::NewEvent;
use ruma::{CanonicalJsonObject, OwnedEventId, RoomId, RoomVersionId};
use serde_json::{Value, json};

use super::parse_remote;
use crate::{Rooms, storage_error};

impl Rooms {
    /// The room's stripped state (spec: "Stripped state"), for invitees and knockers.
    pub async fn stripped_state(&self, room_id: &RoomId) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for kind in [
            "m.room.create",
            "m.room.join_rules",
            "m.room.name",
            "m.room.canonical_alias",
            "m.room.avatar",
            "m.room.topic",
            "m.room.encryption",
        ] {
            let Some(id) = self
                .inner
                .store
                .select_current_state_event(room_id.as_str(), kind, "")
                .await
                .map_err(storage_error)?
            else {
                continue;
            };
            if let Some(p) = self.load_pdu(&id).await? {
                out.push(json!({
                    "type": kind,
                    "state_key": "",
                    "sender": p.sender,
                    "content": p.content_as::<Value>().unwrap_or_default(),
                }));
            }
        }
        Ok(out)
    }

    /// Keeps our user's knock on a room we do not have, with the stripped state its
    /// server returned, so that the user sees it.
    pub async fn store_remote_knock(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        event_id: &OwnedEventId,
        event: CanonicalJsonObject,
        knock_room_state: Vec<Value>,
    ) -> Result<StreamPos> {
        let unsigned = json!({ "knock_room_state": knock_room_state }).to_string();
        self.store_stub_member(room_id, version, event_id, event, "knock", Some(unsigned))
            .await
    }

    /// Keeps an invite another server sent for one of our users to a room we do not
    /// have: a stub room holding just the invite (with the stripped state that came with
    /// it in `unsigned.invite_room_state`), so that the user sees it and can join.
    pub async fn store_remote_invite(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        event_id: &OwnedEventId,
        event: CanonicalJsonObject,
        invite_room_state: Vec<Value>,
    ) -> Result<StreamPos> {
        let unsigned = json!({ "invite_room_state": invite_room_state }).to_string();
        self.store_stub_member(room_id, version, event_id, event, "invite", Some(unsigned))
            .await
    }

    /// Keeps our user's leave of a room we know only from an invite (the invite
    /// rejected through the inviter's server: `make_leave`/`send_leave`).
    pub async fn store_remote_leave(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        event_id: &OwnedEventId,
        event: CanonicalJsonObject,
    ) -> Result<StreamPos> {
        self.store_stub_member(room_id, version, event_id, event, "leave", None)
            .await
    }

    /// Stores a member event in a room we do not have the state of (a stub).
    pub(crate) async fn store_stub_member(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        event_id: &OwnedEventId,
        event: CanonicalJsonObject,
        membership: &str,
        unsigned: Option<String>,
    ) -> Result<StreamPos> {
        let persister = self.persister()?;
        let (pdu, json) = parse_remote(room_id, event_id, event)?;
        let _guard = self.lock_room(room_id.as_str()).await;
        let known = self.room_known(room_id).await?;
        let state_group = if known {
            self.head_view(room_id.as_str(), &[])
                .await?
                .and_then(|h| h.state_group)
        } else {
            None
        };
        let new_event = NewEvent {
            event_id: event_id.to_string(),
            room_id: room_id.to_string(),
            sender: pdu.sender.to_string(),
            kind: "m.room.member".into(),
            state_key: pdu.state_key.clone(),
            depth: pdu.depth,
            origin_server_ts: i64::from(pdu.origin_server_ts.get()),
            json: json.to_string(),
            unsigned,
            txn: None,
            prev_events: Vec::new(),
            prev_state_group: state_group,
            membership: Some(membership.into()),
            redacts: None,
            new_room: (!known).then(|| ganglion_storage::events::NewRoom {
                version: version.to_string(),
                creator: pdu.sender.to_string(),
            }),
            outlier: false,
            state_before: None,
            resolved_current: None,
            soft_failed: false,
            push_actions: Vec::new(),
        };
        let persisted = persister.persist(new_event).await;
        self.drop_head(room_id.as_str());
        Ok(StreamPos(persisted?.stream_ordering))
    }

    /// Whether any user of ours is joined to the room (if none, we cannot build events
    /// in it and must join through another server).
    pub async fn has_local_members(&self, room_id: &RoomId) -> Result<bool> {
        let servers = self
            .inner
            .store
            .select_joined_servers(room_id.as_str())
            .await
            .map_err(storage_error)?;
        Ok(servers.iter().any(|s| s == self.inner.server_name.as_str()))
    }

    /// The persister, or `M_UNKNOWN` 503 in a process that does not write events.
    pub(crate) fn persister(&self) -> Result<crate::Persister> {
        self.inner
            .persister
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::Unavailable, "this process does not write events"))
    }

    /// Whether we have the room (joined, left, or only invited to it).
    pub(crate) async fn room_known(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self
            .inner
            .store
            .select_room(room_id.as_str())
            .await
            .map_err(storage_error)?
            .is_some())
    }

    /// The events `roots` and everything they are authorised by, transitively.
    pub async fn auth_chain(&self, roots: Vec<String>) -> Result<Vec<Arc<Pdu>>> {
        let mut seen: HashMap<String, Arc<Pdu>> = HashMap::new();
        let mut todo = roots;
        while !todo.is_empty() {
            todo.sort();
            todo.dedup();
            todo.retain(|id| !seen.contains_key(id));
            if todo.is_empty() {
                break;
            }
            let found = self.load_pdus(&todo).await?;
            todo = found
                .values()
                .flat_map(|p| p.auth_events.iter().map(ToString::to_string))
                .collect();
            seen.extend(found);
        }
        let mut out: Vec<Arc<Pdu>> = seen.into_values().collect();
        out.sort_by_key(|p| p.depth);
        Ok(out)
    }
}
