//! Per-user data: account data (a stream), filters, send-to-device messages (a stream).

use crate::{Error, Result, Store};

impl Store {
    /// Upserts account data (`room_id` empty for global) at stream position `stream_id`.
    pub async fn upsert_account_data(
        &self,
        user_id: &str,
        room_id: &str,
        kind: &str,
        content: &str,
        stream_id: i64,
    ) -> Result<()> {
        let mut tx = self.begin("upsert_account_data").await?;
        sqlx::query(
            "INSERT INTO account_data (user_id, room_id, type, content, stream_id) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = $4, stream_id = $5",
        )
        .bind(user_id)
        .bind(room_id)
        .bind(kind)
        .bind(content)
        .bind(stream_id)
        .execute(tx.conn())
        .await?;
        tx.commit().await
    }

    /// One account data entry.
    pub async fn select_account_data(
        &self,
        user_id: &str,
        room_id: &str,
        kind: &str,
    ) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3",
        )
        .bind(user_id)
        .bind(room_id)
        .bind(kind)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(|(c,)| c))
    }

    /// A user's account data changed in `(after, upto]`: (room id or "", type, content).
    pub async fn select_account_data_since(
        &self,
        user_id: &str,
        after: i64,
        upto: i64,
    ) -> Result<Vec<(String, String, String)>> {
        Ok(sqlx::query_as(
            "SELECT room_id, type, content FROM account_data WHERE user_id = $1 AND stream_id > $2 AND stream_id <= $3
             ORDER BY stream_id",
        )
        .bind(user_id)
        .bind(after)
        .bind(upto)
        .fetch_all(self.reader())
        .await?)
    }

    /// Stores a filter, returning its id (per-user sequence).
    pub async fn insert_filter(&self, user_id: &str, json: &str) -> Result<i64> {
        // Ids are per user, the next after the highest. Two uploads of one user at the
        // same moment can pick the same id: the second meets the primary key and tries
        // again with the next one.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.insert_filter_once(user_id, json).await {
                Err(Error::Conflict(_)) if attempt < 20 => continue,
                other => return other,
            }
        }
    }

    async fn insert_filter_once(&self, user_id: &str, json: &str) -> Result<i64> {
        let mut tx = self.begin("insert_filter").await?;
        let (max,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(filter_id) FROM filters WHERE user_id = $1")
                .bind(user_id)
                .fetch_one(tx.conn())
                .await?;
        let id = max.unwrap_or(-1) + 1;
        sqlx::query("INSERT INTO filters (user_id, filter_id, json) VALUES ($1, $2, $3)")
            .bind(user_id)
            .bind(id)
            .bind(json)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Loads a filter.
    pub async fn select_filter(&self, user_id: &str, filter_id: i64) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT json FROM filters WHERE user_id = $1 AND filter_id = $2")
                .bind(user_id)
                .bind(filter_id)
                .fetch_optional(self.reader())
                .await?;
        Ok(row.map(|(j,)| j))
    }

    /// Queues send-to-device messages: (stream id, user, device, sender, type, content).
    pub async fn insert_to_device(
        &self,
        rows: &[(i64, String, String, String, String, String)],
    ) -> Result<()> {
        let mut tx = self.begin("insert_to_device").await?;
        for (stream_id, user, device, sender, kind, content) in rows {
            sqlx::query("INSERT INTO to_device (stream_id, user_id, device_id, sender, type, content) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(stream_id)
                .bind(user)
                .bind(device)
                .bind(sender)
                .bind(kind)
                .bind(content)
                .execute(tx.conn())
                .await?;
        }
        tx.commit().await
    }

    /// Pending send-to-device messages for a device up to `upto`: (stream id, sender, type, content).
    pub async fn select_to_device(
        &self,
        user_id: &str,
        device_id: &str,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String, String)>> {
        Ok(sqlx::query_as(
            "SELECT stream_id, sender, type, content FROM to_device WHERE user_id = $1 AND device_id = $2 AND stream_id <= $3
             ORDER BY stream_id LIMIT $4",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(upto)
        .bind(limit)
        .fetch_all(self.reader())
        .await?)
    }

    /// Drops messages a device has acknowledged (by syncing past them). One statement,
    /// so no explicit transaction: every `/sync` with a token runs it, mostly with
    /// nothing to delete, and this keeps it to one round trip.
    pub async fn delete_to_device(&self, user_id: &str, device_id: &str, upto: i64) -> Result<()> {
        sqlx::query(
            "DELETE FROM to_device WHERE user_id = $1 AND device_id = $2 AND stream_id <= $3",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(upto)
        .execute(self.writer())
        .await?;
        Ok(())
    }
}
