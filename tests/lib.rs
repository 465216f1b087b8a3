//! Black-box test support: start the real `ganglion` binary on SQLite or PostgreSQL and
//! talk HTTP to it. Used by `tests/it`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod client;
pub mod server;

pub use client::{Client, Resp};
pub use server::{Backend, TestServer};
