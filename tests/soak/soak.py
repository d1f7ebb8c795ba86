#!/usr/bin/python3
"""tests/soak/soak.py - mixed traffic against one yunmind for a fixed time; its memory, open
files and latencies are sampled and must stay flat.

Usage: soak.py YUNMIND_EXE SOURCE_ROOT [--duration S] [--warmup S] [--sample-s S]
               [--cache-bytes N] [--out DIR] [--rss-slack-mib M] [--fd-slack N]

One daemon serves the m40 conformance model (tests/fixtures/conformance/m40-bias-k3-f32) on
127.0.0.1 with a tenants file (alpha, beta: ordinary; gamma: max_concurrent 1, used only to
provoke 429) and an adapter_dir holding the PEFT fixtures of tests/fixtures/peft. Client
threads run until the duration is over:

  plain     x2  non-streaming completions, random tenant, base model or an adapter, max 16 tokens
  stream    x2  streaming completions with include_usage, 8-64 tokens; must end in [DONE]
  session   x1  conversations by token ids with session_id: each turn resends the history plus
                the answer; a later turn counts as resumed when cached_tokens > 0, as cold
                otherwise (evicted, or its adapter replaced meanwhile); cached_tokens must stay
                below the prompt's length; ends with DELETE /v1/sessions/{id}
  cancel    x1  opens a long stream, reads a few events and closes it; or sends a plain
                request on a raw socket and hangs up before the answer
  adapters  x1  uploads a scratch adapter, uses it, deletes it; every fifth round replaces a
                live adapter (hot swap) that the plain and stream clients keep using
  provoke   x1  requests that must fail with a given status (400, 401, 404, 413, 422, 429);
                counted apart, and a different status counts as an error

Every sample_s seconds a row goes to soak.csv: VmRSS and VmHWM (/proc/PID/status), open
descriptors (/proc/PID/fd), threads, state-cache gauges from /metrics, requests and tokens per
second and latency percentiles of the interval. summary.json has the totals.

Pass: no unexpected response or client error; every provoked request got its status; the
adapter store holds exactly the live adapters at the end (no scratch, no broken upload, no
leftover of a failed one); over
the samples after the warm-up, split in thirds, the last third's largest RSS is at most the
first third's largest + rss_slack_mib (8 MiB), and likewise open descriptors (+ fd_slack, 8);
the daemon exits 0 on SIGTERM. The state cache is given a small budget (--cache-bytes, 16 MiB)
so it fills during the warm-up and then stays at its budget. Exit status 0 = pass.

Bounded: every request has a timeout, the daemon is killed at the end whatever happens.
"""

import argparse
import csv
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import requests

T = 30  # seconds: the bound on any single request
VOCAB = 4099
COMPLETIONS = ("plain", "stream", "session", "adapter_use")  # what req_per_s counts


