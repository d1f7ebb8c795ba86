#!/usr/bin/env bash
# The official openai npm client against a real yunmind.
#
#   tests/integration/openai_client/run.sh BUILD_DIR [extra yunmind flags...]
#
# Installs the pinned client (npm ci) when node_modules is missing, starts
# BUILD_DIR/server/yunmind --port 0 --threads 1 (plus the extra flags, e.g. --model DIR),
# reads the port from its "yunmind: listening on http://127.0.0.1:PORT" line, waits for
# /readyz = 200, runs test.mjs, then sends SIGTERM and checks that the daemon exits 0.
# Exit code: 0 when all of that passed, 1 otherwise, 2 on bad usage.
set -u

here=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 1 ]; then
    echo "usage: $0 BUILD_DIR [yunmind flags...]" >&2
    exit 2
fi
build=$1
shift
yunmind=$build/server/yunmind
if [ ! -x "$yunmind" ]; then
    echo "openai_client: no executable $yunmind (build it first)" >&2
    exit 2
fi
for tool in node npm; do
    if ! command -v $tool >/dev/null 2>&1; then
        echo "openai_client: $tool not found; Node.js 18 or later is needed" >&2
        exit 2
    fi
done

if [ ! -d "$here/node_modules/openai" ]; then
    echo "openai_client: npm ci" >&2
    (cd "$here" && npm ci --no-audit --no-fund >&2) || {
        echo "openai_client: npm ci failed" >&2
        exit 1
    }
fi

# The id the server will announce: served_model_name, else the model directory's name.
model_id=$("$yunmind" --port 0 --threads 1 "$@" --print-config | node -e '
    let s = "";
    process.stdin.on("data", d => s += d).on("end", () => {
        const c = JSON.parse(s);
        const dir = String(c.model).replace(/\/+$/, "");
        console.log(c.served_model_name || dir.slice(dir.lastIndexOf("/") + 1));
    });') || {
    echo "openai_client: yunmind --print-config failed" >&2
    exit 1
}

tmp=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
    echo "openai_client: $*" >&2
    echo "--- yunmind stderr (last 40 lines) ---" >&2
    tail -n 40 "$tmp/stderr" >&2
    exit 1
}

"$yunmind" --port 0 --threads 1 "$@" >"$tmp/stdout" 2>"$tmp/stderr" &
pid=$!

# The listening line comes right after the socket is bound, before the model loads.
port=
for _ in $(seq 1 300); do
    port=$(sed -n 's|^yunmind: listening on http://[^ ]*:\([0-9][0-9]*\)$|\1|p' "$tmp/stdout")
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || fail "yunmind exited before listening"
    sleep 0.1
done
[ -n "$port" ] || fail "no 'listening' line on stdout within 30 s"
url=http://127.0.0.1:$port

# /readyz turns 200 once the model is loaded and the engine runs.
node -e '
    const url = process.argv[1] + "/readyz";
    const deadline = Date.now() + 120000;
    (async () => {
        for (;;) {
            try {
                if ((await fetch(url)).status === 200)
                    return;
            } catch (e) {}
            if (Date.now() > deadline) {
                console.error("openai_client: " + url + " not 200 within 120 s");
                process.exit(1);
            }
            await new Promise(r => setTimeout(r, 100));
        }
    })();' "$url" || fail "the server did not become ready"

node "$here/test.mjs" "$url" "$model_id"
test_rc=$?

kill -TERM "$pid"
# Drain waits for running requests (none by now); give it the default drain timeout and more.
for _ in $(seq 1 400); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then
    fail "yunmind still running 40 s after SIGTERM"
fi
wait "$pid"
daemon_rc=$?
pid=
if [ "$daemon_rc" -ne 0 ]; then
    fail "yunmind exited with status $daemon_rc after SIGTERM, want 0"
fi
if [ "$test_rc" -ne 0 ]; then
    fail "test.mjs failed (exit $test_rc)"
fi
echo "openai_client: passed; yunmind exited 0 after SIGTERM" >&2
exit 0
