//! Device keys and one-time keys: `/keys/upload`, `/keys/query`, `/keys/claim` and
//! `/keys/changes` (spec: Client-Server API, "End-to-End Encryption", "Key management
//! API").

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ganglion_core::{Error, Result};
use ganglion_federation_client::Federation;
use ganglion_rooms::{storage_error, streams::StreamWriter};
use ganglion_storage::Store;
use ruma::{
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedOneTimeKeyId, OwnedServerName, OwnedUserId, UInt,
    UserId,
    encryption::{DeviceKeys, OneTimeKey},
    serde::Raw,
};
use serde_json::{Map, Value};

use crate::signing::{merge_signatures, parse_object};

/// What `/keys/query` answers, before it becomes ruma's response.
#[derive(Debug, Default)]
pub struct QueryResult {
    /// `device_keys`: user → device → signed keys (with `unsigned.device_display_name`).
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Value>>,
    /// `master_keys`.
    pub master_keys: BTreeMap<OwnedUserId, Value>,
    /// `self_signing_keys`.
    pub self_signing_keys: BTreeMap<OwnedUserId, Value>,
    /// `user_signing_keys` (the requester's own only).
    pub user_signing_keys: BTreeMap<OwnedUserId, Value>,
    /// `failures`: server → error.
    pub failures: BTreeMap<String, Value>,
}

/// Claimed keys: user → device → key id → key.
pub type Claimed = BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, BTreeMap<String, Value>>>;

/// The key service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Keys {
    store: Store,
    server_name: OwnedServerName,
    device_lists: Arc<StreamWriter>,
    federation: Option<Federation>,
}

/// Who reads keys: one of our users, or another server (which sees only the owners'
/// own signatures and never a user-signing key).
#[derive(Debug, Clone, Copy)]
pub enum Viewer<'a> {
    /// A local user.
    User(&'a UserId),
    /// A remote server, over federation.
    Server,
}

impl Keys {
    /// The service over its dependencies; `device_lists` is main's device-list writer;
    /// `federation` the outbound client (None when federation is off: other servers'
    /// users then get a `failures` entry).
    pub fn new(
        store: Store,
        server_name: OwnedServerName,
        device_lists: Arc<StreamWriter>,
        federation: Option<Federation>,
    ) -> Keys {
        Keys {
            store,
            server_name,
            device_lists,
            federation,
        }
    }

    /// The database (for the services of this crate that share it).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The outbound federation client, when federation is on.
    pub(crate) fn federation(&self) -> Option<&Federation> {
        self.federation.as_ref()
    }

    /// The device-list writer.
    pub(crate) fn device_lists(&self) -> &StreamWriter {
        &self.device_lists
    }

    /// Whether `user` is one of ours.
    pub(crate) fn is_local(&self, user: &UserId) -> bool {
        user.server_name() == self.server_name
    }

    /// `POST /keys/upload`: stores the device's identity keys, one-time keys and fallback
    /// keys, and answers the counts of one-time keys left. Device keys must name the
    /// caller and their device; a one-time key id already stored with other content
    /// refuses the whole upload (400 `M_UNKNOWN`, as Synapse) and nothing is stored.
    pub async fn upload(
        &self,
        user: &UserId,
        device: &ruma::DeviceId,
        device_keys: Option<&Raw<DeviceKeys>>,
        one_time_keys: &BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
        fallback_keys: &BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
    ) -> Result<BTreeMap<OneTimeKeyAlgorithm, UInt>> {
        let device_keys = match device_keys {
            Some(raw) => Some(check_device_keys(raw, user, device)?),
            None => None,
        };
        let otks = new_keys(one_time_keys)?;
        let fallbacks = new_keys(fallback_keys)?;
        let (user_id, device_id) = (user.as_str(), device.as_str());
        if !otks.is_empty() {
            self.store
                .insert_one_time_keys(user_id, device_id, &otks)
                .await
                .map_err(|e| match e {
                    ganglion_storage::Error::Conflict(key) => Error::unknown(format!(
                        "One time key {key} already exists with different content"
                    )),
                    other => storage_error(other),
                })?;
        }
        if !fallbacks.is_empty() {
            self.store
                .upsert_fallback_keys(user_id, device_id, &fallbacks)
                .await
                .map_err(storage_error)?;
        }
        if let Some(json) = device_keys {
            let changed = self
                .store
                .upsert_device_keys(user_id, device_id, &json)
                .await
                .map_err(storage_error)?;
            if changed {
                self.device_lists
                    .record_device_change(&self.store, user_id, device_id)
                    .await?;
            }
        }
        self.one_time_key_counts(user_id, device_id).await
    }

