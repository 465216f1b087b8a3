//! User-interactive authentication (spec: Client-Server API, "User-Interactive
//! Authentication API"), following Synapse's `check_ui_auth` (`synapse/handlers/auth.py`).
//!
//! A session is a row in `uia_sessions`: the user it belongs to (none while registering)
//! and its [`Progress`] as JSON: the operation it was started for and each completed stage
//! with its result. A session only serves the operation it was started for and the user it
//! was started by. A session is written only when the client has to come back to it (a
//! request that completes a flow at once writes nothing), deleted once its operation
//! succeeds, and swept by storage after a day if abandoned.

use std::collections::BTreeMap;

use ganglion_core::{Error, ErrorKind, Result, config::RegistrationConfig, time::now_ms};
use ganglion_rooms::storage_error;
use ruma::{UserId, api::client::uiaa::AuthData};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Accounts, login, registration_tokens::token_is_valid, tokens};

/// Stage `m.login.dummy`: always succeeds.
pub(crate) const DUMMY: &str = "m.login.dummy";
/// Stage `m.login.registration_token`: a valid registration token.
pub(crate) const REGISTRATION_TOKEN: &str = "m.login.registration_token";
/// Stage `m.login.password`: the account's current password.
pub(crate) const PASSWORD: &str = "m.login.password";

/// The flows an operation offers; each is the ordered list of stages that completes it.
pub(crate) type Flows = Vec<Vec<&'static str>>;

/// Registration's flows, or `None` when registration is closed. A required token replaces
/// the dummy stage rather than adding a second flow, so it cannot be bypassed.
pub(crate) fn registration_flows(config: &RegistrationConfig) -> Option<Flows> {
    if config.requires_token {
        Some(vec![vec![REGISTRATION_TOKEN]])
    } else if config.enabled {
        Some(vec![vec![DUMMY]])
    } else {
        None
    }
}

/// The flows of operations on an existing account: re-enter the password.
pub(crate) fn password_flows() -> Flows {
    vec![vec![PASSWORD]]
}

/// What a session has achieved so far, as stored in its `completed` column.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// The operation the session was started for, e.g. `register` or `delete_device/ABC`.
    pub(crate) operation: String,
    /// Each completed stage and its result: the registration token used, the user a
    /// password authenticated, `true` for the dummy stage.
    pub(crate) stages: BTreeMap<String, Value>,
}

impl Progress {
    /// Reads the stored column. A fresh row holds `[]` (storage's initial value): a session
    /// bound to no operation yet.
    fn parse(text: &str) -> Result<Progress> {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(a)) if a.is_empty() => Ok(Progress::default()),
            Ok(v) => serde_json::from_value(v)
                .map_err(|e| Error::internal(format!("UIA session does not parse: {e}"))),
            Err(e) => Err(Error::internal(format!("UIA session is not JSON: {e}"))),
        }
    }

    fn to_json(&self) -> String {
        json!({ "operation": self.operation, "stages": self.stages }).to_string()
    }

    /// The completed stages.
    pub(crate) fn completed(&self) -> Vec<&str> {
        self.stages.keys().map(String::as_str).collect()
    }

    /// Whether every stage of some flow is complete.
    pub(crate) fn satisfies(&self, flows: &Flows) -> bool {
        flows
            .iter()
            .any(|flow| flow.iter().all(|stage| self.stages.contains_key(*stage)))
    }

    /// The registration token this session proved, if any.
    pub(crate) fn registration_token(&self) -> Option<&str> {
        self.stages.get(REGISTRATION_TOKEN).and_then(Value::as_str)
    }
}

/// The 401 body (spec: "User-interactive authentication API", "Authentication response"):
/// `flows`, `params`, `session`, and once the client has submitted a stage, `completed`
/// plus the `errcode` and `error` of a stage that just failed.
pub(crate) fn challenge(
    flows: &Flows,
    session: &str,
    progress: Option<&Progress>,
    failure: Option<&Error>,
) -> Value {
    let mut body = json!({
        "flows": flows.iter().map(|stages| json!({ "stages": stages })).collect::<Vec<_>>(),
        "params": {},
        "session": session,
    });
    if let Some(p) = progress {
        body["completed"] = json!(p.completed());
    }
    if let Some(e) = failure {
        body["errcode"] = json!(ganglion_http::error::status_and_code(&e.kind).1);
        body["error"] = json!(e.message);
    }
    body
}

/// The error that answers with a challenge.
fn uia_required(body: Value) -> Error {
    Error::new(
        ErrorKind::UiaRequired(Box::new(body)),
        "user-interactive authentication required",
    )
}

