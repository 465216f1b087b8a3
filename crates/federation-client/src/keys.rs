//! Server keys (Server-Server API, "Retrieving server keys"): the signed key document we
//! publish, and the key ring that fetches, verifies, caches and expires remote keys.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use ganglion_core::config::OldSigningKey;

use crate::signing_key::ServerKey;
use ganglion_core::time::now_ms;
use ganglion_storage::{Store, server_keys::ServerKeyRow};
use ruma::{
    CanonicalJsonValue,
    signatures::{PublicKeyMap, PublicKeySet},
};
use serde_json::{Value, json};

use crate::client::{FedError, FederationClient};

/// Our key document for `/_matrix/key/v2/server`: the current key, the retired ones
/// (`old_verify_keys`), signed by the current key.
pub fn publish(
    key: &ServerKey,
    server_name: &str,
    valid_for_ms: i64,
    old: &BTreeMap<String, OldSigningKey>,
) -> Value {
    let old_keys: serde_json::Map<String, Value> = old
        .iter()
        .map(|(id, k)| {
            (
                id.clone(),
                json!({ "key": k.key, "expired_ts": k.expired_ts }),
            )
        })
        .collect();
    let doc = json!({
        "server_name": server_name,
        "verify_keys": { &key.key_id: { "key": &key.public_base64 } },
        "old_verify_keys": old_keys,
        "valid_until_ts": now_ms() + valid_for_ms,
    });
    countersign(key, server_name, &doc).unwrap_or(doc)
}

/// `doc` with our signature added to the signatures it has.
pub fn countersign(key: &ServerKey, server_name: &str, doc: &Value) -> Option<Value> {
    let Ok(CanonicalJsonValue::Object(mut obj)) = CanonicalJsonValue::try_from(doc.clone()) else {
        return None;
    };
    match ruma::signatures::sign_json(server_name, &key.pair, &mut obj) {
        Ok(()) => serde_json::to_value(&obj).ok(),
        Err(e) => {
            tracing::error!(error = %e, "cannot sign a key document");
            None
        }
    }
}

/// A remote key as cached: public key and the time until which it may be used.
#[derive(Debug, Clone)]
struct Known {
    public: String,
    valid_until_ts: i64,
}

/// Remote servers' keys: memory, then the database, then the server itself, then the
/// trusted notaries.
#[derive(Clone, Debug)]
pub struct KeyRing {
    store: Store,
    client: FederationClient,
    notaries: Arc<[String]>,
    cache: Arc<Mutex<HashMap<(String, String), Known>>>,
}

impl KeyRing {
    /// A key ring fetching with `client`, falling back to `notaries`.
    pub fn new(store: Store, client: FederationClient, notaries: Vec<String>) -> KeyRing {
        KeyRing {
            store,
            client,
            notaries: notaries.into(),
            cache: Arc::default(),
        }
    }

    /// The signed key documents we hold for `server` that are valid until at least
    /// `min_valid_until` (fetching afresh if none is), as a notary serves them.
    pub async fn documents(&self, server: &str, min_valid_until: i64) -> Vec<Value> {
        let mut docs: Vec<Value> = Vec::new();
        if let Ok(rows) = self.store.select_server_keys(server).await {
            for r in rows.iter().filter(|r| r.valid_until_ts >= min_valid_until) {
                if let Ok(v) = serde_json::from_str::<Value>(&r.key_json)
                    && v.get("valid_until_ts").and_then(Value::as_i64) == Some(r.valid_until_ts)
                    && !docs.contains(&v)
                {
                    docs.push(v);
                }
            }
        }
        if docs.is_empty()
            && let Ok(rows) = self.fetch(server).await
            && let Some(v) = rows
                .first()
                .and_then(|r| serde_json::from_str::<Value>(&r.key_json).ok())
        {
            docs.push(v);
        }
        docs
    }

