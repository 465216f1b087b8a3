//! The `rooms` section of `/sync`, one room at a time: a joined room's timeline, state,
//! summary and receipts, a left room's last events, and the stripped state of an invite
//! or knock. [`crate::compute`] decides which rooms go in and assembles the response.

use std::collections::{BTreeSet, HashSet};

use ganglion_core::{Result, StreamKind, SyncToken, token::PageToken};
use ganglion_rooms::{
    format::{Shape, Viewer},
    storage_error,
};
use ganglion_storage::events::EventRow;
use serde_json::{Map, Value, json};

use crate::compute::{Membership, SyncRequest, SyncService};

impl SyncService {
    pub(crate) async fn joined_room(
        &self,
        req: &SyncRequest<'_>,
        room_id: &str,
        m: &Membership,
        newly: bool,
        since_ev: i64,
        now_ev: i64,
    ) -> Result<Map<String, Value>> {
        let f = req.filter;
        let limit = f.timeline_limit;
        let join_pos = m.event.stream_ordering;
        let from = if newly { 0 } else { since_ev };
        let (rows, limited) = self.recent_events(room_id, from, now_ev, limit).await?;
        // Events from before the user joined pass history visibility; later ones are theirs.
        let (before, after): (Vec<EventRow>, Vec<EventRow>) =
            rows.into_iter().partition(|r| r.stream_ordering < join_pos);
        let mut timeline = self.rooms.filter_visible(req.user_id, before).await?;
        timeline.extend(after);
        timeline.retain(|r| f.timeline.matches(r));

        let start_pos = timeline.first().map_or(now_ev, |r| r.stream_ordering - 1);
        let prev_batch = PageToken(ganglion_core::StreamPos(start_pos.max(0)));
        let state_rows = if newly {
            self.rooms.state_at(room_id, start_pos).await?
        } else if limited {
            let old: HashSet<String> = self
                .rooms
                .state_at(room_id, since_ev)
                .await?
                .into_iter()
                .map(|r| r.event_id)
                .collect();
            self.rooms
                .state_at(room_id, start_pos)
                .await?
                .into_iter()
                .filter(|r| !old.contains(&r.event_id))
                .collect()
        } else {
            Vec::new()
        };
        let timeline_ids: HashSet<&str> = timeline.iter().map(|r| r.event_id.as_str()).collect();
        let senders: BTreeSet<&str> = timeline.iter().map(|r| r.sender.as_str()).collect();
        let state_rows: Vec<EventRow> = state_rows
            .into_iter()
            .filter(|r| !timeline_ids.contains(r.event_id.as_str()))
            .filter(|r| {
                !f.state.lazy_load_members
                    || r.kind != "m.room.member"
                    || r.state_key
                        .as_deref()
                        .is_some_and(|k| k == req.user_id || senders.contains(k))
            })
            .filter(|r| {
                f.state.matches(r) || (f.state.lazy_load_members && r.kind == "m.room.member")
            })
            .collect();
        let viewer = Some(Viewer {
            user_id: req.user_id,
            device_id: req.device_id,
        });
        let mut room = Map::new();
        let members_changed = newly
            || timeline.iter().any(|r| r.kind == "m.room.member")
            || state_rows.iter().any(|r| r.kind == "m.room.member");
        room.insert(
            "timeline".into(),
            json!({
                "events": self.rooms.format_events(&timeline, viewer, Shape::Sync).await?,
                "limited": limited,
                "prev_batch": prev_batch.to_string(),
            }),
        );
        room.insert(
            "state".into(),
            json!({ "events": self.rooms.format_events(&state_rows, viewer, Shape::Sync).await? }),
        );
        if members_changed {
            room.insert("summary".into(), self.summary(room_id, req.user_id).await?);
        } else {
            room.insert("summary".into(), json!({}));
        }
        Ok(room)
    }

    pub(crate) async fn left_room(
        &self,
        req: &SyncRequest<'_>,
        room_id: &str,
        m: &Membership,
        since_ev: i64,
    ) -> Result<Map<String, Value>> {
        let upto = m.event.stream_ordering;
        let limit = req.filter.timeline_limit;
        let (rows, limited) = self.recent_events(room_id, since_ev, upto, limit).await?;
        let timeline = self.rooms.filter_visible(req.user_id, rows).await?;
        let start_pos = timeline.first().map_or(upto, |r| r.stream_ordering - 1);
        let state = if limited || since_ev == 0 {
            let ids: HashSet<&str> = timeline.iter().map(|r| r.event_id.as_str()).collect();
            self.rooms
                .state_at(room_id, start_pos)
                .await?
                .into_iter()
                .filter(|r| !ids.contains(r.event_id.as_str()))
                .collect()
        } else {
            Vec::new()
        };
        let viewer = Some(Viewer {
            user_id: req.user_id,
            device_id: req.device_id,
        });
        let mut room = Map::new();
        room.insert(
            "timeline".into(),
            json!({
                "events": self.rooms.format_events(&timeline, viewer, Shape::Sync).await?,
                "limited": limited,
                "prev_batch": PageToken(ganglion_core::StreamPos(start_pos.max(0))).to_string(),
            }),
        );
        room.insert(
            "state".into(),
            json!({ "events": self.rooms.format_events(&state, viewer, Shape::Sync).await? }),
        );
        room.insert("account_data".into(), json!({ "events": [] }));
        Ok(room)
    }

