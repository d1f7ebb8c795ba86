#!/usr/bin/env bash
# Tokenizer + throughput + a ~27 M-parameter Mamba-1 on the corpus, in one GPU run (< 10 min).
#
#   bash tools/train/corpus/run_corpus_model.sh CORPUS_DIR OUT_DIR
#
# cwd: the directory holding tools/train (the repository root). CORPUS_DIR: build_corpus.sh's
# output (train.txt, val.txt, test.txt, test-head.txt, train.docs.tsv; .xz copies are unpacked).
# Steps, with DEADLINE_S (default 540) as the wall-clock limit of the whole script:
#   1. the BPE tokenizer on train.txt only (train_corpus_tokenizer.py, vocab 12288 + 3 added
#      space runs: 12296 rows padded to 8), the split files tokenized with HF tokenizers into the
#      token cache train.py / evaluate.py read; in the background, the toolkit's pure-Python
#      tokenizer compared with HF on the whole of val.txt and test.txt (reported if done by
#      the end);
#   2. throughput (skipped with SKIP_TP=1): TP_S (default 30) s of training for each of two shapes of about the same size
#      A: d_model 512 x 12 layers (26.6 M parameters), B: d_model 640 x 8 layers (28.9 M),
#      batch 32 x 256 tokens, bf16 autocast; tokens/s = median of the logged rates after step 20;
#   3. the shape with more tokens/s (A unless B is more than 10 % faster: the deeper one at a
#      tie) trained for what is left of the deadline minus POST_S (default 100) s, AdamW lr 2e-3, warmup 100,
#      cosine to 2e-4 over the time budget, no dropout (the run sees well under one epoch),
#      held-out loss on 128 windows of val.txt every 200 steps, best model exported in bf16;
#   4. held-out perplexity (evaluate.py, ctx 256, float32) on test.txt, val.txt and
#      test-head.txt ($EVAL_FILES); samples at temperature 0.8 for prompts of each domain;
#   5. OUT_DIR/model/: the bf16 weights as shards of at most 15.5 MiB (the files that come back
#      from the GPU machine are limited to 16 MiB); OUT_DIR/results.tar.gz: config.json,
#      model.safetensors.index.json, tokenizer files, logs, eval JSONs, samples, results.json.
set -uo pipefail
CORPUS=${1:?corpus dir}
OUT=${2:?out dir}
DEADLINE_S=${DEADLINE_S:-540}
TP_S=${TP_S:-30}
WORK=${WORK:-/tmp/corpus-run}
T0=$(date +%s)
TOK=$WORK/tokenizer
MODEL=$WORK/model
RES=$WORK/results
export PYTHONPATH="tools/train${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$TOK" "$MODEL" "$RES" "$WORK/data"
exec > >(tee "$RES/run.log") 2>&1

el() { echo $(( $(date +%s) - T0 )); }
say() { printf '\n[%4ss] %s\n' "$(el)" "$*"; }

