//! Read receipts (a stream).

use crate::{Result, Store};

/// A receipt row.
#[derive(Debug, Clone)]
pub struct ReceiptRow {
    /// Room.
    pub room_id: String,
    /// Reader.
    pub user_id: String,
    /// `m.read` or `m.read.private`.
    pub receipt_type: String,
    /// Thread id, empty for unthreaded.
    pub thread_id: String,
    /// The event read up to.
    pub event_id: String,
    /// When (ms).
    pub ts: i64,
    /// Stream position.
    pub stream_id: i64,
}

impl Store {
    /// Upserts a receipt at stream position `stream_id` (allocated by the stream's writer).
    pub async fn upsert_receipt(&self, r: &ReceiptRow) -> Result<()> {
        let mut tx = self.begin("upsert_receipt").await?;
        sqlx::query(
            "INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, stream_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (room_id, user_id, receipt_type, thread_id)
             DO UPDATE SET event_id = $5, ts = $6, stream_id = $7",
        )
        .bind(&r.room_id)
        .bind(&r.user_id)
        .bind(&r.receipt_type)
        .bind(&r.thread_id)
        .bind(&r.event_id)
        .bind(r.ts)
        .bind(r.stream_id)
        .execute(tx.conn())
        .await?;
        tx.commit().await
    }

    /// Receipts of a room changed in `(after, upto]`; with `after = 0`, all of them.
    pub async fn select_room_receipts(
        &self,
        room_id: &str,
        after: i64,
        upto: i64,
    ) -> Result<Vec<ReceiptRow>> {
        let rows: Vec<(String, String, String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT room_id, user_id, receipt_type, thread_id, event_id, ts, stream_id FROM receipts
             WHERE room_id = $1 AND stream_id > $2 AND stream_id <= $3",
        )
        .bind(room_id)
        .bind(after)
        .bind(upto)
        .fetch_all(self.reader())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ReceiptRow {
                room_id: r.0,
                user_id: r.1,
                receipt_type: r.2,
                thread_id: r.3,
                event_id: r.4,
                ts: r.5,
                stream_id: r.6,
            })
            .collect())
    }

    /// The rooms with receipts changed in `(after, upto]`.
    pub async fn select_rooms_with_receipts(&self, after: i64, upto: i64) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT room_id FROM receipts WHERE stream_id > $1 AND stream_id <= $2",
        )
        .bind(after)
        .bind(upto)
        .fetch_all(self.reader())
        .await?;
        Ok(rows.into_iter().map(|(r,)| r).collect())
    }
}