    /// The newest `limit` events of a room in `(after, upto]`, oldest first, and whether
    /// there were more (a limited timeline).
    pub(crate) async fn recent_events(
        &self,
        room_id: &str,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<(Vec<EventRow>, bool)> {
        // Newest first, one more than the limit to learn whether the timeline is limited.
        let fetch = i64::try_from(limit + 1).unwrap_or(11);
        let mut rows = self
            .store
            .select_room_events(room_id, after, upto, true, fetch)
            .await
            .map_err(storage_error)?;
        let limited = rows.len() > limit;
        rows.truncate(limit);
        rows.reverse();
        Ok((rows, limited))
    }

    pub(crate) async fn summary(&self, room_id: &str, user_id: &str) -> Result<Value> {
        let (joined, invited) = self
            .store
            .count_room_members(room_id)
            .await
            .map_err(storage_error)?;
        let mut heroes = Vec::new();
        let has_name = self
            .store
            .select_current_state_event(room_id, "m.room.name", "")
            .await
            .map_err(storage_error)?
            .is_some()
            || self
                .store
                .select_current_state_event(room_id, "m.room.canonical_alias", "")
                .await
                .map_err(storage_error)?
                .is_some();
        if !has_name {
            for (member, _, _) in self
                .store
                .select_room_members(room_id, &["join", "invite"])
                .await
                .map_err(storage_error)?
            {
                if member != user_id {
                    heroes.push(member);
                }
                if heroes.len() == 5 {
                    break;
                }
            }
        }
        Ok(
            json!({ "m.heroes": heroes, "m.joined_member_count": joined, "m.invited_member_count": invited }),
        )
    }

    pub(crate) async fn receipts(
        &self,
        user_id: &str,
        room_id: &str,
        since: Option<SyncToken>,
        now: SyncToken,
    ) -> Result<Option<Value>> {
        let rows = self
            .store
            .select_room_receipts(
                room_id,
                since.map_or(0, |s| s.get(StreamKind::Receipts).0),
                now.get(StreamKind::Receipts).0,
            )
            .await
            .map_err(storage_error)?;
        let mut content = Map::new();
        let mut any = false;
        for r in rows {
            // Private receipts are for their owner only.
            if r.receipt_type == "m.read.private" && r.user_id != user_id {
                continue;
            }
            let mut receipt = json!({ "ts": r.ts });
            if !r.thread_id.is_empty() {
                receipt["thread_id"] = json!(r.thread_id);
            }
            let entry = content
                .entry(r.event_id.clone())
                .or_insert_with(|| json!({}));
            entry[&r.receipt_type][&r.user_id] = receipt;
            any = true;
        }
        Ok(any.then(|| json!({ "type": "m.receipt", "content": content })))
    }

    /// Stripped state for invites and knocks (spec: "Stripped state").
    pub(crate) async fn stripped_state(
        &self,
        room_id: &str,
        member_event: &EventRow,
    ) -> Result<Vec<Value>> {
        let keys: Vec<(String, String)> = [
            "m.room.create",
            "m.room.join_rules",
            "m.room.name",
            "m.room.avatar",
            "m.room.canonical_alias",
            "m.room.encryption",
            "m.room.topic",
        ]
        .iter()
        .map(|t| ((*t).to_owned(), String::new()))
        .collect();
        let mut rows = self.rooms.current_state_events(room_id, &keys).await?;
        rows.push(member_event.clone());
        // The inviter's member event helps clients show who invited.
        if let Some(inviter) = self
            .store
            .select_current_state_event(room_id, "m.room.member", &member_event.sender)
            .await
            .map_err(storage_error)?
            .filter(|_| member_event.sender != member_event.state_key.clone().unwrap_or_default())
        {
            rows.extend(
                self.store
                    .select_events(&[inviter])
                    .await
                    .map_err(storage_error)?,
            );
        }
        let mut out: Vec<Value> = rows
            .iter()
            .map(|r| {
                let pdu: Value = serde_json::from_str(&r.json).unwrap_or_default();
                json!({
                    "type": r.kind,
                    "state_key": r.state_key.clone().unwrap_or_default(),
                    "sender": r.sender,
                    "content": pdu.get("content").cloned().unwrap_or_else(|| json!({})),
                })
            })
            .collect();
        // An invite from another server to a room we do not have, or our knock on one:
        // the stripped state its server sent with it.
        if let Some(extra) = member_event
            .unsigned
            .as_deref()
            .and_then(|u| serde_json::from_str::<Value>(u).ok())
            .and_then(|u| {
                u.get("invite_room_state")
                    .or_else(|| u.get("knock_room_state"))
                    .and_then(Value::as_array)
                    .cloned()
            })
        {
            for e in extra {
                let key = (e.get("type").cloned(), e.get("state_key").cloned());
                if !out
                    .iter()
                    .any(|o| (o.get("type").cloned(), o.get("state_key").cloned()) == key)
                {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }
}
