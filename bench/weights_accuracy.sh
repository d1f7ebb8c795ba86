#!/bin/bash
# bench/weights_accuracy.sh - accuracy of the served weight types on the default model
# (docs/RESULTS.md, "Low-bit weights").
#
# 1. held-out perplexity (the model card's protocol: the last 10 % of the text, windows of 256
#    tokens from a fresh state) with --weights f32, bf16, int8;
# 2. greedy agreement: for each prompt, N tokens at temperature 0 in each type (decode, one row
#    at a time: the GEMV kernels), compared token by token with f32's: the tokens that agree up
#    to the first difference, and in all positions. int8 both ways: weights widened to f32
#    (YUNMIN_INT8_ACTIVATIONS=0) and int8 activations (=1, the VNNI kernel, the default where
#    the CPU has VNNI). Perplexity: int8 likewise. bf16 also with bf16 activations
#    (YUNMIN_BF16_ACTIVATIONS=1, the opt-in AVX512-BF16 kernel).
#
# usage: bench/weights_accuracy.sh        env: YUNMIN=path/to/yunmin MODEL=dir N=200
# Prints markdown tables.
set -eu
cd "$(dirname "$0")/.."
YUNMIN=${YUNMIN:-build-test/tools/yunmin}
MODEL=${MODEL:-models/shakespeare-mamba}
TEXT=${TEXT:-data/tinyshakespeare.txt}
N=${N:-200}
PROMPTS=("ROMEO:" "KING RICHARD II:" "First Citizen:" "To be, or not to be" "JULIET:")

echo "| weights | scored tokens | mean NLL | perplexity | vs f32 |"
echo "|---|---|---|---|---|"
base=""
for cfg in "f32 X=0" "bf16 X=0" "bf16 YUNMIN_BF16_ACTIVATIONS=1" "int8 YUNMIN_INT8_ACTIVATIONS=0" \
  "int8 YUNMIN_INT8_ACTIVATIONS=1"; do
  set -- $cfg
  w=$1
  out=$(env $2 "$YUNMIN" perplexity --model "$MODEL" --file "$TEXT" --tail-fraction 0.1 \
        --ctx 256 --weights "$w")
  [ "$2" = YUNMIN_INT8_ACTIVATIONS=1 ] && w="int8, int8 activations"
  [ "$2" = YUNMIN_INT8_ACTIVATIONS=0 ] && w="int8, f32 activations"
  [ "$2" = YUNMIN_BF16_ACTIVATIONS=1 ] && w="bf16, bf16 activations"
  read -r tok nll ppl <<<"$(/usr/bin/python3 -c 'import json,sys; d=json.loads(sys.argv[1]);
print(d["tokens"], d["nll"], d["ppl"])' "$out")"
  [ -z "$base" ] && base=$ppl
  rel=$(/usr/bin/python3 -c "print('%+.3f %%' % (100.0 * ($ppl / $base - 1.0)))")
  echo "| $w | $tok | $nll | $ppl | $rel |"
done

ids() { # prompt, weights, env -> the generated token ids, one line
  env $3 "$YUNMIN" generate --model "$MODEL" -p "$1" -n "$N" --temperature 0 --weights "$2" \
    2>/dev/null >/tmp/ym-acc-$$.txt
  "$YUNMIN" tokenize --model "$MODEL" --file /tmp/ym-acc-$$.txt |
    /usr/bin/python3 -c 'import json,sys; print(" ".join(map(str, json.load(sys.stdin)["ids"])))'
}
echo
echo "| weights | prompt | tokens equal to f32 before the first difference | equal positions |"
echo "|---|---|---|---|"
for p in "${PROMPTS[@]}"; do
  ref=$(ids "$p" f32 "X=0")
  for cfg in "bf16 X=0" "bf16 YUNMIN_BF16_ACTIVATIONS=1" "int8 YUNMIN_INT8_ACTIVATIONS=0" \
    "int8 YUNMIN_INT8_ACTIVATIONS=1"; do
    set -- $cfg
    got=$(ids "$p" "$1" "$2")
    lab=$1
    [ "$2" = YUNMIN_INT8_ACTIVATIONS=0 ] && lab="int8, f32 activations"
    [ "$2" = YUNMIN_INT8_ACTIVATIONS=1 ] && lab="int8, int8 activations"
    [ "$2" = YUNMIN_BF16_ACTIVATIONS=1 ] && lab="bf16, bf16 activations"
    /usr/bin/python3 - "$ref" "$got" "$lab" "$p" <<'EOF'
import sys
a, b = sys.argv[1].split(), sys.argv[2].split()
n = min(len(a), len(b))
first = next((i for i in range(n) if a[i] != b[i]), n)
same = sum(1 for i in range(n) if a[i] == b[i])
print(f"| {sys.argv[3]} | {sys.argv[4]} | {first} / {len(a)} | {same} / {len(a)} |")
EOF
  done
done
rm -f /tmp/ym-acc-$$.txt
