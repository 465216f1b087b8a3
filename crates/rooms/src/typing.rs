//! Typing notifications: main's in-memory state and its stream.
//!
//! Typing is ephemeral (spec: "Typing Notifications"), so it lives in memory only; every
//! change is announced with the room's full typing list, which is all a reader needs.

use std::{collections::HashMap, sync::Arc, time::Duration};

use ganglion_bus::Row;
use ganglion_core::{Error, StreamPos};
use tokio::{sync::Mutex, time::Instant};

use crate::streams::StreamWriter;

/// The longest typing timeout a client may ask for.
pub const MAX_TYPING_TIMEOUT: Duration = Duration::from_secs(120);

/// Typing state on main.
#[derive(Debug, Clone)]
pub struct Typing {
    rooms: Arc<Mutex<HashMap<String, HashMap<String, Instant>>>>,
    writer: Arc<StreamWriter>,
}

impl Typing {
    /// Typing state announcing through `writer`.
    pub fn new(writer: Arc<StreamWriter>) -> Typing {
        Typing {
            rooms: Arc::default(),
            writer,
        }
    }

    /// Sets or clears a user's typing flag in a room.
    pub async fn set(
        &self,
        room_id: &str,
        user_id: &str,
        typing: Option<Duration>,
    ) -> Result<StreamPos, Error> {
        let mut rooms = self.rooms.lock().await;
        let room = rooms.entry(room_id.to_owned()).or_default();
        match typing {
            Some(t) => {
                room.insert(
                    user_id.to_owned(),
                    Instant::now() + t.min(MAX_TYPING_TIMEOUT),
                );
            }
            None => {
                room.remove(user_id);
            }
        }
        let users: Vec<String> = room.keys().cloned().collect();
        if room.is_empty() {
            rooms.remove(room_id);
        }
        drop(rooms);
        self.announce(room_id, users).await
    }

    async fn announce(&self, room_id: &str, users: Vec<String>) -> Result<StreamPos, Error> {
        let row = Row {
            room_id: room_id.to_owned(),
            user_ids: users,
            ..Default::default()
        };
        self.writer.write(vec![row], |_| async { Ok(()) }).await
    }

    /// Drops expired flags and announces the rooms that changed. Run about once a second.
    pub async fn expire(&self) {
        let now = Instant::now();
        let mut changed = Vec::new();
        {
            let mut rooms = self.rooms.lock().await;
            for (room_id, users) in rooms.iter_mut() {
                let before = users.len();
                users.retain(|_, until| *until > now);
                if users.len() != before {
                    changed.push((room_id.clone(), users.keys().cloned().collect::<Vec<_>>()));
                }
            }
            rooms.retain(|_, u| !u.is_empty());
        }
        for (room_id, users) in changed {
            if let Err(e) = self.announce(&room_id, users).await {
                tracing::warn!(error = %e, "could not announce typing expiry");
            }
        }
    }
}
