//! The parts of rooms that involve other servers' users and events, by topic:
//! membership templates for remote users (`templates`), accepting remote events
//! (`accept`), our joins through another server (`bootstrap`), and rooms we know only in
//! part (`stubs`). The helpers below are shared by them and by backfill.

mod accept;
mod bootstrap;
mod stubs;
mod templates;

use std::{collections::HashMap, sync::Arc};

use ganglion_core::{Error, Pdu, Result, StreamPos};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, RoomId,
    events::{StateEventType, TimelineEventType},
};
use serde_json::{Value, json};

/// What `send_join` answers with.
#[derive(Debug)]
pub struct JoinedRemotely {
    /// The room's state before the join.
    pub state: Vec<Arc<Pdu>>,
    /// Every event those (and the join) are authorised by, transitively.
    pub auth_chain: Vec<Arc<Pdu>>,
    /// Where the join landed in our events stream.
    pub pos: StreamPos,
}

fn join_content() -> Value {
    json!({ "membership": "join" })
}

/// A PDU in federation form (its stored canonical JSON).
pub fn federation_pdu(p: &Pdu) -> Value {
    serde_json::from_str(&p.json).unwrap_or(Value::Null)
}

/// A canonical JSON object as a `serde_json` value.
pub fn value_of(obj: &CanonicalJsonObject) -> Value {
    serde_json::to_value(CanonicalJsonValue::Object(obj.clone())).unwrap_or(Value::Null)
}

/// A remote event as a [`Pdu`] and its stored JSON (without `unsigned`).
pub(crate) fn parse_remote(
    room_id: &RoomId,
    event_id: &OwnedEventId,
    mut event: CanonicalJsonObject,
) -> Result<(Pdu, Arc<str>)> {
    event.remove("unsigned");
    let json: Arc<str> = serde_json::to_string(&event)
        .map_err(|e| Error::bad_json(e.to_string()))?
        .into();
    // A room-v12 create event carries no room id: its room is the one asked about.
    let pdu = Pdu::from_json(
        json.clone(),
        Some(event_id.clone()),
        Some(room_id.to_owned()),
    )
    .map_err(|e| Error::bad_json(format!("not a PDU: {e}")))?;
    if pdu.room_id != room_id {
        return Err(Error::bad_json("the event is for another room"));
    }
    Ok((pdu, json))
}

/// The `membership` of a member event (`None` for other events).
pub(crate) fn membership_of(pdu: &Pdu) -> Option<String> {
    (pdu.kind == TimelineEventType::RoomMember)
        .then(|| {
            pdu.content_as::<Value>().and_then(|c| {
                c.get("membership")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
        })
        .flatten()
}

/// State events by (type, state key), for the state-dependent auth checks.
pub(crate) fn by_state_key(
    pdus: &HashMap<String, Arc<Pdu>>,
) -> HashMap<(StateEventType, String), &Pdu> {
    pdus.values()
        .filter_map(|p| {
            p.state_key
                .clone()
                .map(|sk| ((StateEventType::from(p.kind.to_string()), sk), &**p))
        })
        .collect()
}
