#!/usr/bin/env python3
"""End-to-end encryption scenario driven by matrix-nio 0.26 with its `e2e` extra (vodozemac).

Usage:  GANGLION_URL=http://127.0.0.1:8008 python3 tests/nio/e2ee.py

The server at GANGLION_URL must allow open registration (m.login.dummy) with rate
limits off. Every client has its own store directory in one temp dir and its own sync
loop, which between syncs does what nio's sync_forever does (upload one-time keys when
the count in /sync is low, query changed users' keys, claim keys for wedged sessions,
send queued to-device messages). Steps:

  1. alice and bob register and log in with encryption on; each uploads device keys and
     one-time keys, and a later /sync reports the uploaded count
     (device_one_time_keys_count.signed_curve25519)
  2. alice creates a room with m.room.encryption in initial_state and invites bob; bob
     sees the invite in /sync and joins; both clients consider the room encrypted
  3. each client's /keys/query gives the other's device with exactly the identity keys
     that device uploaded
  4. interactive SAS verification (m.key.verification.start/accept/key/mac as to-device
     messages): both sides compute the same emoji and decimals, confirm, and mark the
     other's device verified
  5. alice and bob each send N (default 20) encrypted messages at the same time; the
     server only ever shows m.room.encrypted in the room; each decrypts every message of
     the other, bodies and event ids as sent, in send order, both in the same order;
     none stays an undecryptable MegolmEvent; whoever claimed the other's one-time key
     (/keys/claim) sees it gone from the other's count in that device's /sync
  6. bob logs in on a second device: alice's and bob's first device see bob in
     device_lists.changed, query him again and get the new device with its uploaded
     keys; messages alice and bob's first device send after that are decrypted by the
     new device (and by the other side)
  7. to-device: alice sends a custom event to bob's first device and one to all bob's
     devices ("*"); the first arrives exactly once at the first device and never at the
     second, the second exactly once at each; alice gets neither
  8. the peer (tests/nio/e2ee_peer.py, the other half of the matrix-sdk cross-client
     test) is started as a subprocess; carol plays the other client: encrypted room,
     invite, `ping 1..3`, the peer's `pong 1..3` decrypted, `bye`; the peer's stdout is
     exactly READY/GOT/DONE and it exits 0 (GANGLION_NIO_E2EE_PEER=0 skips this step)

Every wait has its own deadline and the whole run one (GANGLION_NIO_E2EE_DEADLINE
seconds, default 120). Exit status 0 on success, 1 on any failure, 2 on a usage or
environment error. The last line is `nio e2ee: 1 passed, 0 failed` (or `0 passed, 1
failed`). GANGLION_NIO_E2EE_MESSAGES sets N; GANGLION_NIO_E2EE_VERBOSE=1 shows nio's own log
(it warns about every undecryptable event, e.g. the old messages bob's new device
cannot read, so it is off by default).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

try:
    import aiohttp
    from nio import (
        AsyncClient,
        AsyncClientConfig,
        ErrorResponse,
        JoinResponse,
        KeysClaimResponse,
        KeysQueryResponse,
        KeysUploadResponse,
        LoginResponse,
        MegolmEvent,
        RegisterResponse,
        RoomCreateResponse,
        RoomInviteResponse,
        RoomMessageText,
        RoomPreset,
        RoomSendResponse,
        RoomVisibility,
        SyncResponse,
        ToDeviceMessage,
        ToDeviceResponse,
        UnknownToDeviceEvent,
    )
    from nio.crypto import ENCRYPTION_ENABLED
except ImportError as e:  # pragma: no cover - environment problem, not a test failure
    print(f"nio e2ee: cannot import matrix-nio ({e}); pip install 'matrix-nio[e2e]==0.26.0'")
    sys.exit(2)

URL = os.environ.get("GANGLION_URL", "").rstrip("/")
DEADLINE_S = float(os.environ.get("GANGLION_NIO_E2EE_DEADLINE", "120"))
MESSAGES = int(os.environ.get("GANGLION_NIO_E2EE_MESSAGES", "20"))
AFTER_LOGIN = 5  # messages per sender after bob's second login
RUN_PEER = os.environ.get("GANGLION_NIO_E2EE_PEER", "1") != "0"
PEER_SCRIPT = Path(__file__).resolve().with_name("e2ee_peer.py")
PEER_PINGS = 3

SYNC_POLL_MS = 1_000
REQUEST_TIMEOUT_S = 30
WAIT_S = 20  # default deadline of one wait
SYNC_FILTER = {"room": {"timeline": {"limit": 1000}}}
MEGOLM = "m.megolm.v1.aes-sha2"
PASSWORD = "nio-e2ee-" + secrets.token_hex(8)

START = time.monotonic()

if os.environ.get("GANGLION_NIO_E2EE_VERBOSE") == "1":
    logging.basicConfig(level=logging.INFO, format="nio: %(name)s %(levelname)s %(message)s")
else:
    logging.getLogger("nio").setLevel(logging.ERROR)


class ScenarioError(Exception):
    """A check failed: the message says which and why."""


def log(msg: str) -> None:
    print(f"[{time.monotonic() - START:6.2f}s] {msg}", flush=True)


def ensure(cond: bool, msg: str) -> None:
    if not cond:
        raise ScenarioError(msg)


def expect(resp: Any, cls: type, what: str) -> Any:
    if isinstance(resp, cls):
        return resp
    if isinstance(resp, ErrorResponse):
        raise ScenarioError(f"{what}: server answered {resp}")
    raise ScenarioError(f"{what}: unexpected response {resp!r}")


async def within(seconds: float, what: str, coro):
    try:
        return await asyncio.wait_for(coro, seconds)
    except asyncio.TimeoutError:
        raise ScenarioError(f"{what}: timed out after {seconds:.0f}s") from None


def short(obj: Any, limit: int = 1500) -> str:
    text = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


class Client(AsyncClient):
    """AsyncClient that keeps its last raw bodies and every response it handled."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.last_body: Any = None
        self.last_sync_body: Any = None
        self.handled: list[Any] = []

    async def parse_body(self, transport_response):  # type: ignore[override]
        body = await super().parse_body(transport_response)
        self.last_body = body
        if "/sync" in transport_response.url.path:
            self.last_sync_body = body
        return body

    async def receive_response(self, response):  # type: ignore[override]
        await super().receive_response(response)
        self.handled.append(response)


