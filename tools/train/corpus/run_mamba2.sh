#!/usr/bin/env bash
# A Mamba-2 corpus model and its head / state-entry sparsity study, in one GPU run (< 10 min).
#
#   bash tools/train/corpus/run_mamba2.sh CORPUS_DIR OUT_DIR
#
# cwd: the repository root. CORPUS_DIR holds train.txt, val.txt, test-head.txt (or their .xz,
# unpacked here). Steps, with TOTAL_S (default 560) the wall-clock limit of the whole script:
#   1. the three files tokenized with the committed corpus tokenizer
#      (tools/train/corpus/tokenizer/tokenizer.json) into the token cache that train.py,
#      evaluate.py and mamba2_study.py read: HF tokenizers when importable, else the toolkit's
#      own tokenizer (slow: small texts only);
#   2. a Mamba-2 trained for what the study (STUDY_S, default 200) and POST_S (default 40) leave:
#      d_model 640 x 8 layers, expand 2, head_dim 64 (20 heads), state 128, 1 group, conv 4,
#      tied embeddings, batch 32 x 256 tokens, bf16 autocast, AdamW lr 2e-3 warmup 100 cosine
#      to 2e-4 over the time budget, held-out loss on 64 windows of val.txt every EVAL_EVERY
#      (400) steps, best model exported in bf16; tokens/s over the first ~10 s printed;
#   3. test-head.txt perplexity (evaluate.py, ctx 256, float32);
#   4. yunmin_train.mamba2_study, one process per seed in SEEDS (default "1 2 3") sharing the
#      GPU, each given the time left; rows written as they finish; then --merge;
#   5. OUT_DIR/model/: the bf16 weights as shards of at most 15.5 MiB + index + config.json +
#      tokenizer.json; OUT_DIR/results.tar.gz: every log, JSON and table (results/).
# Overrides for short runs: D_MODEL, N_LAYER, D_STATE, HEAD_DIM, BATCH, SEQ, LEVELS,
# EVAL_WINDOWS, STUDY_ARGS, WORK (default /tmp/m2-run), PYTHON. A failing step is logged and
# the next steps still run where they can (no set -e).
set -uo pipefail
CORPUS=${1:?corpus dir}
OUT=${2:?out dir}
T0=$(date +%s)
TOTAL_S=${TOTAL_S:-560}
STUDY_S=${STUDY_S:-200}
POST_S=${POST_S:-40}
SEEDS=${SEEDS:-1 2 3}
LEVELS=${LEVELS:-0.75,0.9,0.5}
WORK=${WORK:-/tmp/m2-run}
TOKJ=${TOKENIZER_JSON:-tools/train/corpus/tokenizer/tokenizer.json}
MODEL=$WORK/model
RES=$WORK/results
export PYTHONPATH="tools/train${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$MODEL" "$RES" "$WORK/data"
exec > >(tee "$RES/run.log") 2>&1

el() { echo $(( $(date +%s) - T0 )); }
say() { printf '\n[%4ss] %s\n' "$(el)" "$*"; }

