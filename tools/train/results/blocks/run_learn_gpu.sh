#!/usr/bin/env bash
# Block state masks learned at the GPU protocol's length, several seeds, on the default model
# (docs/RESULTS.md, Study 3b), in one GPU call:
#
#   bash tools/train/results/blocks/run_learn_gpu.sh OUT_DIR
#
# From the repository root. For each level P in $LEVELS and seed in $SEEDS: `block_masks learn`
# in the mask-similarity channel order (the committed shakespeare-maskorder/block-magnitude-P
# profile's scan order), from the magnitude start, $STEPS steps of 16 x 256 tokens; and, at
# 50 % only, the same from a constant start (--init-from-magnitude left out) as the control.
# All runs share the GPU as parallel processes. Profiles and logs go into OUT_DIR/blocks.tar.gz
# (learned-block-P-sS[-const].sparsity.safetensors, *.log.jsonl, *.out).
set -uo pipefail
OUT=${1:?out dir}
LEVELS=${LEVELS:-0.3 0.5 0.7}
SEEDS=${SEEDS:-1 2 3}
STEPS=${STEPS:-200}
DEVICE=${DEVICE:-cuda}
MAXS=${MAXS:-420}
# PYTHON: the interpreter (python3); JOBS: runs at a time (4; each takes ~12 GB of GPU memory:
# 12 at once ran out on an 80 GB card); ONLY: run only these names (space-separated).
JOBS=${JOBS:-4}
ONLY=${ONLY:-}
export PYTHONPATH="tools/train${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
W=$(mktemp -d)
R=tools/train/results/blocks/shakespeare-maskorder
T0=$(date +%s)
pct() { awk -v p="$1" 'BEGIN { printf "%.0f", p * 100 }'; }
pids=()
run() {  # NAME LEVEL SEED EXTRA...
    local name=$1 p=$2 s=$3
    shift 3
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
    "${PYTHON:-python3}" -m yunmin_train.block_masks learn --model models/shakespeare-mamba \
        --text data/tinyshakespeare.txt --order-from "$R/block-magnitude-$(pct "$p").sparsity.safetensors" \
        --state-sparsity "$p" --steps "$STEPS" --batch-size 16 --seq-len 256 --device "$DEVICE" \
        --seed "$s" --max-seconds "$MAXS" --log "$W/$name.log.jsonl" "$@" \
        --out "$W/$name.sparsity.safetensors" > "$W/$name.out" 2>&1 &
    pids+=($!)
}
for p in $LEVELS; do
    for s in $SEEDS; do
        run "learned-block-$(pct "$p")-s$s" "$p" "$s" --init-from-magnitude
    done
done
for s in $SEEDS; do run "learned-block-50-s$s-const" 0.5 "$s"; done
for pid in "${pids[@]}"; do wait "$pid"; done
echo "[$(( $(date +%s) - T0 ))s] all runs done"
tail -qn 1 "$W"/*.out
mkdir -p "$OUT"
tar -C "$W" -czf "$OUT/blocks.tar.gz" .
