#!/bin/bash
# Runs every test of yunmin: unit and conformance tests (Check), CLI tests, the daemon over
# real HTTP (Python requests, and the official openai npm client), the same suites under
# AddressSanitizer + UndefinedBehaviorSanitizer (leak checks on), the Python toolkit's tests,
# and a short run of every fuzz target. Installs missing Debian packages first.
# FUZZ_SECONDS (default 10) sets the fuzz time per target.
set -u
cd "$(dirname "$0")/.."
scripts/deps.sh test || { echo "could not install the build dependencies" >&2; exit 1; }

passed=0
failed=0
failures=""
stage() { # name command...
  local name=$1; shift
  echo "=== $name"
  if "$@"; then passed=$((passed + 1)); echo "=== $name: ok"
  else failed=$((failed + 1)); failures="$failures $name"; echo "=== $name: FAILED"; fi
}

setup() { # dir options...
  local dir=$1; shift
  [ -d "$dir/meson-info" ] || meson setup "$dir" "$@" >/dev/null
}

build_release() { setup build-test --buildtype=release && ninja -C build-test >/dev/null; }
unit_release() { meson test -C build-test --print-errorlogs --verbose --num-processes 1; }
build_asan() {
  setup build-asan --buildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false &&
    ninja -C build-asan >/dev/null
}
unit_asan() {
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    meson test -C build-asan --print-errorlogs --num-processes 1 --timeout-multiplier 4
}
openai_client() { tests/integration/openai_client/run.sh build-test; }
python_toolkit() {
  if [ -d tools/train/tests ]; then
    YUNMIN_BIN=build-test/tools/yunmin /usr/bin/python3 -m pytest -q tools/train/tests
  else
    echo "no toolkit tests"; return 0
  fi
}
fuzz_smoke() {
  CC=clang setup build-fuzz --buildtype=debugoptimized -Dfuzz=true -Dtests=false \
    -Db_sanitize=address,undefined -Db_lundef=false && ninja -C build-fuzz >/dev/null &&
    tests/fuzz/run.sh build-fuzz "${FUZZ_SECONDS:-10}"
}

stage build build_release && stage unit unit_release && stage openai-client openai_client
stage build-asan build_asan && stage unit-asan unit_asan
stage python-toolkit python_toolkit
stage fuzz-smoke fuzz_smoke

echo
[ -n "$failures" ] && echo "failed stages:$failures"
echo "stages: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
