#!/usr/bin/env bash
# The web playground in a real browser: Debian's chromium, headless, driven by puppeteer-core
# (from npm, pinned in package-lock.json; it downloads no browser), against real yunmind
# daemons on 127.0.0.1 (test.mjs starts and stops them).
#
#   tests/browser/run.sh BUILD_DIR [--screenshots DIR]
#
# Installs puppeteer-core (npm ci) when node_modules is missing, unless
# YUNMIN_BROWSER_NO_INSTALL=1 (then a missing install or chromium skips: exit 77, as meson
# counts a skip). CHROMIUM names another browser binary (default /usr/bin/chromium).
# Exit code: 0 passed, 1 failed, 2 bad usage, 77 skipped.
set -u

here=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 1 ]; then
    echo "usage: $0 BUILD_DIR [--screenshots DIR]" >&2
    exit 2
fi
build=$1
shift
if [ ! -x "$build/server/yunmind" ] || [ ! -x "$build/tools/yunmin" ]; then
    echo "browser: no executables in $build (build it first)" >&2
    exit 2
fi
no_install=${YUNMIN_BROWSER_NO_INSTALL:-0}
chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
    echo "browser: no $chromium (apt-get install chromium, or scripts/deps.sh test)" >&2
    [ "$no_install" = 1 ] && exit 77
    exit 1
fi
for tool in node npm; do
    if ! command -v $tool >/dev/null 2>&1; then
        echo "browser: $tool not found; Node.js 18 or later is needed" >&2
        [ "$no_install" = 1 ] && exit 77
        exit 1
    fi
done
if [ ! -d "$here/node_modules/puppeteer-core" ]; then
    if [ "$no_install" = 1 ]; then
        echo "browser: puppeteer-core not installed (run tests/browser/run.sh once, or npm ci there)" >&2
        exit 77
    fi
    # puppeteer-core never downloads a browser; the variable keeps any puppeteer from trying.
    # Three tries: a registry that drops a connection once should not fail the suite.
    ok=0
    for try in 1 2 3; do
        echo "browser: npm ci (try $try)" >&2
        if (cd "$here" && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund >&2); then
            ok=1
            break
        fi
        sleep 5
    done
    if [ "$ok" != 1 ]; then
        echo "browser: npm ci failed 3 times" >&2
        exit 1
    fi
fi
CHROMIUM=$chromium exec node "$here/test.mjs" "$build" "$@"
