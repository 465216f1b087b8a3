//! Dehydrated devices (MSC3814, unstable prefix `org.matrix.msc3814.v1`): a device the
//! user's client uploads with its private part encrypted, so that room keys sent while
//! the user has no client running reach it; the next login decrypts it, reads its
//! to-device messages and makes a new one. At most one per user; uploading replaces
//! it. The device is an ordinary device (in `/devices`, in `/keys/query`), so other
//! clients send it keys with no special case.

use std::{collections::BTreeMap, sync::Arc};

use ganglion_core::{Error, Result};
use ganglion_rooms::{storage_error, streams::StreamWriter};
use ganglion_storage::dehydrated::DehydratedDevice;
use ruma::{
    DeviceId, OwnedDeviceId, OwnedOneTimeKeyId, UserId,
    encryption::{DeviceKeys, OneTimeKey},
    serde::Raw,
};
use serde_json::{Value, json, value::RawValue};

use crate::keys::{Keys, check_device_keys, new_keys};

/// Messages per `/events` batch (Synapse answers 100 too).
const BATCH: i64 = 100;

/// The dehydrated-device service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Dehydrated {
    keys: Keys,
    /// Main's to-device writer: a batch reads up to its committed position, so a
    /// message still being written is never skipped.
    to_device: Arc<StreamWriter>,
}

/// A dehydrated device as uploaded.
#[derive(Debug)]
pub struct Upload<'a> {
    /// Its id (the client uses its Curve25519 identity key).
    pub device_id: &'a DeviceId,
    /// `initial_device_display_name`.
    pub display_name: Option<&'a str>,
    /// `device_data`: opaque to the server, but an object with a string `algorithm`.
    pub device_data: &'a RawValue,
    /// `device_keys`, which must name the user and this device.
    pub device_keys: &'a Raw<DeviceKeys>,
    /// `one_time_keys`.
    pub one_time_keys: &'a BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
    /// `fallback_keys`.
    pub fallback_keys: &'a BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
}

impl Dehydrated {
    /// The service over the key service and main's to-device writer.
    pub fn new(keys: Keys, to_device: Arc<StreamWriter>) -> Dehydrated {
        Dehydrated { keys, to_device }
    }

    /// `PUT /dehydrated_device`: checks everything first, then replaces the user's
    /// dehydrated device (the old one goes with its keys and messages) and stores the
    /// new one's keys. A device id the user is logged in on is refused (400
    /// `M_INVALID_PARAM`).
    pub async fn put(&self, user: &UserId, upload: &Upload<'_>) -> Result<OwnedDeviceId> {
        let data: Value = serde_json::from_str(upload.device_data.get())
            .map_err(|e| Error::bad_json(format!("device_data: {e}")))?;
        if !data.get("algorithm").is_some_and(Value::is_string) {
            return Err(Error::bad_json(
                "device_data must be an object with a string `algorithm`",
            ));
        }
        check_device_keys(upload.device_keys, user, upload.device_id)?;
        new_keys(upload.one_time_keys)?;
        new_keys(upload.fallback_keys)?;
        let device = DehydratedDevice {
            device_id: upload.device_id.to_string(),
            device_data: upload.device_data.get().to_owned(),
        };
        let store = self.keys.store();
        let previous = store
            .replace_dehydrated_device(user.as_str(), &device, upload.display_name)
            .await
            .map_err(|e| match e {
                ganglion_storage::Error::Conflict(_) => Error::invalid_param(format!(
                    "device {} is one of your logged-in devices",
                    upload.device_id
                )),
                other => storage_error(other),
            })?;
        if previous.is_some() {
            // The old device's keys went: everyone who shares a room refetches the list.
            self.keys
                .device_lists()
                .record_device_list_change(store, &[user.to_string()])
                .await?;
        }
        self.keys
            .upload(
                user,
                upload.device_id,
                Some(upload.device_keys),
                upload.one_time_keys,
                upload.fallback_keys,
            )
            .await?;
        Ok(upload.device_id.to_owned())
    }

    /// `GET /dehydrated_device`: (device id, device data); 404 `M_NOT_FOUND` when the
    /// user has none.
    pub async fn get(&self, user: &UserId) -> Result<(OwnedDeviceId, Value)> {
        let device = self.current(user).await?;
        let data = serde_json::from_str(&device.device_data)
            .map_err(|e| Error::internal(format!("stored device_data: {e}")))?;
        Ok((OwnedDeviceId::from(device.device_id), data))
    }

    /// `DELETE /dehydrated_device`: the device goes with its keys and messages; its id.
    /// 404 `M_NOT_FOUND` when the user has none.
    pub async fn delete(&self, user: &UserId) -> Result<OwnedDeviceId> {
        let store = self.keys.store();
        let Some(id) = store
            .delete_dehydrated_device(user.as_str())
            .await
            .map_err(storage_error)?
        else {
            return Err(no_device());
        };
        self.keys
            .device_lists()
            .record_device_list_change(store, &[user.to_string()])
            .await?;
        Ok(OwnedDeviceId::from(id))
    }

    /// `POST /dehydrated_device/{deviceId}/events`: the device's to-device messages after
    /// `next_batch`, a batch at a time, and the token for the next batch (a batch with
    /// no events means the client has them all). Reading does not delete them: if the
    /// rehydrating client fails half-way, another can start again (MSC3814). Another
    /// device id than the user's dehydrated device is 403 `M_FORBIDDEN`.
    pub async fn events(
        &self,
        user: &UserId,
        device_id: &DeviceId,
        next_batch: Option<&str>,
    ) -> Result<(Vec<Value>, String)> {
        let device = self.current(user).await.map_err(|_| not_yours())?;
        if device.device_id != device_id.as_str() {
            return Err(not_yours());
        }
        let after = match next_batch {
            None => 0,
            Some(token) => token
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| Error::invalid_param(format!("invalid next_batch {token:?}")))?,
        };
        let upto = self.to_device.committed().0;
        let rows = self
            .keys
            .store()
            .select_to_device_between(user.as_str(), device_id.as_str(), after, upto, BATCH)
            .await
            .map_err(storage_error)?;
        let next = rows.last().map_or(after.max(0), |r| r.0);
        let events = rows
            .into_iter()
            .map(|(_, sender, kind, content)| {
                let content: Value = serde_json::from_str(&content)
                    .map_err(|e| Error::internal(format!("stored to-device content: {e}")))?;
                Ok(json!({ "sender": sender, "type": kind, "content": content }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((events, next.to_string()))
    }

    async fn current(&self, user: &UserId) -> Result<DehydratedDevice> {
        self.keys
            .store()
            .select_dehydrated_device(user.as_str())
            .await
            .map_err(storage_error)?
            .ok_or_else(no_device)
    }
}

fn no_device() -> Error {
    Error::not_found("No dehydrated device available")
}

fn not_yours() -> Error {
    Error::forbidden("You may only fetch messages for your dehydrated device")
}
