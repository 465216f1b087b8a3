//! Room aliases.

use ganglion_core::time::now_ms;

use crate::{Result, Store};

impl Store {
    /// Creates an alias. `Conflict` if it exists.
    pub async fn insert_alias(&self, alias: &str, room_id: &str, creator: &str) -> Result<()> {
        let mut tx = self.begin("insert_alias").await?;
        sqlx::query("INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES ($1, $2, $3, $4)")
            .bind(alias)
            .bind(room_id)
            .bind(creator)
            .bind(now_ms())
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    /// Resolves an alias: (room id, creator).
    pub async fn select_alias(&self, alias: &str) -> Result<Option<(String, String)>> {
        Ok(
            sqlx::query_as("SELECT room_id, creator FROM room_aliases WHERE alias = $1")
                .bind(alias)
                .fetch_optional(self.reader())
                .await?,
        )
    }

    /// The local aliases of a room.
    pub async fn select_room_aliases(&self, room_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias")
                .bind(room_id)
                .fetch_all(self.reader())
                .await?;
        Ok(rows.into_iter().map(|(a,)| a).collect())
    }

    /// Deletes an alias. Returns whether it existed.
    pub async fn delete_alias(&self, alias: &str) -> Result<bool> {
        let mut tx = self.begin("delete_alias").await?;
        let n = sqlx::query("DELETE FROM room_aliases WHERE alias = $1")
            .bind(alias)
            .execute(tx.conn())
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }
}
