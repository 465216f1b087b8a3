//! A fake remote homeserver's identity: its server name, its ed25519 signing key, the key
//! document it publishes, and the signing it does (X-Matrix request headers, PDU hashes and
//! signatures, event ids). Everything here follows the Server-Server API and is done with
//! ruma's canonical JSON and signing, the same code any ruma-based server trusts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ruma::signatures::{Ed25519KeyPair, KeyPair};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, room_version_rules::RoomVersionRules};
use serde_json::{Value, json};

use crate::Result;

/// How long the published key document says the key is valid. Both targets cache it; a run
/// never lasts this long.
const KEY_VALID_FOR: Duration = Duration::from_secs(24 * 3600);

/// One fake server's name and signing key.
pub struct Identity {
    /// The server name, `localhost:PORT`.
    pub name: String,
    pair: Ed25519KeyPair,
    key_id: String,
    /// The signed `/_matrix/key/v2/server` answer, made once.
    key_document: Value,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Identity {
    /// A fresh key for `name`.
    pub fn generate(name: &str) -> Result<Identity> {
        let version = format!("lg{:06x}", rand::random::<u32>() & 0xff_ffff);
        let der = Ed25519KeyPair::generate();
        let pair = Ed25519KeyPair::from_der(&der, version.clone())
            .map_err(|e| format!("ed25519 key: {e}"))?;
        let key_id = format!("ed25519:{version}");
        let public = ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(
            pair.public_key().to_vec(),
        )
        .encode();
        let doc = json!({
            "server_name": name,
            "verify_keys": { &key_id: { "key": public } },
            "old_verify_keys": {},
            "valid_until_ts": now_ms() + KEY_VALID_FOR.as_millis() as u64,
        });
        let CanonicalJsonValue::Object(mut obj) = CanonicalJsonValue::try_from(doc)? else {
            return Err("the key document is not an object".into());
        };
        ruma::signatures::sign_json(name, &pair, &mut obj)?;
        let key_document = serde_json::to_value(&obj)?;
        Ok(Identity {
            name: name.to_owned(),
            pair,
            key_id,
            key_document,
        })
    }

    /// The signed key document (`GET /_matrix/key/v2/server`).
    pub fn key_document(&self) -> &Value {
        &self.key_document
    }

    /// The `Authorization: X-Matrix …` value for a request to `destination`: the signature
    /// covers the canonical JSON of method, uri (path and query exactly as sent), origin,
    /// destination and the body, if any (spec: "Request Authentication").
    pub fn authorization(
        &self,
        destination: &str,
        method: &str,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<String> {
        let mut obj = CanonicalJsonObject::new();
        let s = |v: &str| CanonicalJsonValue::String(v.to_owned());
        obj.insert("method".into(), s(method));
        obj.insert("uri".into(), s(uri));
        obj.insert("origin".into(), s(&self.name));
        obj.insert("destination".into(), s(destination));
        if let Some(body) = body {
            obj.insert(
                "content".into(),
                CanonicalJsonValue::try_from(body.clone())?,
            );
        }
        let json = ruma::signatures::to_canonical_json_string_for_signing(&obj)?;
        let sig = self.pair.sign(json.as_bytes());
        Ok(format!(
            "X-Matrix origin=\"{}\",destination=\"{destination}\",key=\"{}\",sig=\"{}\"",
            self.name,
            self.key_id,
            sig.base64()
        ))
    }

    /// Adds the content hash and this server's signature to a PDU and returns its event id
    /// (the reference hash, room versions 3 and later).
    pub fn hash_and_sign(
        &self,
        pdu: &mut CanonicalJsonObject,
        rules: &RoomVersionRules,
    ) -> Result<String> {
        ruma::signatures::hash_and_sign_event(&self.name, &self.pair, pdu, &rules.redaction)?;
        event_id_of(pdu, rules)
    }
}

/// The event id of a PDU: `$` and its reference hash (room versions 3 and later).
pub fn event_id_of(pdu: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<String> {
    Ok(format!(
        "${}",
        ruma::signatures::reference_hash(pdu, rules)?
    ))
}

/// A JSON value as a canonical JSON object (PDUs, templates).
pub fn canonical_object(v: Value) -> Result<CanonicalJsonObject> {
    match CanonicalJsonValue::try_from(v)? {
        CanonicalJsonValue::Object(o) => Ok(o),
        _ => Err("expected a JSON object".into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ruma::signatures::{PublicKeyMap, PublicKeySet, Verified};

    use super::*;

    #[test]
    fn signed_pdus_verify_and_ids_are_reference_hashes() {
        let id = Identity::generate("localhost:1234").unwrap();
        let rules = ruma::RoomVersionId::V11.rules().unwrap();
        let mut pdu = canonical_object(json!({
            "type": "m.room.message", "room_id": "!r:localhost:1", "sender": "@u:localhost:1234",
            "content": {"msgtype": "m.text", "body": "hi"}, "origin_server_ts": 1, "depth": 3,
            "prev_events": ["$a"], "auth_events": ["$b"],
        }))
        .unwrap();
        let event_id = id.hash_and_sign(&mut pdu, &rules).unwrap();
        assert!(
            event_id.starts_with('$') && event_id.len() == 44,
            "{event_id}"
        );
        let key = id.key_document()["verify_keys"][&id.key_id]["key"]
            .as_str()
            .unwrap();
        let mut set = PublicKeySet::new();
        set.insert(id.key_id.clone(), ruma::serde::Base64::parse(key).unwrap());
        let mut map = PublicKeyMap::new();
        map.insert(id.name.clone(), set);
        assert!(matches!(
            ruma::signatures::verify_event(&map, &pdu, &rules),
            Ok(Verified::All)
        ));
        // The key document verifies with its own key.
        let doc = canonical_object(id.key_document().clone()).unwrap();
        assert!(ruma::signatures::verify_json(&map, &doc).is_ok());
    }

    #[test]
    fn authorization_header_verifies() {
        let id = Identity::generate("localhost:1234").unwrap();
        let body = json!({"a": 1});
        let h = id
            .authorization(
                "localhost:99",
                "PUT",
                "/_matrix/federation/v1/send/1",
                Some(&body),
            )
            .unwrap();
        let sig = h.split("sig=\"").nth(1).unwrap().trim_end_matches('"');
        let mut obj = canonical_object(json!({
            "method": "PUT", "uri": "/_matrix/federation/v1/send/1", "origin": "localhost:1234",
            "destination": "localhost:99", "content": body,
            "signatures": {"localhost:1234": {&id.key_id: sig}},
        }))
        .unwrap();
        let key = id.key_document()["verify_keys"][&id.key_id]["key"]
            .as_str()
            .unwrap();
        let mut set = PublicKeySet::new();
        set.insert(id.key_id.clone(), ruma::serde::Base64::parse(key).unwrap());
        let mut map = PublicKeyMap::new();
        map.insert(id.name.clone(), set);
        assert!(ruma::signatures::verify_json(&map, &obj).is_ok());
        obj.insert("uri".into(), CanonicalJsonValue::String("/other".into()));
        assert!(ruma::signatures::verify_json(&map, &obj).is_err());
    }
}
