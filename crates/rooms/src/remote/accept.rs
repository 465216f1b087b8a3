//! Accepting events other servers send: signed joins, leaves and knocks through us, and
//! every inbound PDU. Each is checked against its auth events, the state before it (the
//! resolution of its `prev_events`' states when it forks the room) and current state:
//! refused, soft-failed (stored but kept out of the timeline and current state), or
//! persisted. The caller (the federation crate) has checked ids and signatures.

use std::{collections::HashMap, sync::Arc};

use ganglion_core::{Error, ErrorKind, Pdu, Result, StreamPos};
use ganglion_storage::{events::NewEvent, state::StateEntries};
use ruma::{CanonicalJsonObject, OwnedEventId, RoomId, events::TimelineEventType, state_res};
use serde_json::Value;

use super::{JoinedRemotely, by_state_key, membership_of, parse_remote};
use crate::{Rooms, storage_error};

impl Rooms {
    /// Accepts a remote user's signed join (`event_id` already checked to be its
    /// reference hash, its signatures verified by the caller): checks it against its auth
    /// events and the room's current state, persists it, and returns the state before it
    /// with the auth chain.
    pub async fn accept_remote_join(
        &self,
        room_id: &RoomId,
        event_id: &OwnedEventId,
        event: CanonicalJsonObject,
    ) -> Result<JoinedRemotely> {
        let (pdu, json) = parse_remote(room_id, event_id, event)?;
        if membership_of(&pdu).as_deref() != Some("join")
            || pdu.state_key.as_deref() != Some(pdu.sender.as_str())
        {
            return Err(Error::bad_json("not a join of its sender"));
        }
        let (pos, state) = self.persist_remote(room_id, pdu.clone(), json).await?;
        let mut state: Vec<Arc<Pdu>> = state.into_values().collect();
        state.sort_by_key(|p| p.depth);
        let mut roots: Vec<String> = state
            .iter()
            .flat_map(|p| p.auth_events.iter().map(ToString::to_string))
            .collect();
        roots.extend(pdu.auth_events.iter().map(ToString::to_string));
        let auth_chain = self.auth_chain(roots).await?;
        Ok(JoinedRemotely {
            state,
            auth_chain,
            pos,
        })
    }

    /// Accepts a remote user's signed leave (`send_leave`; id and signatures checked by
    /// the caller): checked against its auth events and current state, persisted.
    pub async fn accept_remote_leave(
        &self,
        room_id: &RoomId,
        event_id: &OwnedEventId,
        event: CanonicalJsonObject,
    ) -> Result<StreamPos> {
        let (pdu, json) = parse_remote(room_id, event_id, event)?;
        if membership_of(&pdu).as_deref() != Some("leave")
            || pdu.state_key.as_deref() != Some(pdu.sender.as_str())
        {
            return Err(Error::bad_json("not a leave of its sender"));
        }
        Ok(self.persist_remote(room_id, pdu, json).await?.0)
    }

    /// Accepts a remote user's signed knock (`send_knock`; id and signatures checked by
    /// the caller) and returns the room's stripped state for the knocker.
    pub async fn accept_remote_knock(
        &self,
        room_id: &RoomId,
        event_id: &OwnedEventId,
        event: CanonicalJsonObject,
    ) -> Result<Vec<Value>> {
        let (pdu, json) = parse_remote(room_id, event_id, event)?;
        if membership_of(&pdu).as_deref() != Some("knock")
            || pdu.state_key.as_deref() != Some(pdu.sender.as_str())
        {
            return Err(Error::bad_json("not a knock of its sender"));
        }
        self.persist_remote(room_id, pdu, json).await?;
        self.stripped_state(room_id).await
    }

    /// Accepts an event another server sent us in a transaction (its id and signatures
    /// checked by the caller). An event we already have is accepted again without a
    /// second copy. Its auth events and `prev_events` must be events we have (fetching
    /// missing ones is not built yet).
    pub async fn accept_remote_event(
        &self,
        room_id: &RoomId,
        event_id: &OwnedEventId,
        event: CanonicalJsonObject,
    ) -> Result<Option<StreamPos>> {
        if self
            .inner
            .store
            .select_event(event_id.as_str())
            .await
            .map_err(storage_error)?
            .is_some()
        {
            return Ok(None);
        }
        let (pdu, json) = parse_remote(room_id, event_id, event)?;
        let prevs: Vec<String> = pdu.prev_events.iter().map(ToString::to_string).collect();
        let known = self
            .inner
            .store
            .select_events(&prevs)
            .await
            .map_err(storage_error)?;
        if known.len() != prevs.len() {
            return Err(Error::new(
                ErrorKind::NotFound,
                "some prev_events are unknown here (fetching them is not built yet)",
            ));
        }
        Ok(Some(self.persist_remote(room_id, pdu, json).await?.0))
    }

