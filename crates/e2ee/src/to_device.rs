//! Send-to-device messages: `PUT /sendToDevice/{eventType}/{txnId}` (spec: Client-Server
//! API, "Send-to-Device messaging"). `/sync` delivers them and deletes them once the
//! client acknowledges them with its next `since`.
//!
//! Messages for other servers' users become one `m.direct_to_device` EDU per server
//! (spec: Server-Server API, "Send-to-device messaging"), written to the federation
//! outbox in the same transaction as the local ones; the federation sender delivers
//! them. Inbound EDUs come through [`ToDevice::receive`], deduplicated by `message_id`.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use ganglion_bus::Row;
use ganglion_core::{Error, Result};
use ganglion_rooms::{storage_error, streams::StreamWriter};
use ganglion_storage::{Store, device_lists::ToDeviceRow};
use ruma::{
    DeviceId, OwnedServerName, UserId, api::client::to_device::send_event_to_device::v3::Messages,
    to_device::DeviceIdOrAllDevices,
};
use serde_json::{Map, Value, json};

/// The send-to-device service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ToDevice {
    store: Store,
    server_name: OwnedServerName,
    writer: Arc<StreamWriter>,
    /// Whether this server federates: if not, messages for other servers' users are
    /// dropped (nothing would send them).
    federating: bool,
}

impl ToDevice {
    /// The service over its dependencies; `writer` is main's to-device stream writer.
    pub fn new(
        store: Store,
        server_name: OwnedServerName,
        writer: Arc<StreamWriter>,
        federating: bool,
    ) -> ToDevice {
        ToDevice {
            store,
            server_name,
            writer,
            federating,
        }
    }

