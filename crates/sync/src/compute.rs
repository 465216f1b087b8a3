//! Computing a `/sync` response between two tokens (spec: Client-Server API, "Syncing").

use std::collections::{BTreeMap, HashMap, HashSet};

use ganglion_core::{Error, Result, StreamKind, SyncToken};
use ganglion_push::rules::{PUSH_RULES, content as push_rules_content, ruleset_of};
use ganglion_rooms::{Rooms, format::Viewer, storage_error, streams::StreamWriters};
use ganglion_storage::{Store, events::EventRow};
use serde_json::{Map, Value, json, value::RawValue};

use crate::{
    e2ee::{e2ee_sections, key_counts},
    filter::SyncFilter,
    notifier::Notifier,
    unread::unread_counts,
};

/// One sync's inputs.
pub struct SyncRequest<'a> {
    /// The user.
    pub user_id: &'a str,
    /// Their device.
    pub device_id: &'a str,
    /// Where the client left off (`None` = initial sync).
    pub since: Option<SyncToken>,
    /// Where to stop.
    pub now: SyncToken,
    /// Return full state for every room.
    pub full_state: bool,
    /// The filter.
    pub filter: &'a SyncFilter,
}

/// The `rooms` section: each room already serialised, so a large initial sync holds
/// compact JSON text per room rather than a tree of values for all of them at once.
#[derive(Debug, Default, serde::Serialize)]
pub struct RoomsBody {
    /// Joined rooms.
    pub join: BTreeMap<String, Box<RawValue>>,
    /// Invites.
    pub invite: BTreeMap<String, Box<RawValue>>,
    /// Left rooms.
    pub leave: BTreeMap<String, Box<RawValue>>,
    /// Knocks.
    pub knock: BTreeMap<String, Box<RawValue>>,
}

/// A response body: the rooms plus the small top-level sections.
#[derive(Debug, serde::Serialize)]
pub struct SyncBody {
    /// Rooms.
    pub rooms: RoomsBody,
    /// Everything else (account data, presence, to-device, device lists, `next_batch`).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

fn raw(v: &impl serde::Serialize) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(v).map_err(|e| Error::internal(e.to_string()))
}

/// A computed response, and what a long-poll needs to decide whether to wait.
pub struct SyncOutcome {
    /// The response body (without `next_batch`, added by the caller).
    pub body: SyncBody,
    /// Whether anything is in it.
    pub is_empty: bool,
    /// The rooms the user is joined to (what wake-ups to listen for).
    pub joined: HashSet<String>,
    /// The to-device position actually delivered up to.
    pub to_device_upto: i64,
}

/// The sync service.
#[derive(Clone, Debug)]
pub struct SyncService {
    pub(crate) store: Store,
    pub(crate) rooms: Rooms,
    notifier: Notifier,
    /// In the all-in-one shape, main's writers live in this process: their committed
    /// positions give read-your-writes without waiting for the bus to come round.
    local_writers: Option<StreamWriters>,
}

pub(crate) struct Membership {
    pub(crate) membership: String,
    pub(crate) event: EventRow,
}

impl SyncService {
    /// The service over its dependencies.
    pub fn new(
        store: Store,
        rooms: Rooms,
        notifier: Notifier,
        local_writers: Option<StreamWriters>,
    ) -> SyncService {
        SyncService {
            store,
            rooms,
            notifier,
            local_writers,
        }
    }

    /// The token a response is computed up to: the notifier's view, raised to what this
    /// process's own writers have committed (database-backed streams only; typing stays
    /// at what the notifier's cache has applied). On a worker, `from_record` also raises
    /// it to the committed positions in the database (one query), for requests that
    /// answer at once.
    pub async fn now(&self, from_record: bool) -> Result<SyncToken> {
        let mut now = self.notifier.current();
        let mut raise = |kind: StreamKind, pos: ganglion_core::StreamPos| {
            if pos > now.get(kind) {
                now.set(kind, pos);
            }
        };
        match &self.local_writers {
            Some(w) => {
                for (kind, pos) in w.committed() {
                    raise(kind, pos);
                }
                raise(StreamKind::Events, self.rooms.events_position());
            }
            // A worker: a write answered by main may not have come round the bus yet. The
            // record has it (writers publish after commit, and each stream's positions
            // commit in order), so read the committed positions: one query of four
            // index-only lookups buys read-your-writes across processes.
            None if from_record => {
                let maxes = self
                    .store
                    .select_stream_maxes()
                    .await
                    .map_err(storage_error)?;
                for (kind, pos) in maxes {
                    raise(kind, ganglion_core::StreamPos(pos));
                }
            }
            // A long-poll needs no query: if a write main answered has not come round the
            // bus yet, its entry wakes the poll moments later (and the replication check
            // catches up from the record within a period if the bus lost it).
            None => {}
        }
        Ok(now)
    }

