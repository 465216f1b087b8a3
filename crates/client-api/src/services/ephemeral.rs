//! Typing notifications, read receipts and read markers.

use std::{sync::Arc, time::Duration};

use ganglion_core::{Error, Result, StreamPos, time::now_ms};
use ganglion_rooms::{Rooms, storage_error, streams::StreamWriter, typing::Typing};
use ganglion_storage::{Store, receipts::ReceiptRow};

use crate::services::user_data::UserData;

/// The ephemeral-data service.
#[derive(Clone, Debug)]
pub struct Ephemeral {
    store: Store,
    rooms: Rooms,
    typing: Typing,
    receipts: Arc<StreamWriter>,
    user_data: UserData,
}

impl Ephemeral {
    /// The service over its dependencies.
    pub fn new(
        store: Store,
        rooms: Rooms,
        typing: Typing,
        receipts: Arc<StreamWriter>,
        user_data: UserData,
    ) -> Ephemeral {
        Ephemeral {
            store,
            rooms,
            typing,
            receipts,
            user_data,
        }
    }

    /// Sets or clears typing; the user must be joined.
    pub async fn set_typing(
        &self,
        room_id: &str,
        user_id: &str,
        timeout: Option<Duration>,
    ) -> Result<StreamPos> {
        if !self.rooms.is_joined(user_id, room_id).await? {
            return Err(Error::forbidden("you are not in this room"));
        }
        self.typing.set(room_id, user_id, timeout).await
    }

    /// Records a receipt (`m.read`, `m.read.private`), or the fully-read marker.
    pub async fn set_receipt(
        &self,
        room_id: &str,
        user_id: &str,
        receipt_type: &str,
        event_id: &str,
        thread_id: &str,
    ) -> Result<StreamPos> {
        if !self.rooms.is_joined(user_id, room_id).await? {
            return Err(Error::forbidden("you are not in this room"));
        }
        let event = self
            .store
            .select_event(event_id)
            .await
            .map_err(storage_error)?;
        if event.as_ref().is_none_or(|e| e.room_id != room_id) {
            return Err(Error::not_found("event not found in this room"));
        }
        if receipt_type == "m.fully_read" {
            return self
                .user_data
                .set_account_data(
                    user_id,
                    room_id,
                    "m.fully_read",
                    &serde_json::json!({ "event_id": event_id }),
                )
                .await;
        }
        self.receipts
            .record_receipt(
                &self.store,
                ReceiptRow {
                    room_id: room_id.to_owned(),
                    user_id: user_id.to_owned(),
                    receipt_type: receipt_type.to_owned(),
                    thread_id: thread_id.to_owned(),
                    event_id: event_id.to_owned(),
                    ts: now_ms(),
                    stream_id: 0,
                },
            )
            .await
    }
}