    /// Queues `messages` from (`sender`, `sender_device`) at one position of the to-device
    /// stream. A transaction id the device already used is answered again without sending
    /// twice. `*` means every device of the user; users and devices that do not exist
    /// are dropped without an error, as Synapse does. Messages for other servers' users
    /// go to the federation outbox, one EDU per server (dropped when we do not federate).
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
        // Per server, its users' messages as the EDU carries them.
        let mut remote: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for (target, devices) in messages {
            if target.server_name() != self.server_name {
                if !self.federating {
                    tracing::debug!(%target, "to-device message for a remote user dropped: no federation");
                    continue;
                }
                let per_device: Map<String, Value> = devices
                    .iter()
                    .filter_map(|(device, content)| {
                        let key = match device {
                            DeviceIdOrAllDevices::AllDevices => "*".to_owned(),
                            DeviceIdOrAllDevices::DeviceId(d) => d.to_string(),
                        };
                        serde_json::from_str(content.json().get())
                            .ok()
                            .map(|v| (key, v))
                    })
                    .collect();
                remote
                    .entry(target.server_name().to_string())
                    .or_default()
                    .insert(target.to_string(), Value::Object(per_device));
                continue;
            }
            let targets = devices
                .iter()
                .map(|(device, content)| (device.clone(), content.json().get().to_owned()));
            self.local_rows(target, targets, &mut rows).await?;
            if rows.iter().any(|(u, ..)| u == target.as_str()) {
                recipients.insert(target.to_string());
            }
        }
        let outbox: Vec<(String, String)> = remote
            .into_iter()
            .map(|(server, messages)| {
                let content = json!({
                    "sender": user_id,
                    "type": event_type,
                    "message_id": format!("{:016x}", rand::random::<u64>()),
                    "messages": messages,
                });
                (server, content.to_string())
            })
            .collect();
        let mut bus_rows: Vec<Row> = recipients
            .into_iter()
            .map(|user_id| Row {
                user_id,
                ..Default::default()
            })
            .collect();
        bus_rows.extend(outbox.iter().map(|(server, _)| Row {
            server: server.clone(),
            ..Default::default()
        }));
        let store = &self.store;
        let (rows, outbox) = (&rows, &outbox);
        self.writer
            .write(bus_rows, |pos| async move {
                match store
                    .insert_to_device_batch(
                        pos,
                        (user_id, device_id),
                        txn_id,
                        event_type,
                        rows,
                        outbox,
                    )
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

    /// Adds to `rows` the messages for `target`'s devices: `*` for every device, unknown
    /// devices dropped, and a device named beside `*` served once.
    async fn local_rows(
        &self,
        target: &UserId,
        devices: impl Iterator<Item = (DeviceIdOrAllDevices, String)>,
        rows: &mut Vec<ToDeviceRow>,
    ) -> Result<()> {
        let known: Vec<String> = self
            .store
            .select_devices(target.as_str())
            .await
            .map_err(storage_error)?
            .into_iter()
            .map(|d| d.device_id)
            .collect();
        for (device, content) in devices {
            let chosen: Vec<&String> = match &device {
                DeviceIdOrAllDevices::AllDevices => known.iter().collect(),
                DeviceIdOrAllDevices::DeviceId(d) => {
                    known.iter().filter(|k| k.as_str() == d.as_str()).collect()
                }
            };
            for d in chosen {
                if rows
                    .iter()
                    .any(|(u, dev, _)| u == target.as_str() && dev == d)
                {
                    continue;
                }
                rows.push((target.to_string(), d.clone(), content.clone()));
            }
        }
        Ok(())
    }

    /// Delivers an `m.direct_to_device` EDU from `origin` to our users' devices. Its
    /// sender must be a user of `origin`; messages for other servers' users and for
    /// devices that do not exist are dropped. An EDU whose `message_id` was delivered
    /// already (the origin retried a transaction we took) is not delivered again.
    pub async fn receive(&self, origin: &str, content: &Value) -> Result<()> {
        let text = |k: &str| content.get(k).and_then(Value::as_str).unwrap_or_default();
        let (sender, event_type, message_id) = (text("sender"), text("type"), text("message_id"));
        let sender_id = UserId::parse(sender)
            .map_err(|_| Error::bad_json("m.direct_to_device without a valid sender"))?;
        if sender_id.server_name().as_str() != origin {
            return Err(Error::forbidden(
                "m.direct_to_device from a user not of the origin",
            ));
        }
        if event_type.is_empty() || message_id.is_empty() {
            return Err(Error::bad_json(
                "m.direct_to_device without a type or message_id",
            ));
        }
        let Some(messages) = content.get("messages").and_then(Value::as_object) else {
            return Err(Error::bad_json("m.direct_to_device without messages"));
        };
        let mut rows: Vec<ToDeviceRow> = Vec::new();
        let mut recipients: BTreeSet<String> = BTreeSet::new();
        for (target, devices) in messages {
            let Ok(target) = UserId::parse(target) else {
                continue;
            };
            if target.server_name() != self.server_name {
                continue;
            }
            let targets = devices
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, c)| c.is_object())
                .map(|(d, c)| {
                    let device = if d == "*" {
                        DeviceIdOrAllDevices::AllDevices
                    } else {
                        DeviceIdOrAllDevices::DeviceId(d.as_str().into())
                    };
                    (device, c.to_string())
                });
            self.local_rows(&target, targets, &mut rows).await?;
            if rows.iter().any(|(u, ..)| u == target.as_str()) {
                recipients.insert(target.to_string());
            }
        }
        if rows.is_empty() {
            return Ok(());
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
                // A remote sender has no device here: its transaction is ("", message_id).
                match store
                    .insert_to_device_batch(pos, (sender, ""), message_id, event_type, rows, &[])
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(ganglion_storage::Error::Conflict(_)) => {
                        tracing::debug!(%origin, message_id, "repeated m.direct_to_device dropped");
                        Ok(())
                    }
                    Err(e) => Err(storage_error(e)),
                }
            })
            .await?;
        metrics::counter!("ganglion_federation_to_device_received_total")
            .increment(rows.len() as u64);
        Ok(())
    }
}
