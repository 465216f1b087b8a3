//! Server keys (Server-Server API, "Retrieving server keys"): the signed key document we
//! publish, and the key ring that fetches, verifies, caches and expires remote keys.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ganglion_core::time::now_ms;
use ganglion_rooms::ServerKey;
use ganglion_storage::{Store, server_keys::ServerKeyRow};
use ruma::{
    CanonicalJsonValue,
    signatures::{PublicKeyMap, PublicKeySet},
};
use serde_json::{Value, json};

use crate::client::{FedError, FederationClient};

/// Our key document for `/_matrix/key/v2/server`, signed by every key in it.
pub fn publish(key: &ServerKey, server_name: &str, valid_for_ms: i64) -> Value {
    let doc = json!({
        "server_name": server_name,
        "verify_keys": { &key.key_id: { "key": &key.public_base64 } },
        "old_verify_keys": {},
        "valid_until_ts": now_ms() + valid_for_ms,
    });
    let Ok(CanonicalJsonValue::Object(mut obj)) = CanonicalJsonValue::try_from(doc.clone()) else {
        return doc;
    };
    match ruma::signatures::sign_json(server_name, &key.pair, &mut obj) {
        Ok(()) => serde_json::to_value(&obj).unwrap_or(doc),
        Err(e) => {
            tracing::error!(error = %e, "cannot sign our key document");
            doc
        }
    }
}

/// A remote key as cached: public key and the time until which it may be used.
#[derive(Debug, Clone)]
struct Known {
    public: String,
    valid_until_ts: i64,
}

/// Remote servers' keys: memory, then the database, then the server itself.
#[derive(Clone, Debug)]
pub struct KeyRing {
    store: Store,
    client: FederationClient,
    cache: Arc<Mutex<HashMap<(String, String), Known>>>,
}

impl KeyRing {
    /// A key ring fetching with `client`.
    pub fn new(store: Store, client: FederationClient) -> KeyRing {
        KeyRing {
            store,
            client,
            cache: Arc::default(),
        }
    }

    /// The public key (unpadded base64) of `server`'s `key_id`, valid at `at_ms`.
    pub async fn key(&self, server: &str, key_id: &str, at_ms: i64) -> Result<String, FedError> {
        let id = (server.to_owned(), key_id.to_owned());
        if let Some(k) = self.cached(&id, at_ms) {
            return Ok(k);
        }
        if let Ok(rows) = self.store.select_server_keys(server).await {
            self.remember(&rows);
            if let Some(k) = self.cached(&id, at_ms) {
                return Ok(k);
            }
        }
        let rows = self.fetch(server).await?;
        self.remember(&rows);
        self.cached(&id, at_ms)
            .ok_or_else(|| FedError::BadResponse {
                destination: server.to_owned(),
                reason: format!("it does not publish a key {key_id} valid now"),
            })
    }

    fn cached(&self, id: &(String, String), at_ms: i64) -> Option<String> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(id)
            .filter(|k| k.valid_until_ts >= at_ms)
            .map(|k| k.public.clone())
    }

    fn remember(&self, rows: &[ServerKeyRow]) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        for r in rows {
            cache.insert(
                (r.server_name.clone(), r.key_id.clone()),
                Known {
                    public: r.public_key.clone(),
                    valid_until_ts: r.valid_until_ts,
                },
            );
        }
    }

    /// Fetches `server`'s key document directly, checks it (its name, each current key's
    /// self-signature, a validity in the future) and stores what it holds.
    pub async fn fetch(&self, server: &str) -> Result<Vec<ServerKeyRow>, FedError> {
        let doc = self.client.get(server, "/_matrix/key/v2/server").await?;
        let rows = verify_key_document(server, &doc)?;
        if let Err(e) = self.store.upsert_server_keys(&rows).await {
            tracing::warn!(%server, error = %e, "could not store fetched server keys");
        }
        tracing::info!(%server, keys = rows.len(), "fetched and verified server keys");
        Ok(rows)
    }
}

