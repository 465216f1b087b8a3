//! Checking a PDU that arrives from another server: its event id (the reference hash),
//! the signatures of every server that must have signed it, and its content hash.

use std::collections::BTreeMap;

use ganglion_core::{Error, ErrorKind, time::now_ms};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId,
    room_version_rules::RoomVersionRules,
    signatures::{PublicKeyMap, Verified},
};

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
