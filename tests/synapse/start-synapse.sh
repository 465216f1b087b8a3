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
SERVER_NAME=${SYNAPSE_SERVER_NAME:-localhost:$PORT}
START_TIMEOUT=${SYNAPSE_START_TIMEOUT:-90}
URL="http://127.0.0.1:$PORT"

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
        compress: false

$DATABASE_YAML

enable_registration: true
enable_registration_without_verification: true
registration_shared_secret: "start-synapse-$PORT"
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
say "Synapse (pid $PID, $DB) is up; stop it with: kill $PID"
echo "$URL"
