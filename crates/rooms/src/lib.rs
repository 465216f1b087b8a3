//! rooms: building, authorising and persisting events; room state; the stream writers.
//!
//! Depends on `core`, `storage`, `bus` and `federation-client` (to reach other servers).
//! Knows nothing of HTTP. Every local event goes through [`Rooms::send`]: built and signed here, checked against the auth rules
//! (ruma-state-res), persisted by main's single [`persister::Persister`].

pub mod backfill;
pub mod builder;
mod create_room;
pub mod directory;
pub mod format;
mod handshake;
mod head;
mod local_or_remote;
mod membership;
pub mod persister;
pub mod reads;
pub mod remote;
mod remote_directory;
mod remote_history;
mod remote_invite;
mod resolve;
mod send;
pub mod spaces;
pub mod streams;
pub mod typing;
mod upgrade;
mod visibility;

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
};

use ganglion_core::{Error, ErrorKind, Pdu, Result};
use ganglion_federation_client::{Federation, ServerKey};
use ganglion_storage::{Store, events::EventRow};
use ruma::{OwnedServerName, RoomVersionId, room_version_rules::RoomVersionRules};

pub use builder::EventTemplate;
pub use create_room::{CreateRoomSpec, Preset};
pub use persister::Persister;
pub use send::{SendOutcome, SendRequest};

/// Maps a storage failure to a client-visible error (503 when the database is away).
pub fn storage_error(e: ganglion_storage::Error) -> Error {
    match e {
        ganglion_storage::Error::NotFound => Error::not_found("not found"),
        ganglion_storage::Error::Unavailable(m) => Error::new(ErrorKind::Unavailable, m),
        other => Error::internal(other.to_string()),
    }
}

/// The rooms service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Rooms {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    /// Main's persister; `None` in worker processes, which never write events.
    persister: Option<Persister>,
    /// The last events-stream position this process can read up to.
    position: tokio::sync::watch::Receiver<ganglion_core::StreamPos>,
    key: Arc<ServerKey>,
    server_name: OwnedServerName,
    default_version: RoomVersionId,
    locks: std::sync::Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    heads: std::sync::Mutex<head::Heads>,
    pdu_cache: std::sync::Mutex<HashMap<String, Arc<Pdu>>>,
    /// Other servers (invites countersigned, history fetched), when federation is on
    /// and this process writes events.
    federation: Option<Federation>,
    /// One backfill at a time: each takes positions below the current minimum.
    backfill_lock: tokio::sync::Mutex<()>,
}

/// PDUs kept in memory (auth events, mostly); beyond this the cache is emptied.
const MAX_CACHED_PDUS: usize = 50_000;

impl Rooms {
    /// The service over its dependencies; `federation` is `None` when federation is off.
    pub fn new(
        store: Store,
        persister: Persister,
        key: Arc<ServerKey>,
        server_name: OwnedServerName,
        default_version: RoomVersionId,
        federation: Option<Federation>,
    ) -> Rooms {
        let position = persister.position_watch();
        Rooms {
            inner: Arc::new(Inner {
                store,
                persister: Some(persister),
                position,
                key,
                server_name,
                default_version,
                locks: Default::default(),
                heads: Default::default(),
                pdu_cache: Default::default(),
                federation,
                backfill_lock: Default::default(),
            }),
        }
    }

    /// The read side only, for worker processes: history reads and formatting, no sends.
    /// `position` is how far this process has followed the events stream.
    pub fn reader(
        store: Store,
        position: tokio::sync::watch::Receiver<ganglion_core::StreamPos>,
        key: Arc<ServerKey>,
        server_name: OwnedServerName,
        default_version: RoomVersionId,
    ) -> Rooms {
        Rooms {
            inner: Arc::new(Inner {
                store,
                persister: None,
                position,
                key,
                server_name,
                default_version,
                locks: Default::default(),
                heads: Default::default(),
                pdu_cache: Default::default(),
                federation: None,
                backfill_lock: Default::default(),
            }),
        }
    }

    /// The server name.
    pub fn server_name(&self) -> &ruma::ServerName {
        &self.inner.server_name
    }

    /// The store (for read paths of sibling services).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The last committed events-stream position.
    pub fn events_position(&self) -> ganglion_core::StreamPos {
        *self.inner.position.borrow()
    }

