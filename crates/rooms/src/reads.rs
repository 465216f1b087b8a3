//! Reading room history for clients: `/messages`, `/context`, `/members`, `/state`,
//! with history visibility and event filters applied (spec: Client-Server API, "Room
//! Events" and "Filtering").

use ganglion_core::{Error, Result, StreamPos, token::PageToken};
use ganglion_storage::events::EventRow;
use serde_json::Value;

use crate::{Rooms, storage_error};

/// The parts of a `RoomEventFilter` the server applies.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Event types to include (`*` wildcards allowed); `None` = all.
    pub types: Option<Vec<String>>,
    /// Event types to exclude.
    pub not_types: Vec<String>,
    /// Senders to include; `None` = all.
    pub senders: Option<Vec<String>>,
    /// Senders to exclude.
    pub not_senders: Vec<String>,
    /// Return only the member events of the returned events' senders.
    pub lazy_load_members: bool,
    /// Only events with (true) or without (false) a `url` in content.
    pub contains_url: Option<bool>,
}

fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

impl EventFilter {
    /// From a client's `RoomEventFilter` (the parts we apply).
    pub fn from_ruma(f: &ruma::api::client::filter::RoomEventFilter) -> EventFilter {
        use ruma::api::client::filter::{LazyLoadOptions, UrlFilter};
        EventFilter {
            types: f.types.clone(),
            not_types: f.not_types.clone(),
            senders: f
                .senders
                .as_ref()
                .map(|s| s.iter().map(ToString::to_string).collect()),
            not_senders: f.not_senders.iter().map(ToString::to_string).collect(),
            lazy_load_members: matches!(f.lazy_load_options, LazyLoadOptions::Enabled { .. }),
            contains_url: match f.url_filter {
                Some(UrlFilter::EventsWithUrl) => Some(true),
                Some(UrlFilter::EventsWithoutUrl) => Some(false),
                None => None,
            },
        }
    }

    /// Whether an event passes the filter.
    pub fn matches(&self, row: &EventRow) -> bool {
        if let Some(types) = &self.types
            && !types.iter().any(|t| type_matches(t, &row.kind))
        {
            return false;
        }
        if self.not_types.iter().any(|t| type_matches(t, &row.kind)) {
            return false;
        }
        if let Some(senders) = &self.senders
            && !senders.iter().any(|s| s == &row.sender)
        {
            return false;
        }
        if self.not_senders.iter().any(|s| s == &row.sender) {
            return false;
        }
        if let Some(want) = self.contains_url {
            let has = serde_json::from_str::<Value>(&row.json)
                .ok()
                .and_then(|v| {
                    v.get("content")
                        .and_then(|c| c.get("url"))
                        .map(|u| u.is_string())
                })
                .unwrap_or(false);
            if has != want {
                return false;
            }
        }
        true
    }

    /// Whether the filter excludes nothing.
    pub fn is_empty(&self) -> bool {
        self.types.is_none()
            && self.not_types.is_empty()
            && self.senders.is_none()
            && self.not_senders.is_empty()
            && self.contains_url.is_none()
    }
}

/// A page of `/messages`.
#[derive(Debug)]
pub struct MessagesPage {
    /// The events, in the order requested.
    pub chunk: Vec<EventRow>,
    /// The token the page starts at.
    pub start: PageToken,
    /// The token to continue from; `None` when there is nothing more.
    pub end: Option<PageToken>,
    /// Member events for lazy loading.
    pub state: Vec<EventRow>,
    /// The page ran past our earliest event of a room with more history on other
    /// servers, and this process cannot fetch it (a worker): main should answer.
    pub needs_backfill: bool,
}

/// The paging parameters of `/messages`.
#[derive(Debug, Clone, Copy)]
pub struct MessagesQuery<'a> {
    /// Where to start (default: the newest event going back, the oldest going forward).
    pub from: Option<PageToken>,
    /// Where to stop.
    pub to: Option<PageToken>,
    /// Newest first.
    pub backwards: bool,
    /// At most this many events.
    pub limit: usize,
    /// Which events.
    pub filter: &'a EventFilter,
}