def config(encryption: bool) -> AsyncClientConfig:
    return AsyncClientConfig(
        encryption_enabled=encryption,
        store_sync_tokens=False,
        request_timeout=REQUEST_TIMEOUT_S,
        # No silent retries: a timeout, a dropped connection or a 429 is a failure.
        max_timeouts=0,
        max_limit_exceeded=0,
    )


class Device:
    """One logged-in nio device with its own store and sync loop, and what it saw."""

    def __init__(self, name: str, client: Client):
        self.name = name
        self.client = client
        self.syncs = 0
        self.error: BaseException | None = None
        self.task: asyncio.Task | None = None
        # Per room: timeline events in sync order (decrypted where nio could).
        self.timeline: dict[str, list[Any]] = {}
        # Per room: raw event types the server sent in the timeline.
        self.raw_types: dict[str, list[str]] = {}
        # (sync number, event) for every Megolm event nio could not decrypt on arrival.
        self.undecrypted: list[tuple[int, MegolmEvent]] = []
        self.to_device: list[tuple[int, Any]] = []
        # Per sync: device_one_time_keys_count.signed_curve25519 (None if absent).
        self.otk_counts: list[int | None] = []
        # Per sync: device_lists.changed.
        self.changed: list[set[str]] = []
        # (sync number, users) for each /keys/query this loop made.
        self.queries: list[tuple[int, set[str]]] = []
        self.invites: set[str] = set()

    @property
    def user_id(self) -> str:
        return self.client.user_id

    @property
    def device_id(self) -> str:
        return self.client.device_id

    @property
    def ed25519(self) -> str:
        return self.client.olm.account.identity_keys["ed25519"]

    @property
    def curve25519(self) -> str:
        return self.client.olm.account.identity_keys["curve25519"]

    def knows(self, user_id: str, device_id: str):
        """The OlmDevice this client has for user_id/device_id, or None."""
        return self.client.device_store[user_id].get(device_id) if user_id in self.client.device_store.users else None

    async def sync_once(self) -> None:
        c = self.client
        resp = await c.sync(timeout=SYNC_POLL_MS, sync_filter=SYNC_FILTER)
        resp = expect(resp, SyncResponse, f"{self.name} /sync")
        ensure(bool(resp.next_batch), f"{self.name} /sync: no next_batch")
        self.syncs += 1
        n = self.syncs
        body = c.last_sync_body if isinstance(c.last_sync_body, dict) else {}
        self.otk_counts.append((body.get("device_one_time_keys_count") or {}).get("signed_curve25519"))
        self.changed.append(set(resp.device_list.changed))
        for ev in resp.to_device_events:
            self.to_device.append((n, ev))
        self.invites.update(resp.rooms.invite)
        for room_id, info in resp.rooms.join.items():
            raw_room = ((body.get("rooms") or {}).get("join") or {}).get(room_id) or {}
            self.raw_types.setdefault(room_id, []).extend(
                e.get("type") for e in (raw_room.get("timeline") or {}).get("events") or []
            )
            for ev in info.timeline.events:
                if isinstance(ev, MegolmEvent):
                    self.undecrypted.append((n, ev))
                self.timeline.setdefault(room_id, []).append(ev)
        await self.maintain()

    async def maintain(self) -> None:
        """What nio's sync_forever does between two syncs."""
        c = self.client
        if c.should_upload_keys:
            expect(await c.keys_upload(), KeysUploadResponse, f"{self.name} /keys/upload")
        if c.should_query_keys:
            self.queries.append((self.syncs, set(c.users_for_key_query)))
            expect(await c.keys_query(), KeysQueryResponse, f"{self.name} /keys/query")
        if c.should_claim_keys:
            expect(
                await c.keys_claim(c.get_users_for_key_claiming()),
                KeysClaimResponse,
                f"{self.name} /keys/claim",
            )
        for r in await c.send_to_device_messages():
            expect(r, ToDeviceResponse, f"{self.name} /sendToDevice (queued message)")

    async def loop(self) -> None:
        try:
            while True:
                await self.sync_once()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - reported by the next wait
            self.error = e

    def start(self) -> None:
        self.task = asyncio.create_task(self.loop(), name=f"{self.name} sync loop")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None
        await self.client.close()

    def messages(self, room_id: str, sender: str, prefix: str) -> list[Any]:
        """Decrypted text messages of sender in room_id whose body starts with prefix."""
        return [
            ev
            for ev in self.timeline.get(room_id, [])
            if isinstance(ev, RoomMessageText) and ev.sender == sender and ev.body.startswith(prefix)
        ]


