//! The events stream: persisting batches of events (main's persister is the only
//! caller) and reading them back by id, by room range and by stream range.

use std::collections::BTreeMap;

use sqlx::AssertSqlSafe;

use crate::{Error, Result, Store, Txn, placeholders, state::StateEntries};

/// A stored event as readers need it.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// Position in the events stream.
    pub stream_ordering: i64,
    /// Event id.
    pub event_id: String,
    /// Room id.
    pub room_id: String,
    /// Sender.
    pub sender: String,
    /// Event type.
    pub kind: String,
    /// State key, for state events.
    pub state_key: Option<String>,
    /// The PDU's canonical JSON.
    pub json: String,
    /// Server-computed unsigned data (JSON object: `prev_content`, `replaces_state`…).
    pub unsigned: Option<String>,
    /// The redaction that redacted this event, if any.
    pub redacted_by: Option<String>,
    /// The sender's transaction id and device, for `unsigned.transaction_id`.
    pub txn: Option<(String, String)>,
    /// State group after this event.
    pub state_group: Option<i64>,
}

type EventTuple = (
    i64,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

const EVENT_COLUMNS: &str = "stream_ordering, event_id, room_id, sender, type, state_key, json, unsigned, redacted_by, txn_id, txn_device, state_group";

fn event_row(t: EventTuple) -> EventRow {
    EventRow {
        stream_ordering: t.0,
        event_id: t.1,
        room_id: t.2,
        sender: t.3,
        kind: t.4,
        state_key: t.5,
        json: t.6,
        unsigned: t.7,
        redacted_by: t.8,
        txn: t.9.zip(t.10),
        state_group: t.11,
    }
}

/// A room to create along with its `m.room.create` event.
#[derive(Debug, Clone)]
pub struct NewRoom {
    /// Room version id.
    pub version: String,
    /// Creator.
    pub creator: String,
}

/// One event for [`Store::persist_events`].
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Event id.
    pub event_id: String,
    /// Room id.
    pub room_id: String,
    /// Sender.
    pub sender: String,
    /// Type.
    pub kind: String,
    /// State key.
    pub state_key: Option<String>,
    /// Depth.
    pub depth: i64,
    /// `origin_server_ts`.
    pub origin_server_ts: i64,
    /// Canonical JSON.
    pub json: String,
    /// Unsigned data computed at persist time (JSON object), if any.
    pub unsigned: Option<String>,
    /// (user, device, txn id) for idempotent sends.
    pub txn: Option<(String, String, String)>,
    /// The events this one references (leave the forward extremities).
    pub prev_events: Vec<String>,
    /// The room's state group before this event.
    pub prev_state_group: Option<i64>,
    /// `membership` of an `m.room.member` event.
    pub membership: Option<String>,
    /// What a redaction redacts.
    pub redacts: Option<String>,
    /// Set on an `m.room.create`: the room row to insert.
    pub new_room: Option<NewRoom>,
    /// Held for state and auth only, out of the timeline (see `backfill`).
    pub outlier: bool,
    /// A fork: the state before this event (resolved from its `prev_events`), written
    /// as a snapshot group this event builds on instead of `prev_state_group`.
    pub state_before: Option<StateEntries>,
    /// The room's current state after this event when other forks remain (state
    /// resolution): replaces the room's current state rows and group.
    pub resolved_current: Option<Vec<CurrentEntry>>,
    /// Passed the auth rules against the state before it but not against current
    /// state: kept out of the timeline, the extremities and current state.
    pub soft_failed: bool,
    /// The local users this event notifies, as their push rules decided (written with
    /// the event, at its position).
    pub push_actions: Vec<crate::push_actions::NewPushAction>,
}

/// One entry of a resolved current state.
#[derive(Debug, Clone)]
pub struct CurrentEntry {
    /// Event type.
    pub kind: String,
    /// State key.
    pub state_key: String,
    /// Event id.
    pub event_id: String,
    /// `membership` of a member event.
    pub membership: Option<String>,
}

/// Where each persisted event landed.
#[derive(Debug, Clone, Copy)]
pub struct Persisted {
    /// Position in the events stream.
    pub stream_ordering: i64,
    /// State group after the event.
    pub state_group: Option<i64>,
    /// The highest state group id written for it (a fork writes more than one), so the
    /// writer knows where the next id starts.
    pub last_group: Option<i64>,
}

/// How many changes a delta group may carry before the next group is a full snapshot.
const MAX_DELTA_ENTRIES: usize = 32;

