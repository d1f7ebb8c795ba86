"""CPU time in the engine's scan kernels per token, measured with perf's cpu-clock sampling
(docs/RESULTS.md, "State masks per 16-channel block"), from the repository root:

    /usr/bin/python3 tools/train/results/blocks/perf_scan.py --name NAME --model DIR \\
        --ppl-args "--file F --tail-fraction 0.1 --ctx 256" [--prompt TEXT] [--decode 256] \\
        PROFILE|none ...

For each profile, two workloads run under `perf record -e cpu-clock -c 100000` (one sample
per 100 us of CPU time of any of the process's threads):
  perplexity  `yunmin perplexity PPL_ARGS [--sparsity P]`: prefill in windows (T = ctx rows
              per scan call); also gives the held-out perplexity;
  decode      `yunmin generate -n DECODE --temperature 0 -p PROMPT`: batch-1 decode (T = 1).
Samples in scan_masked_* / scan_avx512 / scan_avx2 / scan_portable (the scan kernels of
engine/kernels.c) x 100 us / tokens = scan CPU microseconds per token; all samples x 100 us /
tokens = the whole process's CPU microseconds per token. CPU time, unlike wall time, hardly
depends on how many other processes share the cores (the reason for this tool on a shared
machine); caches are still shared. One JSON line per (profile, workload) appended to
NAME-perf.jsonl next to this script.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

PERIOD_US = 100
SCAN_SYMS = re.compile(r"^scan_(masked_)?(avx512|avx2|portable)$")


def perf_run(cmd, data):
    r = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-c", str(PERIOD_US * 1000),
                        "-o", data, "--"] + cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: {r.stderr.strip()}")
    rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "-n", "--sort", "sym"],
                         capture_output=True, text=True, check=True).stdout
    total = scan = 0
    for line in rep.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\d+)\s+\[[.k]\]\s+(\S+)", line)
        if not m:
            continue
        n = int(m.group(2))
        total += n
        if SCAN_SYMS.match(m.group(3)):
            scan += n
    return r.stdout, r.stderr, total, scan


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--ppl-args", required=True)
    ap.add_argument("--prompt", default="The")
    ap.add_argument("--decode", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bin", default="build-test/tools/yunmin")
    ap.add_argument("--workloads", default="perplexity,decode",
                    help="which of perplexity,decode to run (repeat a run for more samples: "
                         "summarize takes the median)")
    ap.add_argument("profiles", nargs="+")
    a = ap.parse_args(argv)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{a.name}-perf.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        for prof in a.profiles:
            sp = [] if prof == "none" else ["--sparsity", prof]
            base = [a.bin]
            rows = []
            if "perplexity" in a.workloads:
                so, _, total, scan = perf_run(
                    base + ["perplexity", "--model", a.model, "--threads", str(a.threads)] +
                    a.ppl_args.split() + sp, data)
                res = json.loads(so)
                rows.append({"profile": prof, "workload": "perplexity", "tokens": res["tokens"],
                             "ppl": res["ppl"], "nll": res["nll"], "samples_total": total,
                             "samples_scan": scan})
            if "decode" in a.workloads:
                so, se, total, scan = perf_run(
                    base + ["generate", "--model", a.model, "--threads", str(a.threads),
                            "--temperature", "0", "-n", str(a.decode), "-p", a.prompt] + sp, data)
                m = re.search(r"generated (\d+) tokens", se)
                n_tok = int(m.group(1)) if m else a.decode
                rows.append({"profile": prof, "workload": "decode", "tokens": n_tok,
                             "summary": se.strip().splitlines()[-1] if se.strip() else "",
                             "samples_total": total, "samples_scan": scan})
            with open(out, "a", encoding="utf-8") as f:
                for r in rows:
                    r["scan_cpu_us_per_token"] = r["samples_scan"] * PERIOD_US / r["tokens"]
                    r["cpu_us_per_token"] = r["samples_total"] * PERIOD_US / r["tokens"]
                    line = json.dumps(r)
                    print(line, flush=True)
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
