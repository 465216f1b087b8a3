//! Helpers shared by the matrix-sdk E2EE tests (`e2ee.rs`, `federation.rs`,
//! `dehydrated.rs`): fresh accounts (UIA `m.login.dummy`), logins (with or without a
//! client of their own that syncs), logged-in devices with a background `/sync` loop that
//! records every decrypted message and every undecryptable event, waits on conditions
//! with deadlines, and the room steps these files take (create an encrypted room, join,
//! send, check what arrived).
//!
//! Each test binary uses only part of this module, hence `allow(dead_code)`.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use matrix_sdk::{
    Client, Room, RoomState,
    config::{RequestConfig, SyncSettings},
    ruma::{
        OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
        api::client::{
            account::register,
            filter::FilterDefinition,
            keys::get_keys,
            room::create_room::v3::{Request as CreateRoomRequest, RoomPreset},
            sync::sync_events::v3::Filter,
            uiaa,
        },
        events::{
            InitialStateEvent,
            room::{
                encrypted::OriginalSyncRoomEncryptedEvent,
                encryption::RoomEncryptionEventContent,
                member::MembershipState,
                message::{MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent},
            },
        },
        serde::Raw,
    },
};
use serde_json::Value;

/// Long-poll time of each background `/sync`.
pub const SYNC_POLL: Duration = Duration::from_secs(1);
/// Client-side timeout of every request (a sync gets its poll time on top).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The homeserver URL in the environment variable `var`, without a trailing slash.
pub fn env_url(var: &str) -> String {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => url.trim_end_matches('/').to_owned(),
        _ => panic!(
            "{var} is not set: this test needs a running homeserver \
             (e.g. {var}=http://127.0.0.1:8008; tests/run starts one)"
        ),
    }
}

/// Run one test body under `deadline` and turn its error into a panic.
pub async fn run_test(name: &str, deadline: Duration, fut: impl Future<Output = Result<()>>) {
    let started = Instant::now();
    match tokio::time::timeout(deadline, fut).await {
        Ok(Ok(())) => log(&format!(
            "PASS {name} in {:.1}s",
            started.elapsed().as_secs_f64()
        )),
        Ok(Err(e)) => panic!("{name} failed: {e:#}"),
        Err(_) => panic!("{name}: overall deadline of {deadline:?} passed"),
    }
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

pub fn log(msg: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    println!("[{t:6.2}s] {msg}");
}

/// `fut` with a timeout whose error names the step.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .map_err(|_| anyhow!("{what}: timed out after {secs}s"))?
        .with_context(|| what.to_owned())
}

/// Poll `cond` every 50 ms until it returns `Some`, failing after `secs` seconds or as
/// soon as one of `devs` has lost its sync loop. `state` describes what was seen, for
/// the timeout message.
pub async fn wait_for<T>(
    secs: u64,
    what: &str,
    devs: &[&Dev],
    mut cond: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        for d in devs {
            d.check_sync()?;
        }
        if let Some(v) = cond().await.with_context(|| what.to_owned())? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not reached within {secs}s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() as u32
}

pub async fn new_client(url: &str) -> Result<Client> {
    Client::builder()
        .homeserver_url(url)
        // No silent retries: a timeout, a 5xx or a 429 is a failure.
        .request_config(
            RequestConfig::new()
                .disable_retry()
                .timeout(REQUEST_TIMEOUT),
        )
        .build()
        .await
        .context("building the matrix-sdk client")
}

/// Register `localpart` with `m.login.dummy`; return the full user id.
pub async fn register(url: &str, localpart: &str, password: &str) -> Result<OwnedUserId> {
    let client = new_client(url).await?;
    let mut request = register::v3::Request::new();
    request.username = Some(localpart.to_owned());
    request.password = Some(password.to_owned());
    // Only the login below makes the devices that take part.
    request.inhibit_login = true;
    let response = match client.matrix_auth().register(request.clone()).await {
        Ok(response) => response,
        Err(err) => {
            let info = err
                .as_uiaa_response()
                .ok_or_else(|| anyhow!("register {localpart}: {err}"))?;
            let mut dummy = uiaa::Dummy::new();
            dummy.session = info.session.clone();
            request.auth = Some(uiaa::AuthData::Dummy(dummy));
            client
                .matrix_auth()
                .register(request)
                .await
                .with_context(|| format!("register {localpart} (UIA dummy stage)"))?
        }
    };
    Ok(response.user_id)
}

