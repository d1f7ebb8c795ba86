#!/usr/bin/env bash
# Throughput and CPU cost of the state tiers: yunmind with tiers off, with the disk tier
# (state_dir), and with disk + the shared store (session_store, a redis-server started here on
# a free loopback port), all three under bench/loadgen with session traffic.
#
#   bench/tiers_load.sh            (from the repository root; settings via the environment)
#   BUILD=build-test ROUNDS=5 TOKENS="32 256" bench/tiers_load.sh
#
# The three daemons run side by side (an idle one takes no CPU) and the load goes to one at a
# time, in ROUNDS interleaved rounds whose order rotates, so the machine's drift hits all
# three alike. Client i sends X-Session-Id: <round>-<config>-i on every request, so every
# request stores its session's state: with tiers on, a state file write (and a SET) per
# request, and the response ends only once the state is written.
#
# Two measures per run, both printed per round and as a median over the rounds:
# - throughput, tok/s (loadgen's measured window), as ratios (disk) / (off) and (disk + store)
#   / (off) taken within each round;
# - CPU per generated token: the daemon's utime + stime (/proc/PID/stat) from just before to
#   just after the run, divided by the tokens it generated meanwhile (its
#   yunmin_generation_tokens_total), in microseconds; for disk + store also redis-server's CPU
#   over the same run. On a saturated machine a CPU-bound daemon's throughput cost is its CPU
#   cost per token, and CPU time is far less disturbed by other processes than wall time, so
#   this ratio resolves what the throughput ratio cannot on a shared machine;
# - the state writer threads' own CPU (threads named ym-disk-writer and ym-store-writer in
#   /proc/PID/task): their share of the daemon's CPU, per state written and per token. This
#   part of the cost does not depend on how the engine batched its rows, which moves the CPU
#   per token of every configuration (tiers off included) by ±10 % from round to round here.
# Each value of TOKENS is one load (max_tokens per request: 32 is the worst case, a 390 KB
# state written per 32 tokens; 256 is what a chat user's turn produces); each gets its own
# rounds and table. Results: $OUT/table.md, with the daemons' tier counters.
#
# Environment (defaults in brackets):
#   BUILD     release build directory, made when missing [build-bench]
#   OUT       results directory [$BUILD/tiers-load-<UTC time>]
#   MODEL     default (models/shakespeare-mamba) or synth (mamba-130m shapes) [default]
#   THREADS   engine threads of each daemon [1]
#   CLIENTS   concurrent clients [8]
#   ROUNDS    interleaved rounds per load [3]
#   DURATION  measured seconds per run [8]
#   WARMUP    seconds before the window [2]
#   TOKENS    max_tokens per request, one load per value ["32 256"]
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
TOKENS=${TOKENS:-32 256}

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
redis_pid=$!
for _ in $(seq 1 100); do
    redis-cli -p "$rport" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
done


