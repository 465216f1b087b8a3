//! Schema migrations, embedded in the binary so it runs from anywhere.
//!
//! `migrations/postgres/NNNN_name.sql` and `migrations/sqlite/NNNN_name.sql` carry the
//! same numbers (a test checks they stay in step). Applied versions are recorded in
//! `ganglion_migrations`; on PostgreSQL an advisory lock keeps two processes starting at
//! once from racing.

use crate::{Backend, Error, Result, Store};

/// One migration: (version, name, PostgreSQL text, SQLite text).
pub type Migration = (i64, &'static str, &'static str, &'static str);

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    (
        1,
        "init",
        include_str!("../../../migrations/postgres/0001_init.sql"),
        include_str!("../../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "txn_ids_per_room",
        include_str!("../../../migrations/postgres/0002_txn_ids_per_room.sql"),
        include_str!("../../../migrations/sqlite/0002_txn_ids_per_room.sql"),
    ),
    (
        3,
        "cluster",
        include_str!("../../../migrations/postgres/0003_cluster.sql"),
        include_str!("../../../migrations/sqlite/0003_cluster.sql"),
    ),
    (
        4,
        "server_keys",
        include_str!("../../../migrations/postgres/0004_server_keys.sql"),
        include_str!("../../../migrations/sqlite/0004_server_keys.sql"),
    ),
    (
        5,
        "backfill",
        include_str!("../../../migrations/postgres/0005_backfill.sql"),
        include_str!("../../../migrations/sqlite/0005_backfill.sql"),
    ),
    (
        6,
        "openid_tokens",
        include_str!("../../../migrations/postgres/0006_openid_tokens.sql"),
        include_str!("../../../migrations/sqlite/0006_openid_tokens.sql"),
    ),
    (
        7,
        "e2ee",
        include_str!("../../../migrations/postgres/0007_e2ee.sql"),
        include_str!("../../../migrations/sqlite/0007_e2ee.sql"),
    ),
    (
        8,
        "key_backup",
        include_str!("../../../migrations/postgres/0008_key_backup.sql"),
        include_str!("../../../migrations/sqlite/0008_key_backup.sql"),
    ),
    (
        9,
        "federated_devices",
        include_str!("../../../migrations/postgres/0009_federated_devices.sql"),
        include_str!("../../../migrations/sqlite/0009_federated_devices.sql"),
    ),
    (
        10,
        "dehydrated_devices",
        include_str!("../../../migrations/postgres/0010_dehydrated_devices.sql"),
        include_str!("../../../migrations/sqlite/0010_dehydrated_devices.sql"),
    ),
    (
        11,
        "push_actions",
        include_str!("../../../migrations/postgres/0011_push_actions.sql"),
        include_str!("../../../migrations/sqlite/0011_push_actions.sql"),
    ),
];

/// An arbitrary constant naming Ganglion's migration lock on PostgreSQL.
const PG_MIGRATION_LOCK: i64 = 0x6761_6e67_6c69;

impl Store {
    /// Applies every migration not yet applied. Returns the versions applied now.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        let mut conn = self.write.acquire().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(PG_MIGRATION_LOCK)
                .execute(&mut *conn)
                .await?;
        }
        let out = self.migrate_locked(&mut conn).await;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(PG_MIGRATION_LOCK)
                .execute(&mut *conn)
                .await?;
        }
        out
    }

    async fn migrate_locked(&self, conn: &mut sqlx::AnyConnection) -> Result<Vec<i64>> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS ganglion_migrations (
                version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ts BIGINT NOT NULL)",
        )
        .execute(&mut *conn)
        .await?;
        let applied: Vec<(i64,)> = sqlx::query_as("SELECT version FROM ganglion_migrations")
            .fetch_all(&mut *conn)
            .await?;
        let mut done = Vec::new();
        for &(version, name, pg, lite) in MIGRATIONS {
            if applied.iter().any(|(v,)| *v == version) {
                continue;
            }
            let text = match self.backend {
                Backend::Postgres => pg,
                Backend::Sqlite => lite,
            };
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            sqlx::raw_sql(text).execute(&mut *tx).await.map_err(|e| {
                Error::Database(format!("migration {version:04}_{name} failed: {e}"))
            })?;
            sqlx::query(
                "INSERT INTO ganglion_migrations (version, name, applied_ts) VALUES ($1, $2, $3)",
            )
            .bind(version)
            .bind(name)
            .bind(ganglion_core::time::now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(version, name, "applied migration");
            done.push(version);
        }
        Ok(done)
    }
}

impl Store {
    /// Every (table, column) of the schema, sorted: for the schema-parity test.
    pub async fn schema_columns(&self) -> Result<Vec<(String, String)>> {
        let mut out: Vec<(String, String)> = match self.backend {
            Backend::Postgres => sqlx::query_as(
                "SELECT table_name::TEXT, column_name::TEXT FROM information_schema.columns WHERE table_schema = 'public'",
            )
            .fetch_all(&self.read)
            .await?,
            Backend::Sqlite => sqlx::query_as(
                "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
            )
            .fetch_all(&self.read)
            .await?,
        };
        out.sort();
        Ok(out)
    }

    /// Runs an administrative statement (CREATE/DROP DATABASE) for test fixtures and tools.
    pub async fn execute_admin(&self, sql: &str) -> Result<()> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.write)
            .await?;
        Ok(())
    }
}
