#!/usr/bin/env bash
# Start a throw-away Synapse on loopback, as a yardstick and a reference server for the
# client scenarios (tests/nio, tests/sdk) and the load generator.
#
#   tests/synapse/start-synapse.sh PORT DATA_DIR
#
# - Installs matrix-synapse[postgres] from PyPI into a venv the first time
#   (${GANGLION_SYNAPSE_VENV:-$HOME/.cache/ganglion/synapse-venv}).
# - Writes DATA_DIR/homeserver.yaml (only if missing, so a second start reuses it),
#   generates the signing key, starts Synapse in the background and waits until
#   /_matrix/client/versions answers. Then it prints the client URL as its last line
#   (http://127.0.0.1:PORT) and exits 0; Synapse keeps running.
# - Stop it with:  kill "$(cat DATA_DIR/synapse.pid)"   (its log: DATA_DIR/synapse.log)
#
# Environment:
#   SYNAPSE_DB           sqlite (default) or postgres
#   SYNAPSE_PG_DB        database name for postgres (default synapse_PORT); created with
#                        C collation if missing (PG on 127.0.0.1:5432, user postgres)
#   SYNAPSE_PG_HOST / SYNAPSE_PG_PORT / SYNAPSE_PG_USER   (127.0.0.1 / 5432 / postgres)
#   SYNAPSE_SERVER_NAME  default localhost:PORT
#   SYNAPSE_EXTRA_CONFIG path of an extra YAML file passed as a second -c; Synapse merges
#                        its top-level keys over ours (e.g. federation listeners, TLS)
#   SYNAPSE_START_TIMEOUT seconds to wait for the client API (default 90)
#
# The server is registration-open without verification (m.login.dummy), has every
# rate limit off, listens on 127.0.0.1 only, and may only make outbound requests to
# loopback addresses (no key servers, no stats, no federation outside this machine).
#
# Federation mode (a peer for Ganglion's federation tests; see docs/federation-testing.md):
#
#   SYNAPSE_FEDERATION=1 SYNAPSE_CA_DIR=CA_DIR tests/synapse/start-synapse.sh PORT DATA_DIR
#
# - PORT stays the plain-HTTP client listener (client API and /_synapse/admin).
# - A second listener, TLS terminated by Synapse itself, serves [federation, keys] on
#   127.0.0.1:FEDPORT, and the server name is localhost:FEDPORT (no DNS, .well-known or
#   SRV involved). FEDPORT is SYNAPSE_FED_PORT, or a free port chosen on the first start
#   and kept in DATA_DIR/federation_port for later starts on the same DATA_DIR.
# - tests/federation/make-ca.sh CA_DIR synapse makes (once) the test CA and the
#   certificate Synapse serves (CA_DIR/synapse.pem, .key; SAN localhost, 127.0.0.1).
#   Outbound federation verifies certificates against CA_DIR/ca.pem only
#   (federation_custom_ca_list), so every peer must serve a certificate from that CA.
#   SYNAPSE_CA_DIR defaults to DATA_DIR/ca.
# - Outbound requests may reach loopback (127.0.0.0/8, ::1) and nothing else; that
#   covers federation too (no federation_ip_range_blacklist, so Synapse applies
#   ip_range_blacklist/ip_range_whitelist to federation).
# - No key servers (trusted_key_servers: []): Synapse fetches a peer's keys from the peer.
# - Test-friendly federation retries (overridable with a `federation:` section in
#   SYNAPSE_EXTRA_CONFIG): a failed request is retried 2 times at most within 10 s
#   instead of ~10 times over minutes, and a destination that failed is backed off for
#   only 1 s at first (Synapse's default is 10 min). Reset a destination by hand with
#   POST /_synapse/admin/v1/federation/destinations/DEST/reset_connection.
# - The last line printed is, instead of the URL:
#     SYNAPSE client=http://127.0.0.1:PORT federation=https://localhost:FEDPORT server_name=localhost:FEDPORT shared_secret=SECRET ca=CA_DIR/ca.pem pid=PID
#   (space-separated key=value; no value contains a space). The script waits until both
#   the client API and https://localhost:FEDPORT/_matrix/key/v2/server answer.
# - SYNAPSE_FED_PORT (see above) and SYNAPSE_CERT_NAME (file name in CA_DIR, default
#   synapse) are the only other knobs; SYNAPSE_DB=postgres works as in the default mode.
#
# The registration shared secret is "start-synapse-PORT" in both modes.
set -euo pipefail