impl Store {
    /// The highest event position written so far (0 if none).
    pub async fn select_max_stream_ordering(&self) -> Result<i64> {
        let (n,): (Option<i64>,) = sqlx::query_as("SELECT MAX(stream_ordering) FROM events")
            .fetch_one(self.reader())
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// The highest state group id (0 if none).
    pub async fn select_max_state_group(&self) -> Result<i64> {
        let (n,): (Option<i64>,) = sqlx::query_as("SELECT MAX(id) FROM state_groups")
            .fetch_one(self.reader())
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// Persists a batch of events in one transaction (group commit). `next_ordering` and
    /// `next_state_group` are the first ids to use; both are allocated by the caller, the
    /// single writer of the events stream. Events of one room must be in causal order.
    pub async fn persist_events(
        &self,
        batch: &[NewEvent],
        mut next_ordering: i64,
        mut next_state_group: i64,
    ) -> Result<Vec<Persisted>> {
        let mut tx = self.begin("persist_events").await?;
        let mut out = Vec::with_capacity(batch.len());
        // State groups created earlier in this batch, so a later event of the same room
        // builds on them without reading back uncommitted rows through another path.
        let mut room_groups: BTreeMap<&str, Option<i64>> = BTreeMap::new();
        for ev in batch {
            let ordering = next_ordering;
            next_ordering += 1;
            if let Some(room) = &ev.new_room {
                sqlx::query("INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES ($1, $2, $3, $4)")
                    .bind(&ev.room_id)
                    .bind(&room.version)
                    .bind(&room.creator)
                    .bind(ev.origin_server_ts)
                    .execute(tx.conn())
                    .await?;
            }
            let mut prev_group = room_groups
                .get(ev.room_id.as_str())
                .copied()
                .unwrap_or(ev.prev_state_group);
            if let Some(before) = &ev.state_before {
                let id = next_state_group;
                next_state_group += 1;
                write_snapshot_group(&mut tx, id, &ev.room_id, before).await?;
                prev_group = Some(id);
            }
            let state_group = match &ev.state_key {
                Some(sk) => {
                    let id = next_state_group;
                    next_state_group += 1;
                    write_state_group(
                        &mut tx,
                        id,
                        &ev.room_id,
                        prev_group,
                        (&ev.kind, sk, &ev.event_id),
                    )
                    .await?;
                    Some(id)
                }
                None => prev_group,
            };
            if !ev.soft_failed {
                room_groups.insert(&ev.room_id, state_group);
            }
            let (txn_id, txn_device) = match &ev.txn {
                Some((_, device, txn)) => (Some(txn.as_str()), Some(device.as_str())),
                None => (None, None),
            };
            sqlx::query(
                "INSERT INTO events (stream_ordering, event_id, room_id, sender, type, state_key, depth,
                    origin_server_ts, json, state_group, unsigned, txn_id, txn_device, outlier)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(ordering)
            .bind(&ev.event_id)
            .bind(&ev.room_id)
            .bind(&ev.sender)
            .bind(&ev.kind)
            .bind(ev.state_key.as_deref())
            .bind(ev.depth)
            .bind(ev.origin_server_ts)
            .bind(&ev.json)
            .bind(state_group)
            .bind(ev.unsigned.as_deref())
            .bind(txn_id)
            .bind(txn_device)
            .bind(i32::from(ev.outlier || ev.soft_failed))
            .execute(tx.conn())
            .await?;
            if let Some((user, device, txn)) = &ev.txn {
                sqlx::query(
                    "INSERT INTO event_txns (user_id, device_id, txn_id, event_id, created_ts, room_id)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (user_id, device_id, room_id, txn_id) DO NOTHING",
                )
                .bind(user)
                .bind(device)
                .bind(txn)
                .bind(&ev.event_id)
                .bind(ev.origin_server_ts)
                .bind(&ev.room_id)
                .execute(tx.conn())
                .await?;
            }
            if !ev.push_actions.is_empty() && !ev.soft_failed && !ev.outlier {
                crate::push_actions::insert_push_actions(
                    &mut tx,
                    &ev.room_id,
                    &ev.event_id,
                    ordering,
                    ev.origin_server_ts,
                    &ev.push_actions,
                )
                .await?;
            }
            if ev.soft_failed {
                // Stored for the record (and as a prev_event others may cite), nothing more.
                out.push(Persisted {
                    stream_ordering: ordering,
                    state_group,
                    last_group: next_state_group.checked_sub(1),
                });
                continue;
            }
            for prev in &ev.prev_events {
                sqlx::query("DELETE FROM room_extremities WHERE room_id = $1 AND event_id = $2")
                    .bind(&ev.room_id)
                    .bind(prev)
                    .execute(tx.conn())
                    .await?;
            }
            sqlx::query("INSERT INTO room_extremities (room_id, event_id) VALUES ($1, $2)")
                .bind(&ev.room_id)
                .bind(&ev.event_id)
                .execute(tx.conn())
                .await?;
            let mut room_group = state_group;
            if let Some(resolved) = &ev.resolved_current {
                let id = next_state_group;
                next_state_group += 1;
                let entries: StateEntries = resolved
                    .iter()
                    .map(|e| ((e.kind.clone(), e.state_key.clone()), e.event_id.clone()))
                    .collect();
                write_snapshot_group(&mut tx, id, &ev.room_id, &entries).await?;
                replace_current_state(&mut tx, &ev.room_id, resolved, ordering).await?;
                sqlx::query("UPDATE events SET room_group = $2 WHERE stream_ordering = $1")
                    .bind(ordering)
                    .bind(id)
                    .execute(tx.conn())
                    .await?;
                room_groups.insert(&ev.room_id, Some(id));
                room_group = Some(id);
            } else if let Some(sk) = &ev.state_key {
                sqlx::query(
                    "INSERT INTO current_state (room_id, type, state_key, event_id, membership, stream_ordering)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (room_id, type, state_key)
                     DO UPDATE SET event_id = $4, membership = $5, stream_ordering = $6",
                )
                .bind(&ev.room_id)
                .bind(&ev.kind)
                .bind(sk)
                .bind(&ev.event_id)
                .bind(ev.membership.as_deref())
                .bind(ordering)
                .execute(tx.conn())
                .await?;
                if ev.membership.as_deref() == Some("join") {
                    sqlx::query("DELETE FROM forgotten_rooms WHERE user_id = $1 AND room_id = $2")
                        .bind(sk)
                        .bind(&ev.room_id)
                        .execute(tx.conn())
                        .await?;
                }
            }
            if let Some(redacts) = &ev.redacts {
                sqlx::query("UPDATE events SET redacted_by = $2 WHERE event_id = $1 AND room_id = $3 AND redacted_by IS NULL")
                    .bind(redacts)
                    .bind(&ev.event_id)
                    .bind(&ev.room_id)
                    .execute(tx.conn())
                    .await?;
            }
            sqlx::query("UPDATE rooms SET state_group = $2 WHERE room_id = $1")
                .bind(&ev.room_id)
                .bind(room_group)
                .execute(tx.conn())
                .await?;
            out.push(Persisted {
                stream_ordering: ordering,
                state_group,
                last_group: next_state_group.checked_sub(1),
            });
        }
        tx.commit().await?;
        metrics::histogram!("ganglion_persist_batch_events").record(batch.len() as f64);
        Ok(out)
    }

    /// Loads one event by id.
    pub async fn select_event(&self, event_id: &str) -> Result<Option<EventRow>> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = $1");
        let row: Option<EventTuple> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(event_id)
            .fetch_optional(self.reader())
            .await?;
        Ok(row.map(event_row))
    }

    /// Loads events by id, in stream order; unknown ids are skipped.
    pub async fn select_events(&self, event_ids: &[String]) -> Result<Vec<EventRow>> {
        let mut out = Vec::with_capacity(event_ids.len());
        for chunk in event_ids.chunks(500) {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE event_id IN {} ORDER BY stream_ordering",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query_as::<_, EventTuple>(AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id);
            }
            out.extend(q.fetch_all(self.reader()).await?.into_iter().map(event_row));
        }
        out.sort_by_key(|e| e.stream_ordering);
        Ok(out)
    }

