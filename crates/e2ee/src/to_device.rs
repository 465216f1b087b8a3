//! Send-to-device messages: `PUT /sendToDevice/{eventType}/{txnId}` (spec: Client-Server
//! API, "Send-to-Device messaging"). `/sync` delivers them and deletes them once the
//! client acknowledges them with its next `since`.

use std::{collections::BTreeSet, sync::Arc};

use ganglion_bus::Row;
use ganglion_core::Result;
use ganglion_rooms::{storage_error, streams::StreamWriter};
use ganglion_storage::{Store, device_lists::ToDeviceRow};
use ruma::{
    DeviceId, OwnedServerName, UserId, api::client::to_device::send_event_to_device::v3::Messages,
    to_device::DeviceIdOrAllDevices,
};

/// The send-to-device service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ToDevice {
    store: Store,
    server_name: OwnedServerName,
    writer: Arc<StreamWriter>,
}

impl ToDevice {
    /// The service over its dependencies; `writer` is main's to-device stream writer.
    pub fn new(store: Store, server_name: OwnedServerName, writer: Arc<StreamWriter>) -> ToDevice {
        ToDevice {
            store,
            server_name,
            writer,
        }
    }

    /// Queues `messages` from (`sender`, `sender_device`) at one position of the to-device
    /// stream. A transaction id the device already used is answered again without sending
    /// twice. `*` means every device of the user; users and devices that do not exist
    /// are dropped without an error, as Synapse does. Messages for other servers' users
    /// are dropped until to-device EDUs are sent over federation.
    pub async fn send(
        &self,
        sender: &UserId,
        sender_device: &DeviceId,
        event_type: &str,
        txn_id: &str,
        messages: &Messages,
    ) -> Result<()> {
        let (user_id, device_id) = (sender.as_str(), sender_device.as_str());
        if self
            .store
            .select_to_device_txn(user_id, device_id, txn_id)
            .await
            .map_err(storage_error)?
            .is_some()
        {
            return Ok(());
        }
        let mut rows: Vec<ToDeviceRow> = Vec::new();
        let mut recipients: BTreeSet<String> = BTreeSet::new();
        for (target, devices) in messages {
            if target.server_name() != self.server_name {
                tracing::debug!(%target, "to-device message for a remote user dropped");
                continue;
            }
            let known: Vec<String> = self
                .store
                .select_devices(target.as_str())
                .await
                .map_err(storage_error)?
                .into_iter()
                .map(|d| d.device_id)
                .collect();
            for (device, content) in devices {
                let content = content.json().get();
                let chosen: Vec<&String> = match device {
                    DeviceIdOrAllDevices::AllDevices => known.iter().collect(),
                    DeviceIdOrAllDevices::DeviceId(d) => {
                        known.iter().filter(|k| k.as_str() == d.as_str()).collect()
                    }
                };
                for d in chosen {
                    // `*` and a device named beside it: the device gets the message once.
                    if rows
                        .iter()
                        .any(|(u, dev, _)| u == target.as_str() && dev == d)
                    {
                        continue;
                    }
                    rows.push((target.to_string(), d.clone(), content.to_owned()));
                    recipients.insert(target.to_string());
                }
            }
        }
        let bus_rows = recipients
            .into_iter()
            .map(|user_id| Row {
                user_id,
                ..Default::default()
            })
            .collect();
        let store = &self.store;
        let rows = &rows;
        self.writer
            .write(bus_rows, |pos| async move {
                match store
                    .insert_to_device_batch(pos, (user_id, device_id), txn_id, event_type, rows)
                    .await
                {
                    // The same transaction raced in from a retry: it is sent once.
                    Ok(()) | Err(ganglion_storage::Error::Conflict(_)) => Ok(()),
                    Err(e) => Err(storage_error(e)),
                }
            })
            .await?;
        Ok(())
    }
}
