//! Our copy of other servers' users' device lists (`remote_device_lists`): the keys a
//! `/keys/query` answer has for one user, at the origin's device-list position.

use sqlx::AssertSqlSafe;

use crate::{Result, Store, placeholders};

/// One user's copy: (user, origin's position, keys JSON, when fetched whole in ms).
pub type RemoteDeviceList = (String, i64, String, i64);

impl Store {
    /// The copies held for `users`.
    pub async fn select_remote_device_lists(
        &self,
        users: &[String],
    ) -> Result<Vec<RemoteDeviceList>> {
        let mut out = Vec::new();
        for chunk in users.chunks(500) {
            let sql = format!(
                "SELECT user_id, stream_id, keys, fetched_ts FROM remote_device_lists WHERE user_id IN {}",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query_as::<_, RemoteDeviceList>(AssertSqlSafe(sql));
            for u in chunk {
                q = q.bind(u);
            }
            out.extend(q.fetch_all(self.reader()).await?);
        }
        Ok(out)
    }

    /// Stores (or replaces) a user's copy.
    pub async fn upsert_remote_device_list(&self, copy: &RemoteDeviceList) -> Result<()> {
        let (user_id, stream_id, keys, fetched_ts) = copy;
        let mut tx = self.begin("upsert_remote_device_list").await?;
        sqlx::query(
            "INSERT INTO remote_device_lists (user_id, stream_id, keys, fetched_ts)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id,
                 keys = excluded.keys, fetched_ts = excluded.fetched_ts",
        )
        .bind(user_id)
        .bind(stream_id)
        .bind(keys)
        .bind(fetched_ts)
        .execute(tx.conn())
        .await?;
        tx.commit().await
    }

    /// Replaces a user's copy only if it is still at `was` (another update did not come
    /// in between): whether it was replaced.
    pub async fn update_remote_device_list(
        &self,
        user_id: &str,
        was: i64,
        stream_id: i64,
        keys: &str,
    ) -> Result<bool> {
        let mut tx = self.begin("update_remote_device_list").await?;
        let n = sqlx::query(
            "UPDATE remote_device_lists SET stream_id = $3, keys = $4
             WHERE user_id = $1 AND stream_id = $2",
        )
        .bind(user_id)
        .bind(was)
        .bind(stream_id)
        .bind(keys)
        .execute(tx.conn())
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Forgets the copies of `users`.
    pub async fn delete_remote_device_lists(&self, users: &[String]) -> Result<()> {
        let mut tx = self.begin("delete_remote_device_lists").await?;
        for chunk in users.chunks(500) {
            let sql = format!(
                "DELETE FROM remote_device_lists WHERE user_id IN {}",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for u in chunk {
                q = q.bind(u);
            }
            q.execute(tx.conn()).await?;
        }
        tx.commit().await
    }

    /// Which of `users` (other servers' users) share a joined room with one of our users.
    pub async fn select_users_sharing_with_locals(&self, users: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for chunk in users.chunks(500) {
            let sql = format!(
                "SELECT DISTINCT y.state_key FROM current_state y
                 WHERE y.type = 'm.room.member' AND y.membership = 'join' AND y.state_key IN {}
                   AND EXISTS (SELECT 1 FROM current_state x JOIN users u ON u.user_id = x.state_key
                               WHERE x.room_id = y.room_id AND x.type = 'm.room.member'
                                 AND x.membership = 'join')",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query_as::<_, (String,)>(AssertSqlSafe(sql));
            for u in chunk {
                q = q.bind(u);
            }
            out.extend(q.fetch_all(self.reader()).await?.into_iter().map(|(u,)| u));
        }
        Ok(out)
    }
}
