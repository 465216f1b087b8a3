//! Push actions: the local users each event notifies (docs/push.md). Written with the
//! event by `persist_events`; read for `/sync`'s unread counts and `/notifications`.
//!
//! A user's read position in a room's thread is their latest `m.read` or
//! `m.read.private` receipt there: an unthreaded one (thread id `""`) covers every
//! thread, one for `main` or a thread root covers that thread.

use sqlx::AssertSqlSafe;

use crate::{Result, Store, Txn, flag, placeholders};

/// A notification to store with its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPushAction {
    /// The local user notified.
    pub user_id: String,
    /// `main`, or the thread root's event id.
    pub thread_id: String,
    /// Whether the actions highlight.
    pub highlight: bool,
    /// The actions, as JSON text.
    pub actions: String,
}

/// Unread notifications of a user in one room's thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadCounts {
    /// The room.
    pub room_id: String,
    /// `main` or a thread root.
    pub thread_id: String,
    /// Notifying events after the read position.
    pub notifications: i64,
    /// Of those, the highlighting ones.
    pub highlights: i64,
}

/// One entry of `/notifications`.
#[derive(Debug, Clone)]
pub struct NotificationRow {
    /// The room.
    pub room_id: String,
    /// The event.
    pub event_id: String,
    /// Its position (the pagination token).
    pub stream_ordering: i64,
    /// The actions, as JSON text.
    pub actions: String,
    /// When it was notified (the event's `origin_server_ts`).
    pub ts: i64,
    /// Whether the user's read receipt is at or after it.
    pub read: bool,
}

/// The read position of `a`'s user in `a`'s room and thread (0 without a receipt).
const READ_UPTO: &str = "COALESCE((SELECT MAX(e.stream_ordering) FROM receipts r
        JOIN events e ON e.event_id = r.event_id
        WHERE r.room_id = a.room_id AND r.user_id = a.user_id
          AND r.receipt_type IN ('m.read', 'm.read.private')
          AND (r.thread_id = '' OR r.thread_id = a.thread_id)), 0)";

/// The user's current membership event in `a`'s room: counting starts after it, so an
/// invite (and anything before a join) is not unread in the room joined (as Synapse).
const MEMBER_AT: &str = "COALESCE((SELECT c.stream_ordering FROM current_state c
        WHERE c.room_id = a.room_id AND c.type = 'm.room.member' AND c.state_key = a.user_id), 0)";

/// Rows per INSERT statement (8 parameters each).
const INSERT_CHUNK: usize = 100;

/// Writes an event's notifications, in the event's transaction.
pub(crate) async fn insert_push_actions(
    tx: &mut Txn,
    room_id: &str,
    event_id: &str,
    stream_ordering: i64,
    ts: i64,
    actions: &[NewPushAction],
) -> Result<()> {
    for chunk in actions.chunks(INSERT_CHUNK) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| placeholders(1 + i * 8, 8))
            .collect();
        let sql = format!(
            "INSERT INTO event_push_actions
                 (user_id, room_id, stream_ordering, event_id, thread_id, highlight, actions, ts)
             VALUES {} ON CONFLICT DO NOTHING",
            values.join(", ")
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for a in chunk {
            q = q
                .bind(&a.user_id)
                .bind(room_id)
                .bind(stream_ordering)
                .bind(event_id)
                .bind(&a.thread_id)
                .bind(flag(a.highlight))
                .bind(&a.actions)
                .bind(ts);
        }
        q.execute(tx.conn()).await?;
    }
    Ok(())
}

impl Store {
    /// The user's unread notifications in `rooms`, per room and thread (threads with
    /// none are left out).
    pub async fn select_unread_counts(
        &self,
        user_id: &str,
        rooms: &[String],
    ) -> Result<Vec<UnreadCounts>> {
        let mut out = Vec::new();
        for chunk in rooms.chunks(500) {
            let sql = format!(
                "SELECT a.room_id, a.thread_id, COUNT(*), CAST(COALESCE(SUM(a.highlight), 0) AS BIGINT)
                 FROM event_push_actions a
                 WHERE a.user_id = $1 AND a.room_id IN {}
                   AND a.stream_ordering > {READ_UPTO} AND a.stream_ordering > {MEMBER_AT}
                 GROUP BY a.room_id, a.thread_id",
                placeholders(2, chunk.len())
            );
            let mut q =
                sqlx::query_as::<_, (String, String, i64, i64)>(AssertSqlSafe(sql)).bind(user_id);
            for r in chunk {
                q = q.bind(r);
            }
            out.extend(q.fetch_all(self.reader()).await?.into_iter().map(
                |(room_id, thread_id, notifications, highlights)| UnreadCounts {
                    room_id,
                    thread_id,
                    notifications,
                    highlights,
                },
            ));
        }
        Ok(out)
    }

    /// `/notifications`: the user's notifications before position `before` (all when
    /// `None`), newest first, at most `limit`; only highlights when `only_highlight`.
    pub async fn select_notifications(
        &self,
        user_id: &str,
        before: Option<i64>,
        limit: i64,
        only_highlight: bool,
    ) -> Result<Vec<NotificationRow>> {
        let sql = format!(
            "SELECT a.room_id, a.event_id, a.stream_ordering, a.actions, a.ts,
                    CAST(CASE WHEN a.stream_ordering <= {READ_UPTO} THEN 1 ELSE 0 END AS BIGINT)
             FROM event_push_actions a
             WHERE a.user_id = $1 AND a.stream_ordering < $2 AND ($3 = 0 OR a.highlight = 1)
             ORDER BY a.stream_ordering DESC LIMIT $4"
        );
        let rows: Vec<(String, String, i64, String, i64, i64)> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(user_id)
            .bind(before.unwrap_or(i64::MAX))
            .bind(flag(only_highlight))
            .bind(limit)
            .fetch_all(self.reader())
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| NotificationRow {
                room_id: r.0,
                event_id: r.1,
                stream_ordering: r.2,
                actions: r.3,
                ts: r.4,
                read: r.5 != 0,
            })
            .collect())
    }
}
