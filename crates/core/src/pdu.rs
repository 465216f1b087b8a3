//! Our PDU type (ruma has none).
//!
//! The record is the event's canonical JSON exactly as it was signed (`json`); the other
//! fields are parsed from it once and never re-serialised, so fields we do not know
//! survive untouched. Implements [`ruma::state_res::Event`] for auth checks and state
//! resolution.

use std::sync::Arc;

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt,
    UserId, events::TimelineEventType,
};
use serde::Deserialize;
use serde_json::value::RawValue;

/// A persisted or about-to-be-persisted event.
#[derive(Debug, Clone)]
pub struct Pdu {
    /// The event id (a reference hash from room v3, part of the JSON before).
    pub event_id: OwnedEventId,
    /// The room. For a v12 `m.room.create`, derived from the event id.
    pub room_id: OwnedRoomId,
    /// Whether the JSON itself carries `room_id` (not so for v12 create events).
    pub has_room_id_field: bool,
    /// The sender.
    pub sender: OwnedUserId,
    /// `origin_server_ts`.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// `type`.
    pub kind: TimelineEventType,
    /// `content`, as sent.
    pub content: Box<RawValue>,
    /// `state_key`, for state events.
    pub state_key: Option<String>,
    /// `prev_events` (ids only, whatever the reference format).
    pub prev_events: Vec<OwnedEventId>,
    /// `auth_events` (ids only).
    pub auth_events: Vec<OwnedEventId>,
    /// What a redaction redacts (top-level before room v11, in content from v11).
    pub redacts: Option<OwnedEventId>,
    /// `depth`.
    pub depth: i64,
    /// Whether the event failed auth and is kept only as a record.
    pub rejected: bool,
    /// The full canonical JSON of the PDU, without `unsigned`.
    pub json: Arc<str>,
}

/// Why a JSON text is not a PDU.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    /// Not JSON or not the PDU shape.
    #[error("malformed PDU: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Shape fine but a field is unusable.
    #[error("invalid PDU: {0}")]
    Invalid(&'static str),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Reference {
    Id(OwnedEventId),
    /// Room v1/v2 reference: `[event_id, {hashes}]`.
    Pair(OwnedEventId, serde::de::IgnoredAny),
}

impl Reference {
    fn into_id(self) -> OwnedEventId {
        match self {
            Reference::Id(id) | Reference::Pair(id, _) => id,
        }
    }
}

#[derive(Deserialize)]
struct Header {
    event_id: Option<OwnedEventId>,
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: UInt,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    content: Box<RawValue>,
    state_key: Option<String>,
    #[serde(default)]
    prev_events: Vec<Reference>,
    #[serde(default)]
    auth_events: Vec<Reference>,
    redacts: Option<OwnedEventId>,
    depth: UInt,
}

#[derive(Deserialize)]
struct RedactsInContent {
    redacts: Option<OwnedEventId>,
}

impl Pdu {
    /// Parses a stored or freshly built PDU. `event_id` and `room_id` supply what the JSON
    /// does not carry (event ids from room v3, the room id of a v12 create event).
    pub fn from_json(
        json: Arc<str>,
        event_id: Option<OwnedEventId>,
        room_id: Option<OwnedRoomId>,
    ) -> Result<Pdu, PduError> {
        let h: Header = serde_json::from_str(&json)?;
        let event_id = h
            .event_id
            .or(event_id)
            .ok_or(PduError::Invalid("no event id"))?;
        let has_room_id_field = h.room_id.is_some();
        let room_id = h
            .room_id
            .or(room_id)
            .ok_or(PduError::Invalid("no room id"))?;
        let redacts = match h.redacts {
            Some(r) => Some(r),
            None if h.kind == TimelineEventType::RoomRedaction => {
                serde_json::from_str::<RedactsInContent>(h.content.get())
                    .ok()
                    .and_then(|c| c.redacts)
            }
            None => None,
        };
        Ok(Pdu {
            event_id,
            room_id,
            has_room_id_field,
            sender: h.sender,
            origin_server_ts: MilliSecondsSinceUnixEpoch(h.origin_server_ts),
            kind: h.kind,
            content: h.content,
            state_key: h.state_key,
            prev_events: h.prev_events.into_iter().map(Reference::into_id).collect(),
            auth_events: h.auth_events.into_iter().map(Reference::into_id).collect(),
            redacts,
            depth: i64::from(u32::try_from(h.depth).unwrap_or(u32::MAX)).max(0),
            rejected: false,
            json,
        })
    }

    /// Whether this is a state event.
    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// The content parsed into `T`, or `None` if it does not fit.
    pub fn content_as<'a, T: Deserialize<'a>>(&'a self) -> Option<T> {
        serde_json::from_str(self.content.get()).ok()
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.has_room_id_field.then_some(&*self.room_id)
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}

/// Borrowing an [`EventId`] from a PDU, for maps keyed by id.
impl std::borrow::Borrow<EventId> for Pdu {
    fn borrow(&self) -> &EventId {
        &self.event_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_and_v3_references() {
        let v1 = r#"{"event_id":"$a:x","room_id":"!r:x","sender":"@u:x","origin_server_ts":1,"type":"m.room.message","content":{"body":"hi"},"prev_events":[["$p:x",{"sha256":"abc"}]],"auth_events":[["$c:x",{}]],"depth":3}"#;
        let p = Pdu::from_json(v1.into(), None, None).expect("v1 parses");
        assert_eq!(p.prev_events[0].as_str(), "$p:x");
        assert_eq!(p.auth_events[0].as_str(), "$c:x");
        assert_eq!(p.depth, 3);

        let v3 = r#"{"room_id":"!r:x","sender":"@u:x","origin_server_ts":1,"type":"m.room.redaction","content":{"redacts":"$t"},"prev_events":["$p"],"auth_events":[],"depth":1}"#;
        let id: OwnedEventId = "$abc".try_into().expect("id");
        let p = Pdu::from_json(v3.into(), Some(id.clone()), None).expect("v3 parses");
        assert_eq!(p.event_id, id);
        assert_eq!(p.redacts.as_ref().map(|r| r.as_str()), Some("$t"));
    }

    #[test]
    fn refuses_missing_ids() {
        let v3 = r#"{"sender":"@u:x","origin_server_ts":1,"type":"m.room.create","content":{},"depth":1}"#;
        assert!(Pdu::from_json(v3.into(), None, None).is_err());
    }
}
