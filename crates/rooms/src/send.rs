//! The one path every local event takes: build, authorise, persist.

use std::{collections::HashMap, sync::Arc};

use ganglion_core::{Error, Pdu, Result, StreamPos, time::now_ms};
use ganglion_storage::events::{NewEvent, NewRoom};
use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomVersionId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    state_res,
};
use serde_json::json;

use crate::{
    Rooms,
    builder::{BuildContext, EventTemplate, build_pdu},
    storage_error,
};

/// A request to send one event.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// The room (ignored for a room-v12 create, whose id derives from the event).
    pub room_id: OwnedRoomId,
    /// Sender.
    pub sender: OwnedUserId,
    /// What to send.
    pub template: EventTemplate,
    /// (device, transaction id) for idempotent client sends.
    pub txn: Option<(String, String)>,
}

/// Where a sent event landed.
#[derive(Debug, Clone)]
pub struct SendOutcome {
    /// Its id.
    pub event_id: OwnedEventId,
    /// Its room (new for a create event).
    pub room_id: OwnedRoomId,
    /// Its events-stream position, for read-your-writes.
    pub pos: StreamPos,
}

/// A room being created: the version, given with its create event.
pub(crate) struct Creating {
    pub version: RoomVersionId,
}

impl Rooms {
    /// Sends an event into an existing room. A replayed transaction id returns the event
    /// the first request created, without a second event.
    pub async fn send(&self, req: SendRequest) -> Result<SendOutcome> {
        self.send_inner(req, None).await
    }

    pub(crate) async fn send_inner(
        &self,
        req: SendRequest,
        creating: Option<Creating>,
    ) -> Result<SendOutcome> {
        if self.inner.persister.is_none() {
            return Err(Error::new(
                ganglion_core::ErrorKind::Unavailable,
                "this process does not write events; writes go to main",
            ));
        }
        let store = &self.inner.store;
        let _guard = self.lock_room(req.room_id.as_str()).await;

        if let Some((device, txn)) = &req.txn
            && let Some(event_id) = store
                .select_txn_event(req.sender.as_str(), device, req.room_id.as_str(), txn)
                .await
                .map_err(storage_error)?
            && let Some(row) = store.select_event(&event_id).await.map_err(storage_error)?
        {
            return Ok(SendOutcome {
                event_id: row
                    .event_id
                    .as_str()
                    .try_into()
                    .map_err(|_| Error::internal("bad stored id"))?,
                room_id: req.room_id.clone(),
                pos: StreamPos(row.stream_ordering),
            });
        }

        let (version, rules, prev_group, extremities) = match &creating {
            Some(c) => {
                let rules = c.version.rules().ok_or_else(|| {
                    Error::new(
                        ganglion_core::ErrorKind::UnsupportedRoomVersion,
                        "unsupported room version",
                    )
                })?;
                (c.version.clone(), rules, None, Vec::new())
            }
            None => {
                let head = self
                    .head_view(req.room_id.as_str(), &[])
                    .await?
                    .ok_or_else(|| Error::forbidden("you are not in this room"))?;
                (head.version, head.rules, head.state_group, head.extremities)
            }
        };

        let tpl = &req.template;
        let kind = TimelineEventType::from(tpl.kind.as_str());
        let content_raw = serde_json::value::to_raw_value(&tpl.content)
            .map_err(|e| Error::bad_json(e.to_string()))?;

        // prev_events: the forward extremities.
        let depth = extremities.iter().map(|(_, d)| *d).max().unwrap_or(0) + 1;
        let prev_events: Vec<OwnedEventId> = extremities
            .iter()
            .take(10)
            .filter_map(|(id, _)| id.as_str().try_into().ok())
            .collect();

        // auth_events: selected from current state by the auth rules.
        let auth_types = state_res::auth_types_for_event(
            &kind,
            &req.sender,
            tpl.state_key.as_deref(),
            &content_raw,
            &rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("invalid content for {}: {e}", tpl.kind)))?;
        let mut keys: Vec<(String, String)> = auth_types
            .iter()
            .map(|(t, k)| (t.to_string(), k.clone()))
            .collect();
        // Room v12 leaves the create event out of auth_events, but the checks still need it.
        if !keys.iter().any(|(t, _)| t == "m.room.create") {
            keys.push(("m.room.create".to_owned(), String::new()));
        }
        let auth_ids = if creating.is_some() {
            Default::default()
        } else {
            self.head_view(req.room_id.as_str(), &keys)
                .await?
                .map(|h| h.state)
                .unwrap_or_default()
        };
        let mut needed: Vec<String> = auth_ids.values().cloned().collect();
        if rules.events_reference_format
            == ruma::room_version_rules::EventsReferenceFormatVersion::V1
        {
            needed.extend(extremities.iter().map(|(id, _)| id.clone()));
        }
        let loaded = self.load_pdus(&needed).await?;
        let referenced: HashMap<OwnedEventId, Arc<Pdu>> = loaded
            .values()
            .map(|p| (p.event_id.clone(), p.clone()))
            .collect();
        // In room v12 the create event is not listed in auth_events (rules.event_format).
        let auth_events: Vec<OwnedEventId> = auth_ids
            .iter()
            .filter(|((t, k), _)| {
                (rules.event_format.allow_room_create_in_auth_events || t != "m.room.create")
                    && auth_types
                        .iter()
                        .any(|(at, ak)| at.to_string() == *t && ak == k)
            })
            .filter_map(|(_, id)| id.as_str().try_into().ok())
            .collect();

