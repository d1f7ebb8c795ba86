#!/bin/bash
# Runs every fuzz target for a fixed time on its corpus: tests/fuzz/run.sh BUILD_DIR [SECONDS]
# New inputs go to a scratch copy of the corpus, so the repository's corpus changes only by hand.
set -eu
build=$1
secs=${2:-10}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for t in $(sed -n "s/^ *'\(fuzz_[a-z_]*\)',\$/\1/p" "$here/meson.build"); do
  mkdir -p "$work/$t"
  cp -r "$here/corpus/$t/." "$work/$t/" 2>/dev/null || true
  echo "fuzz $t for ${secs}s"
  if ! "$build/tests/fuzz/$t" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$work/" \
       "$work/$t" >"$work/$t.log" 2>&1; then
    tail -n 40 "$work/$t.log"; status=1
  else
    grep -E 'stat::number_of_executed_units|cov:' "$work/$t.log" | tail -n 2
  fi
done
exit $status
