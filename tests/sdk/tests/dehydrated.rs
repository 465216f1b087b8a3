#![recursion_limit = "256"]
//! Dehydrated devices (MSC3814, `/_matrix/client/unstable/org.matrix.msc3814.v1/…`) as
//! matrix-sdk and Element use them, with real vodozemac on both ends. The crypto of the
//! devices that create and rehydrate dehydrated devices is a standalone
//! `matrix_sdk_crypto::OlmMachine` (a client's own machine is reachable only with the
//! `testing` feature), driven over a logged-in `Client`'s access token; bob is a plain
//! matrix-sdk client with a `/sync` loop. `e2ee_dehydrated_device`:
//!
//! 1. alice logs in on device A. Her crypto identity (an `OlmMachine` holding her private
//!    cross-signing keys, as Element's device does) bootstraps cross-signing, uploads the
//!    keys (`/keys/device_signing/upload`), creates a dehydrated device, signs it with the
//!    self-signing key and uploads it (`PUT dehydrated_device`). `GET dehydrated_device`
//!    returns that id and the same `device_data`; `/devices` lists it.
//! 2. alice (device A) creates an encrypted room and bob joins. bob's client sees the
//!    dehydrated device among alice's devices, marked dehydrated and cross-signed (the
//!    SDK withholds room keys from a dehydrated device that is not). Device A logs out,
//!    bob's view drops it, and bob sends messages with two Megolm sessions
//!    (`discard_room_key` in between): the SDK sends both room keys to the dehydrated
//!    device only. Between the two, bob sends it 120 plain to-device messages, more than
//!    one `/events` batch holds.
//! 3. alice logs in on device C (its crypto another `OlmMachine`, which uploads its own
//!    keys and queries hers), gets the dehydrated device, rehydrates it with the pickle
//!    key and pages `POST dehydrated_device/{id}/events` with `next_batch` until an empty
//!    batch, feeding every batch to `RehydratedDevice::receive_events`. Every message
//!    arrives once; the room keys of exactly bob's two sessions arrive (room, session
//!    ids, bob's Curve25519 key), and device C decrypts every message of bob's from
//!    `/messages`.
//! 4. Device C imports alice's cross-signing keys (as after verification or recovery)
//!    and uploads a new dehydrated device. `GET` returns the new id; the old one is gone
//!    from `/devices` and `/keys/query`, its `/events` are refused, and bob's view swaps
//!    the old device for the new one. bob's next message reaches the new device: its
//!    `/events` carry the room key of that message's session.
//!
//! The server's URL comes from `GANGLION_URL`. Every wait polls a condition with a
//! deadline; every request has a client-side timeout and no silent retry. The helpers
//! (accounts, logins, devices with a sync loop, waits, room steps) are in
//! `support/mod.rs`, shared with `e2ee.rs` and `federation.rs`.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use matrix_sdk::{
    Client,
    ruma::{
        OwnedDeviceId, OwnedEventId, RoomId, UserId,
        api::client::{
            dehydrated_device::{get_dehydrated_device, get_events, put_dehydrated_device},
            keys::{get_keys, upload_signing_keys},
            message::get_message_events,
            to_device::send_event_to_device,
            uiaa,
        },
        api::error::ErrorKind,
        events::AnyTimelineEvent,
        serde::Raw,
        to_device::DeviceIdOrAllDevices,
    },
};
use matrix_sdk_crypto::{
    DecryptionSettings, OlmMachine, TrustRequirement,
    dehydrated_devices::RehydratedDevice,
    store::types::{DehydratedDeviceKey, RoomKeyInfo},
    types::requests::AnyOutgoingRequest,
};
use serde_json::Value;
use support::{
    Account, Dev, account, create_encrypted_room, env_url, join, log, login_client, rand_u32,
    run_test, send_all, wait_for, within,
};

/// Deadline of the whole test.
const TEST_DEADLINE: Duration = Duration::from_secs(90);
/// More `/events` batches than this means the server never answers an empty one.
const MAX_BATCHES: usize = 50;
/// Plain to-device messages bob sends the dehydrated device between his two room keys,
/// so that the second key comes after more messages than one `/events` batch holds
/// (Synapse and Ganglion answer 100 at a time).
const FILLERS: usize = 120;
/// Their event type.
const FILLER_TYPE: &str = "org.example.dehydrated_test.filler";
/// The display name the SDK's docs give a dehydrated device.
const DISPLAY_NAME: &str = "Dehydrated device";

