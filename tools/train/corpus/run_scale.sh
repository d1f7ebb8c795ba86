#!/usr/bin/env bash
# The corpus model and the channel-mask study on it, in one GPU call (< 10 min).
#
#   bash tools/train/corpus/run_scale.sh CORPUS_DIR OUT_DIR
#
# cwd: the directory holding tools/train. Why one call: the bf16 model (~53 MB) cannot travel
# back to the GPU machine beside the repository (64 MiB in all), so the study runs where the
# model was trained, right after it.
#   1. run_corpus_model.sh with DEADLINE_S = TOTAL_S - STUDY_S (tokenizer on train.txt, the
#      model trained for what is left, held-out perplexity on $EVAL_FILES, samples, the model
#      packed into OUT_DIR/model/ and OUT_DIR/results.tar.gz);
#   2. yunmin_train.scale_study, one process per seed in $SEEDS sharing the GPU, each given
#      the time left (its probe sizes the mask-learning steps to fit); each writes
#      OUT_DIR/scale_seed<N>.json as rows finish, so a timeout keeps what was done;
#   3. the merged table printed (the committed tables are made from the JSON files).
# TOTAL_S (default 565), STUDY_S (default 190), SEEDS (default "1 2 3"), LEVELS
# (default 0.5,0.9,0.7,0.3,0.85: the most telling first), WORK (default /tmp/corpus-run);
# SHAPE_A, SKIP_TP, TP_S, POST_S, EVAL_FILES, TOKENIZER_JSON pass through to
# run_corpus_model.sh.
set -uo pipefail
CORPUS=${1:?corpus dir}
OUT=${2:?out dir}
T0=$(date +%s)
TOTAL_S=${TOTAL_S:-565}
STUDY_S=${STUDY_S:-190}
SEEDS=${SEEDS:-1 2 3}
LEVELS=${LEVELS:-0.5,0.9,0.7,0.3,0.85}
export WORK=${WORK:-/tmp/corpus-run}
export PYTHONPATH="tools/train${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
mkdir -p "$OUT"

DEADLINE_S=$(( TOTAL_S - STUDY_S )) POST_S=${POST_S:-55} \
    EVAL_FILES=${EVAL_FILES:-test test-head} \
    bash tools/train/corpus/run_corpus_model.sh "$CORPUS" "$OUT"
[ -f "$WORK/model/model.safetensors" ] || { echo "no model: study skipped"; exit 1; }

LEFT=$(( TOTAL_S - $(date +%s) + T0 ))
echo
echo "[$(( $(date +%s) - T0 ))s] scale study: seeds $SEEDS, levels $LEVELS, ${LEFT}s left"
pids=()
for s in $SEEDS; do
    timeout "$LEFT" "$PY" -m yunmin_train.scale_study --model "$WORK/model" \
        --tokenizer "$WORK/tokenizer/tokenizer.json" --text "$CORPUS/train.txt" \
        --val-text "$CORPUS/val.txt" --cache-dir "$WORK/data" --bf16 --seed "$s" \
        --levels "$LEVELS" ${TASK:+--task "$TASK"} --time-budget $(( LEFT - 12 )) ${STUDY_ARGS:-} \
        --out "$OUT/scale_seed$s.json" > "$WORK/scale_seed$s.log" 2>&1 &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
tail -n 4 "$WORK"/scale_seed*.log
"$PY" -m yunmin_train.scale_study --merge "$OUT"/scale_seed*.json --out-dir "$WORK/merged" \
    && cat "$WORK/merged/scale_results.md"
echo "[$(( $(date +%s) - T0 ))s] done"
