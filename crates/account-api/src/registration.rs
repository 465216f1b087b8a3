//! Account registration (spec: Client-Server API, "Account registration"), in the order of
//! Synapse's `RegisterRestServlet.on_POST` (`synapse/rest/client/register.py`): refuse
//! what can never succeed, check the username, run UIA, then create the account.

use std::net::IpAddr;

use ganglion_core::{Error, ErrorKind, Result, time::now_ms};
use ganglion_rooms::storage_error;
use ruma::{
    OwnedUserId, UserId,
    api::client::account::register::{self, LoginType, RegistrationKind},
};

use crate::{
    Accounts,
    login::{LoginGrant, rate_limit_key},
    password,
    registration_tokens::token_is_valid,
    tokens,
    uia::registration_flows,
    username::{check_localpart, user_id},
};

/// Attempts at a free generated localpart before giving up (a collision among 9·10⁹
/// numbers is already unlikely).
const GENERATED_LOCALPART_ATTEMPTS: usize = 5;

/// A new account, and its first login unless the client inhibited it.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The new user.
    pub user_id: OwnedUserId,
    /// The first device's credentials; `None` with `inhibit_login`.
    pub login: Option<LoginGrant>,
}

fn registration_closed() -> Error {
    Error::forbidden("Registration has been disabled")
}

impl Accounts {
    /// `POST /register`. `sent_access_token`: whether the request carried an access token,
    /// which only application services may do here.
    pub(crate) async fn register(
        &self,
        req: register::v3::Request,
        client_ip: Option<IpAddr>,
        sent_access_token: bool,
    ) -> Result<Registered> {
        match req.kind {
            RegistrationKind::User => {}
            RegistrationKind::Guest => {
                return Err(Error::new(
                    ErrorKind::GuestAccessForbidden,
                    "Guest access is disabled",
                ));
            }
            other => {
                return Err(Error::invalid_param(format!(
                    "Do not understand membership kind: {other}"
                )));
            }
        }
        if matches!(req.login_type, Some(LoginType::ApplicationService)) {
            // No application services are configured, so no token can be theirs.
            return Err(if sent_access_token {
                Error::new(
                    ErrorKind::UnknownToken { soft_logout: false },
                    "Invalid application service token",
                )
            } else {
                Error::unknown(
                    "Appservice token must be provided when using a type of m.login.application_service",
                )
            });
        }
        if sent_access_token {
            return Err(Error::unknown(
                "An access token should not be provided on requests to /register (except if type is m.login.application_service)",
            ));
        }
        let flows = registration_flows(&self.inner.registration).ok_or_else(registration_closed)?;
        // Registration lower-cases (Synapse: "people who try to register with upper-case in
        // their usernames don't get a nasty surprise"); logins are case-insensitive anyway.
        let chosen = match req.username.as_deref() {
            Some(name) => Some(self.available_user_id(&name.to_lowercase()).await?),
            None => None,
        };
        if let Some(pw) = &req.password {
            password::check_policy(pw, self.inner.auth.min_password_length)?;
        }

        let completed = self
            .user_interactive_auth("register", None, &flows, req.auth.as_ref())
            .await?;

        let Some(pw) = req.password.as_deref() else {
            return Err(Error::missing_param("Missing params: password"));
        };
        self.inner
            .registration_limiter
            .check(&rate_limit_key(client_ip))?;
        if let Some(token) = completed.progress.registration_token()
            && !self
                .inner
                .store
                .use_registration_token(token)
                .await
                .map_err(storage_error)?
        {
            return Err(Error::new(
                ErrorKind::Unauthorized,
                "Invalid registration token",
            ));
        }
        let hash = password::hash(pw).await?;
        let user_id = match chosen {
            Some(user_id) => {
                self.insert_user(&user_id, Some(&hash), false).await?;
                user_id
            }
            None => self.insert_generated_user(&hash).await?,
        };
        self.finish_uia(&completed).await?;
        tracing::info!(user_id = %user_id, "registered");

        let login = if req.inhibit_login {
            None
        } else {
            let ip = client_ip.map(|ip| ip.to_string());
            let grant = self
                .issue_login(
                    &user_id,
                    req.device_id,
                    req.initial_device_display_name.as_deref(),
                    req.refresh_token,
                    ip.as_deref(),
                )
                .await?;
            Some(grant)
        };
        Ok(Registered { user_id, login })
    }

    /// Creates a local account outside the client API (the `ganglion register-user` CLI,
    /// shared-secret registration). The localpart is lower-cased, then must be a valid
    /// free username (400 `M_INVALID_USERNAME` / `M_USER_IN_USE`). No device is created.
    pub async fn register_user(
        &self,
        localpart: &str,
        password: Option<&str>,
        admin: bool,
    ) -> Result<OwnedUserId> {
        let user_id = self.available_user_id(&localpart.to_lowercase()).await?;
        let hash = match password {
            Some(pw) => Some(password::hash(pw).await?),
            None => None,
        };
        self.insert_user(&user_id, hash.as_deref(), admin).await?;
        tracing::info!(user_id = %user_id, admin, "registered by an administrator");
        Ok(user_id)
    }

    /// `GET /register/available`: fine, or why not. No lower-casing here, as Synapse.
    pub(crate) async fn check_username_available(&self, username: &str) -> Result<()> {
        if !self.registration_open() {
            return Err(registration_closed());
        }
        self.available_user_id(username).await.map(drop)
    }

    /// `GET /register/m.login.registration_token/validity`.
    pub(crate) async fn registration_token_validity(&self, token: &str) -> Result<bool> {
        if !self.registration_open() {
            return Err(registration_closed());
        }
        let row = self
            .inner
            .store
            .select_registration_token(token)
            .await
            .map_err(storage_error)?;
        Ok(row.is_some_and(|row| token_is_valid(&row, now_ms())))
    }

    /// The user id `localpart` names, if it is valid and no account has it (compared
    /// case-insensitively, as Synapse's `check_username`).
    async fn available_user_id(&self, localpart: &str) -> Result<OwnedUserId> {
        let user_id = check_localpart(localpart, self.server_name())?;
        let taken = self
            .inner
            .store
            .select_user_case_insensitive(user_id.as_str())
            .await
            .map_err(storage_error)?;
        if taken.is_some() {
            return Err(Error::new(ErrorKind::UserInUse, "User ID already taken."));
        }
        Ok(user_id)
    }

    /// Writes the account, with the localpart as its first display name (as Synapse's
    /// `register_user`, so member events show a name from the start).
    async fn insert_user(
        &self,
        user_id: &UserId,
        password_hash: Option<&str>,
        admin: bool,
    ) -> Result<()> {
        let store = &self.inner.store;
        store
            .insert_user(user_id.as_str(), password_hash, admin)
            .await
            .map_err(|e| match e {
                ganglion_storage::Error::Conflict(_) => {
                    Error::new(ErrorKind::UserInUse, "User ID already taken.")
                }
                other => storage_error(other),
            })?;
        store
            .update_profile(user_id.as_str(), Some(user_id.localpart()), None)
            .await
            .map_err(storage_error)
    }

    /// Creates an account under a generated numeric localpart.
    async fn insert_generated_user(&self, password_hash: &str) -> Result<OwnedUserId> {
        for _ in 0..GENERATED_LOCALPART_ATTEMPTS {
            let user_id = user_id(&tokens::numeric_localpart(), self.server_name())?;
            match self.insert_user(&user_id, Some(password_hash), false).await {
                Ok(()) => return Ok(user_id),
                Err(e) if e.kind == ErrorKind::UserInUse => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::internal("no free generated localpart"))
    }
}
