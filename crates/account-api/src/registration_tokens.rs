//! Registration tokens and their admin API, as Synapse's
//! (`synapse/rest/admin/registration_tokens.py`, documented in Synapse's
//! `docs/usage/administration/admin_api/registration_tokens.md`).
//!
//! Field validation follows Synapse exactly, including its codes: a field of the wrong type
//! or out of range is 400 `M_INVALID_PARAM`.

use ganglion_core::{Error, ErrorKind, Result, time::now_ms};
use ganglion_rooms::storage_error;
use ganglion_storage::accounts::RegistrationToken;
use serde_json::{Map, Value, json};

use crate::{Accounts, tokens};

/// Characters a registration token may use (Synapse: `string.ascii_letters + string.digits + "._~-"`).
const TOKEN_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-";
/// Longest token, and longest generated token.
const MAX_TOKEN_LEN: usize = 64;
/// Length of a generated token when the admin names none.
const DEFAULT_TOKEN_LEN: usize = 16;
/// Attempts at a free generated token.
const GENERATE_ATTEMPTS: usize = 5;

/// Whether a token can still be used to register: not expired, not used up.
pub(crate) fn token_is_valid(token: &RegistrationToken, now_ms: i64) -> bool {
    token.expiry_time.is_none_or(|t| t > now_ms)
        && token
            .uses_allowed
            .is_none_or(|allowed| token.pending + token.completed < allowed)
}

/// A token as the admin API shows it.
pub(crate) fn token_json(token: &RegistrationToken) -> Value {
    json!({
        "token": token.token,
        "uses_allowed": token.uses_allowed,
        "pending": token.pending,
        "completed": token.completed,
        "expiry_time": token.expiry_time,
    })
}

/// The body of `POST /_synapse/admin/v1/registration_tokens/new`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewRegistrationToken {
    /// The token to create; generated when absent.
    pub(crate) token: Option<String>,
    /// Length of a generated token.
    pub(crate) length: usize,
    /// How many registrations it allows (`None`: unlimited).
    pub(crate) uses_allowed: Option<i64>,
    /// When it expires (ms since the epoch).
    pub(crate) expiry_time: Option<i64>,
}

/// The body of `PUT /_synapse/admin/v1/registration_tokens/{token}`, checked. An outer
/// `None` leaves the field alone; `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RegistrationTokenUpdate {
    /// New use limit.
    pub(crate) uses_allowed: Option<Option<i64>>,
    /// New expiry.
    pub(crate) expiry_time: Option<Option<i64>>,
}

fn invalid(message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::InvalidParam, message)
}

/// `uses_allowed`: a non-negative integer or null.
fn uses_allowed(v: &Value) -> Result<Option<i64>> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) if n.as_i64().is_some_and(|n| n >= 0) => Ok(n.as_i64()),
        _ => Err(invalid(
            "uses_allowed must be a non-negative integer or null",
        )),
    }
}

/// `expiry_time`: an integer not in the past, or null.
fn expiry_time(v: &Value, now_ms: i64) -> Result<Option<i64>> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_i64() {
            Some(t) if t < now_ms => Err(invalid("expiry_time must not be in the past")),
            Some(t) => Ok(Some(t)),
            None => Err(invalid("expiry_time must be an integer or null")),
        },
        _ => Err(invalid("expiry_time must be an integer or null")),
    }
}

