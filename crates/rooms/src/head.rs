//! Main's in-memory view of each room's head: version, forward extremities, state group
//! and current state ids. Main is the only writer of room state, and a room's events are
//! built under its room lock, so the head is updated in step with every persist; reading
//! it saves the send path four database round trips per event.
//!
//! Loaded lazily from the database; dropped (and reloaded) after any persist failure, so
//! it never claims more than the record holds.

use std::collections::HashMap;

use ganglion_core::{Error, Result};
use ganglion_storage::state::StateEntries;
use ruma::{RoomVersionId, room_version_rules::RoomVersionRules};

use crate::{Rooms, storage_error};

/// Rooms whose heads are kept; beyond this the map is emptied and refilled on demand.
const MAX_HEADS: usize = 20_000;

/// One room's head.
#[derive(Debug, Clone)]
pub(crate) struct RoomHead {
    pub version: RoomVersionId,
    pub rules: RoomVersionRules,
    pub state_group: Option<i64>,
    pub extremities: Vec<(String, i64)>,
    pub state: StateEntries,
}

/// What the send path needs from a head.
pub(crate) struct HeadView {
    pub version: RoomVersionId,
    pub rules: RoomVersionRules,
    pub state_group: Option<i64>,
    pub extremities: Vec<(String, i64)>,
    /// The requested state keys' event ids.
    pub state: StateEntries,
}

impl Rooms {
    /// The head of a room (loading it if needed), with the given state keys resolved.
    /// `None` if the room is unknown. Call with the room lock held.
    pub(crate) async fn head_view(
        &self,
        room_id: &str,
        keys: &[(String, String)],
    ) -> Result<Option<HeadView>> {
        if let Some(view) = self.cached_view(room_id, keys) {
            return Ok(Some(view));
        }
        let store = &self.inner.store;
        let Some(room) = store.select_room(room_id).await.map_err(storage_error)? else {
            return Ok(None);
        };
        let version = RoomVersionId::try_from(room.version.as_str())
            .map_err(|e| Error::internal(e.to_string()))?;
        let rules = version
            .rules()
            .ok_or_else(|| Error::internal("stored room has an unsupported version"))?;
        let extremities = store
            .select_extremities(room_id)
            .await
            .map_err(storage_error)?;
        let state: StateEntries = store
            .select_current_state(room_id)
            .await
            .map_err(storage_error)?
            .into_iter()
            .map(|r| ((r.kind, r.state_key), r.event_id))
            .collect();
        let head = RoomHead {
            version,
            rules,
            state_group: room.state_group,
            extremities,
            state,
        };
        {
            let mut heads = self.inner.heads.lock().unwrap_or_else(|p| p.into_inner());
            if heads.len() >= MAX_HEADS {
                heads.clear();
            }
            heads.insert(room_id.to_owned(), head);
        }
        Ok(self.cached_view(room_id, keys))
    }

    fn cached_view(&self, room_id: &str, keys: &[(String, String)]) -> Option<HeadView> {
        let heads = self.inner.heads.lock().unwrap_or_else(|p| p.into_inner());
        let h = heads.get(room_id)?;
        let state = keys
            .iter()
            .filter_map(|k| h.state.get(k).map(|id| (k.clone(), id.clone())))
            .collect();
        Some(HeadView {
            version: h.version.clone(),
            rules: h.rules.clone(),
            state_group: h.state_group,
            extremities: h.extremities.clone(),
            state,
        })
    }

    /// The version and rules of a room whose head is cached.
    pub(crate) fn cached_version(
        &self,
        room_id: &str,
    ) -> Option<(RoomVersionId, RoomVersionRules)> {
        let heads = self.inner.heads.lock().unwrap_or_else(|p| p.into_inner());
        heads
            .get(room_id)
            .map(|h| (h.version.clone(), h.rules.clone()))
    }

    /// The current state event id of one key, from the head if cached.
    pub(crate) fn head_state_id(
        &self,
        room_id: &str,
        kind: &str,
        state_key: &str,
    ) -> Option<String> {
        let heads = self.inner.heads.lock().unwrap_or_else(|p| p.into_inner());
        heads
            .get(room_id)?
            .state
            .get(&(kind.to_owned(), state_key.to_owned()))
            .cloned()
    }

    /// Moves the head past a persisted event.
    pub(crate) fn advance_head(
        &self,
        room_id: &str,
        event_id: &str,
        depth: i64,
        state_key: Option<(&str, &str)>,
        state_group: Option<i64>,
    ) {
        let mut heads = self.inner.heads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = heads.get_mut(room_id) {
            h.extremities = vec![(event_id.to_owned(), depth)];
            h.state_group = state_group;
            if let Some((kind, sk)) = state_key {
                h.state
                    .insert((kind.to_owned(), sk.to_owned()), event_id.to_owned());
            }
        }
    }

    /// Forgets a room's head (after a failed persist: the record decides).
    pub(crate) fn drop_head(&self, room_id: &str) {
        self.inner
            .heads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(room_id);
    }
}

/// Heads of every cached room.
pub(crate) type Heads = HashMap<String, RoomHead>;
