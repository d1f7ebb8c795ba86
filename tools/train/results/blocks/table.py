"""The tables of docs/RESULTS.md, "State masks per 16-channel block", from the raw outputs:

    /usr/bin/python3 tools/train/results/blocks/table.py "PREFILL_PERF.jsonl..." "DECODE_PERF.jsonl..." [ROOT]

joins `python -m yunmin_train.block_masks summarize` of the first set of perf_scan.py files
(perplexity, prefill scan) with that of the second (single-thread decode runs) by profile.
ROOT: where the profile paths in the files are relative to (default ".").
"""
import subprocess, sys, os
env = dict(os.environ, PYTHONPATH="tools/train")
def tab(args):
    out = subprocess.run([sys.executable, "-m", "yunmin_train.block_masks", "summarize"] + args, capture_output=True, text=True, env=env, check=True).stdout
    rows = {}
    for line in out.splitlines()[2:]:
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        rows[c[0]] = c
    return rows
root = ["--root", sys.argv[3]] if len(sys.argv) > 3 else []
pre_args, dec_args = sys.argv[1].split() + root, sys.argv[2].split() + root
pre, dec = tab(pre_args), tab(dec_args)
print("| profile | live | lanes computed | block fill | ppl | prefill scan CPU µs/token | / all-kept | decode scan CPU µs/token, 1 thread | / all-kept |")
print("|---|---|---|---|---|---|---|---|---|")
for k, c in pre.items():
    d = dec.get(k)
    print(f"| {k} | {c[1]} | {c[2]} | {c[3]} | {c[4]} | {c[5]} | {c[6]} | {d[8] if d else ''} | {d[9] if d else ''} |")
