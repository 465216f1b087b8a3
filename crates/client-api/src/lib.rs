//! client-api: the Client-Server API handlers (except accounts and sync, which have
//! crates of their own), one module per spec module.
//!
//! Handlers are thin: extract (ruma request types), check who may call, call one service
//! method, shape the response. Services with logic live in `services` or in `rooms`.
//! Depends on `core`, `storage` (through services), `rooms`, `http`, and
//! `federation-client` (remote profiles); never on `federation`. Holds no SQL.

pub mod account_data;
pub mod discovery;
pub mod filter;
pub mod openid;
pub mod profile;
pub mod push_rules;
pub mod rooms;
pub mod services;

use std::sync::Arc;

use axum::Router;
use ganglion_http::RateLimiter;
use ganglion_rooms::Rooms;

pub use services::{ephemeral::Ephemeral, user_data::UserData};

/// What the client API handlers need to know of the configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The public base URL (for `/.well-known/matrix/client`).
    pub public_baseurl: String,
    /// Whether directory publication is open to every user (Synapse's default rules).
    pub default_room_version: String,
}

/// The state every client-api handler receives.
#[derive(Clone, Debug)]
pub struct ClientApi {
    /// Rooms (writes and history reads).
    pub rooms: Rooms,
    /// Account data, filters, profiles.
    pub user_data: UserData,
    /// Typing, receipts, read markers.
    pub ephemeral: Ephemeral,
    /// Configuration.
    pub config: Arc<ClientConfig>,
    /// Event sends per user.
    pub message_limit: Arc<RateLimiter>,
    /// Room creations and joins per user.
    pub room_limit: Arc<RateLimiter>,
    /// Push rules: change locks and the evaluator's ruleset cache.
    pub push_rules: push_rules::PushRulesState,
}

impl axum::extract::FromRef<ClientApi> for Rooms {
    fn from_ref(api: &ClientApi) -> Rooms {
        api.rooms.clone()
    }
}

/// The stateless room reads (`/messages`, `/context`, `/event`, `/state`, `/members`,
/// `/joined_members`, `/timestamp_to_event`) over a read-only [`Rooms`], for workers.
pub fn read_router(rooms: Rooms) -> Router {
    rooms::read::routes(Router::new()).with_state(rooms)
}

/// Every client-api route, with state applied.
pub fn router(api: ClientApi) -> Router {
    let r = Router::new();
    let r = discovery::routes(r);
    let r = profile::routes(r);
    let r = account_data::routes(r);
    let r = filter::routes(r);
    let r = openid::routes(r);
    let r = rooms::routes(r);
    let r = push_rules::routes(r);
    r.with_state(api)
}
