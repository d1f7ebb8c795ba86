#!/usr/bin/env bash
# Throughput cost of the state tiers: yunmind with tiers off, with the disk tier (state_dir),
# and with disk + the shared store (session_store, a redis-server started here on a free
# loopback port), all three under bench/loadgen with session traffic.
#
#   bench/tiers_load.sh            (from the repository root; settings via the environment)
#
# The three daemons run side by side (an idle one takes no CPU) and the load goes to one at a
# time, in ROUNDS interleaved rounds whose order rotates, so the machine's drift hits all
# three alike. Client i sends X-Session-Id: <round>-<config>-i on every request, so every
# request stores its session's state: with tiers on, a state file write (and a SET) per
# request, and the response ends only once the state is written. The ratios tok/s (disk) /
# tok/s (off) and (disk + store) / (off) are taken per round; the median and range are
# printed and written to $OUT/table.md with the daemons' tier counters.
#
# Environment (defaults in brackets):
#   BUILD     release build directory, made when missing [build-bench]
#   OUT       results directory [$BUILD/tiers-load-<UTC time>]
#   MODEL     default (models/shakespeare-mamba) or synth (mamba-130m shapes) [default]
#   THREADS   engine threads of each daemon [1]
#   CLIENTS   concurrent clients [8]
#   ROUNDS    interleaved rounds [3]
#   DURATION  measured seconds per run [8]
#   WARMUP    seconds before the window [2]
#   TOKENS    max_tokens per request [32]
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)

BUILD=${BUILD:-build-bench}
OUT=${OUT:-$BUILD/tiers-load-$(date -u +%Y%m%dT%H%M%SZ)}
MODEL=${MODEL:-default}
THREADS=${THREADS:-1}
CLIENTS=${CLIENTS:-8}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
TOKENS=${TOKENS:-32}

log() { echo "tiers_load: $*" >&2; }
command -v redis-server >/dev/null || { log "redis-server is not installed"; exit 2; }

if [ ! -f "$BUILD/build.ninja" ]; then
    log "meson setup $BUILD (release)"
    meson setup "$BUILD" --buildtype=release -Dtests=false >&2
fi
ninja -C "$BUILD" server/yunmind >&2
loadgen=$BUILD/loadgen-tiers
if [ ! -x "$loadgen" ] || [ bench/loadgen.c -nt "$loadgen" ]; then
    cc -std=gnu11 -O2 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
        -Wmissing-prototypes -D_GNU_SOURCE -o "$loadgen" bench/loadgen.c
fi
case $MODEL in
default) dir=$root/models/shakespeare-mamba ;;
synth)
    if [ ! -f "$BUILD/synth-130m/model.safetensors" ]; then
        /usr/bin/python3 bench/make_synth_model.py "$BUILD/synth-130m" >&2
    fi
    dir=$root/$BUILD/synth-130m ;;
*) log "MODEL must be default or synth"; exit 2 ;;
esac

mkdir -p "$OUT"
{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- engine server || echo ' + uncommitted changes')"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
    echo "settings: MODEL=$MODEL THREADS=$THREADS CLIENTS=$CLIENTS ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP TOKENS=$TOKENS"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT/conditions.txt"
cat "$OUT/conditions.txt" >&2

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

rport=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no \
    > "$OUT/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    redis-cli -p "$rport" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
done

http_get() { # http_get PORT PATH -> body on stdout
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
    cat <&3
    exec 3<&-
}

