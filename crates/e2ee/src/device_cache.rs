//! Our copy of other servers' users' device lists (spec: Server-Server API, "Device
//! Management"; docs/architecture.md, "End-to-end encryption").
//!
//! A remote user who shares a joined room with one of ours is *followed*: their
//! server sends us `m.device_list_update` and `m.signing_key_update` when their keys
//! change, so `/keys/query` answers them from the copy in `remote_device_lists` instead
//! of asking the origin every time. The copy comes from the first query's answer (at an
//! unknown position) or from `/user/devices` (at the origin's position). An update whose
//! `prev_id` names the copy's position is applied to it; any other (an update was
//! missed, or the copy's position is unknown) drops the copy and fetches the list again
//! from `/user/devices` in the background. A copy of a user no longer followed (we
//! would hear of no change) is dropped when next seen, and one older than
//! [`MAX_AGE_MS`] is fetched again, which bounds how stale a copy can be.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use ganglion_core::{Result, percent::percent_encode, time::now_ms};
use ganglion_federation_client::Method;
use ganglion_rooms::storage_error;
use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{Map, Value, json};

use crate::keys::{Keys, QueryResult};

/// A copy older than this is fetched again (ms).
const MAX_AGE_MS: i64 = 24 * 60 * 60 * 1000;
/// How long a background `/user/devices` may take.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(30);

impl Keys {
    /// `/keys/query` for other servers' users: followed users from their copy where we
    /// have one; the rest asked of their servers (followed users' whole lists, which are
    /// then kept).
    pub(crate) async fn query_remote(
        &self,
        wanted: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
        timeout: Option<Duration>,
        out: &mut QueryResult,
    ) -> Result<()> {
        let users: Vec<String> = wanted.keys().map(ToString::to_string).collect();
        let store = self.store();
        let followed: HashSet<String> = store
            .select_users_sharing_with_locals(&users)
            .await
            .map_err(storage_error)?
            .into_iter()
            .collect();
        let now = now_ms();
        let mut copies: BTreeMap<String, Value> = BTreeMap::new();
        let mut forget = Vec::new();
        for (user, _, keys, fetched) in store
            .select_remote_device_lists(&users)
            .await
            .map_err(storage_error)?
        {
            match serde_json::from_str::<Value>(&keys) {
                Ok(copy) if followed.contains(&user) && now - fetched < MAX_AGE_MS => {
                    copies.insert(user, copy);
                }
                _ => forget.push(user),
            }
        }
        if !forget.is_empty() {
            store
                .delete_remote_device_lists(&forget)
                .await
                .map_err(storage_error)?;
        }
        let mut ask: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>> = BTreeMap::new();
        for (user, devices) in wanted {
            match copies.get(user.as_str()) {
                Some(copy) => {
                    metrics::counter!("ganglion_e2ee_remote_device_lists_total", "source" => "copy")
                        .increment(1);
                    fill(out, user, devices, copy);
                }
                // A followed user's whole list, so that it can be kept.
                None if followed.contains(user.as_str()) => {
                    ask.insert(user.clone(), Vec::new());
                }
                None => {
                    ask.insert(user.clone(), devices.clone());
                }
            }
        }
        if ask.is_empty() {
            return Ok(());
        }
        metrics::counter!("ganglion_e2ee_remote_device_lists_total", "source" => "query")
            .increment(ask.len() as u64);
        let mut answer = QueryResult::default();
        crate::remote::query(self.federation(), &ask, timeout, &mut answer).await;
        for user in ask.keys() {
            let (device_keys, master, self_signing) = (
                answer.device_keys.remove(user).unwrap_or_default(),
                answer.master_keys.remove(user),
                answer.self_signing_keys.remove(user),
            );
            let copy = json!({
                "devices": device_keys,
                "master_key": master,
                "self_signing_key": self_signing,
            });
            if followed.contains(user.as_str())
                && !answer.failures.contains_key(user.server_name().as_str())
            {
                let row = (user.to_string(), 0, copy.to_string(), now);
                if let Err(e) = store.upsert_remote_device_list(&row).await {
                    tracing::warn!(%user, error = %e, "cannot keep a remote device list");
                }
            }
            let devices = wanted.get(user).map(Vec::as_slice).unwrap_or_default();
            fill(out, user, devices, &copy);
        }
        out.failures.append(&mut answer.failures);
        Ok(())
    }

