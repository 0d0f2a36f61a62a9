#!/usr/bin/env bash
# Refreshes the enrichment data the gateway embeds (shared/data/) from npm:
#   uap-core             -> uap-regexes.yaml      (user-agent parsing, Apache-2.0)
#   crawler-user-agents  -> crawler-patterns.txt  (bot patterns, MIT)
# Usage: deploy/update-enrichment-data.sh [UAP_VERSION] [CRAWLER_VERSION]
set -euo pipefail
UAP="${1:-0.18.0}"
CRAWLERS="${2:-1.60.0}"
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uap-core@$UAP" "crawler-user-agents@$CRAWLERS" >/dev/null)
mkdir -p "$work/uap" "$work/cua"
tar xzf "$work/uap-core-$UAP.tgz" -C "$work/uap"
tar xzf "$work/crawler-user-agents-$CRAWLERS.tgz" -C "$work/cua"
cp "$work/uap/package/regexes.yaml" shared/data/uap-regexes.yaml
python3 - "$work/cua/package/crawler-user-agents.json" "$CRAWLERS" > shared/data/crawler-patterns.txt <<'PY'
import json, sys
print("# Bot user-agent patterns (one regular expression per line) from the npm package")
print("# crawler-user-agents %s, MIT License, Copyright (c) 2017 Martin Monperrus." % sys.argv[2])
print("# Regenerate with deploy/update-enrichment-data.sh.")
for entry in json.load(open(sys.argv[1])):
    print(entry["pattern"])
PY
echo "updated shared/data (uap-core $UAP, crawler-user-agents $CRAWLERS)"
