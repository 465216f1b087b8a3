#!/usr/bin/env python3
"""A fake Matrix server on loopback that only logs what it is sent (stdlib only).

  log_server.py PORT CERT KEY [LOG]

Serves HTTPS (HTTP/1.1) on 127.0.0.1:PORT with CERT/KEY (e.g. from make-ca.sh) and
answers every request with 404 {"errcode": "M_NOT_FOUND"}. For each TLS handshake it
logs the SNI name; for each request the request line, every header and the body. The
log goes to LOG (default stdout), flushed per line. Used to see what Synapse sends to a
federation destination (docs/federation-testing.md). Stop it with SIGTERM.
"""

import http.server
import json
import ssl
import sys
import time

port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out = open(sys.argv[4], "a", buffering=1) if len(sys.argv) > 4 else sys.stdout


def log(msg):
    out.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
    out.flush()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        tls = self.connection
        log(
            f"{self.client_address[0]}:{self.client_address[1]} {self.requestline}"
            f"  [{tls.version()}, ALPN={tls.selected_alpn_protocol()}]"
        )
        for name, value in self.headers.items():
            log(f"    {name}: {value}")
        if body:
            log(f"    body: {body.decode(errors='replace')}")
        answer = json.dumps({"errcode": "M_NOT_FOUND", "error": "log_server"}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = handle_any

    def log_message(self, fmt, *args):
        pass


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
# Only to see whether the client offers ALPN at all (None in the log: it offered none).
ctx.set_alpn_protocols(["http/1.1"])


def on_sni(sock, name, _ctx):
    log(f"TLS handshake, SNI={name!r}")


ctx.sni_callback = on_sni
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
log(f"listening on https://127.0.0.1:{port}")
server.serve_forever()
