//! http: the axum glue every API crate shares.
//!
//! The [`Ruma`] and [`Authed`] extractors turn a request into a ruma request type, the
//! one mapping from [`ganglion_core::ErrorKind`] to status and errcode lives in
//! [`error`], and [`route`] registers a handler on every path and method ruma knows for
//! an endpoint, so no path string is typed twice.
//! Depends on `core`, axum and ruma. Holds no services and no SQL.

pub mod error;
pub mod extract;
pub mod ratelimit;

use axum::{Router, handler::Handler, routing::on};
use ruma::api::{Metadata, path_builder::PathBuilder};

pub use error::{ApiError, ApiResult, RumaResponse};
pub use extract::{AuthState, Authed, BodyLimit, ClientIp, Identity, Ruma};
/// The percent codec of query strings and outbound paths (it lives in `core`, below the
/// outbound federation client).
pub use ganglion_core::percent::{percent_decode, percent_encode};
pub use ratelimit::RateLimiter;

/// Registers `handler` for endpoint `T` on every path ruma lists for it (r0, v3,
/// unstable…), with `T`'s method. Existing routes on the same path keep their methods.
pub fn route<T, H, X, S>(router: Router<S>, handler: H) -> Router<S>
where
    T: Metadata,
    H: Handler<X, S>,
    X: 'static,
    S: Clone + Send + Sync + 'static,
{
    let Ok(filter) = axum::routing::MethodFilter::try_from(T::METHOD) else {
        return router;
    };
    let mut router = router;
    for path in T::PATH_BUILDER.all_paths() {
        router = router.route(path, on(filter, handler.clone()));
    }
    router
}
