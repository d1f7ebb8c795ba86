#!/bin/sh
# Installs the Debian 12 packages yunmin needs to build and test, when they are missing.
# Usage: scripts/deps.sh [build|test]   (test adds the sanitizer, fuzzing and Python tools)
set -eu
need="meson ninja-build pkg-config gcc libopenblas-dev libjansson-dev libutf8proc-dev check libuv1-dev libmicrohttpd-dev libsodium-dev libhiredis-dev libxxhash-dev"
if [ "${1:-build}" = test ]; then
  need="$need clang libclang-rt-14-dev python3 python3-numpy python3-torch python3-pytest python3-requests redis-server"
  # tests/fixtures/make_chat_template_fixtures.py renders the chat-template fixtures with Jinja2
  need="$need python3-jinja2"
  # test_tiers.py checks the state checksum (XXH3-64) of the files yunmind writes.
  need="$need python3-xxhash"
  # deploy/: nginx runs the multi-replica test and checks its config; systemd-analyze checks
  # the unit file; mmdebstrap builds the image's Debian roots (deploy/image_check.py).
  need="$need nginx systemd mmdebstrap"
  # deploy/monitoring: promtool checks and unit-tests the alert rules.
  need="$need prometheus"
  # test_faults.py: uploads with curl as clients send them; pgrep checks the daemon's name.
  need="$need curl procps"
  # The OpenAI client test runs on Node.js; any node + npm on PATH will do (a NodeSource
  # install included), else Debian's.
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then need="$need nodejs npm"; fi
  # tests/browser: the web playground in Debian's chromium, headless (puppeteer-core drives it).
  need="$need chromium"
fi
missing=""
for p in $need; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
