//! server: roles, listeners, config loading and the binaries.
//!
//! A process is a set of roles (docs/architecture.md, "Roles and shapes"); `ganglion` runs every role in one
//! process. [`build_all`] constructs services in dependency order; [`serve`] runs the
//! listeners until shutdown. Depends on every other crate; nothing depends on it.

pub mod app;
pub mod config;
pub mod internal;
pub mod routes;
pub mod run;
pub mod telemetry;
pub mod worker;

pub use app::{Server, build_all, serve};