pack() {
    say "packing outputs into $OUT"
    if [ -f "$MODEL/model.safetensors" ]; then
        "$PY" tools/train/corpus/shard_model.py "$MODEL" "$WORK/sharded" --max-shard-mib 15.5 \
            && mkdir -p "$OUT/model" && cp "$WORK/sharded"/model-*.safetensors "$OUT/model/"
        cp "$WORK/sharded/model.safetensors.index.json" "$RES/" 2>/dev/null
        cp "$MODEL/config.json" "$MODEL/train_log.jsonl" "$RES/" 2>/dev/null
    fi
    for f in tokenizer.json cases.json README.md tokenizer_check.json tokenizer_check_files.json; do
        [ -f "$TOK/$f" ] && cp "$TOK/$f" "$RES/$f"
    done
    for s in A B; do
        [ -f "$WORK/tp-$s/train_log.jsonl" ] && cp "$WORK/tp-$s/train_log.jsonl" "$RES/throughput_$s.jsonl"
    done
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

say "1. tokenizer"
if [ -n "${TOKENIZER_JSON:-}" ]; then     # smoke tests without HF tokenizers: a given tokenizer
    cp "$TOKENIZER_JSON" "$TOK/tokenizer.json"
else
    "$PY" tools/train/corpus/train_corpus_tokenizer.py --corpus "$CORPUS" --out "$TOK" \
        --vocab-size 12288 --cache-dir "$WORK/data" || exit 1
fi
(timeout 200 "$PY" tools/train/corpus/train_corpus_tokenizer.py --check-only --out "$TOK" \
    --corpus "$CORPUS" --check-file "$CORPUS/val.txt" --check-file "$CORPUS/test.txt" \
    > "$RES/tokenizer_check_files.log" 2>&1; \
    cp "$TOK/tokenizer_check_files.json" "$RES/" 2>/dev/null) &
CHECK_PID=$!

COMMON=(--text "$CORPUS/train.txt" --val-text "$CORPUS/val.txt" --tokenizer "$TOK/tokenizer.json"
        --work-dir "$WORK" --d-state 16 --expand 2 --d-conv 4 --pad-vocab-multiple 8
        --batch-size "${BATCH:-32}" --seq-len 256 --lr 2e-3 --min-lr-ratio 0.1 --warmup-steps 100
        --weight-decay 0.1 --grad-clip 1.0 --dropout 0 --eval-ctx 256 --seed 1337 --bf16
        --save-dtype bfloat16 --max-steps 1000000)
read -r -a SHAPE_A <<< "${SHAPE_A:---d-model 512 --n-layer 12}"
read -r -a SHAPE_B <<< "${SHAPE_B:---d-model 640 --n-layer 8}"

if [ "${SKIP_TP:-0}" = 1 ]; then      # short runs: shape A, its rate read from its own log
    CHOICE=A
else
say "2. throughput, ${TP_S}s each"
"$PY" -m yunmin_train.train "${COMMON[@]}" "${SHAPE_A[@]}" --out "$WORK/tp-A" \
    --time-budget "$TP_S" --eval-interval 1000000 --eval-max-windows 2 --log-interval 10 --quiet || exit 1
"$PY" -m yunmin_train.train "${COMMON[@]}" "${SHAPE_B[@]}" --out "$WORK/tp-B" \
    --time-budget "$TP_S" --eval-interval 1000000 --eval-max-windows 2 --log-interval 10 --quiet || exit 1
CHOICE=$("$PY" - "$WORK/tp-A/train_log.jsonl" "$WORK/tp-B/train_log.jsonl" "$RES/throughput.json" <<'EOF'
import json, statistics, sys
res = {}
for name, path in zip("AB", sys.argv[1:3]):
    recs = [json.loads(l) for l in open(path)]
    cfg = next(r for r in recs if r["type"] == "config")
    rates = [r["tokens_per_s"] for r in recs if r["type"] == "train" and r["step"] >= 20]
    mem = [r.get("max_mem_gb") for r in recs if r["type"] == "eval"]
    steps = max(r["step"] for r in recs if r["type"] == "train")
    res[name] = {"d_model": cfg["model"]["hidden_size"], "n_layer": cfg["model"]["num_hidden_layers"],
                 "n_params": cfg["n_params"], "tokens_per_s_median": statistics.median(rates),
                 "tokens_per_s_min": min(rates), "tokens_per_s_max": max(rates),
                 "n_rates": len(rates), "steps": steps, "max_mem_gb": mem[-1] if mem else None}
choice = "B" if res["B"]["tokens_per_s_median"] > 1.10 * res["A"]["tokens_per_s_median"] else "A"
res["choice"] = choice
res["rule"] = "A (deeper) unless B's median tokens/s is more than 10 % higher"
json.dump(res, open(sys.argv[3], "w"), indent=1)
print(json.dumps(res), file=sys.stderr)
print(choice)
EOF
) || exit 1
fi
if [ "$CHOICE" = B ]; then SHAPE=("${SHAPE_B[@]}"); else SHAPE=("${SHAPE_A[@]}"); fi
BUDGET=$(( DEADLINE_S - $(el) - ${POST_S:-100} ))
[ "$BUDGET" -lt 30 ] && BUDGET=30
say "3. training shape $CHOICE (${SHAPE[*]}) for ${BUDGET}s"
"$PY" -m yunmin_train.train "${COMMON[@]}" "${SHAPE[@]}" --out "$MODEL" \
    --time-budget "$BUDGET" --eval-interval 200 --eval-max-windows 128 --log-interval 20 \
    | grep -v '"type": "train"' | tail -n 40
grep '"type": "train"' "$MODEL/train_log.jsonl" | awk 'NR % 5 == 0' | tail -n 12
[ -f "$MODEL/model.safetensors" ] || exit 1

say "4. held-out perplexity and samples"
for f in ${EVAL_FILES:-test val test-head}; do
    "$PY" -m yunmin_train.evaluate --model "$MODEL" --text "$CORPUS/$f.txt" --split all --ctx 256 \
        --batch-size 64 --cache-dir "$WORK/data" --out "$RES/eval_$f.json" | grep -E '"(ppl|n_scored|mean_nll)"'
done
"$PY" -m yunmin_train.generate --model "$MODEL" \
    --prompt $'Apple \\Ap"ple\\, n.' --prompt $'Genesis 2\n\n1 ' --prompt "The jury said" \
    --prompt $'dog\nn 1: ' --prompt $'NAME\n\nperlfunc - ' --prompt $':mod:`os` --- ' \
    --prompt $'=====================\nMemory management\n=====================\n\n' \
    --max-new-tokens 120 --temperature 0.8 --seed 1234 --out "$RES/samples.txt" >/dev/null
head -c 3000 "$RES/samples.txt"

kill -0 "$CHECK_PID" 2>/dev/null && echo "tokenizer file check still running: not waited for"
cat "$RES/tokenizer_check_files.log"
"$PY" - "$RES" <<'EOF'
import json, os, sys, torch
r = sys.argv[1]
def load(n):
    p = os.path.join(r, n)
    return json.load(open(p)) if os.path.exists(p) else None
log = [json.loads(l) for l in open(os.path.join(r, "..", "model", "train_log.jsonl"))]
done = next((x for x in log if x["type"] == "done"), None)
cfg = next(x for x in log if x["type"] == "config")
trains = [x for x in log if x["type"] == "train"]
evals = [x for x in log if x["type"] == "eval"]
out = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
       "torch": torch.__version__, "throughput": load("throughput.json"),
       "model": cfg["model"], "n_params": cfg["n_params"], "data": cfg["data"],
       "train": {"steps": trains[-1]["step"] if trains else 0,
                 "tokens_seen": (trains[-1]["step"] if trains else 0) * cfg["args"]["batch_size"] * 256,
                 "elapsed_s": done and done.get("elapsed_s"), "done": done,
                 "median_tokens_per_s": sorted(x["tokens_per_s"] for x in trains[2:])[len(trains[2:]) // 2] if len(trains) > 2 else None,
                 "evals": [{k: e.get(k) for k in ("step", "val_loss", "val_ppl", "max_mem_gb")} for e in evals]},
       "eval": {n: load(f"eval_{n}.json") for n in ("test", "val", "test-head")},
       "tokenizer": load("tokenizer_check.json"), "tokenizer_files": load("tokenizer_check_files.json")}
json.dump(out, open(os.path.join(r, "results.json"), "w"), indent=1)
print(json.dumps({k: out[k] for k in ("device", "n_params")}), {n: (v or {}).get("ppl") for n, v in out["eval"].items()})
EOF
say "done"
