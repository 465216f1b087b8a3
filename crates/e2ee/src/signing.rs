//! Cross-signing: `/keys/device_signing/upload` and `/keys/signatures/upload` (spec:
//! Client-Server API, "Cross-signing"), and the signature checks they need.

use std::collections::BTreeMap;

use ganglion_core::{Error, ErrorKind, Result};
use ganglion_rooms::storage_error;
use ganglion_storage::e2e_keys::SignatureRow;
use ruma::{
    CanonicalJsonValue, OwnedUserId, UserId,
    encryption::{CrossSigningKey, KeyUsage},
    serde::{Base64, Raw},
    signatures::{
        SigningKeyAlgorithm, to_canonical_json_string_for_signing, verify_canonical_json_bytes,
    },
};
use serde_json::{Map, Value, json};

use crate::keys::Keys;

/// The three cross-signing keys of an upload, any of which may be absent.
#[derive(Debug, Default)]
pub struct SigningKeysUpload<'a> {
    /// The master key.
    pub master: Option<&'a Raw<CrossSigningKey>>,
    /// The self-signing key (signs the user's own devices).
    pub self_signing: Option<&'a Raw<CrossSigningKey>>,
    /// The user-signing key (signs other users' master keys).
    pub user_signing: Option<&'a Raw<CrossSigningKey>>,
}

/// Whether an upload of cross-signing keys needs user-interactive auth.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthNeeded {
    /// The first upload, or keys identical to those stored (MSC3967).
    No,
    /// Keys that replace existing ones.
    Yes,
}

/// A JSON text column as an object.
pub(crate) fn parse_object(what: &'static str, text: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::internal(format!("{what}: not an object"))),
        Err(e) => Err(Error::internal(format!("{what}: {e}"))),
    }
}

/// The public key (unpadded base64) of a cross-signing key object: the one value of its
/// `keys`.
pub(crate) fn public_key_id(key: &Map<String, Value>) -> Option<String> {
    let keys = key.get("keys")?.as_object()?;
    if keys.len() != 1 {
        return None;
    }
    keys.values().next()?.as_str().map(str::to_owned)
}

/// Adds to `key` the stored signatures on (`target_user`, `target_key_id`) that
/// `viewer` may see: those the owner made, and (for a local user) those they made.
pub(crate) fn merge_signatures(
    key: &mut Map<String, Value>,
    rows: &[SignatureRow],
    target_user: &str,
    target_key_id: &str,
    viewer: crate::keys::Viewer<'_>,
) {
    for (t_user, t_key, signer, signer_key, signature) in rows {
        if t_user != target_user || t_key != target_key_id {
            continue;
        }
        let by_viewer = matches!(viewer, crate::keys::Viewer::User(r) if signer == r.as_str());
        if signer != target_user && !by_viewer {
            continue;
        }
        let sigs = key
            .entry("signatures")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(sigs) = sigs else { continue };
        let by = sigs
            .entry(signer.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(by) = by {
            by.insert(signer_key.clone(), Value::String(signature.clone()));
        }
    }
}

/// The canonical JSON a signature covers: the object without `signatures` and `unsigned`.
fn signed_bytes(object: &Map<String, Value>) -> Option<String> {
    let CanonicalJsonValue::Object(canonical) =
        CanonicalJsonValue::try_from(Value::Object(object.clone())).ok()?
    else {
        return None;
    };
    to_canonical_json_string_for_signing(&canonical).ok()
}

/// Whether `object` carries a valid ed25519 signature by `signer` with the key
/// `ed25519:<key_name>` whose public key is `public_key` (unpadded base64).
pub(crate) fn has_valid_signature(
    object: &Map<String, Value>,
    signer: &str,
    key_name: &str,
    public_key: &str,
) -> bool {
    let Some(signature) = signature_of(object, signer, key_name) else {
        return false;
    };
    let (Ok(public), Ok(signature)) = (
        Base64::<ruma::serde::base64::Standard>::parse(public_key),
        Base64::<ruma::serde::base64::Standard>::parse(signature),
    ) else {
        return false;
    };
    let Some(bytes) = signed_bytes(object) else {
        return false;
    };
    verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        public.as_bytes(),
        signature.as_bytes(),
        bytes.as_bytes(),
    )
    .is_ok()
}

/// The signature text `signer` made with `ed25519:<key_name>`, if present.
fn signature_of<'a>(
    object: &'a Map<String, Value>,
    signer: &str,
    key_name: &str,
) -> Option<&'a str> {
    object
        .get("signatures")?
        .get(signer)?
        .get(format!("ed25519:{key_name}"))?
        .as_str()
}

