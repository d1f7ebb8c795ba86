#!/bin/bash
# Learned Mamba-2 state profiles (learned-mag) against magnitude profiles, served by the engine,
# on the 29 M-parameter corpus model (RESULTS.md Study 8, "Learned masks in the engine";
# docs/BENCHMARKS.md, "Mamba-2 head profiles served by the engine").
#   MODEL=DIR TRAIN=train.txt VAL=val.txt [YUNMIN=build-test/tools/yunmin] [LEVELS="0.75 0.9"] \
#   [SEED=1] [BENCH=1] bash tools/train/results/mamba2/engine/run_learned.sh OUT_DIR
# SEED other than 1: the profiles are named state-LEVEL-METHOD-sSEED; BENCH=0 skips step 4.
# Steps: 1. per level, the magnitude profile and the learned-mag profile (Study 8's CPU protocol:
# the first 2 MB of TRAIN, seed SEED, 120 steps of 4 x 256 tokens, float32, 2 threads); the
# learning takes minutes, so a profile already in OUT_DIR/prof is kept, not relearned;
# 2. toolkit perplexity under the same masks on the first 64 windows of 256 tokens of the first
# 300 kB of VAL, writing those windows as text; 3. the engine's perplexity on that text, dense
# and per profile; 4. `yunmin bench --sparsity` (dense and sparse alternating in one process),
# two passes over the profiles at batch 1, then two at batch 16, magnitude and learned
# alternating, so that each pair ran minutes apart on the same shared machine.
set -eu
out=$1
repo=$(cd "$(dirname "$0")/../../../../.." && pwd)
yunmin=${YUNMIN:-$repo/build-test/tools/yunmin}
levels=${LEVELS:-0.75 0.9}
seed=${SEED:-1}
sfx=""; [ "$seed" = 1 ] || sfx="-s$seed"
mkdir -p "$out/data" "$out/prof"
[ -e "$out/data/train2m.txt" ] || head -c 2000000 "$TRAIN" > "$out/data/train2m.txt"
[ -e "$out/data/val300k.txt" ] || head -c 300000 "$VAL" > "$out/data/val300k.txt"
export PYTHONPATH=$repo/tools/train OMP_NUM_THREADS=2
profs=""
for l in $levels; do
  for m in magnitude learned-mag; do
    f=$out/prof/state-$l-$m$sfx.safetensors
    if [ ! -e "$f" ]; then
      learn=(); [ "$m" = learned-mag ] && learn=(--steps 120 --batch 4)
      nice /usr/bin/python3 -m yunmin_train.mamba2_study export --model "$MODEL" \
          --text "$out/data/train2m.txt" --cache-dir "$out/data/cache" --kind state \
          --method "$m" --level "$l" --seed "$seed" "${learn[@]}" --device cpu --out "$f" \
          | tee -a "$out/export.jsonl"
    fi
    profs="$profs $f"
  done
done
nice /usr/bin/python3 "$repo/tools/train/results/mamba2/engine/toolkit_ppl.py" --model "$MODEL" \
    --val-text "$out/data/val300k.txt" --write-text "$out/data/val64w.txt" $profs \
    | tee "$out/toolkit_ppl_learned$sfx.jsonl"
: > "$out/engine_ppl_learned$sfx.jsonl"
for p in dense $profs; do
  sp=(); [ "$p" = dense ] || sp=(--sparsity "$p")
  r=$(nice "$yunmin" perplexity --model "$MODEL" --file "$out/data/val64w.txt" --ctx 256 \
      --threads 2 "${sp[@]}")
  echo "{\"profile\": \"$(basename "$p")\", \"result\": $r}" \
      | tee -a "$out/engine_ppl_learned$sfx.jsonl"
done
[ "${BENCH:-1}" = 1 ] || exit 0
bench_passes() {  # PREFIX BATCH STEPS ROUNDS: two passes over the profiles, OUT/PREFIX_NAME_PASS.json
  for pass in 1 2; do
    for p in $profs; do
      n=$(basename "$p" .safetensors)
      uptime > "$out/$1_${n}_$pass.json.uptime"
      nice "$yunmin" bench --model "$MODEL" --sparsity "$p" --json --no-floors --batches "$2" \
          --steps "$3" --rounds "$4" --threads 2 > "$out/$1_${n}_$pass.json"
    done
  done
}
bench_passes bench 1 128 5
bench_passes bench16 16 32 3
