//! A minimal Matrix client-server API client over plain HTTP: only the calls the scenarios
//! need, with JSON bodies as `serde_json::Value` so that it works against any homeserver.

use std::fmt;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::Result;

/// A request that reached the server and was answered with a non-2xx status.
#[derive(Debug)]
pub struct HttpError {
    pub method: Method,
    pub path: String,
    pub status: StatusCode,
    pub body: Value,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Leave query strings (filters, since tokens) out of messages: they are long.
        let path = self.path.split('?').next().unwrap_or(&self.path);
        write!(
            f,
            "{} {} -> {}: {}",
            self.method, path, self.status, self.body
        )
    }
}

impl std::error::Error for HttpError {}

/// Percent-encodes a path segment or query value (everything but RFC 3986 unreserved).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (the inverse of [`enc`]); malformed escapes are kept as they are.
pub fn dec(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One HTTP connection pool to one homeserver. Cheap to clone.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    base: String,
}

/// A logged-in user: an access token on a device.
#[derive(Clone, Debug)]
pub struct Session {
    pub user_id: String,
    pub access_token: String,
    /// The device the token belongs to (empty if the server did not say).
    pub device_id: String,
}

impl Http {
    pub fn new(base_url: &str, pool: usize) -> Result<Self> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(pool)
            .connect_timeout(Duration::from_secs(10))
            // Per request; long polls override it.
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Self {
            client,
            base: base_url.trim_end_matches('/').to_owned(),
        })
    }

    /// Sends one request and returns the parsed JSON body of a 2xx answer; anything else is
    /// an [`HttpError`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Value> {
        let (status, value) = self
            .call_raw(method.clone(), path, token, body, timeout)
            .await?;
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

    /// Like [`Http::call`] but hands back every status, for flows (UIA) that expect 401.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<(StatusCode, Value)> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.client.request(method, url);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(timeout) = timeout {
            req = req.timeout(timeout);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, value))
    }

    /// `GET /_matrix/client/versions`: used to wait until a server answers.
    pub async fn versions(&self) -> Result<Value> {
        self.call(
            Method::GET,
            "/_matrix/client/versions",
            None,
            None,
            Some(Duration::from_secs(5)),
        )
        .await
    }

    /// `POST /register` with the `m.login.dummy` stage of user-interactive auth. Sends the
    /// dummy stage straight away; if the server wants a UIA session first (401 with
    /// `session`), it repeats the request with that session, as a client would.
    pub async fn register(&self, username: &str, password: &str) -> Result<Session> {
        let path = "/_matrix/client/v3/register?kind=user";
        let mut body = json!({
            "username": username,
            "password": password,
            "auth": {"type": "m.login.dummy"},
            "initial_device_display_name": "loadgen",
        });
        for _ in 0..3 {
            let (status, value) = self
                .call_raw(Method::POST, path, None, Some(&body), None)
                .await?;
            if status.is_success() {
                return session_from(&value);
            }
            let session = value.get("session").and_then(Value::as_str);
            match (status, session) {
                (StatusCode::UNAUTHORIZED, Some(session)) => {
                    body["auth"] = json!({"type": "m.login.dummy", "session": session});
                }
                _ => {
                    return Err(Box::new(HttpError {
                        method: Method::POST,
                        path: path.to_owned(),
                        status,
                        body: value,
                    }));
                }
            }
        }
        Err(format!("registration of {username} did not complete after 3 UIA rounds").into())
    }

    /// `POST /login` with a password: a new device and access token.
    pub async fn login(&self, user_id: &str, password: &str) -> Result<Session> {
        let body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": password,
            "initial_device_display_name": "loadgen",
        });
        let value = self
            .call(
                Method::POST,
                "/_matrix/client/v3/login",
                None,
                Some(&body),
                None,
            )
            .await?;
        session_from(&value)
    }

    /// `POST /createRoom`; returns the room id.
    pub async fn create_room(&self, s: &Session, public: bool, name: &str) -> Result<String> {
        let preset = if public {
            "public_chat"
        } else {
            "private_chat"
        };
        let body = json!({"preset": preset, "name": name});
        let value = self
            .call(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(&s.access_token),
                Some(&body),
                None,
            )
            .await?;
        str_field(&value, "room_id")
    }

    /// `POST /createRoom` with a body of the caller's; returns the room id.
    pub async fn create_room_with(&self, s: &Session, body: &Value) -> Result<String> {
        let value = self
            .call(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(&s.access_token),
                Some(body),
                None,
            )
            .await?;
        str_field(&value, "room_id")
    }

    /// `GET /rooms/{roomId}/event/{eventId}`: only the status (200 once the event is in the
    /// room for this user, 404 before).
    pub async fn room_event_status(
        &self,
        s: &Session,
        room_id: &str,
        event_id: &str,
    ) -> Result<StatusCode> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(room_id),
            enc(event_id)
        );
        let (status, _) = self
            .call_raw(Method::GET, &path, Some(&s.access_token), None, None)
            .await?;
        Ok(status)
    }

    /// `GET /rooms/{roomId}/messages?dir=b`: one page back from `from` (the newest event
    /// when `None`).
    pub async fn messages_back(
        &self,
        s: &Session,
        room_id: &str,
        from: Option<&str>,
        limit: usize,
    ) -> Result<Value> {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}",
            enc(room_id)
        );
        if let Some(from) = from {
            path.push_str("&from=");
            path.push_str(&enc(from));
        }
        self.call(Method::GET, &path, Some(&s.access_token), None, None)
            .await
    }

    /// `POST /join/{roomIdOrAlias}`.
    pub async fn join(&self, s: &Session, room_id: &str) -> Result<()> {
        let path = format!("/_matrix/client/v3/join/{}", enc(room_id));
        self.call(
            Method::POST,
            &path,
            Some(&s.access_token),
            Some(&json!({})),
            None,
        )
        .await?;
        Ok(())
    }

    /// `PUT /rooms/{roomId}/send/m.room.message/{txnId}` with an `m.text` body; returns the
    /// event id.
    pub async fn send_text(
        &self,
        s: &Session,
        room_id: &str,
        txn: &str,
        text: &str,
    ) -> Result<String> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            enc(room_id),
            enc(txn)
        );
        let body = json!({"msgtype": "m.text", "body": text});
        let value = self
            .call(Method::PUT, &path, Some(&s.access_token), Some(&body), None)
            .await?;
        str_field(&value, "event_id")
    }

    /// `POST /user/{userId}/filter`; returns the filter id.
    pub async fn upload_filter(&self, s: &Session, filter: &Value) -> Result<String> {
        let path = format!("/_matrix/client/v3/user/{}/filter", enc(&s.user_id));
        let value = self
            .call(
                Method::POST,
                &path,
                Some(&s.access_token),
                Some(filter),
                None,
            )
            .await?;
        str_field(&value, "filter_id")
    }

    /// `GET /sync`. `timeout_ms` is the long-poll timeout asked of the server; the HTTP
    /// timeout is set a minute above it.
    pub async fn sync(
        &self,
        s: &Session,
        since: Option<&str>,
        filter: Option<&str>,
        timeout_ms: u64,
    ) -> Result<Value> {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(since) = since {
            path.push_str("&since=");
            path.push_str(&enc(since));
        }
        if let Some(filter) = filter {
            path.push_str("&filter=");
            path.push_str(&enc(filter));
        }
        let http_timeout = Duration::from_millis(timeout_ms) + Duration::from_secs(60);
        self.call(
            Method::GET,
            &path,
            Some(&s.access_token),
            None,
            Some(http_timeout),
        )
        .await
    }
}