/// A user account: registered, not logged in.
pub struct Account {
    pub user_id: OwnedUserId,
    pub password: String,
}

pub async fn account(url: &str, name: &str, run: &str) -> Result<Account> {
    let password = format!("pw-{run}-{name}");
    let user_id = within(
        30,
        &format!("register {name}"),
        register(url, &format!("e2ee-{name}-{run}"), &password),
    )
    .await?;
    Ok(Account { user_id, password })
}

/// A decrypted (or plain) `m.room.message` a device's sync delivered.
#[derive(Clone, Debug)]
pub struct Seen {
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    pub sender: OwnedUserId,
    pub body: String,
    /// The SDK decrypted it (it came as `m.room.encrypted`).
    pub encrypted: bool,
}

#[derive(Default)]
pub struct Observed {
    pub messages: Vec<Seen>,
    /// `m.room.encrypted` events the SDK could not decrypt: (room, event id).
    pub utd: Vec<(OwnedRoomId, OwnedEventId)>,
    /// Every event of the two above, decrypted or not, in the order sync delivered them.
    pub arrived: Vec<(OwnedRoomId, OwnedEventId)>,
    pub syncs: usize,
    pub limited: usize,
    pub sync_error: Option<String>,
    /// The `next_batch` of the latest background `/sync`.
    pub next_batch: Option<String>,
}

/// Log `account` in on a new device with a client of its own and no `/sync`, so that the
/// client's crypto uploads nothing (a test that drives the device's crypto itself, or
/// `Dev::login`, which starts syncing).
pub async fn login_client(url: &str, name: &str, account: &Account) -> Result<Client> {
    let client = new_client(url).await?;
    within(30, &format!("login {name}"), async {
        Ok(client
            .matrix_auth()
            .login_username(&account.user_id, &account.password)
            .initial_device_display_name(&format!("sdk-e2ee-{name}"))
            .send()
            .await?)
    })
    .await?;
    let device_id = client
        .device_id()
        .ok_or_else(|| anyhow!("{name}: no device id after login"))?;
    log(&format!(
        "{name} logged in as {} on device {device_id}",
        account.user_id
    ));
    Ok(client)
}

/// One logged-in device with a background `/sync` loop.
pub struct Dev {
    pub name: String,
    pub client: Client,
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub password: String,
    pub seen: Arc<Mutex<Observed>>,
    pub sync_task: tokio::task::JoinHandle<()>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.sync_task.abort();
    }
}

impl Dev {
    /// Log `account` in on a new device, do one `/sync` (which uploads the device keys and
    /// one-time keys first), then keep syncing in the background.
    pub async fn login(url: &str, name: &str, account: &Account) -> Result<Dev> {
        let client = login_client(url, name, account).await?;
        let device_id = client
            .device_id()
            .ok_or_else(|| anyhow!("{name}: no device id after login"))?
            .to_owned();
        let seen = Arc::new(Mutex::new(Observed::default()));
        {
            let seen = seen.clone();
            client.add_event_handler(
                move |ev: OriginalSyncRoomMessageEvent,
                      room: Room,
                      info: Option<matrix_sdk::deserialized_responses::EncryptionInfo>| {
                    let seen = seen.clone();
                    async move {
                        let body = match &ev.content.msgtype {
                            MessageType::Text(t) => t.body.clone(),
                            other => other.body().to_owned(),
                        };
                        let mut s = seen.lock().unwrap();
                        s.arrived.push((room.room_id().to_owned(), ev.event_id.clone()));
                        s.messages.push(Seen {
                            room_id: room.room_id().to_owned(),
                            event_id: ev.event_id,
                            sender: ev.sender,
                            body,
                            encrypted: info.is_some(),
                        });
                    }
                },
            );
        }
        {
            let seen = seen.clone();
            client.add_event_handler(move |ev: OriginalSyncRoomEncryptedEvent, room: Room| {
                let seen = seen.clone();
                async move {
                    let mut s = seen.lock().unwrap();
                    s.arrived
                        .push((room.room_id().to_owned(), ev.event_id.clone()));
                    s.utd.push((room.room_id().to_owned(), ev.event_id));
                }
            });
        }
        within(30, &format!("{name}: first /sync"), async {
            client
                .sync_once(SyncSettings::new().timeout(Duration::ZERO).filter(filter()))
                .await?;
            Ok(())
        })
        .await?;
        let sync_task = {
            let client = client.clone();
            let seen = seen.clone();
            let name = name.to_owned();
            tokio::spawn(async move {
                loop {
                    // The token of the previous sync is reused (SyncToken::ReusePrevious).
                    let settings = SyncSettings::new().timeout(SYNC_POLL).filter(filter());
                    match client.sync_once(settings).await {
                        Ok(response) => {
                            let mut s = seen.lock().unwrap();
                            s.syncs += 1;
                            s.next_batch = Some(response.next_batch.clone());
                            s.limited += response
                                .rooms
                                .joined
                                .values()
                                .filter(|r| r.timeline.limited)
                                .count();
                        }
                        Err(e) => {
                            seen.lock().unwrap().sync_error = Some(format!("{name} /sync: {e}"));
                            return;
                        }
                    }
                }
            })
        };
        Ok(Dev {
            name: name.to_owned(),
            client,
            user_id: account.user_id.clone(),
            device_id,
            password: account.password.clone(),
            seen,
            sync_task,
        })
    }

