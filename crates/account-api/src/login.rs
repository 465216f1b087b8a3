//! Sessions (spec: Client-Server API, "Login" and "Refreshing access tokens"): password
//! login, logout, logout everywhere, refresh.

use std::{net::IpAddr, time::Duration};

use ganglion_core::{Error, ErrorKind, Result, time::now_ms};
use ganglion_http::Identity;
use ganglion_rooms::storage_error;
use ruma::{
    OwnedDeviceId, OwnedUserId, ServerName,
    api::client::{
        session::login::{self, v3::LoginInfo},
        uiaa::UserIdentifier,
    },
};

use crate::{Accounts, accounts::duration_ms, password, tokens};

/// A device's fresh credentials, as login, registration and refresh hand them out.
#[derive(Debug, Clone)]
pub struct LoginGrant {
    /// The user logged in.
    pub user_id: OwnedUserId,
    /// The device the tokens belong to.
    pub device_id: OwnedDeviceId,
    /// The access token.
    pub access_token: String,
    /// The refresh token, when the client asked for one.
    pub refresh_token: Option<String>,
    /// How long the access token lives, when it expires (only refreshable ones do).
    pub expires_in: Option<Duration>,
}

/// The wrong-credentials answer: the same for an unknown user and a wrong password, so it
/// does not reveal which accounts exist.
fn bad_credentials() -> Error {
    Error::forbidden("Invalid username or password")
}

/// The full user id a `m.id.user` identifier names: a full id as given, a localpart on this
/// server. Third-party ids (`m.id.thirdparty`, `m.id.phone`) name nobody, since this server
/// has no 3PIDs: 403 `M_FORBIDDEN`, as Synapse answers an unknown 3PID.
pub(crate) fn identifier_user_id(
    identifier: &UserIdentifier,
    server_name: &ServerName,
) -> Result<String> {
    match identifier {
        UserIdentifier::Matrix(m) => qualify(&m.user, server_name),
        UserIdentifier::Email(_) | UserIdentifier::Msisdn(_) | UserIdentifier::PhoneNumber(_) => {
            Err(bad_credentials())
        }
        other if other.identifier_type() == "m.id.thirdparty" => Err(bad_credentials()),
        _ => Err(Error::unknown("Unknown login identifier type")),
    }
}

/// A localpart or full user id, as the full id.
fn qualify(user: &str, server_name: &ServerName) -> Result<String> {
    if user.is_empty() {
        return Err(Error::unknown("User identifier is missing 'user' key"));
    }
    Ok(if user.starts_with('@') {
        user.to_owned()
    } else {
        format!("@{user}:{server_name}")
    })
}

/// Who a password login names, from `identifier` or the pre-r0.4 `user` / `medium` +
/// `address` fields (Synapse's `convert_client_dict_legacy_fields`).
#[allow(deprecated)]
pub(crate) fn login_user_id(p: &login::v3::Password, server_name: &ServerName) -> Result<String> {
    if let Some(identifier) = &p.identifier {
        return identifier_user_id(identifier, server_name);
    }
    if let Some(user) = &p.user {
        return qualify(user, server_name);
    }
    if p.medium.is_some() && p.address.is_some() {
        return Err(bad_credentials());
    }
    Err(Error::missing_param("Missing param: identifier"))
}

impl Accounts {
    /// Checks a password against a local account (found case-insensitively) and returns
    /// its canonical id. Unknown user or wrong password: 403 `M_FORBIDDEN`; a deactivated
    /// account: 403 `M_USER_DEACTIVATED` whatever the password (Synapse's
    /// `_check_local_password`).
    pub(crate) async fn check_password(
        &self,
        user_id: &str,
        password: &str,
    ) -> Result<OwnedUserId> {
        let Some(user) = self.find_user(user_id).await? else {
            return Err(bad_credentials());
        };
        if user.deactivated {
            return Err(Error::new(
                ErrorKind::UserDeactivated,
                "This account has been deactivated",
            ));
        }
        let Some(hash) = &user.password_hash else {
            return Err(bad_credentials());
        };
        if !password::verify(password, hash).await? {
            return Err(bad_credentials());
        }
        OwnedUserId::try_from(user.user_id.as_str())
            .map_err(|e| Error::internal(format!("stored user id is invalid: {e}")))
    }

    /// `POST /login`: rate-limited per client IP, then `m.login.password` only (the one
    /// type `GET /login` offers; others are 400 `M_UNKNOWN`, spec: "Unknown login type").
    pub(crate) async fn login(
        &self,
        login: login::v3::Request,
        client_ip: Option<IpAddr>,
    ) -> Result<LoginGrant> {
        self.inner.login_limiter.check(&rate_limit_key(client_ip))?;
        let LoginInfo::Password(p) = &login.login_info else {
            return Err(Error::unknown(format!(
                "Unknown login type {}",
                login.login_info.login_type()
            )));
        };
        let user_id = login_user_id(p, self.server_name())?;
        let user_id = self.check_password(&user_id, &p.password).await?;
        let ip = client_ip.map(|ip| ip.to_string());
        self.issue_login(
            &user_id,
            login.device_id,
            login.initial_device_display_name.as_deref(),
            login.refresh_token,
            ip.as_deref(),
        )
        .await
    }

