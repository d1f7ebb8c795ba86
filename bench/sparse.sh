#!/bin/bash
# bench/sparse.sh - the sparse engine's benchmark table (docs/BENCHMARKS.md, "Sparse engine").
#
# For each model, channel sparsity 0/30/50/70 % x state sparsity 0/50 % x scan order identity /
# calibrated: `yunmin calibrate` writes a magnitude-baseline profile from the first
# $TOKENS tokens of the text (state energies and |s| of the dense run), then `yunmin bench
# --sparsity` measures the dense and the sparse model alternately in one process (best of two
# rounds each): prefill of $PROMPT tokens, decode at batch 1 and 16, and the scan kernel alone.
# Ratios are within one process; absolute figures drift on a shared machine.
#
# Orders: identity, correlation (the seed's: a path over the state-energy correlation) and mask
# (a path over the state masks' similarity, for comparison).
#
# usage: bench/sparse.sh [OUT_DIR]
#   env: YUNMIN=path/to/yunmin MODELS="dir ..." CS="0 0.3 0.5 0.7" SS="0 0.5"
#        ORDERS="identity correlation mask" TOKENS=256 PROMPT=512 ROUNDS=2 STEPS=32
#        REPORT_ONLY=1 (only print the table of OUT_DIR)
# Prints a markdown table; the raw JSON of every run stays in OUT_DIR.
set -eu
cd "$(dirname "$0")/.."
YUNMIN=${YUNMIN:-build-test/tools/yunmin}
OUT=${1:-$(mktemp -d /tmp/yunmin-sparse-bench-XXXXXX)}
MODELS=${MODELS:-"models/shakespeare-mamba synthetic:mamba-130m"}
TEXT=${TEXT:-data/tinyshakespeare.txt}
TOKENS=${TOKENS:-256}
PROMPT=${PROMPT:-512}
CS=${CS:-"0 0.3 0.5 0.7"}
SS=${SS:-"0 0.5"}
ORDERS=${ORDERS:-"identity correlation mask"}
ROUNDS=${ROUNDS:-2}
STEPS=${STEPS:-32}
mkdir -p "$OUT"
# The environment may carry OpenBLAS settings meant for another CPU (docs/BENCHMARKS.md).
run() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$YUNMIN" "$@"; }
[ -n "${REPORT_ONLY:-}" ] || for model in $MODELS; do
  tag=$(basename "${model#synthetic:}")
  tokargs=()
  case "$model" in synthetic:*) tokargs=(--tokenizer models/shakespeare-mamba) ;; esac
  for cs in $CS; do
    for ss in $SS; do
      for order in $ORDERS; do
        name="$tag-c$cs-s$ss-$order"
        run calibrate --model "$model" "${tokargs[@]}" --text "$TEXT" --tokens "$TOKENS" \
          --baseline magnitude --channel-sparsity "$cs" --state-sparsity "$ss" \
          --order "$order" --two-opt --json --out "$OUT/$name.safetensors" >"$OUT/$name.calib.json"
        run bench --model "$model" --sparsity "$OUT/$name.safetensors" --json --no-floors \
          --batches 1,16 --prompt "$PROMPT" --rounds "$ROUNDS" --steps "$STEPS" \
          >"$OUT/$name.bench.json"
        echo "done $name" >&2
      done
    done
  done
done
/usr/bin/python3 - "$OUT" <<'PY'
import glob, json, os, re, sys
out = sys.argv[1]
print("| model | ch sp | st sp | order | block fill | proj MFLOP/tok (dense -> sparse) "
      "| scan MFLOP/tok | ideal byte ratio | decode b1 x | b1 / ideal | decode b16 x | prefill x "
      "| scan time / dense |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
pat = re.compile(r"^(.*)-c([0-9.]+)-s([0-9.]+)-(identity|correlation|mask)$")
rows = []
for p in glob.glob(os.path.join(out, "*.bench.json")):
    m = pat.match(os.path.basename(p)[:-len(".bench.json")])
    if m:
        rows.append((m.group(1), float(m.group(2)), float(m.group(3)), m.group(4), p))
for model, cs, ss, order, p in sorted(rows):
    b = json.load(open(p))
    d = b["dense"]
    print("| %s | %s | %s | %s | %.3f | %.1f -> %.1f | %.2f -> %.2f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f |" % (
        model, "%g" % cs, "%g" % ss, order, b["scan_block_fill"], d["flops_per_token_projections"] / 1e6,
        b["flops_per_token_projections"] / 1e6, d["flops_per_token_scan"] / 1e6,
        b["flops_per_token_scan"] / 1e6, b["ideal_byte_ratio"],
        b["decode_speedup"]["1"], b["decode1_ratio_of_ideal"], b["decode_speedup"]["16"],
        b["prefill_speedup"],
        b["scan_us_per_token"] / d["scan_us_per_token"] if d["scan_us_per_token"] else 0))
PY
echo "raw results: $OUT" >&2
