//! Room summaries and the published room directory (Client-Server API, "Published room
//! directory"; Server-Server API, "Public Room Directory"). One summary serves the
//! directory, `/hierarchy` for clients and `/hierarchy` for other servers.

use std::collections::HashMap;

use ganglion_core::{Error, Result};
use serde_json::{Value, json};

use crate::{Rooms, storage_error};

/// What a room's current state says about it, for directories and space hierarchies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoomSummary {
    /// The room.
    pub room_id: String,
    /// `m.room.name`.
    pub name: Option<String>,
    /// `m.room.topic` (its plain-text `topic`).
    pub topic: Option<String>,
    /// `m.room.canonical_alias`.
    pub canonical_alias: Option<String>,
    /// `m.room.avatar`.
    pub avatar_url: Option<String>,
    /// `m.room.join_rules` (`None` when unset).
    pub join_rule: Option<String>,
    /// For `restricted` and `knock_restricted` rooms: the rooms whose members may join.
    pub allowed_room_ids: Vec<String>,
    /// Whether `m.room.history_visibility` is `world_readable`.
    pub world_readable: bool,
    /// Whether `m.room.guest_access` is `can_join`.
    pub guest_can_join: bool,
    /// The `type` of `m.room.create` (`m.space` for spaces).
    pub room_type: Option<String>,
    /// The room version.
    pub room_version: String,
    /// The `m.room.encryption` algorithm.
    pub encryption: Option<String>,
    /// Joined members now.
    pub num_joined_members: i64,
    /// `m.federate` of `m.room.create` (true unless set false).
    pub federate: bool,
    /// The content of `m.room.server_acl`, if set.
    pub server_acl: Option<Value>,
}

/// The state a summary reads: (type, state key "").
const SUMMARY_STATE: [&str; 10] = [
    "m.room.create",
    "m.room.name",
    "m.room.topic",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.encryption",
    "m.room.server_acl",
];

impl RoomSummary {
    /// The effective join rule (`public` when unset, as the spec's chunk says).
    pub fn join_rule(&self) -> &str {
        self.join_rule.as_deref().unwrap_or("public")
    }

    /// Whether anyone may see the room's summary without being in it: it is public,
    /// open to knocks, or world readable (Synapse `handlers/room_summary.py`,
    /// `_is_local_room_accessible`).
    pub fn open_to_all(&self) -> bool {
        matches!(self.join_rule(), "public" | "knock" | "knock_restricted") || self.world_readable
    }

    /// Whether this is a space-room.
    pub fn is_space(&self) -> bool {
        self.room_type.as_deref() == Some("m.space")
    }

    /// A `PublishedRoomsChunk` of the directory.
    pub fn directory_entry(&self) -> Value {
        let mut entry = json!({
            "room_id": self.room_id,
            "num_joined_members": self.num_joined_members,
            "world_readable": self.world_readable,
            "guest_can_join": self.guest_can_join,
            "join_rule": self.join_rule(),
        });
        for (k, v) in [
            ("name", &self.name),
            ("topic", &self.topic),
            ("canonical_alias", &self.canonical_alias),
            ("avatar_url", &self.avatar_url),
            ("room_type", &self.room_type),
        ] {
            if let Some(v) = v {
                entry[k] = json!(v);
            }
        }
        entry
    }

    /// A `RoomSummary` of the hierarchy endpoints: the directory entry plus the room
    /// version, encryption and, for other servers only, `allowed_room_ids` (Synapse
    /// leaves them out for clients).
    pub fn hierarchy_entry(&self, for_server: bool) -> Value {
        let mut entry = self.directory_entry();
        entry["room_version"] = json!(self.room_version);
        if let Some(e) = &self.encryption {
            entry["encryption"] = json!(e);
        }
        if for_server && !self.allowed_room_ids.is_empty() {
            entry["allowed_room_ids"] = json!(self.allowed_room_ids);
        }
        entry
    }

    /// Whether the directory filter admits this room.
    fn matches(&self, search: Option<&str>, room_types: Option<&[Option<String>]>) -> bool {
        if let Some(types) = room_types
            && !types.is_empty()
            && !types.contains(&self.room_type)
        {
            return false;
        }
        let Some(term) = search else { return true };
        [&self.name, &self.topic, &self.canonical_alias]
            .iter()
            .filter_map(|s| s.as_deref())
            .any(|s| s.to_lowercase().contains(term))
    }
}

/// Which list of the directory a request reads (appservice networks are not built, so
/// `ThirdParty` lists are empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Network {
    /// The main list.
    #[default]
    Matrix,
    /// Every list (`include_all_networks`).
    All,
    /// One third-party network's list (`third_party_instance_id`).
    ThirdParty(String),
}