    /// `POST /logout`: the device behind the token goes, with its tokens (spec: "The device
    /// associated with the access token is also deleted").
    pub(crate) async fn logout(&self, who: &Identity) -> Result<()> {
        self.inner
            .store
            .delete_devices(who.user_id.as_str(), &[who.device_id.to_string()])
            .await
            .map_err(storage_error)?;
        self.device_list_changed(&who.user_id).await
    }

    /// `POST /logout/all`: every device and token of the user.
    pub(crate) async fn logout_all(&self, who: &Identity) -> Result<()> {
        self.delete_other_devices(&who.user_id, None).await
    }

    /// Deletes every device and token of `user` except those of `keep`.
    pub(crate) async fn delete_other_devices(
        &self,
        user: &ruma::UserId,
        keep: Option<&ruma::DeviceId>,
    ) -> Result<()> {
        let store = &self.inner.store;
        let doomed: Vec<String> = store
            .select_devices(user.as_str())
            .await
            .map_err(storage_error)?
            .into_iter()
            .map(|d| d.device_id)
            .filter(|d| keep.is_none_or(|k| k.as_str() != d))
            .collect();
        store
            .delete_devices(user.as_str(), &doomed)
            .await
            .map_err(storage_error)?;
        if !doomed.is_empty() {
            self.device_list_changed(user).await?;
        }
        // Tokens whose device row is missing (none are written that way, but be thorough).
        store
            .delete_user_tokens(user.as_str(), keep.map(ruma::DeviceId::as_str))
            .await
            .map_err(storage_error)
    }

    /// `POST /refresh`: trades a refresh token for a new pair. The old refresh token and
    /// its access token stop working. Unknown or used tokens: 401 `M_UNKNOWN_TOKEN`.
    pub(crate) async fn refresh(&self, refresh_token: &str) -> Result<LoginGrant> {
        let lifetime = self.refreshable_lifetime();
        let access_token = tokens::access_token();
        let new_refresh = tokens::refresh_token();
        let expires_ts = now_ms().saturating_add(duration_ms(lifetime));
        let owner = self
            .inner
            .store
            .rotate_refresh_token(refresh_token, &access_token, &new_refresh, expires_ts)
            .await
            .map_err(storage_error)?;
        let Some((user_id, device_id)) = owner else {
            return Err(Error::new(
                ErrorKind::UnknownToken { soft_logout: false },
                "refresh token does not exist",
            ));
        };
        Ok(LoginGrant {
            user_id: OwnedUserId::try_from(user_id.as_str())
                .map_err(|e| Error::internal(format!("stored user id is invalid: {e}")))?,
            device_id: OwnedDeviceId::from(device_id.as_str()),
            access_token,
            refresh_token: Some(new_refresh),
            expires_in: Some(lifetime),
        })
    }
}

/// The rate-limit key for a client address; tests and odd listeners may not know it.
pub(crate) fn rate_limit_key(client_ip: Option<IpAddr>) -> String {
    client_ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

#[cfg(test)]
mod tests {
    use ruma::api::client::uiaa::{EmailUserIdentifier, MatrixUserIdentifier};

    use super::*;

    const SERVER: &str = "example.org";

    fn server() -> &'static ServerName {
        ruma::server_name!("example.org")
    }

    #[test]
    fn identifiers_name_users() {
        let id = |u: &str| {
            identifier_user_id(
                &UserIdentifier::Matrix(MatrixUserIdentifier::new(u.into())),
                server(),
            )
        };
        assert_eq!(id("alice").expect("localpart"), format!("@alice:{SERVER}"));
        assert_eq!(
            id("@Alice:example.org").expect("full id"),
            "@Alice:example.org"
        );
        assert_eq!(id("").map_err(|e| e.kind), Err(ErrorKind::Unknown));
        let email = UserIdentifier::Email(EmailUserIdentifier::new("a@b.c".into()));
        assert_eq!(
            identifier_user_id(&email, server()).map_err(|e| e.kind),
            Err(ErrorKind::Forbidden)
        );
    }

    #[test]
    #[allow(deprecated)]
    fn legacy_fields() {
        let mut p = login::v3::Password {
            identifier: None,
            password: "pw".into(),
            user: Some("bob".into()),
            address: None,
            medium: None,
        };
        assert_eq!(
            login_user_id(&p, server()).expect("legacy user"),
            format!("@bob:{SERVER}")
        );
        p.user = None;
        assert_eq!(
            login_user_id(&p, server()).map_err(|e| e.kind),
            Err(ErrorKind::MissingParam)
        );
        p.medium = Some("email".into());
        p.address = Some("a@b.c".into());
        assert_eq!(
            login_user_id(&p, server()).map_err(|e| e.kind),
            Err(ErrorKind::Forbidden)
        );
    }

    #[test]
    fn unknown_ip_shares_one_bucket() {
        assert_eq!(rate_limit_key(None), "unknown");
        assert_eq!(
            rate_limit_key(Some(IpAddr::from([10, 0, 0, 1]))),
            "10.0.0.1"
        );
    }
}