impl NewRegistrationToken {
    /// Checks a creation body as Synapse's `NewRegistrationTokenRestServlet`.
    pub(crate) fn from_json(
        body: &Map<String, Value>,
        now_ms: i64,
    ) -> Result<NewRegistrationToken> {
        let mut new = NewRegistrationToken {
            token: None,
            length: DEFAULT_TOKEN_LEN,
            uses_allowed: None,
            expiry_time: None,
        };
        if let Some(token) = body.get("token") {
            let Value::String(token) = token else {
                return Err(invalid("token must be a string"));
            };
            if token.is_empty() || token.len() > MAX_TOKEN_LEN {
                return Err(invalid(
                    "token must not be empty and must not be longer than 64 characters",
                ));
            }
            if !token.bytes().all(|b| TOKEN_ALPHABET.contains(&b)) {
                return Err(invalid(
                    "token must consist only of characters matched by the regex [A-Za-z0-9-_]",
                ));
            }
            new.token = Some(token.clone());
        } else if let Some(length) = body.get("length") {
            let Some(length) = length.as_i64() else {
                return Err(invalid("length must be an integer"));
            };
            match usize::try_from(length) {
                Ok(l) if (1..=MAX_TOKEN_LEN).contains(&l) => new.length = l,
                _ => {
                    return Err(invalid(
                        "length must be greater than zero and not greater than 64",
                    ));
                }
            }
        }
        if let Some(v) = body.get("uses_allowed") {
            new.uses_allowed = uses_allowed(v)?;
        }
        if let Some(v) = body.get("expiry_time") {
            new.expiry_time = expiry_time(v, now_ms)?;
        }
        Ok(new)
    }
}

impl RegistrationTokenUpdate {
    /// Checks an update body as Synapse's `RegistrationTokenRestServlet.on_PUT`.
    pub(crate) fn from_json(
        body: &Map<String, Value>,
        now_ms: i64,
    ) -> Result<RegistrationTokenUpdate> {
        Ok(RegistrationTokenUpdate {
            uses_allowed: body.get("uses_allowed").map(uses_allowed).transpose()?,
            expiry_time: body
                .get("expiry_time")
                .map(|v| expiry_time(v, now_ms))
                .transpose()?,
        })
    }
}

fn no_such_token(token: &str) -> Error {
    Error::not_found(format!("No such registration token: {token}"))
}

impl Accounts {
    /// Every token; with `valid`, only the valid (`true`) or the used-up and expired (`false`).
    pub(crate) async fn registration_tokens(
        &self,
        valid: Option<bool>,
    ) -> Result<Vec<RegistrationToken>> {
        let all = self
            .inner
            .store
            .select_registration_tokens()
            .await
            .map_err(storage_error)?;
        let now = now_ms();
        Ok(all
            .into_iter()
            .filter(|t| valid.is_none_or(|v| token_is_valid(t, now) == v))
            .collect())
    }

    /// One token, or 404 `M_NOT_FOUND`.
    pub(crate) async fn registration_token(&self, token: &str) -> Result<RegistrationToken> {
        let row = self
            .inner
            .store
            .select_registration_token(token)
            .await
            .map_err(storage_error)?;
        row.ok_or_else(|| no_such_token(token))
    }

    /// Creates a token. A named token that exists is 400 `M_INVALID_PARAM`.
    pub(crate) async fn create_registration_token(
        &self,
        new: NewRegistrationToken,
    ) -> Result<RegistrationToken> {
        let attempts = if new.token.is_some() {
            1
        } else {
            GENERATE_ATTEMPTS
        };
        for _ in 0..attempts {
            let token = RegistrationToken {
                token: new
                    .token
                    .clone()
                    .unwrap_or_else(|| tokens::from_alphabet(TOKEN_ALPHABET, new.length)),
                uses_allowed: new.uses_allowed,
                pending: 0,
                completed: 0,
                expiry_time: new.expiry_time,
            };
            match self.inner.store.insert_registration_token(&token).await {
                Ok(()) => return Ok(token),
                Err(ganglion_storage::Error::Conflict(_)) if new.token.is_none() => continue,
                Err(ganglion_storage::Error::Conflict(_)) => {
                    return Err(invalid(format!("Token already exists: {}", token.token)));
                }
                Err(e) => return Err(storage_error(e)),
            }
        }
        Err(Error::internal("no free generated registration token"))
    }