    /// Checks a remote event against its auth events and current state, and persists
    /// it; returns its position and the state it applied to.
    pub(crate) async fn persist_remote(
        &self,
        room_id: &RoomId,
        pdu: Pdu,
        json: Arc<str>,
    ) -> Result<(StreamPos, HashMap<String, Arc<Pdu>>)> {
        let persister = self.persister()?;
        let _guard = self.lock_room(room_id.as_str()).await;
        let head = self
            .head_view(room_id.as_str(), &[])
            .await?
            .ok_or_else(|| Error::not_found("unknown room"))?;
        // Every state event of the room now: the state the event applies to.
        let current = self
            .inner
            .store
            .select_current_state(room_id.as_str())
            .await
            .map_err(storage_error)?;
        let state_ids: Vec<String> = current.iter().map(|r| r.event_id.clone()).collect();
        let state = self.load_pdus(&state_ids).await?;
        let auth_ids: Vec<String> = pdu.auth_events.iter().map(ToString::to_string).collect();
        let auth = self.load_pdus(&auth_ids).await?;
        if auth.len() != auth_ids.len() {
            return Err(Error::forbidden(
                "the event's auth events are not events of this room",
            ));
        }
        // Room v12 leaves the create event out of auth_events; the checks still need it.
        let by_id: HashMap<OwnedEventId, &Pdu> = auth
            .values()
            .chain(
                state
                    .values()
                    .filter(|p| p.kind == TimelineEventType::RoomCreate),
            )
            .map(|p| (p.event_id.clone(), &**p))
            .collect();
        state_res::check_state_independent_auth_rules(&head.rules.authorization, &pdu, |id| {
            by_id.get(id).copied()
        })
        .map_err(|e| Error::forbidden(format!("auth check failed: {e}")))?;
        // The state before the event: current state when it follows every forward
        // extremity; otherwise (a fork) the resolution of the states after its
        // prev_events, against which it must pass, and current state only decides
        // whether it is soft-failed.
        let prevs: std::collections::BTreeSet<String> =
            pdu.prev_events.iter().map(ToString::to_string).collect();
        let extremities: std::collections::BTreeSet<String> =
            head.extremities.iter().map(|(id, _)| id.clone()).collect();
        let now: StateEntries = current
            .iter()
            .map(|r| ((r.kind.clone(), r.state_key.clone()), r.event_id.clone()))
            .collect();
        // A fork whose state before it is current state anyway (concurrent messages, the
        // common case) takes the plain path: nothing to resolve or snapshot.
        let fork = if prevs == extremities {
            None
        } else {
            self.state_after_events(&head.rules, &prevs)
                .await?
                .filter(|before| *before != now)
        };
        let passes = |state: &HashMap<String, Arc<Pdu>>| {
            let by_key = by_state_key(state);
            state_res::check_state_dependent_auth_rules(&head.rules.authorization, &pdu, |t, sk| {
                by_key.get(&(t.clone(), sk.to_owned())).copied()
            })
        };
        let mut soft_failed = false;
        let mut resolved_current = None;
        match &fork {
            None => passes(&state).map_err(|e| {
                Error::forbidden(format!("auth check failed against current state: {e}"))
            })?,
            Some(before) => {
                let ids: Vec<String> = before.values().cloned().collect();
                let before_pdus = self.load_pdus(&ids).await?;
                passes(&before_pdus).map_err(|e| {
                    Error::forbidden(format!(
                        "auth check failed against the state before it: {e}"
                    ))
                })?;
                if let Err(e) = passes(&state) {
                    tracing::warn!(room = %room_id, event = %pdu.event_id, error = %e, "soft-failed: it fails against current state");
                    soft_failed = true;
                } else {
                    let mut after = before.clone();
                    if let Some(sk) = &pdu.state_key {
                        after.insert((pdu.kind.to_string(), sk.clone()), pdu.event_id.to_string());
                    }
                    let others = extremities.iter().any(|e| !prevs.contains(e));
                    let new = if others {
                        self.resolve_states(&head.rules, &[now.clone(), after])
                            .await?
                    } else {
                        after
                    };
                    let changed: Vec<&(String, String)> = new
                        .iter()
                        .filter(|(k, id)| now.get(*k) != Some(*id))
                        .map(|(k, _)| k)
                        .collect();
                    tracing::info!(room = %room_id, event = %pdu.event_id, ?changed, "a fork: current state resolved");
                    resolved_current = Some(self.current_entries(&new, &current, &pdu).await?);
                }
            }
        }

        let kind = pdu.kind.to_string();
        let membership = membership_of(&pdu);
        let unsigned = match &pdu.state_key {
            Some(sk) => {
                self.replaced_state_unsigned(&pdu.room_id, &kind, sk)
                    .await?
            }
            None => None,
        };
        let new_event = NewEvent {
            event_id: pdu.event_id.to_string(),
            room_id: room_id.to_string(),
            sender: pdu.sender.to_string(),
            kind,
            state_key: pdu.state_key.clone(),
            depth: pdu.depth,
            origin_server_ts: i64::from(pdu.origin_server_ts.get()),
            json: json.to_string(),
            unsigned,
            txn: None,
            prev_events: pdu.prev_events.iter().map(ToString::to_string).collect(),
            prev_state_group: head.state_group,
            membership,
            redacts: pdu.redacts.as_ref().map(ToString::to_string),
            new_room: None,
            outlier: false,
            state_before: fork,
            resolved_current,
            soft_failed,
            push_actions: Vec::new(),
        };
        let persisted = persister.persist(new_event).await;
        // The extremities may now be several: let the record say.
        self.drop_head(room_id.as_str());
        let persisted = persisted?;
        Ok((StreamPos(persisted.stream_ordering), state))
    }

