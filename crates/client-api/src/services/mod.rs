//! Services with logic the handlers call.

pub mod ephemeral;
pub mod user_data;
