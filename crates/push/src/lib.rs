//! push: push notifications (spec: Client-Server API, "Push Notifications"). So far the
//! push rules: each user's ruleset (`rules`) and the `/pushrules` API (`routes`).
//!
//! Depends on `core`, `storage`, `bus`, `rooms` (stream writers) and `http`. Holds no
//! SQL. Must NOT know about `/sync`: the sync crate reads the `m.push_rules` account data
//! this crate writes, with [`rules::ruleset_of`] for a user who has none stored.

mod routes;
pub mod rules;

use axum::Router;

pub use rules::PushRules;

/// The state every push handler receives.
#[derive(Clone, Debug)]
pub struct PushApi {
    /// Push rules.
    pub rules: PushRules,
}

/// Every push route, with state applied.
pub fn router(api: PushApi) -> Router {
    routes::routes(Router::new()).with_state(api)
}