/// A directory request, from a client or another server.
#[derive(Debug, Clone, Default)]
pub struct DirectoryQuery {
    /// Largest page wanted; `None` or 0 mean the server's maximum (Synapse treats 0 as
    /// "no limit").
    pub limit: Option<u64>,
    /// A `next_batch` or `prev_batch` of an earlier page.
    pub since: Option<String>,
    /// `filter.generic_search_term`: a case-insensitive substring of the name, topic or
    /// canonical alias.
    pub search: Option<String>,
    /// `filter.room_types`: `None` in the list stands for rooms without a type.
    pub room_types: Option<Vec<Option<String>>>,
    /// The list to read.
    pub network: Network,
}

/// Largest page of the directory.
pub const MAX_DIRECTORY_PAGE: usize = 500;

/// A page of the directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirectoryPage {
    /// The rooms, most joined members first.
    pub chunk: Vec<Value>,
    /// The token of the next page, if there is one.
    pub next_batch: Option<String>,
    /// The token of the previous page, if there is one.
    pub prev_batch: Option<String>,
    /// How many rooms the whole filtered list has.
    pub total_room_count_estimate: usize,
}

impl DirectoryPage {
    /// The spec's response body.
    pub fn to_json(&self) -> Value {
        let mut out = json!({
            "chunk": self.chunk,
            "total_room_count_estimate": self.total_room_count_estimate,
        });
        if let Some(n) = &self.next_batch {
            out["next_batch"] = json!(n);
        }
        if let Some(p) = &self.prev_batch {
            out["prev_batch"] = json!(p);
        }
        out
    }
}

/// The offset a `since` token stands for (`o{offset}`); `M_INVALID_PARAM` otherwise.
pub fn parse_since(since: Option<&str>) -> Result<usize> {
    match since {
        None | Some("") => Ok(0),
        Some(s) => s
            .strip_prefix('o')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::invalid_param("invalid since token")),
    }
}

/// One page of `list` from `offset`, `limit` long, with its tokens.
fn paginate(list: Vec<Value>, offset: usize, limit: Option<u64>) -> DirectoryPage {
    let limit = match limit {
        None | Some(0) => MAX_DIRECTORY_PAGE,
        Some(l) => usize::try_from(l)
            .unwrap_or(MAX_DIRECTORY_PAGE)
            .min(MAX_DIRECTORY_PAGE),
    };
    let total = list.len();
    let chunk: Vec<Value> = list.into_iter().skip(offset).take(limit).collect();
    DirectoryPage {
        chunk,
        next_batch: (offset.saturating_add(limit) < total)
            .then(|| format!("o{}", offset.saturating_add(limit))),
        prev_batch: (offset > 0).then(|| format!("o{}", offset.saturating_sub(limit))),
        total_room_count_estimate: total,
    }
}

