#!/usr/bin/env bash
# The corpus model retrained, then learned block state masks and learned channel masks on it,
# in one GPU call (< 10 min); the model's bf16 shards come back with the masks so that the
# engine can measure them here.
#
#   bash tools/train/corpus/run_corpus_masks.sh CORPUS_DIR OUT_DIR
#
# cwd: the repository root. CORPUS_DIR holds train.txt, val.txt, test-head.txt (or their .xz;
# CORPUS_DIR is never written). Why one call: the model's weights (58 MB) do not travel to the
# GPU machine with the repository, so it is trained where the masks are learned.
#   0. the token cache (peft_scale tokenize: HF tokenizers, the committed corpus tokenizer);
#   1. run_corpus_model.sh: the d640 x 8 Mamba-1 trained until MODEL_S seconds after the start
#      minus POST_S, held-out perplexity on test-head.txt, samples, bf16 shards;
#   2. mask learning, JOBS processes at a time on the GPU, in this order (the first ones matter
#      most; a job started late gets --max-seconds up to the deadline TOTAL_S - 25):
#        block-50-s1..s3  block_masks learn --state-sparsity 0.5 --init-from-magnitude, seeds
#                         1-3, blocks of 16 channels in identity order
#        chan-50/70/90    masks learn --channel-sparsity P (one threshold for the whole model:
#                         the learned allocation), seed 1
#        block-30-s1, block-70-s1
#        chan-50-sS, chan-70-sS, chan-90-sS  for S in CHAN_SEEDS beyond 1 (seed 1 is chan-P)
#      each STEPS steps of BATCH x 256 tokens of train.txt; BLOCK_ARGS go to every block job
#      (e.g. --order-from PROFILE: blocks in that profile's scan order);
#   3. OUT_DIR: the model's shards (model-0000k-of-0000n.safetensors), model.tar.gz (config,
#      index, the corpus model's logs and evaluations), masks.tar.gz (profiles, logs), run.log.
# The model stays in $WORK/model (WORK=/tmp/peft-scale by default, the directory
# run_peft_scale.sh reads with REUSE_MODEL=1), so a next call on the same machine can use it.
# Settings (environment): TOTAL_S (570), MODEL_S (300), POST_S (40), JOBS (5), STEPS (200),
# BATCH (8), ONLY (job names to run, space-separated, in the order above), CHAN_SEEDS ("1"),
# BLOCK_ARGS, DEVICE (cuda), PYTHON; REUSE_MODEL=1: the model already in $WORK/model (left by
# an earlier call on the same machine) is used, not retrained, and its shards are not sent back.
set -uo pipefail
CORPUS_IN=${1:?corpus dir}
OUT=${2:?out dir}
T0=$(date +%s)
TOTAL_S=${TOTAL_S:-570}
MODEL_S=${MODEL_S:-300}
JOBS=${JOBS:-5}
STEPS=${STEPS:-200}
BATCH=${BATCH:-8}
ONLY=${ONLY:-}
export WORK=${WORK:-/tmp/peft-scale}
export PYTHONPATH="tools/train${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
PY=${PYTHON:-python3}
TOKJ=${TOKENIZER_JSON:-tools/train/corpus/tokenizer/tokenizer.json}
CORPUS=$WORK/corpus
MASKS=$WORK/masks
mkdir -p "$OUT" "$CORPUS" "$MASKS" "$WORK/data"
exec > >(tee "$MASKS/run.log") 2>&1

el() { echo $(( $(date +%s) - T0 )); }
say() { printf '\n[%4ss] %s\n' "$(el)" "$*"; }

