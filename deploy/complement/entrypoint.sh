#!/usr/bin/env bash
# deploy/complement/entrypoint.sh: starts Ganglion as Complement expects of a homeserver
# image (https://github.com/matrix-org/complement, README "Image requirements" and
# "Complement PKI"). The ENTRYPOINT of deploy/complement/Dockerfile; docs/complement.md.
#
# At every start (Complement stops a container, commits it as a blueprint image and starts
# it again, so this runs more than once over the same data directory):
# 1. reads the server name from $SERVER_NAME (Complement sets it: hs1, hs2, ...);
# 2. makes a fresh TLS key and a certificate for that name, signed by the CA Complement
#    copies in ($COMPLEMENT_CA_DIR/ca.crt and ca.key; a new CA each Complement run, hence
#    every start), with subjectAltName = the name's host part, the container's host name
#    and its addresses;
# 3. points Ganglion at them through GANGLION_* variables: client API on 8008 (plain
#    HTTP), federation on 8448 (TLS), outbound federation trusting only Complement's CA
#    and allowed to reach private addresses (Complement's servers are on a Docker
#    network), open registration, the shared secret `complement` for
#    /_synapse/admin/v1/register, no rate limits, SQLite under the data directory;
# 4. execs `ganglion serve` (it becomes PID 1 and gets Docker's SIGTERM itself).
#
# Everything the image fixes can be moved by the environment, so this runs outside Docker
# too (docs/complement.md shows how it was tested that way):
#   COMPLEMENT_CA_DIR  /complement/ca             ca.crt and ca.key (PEM)
#   GANGLION_BIN       /usr/local/bin/ganglion
#   DATA_DIR           /data                      signing key, SQLite database, config
#   TLS_DIR            $DATA_DIR/tls              where the key and certificate are written
#   CONFIG_FILE        $DATA_DIR/ganglion.toml    made by `ganglion generate-config` if missing
#   CLIENT_ADDR        0.0.0.0:8008
#   FEDERATION_ADDR    0.0.0.0:8448
# The server name, listeners, TLS files, CA and shared secret are always set from the
# above. Other Ganglion settings are only defaults here: a GANGLION_<SECTION>__<KEY>
# already in the environment wins (Complement passes host variables through with
# COMPLEMENT_SHARE_ENV_PREFIX, e.g. for GANGLION_LOGGING__LEVEL or GANGLION_DATABASE__URL).
set -euo pipefail

say() { printf 'complement-entrypoint: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[[ -n ${SERVER_NAME:-} ]] || die "SERVER_NAME is not set (Complement sets it to the homeserver's name, e.g. hs1)"
CA_DIR=${COMPLEMENT_CA_DIR:-/complement/ca}
GANGLION_BIN=${GANGLION_BIN:-/usr/local/bin/ganglion}
DATA_DIR=${DATA_DIR:-/data}
TLS_DIR=${TLS_DIR:-$DATA_DIR/tls}
CONFIG_FILE=${CONFIG_FILE:-$DATA_DIR/ganglion.toml}
CLIENT_ADDR=${CLIENT_ADDR:-0.0.0.0:8008}
FEDERATION_ADDR=${FEDERATION_ADDR:-0.0.0.0:8448}

CA_CERT=$CA_DIR/ca.crt
CA_KEY=$CA_DIR/ca.key
[[ -r $CA_CERT && -r $CA_KEY ]] ||
  die "cannot read $CA_CERT and $CA_KEY (Complement copies its CA there before starting the container)"
[[ -x $GANGLION_BIN ]] || die "no ganglion binary at $GANGLION_BIN"
command -v openssl >/dev/null || die "openssl is not installed"

