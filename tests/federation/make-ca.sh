#!/usr/bin/env bash
# A throw-away certificate authority for federation tests on loopback.
#
#   tests/federation/make-ca.sh DIR [NAME...]
#
# - DIR/ca.key, DIR/ca.pem: an EC P-256 CA, valid for 10 years. Made only if missing,
#   so every test and every server of one run can share one CA.
# - For each NAME: DIR/NAME.pem (the server certificate followed by nothing else) and
#   DIR/NAME.key (PKCS#8 EC key), signed by that CA, valid for 10 years, with
#   subjectAltName DNS:localhost, DNS:*.ganglion.test (names a test DNS server resolves),
#   IP:127.0.0.1 and extendedKeyUsage serverAuth,clientAuth.
#   NAME is only the file name: Matrix server names here look like `localhost:PORT`, and
#   a certificate for "localhost" serves every port. Made only if missing or not signed
#   by DIR/ca.pem.
#
# Safe to run concurrently on the same DIR (flock on DIR/.lock). Prints nothing on
# success; the paths are fixed by the arguments. Needs openssl (1.1.1 or 3.x).
#
# The certificates satisfy both Synapse (Twisted/pyOpenSSL, service_identity) and rustls/
# webpki: the CA has basicConstraints CA:TRUE (critical) and keyUsage keyCertSign; the
# leaves are CA:FALSE, X.509 v3, with SAN (webpki ignores the subject CN).
set -euo pipefail

usage() { echo "usage: $0 DIR [NAME...]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
DIR=$1; shift
for name in "$@"; do
  [[ $name =~ ^[A-Za-z0-9._-]+$ && $name != ca ]] || { echo "make-ca.sh: bad NAME '$name'" >&2; exit 2; }
done

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
DAYS=3650

exec 9>"$DIR/.lock"
flock 9

TMP=$(mktemp -d "$DIR/.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# --- The CA -------------------------------------------------------------------------
if [[ ! -s $DIR/ca.key || ! -s $DIR/ca.pem ]]; then
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$TMP/ca.key" -sha256 -days "$DAYS" \
    -subj "/CN=Ganglion test CA $(date -u +%Y%m%dT%H%M%SZ)" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$TMP/ca.pem" 2>/dev/null
  chmod 600 "$TMP/ca.key"
  # The key first: a reader that sees ca.pem also finds its key.
  mv "$TMP/ca.key" "$DIR/ca.key"
  mv "$TMP/ca.pem" "$DIR/ca.pem"
fi

# --- Server certificates ------------------------------------------------------------
cat >"$TMP/leaf.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:localhost, DNS:*.ganglion.test, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

for name in "$@"; do
  pem=$DIR/$name.pem key=$DIR/$name.key
  # Kept when signed by this CA and carrying today's names (older leaves lack
  # *.ganglion.test, which the SRV discovery test needs).
  if [[ -s $pem && -s $key ]] &&
      openssl verify -CAfile "$DIR/ca.pem" "$pem" >/dev/null 2>&1 &&
      openssl x509 -in "$pem" -noout -text 2>/dev/null | grep -q 'DNS:\*\.ganglion\.test'; then
    continue
  fi
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/$name.key" 2>/dev/null
  openssl req -new -key "$TMP/$name.key" -subj "/CN=localhost" -out "$TMP/$name.csr" 2>/dev/null
  openssl x509 -req -in "$TMP/$name.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -sha256 -days "$DAYS" \
    -extfile "$TMP/leaf.ext" -out "$TMP/$name.pem" 2>/dev/null
  chmod 600 "$TMP/$name.key"
  mv "$TMP/$name.key" "$key"
  mv "$TMP/$name.pem" "$pem"
done