usage() { echo "usage: $0 PORT DATA_DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
PORT=$1
DATA_DIR=$2
[[ $PORT =~ ^[0-9]+$ ]] || usage

VENV=${GANGLION_SYNAPSE_VENV:-$HOME/.cache/ganglion/synapse-venv}
DB=${SYNAPSE_DB:-sqlite}
PG_HOST=${SYNAPSE_PG_HOST:-127.0.0.1}
PG_PORT=${SYNAPSE_PG_PORT:-5432}
PG_USER=${SYNAPSE_PG_USER:-postgres}
PG_DB=${SYNAPSE_PG_DB:-synapse_$PORT}
START_TIMEOUT=${SYNAPSE_START_TIMEOUT:-90}
URL="http://127.0.0.1:$PORT"
FEDERATION=${SYNAPSE_FEDERATION:-0}
[[ $FEDERATION == 0 || $FEDERATION == 1 ]] || { echo "SYNAPSE_FEDERATION must be 0 or 1" >&2; exit 2; }
SHARED_SECRET="start-synapse-$PORT"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

say() { echo "start-synapse: $*" >&2; }

# --- 1. Synapse itself ------------------------------------------------------------------
if ! "$VENV/bin/python" -c 'import synapse, psycopg2' >/dev/null 2>&1; then
  say "installing matrix-synapse[postgres] into $VENV"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    apt-get install -y -q python3-venv >/dev/null
  fi
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q 'matrix-synapse[postgres]'
fi

# --- 2. Config --------------------------------------------------------------------------
mkdir -p "$DATA_DIR"
DATA_DIR=$(cd "$DATA_DIR" && pwd)
CONFIG="$DATA_DIR/homeserver.yaml"

FEDERATION_YAML=""
FED_LISTENER_YAML=""
if ((FEDERATION)); then
  if [[ -s $DATA_DIR/federation_port ]]; then
    FED_PORT=$(cat "$DATA_DIR/federation_port")
    if [[ -n ${SYNAPSE_FED_PORT:-} && $SYNAPSE_FED_PORT != "$FED_PORT" ]]; then
      say "$DATA_DIR was set up with federation port $FED_PORT, not $SYNAPSE_FED_PORT"; exit 2
    fi
  else
    FED_PORT=${SYNAPSE_FED_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
  fi
  [[ $FED_PORT =~ ^[0-9]+$ && $FED_PORT != "$PORT" ]] || { say "bad federation port '$FED_PORT'"; exit 2; }
  if [[ -f $CONFIG && ! -s $DATA_DIR/federation_port ]]; then
    say "$CONFIG was written without federation mode; use a fresh DATA_DIR"; exit 2
  fi
  echo "$FED_PORT" >"$DATA_DIR/federation_port"
  CA_DIR=${SYNAPSE_CA_DIR:-$DATA_DIR/ca}
  CERT_NAME=${SYNAPSE_CERT_NAME:-synapse}
  "$HERE/../federation/make-ca.sh" "$CA_DIR" "$CERT_NAME"
  CA_DIR=$(cd "$CA_DIR" && pwd)
  SERVER_NAME=${SYNAPSE_SERVER_NAME:-localhost:$FED_PORT}
  FED_URL="https://localhost:$FED_PORT"
  FED_LISTENER_YAML="
  - port: $FED_PORT
    bind_addresses: ['127.0.0.1']
    type: http
    tls: true
    x_forwarded: false
    resources:
      - names: [federation, keys]
        compress: false"
  FEDERATION_YAML="
# Federation mode: TLS on the federation listener with a certificate from the test CA,
# and outbound federation trusting that CA only.
tls_certificate_path: $CA_DIR/$CERT_NAME.pem
tls_private_key_path: $CA_DIR/$CERT_NAME.key
federation_verify_certificates: true
federation_custom_ca_list: [$CA_DIR/ca.pem]
allow_public_rooms_over_federation: true
allow_profile_lookup_over_federation: true
# Retries and back-off sized for tests (Synapse: 10 long retries up to 60 s apart, and a
# destination that failed is skipped for 10 min, doubling).
federation:
  client_timeout: 20s
  max_long_retries: 2
  max_long_retry_delay: 5s
  max_short_retries: 2
  max_short_retry_delay: 2s
  destination_min_retry_interval: 1s
  destination_retry_multiplier: 2
  destination_max_retry_interval: 10s
"
else
  SERVER_NAME=${SYNAPSE_SERVER_NAME:-localhost:$PORT}
fi

if [[ $DB == postgres ]]; then
  # Synapse insists on C collation; TEMPLATE template0 lets us choose it.
  if ! psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" | grep -q 1; then
    say "creating database $PG_DB"
    psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -q -c \
      "CREATE DATABASE \"$PG_DB\" LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" >/dev/null
  fi
  DATABASE_YAML="database:
  name: psycopg2
  args:
    user: $PG_USER
    host: $PG_HOST
    port: $PG_PORT
    database: $PG_DB
    cp_min: 2
    cp_max: 10"
elif [[ $DB == sqlite ]]; then
  DATABASE_YAML="database:
  name: sqlite3
  args:
    database: $DATA_DIR/homeserver.db"
else
  say "SYNAPSE_DB must be sqlite or postgres, not '$DB'"; exit 2
fi

# Every rate limit at a level no test reaches.
RC='{per_second: 100000, burst_count: 100000}'

if [[ ! -f $CONFIG ]]; then
  cat >"$CONFIG" <<EOF
# Written by tests/synapse/start-synapse.sh: a loopback-only test server.
server_name: "$SERVER_NAME"
signing_key_path: $DATA_DIR/signing.key
media_store_path: $DATA_DIR/media
report_stats: false
enable_metrics: false
suppress_key_server_warning: true
trusted_key_servers: []
# Outbound HTTP (federation, push, previews) may only reach loopback.
ip_range_blacklist: ['0.0.0.0/0', '::/0']
ip_range_whitelist: ['127.0.0.0/8', '::1/128']
url_preview_enabled: false

listeners:
  - port: $PORT
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false$FED_LISTENER_YAML
$FEDERATION_YAML
$DATABASE_YAML

enable_registration: true
enable_registration_without_verification: true
registration_shared_secret: "$SHARED_SECRET"
bcrypt_rounds: 4
macaroon_secret_key: "start-synapse-macaroon-$PORT"
form_secret: "start-synapse-form-$PORT"
room_list_publication_rules: [{action: allow}]

# Rate limits off (see shared/SYNAPSE-PEER.md).
rc_message: $RC
rc_registration: $RC
rc_registration_token_validity: $RC
rc_login:
  address: $RC
  account: $RC
  failed_attempts: $RC
rc_admin_redaction: $RC
rc_joins:
  local: $RC
  remote: $RC
rc_joins_per_room: $RC
rc_3pid_validation: $RC
rc_invites:
  per_room: $RC
  per_user: $RC
  per_issuer: $RC
rc_third_party_invite: $RC
rc_room_creation: $RC
rc_profile: $RC
rc_presence:
  per_user: $RC
rc_media_create: $RC
rc_delayed_event_mgmt: $RC
rc_reports: $RC
rc_federation:
  window_size: 1000
  sleep_limit: 100000
  sleep_delay: 1
  reject_limit: 100000
  concurrent: 100000
federation_rr_transactions_per_room_per_second: 100000
EOF
fi

# --- 3. Keys, start, wait ---------------------------------------------------------------
CONFIG_ARGS=(-c "$CONFIG")
[[ -n ${SYNAPSE_EXTRA_CONFIG:-} ]] && CONFIG_ARGS+=(-c "$SYNAPSE_EXTRA_CONFIG")

cd "$DATA_DIR"
if [[ ! -f $DATA_DIR/signing.key ]]; then
  "$VENV/bin/python" -m synapse.app.homeserver "${CONFIG_ARGS[@]}" --generate-keys >/dev/null
fi

if [[ -f $DATA_DIR/synapse.pid ]] && kill -0 "$(cat "$DATA_DIR/synapse.pid")" 2>/dev/null; then
  say "already running (pid $(cat "$DATA_DIR/synapse.pid"))"
else
  # setsid: Synapse outlives this script and is not killed with its process group.
  setsid nohup "$VENV/bin/python" -m synapse.app.homeserver "${CONFIG_ARGS[@]}" \
    >"$DATA_DIR/synapse.log" 2>&1 </dev/null &
  echo $! >"$DATA_DIR/synapse.pid"
fi
PID=$(cat "$DATA_DIR/synapse.pid")

deadline=$((SECONDS + START_TIMEOUT))
until curl -fsS --max-time 2 "$URL/_matrix/client/versions" >/dev/null 2>&1; do
  if ! kill -0 "$PID" 2>/dev/null; then
    say "Synapse exited during start-up; its log:"; tail -n 50 "$DATA_DIR/synapse.log" >&2
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    say "no answer on $URL after ${START_TIMEOUT}s; its log:"; tail -n 50 "$DATA_DIR/synapse.log" >&2
    kill "$PID" 2>/dev/null || true
    exit 1
  fi
  sleep 0.5
done
if ((FEDERATION)); then
  # The federation listener starts with the client one, but check it (and the TLS set-up)
  # before saying it is up.
  until curl -fsS --max-time 2 --cacert "$CA_DIR/ca.pem" "$FED_URL/_matrix/key/v2/server" >/dev/null 2>&1; do
    if ! kill -0 "$PID" 2>/dev/null || ((SECONDS >= deadline)); then
      say "no answer on $FED_URL/_matrix/key/v2/server; its log:"; tail -n 50 "$DATA_DIR/synapse.log" >&2
      curl -sS --max-time 2 --cacert "$CA_DIR/ca.pem" "$FED_URL/_matrix/key/v2/server" >&2 || true
      kill "$PID" 2>/dev/null || true
      exit 1
    fi
    sleep 0.5
  done
  say "Synapse (pid $PID, $DB, federation) is up; stop it with: kill $PID"
  echo "SYNAPSE client=$URL federation=$FED_URL server_name=$SERVER_NAME shared_secret=$SHARED_SECRET ca=$CA_DIR/ca.pem pid=$PID"
else
  say "Synapse (pid $PID, $DB) is up; stop it with: kill $PID"
  echo "$URL"
fi
