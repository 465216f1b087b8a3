//! A remote user joining one of our rooms through us (Server-Server API, "Joining
//! Rooms"): the join template (`make_join`) and accepting the signed join (`send_join`).
//! The caller (the federation crate) checks the request's origin and the event's
//! signatures; this checks the event against the room.

use std::{collections::HashMap, sync::Arc};

use ganglion_core::{Error, ErrorKind, Pdu, Result, StreamPos, time::now_ms};
use ganglion_storage::{events::NewEvent, state::StateEntries};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, RoomId, RoomVersionId, UserId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::EventsReferenceFormatVersion,
    state_res,
};
use serde_json::{Value, json};

use crate::{Rooms, storage_error};

/// What `send_join` answers with.
#[derive(Debug)]
pub struct JoinedRemotely {
    /// The room's state before the join.
    pub state: Vec<Arc<Pdu>>,
    /// Every event those (and the join) are authorised by, transitively.
    pub auth_chain: Vec<Arc<Pdu>>,
    /// Where the join landed in our events stream.
    pub pos: StreamPos,
}

fn join_content() -> Value {
    json!({ "membership": "join" })
}

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
    async fn member_template(
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
    async fn persist_remote(
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
    async fn state_after_events(
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
    async fn current_entries(
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
    async fn check_join_answer(
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
    async fn store_stub_member(
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
    fn persister(&self) -> Result<crate::Persister> {
        self.inner
            .persister
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::Unavailable, "this process does not write events"))
    }

    /// Whether we have the room (joined, left, or only invited to it).
    async fn room_known(&self, room_id: &RoomId) -> Result<bool> {
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

/// A PDU in federation form (its stored canonical JSON).
pub fn federation_pdu(p: &Pdu) -> Value {
    serde_json::from_str(&p.json).unwrap_or(Value::Null)
}

/// A canonical JSON object as a `serde_json` value.
pub fn value_of(obj: &CanonicalJsonObject) -> Value {
    serde_json::to_value(CanonicalJsonValue::Object(obj.clone())).unwrap_or(Value::Null)
}

/// A remote event as a [`Pdu`] and its stored JSON (without `unsigned`).
pub(crate) fn parse_remote(
    room_id: &RoomId,
    event_id: &OwnedEventId,
    mut event: CanonicalJsonObject,
) -> Result<(Pdu, Arc<str>)> {
    event.remove("unsigned");
    let json: Arc<str> = serde_json::to_string(&event)
        .map_err(|e| Error::bad_json(e.to_string()))?
        .into();
    // A room-v12 create event carries no room id: its room is the one asked about.
    let pdu = Pdu::from_json(
        json.clone(),
        Some(event_id.clone()),
        Some(room_id.to_owned()),
    )
    .map_err(|e| Error::bad_json(format!("not a PDU: {e}")))?;
    if pdu.room_id != room_id {
        return Err(Error::bad_json("the event is for another room"));
    }
    Ok((pdu, json))
}

/// The `membership` of a member event (`None` for other events).
pub(crate) fn membership_of(pdu: &Pdu) -> Option<String> {
    (pdu.kind == TimelineEventType::RoomMember)
        .then(|| {
            pdu.content_as::<Value>().and_then(|c| {
                c.get("membership")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
        })
        .flatten()
}

/// State events by (type, state key), for the state-dependent auth checks.
pub(crate) fn by_state_key(
    pdus: &HashMap<String, Arc<Pdu>>,
) -> HashMap<(StateEventType, String), &Pdu> {
    pdus.values()
        .filter_map(|p| {
            p.state_key
                .clone()
                .map(|sk| ((StateEventType::from(p.kind.to_string()), sk), &**p))
        })
        .collect()
}