pack() {
    say "packing outputs into $OUT"
    if [ -f "$MODEL/model.safetensors" ]; then
        rm -rf "$WORK/sharded"
        "$PY" tools/train/corpus/shard_model.py "$MODEL" "$WORK/sharded" --max-shard-mib 15.5 \
            > "$RES/shard.log" 2>&1 && rm -rf "$OUT/model" && mkdir -p "$OUT/model" \
            && cp "$WORK/sharded"/* "$OUT/model/"
        cat "$RES/shard.log"
        cp "$MODEL/config.json" "$MODEL/train_log.jsonl" "$RES/" 2>/dev/null
    fi
    cp "$WORK"/study_seed*.log "$RES/" 2>/dev/null
    sleep 1
    tar czf "$OUT/results.tar.gz" -C "$WORK" results
    ls -l "$OUT" "$OUT/model" 2>/dev/null
}
trap pack EXIT

"$PY" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv 2>/dev/null

for f in "$CORPUS"/*.xz; do
    [ -e "$f" ] || continue
    [ -f "${f%.xz}" ] || xz -dk -T0 "$f"
done
ls -l "$CORPUS"

say "1. tokenization ($TOKJ)"
"$PY" - "$CORPUS" "$TOKJ" "$WORK/data" <<'EOF' 2>&1 | tee "$RES/tokenize.log"
import os, sys, time
sys.path.insert(0, "tools/train/corpus")
import numpy as np
from yunmin_train import data as D
corpus, tok_path, cache = sys.argv[1:4]
tok_bytes = open(tok_path, "rb").read()
try:
    import tokenizers
    from train_corpus_tokenizer import encode_file
    hf = tokenizers.Tokenizer.from_file(tok_path)
    print("HF tokenizers", tokenizers.__version__)
except ImportError:
    hf = None
    print("HF tokenizers missing: the toolkit tokenizer")
for name, tag in (("train.txt", "train"), ("val.txt", "val"), ("test-head.txt", "all")):
    t = time.time()
    text = D.read_text(os.path.join(corpus, name))
    if hf is not None:
        ids = encode_file(hf, text)
        np.save(D.cache_path(text, tok_bytes, cache, tag), ids)
    else:
        ids = D.tokenize_cached(text, tok_path, cache, tag)
    print(f"{name} [{tag}]: {len(text)} chars -> {ids.size} tokens ({time.time() - t:.1f} s)")
EOF

BUDGET=$(( TOTAL_S - STUDY_S - POST_S - $(el) ))
[ "$BUDGET" -lt 20 ] && BUDGET=20
say "2. training Mamba-2 for ${BUDGET}s"
"$PY" -m yunmin_train.train --arch mamba2 --text "$CORPUS/train.txt" --val-text "$CORPUS/val.txt" \
    --tokenizer "$TOKJ" --out "$MODEL" --work-dir "$WORK" \
    --d-model "${D_MODEL:-640}" --n-layer "${N_LAYER:-8}" --d-state "${D_STATE:-128}" \
    --head-dim "${HEAD_DIM:-64}" --n-groups 1 --expand 2 --d-conv 4 --pad-vocab-multiple 8 \
    --batch-size "${BATCH:-32}" --seq-len "${SEQ:-256}" --lr 2e-3 --min-lr-ratio 0.1 \
    --warmup-steps "${WARMUP:-100}" --weight-decay 0.1 --grad-clip 1.0 --dropout 0 \
    --eval-ctx "${SEQ:-256}" --seed 1337 --bf16 --save-dtype bfloat16 --max-steps 1000000 \
    --time-budget "$BUDGET" --eval-interval "${EVAL_EVERY:-400}" --eval-max-windows 64 \
    --log-interval 10 > "$RES/train.log" 2>&1
echo "train exit $?"
grep -v '"type": "train"' "$RES/train.log" | cut -c1-400 | tail -n 30
grep '"type": "train"' "$RES/train.log" | awk 'NR % 10 == 0' | cut -c1-200 | tail -n 10
"$PY" - "$MODEL/train_log.jsonl" "$RES/throughput.json" <<'EOF'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
tr = [r for r in recs if r["type"] == "train" and r["step"] > 1]
cfg = next(r for r in recs if r["type"] == "config")
first = [r["tokens_per_s"] for r in tr if r["elapsed_s"] <= 12.0] or [r["tokens_per_s"] for r in tr[:3]]
res = {"n_params": cfg["n_params"], "model": cfg["model"],
       "tokens_per_s_first_10s_median": statistics.median(first) if first else None,
       "tokens_per_s_all_median": statistics.median([r["tokens_per_s"] for r in tr]) if tr else None,
       "steps": tr[-1]["step"] if tr else 0,
       "evals": [{k: r.get(k) for k in ("step", "val_loss", "val_ppl", "max_mem_gb", "elapsed_s")}
                 for r in recs if r["type"] == "eval"]}
json.dump(res, open(sys.argv[2], "w"), indent=1)
print("TOKENS/S (first ~10 s, median):", res["tokens_per_s_first_10s_median"],
      "| all:", res["tokens_per_s_all_median"], "| steps", res["steps"], "| params", res["n_params"])
for e in res["evals"]:
    print("  eval", e)
EOF

say "3. test-head perplexity"
if [ -f "$MODEL/model.safetensors" ]; then
    "$PY" -m yunmin_train.evaluate --model "$MODEL" --text "$CORPUS/test-head.txt" --split all \
        --ctx 256 --batch-size 64 --cache-dir "$WORK/data" --out "$RES/eval_test-head.json" \
        > "$RES/eval_test-head.log" 2>&1
    grep -E '"(ppl|n_scored|mean_nll)"' "$RES/eval_test-head.json"
    # the trained model's two SSD forms on the first test-head window (float32, no autocast)
    timeout 60 "$PY" - "$MODEL" "$CORPUS/test-head.txt" "$WORK/data" "$RES/check_forms.json" <<'EOF2'
import json, sys, torch
from yunmin_train import data as D
from yunmin_train.mamba2 import load_model
from yunmin_train.mamba2_study import _autocast
dev = "cuda" if torch.cuda.is_available() else "cpu"
m = load_model(sys.argv[1], device=dev).eval()
ids = D.tokenize_cached(D.read_text(sys.argv[2]), sys.argv[1] + "/tokenizer.json", sys.argv[3], "all")
x = torch.tensor(ids[None, :256].astype("int64"), device=dev)
with torch.no_grad():
    a = m.set_scan("chunked")(x).double()
    b = m.set_scan("sequential")(x).double()
    with _autocast(dev == "cuda"):
        c = m.set_scan("chunked")(x).double()
r = {"device": dev, "tokens": int(x.shape[1]), "max_abs_logit": float(b.abs().max()),
     "chunked_vs_sequential_f32": float((a - b).abs().max()),
     "bf16_autocast_vs_f32": float((c - a).abs().max())}
json.dump(r, open(sys.argv[4], "w"), indent=1)
print("forms:", r)
EOF2
else
    echo "no model: nothing to evaluate or study"
    exit 1
fi

LEFT=$(( TOTAL_S - $(el) - 15 ))
[ "$LEFT" -lt 30 ] && LEFT=30
say "4. study: seeds $SEEDS, levels $LEVELS, ${LEFT}s left"
pids=()
for s in $SEEDS; do
    timeout "$LEFT" "$PY" -m yunmin_train.mamba2_study --model "$MODEL" --tokenizer "$TOKJ" \
        --text "$CORPUS/train.txt" --val-text "$CORPUS/val.txt" --cache-dir "$WORK/data" \
        --bf16 --seed "$s" --levels "$LEVELS" --ctx "${SEQ:-256}" \
        --eval-windows "${EVAL_WINDOWS:-64}" --time-budget $(( LEFT - 10 )) ${STUDY_ARGS:-} \
        --out "$RES/study_seed$s.json" > "$WORK/study_seed$s.log" 2>&1 &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; echo "study process $p exit $?"; done
for s in $SEEDS; do tail -n 2 "$WORK/study_seed$s.log" | cut -c1-300; done
"$PY" -m yunmin_train.mamba2_study --merge "$RES"/study_seed*.json --out-dir "$RES" \
    && cat "$RES/mamba2_study.md"
say "done"
