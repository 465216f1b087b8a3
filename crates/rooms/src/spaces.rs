//! Space hierarchies (Client-Server API, "Spaces"; Server-Server API, "Spaces"): a
//! space-room's `m.space.child` state events name its children.
//!
//! Only rooms this server is in (has a joined member in) are summarised; a child we are
//! not in is left out, since rooms are not yet fetched from other servers' `/hierarchy`.
//! Client pages are stateless: the `next_batch` token holds how many rooms of the walk
//! came before, with the `suggested_only` and `max_depth` it was made with, and the next
//! page walks the tree again (bounded by [`MAX_WALK`]).

use std::collections::HashSet;

use ganglion_core::{Error, Result};
use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use crate::{Rooms, directory::RoomSummary, storage_error};

/// Rooms in one client page, at most and by default (Synapse: `MAX_ROOMS`).
pub const MAX_HIERARCHY_PAGE: usize = 50;

/// Children of one space considered for another server (Synapse: `MAX_ROOMS_PER_SPACE`).
pub const MAX_CHILDREN_PER_SPACE: usize = 50;

/// Rooms one client request walks at most, skipped pages included: a bound on the work a
/// deep or wide (or looping) tree can cause.
pub const MAX_WALK: usize = 2_000;

/// A client's `/hierarchy` request.
#[derive(Debug, Clone, Default)]
pub struct HierarchyQuery {
    /// Only children marked `suggested`.
    pub suggested_only: bool,
    /// How deep to go (0: the root only).
    pub max_depth: Option<u64>,
    /// Rooms per page (1..=[`MAX_HIERARCHY_PAGE`]).
    pub limit: Option<u64>,
    /// A `next_batch` of an earlier page.
    pub from: Option<String>,
}

/// A page of a client's `/hierarchy`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HierarchyPage {
    /// Room summaries with their `children_state`, in walk order.
    pub rooms: Vec<Value>,
    /// The token of the next page, if rooms remain.
    pub next_batch: Option<String>,
}

/// Where a client page starts: the rooms before it, and the parameters that may not change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PageToken {
    skip: usize,
    suggested_only: bool,
    max_depth: Option<u64>,
}

impl PageToken {
    fn encode(&self) -> String {
        let depth = self
            .max_depth
            .map_or_else(|| "n".to_owned(), |d| d.to_string());
        format!("h{}_{}_{depth}", self.skip, u8::from(self.suggested_only))
    }

    fn decode(s: &str) -> Option<PageToken> {
        let mut parts = s.strip_prefix('h')?.split('_');
        let skip = parts.next()?.parse().ok()?;
        let suggested_only = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let max_depth = match parts.next()? {
            "n" => None,
            d => Some(d.parse().ok()?),
        };
        parts.next().is_none().then_some(PageToken {
            skip,
            suggested_only,
            max_depth,
        })
    }
}

/// Whether `order` is a valid `m.space.child` order: at most 50 characters in
/// `\x20`..=`\x7E`.
fn valid_order(order: &str) -> bool {
    order.len() <= 50 && order.bytes().all(|b| (0x20..=0x7E).contains(&b))
}

/// Orders stripped child events as the spec says ("Ordering of children within a
/// space"): valid `order` first, lexicographically; then by the event's
/// `origin_server_ts`; then by room id.
fn sort_children(children: &mut [Value]) {
    let key = |c: &Value| {
        let order = c["content"]
            .get("order")
            .and_then(Value::as_str)
            .filter(|o| valid_order(o))
            .map(str::to_owned);
        (
            order.is_none(),
            order,
            c["origin_server_ts"].as_i64().unwrap_or(0),
            c["state_key"].as_str().unwrap_or_default().to_owned(),
        )
    };
    children.sort_by_key(key);
}

/// Whether a child event still names a child: a non-empty `via` of strings (a removed
/// child has none).
fn has_valid_via(content: &Value) -> bool {
    content
        .get("via")
        .and_then(Value::as_array)
        .is_some_and(|v| !v.is_empty() && v.iter().all(Value::is_string))
}

impl Rooms {
    /// The room's `m.space.child` events as stripped state with `origin_server_ts`,
    /// ordered, without removed children (and only suggested ones if asked).
    pub async fn space_children(&self, room_id: &str, suggested_only: bool) -> Result<Vec<Value>> {
        let ids: Vec<String> = self
            .inner
            .store
            .select_current_state_of_type(room_id, "m.space.child")
            .await
            .map_err(storage_error)?
            .into_iter()
            .filter(|(state_key, _)| RoomId::parse(state_key).is_ok())
            .map(|(_, event_id)| event_id)
            .collect();
        let pdus = self.load_pdus(&ids).await?;
        let mut out: Vec<Value> = pdus
            .values()
            .filter_map(|p| {
                let content = p.content_as::<Value>()?;
                if !has_valid_via(&content) {
                    return None;
                }
                if suggested_only && content.get("suggested").and_then(Value::as_bool) != Some(true)
                {
                    return None;
                }
                Some(json!({
                    "type": "m.space.child",
                    "state_key": p.state_key.as_deref()?,
                    "sender": p.sender,
                    "content": content,
                    "origin_server_ts": p.origin_server_ts,
                }))
            })
            .collect();
        sort_children(&mut out);
        Ok(out)
    }