declare -A port
start() { # start NAME ARGS...: a daemon, its port in port[NAME]
    local name=$1; shift
    "$root/$BUILD/server/yunmind" --model "$dir" --port 0 --threads "$THREADS" \
        --max-running 64 --max-batch-tokens 256 --log-level warn "$@" \
        > "$OUT/$name-yunmind.out" 2> "$OUT/$name-yunmind.log" &
    pids+=($!)
    local p=
    for _ in $(seq 1 300); do
        p=$(sed -n 's|^yunmind: listening on http://[^ ]*:\([0-9][0-9]*\)$|\1|p' \
            "$OUT/$name-yunmind.out")
        [ -n "$p" ] && break
        sleep 0.1
    done
    [ -n "$p" ] || { log "$name: yunmind did not start"; exit 1; }
    for _ in $(seq 1 600); do
        http_get "$p" /readyz 2>/dev/null | grep -q '"ready"' && break
        sleep 0.1
    done
    port[$name]=$p
}
mkdir -p "$OUT/state-disk" "$OUT/state-store"
start off
start disk --state-dir "$OUT/state-disk"
start store --state-dir "$OUT/state-store" --state-secret bench-secret \
    --session-store "redis://127.0.0.1:$rport/0"

configs=(off disk store)
for r in $(seq 1 "$ROUNDS"); do
    for k in 0 1 2; do
        name=${configs[$(((r - 1 + k) % 3))]}
        log "round $r/$ROUNDS: $name (load $(cut -d' ' -f1 /proc/loadavg))"
        "$loadgen" --url "http://127.0.0.1:${port[$name]}" --clients "$CLIENTS" \
            --duration "$DURATION" --warmup "$WARMUP" --max-tokens "$TOKENS" \
            --session "r$r-$name" > "$OUT/r$r-$name.json" || log "round $r $name: loadgen reported errors"
    done
done
for name in "${configs[@]}"; do
    http_get "${port[$name]}" /metrics > "$OUT/$name-metrics.txt" 2>/dev/null || true
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/conditions.txt"

/usr/bin/python3 - "$OUT" "$ROUNDS" <<'PY' | tee "$OUT/table.md"
import json, os, sys
out, rounds = sys.argv[1], int(sys.argv[2])
load = lambda n: json.load(open(os.path.join(out, n)))
print(open(os.path.join(out, "conditions.txt")).read())
print("| round | off tok/s | disk tok/s | disk + store tok/s | disk / off | disk + store / off "
      "| TTFT p50 ms off / disk / store | errors |")
print("|---|---|---|---|---|---|---|---|")
rd, rs = [], []
for r in range(1, rounds + 1):
    v = {n: load(f"r{r}-{n}.json") for n in ("off", "disk", "store")}
    a, b, c = (v[n]["tok_s"] for n in ("off", "disk", "store"))
    rd.append(b / a); rs.append(c / a)
    print(f"| {r} | {a:.1f} | {b:.1f} | {c:.1f} | {b / a:.3f} | {c / a:.3f} | "
          + " / ".join(f"{v[n]['ttft_ms']['p50']:.1f}" for n in ("off", "disk", "store"))
          + f" | {sum(v[n]['errors'] for n in v)} |")
med = lambda x: sorted(x)[len(x) // 2] if len(x) % 2 else sum(sorted(x)[len(x) // 2 - 1:len(x) // 2 + 1]) / 2
print()
print(f"disk / off: median {med(rd):.3f} [{min(rd):.3f}-{max(rd):.3f}]; "
      f"disk + store / off: median {med(rs):.3f} [{min(rs):.3f}-{max(rs):.3f}] ({rounds} rounds)")
print()
for n in ("disk", "store"):
    m = {}
    for line in open(os.path.join(out, n + "-metrics.txt"), errors="replace"):
        p = line.split()
        if len(p) == 2 and p[0].startswith("yunmin_state_"):
            m[p[0][len("yunmin_state_"):]] = float(p[1])
    keep = [f"{k} {m[k]:.0f}" for k in ("disk_writes_total", "disk_errors_total",
                                        "store_writes_total", "store_errors_total") if m.get(k)]
    for t in ("disk", "store"):
        c = m.get(t + "_write_seconds_count", 0)
        if c:
            keep.append(f"{t} write {1e3 * m[t + '_write_seconds_sum'] / c:.2f} ms on average")
    print(f"- {n} daemon: " + ", ".join(keep))
PY
log "results in $OUT"