DEVICES: list[Device] = []


async def wait_until(what: str, cond: Callable[[], bool], seconds: float = WAIT_S, detail: Callable[[], str] | None = None) -> None:
    """Poll cond while the sync loops run; fail on timeout or when a loop died."""
    deadline = time.monotonic() + seconds
    while True:
        for d in DEVICES:
            if d.error is not None:
                raise ScenarioError(f"while waiting for {what}: {d.name}'s sync loop failed: {d.error!r}") from d.error
        if cond():
            return
        if time.monotonic() >= deadline:
            extra = f"; {detail()}" if detail else ""
            raise ScenarioError(f"{what}: not after {seconds:.0f}s{extra}")
        await asyncio.sleep(0.02)


async def wait_syncs(devices: list[Device], n: int, what: str) -> None:
    """Let each device complete n more syncs."""
    target = {d.name: d.syncs + n for d in devices}
    await wait_until(what, lambda: all(d.syncs >= target[d.name] for d in devices))


async def register(localpart: str) -> str:
    """Register localpart with m.login.dummy (with the UIA round trip if asked)."""
    c = Client(URL, config=config(False))
    try:
        resp = await c.register(localpart, PASSWORD, device_name="nio-e2ee-register")
        if not isinstance(resp, RegisterResponse):
            body = c.last_body if isinstance(c.last_body, dict) else {}
            session = body.get("session")
            ensure(session is not None, f"register {localpart}: {resp} (body {short(body)})")
            resp = await c.register(localpart, PASSWORD, device_name="nio-e2ee-register", session_token=session)
        resp = expect(resp, RegisterResponse, f"register {localpart}")
        return resp.user_id
    finally:
        await c.close()


async def login(name: str, user_id: str, store_root: str) -> Device:
    store = os.path.join(store_root, name)
    os.makedirs(store)
    c = Client(URL, user=user_id, store_path=store, config=config(True))
    resp = await c.login(PASSWORD, device_name=f"nio-e2ee-{name}")
    expect(resp, LoginResponse, f"{name} login")
    ensure(c.user_id == user_id, f"{name} login: server says user is {c.user_id}")
    ensure(c.olm is not None, f"{name}: nio did not load its encryption store after login")
    d = Device(name, c)
    DEVICES.append(d)
    return d


