//! Shared-secret registration, exactly as Synapse's `UserRegisterServlet`
//! (`synapse/rest/admin/users.py`), so `register_new_matrix_user` and friends work:
//! `GET` hands out a single-use nonce good for 60 seconds; `POST` carries
//! `mac = hex(HMAC-SHA1(secret, nonce \0 username \0 password \0 admin|notadmin [\0 user_type]))`.

use std::time::{Duration, Instant};

use ganglion_core::{Error, ErrorKind, Result};
use ganglion_rooms::storage_error;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::{Accounts, login::LoginGrant, tokens};

/// How long a nonce stays good (Synapse: 60 seconds).
const NONCE_LIFETIME: Duration = Duration::from_secs(60);
/// Most nonces outstanding at once; past this, `GET` answers 429 until some expire, so an
/// unauthenticated caller cannot grow the map without bound.
const MAX_NONCES: usize = 10_000;

/// A checked `POST /_synapse/admin/v1/register` body.
#[derive(Clone)]
pub(crate) struct SharedSecretRegistration {
    /// A nonce from `GET`.
    pub(crate) nonce: String,
    /// The localpart (lower-cased before registering, as Synapse).
    pub(crate) username: String,
    /// The password.
    pub(crate) password: String,
    /// Whether the new user is a server admin.
    pub(crate) admin: bool,
    /// Synapse's user type (`bot`, `support`); only part of the MAC here.
    pub(crate) user_type: Option<String>,
    /// An initial display name instead of the localpart.
    pub(crate) displayname: Option<String>,
    /// Lowercase hex HMAC-SHA1 over the fields above.
    pub(crate) mac: String,
}

type HmacSha1 = Hmac<Sha1>;

/// The MAC a registration must carry, ready to compare.
fn expected_mac(secret: &str, reg: &SharedSecretRegistration) -> HmacSha1 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac =
        HmacSha1::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(reg.nonce.as_bytes());
    mac.update(b"\x00");
    mac.update(reg.username.as_bytes());
    mac.update(b"\x00");
    mac.update(reg.password.as_bytes());
    mac.update(b"\x00");
    mac.update(if reg.admin { b"admin" } else { b"notadmin" });
    if let Some(user_type) = &reg.user_type {
        mac.update(b"\x00");
        mac.update(user_type.as_bytes());
    }
    mac
}

/// Whether the registration's MAC is right, compared in constant time.
pub(crate) fn mac_matches(secret: &str, reg: &SharedSecretRegistration) -> bool {
    decode_hex(&reg.mac).is_some_and(|got| expected_mac(secret, reg).verify_slice(&got).is_ok())
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

impl Accounts {
    /// Whether shared-secret registration is configured (the router only mounts its
    /// endpoint when it is).
    pub(crate) fn shared_secret_enabled(&self) -> bool {
        self.inner.registration.shared_secret.is_some()
    }

    /// `GET /_synapse/admin/v1/register`: a fresh nonce.
    pub(crate) fn issue_nonce(&self) -> Result<String> {
        if !self.shared_secret_enabled() {
            return Err(Error::new(
                ErrorKind::Unrecognized,
                "Shared secret registration is not enabled",
            ));
        }
        let now = Instant::now();
        let mut nonces = self.inner.nonces.lock().unwrap_or_else(|p| p.into_inner());
        nonces.retain(|_, issued| now.duration_since(*issued) < NONCE_LIFETIME);
        if nonces.len() >= MAX_NONCES {
            return Err(Error::new(
                ErrorKind::LimitExceeded {
                    retry_after: Some(NONCE_LIFETIME),
                },
                "too many outstanding nonces",
            ));
        }
        let nonce = tokens::nonce();
        nonces.insert(nonce.clone(), now);
        Ok(nonce)
    }

    /// `POST /_synapse/admin/v1/register`: consumes the nonce (even when the MAC is then
    /// wrong, as Synapse), checks the MAC (403 `M_FORBIDDEN` "HMAC incorrect"), creates the
    /// user and logs it in on a new device.
    pub(crate) async fn register_with_shared_secret(
        &self,
        reg: SharedSecretRegistration,
    ) -> Result<LoginGrant> {
        let Some(secret) = &self.inner.registration.shared_secret else {
            return Err(Error::new(
                ErrorKind::Unrecognized,
                "Shared secret registration is not enabled",
            ));
        };
        let issued = self
            .inner
            .nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&reg.nonce);
        if issued.is_none_or(|at| at.elapsed() >= NONCE_LIFETIME) {
            return Err(Error::unknown("unrecognised nonce"));
        }
        if !mac_matches(secret, &reg) {
            return Err(Error::forbidden("HMAC incorrect"));
        }
        let user_id = self
            .register_user(&reg.username, Some(&reg.password), reg.admin)
            .await?;
        if let Some(name) = &reg.displayname {
            self.inner
                .store
                .update_profile(user_id.as_str(), Some(name), None)
                .await
                .map_err(storage_error)?;
        }
        self.issue_login(&user_id, None, None, false, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(mac: &str) -> SharedSecretRegistration {
        SharedSecretRegistration {
            nonce: "abcd".into(),
            username: "alice".into(),
            password: "wonderland".into(),
            admin: false,
            user_type: None,
            displayname: None,
            mac: mac.into(),
        }
    }

    #[test]
    fn mac_is_synapses() {
        // Python: hmac.new(b"secret", b"abcd\x00alice\x00wonderland\x00notadmin", hashlib.sha1).hexdigest()
        let want = tokens::hex(&expected_mac("secret", &reg("")).finalize().into_bytes());
        assert_eq!(want, "c4d214bb1dd9c528d3c1e9f12128d90023b37bb8");
        assert!(mac_matches("secret", &reg(&want)));
        assert!(!mac_matches("other", &reg(&want)));
        let mut admin = reg(&want);
        admin.admin = true;
        assert!(!mac_matches("secret", &admin), "admin flag is covered");
        assert!(!mac_matches("secret", &reg("zz")));
        assert!(!mac_matches("secret", &reg("abc")));
    }

    #[test]
    fn hex_decoding() {
        assert_eq!(decode_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_hex("0g"), None);
        assert_eq!(decode_hex("é0"), None);
    }
}
