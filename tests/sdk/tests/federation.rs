#![recursion_limit = "256"]
//! End-to-end encryption across federation, driven by matrix-sdk 0.18: alice on Ganglion
//! (`GANGLION_URL`), bob on Synapse (`SYNAPSE_URL`), the two servers federating over TLS
//! on loopback. `tests/run sdk@federation` starts both (see docs/federation-testing.md);
//! the other sdk stages skip this file's test (`--skip across_federation`).
//!
//! `e2ee_across_federation`:
//! 1. alice creates a room with `m.room.encryption` in `initial_state` and invites bob
//!    (the invite goes to Synapse over federation); bob joins over federation.
//! 2. Both send [`MESSAGES_PER_SENDER`] messages at the same time. Every device decrypts
//!    all of them, the other's in the order they were sent, and no unable-to-decrypt
//!    (UTD) is left. Over federation a room key (to-device EDU) and the first message it
//!    opens (PDU) travel separately, and a server may put the message into a `/sync`
//!    before the key: such a message counts once the client decrypts it on fetching it
//!    again after the key came (the test logs how many needed that).
//! 3. Keys over federation, asserted directly: each client's view of the other's device
//!    carries the identity keys that device holds itself; `/keys/query` through each
//!    user's own server lists the other's devices and reports no `failures`; `/keys/claim`
//!    through each server returns a one-time key for the other's device.
//! 4. bob logs in a second device. Synapse sends `m.device_list_update` to Ganglion,
//!    alice's `/sync` lists bob in `device_lists.changed`, her client queries his keys
//!    again and learns the new device; alice's next messages decrypt on both of bob's
//!    devices, and a message from bob's new device decrypts on alice's.
//!
//! To-device messages cross both ways: the room keys travel as Olm-encrypted to-device
//! messages (`m.room.encrypted` carrying `m.room_key`), sent with `/sendToDevice` and
//! passed between the servers as `m.direct_to_device` EDUs; alice's go Ganglion →
//! Synapse, bob's Synapse → Ganglion. Every message of the other's that a device decrypts
//! proves that direction. The Olm sessions they travel in need the other's device keys
//! (`/keys/query`) and one-time key (`/keys/claim`) over federation, which 3 checks too.
//!
//! Every wait polls a condition with a deadline; every request has a client-side timeout
//! and no silent retry.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, ensure};
use matrix_sdk::{
    Room,
    deserialized_responses::TimelineEventKind,
    ruma::{
        OneTimeKeyAlgorithm, OwnedDeviceId, OwnedEventId, RoomId, UserId,
        api::client::keys::{claim_keys, get_key_changes},
    },
};
use serde_json::Value;
use support::{
    Dev, account, create_encrypted_room, env_url, join, log, rand_u32, run_test, send_all,
    wait_for, wait_knows_device,
};

/// Deadline of the whole test.
const TEST_DEADLINE: Duration = Duration::from_secs(180);
/// Messages each of alice and bob send in step 2.
const MESSAGES_PER_SENDER: usize = 20;
/// Seconds a batch of messages may take to reach every device across the servers.
const DELIVERY_SECS: u64 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2ee_across_federation() {
    let ganglion = env_url("GANGLION_URL");
    let synapse = env_url("SYNAPSE_URL");
    run_test(
        "e2ee_across_federation",
        TEST_DEADLINE,
        across_federation(&ganglion, &synapse),
    )
    .await;
}

