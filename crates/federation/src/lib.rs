//! federation: the Server-Server API (ARCHITECTURE §6). Request authentication
//! ([`xmatrix`]); keys, discovery, the outbound client and the inbound listener build on it.

pub mod xmatrix;