// The one view of a device list only this file takes; the rest of `Dev` is in `support`.
impl Dev {
    /// `user`'s devices as this client's crypto store knows them: id → (dehydrated,
    /// cross-signed by its owner).
    async fn devices_of(&self, user: &UserId) -> Result<BTreeMap<OwnedDeviceId, (bool, bool)>> {
        let devices = self.client.encryption().get_user_devices(user).await?;
        Ok(devices
            .devices()
            .map(|d| {
                (
                    d.device_id().to_owned(),
                    (d.is_dehydrated(), d.is_cross_signed_by_owner()),
                )
            })
            .collect())
    }
}

fn json<T>(raw: &Raw<T>) -> Result<Value> {
    serde_json::from_str(raw.json().get()).context("parsing raw JSON")
}

/// `dev` sends `FILLERS` plain to-device messages to `user`'s device `device_id`, one
/// request each, numbered in `n`.
async fn send_fillers(dev: &Dev, user: &UserId, device_id: &OwnedDeviceId) -> Result<()> {
    for n in 0..FILLERS {
        let content = Raw::new(&serde_json::json!({ "n": n }))?.cast_unchecked();
        let messages = BTreeMap::from([(
            user.to_owned(),
            BTreeMap::from([(DeviceIdOrAllDevices::DeviceId(device_id.clone()), content)]),
        )]);
        let request = send_event_to_device::v3::Request::new_raw(
            FILLER_TYPE.into(),
            matrix_sdk::ruma::TransactionId::new(),
            messages,
        );
        within(30, &format!("{} sends filler {n}", dev.name), async {
            dev.client.send(request).await?;
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// Bootstrap cross-signing on `machine` and upload the public keys with `client`; the
/// first upload needs no UIA (MSC3967), password UIA if the server asks anyway. The
/// signature request is left out: it signs `machine`'s own device, which is not on the
/// server.
async fn upload_cross_signing(machine: &OlmMachine, client: &Client, acc: &Account) -> Result<()> {
    let requests = machine.bootstrap_cross_signing(false).await?;
    let keys = requests.upload_signing_keys_req;
    let mut request = upload_signing_keys::v3::Request::new();
    request.master_key = keys.master_key.map(|k| k.to_raw());
    request.self_signing_key = keys.self_signing_key.map(|k| k.to_raw());
    request.user_signing_key = keys.user_signing_key.map(|k| k.to_raw());
    within(30, "upload alice's cross-signing keys", async {
        match client.send(request.clone()).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let info = e.as_uiaa_response().ok_or_else(|| anyhow!("{e}"))?;
                let mut password = uiaa::Password::new(
                    uiaa::UserIdentifier::Matrix(uiaa::MatrixUserIdentifier::new(
                        acc.user_id.to_string(),
                    )),
                    acc.password.clone(),
                );
                password.session = info.session.clone();
                request.auth = Some(uiaa::AuthData::Password(password));
                client.send(request).await?;
                Ok(())
            }
        }
    })
    .await
}

/// Create a dehydrated device with `machine` (which must hold the self-signing key)
/// and upload it with `client`; check that `GET dehydrated_device` returns it.
async fn dehydrate(
    machine: &OlmMachine,
    client: &Client,
    pickle_key: &DehydratedDeviceKey,
) -> Result<OwnedDeviceId> {
    let request: put_dehydrated_device::unstable::Request = machine
        .dehydrated_devices()
        .create()
        .await?
        .keys_for_upload(DISPLAY_NAME.to_owned(), pickle_key)
        .await?;
    let device_id = request.device_id.clone();
    let device_data = json(&request.device_data)?;
    ensure!(
        !request.one_time_keys.is_empty() && !request.fallback_keys.is_empty(),
        "the SDK's upload carries no one-time or fallback keys"
    );
    let put = within(30, "PUT dehydrated_device", async {
        Ok(client.send(request).await?)
    })
    .await?;
    ensure!(
        put.device_id == device_id,
        "PUT dehydrated_device answered device {}, uploaded {device_id}",
        put.device_id
    );
    let got = get_dehydrated(client).await?;
    ensure!(
        got.device_id == device_id,
        "GET dehydrated_device returned {}, expected {device_id}",
        got.device_id
    );
    ensure!(
        json(&got.device_data)? == device_data,
        "GET dehydrated_device returned other device_data than was uploaded"
    );
    Ok(device_id)
}

async fn get_dehydrated(client: &Client) -> Result<get_dehydrated_device::unstable::Response> {
    within(30, "GET dehydrated_device", async {
        Ok(client
            .send(get_dehydrated_device::unstable::Request::new())
            .await?)
    })
    .await
}

/// Page `POST dehydrated_device/{device_id}/events` from the start until an empty
/// batch, passing every batch to `rehydrated`; the room keys it received, the events'
/// types in order and the number of batches.
async fn read_events(
    client: &Client,
    device_id: &OwnedDeviceId,
    rehydrated: &RehydratedDevice,
) -> Result<(Vec<RoomKeyInfo>, Vec<String>, usize)> {
    let settings = DecryptionSettings {
        sender_device_trust_requirement: TrustRequirement::Untrusted,
    };
    let mut next_batch: Option<String> = None;
    let mut keys = Vec::new();
    let mut types = Vec::new();
    let mut batches = 0;
    loop {
        ensure!(
            batches < MAX_BATCHES,
            "no empty batch after {MAX_BATCHES} batches ({} events)",
            types.len()
        );
        let mut request = get_events::unstable::Request::new(device_id.clone());
        request.next_batch = next_batch.clone();
        let response = within(30, "POST dehydrated_device/{id}/events", async {
            Ok(client.send(request).await?)
        })
        .await?;
        batches += 1;
        if response.events.is_empty() {
            return Ok((keys, types, batches));
        }
        for event in &response.events {
            types.push(json(event)?["type"].as_str().unwrap_or_default().to_owned());
        }
        keys.extend(
            rehydrated
                .receive_events(response.events, &settings)
                .await
                .context("RehydratedDevice::receive_events")?,
        );
        let next = response
            .next_batch
            .ok_or_else(|| anyhow!("a non-empty batch without next_batch"))?;
        ensure!(
            next_batch.as_ref() != Some(&next),
            "a non-empty batch gave back the same next_batch {next:?}"
        );
        next_batch = Some(next);
    }
}

/// Send `machine`'s outgoing `/keys/upload` and `/keys/query` requests with `client`
/// (others, like to-device messages, are not needed here) until it has uploaded its
/// keys and knows its own user's devices and cross-signing identity.
async fn sync_machine_keys(machine: &OlmMachine, client: &Client) -> Result<()> {
    let user = machine.user_id().to_owned();
    machine.update_tracked_users([user.as_ref()]).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    // One-time keys the server counts after our last upload.
    let mut uploaded = 0;
    loop {
        let requests = machine.outgoing_requests().await?;
        for request in &requests {
            match request.request() {
                AnyOutgoingRequest::KeysUpload(upload) => {
                    let response = within(30, "/keys/upload", async {
                        Ok(client.send(upload.clone()).await?)
                    })
                    .await?;
                    uploaded = response
                        .one_time_key_counts
                        .values()
                        .map(|n| u64::from(*n))
                        .sum();
                    machine
                        .mark_request_as_sent(request.request_id(), &response)
                        .await?;
                }
                AnyOutgoingRequest::KeysQuery(query) => {
                    let mut q = get_keys::v3::Request::new();
                    q.device_keys = query.device_keys.clone();
                    let response =
                        within(30, "/keys/query", async { Ok(client.send(q).await?) }).await?;
                    machine
                        .mark_request_as_sent(request.request_id(), &response)
                        .await?;
                }
                _ => {}
            }
        }
        let own = machine
            .get_device(&user, machine.device_id(), None)
            .await?
            .is_some();
        let identity = machine.get_identity(&user, None).await?.is_some();
        if own && identity && uploaded > 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{}'s crypto: keys still not uploaded and queried (own device known: {own}, \
             identity known: {identity}, one-time keys uploaded: {uploaded}; last requests: {requests:?})",
            machine.device_id()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The device ids of `user` in a raw `/keys/query` made with `client`.
async fn queried_devices(client: &Client, user: &UserId) -> Result<BTreeSet<String>> {
    let mut request = get_keys::v3::Request::new();
    request.device_keys.insert(user.to_owned(), Vec::new());
    let response = within(30, "/keys/query", async { Ok(client.send(request).await?) }).await?;
    Ok(response
        .device_keys
        .get(user)
        .map(|d| d.keys().map(ToString::to_string).collect())
        .unwrap_or_default())
}

/// The device ids `GET /devices` lists for `client`'s user.
async fn listed_devices(client: &Client) -> Result<BTreeMap<String, Option<String>>> {
    let response = within(30, "GET /devices", async { Ok(client.devices().await?) }).await?;
    Ok(response
        .devices
        .into_iter()
        .map(|d| (d.device_id.to_string(), d.display_name))
        .collect())
}

/// The events `ids` of `room_id` as `/messages` (with `client`) returns them, in the
/// order of `ids`, each checked to be `m.room.encrypted`. Polled: on the split shape a
/// sync worker answers `/messages` and may not have the newest events yet.
async fn encrypted_events(
    client: &Client,
    room_id: &RoomId,
    ids: &[OwnedEventId],
) -> Result<Vec<Raw<AnyTimelineEvent>>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut request = get_message_events::v3::Request::backward(room_id.to_owned());
        request.limit = 100u32.into();
        let response = within(30, "/messages", async { Ok(client.send(request).await?) }).await?;
        let mut by_id = BTreeMap::new();
        for raw in response.chunk {
            let id = json(&raw)?["event_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            by_id.insert(id, raw);
        }
        let found: Vec<_> = ids
            .iter()
            .filter_map(|id| by_id.remove(id.as_str()))
            .collect();
        if found.len() == ids.len() {
            for raw in &found {
                let v = json(raw)?;
                ensure!(
                    v["type"] == "m.room.encrypted",
                    "{} arrived as {} in an encrypted room",
                    v["event_id"],
                    v["type"]
                );
            }
            return Ok(found);
        }
        ensure!(
            Instant::now() < deadline,
            "/messages has {} of bob's {} events after 20s",
            found.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn session_id(event: &Value) -> Result<String> {
    event["content"]["session_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("an m.room.encrypted event without session_id: {event}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2ee_dehydrated_device() {
    let url = env_url("GANGLION_URL");
    run_test(
        "e2ee_dehydrated_device",
        TEST_DEADLINE,
        dehydrated_device(&url),
    )
    .await;
}

async fn dehydrated_device(url: &str) -> Result<()> {
    let run = format!("{:08x}", rand_u32());
    let alice_acc = account(url, "alice", &run).await?;
    let bob_acc = account(url, "bob", &run).await?;
    let alice = &alice_acc.user_id;
    let alice_a = Dev::login(url, "alice-A", &alice_acc).await?;
    let bob = Dev::login(url, "bob", &bob_acc).await?;
    let a_id = alice_a.device_id.clone();

    // 1. alice's crypto identity: her cross-signing keys, then a dehydrated device.
    // Element tells "supported, none yet" (404 M_NOT_FOUND) from "not supported"
    // (M_UNRECOGNIZED) with this GET (matrix-js-sdk `DehydratedDeviceManager.isSupported`).
    let none = within(30, "GET dehydrated_device before any upload", async {
        Ok(alice_a
            .client
            .send(get_dehydrated_device::unstable::Request::new())
            .await)
    })
    .await?;
    match none {
        Err(e) if e.client_api_error_kind() == Some(&ErrorKind::NotFound) => {}
        other => bail!("GET dehydrated_device with none uploaded: {other:?}, expected M_NOT_FOUND"),
    }
    let identity = OlmMachine::new(alice, &OwnedDeviceId::from("ALICEKEYS")).await;
    upload_cross_signing(&identity, &alice_a.client, &alice_acc).await?;
    let pickle_key = DehydratedDeviceKey::new();
    let old_id = dehydrate(&identity, &alice_a.client, &pickle_key).await?;
    let listed = listed_devices(&alice_a.client).await?;
    ensure!(
        listed.get(old_id.as_str()) == Some(&Some(DISPLAY_NAME.to_owned())),
        "/devices does not list dehydrated device {old_id} named {DISPLAY_NAME:?}: {listed:?}"
    );
    log(&format!("alice uploaded dehydrated device {old_id}"));

    // 2. An encrypted room; device A leaves; bob's keys go to the dehydrated device.
    let room_id = create_encrypted_room(&alice_a, &[&bob.user_id]).await?;
    join(&bob, &room_id, &[&alice_a]).await?;
    let seen = wait_for(
        30,
        &format!("bob learns alice's dehydrated device {old_id}"),
        &[&bob],
        async || Ok(bob.devices_of(alice).await?.get(&old_id).copied()),
    )
    .await?;
    ensure!(
        seen == (true, true),
        "bob sees {old_id} as (dehydrated, cross-signed by alice) = {seen:?}, expected both"
    );
    alice_a.logout().await?;
    wait_for(
        30,
        "bob's view of alice's devices is the dehydrated one alone",
        &[&bob],
        async || {
            let devices = bob.devices_of(alice).await?;
            Ok((devices.keys().collect::<Vec<_>>() == [&old_id]).then_some(()))
        },
    )
    .await?;
    log(&format!(
        "alice's device {a_id} logged out; bob sees only {old_id}"
    ));

    let bob_room = bob.room(&room_id)?;
    let bodies: Vec<String> = (0..6).map(|i| format!("{run} bob {i}")).collect();
    let mut ids = send_all(&bob, &bob_room, &bodies[..3]).await?;
    send_fillers(&bob, alice, &old_id).await?;
    within(30, "bob discards his room key", async {
        Ok(bob_room.discard_room_key().await?)
    })
    .await?;
    ids.extend(send_all(&bob, &bob_room, &bodies[3..]).await?);
    let bob_key = bob
        .client
        .encryption()
        .curve25519_key()
        .await
        .ok_or_else(|| anyhow!("bob has no Curve25519 key"))?;

    // 3. Device C rehydrates the device and reads its to-device messages.
    let client_c = login_client(url, "alice-C", &alice_acc).await?;
    let c_id = client_c
        .device_id()
        .ok_or_else(|| anyhow!("alice-C has no device id"))?
        .to_owned();
    let machine_c = OlmMachine::new(alice, &c_id).await;
    sync_machine_keys(&machine_c, &client_c).await?;
    let got = get_dehydrated(&client_c).await?;
    ensure!(
        got.device_id == old_id,
        "device C got dehydrated device {}, expected {old_id}",
        got.device_id
    );
    let rehydrated = machine_c
        .dehydrated_devices()
        .rehydrate(&pickle_key, &got.device_id, got.device_data)
        .await
        .context("rehydrating with the pickle key")?;
    let (keys, types, batches) = read_events(&client_c, &old_id, &rehydrated).await?;
    log(&format!(
        "device C read {} to-device events in {batches} batches: {} room keys",
        types.len(),
        keys.len()
    ));
    let fillers = types.iter().filter(|t| *t == FILLER_TYPE).count();
    let olm = types.iter().filter(|t| *t == "m.room.encrypted").count();
    ensure!(
        fillers == FILLERS && olm == 2 && types.len() == FILLERS + 2,
        "the dehydrated device's /events gave {fillers} fillers (sent {FILLERS}) and {olm} \
         m.room.encrypted (expected bob's 2 room keys) of {} events",
        types.len()
    );

    let sent = encrypted_events(&client_c, &room_id, &ids).await?;
    let sessions: BTreeSet<String> = sent
        .iter()
        .map(|e| session_id(&json(e)?))
        .collect::<Result<_>>()?;
    ensure!(
        sessions.len() == 2,
        "bob's messages use {} Megolm sessions, expected 2 (one per side of discard_room_key)",
        sessions.len()
    );
    let received: BTreeSet<String> = keys.iter().map(|k| k.session_id.clone()).collect();
    ensure!(
        received == sessions,
        "the rehydrated device received the keys of sessions {received:?}, expected bob's \
         {sessions:?}"
    );
    for k in &keys {
        ensure!(
            k.room_id == room_id && k.sender_key == bob_key,
            "room key {} is for room {} from {}, expected {room_id} from bob's {bob_key}",
            k.session_id,
            k.room_id,
            k.sender_key.to_base64()
        );
    }
    let settings = DecryptionSettings {
        sender_device_trust_requirement: TrustRequirement::Untrusted,
    };
    let mut decrypted = Vec::new();
    for raw in &sent {
        let event = machine_c
            .decrypt_room_event(raw.cast_ref_unchecked(), &room_id, &settings)
            .await
            .with_context(|| format!("device C decrypts {}", raw.json().get()))?;
        let content: Value = event
            .event
            .get_field("content")?
            .ok_or_else(|| anyhow!("a decrypted event without content"))?;
        decrypted.push(content["body"].as_str().unwrap_or_default().to_owned());
    }
    ensure!(
        decrypted == bodies,
        "device C decrypted {decrypted:?}, bob sent {bodies:?}"
    );
    log("device C decrypted all of bob's messages with the rehydrated keys");

    // 4. Device C replaces the dehydrated device.
    let export = identity
        .export_cross_signing_keys()
        .await?
        .ok_or_else(|| anyhow!("alice's identity has no cross-signing keys to export"))?;
    let status = machine_c.import_cross_signing_keys(export).await?;
    ensure!(
        status.has_self_signing,
        "device C lacks the self-signing key after the import: {status:?}"
    );
    let new_pickle_key = DehydratedDeviceKey::new();
    let new_id = dehydrate(&machine_c, &client_c, &new_pickle_key).await?;
    ensure!(
        new_id != old_id,
        "the new dehydrated device reuses {old_id}"
    );
    let listed = listed_devices(&client_c).await?;
    ensure!(
        listed.contains_key(new_id.as_str()) && !listed.contains_key(old_id.as_str()),
        "/devices after the replacement: {listed:?} (new {new_id}, old {old_id})"
    );
    let queried = queried_devices(&client_c, alice).await?;
    ensure!(
        queried == BTreeSet::from([c_id.to_string(), new_id.to_string()]),
        "/keys/query lists alice's devices {queried:?}, expected {c_id} and {new_id}"
    );
    let old_events = client_c
        .send(get_events::unstable::Request::new(old_id.clone()))
        .await;
    // Ganglion answers 403 M_FORBIDDEN (docs/architecture.md, "Dehydrated devices").
    ensure!(
        old_events
            .as_ref()
            .is_err_and(|e| e.as_client_api_error().is_some()),
        "POST events of the replaced device {old_id}: {old_events:?}, expected a Matrix error"
    );
    let seen = wait_for(
        30,
        &format!("bob's view swaps {old_id} for {new_id}"),
        &[&bob],
        async || {
            let devices = bob.devices_of(alice).await?;
            if devices.contains_key(&old_id) {
                return Ok(None);
            }
            Ok(devices.get(&new_id).copied())
        },
    )
    .await?;
    ensure!(
        seen == (true, true),
        "bob sees {new_id} as (dehydrated, cross-signed by alice) = {seen:?}, expected both"
    );
    log(&format!("dehydrated device {old_id} replaced by {new_id}"));

    // bob's next message shares his current session with the new device too.
    let last = format!("{run} bob after the replacement");
    let ids = send_all(&bob, &bob_room, std::slice::from_ref(&last)).await?;
    let sent = encrypted_events(&client_c, &room_id, &ids).await?;
    let last_session = session_id(&json(&sent[0])?)?;
    let got = get_dehydrated(&client_c).await?;
    let rehydrated = machine_c
        .dehydrated_devices()
        .rehydrate(&new_pickle_key, &got.device_id, got.device_data)
        .await
        .context("rehydrating the new device")?;
    let (keys, types, _) = read_events(&client_c, &new_id, &rehydrated).await?;
    ensure!(
        keys.iter()
            .any(|k| k.session_id == last_session && k.room_id == room_id),
        "the new dehydrated device did not receive session {last_session} (events {types:?}, \
         keys {:?})",
        keys.iter().map(|k| &k.session_id).collect::<Vec<_>>()
    );
    log(&format!(
        "the new dehydrated device received bob's session {last_session}"
    ));
    Ok(())
}