async fn across_federation(ganglion: &str, synapse: &str) -> Result<()> {
    let run = format!("{:08x}", rand_u32());
    let alice_acc = account(ganglion, "alice", &run).await?;
    let bob_acc = account(synapse, "bob", &run).await?;
    ensure!(
        alice_acc.user_id.server_name() != bob_acc.user_id.server_name(),
        "alice ({}) and bob ({}) are on the same server",
        alice_acc.user_id,
        bob_acc.user_id
    );
    let alice = Dev::login(ganglion, "alice", &alice_acc).await?;
    let bob = Dev::login(synapse, "bob", &bob_acc).await?;

    // 1. The room, joined over federation.
    let room_id = create_encrypted_room(&alice, &[&bob.user_id]).await?;
    join(&bob, &room_id, &[&alice]).await?;
    let alice_room = alice.room(&room_id)?;
    let bob_room = bob.room(&room_id)?;
    ensure!(
        bob_room.latest_encryption_state().await?.is_encrypted(),
        "bob does not see the room as encrypted"
    );
    log("bob joined alice's encrypted room over federation");

    // 2. Both send at the same time, each in order.
    let started = Instant::now();
    let alice_bodies = bodies(&run, "alice", MESSAGES_PER_SENDER);
    let bob_bodies = bodies(&run, "bob", MESSAGES_PER_SENDER);
    let (alice_ids, bob_ids) = tokio::try_join!(
        send_all(&alice, &alice_room, &alice_bodies),
        send_all(&bob, &bob_room, &bob_bodies)
    )?;
    log(&format!(
        "alice and bob sent {MESSAGES_PER_SENDER} encrypted messages each in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    let alice_sent = Sent::new(&alice, &alice_bodies, &alice_ids);
    let bob_sent = Sent::new(&bob, &bob_bodies, &bob_ids);
    for dev in [&alice, &bob] {
        decrypts_all(dev, &room_id, &[&alice_sent, &bob_sent], &[&alice, &bob]).await?;
    }
    log(&format!(
        "alice and bob each decrypted all {} messages, no UTD left",
        2 * MESSAGES_PER_SENDER
    ));

    // 3. Device keys and one-time keys over federation, asserted directly.
    for (dev, other) in [(&alice, &bob), (&bob, &alice)] {
        knows_device_as_it_is(dev, other, other).await?;
        queries_devices(dev, &other.user_id, &[&other.device_id]).await?;
        claims_one_time_key(dev, other).await?;
    }
    log("keys queried and claimed over federation both ways");

    // 4. A second device of bob's, announced to Ganglion by Synapse's device-list EDU.
    let before = alice.next_batch()?;
    let bob2 = Dev::login(synapse, "bob2", &bob_acc).await?;
    ensure!(
        bob2.device_id != bob.device_id,
        "the second login reused the device id"
    );
    wait_knows_device(&alice, &bob.user_id, &bob2.device_id).await?;
    // Ganglion knows of the change only from the EDU, and recorded it for alice.
    let changes = alice
        .client
        .send(get_key_changes::v3::Request::new(
            before,
            alice.next_batch()?,
        ))
        .await?;
    ensure!(
        changes.changed.contains(&bob.user_id),
        "/keys/changes on Ganglion since bob's new login does not list bob: {:?}",
        changes.changed
    );
    knows_device_as_it_is(&alice, &bob, &bob2).await?;
    queries_devices(&alice, &bob.user_id, &[&bob.device_id, &bob2.device_id]).await?;
    log("alice's client learned bob's second device");
    wait_for(
        30,
        "bob's second device sees the room",
        &[&bob2],
        async || Ok(bob2.client.get_room(&room_id).map(|_| ())),
    )
    .await?;

    let new_bodies = bodies(&run, "alice-new", 5);
    let new_ids = send_all(&alice, &alice_room, &new_bodies).await?;
    let new_sent = Sent::new(&alice, &new_bodies, &new_ids);
    for dev in [&bob2, &bob] {
        decrypts_all(dev, &room_id, &[&new_sent], &[&alice, dev]).await?;
    }
    log("both of bob's devices decrypted alice's new messages");

    let bob2_bodies = bodies(&run, "bob2", 3);
    let bob2_ids = send_all(&bob2, &bob2.room(&room_id)?, &bob2_bodies).await?;
    let bob2_sent = Sent::new(&bob2, &bob2_bodies, &bob2_ids);
    decrypts_all(&alice, &room_id, &[&bob2_sent], &[&alice, &bob2]).await?;
    log("alice decrypted the messages of bob's second device");
    Ok(())
}

fn bodies(run: &str, who: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{run} {who} {i}")).collect()
}

/// Messages one device sent, in order.
struct Sent<'a> {
    sender: &'a Dev,
    bodies: &'a [String],
    ids: &'a [OwnedEventId],
}

impl<'a> Sent<'a> {
    fn new(sender: &'a Dev, bodies: &'a [String], ids: &'a [OwnedEventId]) -> Self {
        Sent {
            sender,
            bodies,
            ids,
        }
    }
}

/// Wait until `dev` has decrypted every message of `sent`: in its sync (as an encrypted
/// event), or, for one that sync delivered before its key, by fetching it again
/// (`/rooms/{roomId}/event/{eventId}`) once the key is there. Then each sender's
/// messages must have arrived exactly once each, in the order sent, from that sender,
/// with the bodies sent. `live` are the devices whose sync loops must keep running.
async fn decrypts_all(
    dev: &Dev,
    room_id: &RoomId,
    sent: &[&Sent<'_>],
    live: &[&Dev],
) -> Result<()> {
    let room = dev.room(room_id)?;
    let wanted: Vec<&OwnedEventId> = sent.iter().flat_map(|s| s.ids.iter()).collect();
    // Messages that sync delivered undecryptable and a later fetch decrypted:
    // event id → (sender, body).
    let mut late: HashMap<OwnedEventId, (String, String)> = HashMap::new();
    let what = format!("{} decrypts {} messages", dev.name, wanted.len());
    let outcome = wait_for(DELIVERY_SECS, &what, live, async || {
        let utd = dev.utd(room_id);
        let decrypted: Vec<OwnedEventId> = dev
            .messages(room_id, "")
            .into_iter()
            .map(|m| m.event_id)
            .collect();
        let mut missing = 0;
        for id in &wanted {
            if decrypted.contains(id) || late.contains_key(*id) {
                continue;
            }
            if utd.contains(id)
                && let Some(got) = decrypt_again(&room, id).await?
            {
                late.insert((*id).clone(), got);
                continue;
            }
            missing += 1;
        }
        Ok((missing == 0).then_some(()))
    })
    .await;
    outcome.with_context(|| {
        format!(
            "{}; {} messages decrypted only on a second fetch",
            dev.sync_stats(),
            late.len()
        )
    })?;

    let arrived = dev.arrived(room_id);
    let messages = dev.messages(room_id, "");
    for s in sent {
        let order: Vec<&OwnedEventId> = arrived.iter().filter(|id| s.ids.contains(id)).collect();
        ensure!(
            order == s.ids.iter().collect::<Vec<_>>(),
            "{}: {}'s {} messages arrived as {order:?}, sent as {:?}",
            dev.name,
            s.sender.name,
            s.ids.len(),
            s.ids
        );
        for (id, body) in s.ids.iter().zip(s.bodies) {
            let (sender, got) = match messages.iter().find(|m| &m.event_id == id) {
                Some(m) => {
                    ensure!(
                        m.encrypted,
                        "{}: {id} arrived unencrypted in an encrypted room",
                        dev.name
                    );
                    (m.sender.to_string(), m.body.clone())
                }
                None => late
                    .get(id)
                    .cloned()
                    .ok_or_else(|| anyhow!("{}: {id} was never decrypted", dev.name))?,
            };
            ensure!(
                sender == s.sender.user_id.as_str() && &got == body,
                "{}: {id} decrypted as {got:?} from {sender}, sent as {body:?} by {}",
                dev.name,
                s.sender.user_id
            );
        }
    }
    if !late.is_empty() {
        log(&format!(
            "{}: {} of {} messages came before their room key and decrypted on a second fetch",
            dev.name,
            late.len(),
            wanted.len()
        ));
    }
    Ok(())
}

/// Fetch `id` again and decrypt it: (sender, body), or None while it stays undecryptable.
async fn decrypt_again(room: &Room, id: &OwnedEventId) -> Result<Option<(String, String)>> {
    let event = room.event(id, None).await?;
    if !matches!(event.kind, TimelineEventKind::Decrypted(_)) {
        return Ok(None);
    }
    let json: Value = serde_json::from_str(event.raw().json().get())?;
    let field = |v: &Value| v.as_str().map(str::to_owned);
    let sender = field(&json["sender"]).ok_or_else(|| anyhow!("{id}: no sender"))?;
    let body = field(&json["content"]["body"]).ok_or_else(|| anyhow!("{id}: no body"))?;
    Ok(Some((sender, body)))
}

/// `dev`'s client knows `device` (of user `owner`) with the identity keys the device
/// holds itself.
async fn knows_device_as_it_is(dev: &Dev, owner: &Dev, device: &Dev) -> Result<()> {
    let own = device
        .client
        .encryption()
        .get_own_device()
        .await?
        .ok_or_else(|| anyhow!("{} does not know its own device", device.name))?;
    let seen = dev
        .client
        .encryption()
        .get_device(&owner.user_id, &device.device_id)
        .await?
        .ok_or_else(|| anyhow!("{} does not know {}'s device", dev.name, device.name))?;
    ensure!(
        seen.ed25519_key().is_some()
            && seen.ed25519_key() == own.ed25519_key()
            && seen.curve25519_key().is_some()
            && seen.curve25519_key() == own.curve25519_key(),
        "{} sees {}'s device with keys {:?}/{:?}, the device has {:?}/{:?}",
        dev.name,
        device.name,
        seen.ed25519_key(),
        seen.curve25519_key(),
        own.ed25519_key(),
        own.curve25519_key()
    );
    Ok(())
}

/// `/keys/query` through `dev`'s server lists `devices` of `user` (signed device keys)
/// and no failure.
async fn queries_devices(dev: &Dev, user: &UserId, devices: &[&OwnedDeviceId]) -> Result<()> {
    let keys = dev.query_keys(user).await?;
    ensure!(
        keys["failures"].as_object().is_none_or(|f| f.is_empty()),
        "{}: /keys/query for {user} reports failures: {}",
        dev.name,
        keys["failures"]
    );
    for id in devices {
        let device = &keys["devices"][id.as_str()];
        ensure!(
            device["user_id"] == user.as_str()
                && device["device_id"] == id.as_str()
                && device["signatures"][user.as_str()].is_object(),
            "{}: /keys/query for {user} has no signed keys of device {id}: {keys}",
            dev.name
        );
    }
    Ok(())
}

/// `/keys/claim` through `dev`'s server returns a signed curve25519 key of `other`'s
/// device (a one-time key, or its fallback key when those ran out).
async fn claims_one_time_key(dev: &Dev, other: &Dev) -> Result<()> {
    let request = claim_keys::v3::Request::new(BTreeMap::from([(
        other.user_id.clone(),
        BTreeMap::from([(
            other.device_id.clone(),
            OneTimeKeyAlgorithm::SignedCurve25519,
        )]),
    )]));
    let response = dev.client.send(request).await?;
    ensure!(
        response.failures.is_empty(),
        "{}: /keys/claim for {} reports failures: {:?}",
        dev.name,
        other.name,
        response.failures
    );
    let keys = response
        .one_time_keys
        .get(&other.user_id)
        .and_then(|d| d.get(&other.device_id))
        .ok_or_else(|| {
            anyhow!(
                "{}: /keys/claim returned no key of {}",
                dev.name,
                other.name
            )
        })?;
    let (key_id, key) = keys
        .iter()
        .next()
        .ok_or_else(|| anyhow!("{}: /keys/claim returned an empty key map", dev.name))?;
    let key: Value = serde_json::from_str(key.json().get())?;
    ensure!(
        key_id.as_str().starts_with("signed_curve25519:")
            && key["key"].is_string()
            && key["signatures"][other.user_id.as_str()].is_object(),
        "{}: /keys/claim gave {key_id} = {key}",
        dev.name
    );
    Ok(())
}
