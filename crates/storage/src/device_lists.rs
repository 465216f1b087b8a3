//! The device-list stream (whose devices or cross-signing keys changed, at which
//! position) and the send-to-device batches written at one position.

use crate::{Error, Result, Store};

/// One send-to-device message to queue: (user, device, content JSON).
pub type ToDeviceRow = (String, String, String);

impl Store {
    /// Records that the devices of `users` changed at `stream_id`.
    pub async fn insert_device_list_changes(&self, stream_id: i64, users: &[String]) -> Result<()> {
        let mut tx = self.begin("insert_device_list_changes").await?;
        for user in users {
            sqlx::query(
                "INSERT INTO device_list_changes (stream_id, user_id) VALUES ($1, $2)
                 ON CONFLICT (stream_id, user_id) DO NOTHING",
            )
            .bind(stream_id)
            .bind(user)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await
    }

    /// The users whose devices changed in `(after, upto]` and who are `user_id` or share
    /// a joined room with them, sorted.
    pub async fn select_device_list_changes_for(
        &self,
        user_id: &str,
        after: i64,
        upto: i64,
    ) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT c.user_id FROM device_list_changes c
             WHERE c.stream_id > $2 AND c.stream_id <= $3
               AND (c.user_id = $1 OR EXISTS (
                    SELECT 1 FROM current_state x JOIN current_state y ON x.room_id = y.room_id
                    WHERE x.type = 'm.room.member' AND x.state_key = $1 AND x.membership = 'join'
                      AND y.type = 'm.room.member' AND y.state_key = c.user_id AND y.membership = 'join'))
             ORDER BY c.user_id",
        )
        .bind(user_id)
        .bind(after)
        .bind(upto)
        .fetch_all(self.reader())
        .await?;
        Ok(rows.into_iter().map(|(u,)| u).collect())
    }

    /// Membership changes in `(after, upto]` (by their current membership) in the rooms
    /// `user_id` is joined to or whose membership of theirs changed in that range:
    /// (room, user, membership).
    pub async fn select_membership_changes_around(
        &self,
        user_id: &str,
        after: i64,
        upto: i64,
    ) -> Result<Vec<(String, String, String)>> {
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT c.room_id, c.state_key, c.membership FROM current_state c
             WHERE c.type = 'm.room.member' AND c.stream_ordering > $2 AND c.stream_ordering <= $3
               AND c.room_id IN (
                    SELECT room_id FROM current_state
                    WHERE type = 'm.room.member' AND state_key = $1
                      AND (membership = 'join' OR stream_ordering > $2))
             ORDER BY c.room_id, c.state_key",
        )
        .bind(user_id)
        .bind(after)
        .bind(upto)
        .fetch_all(self.reader())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(r, u, m)| (r, u, m.unwrap_or_default()))
            .collect())
    }

    /// The users joined to any room `user_id` is joined to (them included), sorted.
    pub async fn select_users_sharing_rooms(&self, user_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT y.state_key FROM current_state x JOIN current_state y ON x.room_id = y.room_id
             WHERE x.type = 'm.room.member' AND x.state_key = $1 AND x.membership = 'join'
               AND y.type = 'm.room.member' AND y.membership = 'join'
             ORDER BY y.state_key",
        )
        .bind(user_id)
        .fetch_all(self.reader())
        .await?;
        Ok(rows.into_iter().map(|(u,)| u).collect())
    }

    /// The position a `/sendToDevice` transaction was written at, if it was.
    pub async fn select_to_device_txn(
        &self,
        user_id: &str,
        device_id: &str,
        txn_id: &str,
    ) -> Result<Option<i64>> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT stream_id FROM to_device_txns WHERE user_id = $1 AND device_id = $2 AND txn_id = $3",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(txn_id)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(|(s,)| s))
    }

    /// Queues one `/sendToDevice` request's messages at `stream_id`, with its transaction
    /// id, in one transaction: `rows` for our devices, `outbox` (destination, EDU
    /// content) for other servers' (`device_federation_outbox`). [`Error::Conflict`] if
    /// the transaction id was already used (nothing is written then). A message from
    /// another server comes with its sender and `("", message_id)` as the transaction,
    /// so a repeat of it is refused the same way.
    pub async fn insert_to_device_batch(
        &self,
        stream_id: i64,
        sender: (&str, &str),
        txn_id: &str,
        kind: &str,
        rows: &[ToDeviceRow],
        outbox: &[(String, String)],
    ) -> Result<()> {
        let (sender_user, sender_device) = sender;
        let mut tx = self.begin("insert_to_device_batch").await?;
        let fresh = sqlx::query(
            "INSERT INTO to_device_txns (user_id, device_id, txn_id, stream_id) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, device_id, txn_id) DO NOTHING",
        )
        .bind(sender_user)
        .bind(sender_device)
        .bind(txn_id)
        .bind(stream_id)
        .execute(tx.conn())
        .await?
        .rows_affected();
        if fresh == 0 {
            return Err(Error::Conflict(format!("to-device transaction {txn_id}")));
        }
        for (user, device, content) in rows {
            sqlx::query(
                "INSERT INTO to_device (stream_id, user_id, device_id, sender, type, content)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(stream_id)
            .bind(user)
            .bind(device)
            .bind(sender_user)
            .bind(kind)
            .bind(content)
            .execute(tx.conn())
            .await?;
        }
        for (destination, content) in outbox {
            sqlx::query(
                "INSERT INTO device_federation_outbox (destination, stream_id, content)
                 VALUES ($1, $2, $3)",
            )
            .bind(destination)
            .bind(stream_id)
            .bind(content)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await
    }

    /// The oldest `limit` to-device EDUs waiting for `destination`: (position, content).
    pub async fn select_federation_outbox(
        &self,
        destination: &str,
        limit: i64,
    ) -> Result<Vec<(i64, String)>> {
        Ok(sqlx::query_as(
            "SELECT stream_id, content FROM device_federation_outbox
             WHERE destination = $1 ORDER BY stream_id LIMIT $2",
        )
        .bind(destination)
        .bind(limit)
        .fetch_all(self.reader())
        .await?)
    }

    /// Forgets the to-device EDUs at `positions` for `destination` (it took them).
    pub async fn delete_federation_outbox(
        &self,
        destination: &str,
        positions: &[i64],
    ) -> Result<()> {
        let mut tx = self.begin("delete_federation_outbox").await?;
        for pos in positions {
            sqlx::query(
                "DELETE FROM device_federation_outbox WHERE destination = $1 AND stream_id = $2",
            )
            .bind(destination)
            .bind(pos)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await
    }

    /// The destinations with to-device EDUs waiting, sorted.
    pub async fn select_federation_outbox_destinations(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT destination FROM device_federation_outbox ORDER BY destination",
        )
        .fetch_all(self.reader())
        .await?;
        Ok(rows.into_iter().map(|(d,)| d).collect())
    }
}
