//! Devices: the list a user sees at `/devices`.

use crate::{Result, Store, Txn};

/// A device row.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    /// The device id.
    pub device_id: String,
    /// Its display name.
    pub display_name: Option<String>,
    /// Last activity (ms).
    pub last_seen_ts: Option<i64>,
    /// Last client IP.
    pub last_seen_ip: Option<String>,
}

impl Store {
    /// Lists a user's devices.
    pub async fn select_devices(&self, user_id: &str) -> Result<Vec<DeviceRow>> {
        let rows: Vec<(String, Option<String>, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT device_id, display_name, last_seen_ts, last_seen_ip FROM devices WHERE user_id = $1 ORDER BY device_id",
        )
        .bind(user_id)
        .fetch_all(self.reader())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| DeviceRow {
                device_id: r.0,
                display_name: r.1,
                last_seen_ts: r.2,
                last_seen_ip: r.3,
            })
            .collect())
    }

    /// Loads one device.
    pub async fn select_device(&self, user_id: &str, device_id: &str) -> Result<Option<DeviceRow>> {
        let row: Option<(String, Option<String>, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT device_id, display_name, last_seen_ts, last_seen_ip FROM devices WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(|r| DeviceRow {
            device_id: r.0,
            display_name: r.1,
            last_seen_ts: r.2,
            last_seen_ip: r.3,
        }))
    }

    /// Renames a device. Returns whether it exists.
    pub async fn update_device_name(
        &self,
        user_id: &str,
        device_id: &str,
        name: Option<&str>,
    ) -> Result<bool> {
        let mut tx = self.begin("update_device_name").await?;
        let n = sqlx::query(
            "UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(name)
        .execute(tx.conn())
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Deletes devices with their tokens, their end-to-end keys and the send-to-device
    /// messages waiting for them (a dehydrated device among them stops being one).
    pub async fn delete_devices(&self, user_id: &str, device_ids: &[String]) -> Result<()> {
        let mut tx = self.begin("delete_devices").await?;
        for device_id in device_ids {
            delete_device_rows(&mut tx, user_id, device_id).await?;
        }
        tx.commit().await
    }

    /// Records activity on a device (best effort, not on the request's critical path).
    pub async fn touch_device(
        &self,
        user_id: &str,
        device_id: &str,
        ts: i64,
        ip: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.begin("touch_device").await?;
        sqlx::query("UPDATE devices SET last_seen_ts = $3, last_seen_ip = COALESCE($4, last_seen_ip) WHERE user_id = $1 AND device_id = $2")
            .bind(user_id)
            .bind(device_id)
            .bind(ts)
            .bind(ip)
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }
}

/// Deletes one device and everything that belongs to it, in `tx`.
pub(crate) async fn delete_device_rows(tx: &mut Txn, user_id: &str, device_id: &str) -> Result<()> {
    for sql in [
        "DELETE FROM devices WHERE user_id = $1 AND device_id = $2",
        "DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2",
        "DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2",
        "DELETE FROM e2e_device_keys WHERE user_id = $1 AND device_id = $2",
        "DELETE FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2",
        "DELETE FROM e2e_fallback_keys WHERE user_id = $1 AND device_id = $2",
        "DELETE FROM to_device WHERE user_id = $1 AND device_id = $2",
        "DELETE FROM dehydrated_devices WHERE user_id = $1 AND device_id = $2",
    ] {
        sqlx::query(sql)
            .bind(user_id)
            .bind(device_id)
            .execute(tx.conn())
            .await?;
    }
    Ok(())
}
