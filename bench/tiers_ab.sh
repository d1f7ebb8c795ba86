#!/usr/bin/env bash
# Two yunmind binaries with the same disk tier settings under the same session load: the
# throughput of B against A, in interleaved rounds (order alternating), one ratio per round.
#
#   A=/path/to/yunmind-a B=/path/to/yunmind-b bench/tiers_ab.sh
#
# Each daemon gets a state_dir of its own; bench/loadgen sends CLIENTS closed-loop streaming
# clients with --session (every request stores its session's state) to one daemon at a time.
# Prints a markdown table and the median of B / A, for throughput (tok/s) and for CPU per
# generated token (each daemon's utime + stime from /proc/PID/stat over the run, divided by
# the tokens it generated meanwhile, yunmin_generation_tokens_total), and for the state
# writer threads' CPU per state written (threads named ym-disk-writer, ym-store-writer; a
# build without those names shows 0); writes it to $OUT/table.md.
#
# With STORE=1 each daemon also gets the shared store (session_store, state_secret) on a
# redis-server started here on a free loopback port (one database per daemon), so every request
# writes a state file and a SET.
#
# Environment: A, B (required); STORE [0]; BUILD (for the loadgen binary made by tiers_load.sh, or made
# here) [build-test]; OUT [$BUILD/tiers-ab-<UTC time>]; THREADS [1]; CLIENTS [8]; ROUNDS [9];
# DURATION [8]; WARMUP [2]; TOKENS [32].
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
: "${A:?A=yunmind binary}" "${B:?B=yunmind binary}"
BUILD=${BUILD:-build-test}
OUT=${OUT:-$BUILD/tiers-ab-$(date -u +%Y%m%dT%H%M%SZ)}
THREADS=${THREADS:-1}
CLIENTS=${CLIENTS:-8}
ROUNDS=${ROUNDS:-9}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
TOKENS=${TOKENS:-32}
STORE=${STORE:-0}
loadgen=$BUILD/loadgen-tiers
if [ ! -x "$loadgen" ]; then
    cc -std=gnu11 -O2 -Wall -Wextra -Werror -o "$loadgen" bench/loadgen.c
fi
mkdir -p "$OUT/a" "$OUT/b"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) (STORE=$STORE)" > "$OUT/conditions.txt"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
store_a=() store_b=()
if [ "$STORE" = 1 ]; then
    command -v redis-server >/dev/null || { echo "tiers_ab: redis-server is not installed" >&2; exit 2; }
    rport=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no \
        > "$OUT/redis.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 100); do
        redis-cli -p "$rport" ping 2>/dev/null | grep -q PONG && break
        sleep 0.1
    done
    store_a=(--state-secret bench-secret --session-store "redis://127.0.0.1:$rport/1")
    store_b=(--state-secret bench-secret --session-store "redis://127.0.0.1:$rport/2")
fi
# shellcheck source=bench/tiers_lib.sh
. "$root/bench/tiers_lib.sh"
declare -A port pid
start() { # start NAME BINARY [ARGS...]
    local name=$1 bin=$2; shift 2
    set -- "$name" "$bin" "$@"
    "$bin" "${@:3}" --model "$root/models/shakespeare-mamba" --port 0 --threads "$THREADS" \
        --max-running 64 --max-batch-tokens 256 --log-level warn --state-dir "$OUT/$1" \
        > "$OUT/$1-yunmind.out" 2> "$OUT/$1-yunmind.log" &
    pids+=($!)
    pid[$1]=$!
    local p=
    for _ in $(seq 1 300); do
        p=$(sed -n 's|^yunmind: listening on http://[^ ]*:\([0-9][0-9]*\)$|\1|p' \
            "$OUT/$1-yunmind.out" 2>/dev/null || true)
        [ -n "$p" ] && break
        sleep 0.1
    done
    [ -n "$p" ] || { echo "tiers_ab: $1 did not start" >&2; exit 1; }
    sleep 1
    port[$1]=$p
}
start a "$A" ${store_a[@]+"${store_a[@]}"}
start b "$B" ${store_b[@]+"${store_b[@]}"}
for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) -eq 1 ]; then order="a b"; else order="b a"; fi
    for n in $order; do
        echo "tiers_ab: round $r/$ROUNDS: $n (load $(cut -d' ' -f1 /proc/loadavg))" >&2
        c0=$(cpu_ticks "${pid[$n]}"); g0=$(gen_tokens "$n")
        w0=$(writer_ticks "${pid[$n]}"); s0=$(states "$n")
        "$loadgen" --url "http://127.0.0.1:${port[$n]}" --clients "$CLIENTS" \
            --duration "$DURATION" --warmup "$WARMUP" --max-tokens "$TOKENS" \
            --session "r$r-$n" > "$OUT/r$r-$n.json"
        sleep 0.5 # requests cut at the window's end finish before the reading
        c1=$(cpu_ticks "${pid[$n]}"); g1=$(gen_tokens "$n")
        w1=$(writer_ticks "${pid[$n]}"); s1=$(states "$n")
        echo "{\"cpu_ticks\": $((c1 - c0)), \"gen_tokens\": $((g1 - g0)), \"writer_ticks\": $((w1 - w0)), \"states\": $((s1 - s0))}" \
            > "$OUT/r$r-$n.cpu.json"
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/conditions.txt"
/usr/bin/python3 - "$OUT" "$ROUNDS" "$(getconf CLK_TCK)" <<'PY' | tee "$OUT/table.md"
import json, os, statistics, sys
out, rounds, tck = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
load = lambda n: json.load(open(os.path.join(out, n)))
print(open(os.path.join(out, "conditions.txt")).read())
print("| round | A tok/s | B tok/s | B / A | A CPU us/token | B CPU us/token | CPU B / A "
      "| writers' CPU us/state A / B | writers B / A | errors |")
print("|---|---|---|---|---|---|---|---|---|---|")
q, qc, qw = [], [], []
for r in range(1, rounds + 1):
    a, b = (load(f"r{r}-{n}.json") for n in "ab")
    ca, cb = (load(f"r{r}-{n}.cpu.json") for n in "ab")
    ua, ub = (1e6 * c["cpu_ticks"] / tck / max(c["gen_tokens"], 1) for c in (ca, cb))
    wa, wb = (1e6 * c["writer_ticks"] / tck / max(c["states"], 1) for c in (ca, cb))
    q.append(b["tok_s"] / a["tok_s"])
    qc.append(ub / ua)
    qw.append(wb / wa if wa > 0 else float("nan"))
    print(f"| {r} | {a['tok_s']:.1f} | {b['tok_s']:.1f} | {q[-1]:.3f} | {ua:.1f} | {ub:.1f} | "
          f"{qc[-1]:.3f} | {wa:.0f} / {wb:.0f} | {qw[-1]:.3f} | {a['errors'] + b['errors']} |")
print(f"\nB / A: throughput median {statistics.median(q):.3f} [{min(q):.3f}-{max(q):.3f}]; "
      f"CPU per token median {statistics.median(qc):.3f} [{min(qc):.3f}-{max(qc):.3f}]; "
      f"state writers' CPU per state written median {statistics.median(qw):.3f} "
      f"[{min(qw):.3f}-{max(qw):.3f}] ({rounds} rounds)")
PY
