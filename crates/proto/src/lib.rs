//! proto: the prost types of the replication bus, generated from `proto/bus.proto`.
//! No logic lives here; encoding and transport belong to the bus crates.

#![allow(missing_docs, clippy::all)]

/// Bus entries, version 1.
pub mod bus {
    include!(concat!(env!("OUT_DIR"), "/ganglion.bus.v1.rs"));
}
