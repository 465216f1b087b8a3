//! Keys of other servers' users: `/keys/query` and `/keys/claim` ask each server for
//! its own users (Server-Server API, "End-to-End Encryption": `POST
//! /_matrix/federation/v1/user/keys/query` and `/user/keys/claim`), one request per
//! server, all at once. A server that fails or does not answer within the client's
//! `timeout` (10 s by default) gets a `failures` entry under its name, as the
//! Client-Server API says. Answers pass through as the remote sent them (signed objects
//! are kept as they came), but only for users of the server that answered.

use std::{collections::BTreeMap, time::Duration};

use ganglion_federation_client::{FedError, Federation, Method};
use ruma::{OneTimeKeyAlgorithm, OwnedDeviceId, OwnedServerName, OwnedUserId, UserId};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::keys::{Claimed, QueryResult};

/// How long a remote server may take when the client names no timeout (spec: 10 s).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Users grouped by their server.
fn by_server<T: Clone>(
    wanted: &BTreeMap<OwnedUserId, T>,
) -> BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>> {
    let mut out: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>> = BTreeMap::new();
    for (user, v) in wanted {
        out.entry(user.server_name().to_owned())
            .or_default()
            .insert(user.clone(), v.clone());
    }
    out
}

/// The `failures` entry of a server that did not answer well.
fn failure(e: &FedError) -> Value {
    match e {
        FedError::Remote { status, body, .. } => json!({ "status": status, "message": body }),
        other => json!({ "status": 503, "message": other.to_string() }),
    }
}

/// Sends one POST to every server at once; returns each server's answer or failure.
async fn ask_all(
    federation: Option<&Federation>,
    path: &'static str,
    bodies: BTreeMap<OwnedServerName, Value>,
    timeout: Option<Duration>,
) -> Vec<(OwnedServerName, Result<Value, Value>)> {
    let Some(fed) = federation else {
        return bodies
            .into_keys()
            .map(|s| {
                let f = json!({ "status": 503, "message": "federation is disabled" });
                (s, Err(f))
            })
            .collect();
    };
    let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
    let mut set = JoinSet::new();
    for (server, body) in bodies {
        let client = fed.client.clone();
        set.spawn(async move {
            let call = client.request(Method::POST, server.as_str(), path, Some(&body));
            let answer = match tokio::time::timeout(timeout, call).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => {
                    tracing::debug!(%server, error = %e, "remote keys request failed");
                    Err(failure(&e))
                }
                Err(_) => Err(json!({ "status": 503, "message": "Timed out" })),
            };
            (server, answer)
        });
    }
    let mut out = Vec::new();
    while let Some(done) = set.join_next().await {
        match done {
            Ok(answer) => out.push(answer),
            Err(e) => tracing::warn!(error = %e, "a remote keys request panicked"),
        }
    }
    out
}

/// Whether `user` (a key of the answer) is a user of `server`.
fn of_server(user: &str, server: &OwnedServerName) -> Option<OwnedUserId> {
    UserId::parse(user)
        .ok()
        .filter(|u| u.server_name() == server)
}

/// Asks each server for its users' device and cross-signing keys, into `out`.
pub(crate) async fn query(
    federation: Option<&Federation>,
    wanted: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    timeout: Option<Duration>,
    out: &mut QueryResult,
) {
    let bodies = by_server(wanted)
        .into_iter()
        .map(|(s, users)| (s, json!({ "device_keys": users })))
        .collect();
    let answers = ask_all(
        federation,
        "/_matrix/federation/v1/user/keys/query",
        bodies,
        timeout,
    )
    .await;
    for (server, answer) in answers {
        let answer = match answer {
            Ok(a) => a,
            Err(f) => {
                out.failures.insert(server.to_string(), f);
                continue;
            }
        };
        for (user, devices) in answer
            .get("device_keys")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let Some(user) = of_server(user, &server) else {
                continue;
            };
            for (device, keys) in devices.as_object().into_iter().flatten() {
                if keys.is_object() {
                    out.device_keys
                        .entry(user.clone())
                        .or_default()
                        .insert(OwnedDeviceId::from(device.as_str()), keys.clone());
                }
            }
        }
        for (field, into) in [
            ("master_keys", &mut out.master_keys),
            ("self_signing_keys", &mut out.self_signing_keys),
        ] {
            for (user, key) in answer
                .get(field)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if let Some(user) = of_server(user, &server)
                    && key.is_object()
                {
                    into.insert(user, key.clone());
                }
            }
        }
    }
}

/// Claims one-time keys of each server's users' devices, into `claimed`.
pub(crate) async fn claim(
    federation: Option<&Federation>,
    wanted: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
    timeout: Option<Duration>,
    claimed: &mut Claimed,
    failures: &mut BTreeMap<String, Value>,
) {
    let bodies = by_server(wanted)
        .into_iter()
        .map(|(s, users)| (s, json!({ "one_time_keys": users })))
        .collect();
    let answers = ask_all(
        federation,
        "/_matrix/federation/v1/user/keys/claim",
        bodies,
        timeout,
    )
    .await;
    for (server, answer) in answers {
        let answer = match answer {
            Ok(a) => a,
            Err(f) => {
                failures.insert(server.to_string(), f);
                continue;
            }
        };
        for (user, devices) in answer
            .get("one_time_keys")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let Some(user) = of_server(user, &server) else {
                continue;
            };
            for (device, keys) in devices.as_object().into_iter().flatten() {
                for (key_id, key) in keys.as_object().into_iter().flatten() {
                    claimed
                        .entry(user.clone())
                        .or_default()
                        .entry(OwnedDeviceId::from(device.as_str()))
                        .or_default()
                        .insert(key_id.clone(), key.clone());
                }
            }
        }
    }
}
