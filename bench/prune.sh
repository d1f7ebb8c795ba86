#!/bin/bash
# bench/prune.sh - `yunmin prune` on the default model at several budgets, each profile checked
# by `yunmin perplexity` on the search's held-out part and on unseen text, against the uniform
# magnitude allocation (`yunmin calibrate --baseline magnitude`) at the same sparsity and the
# learned channel profile (docs/BENCHMARKS.md, "Pruning").
#
# Texts: the model was trained on the first 90 % of data/tinyshakespeare.txt; its held-out 10 %
# (the last n - (n*9)//10 characters, as the toolkit splits it) is cut in two halves:
#   cal.txt  - the calibration text: prune's scores (the first $TOKENS tokens of its score
#              part) and the held-out part the search is judged on ($HELDOUT of its windows of
#              256 tokens, spread over the text; `yunmin perplexity --heldout` scores the same
#              windows);
#   test.txt - never seen by the model nor by the search: the honest figure.
#
# usage: bench/prune.sh OUT_DIR
#   env: YUNMIN=build-test/tools/yunmin MODEL=models/shakespeare-mamba BUDGETS="5 10"
#        COMPARE=tools/train/results/learned-channels-50.sparsity.safetensors (given to the
#        first budget's run only: it continues the search to the learned profile's sparsity)
#        SEARCH=lazy HELDOUT=0.2 TOKENS=2048 THREADS=1 REPORT_ONLY=1
set -eu
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: bench/prune.sh OUT_DIR" >&2; exit 2; }
OUT=$1
YUNMIN=${YUNMIN:-build-test/tools/yunmin}
MODEL=${MODEL:-models/shakespeare-mamba}
BUDGETS=${BUDGETS:-5 10}
COMPARE=${COMPARE:-tools/train/results/learned-channels-50.sparsity.safetensors}
SEARCH=${SEARCH:-lazy}
HELDOUT=${HELDOUT:-0.2}
TOKENS=${TOKENS:-2048}
THREADS=${THREADS:-1}
TEXT=${TEXT:-data/tinyshakespeare.txt}
mkdir -p "$OUT"
run() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE nice "$YUNMIN" "$@"; }
ppl() { run perplexity --model "$MODEL" --threads "$THREADS" "$@" | /usr/bin/python3 -c \
          'import json,sys; print(json.load(sys.stdin)["ppl"])'; }

if [ -z "${REPORT_ONLY:-}" ]; then
  /usr/bin/python3 - "$TEXT" "$OUT" <<'EOF'
import sys
text = open(sys.argv[1], encoding="utf-8").read()
n = len(text)
held = text[(n * 9) // 10:]
half = len(held) // 2
open(sys.argv[2] + "/cal.txt", "w", encoding="utf-8").write(held[:half])
open(sys.argv[2] + "/test.txt", "w", encoding="utf-8").write(held[half:])
EOF
  echo "dense $(ppl --file "$OUT/cal.txt" --heldout "$HELDOUT") $(ppl --file "$OUT/test.txt")" \
    > "$OUT/dense.ppl"
  first=1
  for b in $BUDGETS; do
    cmp=()
    if [ "$first" = 1 ] && [ -n "$COMPARE" ]; then
      cmp=(--compare "$COMPARE" --compare-out "$OUT/searched-at-compare.safetensors")
    fi
    first=0
    echo "== budget $b% (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    run prune --model "$MODEL" --text "$OUT/cal.txt" --out "$OUT/prune-$b.safetensors" \
      --max-ppl-increase "$b%" --heldout "$HELDOUT" --tokens "$TOKENS" --search "$SEARCH" \
      --threads "$THREADS" --json "${cmp[@]}" > "$OUT/prune-$b.json" 2> "$OUT/prune-$b.log"
    sp=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sparsity"])' \
           "$OUT/prune-$b.json")
    run calibrate --model "$MODEL" --text "$OUT/cal.txt" --tokens "$TOKENS" --baseline magnitude \
      --channel-sparsity "$sp" --out "$OUT/uniform-$b.safetensors" --json > "$OUT/uniform-$b.json"
    for p in prune uniform; do
      echo "$p-$b $(ppl --file "$OUT/cal.txt" --heldout "$HELDOUT" \
                      --sparsity "$OUT/$p-$b.safetensors") \
            $(ppl --file "$OUT/test.txt" --sparsity "$OUT/$p-$b.safetensors")" > "$OUT/$p-$b.ppl"
    done
  done
  if [ -n "$COMPARE" ]; then
    echo "learned $(ppl --file "$OUT/cal.txt" --heldout "$HELDOUT" --sparsity "$COMPARE") \
          $(ppl --file "$OUT/test.txt" --sparsity "$COMPARE")" > "$OUT/learned.ppl"
    sp=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["compare_at_its_sparsity"]["sparsity"])' \
           "$OUT/prune-${BUDGETS%% *}.json")
    run calibrate --model "$MODEL" --text "$OUT/cal.txt" --tokens "$TOKENS" --baseline magnitude \
      --channel-sparsity "$sp" --out "$OUT/uniform-compare.safetensors" --json > /dev/null
    for p in searched-at-compare uniform-compare; do
      [ -f "$OUT/$p.safetensors" ] || continue
      echo "$p $(ppl --file "$OUT/cal.txt" --heldout "$HELDOUT" --sparsity "$OUT/$p.safetensors") \
            $(ppl --file "$OUT/test.txt" --sparsity "$OUT/$p.safetensors")" > "$OUT/$p.ppl"
    done
  fi
