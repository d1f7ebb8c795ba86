#!/bin/sh
# Builds yunmin (release) and starts the yunmind daemon on the embedded default model,
# listening on http://127.0.0.1:8080 (Ctrl-C drains and stops it). Extra arguments go to
# yunmind (see `build/server/yunmind --help`), e.g. --port 9000 --threads 1.
# Try it from another terminal:
#   curl -s localhost:8080/v1/completions -H 'Content-Type: application/json' \
#        -d '{"prompt": "ROMEO:", "max_tokens": 60}'
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh build
[ -d build/meson-info ] || meson setup build --buildtype=release -Dtests=false >/dev/null
ninja -C build tools/yunmin server/yunmind >/dev/null
exec ./build/server/yunmind "$@"