async def keys_ready(d: Device) -> int:
    """Start d's loop; wait until its keys are up and a /sync reports the count."""
    d.start()

    def uploaded() -> list[KeysUploadResponse]:
        return [r for r in d.client.handled if isinstance(r, KeysUploadResponse)]

    await wait_until(f"{d.name} uploads its keys", lambda: bool(uploaded()))
    count = uploaded()[0].signed_curve25519_count
    ensure(count > 0, f"{d.name}: /keys/upload answered one_time_key_counts {short(d.client.last_body)}")
    at = d.syncs
    await wait_until(
        f"{d.name}: a /sync reporting device_one_time_keys_count.signed_curve25519 = {count}",
        lambda: any(c == count for c in d.otk_counts[at:]),
        detail=lambda: f"counts seen: {d.otk_counts[-5:]}",
    )
    ensure(d.client.olm_account_shared, f"{d.name}: nio does not consider its account shared")
    return count


def undecrypted_report(d: Device, room_id: str, since_sync: int = 0) -> str:
    bad = [ev for n, ev in d.undecrypted if n > since_sync and ev.room_id == room_id]
    if not bad:
        return "none undecryptable"
    late = 0
    for ev in bad:
        try:
            d.client.decrypt_event(ev)
            late += 1
        except Exception:  # noqa: BLE001
            pass
    return (
        f"{len(bad)} undecryptable on arrival (e.g. {bad[0].event_id} from {bad[0].sender}, session "
        f"{bad[0].session_id}); {late} of them decrypt now, so their room key came in a later sync "
        f"than the message" + ("" if late else "; the room key never came")
    )