    /// The events position reads may go up to. main's own position is exact; a read-only
    /// process's follows the bus and may trail a write main has already answered, so it
    /// takes the committed maximum from the record (read-your-writes across processes).
    pub async fn read_position(&self) -> Result<i64> {
        let own = self.events_position().0;
        if self.inner.persister.is_some() {
            return Ok(own);
        }
        let committed = self
            .inner
            .store
            .select_stream_max(ganglion_core::StreamKind::Events)
            .await
            .map_err(storage_error)?;
        Ok(own.max(committed))
    }

    /// Serialises writers of one room: building an event needs the state the previous
    /// event left, so one room's events are built and persisted one at a time.
    async fn lock_room(&self, room_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
            match locks.get(room_id).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    if locks.len() > 10_000 {
                        locks.retain(|_, w| w.strong_count() > 0);
                    }
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(room_id.to_owned(), Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }

    /// The version and rules of a known room; `M_NOT_FOUND` otherwise.
    pub async fn room_version(&self, room_id: &str) -> Result<(RoomVersionId, RoomVersionRules)> {
        // A room's version never changes: main's cached head answers without a query.
        if let Some(h) = self.cached_version(room_id) {
            return Ok(h);
        }
        let room = self
            .inner
            .store
            .select_room(room_id)
            .await
            .map_err(storage_error)?
            .ok_or_else(|| Error::not_found("unknown room"))?;
        let version = RoomVersionId::try_from(room.version.as_str())
            .map_err(|e| Error::internal(e.to_string()))?;
        let rules = version
            .rules()
            .ok_or_else(|| Error::internal("stored room has an unsupported version"))?;
        Ok((version, rules))
    }

    /// Loads a PDU by id.
    pub async fn load_pdu(&self, event_id: &str) -> Result<Option<Arc<Pdu>>> {
        Ok(self
            .load_pdus(&[event_id.to_owned()])
            .await?
            .remove(event_id))
    }

    /// Loads PDUs by id (unknown ids skipped), from memory where cached.
    pub async fn load_pdus(&self, ids: &[String]) -> Result<HashMap<String, Arc<Pdu>>> {
        let mut out = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        {
            let cache = self
                .inner
                .pdu_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for id in ids {
                match cache.get(id) {
                    Some(p) => {
                        out.insert(id.clone(), p.clone());
                    }
                    None => missing.push(id.clone()),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let rows = self
            .inner
            .store
            .select_events(&missing)
            .await
            .map_err(storage_error)?;
        for r in &rows {
            let pdu = Arc::new(pdu_from_row(r)?);
            // Redacted events are served from their row; only intact ones are cached.
            if r.redacted_by.is_none() {
                self.cache_pdu(pdu.clone());
            }
            out.insert(r.event_id.clone(), pdu);
        }
        Ok(out)
    }

    /// Remembers a PDU (events never change; redactions are applied from their rows).
    pub(crate) fn cache_pdu(&self, pdu: Arc<Pdu>) {
        let mut cache = self
            .inner
            .pdu_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_PDUS {
            cache.clear();
        }
        cache.insert(pdu.event_id.to_string(), pdu);
    }

    /// The content of a current state event, if set.
    pub async fn current_state_content(
        &self,
        room_id: &str,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<serde_json::Value>> {
        let Some(id) = self
            .inner
            .store
            .select_current_state_event(room_id, kind, state_key)
            .await
            .map_err(storage_error)?
        else {
            return Ok(None);
        };
        Ok(self
            .load_pdu(&id)
            .await?
            .and_then(|p| p.content_as::<serde_json::Value>()))
    }
}

/// Parses a stored row into a PDU.
pub fn pdu_from_row(row: &EventRow) -> Result<Pdu> {
    let event_id = row
        .event_id
        .as_str()
        .try_into()
        .map_err(|_| Error::internal("stored event id is invalid"))?;
    let room_id = row
        .room_id
        .as_str()
        .try_into()
        .map_err(|_| Error::internal("stored room id is invalid"))?;
    Pdu::from_json(row.json.as_str().into(), Some(event_id), Some(room_id))
        .map_err(|e| Error::internal(e.to_string()))
}
