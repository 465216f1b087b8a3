//! Writers of the non-event streams (receipts, account data, to-device, typing…).
//!
//! Each stream has one writer on main. A write takes the stream's lock, allocates the
//! next position, commits its rows at that position, then announces it on the bus, so
//! positions become visible in commit order and a reader never skips a row that commits
//! late.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
};

use ganglion_bus::{Bus, Entry, Row};
use ganglion_core::{Error, StreamKind, StreamPos};
use ganglion_storage::Store;
use tokio::sync::Mutex;

/// The writer of one stream.
#[derive(Debug)]
pub struct StreamWriter {
    kind: StreamKind,
    last: Mutex<i64>,
    /// The last committed position, readable without waiting for a write in progress.
    committed: AtomicI64,
    bus: Bus,
}

impl StreamWriter {
    /// A writer starting after the table's highest position.
    pub async fn new(kind: StreamKind, store: &Store, bus: Bus) -> Result<StreamWriter, Error> {
        let last = store
            .select_stream_max(kind)
            .await
            .map_err(crate::storage_error)?;
        Ok(StreamWriter {
            kind,
            last: Mutex::new(last),
            committed: AtomicI64::new(last),
            bus,
        })
    }

    /// Runs `write` at the next position, then announces it with `rows`.
    pub async fn write<F, Fut>(&self, rows: Vec<Row>, write: F) -> Result<StreamPos, Error>
    where
        F: FnOnce(i64) -> Fut,
        Fut: Future<Output = Result<(), Error>>,
    {
        let mut last = self.last.lock().await;
        let pos = *last + 1;
        write(pos).await?;
        *last = pos;
        self.committed.store(pos, Ordering::Release);
        self.bus.publish(Entry {
            writer: String::new(),
            stream: self.kind as i32,
            prev: pos - 1,
            pos,
            rows,
        });
        Ok(StreamPos(pos))
    }

    /// The last position written.
    /// The last committed position, without waiting.
    pub fn committed(&self) -> StreamPos {
        StreamPos(self.committed.load(Ordering::Acquire))
    }

    /// The last position written.
    pub async fn position(&self) -> StreamPos {
        StreamPos(*self.last.lock().await)
    }

    /// Announces the current position with no rows, so idle readers keep moving and a
    /// lost entry is noticed (docs/architecture.md, "Streams and positions").
    pub async fn heartbeat(&self) {
        let last = *self.last.lock().await;
        self.bus.publish(Entry {
            writer: String::new(),
            stream: self.kind as i32,
            prev: last,
            pos: last,
            rows: Vec::new(),
        });
    }
}

/// Every stream writer main owns.
#[derive(Debug, Clone)]
pub struct StreamWriters {
    /// Receipts.
    pub receipts: Arc<StreamWriter>,
    /// Account data.
    pub account_data: Arc<StreamWriter>,
    /// Send-to-device.
    pub to_device: Arc<StreamWriter>,
    /// Device lists (whose devices or cross-signing keys changed).
    pub device_lists: Arc<StreamWriter>,
    /// Typing (positions only; state lives in [`crate::typing::Typing`]).
    pub typing: Arc<StreamWriter>,
}

impl StreamWriters {
    /// Creates every writer from the positions in the database.
    pub async fn new(store: &Store, bus: &Bus) -> Result<StreamWriters, Error> {
        Ok(StreamWriters {
            receipts: Arc::new(StreamWriter::new(StreamKind::Receipts, store, bus.clone()).await?),
            account_data: Arc::new(
                StreamWriter::new(StreamKind::AccountData, store, bus.clone()).await?,
            ),
            to_device: Arc::new(StreamWriter::new(StreamKind::ToDevice, store, bus.clone()).await?),
            device_lists: Arc::new(
                StreamWriter::new(StreamKind::DeviceLists, store, bus.clone()).await?,
            ),
            typing: Arc::new(StreamWriter::new(StreamKind::Typing, store, bus.clone()).await?),
        })
    }