async def scenario(store_root: str) -> str:
    ensure(bool(URL), "GANGLION_URL is not set (e.g. http://127.0.0.1:8008)")
    ensure(ENCRYPTION_ENABLED, "matrix-nio has no encryption support: pip install 'matrix-nio[e2e]==0.26.0'")
    run = secrets.token_hex(4)
    log(f"homeserver {URL}, run {run}, {MESSAGES} messages per sender")

    # 1. Accounts, devices, keys.
    alice_id, bob_id = await within(
        30, "register", asyncio.gather(register(f"alice-e2ee-{run}"), register(f"bob-e2ee-{run}"))
    )
    alice, bob = await within(
        30, "login", asyncio.gather(login("alice", alice_id, store_root), login("bob", bob_id, store_root))
    )
    otk = {}
    for d, n in zip((alice, bob), await asyncio.gather(keys_ready(alice), keys_ready(bob))):
        otk[d.name] = n
    log(f"alice {alice.device_id} and bob {bob.device_id} uploaded keys ({otk['alice']}/{otk['bob']} one-time keys)")

    # 2. Encrypted room.
    resp = await within(
        20,
        "createRoom",
        alice.client.room_create(
            visibility=RoomVisibility.private,
            preset=RoomPreset.private_chat,
            name=f"nio e2ee {run}",
            initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}],
        ),
    )
    room_id = expect(resp, RoomCreateResponse, "alice createRoom").room_id
    expect(await within(20, "invite", alice.client.room_invite(room_id, bob_id)), RoomInviteResponse, "alice invites bob")
    await wait_until("bob sees the invite in /sync", lambda: room_id in bob.invites)
    expect(await within(20, "join", bob.client.join(room_id)), JoinResponse, "bob joins")

    def joined_encrypted(d: Device, other: str) -> Callable[[], bool]:
        def ok() -> bool:
            room = d.client.rooms.get(room_id)
            return bool(room and room.encrypted and other in room.users and room.users[other].invited is False)

        return ok

    await wait_until("alice sees bob joined the encrypted room", joined_encrypted(alice, bob_id))
    await wait_until("bob is in the encrypted room with alice", joined_encrypted(bob, alice_id))
    log(f"room {room_id}: encrypted, bob invited and joined")

    # 3. Each client queried the other's keys: exactly what that device uploaded.
    for me, other in ((alice, bob), (bob, alice)):
        await wait_until(
            f"{me.name} has {other.name}'s device {other.device_id} from /keys/query",
            lambda: me.knows(other.user_id, other.device_id) is not None,
            detail=lambda: f"{me.name}'s queries: {me.queries}",
        )
        dev = me.knows(other.user_id, other.device_id)
        ensure(
            dev.ed25519 == other.ed25519 and dev.curve25519 == other.curve25519,
            f"{me.name}: /keys/query gave {other.name}'s device keys ed25519={dev.ed25519} "
            f"curve25519={dev.curve25519}, but it uploaded {other.ed25519} / {other.curve25519}",
        )
    log("each side queried the other's device keys; they match what was uploaded")

    # 4. Interactive SAS verification (to-device m.key.verification.*).
    await verify(alice, bob)

    # 5. N encrypted messages each, at the same time.
    sent: dict[str, list[tuple[str, str]]] = {}  # name -> [(body, event id)]
    claims_before = {d.name: len([r for r in d.client.handled if isinstance(r, KeysClaimResponse)]) for d in (alice, bob)}
    counts_at = {d.name: len(d.otk_counts) for d in (alice, bob)}

    async def send_all(d: Device, n: int, tag: str) -> None:
        out = sent.setdefault(d.name + tag, [])
        for i in range(n):
            body = f"{run} {d.name}{tag} {i:02d}"
            resp = await d.client.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": body}, ignore_unverified_devices=True
            )
            resp = expect(resp, RoomSendResponse, f"{d.name} sends {body!r}")
            out.append((body, resp.event_id))

    await within(60, "sending", asyncio.gather(send_all(alice, MESSAGES, ""), send_all(bob, MESSAGES, "")))
    log(f"alice and bob sent {MESSAGES} encrypted messages each")

    def check_received(receiver: Device, sender: Device, tag: str) -> Callable[[], bool]:
        want = sent[sender.name + tag]
        prefix = f"{run} {sender.name}{tag} "
        return lambda: len(receiver.messages(room_id, sender.user_id, prefix)) >= len(want)

    for me, other in ((alice, bob), (bob, alice)):
        await wait_until(
            f"{me.name} decrypts all {MESSAGES} of {other.name}'s messages",
            check_received(me, other, ""),
            detail=lambda me=me, other=other: (
                f"decrypted {len(me.messages(room_id, other.user_id, f'{run} {other.name} '))}; "
                + undecrypted_report(me, room_id)
            ),
        )
    for me, other in ((alice, bob), (bob, alice)):
        assert_messages(me, other, room_id, sent[other.name], f"{run} {other.name} ")
        ensure(
            not [ev for _, ev in me.undecrypted if ev.room_id == room_id],
            f"{me.name}: {undecrypted_report(me, room_id)}",
        )
        plain = [t for t in me.raw_types.get(room_id, []) if t == "m.room.message"]
        ensure(not plain, f"{me.name}: the server sent {len(plain)} plaintext m.room.message events in the encrypted room")
    # Each side's own last messages may still be on their way back in its sync.
    def mine_in_timeline(d: Device) -> int:
        return len([ev for ev in d.timeline.get(room_id, []) if isinstance(ev, RoomMessageText) and ev.body.startswith(run)])

    for d in (alice, bob):
        await wait_until(
            f"{d.name}'s timeline holds all {2 * MESSAGES} messages",
            lambda d=d: mine_in_timeline(d) >= 2 * MESSAGES,
            detail=lambda d=d: f"{mine_in_timeline(d)} so far",
        )
    order_a = [ev.event_id for ev in alice.timeline[room_id] if isinstance(ev, RoomMessageText) and ev.body.startswith(run)]
    order_b = [ev.event_id for ev in bob.timeline[room_id] if isinstance(ev, RoomMessageText) and ev.body.startswith(run)]
    if order_a != order_b:
        diff = next((i for i, (a, b) in enumerate(zip(order_a, order_b)) if a != b), min(len(order_a), len(order_b)))
        ensure(
            False,
            f"alice and bob decrypted the messages in different timeline orders: {len(order_a)} and "
            f"{len(order_b)} messages, first difference at #{diff}: "
            f"alice {order_a[diff:diff + 3]}, bob {order_b[diff:diff + 3]}",
        )
    ensure(len(order_a) == 2 * MESSAGES, f"alice has {len(order_a)} decrypted messages, expected {2 * MESSAGES}")
    log(f"each decrypted all {MESSAGES} of the other's messages, in order; none left undecryptable")

    # Whoever claimed the other's one-time key sees the server's count drop for it.
    claimed = 0
    for me, other in ((alice, bob), (bob, alice)):
        for r in [r for r in me.client.handled if isinstance(r, KeysClaimResponse)][claims_before[me.name]:]:
            keys = (r.one_time_keys.get(other.user_id) or {}).get(other.device_id) or {}
            if not keys:
                continue
            ensure(
                all(k.startswith("signed_curve25519:") for k in keys),
                f"{me.name}: /keys/claim for {other.name} gave {short(keys)}",
            )
            claimed += 1
            start, full = counts_at[other.name], otk[other.name]
            await wait_until(
                f"{other.name}'s /sync shows one one-time key fewer after {me.name} claimed one",
                lambda: any(c is not None and c < full for c in other.otk_counts[start:]),
                detail=lambda: f"{other.name}'s counts since: {other.otk_counts[start:]}",
            )
    ensure(claimed > 0, "neither alice nor bob claimed a one-time key of the other (/keys/claim)")
    log(f"{claimed} one-time key claim(s); the claimed device's /sync count dropped")

    # 6. Bob's second device.
    alice_at, bob_at = alice.syncs, bob.syncs
    alice_q, bob_q = len(alice.queries), len(bob.queries)
    bob2 = await within(30, "bob's second login", login("bob2", bob_id, store_root))
    ensure(bob2.device_id != bob.device_id, f"bob's second login reused device id {bob.device_id}")
    await keys_ready(bob2)
    for me in (alice, bob):
        await wait_until(
            f"{me.name} sees bob's new device {bob2.device_id} (device_lists.changed, /keys/query)",
            lambda me=me: me.knows(bob_id, bob2.device_id) is not None,
            detail=lambda me=me: f"{me.name}'s device_lists.changed since: {me.changed[-10:]}, queries: {me.queries[-3:]}",
        )
        dev = me.knows(bob_id, bob2.device_id)
        ensure(
            dev.ed25519 == bob2.ed25519 and dev.curve25519 == bob2.curve25519,
            f"{me.name}: bob2's keys from /keys/query differ from what bob2 uploaded",
        )
    for me, at, q in ((alice, alice_at, alice_q), (bob, bob_at, bob_q)):
        ensure(
            any(bob_id in ch for ch in me.changed[at:]),
            f"{me.name}: no /sync after bob's second login listed {bob_id} in device_lists.changed",
        )
        ensure(
            any(bob_id in users for _, users in me.queries[q:]),
            f"{me.name}: bob was not in users_for_key_query after his second login",
        )
    await wait_until("bob2 knows alice's device", lambda: bob2.knows(alice_id, alice.device_id) is not None)
    log(f"bob logged in again as {bob2.device_id}; alice and bob's first device saw the new device")

    bob2_first = bob2.syncs
    await within(
        30, "sending after bob2's login", asyncio.gather(send_all(alice, AFTER_LOGIN, "+"), send_all(bob, AFTER_LOGIN, "+"))
    )
    for me, other in ((bob2, alice), (bob2, bob), (alice, bob), (bob, alice)):
        await wait_until(
            f"{me.name} decrypts {other.name}'s {AFTER_LOGIN} messages sent after bob2's login",
            check_received(me, other, "+"),
            detail=lambda me=me: undecrypted_report(me, room_id, bob2_first),
        )
        assert_messages(me, other, room_id, sent[other.name + "+"], f"{run} {other.name}+ ")
    bad = [ev for n, ev in bob2.undecrypted if n > bob2_first]
    ensure(not bad, f"bob2: {undecrypted_report(bob2, room_id, bob2_first)}")
    old = len([1 for n, _ in bob2.undecrypted if n <= bob2_first])
    log(f"bob2 decrypted all {2 * AFTER_LOGIN} messages sent after its login ({old} older ones it cannot read)")

    # 7. To-device: to one device, and to all of a user's devices.
    one, every = secrets.token_hex(6), secrets.token_hex(6)
    ttype = "org.ganglion.test.e2ee"
    for device_id, nonce in ((bob.device_id, one), ("*", every)):
        msg = ToDeviceMessage(ttype, bob_id, device_id, {"nonce": nonce, "run": run})
        expect(await within(20, "sendToDevice", alice.client.to_device(msg)), ToDeviceResponse, f"alice to-device to {device_id}")

    def got(d: Device, nonce: str) -> list[Any]:
        return [
            ev
            for _, ev in d.to_device
            if isinstance(ev, UnknownToDeviceEvent) and ev.type == ttype and ev.source.get("content", {}).get("nonce") == nonce
        ]

    await wait_until("bob's first device gets both to-device messages", lambda: got(bob, one) and got(bob, every))
    await wait_until("bob's second device gets the to-all-devices message", lambda: bool(got(bob2, every)))
    await wait_syncs([alice, bob, bob2], 2, "two more syncs after the to-device messages")
    for d, nonce, n in ((bob, one, 1), (bob, every, 1), (bob2, one, 0), (bob2, every, 1), (alice, one, 0), (alice, every, 0)):
        evs = got(d, nonce)
        target = "bob's first device" if nonce == one else "all bob's devices"
        ensure(len(evs) == n, f"{d.name} got the to-device message for {target} {len(evs)} times, expected {n}")
        ensure(all(ev.sender == alice_id for ev in evs), f"{d.name}: to-device sender {[ev.sender for ev in evs]}, expected {alice_id}")
    log("to-device: the one-device message reached only bob's first device, the '*' one each of bob's devices, each once")

    # 8. The peer of the matrix-sdk cross-client test.
    peer_note = "peer skipped"
    if RUN_PEER:
        peer_note = await peer_check(run, store_root)

    return (
        f"{2 * MESSAGES} + {4 * AFTER_LOGIN} encrypted messages decrypted, SAS verified, "
        f"new device tracked, to-device exactly once, {peer_note}"
    )


