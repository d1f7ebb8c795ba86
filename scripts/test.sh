#!/bin/bash
# Runs every test of yunmin: unit and conformance tests (Check), CLI tests, the daemon over
# real HTTP (Python requests, and the official openai npm client), the web playground in
# headless chromium (tests/browser), the same suites under
# AddressSanitizer + UndefinedBehaviorSanitizer (leak checks on), the server's tests under
# ThreadSanitizer (loop thread, engine thread, worker pool), the Python toolkit's tests, and a
# short run of every fuzz target, a short soak (mixed traffic; memory, descriptors and errors
# must stay flat), and the deployment files: deploy/validate.sh's checks with nginx,
# systemd-analyze and schema validators, and nginx in front of three replicas
# (tests/integration/test_deploy.py). Installs missing Debian packages first.
# FUZZ_SECONDS (default 10) sets the fuzz time per target, SOAK_SECONDS (default 150) the
# soak's length; YUNMIN_IMAGE_CHECK=1 adds a build and run of the container image without a
# container engine (deploy/image_check.py). The fault tests (tests/integration/test_faults.py)
# run with the unit tests, as meson's `faults` test; docs/RELIABILITY.md describes both.
set -u
cd "$(dirname "$0")/.."
scripts/deps.sh test || { echo "could not install the build dependencies" >&2; exit 1; }

passed=0
failed=0
failures=""
# Each stage's output goes to the terminal and to $logs/NAME.log; the end of the run repeats
# the last lines of every failed stage's log, so a CI system that keeps only the tail of the
# output still shows why a stage failed.
logs=$(mktemp -d "${TMPDIR:-/tmp}/yunmin-test-logs.XXXXXX")
trap 'rm -rf "$logs"' EXIT
stage() { # name command...
  local name=$1; shift
  echo "=== $name"
  # tee in a process substitution, waited for at most 5 s: a daemon a stage leaves behind can
  # hold the pipe without holding up the run.
  local rc=0 tee_pid i
  : >"$logs/$name.log"
  "$@" > >(tee "$logs/$name.log") 2>&1 || rc=$?
  tee_pid=$!
  for i in $(seq 50); do kill -0 "$tee_pid" 2>/dev/null || break; sleep 0.1; done
  if [ "$rc" -eq 0 ]; then passed=$((passed + 1)); echo "=== $name: ok"
  else failed=$((failed + 1)); failures="$failures $name"; echo "=== $name: FAILED (exit $rc)"; fi
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
# The web playground in headless chromium (puppeteer-core from npm, no browser download).
# A failed first run is printed whole and run once more: the test drives a real browser, whose
# start and timing depend on the machine more than any other stage's; a failure that repeats
# fails the stage, and one that does not is named in the summary at the end.
browser() {
  tests/browser/run.sh build-test && return 0
  echo "browser: the first run failed (its output is above); running it once more"
  echo "browser" >>"$logs/retried"
  tests/browser/run.sh build-test
}
build_tsan() {
  setup build-tsan --buildtype=debugoptimized -Db_sanitize=thread -Db_lundef=false &&
    ninja -C build-tsan server/yunmind tools/yunmin tests/server/server_unit_tests >/dev/null
}
# ThreadSanitizer needs a fixed address-space layout (setarch -R) on kernels with high mmap
# randomization; every reported race makes the process exit 66, which fails the stage.
server_tsan() {
  local bin; bin=$(mktemp -d)
  printf '#!/bin/sh\nexec setarch "$(uname -m)" -R %s/build-tsan/server/yunmind "$@"\n' "$PWD" >"$bin/yunmind"
  printf '#!/bin/sh\nexec setarch "$(uname -m)" -R %s/build-tsan/tools/yunmin "$@"\n' "$PWD" >"$bin/yunmin"
  chmod +x "$bin/yunmind" "$bin/yunmin"
  local rc=0
  TSAN_OPTIONS=halt_on_error=0:exitcode=66 CK_FORK=no \
    setarch "$(uname -m)" -R build-tsan/tests/server/server_unit_tests || rc=1
  TSAN_OPTIONS=halt_on_error=0:exitcode=66 \
    /usr/bin/python3 tests/integration/test_server.py "$bin/yunmind" "$bin/yunmin" "$PWD" || rc=1
  TSAN_OPTIONS=halt_on_error=0:exitcode=66 \
    /usr/bin/python3 tests/integration/test_tiers.py "$bin/yunmind" "$bin/yunmin" "$PWD" || rc=1
  rm -rf "$bin"
  return $rc
}
python_toolkit() {
  if [ -d tools/train/tests ]; then
    YUNMIN_BIN=build-test/tools/yunmin /usr/bin/python3 -m pytest -q tools/train/tests
  else
    echo "no toolkit tests"; return 0
  fi
}
deploy_validate() { deploy/validate.sh build-test; }
# Builds deploy/Dockerfile in Debian 12 roots (mmdebstrap, no container engine) and runs the
# image: a few minutes and a few hundred MB from the Debian mirror, so only on request.
deploy_image() { /usr/bin/python3 deploy/image_check.py; }
# nginx with deploy/nginx/yunmin.conf in front of three yunmind processes: spread, adapter
# propagation, sessions, rolling restart, SIGKILL.
deploy_replicas() { /usr/bin/python3 tests/integration/test_deploy.py build-test/server/yunmind "$PWD"; }
soak_short() {
  local secs=${SOAK_SECONDS:-150}
  /usr/bin/python3 tests/soak/soak.py build-test/server/yunmind "$PWD" --duration "$secs" \
    --warmup $((secs * 3 / 10))
}
fuzz_smoke() {
  CC=clang setup build-fuzz --buildtype=debugoptimized -Dfuzz=true -Dtests=false \
    -Db_sanitize=address,undefined -Db_lundef=false && ninja -C build-fuzz >/dev/null &&
    tests/fuzz/run.sh build-fuzz "${FUZZ_SECONDS:-10}"
}

built=0
stage build build_release && built=1
if [ $built = 1 ]; then
  stage unit unit_release && stage openai-client openai_client
  stage browser browser
  stage deploy-validate deploy_validate
  stage deploy-replicas deploy_replicas
  stage soak soak_short
fi
[ "${YUNMIN_IMAGE_CHECK:-0}" = 1 ] && stage deploy-image deploy_image
stage build-asan build_asan && stage unit-asan unit_asan
stage build-tsan build_tsan && stage server-tsan server_tsan
stage python-toolkit python_toolkit
stage fuzz-smoke fuzz_smoke

[ -f "$logs/retried" ] && echo "run a second time after a first failure (see above): $(tr '\n' ' ' <"$logs/retried")"
for name in $failures; do
  echo
  echo "=== $name: the last 60 lines of its output, again"
  tail -n 60 "$logs/$name.log"
done
echo
[ -n "$failures" ] && echo "failed stages:$failures"
echo "stages: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
