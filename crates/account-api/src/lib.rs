//! account-api: who a client is. Registration, login and logout, refresh tokens, access-token
//! resolution, user-interactive auth, passwords, deactivation and the device list, plus the
//! Synapse admin endpoints for shared-secret registration and registration tokens.
//!
//! Depends on `core`, `storage`, `http` and `rooms` (deactivation leaves every room through
//! [`ganglion_rooms::Rooms::leave`]). Holds no SQL: every statement is a `Store` method.
//! Must NOT know about sync, the bus or other API crates; other crates learn who is calling
//! only through the [`ganglion_http::AuthState`] that [`auth_middleware`] puts into request
//! extensions. Passwords are hashed with argon2 off the async runtime (`spawn_blocking`).
//!
//! Layout: [`Accounts`] is the service (one file per area: registration, login, account,
//! devices, UIA, shared-secret registration, registration tokens); `routes` holds the thin
//! HTTP handlers, mirroring the spec's modules; [`router`] registers them.

mod account;
mod accounts;
mod devices;
mod login;
mod middleware;
mod password;
mod registration;
mod registration_tokens;
mod routes;
mod shared_secret;
mod tokens;
mod uia;
mod username;

pub use accounts::Accounts;
pub use middleware::auth_middleware;
pub use routes::router;
