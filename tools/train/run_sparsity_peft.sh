#!/usr/bin/env bash
# The sparsity and hybrid-PEFT pipeline on the default model, from the repository root:
#
#   bash tools/train/run_sparsity_peft.sh OUT_DIR
#
# (GPU machine; on a CPU it runs too, slowly). Steps, each a documented `python -m` command:
#   1. sparsity study, channels axis    yunmin_train.sparsity_study --axes channels
#   2. sparsity study, states axis      yunmin_train.sparsity_study --axes states
#      (learned masks first at 50 %, then magnitude and random, then 30 % and 70 %; every
#      profile evaluated on the held-out split and again after a recovery fine-tune; with
#      MAG_INIT=1 two more processes learn masks started from the magnitude scores)
#   3. allocate + tune + export         yunmin_train.peft_study --profile <learned 50 % profiles>
#      (importance from the learned logits, the hybrid plan, the comparison with LoRA
#      everywhere, IA³ only and full fine-tuning, exported adapters, the PEFT cross-check)
#   4. merge                            yunmin_train.sparsity_study --merge (tables + PNG)
# 1, 2 and 3 run at the same time (the model is small; one GPU is mostly idle in each);
# 3 starts once the learned 50 % profiles of 1 and 2 exist.
# Sizes from the environment (defaults: docs/RESULTS.md's run): MASK_STEPS (200),
# RECOVERY_STEPS (40), PEFT_STEPS (120),
# SEEDS (0,1,2), MAG_INIT (1), LEVELS (0.3,0.5,0.7; must hold 0.5), MAX_WINDOWS (0 = the
# whole held-out split), BF16 (1), CHARACTER (PETRUCHIO), N_LORA_LAYERS (3), MODEL, TEXT,
# PYTHON (python3).
# Then, on a machine with the C tools (see tools/train/README.md, "Sparsity and adapters"):
#   yunmin calibrate --sparsity OUT/.../learned-channels-50.safetensors --out ORDERED ...
#   python -m yunmin_train.adapters upload --url http://HOST:PORT --name NAME OUT/peft/adapters/X
set -euo pipefail
OUT=${1:?usage: run_sparsity_peft.sh OUT_DIR}
MODEL=${MODEL:-models/shakespeare-mamba}
TEXT=${TEXT:-data/tinyshakespeare.txt}
MASK_STEPS=${MASK_STEPS:-200}
RECOVERY_STEPS=${RECOVERY_STEPS:-40}
PEFT_STEPS=${PEFT_STEPS:-120}
SEEDS=${SEEDS:-0,1,2}
LEVELS=${LEVELS:-0.3,0.5,0.7}
MAX_WINDOWS=${MAX_WINDOWS:-0}
BF16=${BF16:-1}
PYTHON=${PYTHON:-python3}
MAG_INIT=${MAG_INIT:-1}
CHARACTER=${CHARACTER:-PETRUCHIO}
N_LORA_LAYERS=${N_LORA_LAYERS:-3}
export PYTHONPATH=tools/train${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
bf16=()
[ "$BF16" = 1 ] && bf16=(--bf16)
mkdir -p "$OUT"
t0=$(date +%s)

study() {   # $1 = axis, $2 = lane name, then extra options
    local axis=$1 lane=$2
    shift 2
    "$PYTHON" -m yunmin_train.sparsity_study --model "$MODEL" --text "$TEXT" \
        --out-dir "$OUT/sparsity-$lane" --axes "$axis" --levels "$LEVELS" \
        --mask-steps "$MASK_STEPS" --recovery-steps "$RECOVERY_STEPS" \
        --max-windows "$MAX_WINDOWS" --cache-dir "$OUT/cache-$lane" "${bf16[@]}" "$@" \
        >"$OUT/sparsity-$lane.log" 2>&1
}
study channels channels & pid_ch=$!
study states states & pid_st=$!
pids_mag=()
results=("$OUT/sparsity-channels/results.json" "$OUT/sparsity-states/results.json")
if [ "$MAG_INIT" = 1 ]; then
    for axis in channels states; do
        study "$axis" "$axis-mag" --methods learned-mag --no-dense-recovery & pids_mag+=($!)
        results+=("$OUT/sparsity-$axis-mag/results.json")
    done
fi

prof_ch="$OUT/sparsity-channels/profiles/learned-channels-50.safetensors"
prof_st="$OUT/sparsity-states/profiles/learned-states-50.safetensors"
for _ in $(seq 1 600); do
    [ -f "$prof_ch" ] && [ -f "$prof_st" ] && break
    if ! kill -0 "$pid_ch" 2>/dev/null && ! kill -0 "$pid_st" 2>/dev/null; then break; fi
    sleep 1
done
peft_rc=0
"$PYTHON" -m yunmin_train.peft_study --model "$MODEL" --text "$TEXT" --profile "$prof_ch" \
    --profile "$prof_st" --out-dir "$OUT/peft" --steps "$PEFT_STEPS" --seeds "$SEEDS" \
    --character "$CHARACTER" --n-lora-layers "$N_LORA_LAYERS" "${bf16[@]}" \
    >"$OUT/peft.log" 2>&1 || peft_rc=$?
rc=0
for pid in "$pid_ch" "$pid_st" "${pids_mag[@]}"; do
    wait "$pid" || rc=$?
done
"$PYTHON" -m yunmin_train.sparsity_study --out-dir "$OUT/sparsity" --merge "${results[@]}" \
    || rc=$?
echo "{\"elapsed_s\": $(( $(date +%s) - t0 )), \"study_rc\": $rc, \"peft_rc\": $peft_rc}" \
    >"$OUT/pipeline.json"
cat "$OUT/pipeline.json"
[ "$rc" = 0 ] && [ "$peft_rc" = 0 ]
