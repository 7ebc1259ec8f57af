#!/usr/bin/env bash
# Create a private CA and a server certificate signed by it, for TLS between server and clients.
#   scripts/make_certs.sh [OUT_DIR] [SERVER_NAMES]
# OUT_DIR defaults to ./certificates; SERVER_NAMES is a comma list of the names and addresses
# clients use to reach the server (default: localhost,127.0.0.1). Then:
#   server.py ... --certificates OUT_DIR/ca.crt OUT_DIR/server.crt OUT_DIR/server.key
#   client.py ... --root_certificates OUT_DIR/ca.crt
# Keep ca.key and server.key private; give clients only ca.crt.
set -euo pipefail
OUT=${1:-certificates}
NAMES=${2:-localhost,127.0.0.1}
DAYS=${DAYS:-365}
mkdir -p "$OUT"
umask 077

san=""
IFS=',' read -ra items <<< "$NAMES"
for name in "${items[@]}"; do
  if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then san+="IP:$name,"; else san+="DNS:$name,"; fi
done
san=${san%,}

openssl req -x509 -newkey rsa:3072 -nodes -days "$DAYS" -subj "/CN=Federated ASR CA" \
  -keyout "$OUT/ca.key" -out "$OUT/ca.crt" 2>/dev/null
openssl req -newkey rsa:3072 -nodes -subj "/CN=${items[0]}" \
  -keyout "$OUT/server.key" -out "$OUT/server.csr" 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
  "$san" > "$OUT/server.ext"
openssl x509 -req -in "$OUT/server.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" \
  -CAcreateserial -days "$DAYS" -extfile "$OUT/server.ext" -out "$OUT/server.crt" 2>/dev/null
rm -f "$OUT/server.csr" "$OUT/server.ext" "$OUT/ca.srl"
chmod 644 "$OUT/ca.crt" "$OUT/server.crt"
echo "make_certs: wrote $OUT/ca.crt $OUT/server.crt $OUT/server.key (names: $NAMES)"
