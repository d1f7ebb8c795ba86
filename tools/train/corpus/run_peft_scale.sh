#!/usr/bin/env bash
# The corpus model retrained, then PEFT placement with a rank sweep and a recovery fine-tune on
# it, in one GPU call (< 10 min).
#
#   bash tools/train/corpus/run_peft_scale.sh CORPUS_DIR OUT_DIR
#
# cwd: the repository root. CORPUS_DIR holds train.txt, val.txt, test-head.txt (or their .xz,
# unpacked into WORK; CORPUS_DIR is never written). Why one call: the model's bf16 weights do
# not travel to the GPU machine with the repository, so it is trained where the studies run.
#   0. the token cache filled with HF tokenizers (pure-Python tokenizer without them) for the
#      committed corpus tokenizer ($TOKENIZER_JSON) and every text the studies read;
#   1. run_corpus_model.sh: the d640 x 8 Mamba-1 (SHAPE_A, SKIP_TP=1) trained until MODEL_S
#      seconds after the start minus POST_S, held-out perplexity on test-head.txt (the
#      committed corpus model: 29.82), samples; its own tarball is unpacked into OUT_DIR's;
#   2. yunmin_train.peft_scale importance: learned 50 % channel masks -> layer importance,
#      the base model's loss per domain;
#   3. in parallel on the GPU: peft_scale peft for each seed in $SEEDS (the first one's probe
#      sizes the steps of all), peft_scale recover for $REC_SEEDS; each writes its JSON as rows
#      finish, so a timeout keeps what was done;
#   4. peft_scale merge -> peft_scale.md / .json.
# Everything goes into OUT_DIR/results.tar.gz (results/: logs of every step, JSON, tables),
# with OUT_DIR/run.log and OUT_DIR/peft_scale.md beside it. set -u, not -e: a failed step
# is logged and the next ones still run.
# Settings (environment): TOTAL_S (560), MODEL_S (290), POST_S (40), SEEDS ("1 2 3"),
# REC_SEEDS (1,2), RANKS (8,2,16,4: priority order), PEFT_ARGS, REC_ARGS, IMP_ARGS (extra
# arguments), SHAPE_A ("--d-model 640 --n-layer 8"), BATCH, WORK (/tmp/peft-scale), PYTHON;
# REUSE_MODEL=1: use the model already in $WORK/model (e.g. left by run_corpus_masks.sh in an
# earlier call on the same machine) instead of retraining it; SPLIT=1: each seed's ranks run
# as two processes (the first two ranks with every rule, the others without ia3 and full),
# so that four ranks and full fine-tuning fit in one call; at most PEFT_JOBS (5) of them at a
# time, the recovery process included (on an 80 GB card a PEFT process holds ~12 GB and the
# recovery ~19 GB: six at once left the recovery out of memory).
set -uo pipefail
CORPUS_IN=${1:?corpus dir}
OUT=${2:?out dir}
T0=$(date +%s)
TOTAL_S=${TOTAL_S:-560}
MODEL_S=${MODEL_S:-290}
SEEDS=${SEEDS:-1 2 3}
export WORK=${WORK:-/tmp/peft-scale}
export PYTHONPATH="tools/train${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
TOKJ=${TOKENIZER_JSON:-tools/train/corpus/tokenizer/tokenizer.json}
CORPUS=$WORK/corpus
RES=$WORK/peft-results
mkdir -p "$OUT" "$CORPUS" "$RES" "$WORK/data"
exec > >(tee "$RES/run.log") 2>&1

el() { echo $(( $(date +%s) - T0 )); }
say() { printf '\n[%4ss] %s\n' "$(el)" "$*"; }

