"""Sends a signed batch to the gateway (Ed25519; see docs/api.md, "Signed requests").

    OVERWATCH_URL=https://ingest.example.com KEY_ID=<key id> PRIVATE_KEY=client.pem \\
        python docs/examples/sign.py batch.json

Needs the `cryptography` package; the HTTP part is the standard library.
"""

import base64
import hashlib
import os
import secrets
import sys
import time
import urllib.error
import urllib.request

from cryptography.hazmat.primitives.serialization import load_pem_private_key


def signed_headers(private_key, key_id, method, path_and_query, body):
    ts = str(int(time.time()))
    nonce = secrets.token_hex(16)
    message = "\n".join([
        "OVERWATCH-ED25519-V1", method, path_and_query, ts, nonce,
        hashlib.sha256(body).hexdigest(),
    ]).encode()
    signature = base64.b64encode(private_key.sign(message)).decode()
    return {
        "x-overwatch-key-id": key_id,
        "x-overwatch-timestamp": ts,
        "x-overwatch-nonce": nonce,
        "x-overwatch-signature": signature,
    }


def main():
    with open(sys.argv[1], "rb") as f:
        body = f.read()
    with open(os.environ["PRIVATE_KEY"], "rb") as f:
        private_key = load_pem_private_key(f.read(), password=None)
    headers = {"content-type": "application/json"}
    headers.update(signed_headers(private_key, os.environ["KEY_ID"], "POST", "/ingest", body))
    req = urllib.request.Request(os.environ["OVERWATCH_URL"] + "/ingest", data=body,
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            print(resp.read().decode())
    except urllib.error.HTTPError as e:
        print(e.read().decode(), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
