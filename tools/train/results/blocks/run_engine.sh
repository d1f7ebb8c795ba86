#!/usr/bin/env bash
# Engine measurements of state-mask profiles (docs/RESULTS.md, "State masks per 16-channel
# block"), from the repository root:
#
#   bash tools/train/results/blocks/run_engine.sh NAME MODEL_DIR PPL_ARGS PROFILE...
#
# For each PROFILE (and "none" = the dense model for perplexity): `yunmin perplexity` with
# PPL_ARGS (one string, e.g. "--file data/tinyshakespeare.txt --tail-fraction 0.1 --ctx 256"),
# appended to NAME-perplexity.jsonl, then REPS (3) runs of `yunmin bench --json` (dense and
# sparse alternating in one process: prefill 128, decode batch 1 and 16, the scan alone on one
# thread), each appended as one line to NAME-bench.jsonl. Only ratios within one bench process
# compare: the machine is shared. BIN (build-test/tools/yunmin), THREADS (2), REPS (3), SKIP_PPL.
set -euo pipefail
NAME=$1 MODEL=$2 PPL_ARGS=$3
shift 3
BIN=${BIN:-build-test/tools/yunmin}
THREADS=${THREADS:-2}
REPS=${REPS:-3}
OUT=$(dirname "$0")
if [ -z "${SKIP_PPL:-}" ]; then
    for prof in none "$@"; do
        args=()
        [ "$prof" != none ] && args=(--sparsity "$prof")
        s=$(date +%s)
        # shellcheck disable=SC2086
        r=$(nice "$BIN" perplexity --model "$MODEL" $PPL_ARGS --threads "$THREADS" "${args[@]}")
        echo "{\"profile\": \"$prof\", \"result\": $r, \"wall_s\": $(( $(date +%s) - s ))}" \
            | tee -a "$OUT/$NAME-perplexity.jsonl"
    done
fi
for prof in "$@"; do
    for rep in $(seq 1 "$REPS"); do
        r=$(nice "$BIN" bench --model "$MODEL" --sparsity "$prof" --batches 1,16 --prompt 128 \
            --steps 32 --rounds 3 --no-floors --threads "$THREADS" --json)
        echo "{\"profile\": \"$prof\", \"rep\": $rep, \"bench\": $(echo "$r" | tr -d '\n')}" \
            >> "$OUT/$NAME-bench.jsonl"
        echo "$prof rep $rep done"
    done
done
