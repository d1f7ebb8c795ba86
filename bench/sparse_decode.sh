#!/bin/bash
# bench/sparse_decode.sh - batch-1 decode speed-up of the sparse engine against its ideal byte
# ratio, repeated (docs/BENCHMARKS.md, "Sparse engine", the decode target).
#
# One `yunmin bench --sparsity` run measures the dense and the sparse model alternately in one
# process (best of $ROUNDS each), so its speed-up is a ratio taken under one set of conditions.
# On a shared machine that ratio still scatters from run to run, so this script repeats the run
# $REPEAT times for each profile, interleaving the profiles (a burst of load hits all of them),
# records the load average before each run, and prints per profile: the ideal byte ratio
# (dense weight bytes read per token / sparse), every speed-up measured, their median, and the
# median / ideal. It also fits decode time per token = a + b * weight bytes over every dense and
# sparse measurement: a estimates the per-token cost that does not shrink with the weights
# (norms, scan, barriers), b the seconds per weight byte (noisy: drift between runs moves both).
#
# usage: bench/sparse_decode.sh OUT_DIR PROFILE.safetensors...
#   env: YUNMIN=path/to/yunmin MODEL=dir|synthetic:mamba-130m REPEAT=5 ROUNDS=5 STEPS=64
#        PROMPT=32 REPORT_ONLY=1 (only print the report of OUT_DIR)
# Profiles: e.g. the magnitude baselines that bench/sparse.sh writes, or `yunmin calibrate
# --baseline magnitude --channel-sparsity S --out P` (see bench/sparse.sh).
set -eu
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: bench/sparse_decode.sh OUT_DIR PROFILE..." >&2; exit 2; }
YUNMIN=${YUNMIN:-build-test/tools/yunmin}
OUT=$1
shift
MODEL=${MODEL:-synthetic:mamba-130m}
REPEAT=${REPEAT:-5}
ROUNDS=${ROUNDS:-5}
STEPS=${STEPS:-64}
PROMPT=${PROMPT:-32}
mkdir -p "$OUT"
run() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$YUNMIN" "$@"; }
modelargs=(--model "${MODEL#synthetic:}")
case "$MODEL" in synthetic:*) modelargs=() ;; esac
if [ -z "${REPORT_ONLY:-}" ]; then
  for p in "$@"; do [ -f "$p" ] || { echo "bench/sparse_decode.sh: no profile $p" >&2; exit 2; }; done
  for i in $(seq 1 "$REPEAT"); do
    for p in "$@"; do
      name=$(basename "$p" .safetensors)
      load=$(cut -d' ' -f1 /proc/loadavg)
      run bench "${modelargs[@]}" --sparsity "$p" --json --no-floors --batches 1 \
        --steps "$STEPS" --rounds "$ROUNDS" --prompt "$PROMPT" >"$OUT/$name.$i.json"
      echo "$name $i $load" >>"$OUT/load.txt"
      echo "done $name run $i (load $load)" >&2
    done
  done
fi
/usr/bin/python3 - "$OUT" <<'PY'
import collections, glob, json, os, re, statistics, sys
out = sys.argv[1]
runs = collections.defaultdict(list)
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    m = re.match(r"(.*)\.(\d+)\.json$", os.path.basename(f))
    if m:
        runs[m.group(1)].append((int(m.group(2)), json.load(open(f))))
loads = [float(l.split()[2]) for l in open(os.path.join(out, "load.txt"))] \
    if os.path.exists(os.path.join(out, "load.txt")) else []
if loads:
    print(f"load average (1 min) before the runs: {min(loads):.2f} - {max(loads):.2f}\n")
print("| profile | channels kept | ideal byte ratio | batch-1 speed-ups measured (sorted) "
      "| median | median / ideal |")
print("|---|---|---|---|---|---|")
points = []
for name, v in sorted(runs.items(), key=lambda kv: kv[1][0][1]["ideal_byte_ratio"]):
    ideal = v[0][1]["ideal_byte_ratio"]
    sps = sorted(j["decode_speedup"]["1"] for _, j in v)
    med = statistics.median(sps)
    kept = v[0][1]["channel_live_fraction"]
    print(f"| {name} | {kept:.3f} | {ideal:.3f} | {' '.join(f'{s:.3f}' for s in sps)} "
          f"| {med:.3f} | **{med / ideal:.2f}** |")
    for i, j in v:
        points.append((j["dense"]["weight_bytes"], 1.0 / j["dense"]["decode_tok_s"]["1"]))
        points.append((j["weight_bytes"], 1.0 / j["decode_tok_s"]["1"]))
if len(points) >= 3:
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    b = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx
    a = my - b * mx
    dense_t = statistics.median(p[1] for p in points if p[0] == max(q[0] for q in points))
    print(f"\nfit over every run (dense and sparse, {n} points): time per token = "
          f"{a * 1e3:.2f} ms + weight bytes / {1e-9 / b:.1f} GB/s; "
          f"the fixed part is {100 * a / dense_t:.1f} % of a dense token")
PY
