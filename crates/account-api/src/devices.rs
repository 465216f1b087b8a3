//! The device list (spec: Client-Server API, "Device management").

use ganglion_core::{Error, Result};
use ganglion_http::Identity;
use ganglion_rooms::storage_error;
use ganglion_storage::devices::DeviceRow;
use ruma::{
    DeviceId, MilliSecondsSinceUnixEpoch, OwnedDeviceId, UInt, UserId,
    api::client::{device::Device, uiaa::AuthData},
};

use crate::{Accounts, uia::password_flows};

/// Longest device display name, in bytes (Synapse's `MAX_DEVICE_DISPLAY_NAME_LEN`).
const MAX_DEVICE_DISPLAY_NAME_LEN: usize = 100;

fn device_from_row(row: DeviceRow) -> Device {
    Device {
        device_id: OwnedDeviceId::from(row.device_id.as_str()),
        display_name: row.display_name,
        last_seen_ip: row.last_seen_ip,
        last_seen_ts: row
            .last_seen_ts
            .and_then(|ts| UInt::try_from(ts).ok())
            .map(MilliSecondsSinceUnixEpoch),
    }
}

fn unknown_device() -> Error {
    Error::not_found("Unknown device")
}

impl Accounts {
    /// `GET /devices`.
    pub(crate) async fn devices(&self, user: &UserId) -> Result<Vec<Device>> {
        let rows = self
            .inner
            .store
            .select_devices(user.as_str())
            .await
            .map_err(storage_error)?;
        Ok(rows.into_iter().map(device_from_row).collect())
    }

    /// `GET /devices/{deviceId}`: 404 `M_NOT_FOUND` if the user has no such device.
    pub(crate) async fn device(&self, user: &UserId, device_id: &DeviceId) -> Result<Device> {
        let row = self
            .inner
            .store
            .select_device(user.as_str(), device_id.as_str())
            .await
            .map_err(storage_error)?;
        row.map(device_from_row).ok_or_else(unknown_device)
    }

    /// `PUT /devices/{deviceId}`: renames a device; without a name, only checks it exists.
    pub(crate) async fn rename_device(
        &self,
        user: &UserId,
        device_id: &DeviceId,
        name: Option<&str>,
    ) -> Result<()> {
        let Some(name) = name else {
            return self.device(user, device_id).await.map(drop);
        };
        if name.len() > MAX_DEVICE_DISPLAY_NAME_LEN {
            return Err(Error::unknown(format!(
                "Device display name is too long (max {MAX_DEVICE_DISPLAY_NAME_LEN})"
            )));
        }
        let found = self
            .inner
            .store
            .update_device_name(user.as_str(), device_id.as_str(), Some(name))
            .await
            .map_err(storage_error)?;
        if !found {
            return Err(unknown_device());
        }
        self.device_list_changed(user).await
    }

    /// Announces that `user`'s device list changed (a device went or was renamed), so
    /// everyone who shares a room with them refetches their keys.
    pub(crate) async fn device_list_changed(&self, user: &UserId) -> Result<()> {
        if let Some(writer) = &self.inner.device_lists {
            writer
                .record_device_list_change(&self.inner.store, &[user.to_string()])
                .await?;
        }
        Ok(())
    }

    /// `DELETE /devices/{deviceId}`: after UIA, the device and its tokens go. An id the
    /// user has no device under is not an error (as Synapse).
    pub(crate) async fn delete_device(
        &self,
        who: &Identity,
        device_id: OwnedDeviceId,
        auth: Option<&AuthData>,
    ) -> Result<()> {
        // A session proves intent for one operation: deleting this device.
        let operation = format!("delete_device/{device_id}");
        self.delete_devices_after_uia(&operation, who, &[device_id], auth)
            .await
    }

    /// `POST /delete_devices`: after UIA, the devices and their tokens go; unknown ids are
    /// ignored.
    pub(crate) async fn delete_devices(
        &self,
        who: &Identity,
        device_ids: &[OwnedDeviceId],
        auth: Option<&AuthData>,
    ) -> Result<()> {
        self.delete_devices_after_uia("delete_devices", who, device_ids, auth)
            .await
    }

    async fn delete_devices_after_uia(
        &self,
        operation: &str,
        who: &Identity,
        device_ids: &[OwnedDeviceId],
        auth: Option<&AuthData>,
    ) -> Result<()> {
        let completed = self
            .user_interactive_auth(operation, Some(&who.user_id), &password_flows(), auth)
            .await?;
        let ids: Vec<String> = device_ids.iter().map(ToString::to_string).collect();
        self.inner
            .store
            .delete_devices(who.user_id.as_str(), &ids)
            .await
            .map_err(storage_error)?;
        self.device_list_changed(&who.user_id).await?;
        self.finish_uia(&completed).await
    }
}