/// Most backfill requests one page of `/messages` makes.
const MAX_BACKFILLS_PER_PAGE: usize = 3;

/// How far back and forward a user may read a room.
struct ReadBounds {
    upto: i64,
}

impl Rooms {
    /// The highest position `user` may read in a room: now if joined (or the room is
    /// world-readable), their leave if they left; `M_FORBIDDEN` if they were never in it.
    async fn read_bounds(&self, user_id: &str, room_id: &str) -> Result<ReadBounds> {
        let now = self.read_position().await?;
        match self
            .inner
            .store
            .select_membership(room_id, user_id)
            .await
            .map_err(storage_error)?
        {
            Some((m, _)) if m == "join" => return Ok(ReadBounds { upto: now }),
            Some((m, event_id)) if m == "leave" || m == "ban" => {
                if let Some(row) = self
                    .inner
                    .store
                    .select_event(&event_id)
                    .await
                    .map_err(storage_error)?
                {
                    let world = self.history_visibility(room_id).await? == "world_readable";
                    return Ok(ReadBounds {
                        upto: if world { now } else { row.stream_ordering },
                    });
                }
            }
            _ => {}
        }
        if self.history_visibility(room_id).await? == "world_readable" {
            return Ok(ReadBounds { upto: now });
        }
        Err(Error::forbidden("you are not allowed to read this room"))
    }

