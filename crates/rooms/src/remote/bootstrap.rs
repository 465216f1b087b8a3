//! Our users joining a room through another server: checking the resident server's
//! `send_join` answer and creating the room from the state and auth chain it returned.

use std::{collections::HashMap, sync::Arc};

use ganglion_core::{Error, ErrorKind, Pdu, Result, StreamPos};
use ganglion_storage::events::NewEvent;
use ruma::{
    CanonicalJsonObject, OwnedEventId, RoomId, RoomVersionId, events::TimelineEventType, state_res,
};

use super::{by_state_key, membership_of, parse_remote};
use crate::{Rooms, storage_error};

impl Rooms {
    /// Creates a room we joined through another server: stores the auth chain and the
    /// state the resident server sent (signatures already checked by the caller), the
    /// state last so that it is the room's current state, then our join on top, which
    /// becomes the only forward extremity. `events` are (id, JSON) pairs.
    pub async fn bootstrap_remote_room(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        auth_chain: Vec<(OwnedEventId, CanonicalJsonObject)>,
        state: Vec<(OwnedEventId, CanonicalJsonObject)>,
        join: (OwnedEventId, CanonicalJsonObject),
    ) -> Result<StreamPos> {
        let persister = self.persister()?;
        let _guard = self.lock_room(room_id.as_str()).await;
        // A room we know only from an invite (or have left) is built up over it: events we
        // already have are skipped, and its extremities give way to the join.
        let known = self.room_known(room_id).await?;
        let old_extremities: Vec<String> = self
            .inner
            .store
            .select_extremities(room_id.as_str())
            .await
            .map_err(storage_error)?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let all_ids: Vec<String> = auth_chain
            .iter()
            .chain(&state)
            .map(|(id, _)| id.to_string())
            .collect();
        let have: std::collections::HashSet<String> = self
            .inner
            .store
            .select_events(&all_ids)
            .await
            .map_err(storage_error)?
            .into_iter()
            .map(|r| r.event_id)
            .collect();
        let group_now = if known {
            self.head_view(room_id.as_str(), &[])
                .await?
                .and_then(|h| h.state_group)
        } else {
            None
        };
        let state_ids: std::collections::HashSet<OwnedEventId> =
            state.iter().map(|(id, _)| id.clone()).collect();
        let mut first: Vec<Pdu> = Vec::new();
        let mut last: Vec<Pdu> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (id, obj) in auth_chain.into_iter().chain(state) {
            if !seen.insert(id.clone()) || have.contains(id.as_str()) {
                continue;
            }
            let (pdu, _) = parse_remote(room_id, &id, obj)?;
            if state_ids.contains(&id) {
                last.push(pdu);
            } else {
                first.push(pdu);
            }
        }
        first.sort_by_key(|p| p.depth);
        last.sort_by_key(|p| p.depth);
        let (join_pdu, join_json) = parse_remote(room_id, &join.0, join.1)?;
        self.check_join_answer(
            room_id, version, &mut first, &mut last, &state_ids, &join_pdu,
        )
        .await?;
        let creator = first
            .iter()
            .chain(&last)
            .find(|p| p.kind == TimelineEventType::RoomCreate)
            .map(|p| p.sender.to_string());
        if creator.is_none() && !known {
            return Err(Error::bad_json("the room's state has no create event"));
        }
        let join_prevs = join_pdu.prev_events.clone();
        let mut inserted: Vec<String> = old_extremities;
        let mut group: Option<i64> = group_now;
        let mut new_room =
            creator
                .filter(|_| !known)
                .map(|creator| ganglion_storage::events::NewRoom {
                    version: version.to_string(),
                    creator,
                });
        let mut pos = StreamPos(0);
        for (pdu, is_join) in first
            .into_iter()
            .chain(last)
            .map(|p| (p, false))
            .chain(std::iter::once((join_pdu, true)))
        {
            let kind = pdu.kind.to_string();
            let membership = membership_of(&pdu);
            let json = if is_join {
                join_json.to_string()
            } else {
                pdu.json.to_string()
            };
            let new_event = NewEvent {
                event_id: pdu.event_id.to_string(),
                room_id: room_id.to_string(),
                sender: pdu.sender.to_string(),
                kind,
                state_key: pdu.state_key.clone(),
                depth: pdu.depth,
                origin_server_ts: i64::from(pdu.origin_server_ts.get()),
                json,
                unsigned: None,
                txn: None,
                // Only what clears extremities: the join replaces every stored event.
                prev_events: if is_join {
                    inserted.clone()
                } else {
                    Vec::new()
                },
                prev_state_group: group,
                membership,
                redacts: pdu.redacts.as_ref().map(ToString::to_string),
                new_room: new_room.take(),
                // The state and auth chain are not history (yet): backfill places them.
                outlier: !is_join,
                state_before: None,
                resolved_current: None,
                soft_failed: false,
                push_actions: Vec::new(),
            };
            let persisted = match persister.persist(new_event).await {
                Ok(p) => p,
                Err(e) => {
                    self.drop_head(room_id.as_str());
                    return Err(e);
                }
            };
            group = persisted.state_group;
            pos = StreamPos(persisted.stream_ordering);
            inserted.push(pdu.event_id.to_string());
        }
        self.drop_head(room_id.as_str());
        // The history before the join is fetched when someone pages back to it.
        self.seed_backfill_frontier(room_id, &join_prevs).await?;
        Ok(pos)
    }

