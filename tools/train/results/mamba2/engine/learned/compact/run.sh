#!/bin/bash
# The bench passes of run_learned.sh again, after `yunmin bench` moved to the compact states the
# server allocates (docs/BENCHMARKS.md, "A learned state profile against the magnitude one",
# "Again on compact states"). From the repository root:
#   MODEL=MAMBA2_MODEL PROF=OUT/prof OUT=DIR bash tools/train/results/mamba2/engine/learned/compact/run.sh
# PROF: run_learned.sh's prof/ (state-0.5/0.9-magnitude / -learned-mag.safetensors).
set -eu
Y=${YUNMIN:-build-test/tools/yunmin}; M=${MODEL:?}; P=${PROF:?}; O=${OUT:?}
mkdir -p "$O"
for pass in 1 2; do for l in 0.5 0.9; do for m in magnitude learned-mag; do
  n=state-$l-$m; uptime > "$O/bench16_${n}_$pass.json.uptime"
  nice "$Y" bench --model "$M" --sparsity "$P/$n.safetensors" --json --no-floors --batches 16 \
      --steps 32 --rounds 3 --threads 2 > "$O/bench16_${n}_$pass.json"
done; done; done
for l in 0.5 0.9; do for m in magnitude learned-mag; do
  n=state-$l-$m; uptime > "$O/bench_${n}_1.json.uptime"
  nice "$Y" bench --model "$M" --sparsity "$P/$n.safetensors" --json --no-floors --batches 1 \
      --steps 128 --rounds 5 --threads 2 > "$O/bench_${n}_1.json"
done; done
