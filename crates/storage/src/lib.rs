//! storage: every SQL statement Ganglion runs, on PostgreSQL and SQLite.
//!
//! Depends on `core` only. Knows nothing of HTTP, `M_*` codes, Redis or task spawning.
//! Callers receive typed rows and [`Error`]; sqlx types never leave this crate.
//!
//! Both backends run through sqlx's `Any` driver over a schema restricted to portable
//! types (BIGINT, TEXT), so most SQL is written once; where the dialects differ, both
//! spellings sit side by side in one `match self.backend` (docs/decisions/0001).
//! SQLite gets one write connection and a separate read pool, so writers never race
//! into `SQLITE_BUSY`.

// Rows come back as tuples of column types (`query_as::<_, (String, i64, …)>`); naming
// each tuple type would add noise, not clarity.
#![allow(clippy::type_complexity)]

pub mod accounts;
pub mod admin_users;
pub mod aliases;
pub mod backfill;
pub mod cluster;
pub mod dehydrated;
pub mod device_lists;
pub mod devices;
pub mod e2e_keys;
pub mod events;
pub mod key_backup;
mod migrate;
pub mod openid;
pub mod push_actions;
pub mod receipts;
pub mod remote_devices;
pub mod rooms;
pub mod server_keys;
pub mod state;
pub mod streams;
pub mod user_data;

use std::{sync::Once, time::Duration};

use sqlx::{
    Any, AnyConnection, AnyPool, Transaction,
    any::{AnyPoolOptions, install_default_drivers},
};

pub use migrate::MIGRATIONS;

/// A storage failure, in storage words. Never an HTTP status or errcode.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The row asked for does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness constraint refused the write.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database could not be reached or timed out.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Stored data does not parse.
    #[error("corrupt data in {what}: {detail}")]
    Corrupt {
        /// Which row or column.
        what: &'static str,
        /// The parse error.
        detail: String,
    },
    /// Any other database error.
    #[error("database error: {0}")]
    Database(String),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => Error::NotFound,
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Error::Unavailable(e.to_string())
            }
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Error::Conflict(db.message().to_owned())
            }
            other => Error::Database(other.to_string()),
        }
    }
}

/// Storage results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which database is behind the pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL: one pool for reads and writes.
    Postgres,
    /// SQLite: one writer connection, several readers, WAL.
    Sqlite,
}

/// The database handle every service holds. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    read: AnyPool,
    write: AnyPool,
}

/// An open write transaction. Rolls back when dropped uncommitted.
pub(crate) struct Txn {
    inner: Transaction<'static, Any>,
    name: &'static str,
    started: std::time::Instant,
}

impl Txn {
    /// The connection to run statements on.
    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
        &mut self.inner
    }

    /// Commits, recording the transaction's duration under its name.
    pub(crate) async fn commit(self) -> Result<()> {
        let Txn {
            inner,
            name,
            started,
        } = self;
        let out = inner.commit().await.map_err(Error::from);
        metrics::histogram!("ganglion_db_txn_seconds", "txn" => name)
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &out {
            tracing::warn!(txn = name, error = %e, "commit failed");
        }
        out
    }
}

static DRIVERS: Once = Once::new();

impl Store {
    /// Connects to `url` (`sqlite://…` or `postgres://…`), creating a SQLite file if needed.
    /// Does not migrate: call [`Store::migrate`].
    pub async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Store> {
        DRIVERS.call_once(install_default_drivers);
        if url.starts_with("sqlite:") {
            let url = if url.contains('?') {
                url.to_owned()
            } else {
                format!("{url}?mode=rwc")
            };
            let write = AnyPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(acquire_timeout)
                .after_connect(sqlite_pragmas)
                .connect(&url)
                .await?;
            let read = AnyPoolOptions::new()
                .max_connections(max_connections.clamp(1, 8))
                .acquire_timeout(acquire_timeout)
                .after_connect(sqlite_pragmas)
                .connect(&url)
                .await?;
            Ok(Store {
                backend: Backend::Sqlite,
                read,
                write,
            })
        } else {
            let pool = AnyPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(acquire_timeout)
                .connect(url)
                .await?;
            Ok(Store {
                backend: Backend::Postgres,
                read: pool.clone(),
                write: pool,
            })
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool for reads.
    pub(crate) fn reader(&self) -> &AnyPool {
        &self.read
    }

    /// The pool for writes, for a single statement that needs no explicit transaction.
    pub(crate) fn writer(&self) -> &AnyPool {
        &self.write
    }

    /// Begins a write transaction named `name` (its span and metric label). Dropping the
    /// handle without [`Txn::commit`] rolls back.
    pub(crate) async fn begin(&self, name: &'static str) -> Result<Txn> {
        Ok(Txn {
            inner: self.write.begin().await?,
            name,
            started: std::time::Instant::now(),
        })
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.read).await.is_ok()
    }

    /// Pool statistics for metrics: (size, idle) of the read pool.
    pub fn pool_stats(&self) -> (u32, usize) {
        (self.read.size(), self.read.num_idle())
    }

    /// Closes the pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// Connection setup for SQLite: WAL, full fsync on commit (nothing accepted is lost),
/// and a busy timeout so readers wait out the writer's checkpoints.
fn sqlite_pragmas(
    conn: &mut AnyConnection,
    _meta: sqlx::pool::PoolConnectionMetadata,
) -> futures_util::future::BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        for p in [
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = FULL",
            "PRAGMA busy_timeout = 10000",
        ] {
            sqlx::query(p).execute(&mut *conn).await?;
        }
        Ok(())
    })
}

/// Builds `($n, $n+1, …)` placeholders for an `IN` list of `count` items starting at `$start`.
pub(crate) fn placeholders(start: usize, count: usize) -> String {
    let mut s = String::with_capacity(count * 4 + 2);
    s.push('(');
    for i in 0..count {
        if i > 0 {
            s.push(',');
        }
        s.push('$');
        s.push_str(&(start + i).to_string());
    }
    s.push(')');
    s
}

/// Turns a JSON text column into a value, naming the column on failure.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(what: &'static str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt {
        what,
        detail: e.to_string(),
    })
}

/// Booleans are stored as BIGINT 0/1 (portable across both backends).
pub(crate) fn flag(b: bool) -> i64 {
    i64::from(b)
}