    /// The public key (unpadded base64) of `server`'s `key_id`, valid at `at_ms`.
    pub async fn key(&self, server: &str, key_id: &str, at_ms: i64) -> Result<String, FedError> {
        // Our own current key needs no fetching (a signature we just made).
        if server == self.client.origin() && key_id == self.client.key().key_id {
            return Ok(self.client.key().public_base64.clone());
        }
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

    /// Fetches `server`'s key document directly (else through the notaries), checks it
    /// (its name, each current key's self-signature, a validity in the future, and the
    /// notary's signature) and stores what it holds.
    pub async fn fetch(&self, server: &str) -> Result<Vec<ServerKeyRow>, FedError> {
        let direct = async {
            let doc = self.client.get(server, "/_matrix/key/v2/server").await?;
            verify_key_document(server, &doc)
        }
        .await;
        let rows = match direct {
            Ok(rows) => rows,
            Err(e) => {
                let mut found = None;
                for notary in self.notaries.iter().filter(|n| n.as_str() != server) {
                    match self.fetch_via(notary, server).await {
                        Ok(rows) => {
                            found = Some(rows);
                            break;
                        }
                        Err(ne) => {
                            tracing::warn!(%server, %notary, error = %ne, "notary could not vouch for the keys");
                        }
                    }
                }
                found.ok_or(e)?
            }
        };
        if let Err(e) = self.store.upsert_server_keys(&rows).await {
            tracing::warn!(%server, error = %e, "could not store fetched server keys");
        }
        tracing::info!(%server, keys = rows.len(), "fetched and verified server keys");
        Ok(rows)
    }

    /// Asks `notary` for `server`'s keys; the notary's own key is fetched directly.
    async fn fetch_via(&self, notary: &str, server: &str) -> Result<Vec<ServerKeyRow>, FedError> {
        let body = json!({ "server_keys": { server: {} } });
        let answer = self
            .client
            .request(
                reqwest::Method::POST,
                notary,
                "/_matrix/key/v2/query",
                Some(&body),
            )
            .await?;
        let notary_doc = self.client.get(notary, "/_matrix/key/v2/server").await?;
        let notary_keys = verify_key_document(notary, &notary_doc)?;
        let docs = answer
            .get("server_keys")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for doc in docs {
            if doc.get("server_name").and_then(Value::as_str) != Some(server) {
                continue;
            }
            if verify_notarised(&doc, notary, &notary_keys).is_ok()
                && let Ok(rows) = verify_key_document(server, &doc)
            {
                return Ok(rows);
            }
        }
        Err(FedError::BadResponse {
            destination: notary.to_owned(),
            reason: format!("no document for {server} that both it and the notary signed"),
        })
    }
}

/// Checks that `notary` (whose verified keys are `notary_keys`) signed `doc`.
pub fn verify_notarised(
    doc: &Value,
    notary: &str,
    notary_keys: &[ServerKeyRow],
) -> Result<(), String> {
    let Ok(CanonicalJsonValue::Object(mut obj)) = CanonicalJsonValue::try_from(doc.clone()) else {
        return Err("not canonical JSON".into());
    };
    // Keep only the notary's signatures: verify_json checks every server it finds (and
    // passes when it finds none).
    match obj.get_mut("signatures") {
        Some(CanonicalJsonValue::Object(sigs)) if sigs.contains_key(notary) => {
            sigs.retain(|k, _| k == notary);
        }
        _ => return Err(format!("{notary} did not sign it")),
    }
    let mut set = PublicKeySet::new();
    for k in notary_keys {
        if let Ok(b) = ruma::serde::Base64::parse(&k.public_key) {
            set.insert(k.key_id.clone(), b);
        }
    }
    let mut map = PublicKeyMap::new();
    map.insert(notary.to_owned(), set);
    ruma::signatures::verify_json(&map, &obj).map_err(|e| e.to_string())
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
            key_json: doc.to_string(),
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
        if let Some(CanonicalJsonValue::Object(sigs)) = signed.get_mut("signatures") {
            // A notary's signature next to the server's is checked elsewhere.
            sigs.retain(|k, _| k == server);
            if let Some(CanonicalJsonValue::Object(mine)) = sigs.get_mut(server) {
                mine.retain(|k, _| k == id);
            }
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
                    key_json: doc.to_string(),
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
        let doc = publish(&k, "ours.test", 3_600_000, &BTreeMap::new());
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
        let expired = publish(&k, "ours.test", -1000, &BTreeMap::new());
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

    #[test]
    fn old_keys_are_published_and_kept_with_their_expiry() {
        let k = key();
        let retired = key();
        let mut old = BTreeMap::new();
        old.insert(
            retired.key_id.clone(),
            OldSigningKey {
                key: retired.public_base64.clone(),
                expired_ts: 1_700_000_000_000,
            },
        );
        let doc = publish(&k, "ours.test", 3_600_000, &old);
        let rows = verify_key_document("ours.test", &doc).unwrap_or_else(|e| panic!("{e}"));
        let old_row = rows
            .iter()
            .find(|r| r.key_id == retired.key_id)
            .unwrap_or_else(|| panic!("old key missing: {doc}"));
        assert_eq!(old_row.valid_until_ts, 1_700_000_000_000);
        assert_eq!(old_row.public_key, retired.public_base64);
    }

    #[test]
    fn a_notarised_document_needs_the_notary_signature() {
        let origin = key();
        let notary = key();
        let doc = publish(&origin, "origin.test", 3_600_000, &BTreeMap::new());
        let notary_rows = verify_key_document(
            "notary.test",
            &publish(&notary, "notary.test", 3_600_000, &BTreeMap::new()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            verify_notarised(&doc, "notary.test", &notary_rows).is_err(),
            "unsigned by the notary"
        );
        let signed = countersign(&notary, "notary.test", &doc).unwrap_or_else(|| panic!("signs"));
        verify_notarised(&signed, "notary.test", &notary_rows).unwrap_or_else(|e| panic!("{e}"));
        // The origin's own signature still verifies after the notary's was added.
        verify_key_document("origin.test", &signed).unwrap_or_else(|e| panic!("{e}"));
        let other = key();
        let by_other = countersign(&other, "notary.test", &doc).unwrap_or_else(|| panic!("signs"));
        assert!(
            verify_notarised(&by_other, "notary.test", &notary_rows).is_err(),
            "wrong notary key"
        );
    }
}
