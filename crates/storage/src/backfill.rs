//! Backfilled history: events older than anything we stored for a room, fetched from
//! another server in it. They take positions below every stored event (negative ones),
//! so back-pagination reads them after our earliest event and `/sync`, which only looks
//! forward from positive positions, never sees them as new. They change neither the
//! room's current state nor its forward extremities.

use crate::{Result, Store};

/// One historic event to store.
#[derive(Debug, Clone)]
pub struct HistoricEvent {
    /// Event id.
    pub event_id: String,
    /// Sender.
    pub sender: String,
    /// Type.
    pub kind: String,
    /// State key, for state events.
    pub state_key: Option<String>,
    /// Depth.
    pub depth: i64,
    /// `origin_server_ts`.
    pub origin_server_ts: i64,
    /// Canonical JSON.
    pub json: String,
    /// What a redaction redacts.
    pub redacts: Option<String>,
}

impl Store {
    /// The events a room's history continues from (referenced, not stored).
    pub async fn select_backfill_frontier(&self, room_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT event_id FROM backfill_frontier WHERE room_id = $1 ORDER BY event_id",
        )
        .bind(room_id)
        .fetch_all(self.reader())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Adds events a room's history continues from.
    pub async fn insert_backfill_frontier(
        &self,
        room_id: &str,
        event_ids: &[String],
    ) -> Result<()> {
        let mut tx = self.begin("insert_backfill_frontier").await?;
        for id in event_ids {
            sqlx::query(
                "INSERT INTO backfill_frontier (room_id, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(room_id)
            .bind(id)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores `events` (newest first) below every stored position, in one transaction,
    /// and moves the room's frontier: `reached` leave it, `missing` join it. Events
    /// already stored are skipped, but for outliers, which move to their place. Returns how many were stored. Callers run one
    /// backfill at a time (positions are taken from the current minimum).
    pub async fn insert_backfilled(
        &self,
        room_id: &str,
        events: &[HistoricEvent],
        reached: &[String],
        missing: &[String],
    ) -> Result<usize> {
        let mut tx = self.begin("insert_backfilled").await?;
        let (min,): (Option<i64>,) = sqlx::query_as("SELECT MIN(stream_ordering) FROM events")
            .fetch_one(tx.conn())
            .await?;
        let mut next = min.unwrap_or(0).min(0) - 1;
        let mut stored = 0;
        for ev in events {
            let done = sqlx::query(
                "INSERT INTO events (stream_ordering, event_id, room_id, sender, type, state_key, depth,
                    origin_server_ts, json)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT DO NOTHING",
            )
            .bind(next)
            .bind(&ev.event_id)
            .bind(room_id)
            .bind(&ev.sender)
            .bind(&ev.kind)
            .bind(ev.state_key.as_deref())
            .bind(ev.depth)
            .bind(ev.origin_server_ts)
            .bind(&ev.json)
            .execute(tx.conn())
            .await?;
            if done.rows_affected() == 0 {
                // Stored already: an outlier takes its place in the history now.
                let moved = sqlx::query(
                    "UPDATE events SET stream_ordering = $1, outlier = 0
                     WHERE event_id = $2 AND room_id = $3 AND outlier = 1",
                )
                .bind(next)
                .bind(&ev.event_id)
                .bind(room_id)
                .execute(tx.conn())
                .await?;
                if moved.rows_affected() > 0 {
                    next -= 1;
                    stored += 1;
                }
                continue;
            }
            next -= 1;
            stored += 1;
            if let Some(redacts) = &ev.redacts {
                sqlx::query("UPDATE events SET redacted_by = $2 WHERE event_id = $1 AND room_id = $3 AND redacted_by IS NULL")
                    .bind(redacts)
                    .bind(&ev.event_id)
                    .bind(room_id)
                    .execute(tx.conn())
                    .await?;
            }
        }
        for id in reached {
            sqlx::query("DELETE FROM backfill_frontier WHERE room_id = $1 AND event_id = $2")
                .bind(room_id)
                .bind(id)
                .execute(tx.conn())
                .await?;
        }
        for id in missing {
            sqlx::query(
                "INSERT INTO backfill_frontier (room_id, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(room_id)
            .bind(id)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await?;
        Ok(stored)
    }
}
