//! core: the vocabulary every other Ganglion crate shares.
//!
//! Ids (re-exported from ruma), the `M_*` error kinds, configuration types, stream
//! positions and sync tokens, and our PDU type. No I/O: nothing here touches a socket, a
//! file or a database, so everything in it is tested with plain unit tests.
//! Depends on ruma, serde and thiserror only. Keep it small: touching it rebuilds the world.

pub mod config;
pub mod error;
pub mod pdu;
pub mod percent;
pub mod time;
pub mod token;

pub use error::{Error, ErrorKind, Result};
pub use pdu::Pdu;
pub use token::{StreamKind, StreamPos, SyncToken};

/// The largest PDU the spec allows, in bytes of canonical JSON (spec: "Size limits").
pub const MAX_PDU_BYTES: usize = 65_536;