# ------------------------------------------------------------------------------------------
# The host part of the server name: host, host:port, [v6] or [v6]:port (spec grammar).
# ------------------------------------------------------------------------------------------
if [[ $SERVER_NAME == \[* ]]; then
  HOST=${SERVER_NAME#\[}
  HOST=${HOST%%\]*}
else
  HOST=${SERVER_NAME%:*}
fi
[[ -n $HOST ]] || die "SERVER_NAME '$SERVER_NAME' has no host part"

is_ip() { [[ $1 =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || $1 == *:* ]]; }

# subjectAltName entries, each once: the server name's host (what other servers connect
# to and check against the certificate), and, for a peer that dials the container by its
# own name or address, its host name and that name's addresses from /etc/hosts (Docker
# writes the container's address there). Loopback addresses are left out.
declare -A SEEN=()
SANS=()
add_san() {
  local v=$1 entry
  [[ -n $v ]] || return 0
  if is_ip "$v"; then entry="IP:$v"; else entry="DNS:$v"; fi
  [[ -z ${SEEN[$entry]:-} ]] || return 0
  SEEN[$entry]=1
  SANS+=("$entry")
}
add_san "$HOST"
SELF=${HOSTNAME:-$(cat /etc/hostname 2>/dev/null || true)}
if [[ -n $SELF && $SELF != "$HOST" ]]; then
  add_san "$SELF"
  # `getent hosts` reads /etc/hosts (and DNS); an address per line, first field.
  while read -r addr _; do
    [[ $addr == 127.* || $addr == ::1 ]] || add_san "$addr"
  done < <(getent hosts "$SELF" 2>/dev/null || true)
fi
SAN_LIST=$(IFS=,; printf '%s' "${SANS[*]}")

# ------------------------------------------------------------------------------------------
# The federation certificate, new at every start.
# ------------------------------------------------------------------------------------------
mkdir -p "$DATA_DIR" "$TLS_DIR"
WORK=$(mktemp -d "$TLS_DIR/.new.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
(
  umask 077
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/server.key" 2>/dev/null
) || die "openssl genpkey failed"
# An EC P-256 key (PKCS#8, which the federation listener reads) under Complement's RSA
# CA. serverAuth only: Complement's CA itself is limited to serverAuth, and verifiers
# that check the chain's extended key usage would refuse anything wider.
cat >"$WORK/leaf.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $SAN_LIST
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF
openssl req -new -key "$WORK/server.key" -subj "/CN=$HOST" -out "$WORK/server.csr" 2>"$WORK/err" ||
  { cat "$WORK/err" >&2; die "openssl req failed"; }
# A random serial: a peer that cached a certificate from an earlier start sees a new one.
openssl x509 -req -in "$WORK/server.csr" -CA "$CA_CERT" -CAkey "$CA_KEY" \
  -set_serial "0x$(openssl rand -hex 16)" -sha256 -days 7 \
  -extfile "$WORK/leaf.ext" -out "$WORK/server.crt" 2>"$WORK/err" ||
  { cat "$WORK/err" >&2; die "signing the certificate with $CA_KEY failed"; }
openssl verify -CAfile "$CA_CERT" "$WORK/server.crt" >/dev/null 2>"$WORK/err" ||
  { cat "$WORK/err" >&2; die "the new certificate does not verify against $CA_CERT"; }
mv -f "$WORK/server.key" "$TLS_DIR/server.key"
mv -f "$WORK/server.crt" "$TLS_DIR/server.crt"
rm -rf "$WORK"
trap - EXIT
say "TLS certificate for $SAN_LIST signed by $CA_CERT: $TLS_DIR/server.crt"

# ------------------------------------------------------------------------------------------
# Configuration: a file with the documented defaults (first start only), the rest from
# the environment, which Ganglion reads over the file.
# ------------------------------------------------------------------------------------------
if [[ ! -s $CONFIG_FILE ]]; then
  OUT=$("$GANGLION_BIN" generate-config --server-name "$SERVER_NAME" --output "$CONFIG_FILE" 2>&1) ||
    { printf '%s\n' "$OUT" >&2; die "ganglion generate-config --output $CONFIG_FILE failed"; }
fi

# Always: what Complement's contract fixes.
export GANGLION_SERVER__SERVER_NAME=$SERVER_NAME
export GANGLION_SERVER__DATA_DIR=$DATA_DIR
export GANGLION_LISTENERS__CLIENT=$CLIENT_ADDR
export GANGLION_LISTENERS__FEDERATION=$FEDERATION_ADDR
export GANGLION_FEDERATION__ENABLED=true
export GANGLION_FEDERATION__TLS_CERTIFICATE_PATH=$TLS_DIR/server.crt
export GANGLION_FEDERATION__TLS_PRIVATE_KEY_PATH=$TLS_DIR/server.key
export GANGLION_FEDERATION__CA_FILE=$CA_CERT
export GANGLION_REGISTRATION__SHARED_SECRET=complement

# Defaults for a test server, unless the environment says otherwise.
if is_ip "$HOST" && [[ $HOST == *:* ]]; then URL_HOST="[$HOST]"; else URL_HOST=$HOST; fi
export GANGLION_SERVER__PUBLIC_BASEURL=${GANGLION_SERVER__PUBLIC_BASEURL:-http://$URL_HOST:${CLIENT_ADDR##*:}/}
export GANGLION_FEDERATION__ALLOW_PRIVATE_ADDRESSES=${GANGLION_FEDERATION__ALLOW_PRIVATE_ADDRESSES:-true}
export GANGLION_REGISTRATION__ENABLED=${GANGLION_REGISTRATION__ENABLED:-true}
export GANGLION_RATE_LIMITS__ENABLED=${GANGLION_RATE_LIMITS__ENABLED:-false}
# Plain log lines: Complement copies the container's log into the test output.
export NO_COLOR=${NO_COLOR-1}

say "starting $GANGLION_BIN serve --config $CONFIG_FILE as $SERVER_NAME: client $CLIENT_ADDR (HTTP), federation $FEDERATION_ADDR (TLS), data $DATA_DIR"
exec "$GANGLION_BIN" serve --config "$CONFIG_FILE"
