#!/bin/bash
# bench/weights_ab.sh - an A/B of yunmin builds on decode speed (docs/BENCHMARKS.md, "What is
# left outside the products"): `yunmin bench --json --no-floors --batches 1,16 --prompt 16
# --steps 64 --weights T` for each build, the builds and types interleaved in every round,
# then per round each build's tok/s and its ratio to the first build, with the median ratio.
#
# usage: bench/weights_ab.sh OUT_DIR ROUNDS YUNMIN_A YUNMIN_B [YUNMIN_C ...]
#        env: TYPES="int8 bf16 f32"
set -eu
OUT=${1:?usage: bench/weights_ab.sh OUT_DIR ROUNDS YUNMIN_A YUNMIN_B ...}
R=${2:?rounds}
shift 2
TYPES=${TYPES:-int8 bf16 f32}
mkdir -p "$OUT"
for r in $(seq 1 "$R"); do
  for w in $TYPES; do
    i=0
    for b in "$@"; do
      i=$((i + 1))
      "$b" bench --json --no-floors --batches 1,16 --prompt 16 --steps 64 --weights "$w" \
        >"$OUT/$i-$w-$r.json" 2>/dev/null || true
    done
  done
done
/usr/bin/python3 - "$OUT" "$R" "$#" $TYPES <<'PY'
import json, statistics, sys
out, R, nb, types = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
for w in types:
    for key in ["1", "16"]:
        rows = []
        for r in range(1, R + 1):
            try:
                rows.append([json.load(open(f"{out}/{i}-{w}-{r}.json"))["decode_tok_s"][key]
                             for i in range(1, nb + 1)])
            except (OSError, ValueError, KeyError):
                pass
        if not rows:
            continue
        rat = [[x[i] / x[0] for x in rows] for i in range(1, nb)]
        print(w, "b" + key, " ".join("/".join(f"{x:.1f}" for x in v) for v in rows),
              " ratios to the first:", " ; ".join(
                  " ".join(f"{x:.2f}" for x in rr) + f" median {statistics.median(rr):.3f}"
                  for rr in rat))
PY