    /// The room's current `history_visibility` (`shared` when unset).
    pub async fn history_visibility(&self, room_id: &str) -> Result<String> {
        Ok(self
            .current_state_content(room_id, "m.room.history_visibility", "")
            .await?
            .and_then(|c| {
                c.get("history_visibility")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "shared".into()))
    }

    /// `GET /rooms/{roomId}/messages`.
    pub async fn messages(
        &self,
        user_id: &str,
        room_id: &str,
        q: &MessagesQuery<'_>,
    ) -> Result<MessagesPage> {
        let MessagesQuery {
            from,
            to,
            backwards,
            limit,
            filter,
        } = *q;
        let bounds = self.read_bounds(user_id, room_id).await?;
        let limit = limit.clamp(1, 1000);
        // Backfilled history sits below 0: going forward from nowhere starts below it.
        let start = from.unwrap_or(PageToken(StreamPos(if backwards {
            bounds.upto
        } else {
            i64::MIN
        })));
        let mut chunk = Vec::new();
        let mut cursor = start
            .0
            .0
            .min(if backwards { bounds.upto } else { i64::MAX });
        let mut exhausted = false;
        let mut backfills = 0;
        let mut needs_backfill = false;
        // Fetch in rounds until the filtered page is full or the room is exhausted.
        while chunk.len() < limit {
            let want = i64::try_from((limit - chunk.len()) * 2 + 10).unwrap_or(100);
            let rows = if backwards {
                let floor = to.map_or(i64::MIN, |t| t.0.0);
                self.inner
                    .store
                    .select_room_events(room_id, floor, cursor, true, want)
                    .await
            } else {
                let ceiling = to.map_or(bounds.upto, |t| t.0.0.min(bounds.upto));
                self.inner
                    .store
                    .select_room_events(room_id, cursor, ceiling, false, want)
                    .await
            }
            .map_err(storage_error)?;
            let got = rows.len();
            for row in rows {
                cursor = if backwards {
                    row.stream_ordering - 1
                } else {
                    row.stream_ordering
                };
                if filter.matches(&row) {
                    chunk.push(row);
                    if chunk.len() == limit {
                        break;
                    }
                }
            }
            if i64::try_from(got).unwrap_or(0) < want {
                // Past our earliest event: a room joined through another server may
                // have more history there.
                if backwards && to.is_none() && backfills < MAX_BACKFILLS_PER_PAGE {
                    backfills += 1;
                    if self.inner.persister.is_none() {
                        needs_backfill = !self
                            .inner
                            .store
                            .select_backfill_frontier(room_id)
                            .await
                            .map_err(storage_error)?
                            .is_empty();
                    } else if self.backfill_for_reader(room_id).await > 0 {
                        continue;
                    }
                }
                exhausted = true;
                break;
            }
        }
        let chunk = self.filter_visible(user_id, chunk).await?;
        let end = if exhausted && chunk.len() < limit {
            None
        } else {
            Some(PageToken(StreamPos(cursor)))
        };
        let state = if filter.lazy_load_members {
            self.member_events_for(room_id, &chunk).await?
        } else {
            Vec::new()
        };
        Ok(MessagesPage {
            chunk,
            start,
            end,
            state,
            needs_backfill,
        })
    }

    /// Backfills a room for a reader: failures are logged, not passed on (the page
    /// ends where our history does).
    async fn backfill_for_reader(&self, room_id: &str) -> usize {
        let Ok(room) = ruma::RoomId::parse(room_id) else {
            return 0;
        };
        match self.backfill(&room).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(room = %room_id, error = %e.message, "backfill failed");
                0
            }
        }
    }

    /// The current member events of the senders of `events` (lazy loading).
    pub async fn member_events_for(
        &self,
        room_id: &str,
        events: &[EventRow],
    ) -> Result<Vec<EventRow>> {
        let mut senders: Vec<String> = events.iter().map(|e| e.sender.clone()).collect();
        senders.sort();
        senders.dedup();
        let keys: Vec<(String, String)> = senders
            .into_iter()
            .map(|s| ("m.room.member".to_owned(), s))
            .collect();
        self.current_state_events(room_id, &keys).await
    }

    /// The current state events of some (type, state key) pairs.
    pub async fn current_state_events(
        &self,
        room_id: &str,
        keys: &[(String, String)],
    ) -> Result<Vec<EventRow>> {
        let ids: Vec<String> = self
            .inner
            .store
            .select_current_state_keys(room_id, keys)
            .await
            .map_err(storage_error)?
            .into_values()
            .collect();
        self.inner
            .store
            .select_events(&ids)
            .await
            .map_err(storage_error)
    }

    /// `GET /rooms/{roomId}/context/{eventId}`: (before newest-first, event, after, state, start, end).
    pub async fn context(
        &self,
        user_id: &str,
        room_id: &str,
        event_id: &str,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<(
        Vec<EventRow>,
        EventRow,
        Vec<EventRow>,
        Vec<EventRow>,
        PageToken,
        PageToken,
    )> {
        let bounds = self.read_bounds(user_id, room_id).await?;
        let event = self
            .inner
            .store
            .select_event(event_id)
            .await
            .map_err(storage_error)?
            .filter(|e| e.room_id == room_id && e.stream_ordering <= bounds.upto)
            .ok_or_else(|| Error::not_found("event not found"))?;
        if self
            .filter_visible(user_id, vec![event.clone()])
            .await?
            .is_empty()
        {
            return Err(Error::not_found("event not found"));
        }
        let before_n = limit / 2;
        let after_n = limit - before_n;
        let side = |from: i64, backwards: bool, n: usize| {
            let q = MessagesQuery {
                from: Some(PageToken(StreamPos(from))),
                to: None,
                backwards,
                limit: n,
                filter,
            };
            async move {
                if n == 0 {
                    return Ok(Vec::new());
                }
                Ok::<_, Error>(self.messages(user_id, room_id, &q).await?.chunk)
            }
        };
        let before_rows = side(event.stream_ordering - 1, true, before_n).await?;
        let after_rows = side(event.stream_ordering, false, after_n).await?;
        let start = PageToken(StreamPos(
            before_rows
                .last()
                .map_or(event.stream_ordering - 1, |e| e.stream_ordering - 1),
        ));
        let end = PageToken(StreamPos(
            after_rows
                .last()
                .map_or(event.stream_ordering, |e| e.stream_ordering),
        ));
        let state = match event.state_group {
            Some(g) => {
                let entries = self
                    .inner
                    .store
                    .select_state_group(g)
                    .await
                    .map_err(storage_error)?;
                let ids: Vec<String> = if filter.lazy_load_members {
                    let mut all = before_rows.clone();
                    all.push(event.clone());
                    all.extend(after_rows.iter().cloned());
                    let senders: std::collections::BTreeSet<String> =
                        all.iter().map(|e| e.sender.clone()).collect();
                    entries
                        .iter()
                        .filter(|((t, k), _)| t != "m.room.member" || senders.contains(k))
                        .map(|(_, id)| id.clone())
                        .collect()
                } else {
                    entries.into_values().collect()
                };
                self.inner
                    .store
                    .select_events(&ids)
                    .await
                    .map_err(storage_error)?
            }
            None => Vec::new(),
        };
        Ok((before_rows, event, after_rows, state, start, end))
    }

    /// `GET /rooms/{roomId}/event/{eventId}`.
    pub async fn event_for(
        &self,
        user_id: &str,
        room_id: &str,
        event_id: &str,
    ) -> Result<EventRow> {
        let bounds = self.read_bounds(user_id, room_id).await?;
        let event = self
            .inner
            .store
            .select_event(event_id)
            .await
            .map_err(storage_error)?
            .filter(|e| e.room_id == room_id && e.stream_ordering <= bounds.upto)
            .ok_or_else(|| Error::not_found("event not found"))?;
        self.filter_visible(user_id, vec![event])
            .await?
            .pop()
            .ok_or_else(|| Error::not_found("event not found"))
    }

    /// The full state of a room as `user` may see it: current state when joined, the
    /// state at their leave otherwise.
    pub async fn state_for(&self, user_id: &str, room_id: &str) -> Result<Vec<EventRow>> {
        let bounds = self.read_bounds(user_id, room_id).await?;
        self.state_at(room_id, bounds.upto).await
    }

    /// The room state at a stream position.
    pub async fn state_at(&self, room_id: &str, at: i64) -> Result<Vec<EventRow>> {
        let Some(group) = self
            .inner
            .store
            .select_state_group_at(room_id, at)
            .await
            .map_err(storage_error)?
        else {
            return Ok(Vec::new());
        };
        let ids: Vec<String> = self
            .inner
            .store
            .select_state_group(group)
            .await
            .map_err(storage_error)?
            .into_values()
            .collect();
        self.inner
            .store
            .select_events(&ids)
            .await
            .map_err(storage_error)
    }

    /// One state event as `user` may see it.
    pub async fn state_event_for(
        &self,
        user_id: &str,
        room_id: &str,
        kind: &str,
        state_key: &str,
    ) -> Result<EventRow> {
        let bounds = self.read_bounds(user_id, room_id).await?;
        let group = self
            .inner
            .store
            .select_state_group_at(room_id, bounds.upto)
            .await
            .map_err(storage_error)?
            .ok_or_else(|| Error::not_found("room has no state"))?;
        let entries = self
            .inner
            .store
            .select_state_group(group)
            .await
            .map_err(storage_error)?;
        let id = entries
            .get(&(kind.to_owned(), state_key.to_owned()))
            .ok_or_else(|| Error::not_found("event not found"))?;
        self.inner
            .store
            .select_event(id)
            .await
            .map_err(storage_error)?
            .ok_or_else(|| Error::not_found("event not found"))
    }

    /// `GET /rooms/{roomId}/members`: member events at `at` (default now), filtered.
    pub async fn members_for(
        &self,
        user_id: &str,
        room_id: &str,
        at: Option<PageToken>,
        membership: Option<&str>,
        not_membership: Option<&str>,
    ) -> Result<Vec<EventRow>> {
        let bounds = self.read_bounds(user_id, room_id).await?;
        let at = at.map_or(bounds.upto, |t| t.0.0.min(bounds.upto));
        let rows = self.state_at(room_id, at).await?;
        Ok(rows
            .into_iter()
            .filter(|r| r.kind == "m.room.member")
            .filter(|r| {
                let m = serde_json::from_str::<Value>(&r.json)
                    .ok()
                    .and_then(|v| {
                        v.get("content")
                            .and_then(|c| c.get("membership"))
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .unwrap_or_default();
                membership.is_none_or(|want| m == want) && not_membership.is_none_or(|not| m != not)
            })
            .collect())
    }

    /// `timestamp_to_event`: the visible event closest to `ts` in a direction.
    pub async fn event_near_ts(
        &self,
        user_id: &str,
        room_id: &str,
        ts: i64,
        forwards: bool,
    ) -> Result<(String, i64)> {
        self.read_bounds(user_id, room_id).await?;
        self.inner
            .store
            .select_event_near_ts(room_id, ts, forwards)
            .await
            .map_err(storage_error)?
            .ok_or_else(|| Error::not_found("no event found in that direction"))
    }

    /// Whether a joined user's power level reaches what a state event of `kind` needs.
    pub async fn may_send_state(
        &self,
        user: &ruma::UserId,
        room_id: &str,
        kind: &str,
    ) -> Result<bool> {
        if !self.is_joined(user.as_str(), room_id).await? {
            return Ok(false);
        }
        let pl = self
            .current_state_content(room_id, "m.room.power_levels", "")
            .await?;
        let Ok(rid) = ruma::OwnedRoomId::try_from(room_id) else {
            return Ok(false);
        };
        let creators = self.creators(&rid).await?;
        let mine = crate::send::power_level_of(pl.as_ref(), user.as_str(), &creators);
        let needed = pl
            .as_ref()
            .and_then(|p| {
                p.get("events")
                    .and_then(|e| e.get(kind))
                    .and_then(crate::send::as_int)
                    .or_else(|| p.get("state_default").and_then(crate::send::as_int))
            })
            .unwrap_or(if pl.is_some() { 50 } else { 0 });
        Ok(mine >= needed)
    }

    /// Whether `user` is joined to the room now.
    pub async fn is_joined(&self, user_id: &str, room_id: &str) -> Result<bool> {
        Ok(
            matches!(self.inner.store.select_membership(room_id, user_id).await.map_err(storage_error)?, Some((m, _)) if m == "join"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, sender: &str, content: &str) -> EventRow {
        EventRow {
            stream_ordering: 1,
            event_id: "$e".into(),
            room_id: "!r:x".into(),
            sender: sender.into(),
            kind: kind.into(),
            state_key: None,
            json: format!(r#"{{"content":{content}}}"#),
            unsigned: None,
            redacted_by: None,
            txn: None,
            state_group: None,
        }
    }

    #[test]
    fn filters_by_type_sender_and_url() {
        let msg = row("m.room.message", "@a:x", r#"{"body":"hi"}"#);
        let img = row("m.room.message", "@b:x", r#"{"url":"mxc://x/y"}"#);
        let f = EventFilter {
            types: Some(vec!["m.room.*".into()]),
            ..Default::default()
        };
        assert!(f.matches(&msg));
        let f = EventFilter {
            not_types: vec!["m.room.message".into()],
            ..Default::default()
        };
        assert!(!f.matches(&msg));
        let f = EventFilter {
            senders: Some(vec!["@b:x".into()]),
            ..Default::default()
        };
        assert!(!f.matches(&msg) && f.matches(&img));
        let f = EventFilter {
            contains_url: Some(true),
            ..Default::default()
        };
        assert!(!f.matches(&msg) && f.matches(&img));
        assert!(EventFilter::default().is_empty());
    }
}