    /// Stop syncing and log the device out (`POST /logout`), which deletes it.
    pub async fn logout(self) -> Result<()> {
        self.sync_task.abort();
        within(30, &format!("{} logs out", self.name), async {
            self.client.matrix_auth().logout().await?;
            Ok(())
        })
        .await
    }

    pub fn check_sync(&self) -> Result<()> {
        if let Some(e) = &self.seen.lock().unwrap().sync_error {
            bail!("{}: the sync loop stopped: {e}", self.name);
        }
        ensure!(
            !self.sync_task.is_finished(),
            "{}: the sync loop ended",
            self.name
        );
        Ok(())
    }

    pub fn room(&self, room_id: &RoomId) -> Result<Room> {
        self.client
            .get_room(room_id)
            .ok_or_else(|| anyhow!("{}: room {room_id} is not in the client's store", self.name))
    }

    /// Messages of `room_id` whose body starts with `prefix`, in sync order.
    pub fn messages(&self, room_id: &RoomId, prefix: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .messages
            .iter()
            .filter(|m| m.room_id == room_id && m.body.starts_with(prefix))
            .cloned()
            .collect()
    }

    pub fn utd(&self, room_id: &RoomId) -> Vec<OwnedEventId> {
        self.seen
            .lock()
            .unwrap()
            .utd
            .iter()
            .filter(|(r, _)| r == room_id)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// The events of `room_id` the two handlers saw, decrypted or not, in sync order.
    pub fn arrived(&self, room_id: &RoomId) -> Vec<OwnedEventId> {
        self.seen
            .lock()
            .unwrap()
            .arrived
            .iter()
            .filter(|(r, _)| r == room_id)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// The `next_batch` of the latest background `/sync`.
    pub fn next_batch(&self) -> Result<String> {
        self.seen
            .lock()
            .unwrap()
            .next_batch
            .clone()
            .ok_or_else(|| anyhow!("{}: no background /sync has finished yet", self.name))
    }

    pub fn sync_stats(&self) -> String {
        let s = self.seen.lock().unwrap();
        format!(
            "{}: {} syncs, {} limited timelines, {} messages, {} UTDs",
            self.name,
            s.syncs,
            s.limited,
            s.messages.len(),
            s.utd.len()
        )
    }

    /// `/keys/query` for `user`, as raw JSON (what the server stores, not the SDK's view).
    pub async fn query_keys(&self, user: &UserId) -> Result<Value> {
        let mut request = get_keys::v3::Request::new();
        request.device_keys.insert(user.to_owned(), Vec::new());
        let response = self.client.send(request).await?;
        let raw = |m: &BTreeMap<OwnedUserId, Raw<_>>| -> Value {
            m.get(user)
                .map(|r: &Raw<_>| serde_json::from_str(r.json().get()).unwrap_or(Value::Null))
                .unwrap_or(Value::Null)
        };
        let devices: serde_json::Map<String, Value> = response
            .device_keys
            .get(user)
            .map(|d| {
                d.iter()
                    .map(|(id, k)| {
                        (
                            id.to_string(),
                            serde_json::from_str(k.json().get()).unwrap_or(Value::Null),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(serde_json::json!({
            "devices": devices,
            "master": raw(&response.master_keys),
            "self_signing": raw(&response.self_signing_keys),
            "failures": response.failures,
        }))
    }
}

/// Sync filter: a timeline limit far above what piles up between two syncs.
pub fn filter() -> Filter {
    let mut filter = FilterDefinition::default();
    filter.room.timeline.limit = Some(UInt::from(1000u32));
    Filter::FilterDefinition(filter)
}

/// `creator` creates a private room with `m.room.encryption` in `initial_state`,
/// inviting `invite`.
pub async fn create_encrypted_room(creator: &Dev, invite: &[&UserId]) -> Result<OwnedRoomId> {
    let mut request = CreateRoomRequest::new();
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = invite.iter().map(|u| (*u).to_owned()).collect();
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = within(30, &format!("{} creates a room", creator.name), async {
        Ok(creator.client.create_room(request).await?)
    })
    .await?;
    let room_id = room.room_id().to_owned();
    let encrypted = within(20, "encryption state of the new room", async {
        Ok(room.latest_encryption_state().await?.is_encrypted())
    })
    .await?;
    ensure!(encrypted, "room {room_id} is not encrypted after creation");
    log(&format!(
        "{} created encrypted room {room_id}",
        creator.name
    ));
    Ok(room_id)
}

/// `dev` joins `room_id` (invited) and `others` see it as joined in their syncs.
pub async fn join(dev: &Dev, room_id: &RoomId, others: &[&Dev]) -> Result<()> {
    wait_for(
        20,
        &format!("{} sees the invite", dev.name),
        &[dev],
        async || {
            Ok(dev
                .client
                .get_room(room_id)
                .filter(|r| r.state() == RoomState::Invited)
                .map(|_| ()))
        },
    )
    .await?;
    within(30, &format!("{} joins", dev.name), async {
        dev.client.join_room_by_id(room_id).await?;
        Ok(())
    })
    .await?;
    for other in others {
        wait_for(
            20,
            &format!("{} sees {} joined", other.name, dev.name),
            &[other, dev],
            async || {
                let Some(room) = other.client.get_room(room_id) else {
                    return Ok(None);
                };
                Ok(room
                    .get_member_no_sync(&dev.user_id)
                    .await?
                    .filter(|m| *m.membership() == MembershipState::Join)
                    .map(|_| ()))
            },
        )
        .await?;
    }
    Ok(())
}

/// `dev`'s client knows `user`'s device `device_id` (after `/keys/query`).
pub async fn wait_knows_device(dev: &Dev, user: &UserId, device_id: &OwnedDeviceId) -> Result<()> {
    wait_for(
        30,
        &format!("{} learns {user}'s device {device_id}", dev.name),
        &[dev],
        async || {
            Ok(dev
                .client
                .encryption()
                .get_device(user, device_id)
                .await?
                .map(|_| ()))
        },
    )
    .await
}

/// Send `bodies` in order; return their event ids.
pub async fn send_all(dev: &Dev, room: &Room, bodies: &[String]) -> Result<Vec<OwnedEventId>> {
    let mut ids = Vec::with_capacity(bodies.len());
    for body in bodies {
        let id = within(30, &format!("{} sends {body:?}", dev.name), async {
            Ok(room
                .send(RoomMessageEventContent::text_plain(body))
                .await?
                .response
                .event_id)
        })
        .await?;
        ids.push(id);
    }
    Ok(ids)
}

/// `dev` decrypted exactly `expected` (bodies starting with `prefix`, from `sender`, in
/// this order, all of them encrypted), and none of `ids` stayed undecryptable.
pub fn check_received(
    dev: &Dev,
    room_id: &RoomId,
    prefix: &str,
    sender: &UserId,
    expected: &[String],
    ids: &[OwnedEventId],
) -> Result<()> {
    let got: Vec<Seen> = dev
        .messages(room_id, prefix)
        .into_iter()
        .filter(|m| m.sender == sender)
        .collect();
    let bodies: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
    ensure!(
        bodies == expected.iter().map(String::as_str).collect::<Vec<_>>(),
        "{} decrypted {} messages from {sender} ({prefix}…), expected {}; got {bodies:?}",
        dev.name,
        bodies.len(),
        expected.len()
    );
    let got_ids: Vec<&OwnedEventId> = got.iter().map(|m| &m.event_id).collect();
    ensure!(
        got_ids == ids.iter().collect::<Vec<_>>(),
        "{}: the event ids of {sender}'s messages differ from what the sends returned",
        dev.name
    );
    if let Some(m) = got.iter().find(|m| !m.encrypted) {
        bail!(
            "{}: {} arrived unencrypted in an encrypted room",
            dev.name,
            m.event_id
        );
    }
    let utd = dev.utd(room_id);
    if let Some(id) = ids.iter().find(|id| utd.contains(id)) {
        bail!("{}: {id} was undecryptable when it arrived", dev.name);
    }
    Ok(())
}
