//! Stream positions as recorded in the tables: what a reader catches up from on start.

use ganglion_core::StreamKind;

use crate::{Result, Store};

impl Store {
    /// The highest position written to a stream's table (0 if none). Streams kept only in
    /// memory (typing, presence) and streams without a table yet start at 0.
    pub async fn select_stream_max(&self, kind: StreamKind) -> Result<i64> {
        let sql = match kind {
            StreamKind::Events => "SELECT MAX(stream_ordering) FROM events",
            StreamKind::Receipts => "SELECT MAX(stream_id) FROM receipts",
            StreamKind::AccountData => "SELECT MAX(stream_id) FROM account_data",
            // Delivered messages are deleted; the transaction rows keep the position.
            StreamKind::ToDevice => {
                "SELECT MAX(m) FROM (SELECT MAX(stream_id) AS m FROM to_device
                                     UNION ALL SELECT MAX(stream_id) FROM to_device_txns) t"
            }
            StreamKind::DeviceLists => "SELECT MAX(stream_id) FROM device_list_changes",
            StreamKind::Typing | StreamKind::Presence | StreamKind::PushRules => return Ok(0),
        };
        let (n,): (Option<i64>,) = sqlx::query_as(sql).fetch_one(self.reader()).await?;
        Ok(n.unwrap_or(0))
    }

    /// The committed maximum of every database-backed stream, in one round trip (each an
    /// index-only lookup): events, receipts, account data, to-device, device lists.
    pub async fn select_stream_maxes(&self) -> Result<[(StreamKind, i64); 5]> {
        let row: (
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
        ) = sqlx::query_as(
            "SELECT (SELECT MAX(stream_ordering) FROM events),
                    (SELECT MAX(stream_id) FROM receipts),
                    (SELECT MAX(stream_id) FROM account_data),
                    (SELECT MAX(stream_id) FROM to_device),
                    (SELECT MAX(stream_id) FROM to_device_txns),
                    (SELECT MAX(stream_id) FROM device_list_changes)",
        )
        .fetch_one(self.reader())
        .await?;
        Ok([
            (StreamKind::Events, row.0.unwrap_or(0)),
            (StreamKind::Receipts, row.1.unwrap_or(0)),
            (StreamKind::AccountData, row.2.unwrap_or(0)),
            (StreamKind::ToDevice, row.3.max(row.4).unwrap_or(0)),
            (StreamKind::DeviceLists, row.5.unwrap_or(0)),
        ])
    }
}