pack() {
    say "packing $OUT/results.tar.gz"
    [ -d "$WORK/results" ] && cp -r "$WORK/results" "$RES/corpus_model"
    rm -f "$RES/corpus_model/model.safetensors" "$RES/corpus_model/tokenizer.json" 2>/dev/null
    cp "$WORK"/*.log "$RES/" 2>/dev/null
    sleep 1
    cp "$RES/run.log" "$OUT/run.log" 2>/dev/null
    cp "$RES/merged/peft_scale.md" "$OUT/peft_scale.md" 2>/dev/null
    tar czf "$OUT/results.tar.gz" -C "$WORK" peft-results
    ls -l "$OUT"
}
trap pack EXIT

for f in train val test-head; do
    if [ -f "$CORPUS_IN/$f.txt" ]; then cp "$CORPUS_IN/$f.txt" "$CORPUS/$f.txt"
    elif [ -f "$CORPUS_IN/$f.txt.xz" ]; then
        xz -dc -T0 "$CORPUS_IN/$f.txt.xz" > "$CORPUS/$f.txt" || "$PY" -c 'import lzma, shutil, sys
shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            "$CORPUS_IN/$f.txt.xz" "$CORPUS/$f.txt"
    else echo "missing $CORPUS_IN/$f.txt(.xz)"; fi
done
ls -l "$CORPUS"

say "0. token cache ($TOKJ)"
"$PY" -m yunmin_train.peft_scale tokenize --tokenizer "$TOKJ" --train-text "$CORPUS/train.txt" \
    --val-text "$CORPUS/val.txt" --cache-dir "$WORK/data" --extra "$CORPUS/test-head.txt" \
    2>&1 | tee "$RES/tokenize.log"

MODEL=$WORK/model
if [ "${REUSE_MODEL:-0}" = 1 ] && [ -f "$MODEL/model.safetensors" ]; then
    say "1. the corpus model already in $MODEL (REUSE_MODEL=1: not retrained)"
else
    say "1. the corpus model (run_corpus_model.sh)"
    DEADLINE_S=$(( MODEL_S - $(el) )) POST_S=${POST_S:-40} SKIP_TP=1 EVAL_FILES=test-head \
        SHAPE_A=${SHAPE_A:---d-model 640 --n-layer 8} TOKENIZER_JSON="$TOKJ" \
        bash tools/train/corpus/run_corpus_model.sh "$CORPUS" "$WORK/model-out" \
        > "$RES/corpus_model.log" 2>&1
    tail -n 25 "$RES/corpus_model.log"
fi
[ -f "$MODEL/model.safetensors" ] || { echo "no model: studies skipped"; exit 1; }
grep -h '"ppl"' "$WORK/results/eval_test-head.json" 2>/dev/null | head -n 1

STUDY=(--model "$MODEL" --tokenizer "$TOKJ" --train-text "$CORPUS/train.txt"
       --val-text "$CORPUS/val.txt" --cache-dir "$WORK/data" --bf16)
say "2. layer importance"
IMP_S=$(( TOTAL_S - $(el) - 60 )); [ "$IMP_S" -lt 30 ] && IMP_S=30
timeout "$IMP_S" "$PY" -m yunmin_train.peft_scale importance "${STUDY[@]}" \
    --out "$RES/importance.json" ${IMP_ARGS:-} > "$RES/importance.log" 2>&1
cat "$RES/importance.log"

LEFT=$(( TOTAL_S - $(el) - 15 )); [ "$LEFT" -lt 30 ] && LEFT=30
say "3. PEFT seeds $SEEDS and recovery seeds ${REC_SEEDS:-1,2} in parallel, ${LEFT}s"
pids=()
lead=--leader
rm -f "$RES/peft_sizing.json"
if [ -f "$RES/importance.json" ] && [ "${SPLIT:-0}" = 1 ]; then
    # fixed --steps (100 unless PEFT_ARGS says otherwise: the sizing the unsplit run chose)
    # instead of a probe; per seed three processes: ranks 8,2 with every rule but full;
    # ranks 16,4 without ia3 and full; full alone (it is the slowest run)
    IFS=, read -r -a RK <<< "${RANKS:-8,2,16,4}"
    R1=$(IFS=,; echo "${RK[*]:0:2}")
    R2=$(IFS=,; echo "${RK[*]:2}")
    peft() {  # TAG ARGS...: at most PEFT_JOBS processes at a time (each holds ~12 GB of
        local tag=$1  # GPU memory: 10 at once ran out on an 80 GB card, 6 with the recovery)
        shift
        while [ "$(jobs -rp | wc -l)" -ge "${PEFT_JOBS:-5}" ]; do sleep 1; done
        local left=$(( TOTAL_S - $(el) - 15 ))  # what is left when it starts, not at step 3
        if [ "$left" -lt 30 ]; then echo "peft_$tag: not started (${left}s left)"; return; fi
        timeout "$left" "$PY" -m yunmin_train.peft_scale peft "${STUDY[@]}" \
            --importance "$RES/importance.json" --seq-len 128 --test-windows 256 --steps 100 \
            ${PEFT_ARGS:-} "$@" --out "$RES/peft_$tag.json" > "$RES/peft_$tag.log" 2>&1 &
        pids+=($!)
    }
    timeout "$LEFT" "$PY" -m yunmin_train.peft_scale recover "${STUDY[@]}" \
        --importance "$RES/importance.json" --seeds "${REC_SEEDS:-1,2}" \
        --time-budget $(( LEFT - 8 )) ${REC_ARGS:-} --out "$RES/recovery.json" \
        > "$RES/recovery.log" 2>&1 &
    pids+=($!)
    for s in $SEEDS; do
        peft "seed${s}a" --seed "$s" --ranks "$R1" --rules ia3,top,least,last,learned,lora-all
        [ -n "$R2" ] && peft "seed${s}b" --seed "$s" --ranks "$R2" \
            --rules top,least,last,learned,lora-all
        peft "seed${s}full" --seed "$s" --ranks "${RK[0]}" --rules full
    done
    for p in "${pids[@]}"; do wait "$p"; echo "process $p: exit $?"; done
elif [ -f "$RES/importance.json" ]; then
    for s in $SEEDS; do
        timeout "$LEFT" "$PY" -m yunmin_train.peft_scale peft "${STUDY[@]}" \
            --importance "$RES/importance.json" --seed "$s" --ranks "${RANKS:-8,2,16,4}" \
            --seq-len 128 --test-windows 256 --min-steps 40 --time-budget $(( LEFT - 8 )) $lead \
            ${PEFT_ARGS:-} --out "$RES/peft_seed$s.json" > "$RES/peft_seed$s.log" 2>&1 &
        pids+=($!)
        lead=
    done
    timeout "$LEFT" "$PY" -m yunmin_train.peft_scale recover "${STUDY[@]}" \
        --importance "$RES/importance.json" --seeds "${REC_SEEDS:-1,2}" \
        --time-budget $(( LEFT - 8 )) ${REC_ARGS:-} --out "$RES/recovery.json" \
        > "$RES/recovery.log" 2>&1 &
    pids+=($!)
    for p in "${pids[@]}"; do wait "$p"; echo "process $p: exit $?"; done
else
    echo "no importance.json: studies skipped"
fi
tail -n 3 "$RES"/peft_seed*.log "$RES/recovery.log"

say "4. merge"
"$PY" -m yunmin_train.peft_scale merge --peft "$RES"/peft_seed*.json \
    --recovery "$RES/recovery.json" --model-eval "$WORK/results/eval_test-head.json" \
    --out-dir "$RES/merged"
say "done"
