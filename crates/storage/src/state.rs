//! Room state: current state, state groups (snapshots plus cumulative deltas), members.

use std::collections::BTreeMap;

use sqlx::AssertSqlSafe;

use crate::{Error, Result, Store, parse_json, placeholders};

/// A state map: (event type, state key) → event id.
pub type StateEntries = BTreeMap<(String, String), String>;

/// Encodes state entries as the stored JSON list `[[type, state_key, event_id], …]`.
pub(crate) fn encode_entries(entries: &StateEntries) -> String {
    let list: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|((t, k), e)| (t.as_str(), k.as_str(), e.as_str()))
        .collect();
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".to_owned())
}

/// Decodes the stored JSON list.
pub(crate) fn decode_entries(json: &str) -> Result<StateEntries> {
    let list: Vec<(String, String, String)> = parse_json("state_groups.entries", json)?;
    Ok(list.into_iter().map(|(t, k, e)| ((t, k), e)).collect())
}

/// A row of current room state.
#[derive(Debug, Clone)]
pub struct CurrentStateRow {
    /// Event type.
    pub kind: String,
    /// State key.
    pub state_key: String,
    /// Event id.
    pub event_id: String,
    /// Membership, for member events.
    pub membership: Option<String>,
}

impl Store {
    /// The full state of a state group.
    pub async fn select_state_group(&self, id: i64) -> Result<StateEntries> {
        let row: Option<(Option<i64>, String)> =
            sqlx::query_as("SELECT base_id, entries FROM state_groups WHERE id = $1")
                .bind(id)
                .fetch_optional(self.reader())
                .await?;
        let Some((base, entries)) = row else {
            return Err(Error::Corrupt {
                what: "state_groups",
                detail: format!("missing group {id}"),
            });
        };
        let delta = decode_entries(&entries)?;
        match base {
            None => Ok(delta),
            Some(base) => {
                let (_, snap): (Option<i64>, String) =
                    sqlx::query_as("SELECT base_id, entries FROM state_groups WHERE id = $1")
                        .bind(base)
                        .fetch_one(self.reader())
                        .await?;
                let mut full = decode_entries(&snap)?;
                full.extend(delta);
                Ok(full)
            }
        }
    }

