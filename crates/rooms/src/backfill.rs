//! History across servers (Server-Server API, "Backfilling and retrieving missing
//! events"). Outbound: when back-pagination runs past our earliest event of a room we
//! joined through another server, we ask a server in the room for the events before our
//! frontier (`/backfill`), check them and store them below everything (negative
//! positions, see `ganglion_storage::backfill`). Inbound: the history before given
//! events (`/backfill`) and the events between two sets (`/get_missing_events`).

use std::{
    collections::{BinaryHeap, HashMap, HashSet},
    sync::Arc,
};

use ganglion_core::{Pdu, Result};
use ganglion_storage::backfill::HistoricEvent;
use ruma::{EventId, OwnedEventId, RoomId, state_res};

use crate::{Rooms, remote::parse_remote, remote_history, storage_error};

/// How many events one backfill request asks for.
const BACKFILL_LIMIT: usize = 100;
/// Most servers asked in turn for one backfill.
const MAX_SERVERS: usize = 3;
/// Most events one inbound `/backfill` or `/get_missing_events` answers with.
pub const MAX_HISTORY_ANSWER: usize = 500;

impl Rooms {
    /// Records where a room's history continues (a room just joined through another
    /// server: its join's `prev_events` we do not have).
    pub(crate) async fn seed_backfill_frontier(
        &self,
        room_id: &RoomId,
        prev_events: &[OwnedEventId],
    ) -> Result<()> {
        let ids: Vec<String> = prev_events.iter().map(ToString::to_string).collect();
        let have: HashSet<String> = self
            .inner
            .store
            .select_events(&ids)
            .await
            .map_err(storage_error)?
            .into_iter()
            .map(|r| r.event_id)
            .collect();
        let missing: Vec<String> = ids.into_iter().filter(|i| !have.contains(i)).collect();
        self.inner
            .store
            .insert_backfill_frontier(room_id.as_str(), &missing)
            .await
            .map_err(storage_error)
    }

    /// Fetches one batch of the room's history from a server in it, checks it and
    /// stores it below our earliest event. Returns how many events were stored (0 when
    /// the history is complete, no server can be asked, or this process does not write).
    pub async fn backfill(&self, room_id: &RoomId) -> Result<usize> {
        let Some(fed) = self.inner.federation.clone() else {
            return Ok(0);
        };
        if self.inner.persister.is_none() {
            return Ok(0);
        }
        let _one_at_a_time = self.inner.backfill_lock.lock().await;
        let store = &self.inner.store;
        let frontier = store
            .select_backfill_frontier(room_id.as_str())
            .await
            .map_err(storage_error)?;
        if frontier.is_empty() {
            return Ok(0);
        }
        let servers = self.remote_servers(room_id).await?;
        if servers.is_empty() {
            return Ok(0);
        }
        let (version, rules) = self.room_version(room_id.as_str()).await?;
        let fetched = remote_history::backfill(
            &fed,
            room_id.to_owned(),
            version.clone(),
            servers.clone(),
            frontier.clone(),
            BACKFILL_LIMIT,
        )
        .await?;
        let mut returned: HashMap<OwnedEventId, Pdu> = HashMap::new();
        for (id, obj) in fetched {
            match parse_remote(room_id, &id, obj) {
                Ok((pdu, _)) => {
                    returned.insert(id, pdu);
                }
                Err(e) => {
                    tracing::warn!(room = %room_id, event = %id, error = %e.message, "backfill: not a PDU of the room")
                }
            }
        }
        let ids: Vec<String> = returned.keys().map(ToString::to_string).collect();
        let have = self.stored_ids(&ids).await?;
        let mut batch: HashMap<OwnedEventId, Pdu> = returned
            .iter()
            .filter(|(id, _)| !have.contains(id.as_str()))
            .map(|(id, p)| (id.clone(), p.clone()))
            .collect();
        // Auth events neither in the batch nor stored are fetched (they are history too).
        let mut auth_needed: Vec<String> = batch
            .values()
            .flat_map(|p| p.auth_events.iter())
            .filter(|id| !batch.contains_key(*id))
            .map(ToString::to_string)
            .collect();
        auth_needed.sort();
        auth_needed.dedup();
        let stored_auth = self.load_pdus(&auth_needed).await?;
        let missing_auth: Vec<String> = auth_needed
            .into_iter()
            .filter(|id| !stored_auth.contains_key(id))
            .collect();
        if !missing_auth.is_empty() {
            let found = remote_history::fetch_events(
                &fed,
                room_id.to_owned(),
                version,
                servers,
                missing_auth,
            )
            .await
            .unwrap_or_default();
            for (id, obj) in found {
                if let Ok((pdu, _)) = parse_remote(room_id, &id, obj) {
                    batch.insert(id, pdu);
                }
            }
        }
        let create = match store
            .select_current_state_event(room_id.as_str(), "m.room.create", "")
            .await
            .map_err(storage_error)?
        {
            Some(id) => self.load_pdu(&id).await?,
            None => None,
        };
        // Each event against its auth events, oldest first, so that an event authorised
        // by one rejected is rejected too.
        let mut order: Vec<&Pdu> = batch.values().collect();
        order.sort_by_key(|p| p.depth);
        let mut accepted: HashMap<OwnedEventId, &Pdu> = HashMap::new();
        for pdu in order {
            let check = state_res::check_state_independent_auth_rules(
                &rules.authorization,
                pdu,
                |id: &EventId| {
                    accepted
                        .get(id)
                        .copied()
                        .or_else(|| stored_auth.get(id.as_str()).map(|p| &**p))
                        .or_else(|| create.as_deref().filter(|c| c.event_id == id))
                },
            );
            match check {
                Ok(()) => {
                    accepted.insert(pdu.event_id.clone(), pdu);
                }
                Err(e) => {
                    tracing::warn!(room = %room_id, event = %pdu.event_id, error = %e, "backfill: an event failed auth; not stored");
                }
            }
        }
        // The frontier moves to the predecessors of what came back that we lack.
        let mut candidates: Vec<String> = accepted
            .values()
            .copied()
            .chain(
                returned
                    .iter()
                    .filter(|(id, _)| have.contains(id.as_str()))
                    .map(|(_, p)| p),
            )
            .flat_map(|p| p.prev_events.iter())
            .filter(|id| !accepted.contains_key(*id))
            .map(ToString::to_string)
            .collect();
        candidates.sort();
        candidates.dedup();
        let stored = self.stored_ids(&candidates).await?;
        let missing: Vec<String> = candidates
            .into_iter()
            .filter(|id| !stored.contains(id))
            .collect();
        // Events we held as outliers (the state a join returned) take their place too.
        let mut newest_first: Vec<&Pdu> = accepted
            .into_values()
            .chain(
                returned
                    .iter()
                    .filter(|(id, _)| have.contains(id.as_str()))
                    .map(|(_, p)| p),
            )
            .collect();
        newest_first.sort_by(|a, b| {
            (b.depth, b.origin_server_ts, &b.event_id).cmp(&(
                a.depth,
                a.origin_server_ts,
                &a.event_id,
            ))
        });
        let rows: Vec<HistoricEvent> = newest_first
            .iter()
            .map(|p| HistoricEvent {
                event_id: p.event_id.to_string(),
                sender: p.sender.to_string(),
                kind: p.kind.to_string(),
                state_key: p.state_key.clone(),
                depth: p.depth,
                origin_server_ts: i64::from(p.origin_server_ts.get()),
                json: p.json.to_string(),
                redacts: p.redacts.as_ref().map(ToString::to_string),
            })
            .collect();
        // Every frontier event asked about leaves it: what no server has is not asked
        // for again.
        let n = store
            .insert_backfilled(room_id.as_str(), &rows, &frontier, &missing)
            .await
            .map_err(storage_error)?;
        metrics::counter!("ganglion_backfilled_events_total").increment(n as u64);
        tracing::info!(room = %room_id, stored = n, frontier = missing.len(), "backfilled");
        Ok(n)
    }

