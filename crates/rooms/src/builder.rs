//! Building, hashing and signing a new local PDU (spec: Server-Server API, "PDUs";
//! room version documents for the per-version formats).

use std::{collections::HashMap, sync::Arc};

use ganglion_core::{Error, ErrorKind, MAX_PDU_BYTES, Pdu, Result};
use ganglion_federation_client::ServerKey;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, RoomId, UserId,
    room_version_rules::{
        EventIdFormatVersion, EventsReferenceFormatVersion, RoomIdFormatVersion, RoomVersionRules,
    },
};

/// What a client (or the server itself) asks to send.
#[derive(Debug, Clone)]
pub struct EventTemplate {
    /// Event type.
    pub kind: String,
    /// Content (a JSON object).
    pub content: serde_json::Value,
    /// State key, for state events.
    pub state_key: Option<String>,
    /// What a redaction redacts.
    pub redacts: Option<OwnedEventId>,
}

impl EventTemplate {
    /// A state event template.
    pub fn state(kind: &str, state_key: &str, content: serde_json::Value) -> Self {
        Self {
            kind: kind.to_owned(),
            content,
            state_key: Some(state_key.to_owned()),
            redacts: None,
        }
    }
    /// A message-like event template.
    pub fn message(kind: &str, content: serde_json::Value) -> Self {
        Self {
            kind: kind.to_owned(),
            content,
            state_key: None,
            redacts: None,
        }
    }
}

/// Everything the builder needs besides the template.
pub struct BuildContext<'a> {
    /// The room version's rules.
    pub rules: &'a RoomVersionRules,
    /// The room (None only for a room-v12 `m.room.create`, whose id derives from it).
    pub room_id: Option<&'a RoomId>,
    /// Sender.
    pub sender: &'a UserId,
    /// The events to reference as `prev_events`.
    pub prev_events: &'a [OwnedEventId],
    /// The events to reference as `auth_events`.
    pub auth_events: &'a [OwnedEventId],
    /// Depth.
    pub depth: i64,
    /// `origin_server_ts`.
    pub origin_server_ts: i64,
    /// The referenced events, for room versions that reference `[id, hashes]` pairs.
    pub referenced: &'a HashMap<OwnedEventId, Arc<Pdu>>,
    /// The signing server's name.
    pub server_name: &'a str,
    /// Its key.
    pub key: &'a ServerKey,
}

fn to_canonical(v: serde_json::Value, what: &str) -> Result<CanonicalJsonValue> {
    CanonicalJsonValue::try_from(v)
        .map_err(|e| Error::bad_json(format!("{what} is not canonical JSON: {e}")))
}

