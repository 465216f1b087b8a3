//! Membership leases and shard cursors of the split shape (docs/decisions/0003-membership-leases.md). Lease times
//! come from the database's clock, never a process's, so skewed hosts agree on who is live.

use crate::{Backend, Result, Store};

/// A live member of a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its instance name.
    pub instance: String,
    /// When it (last) joined, database clock, ms.
    pub joined_ms: i64,
}

impl Store {
    /// The database clock in milliseconds since the epoch, as an SQL expression.
    fn db_now_ms(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        }
    }

    /// Renews (or takes) `instance`'s lease in `role` for `lease_ms` and returns the
    /// role's live members, sorted by instance. A different `incarnation` under the same
    /// name (a restart that did not wait for the old lease to run out) takes it over and
    /// is reported as `Some(previous incarnation)`.
    pub async fn renew_member(
        &self,
        role: &str,
        instance: &str,
        incarnation: &str,
        lease_ms: i64,
    ) -> Result<(Vec<Member>, Option<String>)> {
        let now = self.db_now_ms();
        let mut tx = self.begin("renew_member").await?;
        let previous: Option<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT incarnation, expires_ms - {now} FROM cluster_members WHERE role = $1 AND instance = $2"
        )))
        .bind(role)
        .bind(instance)
        .fetch_optional(tx.conn())
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO cluster_members (role, instance, incarnation, joined_ms, expires_ms)
             VALUES ($1, $2, $3, {now}, {now} + $4)
             ON CONFLICT (role, instance) DO UPDATE SET
                 joined_ms = CASE WHEN cluster_members.incarnation = $3
                     AND cluster_members.expires_ms > {now}
                     THEN cluster_members.joined_ms ELSE {now} END,
                 incarnation = $3, expires_ms = {now} + $4"
        )))
        .bind(role)
        .bind(instance)
        .bind(incarnation)
        .bind(lease_ms)
        .execute(tx.conn())
        .await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT instance, joined_ms FROM cluster_members
             WHERE role = $1 AND expires_ms > {now} ORDER BY instance"
        )))
        .bind(role)
        .fetch_all(tx.conn())
        .await?;
        tx.commit().await?;
        let taken_over = previous
            .filter(|(inc, left)| inc != incarnation && *left > 0)
            .map(|(inc, _)| inc);
        Ok((
            rows.into_iter()
                .map(|(instance, joined_ms)| Member {
                    instance,
                    joined_ms,
                })
                .collect(),
            taken_over,
        ))
    }

    /// The live members of `role`, sorted by instance.
    pub async fn select_members(&self, role: &str) -> Result<Vec<Member>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT instance, joined_ms FROM cluster_members
             WHERE role = $1 AND expires_ms > {} ORDER BY instance",
            self.db_now_ms()
        )))
        .bind(role)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(instance, joined_ms)| Member {
                instance,
                joined_ms,
            })
            .collect())
    }

    /// Drops `instance`'s lease (a clean leave), if it still holds `incarnation`; and
    /// every lease of any role that ran out more than an hour ago.
    pub async fn remove_member(&self, role: &str, instance: &str, incarnation: &str) -> Result<()> {
        let mut tx = self.begin("remove_member").await?;
        sqlx::query(
            "DELETE FROM cluster_members WHERE role = $1 AND instance = $2 AND incarnation = $3",
        )
        .bind(role)
        .bind(instance)
        .bind(incarnation)
        .execute(tx.conn())
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM cluster_members WHERE expires_ms < {} - 3600000",
            self.db_now_ms()
        )))
        .execute(tx.conn())
        .await?;
        tx.commit().await
    }

    /// Every committed cursor of a role: (key, position).
    pub async fn select_shard_cursors(&self, role: &str) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT shard_key, position FROM shard_cursors WHERE role = $1 ORDER BY shard_key",
        )
        .bind(role)
        .fetch_all(&self.read)
        .await?)
    }

    /// The committed cursor of one shard key.
    pub async fn select_shard_cursor(&self, role: &str, key: &str) -> Result<Option<i64>> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT position FROM shard_cursors WHERE role = $1 AND shard_key = $2")
                .bind(role)
                .bind(key)
                .fetch_optional(&self.read)
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Moves a shard key's cursor forward to `position` (never back), recording `owner`.
    /// Returns the cursor now stored.
    pub async fn advance_shard_cursor(
        &self,
        role: &str,
        key: &str,
        position: i64,
        owner: &str,
    ) -> Result<i64> {
        let mut tx = self.begin("advance_shard_cursor").await?;
        sqlx::query(
            "INSERT INTO shard_cursors (role, shard_key, position, owner, updated_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (role, shard_key) DO UPDATE SET
                 position = CASE WHEN shard_cursors.position < $3 THEN $3 ELSE shard_cursors.position END,
                 owner = $4, updated_ms = $5",
        )
        .bind(role)
        .bind(key)
        .bind(position)
        .bind(owner)
        .bind(ganglion_core::time::now_ms())
        .execute(tx.conn())
        .await?;
        let (stored,): (i64,) =
            sqlx::query_as("SELECT position FROM shard_cursors WHERE role = $1 AND shard_key = $2")
                .bind(role)
                .bind(key)
                .fetch_one(tx.conn())
                .await?;
        tx.commit().await?;
        Ok(stored)
    }
}