/// A cross-signing key of the caller, checked for shape: it names the caller, has the
/// usage asked for and exactly one public key. Returns (JSON as sent, object, public key).
fn check_cross_signing_key(
    raw: &Raw<CrossSigningKey>,
    user: &UserId,
    usage: KeyUsage,
) -> Result<(String, Map<String, Value>, String)> {
    let key: CrossSigningKey = raw
        .deserialize()
        .map_err(|e| Error::bad_json(format!("cross-signing key: {e}")))?;
    if key.user_id != user {
        return Err(Error::invalid_param(
            "a cross-signing key must belong to the authenticated user",
        ));
    }
    if !key.usage.contains(&usage) {
        return Err(Error::invalid_param(format!(
            "the key must have usage {}",
            usage.as_str()
        )));
    }
    let text = raw.json().get().to_owned();
    let object =
        parse_object("cross-signing key", &text).map_err(|_| Error::bad_json("not an object"))?;
    let public = public_key_id(&object)
        .ok_or_else(|| Error::invalid_param("a cross-signing key must have exactly one key"))?;
    Ok((text, object, public))
}

fn failure(status: u16, errcode: &str, message: &str) -> Value {
    json!({ "status": status, "errcode": errcode, "message": message })
}

impl Keys {
    /// Whether uploading these cross-signing keys needs user-interactive auth: not for the
    /// first master key, nor for keys identical to those stored (as Synapse, MSC3967).
    pub async fn signing_upload_needs_auth(
        &self,
        user: &UserId,
        upload: &SigningKeysUpload<'_>,
    ) -> Result<AuthNeeded> {
        let stored = self
            .store()
            .select_cross_signing_keys(&[user.to_string()])
            .await
            .map_err(storage_error)?;
        if !stored.iter().any(|k| k.1 == "master") {
            return Ok(AuthNeeded::No);
        }
        let same = |raw: Option<&Raw<CrossSigningKey>>, kind: &str| {
            raw.is_none_or(|r| {
                stored.iter().any(|(_, t, json)| {
                    t == kind
                        && serde_json::from_str::<Value>(json).ok()
                            == serde_json::from_str::<Value>(r.json().get()).ok()
                })
            })
        };
        if same(upload.master, "master")
            && same(upload.self_signing, "self_signing")
            && same(upload.user_signing, "user_signing")
        {
            Ok(AuthNeeded::No)
        } else {
            Ok(AuthNeeded::Yes)
        }
    }

    /// `POST /keys/device_signing/upload` once authorised: stores the caller's
    /// cross-signing keys. The self-signing and user-signing keys must be signed by the
    /// master key (the one uploaded with them, or the stored one): 400
    /// `M_INVALID_SIGNATURE` otherwise, and nothing is stored.
    pub async fn upload_signing_keys(
        &self,
        user: &UserId,
        upload: &SigningKeysUpload<'_>,
    ) -> Result<()> {
        let mut rows: Vec<(&str, String)> = Vec::new();
        let master_public = match upload.master {
            Some(raw) => {
                let (text, _, public) = check_cross_signing_key(raw, user, KeyUsage::Master)?;
                rows.push(("master", text));
                public
            }
            None => {
                let stored = self
                    .store()
                    .select_cross_signing_keys(&[user.to_string()])
                    .await
                    .map_err(storage_error)?;
                let master = stored
                    .iter()
                    .find(|k| k.1 == "master")
                    .ok_or_else(|| Error::invalid_param("no master key to sign with"))?;
                public_key_id(&parse_object("e2e_cross_signing_keys", &master.2)?)
                    .ok_or_else(|| Error::internal("stored master key has no key"))?
            }
        };
        for (raw, usage, kind) in [
            (upload.self_signing, KeyUsage::SelfSigning, "self_signing"),
            (upload.user_signing, KeyUsage::UserSigning, "user_signing"),
        ] {
            let Some(raw) = raw else { continue };
            let (text, object, _) = check_cross_signing_key(raw, user, usage)?;
            if !has_valid_signature(&object, user.as_str(), &master_public, &master_public) {
                return Err(Error::new(
                    ErrorKind::BadSignature,
                    format!("the {kind} key is not signed by the master key"),
                ));
            }
            rows.push((kind, text));
        }
        if rows.is_empty() {
            return Ok(());
        }
        self.store()
            .upsert_cross_signing_keys(user.as_str(), &rows)
            .await
            .map_err(storage_error)?;
        // Other servers hear of the master and self-signing keys, never the user-signing key.
        if upload.master.is_some() || upload.self_signing.is_some() {
            self.device_lists()
                .record_signing_key_change(self.store(), user.as_str())
                .await?;
        } else {
            self.device_lists()
                .record_device_list_change(self.store(), &[user.to_string()])
                .await?;
        }
        Ok(())
    }

