//! Rooms: the room table, the public directory flag, forgotten rooms.

use crate::{Result, Store, flag};

/// A room row.
#[derive(Debug, Clone)]
pub struct RoomRow {
    /// Room id.
    pub room_id: String,
    /// Room version id.
    pub version: String,
    /// Creator.
    pub creator: String,
    /// Listed in the public directory.
    pub is_public: bool,
    /// Current state group.
    pub state_group: Option<i64>,
}

impl Store {
    /// Loads a room.
    pub async fn select_room(&self, room_id: &str) -> Result<Option<RoomRow>> {
        let row: Option<(String, String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT room_id, room_version, creator, is_public, state_group FROM rooms WHERE room_id = $1",
        )
        .bind(room_id)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(|r| RoomRow {
            room_id: r.0,
            version: r.1,
            creator: r.2,
            is_public: r.3 != 0,
            state_group: r.4,
        }))
    }

    /// Lists or unlists a room in the public directory. Returns whether the room exists.
    pub async fn update_room_public(&self, room_id: &str, public: bool) -> Result<bool> {
        let mut tx = self.begin("update_room_public").await?;
        let n = sqlx::query("UPDATE rooms SET is_public = $2 WHERE room_id = $1")
            .bind(room_id)
            .bind(flag(public))
            .execute(tx.conn())
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Public rooms, ordered by joined members then id: (room id, joined members).
    /// `since` is an offset into that order.
    pub async fn select_public_rooms(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT r.room_id, (SELECT COUNT(*) FROM current_state c WHERE c.room_id = r.room_id
                 AND c.type = 'm.room.member' AND c.membership = 'join') AS joined
             FROM rooms r WHERE r.is_public = 1 ORDER BY joined DESC, r.room_id",
        )
        .fetch_all(self.reader())
        .await?)
    }

    /// Marks a room forgotten by a user.
    pub async fn insert_forgotten(&self, user_id: &str, room_id: &str) -> Result<()> {
        let mut tx = self.begin("insert_forgotten").await?;
        sqlx::query("INSERT INTO forgotten_rooms (user_id, room_id) VALUES ($1, $2) ON CONFLICT (user_id, room_id) DO NOTHING")
            .bind(user_id)
            .bind(room_id)
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    /// The rooms a user has forgotten.
    pub async fn select_forgotten(&self, user_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT room_id FROM forgotten_rooms WHERE user_id = $1")
                .bind(user_id)
                .fetch_all(self.reader())
                .await?;
        Ok(rows.into_iter().map(|(r,)| r).collect())
    }
}