    /// An `m.device_list_update` from `user`'s server (the caller checked that `user` is
    /// its): applied to our copy when its `prev_id` names the copy's position, else the
    /// copy is dropped and fetched again. Users we keep no copy of are left alone.
    pub async fn remote_device_list_update(&self, user: &UserId, content: &Value) -> Result<()> {
        let store = self.store();
        let Some((_, have, keys, _)) = store
            .select_remote_device_lists(&[user.to_string()])
            .await
            .map_err(storage_error)?
            .into_iter()
            .next()
        else {
            return Ok(());
        };
        let stream_id = content.get("stream_id").and_then(Value::as_i64);
        let follows = have != 0
            && content
                .get("prev_id")
                .and_then(Value::as_array)
                .is_some_and(|p| p.iter().any(|id| id.as_i64() == Some(have)));
        let device = content.get("device_id").and_then(Value::as_str);
        let applied = match (
            follows,
            stream_id,
            device,
            serde_json::from_str::<Value>(&keys),
        ) {
            (true, Some(stream_id), Some(device), Ok(mut copy)) => {
                let deleted = content.get("deleted").and_then(Value::as_bool) == Some(true);
                let new_keys = content.get("keys").filter(|k| k.is_object());
                match (
                    copy.get_mut("devices").and_then(Value::as_object_mut),
                    deleted,
                    new_keys,
                ) {
                    (Some(devices), true, _) => {
                        devices.remove(device);
                        true
                    }
                    (Some(devices), false, Some(k)) => {
                        devices.insert(device.to_owned(), k.clone());
                        true
                    }
                    _ => false,
                }
                .then_some((stream_id, copy))
            }
            _ => None,
        };
        if let Some((stream_id, copy)) = applied
            && store
                .update_remote_device_list(user.as_str(), have, stream_id, &copy.to_string())
                .await
                .map_err(storage_error)?
        {
            return Ok(());
        }
        self.resync(user).await
    }

    /// An `m.signing_key_update` from `user`'s server: the master and self-signing keys
    /// it carries replace those of our copy.
    pub async fn remote_signing_key_update(&self, user: &UserId, content: &Value) -> Result<()> {
        let store = self.store();
        let Some((_, have, keys, _)) = store
            .select_remote_device_lists(&[user.to_string()])
            .await
            .map_err(storage_error)?
            .into_iter()
            .next()
        else {
            return Ok(());
        };
        let Ok(mut copy) = serde_json::from_str::<Value>(&keys) else {
            return self.resync(user).await;
        };
        for field in ["master_key", "self_signing_key"] {
            if let Some(k) = content.get(field).filter(|k| k.is_object()) {
                copy[field] = k.clone();
            }
        }
        if !store
            .update_remote_device_list(user.as_str(), have, have, &copy.to_string())
            .await
            .map_err(storage_error)?
        {
            return self.resync(user).await;
        }
        Ok(())
    }

    /// Drops `user`'s copy now and fetches it again from `/user/devices` in the
    /// background (until it is back, queries ask the origin).
    async fn resync(&self, user: &UserId) -> Result<()> {
        self.store()
            .delete_remote_device_lists(&[user.to_string()])
            .await
            .map_err(storage_error)?;
        let Some(fed) = self.federation().cloned() else {
            return Ok(());
        };
        let (store, user) = (self.store().clone(), user.to_owned());
        tokio::spawn(async move {
            let path = format!(
                "/_matrix/federation/v1/user/devices/{}",
                percent_encode(user.as_str())
            );
            let call = fed
                .client
                .request(Method::GET, user.server_name().as_str(), &path, None);
            let answer = match tokio::time::timeout(RESYNC_TIMEOUT, call).await {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    tracing::debug!(%user, error = %e, "cannot fetch a remote device list");
                    return;
                }
                Err(_) => return,
            };
            let Some(copy) = copy_of_user_devices(&user, &answer) else {
                tracing::debug!(%user, "a /user/devices answer for another user or malformed");
                return;
            };
            let stream_id = answer.get("stream_id").and_then(Value::as_i64).unwrap_or(0);
            let row = (user.to_string(), stream_id, copy.to_string(), now_ms());
            match store.upsert_remote_device_list(&row).await {
                Ok(()) => {
                    metrics::counter!("ganglion_e2ee_remote_device_resyncs_total").increment(1)
                }
                Err(e) => tracing::warn!(%user, error = %e, "cannot keep a remote device list"),
            }
        });
        Ok(())
    }
}

