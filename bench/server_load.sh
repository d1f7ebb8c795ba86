#!/usr/bin/env bash
# Server load benchmark: yunmind under 1, 8, 32, 64 concurrent streaming clients, against the
# engine alone (`yunmin bench`) measured in the same run.
#
#   bench/server_load.sh            (from the repository root; settings via the environment)
#
# For each model and each engine thread count: `yunmin bench --json` (decode tok/s at batch
# 1, 8, 32, 64 without a server), then yunmind with --max-running 64 --max-batch-tokens 256 and
# bench/loadgen at each client count; then PAIRS rounds of (engine decode at batch 1, server
# with 1 client) back to back, whose paired ratios give the server overhead at 1 client with
# the machine's drift mostly cancelled; then SIGTERM (the exit status must be 0). Everything it
# measured goes to $OUT (one JSON per run, the daemon's log and /metrics), and a table to
# stdout and $OUT/table.md.
#
# Environment (defaults in brackets):
#   BUILD     release build directory, made when missing [build-bench]
#   OUT       results directory [$BUILD/server-load-<UTC time>]
#   MODELS    any of: default synth [default synth]
#             default = models/shakespeare-mamba; synth = mamba-130m shapes with random
#             weights, written once to $BUILD/synth-130m by bench/make_synth_model.py
#   THREADS   engine thread counts [1 2]
#   CLIENTS   concurrent clients [1 8 32 64] (an empty value means the default)
#   REPEAT    passes over everything [1]
#   PAIRS     overhead rounds (engine batch 1, then server 1 client, each PAIR_S long) [5]
#   PAIR_S    seconds of each half of a round [6]
#   DURATION_default / DURATION_synth   measured seconds per client count [10 / 20]
#   WARMUP_default / WARMUP_synth       seconds before the window [2 / 5]
#   TOKENS_default / TOKENS_synth       max_tokens per request (ignore_eos: exact) [128 / 32]
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)

BUILD=${BUILD:-build-bench}
OUT=${OUT:-$BUILD/server-load-$(date -u +%Y%m%dT%H%M%SZ)}
MODELS=${MODELS:-default synth}
THREADS=${THREADS:-1 2}
CLIENTS=${CLIENTS:-1 8 32 64}
REPEAT=${REPEAT:-1}
PAIRS=${PAIRS:-5}
PAIR_S=${PAIR_S:-6}
DURATION_default=${DURATION_default:-10}
DURATION_synth=${DURATION_synth:-20}
WARMUP_default=${WARMUP_default:-2}
WARMUP_synth=${WARMUP_synth:-5}
TOKENS_default=${TOKENS_default:-128}
TOKENS_synth=${TOKENS_synth:-32}

log() { echo "server_load: $*" >&2; }

# --- build ---
if [ ! -f "$BUILD/build.ninja" ]; then
    log "meson setup $BUILD (release)"
    meson setup "$BUILD" --buildtype=release -Dtests=false >&2
fi
ninja -C "$BUILD" server/yunmind tools/yunmin >&2
if ninja -C "$BUILD" -t targets all 2>/dev/null | grep -q '^bench/loadgen:'; then
    ninja -C "$BUILD" bench/loadgen >&2
    loadgen=$BUILD/bench/loadgen
else
    # Until the top-level meson.build has subdir('bench').
    loadgen=$BUILD/loadgen
    if [ ! -x "$loadgen" ] || [ bench/loadgen.c -nt "$loadgen" ]; then
        log "cc bench/loadgen.c"
        cc -std=gnu11 -O2 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
            -Wmissing-prototypes -D_GNU_SOURCE -o "$loadgen" bench/loadgen.c
    fi
fi
yunmind=$BUILD/server/yunmind
yunmin=$BUILD/tools/yunmin

model_dir() {
    case $1 in
    default) echo "$root/models/shakespeare-mamba" ;;
    synth)
        if [ ! -f "$BUILD/synth-130m/model.safetensors" ]; then
            log "writing the synthetic 130m-shaped model to $BUILD/synth-130m"
            /usr/bin/python3 bench/make_synth_model.py "$BUILD/synth-130m" >&2
        fi
        echo "$root/$BUILD/synth-130m"
        ;;
    *) log "unknown model '$1' (default or synth)"; exit 2 ;;
    esac
}

mkdir -p "$OUT"
{
    echo "date: $(date -u +%FT%TZ)"
    dirty=$(git diff --quiet HEAD -- engine server adapters || echo ' + uncommitted changes')
    echo "commit: $(git rev-parse HEAD)$dirty"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
    echo "settings: MODELS='$MODELS' THREADS='$THREADS' CLIENTS='$CLIENTS' REPEAT=$REPEAT"
    for m in default synth; do
        eval "echo \"  \$m: \${DURATION_$m}s window, \${WARMUP_$m}s warm-up, \
max_tokens \$TOKENS_$m\""
    done
    echo "  PAIRS=$PAIRS rounds of ${PAIR_S}s + ${PAIR_S}s"
} > "$OUT/conditions.txt"
cat "$OUT/conditions.txt" >&2