    /// The state after a set of events (the state before an event citing them as
    /// `prev_events`): one state group's, or the resolution of several. `None` when one
    /// of them has no state group (backfilled history).
    pub(crate) async fn state_after_events(
        &self,
        rules: &ruma::room_version_rules::RoomVersionRules,
        events: &std::collections::BTreeSet<String>,
    ) -> Result<Option<StateEntries>> {
        let ids: Vec<String> = events.iter().cloned().collect();
        let rows = self
            .inner
            .store
            .select_events(&ids)
            .await
            .map_err(storage_error)?;
        let mut groups: Vec<i64> = Vec::new();
        for r in &rows {
            let Some(g) = r.state_group else {
                return Ok(None);
            };
            groups.push(g);
        }
        groups.sort_unstable();
        groups.dedup();
        let mut states = Vec::with_capacity(groups.len());
        for g in groups {
            states.push(
                self.inner
                    .store
                    .select_state_group(g)
                    .await
                    .map_err(storage_error)?,
            );
        }
        match states.len() {
            0 => Ok(None),
            1 => Ok(states.pop()),
            _ => Ok(Some(self.resolve_states(rules, &states).await?)),
        }
    }

    /// A resolved state as current-state rows (with each member event's membership).
    pub(crate) async fn current_entries(
        &self,
        state: &StateEntries,
        current: &[ganglion_storage::state::CurrentStateRow],
        incoming: &Pdu,
    ) -> Result<Vec<ganglion_storage::events::CurrentEntry>> {
        let known: HashMap<&str, Option<String>> = current
            .iter()
            .map(|r| (r.event_id.as_str(), r.membership.clone()))
            .collect();
        let unknown: Vec<String> = state
            .values()
            .filter(|id| !known.contains_key(id.as_str()) && *id != incoming.event_id.as_str())
            .cloned()
            .collect();
        let loaded = self.load_pdus(&unknown).await?;
        Ok(state
            .iter()
            .map(|((t, k), id)| ganglion_storage::events::CurrentEntry {
                kind: t.clone(),
                state_key: k.clone(),
                event_id: id.clone(),
                membership: if id == incoming.event_id.as_str() {
                    membership_of(incoming)
                } else {
                    match known.get(id.as_str()) {
                        Some(m) => m.clone(),
                        None => loaded.get(id).and_then(|p| membership_of(p)),
                    }
                },
            })
            .collect())
    }
}