/// A copy from a `/user/devices` answer: each device's keys (with its display name as
/// `unsigned.device_display_name`, as `/keys/query` has it), only those naming the user
/// and device. None when the answer is about someone else.
fn copy_of_user_devices(user: &UserId, answer: &Value) -> Option<Value> {
    if answer.get("user_id").and_then(Value::as_str) != Some(user.as_str()) {
        return None;
    }
    let mut devices = Map::new();
    for d in answer
        .get("devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(keys)) = (
            d.get("device_id").and_then(Value::as_str),
            d.get("keys").and_then(Value::as_object),
        ) else {
            continue;
        };
        if keys.get("user_id").and_then(Value::as_str) != Some(user.as_str())
            || keys.get("device_id").and_then(Value::as_str) != Some(id)
        {
            continue;
        }
        let mut keys = keys.clone();
        if let Some(name) = d.get("device_display_name").filter(|n| n.is_string()) {
            let unsigned = keys
                .entry("unsigned")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(u) = unsigned.as_object_mut() {
                u.insert("device_display_name".into(), name.clone());
            }
        }
        devices.insert(id.to_owned(), Value::Object(keys));
    }
    let key = |f: &str| answer.get(f).filter(|k| k.is_object()).cloned();
    Some(json!({
        "devices": devices,
        "master_key": key("master_key"),
        "self_signing_key": key("self_signing_key"),
    }))
}

/// Adds `user`'s keys from `copy` to `out`: the devices asked for (all when none are
/// named) and the cross-signing keys.
fn fill(out: &mut QueryResult, user: &OwnedUserId, devices: &[OwnedDeviceId], copy: &Value) {
    let entry = out.device_keys.entry(user.clone()).or_default();
    for (id, keys) in copy
        .get("devices")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if devices.is_empty() || devices.iter().any(|d| d.as_str() == id) {
            entry.insert(OwnedDeviceId::from(id.as_str()), keys.clone());
        }
    }
    if let Some(k) = copy.get("master_key").filter(|k| k.is_object()) {
        out.master_keys.insert(user.clone(), k.clone());
    }
    if let Some(k) = copy.get("self_signing_key").filter(|k| k.is_object()) {
        out.self_signing_keys.insert(user.clone(), k.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> OwnedUserId {
        UserId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn a_user_devices_answer_keeps_only_the_user_s_own_devices() {
        let bob = user("@bob:two");
        let answer = json!({
            "user_id": "@bob:two", "stream_id": 7,
            "devices": [
                { "device_id": "A", "device_display_name": "phone",
                  "keys": { "user_id": "@bob:two", "device_id": "A", "keys": {} } },
                // Keys naming another device or user, and a device without keys: skipped.
                { "device_id": "B", "keys": { "user_id": "@bob:two", "device_id": "C" } },
                { "device_id": "D", "keys": { "user_id": "@eve:two", "device_id": "D" } },
                { "device_id": "E" },
            ],
            "master_key": { "user_id": "@bob:two", "usage": ["master"], "keys": {} },
        });
        let copy = copy_of_user_devices(&bob, &answer).unwrap_or_default();
        let devices = copy["devices"].as_object().cloned().unwrap_or_default();
        assert_eq!(devices.keys().collect::<Vec<_>>(), vec!["A"]);
        assert_eq!(devices["A"]["unsigned"]["device_display_name"], "phone");
        assert_eq!(copy["master_key"]["usage"], json!(["master"]));
        assert_eq!(copy["self_signing_key"], Value::Null);
        assert!(copy_of_user_devices(&user("@eve:two"), &answer).is_none());
    }

    #[test]
    fn fill_takes_the_devices_asked_for() {
        let bob = user("@bob:two");
        let copy = json!({
            "devices": { "A": { "device_id": "A" }, "B": { "device_id": "B" } },
            "master_key": { "usage": ["master"] }, "self_signing_key": null,
        });
        let mut all = QueryResult::default();
        fill(&mut all, &bob, &[], &copy);
        assert_eq!(all.device_keys[&bob].len(), 2);
        assert!(all.master_keys.contains_key(&bob));
        assert!(!all.self_signing_keys.contains_key(&bob));
        let mut one = QueryResult::default();
        fill(&mut one, &bob, &[OwnedDeviceId::from("B")], &copy);
        assert_eq!(
            one.device_keys[&bob]
                .keys()
                .map(|d| d.as_str())
                .collect::<Vec<_>>(),
            vec!["B"]
        );
    }
}
