#!/usr/bin/env bash
# Provisions the local stack's engines, cached outside the repository in
# $OVERWATCH_CACHE (default ~/.cache/overwatch) so a second run is instant:
#   - the tansu Kafka-API broker, built from crates.io;
#   - a Python venv with chdb-core (the ClickHouse engine), lz4 and PyYAML;
#   - s3s-fs, an S3-compatible server over a directory (cold-storage tests);
#   - promtool (Debian package prometheus) for metric and rule checks.
set -euo pipefail

CACHE="${OVERWATCH_CACHE:-$HOME/.cache/overwatch}"
TANSU_VERSION=0.6.0
CHDB_VERSION=26.9.0
LZ4_VERSION=4.4.5
PYYAML_VERSION=6.0.2
S3S_VERSION=0.13.0-alpha.3

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "provision: '$1' is required but not found: $2" >&2; exit 2; }
}
need cargo "install Rust (https://rustup.rs)"
need python3 "install Python 3.9 or newer"
python3 -c 'import venv' 2>/dev/null || { echo "provision: python3 lacks the venv module (Debian: apt-get install python3-venv)" >&2; exit 2; }

mkdir -p "$CACHE"

TANSU="$CACHE/tansu-$TANSU_VERSION/bin/tansu"
if [ ! -x "$TANSU" ]; then
  echo "provision: building the tansu broker $TANSU_VERSION (first time only; ~20 min on 2 cores)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
    --root "$CACHE/tansu-$TANSU_VERSION" --target-dir "$CACHE/tansu-build"
  rm -rf "$CACHE/tansu-build"
fi

VENV="$CACHE/venv"
STAMP="$VENV/.overwatch-chdb-$CHDB_VERSION-lz4-$LZ4_VERSION-pyyaml-$PYYAML_VERSION"
if [ ! -f "$STAMP" ]; then
  echo "provision: installing chdb-core $CHDB_VERSION into $VENV (first time only)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "chdb-core==$CHDB_VERSION" "lz4==$LZ4_VERSION" "pyyaml==$PYYAML_VERSION"
  "$VENV/bin/python" -c 'from chdb import _chdb; import lz4.block, yaml'
  touch "$STAMP"
fi
# The Python signing client of docs/api.md (run by gateway/tests/signing_clients.rs).
CRYPTOGRAPHY_VERSION=46.0.3
if [ ! -f "$VENV/.overwatch-cryptography-$CRYPTOGRAPHY_VERSION" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "cryptography==$CRYPTOGRAPHY_VERSION"
  "$VENV/bin/python" -c 'from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey'
  touch "$VENV/.overwatch-cryptography-$CRYPTOGRAPHY_VERSION"
fi
S3S="$CACHE/s3s-fs-$S3S_VERSION/bin/s3s-fs"
if [ ! -x "$S3S" ]; then
  echo "provision: building the s3s-fs S3 test server $S3S_VERSION (first time only; ~7 min on 2 cores)"
  cargo install s3s-fs --version "$S3S_VERSION" --locked --features binary \
    --root "$CACHE/s3s-fs-$S3S_VERSION" --target-dir "$CACHE/s3s-build"
  rm -rf "$CACHE/s3s-build"
fi

if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "provision: installing promtool (Debian package prometheus)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null \
      || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null; }
  else
    echo "provision: promtool is required (Debian/Ubuntu: sudo apt-get install prometheus)" >&2
    exit 2
  fi
fi
echo "provision: ready (tansu $TANSU, python $VENV/bin/python, s3s-fs $S3S, $(command -v promtool))"
