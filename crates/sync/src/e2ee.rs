//! The end-to-end encryption sections of `/sync` (spec: Client-Server API, "End-to-End
//! Encryption", "Extensions to /sync"): send-to-device messages, device-list changes,
//! one-time key counts and unused fallback key types; and `/keys/changes`, which asks the
//! same device-list question between two tokens.

use std::collections::BTreeSet;

use ganglion_core::{Result, StreamKind, SyncToken};
use ganglion_rooms::storage_error;
use ganglion_storage::Store;
use serde_json::{Map, Value, json};

/// Send-to-device messages one `/sync` delivers at most; the rest come with the next.
pub(crate) const TO_DEVICE_LIMIT: i64 = 100;

/// The end-to-end encryption sections of one response.
pub(crate) struct E2eeSections {
    /// `to_device.events`.
    pub to_device: Vec<Value>,
    /// The to-device position delivered up to (below `now` when the limit was reached).
    pub to_device_upto: i64,
    /// `device_lists`: `changed` and `left`.
    pub changed: BTreeSet<String>,
    /// Users who no longer share a room.
    pub left: BTreeSet<String>,
}

impl E2eeSections {
    /// Whether a long-poll has something to return.
    pub(crate) fn is_empty(&self) -> bool {
        self.to_device.is_empty() && self.changed.is_empty() && self.left.is_empty()
    }

    /// Writes the sections into a response body, with the key counts of the device.
    pub(crate) fn write_into(
        self,
        body: &mut Map<String, Value>,
        one_time_key_counts: Map<String, Value>,
        unused_fallback_types: Vec<String>,
    ) {
        body.insert("to_device".into(), json!({ "events": self.to_device }));
        body.insert(
            "device_lists".into(),
            json!({ "changed": self.changed, "left": self.left }),
        );
        body.insert(
            "device_one_time_keys_count".into(),
            Value::Object(one_time_key_counts),
        );
        body.insert(
            "device_unused_fallback_key_types".into(),
            json!(unused_fallback_types),
        );
    }
}

/// The to-device messages and device-list changes for (`user_id`, `device_id`) between
/// `since` and `now`. Messages at or below the client's token were deleted when it
/// acknowledged them, so everything still queued up to `now` is new.
pub(crate) async fn e2ee_sections(
    store: &Store,
    user_id: &str,
    device_id: &str,
    since: Option<&SyncToken>,
    now: &SyncToken,
) -> Result<E2eeSections> {
    let now_td = now.get(StreamKind::ToDevice).0;
    let moved = since.is_none_or(|s| s.get(StreamKind::ToDevice).0 < now_td);
    let queued = if moved {
        store
            .select_to_device(user_id, device_id, now_td, TO_DEVICE_LIMIT)
            .await
            .map_err(storage_error)?
    } else {
        Vec::new()
    };
    // A full page: deliver up to its last position only (a device has one message per
    // position), so the next sync continues from there.
    let to_device_upto = if i64::try_from(queued.len()).unwrap_or(i64::MAX) >= TO_DEVICE_LIMIT {
        queued.last().map_or(now_td, |t| t.0)
    } else {
        now_td
    };
    let to_device = queued
        .into_iter()
        .filter_map(|(_, sender, kind, content)| {
            // Stored content was checked JSON when it was queued; a row that does not parse
            // is skipped rather than delivered as something else.
            let content: Value = serde_json::from_str(&content).ok()?;
            Some(json!({ "sender": sender, "type": kind, "content": content }))
        })
        .collect();
    let (changed, left) = match since {
        Some(s) => device_list_delta(store, user_id, s, now).await?,
        None => Default::default(),
    };
    Ok(E2eeSections {
        to_device,
        to_device_upto,
        changed,
        left,
    })
}

/// `device_one_time_keys_count` and `device_unused_fallback_key_types` for a device.
pub(crate) async fn key_counts(
    store: &Store,
    user_id: &str,
    device_id: &str,
) -> Result<(Map<String, Value>, Vec<String>)> {
    let (counts, fallback) = tokio::try_join!(
        store.count_one_time_keys(user_id, device_id),
        store.select_unused_fallback_algorithms(user_id, device_id),
    )
    .map_err(storage_error)?;
    let counts = counts.into_iter().map(|(alg, n)| (alg, json!(n))).collect();
    Ok((counts, fallback))
}

/// The device-list section between two tokens for `user_id`: (changed, left).
///
/// Changed: users sharing a room with `user_id` whose devices changed in the range,
/// users who joined a room of theirs, and every member of a room they joined. Left:
/// users who left a room of theirs (or whose room they left) and share no room with them
/// any more. `/sync` and `/keys/changes` both use it.
pub(crate) async fn device_list_delta(
    store: &Store,
    user_id: &str,
    from: &SyncToken,
    to: &SyncToken,
) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let mut changed = BTreeSet::new();
    let mut left = BTreeSet::new();
    let (dl_from, dl_to) = (
        from.get(StreamKind::DeviceLists).0,
        to.get(StreamKind::DeviceLists).0,
    );
    // A user's own device changes are reported too (their other devices care).
    let mut own_changed = false;
    if dl_from < dl_to {
        let users = store
            .select_device_list_changes_for(user_id, dl_from, dl_to)
            .await
            .map_err(storage_error)?;
        own_changed = users.iter().any(|u| u == user_id);
        changed.extend(users);
    }
    let (ev_from, ev_to) = (from.get(StreamKind::Events).0, to.get(StreamKind::Events).0);
    if ev_from < ev_to {
        let moves = store
            .select_membership_changes_around(user_id, ev_from, ev_to)
            .await
            .map_err(storage_error)?;
        let mut maybe_left = BTreeSet::new();
        for (room_id, member, membership) in &moves {
            match (member == user_id, membership.as_str()) {
                (true, "join") => {
                    let members = store
                        .select_room_members(room_id, &["join"])
                        .await
                        .map_err(storage_error)?;
                    changed.extend(members.into_iter().map(|(u, ..)| u));
                }
                (true, "leave" | "ban") => {
                    let members = store
                        .select_room_members(room_id, &["join"])
                        .await
                        .map_err(storage_error)?;
                    maybe_left.extend(members.into_iter().map(|(u, ..)| u));
                }
                (false, "join") => {
                    changed.insert(member.clone());
                }
                (false, "leave" | "ban") => {
                    maybe_left.insert(member.clone());
                }
                _ => {}
            }
        }
        if !maybe_left.is_empty() {
            let sharing: BTreeSet<String> = store
                .select_users_sharing_rooms(user_id)
                .await
                .map_err(storage_error)?
                .into_iter()
                .collect();
            for u in maybe_left {
                if u != user_id && !sharing.contains(&u) {
                    changed.remove(&u);
                    left.insert(u);
                }
            }
        }
    }
    if !own_changed {
        changed.remove(user_id);
    }
    Ok((changed, left))
}
