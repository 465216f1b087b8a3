#![recursion_limit = "256"]
//! End-to-end encryption driven by matrix-sdk 0.18 (`e2e-encryption`, in-memory stores).
//! Each test registers fresh users (UIA `m.login.dummy`), logs them in with a password
//! and runs a `/sync` loop per device in the background:
//!
//! - `e2ee_messages_and_new_device`: alice creates a room with `m.room.encryption` in
//!   `initial_state` and invites bob, who joins; both send 50 messages at the same time
//!   and each device decrypts all 100, every one of the other's in the order it was sent,
//!   none left undecryptable (UTD). Then bob logs in on a second device; once alice's
//!   client knows that device (device-list change, `/keys/query`), alice's new messages
//!   are decrypted by it (and by bob's first device).
//! - `e2ee_cross_signing_and_sas`: both bootstrap cross-signing (the first upload needs
//!   no UIA per MSC3967; password UIA if the server asks) after sharing a room, so each
//!   learns the other's new identity through a device-list change; then alice verifies
//!   bob's device with interactive SAS over to-device messages (request, ready, start,
//!   accept, key exchange, both sides show the same emoji and decimals, both confirm,
//!   MACs, done). Afterwards each sees the other's device and identity as verified, and
//!   the server returns bob's master key carrying alice's user-signing signature.
//! - `e2ee_backup_and_recovery`: alice sends messages, bootstraps cross-signing and
//!   enables recovery (secret storage + key backup), waiting until the server's backup
//!   holds the room's keys. A fresh device of alice's back-paginates the history: all
//!   UTD; after `recover(recovery key)` and downloading the room's keys from the backup
//!   every old message decrypts, and the new device is cross-signed.
//! - `e2ee_nio_peer`: with `NIO_PYTHON` set, runs `tests/nio/e2ee_peer.py` (a
//!   matrix-nio E2EE client that answers `ping N` with `pong N` in the same encrypted
//!   room) and checks that the sdk decrypts all ten pongs and that the peer saw every
//!   ping and exits 0 after `bye`. Without `NIO_PYTHON` it prints that it skips.
//!
//! What the server must do for these tests (besides the plain scenario's endpoints):
//! `/keys/upload`, `/keys/query` (device keys, master/self-signing keys and signatures,
//! including another user's master key signed by the caller's user-signing key),
//! `/keys/claim`, `/keys/device_signing/upload` (first upload without UIA, MSC3967),
//! `/keys/signatures/upload`, `/sendToDevice/{type}/{txnId}`, `/room_keys/version` and
//! `/room_keys/keys[/{roomId}]`, global account data (404 for a type never set); in
//! `/sync`: `to_device`, `device_lists.changed` (a new device, new cross-signing keys,
//! new signatures, for the user itself and for users sharing a room) and
//! `device_one_time_keys_count`. The SDK adds `use_state_after=true` to `/sync`.
//!
//! The server's URL comes from `GANGLION_URL`. Every wait polls a condition with a
//! deadline; every request has a client-side timeout and no silent retry. The helpers
//! (devices with a sync loop, waits, room steps) are in `support/mod.rs`, shared with
//! `federation.rs`.

mod support;

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use matrix_sdk::{
    deserialized_responses::TimelineEventKind,
    encryption::{recovery::RecoveryState, verification::Verification},
    room::MessagesOptions,
    ruma::{
        OwnedUserId, RoomId, UInt,
        api::client::{
            backup::{get_backup_keys, get_latest_backup_info},
            uiaa,
        },
        events::room::member::MembershipState,
    },
};
use serde_json::Value;
use support::{
    Dev, Seen, account, check_received, create_encrypted_room, env_url, join, log, rand_u32,
    run_test, send_all, wait_for, wait_knows_device, within,
};

/// Deadline of each test.
const TEST_DEADLINE: Duration = Duration::from_secs(90);
/// Messages each of alice and bob send in the first test.
const MESSAGES_PER_SENDER: usize = 50;

fn server_url() -> String {
    env_url("GANGLION_URL")
}

