//! Black-box tests: the real `ganglion` binary on SQLite and on PostgreSQL, over HTTP.
//! Every test runs once per backend (see `both!`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accounts;
mod admin;
mod bad_input;
mod crash;
mod dehydrated;
mod discovery;
mod e2ee;
mod features;
mod federation;
mod federation_devices;
mod federation_e2ee;
mod federation_reads;
mod federation_to_device;
mod key_backup;
mod operations;
mod push_counts;
mod push_rules;
mod rooms;
mod split;
mod sync;

/// Declares a test twice: `<name>::sqlite` and `<name>::postgres`.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(ganglion_tests::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(ganglion_tests::Backend::Postgres).await
            }
        }
    };
}

/// Declares a test three times: on SQLite, on PostgreSQL, and against the split shape
/// (`ganglion-main` + two `ganglion-sync` behind nginx, PostgreSQL and Redis).
#[macro_export]
macro_rules! all3 {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(ganglion_tests::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(ganglion_tests::Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn split() {
                super::$name(ganglion_tests::Backend::Split).await
            }
        }
    };
}