    /// Events sent by users of `server_name` after `after` (every room), oldest first:
    /// what a federation sender catches up from.
    pub async fn select_events_by_server_since(
        &self,
        server_name: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_ordering > $1 AND sender LIKE $2
             ORDER BY stream_ordering ASC LIMIT $3"
        );
        // Server names have no LIKE wildcards ('%' and '_' are not in their grammar).
        let pattern = format!("%:{server_name}");
        let rows: Vec<EventTuple> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(after)
            .bind(pattern)
            .bind(limit)
            .fetch_all(self.reader())
            .await?;
        Ok(rows.into_iter().map(event_row).collect())
    }

    /// Events of a room with `from < ordering <= to`, newest first when `backwards`,
    /// at most `limit`.
    pub async fn select_room_events(
        &self,
        room_id: &str,
        after: i64,
        upto: i64,
        backwards: bool,
        limit: i64,
    ) -> Result<Vec<EventRow>> {
        let order = if backwards { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE room_id = $1 AND stream_ordering > $2 AND stream_ordering <= $3
               AND outlier = 0
             ORDER BY stream_ordering {order} LIMIT $4"
        );
        let rows: Vec<EventTuple> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(room_id)
            .bind(after)
            .bind(upto)
            .bind(limit)
            .fetch_all(self.reader())
            .await?;
        Ok(rows.into_iter().map(event_row).collect())
    }

    /// The rooms, among `room_ids`, with events in `(after, upto]`.
    pub async fn select_rooms_with_events(&self, after: i64, upto: i64) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT room_id FROM events WHERE stream_ordering > $1 AND stream_ordering <= $2",
        )
        .bind(after)
        .bind(upto)
        .fetch_all(self.reader())
        .await?;
        Ok(rows.into_iter().map(|(r,)| r).collect())
    }

    /// A user's membership events in `(after, upto]`, oldest first.
    pub async fn select_membership_changes(
        &self,
        user_id: &str,
        after: i64,
        upto: i64,
    ) -> Result<Vec<EventRow>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE state_key = $1 AND type = 'm.room.member'
             AND stream_ordering > $2 AND stream_ordering <= $3 ORDER BY stream_ordering"
        );
        let rows: Vec<EventTuple> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(user_id)
            .bind(after)
            .bind(upto)
            .fetch_all(self.reader())
            .await?;
        Ok(rows.into_iter().map(event_row).collect())
    }

    /// A user's latest membership event in a room at or before `at`:
    /// (membership, event id, position).
    pub async fn select_membership_at(
        &self,
        room_id: &str,
        user_id: &str,
        at: i64,
    ) -> Result<Option<EventRow>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE room_id = $1 AND state_key = $2 AND type = 'm.room.member'
             AND stream_ordering <= $3 ORDER BY stream_ordering DESC LIMIT 1"
        );
        let row: Option<EventTuple> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(room_id)
            .bind(user_id)
            .bind(at)
            .fetch_optional(self.reader())
            .await?;
        Ok(row.map(event_row))
    }

    /// The event id an earlier send with this transaction id produced in this room.
    pub async fn select_txn_event(
        &self,
        user_id: &str,
        device_id: &str,
        room_id: &str,
        txn_id: &str,
    ) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT event_id FROM event_txns
             WHERE user_id = $1 AND device_id = $2 AND room_id = $3 AND txn_id = $4",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(room_id)
        .bind(txn_id)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(|(e,)| e))
    }

    /// The forward extremities of a room with their depths.
    pub async fn select_extremities(&self, room_id: &str) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT x.event_id, e.depth FROM room_extremities x JOIN events e ON e.event_id = x.event_id
             WHERE x.room_id = $1 ORDER BY e.depth DESC LIMIT 20",
        )
        .bind(room_id)
        .fetch_all(self.reader())
        .await?)
    }

    /// The state group in force at a stream position in a room: the group after the last
    /// event at or before `at`.
    pub async fn select_state_group_at(&self, room_id: &str, at: i64) -> Result<Option<i64>> {
        let row: Option<(Option<i64>,)> = sqlx::query_as(
            "SELECT COALESCE(room_group, state_group) FROM events
             WHERE room_id = $1 AND stream_ordering <= $2 AND outlier = 0
             ORDER BY stream_ordering DESC LIMIT 1",
        )
        .bind(room_id)
        .bind(at)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.and_then(|(g,)| g))
    }

    /// The event closest to `ts` in a room, in the given direction: (event id, origin ts).
    pub async fn select_event_near_ts(
        &self,
        room_id: &str,
        ts: i64,
        forwards: bool,
    ) -> Result<Option<(String, i64)>> {
        let sql = if forwards {
            "SELECT event_id, origin_server_ts FROM events WHERE room_id = $1 AND origin_server_ts >= $2 AND outlier = 0
             ORDER BY origin_server_ts ASC, stream_ordering ASC LIMIT 1"
        } else {
            "SELECT event_id, origin_server_ts FROM events WHERE room_id = $1 AND origin_server_ts <= $2 AND outlier = 0
             ORDER BY origin_server_ts DESC, stream_ordering DESC LIMIT 1"
        };
        Ok(sqlx::query_as(sql)
            .bind(room_id)
            .bind(ts)
            .fetch_optional(self.reader())
            .await?)
    }
}