/// A finished UIA round: the session (to delete once the operation succeeds) and what it
/// proved.
#[derive(Debug)]
pub(crate) struct Completed {
    /// The session id.
    pub(crate) session_id: String,
    /// The stages it completed.
    pub(crate) progress: Progress,
}

/// The outcome of checking one submitted stage.
enum StageOutcome {
    /// The stage passed, with its result.
    Passed(Value),
    /// The stage failed; the client may try again in the same session.
    Failed(Error),
}

impl Accounts {
    /// Runs one round of UIA for `operation` on behalf of `user` (`None` while registering).
    /// Returns once some flow is complete; otherwise fails with the 401 challenge.
    pub(crate) async fn user_interactive_auth(
        &self,
        operation: &str,
        user: Option<&UserId>,
        flows: &Flows,
        auth: Option<&AuthData>,
    ) -> Result<Completed> {
        let store = &self.inner.store;
        // A new session is only written once the client must come back to it, so a request
        // that completes a flow at once (`{"auth": {"type": "m.login.dummy"}}`) costs no
        // session writes.
        let (session_id, mut progress, stored) = match auth.and_then(AuthData::session) {
            Some(sid) => {
                // An unknown session and another user's session look the same to the caller.
                let Some((owner, text)) =
                    store.select_uia_session(sid).await.map_err(storage_error)?
                else {
                    return Err(Error::unknown(format!("Unknown session ID: {sid}")));
                };
                if owner.as_deref() != user.map(UserId::as_str) {
                    return Err(Error::unknown(format!("Unknown session ID: {sid}")));
                }
                let progress = Progress::parse(&text)?;
                if progress.operation != operation {
                    return Err(Error::forbidden(
                        "Requested operation has changed during the UI authentication session.",
                    ));
                }
                (sid.to_owned(), progress, true)
            }
            None => {
                let progress = Progress {
                    operation: operation.to_owned(),
                    stages: BTreeMap::new(),
                };
                (tokens::session_id(), progress, false)
            }
        };

        let mut failure = None;
        let mut advanced = false;
        // Without a `type` the client only acknowledges a fallback stage: nothing to check.
        if let Some(stage) = auth.and_then(AuthData::auth_type) {
            let stage = stage.as_str().to_owned();
            // A stage no flow offers proves nothing here; answer with the flows so the
            // client can pick one it can do.
            let outcome = match auth {
                Some(auth) if flows.iter().flatten().any(|s| *s == stage) => {
                    self.check_stage(auth, user, &progress).await?
                }
                _ => StageOutcome::Failed(Error::unknown(format!(
                    "Stage {stage} is not offered for this operation"
                ))),
            };
            match outcome {
                StageOutcome::Passed(result) => {
                    progress.stages.insert(stage, result);
                    advanced = true;
                }
                StageOutcome::Failed(e) => failure = Some(e),
            }
        }
        if failure.is_none() && progress.satisfies(flows) {
            return Ok(Completed {
                session_id,
                progress,
            });
        }

        if !stored {
            store
                .insert_uia_session(&session_id, user.map(UserId::as_str))
                .await
                .map_err(storage_error)?;
        }
        if !stored || advanced {
            store
                .update_uia_session(&session_id, &progress.to_json())
                .await
                .map_err(storage_error)?;
        }
        // The first challenge carries no `completed`; later ones do.
        let progress = auth.is_some().then_some(&progress);
        Err(uia_required(challenge(
            flows,
            &session_id,
            progress,
            failure.as_ref(),
        )))
    }

    /// Forgets a session whose operation has succeeded, so it cannot be replayed. (A
    /// session completed in its first request was never written; deleting it is a no-op.)
    /// Requires password user-interactive auth of `user` for `operation` (for endpoints of
    /// other crates, e.g. replacing cross-signing keys): `Ok` once the password stage is
    /// complete, else the 401 challenge.
    pub async fn authorize_with_password(
        &self,
        operation: &str,
        user: &UserId,
        auth: Option<&AuthData>,
    ) -> Result<()> {
        let completed = self
            .user_interactive_auth(operation, Some(user), &password_flows(), auth)
            .await?;
        self.finish_uia(&completed).await
    }

    pub(crate) async fn finish_uia(&self, completed: &Completed) -> Result<()> {
        self.inner
            .store
            .delete_uia_session(&completed.session_id)
            .await
            .map_err(storage_error)
    }

