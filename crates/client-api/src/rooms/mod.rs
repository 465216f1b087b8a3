//! Rooms: creation, membership, sending, reading, aliases, the directory, spaces, typing
//! and receipts.

pub mod alias;
pub mod create;
pub mod directory;
pub mod ephemeral;
pub mod membership;
pub mod read;
pub mod send;
pub mod spaces;

use axum::Router;
use ganglion_rooms::reads::EventFilter;
use ruma::api::client::filter::RoomEventFilter;

use crate::ClientApi;

/// Registers every room route.
pub fn routes(r: Router<ClientApi>) -> Router<ClientApi> {
    let r = create::routes(r);
    let r = membership::routes(r);
    let r = send::routes(r);
    let r = read::routes(r);
    let r = alias::routes(r);
    let r = directory::routes(r);
    let r = spaces::routes(r);
    ephemeral::routes(r)
}

/// Our filter from ruma's `RoomEventFilter`.
pub fn event_filter(f: &RoomEventFilter) -> EventFilter {
    EventFilter::from_ruma(f)
}
