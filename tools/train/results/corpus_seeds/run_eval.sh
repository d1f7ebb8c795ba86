#!/usr/bin/env bash
# The learned channel masks of three seeds and the learned block state masks at 16 x 256 on one
# retrained corpus model, measured in the engine against their magnitude controls
# (docs/RESULTS.md, Study 4 "three seeds" and Study 3b "16 x 256").
#
#   MODEL=DIR MASKS=DIR TRAIN_HEAD=train-head.txt TEST=test-head.txt \
#       bash tools/train/results/corpus_seeds/run_eval.sh OUT_DIR
#
# MODEL: the corpus model of run_corpus_masks.sh (its shards, config, index and the committed
# corpus tokenizer); MASKS: its masks/ (chan-P[-sS].sparsity.safetensors, block-50-sS...);
# TRAIN_HEAD: the first 200,000 characters of train.txt (magnitude's calibration). Steps:
#   1. alloc_profiles.py: magnitude at each learned mask's per-layer counts (per seed) and at
#      the same count in every layer (magnitude-uniform-P);
#   2. block_masks magnitude at 50 %: blocks of 16 channels (identity order) and scattered;
#   3. eval_corpus_masks.sh: test-head perplexity of dense and every profile (2 threads);
#   4. BENCH=1: yunmin bench of each learned channel profile (batch 1 and 16, prompt 128).
set -euo pipefail
out=${1:?out dir}
repo=$(cd "$(dirname "$0")/../../../.." && pwd)
Y=${YUNMIN:-$repo/build-test/tools/yunmin}
export PYTHONPATH=$repo/tools/train
mkdir -p "$out/profiles"
alloc=()
for s in 1 2 3; do
    sfx=""; [ "$s" = 1 ] || sfx="-s$s"
    d=$out/profiles/seed$s
    if [ ! -e "$d/magnitude-alloc-90.safetensors" ]; then
        uni=(); [ "$s" = 1 ] && uni=(--uniform)
        nice /usr/bin/python3 "$repo/tools/train/corpus/alloc_profiles.py" --model "$MODEL" \
            --train-text "$TRAIN_HEAD" --alloc-from "0.5=$MASKS/chan-50$sfx.sparsity.safetensors" \
            --alloc-from "0.7=$MASKS/chan-70$sfx.sparsity.safetensors" \
            --alloc-from "0.9=$MASKS/chan-90$sfx.sparsity.safetensors" "${uni[@]}" --out-dir "$d"
    fi
    for p in 50 70 90; do
        alloc+=("learned-chan-$p-s$s=$MASKS/chan-$p$sfx.sparsity.safetensors"
                "magnitude-alloc-$p-s$s=$d/magnitude-alloc-$p.safetensors")
    done
done
for p in 50 70 90; do alloc+=("magnitude-uniform-$p=$out/profiles/seed1/magnitude-uniform-$p.safetensors"); done
[ -e "$out/profiles/blocks/block-magnitude-50.sparsity.safetensors" ] || \
    nice /usr/bin/python3 -m yunmin_train.block_masks magnitude --model "$MODEL" \
        --train-text "$TRAIN_HEAD" --levels 0.5 --out-dir "$out/profiles/blocks"
blocks=("block-magnitude-50=$out/profiles/blocks/block-magnitude-50.sparsity.safetensors"
        "scatter-magnitude-50=$out/profiles/blocks/scatter-magnitude-50.sparsity.safetensors")
for s in 1 2 3; do blocks+=("learned-block-50-s$s-b16=$MASKS/block-50-s$s.sparsity.safetensors"); done
rm -f "$out/perplexity.jsonl"
nice bash "$repo/tools/train/corpus/eval_corpus_masks.sh" "$Y" "$MODEL" "$TEST" \
    "$out/perplexity.jsonl" "${alloc[@]}" "${blocks[@]}"
if [ "${BENCH:-0}" = 1 ]; then
    for s in 1 2 3; do
        sfx=""; [ "$s" = 1 ] || sfx="-s$s"
        for p in 50 70 90; do
            uptime > "$out/engine_bench_chan-$p-s$s.txt"
            nice "$Y" bench --model "$MODEL" --sparsity "$MASKS/chan-$p$sfx.sparsity.safetensors" \
                --batches 1,16 --prompt 128 --steps 32 --rounds 3 --no-floors --threads 2 \
                >> "$out/engine_bench_chan-$p-s$s.txt"
        done
    done
fi
