#!/usr/bin/python3
"""Time to first token of a conversation's next turn, cold versus resumed from its session,
and idle sessions held per GiB.

    /usr/bin/python3 bench/session_ttft.py --yunmind BUILD/server/yunmind --model DIR \\
        [--history 256,2048,8192,32768] [--new 1,16] [--reps 5] [--cold-reps 2] \\
        [--sessions 300] [--threads 0] [--sparsity PROFILE] [--json OUT.json]

Starts yunmind (127.0.0.1, port 0, checkpoints off so a cold run is really cold, cache budget
large enough for the session count), then for each history length H:
  - builds a history of H token ids (deterministic, in-vocabulary) and stores it as a session
    (a request with the H tokens and max_tokens 1: the session holds exactly H tokens);
  - resumed: the next turn adds K new tokens (each --new value) to the history, streams with
    the session id and records the time from sending to the first generated token's event;
    each repetition extends the history by K more tokens (so the history stays ~H long and
    every turn extends the stored one; cached_tokens is checked to equal the stored length);
  - appended: the same turn with session_append: the request carries only the K new tokens
    (a second session with the same history, so each mode extends its own);
  - cold: the same kind of prompt (H + K tokens) without a session;
  - one-token prompt: a 1-token prompt without a session (the floor the target refers to),
    sent right after each resumed turn, so the two are measured under the same conditions.
The medians go to a table (stdout) with the ratios resumed / one-token (paired, same row) and
cold / resumed, all measured in this one run. Then sessions per GiB: N idle sessions are made (1-token prompt,
max_tokens 1, one id each) and the daemon's RSS before and after gives the bytes each one
really costs; the cache's own accounting (yunmin_cache_bytes) is printed beside it.

With --tiers DIR it measures the state cache's tiers instead (docs/SERVER.md "State tiers"):
two daemons with a state_dir under DIR, one with a large RAM cache (every turn resumes from
RAM) and one with a RAM budget smaller than one state (every turn reads its session from the
disk tier and writes the new one); for each history length the next turn's TTFT resumed from
RAM, from disk, and cold (no session, on the RAM daemon), all streamed, medians of --reps, and
the disk daemon's mean state-file write time from its metrics. With --store redis://HOST:PORT/DB
as well, a third daemon without a state_dir and with a RAM budget smaller than one state reads
every turn's session from that store (the store TTFT column).
Only the standard library: runs with any python3.
"""
import argparse
import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Server:
    def __init__(self, exe, model, threads, cache_bytes, sparsity=None, extra=()):
        env = {k: v for k, v in os.environ.items() if not k.startswith("YUNMIN_")}
        self.proc = subprocess.Popen(
            [exe, "--model", model, "--port", "0", "--threads", str(threads),
             "--checkpoint-interval", "0", "--cache-bytes", str(cache_bytes),
             "--max-prompt-tokens", "1000000", "--max-body-bytes", str(64 << 20),
             "--log-level", "warn"] + (["--sparsity", sparsity] if sparsity else []) +
            list(extra),
            stdout=subprocess.PIPE, env=env)
        line = self.proc.stdout.readline().decode()
        m = re.search(r":(\d+)\s*$", line)
        if not m:
            raise SystemExit("yunmind did not start: %r" % line)
        self.port = int(m.group(1))
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if self.get("/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        info = json.loads(self.get("/v1/models")[1])
        self.n_vocab = None
        self.model_id = info["data"][0]["id"]

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body

    def complete(self, prompt, session=None, max_tokens=1, append=False):
        """Stream one completion; (seconds to the first token event, usage)."""
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        if session is not None:
            body["session_id"] = session
        if append:
            body["session_append"] = True
        data = json.dumps(body).encode()
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        t0 = time.perf_counter()
        c.request("POST", "/v1/completions", body=data,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            raise SystemExit("completion failed: %d %s" % (r.status, r.read()[:300]))
        ttft, usage = None, None
        while True:
            line = r.readline()
            if not line:
                break
            if not line.startswith(b"data: {"):
                continue
            obj = json.loads(line[6:])
            if obj.get("choices") and ttft is None:
                ttft = time.perf_counter() - t0
            if obj.get("usage"):
                usage = obj["usage"]
        c.close()
        return ttft, usage

    def metric(self, name):
        text = self.get("/metrics")[1].decode()
        m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
        return float(m.group(1)) if m else None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def tiers(a, ids, histories, k):
    """Next-turn TTFT from RAM, from the disk tier, and cold (see the module doc)."""
    ram = Server(a.yunmind, a.model, a.threads, 64 << 30, a.sparsity,
                 ["--state-dir", os.path.join(a.tiers, "ram")])
    disk = Server(a.yunmind, a.model, a.threads, 1, a.sparsity,
                  ["--state-dir", os.path.join(a.tiers, "disk")])
    store = None
    if a.store:
        store = Server(a.yunmind, a.model, a.threads, 1, a.sparsity,
                       ["--session-store", a.store, "--state-secret", "bench secret"])
    tiers_used = [("ram", ram), ("disk", disk)] + ([("store", store)] if store else [])
    out = {"model": a.model, "threads": a.threads, "new": k, "tier_rows": []}
    try:
        for _, srv in tiers_used:
            for _ in range(3):
                srv.complete(ids[:64])
        print("| history | cold TTFT ms | RAM TTFT ms | disk TTFT ms | store TTFT ms | disk / RAM "
              "| store / RAM | cold / disk |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for h in histories:
            sid = "t%d" % h
            runs = {}
            for name, srv in tiers_used:
                srv.complete(ids[:h], session=sid)
                stored, t_all = h, []
                for r in range(a.reps):
                    n = stored + k
                    t, u = srv.complete(ids[:n], session=sid)
                    if u["prompt_tokens_details"]["cached_tokens"] != stored:
                        raise SystemExit("%s, history %d: cached_tokens %d, expected %d" %
                                         (name, h, u["prompt_tokens_details"]["cached_tokens"],
                                          stored))
                    t_all.append(t)
                    stored = n
                runs[name] = t_all
            runs["cold"] = [ram.complete(ids[:h + k])[0] for _ in range(a.cold_reps)]
            med = {n: statistics.median(v) for n, v in runs.items()}
            st = med.get("store", float("nan"))
            row = {"history": h, "cold_ttft_s": med["cold"], "ram_ttft_s": med["ram"],
                   "disk_ttft_s": med["disk"], "store_ttft_s": st, "runs": runs,
                   "store_over_ram": st / med["ram"],
                   "disk_over_ram": med["disk"] / med["ram"],
                   "cold_over_disk": med["cold"] / med["disk"]}
            out["tier_rows"].append(row)
            print("| %d | %.1f | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f |" %
                  (h, med["cold"] * 1e3, med["ram"] * 1e3, med["disk"] * 1e3, st * 1e3,
                   row["disk_over_ram"], row["store_over_ram"], row["cold_over_disk"]))
            sys.stdout.flush()
        hits = disk.metric("yunmin_state_disk_hits_total")
        wsum = disk.metric("yunmin_state_disk_write_seconds_sum")
        wn = disk.metric("yunmin_state_disk_write_seconds_count")
        out.update({"disk_hits": hits, "disk_write_mean_s": wsum / wn, "disk_writes": wn})
        print()
        print("disk daemon: %d disk hits; %d state files written, %.2f ms each on average" %
              (hits, wn, 1e3 * wsum / wn))
        if store:
            sh = store.metric("yunmin_state_store_hits_total")
            ssum = store.metric("yunmin_state_store_write_seconds_sum")
            sn = store.metric("yunmin_state_store_write_seconds_count")
            out.update({"store_hits": sh, "store_write_mean_s": ssum / sn})
            print("store daemon: %d store hits; %d states written, %.2f ms each on average" %
                  (sh, sn, 1e3 * ssum / sn))
    finally:
        rcs = [srv.stop() for _, srv in tiers_used]
    if any(rc != 0 for rc in rcs):
        raise SystemExit("yunmind exited with %s" % rcs)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--yunmind", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--history", default="256,2048,8192,32768")
    ap.add_argument("--new", default="1,16")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cold-reps", type=int, default=2)
    ap.add_argument("--sessions", type=int, default=300)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=4000,
                    help="history ids are drawn from [1, vocab)")
    ap.add_argument("--sparsity", help="serve this sparsity profile (compact states)")
    ap.add_argument("--json")
    ap.add_argument("--tiers", metavar="DIR",
                    help="measure RAM vs disk tier vs cold instead, state dirs under DIR")
    ap.add_argument("--store", metavar="URL",
                    help="with --tiers: also measure a session_store (redis://host:port/db)")
    a = ap.parse_args()
    histories = [int(x) for x in a.history.split(",")]
    news = [int(x) for x in a.new.split(",")]
    rng = random.Random(7)
    longest = max(histories) + (a.reps + 2) * max(news) + 8
    ids = [rng.randrange(1, a.vocab) for _ in range(longest)]
    if a.tiers:
        return tiers(a, ids, histories, news[0])

    srv = Server(a.yunmind, a.model, a.threads, 64 << 30, a.sparsity)
    out = {"model": a.model, "threads": a.threads, "rows": []}
    try:
        # Warm up the engine and the caches of the machine.
        for _ in range(3):
            srv.complete(ids[:64])
        print("| history | new tokens | cold TTFT ms | resumed TTFT ms (whole history sent) | "
              "resumed TTFT ms (session_append) | one-token prompt TTFT ms | resumed / one-token"
              " | appended / one-token | cold / appended |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for h in histories:
            for k in news:
                sid = "h%d-k%d" % (h, k)
                _, u = srv.complete(ids[:h], session=sid)  # the conversation so far
                srv.complete(ids[:h], session=sid + "a")
                stored, stored_a = h, h
                resumed, appended, one = [], [], []
                for r in range(a.reps):
                    n = stored + k
                    t, u = srv.complete(ids[:n], session=sid)
                    cached = u["prompt_tokens_details"]["cached_tokens"]
                    if cached != stored:
                        raise SystemExit("history %d: cached_tokens %d, expected %d" %
                                         (h, cached, stored))
                    resumed.append(t)
                    stored = n
                    t, u = srv.complete(ids[h + r * k:h + (r + 1) * k], session=sid + "a",
                                        append=True)
                    if u["prompt_tokens_details"]["cached_tokens"] != stored_a:
                        raise SystemExit("history %d: appended turn cached %d, expected %d" %
                                         (h, u["prompt_tokens_details"]["cached_tokens"],
                                          stored_a))
                    appended.append(t)
                    stored_a += k + 1  # the pending token of the previous answer, then K new
                    one.append(srv.complete(ids[r:r + 1])[0])
                cold = [srv.complete(ids[:h + k])[0] for _ in range(a.cold_reps)]
                rm, cm = statistics.median(resumed), statistics.median(cold)
                om, am = statistics.median(one), statistics.median(appended)
                row = {"history": h, "new": k, "cold_ttft_s": cm, "resumed_ttft_s": rm,
                       "appended_ttft_s": am, "one_token_ttft_s": om, "resumed_runs": resumed,
                       "appended_runs": appended, "cold_runs": cold, "one_token_runs": one,
                       "resumed_over_one_token": rm / om, "appended_over_one_token": am / om,
                       "cold_over_appended": cm / am}
                out["rows"].append(row)
                print("| %d | %d | %.1f | %.2f | %.2f | %.2f | %.3f | %.3f | %.0f |" %
                      (h, k, cm * 1e3, rm * 1e3, am * 1e3, om * 1e3, rm / om, am / om, cm / am))
                sys.stdout.flush()
        # Idle sessions per GiB: RSS growth per session actually held.
        if a.sessions > 0:
            for i in range(8):  # settle allocator growth from the runs above
                srv.complete(ids[i:i + 1], session="warm%d" % i)
            before_rss = rss_bytes(srv.proc.pid)
            before_cache = srv.metric("yunmin_cache_bytes")
            before_n = srv.metric("yunmin_cache_sessions")
            for i in range(a.sessions):
                srv.complete(ids[i % 64:i % 64 + 1], session="idle%d" % i)
            held = srv.metric("yunmin_cache_sessions") - before_n
            rss_per = (rss_bytes(srv.proc.pid) - before_rss) / held
            acct_per = (srv.metric("yunmin_cache_bytes") - before_cache) / held
            out.update({"sessions_made": int(held), "rss_bytes_per_session": rss_per,
                        "cache_bytes_per_session": acct_per,
                        "sessions_per_gib_rss": (1 << 30) / rss_per,
                        "sessions_per_gib_budget": (1 << 30) / acct_per})
            print()
            print("idle sessions: %d made; RSS %.0f bytes each (%.0f per GiB); cache accounting "
                  "%.0f bytes each (%.0f per GiB of cache_bytes)" %
                  (held, rss_per, (1 << 30) / rss_per, acct_per, (1 << 30) / acct_per))
    finally:
        rc = srv.stop()
    if rc != 0:
        raise SystemExit("yunmind exited with %s" % rc)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