        let pdu = build_pdu(
            tpl,
            &BuildContext {
                rules: &rules,
                room_id: Some(&req.room_id),
                sender: &req.sender,
                prev_events: &prev_events,
                auth_events: &auth_events,
                depth,
                origin_server_ts: now_ms(),
                referenced: &referenced,
                server_name: self.inner.server_name.as_str(),
                key: &self.inner.key,
            },
        )?;

        // The auth rules: against the auth events, which for a local event are current state.
        let by_id: HashMap<OwnedEventId, &Pdu> = loaded
            .values()
            .map(|p| (p.event_id.clone(), &**p))
            .collect();
        let by_key = crate::remote::by_state_key(&loaded);
        state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, |id| {
            by_id.get(id).copied()
        })
        .map_err(|e| Error::forbidden(format!("auth check failed: {e}")))?;
        state_res::check_state_dependent_auth_rules(&rules.authorization, &pdu, |t, sk| {
            by_key.get(&(t.clone(), sk.to_owned())).copied()
        })
        .map_err(|e| Error::forbidden(format!("auth check failed: {e}")))?;
        if kind == TimelineEventType::RoomRedaction {
            self.check_redaction_power(&pdu, &rules, &by_key).await?;
        }

        // An invite of another server's user needs that server's signature first.
        let mut pdu = pdu;
        if let Some(invitee) = tpl.state_key.as_deref()
            && tpl.kind == "m.room.member"
            && tpl.content.get("membership").and_then(|m| m.as_str()) == Some("invite")
            && let Ok(invitee) = ruma::UserId::parse(invitee)
            && invitee.server_name() != self.inner.server_name
        {
            pdu = self
                .countersigned_invite(&req.room_id, &version, pdu, &by_key)
                .await?;
        }
        let unsigned = match &tpl.state_key {
            Some(sk) if creating.is_none() => {
                self.replaced_state_unsigned(&req.room_id, &tpl.kind, sk)
                    .await?
            }
            _ => None,
        };
        let membership = (tpl.kind == "m.room.member")
            .then(|| {
                tpl.content
                    .get("membership")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
            })
            .flatten();
        let new_event = NewEvent {
            event_id: pdu.event_id.to_string(),
            room_id: pdu.room_id.to_string(),
            sender: req.sender.to_string(),
            kind: tpl.kind.clone(),
            state_key: tpl.state_key.clone(),
            depth,
            origin_server_ts: i64::from(pdu.origin_server_ts.get()),
            json: pdu.json.to_string(),
            unsigned,
            txn: req
                .txn
                .as_ref()
                .map(|(d, t)| (req.sender.to_string(), d.clone(), t.clone())),
            prev_events: extremities.iter().map(|(id, _)| id.clone()).collect(),
            prev_state_group: prev_group,
            membership,
            redacts: pdu.redacts.as_ref().map(|r| r.to_string()),
            new_room: creating.as_ref().map(|_| NewRoom {
                version: version.to_string(),
                creator: req.sender.to_string(),
            }),
            outlier: false,
            state_before: None,
            resolved_current: None,
            soft_failed: false,
            push_actions: Vec::new(),
        };
        let Some(persister) = &self.inner.persister else {
            return Err(Error::new(
                ganglion_core::ErrorKind::Unavailable,
                "this process does not write events; writes go to main",
            ));
        };
        let persisted = match persister.persist(new_event).await {
            Ok(p) => p,
            Err(e) => {
                self.drop_head(req.room_id.as_str());
                return Err(e);
            }
        };
        if creating.is_none() {
            self.advance_head(
                pdu.room_id.as_str(),
                pdu.event_id.as_str(),
                depth,
                tpl.state_key.as_deref().map(|sk| (tpl.kind.as_str(), sk)),
                persisted.state_group,
            );
        }
        if tpl.state_key.is_some() {
            self.cache_pdu(Arc::new(pdu.clone()));
        }
        Ok(SendOutcome {
            event_id: pdu.event_id,
            room_id: pdu.room_id,
            pos: StreamPos(persisted.stream_ordering),
        })
    }

    /// Sends an invite to the invitee's server and returns it with that server's
    /// signature (the event id does not change: signatures are not hashed).
    async fn countersigned_invite(
        &self,
        room_id: &OwnedRoomId,
        version: &RoomVersionId,
        pdu: Pdu,
        state: &HashMap<(StateEventType, String), &Pdu>,
    ) -> Result<Pdu> {
        let Some(fed) = &self.inner.federation else {
            return Err(Error::forbidden(
                "inviting users of other servers needs federation, which is off",
            ));
        };
        let Ok(ruma::CanonicalJsonValue::Object(obj)) =
            serde_json::from_str::<ruma::CanonicalJsonValue>(&pdu.json)
        else {
            return Err(Error::internal("our own event is not canonical JSON"));
        };
        // Stripped state for the invitee's client (spec: "Stripped state").
        let stripped: Vec<serde_json::Value> = [
            StateEventType::RoomCreate,
            StateEventType::RoomJoinRules,
            StateEventType::RoomName,
            StateEventType::RoomCanonicalAlias,
            StateEventType::RoomAvatar,
            StateEventType::RoomTopic,
            StateEventType::RoomEncryption,
        ]
        .iter()
        .filter_map(|t| state.get(&(t.clone(), String::new())))
        .map(|p| {
            json!({
                "type": p.kind.to_string(),
                "state_key": p.state_key,
                "sender": p.sender,
                "content": p.content_as::<serde_json::Value>().unwrap_or_default(),
            })
        })
        .collect();
        let signed =
            crate::remote_invite::countersign(&fed.client, version.clone(), obj, stripped).await?;
        let json: Arc<str> = serde_json::to_string(&signed)
            .map_err(|e| Error::internal(e.to_string()))?
            .into();
        let back = Pdu::from_json(json, Some(pdu.event_id.clone()), Some(room_id.clone()))
            .map_err(|e| Error::bad_json(format!("the invitee's server answered badly: {e}")))?;
        if back.content.get() != pdu.content.get()
            || back.state_key != pdu.state_key
            || back.sender != pdu.sender
        {
            return Err(Error::bad_json(
                "the invitee's server changed the invite it signed",
            ));
        }
        Ok(back)
    }

    /// `prev_content`, `prev_sender` and `replaces_state` of a state event (client `unsigned`).
    pub(crate) async fn replaced_state_unsigned(
        &self,
        room_id: &OwnedRoomId,
        kind: &str,
        sk: &str,
    ) -> Result<Option<String>> {
        let prev_id = match self.head_state_id(room_id.as_str(), kind, sk) {
            Some(id) => id,
            None => match self
                .inner
                .store
                .select_current_state_event(room_id.as_str(), kind, sk)
                .await
                .map_err(storage_error)?
            {
                Some(id) => id,
                None => return Ok(None),
            },
        };
        let Some(prev) = self.load_pdu(&prev_id).await? else {
            return Ok(None);
        };
        let content: serde_json::Value = prev.content_as().unwrap_or_else(|| json!({}));
        Ok(Some(
            json!({ "prev_content": content, "prev_sender": prev.sender, "replaces_state": prev.event_id }).to_string(),
        ))
    }

    /// A redaction of someone else's event needs the `redact` power level (spec:
    /// "Redactions", enforced by the server rather than by the auth rules since v3).
    async fn check_redaction_power(
        &self,
        pdu: &Pdu,
        _rules: &RoomVersionRules,
        state: &HashMap<(StateEventType, String), &Pdu>,
    ) -> Result<()> {
        let Some(target_id) = &pdu.redacts else {
            return Err(Error::bad_json("redaction without redacts"));
        };
        let Some(target) = self.load_pdu(target_id.as_str()).await? else {
            // Redacting an unknown event is allowed; it applies if the event ever arrives.
            return Ok(());
        };
        if target.room_id != pdu.room_id {
            return Err(Error::not_found("event not found in this room"));
        }
        if target.sender == pdu.sender {
            return Ok(());
        }
        let pl = state
            .get(&(StateEventType::RoomPowerLevels, String::new()))
            .and_then(|p| p.content_as::<serde_json::Value>());
        let user_level = power_level_of(
            pl.as_ref(),
            pdu.sender.as_str(),
            &self.creators(&pdu.room_id).await?,
        );
        let redact_level = pl
            .as_ref()
            .and_then(|c| c.get("redact"))
            .and_then(as_int)
            .unwrap_or(50);
        if user_level < redact_level {
            return Err(Error::forbidden(
                "you lack the power level to redact other users' events",
            ));
        }
        Ok(())
    }

    /// The room's creators (room v12 gives them infinite power; earlier versions none).
    pub(crate) async fn creators(&self, room_id: &ruma::RoomId) -> Result<Vec<String>> {
        let (_, rules) = self.room_version(room_id.as_str()).await?;
        if !rules.authorization.explicitly_privilege_room_creators {
            return Ok(Vec::new());
        }
        let Some(id) = self
            .inner
            .store
            .select_current_state_event(room_id.as_str(), "m.room.create", "")
            .await
            .map_err(storage_error)?
        else {
            return Ok(Vec::new());
        };
        let Some(create) = self.load_pdu(&id).await? else {
            return Ok(Vec::new());
        };
        let mut out = vec![create.sender.to_string()];
        if let Some(extra) = create
            .content_as::<serde_json::Value>()
            .and_then(|c| c.get("additional_creators").cloned())
            && let Some(list) = extra.as_array()
        {
            out.extend(list.iter().filter_map(|v| v.as_str().map(str::to_owned)));
        }
        Ok(out)
    }
}

/// A JSON number or numeric string as an integer (older rooms allow strings).
pub(crate) fn as_int(v: &serde_json::Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// A user's power level under a power-levels content (creators count as infinite).
pub(crate) fn power_level_of(
    pl: Option<&serde_json::Value>,
    user_id: &str,
    creators: &[String],
) -> i64 {
    if creators.iter().any(|c| c == user_id) {
        return i64::MAX;
    }
    match pl {
        None => 0,
        Some(c) => c
            .get("users")
            .and_then(|u| u.get(user_id))
            .and_then(as_int)
            .or_else(|| c.get("users_default").and_then(as_int))
            .unwrap_or(0),
    }
}
