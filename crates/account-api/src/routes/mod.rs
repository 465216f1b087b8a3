//! The HTTP handlers, one file per spec module, and the [`router`] that mounts them.
//! Handlers extract, check who may call, call one [`Accounts`] method and shape the reply.

mod account;
mod admin;
mod device;
mod session;

use axum::{
    Router,
    routing::{get, post},
};
use ganglion_http::route;
use ruma::api::client::{
    account::{
        change_password, check_registration_token_validity, deactivate, get_username_availability,
        register, whoami,
    },
    device::{delete_device, delete_devices, get_device, get_devices, update_device},
    session::{get_login_types, login, logout, logout_all, refresh_token},
};

use crate::Accounts;

/// Every endpoint this crate serves, with its state applied: the client API paths ruma
/// knows for each endpoint (r0, v3, unstable), and the Synapse admin API under
/// `/_synapse/admin/v1`. `POST|GET /_synapse/admin/v1/register` is mounted only when
/// `registration.shared_secret` is set, so without it the server's fallback answers 404
/// `M_UNRECOGNIZED`. The routes expect [`crate::auth_middleware`] in front of them.
pub fn router(accounts: Accounts) -> Router {
    let mut r = Router::new();
    r = route::<register::v3::Request, _, _, _>(r, account::register);
    r = route::<get_username_availability::v3::Request, _, _, _>(
        r,
        account::get_username_availability,
    );
    r = route::<check_registration_token_validity::v1::Request, _, _, _>(
        r,
        account::check_registration_token_validity,
    );
    r = route::<whoami::v3::Request, _, _, _>(r, account::whoami);
    r = route::<change_password::v3::Request, _, _, _>(r, account::change_password);
    r = route::<deactivate::v3::Request, _, _, _>(r, account::deactivate);

    r = route::<get_login_types::v3::Request, _, _, _>(r, session::get_login_types);
    r = route::<login::v3::Request, _, _, _>(r, session::login);
    r = route::<logout::v3::Request, _, _, _>(r, session::logout);
    r = route::<logout_all::v3::Request, _, _, _>(r, session::logout_all);
    r = route::<refresh_token::v3::Request, _, _, _>(r, session::refresh_token);

    r = route::<get_devices::v3::Request, _, _, _>(r, device::get_devices);
    r = route::<get_device::v3::Request, _, _, _>(r, device::get_device);
    r = route::<update_device::v3::Request, _, _, _>(r, device::update_device);
    r = route::<delete_device::v3::Request, _, _, _>(r, device::delete_device);
    r = route::<delete_devices::v3::Request, _, _, _>(r, device::delete_devices);

    if accounts.shared_secret_enabled() {
        r = r.route(
            "/_synapse/admin/v1/register",
            get(admin::get_nonce).post(admin::register),
        );
    }
    r = r
        .route(
            "/_synapse/admin/v1/registration_tokens",
            get(admin::list_registration_tokens),
        )
        .route(
            "/_synapse/admin/v1/registration_tokens/new",
            post(admin::new_registration_token),
        )
        .route(
            "/_synapse/admin/v1/registration_tokens/{token}",
            get(admin::get_registration_token)
                .put(admin::update_registration_token)
                .delete(admin::delete_registration_token),
        );
    r.with_state(accounts)
}