    /// The room's current state.
    pub async fn select_current_state(&self, room_id: &str) -> Result<Vec<CurrentStateRow>> {
        let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT type, state_key, event_id, membership FROM current_state WHERE room_id = $1",
        )
        .bind(room_id)
        .fetch_all(self.reader())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| CurrentStateRow {
                kind: r.0,
                state_key: r.1,
                event_id: r.2,
                membership: r.3,
            })
            .collect())
    }

    /// The room's current state events of one type: (state key, event id).
    pub async fn select_current_state_of_type(
        &self,
        room_id: &str,
        kind: &str,
    ) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT state_key, event_id FROM current_state WHERE room_id = $1 AND type = $2",
        )
        .bind(room_id)
        .bind(kind)
        .fetch_all(self.reader())
        .await?)
    }

    /// Some keys of the room's current state: (type, state_key) → event id.
    pub async fn select_current_state_keys(
        &self,
        room_id: &str,
        keys: &[(String, String)],
    ) -> Result<StateEntries> {
        let mut out = StateEntries::new();
        if keys.is_empty() {
            return Ok(out);
        }
        // (type, state_key) pairs as OR-ed conditions: portable and index-friendly.
        let mut sql = String::from(
            "SELECT type, state_key, event_id FROM current_state WHERE room_id = $1 AND (",
        );
        for i in 0..keys.len() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            sql.push_str(&format!(
                "(type = ${} AND state_key = ${})",
                2 + 2 * i,
                3 + 2 * i
            ));
        }
        sql.push(')');
        let mut q = sqlx::query_as::<_, (String, String, String)>(AssertSqlSafe(sql)).bind(room_id);
        for (t, k) in keys {
            q = q.bind(t).bind(k);
        }
        for (t, k, e) in q.fetch_all(self.reader()).await? {
            out.insert((t, k), e);
        }
        Ok(out)
    }

    /// One current state event id.
    pub async fn select_current_state_event(
        &self,
        room_id: &str,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT event_id FROM current_state WHERE room_id = $1 AND type = $2 AND state_key = $3",
        )
        .bind(room_id)
        .bind(kind)
        .bind(state_key)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(|(e,)| e))
    }

    /// A user's current membership in a room, if any.
    pub async fn select_membership(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<(String, String)>> {
        let row: Option<(Option<String>, String)> = sqlx::query_as(
            "SELECT membership, event_id FROM current_state WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.and_then(|(m, e)| m.map(|m| (m, e))))
    }

    /// The rooms where a user's current membership is one of `memberships`:
    /// (room id, membership, membership event id, its stream position).
    pub async fn select_user_rooms(
        &self,
        user_id: &str,
        memberships: &[&str],
    ) -> Result<Vec<(String, String, String, i64)>> {
        let sql = format!(
            "SELECT room_id, membership, event_id, stream_ordering FROM current_state
             WHERE type = 'm.room.member' AND state_key = $1 AND membership IN {}",
            placeholders(2, memberships.len())
        );
        let mut q = sqlx::query_as::<_, (String, Option<String>, String, i64)>(AssertSqlSafe(sql))
            .bind(user_id);
        for m in memberships {
            q = q.bind(*m);
        }
        Ok(q.fetch_all(self.reader())
            .await?
            .into_iter()
            .map(|(r, m, e, s)| (r, m.unwrap_or_default(), e, s))
            .collect())
    }

    /// The servers with joined members in a room, sorted, each once (a user id's server
    /// is everything after its first `:`).
    pub async fn select_joined_servers(&self, room_id: &str) -> Result<Vec<String>> {
        let mut out: Vec<String> = self
            .select_room_members(room_id, &["join"])
            .await?
            .into_iter()
            .filter_map(|(user, _, _)| user.split_once(':').map(|(_, s)| s.to_owned()))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The members of a room with the given memberships: (user id, membership, event id).
    pub async fn select_room_members(
        &self,
        room_id: &str,
        memberships: &[&str],
    ) -> Result<Vec<(String, String, String)>> {
        let sql = format!(
            "SELECT state_key, membership, event_id FROM current_state
             WHERE room_id = $1 AND type = 'm.room.member' AND membership IN {} ORDER BY state_key",
            placeholders(2, memberships.len())
        );
        let mut q =
            sqlx::query_as::<_, (String, Option<String>, String)>(AssertSqlSafe(sql)).bind(room_id);
        for m in memberships {
            q = q.bind(*m);
        }
        Ok(q.fetch_all(self.reader())
            .await?
            .into_iter()
            .map(|(u, m, e)| (u, m.unwrap_or_default(), e))
            .collect())
    }

    /// Counts a room's members by membership: (joined, invited).
    pub async fn count_room_members(&self, room_id: &str) -> Result<(i64, i64)> {
        let rows: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT membership, COUNT(*) FROM current_state WHERE room_id = $1 AND type = 'm.room.member'
             GROUP BY membership",
        )
        .bind(room_id)
        .fetch_all(self.reader())
        .await?;
        let get = |m: &str| {
            rows.iter()
                .find(|(x, _)| x.as_deref() == Some(m))
                .map_or(0, |(_, n)| *n)
        };
        Ok((get("join"), get("invite")))
    }

    /// Whether two users share a joined room (profile visibility, typing).
    pub async fn users_share_room(&self, a: &str, b: &str) -> Result<bool> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT x.room_id FROM current_state x JOIN current_state y ON x.room_id = y.room_id
             WHERE x.type = 'm.room.member' AND x.state_key = $1 AND x.membership = 'join'
               AND y.type = 'm.room.member' AND y.state_key = $2 AND y.membership IN ('join', 'invite')
             LIMIT 1",
        )
        .bind(a)
        .bind(b)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.is_some())
    }
}