def assert_messages(me: Device, other: Device, room_id: str, want: list[tuple[str, str]], prefix: str) -> None:
    got = me.messages(room_id, other.user_id, prefix)
    ensure(
        [(ev.body, ev.event_id) for ev in got] == want,
        f"{me.name}: {other.name}'s messages decrypted as {[ev.body for ev in got][:8]}… "
        f"(ids {[ev.event_id for ev in got][:3]}…), expected {[b for b, _ in want][:8]}… in send order",
    )
    ensure(all(ev.decrypted for ev in got), f"{me.name}: some of {other.name}'s messages were not encrypted")


async def verify(alice: Device, bob: Device) -> None:
    """SAS: alice starts, bob accepts, keys exchanged, both confirm, both verified."""
    bob_dev = alice.knows(bob.user_id, bob.device_id)
    alice_dev = bob.knows(alice.user_id, alice.device_id)
    resp = await within(20, "start verification", alice.client.start_key_verification(bob_dev))
    expect(resp, ToDeviceResponse, "alice m.key.verification.start")
    sas_a = alice.client.get_active_sas(bob.user_id, bob.device_id)
    ensure(sas_a is not None, "alice has no SAS object after starting the verification")
    tx = sas_a.transaction_id
    await wait_until("bob receives m.key.verification.start", lambda: tx in bob.client.key_verifications)
    expect(await within(20, "accept", bob.client.accept_key_verification(tx)), ToDeviceResponse, "bob m.key.verification.accept")
    sas_b = bob.client.key_verifications[tx]

    def not_canceled() -> None:
        ensure(
            not sas_a.canceled and not sas_b.canceled,
            f"SAS canceled: alice {sas_a.cancel_code} {sas_a.cancel_reason!r}, bob {sas_b.cancel_code} {sas_b.cancel_reason!r}",
        )

    def keys_exchanged() -> bool:
        not_canceled()
        return sas_a.established_sas is not None and sas_b.established_sas is not None

    await wait_until(
        "both sides have the other's SAS key (m.key.verification.accept/key)",
        keys_exchanged,
        detail=lambda: f"alice state {sas_a.state}, bob state {sas_b.state}",
    )
    ea, eb = sas_a.get_emoji(), sas_b.get_emoji()
    ensure(len(ea) == 7 and ea == eb, f"SAS emoji differ: alice {ea}, bob {eb}")
    ensure(sas_a.get_decimals() == sas_b.get_decimals(), "SAS decimals differ")
    for d in (alice, bob):
        expect(await within(20, "confirm", d.client.confirm_short_auth_string(tx)), ToDeviceResponse, f"{d.name} m.key.verification.mac")
    await wait_until(
        "both sides verified (m.key.verification.mac)",
        lambda: not_canceled() or (sas_a.verified and sas_b.verified),
        detail=lambda: f"alice {sas_a.state} canceled={sas_a.cancel_reason}, bob {sas_b.state} canceled={sas_b.cancel_reason}",
    )
    ensure(alice.client.olm.is_device_verified(bob_dev), "alice did not mark bob's device verified")
    ensure(bob.client.olm.is_device_verified(alice_dev), "bob did not mark alice's device verified")
    log(f"SAS verification done ({' '.join(e for e, _ in ea)}); both devices marked verified")