    /// Current positions of every stream these writers own.
    pub async fn positions(&self) -> HashMap<StreamKind, StreamPos> {
        let mut out = HashMap::new();
        out.insert(StreamKind::Receipts, self.receipts.position().await);
        out.insert(StreamKind::AccountData, self.account_data.position().await);
        out.insert(StreamKind::ToDevice, self.to_device.position().await);
        out.insert(StreamKind::DeviceLists, self.device_lists.position().await);
        out.insert(StreamKind::Typing, self.typing.position().await);
        out
    }

    /// Committed positions of every stream these writers own, without waiting.
    pub fn committed(&self) -> [(StreamKind, StreamPos); 4] {
        [
            (StreamKind::Receipts, self.receipts.committed()),
            (StreamKind::AccountData, self.account_data.committed()),
            (StreamKind::ToDevice, self.to_device.committed()),
            (StreamKind::DeviceLists, self.device_lists.committed()),
        ]
    }

    /// Heartbeats every stream.
    pub async fn heartbeat(&self) {
        for w in [
            &self.receipts,
            &self.account_data,
            &self.to_device,
            &self.device_lists,
            &self.typing,
        ] {
            w.heartbeat().await;
        }
    }
}

impl StreamWriter {
    /// Records a read receipt at the next receipts-stream position (the writer must be
    /// the receipts stream's) and announces it.
    pub async fn record_receipt(
        &self,
        store: &Store,
        receipt: ganglion_storage::receipts::ReceiptRow,
    ) -> Result<StreamPos, Error> {
        let row = Row {
            room_id: receipt.room_id.clone(),
            event_id: receipt.event_id.clone(),
            user_id: receipt.user_id.clone(),
            kind: receipt.receipt_type.clone(),
            ..Default::default()
        };
        self.write(vec![row], |pos| async move {
            store
                .upsert_receipt(&ganglion_storage::receipts::ReceiptRow {
                    stream_id: pos,
                    ..receipt
                })
                .await
                .map_err(crate::storage_error)
        })
        .await
    }
}

impl StreamWriter {
    /// Records that the devices (or cross-signing keys) of `users` changed, at the next
    /// device-list position (the writer must be the device-list stream's), and announces
    /// it with a row per room each user is joined to, so the long-polls of everyone who
    /// shares a room with them wake, and a row for the user alone, for their own devices.
    pub async fn record_device_list_change(
        &self,
        store: &Store,
        users: &[String],
    ) -> Result<StreamPos, Error> {
        self.record_device_changes(store, users, "", "").await
    }

    /// [`StreamWriter::record_device_list_change`] for a change of `user`'s master or
    /// self-signing key: the user's row says so (kind `m.signing_key_update`), for the
    /// federation sender's EDU of that name.
    pub async fn record_signing_key_change(
        &self,
        store: &Store,
        user: &str,
    ) -> Result<StreamPos, Error> {
        self.record_device_changes(store, &[user.to_owned()], "", "m.signing_key_update")
            .await
    }

    /// [`StreamWriter::record_device_list_change`] for one device of `user` (its keys
    /// changed): the user's row names the device, for the federation sender's
    /// `m.device_list_update`.
    pub async fn record_device_change(
        &self,
        store: &Store,
        user: &str,
        device: &str,
    ) -> Result<StreamPos, Error> {
        self.record_device_changes(store, &[user.to_owned()], device, "")
            .await
    }

    async fn record_device_changes(
        &self,
        store: &Store,
        users: &[String],
        device: &str,
        kind: &str,
    ) -> Result<StreamPos, Error> {
        let mut rows = Vec::new();
        for user in users {
            rows.push(Row {
                user_id: user.clone(),
                device_id: device.to_owned(),
                kind: kind.to_owned(),
                ..Default::default()
            });
            let rooms = store
                .select_user_rooms(user, &["join"])
                .await
                .map_err(crate::storage_error)?;
            rows.extend(rooms.into_iter().map(|(room_id, ..)| Row {
                room_id,
                ..Default::default()
            }));
        }
        self.write(rows, |pos| async move {
            store
                .insert_device_list_changes(pos, users)
                .await
                .map_err(crate::storage_error)
        })
        .await
    }
}
