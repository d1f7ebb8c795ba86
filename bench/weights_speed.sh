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
# usage: bench/weights_speed.sh OUT_DIR     env: YUNMIN=... BASE=... ROUNDS=2 BIG=1
set -eu
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/weights_speed.sh OUT_DIR}
YUNMIN=${YUNMIN:-build-test/tools/yunmin}
BASE=${BASE:-}
ROUNDS=${ROUNDS:-2}
BIG=${BIG:-1}
mkdir -p "$OUT"
run() { # name, then the command
  local name=$1
  shift
  /usr/bin/time -f "%M" -o "$OUT/$name.rss" "$@" >"$OUT/$name.json" 2>"$OUT/$name.err" || true
}
for r in $(seq 1 "$ROUNDS"); do
  [ -n "$BASE" ] && run "base-f32-$r" "$BASE" bench --json --no-floors --batches 1,16
  for w in f32 bf16 int8; do
    run "$w-$r" "$YUNMIN" bench --json --no-floors --batches 1,16 --weights $w
  done
  run "int8w-$r" env YUNMIN_INT8_ACTIVATIONS=0 "$YUNMIN" bench --json --no-floors \
    --batches 1,16 --weights int8
  run "bf16b-$r" env YUNMIN_BF16_ACTIVATIONS=1 "$YUNMIN" bench --json --no-floors \
    --batches 1,16 --weights bf16
done
for w in f32 bf16 int8; do
  run "floors-$w" "$YUNMIN" bench --json --batches 1 --weights $w
done
if [ "$BIG" = 1 ]; then
  for s in mamba-1.4b falcon-mamba-7b; do
    run "int8-$s" "$YUNMIN" bench --json --no-floors --model synthetic:$s --weights int8 \
      --batches 1,16 --prompt 64 --steps 8
  done
fi
echo done >"$OUT/done"