    /// Checks what a send_join returned before we store it: every new event of the auth
    /// chain and the state passes the auth rules against its own auth events (oldest
    /// first; one that fails, and whatever it authorises, is dropped and logged), a
    /// room-v12 id is the hash of the create event, and our join passes the auth rules
    /// against the returned state.
    pub(crate) async fn check_join_answer(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        first: &mut Vec<Pdu>,
        last: &mut Vec<Pdu>,
        state_ids: &std::collections::HashSet<OwnedEventId>,
        join: &Pdu,
    ) -> Result<()> {
        let rules = version.rules().ok_or_else(|| {
            Error::new(
                ErrorKind::IncompatibleRoomVersion,
                format!("room version {version} is not supported"),
            )
        })?;
        let mut all: Vec<&Pdu> = first.iter().chain(last.iter()).collect();
        all.sort_by_key(|p| p.depth);
        // Auth events we hold already (a room known from an invite, or rejoined).
        let wanted: Vec<String> = all
            .iter()
            .flat_map(|p| p.auth_events.iter())
            .chain(state_ids.iter())
            .map(ToString::to_string)
            .collect();
        let stored = self.load_pdus(&wanted).await?;
        let create = all
            .iter()
            .copied()
            .find(|p| p.kind == TimelineEventType::RoomCreate)
            .or_else(|| {
                stored
                    .values()
                    .map(|p| &**p)
                    .find(|p| p.kind == TimelineEventType::RoomCreate)
            });
        if rules.authorization.room_create_event_id_as_room_id
            && let Some(c) = create
            && room_id.as_str().get(1..) != c.event_id.as_str().get(1..)
        {
            return Err(Error::bad_json(
                "the room id is not the hash of the room's create event",
            ));
        }
        let mut accepted: HashMap<OwnedEventId, &Pdu> = HashMap::new();
        let mut rejected: std::collections::HashSet<OwnedEventId> = Default::default();
        for pdu in all {
            let check = state_res::check_state_independent_auth_rules(
                &rules.authorization,
                pdu,
                |id: &ruma::EventId| {
                    accepted
                        .get(id)
                        .copied()
                        .or_else(|| stored.get(id.as_str()).map(|p| &**p))
                        .or_else(|| create.filter(|c| c.event_id == id))
                },
            );
            match check {
                Ok(()) => {
                    accepted.insert(pdu.event_id.clone(), pdu);
                }
                Err(e) => {
                    tracing::warn!(room = %room_id, event = %pdu.event_id, error = %e, "a send_join event failed auth; dropped");
                    rejected.insert(pdu.event_id.clone());
                }
            }
        }
        // The join against the state it was made in.
        let state: HashMap<String, Arc<Pdu>> = accepted
            .iter()
            .filter(|(id, _)| state_ids.contains(*id))
            .map(|(id, p)| (id.to_string(), Arc::new((*p).clone())))
            .chain(
                stored
                    .iter()
                    .filter(|(id, _)| state_ids.iter().any(|s| s.as_str() == id.as_str()))
                    .map(|(id, p)| (id.clone(), p.clone())),
            )
            .collect();
        let by_key = by_state_key(&state);
        let by_id: HashMap<OwnedEventId, &Pdu> =
            state.values().map(|p| (p.event_id.clone(), &**p)).collect();
        state_res::check_state_independent_auth_rules(&rules.authorization, join, |id| {
            by_id.get(id).copied()
        })
        .and_then(|()| {
            state_res::check_state_dependent_auth_rules(&rules.authorization, join, |t, sk| {
                by_key.get(&(t.clone(), sk.to_owned())).copied()
            })
        })
        .map_err(|e| {
            Error::forbidden(format!(
                "our join fails the auth rules against the room's state: {e}"
            ))
        })?;
        first.retain(|p| !rejected.contains(&p.event_id));
        last.retain(|p| !rejected.contains(&p.event_id));
        Ok(())
    }
}
