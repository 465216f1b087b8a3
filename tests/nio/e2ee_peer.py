#!/usr/bin/env python3
"""A matrix-nio 0.26 E2EE peer that another client's test drives (ping/pong).

Usage:  GANGLION_URL=http://127.0.0.1:8008 python3 tests/nio/e2ee_peer.py

Protocol (stdout, one line each, flushed; everything else goes to stderr):

  READY <user_id>   registered a fresh user (m.login.dummy, random localpart), logged
                    in with encryption on, uploaded its device keys, and is syncing
  GOT <body>        a decrypted m.room.message from someone else arrived
  DONE              after `GOT bye`; the peer then exits 0

Behaviour: joins every room it is invited to; answers each decrypted `ping N` from
someone else with an encrypted `pong N` in the same room (keys queried and claimed
first as needed, unverified devices accepted); exits non-zero on its own after
GANGLION_NIO_PEER_DEADLINE seconds (default 120) or on any error.

Used by the matrix-sdk cross-client test, and by tests/nio/e2ee.py (its peer step).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import sys
import tempfile
import time
import traceback

try:
    from nio import (
        AsyncClient,
        AsyncClientConfig,
        JoinResponse,
        KeysClaimResponse,
        KeysQueryResponse,
        KeysUploadResponse,
        LoginResponse,
        MegolmEvent,
        RegisterResponse,
        RoomMessageText,
        RoomSendResponse,
        SyncResponse,
        ToDeviceResponse,
    )
    from nio.crypto import ENCRYPTION_ENABLED
except ImportError as e:  # pragma: no cover - environment problem
    print(f"e2ee_peer: cannot import matrix-nio ({e}); pip install 'matrix-nio[e2e]==0.26.0'", file=sys.stderr)
    sys.exit(2)

URL = os.environ.get("GANGLION_URL", "").rstrip("/")
DEADLINE_S = float(os.environ.get("GANGLION_NIO_PEER_DEADLINE", "120"))
SYNC_POLL_MS = 1_000
REQUEST_TIMEOUT_S = 30
SYNC_FILTER = {"room": {"timeline": {"limit": 1000}}}
PING = re.compile(r"ping (\d+)")
START = time.monotonic()
# nio warns on stderr about every event it cannot decrypt; only errors are of use here.
logging.getLogger("nio").setLevel(logging.ERROR)


class PeerError(Exception):
    pass


def log(msg: str) -> None:
    print(f"e2ee_peer [{time.monotonic() - START:6.2f}s] {msg}", file=sys.stderr, flush=True)


def say(line: str) -> None:
    print(line, flush=True)


def expect(resp, cls, what):
    if isinstance(resp, cls):
        return resp
    raise PeerError(f"{what}: {resp!r}")


class Client(AsyncClient):
    last_body = None

    async def parse_body(self, transport_response):  # type: ignore[override]
        body = await super().parse_body(transport_response)
        self.last_body = body
        return body


def config(encryption: bool) -> AsyncClientConfig:
    return AsyncClientConfig(
        encryption_enabled=encryption,
        store_sync_tokens=False,
        request_timeout=REQUEST_TIMEOUT_S,
        max_timeouts=0,
        max_limit_exceeded=0,
    )


async def register(localpart: str, password: str) -> str:
    c = Client(URL, config=config(False))
    try:
        resp = await c.register(localpart, password, device_name="nio-e2ee-peer-register")
        if not isinstance(resp, RegisterResponse):
            # The UIA round trip: echo the session back with the dummy stage.
            body = c.last_body if isinstance(c.last_body, dict) else {}
            if body.get("session") is None:
                raise PeerError(f"register {localpart}: {resp} (body {body})")
            resp = await c.register(
                localpart, password, device_name="nio-e2ee-peer-register", session_token=body["session"]
            )
        return expect(resp, RegisterResponse, f"register {localpart}").user_id
    finally:
        await c.close()


async def maintain(c: Client) -> None:
    """What sync_forever does between syncs: keys, queries, claims, queued to-device."""
    if c.should_upload_keys:
        expect(await c.keys_upload(), KeysUploadResponse, "keys/upload")
    if c.should_query_keys:
        expect(await c.keys_query(), KeysQueryResponse, "keys/query")
    if c.should_claim_keys:
        expect(await c.keys_claim(c.get_users_for_key_claiming()), KeysClaimResponse, "keys/claim")
    for r in await c.send_to_device_messages():
        expect(r, ToDeviceResponse, "sendToDevice")


async def send_text(c: Client, room_id: str, body: str) -> None:
    # A device that appeared since the last send must be queried first; room_send
    # itself claims one-time keys for devices without an Olm session.
    if c.should_query_keys:
        expect(await c.keys_query(), KeysQueryResponse, "keys/query before send")
    resp = await c.room_send(
        room_id,
        "m.room.message",
        {"msgtype": "m.text", "body": body},
        ignore_unverified_devices=True,
    )
    expect(resp, RoomSendResponse, f"send {body!r}")
    log(f"sent {body!r} in {room_id} as {resp.event_id}")


async def peer(store_dir: str) -> None:
    if not URL:
        raise PeerError("GANGLION_URL is not set")
    if not ENCRYPTION_ENABLED:
        raise PeerError("matrix-nio has no encryption support (install matrix-nio[e2e])")
    password = "nio-peer-" + secrets.token_hex(8)
    localpart = f"nio-peer-{secrets.token_hex(4)}"
    user_id = await register(localpart, password)

    c = Client(URL, user=user_id, store_path=store_dir, config=config(True))
    try:
        expect(await c.login(password, device_name="nio-e2ee-peer"), LoginResponse, "login")
        if c.olm is None:
            raise PeerError("login did not load the encryption store")
        expect(await c.sync(timeout=0, sync_filter=SYNC_FILTER), SyncResponse, "first /sync")
        await maintain(c)
        if not c.olm_account_shared:
            raise PeerError("device keys were not uploaded")
        log(f"logged in as {user_id} device {c.device_id}")
        say(f"READY {user_id}")

        joining: set[str] = set()
        pending: list[tuple[str, MegolmEvent]] = []  # undecryptable so far, retried

        async def handle(room_id: str, ev) -> bool:
            """Handle one timeline event; True when the peer is done."""
            if not isinstance(ev, RoomMessageText) or ev.sender == user_id:
                return False
            if not getattr(ev, "decrypted", False):
                log(f"ignoring unencrypted message {ev.body!r} from {ev.sender}")
                return False
            say(f"GOT {ev.body}")
            if ev.body == "bye":
                say("DONE")
                return True
            m = PING.fullmatch(ev.body)
            if m:
                await send_text(c, room_id, f"pong {m.group(1)}")
            return False

        while True:
            resp = expect(await c.sync(timeout=SYNC_POLL_MS, sync_filter=SYNC_FILTER), SyncResponse, "/sync")
            await maintain(c)
            for room_id in resp.rooms.invite:
                if room_id not in joining and room_id not in c.rooms:
                    joining.add(room_id)
                    expect(await c.join(room_id), JoinResponse, f"join {room_id}")
                    log(f"joined {room_id}")
            # Keys can come in a later sync than the message: retry what failed before.
            still = []
            for room_id, ev in pending:
                try:
                    dec = c.decrypt_event(ev)
                except Exception:  # noqa: BLE001 - nio raises EncryptionError and others
                    still.append((room_id, ev))
                    continue
                if await handle(room_id, dec):
                    return
            pending = still
            for room_id, info in resp.rooms.join.items():
                for ev in info.timeline.events:
                    if isinstance(ev, MegolmEvent):
                        log(f"cannot decrypt {ev.event_id} from {ev.sender} yet (session {ev.session_id})")
                        pending.append((room_id, ev))
                    elif await handle(room_id, ev):
                        return
    finally:
        await c.close()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="nio-e2ee-peer-") as store_dir:
        try:
            asyncio.run(asyncio.wait_for(peer(store_dir), DEADLINE_S))
        except asyncio.TimeoutError:
            log(f"FAIL: no `bye` within {DEADLINE_S:.0f}s")
            return 1
        except PeerError as e:
            log(f"FAIL: {e}")
            return 1
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
