#!/bin/bash
# The definition -> headword task at 2,000 items, scored in the engine, on the retrained corpus
# model (test-head perplexity 33.38) with the learned channel masks of three seeds and their
# magnitude controls (docs/RESULTS.md, Study 6, "Definition -> headword at 2,000 items").
#   MODEL=DIR [YUNMIND=build-test/server/yunmind] bash tools/train/results/def2word_engine/run.sh OUT_DIR
# MODEL: the corpus model of run_corpus_masks.sh (the one tools/train/results/corpus_seeds/ was
# measured on). Steps: 1. the profiles, decompressed from corpus_seeds/profiles/ (learned chan-P
# of seeds 1-3, magnitude at each seed's allocation, uniform magnitude); 2. eval_def2word.py
# over def2word_1000.jsonl.xz (make_tasks.py --per-source 1000 on the corpus's test.txt): dense,
# then each profile, with the paired comparisons; the first 20 items' dense scores checked
# against the toolkit's PyTorch model.
set -eu
out=$1
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../../.." && pwd)
prof=$repo/tools/train/results/corpus_seeds/profiles
mkdir -p "$out/prof"
xz -dc "$here/def2word_1000.jsonl.xz" > "$out/def2word_1000.jsonl"
args=()
for p in 50 70; do
  for s in 1 2 3; do
    sfx=""; [ $s = 1 ] || sfx="-s$s"
    xz -dc "$prof/chan-$p$sfx.sparsity.safetensors.xz" > "$out/prof/chan-$p$sfx.sparsity.safetensors"
    xz -dc "$prof/magnitude-alloc-$p-s$s.safetensors.xz" > "$out/prof/magnitude-alloc-$p-s$s.safetensors"
    args+=(--profile "learned-chan-$p-s$s=$out/prof/chan-$p$sfx.sparsity.safetensors"
           --profile "magnitude-alloc-$p-s$s=$out/prof/magnitude-alloc-$p-s$s.safetensors"
           --pair "learned-chan-$p-s$s,magnitude-alloc-$p-s$s")
  done
  xz -dc "$prof/magnitude-uniform-$p.safetensors.xz" > "$out/prof/magnitude-uniform-$p.safetensors"
  args+=(--profile "magnitude-uniform-$p=$out/prof/magnitude-uniform-$p.safetensors"
         --pair "magnitude-alloc-$p-s1,magnitude-uniform-$p" --pair "dense,learned-chan-$p-s1")
done
PYTHONPATH=$repo/tools/train /usr/bin/python3 "$repo/tools/train/corpus/eval_def2word.py" \
  --yunmind "${YUNMIND:-$repo/build-test/server/yunmind}" --model "$MODEL" \
  --task "$out/def2word_1000.jsonl" --check-torch 20 "${args[@]}" \
  --out "$out/def2word_1000_results.json" | tee "$out/run.log"
