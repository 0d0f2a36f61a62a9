#!/usr/bin/env bash
# Sends a signed batch to the gateway (Ed25519; see docs/api.md, "Signed requests").
#
#   OVERWATCH_URL=https://ingest.example.com KEY_ID=<key id> PRIVATE_KEY=client.pem \
#     docs/examples/sign.sh batch.json
#
# Needs openssl 3 (Ed25519 with -rawin), curl and coreutils.
set -euo pipefail
body="$1"
url="${OVERWATCH_URL:?set OVERWATCH_URL}"
key_id="${KEY_ID:?set KEY_ID}"
private_key="${PRIVATE_KEY:?set PRIVATE_KEY}"

ts=$(date +%s)
nonce=$(openssl rand -hex 16)
digest=$(openssl dgst -sha256 -r "$body" | cut -d' ' -f1)
message=$(mktemp)
trap 'rm -f "$message"' EXIT
# The signed message: scheme, method, path and query, timestamp, nonce and the
# body's SHA-256 in hex, one per line, no trailing newline.
printf 'OVERWATCH-ED25519-V1\nPOST\n/ingest\n%s\n%s\n%s' "$ts" "$nonce" "$digest" > "$message"
signature=$(openssl pkeyutl -sign -inkey "$private_key" -rawin -in "$message" | base64 -w0)

curl --silent --show-error --fail-with-body "$url/ingest" \
  -H "content-type: application/json" \
  -H "x-overwatch-key-id: $key_id" \
  -H "x-overwatch-timestamp: $ts" \
  -H "x-overwatch-nonce: $nonce" \
  -H "x-overwatch-signature: $signature" \
  --data-binary "@$body"
