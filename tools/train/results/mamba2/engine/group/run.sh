#!/bin/bash
# Mamba-2 state masks shared by a group's heads against per-head masks (magnitude), on the
# 29 M-parameter corpus model (n_groups 1: one entry mask per layer for all 20 heads); RESULTS.md
# Study 8, "State masks shared by a group of heads".
#   MODEL=DIR TRAIN=train.txt VAL=val.txt [YUNMIN=build-test/tools/yunmin] [LEVELS="0.5 0.75 0.9"] \
#   bash tools/train/results/mamba2/engine/group/run.sh OUT_DIR
# Steps: 1. per level, three magnitude profiles from the same calibration (seed 1, the first
# 2 MB of TRAIN): per head (the study's), group-shared "mean" and group-shared "norm"
# (mamba2_study export --share group --group-score ...); 2. per profile, the (layer, group, n)
# entries no head of the group reads (each one a column of B and one of C in in_proj that the
# engine could skip; a group-shared mask leaves round(level * N) per group unread), columns.jsonl;
# 3. the toolkit's perplexity under each mask on the first 64 windows of 256 tokens of the first
# 300 kB of VAL (Study 8's CPU protocol), writing those windows as text; 4. the engine's
# perplexity on that text, dense and per profile.
set -eu
out=$1
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../../../../.." && pwd)
yunmin=${YUNMIN:-$repo/build-test/tools/yunmin}
levels=${LEVELS:-0.5 0.75 0.9}
mkdir -p "$out/data" "$out/prof"
[ -e "$out/data/train2m.txt" ] || head -c 2000000 "$TRAIN" > "$out/data/train2m.txt"
[ -e "$out/data/val300k.txt" ] || head -c 300000 "$VAL" > "$out/data/val300k.txt"
export PYTHONPATH=$repo/tools/train OMP_NUM_THREADS=2
profs=""
: > "$out/export.jsonl"
for l in $levels; do
  for v in head group-mean group-norm; do
    f=$out/prof/state-$l-$v.safetensors
    case $v in
      head) share=(--share head) ;;
      *) share=(--share group --group-score "${v#group-}") ;;
    esac
    nice /usr/bin/python3 -m yunmin_train.mamba2_study export --model "$MODEL" \
        --text "$out/data/train2m.txt" --cache-dir "$out/data/cache" --kind state \
        --level "$l" --seed 1 "${share[@]}" --out "$f" | tee -a "$out/export.jsonl"
    profs="$profs $f"
  done
done
/usr/bin/python3 - "$MODEL" $profs > "$out/columns.jsonl" <<'PY'
import json, os, sys
import numpy as np
sys.path.insert(0, os.environ["PYTHONPATH"])
from yunmin_train import safetensors_io as st
cfg = json.load(open(os.path.join(sys.argv[1], "config.json")))
H, G, N = cfg["num_heads"], cfg["n_groups"], cfg["state_size"]
for p in sys.argv[2:]:
    t, _ = st.load_numpy(p)
    L = sum(1 for k in t if k.endswith(".state_logits"))
    live = np.stack([t[f"layers.{l}.state_logits"] > 0 for l in range(L)])      # [L, H, N]
    unread = ~live.reshape(L, G, H // G, N).any(axis=2)                            # [L, G, N]
    print(json.dumps({"profile": os.path.basename(p), "state_kept": float(live.mean()),
                      "bc_entries_unread": int(unread.sum()), "bc_entries": L * G * N,
                      "unread_per_layer": unread.sum(axis=(1, 2)).tolist()}))
PY
cat "$out/columns.jsonl"
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