    async fn check_stage(
        &self,
        auth: &AuthData,
        user: Option<&UserId>,
        progress: &Progress,
    ) -> Result<StageOutcome> {
        match auth {
            AuthData::Dummy(_) => Ok(StageOutcome::Passed(Value::Bool(true))),
            AuthData::RegistrationToken(t) => {
                // As Synapse's `RegistrationTokenAuthChecker`: once proved, a session's token
                // cannot be swapped for another.
                if let Some(proved) = progress.registration_token() {
                    return Ok(if proved == t.token {
                        StageOutcome::Passed(json!(proved))
                    } else {
                        StageOutcome::Failed(Error::invalid_param("Registration token has changed"))
                    });
                }
                let row = self
                    .inner
                    .store
                    .select_registration_token(&t.token)
                    .await
                    .map_err(storage_error)?;
                Ok(match row {
                    Some(row) if token_is_valid(&row, now_ms()) => {
                        StageOutcome::Passed(json!(t.token))
                    }
                    _ => StageOutcome::Failed(Error::new(
                        ErrorKind::Unauthorized,
                        "Invalid registration token",
                    )),
                })
            }
            AuthData::Password(p) => {
                let user_id = match login::identifier_user_id(&p.identifier, self.server_name()) {
                    Ok(id) => id,
                    Err(e) if e.kind == ErrorKind::Forbidden => return Ok(StageOutcome::Failed(e)),
                    Err(e) => return Err(e),
                };
                let authenticated = match self.check_password(&user_id, &p.password).await {
                    Ok(u) => u,
                    Err(e)
                        if matches!(e.kind, ErrorKind::Forbidden | ErrorKind::UserDeactivated) =>
                    {
                        return Ok(StageOutcome::Failed(e));
                    }
                    Err(e) => return Err(e),
                };
                // Synapse's `validate_user_via_ui_auth`: the password must be the caller's own.
                if user.is_some_and(|u| *u != *authenticated) {
                    return Err(Error::forbidden("Invalid auth"));
                }
                Ok(StageOutcome::Passed(json!(authenticated)))
            }
            // No flow offers any other stage; `user_interactive_auth` never asks about them.
            _ => Ok(StageOutcome::Failed(Error::unknown("Unsupported stage"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(enabled: bool, requires_token: bool) -> RegistrationConfig {
        RegistrationConfig {
            enabled,
            requires_token,
            shared_secret: None,
        }
    }

    #[test]
    fn registration_flow_selection() {
        assert_eq!(registration_flows(&config(false, false)), None);
        assert_eq!(
            registration_flows(&config(true, false)),
            Some(vec![vec![DUMMY]])
        );
        assert_eq!(
            registration_flows(&config(true, true)),
            Some(vec![vec![REGISTRATION_TOKEN]])
        );
        assert_eq!(
            registration_flows(&config(false, true)),
            Some(vec![vec![REGISTRATION_TOKEN]])
        );
    }

    #[test]
    fn first_challenge_has_no_completed() {
        let body = challenge(&password_flows(), "s1", None, None);
        assert_eq!(
            body,
            json!({ "flows": [{ "stages": ["m.login.password"] }], "params": {}, "session": "s1" })
        );
    }

    #[test]
    fn later_challenges_carry_progress_and_the_failure() {
        let mut p = Progress {
            operation: "register".into(),
            stages: BTreeMap::new(),
        };
        p.stages.insert(DUMMY.into(), json!(true));
        let flows = vec![vec![DUMMY, REGISTRATION_TOKEN]];
        assert!(!p.satisfies(&flows));
        let failure = Error::new(ErrorKind::Unauthorized, "Invalid registration token");
        let body = challenge(&flows, "s2", Some(&p), Some(&failure));
        assert_eq!(body["completed"], json!(["m.login.dummy"]));
        assert_eq!(body["errcode"], json!("M_UNAUTHORIZED"));
        assert_eq!(body["error"], json!("Invalid registration token"));
        p.stages.insert(REGISTRATION_TOKEN.into(), json!("tok"));
        assert!(p.satisfies(&flows));
        assert_eq!(p.registration_token(), Some("tok"));
    }

    #[test]
    fn progress_round_trips_and_reads_a_fresh_row() {
        assert_eq!(
            Progress::parse("[]").expect("fresh row"),
            Progress::default()
        );
        let mut p = Progress {
            operation: "delete_devices".into(),
            stages: BTreeMap::new(),
        };
        p.stages.insert(PASSWORD.into(), json!("@a:b"));
        assert_eq!(Progress::parse(&p.to_json()).expect("round trip"), p);
        assert!(Progress::parse("{").is_err());
    }
}
