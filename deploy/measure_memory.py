#!/usr/bin/python3
"""deploy/measure_memory.py - yunmind's resident memory, idle and under a full batch.

    /usr/bin/python3 deploy/measure_memory.py YUNMIND MODEL_DIR [--threads N]
                     [--concurrency C] [--max-tokens M] [--prompt-tokens P]

Starts YUNMIND on 127.0.0.1 (port 0) with MODEL_DIR, waits for /readyz, reads /proc/PID/status
(VmRSS and its split into RssAnon and RssFile), then runs C streaming completions at once
(default 64 = max_running, so every running slot holds a state) of P prompt tokens and M new
tokens each, sampling VmRSS every 20 ms, and reads VmHWM (the peak) at the end. Prints one
JSON object; docs/DEPLOY.md quotes its figures. RssFile is the model file mapped read-only
(F32 checkpoints are used in place); a container's memory limit counts those pages too.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import requests


def status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[k] = int(v.split()[0])  # kB, or a count for Threads
    return out


def mib(kb):
    return round(kb / 1024.0, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("yunmind")
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    a = ap.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("YUNMIN_")}
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen([a.yunmind, "--model", a.model, "--port", "0", "--threads",
                             str(a.threads), "--max-queue", str(max(256, a.concurrency))],
                            stdout=subprocess.PIPE, stderr=err, env=env)
    try:
        m = re.search(r"listening on (http://\S+)", proc.stdout.readline().decode())
        if not m:
            raise SystemExit("yunmind did not start")
        url = m.group(1)
        t0 = time.time()
        while requests.get(url + "/readyz", timeout=30).status_code != 200:
            if time.time() - t0 > 300:
                raise SystemExit("yunmind not ready after 300 s")
            time.sleep(0.05)
        load_s = time.time() - t0
        time.sleep(0.5)
        idle = status(proc.pid)

        prompt = list(range(10, 10 + a.prompt_tokens))
        body = {"prompt": prompt, "max_tokens": a.max_tokens, "ignore_eos": True,
                "temperature": 0, "stream": True}
        failures = []

        def one():
            try:
                r = requests.post(url + "/v1/completions", json=body, stream=True, timeout=600)
                for _ in r.iter_lines():
                    pass
                if r.status_code != 200:
                    failures.append(r.status_code)
            except requests.RequestException as e:
                failures.append(str(e))

        threads = [threading.Thread(target=one) for _ in range(a.concurrency)]
        peak_running = 0
        t1 = time.time()
        for t in threads:
            t.start()
        peak_rss = 0
        while any(t.is_alive() for t in threads):
            peak_rss = max(peak_rss, status(proc.pid)["VmRSS"])
            time.sleep(0.02)
        for t in threads:
            t.join()
        load_time = time.time() - t1
        text = requests.get(url + "/metrics", timeout=30).text
        gen = re.search(r"^yunmin_generation_tokens_total (\S+)$", text, re.M)
        after = status(proc.pid)
        report = {
            "model": os.path.abspath(a.model),
            "threads": a.threads,
            "load_seconds": round(load_s, 2),
            "idle_rss_mib": mib(idle["VmRSS"]),
            "idle_rss_anon_mib": mib(idle["RssAnon"]),
            "idle_rss_file_mib": mib(idle["RssFile"]),
            "os_threads": idle["Threads"],
            "concurrency": a.concurrency,
            "prompt_tokens": a.prompt_tokens,
            "max_tokens": a.max_tokens,
            "load_seconds_batch": round(load_time, 2),
            "generated_tokens": float(gen.group(1)) if gen else None,
            "peak_rss_sampled_mib": mib(peak_rss),
            "peak_rss_hwm_mib": mib(after["VmHWM"]),
            "rss_after_mib": mib(after["VmRSS"]),
            "failed_requests": len(failures),
        }
        print(json.dumps(report, indent=1))
        return 0 if not failures else 1
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    sys.exit(main())
