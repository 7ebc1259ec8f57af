#!/usr/bin/env bash
# A private CA and a server certificate signed by it, for TLS between server and clients; and,
# with --client, a client certificate from that CA for one site. ECDSA P-256 keys (made at once,
# where RSA-3072 took seconds each).
#   scripts/make_certs.sh [OUT_DIR] [SERVER_NAMES]
#   scripts/make_certs.sh --client NAME [OUT_DIR]
# OUT_DIR defaults to ./certificates; SERVER_NAMES is a comma list of the names and addresses
# clients use to reach the server (default: localhost,127.0.0.1). localhost and 127.0.0.1 are
# always added: the server's own processes (the proxy, flower-superexec, the operator's flwr on
# the server host) reach the SuperLink there. Then:
#   server.py ... --certificates OUT_DIR/ca.crt OUT_DIR/server.crt OUT_DIR/server.key
#   client.py ... --root_certificates OUT_DIR/ca.crt
# --client NAME writes OUT_DIR/NAME.crt and OUT_DIR/NAME.key (usable for client authentication
# only, never as a server's), signed with OUT_DIR/ca.key: the site shows it through its proxy
# (scripts/proxy.py grpc-client) to the server's (scripts/proxy.py grpc-server).
# Keep ca.key, server.key and every NAME.key private; give clients ca.crt (and a site its own
# NAME.crt and NAME.key).
set -euo pipefail
DAYS=${DAYS:-365}
umask 077

if [ "${1:-}" = "--client" ]; then
  NAME=${2:?"usage: scripts/make_certs.sh --client NAME [OUT_DIR]"}
  OUT=${3:-certificates}
  if [[ ! $NAME =~ ^[A-Za-z0-9._-]+$ ]]; then
    echo "error: --client $NAME: use letters, digits, '.', '_' and '-' only" >&2; exit 2
  fi
  if [ ! -f "$OUT/ca.key" ] || [ ! -f "$OUT/ca.crt" ]; then
    echo "error: $OUT/ca.key: no such file (make the CA first: scripts/make_certs.sh $OUT)" >&2
    exit 2
  fi
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$NAME" \
    -keyout "$OUT/$NAME.key" -out "$OUT/$NAME.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' \
    > "$OUT/$NAME.ext"
  openssl x509 -req -in "$OUT/$NAME.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" \
    -CAcreateserial -days "$DAYS" -extfile "$OUT/$NAME.ext" -out "$OUT/$NAME.crt" 2>/dev/null
  rm -f "$OUT/$NAME.csr" "$OUT/$NAME.ext" "$OUT/ca.srl"
  chmod 644 "$OUT/$NAME.crt"
  echo "make_certs: wrote $OUT/$NAME.crt $OUT/$NAME.key (client certificate for $NAME)"
  exit 0
fi

OUT=${1:-certificates}
NAMES=${2:-localhost,127.0.0.1}
mkdir -p "$OUT"

san=""
IFS=',' read -ra items <<< "$NAMES"
for extra in localhost 127.0.0.1; do
  [[ ",$NAMES," == *",$extra,"* ]] || items+=("$extra")
done
for name in "${items[@]}"; do
  if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then san+="IP:$name,"; else san+="DNS:$name,"; fi
done
san=${san%,}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days "$DAYS" -subj "/CN=Federated ASR CA" \
  -keyout "$OUT/ca.key" -out "$OUT/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=${items[0]}" \
  -keyout "$OUT/server.key" -out "$OUT/server.csr" 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
  "$san" > "$OUT/server.ext"
openssl x509 -req -in "$OUT/server.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" \
  -CAcreateserial -days "$DAYS" -extfile "$OUT/server.ext" -out "$OUT/server.crt" 2>/dev/null
rm -f "$OUT/server.csr" "$OUT/server.ext" "$OUT/ca.srl"
chmod 644 "$OUT/ca.crt" "$OUT/server.crt"
echo "make_certs: wrote $OUT/ca.crt $OUT/server.crt $OUT/server.key (names: $(IFS=,; echo "${items[*]}"))"