/// Writes a full snapshot state group.
async fn write_snapshot_group(
    tx: &mut Txn,
    id: i64,
    room_id: &str,
    entries: &StateEntries,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO state_groups (id, room_id, base_id, entries) VALUES ($1, $2, NULL, $3)",
    )
    .bind(id)
    .bind(room_id)
    .bind(crate::state::encode_entries(entries))
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Makes a room's current state rows the resolved state: changed entries are
/// rewritten (at position `ordering`), entries no longer in it removed.
async fn replace_current_state(
    tx: &mut Txn,
    room_id: &str,
    resolved: &[CurrentEntry],
    ordering: i64,
) -> Result<()> {
    let now: Vec<(String, String, String)> =
        sqlx::query_as("SELECT type, state_key, event_id FROM current_state WHERE room_id = $1")
            .bind(room_id)
            .fetch_all(tx.conn())
            .await?;
    let now: std::collections::HashMap<(String, String), String> =
        now.into_iter().map(|(t, k, e)| ((t, k), e)).collect();
    for e in resolved {
        if now.get(&(e.kind.clone(), e.state_key.clone())) == Some(&e.event_id) {
            continue;
        }
        sqlx::query(
            "INSERT INTO current_state (room_id, type, state_key, event_id, membership, stream_ordering)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (room_id, type, state_key)
             DO UPDATE SET event_id = $4, membership = $5, stream_ordering = $6",
        )
        .bind(room_id)
        .bind(&e.kind)
        .bind(&e.state_key)
        .bind(&e.event_id)
        .bind(e.membership.as_deref())
        .bind(ordering)
        .execute(tx.conn())
        .await?;
    }
    for (t, k) in now.keys() {
        if !resolved.iter().any(|e| &e.kind == t && &e.state_key == k) {
            sqlx::query(
                "DELETE FROM current_state WHERE room_id = $1 AND type = $2 AND state_key = $3",
            )
            .bind(room_id)
            .bind(t)
            .bind(k)
            .execute(tx.conn())
            .await?;
        }
    }
    Ok(())
}

