//! Evaluating push rules for an event (spec: Client-Server API, "Push Rules"): for every
//! local user joined to the room (and a local user the event invites), the actions of
//! their first enabled rule that matches, kept when they notify. Runs once per event,
//! before it is persisted, in the caller's task (so rooms are evaluated in parallel);
//! the persister writes the result in the event's transaction (docs/push.md).
//!
//! What a rule needs of the room (members, display names, the member count, power
//! levels) is cached per room and dropped when a state event of the room is persisted
//! ([`Evaluator::state_changed`]); main is the only writer of events, so the cache is
//! coherent.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use ganglion_core::{Error, Result};
use ganglion_storage::{Store, events::NewEvent, push_actions::NewPushAction};
use ruma::{
    OwnedRoomId, OwnedServerName, OwnedUserId, RoomVersionId, UInt,
    events::room::power_levels::{
        RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource,
    },
    push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx},
    serde::Raw,
};
use serde_json::Value;

use crate::rules::RulesetCache;

/// What the rules of a room's members need to know of it.
#[derive(Debug)]
struct RoomCtx {
    room_id: OwnedRoomId,
    /// Joined members, of every server.
    member_count: UInt,
    /// Joined local members and their display names in the room.
    local: Vec<(OwnedUserId, String)>,
    power_levels: Option<PushConditionPowerLevelsCtx>,
}

/// The push-rule evaluator. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Evaluator {
    store: Store,
    server_name: OwnedServerName,
    rules: RulesetCache,
    rooms: Arc<Mutex<HashMap<String, Arc<RoomCtx>>>>,
    epoch: Arc<AtomicU64>,
}

/// Rooms whose context is cached at most.
const ROOMS: usize = 5_000;

/// The thread an event belongs to: its thread root when it is in a thread, else `main`.
pub fn thread_of(content: &Value) -> String {
    let rel = &content["m.relates_to"];
    match (rel["rel_type"].as_str(), rel["event_id"].as_str()) {
        (Some("m.thread"), Some(root)) => root.to_owned(),
        _ => "main".to_owned(),
    }
}