// The cross-signing steps only this file takes; the rest of `Dev` is in `support`.
impl Dev {
    /// Bootstrap cross-signing; if the server wants UIA, answer with the password.
    async fn bootstrap_cross_signing(&self) -> Result<bool> {
        let enc = self.client.encryption();
        match enc.bootstrap_cross_signing(None).await {
            Ok(()) => Ok(false),
            Err(e) => {
                let info = e
                    .as_uiaa_response()
                    .ok_or_else(|| anyhow!("{}: bootstrapping cross-signing: {e}", self.name))?;
                let mut password = uiaa::Password::new(
                    uiaa::UserIdentifier::Matrix(uiaa::MatrixUserIdentifier::new(
                        self.user_id.to_string(),
                    )),
                    self.password.clone(),
                );
                password.session = info.session.clone();
                enc.bootstrap_cross_signing(Some(uiaa::AuthData::Password(password)))
                    .await
                    .with_context(|| format!("{}: cross-signing with password UIA", self.name))?;
                Ok(true)
            }
        }
    }

    /// Cross-signing is complete locally, the own identity is verified and the own
    /// device is signed by it.
    async fn check_own_cross_signing(&self) -> Result<()> {
        let enc = self.client.encryption();
        let status = enc
            .cross_signing_status()
            .await
            .ok_or_else(|| anyhow!("{}: no cross-signing status", self.name))?;
        ensure!(
            status.is_complete(),
            "{}: cross-signing incomplete: {status:?}",
            self.name
        );
        let own = enc
            .get_user_identity(&self.user_id)
            .await?
            .ok_or_else(|| anyhow!("{}: own identity unknown", self.name))?;
        ensure!(
            own.is_verified(),
            "{}: own identity is not verified",
            self.name
        );
        // The SDK sees its own device's new signature only after it queries its own keys
        // again, on the device-list change the signature upload causes.
        wait_for(
            20,
            &format!("{}'s own device is cross-signed", self.name),
            &[self],
            async || {
                let device = enc
                    .get_own_device()
                    .await?
                    .ok_or_else(|| anyhow!("own device unknown"))?;
                Ok(device.is_cross_signed_by_owner().then_some(()))
            },
        )
        .await
    }
}

// ---------------------------------------------------------------------------------------
// a + b: messages in an encrypted room, then a second device of bob's

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2ee_messages_and_new_device() {
    run_test(
        "e2ee_messages_and_new_device",
        TEST_DEADLINE,
        messages_and_new_device(&server_url()),
    )
    .await;
}