    /// `POST /keys/signatures/upload`: checks and stores signatures the caller made: on
    /// their own devices (with their self-signing key), on their own master key (with one
    /// of their devices), and on other users' master keys (with their user-signing key).
    /// Each signed object that fails is reported in `failures` (400
    /// `M_INVALID_SIGNATURE`, or 404 `M_NOT_FOUND` for an unknown key), and the others are
    /// stored.
    pub async fn upload_signatures(
        &self,
        user: &UserId,
        signed: &BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
    ) -> Result<BTreeMap<String, BTreeMap<String, Value>>> {
        let me = user.to_string();
        let mut targets: Vec<String> = signed.keys().map(ToString::to_string).collect();
        if !targets.contains(&me) {
            targets.push(me.clone());
        }
        let cross = self
            .store()
            .select_cross_signing_keys(&targets)
            .await
            .map_err(storage_error)?;
        let public_of = |owner: &str, kind: &str| {
            cross
                .iter()
                .find(|(u, t, _)| u == owner && t == kind)
                .and_then(|(_, _, j)| parse_object("e2e_cross_signing_keys", j).ok())
                .and_then(|o| public_key_id(&o))
        };
        let my_devices = self
            .store()
            .select_device_keys(std::slice::from_ref(&me))
            .await
            .map_err(storage_error)?;
        let mut failures: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
        let mut rows: Vec<SignatureRow> = Vec::new();
        for (target, objects) in signed {
            for (key_id, object) in objects {
                let fail = |f: &mut BTreeMap<String, BTreeMap<String, Value>>, v: Value| {
                    f.entry(target.to_string())
                        .or_default()
                        .insert(key_id.clone(), v);
                };
                let Value::Object(object) = object else {
                    fail(
                        &mut failures,
                        failure(400, "M_BAD_JSON", "not a JSON object"),
                    );
                    continue;
                };
                let checked = if *target == *user {
                    if let Some(device) = my_devices.iter().find(|d| &d.device_id == key_id) {
                        // One of my devices, signed by my self-signing key; the signed
                        // object must be the device's keys as stored.
                        match public_of(&me, "self_signing") {
                            Some(ssk)
                                if same_signed_content(object, &device.key_json)
                                    && has_valid_signature(object, &me, &ssk, &ssk) =>
                            {
                                Ok(format!("ed25519:{ssk}"))
                            }
                            Some(_) => {
                                Err(failure(400, "M_INVALID_SIGNATURE", "Invalid signature"))
                            }
                            None => Err(failure(400, "M_INVALID_SIGNATURE", "no self-signing key")),
                        }
                    } else if public_of(&me, "master").as_deref() == Some(key_id.as_str()) {
                        // My master key, signed by one of my devices.
                        let by_device = my_devices.iter().find_map(|d| {
                            let keys = parse_object("e2e_device_keys", &d.key_json).ok()?;
                            let public = keys
                                .get("keys")?
                                .get(format!("ed25519:{}", d.device_id))?
                                .as_str()?
                                .to_owned();
                            has_valid_signature(object, &me, &d.device_id, &public)
                                .then(|| format!("ed25519:{}", d.device_id))
                        });
                        let stored_master = cross
                            .iter()
                            .find(|(u, t, _)| *u == me && t == "master")
                            .map(|(_, _, j)| j.as_str())
                            .unwrap_or_default();
                        match by_device {
                            Some(k) if same_signed_content(object, stored_master) => Ok(k),
                            _ => Err(failure(400, "M_INVALID_SIGNATURE", "Invalid signature")),
                        }
                    } else {
                        Err(failure(404, "M_NOT_FOUND", "Not a known device or key"))
                    }
                } else {
                    // Another user's master key, signed by my user-signing key.
                    let target_s = target.to_string();
                    match (
                        public_of(&target_s, "master"),
                        public_of(&me, "user_signing"),
                    ) {
                        (Some(master), Some(usk)) if master == *key_id => {
                            let stored_master = cross
                                .iter()
                                .find(|(u, t, _)| *u == target_s && t == "master")
                                .map(|(_, _, j)| j.as_str())
                                .unwrap_or_default();
                            if same_signed_content(object, stored_master)
                                && has_valid_signature(object, &me, &usk, &usk)
                            {
                                Ok(format!("ed25519:{usk}"))
                            } else {
                                Err(failure(400, "M_INVALID_SIGNATURE", "Invalid signature"))
                            }
                        }
                        (_, None) => {
                            Err(failure(400, "M_INVALID_SIGNATURE", "no user-signing key"))
                        }
                        _ => Err(failure(404, "M_NOT_FOUND", "Not a known key")),
                    }
                };
                match checked {
                    Ok(signer_key) => {
                        let Some(signature) = object
                            .get("signatures")
                            .and_then(|s| s.get(&me))
                            .and_then(|s| s.get(&signer_key))
                            .and_then(Value::as_str)
                        else {
                            continue;
                        };
                        rows.push((
                            target.to_string(),
                            key_id.clone(),
                            me.clone(),
                            signer_key,
                            signature.to_owned(),
                        ));
                    }
                    Err(f) => fail(&mut failures, f),
                }
            }
        }
        if !rows.is_empty() {
            self.store()
                .upsert_signatures(&rows)
                .await
                .map_err(storage_error)?;
            // Every signature stored is the caller's: on their own keys, or (with their
            // user-signing key) on someone else's, which changes what their own devices
            // see. Either way it is the caller's device list that changed.
            self.device_lists()
                .record_device_list_change(self.store(), std::slice::from_ref(&me))
                .await?;
        }
        Ok(failures)
    }
}

/// Whether a signed object has the same signed content as the stored JSON text (the
/// signatures and `unsigned` may differ).
fn same_signed_content(object: &Map<String, Value>, stored: &str) -> bool {
    let Ok(stored) = parse_object("stored key", stored) else {
        return false;
    };
    match (signed_bytes(object), signed_bytes(&stored)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}