    /// The summary of a room we are in, or `None`.
    async fn summary_if_in(&self, room_id: &str) -> Result<Option<RoomSummary>> {
        let Ok(rid) = RoomId::parse(room_id) else {
            return Ok(None);
        };
        if !self.has_local_members(&rid).await? {
            return Ok(None);
        }
        self.room_summary(room_id).await
    }

    /// Whether `user` may see the summary: anyone may see an open room; otherwise the
    /// user must be joined or invited, or (restricted rooms) joined to an allowed room.
    pub async fn summary_visible_to_user(&self, s: &RoomSummary, user: &UserId) -> Result<bool> {
        if s.open_to_all() {
            return Ok(true);
        }
        let store = &self.inner.store;
        if matches!(
            store.select_membership(&s.room_id, user.as_str()).await.map_err(storage_error)?,
            Some((m, _)) if m == "join" || m == "invite"
        ) {
            return Ok(true);
        }
        for allowed in &s.allowed_room_ids {
            if self.is_joined(user.as_str(), allowed).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `origin` may see the summary: anyone may see an open room; otherwise one
    /// of its users must be joined or invited, or (restricted rooms) joined to an
    /// allowed room (Synapse `handlers/room_summary.py`, `_is_local_room_accessible`).
    pub async fn summary_visible_to_server(&self, s: &RoomSummary, origin: &str) -> Result<bool> {
        if s.open_to_all() {
            return Ok(true);
        }
        if self
            .server_has_member(&s.room_id, origin, &["join", "invite"])
            .await?
        {
            return Ok(true);
        }
        for allowed in &s.allowed_room_ids {
            if self.server_has_member(allowed, origin, &["join"]).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn server_has_member(
        &self,
        room_id: &str,
        server: &str,
        memberships: &[&str],
    ) -> Result<bool> {
        let members = self
            .inner
            .store
            .select_room_members(room_id, memberships)
            .await
            .map_err(storage_error)?;
        Ok(members
            .iter()
            .any(|(u, _, _)| UserId::parse(u).is_ok_and(|u| u.server_name().as_str() == server)))
    }

    /// A client's `/hierarchy` page: the rooms of the tree under `room_id` the user may
    /// see, depth first in child order. 403 `M_FORBIDDEN` when the user may not see the
    /// root (or we are not in it); 400 `M_INVALID_PARAM` for a bad `limit` or `from`.
    pub async fn space_hierarchy(
        &self,
        user: &UserId,
        room_id: &RoomId,
        q: &HierarchyQuery,
    ) -> Result<HierarchyPage> {
        let limit = match q.limit {
            None => MAX_HIERARCHY_PAGE,
            Some(0) => return Err(Error::invalid_param("limit must be greater than zero")),
            Some(l) => usize::try_from(l)
                .unwrap_or(MAX_HIERARCHY_PAGE)
                .min(MAX_HIERARCHY_PAGE),
        };
        let skip = match &q.from {
            None => 0,
            Some(from) => {
                let t = PageToken::decode(from)
                    .ok_or_else(|| Error::invalid_param("unknown pagination token"))?;
                if t.suggested_only != q.suggested_only || t.max_depth != q.max_depth {
                    return Err(Error::invalid_param(
                        "suggested_only and max_depth cannot change on paginated requests",
                    ));
                }
                t.skip
            }
        };
        let forbidden = || Error::forbidden("You are not allowed to view this room.");
        let root = self
            .summary_if_in(room_id.as_str())
            .await?
            .ok_or_else(forbidden)?;
        if !self.summary_visible_to_user(&root, user).await? {
            return Err(forbidden());
        }

        let mut stack: Vec<(String, u64)> = vec![(room_id.to_string(), 0)];
        let mut seen: HashSet<String> = HashSet::new();
        let mut before = 0usize;
        let mut rooms = Vec::new();
        let mut more = false;
        while let Some((id, depth)) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if seen.len() > MAX_WALK {
                tracing::info!(room = %room_id, "hierarchy walk stopped at its bound");
                break;
            }
            let summary = if id == room_id.as_str() {
                root.clone()
            } else {
                match self.summary_if_in(&id).await? {
                    Some(s) if self.summary_visible_to_user(&s, user).await? => s,
                    _ => continue,
                }
            };
            if rooms.len() == limit {
                more = true;
                break;
            }
            let children = if summary.is_space() {
                self.space_children(&id, q.suggested_only).await?
            } else {
                Vec::new()
            };
            if before < skip {
                before += 1;
            } else {
                let mut entry = summary.hierarchy_entry(false);
                entry["children_state"] = json!(children);
                rooms.push(entry);
            }
            if q.max_depth.is_none_or(|d| depth < d) {
                // Reversed, so the first child is walked next.
                stack.extend(
                    children
                        .iter()
                        .rev()
                        .filter_map(|c| c["state_key"].as_str())
                        .filter(|c| !seen.contains(*c))
                        .map(|c| (c.to_owned(), depth + 1)),
                );
            }
        }
        let next_batch = more.then(|| {
            PageToken {
                skip: skip + rooms.len(),
                suggested_only: q.suggested_only,
                max_depth: q.max_depth,
            }
            .encode()
        });
        Ok(HierarchyPage { rooms, next_batch })
    }

    /// Another server's `/hierarchy`: the room with its `children_state`, the summaries
    /// of the children we are in that the server may see (and `admit` lets through),
    /// and the ids of those it may not. Not recursive. 404 `M_NOT_FOUND` when we are
    /// not in the room or the server may not see it.
    pub async fn server_hierarchy(
        &self,
        origin: &str,
        room_id: &RoomId,
        suggested_only: bool,
        admit: impl Fn(&RoomSummary) -> bool,
    ) -> Result<Value> {
        let unknown = || Error::not_found("Unknown room");
        let root = self
            .summary_if_in(room_id.as_str())
            .await?
            .ok_or_else(unknown)?;
        if !admit(&root) || !self.summary_visible_to_server(&root, origin).await? {
            return Err(unknown());
        }
        let children_state = if root.is_space() {
            self.space_children(room_id.as_str(), suggested_only)
                .await?
        } else {
            Vec::new()
        };
        let mut children = Vec::new();
        let mut inaccessible = Vec::new();
        for child in children_state.iter().take(MAX_CHILDREN_PER_SPACE) {
            let Some(id) = child["state_key"].as_str() else {
                continue;
            };
            let Some(s) = self.summary_if_in(id).await? else {
                continue;
            };
            if admit(&s) && self.summary_visible_to_server(&s, origin).await? {
                children.push(s.hierarchy_entry(true));
            } else {
                inaccessible.push(id.to_owned());
            }
        }
        let mut room = root.hierarchy_entry(true);
        room["children_state"] = json!(children_state);
        Ok(json!({
            "room": room,
            "children": children,
            "inaccessible_children": inaccessible,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_garbage() {
        for t in [
            PageToken {
                skip: 0,
                suggested_only: false,
                max_depth: None,
            },
            PageToken {
                skip: 12,
                suggested_only: true,
                max_depth: Some(3),
            },
        ] {
            assert_eq!(PageToken::decode(&t.encode()), Some(t));
        }
        for bad in [
            "", "h", "h1_2_n", "x1_0_n", "h1_0_n_x", "h-1_0_n", "h1_0_-1",
        ] {
            assert_eq!(PageToken::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn children_are_ordered_as_the_spec_says() {
        // The spec's example: order " " < "aaaa" < "first", then by timestamp.
        let child = |id: &str, ts: i64, order: Option<&str>| {
            let mut content = json!({ "via": ["x"] });
            if let Some(o) = order {
                content["order"] = json!(o);
            }
            json!({ "state_key": id, "origin_server_ts": ts, "content": content })
        };
        let mut list = vec![
            child("!e:x", 1, None),
            child("!c:x", 1640841000000, Some("first")),
            child("!d:x", 1, Some("\u{1}bad")),
            child("!a:x", 1640141000000, Some("aaaa")),
            child("!b:x", 1640341000000, Some(" ")),
            child("!f:x", 0, None),
        ];
        sort_children(&mut list);
        let ids: Vec<&str> = list
            .iter()
            .filter_map(|c| c["state_key"].as_str())
            .collect();
        assert_eq!(ids, ["!b:x", "!a:x", "!c:x", "!f:x", "!d:x", "!e:x"]);
    }

    #[test]
    fn removed_children_have_no_via() {
        assert!(has_valid_via(&json!({ "via": ["a.example"] })));
        assert!(!has_valid_via(&json!({})));
        assert!(!has_valid_via(&json!({ "via": [] })));
        assert!(!has_valid_via(&json!({ "via": [1] })));
        assert!(!has_valid_via(&json!({ "via": "a" })));
    }
}