# shellcheck source=bench/tiers_lib.sh
. "$root/bench/tiers_lib.sh"
declare -A port pid
start() { # start NAME ARGS...: a daemon, its port in port[NAME], its pid in pid[NAME]
    local name=$1; shift
    "$root/$BUILD/server/yunmind" --model "$dir" --port 0 --threads "$THREADS" \
        --max-running 64 --max-batch-tokens 256 --log-level warn "$@" \
        > "$OUT/$name-yunmind.out" 2> "$OUT/$name-yunmind.log" &
    pids+=($!)
    pid[$name]=$!
    local p=
    for _ in $(seq 1 300); do
        p=$(sed -n 's|^yunmind: listening on http://[^ ]*:\([0-9][0-9]*\)$|\1|p' \
            "$OUT/$name-yunmind.out" 2>/dev/null || true)
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

echo "clk_tck: $(getconf CLK_TCK)" >> "$OUT/conditions.txt"

configs=(off disk store)
for tok in $TOKENS; do
    for r in $(seq 1 "$ROUNDS"); do
        for k in 0 1 2; do
            name=${configs[$(((r - 1 + k) % 3))]}
            log "load $tok tokens, round $r/$ROUNDS: $name (load $(cut -d' ' -f1 /proc/loadavg))"
            c0=$(cpu_ticks "${pid[$name]}"); rc0=$(cpu_ticks "$redis_pid"); g0=$(gen_tokens "$name")
            w0=$(writer_ticks "${pid[$name]}"); s0=$(states "$name")
            "$loadgen" --url "http://127.0.0.1:${port[$name]}" --clients "$CLIENTS" \
                --duration "$DURATION" --warmup "$WARMUP" --max-tokens "$tok" \
                --session "t$tok-r$r-$name" > "$OUT/t$tok-r$r-$name.json" ||
                log "load $tok round $r $name: loadgen reported errors"
            sleep 0.5 # requests cut at the window's end finish (cancelled) before the reading
            c1=$(cpu_ticks "${pid[$name]}"); rc1=$(cpu_ticks "$redis_pid"); g1=$(gen_tokens "$name")
            w1=$(writer_ticks "${pid[$name]}"); s1=$(states "$name")
            echo "{\"cpu_ticks\": $((c1 - c0)), \"redis_cpu_ticks\": $((rc1 - rc0)), \"gen_tokens\": $((g1 - g0)), \"writer_ticks\": $((w1 - w0)), \"states\": $((s1 - s0))}" \
                > "$OUT/t$tok-r$r-$name.cpu.json"
        done
    done
done
for name in "${configs[@]}"; do
    http_get "${port[$name]}" /metrics > "$OUT/$name-metrics.txt" 2>/dev/null || true
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/conditions.txt"

/usr/bin/python3 - "$OUT" "$ROUNDS" "$TOKENS" "$(getconf CLK_TCK)" <<'PY' | tee "$OUT/table.md"
import json, os, sys
out, rounds, loads, tck = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), int(sys.argv[4])
load = lambda n: json.load(open(os.path.join(out, n)))
med = lambda x: sorted(x)[len(x) // 2] if len(x) % 2 else sum(sorted(x)[len(x) // 2 - 1:len(x) // 2 + 1]) / 2
rng = lambda x: f"median {med(x):.3f} [{min(x):.3f}-{max(x):.3f}]"
names = ("off", "disk", "store")
print(open(os.path.join(out, "conditions.txt")).read())
print("Columns: tok/s in loadgen's window; CPU us/token = the daemon's utime + stime over the")
print("whole run (warm-up included) / the tokens it generated in that time; store+redis adds")
print("redis-server's CPU over the same run. Ratios are against tiers off in the same round.")
for tok in loads:
    print(f"\n## {tok} tokens per request\n")
    print("| round | tok/s off / disk / store | disk / off | store / off "
          "| CPU us/token off / disk / store (store+redis) | CPU disk / off | CPU store / off "
          "| CPU store+redis / off | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    td, ts, cd, cs, csr = [], [], [], [], []
    for r in range(1, rounds + 1):
        v = {n: load(f"t{tok}-r{r}-{n}.json") for n in names}
        c = {n: load(f"t{tok}-r{r}-{n}.cpu.json") for n in names}
        us = {n: 1e6 * c[n]["cpu_ticks"] / tck / max(c[n]["gen_tokens"], 1) for n in names}
        usr = 1e6 * (c["store"]["cpu_ticks"] + c["store"]["redis_cpu_ticks"]) / tck / max(
            c["store"]["gen_tokens"], 1)
        a, b, s_ = (v[n]["tok_s"] for n in names)
        td.append(b / a); ts.append(s_ / a)
        cd.append(us["disk"] / us["off"]); cs.append(us["store"] / us["off"])
        csr.append(usr / us["off"])
        print(f"| {r} | {a:.1f} / {b:.1f} / {s_:.1f} | {b / a:.3f} | {s_ / a:.3f} | "
              f"{us['off']:.1f} / {us['disk']:.1f} / {us['store']:.1f} ({usr:.1f}) | "
              f"{cd[-1]:.3f} | {cs[-1]:.3f} | {csr[-1]:.3f} | "
              f"{sum(v[n]['errors'] for n in v)} |")
    print()
    print(f"- throughput ({tok} tokens): disk / off {rng(td)}; disk + store / off {rng(ts)}")
    print(f"- CPU per token ({tok} tokens): disk / off {rng(cd)}; disk + store / off {rng(cs)}; "
          f"with redis-server's CPU {rng(csr)}")
    print()
    print("| round | writers' share of the daemon's CPU, disk / store | writers' CPU us per state, "
          "disk / store | states written, disk / store | writers' CPU us per token, disk / store |")
    print("|---|---|---|---|---|")
    sh = {"disk": [], "store": []}
    for r in range(1, rounds + 1):
        c = {n: load(f"t{tok}-r{r}-{n}.cpu.json") for n in ("disk", "store")}
        for n in c:
            sh[n].append(c[n]["writer_ticks"] / max(c[n]["cpu_ticks"], 1))
        f = lambda n, k: 1e6 * c[n]["writer_ticks"] / tck / max(c[n][k], 1)
        print(f"| {r} | {100 * sh['disk'][-1]:.1f} % / {100 * sh['store'][-1]:.1f} % | "
              f"{f('disk', 'states'):.0f} / {f('store', 'states'):.0f} | "
              f"{c['disk']['states']} / {c['store']['states']} | "
              f"{f('disk', 'gen_tokens'):.2f} / {f('store', 'gen_tokens'):.2f} |")
    print()
    print(f"- writers' share of the daemon's CPU ({tok} tokens): disk {rng(sh['disk'])}; "
          f"disk + store {rng(sh['store'])} (on a saturated machine, about the throughput "
          f"the writes cost)")
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
