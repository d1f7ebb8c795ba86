#!/bin/sh
# Builds yunmin (release) and starts the yunmind daemon on the embedded default model,
# listening on http://127.0.0.1:8080 (Ctrl-C drains and stops it), with adapter uploads on:
# uploaded adapters are kept in data/adapters/ in this checkout (ignored by git; set
# YUNMIN_ADAPTER_DIR to keep them elsewhere, or YUNMIN_ADAPTER_DIR= to turn uploads off).
# Extra arguments go to yunmind (see `build/server/yunmind --help`), e.g. --port 9000.
# Try it from another terminal:
#   curl -s localhost:8080/v1/completions -H 'Content-Type: application/json' \
#        -d '{"prompt": "ROMEO:", "max_tokens": 60}'
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh build
if [ ! -d build/meson-info ]; then
    echo "run.sh: configuring build/ (meson setup)" >&2
    meson setup build --buildtype=release -Dtests=false >&2
fi
echo "run.sh: building (ninja -C build)" >&2
ninja -C build tools/yunmin server/yunmind >&2
if [ -z "${YUNMIN_ADAPTER_DIR+set}" ]; then
    YUNMIN_ADAPTER_DIR=$(pwd)/data/adapters
    mkdir -p "$YUNMIN_ADAPTER_DIR"
fi
export YUNMIN_ADAPTER_DIR
echo "run.sh: starting build/server/yunmind (adapter uploads: ${YUNMIN_ADAPTER_DIR:-off})" >&2
exec ./build/server/yunmind "$@"