fi

/usr/bin/python3 - "$OUT" $BUDGETS <<'EOF'
import json, os, sys
out, budgets = sys.argv[1], sys.argv[2:]
def ppl(name):
    f = os.path.join(out, name + ".ppl")
    if not os.path.exists(f):
        return None
    v = open(f).read().split()
    return float(v[1]), float(v[2])
dense = ppl("dense")
print("dense: held-out (search) ppl %.3f, test ppl %.3f" % dense)
print("| budget | sparsity | layers kept | evals | search s | ppl held-out: prune / uniform (calibrate) | "
      "test ppl: prune / uniform | decode b1 x (best / median) | weight-byte ratio |")
print("|---|---|---|---|---|---|---|---|---|")
for b in budgets:
    j = json.load(open(os.path.join(out, "prune-%s.json" % b)))
    p, u = ppl("prune-" + b), ppl("uniform-" + b)
    d = j["decode_batch1"].get("pruned", {})
    print("| %s %% | %.2f %% | %s | %d | %.0f | %.3f (%+.2f %%) / %.3f (%+.2f %%) | %.3f (%+.2f %%) / %.3f (%+.2f %%) | %.3f / %.3f | %.3f |" % (
        b, 100 * j["sparsity"], " ".join(str(k) for k in j["layers_kept"]), j["evals"],
        j["seconds"]["search"],
        p[0], 100 * (p[0] / dense[0] - 1), u[0], 100 * (u[0] / dense[0] - 1),
        p[1], 100 * (p[1] / dense[1] - 1), u[1], 100 * (u[1] / dense[1] - 1),
        d.get("speedup_best", 0), d.get("speedup_median", 0), j["weight_bytes_ratio"]))
j = json.load(open(os.path.join(out, "prune-%s.json" % budgets[0])))
c = j.get("compare_at_its_sparsity")
if c:
    print()
    print("at the learned profile's sparsity %.2f %% (%s):" % (100 * c["sparsity"], c["profile"]))
    print("| profile | layers kept | ppl held-out | test ppl | decode b1 x (best / median) |")
    print("|---|---|---|---|---|")
    sp = j["decode_batch1"]
    rows = [("learned", "learned", c["learned_layers_kept"], "compare"),
            ("searched (past the budget)", "searched-at-compare",
             c["searched"]["layers_kept"] if c.get("searched") else [], "searched_at_compare"),
            ("uniform magnitude", "uniform-compare", None, None)]
    for label, f, kept, key in rows:
        v = ppl(f)
        if v is None:
            continue
        s = sp.get(key, {}) if key else {}
        print("| %s | %s | %.3f (%+.2f %%) | %.3f (%+.2f %%) | %s |" % (
            label, " ".join(str(k) for k in kept) if kept else "(even)",
            v[0], 100 * (v[0] / dense[0] - 1), v[1], 100 * (v[1] / dense[1] - 1),
            "%.3f / %.3f" % (s["speedup_best"], s["speedup_median"]) if s else "-"))
    f = j["compare_at_found_sparsity"]
    print()
    print("learned logits re-thresholded to the %s %% budget's sparsity %.2f %%: held-out ppl %.3f (%+.2f %%)" % (
        budgets[0], 100 * f["sparsity"], f["learned_rethresholded"]["ppl"],
        100 * f["learned_rethresholded"]["ppl_increase"]))
EOF
