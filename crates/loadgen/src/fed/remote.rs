//! The target as a remote server sees it: signed requests to its federation listener
//! (HTTPS, trusting only the test CA), and joining one of its rooms over federation
//! (`make_join` v1, then `send_join` v2), which yields what a member needs to send events
//! into the room afterwards.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use ruma::RoomVersionId;
use ruma::room_version_rules::RoomVersionRules;
use serde_json::Value;

use super::identity::{Identity, canonical_object, event_id_of, now_ms};
use crate::Result;
use crate::client::{HttpError, enc};

/// The target's federation API.
#[derive(Clone)]
pub struct Remote {
    http: reqwest::Client,
    /// The target's server name (`localhost:PORT`); requests go to `https://<name>`.
    pub name: String,
}

impl Remote {
    /// A client for `server_name`'s federation listener, trusting the CA in `ca_file` only.
    pub fn new(server_name: &str, ca_file: &str) -> Result<Remote> {
        let pem = std::fs::read(ca_file).map_err(|e| format!("{ca_file}: {e}"))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .tls_certs_only(certs)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()?;
        Ok(Remote {
            http,
            name: server_name.to_owned(),
        })
    }

    /// A request signed by `origin`; `path` is the request target exactly as sent (path
    /// and query, percent-encoded). Returns the status and the JSON body.
    pub async fn call(
        &self,
        origin: &Identity,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let auth = origin.authorization(&self.name, method.as_str(), path, body)?;
        self.send(method, path, body, &auth).await
    }

    /// Sends a request with an `Authorization` value signed beforehand (see
    /// [`Identity::authorization`]), so that signing stays out of a measurement.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        auth: &str,
    ) -> Result<(StatusCode, Value)> {
        let mut req = self
            .http
            .request(method, format!("https://{}{path}", self.name))
            .header(reqwest::header::AUTHORIZATION, auth);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }

    /// Like [`Remote::call`], with any non-2xx answer an error.
    pub async fn call_ok(
        &self,
        origin: &Identity,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let (status, value) = self.call(origin, method.clone(), path, body).await?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(Box::new(HttpError {
                method,
                path: path.to_owned(),
                status,
                body: value,
            }))
        }
    }
}

/// A room of the target that a fake server's user has joined: what it needs to build the
/// next event it sends.
pub struct Joined {
    pub room_id: String,
    pub user_id: String,
    pub rules: RoomVersionRules,
    /// The `auth_events` of a message from this user: the create event (where the room
    /// version lists it), the power levels and the user's join.
    pub message_auth_events: Vec<String>,
    /// The last event this server knows in the room (its join, at first).
    pub prev_event: String,
    /// Its depth.
    pub depth: i64,
    /// Whether the target's templates carry the (pre-v11) `origin` field; our events copy
    /// the target's choice.
    pub with_origin: bool,
}

/// The room versions we can build events for: event ids are reference hashes from v3 on.
const VERSIONS: [&str; 10] = ["3", "4", "5", "6", "7", "8", "9", "10", "11", "12"];

/// Joins `user_id` (a user of `me`) to `room_id` on the target: `make_join`, sign the
/// template, `send_join`. Refuses a room of a version other than `version`.
pub async fn join(
    remote: &Remote,
    me: &Identity,
    user_id: &str,
    room_id: &str,
    version: &RoomVersionId,
) -> Result<Joined> {
    let vers: Vec<String> = VERSIONS.iter().map(|v| format!("ver={v}")).collect();
    let path = format!(
        "/_matrix/federation/v1/make_join/{}/{}?{}",
        enc(room_id),
        enc(user_id),
        vers.join("&")
    );
    let made = remote.call_ok(me, Method::GET, &path, None).await?;
    let got = made
        .get("room_version")
        .and_then(Value::as_str)
        .unwrap_or("1");
    if got != version.as_str() {
        return Err(format!("the room is version {got}, not {version}").into());
    }
    let rules = version
        .rules()
        .ok_or_else(|| format!("no rules for room version {version}"))?;
    let mut template = made
        .get("event")
        .cloned()
        .ok_or_else(|| format!("make_join answered no event: {made}"))?;
    let Some(obj) = template.as_object_mut() else {
        return Err(format!("make_join's event is not an object: {made}").into());
    };
    obj.insert("origin_server_ts".into(), Value::from(now_ms()));
    obj.remove("event_id");
    obj.remove("signatures");
    obj.remove("hashes");
    let with_origin = obj.contains_key("origin");
    if with_origin {
        obj.insert("origin".into(), Value::from(me.name.as_str()));
    }
    let depth = obj.get("depth").and_then(Value::as_i64).unwrap_or(0);
    let mut pdu = canonical_object(template)?;
    let join_id = me.hash_and_sign(&mut pdu, &rules)?;
    let path = format!(
        "/_matrix/federation/v2/send_join/{}/{}",
        enc(room_id),
        enc(&join_id)
    );
    let joined = remote
        .call_ok(me, Method::PUT, &path, Some(&serde_json::to_value(&pdu)?))
        .await?;

    // The room's state as the target sent it, by (type, state_key), to pick the events a
    // message must cite.
    let mut state: HashMap<(String, String), String> = HashMap::new();
    for ev in joined
        .get("state")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = ev.get("type").and_then(Value::as_str).unwrap_or_default();
        let key = ev
            .get("state_key")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let id = event_id_of(&canonical_object(ev.clone())?, &rules)?;
        state.insert((kind.to_owned(), key.to_owned()), id);
    }
    let find = |kind: &str| {
        state
            .get(&(kind.to_owned(), String::new()))
            .cloned()
            .ok_or_else(|| format!("send_join's state has no {kind}"))
    };
    let mut message_auth_events = Vec::new();
    if rules.event_format.allow_room_create_in_auth_events {
        message_auth_events.push(find("m.room.create")?);
    }
    message_auth_events.push(find("m.room.power_levels")?);
    message_auth_events.push(join_id.clone());
    Ok(Joined {
        room_id: room_id.to_owned(),
        user_id: user_id.to_owned(),
        rules,
        message_auth_events,
        prev_event: join_id,
        depth,
        with_origin,
    })
}

impl Joined {
    /// The next `m.room.message` from this user, hashed and signed, chained on the last
    /// one: returns the PDU and its event id.
    pub fn next_message(&mut self, me: &Identity, body: &str) -> Result<(Value, String)> {
        self.depth += 1;
        let mut pdu = serde_json::json!({
            "type": "m.room.message",
            "room_id": self.room_id,
            "sender": self.user_id,
            "content": {"msgtype": "m.text", "body": body},
            "origin_server_ts": now_ms(),
            "depth": self.depth,
            "prev_events": [self.prev_event],
            "auth_events": self.message_auth_events,
        });
        if self.with_origin {
            pdu["origin"] = Value::from(me.name.as_str());
        }
        let mut obj = canonical_object(pdu)?;
        let id = me.hash_and_sign(&mut obj, &self.rules)?;
        self.prev_event = id.clone();
        Ok((serde_json::to_value(&obj)?, id))
    }
}
