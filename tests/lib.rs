//! Black-box test support: start the real `ganglion` binary on SQLite or PostgreSQL and
//! talk HTTP to it. Used by `tests/it`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod client;
pub mod server;

pub use client::{Client, Resp};
pub use server::{Backend, TestServer};

/// An HTTP client builder for tests. reqwest is built with rustls and no default crypto
/// provider (the federation crate installs ring), so every process, test binaries
/// included, installs ring before building a client.
pub fn http() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}
