//! A small HTTP client speaking the Client-Server API, for black-box tests.

use reqwest::Method;
use serde_json::{Value, json};

/// A response: status and parsed JSON body (Null when not JSON).
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
}

impl Resp {
    /// The errcode, if any.
    pub fn errcode(&self) -> &str {
        self.body
            .get("errcode")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    /// Panics unless 200, showing the body.
    pub fn ok(self) -> Value {
        assert_eq!(
            self.status, 200,
            "expected 200, got {}: {}",
            self.status, self.body
        );
        self.body
    }
    /// Asserts status and errcode.
    pub fn expect_err(&self, status: u16, errcode: &str) {
        assert_eq!(
            (self.status, self.errcode()),
            (status, errcode),
            "body: {}",
            self.body
        );
    }
}

/// A client, optionally logged in.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
    pub user_id: String,
    pub device_id: String,
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            base: base.to_owned(),
            http: crate::http()
                .pool_max_idle_per_host(64)
                .build()
                .expect("client"),
            token: None,
            user_id: String::new(),
            device_id: String::new(),
        }
    }

    /// Sends a request with a JSON body (or none) and returns status and JSON.
    pub async fn req(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let url = format!("{}{}", self.base, path);
        let mut rb = self.http.request(method, url);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        self.send(rb).await
    }

    /// Sends a raw body.
    pub async fn raw(&self, method: Method, path: &str, body: Vec<u8>) -> Resp {
        let mut rb = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .body(body);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        self.send(rb).await
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        let r = rb.send().await.expect("request sent");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp { status, body }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.req(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.req(Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.req(Method::PUT, path, Some(body)).await
    }

    /// Registers with the dummy stage (two steps, as clients do) and logs in.
    pub async fn register(mut self, localpart: &str, password: &str) -> Client {
        let first = self
            .post(
                "/_matrix/client/v3/register",
                json!({ "username": localpart, "password": password }),
            )
            .await;
        assert_eq!(first.status, 401, "register step 1: {}", first.body);
        let session = first.body["session"].as_str().expect("session").to_owned();
        let done = self
            .post(
                "/_matrix/client/v3/register",
                json!({ "username": localpart, "password": password, "auth": { "type": "m.login.dummy", "session": session } }),
            )
            .await
            .ok();
        self.token = Some(done["access_token"].as_str().expect("token").to_owned());
        self.user_id = done["user_id"].as_str().expect("user id").to_owned();
        self.device_id = done["device_id"].as_str().expect("device id").to_owned();
        self
    }

    /// Logs in as `user_id` with a password: a new device. Returns the logged-in client.
    pub async fn login(mut self, user_id: &str, password: &str) -> Client {
        let done = self
            .post(
                "/_matrix/client/v3/login",
                json!({
                    "type": "m.login.password",
                    "identifier": { "type": "m.id.user", "user": user_id },
                    "password": password,
                }),
            )
            .await
            .ok();
        self.token = Some(done["access_token"].as_str().expect("token").to_owned());
        self.user_id = done["user_id"].as_str().expect("user id").to_owned();
        self.device_id = done["device_id"].as_str().expect("device id").to_owned();
        self
    }

    /// Creates a room and returns its id.
    pub async fn create_room(&self, body: Value) -> String {
        let r = self.post("/_matrix/client/v3/createRoom", body).await.ok();
        r["room_id"].as_str().expect("room id").to_owned()
    }

    /// Sends a text message with a fresh transaction id; returns the event id.
    pub async fn send_text(&self, room: &str, body: &str) -> String {
        let txn = format!("t{}", rand::random::<u64>());
        let r = self
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                    enc(room)
                ),
                json!({ "msgtype": "m.text", "body": body }),
            )
            .await
            .ok();
        r["event_id"].as_str().expect("event id").to_owned()
    }

    /// Joins a room.
    pub async fn join(&self, room: &str) {
        self.post(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({}))
            .await
            .ok();
    }

    /// One /sync.
    pub async fn sync(&self, since: Option<&str>, timeout_ms: u64) -> Value {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(s) = since {
            path.push_str(&format!("&since={s}"));
        }
        self.get(&path).await.ok()
    }
}

/// Percent-encodes a path segment.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