pid=
stop_daemon() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        local rc=0
        wait "$pid" || rc=$?
        pid=
        return $rc
    fi
    pid=
    return 0
}
trap 'if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi' EXIT

http_get() { # http_get PORT PATH -> body on stdout (bash's /dev/tcp: no curl needed)
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
    cat <&3
    exec 3<&-
}

for rep in $(seq 1 "$REPEAT"); do
    for m in $MODELS; do
        dir=$(model_dir "$m")
        eval "duration=\$DURATION_$m warmup=\$WARMUP_$m tokens=\$TOKENS_$m"
        for t in $THREADS; do
            tag=r$rep-$m-t$t
            load=$(cut -d' ' -f1-3 /proc/loadavg)
            log "$tag: load average $load; yunmin bench"
            echo "$load" > "$OUT/$tag-load-before.txt"
            "$yunmin" bench --model "$dir" --threads "$t" --json --batches 1,8,32,64 \
                --prompt 128 --steps 32 > "$OUT/$tag-engine.json"

            "$yunmind" --model "$dir" --port 0 --threads "$t" --max-running 64 \
                --max-batch-tokens 256 --log-level warn \
                > "$OUT/$tag-yunmind.out" 2> "$OUT/$tag-yunmind.log" &
            pid=$!
            port=
            for _ in $(seq 1 300); do
                port=$(sed -n 's|^yunmind: listening on http://[^ ]*:\([0-9][0-9]*\)$|\1|p' \
                    "$OUT/$tag-yunmind.out")
                [ -n "$port" ] && break
                sleep 0.1
            done
            [ -n "$port" ] || { log "$tag: yunmind did not start"; exit 1; }
            for _ in $(seq 1 600); do
                http_get "$port" /readyz 2>/dev/null | grep -q '"ready"' && break
                sleep 0.1
            done
            for c in $CLIENTS; do
                log "$tag: $c clients, ${duration}s, max_tokens $tokens"
                # The daemon's own step counters around the run: its engine step time and
                # batch size under this load, to set against `yunmin bench` at that batch.
                http_get "$port" /metrics > "$OUT/$tag-c$c-metrics0.txt" 2>/dev/null || true
                "$loadgen" --url "http://127.0.0.1:$port" --clients "$c" \
                    --duration "$duration" --warmup "$warmup" --max-tokens "$tokens" \
                    > "$OUT/$tag-c$c.json" || log "$tag: $c clients: loadgen reported errors"
                http_get "$port" /metrics > "$OUT/$tag-c$c-metrics1.txt" 2>/dev/null || true
            done
            # Paired rounds for the overhead at 1 client: the engine alone decoding at batch 1
            # (about PAIR_S seconds of steps), then the server with one client for PAIR_S.
            steps=$(/usr/bin/python3 -c 'import json, sys
e = json.load(open(sys.argv[1]))["decode_tok_s"]["1"]
print(max(16, int(e * float(sys.argv[2]))))' "$OUT/$tag-engine.json" "$PAIR_S")
            for k in $(seq 1 "$PAIRS"); do
                log "$tag: overhead round $k/$PAIRS"
                "$yunmin" bench --model "$dir" --threads "$t" --json --batches 1 --prompt 16 \
                    --steps "$steps" > "$OUT/$tag-pair$k-engine.json"
                "$loadgen" --url "http://127.0.0.1:$port" --clients 1 --duration "$PAIR_S" \
                    --warmup 1 --max-tokens "$tokens" > "$OUT/$tag-pair$k-server.json" ||
                    log "$tag: overhead round $k: loadgen reported errors"
            done
            http_get "$port" /metrics > "$OUT/$tag-metrics.txt" 2>/dev/null || true
            cut -d' ' -f1-3 /proc/loadavg > "$OUT/$tag-load-after.txt"
            rc=0
            stop_daemon || rc=$?
            [ "$rc" -eq 0 ] || log "$tag: yunmind exited with status $rc after SIGTERM (want 0)"
            echo "$rc" > "$OUT/$tag-exit.txt"
        done
    done
done

/usr/bin/python3 - "$OUT" <<'EOF' | tee "$OUT/table.md"
import glob, json, os, sys
out = sys.argv[1]
def load(p):
    with open(p) as f:
        return json.load(f)
def counters(p):
    v = {}
    if os.path.exists(p):
        for line in open(p):
            parts = line.split()
            if len(parts) == 2 and parts[0].startswith("yunmin_"):
                v[parts[0]] = float(parts[1])
    return v
def server_steps(prefix):
    """Mean engine step (ms), rows and sequences per step inside yunmind during one level."""
    a, b = counters(prefix + "-metrics0.txt"), counters(prefix + "-metrics1.txt")
    d = lambda k: b.get(k, 0) - a.get(k, 0)
    n = d("yunmin_engine_step_seconds_count")
    if n <= 0:
        return "-", "-"
    return (f"{1e3 * d('yunmin_engine_step_seconds_sum') / n:.2f}",
            f"{d('yunmin_batch_rows_sum') / n:.1f} / {d('yunmin_batch_sequences_sum') / n:.1f}")
rows = []
print("| run | model | thr | clients | tok/s | engine tok/s (batch = clients) | server / engine "
      "| TTFT p50 / p99 ms | ITL p50 / p99 ms | TPOT p50 ms | chunks/token | errors "
      "| load before / after | server step ms | engine step ms (bench) | rows / seqs per step |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for eng_path in sorted(glob.glob(os.path.join(out, "*-engine.json"))):
    tag = os.path.basename(eng_path)[:-len("-engine.json")]
    if "-pair" in tag:
        continue
    rep, model, thr = tag.split("-")
    eng = load(eng_path)
    before = open(os.path.join(out, tag + "-load-before.txt")).read().split()[0]
    after_p = os.path.join(out, tag + "-load-after.txt")
    after = open(after_p).read().split()[0] if os.path.exists(after_p) else "?"
    runs = sorted(glob.glob(os.path.join(out, tag + "-c*.json")),
                  key=lambda p: int(p.rsplit("-c", 1)[1][:-5]))
    for p in runs:
        try:
            r = load(p)
        except ValueError:  # a level cut short: no JSON
            continue
        c = r["clients"]
        e = eng["decode_tok_s"].get(str(c))
        e_s, ratio = (f"{e:.1f}", f"{r['tok_s'] / e:.2f}") if e else ("-", "-")
        print(f"| {rep} | {model} | {thr[1:]} | {c} | {r['tok_s']:.1f} | {e_s} | {ratio} | "
              f"{r['ttft_ms']['p50']:.1f} / {r['ttft_ms']['p99']:.1f} | "
              f"{r['itl_ms']['p50']:.2f} / {r['itl_ms']['p99']:.1f} | {r['tpot_ms']['p50']:.2f} | "
              f"{r['chunks_per_token']:.2f} | {r['errors']} | {before} / {after} | ", end="")
        step, rows = server_steps(p[:-5])
        e_step = f"{1e3 * c / e:.2f}" if e else "-"
        print(f"{step} | {e_step} | {rows} |")
print()
print("Server overhead at 1 client, paired rounds (engine batch-1 decode, then the server with "
      "1 client; median of the rounds' ratios, range in brackets):")
for eng_path in sorted(glob.glob(os.path.join(out, "*-engine.json"))):
    tag = os.path.basename(eng_path)[:-len("-engine.json")]
    if "-pair" in tag:
        continue
    tok, tpot = [], []
    for pe in sorted(glob.glob(os.path.join(out, tag + "-pair*-engine.json"))):
        ps = pe.replace("-engine.json", "-server.json")
        if not os.path.exists(ps):
            continue
        e1, r = load(pe)["decode_tok_s"]["1"], load(ps)
        if r["errors"] == 0 and r["tok_s"] > 0:
            tok.append(r["tok_s"] / e1)
            tpot.append(r["tpot_ms"]["p50"] / (1e3 / e1))
    if not tok:
        continue
    tok.sort(); tpot.sort()
    med = lambda v: v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
    print(f"- {tag}: server tok/s / engine tok/s = {med(tok):.3f} [{tok[0]:.3f}-{tok[-1]:.3f}]; "
          f"per-token time (TPOT p50) / engine step = "
          f"{med(tpot):.3f} [{tpot[0]:.3f}-{tpot[-1]:.3f}] ({len(tok)} rounds)")
print()
print("Server overhead at 1 client, single run (the c1 row against the engine run before it):")
for eng_path in sorted(glob.glob(os.path.join(out, "*-engine.json"))):
    tag = os.path.basename(eng_path)[:-len("-engine.json")]
    if "-pair" in tag:
        continue
    p = os.path.join(out, tag + "-c1.json")
    if not os.path.exists(p):
        continue
    eng, r = load(eng_path), load(p)
    e1 = eng["decode_tok_s"]["1"]
    print(f"- {tag}: server {r['tok_s']:.1f} tok/s, engine {e1:.1f} tok/s -> "
          f"server / engine = {r['tok_s'] / e1:.2f} (TPOT p50 {r['tpot_ms']['p50']:.3f} ms "
          f"vs engine {1e3 / e1:.3f} ms per token)")
EOF
log "results in $OUT"
