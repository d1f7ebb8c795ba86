#!/usr/bin/python3
"""n choices in one request against the same number of separate concurrent requests.

    /usr/bin/python3 bench/n_choices.py --yunmind BUILD/server/yunmind --model DIR \\
        [--n 8] [--prompt-tokens 256] [--max-tokens 64] [--rounds 3] [--threads 0]

Starts yunmind (127.0.0.1, port 0, max_running >= n, prefix checkpoints off and cache 0 so
the separate requests each really prefill), then alternates, --rounds times:
  - one request with n choices (the prompt prefilled once, its state copied per choice);
  - n separate requests with the same body (n = 1) sent at once from n threads.
Every request has a prompt of --prompt-tokens ids, temperature 1, ignore_eos and
--max-tokens, so both sides generate n x max_tokens tokens. Prints the wall time of each
side, its generated tokens per second, and the ratio separate / n-choices per round (the
ratio is what to read on a loaded machine: both sides run in the same minute).
"""
import argparse
import re
import subprocess
import threading
import time

import requests


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--yunmind", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    proc = subprocess.Popen([a.yunmind, "--model", a.model, "--port", "0", "--threads",
                             str(a.threads), "--max-running", str(max(a.n, 8)),
                             "--checkpoint-interval", "0", "--cache-bytes", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline().decode()
        url = "http://127.0.0.1:%s" % re.search(r"127\.0\.0\.1:(\d+)", line).group(1)
        while requests.get(url + "/readyz", timeout=60).status_code != 200:
            time.sleep(0.05)
        prompt = [(i * 7919) % 200 + 10 for i in range(a.prompt_tokens)]
        body = {"prompt": prompt, "max_tokens": a.max_tokens, "temperature": 1.0,
                "ignore_eos": True}

        def post(b, out, i):
            r = requests.post(url + "/v1/completions", json=b, timeout=600)
            r.raise_for_status()
            out[i] = r.json()["usage"]["completion_tokens"]

        print("round  n-choices s  tok/s   separate s  tok/s   separate/n-choices")
        for k in range(a.rounds):
            out = [0]
            t0 = time.time()
            post(dict(body, n=a.n), out, 0)
            t_n = time.time() - t0
            tok_n = out[0]
            out = [0] * a.n
            ths = [threading.Thread(target=post, args=(body, out, i)) for i in range(a.n)]
            t0 = time.time()
            for t in ths:
                t.start()
            for t in ths:
                t.join()
            t_s = time.time() - t0
            tok_s = sum(out)
            print("%5d  %11.2f  %6.1f  %10.2f  %6.1f   %.2f" % (k + 1, t_n, tok_n / t_n, t_s,
                                                               tok_s / t_s, t_s / t_n))
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