async fn messages_and_new_device(url: &str) -> Result<()> {
    let run = format!("{:08x}", rand_u32());
    let alice_acc = account(url, "alice", &run).await?;
    let bob_acc = account(url, "bob", &run).await?;
    let alice = Dev::login(url, "alice", &alice_acc).await?;
    let bob = Dev::login(url, "bob", &bob_acc).await?;

    let room_id = create_encrypted_room(&alice, &[&bob.user_id]).await?;
    join(&bob, &room_id, &[&alice]).await?;
    let alice_room = alice.room(&room_id)?;
    let bob_room = bob.room(&room_id)?;
    ensure!(
        bob_room.latest_encryption_state().await?.is_encrypted(),
        "bob does not see the room as encrypted"
    );

    // Both send at the same time, each in order.
    let started = Instant::now();
    let alice_bodies: Vec<String> = (0..MESSAGES_PER_SENDER)
        .map(|i| format!("{run} alice {i}"))
        .collect();
    let bob_bodies: Vec<String> = (0..MESSAGES_PER_SENDER)
        .map(|i| format!("{run} bob {i}"))
        .collect();
    let (alice_ids, bob_ids) = tokio::try_join!(
        send_all(&alice, &alice_room, &alice_bodies),
        send_all(&bob, &bob_room, &bob_bodies)
    )?;
    log(&format!(
        "alice and bob sent {} encrypted messages each in {:.1}s",
        MESSAGES_PER_SENDER,
        started.elapsed().as_secs_f64()
    ));
    let total = 2 * MESSAGES_PER_SENDER;
    for dev in [&alice, &bob] {
        wait_for(
            60,
            &format!("{} receives all {total} messages", dev.name),
            &[&alice, &bob],
            async || {
                let n = dev.messages(&room_id, &run).len();
                let utd = dev.utd(&room_id).len();
                Ok((n + utd >= total).then_some(()))
            },
        )
        .await
        .with_context(|| format!("{} / {}", alice.sync_stats(), bob.sync_stats()))?;
    }
    for (dev, mine, theirs) in [
        (
            &alice,
            (&alice_bodies, &alice_ids),
            (&bob, &bob_bodies, &bob_ids),
        ),
        (
            &bob,
            (&bob_bodies, &bob_ids),
            (&alice, &alice_bodies, &alice_ids),
        ),
    ] {
        check_received(dev, &room_id, &run, &theirs.0.user_id, theirs.1, theirs.2)?;
        // Its own messages come back through sync too, also decrypted.
        check_received(dev, &room_id, &run, &dev.user_id, mine.0, mine.1)?;
        let all = dev.messages(&room_id, &run).len();
        ensure!(
            all == total,
            "{} saw {all} messages, expected {total}",
            dev.name
        );
    }
    log(&format!(
        "alice and bob each decrypted all {total} messages, the other's in order, no UTD"
    ));

    // b. Bob logs in on a second device; alice's client learns it through bob's
    // device-list change and shares her session with it.
    let bob2 = Dev::login(url, "bob2", &bob_acc).await?;
    ensure!(
        bob2.device_id != bob.device_id,
        "the second login reused the device id"
    );
    wait_knows_device(&alice, &bob.user_id, &bob2.device_id).await?;
    let new_bodies: Vec<String> = (0..5).map(|i| format!("{run} new {i}")).collect();
    let new_ids = send_all(&alice, &alice_room, &new_bodies).await?;
    let prefix = format!("{run} new");
    for dev in [&bob2, &bob] {
        wait_for(
            30,
            &format!("{} receives alice's new messages", dev.name),
            &[&alice, dev],
            async || {
                let n = dev.messages(&room_id, &prefix).len();
                let utd = dev
                    .utd(&room_id)
                    .iter()
                    .filter(|e| new_ids.contains(e))
                    .count();
                Ok((n + utd >= new_ids.len()).then_some(()))
            },
        )
        .await
        .with_context(|| dev.sync_stats())?;
        check_received(
            dev,
            &room_id,
            &prefix,
            &alice.user_id,
            &new_bodies,
            &new_ids,
        )?;
    }
    log("bob's second device decrypted alice's new messages");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// c: cross-signing and interactive SAS verification over to-device

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2ee_cross_signing_and_sas() {
    run_test(
        "e2ee_cross_signing_and_sas",
        TEST_DEADLINE,
        cross_signing_and_sas(&server_url()),
    )
    .await;
}

async fn cross_signing_and_sas(url: &str) -> Result<()> {
    let run = format!("{:08x}", rand_u32());
    let alice_acc = account(url, "alice", &run).await?;
    let bob_acc = account(url, "bob", &run).await?;
    let alice = Dev::login(url, "alice", &alice_acc).await?;
    let bob = Dev::login(url, "bob", &bob_acc).await?;

    // A shared encrypted room makes each track the other's devices.
    let room_id = create_encrypted_room(&alice, &[&bob.user_id]).await?;
    join(&bob, &room_id, &[&alice]).await?;
    wait_knows_device(&alice, &bob.user_id, &bob.device_id).await?;
    wait_knows_device(&bob, &alice.user_id, &alice.device_id).await?;

    // Cross-signing, after the room is shared: the other side learns the new identity
    // from a device-list change in its sync.
    for dev in [&alice, &bob] {
        let used_uia = within(
            30,
            &format!("{} bootstraps cross-signing", dev.name),
            dev.bootstrap_cross_signing(),
        )
        .await?;
        dev.check_own_cross_signing().await?;
        log(&format!(
            "{} bootstrapped cross-signing ({})",
            dev.name,
            if used_uia {
                "the server asked for password UIA"
            } else {
                "no UIA"
            }
        ));
        let keys = dev.query_keys(&dev.user_id).await?;
        ensure!(
            keys["master"].is_object() && keys["self_signing"].is_object(),
            "{}: /keys/query has no cross-signing keys for itself: {keys}",
            dev.name
        );
    }
    for (dev, other) in [(&alice, &bob), (&bob, &alice)] {
        wait_for(
            30,
            &format!(
                "{} learns {}'s cross-signing identity",
                dev.name, other.name
            ),
            &[dev],
            async || {
                Ok(dev
                    .client
                    .encryption()
                    .get_user_identity(&other.user_id)
                    .await?
                    .map(|_| ()))
            },
        )
        .await?;
        let device = dev
            .client
            .encryption()
            .get_device(&other.user_id, &other.device_id)
            .await?
            .ok_or_else(|| anyhow!("{} forgot {}'s device", dev.name, other.name))?;
        ensure!(
            !device.is_verified(),
            "{}: {}'s device is verified before any verification",
            dev.name,
            other.name
        );
    }

    // SAS: alice requests, bob accepts, alice starts SAS, bob accepts it.
    let bob_device = alice
        .client
        .encryption()
        .get_device(&bob.user_id, &bob.device_id)
        .await?
        .ok_or_else(|| anyhow!("alice does not know bob's device"))?;
    let alice_req = within(20, "alice requests verification", async {
        Ok(bob_device.request_verification().await?)
    })
    .await?;
    let flow_id = alice_req.flow_id().to_owned();
    log(&format!("alice sent a verification request ({flow_id})"));
    let bob_req = wait_for(
        20,
        "bob receives the verification request",
        &[&alice, &bob],
        async || {
            Ok(bob
                .client
                .encryption()
                .get_verification_request(&alice.user_id, &flow_id)
                .await)
        },
    )
    .await?;
    within(20, "bob accepts the request", async {
        Ok(bob_req.accept().await?)
    })
    .await?;
    wait_for(
        20,
        "alice sees the request ready",
        &[&alice, &bob],
        async || {
            ensure!(
                !alice_req.is_cancelled(),
                "cancelled: {:?}",
                alice_req.cancel_info()
            );
            Ok(alice_req.is_ready().then_some(()))
        },
    )
    .await?;
    let alice_sas = within(20, "alice starts SAS", async {
        alice_req
            .start_sas()
            .await?
            .ok_or_else(|| anyhow!("start_sas gave no SAS"))
    })
    .await?;
    let bob_sas = wait_for(
        20,
        "bob receives the SAS start",
        &[&alice, &bob],
        async || {
            ensure!(
                !bob_req.is_cancelled(),
                "cancelled: {:?}",
                bob_req.cancel_info()
            );
            Ok(
                match bob
                    .client
                    .encryption()
                    .get_verification(&alice.user_id, &flow_id)
                    .await
                {
                    Some(Verification::SasV1(sas)) => Some(sas),
                    _ => None,
                },
            )
        },
    )
    .await?;
    within(20, "bob accepts SAS", async { Ok(bob_sas.accept().await?) }).await?;
    for (name, sas) in [("alice", &alice_sas), ("bob", &bob_sas)] {
        wait_for(
            20,
            &format!("{name} can show the SAS"),
            &[&alice, &bob],
            async || {
                ensure!(!sas.is_cancelled(), "cancelled: {:?}", sas.cancel_info());
                Ok(sas.can_be_presented().then_some(()))
            },
        )
        .await?;
    }
    let emoji = |sas: &matrix_sdk::encryption::verification::SasVerification| {
        sas.emoji()
            .map(|e| e.iter().map(|e| e.symbol).collect::<Vec<_>>())
    };
    let (alice_emoji, bob_emoji) = (emoji(&alice_sas), emoji(&bob_sas));
    ensure!(
        alice_emoji.is_some() && alice_emoji == bob_emoji,
        "the emoji differ: alice {alice_emoji:?}, bob {bob_emoji:?}"
    );
    ensure!(
        alice_sas.decimals().is_some() && alice_sas.decimals() == bob_sas.decimals(),
        "the decimals differ: alice {:?}, bob {:?}",
        alice_sas.decimals(),
        bob_sas.decimals()
    );
    log(&format!(
        "both show {} / {:?}",
        alice_emoji.unwrap_or_default().join(""),
        alice_sas.decimals().unwrap_or_default()
    ));
    within(20, "alice confirms", async {
        Ok(alice_sas.confirm().await?)
    })
    .await?;
    within(20, "bob confirms", async { Ok(bob_sas.confirm().await?) }).await?;
    for (name, sas) in [("alice", &alice_sas), ("bob", &bob_sas)] {
        wait_for(
            30,
            &format!("{name}'s SAS is done"),
            &[&alice, &bob],
            async || {
                ensure!(!sas.is_cancelled(), "cancelled: {:?}", sas.cancel_info());
                Ok(sas.is_done().then_some(()))
            },
        )
        .await?;
    }
    log("SAS verification done on both sides");

    for (dev, other) in [(&alice, &bob), (&bob, &alice)] {
        let enc = dev.client.encryption();
        wait_for(
            20,
            &format!(
                "{} sees {}'s device and identity verified",
                dev.name, other.name
            ),
            &[dev],
            async || {
                let device = enc.get_device(&other.user_id, &other.device_id).await?;
                let identity = enc.get_user_identity(&other.user_id).await?;
                Ok((device.is_some_and(|d| d.is_verified())
                    && identity.is_some_and(|i| i.is_verified()))
                .then_some(()))
            },
        )
        .await?;
        dev.check_own_cross_signing().await?;
        // The server keeps the signature of the other's master key by dev's
        // user-signing key, and shows it to dev.
        wait_for(
            20,
            &format!(
                "/keys/query shows {}'s master key signed by {}",
                other.name, dev.name
            ),
            &[dev],
            async || {
                let keys = dev.query_keys(&other.user_id).await?;
                let sigs = &keys["master"]["signatures"][dev.user_id.as_str()];
                Ok(sigs
                    .as_object()
                    .is_some_and(|o| !o.is_empty())
                    .then_some(()))
            },
        )
        .await?;
    }
    log("each sees the other's device and identity as verified");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// d: key backup and recovery on a fresh device

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2ee_backup_and_recovery() {
    run_test(
        "e2ee_backup_and_recovery",
        TEST_DEADLINE,
        backup_and_recovery(&server_url()),
    )
    .await;
}

/// Back-paginate the whole room from the newest event; return (body or None if UTD)
/// of every `m.room.encrypted`-or-message event whose body starts with `prefix` or that
/// stayed undecryptable, newest first.
async fn history(dev: &Dev, room_id: &RoomId) -> Result<Vec<Option<String>>> {
    let room = dev.room(room_id)?;
    let mut out = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..50 {
        let mut options = MessagesOptions::backward().from(from.as_deref());
        options.limit = UInt::from(100u32);
        let page = within(30, &format!("{} /messages", dev.name), async {
            Ok(room.messages(options).await?)
        })
        .await?;
        for ev in &page.chunk {
            let json: Value = serde_json::from_str(ev.raw().json().get())?;
            match &ev.kind {
                TimelineEventKind::UnableToDecrypt { .. } => out.push(None),
                TimelineEventKind::Decrypted(_) | TimelineEventKind::PlainText { .. } => {
                    if json["type"] == "m.room.message" {
                        out.push(json["content"]["body"].as_str().map(str::to_owned));
                    }
                }
            }
        }
        match page.end {
            Some(end) if !page.chunk.is_empty() => from = Some(end),
            _ => return Ok(out),
        }
    }
    bail!(
        "{}: /messages did not reach the start of the room",
        dev.name
    )
}

async fn backup_and_recovery(url: &str) -> Result<()> {
    let run = format!("{:08x}", rand_u32());
    let alice_acc = account(url, "alice", &run).await?;
    let alice = Dev::login(url, "alice", &alice_acc).await?;
    let room_id = create_encrypted_room(&alice, &[]).await?;
    let room = alice.room(&room_id)?;
    let bodies: Vec<String> = (0..10).map(|i| format!("{run} old {i}")).collect();
    send_all(&alice, &room, &bodies).await?;

    within(
        30,
        "alice bootstraps cross-signing",
        alice.bootstrap_cross_signing(),
    )
    .await?;
    alice.check_own_cross_signing().await?;
    let recovery = alice.client.encryption().recovery();
    let recovery_key = within(60, "alice enables recovery and backs up", async {
        Ok(recovery.enable().wait_for_backups_to_upload().await?)
    })
    .await?;
    ensure!(
        recovery.state() == RecoveryState::Enabled,
        "recovery state after enable: {:?}",
        recovery.state()
    );
    ensure!(
        alice.client.encryption().backups().are_enabled().await,
        "backups are not enabled after recovery().enable()"
    );
    log("alice enabled recovery (secret storage and key backup)");

    // What the server holds: the latest backup version has the room's session(s).
    let version = within(20, "GET /room_keys/version", async {
        Ok(alice
            .client
            .send(get_latest_backup_info::v3::Request::new())
            .await?)
    })
    .await?;
    let sessions = wait_for(
        30,
        "the backup holds the room's keys",
        &[&alice],
        async || {
            let keys = alice
                .client
                .send(get_backup_keys::v3::Request::new(version.version.clone()))
                .await?;
            Ok(keys
                .rooms
                .get(&room_id)
                .map(|r| r.sessions.len())
                .filter(|n| *n > 0))
        },
    )
    .await?;
    log(&format!(
        "backup version {} holds {sessions} session(s) of the room (count {})",
        version.version, version.count
    ));

    // A fresh device: the old history does not decrypt until it recovers.
    let fresh = Dev::login(url, "alice-new", &alice_acc).await?;
    wait_for(20, "the new device sees the room", &[&fresh], async || {
        Ok(fresh.client.get_room(&room_id).map(|_| ()))
    })
    .await?;
    let before = history(&fresh, &room_id).await?;
    ensure!(
        before.len() >= bodies.len() && before.iter().all(Option::is_none),
        "before recovery the new device should see {} UTDs, got {before:?}",
        bodies.len()
    );
    log(&format!(
        "before recovery the new device sees {} undecryptable messages",
        before.len()
    ));

    let fresh_recovery = fresh.client.encryption().recovery();
    within(30, "the new device recovers", async {
        Ok(fresh_recovery.recover(&recovery_key).await?)
    })
    .await?;
    ensure!(
        fresh_recovery.state() == RecoveryState::Enabled,
        "recovery state on the new device: {:?}",
        fresh_recovery.state()
    );
    fresh.check_own_cross_signing().await?;
    within(30, "download the room's keys from the backup", async {
        Ok(fresh
            .client
            .encryption()
            .backups()
            .download_room_keys_for_room(&room_id)
            .await?)
    })
    .await?;
    let after = history(&fresh, &room_id).await?;
    let mut expected: Vec<Option<String>> = bodies.iter().cloned().map(Some).collect();
    expected.reverse();
    ensure!(
        after == expected,
        "after recovery, back-pagination gave {after:?}, expected {expected:?}"
    );
    log("after recovery the new device decrypts all the old messages");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// e: a matrix-nio E2EE peer (tests/nio/e2ee_peer.py)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2ee_nio_peer() {
    let Some(python) = std::env::var_os("NIO_PYTHON").filter(|p| !p.is_empty()) else {
        println!("e2ee_nio_peer: NIO_PYTHON is not set, skipping (tests/run sets it)");
        return;
    };
    run_test(
        "e2ee_nio_peer",
        TEST_DEADLINE,
        nio_peer(&server_url(), python),
    )
    .await;
}

/// The peer process; killed if still running when dropped.
struct Peer {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    got: Vec<String>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Peer {
    /// The next stdout line that starts with `prefix` ("GOT …" lines are kept aside).
    async fn expect(&mut self, secs: u64, prefix: &str) -> Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .map_err(|_| anyhow!("nio peer: no {prefix:?} line within {secs}s"))?
                .ok_or_else(|| {
                    anyhow!(
                        "nio peer: stdout closed before {prefix:?} (exit: {:?})",
                        self.child.try_wait()
                    )
                })?;
            if let Some(body) = line.strip_prefix("GOT ") {
                self.got.push(body.to_owned());
            }
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
    }
}

async fn nio_peer(url: &str, python: std::ffi::OsString) -> Result<()> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = repo.join("tests/nio/e2ee_peer.py");
    ensure!(script.exists(), "{} does not exist", script.display());
    let mut child = Command::new(&python)
        .arg(&script)
        .current_dir(&repo)
        .env("GANGLION_URL", url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawning {python:?} {}", script.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            println!("    nio| {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut peer = Peer {
        child,
        lines,
        got: Vec::new(),
    };
    let ready = peer.expect(60, "READY ").await?;
    let peer_id: OwnedUserId = ready["READY ".len()..]
        .trim()
        .try_into()
        .with_context(|| format!("bad READY line {ready:?}"))?;
    log(&format!("nio peer is {peer_id}"));

    let run = format!("{:08x}", rand_u32());
    let sdk_acc = account(url, "sdk", &run).await?;
    let sdk = Dev::login(url, "sdk", &sdk_acc).await?;
    let room_id = create_encrypted_room(&sdk, &[&peer_id]).await?;
    wait_for(60, "the nio peer joins", &[&sdk], async || {
        let Some(room) = sdk.client.get_room(&room_id) else {
            return Ok(None);
        };
        Ok(room
            .get_member_no_sync(&peer_id)
            .await?
            .filter(|m| *m.membership() == MembershipState::Join)
            .map(|_| ()))
    })
    .await?;
    log("the nio peer joined");
    let room = sdk.room(&room_id)?;
    let pings: Vec<String> = (1..=10).map(|i| format!("ping {i}")).collect();
    let ping_ids = send_all(&sdk, &room, &pings).await?;
    let pongs: Vec<String> = (1..=10).map(|i| format!("pong {i}")).collect();
    let got = wait_for(60, "all ten pongs", &[&sdk], async || {
        let got: Vec<Seen> = sdk
            .messages(&room_id, "pong ")
            .into_iter()
            .filter(|m| m.sender == peer_id)
            .collect();
        let utd = sdk.utd(&room_id).len();
        ensure!(utd == 0, "{utd} undecryptable event(s) from the nio peer");
        Ok((got.len() >= pongs.len()).then_some(got))
    })
    .await?;
    let bodies: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
    ensure!(
        bodies == pongs.iter().map(String::as_str).collect::<Vec<_>>(),
        "the pongs, in order: {bodies:?}"
    );
    ensure!(
        got.iter().all(|m| m.encrypted),
        "a pong arrived unencrypted"
    );
    log("the sdk decrypted all ten pongs");

    send_all(&sdk, &room, &["bye".to_owned()]).await?;
    peer.expect(30, "DONE").await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = peer.child.try_wait()? {
            break status;
        }
        ensure!(
            Instant::now() < deadline,
            "the nio peer did not exit after DONE"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(status.success(), "the nio peer exited with {status}");
    // Drain what is left of stdout (GOT lines printed before DONE are already kept).
    while let Ok(line) = peer.lines.try_recv() {
        if let Some(body) = line.strip_prefix("GOT ") {
            peer.got.push(body.to_owned());
        }
    }
    for ping in &pings {
        ensure!(
            peer.got.contains(ping),
            "the nio peer never decrypted {ping:?} (it printed GOT {:?})",
            peer.got
        );
    }
    log(&format!(
        "the nio peer decrypted all {} pings ({} events) and exited 0",
        ping_ids.len(),
        peer.got.len()
    ));
    Ok(())
}
