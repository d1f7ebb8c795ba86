#!/usr/bin/env bash
# Held-out perplexity of sparsity profiles on a corpus model, in the engine, one JSON line each.
#
#   bash tools/train/corpus/eval_corpus_masks.sh YUNMIN MODEL_DIR TEXT OUT.jsonl [NAME=PROFILE]...
#
# YUNMIN: the built CLI (build-test/tools/yunmin). For the dense model and then each profile:
# `yunmin perplexity --ctx 256 --threads 2` over TEXT (the corpus's test-head.txt), its JSON
# line with "name" and "profile" added; `yunmin inspect --sparsity` is not run here (the
# lanes come from block_masks lanes). Appends to OUT.jsonl.
set -euo pipefail
Y=${1:?yunmin}
M=${2:?model dir}
T=${3:?text}
O=${4:?out.jsonl}
shift 4
one() {  # NAME [PROFILE]
    local name=$1 prof=${2:-}
    local line
    if [ -n "$prof" ]; then
        line=$("$Y" perplexity --model "$M" --file "$T" --ctx 256 --threads 2 --sparsity "$prof")
    else
        line=$("$Y" perplexity --model "$M" --file "$T" --ctx 256 --threads 2)
    fi
    line=$(printf '%s\n' "$line" | tail -n 1)
    printf '{"name": "%s", "profile": "%s", %s\n' "$name" "$(basename "${prof:-}")" "${line#\{}" \
        | tee -a "$O"
}
one dense
for spec in "$@"; do one "${spec%%=*}" "${spec#*=}"; done
