//! State resolution (room versions 2+: v2, and v2.1 from room version 12) over stored
//! state groups, with ruma's algorithm: every event it may look at (the states' events
//! and their auth chains) is loaded first, since the algorithm asks for events
//! synchronously.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ganglion_core::{Error, Pdu, Result};
use ganglion_storage::state::StateEntries;
use ruma::{
    EventId, OwnedEventId, events::StateEventType, room_version_rules::RoomVersionRules, state_res,
};

use crate::Rooms;

type EventIdSet = state_res::utils::event_id_set::EventIdSet<OwnedEventId>;

impl Rooms {
    /// The resolution of `states` (each a full state map).
    pub(crate) async fn resolve_states(
        &self,
        rules: &RoomVersionRules,
        states: &[StateEntries],
    ) -> Result<StateEntries> {
        // The common case (concurrent messages, no competing state): every state has
        // the same event for every key, and there is nothing to load or resolve.
        if let Some(first) = states.first()
            && states.iter().all(|s| s == first)
        {
            return Ok(first.clone());
        }
        let Some(v2) = rules.state_res.v2_rules() else {
            return Err(Error::internal("state resolution v1 is not supported"));
        };
        let mut events: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
        let mut maps = Vec::with_capacity(states.len());
        let mut chains = Vec::with_capacity(states.len());
        for state in states {
            let ids: Vec<String> = state.values().cloned().collect();
            let pdus = self.load_pdus(&ids).await?;
            let roots: Vec<String> = pdus
                .values()
                .flat_map(|p| p.auth_events.iter().map(ToString::to_string))
                .collect();
            let chain = self.auth_chain(roots).await?;
            chains.push(
                chain
                    .iter()
                    .map(|p| p.event_id.clone())
                    .collect::<EventIdSet>(),
            );
            let mut map: state_res::StateMap<OwnedEventId> = HashMap::new();
            for ((t, k), id) in state {
                if let Ok(id) = OwnedEventId::try_from(id.as_str()) {
                    map.insert((StateEventType::from(t.as_str()), k.clone()), id);
                }
            }
            maps.push(map);
            for p in pdus.into_values().chain(chain) {
                events.insert(p.event_id.clone(), p);
            }
        }
        let fetch = |id: &EventId| events.get(id).cloned();
        let subgraph = |conflicted: &state_res::StateMap<Vec<OwnedEventId>>| {
            Some(conflicted_subgraph(conflicted, &events))
        };
        let resolved = state_res::resolve(
            &rules.authorization,
            v2,
            maps.iter(),
            chains,
            fetch,
            subgraph,
        )
        .map_err(|e| Error::internal(format!("state resolution failed: {e}")))?;
        Ok(resolved
            .into_iter()
            .map(|((t, k), id)| ((t.to_string(), k), id.to_string()))
            .collect())
    }
}

/// The conflicted state subgraph (state resolution v2.1): the events of the auth DAG
/// that are both reachable from a conflicted state event and lead to one, through
/// `auth_events`.
fn conflicted_subgraph(
    conflicted: &state_res::StateMap<Vec<OwnedEventId>>,
    events: &HashMap<OwnedEventId, Arc<Pdu>>,
) -> EventIdSet {
    let targets: HashSet<&EventId> = conflicted
        .values()
        .flatten()
        .map(|id| -> &EventId { id })
        .collect();
    // Whether an event leads (through auth_events) to a conflicted event.
    let mut leads: HashMap<&EventId, bool> = HashMap::new();
    fn reaches<'a>(
        id: &'a EventId,
        targets: &HashSet<&EventId>,
        events: &'a HashMap<OwnedEventId, Arc<Pdu>>,
        leads: &mut HashMap<&'a EventId, bool>,
    ) -> bool {
        if let Some(known) = leads.get(id) {
            return *known;
        }
        // Marked first: the auth DAG has no cycles, but a malformed one must not loop.
        leads.insert(id, false);
        let found = events.get(id).is_some_and(|p| {
            p.auth_events
                .iter()
                .any(|a| targets.contains::<&EventId>(&&**a) || reaches(a, targets, events, leads))
        });
        leads.insert(id, found);
        found
    }
    // Everything reachable from the conflicted events, then what of it leads back.
    let mut reachable: Vec<&EventId> = Vec::new();
    let mut seen: HashSet<&EventId> = HashSet::new();
    let mut todo: Vec<&EventId> = targets.iter().copied().collect();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        reachable.push(id);
        if let Some(p) = events.get(id) {
            todo.extend(p.auth_events.iter().map(|a| -> &EventId { a }));
        }
    }
    reachable
        .into_iter()
        .filter(|id| targets.contains(id) || reaches(id, &targets, events, &mut leads))
        .map(ToOwned::to_owned)
        .collect()
}