async def peer_check(run: str, store_root: str) -> str:
    """Drive tests/nio/e2ee_peer.py as the matrix-sdk test would."""
    ensure(PEER_SCRIPT.exists(), f"{PEER_SCRIPT} is missing")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PEER_SCRIPT),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "GANGLION_URL": URL},
    )
    lines: list[str] = []

    async def next_line(what: str, seconds: float = WAIT_S) -> str:
        raw = await within(seconds, f"peer: {what}", proc.stdout.readline())
        ensure(bool(raw), f"peer: stdout closed before {what} (so far {lines})")
        line = raw.decode().rstrip("\n")
        lines.append(line)
        return line

    carol = None
    try:
        ready = await next_line("READY line", 30)
        ensure(ready.startswith("READY @"), f"peer: first line {ready!r}, expected 'READY <user_id>'")
        peer_id = ready.split(" ", 1)[1]
        carol_id = await register(f"carol-e2ee-{run}")
        carol = await login("carol", carol_id, store_root)
        await keys_ready(carol)
        resp = await within(
            20,
            "carol createRoom",
            carol.client.room_create(
                preset=RoomPreset.private_chat,
                invite=[peer_id],
                initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}],
            ),
        )
        room_id = expect(resp, RoomCreateResponse, "carol createRoom").room_id
        await wait_until(
            "the peer joins carol's room",
            lambda: (r := carol.client.rooms.get(room_id)) is not None and peer_id in r.users and r.users[peer_id].invited is False,
        )
        for i in range(1, PEER_PINGS + 1):
            resp = await carol.client.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": f"ping {i}"}, ignore_unverified_devices=True
            )
            expect(resp, RoomSendResponse, f"carol sends ping {i}")
        want = [f"pong {i}" for i in range(1, PEER_PINGS + 1)]
        await wait_until(
            "carol decrypts the peer's pongs",
            lambda: len(carol.messages(room_id, peer_id, "pong ")) >= PEER_PINGS,
            detail=lambda: f"peer stdout so far {lines}; {undecrypted_report(carol, room_id)}",
        )
        got = [ev.body for ev in carol.messages(room_id, peer_id, "pong ")]
        ensure(got == want, f"carol got {got} from the peer, expected {want}")
        ensure(all(ev.decrypted for ev in carol.messages(room_id, peer_id, "pong ")), "the peer's pongs were not encrypted")
        for i in range(1, PEER_PINGS + 1):
            line = await next_line(f"GOT ping {i}")
            ensure(line == f"GOT ping {i}", f"peer printed {line!r}, expected 'GOT ping {i}'")
        resp = await carol.client.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "bye"}, ignore_unverified_devices=True
        )
        expect(resp, RoomSendResponse, "carol sends bye")
        for want_line in ("GOT bye", "DONE"):
            line = await next_line(want_line)
            ensure(line == want_line, f"peer printed {line!r}, expected {want_line!r}")
        rc = await within(15, "peer exit", proc.wait())
        ensure(rc == 0, f"peer exited with status {rc}")
        rest = await proc.stdout.read()
        ensure(not rest.strip(), f"peer printed more after DONE: {rest!r}")
        log(f"peer {peer_id}: {PEER_PINGS} pings answered with encrypted pongs, stdout {len(lines)} lines as specified, exit 0")
        return f"peer ping/pong {PEER_PINGS}x"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if carol is not None:
            await carol.stop()
            DEVICES.remove(carol)