    /// Changes a token's limits; an empty update just returns it. 404 if it does not exist.
    pub(crate) async fn update_registration_token(
        &self,
        token: &str,
        update: RegistrationTokenUpdate,
    ) -> Result<RegistrationToken> {
        let mut row = self.registration_token(token).await?;
        if update == RegistrationTokenUpdate::default() {
            return Ok(row);
        }
        if let Some(u) = update.uses_allowed {
            row.uses_allowed = u;
        }
        if let Some(e) = update.expiry_time {
            row.expiry_time = e;
        }
        let found = self
            .inner
            .store
            .update_registration_token(token, row.uses_allowed, row.expiry_time)
            .await
            .map_err(storage_error)?;
        if found {
            Ok(row)
        } else {
            Err(no_such_token(token))
        }
    }

    /// Deletes a token, or 404.
    pub(crate) async fn delete_registration_token(&self, token: &str) -> Result<()> {
        let found = self
            .inner
            .store
            .delete_registration_token(token)
            .await
            .map_err(storage_error)?;
        if found {
            Ok(())
        } else {
            Err(no_such_token(token))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("test bodies are objects"),
        }
    }

    fn row(
        uses_allowed: Option<i64>,
        pending: i64,
        completed: i64,
        expiry_time: Option<i64>,
    ) -> RegistrationToken {
        RegistrationToken {
            token: "t".into(),
            uses_allowed,
            pending,
            completed,
            expiry_time,
        }
    }

    #[test]
    fn validity() {
        assert!(token_is_valid(&row(None, 0, 100, None), NOW));
        assert!(token_is_valid(&row(Some(2), 0, 1, Some(NOW + 1)), NOW));
        assert!(!token_is_valid(&row(Some(2), 1, 1, None), NOW));
        assert!(!token_is_valid(&row(Some(0), 0, 0, None), NOW));
        assert!(!token_is_valid(&row(None, 0, 0, Some(NOW)), NOW));
    }

    #[test]
    fn creation_bodies() {
        let new = NewRegistrationToken::from_json(&obj(json!({})), NOW).expect("empty body");
        assert_eq!(
            new,
            NewRegistrationToken {
                token: None,
                length: 16,
                uses_allowed: None,
                expiry_time: None
            }
        );
        let new = NewRegistrationToken::from_json(
            &obj(json!({ "token": "a.b~c-d_e", "uses_allowed": 3, "expiry_time": NOW + 5 })),
            NOW,
        )
        .expect("full body");
        assert_eq!(new.token.as_deref(), Some("a.b~c-d_e"));
        assert_eq!(
            (new.uses_allowed, new.expiry_time),
            (Some(3), Some(NOW + 5))
        );
        assert_eq!(
            NewRegistrationToken::from_json(&obj(json!({ "length": 64 })), NOW)
                .expect("max length")
                .length,
            64
        );
        for bad in [
            json!({ "token": 5 }),
            json!({ "token": "" }),
            json!({ "token": "a".repeat(65) }),
            json!({ "token": "no spaces" }),
            json!({ "length": 0 }),
            json!({ "length": 65 }),
            json!({ "length": "16" }),
            json!({ "length": 1.5 }),
            json!({ "uses_allowed": -1 }),
            json!({ "uses_allowed": true }),
            json!({ "expiry_time": NOW - 1 }),
            json!({ "expiry_time": "soon" }),
        ] {
            let err = NewRegistrationToken::from_json(&obj(bad.clone()), NOW).expect_err("refused");
            assert_eq!(err.kind, ErrorKind::InvalidParam, "{bad}");
        }
    }

    #[test]
    fn update_bodies() {
        let u = RegistrationTokenUpdate::from_json(&obj(json!({})), NOW).expect("empty");
        assert_eq!(u, RegistrationTokenUpdate::default());
        let u = RegistrationTokenUpdate::from_json(
            &obj(json!({ "uses_allowed": null, "expiry_time": NOW })),
            NOW,
        )
        .expect("set");
        assert_eq!(
            u,
            RegistrationTokenUpdate {
                uses_allowed: Some(None),
                expiry_time: Some(Some(NOW))
            }
        );
        assert!(
            RegistrationTokenUpdate::from_json(&obj(json!({ "uses_allowed": "x" })), NOW).is_err()
        );
    }
}
