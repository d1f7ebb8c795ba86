#!/bin/sh
# Builds yunmin (release) and generates text with the embedded default model.
# Extra arguments go to `yunmin generate` (e.g. -p "JULIET:" -n 200).
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh build
[ -d build/meson-info ] || meson setup build --buildtype=release -Dtests=false >/dev/null
ninja -C build tools/yunmin >/dev/null
if [ "$#" -eq 0 ]; then set -- -p "ROMEO:" -n 200 --echo; fi
exec ./build/tools/yunmin generate "$@"
