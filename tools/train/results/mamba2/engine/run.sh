#!/bin/bash
# Mamba-2 head profiles served by the engine, on the 29 M-parameter corpus model
# (docs/BENCHMARKS.md, "Mamba-2 head profiles served by the engine"; RESULTS.md Study 8).
#   MODEL=DIR TRAIN=train.txt VAL=val.txt [YUNMIN=build-test/tools/yunmin]
#   [BASE_YUNMIN=a build of the parent commit, for the dense-path check] \
#   bash tools/train/results/mamba2/engine/run.sh OUT_DIR
# Steps: 1. magnitude profiles (state 50/75/90 %, heads 50 %) from the first 2 MB of TRAIN;
# 2. toolkit perplexity under the same masks on the first 64 windows of 256 tokens of the first
# 300 kB of VAL (the study's CPU protocol), writing those windows as text; 3. the engine's
# perplexity on that text, dense and per profile; 4. `yunmin bench --sparsity` per profile
# (dense and sparse alternating in one process), batch 1 then batch 16; 5. dense decode/prefill of this build against
# BASE_YUNMIN, alternating; 6. the decode step alone (ssd_step_bench.c).
set -eu
out=$1
repo=$(cd "$(dirname "$0")/../../../../.." && pwd)
yunmin=${YUNMIN:-$repo/build-test/tools/yunmin}
mkdir -p "$out/data" "$out/prof"
head -c 2000000 "$TRAIN" > "$out/data/train2m.txt"
head -c 300000 "$VAL" > "$out/data/val300k.txt"
export PYTHONPATH=$repo/tools/train
profs=""
for spec in state:0.5 state:0.75 state:0.9 head:0.5; do
  k=${spec%%:*}; l=${spec##*:}
  nice /usr/bin/python3 -m yunmin_train.mamba2_study export --model "$MODEL" \
      --text "$out/data/train2m.txt" --cache-dir "$out/data/cache" --kind "$k" --level "$l" \
      --seed 1 --out "$out/prof/$k-$l.safetensors" | tee -a "$out/export.jsonl"
  profs="$profs $out/prof/$k-$l.safetensors"
done
nice /usr/bin/python3 "$repo/tools/train/results/mamba2/engine/toolkit_ppl.py" --model "$MODEL" \
    --val-text "$out/data/val300k.txt" --write-text "$out/data/val64w.txt" $profs \
    | tee "$out/toolkit_ppl.jsonl"
: > "$out/engine_ppl.jsonl"
for p in dense $profs; do
  sp=(); [ "$p" = dense ] || sp=(--sparsity "$p")
  r=$(nice "$yunmin" perplexity --model "$MODEL" --file "$out/data/val64w.txt" --ctx 256 \
      --threads 2 "${sp[@]}")
  echo "{\"profile\": \"$(basename "$p")\", \"result\": $r}" | tee -a "$out/engine_ppl.jsonl"
done
for p in $profs; do
  uptime > "$out/bench_$(basename "$p" .safetensors).json.uptime"
  nice "$yunmin" bench --model "$MODEL" --sparsity "$p" --json --no-floors --batches 1 \
      --steps 128 --rounds 5 --threads 2 > "$out/bench_$(basename "$p" .safetensors).json"
done
for p in $profs; do
  uptime > "$out/bench16_$(basename "$p" .safetensors).json.uptime"
  nice "$yunmin" bench --model "$MODEL" --sparsity "$p" --json --no-floors --batches 16 \
      --steps 32 --rounds 3 --threads 2 > "$out/bench16_$(basename "$p" .safetensors).json"
done
if [ -n "${BASE_YUNMIN:-}" ]; then
  for i in 1 2 3; do
    for b in base new; do
      bin=$yunmin; [ $b = base ] && bin=$BASE_YUNMIN
      nice "$bin" bench --model "$MODEL" --json --no-floors --batches 1 --steps 128 \
          --rounds 3 --threads 2 > "$out/dense_${b}_$i.json"
    done
  done
fi
cc -O2 -I"$repo" "$repo/tools/train/results/mamba2/engine/ssd_step_bench.c" \
    "$repo/build-test/engine/libym_engine.a" -lopenblas -lm -o "$out/ssd_step_bench"
nice "$out/ssd_step_bench" > "$out/ssd_step_bench.txt"
