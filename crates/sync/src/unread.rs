//! `unread_notifications` and `unread_thread_notifications` of joined rooms (spec:
//! Client-Server API, "Receiving notifications"): the notifying events after the user's
//! read receipt, counted from the push actions the persister stored (docs/push.md).

use std::collections::HashMap;

use ganglion_core::Result;
use ganglion_rooms::storage_error;
use ganglion_storage::Store;
use serde_json::{Map, Value, json};

/// A room's counts: `unread_notifications`, and per thread root
/// `unread_thread_notifications` (empty unless asked for).
#[derive(Debug, Default)]
pub(crate) struct RoomUnread {
    notifications: i64,
    highlights: i64,
    threads: Map<String, Value>,
}

impl RoomUnread {
    /// `unread_notifications`.
    pub(crate) fn counts(&self) -> Value {
        json!({ "notification_count": self.notifications, "highlight_count": self.highlights })
    }

    /// `unread_thread_notifications`: thread root → counts.
    pub(crate) fn threads(self) -> Value {
        Value::Object(self.threads)
    }
}

/// The counts of `rooms` for `user_id`. With `per_thread` (the filter's
/// `unread_thread_notifications`), threads are counted apart and the room's own counts
/// are its main timeline's; without, everything is the room's.
pub(crate) async fn unread_counts(
    store: &Store,
    user_id: &str,
    rooms: &[String],
    per_thread: bool,
) -> Result<HashMap<String, RoomUnread>> {
    let mut out: HashMap<String, RoomUnread> = HashMap::new();
    if rooms.is_empty() {
        return Ok(out);
    }
    for row in store
        .select_unread_counts(user_id, rooms)
        .await
        .map_err(storage_error)?
    {
        let room = out.entry(row.room_id).or_default();
        if per_thread && row.thread_id != "main" {
            room.threads.insert(
                row.thread_id,
                json!({
                    "notification_count": row.notifications,
                    "highlight_count": row.highlights,
                }),
            );
        } else {
            room.notifications += row.notifications;
            room.highlights += row.highlights;
        }
    }
    Ok(out)
}
