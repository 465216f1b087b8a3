#!/usr/bin/env python3
"""Small helpers for a Synapse federation peer (see docs/federation-testing.md).

Standard library only. Usable as a module or from a shell:

  synapse_peer.py register CLIENT_URL SHARED_SECRET USER PASSWORD [--admin]
      Registers USER via the shared-secret admin API (POST /_synapse/admin/v1/register,
      HMAC-SHA1 over nonce, user, password, admin flag). Prints one JSON line:
      {"user_id": ..., "access_token": ..., "device_id": ..., "home_server": ...}
  synapse_peer.py login CLIENT_URL USER PASSWORD
      m.login.password; prints the same JSON line.
  synapse_peer.py reset CLIENT_URL ADMIN_TOKEN DESTINATION
      Clears Synapse's back-off for DESTINATION (e.g. localhost:8448) through
      POST /_synapse/admin/v1/federation/destinations/DEST/reset_connection.
  synapse_peer.py parse 'SYNAPSE client=... server_name=... ...'
      Turns start-synapse.sh's last line into JSON.

Exit status 1 with the server's answer on stderr when a request fails.
"""

import hashlib
import hmac
import json
import sys
import urllib.error
import urllib.parse
import urllib.request


class MatrixError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


def request(method, url, body=None, token=None, timeout=30):
    """One JSON request; returns the decoded answer or raises MatrixError."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raise MatrixError(e.code, e.read().decode(errors="replace")) from None
    return json.loads(raw) if raw else {}


def register(client_url, shared_secret, user, password, admin=False):
    """Shared-secret registration; returns {user_id, access_token, device_id, home_server}."""
    base = client_url.rstrip("/") + "/_synapse/admin/v1/register"
    nonce = request("GET", base)["nonce"]
    mac = hmac.new(shared_secret.encode(), digestmod=hashlib.sha1)
    for part in (nonce, user, password, "admin" if admin else "notadmin"):
        if part is not nonce:
            mac.update(b"\x00")
        mac.update(part.encode())
    return request(
        "POST",
        base,
        {
            "nonce": nonce,
            "username": user,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        },
    )


def login(client_url, user, password):
    """m.login.password; returns {user_id, access_token, device_id, home_server?}."""
    return request(
        "POST",
        client_url.rstrip("/") + "/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
        },
    )


def reset_connection(client_url, admin_token, destination):
    """Ends Synapse's back-off for a destination (admin API, needs an admin's token).

    Synapse answers 400 "The retry timing does not need to be reset for this
    destination." when it is not backing off, and 404 "Unknown destination" when it has
    never seen it; both count as done.
    """
    dest = urllib.parse.quote(destination, safe="")
    try:
        return request(
            "POST",
            f"{client_url.rstrip('/')}/_synapse/admin/v1/federation/destinations/{dest}/reset_connection",
            {},
            token=admin_token,
        )
    except MatrixError as e:
        if (e.status == 400 and "does not need to be reset" in e.body) or (
            e.status == 404 and "Unknown destination" in e.body
        ):
            return {}
        raise


def parse_start_line(line):
    """'SYNAPSE client=... server_name=... pid=...' -> dict."""
    words = line.split()
    if not words or words[0] != "SYNAPSE":
        raise ValueError(f"not a start-synapse.sh federation line: {line!r}")
    return dict(w.split("=", 1) for w in words[1:])


def _main(argv):
    usage = __doc__.split("\n\n")[1]
    if len(argv) < 2:
        sys.exit(usage)
    cmd, args = argv[1], argv[2:]
    try:
        if cmd == "register" and len(args) in (4, 5):
            admin = len(args) == 5
            if admin and args[4] != "--admin":
                sys.exit(usage)
            out = register(*args[:4], admin=admin)
        elif cmd == "login" and len(args) == 3:
            out = login(*args)
        elif cmd == "reset" and len(args) == 3:
            out = reset_connection(*args)
        elif cmd == "parse" and len(args) == 1:
            out = parse_start_line(args[0])
        else:
            sys.exit(usage)
    except MatrixError as e:
        print(f"synapse_peer.py {cmd}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(out))


if __name__ == "__main__":
    _main(sys.argv)