pack() {
    say "packing $OUT"
    if [ -d "$WORK/model-out/model" ] && [ "${REUSE_MODEL:-0}" != 1 ]; then
        cp "$WORK"/model-out/model/model-*.safetensors "$OUT/" 2>/dev/null
        mkdir -p "$WORK/pack/corpus_model"
        cp "$WORK"/model-out/model/*.json "$WORK/pack/corpus_model/" 2>/dev/null
        [ -d "$WORK/results" ] && cp -r "$WORK"/results/. "$WORK/pack/corpus_model/"
        rm -f "$WORK/pack/corpus_model/model.safetensors" "$WORK/pack/corpus_model/tokenizer.json"
        tar czf "$OUT/model.tar.gz" -C "$WORK/pack" corpus_model
    fi
    sleep 1
    cp "$MASKS/run.log" "$OUT/run.log" 2>/dev/null
    tar czf "$OUT/masks.tar.gz" -C "$WORK" masks
    ls -l "$OUT"
}
trap pack EXIT

for f in train val test-head; do
    if [ -f "$CORPUS_IN/$f.txt" ]; then cp "$CORPUS_IN/$f.txt" "$CORPUS/$f.txt"
    elif [ -f "$CORPUS_IN/$f.txt.xz" ]; then xz -dc -T0 "$CORPUS_IN/$f.txt.xz" > "$CORPUS/$f.txt"
    else echo "missing $CORPUS_IN/$f.txt(.xz)"; fi
done
ls -l "$CORPUS"

say "0. token cache ($TOKJ)"
"$PY" -m yunmin_train.peft_scale tokenize --tokenizer "$TOKJ" --train-text "$CORPUS/train.txt" \
    --val-text "$CORPUS/val.txt" --cache-dir "$WORK/data" --extra "$CORPUS/test-head.txt" \
    2>&1 | tee "$MASKS/tokenize.log"

MODEL=$WORK/model
if [ "${REUSE_MODEL:-0}" = 1 ] && [ -f "$MODEL/model.safetensors" ]; then
    say "1. the corpus model already in $MODEL (REUSE_MODEL=1: not retrained)"
else
    say "1. the corpus model (run_corpus_model.sh)"
    DEADLINE_S=$(( MODEL_S - $(el) )) POST_S=${POST_S:-40} SKIP_TP=1 EVAL_FILES=test-head \
        SHAPE_A=${SHAPE_A:---d-model 640 --n-layer 8} TOKENIZER_JSON="$TOKJ" \
        bash tools/train/corpus/run_corpus_model.sh "$CORPUS" "$WORK/model-out" \
        > "$MASKS/corpus_model.log" 2>&1
    tail -n 25 "$MASKS/corpus_model.log"
fi
[ -f "$MODEL/model.safetensors" ] || { echo "no model: masks skipped"; exit 1; }
grep -h '"ppl"' "$WORK/results/eval_test-head.json" 2>/dev/null | head -n 1

DEADLINE=$(( TOTAL_S - 25 ))
COMMON=(--model "$MODEL" --tokenizer "$TOKJ" --cache-dir "$WORK/data" --device "${DEVICE:-cuda}"
        --batch-size "$BATCH" --seq-len 256 --steps "$STEPS")
job() {  # NAME MODULE ARGS...: start when fewer than JOBS run, bounded by the deadline
    local name=$1 mod=$2
    shift 2
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
    local left=$(( DEADLINE - $(el) ))
    if [ "$left" -lt 40 ]; then echo "$name: not started (${left}s left)"; return; fi
    echo "[$(el)s] $name: start, --max-seconds $(( left - 10 ))"
    "$PY" -m "yunmin_train.$mod" learn "${COMMON[@]}" "$@" --max-seconds $(( left - 10 )) \
        --log "$MASKS/$name.log.jsonl" --out "$MASKS/$name.sparsity.safetensors" \
        > "$MASKS/$name.out" 2>&1 &
    pids+=($!)
}
pids=()
say "2. masks: $JOBS at a time, deadline ${DEADLINE}s"
# shellcheck disable=SC2086  # BLOCK_ARGS: words
block() {  # LEVEL SEED
    job "block-$1-s$2" block_masks --train-text "$CORPUS/train.txt" --state-sparsity "0.$1" \
        --init-from-magnitude --seed "$2" ${BLOCK_ARGS:-}
}
chan() {  # LEVEL SEED
    local name=chan-$1
    [ "$2" = 1 ] || name=chan-$1-s$2
    job "$name" masks --text "$CORPUS/train.txt" --channel-sparsity "0.$1" --seed "$2" --bf16
}
for s in 1 2 3; do block 50 "$s"; done
for p in 50 70 90; do chan "$p" 1; done
for p in 30 70; do block "$p" 1; done
for s in ${CHAN_SEEDS:-1}; do
    [ "$s" = 1 ] && continue
    for p in 50 70 90; do chan "$p" "$s"; done
done
for p in "${pids[@]}"; do wait "$p"; done   # (a bare wait would also wait for tee)
say "masks done"
for f in "$MASKS"/*.out; do echo "$(basename "$f"): $(tail -n 1 "$f" | cut -c1-300)"; done
nvidia-smi --query-gpu=memory.used --format=csv 2>/dev/null
say "done"
