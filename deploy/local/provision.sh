#!/usr/bin/env bash
# Provisions the local stack's engines, cached outside the repository in
# $OVERWATCH_CACHE (default ~/.cache/overwatch) so a second run is instant:
#   - the tansu Kafka-API broker, built from crates.io;
#   - a Python venv with chdb-core (the ClickHouse engine) and lz4.
set -euo pipefail

CACHE="${OVERWATCH_CACHE:-$HOME/.cache/overwatch}"
TANSU_VERSION=0.6.0
CHDB_VERSION=26.9.0
LZ4_VERSION=4.4.5

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
STAMP="$VENV/.overwatch-chdb-$CHDB_VERSION-lz4-$LZ4_VERSION"
if [ ! -f "$STAMP" ]; then
  echo "provision: installing chdb-core $CHDB_VERSION into $VENV (first time only)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "chdb-core==$CHDB_VERSION" "lz4==$LZ4_VERSION"
  "$VENV/bin/python" -c 'from chdb import _chdb; import lz4.block'
  touch "$STAMP"
fi
echo "provision: ready (tansu $TANSU, python $VENV/bin/python)"