impl Http {
    /// `POST` of a JSON body as `s`; the parsed answer.
    async fn post(&self, s: &Session, path: &str, body: &Value) -> Result<Value> {
        self.call(Method::POST, path, Some(&s.access_token), Some(body), None)
            .await
    }

    /// `POST /keys/upload`: device keys, one-time keys and/or fallback keys of `s`'s device.
    pub async fn upload_keys(&self, s: &Session, body: &Value) -> Result<Value> {
        self.post(s, "/_matrix/client/v3/keys/upload", body).await
    }

    /// `POST /keys/query`: the device keys of the users in `body.device_keys`.
    pub async fn query_keys(&self, s: &Session, body: &Value) -> Result<Value> {
        self.post(s, "/_matrix/client/v3/keys/query", body).await
    }

    /// `POST /keys/claim`: one one-time key of each (user, device) in `body.one_time_keys`.
    pub async fn claim_keys(&self, s: &Session, body: &Value) -> Result<Value> {
        self.post(s, "/_matrix/client/v3/keys/claim", body).await
    }

    /// `PUT /sendToDevice/{eventType}/{txnId}` with `body.messages`.
    pub async fn send_to_device(
        &self,
        s: &Session,
        event_type: &str,
        txn: &str,
        body: &Value,
    ) -> Result<()> {
        let path = format!(
            "/_matrix/client/v3/sendToDevice/{}/{}",
            enc(event_type),
            enc(txn)
        );
        self.call(Method::PUT, &path, Some(&s.access_token), Some(body), None)
            .await?;
        Ok(())
    }
}

fn session_from(value: &Value) -> Result<Session> {
    Ok(Session {
        user_id: str_field(value, "user_id")?,
        access_token: str_field(value, "access_token")?,
        device_id: value
            .get("device_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    })
}

pub fn str_field(value: &Value, field: &str) -> Result<String> {
    value
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("response has no string field `{field}`: {value}").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enc_dec_round_trip() {
        let s = "!room:localhost:8448/$ev+x y%";
        assert_eq!(dec(&enc(s)), s);
        assert_eq!(dec("%4"), "%4");
        assert_eq!(dec("%zz%40"), "%zz@");
    }
}
