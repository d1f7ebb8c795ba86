#!/bin/bash
# bench/weights_speed.sh - speed and memory of the served weight types (docs/BENCHMARKS.md,
# "Low-bit weights").
#
# `yunmin bench --json --weights T` on the synthetic mamba-130m shapes, the types interleaved
# for ROUNDS rounds (best of each kept: drift on a shared machine hits every type alike), plus
# BASE (another build's yunmin, e.g. the main branch's) in the same rounds for the f32 ratio.
# bf16b: bf16 with bf16 activations (YUNMIN_BF16_ACTIVATIONS=1, the opt-in AVX512-BF16 kernel).
# Then one run each with the floors (the bandwidth probe) and the bigger shapes in int8.
# Max RSS of each process comes from /usr/bin/time.
#
# BASE_TYPES: the types BASE runs (default f32; "f32 bf16 int8" for an A/B of every type).
# EXTRA=0 skips int8w and bf16b, FLOORS=0 the floors runs. At the end, the per-round figures
# and ratios (summary.txt).
#
# usage: bench/weights_speed.sh OUT_DIR     env: YUNMIN=... BASE=... ROUNDS=2 BIG=1
set -eu
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/weights_speed.sh OUT_DIR}
YUNMIN=${YUNMIN:-build-test/tools/yunmin}
BASE=${BASE:-}
ROUNDS=${ROUNDS:-2}
BIG=${BIG:-1}
BASE_TYPES=${BASE_TYPES:-f32}
EXTRA=${EXTRA:-1}
FLOORS=${FLOORS:-1}
mkdir -p "$OUT"
run() { # name, then the command
  local name=$1
  shift
  /usr/bin/time -f "%M" -o "$OUT/$name.rss" "$@" >"$OUT/$name.json" 2>"$OUT/$name.err" || true
}
for r in $(seq 1 "$ROUNDS"); do
  for w in f32 bf16 int8; do
    if [ -n "$BASE" ] && [[ " $BASE_TYPES " == *" $w "* ]]; then
      if [ "$w" = f32 ]; then # a build from before --weights existed takes no flag
        run "base-$w-$r" "$BASE" bench --json --no-floors --batches 1,16
      else
        run "base-$w-$r" "$BASE" bench --json --no-floors --batches 1,16 --weights $w
      fi
    fi
    run "$w-$r" "$YUNMIN" bench --json --no-floors --batches 1,16 --weights $w
  done
  if [ "$EXTRA" = 1 ]; then
    run "int8w-$r" env YUNMIN_INT8_ACTIVATIONS=0 "$YUNMIN" bench --json --no-floors \
      --batches 1,16 --weights int8
    run "bf16b-$r" env YUNMIN_BF16_ACTIVATIONS=1 "$YUNMIN" bench --json --no-floors \
      --batches 1,16 --weights bf16
  fi
done
if [ "$FLOORS" = 1 ]; then
  for w in f32 bf16 int8; do
    run "floors-$w" "$YUNMIN" bench --json --batches 1 --weights $w
  done
fi
if [ "$BIG" = 1 ]; then
  for s in mamba-1.4b falcon-mamba-7b; do
    run "int8-$s" "$YUNMIN" bench --json --no-floors --model synthetic:$s --weights int8 \
      --batches 1,16 --prompt 64 --steps 8
  done
fi
/usr/bin/python3 - "$OUT" "$ROUNDS" >"$OUT/summary.txt" <<'PY'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def get(name):
    try:
        with open(os.path.join(out, name + ".json")) as f:
            d = json.load(f)
        return d["prefill_tok_s"], d["decode_tok_s"]["1"], d["decode_tok_s"]["16"]
    except (OSError, ValueError, KeyError):
        return None
names = ["base-f32", "base-bf16", "base-int8", "f32", "bf16", "int8", "int8w", "bf16b"]
print("round name prefill b1 b16 b16/b1")
for r in range(1, rounds + 1):
    for n in names:
        v = get(f"{n}-{r}")
        if v:
            print(f"{r} {n} {v[0]:.1f} {v[1]:.2f} {v[2]:.2f} {v[2] / v[1]:.2f}")
def ratios(a, b, i):
    rs = []
    for r in range(1, rounds + 1):
        x, y = get(f"{a}-{r}"), get(f"{b}-{r}")
        if x and y:
            rs.append(x[i] / y[i])
    return rs
for a, b in [("bf16", "f32"), ("int8", "f32"), ("f32", "base-f32"), ("bf16", "base-bf16"),
             ("int8", "base-int8")]:
    for i, what in enumerate(["prefill", "b1", "b16"]):
        rs = ratios(a, b, i)
        if rs:
            print(f"{a}/{b} {what}: " + " ".join(f"{x:.3f}" for x in rs) +
                  f"  median {statistics.median(rs):.3f}")
PY
echo done >"$OUT/done"
