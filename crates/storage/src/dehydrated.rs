//! Dehydrated devices (MSC3814): at most one per user. The device is an ordinary row of
//! `devices`, with its keys in the e2e tables; `dehydrated_devices` says which one it is
//! and keeps the client's encrypted `device_data`.

use ganglion_core::time::now_ms;

use crate::{Error, Result, Store, devices::delete_device_rows};

/// A user's dehydrated device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DehydratedDevice {
    /// Its device id.
    pub device_id: String,
    /// The client's `device_data` object, as JSON text.
    pub device_data: String,
}

impl Store {
    /// The user's dehydrated device, if they have one.
    pub async fn select_dehydrated_device(
        &self,
        user_id: &str,
    ) -> Result<Option<DehydratedDevice>> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT device_id, device_data FROM dehydrated_devices WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(|(device_id, device_data)| DehydratedDevice {
            device_id,
            device_data,
        }))
    }

    /// Makes `device` the user's dehydrated device, in one transaction: the previous one
    /// (even under the same id) is deleted with its keys and waiting messages, then the
    /// device row is created with `display_name`. Returns the previous device's id.
    /// [`Error::Conflict`] when `device.device_id` is one of the user's other devices:
    /// a dehydrated device never takes over a device someone is logged in on.
    pub async fn replace_dehydrated_device(
        &self,
        user_id: &str,
        device: &DehydratedDevice,
        display_name: Option<&str>,
    ) -> Result<Option<String>> {
        let mut tx = self.begin("replace_dehydrated_device").await?;
        let previous: Option<(String,)> =
            sqlx::query_as("DELETE FROM dehydrated_devices WHERE user_id = $1 RETURNING device_id")
                .bind(user_id)
                .fetch_optional(tx.conn())
                .await?;
        let previous = previous.map(|(id,)| id);
        if let Some(old) = &previous {
            delete_device_rows(&mut tx, user_id, old).await?;
        }
        let taken: Option<(String,)> =
            sqlx::query_as("SELECT device_id FROM devices WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(&device.device_id)
                .fetch_optional(tx.conn())
                .await?;
        if taken.is_some() {
            return Err(Error::Conflict(format!(
                "device {} is in use",
                device.device_id
            )));
        }
        let now = now_ms();
        sqlx::query(
            "INSERT INTO devices (user_id, device_id, display_name, created_ts) VALUES ($1, $2, $3, $4)",
        )
        .bind(user_id)
        .bind(&device.device_id)
        .bind(display_name)
        .bind(now)
        .execute(tx.conn())
        .await?;
        sqlx::query(
            "INSERT INTO dehydrated_devices (user_id, device_id, device_data, created_ts) VALUES ($1, $2, $3, $4)",
        )
        .bind(user_id)
        .bind(&device.device_id)
        .bind(&device.device_data)
        .bind(now)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(previous)
    }

    /// Deletes the user's dehydrated device with its keys and waiting messages; its id,
    /// or `None` when there was none.
    pub async fn delete_dehydrated_device(&self, user_id: &str) -> Result<Option<String>> {
        let mut tx = self.begin("delete_dehydrated_device").await?;
        let previous: Option<(String,)> =
            sqlx::query_as("DELETE FROM dehydrated_devices WHERE user_id = $1 RETURNING device_id")
                .bind(user_id)
                .fetch_optional(tx.conn())
                .await?;
        if let Some((old,)) = &previous {
            delete_device_rows(&mut tx, user_id, old).await?;
        }
        tx.commit().await?;
        Ok(previous.map(|(id,)| id))
    }

    /// Send-to-device messages for a device after position `after` up to `upto`, oldest
    /// first: (stream id, sender, type, content). Unlike /sync's read, reading them does
    /// not acknowledge them (a dehydrated device's messages stay until the device goes).
    pub async fn select_to_device_between(
        &self,
        user_id: &str,
        device_id: &str,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String, String)>> {
        Ok(sqlx::query_as(
            "SELECT stream_id, sender, type, content FROM to_device
             WHERE user_id = $1 AND device_id = $2 AND stream_id > $3 AND stream_id <= $4
             ORDER BY stream_id LIMIT $5",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(after)
        .bind(upto)
        .bind(limit)
        .fetch_all(self.reader())
        .await?)
    }
}