def pct(values, q):
    """The q-th percentile (nearest rank) of values, or None."""
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(q / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


class RawAnswer:
    """The status line and head of an answer read from a raw socket."""

    def __init__(self, data):
        m = re.match(rb"HTTP/1\.1 (\d{3}) ", data)
        self.status_code = int(m.group(1)) if m else 0
        self.text = data.decode("latin-1")


class Stats:
    """Counters and latency samples shared by the client threads."""

    def __init__(self):
        self.t0 = time.monotonic()  # error lines say when, in seconds from here
        self.lock = threading.Lock()
        self.count = {}        # kind -> completed requests (expected outcome)
        self.tokens = 0        # completion tokens received
        self.errors = []       # unexpected outcomes (first 200 kept)
        self.n_errors = 0
        self.provoked = {}     # expected status -> count
        self.lat = {}          # kind -> [seconds] since the last sample
        self.lat_all = {}      # kind -> [seconds] after the warm-up
        self.warm = False
        self.extra = {}        # named counters (session hits, cancellations, ...)

    def ok(self, kind, seconds=None, tokens=0):
        with self.lock:
            self.count[kind] = self.count.get(kind, 0) + 1
            self.tokens += tokens
            if seconds is not None:
                self.lat.setdefault(kind, []).append(seconds)
                if self.warm:
                    self.lat_all.setdefault(kind, []).append(seconds)

    def add(self, name, n=1):
        with self.lock:
            self.extra[name] = self.extra.get(name, 0) + n

    def error(self, what):
        with self.lock:
            self.n_errors += 1
            if len(self.errors) < 200:
                self.errors.append("%.1f %s" % (time.monotonic() - self.t0, what[:500]))

    def provoked_ok(self, status):
        with self.lock:
            self.provoked[status] = self.provoked.get(status, 0) + 1

    def take_interval(self):
        with self.lock:
            lat, self.lat = self.lat, {}
            return lat, dict(self.count), self.tokens, self.n_errors


class Soak:
    def __init__(self, args):
        self.args = args
        self.root = args.root
        self.model = os.path.join(self.root, "tests", "fixtures", "conformance", "m40-bias-k3-f32")
        self.peft = os.path.join(self.root, "tests", "fixtures", "peft")
        self.tmp = tempfile.mkdtemp(prefix="yunmin-soak-")
        self.adapter_dir = os.path.join(self.tmp, "adapters")
        self.stats = Stats()
        self.stop = threading.Event()
        self.proc = None
        self.keys = {}
        self.files = {}
        for name in ("lora-all4-m40", "ia3-out-m40", "ia3-ff-m40", "hybrid-m40"):
            self.files[name] = self.read_adapter(name)
        with open(os.path.join(self.root, "data", "tinyshakespeare.txt"), encoding="utf-8") as f:
            self.text = f.read()
        # The adapters the plain and stream clients use; never deleted, sometimes replaced.
        self.live = {"alpha": ["voice", "tone"], "beta": ["voice", "mix"]}
        self.rounds = 0  # adapter rounds, for the hot swap every fifth

    def read_adapter(self, name):
        out = []
        top = os.path.join(self.peft, name)
        for d, _, names in os.walk(top):
            for n in sorted(names):
                p = os.path.join(d, n)
                with open(p, "rb") as f:
                    out.append((os.path.relpath(p, top), f.read()))
        return out

    # --- the daemon ---

    def new_key(self):
        p = subprocess.run([self.args.yunmind, "--new-key"], capture_output=True, timeout=30)
        if p.returncode != 0:
            raise RuntimeError("yunmind --new-key failed: %r" % p.stderr)
        return json.loads(p.stdout)

    def start(self):
        tenants = []
        for name, limit in (("alpha", 0), ("beta", 0), ("gamma", 1)):
            k = self.new_key()
            self.keys[name] = k["key"]
            tenants.append({"name": name, "keys": [k["hash"]], "max_concurrent": limit})
        tfile = os.path.join(self.tmp, "tenants.json")
        with open(tfile, "w") as f:
            json.dump({"tenants": tenants}, f)
        env = {k: v for k, v in os.environ.items() if not k.startswith("YUNMIN_")}
        self.log = open(os.path.join(self.tmp, "yunmind.log"), "w+b")
        self.proc = subprocess.Popen(
            [self.args.yunmind, "--model", self.model, "--port", "0", "--threads", "1",
             "--tenants-file", tfile, "--adapter-dir", self.adapter_dir,
             "--cache-bytes", str(self.args.cache_bytes), "--checkpoint-interval", "16",
             "--max-body-bytes", str(1 << 20), "--max-tokens-cap", "4096"],
            stdout=subprocess.PIPE, stderr=self.log, env=env)
        line = self.proc.stdout.readline().decode()
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if not m:
            raise RuntimeError("yunmind did not start: %r\n%s" % (line, self.log_tail()))
        self.port = int(m.group(1))
        self.url = "http://127.0.0.1:%d" % self.port
        deadline = time.monotonic() + 60
        while requests.get(self.url + "/readyz", timeout=T).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("yunmind never became ready\n" + self.log_tail())
            time.sleep(0.05)
        for tenant, names in self.live.items():
            for name, fixture in zip(names, ("lora-all4-m40", "ia3-out-m40") if tenant == "alpha"
                                     else ("ia3-ff-m40", "hybrid-m40")):
                r = self.upload(tenant, name, fixture)
                if r.status_code not in (200, 201):
                    raise RuntimeError("cannot upload %s/%s: %s" % (tenant, name, r.text))

    def log_tail(self, n=4000):
        self.log.flush()
        self.log.seek(0, os.SEEK_END)
        size = self.log.tell()
        self.log.seek(max(0, size - n))
        return self.log.read().decode("utf-8", "replace")

    def finish(self):
        """SIGTERM, wait for the drain; returns the exit status (None if it had to be killed)."""
        if self.proc is None:
            return None
        rc = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(60)
            except subprocess.TimeoutExpired:
                rc = None
        else:
            rc = self.proc.returncode
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return rc

    # --- helpers ---

    def h(self, tenant):
        return {"Authorization": "Bearer " + self.keys[tenant]}

    def upload(self, tenant, name, fixture, files=None):
        parts = [(rel, (os.path.basename(rel), data, "application/octet-stream"))
                 for rel, data in (files or self.files[fixture])]
        return requests.put(self.url + "/v1/adapters/" + name, files=parts,
                            headers=self.h(tenant), timeout=T)

    def prompt(self, rng):
        if rng.random() < 0.5:
            i = rng.randrange(0, len(self.text) - 400)
            return self.text[i:i + rng.randrange(20, 400)]
        return [rng.randrange(3, VOCAB) for _ in range(rng.randrange(4, 120))]

    def pick_model(self, rng, tenant):
        return rng.choice([None] + self.live[tenant])

    def expect(self, what, r, status=200):
        if r.status_code != status:
            self.stats.error("%s: status %d (wanted %d): %s" % (what, r.status_code, status,
                                                                 r.text[:300]))
            return False
        return True

    def loop(self, name, fn, seed):
        rng = random.Random(seed)
        while not self.stop.is_set():
            try:
                fn(rng)
            except Exception as e:  # noqa: BLE001 - every client failure counts
                self.stats.error("%s: %r" % (name, e))
                time.sleep(0.1)

    # --- the clients ---

    def plain(self, rng, session=None):
        tenant = rng.choice(("alpha", "beta"))
        body = {"prompt": self.prompt(rng), "max_tokens": 16,
                "temperature": rng.choice((0, 0.7, 1.0)), "seed": rng.randrange(1 << 30)}
        model = self.pick_model(rng, tenant)
        if model:
            body["model"] = model
        t0 = time.monotonic()
        r = (session or requests).post(self.url + "/v1/completions", json=body,
                                       headers=self.h(tenant), timeout=T)
        dt = time.monotonic() - t0
        if self.expect("plain", r):
            u = r.json()["usage"]
            if not 0 <= u["completion_tokens"] <= 16:
                self.stats.error("plain: completion_tokens %r" % u)
            self.stats.ok("plain", dt, u["completion_tokens"])

    def plain_client(self, seed):
        s = requests.Session()  # keep-alive: one connection reused
        self.loop("plain", lambda rng: self.plain(rng, s), seed)
        s.close()

    def stream(self, rng):
        tenant = rng.choice(("alpha", "beta"))
        n = rng.randrange(8, 65)
        body = {"prompt": self.prompt(rng), "max_tokens": n, "stream": True,
                "ignore_eos": True, "stream_options": {"include_usage": True}}
        model = self.pick_model(rng, tenant)
        if model:
            body["model"] = model
        t0 = time.monotonic()
        ttft, usage, done = None, None, False
        with requests.post(self.url + "/v1/completions", json=body, headers=self.h(tenant),
                           stream=True, timeout=T) as r:
            if not self.expect("stream", r):
                return
            for line in r.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                if line == b"data: [DONE]":
                    done = True
                    continue
                obj = json.loads(line[6:])
                if "error" in obj:
                    self.stats.error("stream: error event %r" % obj)
                    return
                if obj["choices"] and ttft is None:
                    ttft = time.monotonic() - t0
                if obj.get("usage"):
                    usage = obj["usage"]
        if not done or usage is None or usage["completion_tokens"] != n:
            self.stats.error("stream: done=%r usage=%r wanted %d tokens" % (done, usage, n))
            return
        self.stats.ok("stream", time.monotonic() - t0, n)
        if ttft is not None:
            self.stats.ok("ttft", ttft)

    def session(self, rng):
        tenant = rng.choice(("alpha", "beta"))
        sid = "soak-%d-%d" % (os.getpid(), rng.randrange(1 << 40))
        model = self.pick_model(rng, tenant)
        hist = [rng.randrange(3, VOCAB) for _ in range(rng.randrange(10, 60))]
        for turn in range(rng.randrange(2, 8)):
            if self.stop.is_set():
                break
            body = {"prompt": hist, "max_tokens": 12, "temperature": 0, "ignore_eos": True,
                    "logprobs": 0, "return_tokens_as_token_ids": True, "session_id": sid}
            if model:
                body["model"] = model
            t0 = time.monotonic()
            r = requests.post(self.url + "/v1/completions", json=body, headers=self.h(tenant),
                              timeout=T)
            if not self.expect("session", r):
                return
            obj = r.json()
            cached = obj["usage"]["prompt_tokens_details"]["cached_tokens"]
            if turn > 0:
                self.stats.add("session_resumed" if cached > 0 else "session_cold")
            if cached >= len(hist):
                self.stats.error("session: cached %d of %d prompt tokens" % (cached, len(hist)))
            ids = [int(t.split(":")[1]) for t in obj["choices"][0]["logprobs"]["tokens"]]
            self.stats.ok("session", time.monotonic() - t0, len(ids))
            # If another version of the adapter was published between turns, the session does
            # not resume (its key names the version): counted as cold, not an error.
            hist = hist + ids + [rng.randrange(3, VOCAB) for _ in range(rng.randrange(1, 10))]
        r = requests.delete(self.url + "/v1/sessions/" + sid, headers=self.h(tenant), timeout=T)
        if r.status_code == 404:
            self.stats.add("session_evicted_before_delete")
        elif self.expect("session delete", r):
            self.stats.add("session_deleted")

    def cancel(self, rng):
        tenant = rng.choice(("alpha", "beta"))
        body = {"prompt": self.prompt(rng), "max_tokens": 2000, "ignore_eos": True}
        if rng.random() < 0.7:
            with requests.post(self.url + "/v1/completions", json=dict(body, stream=True),
                               headers=self.h(tenant), stream=True, timeout=T) as r:
                if not self.expect("cancel", r):
                    return
                # A few lines, then close. A stream the server wrote before the client read
                # may hold all its tokens in one or two events and end sooner: also fine.
                k = rng.randrange(1, 6)
                for i, _ in enumerate(r.iter_lines()):
                    if i + 1 >= k:
                        break
            self.stats.add("cancelled_streams")
        else:
            payload = json.dumps(body).encode()
            with socket.create_connection(("127.0.0.1", self.port), timeout=T) as s:
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                          + self.keys[tenant].encode() + b"\r\nContent-Type: application/json"
                          b"\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
                time.sleep(rng.uniform(0.05, 0.3))
            self.stats.add("cancelled_plain")
        self.stats.ok("cancel")
        time.sleep(rng.uniform(0.1, 0.5))

    def adapters(self, rng):
        tenant = rng.choice(("alpha", "beta"))
        fixture = rng.choice(sorted(self.files))
        r = self.upload(tenant, "scratch", fixture)
        self.expect("upload scratch", r, 201)
        if r.status_code not in (200, 201):
            return
        self.stats.add("uploads")  # and on with the round, so that one error does not repeat
        body = {"model": "scratch", "prompt": self.prompt(rng), "max_tokens": 8}
        r = requests.post(self.url + "/v1/completions", json=body, headers=self.h(tenant),
                          timeout=T)
        if self.expect("complete scratch", r):
            self.stats.ok("adapter_use")
        r = requests.delete(self.url + "/v1/adapters/scratch", headers=self.h(tenant), timeout=T)
        if self.expect("delete scratch", r):
            self.stats.add("deletes")
        self.rounds += 1
        if self.rounds % 5 == 0:
            name = rng.choice(self.live[tenant])
            r = self.upload(tenant, name, rng.choice(sorted(self.files)))
            if self.expect("hot swap", r, 200):
                self.stats.add("hot_swaps")
        self.stats.ok("adapters")
        time.sleep(rng.uniform(0.2, 0.6))

    def raw_request(self, sock, tenant, body):
        payload = json.dumps(body).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + self.keys[tenant].encode() + b"\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))

    def over_concurrency(self):
        """gamma may run one request: hold its slot with a long stream (raw socket, nothing
        parsed but the status line), then ask again on a connection opened beforehand."""
        deadline = time.monotonic() + 10
        while True:
            a = socket.create_connection(("127.0.0.1", self.port), timeout=T)
            b = socket.create_connection(("127.0.0.1", self.port), timeout=T)
            try:
                self.raw_request(a, "gamma", {"prompt": "x", "max_tokens": 4096,
                                              "ignore_eos": True, "stream": True})
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = a.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
                if status == 429 and time.monotonic() < deadline:
                    # The previous round's stream still holds the slot (its end is noticed at
                    # its next write): try again.
                    time.sleep(0.1)
                    continue
                if status != 200:
                    self.stats.error("gamma stream: status %d: %r" % (status, head[:300]))
                    return None
                self.raw_request(b, "gamma", {"prompt": "x", "max_tokens": 1})
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = b.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.stats.add("cancelled_streams")
                return RawAnswer(data)
            finally:
                a.close()
                b.close()

    def provoke(self, rng):
        """One request that must fail with a known status."""
        kind = rng.randrange(8)
        url = self.url + "/v1/completions"
        ha = self.h("alpha")
        if kind == 0:
            want, r = 400, requests.post(url, data=b'{"prompt": "x", ', headers=ha, timeout=T)
        elif kind == 1:
            want, r = 401, requests.post(url, json={"prompt": "x"}, timeout=T,
                                         headers={"Authorization": "Bearer not-a-key"})
        elif kind == 2:
            want, r = 400, requests.post(url, json={"prompt": "x", "max_tokens": 5000},
                                         headers=ha, timeout=T)
        elif kind == 3:
            want, r = 404, requests.post(url, json={"prompt": "x", "model": "no-such"},
                                         headers=ha, timeout=T)
        elif kind == 4:
            want = 413
            r = requests.post(url, data=b'{"prompt": "' + b"x" * (1 << 20) + b'"}', headers=ha,
                              timeout=T)
        elif kind == 5:
            want = 422
            files = [(rel, data if not rel.endswith(".safetensors") else data[:len(data) // 2])
                     for rel, data in self.files["lora-all4-m40"]]
            r = self.upload("alpha", "broken", None, files=files)
        elif kind == 6:
            want, r = 400, requests.post(url, json={"prompt": [1, VOCAB + 5]}, headers=ha,
                                         timeout=T)
        else:
            want, r = 429, self.over_concurrency()
            if r is None:
                return
        if r.status_code != want:
            self.stats.error("provoke %d: got %d: %s" % (want, r.status_code, r.text[:300]))
        else:
            self.stats.provoked_ok(want)
        time.sleep(rng.uniform(0.3, 1.0))

    # --- sampling ---

    def proc_status(self):
        out = {}
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "Threads"):
                    out[k] = int(v.split()[0])
        out["fds"] = len(os.listdir("/proc/%d/fd" % self.proc.pid))
        return out

    def metrics(self):
        text = requests.get(self.url + "/metrics", timeout=T).text
        out = {}
        for name in ("yunmin_cache_bytes", "yunmin_cache_budget_bytes", "yunmin_cache_sessions",
                     "yunmin_cache_prefixes", "yunmin_running_sequences",
                     "yunmin_cache_evictions_total"):
            m = re.search(r"^%s (\S+)$" % name, text, re.M)
            out[name] = float(m.group(1)) if m else None
        return out

    def run(self):
        a = self.args
        self.start()
        clients = [("plain", self.plain_client, None), ("plain", self.plain_client, None),
                   ("stream", None, self.stream), ("stream", None, self.stream),
                   ("session", None, self.session), ("cancel", None, self.cancel),
                   ("adapters", None, self.adapters), ("provoke", None, self.provoke)]
        threads = []
        for i, (name, whole, step) in enumerate(clients):
            seed = a.seed * 100 + i
            target = (lambda w=whole, s=seed: w(s)) if whole else \
                (lambda n=name, f=step, s=seed: self.loop(n, f, s))
            t = threading.Thread(target=target, name=name, daemon=True)
            threads.append(t)
        t_start = time.monotonic()
        for t in threads:
            t.start()
        rows = []
        csv_path = os.path.join(a.out, "soak.csv")
        fields = ["t_s", "rss_kib", "hwm_kib", "fds", "threads", "cache_bytes", "cache_sessions",
                  "cache_prefixes", "cache_evictions", "running", "req_per_s", "tokens_per_s",
                  "plain_p50_ms", "plain_p99_ms", "ttft_p50_ms", "ttft_p99_ms", "stream_p50_ms",
                  "stream_p99_ms", "errors"]
        last_t, last_count, last_tokens = t_start, 0, 0
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            while True:
                end = t_start + a.duration
                time.sleep(max(0.0, min(a.sample_s, end - time.monotonic())))
                now = time.monotonic()
                if self.proc.poll() is not None:
                    self.stats.error("yunmind exited with %r during the run" % self.proc.returncode)
                    break
                if not self.stats.warm and now - t_start >= a.warmup:
                    self.stats.warm = True
                st, mt = self.proc_status(), self.metrics()
                lat, count, tokens, n_err = self.stats.take_interval()
                done = sum(count.get(k, 0) for k in COMPLETIONS)
                dt = now - last_t
                ms = lambda k, q: (round(pct(lat.get(k), q) * 1e3, 1)
                                   if lat.get(k) else "")
                row = {"t_s": round(now - t_start, 1), "rss_kib": st["VmRSS"],
                       "hwm_kib": st["VmHWM"], "fds": st["fds"], "threads": st["Threads"],
                       "cache_bytes": int(mt["yunmin_cache_bytes"] or 0),
                       "cache_sessions": int(mt["yunmin_cache_sessions"] or 0),
                       "cache_prefixes": int(mt["yunmin_cache_prefixes"] or 0),
                       "cache_evictions": int(mt["yunmin_cache_evictions_total"] or 0),
                       "running": int(mt["yunmin_running_sequences"] or 0),
                       "req_per_s": round((done - last_count) / dt, 2),
                       "tokens_per_s": round((tokens - last_tokens) / dt, 1),
                       "plain_p50_ms": ms("plain", 50), "plain_p99_ms": ms("plain", 99),
                       "ttft_p50_ms": ms("ttft", 50), "ttft_p99_ms": ms("ttft", 99),
                       "stream_p50_ms": ms("stream", 50), "stream_p99_ms": ms("stream", 99),
                       "errors": n_err}
                rows.append(row)
                w.writerow(row)
                f.flush()
                print("soak %6.0fs rss %6.1f MiB fds %3d cache %5.1f MiB req/s %6.1f tok/s %7.1f "
                      "plain p50/p99 %s/%s ms errors %d" % (
                          row["t_s"], row["rss_kib"] / 1024, row["fds"],
                          row["cache_bytes"] / 2 ** 20, row["req_per_s"], row["tokens_per_s"],
                          row["plain_p50_ms"], row["plain_p99_ms"], n_err), flush=True)
                last_t, last_count, last_tokens = now, done, tokens
                if now >= end:
                    break
        self.stop.set()
        for t in threads:
            t.join(T + 5)
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            self.stats.error("client threads still running after the end: %s" % stuck)
        store_ok = self.check_store()
        rc = self.finish()
        return self.summary(rows, t_start, rc, store_ok)

    def check_store(self):
        """The store holds exactly the live adapters: no scratch, no broken upload, no
        leftovers of failed uploads."""
        ok = True
        for tenant, names in self.live.items():
            tdir = os.path.join(self.adapter_dir, tenant)
            links = sorted(n for n in os.listdir(tdir) if not n.startswith("."))
            versions = sorted(os.listdir(os.path.join(tdir, ".v")))
            tmp = [n for n in os.listdir(os.path.join(tdir, ".tmp")) if n.startswith("up-")]
            if links != sorted(names) or len(versions) != len(names) or tmp:
                self.stats.error("store of %s: links %s versions %s tmp %s" % (tenant, links,
                                                                              versions, tmp))
                ok = False
        return ok

    def summary(self, rows, t_start, rc, store_ok):
        a, s = self.args, self.stats
        post = [r for r in rows if r["t_s"] >= a.warmup]
        checks, reasons = {}, []
        if len(post) >= 3:
            k = len(post) // 3
            first, last = post[:k], post[-k:]
            rss_first = max(r["rss_kib"] for r in first)
            rss_last = max(r["rss_kib"] for r in last)
            fd_first = max(r["fds"] for r in first)
            fd_last = max(r["fds"] for r in last)
            checks["rss_first_third_max_kib"] = rss_first
            checks["rss_last_third_max_kib"] = rss_last
            checks["fds_first_third_max"] = fd_first
            checks["fds_last_third_max"] = fd_last
            if rss_last > rss_first + a.rss_slack_mib * 1024:
                reasons.append("RSS grew: last third max %d KiB > first third max %d KiB + %d MiB"
                               % (rss_last, rss_first, a.rss_slack_mib))
            if fd_last > fd_first + a.fd_slack:
                reasons.append("open descriptors grew: %d > %d + %d" % (fd_last, fd_first,
                                                                       a.fd_slack))
            # Least-squares slope of RSS after the warm-up, for the record.
            xs = [r["t_s"] for r in post]
            ys = [r["rss_kib"] for r in post]
            mx, my = statistics.mean(xs), statistics.mean(ys)
            den = sum((x - mx) ** 2 for x in xs)
            checks["rss_slope_kib_per_hour"] = round(
                sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 3600, 1) if den else 0
            checks["cache_bytes_at_warmup_end"] = post[0]["cache_bytes"]
        else:
            reasons.append("too few samples after the warm-up (%d)" % len(post))
        if s.n_errors:
            reasons.append("%d unexpected responses or client errors" % s.n_errors)
        if rc != 0:
            reasons.append("exit status %r after SIGTERM" % rc)
        if not store_ok:
            reasons.append("the adapter store holds something it should not")
        wall = (rows[-1]["t_s"] if rows else 0) - a.warmup
        n_post = len(post)
        out = {
            "duration_s": a.duration, "warmup_s": a.warmup, "sample_s": a.sample_s,
            "cache_budget_bytes": a.cache_bytes, "samples": len(rows),
            "requests": s.count, "completion_tokens": s.tokens,
            "req_per_s_after_warmup": round(statistics.mean(r["req_per_s"] for r in post), 2)
            if n_post else None,
            "tokens_per_s_after_warmup": round(statistics.mean(r["tokens_per_s"] for r in post), 1)
            if n_post else None,
            "latency_ms_after_warmup": {
                k: {"n": len(v), "p50": round(pct(v, 50) * 1e3, 1),
                    "p99": round(pct(v, 99) * 1e3, 1), "max": round(max(v) * 1e3, 1)}
                for k, v in sorted(s.lat_all.items())},
            "provoked": {str(k): v for k, v in sorted(s.provoked.items())},
            "counters": s.extra, "unexpected": s.n_errors, "unexpected_first": s.errors[:20],
            "rss_kib_start": rows[0]["rss_kib"] if rows else None,
            "rss_kib_end": rows[-1]["rss_kib"] if rows else None,
            "hwm_kib_end": rows[-1]["hwm_kib"] if rows else None,
            "fds_start": rows[0]["fds"] if rows else None,
            "fds_end": rows[-1]["fds"] if rows else None,
            "checks": checks, "exit_status": rc, "measured_s_after_warmup": wall,
            "pass": not reasons, "reasons": reasons,
        }
        with open(os.path.join(a.out, "summary.json"), "w") as f:
            json.dump(out, f, indent=1)
        return out

    def cleanup(self):
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("yunmind")
    p.add_argument("root")
    p.add_argument("--duration", type=float, default=150, help="seconds of traffic")
    p.add_argument("--warmup", type=float, default=45, help="seconds before the checks start")
    p.add_argument("--sample-s", type=float, default=5)
    p.add_argument("--cache-bytes", type=int, default=16 << 20)
    p.add_argument("--rss-slack-mib", type=float, default=8)
    p.add_argument("--fd-slack", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=None, help="directory for soak.csv and summary.json")
    a = p.parse_args()
    scratch = None
    if a.out is None:
        scratch = a.out = tempfile.mkdtemp(prefix="yunmin-soak-out-")
    os.makedirs(a.out, exist_ok=True)
    s = Soak(a)
    out = None
    try:
        out = s.run()
    finally:
        if out is None or not out["pass"]:
            try:
                print("--- yunmind log tail\n" + s.log_tail(), file=sys.stderr)
            except Exception:  # noqa: BLE001 - the log may not exist
                pass
        s.cleanup()
    print(json.dumps(out, indent=1))
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
