//! bus-redis against a real Redis (`GANGLION_TEST_REDIS`, default `redis://127.0.0.1:6379`).
//! Every test uses its own random key prefix, so tests run in parallel without touching
//! each other's streams; nothing here flushes or kills anything but its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixture;
mod outages;
mod proxy;
mod suite;
mod wire;