async def main_async() -> str:
    with tempfile.TemporaryDirectory(prefix="nio-e2ee-") as store_root:
        try:
            return await within(DEADLINE_S, "nio e2ee scenario (overall deadline)", scenario(store_root))
        finally:
            for d in list(DEVICES):
                await d.stop()


def main() -> int:
    if not URL:
        print("nio e2ee: GANGLION_URL is not set (e.g. http://127.0.0.1:8008)")
        print("nio e2ee: 0 passed, 1 failed")
        return 2
    if not ENCRYPTION_ENABLED:
        print("nio e2ee: matrix-nio has no encryption support; pip install 'matrix-nio[e2e]==0.26.0'")
        print("nio e2ee: 0 passed, 1 failed")
        return 2
    try:
        summary = asyncio.run(main_async())
    except ScenarioError as e:
        print(f"FAIL: {e}", flush=True)
        print("nio e2ee: 0 passed, 1 failed")
        return 1
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        traceback.print_exc()
        print(f"FAIL: HTTP request to {URL} failed: {e!r}", flush=True)
        print("nio e2ee: 0 passed, 1 failed")
        return 1
    except Exception:  # noqa: BLE001 - any crash is a failure with its traceback
        traceback.print_exc()
        print("nio e2ee: 0 passed, 1 failed")
        return 1
    log(f"PASS: {summary} in {time.monotonic() - START:.1f}s")
    print("nio e2ee: 1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