async fn write_state_group(
    tx: &mut Txn,
    id: i64,
    room_id: &str,
    prev: Option<i64>,
    change: (&str, &str, &str),
) -> Result<()> {
    let (kind, sk, event_id) = change;
    let prev_row: Option<(Option<i64>, String)> = match prev {
        Some(p) => {
            sqlx::query_as("SELECT base_id, entries FROM state_groups WHERE id = $1")
                .bind(p)
                .fetch_optional(tx.conn())
                .await?
        }
        None => None,
    };
    let (base_id, entries) = match (prev, prev_row) {
        (None, _) => (
            None,
            StateEntries::from([((kind.to_owned(), sk.to_owned()), event_id.to_owned())]),
        ),
        (Some(p), None) => {
            return Err(Error::Corrupt {
                what: "state_groups",
                detail: format!("missing group {p}"),
            });
        }
        // The previous group is a snapshot: start a delta on it.
        (Some(p), Some((None, _))) => (
            Some(p),
            StateEntries::from([((kind.to_owned(), sk.to_owned()), event_id.to_owned())]),
        ),
        (Some(_), Some((Some(base), delta_json))) => {
            let mut delta: StateEntries = crate::state::decode_entries(&delta_json)?;
            delta.insert((kind.to_owned(), sk.to_owned()), event_id.to_owned());
            if delta.len() <= MAX_DELTA_ENTRIES {
                (Some(base), delta)
            } else {
                // Too many changes since the snapshot: write a new full snapshot.
                let (_, snap): (Option<i64>, String) =
                    sqlx::query_as("SELECT base_id, entries FROM state_groups WHERE id = $1")
                        .bind(base)
                        .fetch_one(tx.conn())
                        .await?;
                let mut full: StateEntries = crate::state::decode_entries(&snap)?;
                full.extend(delta);
                (None, full)
            }
        }
    };
    sqlx::query("INSERT INTO state_groups (id, room_id, base_id, entries) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(room_id)
        .bind(base_id)
        .bind(crate::state::encode_entries(&entries))
        .execute(tx.conn())
        .await?;
    Ok(())
}