    /// The ids among `ids` that we have stored.
    async fn stored_ids(&self, ids: &[String]) -> Result<HashSet<String>> {
        Ok(self
            .inner
            .store
            .select_events(ids)
            .await
            .map_err(storage_error)?
            .into_iter()
            .map(|r| r.event_id)
            .collect())
    }

    /// The other servers with joined members in a room.
    pub async fn remote_servers(&self, room_id: &RoomId) -> Result<Vec<String>> {
        let mut out = self
            .inner
            .store
            .select_joined_servers(room_id.as_str())
            .await
            .map_err(storage_error)?;
        out.retain(|s| s != self.inner.server_name.as_str());
        out.truncate(MAX_SERVERS);
        Ok(out)
    }

    /// Inbound `/backfill`: `from` and the events before them, newest first, at most
    /// `limit` (walking `prev_events` by depth).
    pub async fn history_before(
        &self,
        room_id: &RoomId,
        from: &[String],
        limit: usize,
    ) -> Result<Vec<Arc<Pdu>>> {
        self.walk_back(room_id, from.to_vec(), &HashSet::new(), limit, 0)
            .await
    }

    /// Inbound `/get_missing_events`: the events before `latest` back to (not
    /// including) `earliest`, no shallower than `min_depth`, at most `limit`, oldest
    /// first. `latest` themselves are not included.
    pub async fn missing_events(
        &self,
        room_id: &RoomId,
        earliest: &[String],
        latest: &[String],
        limit: usize,
        min_depth: i64,
    ) -> Result<Vec<Arc<Pdu>>> {
        let stop: HashSet<String> = earliest.iter().cloned().collect();
        let starts = self.load_pdus(latest).await?;
        let prevs: Vec<String> = starts
            .values()
            .filter(|p| p.room_id == room_id)
            .flat_map(|p| p.prev_events.iter().map(ToString::to_string))
            .collect();
        let mut out = self
            .walk_back(room_id, prevs, &stop, limit, min_depth)
            .await?;
        out.reverse();
        Ok(out)
    }

    /// Events reached from `start` through `prev_events`, deepest first, skipping
    /// `stop` (and not walking past them), no shallower than `min_depth`.
    async fn walk_back(
        &self,
        room_id: &RoomId,
        start: Vec<String>,
        stop: &HashSet<String>,
        limit: usize,
        min_depth: i64,
    ) -> Result<Vec<Arc<Pdu>>> {
        let limit = limit.min(MAX_HISTORY_ANSWER);
        let mut seen: HashSet<String> = HashSet::new();
        let mut heap: BinaryHeap<(i64, String)> = BinaryHeap::new();
        let mut pending: HashMap<String, Arc<Pdu>> = HashMap::new();
        let mut load = start;
        let mut out = Vec::new();
        loop {
            load.retain(|id| !stop.contains(id) && seen.insert(id.clone()));
            if !load.is_empty() {
                for (id, pdu) in self.load_pdus(&load).await? {
                    if pdu.room_id == room_id && pdu.depth >= min_depth {
                        heap.push((pdu.depth, id.clone()));
                        pending.insert(id, pdu);
                    }
                }
            }
            let Some((_, id)) = heap.pop() else { break };
            let Some(pdu) = pending.remove(&id) else {
                load = Vec::new();
                continue;
            };
            load = pdu.prev_events.iter().map(ToString::to_string).collect();
            out.push(pdu);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}
