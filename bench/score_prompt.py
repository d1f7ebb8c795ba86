#!/usr/bin/python3
"""The cost of scoring a prompt (echo with logprobs, max_tokens 0) against a plain prefill.

    /usr/bin/python3 bench/score_prompt.py --yunmind BUILD/server/yunmind --model DIR \\
        [--chars 1500] [--rounds 10] [--threads 1]

Starts yunmind (127.0.0.1, port 0, prefix checkpoints off and cache 0, so every request
prefills its whole prompt), then alternates, --rounds times, the same prompt (the first
--chars characters of data/tinyshakespeare.txt) as
  - a plain completion of one token (the prefill, logits of the last row only);
  - a scored prompt: echo, logprobs 0, max_tokens 0 (logits and a log-softmax for every row,
    at most 64 scored rows per engine step).
Prints the median wall time of each (the first 2 rounds dropped as warm-up) and the ratio
scored / plain, which is what to read on a loaded machine (both run in the same minute).
"""
import argparse
import os
import re
import statistics
import subprocess
import time

import requests


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--yunmind", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--chars", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "data", "tinyshakespeare.txt"), encoding="utf-8") as f:
        text = f.read()[:a.chars]
    proc = subprocess.Popen([a.yunmind, "--model", a.model, "--port", "0", "--threads",
                             str(a.threads), "--checkpoint-interval", "0", "--cache-bytes", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline().decode()
        url = re.search(r"(http://127\.0\.0\.1:\d+)", line).group(1)
        deadline = time.time() + 30
        while requests.get(url + "/readyz", timeout=10).status_code != 200:
            if time.time() > deadline:
                raise RuntimeError("yunmind never became ready")
            time.sleep(0.05)
        plain = {"prompt": text, "max_tokens": 1, "temperature": 0}
        scored = {"prompt": text, "max_tokens": 0, "echo": True, "logprobs": 0}
        times = {"plain": [], "scored": []}
        n_prompt = 0
        for _ in range(a.rounds):
            for name, body in (("plain", plain), ("scored", scored)):
                t = time.perf_counter()
                r = requests.post(url + "/v1/completions", json=body, timeout=300)
                times[name].append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
                u = r.json()["usage"]
                assert u["prompt_tokens_details"]["cached_tokens"] == 0
                n_prompt = u["prompt_tokens"]
        mp = statistics.median(times["plain"][2:])
        ms = statistics.median(times["scored"][2:])
        print("%d prompt tokens: plain prefill + 1 token %.1f ms, scored %.1f ms (medians of "
              "%d rounds); scored / plain %.2f" % (n_prompt, mp * 1e3, ms * 1e3,
                                                   a.rounds - 2, ms / mp))
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