/// Checks a key document from `server` and returns its keys as rows.
pub fn verify_key_document(server: &str, doc: &Value) -> Result<Vec<ServerKeyRow>, FedError> {
    let bad = |reason: &str| FedError::BadResponse {
        destination: server.to_owned(),
        reason: format!("key document: {reason}"),
    };
    if doc.get("server_name").and_then(Value::as_str) != Some(server) {
        return Err(bad("server_name is not the server asked"));
    }
    let valid_until = doc
        .get("valid_until_ts")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad("no valid_until_ts"))?;
    let now = now_ms();
    if valid_until < now {
        return Err(bad("valid_until_ts is in the past"));
    }
    let verify_keys = doc
        .get("verify_keys")
        .and_then(Value::as_object)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| bad("no verify_keys"))?;
    let mut set = PublicKeySet::new();
    let mut rows = Vec::new();
    for (id, k) in verify_keys {
        let public = k
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("a verify key without a key"))?;
        let b64 = ruma::serde::Base64::parse(public).map_err(|_| bad("a key is not base64"))?;
        set.insert(id.clone(), b64);
        rows.push(ServerKeyRow {
            server_name: server.to_owned(),
            key_id: id.clone(),
            public_key: public.to_owned(),
            valid_until_ts: valid_until,
            fetched_ts: now,
        });
    }
    let Ok(CanonicalJsonValue::Object(obj)) = CanonicalJsonValue::try_from(doc.clone()) else {
        return Err(bad("not canonical JSON"));
    };
    // Each current key must have signed the document.
    for id in set.keys() {
        let mut only = PublicKeySet::new();
        if let Some(k) = set.get(id) {
            only.insert(id.clone(), k.clone());
        }
        let mut map = PublicKeyMap::new();
        map.insert(server.to_owned(), only);
        let mut signed = obj.clone();
        // verify_json checks every signature of the server it finds: keep just this one.
        if let Some(CanonicalJsonValue::Object(sigs)) = signed.get_mut("signatures")
            && let Some(CanonicalJsonValue::Object(mine)) = sigs.get_mut(server)
        {
            mine.retain(|k, _| k == id);
        }
        ruma::signatures::verify_json(&map, &signed)
            .map_err(|e| bad(&format!("{id} did not sign it: {e}")))?;
    }
    // Old keys verify only what was signed before they expired.
    if let Some(old) = doc.get("old_verify_keys").and_then(Value::as_object) {
        for (id, k) in old {
            if let (Some(public), Some(expired)) = (
                k.get("key").and_then(Value::as_str),
                k.get("expired_ts").and_then(Value::as_i64),
            ) {
                rows.push(ServerKeyRow {
                    server_name: server.to_owned(),
                    key_id: id.clone(),
                    public_key: public.to_owned(),
                    valid_until_ts: expired,
                    fetched_ts: now,
                });
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ServerKey {
        crate::test_key()
    }

    #[test]
    fn our_document_verifies_and_tampering_is_caught() {
        let k = key();
        let doc = publish(&k, "ours.test", 3_600_000);
        let rows = verify_key_document("ours.test", &doc).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].key_id, k.key_id);
        assert_eq!(rows[0].public_key, k.public_base64);

        assert!(verify_key_document("other.test", &doc).is_err(), "name");
        let mut forged = doc.clone();
        forged["valid_until_ts"] = json!(now_ms() + 999_999_999);
        assert!(
            verify_key_document("ours.test", &forged).is_err(),
            "signature"
        );
        let expired = publish(&k, "ours.test", -1000);
        assert!(
            verify_key_document("ours.test", &expired).is_err(),
            "expired"
        );
        let other = key();
        let mut swapped = doc;
        swapped["verify_keys"][&k.key_id]["key"] = json!(other.public_base64);
        assert!(
            verify_key_document("ours.test", &swapped).is_err(),
            "swapped key"
        );
    }
}