fn reference(id: &EventId, ctx: &BuildContext<'_>) -> CanonicalJsonValue {
    match ctx.rules.events_reference_format {
        EventsReferenceFormatVersion::V1 => {
            let hashes = ctx
                .referenced
                .get(id)
                .and_then(|p| serde_json::from_str::<serde_json::Value>(&p.json).ok())
                .and_then(|v| v.get("hashes").cloned())
                .and_then(|h| CanonicalJsonValue::try_from(h).ok())
                .unwrap_or_else(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
            CanonicalJsonValue::Array(vec![CanonicalJsonValue::String(id.to_string()), hashes])
        }
        _ => CanonicalJsonValue::String(id.to_string()),
    }
}

/// Builds, hashes and signs a PDU. Fails with `M_TOO_LARGE` beyond 65,536 bytes and
/// `M_BAD_JSON` for content that is not canonical JSON (floats, huge integers).
pub fn build_pdu(tpl: &EventTemplate, ctx: &BuildContext<'_>) -> Result<Pdu> {
    if !tpl.content.is_object() {
        return Err(Error::bad_json("content must be a JSON object"));
    }
    let mut obj = CanonicalJsonObject::new();
    let content = to_canonical(tpl.content.clone(), "content")?;
    obj.insert("content".into(), content);
    obj.insert("type".into(), CanonicalJsonValue::String(tpl.kind.clone()));
    obj.insert(
        "sender".into(),
        CanonicalJsonValue::String(ctx.sender.to_string()),
    );
    obj.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(ctx.origin_server_ts.try_into().unwrap_or_default()),
    );
    obj.insert(
        "depth".into(),
        CanonicalJsonValue::Integer(ctx.depth.try_into().unwrap_or_default()),
    );
    obj.insert(
        "prev_events".into(),
        CanonicalJsonValue::Array(
            ctx.prev_events
                .iter()
                .map(|id| reference(id, ctx))
                .collect(),
        ),
    );
    obj.insert(
        "auth_events".into(),
        CanonicalJsonValue::Array(
            ctx.auth_events
                .iter()
                .map(|id| reference(id, ctx))
                .collect(),
        ),
    );
    if let Some(sk) = &tpl.state_key {
        obj.insert("state_key".into(), CanonicalJsonValue::String(sk.clone()));
    }
    if let Some(redacts) = &tpl.redacts {
        // From room v11 `redacts` lives in content (the template's content carries it);
        // before, it is a top-level key.
        if !ctx.rules.redaction.content_field_redacts {
            obj.insert(
                "redacts".into(),
                CanonicalJsonValue::String(redacts.to_string()),
            );
        }
    }
    let is_v12_create =
        tpl.kind == "m.room.create" && ctx.rules.room_id_format == RoomIdFormatVersion::V2;
    if let Some(room_id) = ctx.room_id.filter(|_| !is_v12_create) {
        obj.insert(
            "room_id".into(),
            CanonicalJsonValue::String(room_id.to_string()),
        );
    }
    let v1_event_id = match ctx.rules.event_id_format {
        EventIdFormatVersion::V1 => {
            let id = EventId::new_v1(
                &ruma::ServerName::parse(ctx.server_name)
                    .map_err(|e| Error::internal(e.to_string()))?,
            );
            obj.insert(
                "event_id".into(),
                CanonicalJsonValue::String(id.to_string()),
            );
            Some(id)
        }
        _ => None,
    };

    // Hashes and signatures add well under 1 KiB; refuse what is already too large.
    let unsigned_len = serde_json::to_string(&obj)
        .map_err(|e| Error::internal(e.to_string()))?
        .len();
    if unsigned_len > MAX_PDU_BYTES {
        return Err(Error::new(
            ErrorKind::TooLarge,
            "event is larger than 65536 bytes",
        ));
    }
    ruma::signatures::hash_and_sign_event(
        ctx.server_name,
        &ctx.key.pair,
        &mut obj,
        &ctx.rules.redaction,
    )
    .map_err(|e| match e {
        ruma::signatures::JsonError::PduTooLarge => {
            Error::new(ErrorKind::TooLarge, "event is larger than 65536 bytes")
        }
        other => Error::internal(format!("signing failed: {other}")),
    })?;

    let json = serde_json::to_string(&obj).map_err(|e| Error::internal(e.to_string()))?;
    if json.len() > MAX_PDU_BYTES {
        return Err(Error::new(
            ErrorKind::TooLarge,
            "event is larger than 65536 bytes",
        ));
    }
    let event_id = match v1_event_id {
        Some(id) => id,
        None => {
            let hash = ruma::signatures::reference_hash(&obj, ctx.rules)
                .map_err(|e| Error::new(ErrorKind::TooLarge, e.to_string()))?;
            EventId::new_v2_or_v3(&hash).map_err(|e| Error::internal(e.to_string()))?
        }
    };
    let room_id: OwnedRoomId = match ctx.room_id {
        Some(r) if !is_v12_create => r.to_owned(),
        _ => {
            let hash = event_id.as_str().trim_start_matches('$');
            RoomId::new_v2(hash).map_err(|e| Error::internal(e.to_string()))?
        }
    };
    let json: Arc<str> = json.into();
    let mut pdu = Pdu::from_json(json, Some(event_id), Some(room_id))
        .map_err(|e| Error::internal(e.to_string()))?;
    if let Some(redacts) = &tpl.redacts {
        pdu.redacts = Some(redacts.clone());
    }
    Ok(pdu)
}
