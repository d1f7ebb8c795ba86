#!/bin/bash
# bench/weights_ttft.sh - yunmind per weight type on the mamba-130m shape: RSS of the daemon
# after loading and after the requests, and the time to first token of fresh 512-token prompts
# (docs/BENCHMARKS.md, "Low-bit weights").
#
# Makes the synthetic 130m model directory (bench/make_synth_model.py, F32 on disk), an int8
# and a bf16 copy of it (`yunmin quantize`), then for each type starts yunmind on the model
# written in that type (so it loads in place), waits for /readyz, and sends REQS requests of
# 512 random token ids each (different every time: nothing to resume from the state cache),
# max_tokens 1, non-streaming: the request's total time is the time to its first token.
#
# bf16b: the bf16 model served with bf16 activations (YUNMIN_BF16_ACTIVATIONS=1, the opt-in
# AVX512-BF16 kernel).
#
# With BASE=another build's yunmind (e.g. the main branch's), it serves the f32 model first,
# for comparison in the same run.
#
# TYPES: the served types (default "f32 bf16 bf16b int8"); CHUNKS: the prefill_chunk values
# to serve each type with (default 128; YUNMIN_MAX_BATCH_TOKENS is raised to fit a larger
# chunk), the chunks interleaved within each type.
#
# usage: bench/weights_ttft.sh WORK_DIR      env: YUNMIN=... YUNMIND=... BASE=... REQS=5
set -eu
cd "$(dirname "$0")/.."
W=${1:?usage: bench/weights_ttft.sh WORK_DIR}
YUNMIN=${YUNMIN:-build-test/tools/yunmin}
YUNMIND=${YUNMIND:-build-test/server/yunmind}
REQS=${REQS:-5}
BASE=${BASE:-}
TYPES=${TYPES:-f32 bf16 bf16b int8}
CHUNKS=${CHUNKS:-128}
mkdir -p "$W"
[ -f "$W/f32/model.safetensors" ] || /usr/bin/python3 bench/make_synth_model.py "$W/f32" >/dev/null
for t in int8 bf16; do
  [ -f "$W/$t/model.safetensors" ] || "$YUNMIN" quantize --model "$W/f32" --out "$W/$t" --weights $t
done
echo "| weights | prefill_chunk | RSS after load | RSS after the requests | TTFT 512 tokens, best / median of $REQS |"
echo "|---|---|---|---|---|"
for t in $([ -n "$BASE" ] && echo base) $TYPES; do
 for ch in $CHUNKS; do
  d=$t
  bin=$YUNMIND
  act=X=0
  [ "$t" = base ] && { d=f32; bin=$BASE; }
  [ "$t" = bf16b ] && { d=bf16; act=YUNMIN_BF16_ACTIVATIONS=1; }
  mbt=256
  [ "$ch" -gt 192 ] && mbt=$((ch + 64))
  env "$act" YUNMIN_PREFILL_CHUNK="$ch" YUNMIN_MAX_BATCH_TOKENS="$mbt" \
    "$bin" --model "$W/$d" --port 0 --log-format plain --cache-bytes 0 >"$W/$t.log" 2>&1 &
  pid=$!
  port=""
  for i in $(seq 1 600); do
    port=$(sed -n 's/.*listening.*:\([0-9][0-9]*\).*/\1/p' "$W/$t.log" | head -1)
    [ -n "$port" ] && curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  rss0=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  times=""
  for r in $(seq 1 "$REQS"); do
    ids=$(/usr/bin/python3 -c "import random; random.seed($r * 7 + ${#t}); print(','.join(str(random.randrange(4000)) for _ in range(512)))")
    s=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$port/v1/completions" \
        -H 'Content-Type: application/json' \
        -d "{\"prompt\": [$ids], \"max_tokens\": 1, \"temperature\": 0}")
    times="$times $s"
  done
  rss1=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  /usr/bin/python3 -c "import sys; t=sorted(map(float, sys.argv[3:])); print('| %s | %s | %.1f MiB | %.1f MiB | %.3f / %.3f s |' % (sys.argv[1], sys.argv[2], $rss0/1024, $rss1/1024, t[0], t[len(t)//2]))" "$t" "$ch" $times
 done
done
