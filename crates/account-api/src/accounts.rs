//! The [`Accounts`] service: its state, access-token resolution and the pieces every area
//! shares (looking users up, issuing a device with its tokens).

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ganglion_core::{
    Error, Result,
    config::{AuthConfig, RegistrationConfig},
    time::now_ms,
};
use ganglion_http::{AuthState, Identity, RateLimiter};
use ganglion_rooms::{Rooms, storage_error, streams::StreamWriter};
use ganglion_storage::{
    Store,
    accounts::{NewLogin, UserRow},
};
use ruma::{OwnedDeviceId, OwnedServerName, OwnedUserId, ServerName, UserId};

use crate::{login::LoginGrant, tokens};

/// Accounts, sessions and devices. Cheap to clone: the state sits behind one `Arc`.
#[derive(Clone)]
pub struct Accounts {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) rooms: Rooms,
    pub(crate) server_name: OwnedServerName,
    pub(crate) registration: RegistrationConfig,
    pub(crate) auth: AuthConfig,
    pub(crate) registration_limiter: RateLimiter,
    pub(crate) login_limiter: RateLimiter,
    /// main's device-list writer: deleting or renaming a device changes the list others
    /// see. `None` in workers, which forward writes to main.
    pub(crate) device_lists: Option<Arc<StreamWriter>>,
    /// Shared-secret registration nonces and when each was issued. In memory, as Synapse:
    /// a nonce is only good for a minute, so losing them on restart costs nothing.
    pub(crate) nonces: Mutex<HashMap<String, Instant>>,
}

impl fmt::Debug for Accounts {
    // By hand: the registration config holds the shared secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accounts")
            .field("server_name", &self.inner.server_name)
            .finish_non_exhaustive()
    }
}

impl Accounts {
    /// The service over its dependencies. `registration_limiter` is keyed by client IP
    /// and taken once per account created; `login_limiter` by client IP, once per
    /// `POST /login`. `device_lists` is main's device-list writer (`None` in workers).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        rooms: Rooms,
        server_name: OwnedServerName,
        registration: RegistrationConfig,
        auth: AuthConfig,
        registration_limiter: RateLimiter,
        login_limiter: RateLimiter,
        device_lists: Option<Arc<StreamWriter>>,
    ) -> Accounts {
        Accounts {
            inner: Arc::new(Inner {
                store,
                rooms,
                server_name,
                registration,
                auth,
                registration_limiter,
                login_limiter,
                device_lists,
                nonces: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The server name user ids are minted under.
    pub fn server_name(&self) -> &ServerName {
        &self.inner.server_name
    }

    /// What an access token stands for: a user (with device and admin flag), or an invalid
    /// token. Expired tokens are `Invalid { soft_logout: true }` (spec: "Soft logout"),
    /// unknown ones `Invalid { soft_logout: false }`. Deactivation deletes a user's tokens,
    /// so no deactivated user resolves.
    pub async fn resolve_token(&self, token: &str) -> Result<AuthState, Error> {
        let Some(row) = self
            .inner
            .store
            .select_token_identity(token)
            .await
            .map_err(storage_error)?
        else {
            return Ok(AuthState::Invalid { soft_logout: false });
        };
        if row.expires_ts.is_some_and(|t| t <= now_ms()) {
            return Ok(AuthState::Invalid { soft_logout: true });
        }
        let user_id = OwnedUserId::try_from(row.user_id.as_str()).map_err(|e| {
            Error::internal(format!("stored user id {:?} is invalid: {e}", row.user_id))
        })?;
        Ok(AuthState::User(Identity {
            user_id,
            device_id: OwnedDeviceId::from(row.device_id.as_str()),
            is_admin: row.is_admin,
            access_token: token.to_owned(),
        }))
    }

    /// Loads a local user by id, exactly or else case-insensitively (logins are
    /// case-insensitive, as Synapse's `_find_user_id_and_pwd_hash`).
    pub(crate) async fn find_user(&self, user_id: &str) -> Result<Option<UserRow>> {
        let store = &self.inner.store;
        if let Some(user) = store.select_user(user_id).await.map_err(storage_error)? {
            return Ok(Some(user));
        }
        store
            .select_user_case_insensitive(user_id)
            .await
            .map_err(storage_error)
    }

    /// Creates (or reuses) a device for `user_id` and issues its access token, plus a
    /// refresh token and expiry when `refreshable`.
    pub(crate) async fn issue_login(
        &self,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<&str>,
        refreshable: bool,
        ip: Option<&str>,
    ) -> Result<LoginGrant> {
        let device_id = device_id.unwrap_or_else(|| OwnedDeviceId::from(tokens::device_id()));
        let access_token = tokens::access_token();
        let refresh_token = refreshable.then(tokens::refresh_token);
        let lifetime = self.refreshable_lifetime();
        let expires_ts = refreshable.then(|| now_ms().saturating_add(duration_ms(lifetime)));
        self.inner
            .store
            .insert_login(NewLogin {
                user_id: user_id.as_str(),
                device_id: device_id.as_str(),
                display_name,
                access_token: &access_token,
                expires_ts,
                refresh_token: refresh_token.as_deref(),
                ip,
            })
            .await
            .map_err(storage_error)?;
        Ok(LoginGrant {
            user_id: user_id.to_owned(),
            device_id,
            access_token,
            expires_in: refreshable.then_some(lifetime),
            refresh_token,
        })
    }

    /// How long an access token issued with a refresh token lives.
    pub(crate) fn refreshable_lifetime(&self) -> Duration {
        Duration::from_secs(self.inner.auth.refreshable_access_token_lifetime_secs)
    }

    /// Whether anyone can start a registration: open registration, or registration with a
    /// token (config: `requires_token` implies enabled for token holders).
    pub(crate) fn registration_open(&self) -> bool {
        self.inner.registration.enabled || self.inner.registration.requires_token
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