    /// The notifier.
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The user's membership in every room they have one in, as of `now.events`.
    async fn memberships(&self, user_id: &str, at: i64) -> Result<BTreeMap<String, Membership>> {
        let rows = self
            .store
            .select_user_rooms(user_id, &["join", "invite", "leave", "ban", "knock"])
            .await
            .map_err(storage_error)?;
        let mut ids = Vec::new();
        let mut late = Vec::new();
        for (room_id, _, event_id, pos) in rows {
            if pos <= at {
                ids.push(event_id);
            } else {
                late.push(room_id);
            }
        }
        let mut out = BTreeMap::new();
        for ev in self
            .store
            .select_events(&ids)
            .await
            .map_err(storage_error)?
        {
            let m = membership_of(&ev);
            out.insert(
                ev.room_id.clone(),
                Membership {
                    membership: m,
                    event: ev,
                },
            );
        }
        // Memberships changed after `now`: use the one in force at `now`.
        for room_id in late {
            if let Some(ev) = self
                .store
                .select_membership_at(&room_id, user_id, at)
                .await
                .map_err(storage_error)?
            {
                let m = membership_of(&ev);
                out.insert(
                    room_id,
                    Membership {
                        membership: m,
                        event: ev,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Computes the response for `req`.
    pub async fn compute(&self, req: &SyncRequest<'_>) -> Result<SyncOutcome> {
        let now = req.now;
        let since = req.since;
        let since_ev = since.map_or(0, |s| s.get(StreamKind::Events).0);
        let now_ev = now.get(StreamKind::Events).0;
        let f = req.filter;
        // A stream that has not moved since the client's token has nothing to say: skip
        // its queries (most wake-ups move only the events stream).
        let moved = |kind: StreamKind| since.is_none_or(|s| s.get(kind) < now.get(kind));
        let forgotten: HashSet<String> = if since.is_none() || moved(StreamKind::Events) {
            self.store
                .select_forgotten(req.user_id)
                .await
                .map_err(storage_error)?
                .into_iter()
                .collect()
        } else {
            HashSet::new()
        };
        let memberships = self.memberships(req.user_id, now_ev).await?;
        let joined: HashSet<String> = memberships
            .iter()
            .filter(|(_, m)| m.membership == "join")
            .map(|(r, _)| r.clone())
            .collect();

        let changed_rooms: HashSet<String> = if since.is_some() && moved(StreamKind::Events) {
            self.store
                .select_rooms_with_events(since_ev, now_ev)
                .await
                .map_err(storage_error)?
                .into_iter()
                .collect()
        } else {
            HashSet::new()
        };
        let receipt_rooms: HashSet<String> = match since.filter(|_| moved(StreamKind::Receipts)) {
            Some(s) => self
                .store
                .select_rooms_with_receipts(
                    s.get(StreamKind::Receipts).0,
                    now.get(StreamKind::Receipts).0,
                )
                .await
                .map_err(storage_error)?
                .into_iter()
                .collect(),
            None => HashSet::new(),
        };
        let account_data = if f.account_data_off || !moved(StreamKind::AccountData) {
            Vec::new()
        } else {
            self.store
                .select_account_data_since(
                    req.user_id,
                    since.map_or(0, |s| s.get(StreamKind::AccountData).0),
                    now.get(StreamKind::AccountData).0,
                )
                .await
                .map_err(storage_error)?
        };
        let mut room_account: HashMap<String, Vec<Value>> = HashMap::new();
        let mut global_account = Vec::new();
        let mut push_rules_sent = false;
        for (room_id, kind, content) in account_data {
            let content: Value = if room_id.is_empty() && kind == PUSH_RULES {
                // The stored rules merged with the current defaults, as /pushrules reads them.
                push_rules_sent = true;
                let user = ruma::UserId::parse(req.user_id).map_err(|_| bad_token())?;
                push_rules_content(&ruleset_of(&user, Some(&content)))?
            } else {
                serde_json::from_str(&content).unwrap_or_else(|_| json!({}))
            };
            let ev = json!({ "type": kind, "content": content });
            if room_id.is_empty() {
                global_account.push(ev);
            } else {
                room_account.entry(room_id).or_default().push(ev);
            }
        }
        // An initial sync always has the push rules: the defaults when none are stored.
        if since.is_none() && !f.account_data_off && !push_rules_sent {
            let user = ruma::UserId::parse(req.user_id).map_err(|_| bad_token())?;
            let content = push_rules_content(&ruleset_of(&user, None))?;
            global_account.push(json!({ "type": PUSH_RULES, "content": content }));
        }
        let joined_list: Vec<String> = joined.iter().cloned().collect();
        let typing = self.notifier.typing(&joined_list).await;
        let since_typing = since.map_or(-1, |s| s.get(StreamKind::Typing).0);

        let mut rooms_body = RoomsBody::default();
        let viewer = Viewer {
            user_id: req.user_id,
            device_id: req.device_id,
        };

        // Joined rooms with something to say, first, so their unread counts are read in
        // one query.
        let mut join_rooms: Vec<(&String, &Membership, bool, bool)> = Vec::new();
        for (room_id, m) in &memberships {
            if m.membership != "join" || !f.room_allowed(room_id) {
                continue;
            }
            let changed_since = m.event.stream_ordering > since_ev;
            let newly = since.is_none() || changed_since || req.full_state;
            let has_events = changed_rooms.contains(room_id);
            let typing_changed = typing.get(room_id).is_some_and(|t| {
                t.pos > since_typing && (since.is_some() || !t.user_ids.is_empty())
            });
            let receipts_changed = receipt_rooms.contains(room_id);
            let ad_changed = room_account.contains_key(room_id);
            if newly || has_events || typing_changed || receipts_changed || ad_changed {
                join_rooms.push((room_id, m, newly, receipts_changed));
            }
        }
        let ids: Vec<String> = join_rooms.iter().map(|(r, ..)| (*r).clone()).collect();
        let mut counts = unread_counts(&self.store, req.user_id, &ids, f.thread_counts).await?;
        for (room_id, m, newly, receipts_changed) in join_rooms {
            let mut room = self
                .joined_room(req, room_id, m, newly, since_ev, now_ev)
                .await?;
            let unread = counts.remove(room_id.as_str()).unwrap_or_default();
            room.insert("unread_notifications".into(), unread.counts());
            if f.thread_counts {
                room.insert("unread_thread_notifications".into(), unread.threads());
            }
            let mut ephemeral = Vec::new();
            if let Some(t) = typing.get(room_id).filter(|t| t.pos > since_typing) {
                ephemeral
                    .push(json!({ "type": "m.typing", "content": { "user_ids": t.user_ids } }));
            }
            if (since.is_none() || receipts_changed)
                && let Some(r) = self.receipts(req.user_id, room_id, since, now).await?
            {
                ephemeral.push(r);
            }
            room.insert("ephemeral".into(), json!({ "events": ephemeral }));
            room.insert(
                "account_data".into(),
                json!({ "events": room_account.remove(room_id).unwrap_or_default() }),
            );
            rooms_body.join.insert(room_id.clone(), raw(&room)?);
        }

        for (room_id, m) in &memberships {
            if !f.room_allowed(room_id) {
                continue;
            }
            let changed_since = m.event.stream_ordering > since_ev;
            match m.membership.as_str() {
                "invite" if since.is_none() || changed_since => {
                    rooms_body.invite.insert(room_id.clone(), raw(&json!({ "invite_state": { "events": self.stripped_state(room_id, &m.event).await? } }))?);
                }
                "knock" if since.is_none() || changed_since => {
                    rooms_body.knock.insert(room_id.clone(), raw(&json!({ "knock_state": { "events": self.stripped_state(room_id, &m.event).await? } }))?);
                }
                "leave" | "ban" => {
                    let include = if since.is_none() {
                        f.include_leave
                    } else {
                        changed_since
                    };
                    // A user who rejected an invite or was never joined still sees the leave.
                    if include && !forgotten.contains(room_id) {
                        let room = self.left_room(req, room_id, m, since_ev).await?;
                        rooms_body.leave.insert(room_id.clone(), raw(&room)?);
                    }
                }
                _ => {}
            }
        }

        let (e2ee, (key_counts, fallback_types)) = tokio::try_join!(
            e2ee_sections(
                &self.store,
                req.user_id,
                req.device_id,
                since.as_ref(),
                &now,
            ),
            key_counts(&self.store, req.user_id, req.device_id),
        )?;
        let to_device_upto = e2ee.to_device_upto;

        let is_empty = rooms_body.join.is_empty()
            && rooms_body.invite.is_empty()
            && rooms_body.leave.is_empty()
            && rooms_body.knock.is_empty()
            && global_account.is_empty()
            && e2ee.is_empty();
        let mut body = Map::new();
        body.insert("account_data".into(), json!({ "events": global_account }));
        body.insert("presence".into(), json!({ "events": [] }));
        e2ee.write_into(&mut body, key_counts, fallback_types);
        let _ = viewer;
        Ok(SyncOutcome {
            body: SyncBody {
                rooms: rooms_body,
                rest: body,
            },
            is_empty,
            joined,
            to_device_upto,
        })
    }
}

pub(crate) fn membership_of(ev: &EventRow) -> String {
    serde_json::from_str::<Value>(&ev.json)
        .ok()
        .and_then(|v| {
            v.get("content")
                .and_then(|c| c.get("membership"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// An error for tokens we did not issue.
pub fn bad_token() -> Error {
    Error::invalid_param("invalid since token")
}