impl Evaluator {
    /// The evaluator for this server's users, sharing `rules` with the `/pushrules`
    /// handlers.
    pub fn new(store: Store, server_name: OwnedServerName, rules: RulesetCache) -> Evaluator {
        Evaluator {
            store,
            server_name,
            rules,
            rooms: Arc::new(Mutex::new(HashMap::new())),
            epoch: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The notifications `ev` causes: one per local user whose rules say `notify`.
    /// Outliers and soft-failed events notify nobody.
    pub async fn evaluate(&self, ev: &NewEvent) -> Result<Vec<NewPushAction>> {
        if ev.outlier || ev.soft_failed || ev.new_room.is_some() {
            return Ok(Vec::new());
        }
        let pdu: Value = serde_json::from_str(&ev.json)
            .map_err(|e| Error::internal(format!("event JSON: {e}")))?;
        let room = self.room(&ev.room_id).await?;
        let mut recipients: Vec<(OwnedUserId, String)> = room
            .local
            .iter()
            .filter(|(u, _)| u.as_str() != ev.sender)
            .cloned()
            .collect();
        // An invite notifies the invitee, who is not a member yet (as Synapse).
        if ev.membership.as_deref() == Some("invite")
            && let Some(invitee) = ev.state_key.as_deref()
            && let Ok(invitee) = OwnedUserId::try_from(invitee)
            && invitee.server_name() == self.server_name
            && !recipients.iter().any(|(u, _)| *u == invitee)
        {
            let name = pdu["content"]["displayname"].as_str().unwrap_or_default();
            recipients.push((invitee, name.to_owned()));
        }
        if recipients.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Raw<Value> = Raw::from_json(
            serde_json::value::to_raw_value(&pdu)
                .map_err(|e| Error::internal(format!("event JSON: {e}")))?,
        );
        let flat = FlattenedJson::from_raw(&raw);
        let thread = thread_of(&pdu["content"]);
        let mut out = Vec::new();
        for (user, name) in recipients {
            let rules = self.rules.get(&user).await?;
            let mut ctx = PushConditionRoomCtx::new(
                room.room_id.clone(),
                room.member_count,
                user.clone(),
                name,
            );
            ctx.power_levels = room.power_levels.clone();
            let mut matched: Option<&[Action]> = None;
            for rule in rules.iter() {
                if rule.enabled() && rule.applies(&flat, &ctx).await {
                    matched = Some(rule.actions());
                    break;
                }
            }
            let Some(actions) = matched.filter(|a| a.iter().any(Action::should_notify)) else {
                continue;
            };
            out.push(NewPushAction {
                user_id: user.to_string(),
                thread_id: thread.clone(),
                highlight: actions.iter().any(Action::is_highlight),
                actions: serde_json::to_string(actions)
                    .map_err(|e| Error::internal(format!("push actions: {e}")))?,
            });
        }
        Ok(out)
    }

    /// A state event of `room_id` was persisted: its cached context is out of date.
    pub fn state_changed(&self, room_id: &str) {
        let mut rooms = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        rooms.remove(room_id);
    }

    /// The room's context, cached or read from its current state.
    async fn room(&self, room_id: &str) -> Result<Arc<RoomCtx>> {
        if let Some(r) = self.lock().get(room_id) {
            return Ok(r.clone());
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let ctx = Arc::new(self.load_room(room_id).await?);
        let mut rooms = self.lock();
        if self.epoch.load(Ordering::Acquire) == epoch {
            if rooms.len() >= ROOMS {
                rooms.clear();
            }
            rooms.insert(room_id.to_owned(), ctx.clone());
        }
        Ok(ctx)
    }

    async fn load_room(&self, room_id: &str) -> Result<RoomCtx> {
        let db = |e: ganglion_storage::Error| Error::internal(format!("room {room_id}: {e}"));
        let room_oid = OwnedRoomId::try_from(room_id)
            .map_err(|e| Error::internal(format!("room id {room_id}: {e}")))?;
        let joined = self
            .store
            .select_room_members(room_id, &["join"])
            .await
            .map_err(db)?;
        let member_count = UInt::try_from(joined.len()).unwrap_or(UInt::MAX);
        let suffix = format!(":{}", self.server_name);
        let mut ids: Vec<String> = joined
            .iter()
            .filter(|(u, ..)| u.ends_with(&suffix))
            .map(|(_, _, e)| e.clone())
            .collect();
        for kind in ["m.room.power_levels", "m.room.create"] {
            if let Some(id) = self
                .store
                .select_current_state_event(room_id, kind, "")
                .await
                .map_err(db)?
            {
                ids.push(id);
            }
        }
        let events = self.store.select_events(&ids).await.map_err(db)?;
        let mut local = Vec::new();
        let mut power: Option<Value> = None;
        let mut create: Option<(String, Value)> = None;
        for e in events {
            let Ok(pdu) = serde_json::from_str::<Value>(&e.json) else {
                continue;
            };
            match e.kind.as_str() {
                "m.room.member" => {
                    if let Some(Ok(user)) = e.state_key.as_deref().map(OwnedUserId::try_from) {
                        let name = pdu["content"]["displayname"].as_str().unwrap_or_default();
                        local.push((user, name.to_owned()));
                    }
                }
                "m.room.power_levels" => power = Some(pdu["content"].clone()),
                "m.room.create" => create = Some((e.sender.clone(), pdu["content"].clone())),
                _ => {}
            }
        }
        Ok(RoomCtx {
            room_id: room_oid,
            member_count,
            local,
            power_levels: power_levels(power, create),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<RoomCtx>>> {
        self.rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The power-level context of a room: its `m.room.power_levels` content (the spec's
/// defaults without one) under its version's rules, with the creators privileged where
/// the version says so (v12). `None` when the room's version is unknown: rules that
/// need power levels (`@room`) then never match.
fn power_levels(
    content: Option<Value>,
    create: Option<(String, Value)>,
) -> Option<PushConditionPowerLevelsCtx> {
    let (creator, create) = create?;
    let version = create["room_version"].as_str().unwrap_or("1");
    let rules = RoomVersionId::try_from(version).ok()?.rules()?;
    let mut creators: Vec<OwnedUserId> = OwnedUserId::try_from(creator).into_iter().collect();
    creators.extend(
        create["additional_creators"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str().and_then(|u| OwnedUserId::try_from(u).ok())),
    );
    let source = match content {
        Some(c) => RoomPowerLevelsSource::Original(
            serde_json::from_value::<RoomPowerLevelsEventContent>(c).ok()?,
        ),
        None => RoomPowerLevelsSource::None,
    };
    Some(RoomPowerLevels::new(source, &rules.authorization, creators).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_in_a_thread_names_its_root() {
        let in_thread = json!({ "m.relates_to": { "rel_type": "m.thread", "event_id": "$root" } });
        assert_eq!(thread_of(&in_thread), "$root");
        let reply = json!({ "m.relates_to": { "m.in_reply_to": { "event_id": "$x" } } });
        assert_eq!(thread_of(&reply), "main");
        assert_eq!(thread_of(&json!({})), "main");
    }

    #[test]
    fn creators_of_a_v12_room_may_notify_the_room() {
        let alice = OwnedUserId::try_from("@alice:x").unwrap_or_else(|e| panic!("{e}"));
        let ctx = power_levels(
            Some(json!({ "users": {}, "notifications": { "room": 100 } })),
            Some(("@alice:x".into(), json!({ "room_version": "12" }))),
        )
        .unwrap_or_else(|| panic!("no context"));
        assert!(ctx.has_sender_notification_permission(&alice, &"room".into()));
        let v10 = power_levels(
            Some(json!({ "users": {}, "notifications": { "room": 100 } })),
            Some(("@alice:x".into(), json!({ "room_version": "10" }))),
        )
        .unwrap_or_else(|| panic!("no context"));
        assert!(!v10.has_sender_notification_permission(&alice, &"room".into()));
    }
}
