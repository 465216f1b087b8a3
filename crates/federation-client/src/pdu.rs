//! Checking a PDU that arrives from another server: its event id (the reference hash),
//! the signatures of every server that must have signed it, and its content hash
//! (spec: "Checks performed on receipt of a PDU"). An event whose content hash does not
//! match is redacted where the spec allows it ([`check_pdu`]).

use std::collections::BTreeMap;

use ganglion_core::{Error, ErrorKind, Result, time::now_ms};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId,
    room_version_rules::RoomVersionRules,
    signatures::{PublicKeyMap, Verified},
};

use serde_json::Value;

use crate::keys::KeyRing;

/// The event id of a PDU in a room version whose ids are reference hashes (v3+).
pub fn event_id_of(
    obj: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<OwnedEventId, Error> {
    let hash = ruma::signatures::reference_hash(obj, rules)
        .map_err(|e| Error::bad_json(format!("not a PDU: {e}")))?;
    EventId::new_v2_or_v3(&hash).map_err(|e| Error::bad_json(e.to_string()))
}

/// Checks the signatures of every server that must have signed `obj` (keys fetched
/// through `keys`) and its content hash. `Verified::Signatures` means the hash did not
/// match (the event must then be redacted, or refused where a full event is required).
pub async fn verify(
    keys: &KeyRing,
    obj: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<Verified, Error> {
    let servers =
        ruma::signatures::required_server_signatures_to_verify_event(obj, &rules.signatures)
            .map_err(|e| Error::bad_json(format!("not a PDU: {e}")))?;
    let Some(CanonicalJsonValue::Object(sigs)) = obj.get("signatures") else {
        return Err(Error::new(
            ErrorKind::InvalidSignature,
            "the event is not signed",
        ));
    };
    let mut map = PublicKeyMap::new();
    for server in servers {
        let server = server.as_str();
        let Some(CanonicalJsonValue::Object(by_key)) = sigs.get(server) else {
            return Err(Error::new(
                ErrorKind::InvalidSignature,
                format!("the event is not signed by {server}"),
            ));
        };
        let mut set = BTreeMap::new();
        for key_id in by_key.keys() {
            if let Ok(public) = keys.key(server, key_id, now_ms()).await
                && let Ok(b) = ruma::serde::Base64::parse(&public)
            {
                set.insert(key_id.clone(), b);
            }
        }
        if set.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidSignature,
                format!("no key of {server} that signed the event could be fetched"),
            ));
        }
        map.insert(server.to_owned(), set);
    }
    ruma::signatures::verify_event(&map, obj, rules).map_err(|e| {
        Error::new(
            ErrorKind::InvalidSignature,
            format!("bad event signature: {e}"),
        )
    })
}

/// Checked events with their ids.
pub type Events = Vec<(OwnedEventId, CanonicalJsonObject)>;

/// The PDUs of an answer that pass the checks (id, signatures), each with its id; one
/// whose content hash does not match comes back redacted. The others are dropped and
/// logged.
pub async fn checked_pdus(
    keys: &KeyRing,
    rules: &RoomVersionRules,
    pdus: Vec<Value>,
    from: &str,
) -> Events {
    let mut out = Events::new();
    for v in pdus {
        let Ok(CanonicalJsonValue::Object(obj)) = CanonicalJsonValue::try_from(v) else {
            tracing::warn!(server = %from, "a PDU that is not a JSON object");
            continue;
        };
        match check_pdu(keys, rules, obj).await {
            Ok(checked) => out.push(checked),
            Err(e) => tracing::warn!(server = %from, error = %e.message, "refused a PDU"),
        }
    }
    out
}

/// One PDU checked: its id, and the event (redacted when its content hash is wrong).
pub async fn check_pdu(
    keys: &KeyRing,
    rules: &RoomVersionRules,
    obj: CanonicalJsonObject,
) -> Result<(OwnedEventId, CanonicalJsonObject)> {
    let id = event_id_of(&obj, rules)?;
    match verify(keys, &obj, rules).await? {
        Verified::All => Ok((id, obj)),
        Verified::Signatures => {
            tracing::warn!(event = %id, "content hash mismatch: the event is redacted");
            let redacted = ruma::canonical_json::redact(obj, &rules.redaction, None)
                .map_err(|e| Error::bad_json(format!("cannot redact: {e}")))?;
            Ok((id, redacted))
        }
    }
}