    /// How many one-time keys a device has left, per algorithm.
    pub async fn one_time_key_counts(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<BTreeMap<OneTimeKeyAlgorithm, UInt>> {
        let rows = self
            .store
            .count_one_time_keys(user_id, device_id)
            .await
            .map_err(storage_error)?;
        Ok(rows
            .into_iter()
            .map(|(alg, n)| {
                (
                    OneTimeKeyAlgorithm::from(alg.as_str()),
                    UInt::try_from(n).unwrap_or_default(),
                )
            })
            .collect())
    }

    /// `POST /keys/query` for `requester`: the device keys and cross-signing keys of the
    /// users asked for (an empty device list means every device). Signatures uploaded on
    /// a user's keys are merged in; a signature made with someone else's user-signing key
    /// only when the requester made it. Users of other servers come from our copy of
    /// their list or are asked of their server (see [`crate::device_cache`]); a server
    /// that fails gets a `failures` entry.
    pub async fn query(
        &self,
        requester: &UserId,
        wanted: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
        timeout: Option<Duration>,
    ) -> Result<QueryResult> {
        let (local, remote): (BTreeMap<_, _>, BTreeMap<_, _>) = wanted
            .iter()
            .map(|(u, d)| (u.clone(), d.clone()))
            .partition(|(u, _)| self.is_local(u));
        let mut out = self.query_local(Viewer::User(requester), &local).await?;
        if !remote.is_empty() {
            self.query_remote(&remote, timeout, &mut out).await?;
        }
        Ok(out)
    }

    /// The keys of our own users in `wanted` as `viewer` may see them; other users are
    /// skipped.
    pub async fn query_local(
        &self,
        viewer: Viewer<'_>,
        wanted: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<QueryResult> {
        let mut out = QueryResult::default();
        let local: Vec<String> = wanted
            .keys()
            .filter(|u| self.is_local(u))
            .map(ToString::to_string)
            .collect();
        if local.is_empty() {
            return Ok(out);
        }
        // Three independent reads, at once.
        let (signatures, rows, cross) = tokio::try_join!(
            self.store.select_signatures(&local),
            self.store.select_device_keys(&local),
            self.store.select_cross_signing_keys(&local),
        )
        .map_err(storage_error)?;
        for row in rows {
            let Ok(user) = OwnedUserId::try_from(row.user_id.as_str()) else {
                continue;
            };
            let device = OwnedDeviceId::from(row.device_id.as_str());
            let only = wanted.get(&user).map_or(&[][..], Vec::as_slice);
            if !only.is_empty() && !only.contains(&device) {
                continue;
            }
            let mut keys = parse_object("e2e_device_keys", &row.key_json)?;
            merge_signatures(&mut keys, &signatures, &row.user_id, &row.device_id, viewer);
            if let Some(name) = row.display_name {
                let unsigned = keys
                    .entry("unsigned")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(u) = unsigned {
                    u.insert("device_display_name".into(), Value::String(name));
                }
            }
            out.device_keys
                .entry(user)
                .or_default()
                .insert(device, Value::Object(keys));
        }
        for (user_id, key_type, json) in cross {
            let Ok(user) = OwnedUserId::try_from(user_id.as_str()) else {
                continue;
            };
            let mut key = parse_object("e2e_cross_signing_keys", &json)?;
            if let Some(public) = crate::signing::public_key_id(&key) {
                merge_signatures(&mut key, &signatures, &user_id, &public, viewer);
            }
            let key = Value::Object(key);
            match key_type.as_str() {
                "master" => {
                    out.master_keys.insert(user, key);
                }
                "self_signing" => {
                    out.self_signing_keys.insert(user, key);
                }
                "user_signing" if matches!(viewer, Viewer::User(r) if r == user) => {
                    out.user_signing_keys.insert(user, key);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// `POST /keys/claim`: one key per (user, device) of the algorithm asked for, a
    /// one-time key if any is left (handed out once, then gone), else the fallback key.
    /// An algorithm that is not a one-time key algorithm is refused with 400
    /// `M_INVALID_PARAM` before anything is claimed. Users of other servers are claimed
    /// from their server; a server that fails gets a `failures` entry.
    pub async fn claim(
        &self,
        wanted: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
        timeout: Option<Duration>,
    ) -> Result<(Claimed, BTreeMap<String, Value>)> {
        check_algorithms(wanted)?;
        let (local, remote): (BTreeMap<_, _>, BTreeMap<_, _>) = wanted
            .iter()
            .map(|(u, d)| (u.clone(), d.clone()))
            .partition(|(u, _)| self.is_local(u));
        let mut claimed = self.claim_local(&local).await?;
        let mut failures = BTreeMap::new();
        if !remote.is_empty() {
            crate::remote::claim(
                self.federation.as_ref(),
                &remote,
                timeout,
                &mut claimed,
                &mut failures,
            )
            .await;
        }
        Ok((claimed, failures))
    }

    /// Claims keys of our own users' devices in `wanted` (others are skipped), with the
    /// same rules as [`Keys::claim`]; for another server's `/user/keys/claim`.
    pub async fn claim_local(
        &self,
        wanted: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
    ) -> Result<Claimed> {
        check_algorithms(wanted)?;
        let mut claimed = Claimed::new();
        let mut local: Vec<(&OwnedUserId, &OwnedDeviceId, &OneTimeKeyAlgorithm)> = Vec::new();
        for (user, devices) in wanted {
            if !self.is_local(user) {
                continue;
            }
            local.extend(devices.iter().map(|(device, alg)| (user, device, alg)));
        }
        let rows: Vec<(String, String, String)> = local
            .iter()
            .map(|(u, d, a)| (u.to_string(), d.to_string(), a.to_string()))
            .collect();
        let keys = self.store.claim_keys(&rows).await.map_err(storage_error)?;
        for ((user, device, alg), key) in local.into_iter().zip(keys) {
            let Some((key_id, json)) = key else { continue };
            let value: Value = serde_json::from_str(&json)
                .map_err(|e| Error::internal(format!("e2e key: {e}")))?;
            claimed
                .entry(user.clone())
                .or_default()
                .entry(device.clone())
                .or_default()
                .insert(format!("{alg}:{key_id}"), value);
        }
        Ok(claimed)
    }

    /// Another server's `GET /user/devices/{userId}` for one of our users: the device
    /// list's position, every device with keys (as a remote server sees them) and the
    /// master and self-signing keys. 400 `M_INVALID_PARAM` for a user not of this server
    /// (Synapse `handlers/device.py`, `on_federation_query_user_devices`).
    pub async fn user_devices(&self, user: &UserId) -> Result<UserDevices> {
        if !self.is_local(user) {
            return Err(Error::invalid_param(
                "User is not hosted on this homeserver",
            ));
        }
        let wanted = BTreeMap::from([(user.to_owned(), Vec::new())]);
        let mut found = self.query_local(Viewer::Server, &wanted).await?;
        let devices = found
            .device_keys
            .remove(user)
            .unwrap_or_default()
            .into_iter()
            .map(|(device_id, mut keys)| {
                let name = keys
                    .get_mut("unsigned")
                    .and_then(Value::as_object_mut)
                    .and_then(|u| u.remove("device_display_name"));
                if keys
                    .get("unsigned")
                    .and_then(Value::as_object)
                    .is_some_and(Map::is_empty)
                    && let Some(k) = keys.as_object_mut()
                {
                    k.remove("unsigned");
                }
                let mut device = Map::new();
                device.insert("device_id".into(), Value::String(device_id.to_string()));
                device.insert("keys".into(), keys);
                if let Some(name) = name {
                    device.insert("device_display_name".into(), name);
                }
                Value::Object(device)
            })
            .collect();
        Ok(UserDevices {
            stream_id: self.device_lists.committed(),
            devices,
            master_key: found.master_keys.remove(user),
            self_signing_key: found.self_signing_keys.remove(user),
        })
    }
}

/// What `GET /user/devices/{userId}` answers, before it becomes JSON.
#[derive(Debug)]
pub struct UserDevices {
    /// The device-list stream's position.
    pub stream_id: ganglion_core::StreamPos,
    /// `{device_id, keys, device_display_name?}` per device with keys.
    pub devices: Vec<Value>,
    /// The master key, if any.
    pub master_key: Option<Value>,
    /// The self-signing key, if any.
    pub self_signing_key: Option<Value>,
}

/// Refuses an algorithm that is not a one-time key algorithm (400 `M_INVALID_PARAM`).
fn check_algorithms(
    wanted: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
) -> Result<()> {
    for devices in wanted.values() {
        for alg in devices.values() {
            if !matches!(alg, OneTimeKeyAlgorithm::SignedCurve25519) {
                return Err(Error::invalid_param(format!(
                    "unknown one-time key algorithm {alg}"
                )));
            }
        }
    }
    Ok(())
}

/// Checks uploaded device keys: they must be an object naming the caller and their
/// device. Returns the JSON text to store, as sent.
pub(crate) fn check_device_keys(
    raw: &Raw<DeviceKeys>,
    user: &UserId,
    device: &ruma::DeviceId,
) -> Result<String> {
    let keys: DeviceKeys = raw
        .deserialize()
        .map_err(|e| Error::bad_json(format!("device_keys: {e}")))?;
    if keys.user_id != user {
        return Err(Error::invalid_param(
            "device_keys.user_id must be the authenticated user",
        ));
    }
    if keys.device_id != device {
        return Err(Error::invalid_param(
            "device_keys.device_id must be the device the keys are for",
        ));
    }
    Ok(raw.json().get().to_owned())
}

/// One-time or fallback keys as rows: (algorithm, key id, JSON as sent). Each key must be
/// a JSON object (a signed key) or a string (an unsigned curve25519 key).
pub(crate) fn new_keys(
    keys: &BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
) -> Result<Vec<ganglion_storage::e2e_keys::NewKey>> {
    keys.iter()
        .map(|(id, raw)| {
            raw.deserialize()
                .map_err(|e| Error::bad_json(format!("one-time key {id}: {e}")))?;
            Ok((
                id.algorithm().to_string(),
                id.key_name().to_string(),
                raw.json().get().to_owned(),
            ))
        })
        .collect()
}