impl Rooms {
    /// The summary of a room whose state we have (`None` for a room we do not know).
    pub async fn room_summary(&self, room_id: &str) -> Result<Option<RoomSummary>> {
        let keys: Vec<(String, String)> = SUMMARY_STATE
            .iter()
            .map(|t| ((*t).to_owned(), String::new()))
            .collect();
        let ids = self
            .inner
            .store
            .select_current_state_keys(room_id, &keys)
            .await
            .map_err(storage_error)?;
        if !ids.contains_key(&("m.room.create".to_owned(), String::new())) {
            return Ok(None);
        }
        let wanted: Vec<String> = ids.values().cloned().collect();
        let pdus = self.load_pdus(&wanted).await?;
        let contents: HashMap<&str, Value> = ids
            .iter()
            .filter_map(|((kind, _), id)| {
                let c = pdus.get(id)?.content_as::<Value>()?;
                Some((kind.as_str(), c))
            })
            .collect();
        let text = |kind: &str, field: &str| {
            contents
                .get(kind)
                .and_then(|c| c.get(field))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let create = contents.get("m.room.create");
        let join_rule = text("m.room.join_rules", "join_rule");
        let allowed_room_ids = match join_rule.as_deref() {
            Some("restricted" | "knock_restricted") => contents
                .get("m.room.join_rules")
                .and_then(|c| c.get("allow"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter(|r| {
                            r.get("type").and_then(Value::as_str) == Some("m.room_membership")
                        })
                        .filter_map(|r| r.get("room_id").and_then(Value::as_str))
                        .filter(|r| ruma::RoomId::parse(r).is_ok())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let (joined, _) = self
            .inner
            .store
            .count_room_members(room_id)
            .await
            .map_err(storage_error)?;
        Ok(Some(RoomSummary {
            room_id: room_id.to_owned(),
            name: text("m.room.name", "name"),
            topic: text("m.room.topic", "topic"),
            canonical_alias: text("m.room.canonical_alias", "alias"),
            avatar_url: text("m.room.avatar", "url"),
            join_rule,
            allowed_room_ids,
            world_readable: text("m.room.history_visibility", "history_visibility").as_deref()
                == Some("world_readable"),
            guest_can_join: text("m.room.guest_access", "guest_access").as_deref()
                == Some("can_join"),
            room_type: text("m.room.create", "type"),
            // Version 1 rooms have no `room_version` in their create event.
            room_version: text("m.room.create", "room_version").unwrap_or_else(|| "1".into()),
            encryption: text("m.room.encryption", "algorithm"),
            num_joined_members: joined,
            federate: create
                .and_then(|c| c.get("m.federate"))
                .and_then(Value::as_bool)
                .unwrap_or(true),
            server_acl: contents.get("m.room.server_acl").cloned(),
        }))
    }

    /// A page of the published room directory: the rooms published on our list that
    /// match the query and that `admit` lets through (other servers do not see rooms
    /// their ACL denies or that do not federate), most joined members first.
    pub async fn public_rooms(
        &self,
        q: &DirectoryQuery,
        admit: impl Fn(&RoomSummary) -> bool,
    ) -> Result<DirectoryPage> {
        let offset = parse_since(q.since.as_deref())?;
        if matches!(q.network, Network::ThirdParty(_)) {
            return Ok(DirectoryPage::default());
        }
        let listed = self
            .inner
            .store
            .select_public_rooms()
            .await
            .map_err(storage_error)?;
        let search = q
            .search
            .as_deref()
            .map(str::to_lowercase)
            .filter(|t| !t.is_empty());
        let mut rooms = Vec::new();
        for (room_id, _) in listed {
            let Some(summary) = self.room_summary(&room_id).await? else {
                continue;
            };
            if summary.matches(search.as_deref(), q.room_types.as_deref()) && admit(&summary) {
                rooms.push(summary);
            }
        }
        // Most joined members first, then by id: a stable order (spec v1.19 leaves the
        // order to the server and recommends a stable one).
        rooms.sort_by(|a, b| {
            b.num_joined_members
                .cmp(&a.num_joined_members)
                .then_with(|| a.room_id.cmp(&b.room_id))
        });
        let list = rooms.iter().map(RoomSummary::directory_entry).collect();
        Ok(paginate(list, offset, q.limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(name: &str, kind: Option<&str>) -> RoomSummary {
        RoomSummary {
            room_id: format!("!{name}:x"),
            name: Some(name.into()),
            room_type: kind.map(str::to_owned),
            room_version: "11".into(),
            federate: true,
            ..Default::default()
        }
    }

    #[test]
    fn filters_by_term_and_type() {
        let s = summary("Town Square", Some("m.space"));
        assert!(s.matches(Some("square"), None));
        assert!(!s.matches(Some("plaza"), None));
        assert!(s.matches(None, Some(&[Some("m.space".into())])));
        assert!(!s.matches(None, Some(&[None])));
        assert!(summary("r", None).matches(None, Some(&[None, Some("m.space".into())])));
        assert!(
            s.matches(None, Some(&[])),
            "an empty list admits every type"
        );
    }

    #[test]
    fn pages_and_tokens() {
        let list: Vec<Value> = (0..5).map(|i| json!(i)).collect();
        let p = paginate(list.clone(), 0, Some(2));
        assert_eq!(p.chunk, vec![json!(0), json!(1)]);
        assert_eq!(p.next_batch.as_deref(), Some("o2"));
        assert_eq!(p.prev_batch, None);
        let p = paginate(list.clone(), 4, Some(2));
        assert_eq!(p.chunk, vec![json!(4)]);
        assert_eq!(p.next_batch, None);
        assert_eq!(p.prev_batch.as_deref(), Some("o2"));
        assert_eq!(
            paginate(list.clone(), 0, Some(0)).chunk.len(),
            5,
            "0 is no limit"
        );
        assert_eq!(paginate(list, 0, None).total_room_count_estimate, 5);
        assert_eq!(parse_since(Some("o7")).ok(), Some(7));
        assert_eq!(parse_since(None).ok(), Some(0));
        assert!(parse_since(Some("x7")).is_err());
        assert!(parse_since(Some("o-1")).is_err());
    }

    #[test]
    fn entries_leave_out_what_is_unset() {
        let mut s = summary("r", None);
        s.allowed_room_ids = vec!["!a:x".into()];
        s.join_rule = Some("restricted".into());
        let e = s.directory_entry();
        assert_eq!(e["join_rule"], "restricted");
        assert!(e.get("topic").is_none() && e.get("room_type").is_none());
        assert!(s.hierarchy_entry(false).get("allowed_room_ids").is_none());
        assert_eq!(s.hierarchy_entry(true)["allowed_room_ids"][0], "!a:x");
        assert_eq!(s.hierarchy_entry(true)["room_version"], "11");
        assert!(!s.open_to_all());
        s.world_readable = true;
        assert!(s.open_to_all());
        assert_eq!(summary("r", None).join_rule(), "public");
    }
}
