#!/usr/bin/python3
"""tests/integration/test_deploy.py - the deployment topology of deploy/, as processes.

Usage: test_deploy.py YUNMIND_EXE SOURCE_ROOT      (scripts/test.sh's deploy-replicas stage)

What deploy/compose.yaml runs in containers, run here as plain processes on 127.0.0.1: Debian's
nginx with deploy/nginx/yunmin.conf (made stand-alone by deploy/nginx/render.sh, which changes
only the addresses and paths), in front of three yunmind replicas (the embedded default model,
--threads 1) that share one adapter directory and one tenants file. Ports are picked free; the
nginx, its pid file, logs and temporary files live in a temporary directory.

The tests run in order on one cluster:
  1 requests spread over the replicas (each replica's /metrics, read directly);
  2 an adapter uploaded through the balancer is served by every replica, within a bound;
  3 a session's turns (X-Session-Id) land on one replica and resume from its state
    (usage.prompt_tokens_details.cached_tokens > 0, yunmin_cache_* metrics);
  4 a rolling restart (SIGTERM each replica in turn, start a new one on its port) under a
    steady load fails no request;
  5 SIGKILL of one replica fails only the streams it was serving; new requests succeed.
And, on their own: the image's health check script, and yunmind as PID 1 of a PID namespace
(as in the container) draining on SIGTERM. Bounded: every request has a timeout, the whole run
has a deadline, and every process is stopped at the end whatever happens. Figures (spread,
propagation time, restart counts) are printed for docs/DEPLOY.md.
"""

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

import requests

YUNMIND = None
ROOT = None
MODEL = None
T = 30  # seconds: the bound on any single request
DEADLINE_S = 170  # the whole run
PROPAGATION_BOUND_S = 3.0  # adapter upload -> served by every replica


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith("YUNMIN_")}


class Replica:
    """One yunmind on a fixed 127.0.0.1 port (a restarted replica keeps its port)."""

    def __init__(self, port, adapter_dir, tenants_file):
        self.port = port
        self.url = "http://127.0.0.1:%d" % port
        self.addr = "127.0.0.1:%d" % port
        self.args = [YUNMIND, "--model", MODEL, "--host", "127.0.0.1", "--port", str(port),
                     "--threads", "1", "--adapter-dir", adapter_dir, "--drain-timeout-s",
                     "30", "--stream-ping-ms", "200"]
        if tenants_file:
            self.args += ["--tenants-file", tenants_file]
        self.proc = None
        self.stderr = None

    def start(self):
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self.stderr,
                                     env=clean_env())
        line = self.proc.stdout.readline().decode()
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError("yunmind did not start on %d: %r %s" % (self.port, line,
                                                                       self.log()))
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/readyz", timeout=T).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.02)
        raise RuntimeError("yunmind on %d never became ready: %s" % (self.port, self.log()))

    def log(self):
        if self.stderr is None:
            return ""
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")[-4000:]

    def metrics(self):
        return requests.get(self.url + "/metrics", timeout=T).text

    def counter(self, series, text=None):
        m = re.search(r"^%s (\S+)$" % re.escape(series), text or self.metrics(), re.M)
        return float(m.group(1)) if m else 0.0

    def completions_ok(self):
        return self.counter('yunmin_http_requests_total{route="/v1/completions",status="200"}')

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


class Balancer:
    """Debian's nginx with the shipped config, run by the current user under DIR."""

    def __init__(self, tmp, upstreams):
        self.dir = os.path.join(tmp, "nginx")
        os.mkdir(self.dir)
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        subprocess.run([os.path.join(ROOT, "deploy", "nginx", "render.sh"), self.dir,
                        "127.0.0.1:%d" % self.port] + upstreams, check=True, timeout=30)
        self.access_log = os.path.join(self.dir, "access.log")
        self.proc = subprocess.Popen(
            ["nginx", "-p", self.dir, "-c", os.path.join(self.dir, "nginx.conf"),
             "-e", os.path.join(self.dir, "error.log"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("nginx exited: " + self.proc.stderr.read().decode())
                time.sleep(0.05)
        raise RuntimeError("nginx did not listen")

    def log_entries(self):
        """The access log's JSON lines (written when each request ends)."""
        with open(self.access_log, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def entries_for(self, req_ids, timeout=10):
        """The log entries of these request ids: nginx writes a line after the response has
        gone out, so a client can be faster than the log; wait for them (bounded)."""
        deadline = time.time() + timeout
        while True:
            found = {e["req"]: e for e in self.log_entries() if e["req"] in req_ids}
            if len(found) == len(set(req_ids)) or time.time() > deadline:
                return found
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish the open requests
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def served_by(entry):
    """The replica that answered (the last address in $upstream_addr)."""
    return entry["upstream"].split(",")[-1].strip().split(" : ")[-1].strip()


def read_stream(resp):
    """(text, done, usage) of an SSE completion; raises on a broken connection."""
    text, done, usage = "", False, None
    for line in resp.iter_lines():
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            done = True
            continue
        obj = json.loads(data)
        if "error" in obj:
            raise RuntimeError("error event: %r" % obj)
        if obj["choices"]:
            text += obj["choices"][0]["text"]
        elif obj.get("usage"):
            usage = obj["usage"]
    return text, done, usage


def safetensors(tensors):
    """A safetensors file from {name: (shape, [floats])}, F32."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (shape, values) in sorted(tensors.items()):
        blob = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def ia3_adapter(cfg, scale):
    """An IA³ adapter for the model of config.json cfg: out_proj's outputs scaled."""
    d_model, n_layer = cfg["hidden_size"], cfg["num_hidden_layers"]
    tensors = {"base_model.model.backbone.layers.%d.mixer.out_proj.ia3_l" % layer:
               ([d_model, 1], [scale] * d_model) for layer in range(n_layer)}
    config = {"peft_type": "IA3", "target_modules": ["out_proj"], "feedforward_modules": [],
              "task_type": "CAUSAL_LM", "inference_mode": True}
    return [("adapter_config.json", ("adapter_config.json", json.dumps(config).encode(),
                                     "application/json")),
            ("adapter_model.safetensors", ("adapter_model.safetensors", safetensors(tensors),
                                           "application/octet-stream"))]


class Cluster(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.t_start = time.time()
        cls.tmp = tempfile.mkdtemp(prefix="yunmin-deploy-")
        cls.adapter_dir = os.path.join(cls.tmp, "adapters")
        os.mkdir(cls.adapter_dir)
        key = json.loads(subprocess.run([YUNMIND, "--new-key"], capture_output=True,
                                        check=True, timeout=30).stdout)
        cls.auth = {"Authorization": "Bearer " + key["key"]}
        cls.tenants = os.path.join(cls.tmp, "tenants.json")
        with open(cls.tenants, "w") as f:
            json.dump({"tenants": [{"name": "acme", "keys": [key["hash"]]}]}, f)
        cls.replicas = []
        cls.lb = None
        try:
            ports = set()
            while len(ports) < 3:
                ports.add(free_port())
            for p in sorted(ports):
                cls.replicas.append(Replica(p, cls.adapter_dir, cls.tenants).start())
            cls.lb = Balancer(cls.tmp, [r.addr for r in cls.replicas])
        except Exception:
            cls.tearDownClass()
            raise
        with open(os.path.join(MODEL, "config.json")) as f:
            cls.model_cfg = json.load(f)
        cls.figures = {}

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.lb is not None:
                cls.lb.stop()
            codes = [r.stop() for r in cls.replicas]
            if cls.replicas and getattr(cls, "killed", None) is None:
                assert codes == [0] * len(codes), "replica exit statuses %r" % codes
        finally:
            subprocess.run(["rm", "-rf", cls.tmp])
            if getattr(cls, "figures", None):
                print("\ndeploy figures: " + json.dumps(cls.figures, indent=1), file=sys.stderr)

    def setUp(self):
        self.assertLess(time.time() - self.t_start, DEADLINE_S, "over the time budget")

    def lb_post(self, body, headers=None, **kw):
        h = dict(self.auth, **(headers or {}))
        return requests.post(self.lb.url + "/v1/completions", json=body, headers=h,
                             timeout=T, **kw)

    # ---- 1 -----------------------------------------------------------------------------
    def test_1_requests_spread_over_replicas(self):
        before = [r.completions_ok() for r in self.replicas]
        n = 30
        for i in range(n):
            r = self.lb_post({"prompt": "ROMEO:", "max_tokens": 2, "temperature": 0})
            self.assertEqual(r.status_code, 200, r.text)
        got = [r.completions_ok() - b for r, b in zip(self.replicas, before)]
        self.figures["spread_30_requests"] = got
        self.assertEqual(sum(got), n)
        for g in got:
            self.assertGreater(g, 0, "a replica got no request: %r" % got)
        # Through the balancer /metrics is refused (scrape each replica), /readyz answers.
        self.assertEqual(requests.get(self.lb.url + "/metrics", timeout=T).status_code, 404)
        self.assertEqual(requests.get(self.lb.url + "/readyz", timeout=T).status_code, 200)

    # ---- 2 -----------------------------------------------------------------------------
    def test_2_adapter_upload_reaches_every_replica(self):
        name = "bard"
        files = ia3_adapter(self.model_cfg, 1.6)
        t0 = time.time()
        r = requests.put(self.lb.url + "/v1/adapters/" + name, files=files, headers=self.auth,
                         timeout=T)
        t_put = time.time() - t0
        self.assertIn(r.status_code, (200, 201), r.text)
        listed, served = {}, {}
        texts = {}
        body = {"model": name, "prompt": "ROMEO:", "max_tokens": 12, "temperature": 0}
        deadline = time.time() + 10
        while time.time() < deadline and len(served) < len(self.replicas):
            for rep in self.replicas:
                if rep.addr not in listed:
                    g = requests.get(rep.url + "/v1/adapters/" + name, headers=self.auth,
                                     timeout=T)
                    if g.status_code == 200:
                        listed[rep.addr] = time.time() - t0
                if rep.addr in listed and rep.addr not in served:
                    c = requests.post(rep.url + "/v1/completions", json=body, headers=self.auth,
                                      timeout=T)
                    if c.status_code == 200:
                        served[rep.addr] = time.time() - t0
                        texts[rep.addr] = c.json()["choices"][0]["text"]
            time.sleep(0.01)
        self.figures["adapter_put_seconds"] = round(t_put, 3)
        self.figures["adapter_listed_after_s"] = {k: round(v, 3) for k, v in listed.items()}
        self.figures["adapter_served_after_s"] = {k: round(v, 3) for k, v in served.items()}
        self.assertEqual(len(served), len(self.replicas), "served by %r" % served)
        for v in served.values():
            self.assertLess(v, PROPAGATION_BOUND_S)
        # The same adapter everywhere (greedy, same text), and not the base model.
        self.assertEqual(len(set(texts.values())), 1, texts)
        base = requests.post(self.replicas[0].url + "/v1/completions", headers=self.auth,
                             json=dict(body, model=None), timeout=T).json()
        self.assertNotEqual(base["choices"][0]["text"], list(texts.values())[0])
        # And through the balancer, whichever replica answers.
        for _ in range(6):
            c = self.lb_post(body)
            self.assertEqual(c.status_code, 200, c.text)
            self.assertEqual(c.json()["choices"][0]["text"], list(texts.values())[0])

    # ---- 3 -----------------------------------------------------------------------------
    def tokenize(self, text):
        r = requests.post(self.lb.url + "/v1/tokenize", json={"prompt": text},
                          headers=self.auth, timeout=T)
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()["tokens"]

    def token_texts(self, ids):
        out = []
        for i in ids:
            r = requests.post(self.lb.url + "/v1/detokenize", json={"tokens": [i]},
                              headers=self.auth, timeout=T)
            out.append(r.json()["prompt"])
        return out

    def test_3_session_turns_stick_and_resume(self):
        sessions = ["chat-%s" % uuid.uuid4().hex[:12] for _ in range(3)]
        lines = ["\nJULIET:\n", "\nROMEO:\n", "\nNURSE:\n"]
        report = {}
        for sid in sessions:
            ids = self.tokenize("ROMEO:\nWhat light")
            req_ids, cached, exact, extends = [], [], False, []
            before = [r.completions_ok() for r in self.replicas]
            for turn in range(3):
                rid = "t%d-%s" % (turn, uuid.uuid4().hex[:16])
                r = self.lb_post({"prompt": ids, "max_tokens": 8, "temperature": 0,
                                  "logprobs": 0},
                                 headers={"X-Session-Id": sid, "X-Request-Id": rid})
                self.assertEqual(r.status_code, 200, r.text)
                obj = r.json()
                req_ids.append(rid)
                cached.append(obj["usage"]["prompt_tokens_details"]["cached_tokens"])
                extends.append(turn > 0 and exact)
                # The next prompt extends this prompt + the completion's tokens. The ids of
                # the completion come from re-tokenizing its text, which is exact when that
                # gives the same tokens the model produced (compared by their texts).
                text = obj["choices"][0]["text"]
                gen = self.tokenize(text) if text else []
                exact = self.token_texts(gen) == obj["choices"][0]["logprobs"]["tokens"]
                ids = ids + gen + self.tokenize(lines[turn])
            after = [r.completions_ok() for r in self.replicas]
            moved = [a - b for a, b in zip(after, before)]
            entries = self.lb.entries_for(req_ids)
            upstreams = {served_by(entries[x]) for x in req_ids}
            report[sid] = {"replica": sorted(upstreams), "cached_tokens": cached,
                           "turn_extends_history_exactly": extends}
            # All turns on one replica, by the balancer's log and by the replicas' counters.
            self.assertEqual(len(upstreams), 1, report[sid])
            self.assertEqual(sorted(moved), [0, 0, 3], moved)
            # The first turn runs cold; a turn that extends the history exactly resumes from
            # its state (a turn whose completion did not re-tokenize to the same tokens may
            # not extend it, and is not judged).
            self.assertEqual(cached[0], 0)
            self.assertTrue(any(extends), "no turn could be built to extend the history")
            for turn in range(1, 3):
                if extends[turn]:
                    self.assertGreater(cached[turn], 0, "session %s: %r" % (sid, report[sid]))
        self.figures["sessions"] = report
        # DELETE /v1/sessions/{id} goes where the session lives (the id in the path).
        sid = sessions[0]
        rid = "del-" + uuid.uuid4().hex[:16]
        requests.delete(self.lb.url + "/v1/sessions/" + sid, timeout=T,
                        headers=dict(self.auth, **{"X-Request-Id": rid}))
        entry = self.lb.entries_for([rid])[rid]
        self.assertEqual([served_by(entry)], report[sid]["replica"])
        # The state cache's series on every replica.
        for rep in self.replicas:
            self.assertRegex(rep.metrics(), r"(?m)^yunmin_cache_\w+")

    # ---- 4 -----------------------------------------------------------------------------
    def load(self, stop, results, worker):
        """Requests through the balancer until stop is set: plain and streamed, some with a
        session id; results gets (kind, ok, detail) for each."""
        i = 0
        while not stop.is_set() and i < 3000:
            i += 1
            body = {"prompt": "ROMEO:", "max_tokens": 6 + (i % 5), "temperature": 0}
            headers = {"X-Session-Id": "load-%d-%d" % (worker, i % 3)} if i % 2 else {}
            stream = i % 3 == 0
            try:
                r = self.lb_post(dict(body, stream=stream), headers=headers, stream=stream)
                if r.status_code != 200:
                    results.append(("stream" if stream else "plain", False,
                                    "%d %s" % (r.status_code, r.text[:200])))
                    continue
                if stream:
                    text, done, _ = read_stream(r)
                    results.append(("stream", done, "no [DONE]" if not done else ""))
                else:
                    r.json()["choices"][0]["text"]
                    results.append(("plain", True, ""))
            except Exception as e:  # a broken connection or a bad body is a failed request
                results.append(("stream" if stream else "plain", False, repr(e)[:200]))

    def test_4_rolling_restart_fails_no_request(self):
        stop, results = threading.Event(), []
        workers = [threading.Thread(target=self.load, args=(stop, results, w))
                   for w in range(3)]
        for w in workers:
            w.start()
        restarts = []
        try:
            time.sleep(1.0)
            for k, rep in enumerate(self.replicas):
                n0 = len(results)
                t0 = time.time()
                rc = rep.stop(signal.SIGTERM)
                t_down = time.time() - t0
                rep.start()
                t_up = time.time() - t0
                self.assertEqual(rc, 0, rep.log())
                restarts.append({"replica": rep.addr, "drained_and_exited_s": round(t_down, 3),
                                 "back_ready_s": round(t_up, 3)})
                # The procedure docs/DEPLOY.md gives: the next replica goes only when nginx
                # sends this one requests again (after fail_timeout, 2 s, counted in whole
                # seconds from its last failure).
                deadline = time.time() + 10
                while rep.completions_ok() == 0 and time.time() < deadline:
                    time.sleep(0.05)
                restarts[-1]["back_in_rotation_s"] = round(time.time() - t0, 3)
                self.assertGreater(rep.completions_ok(), 0,
                                   "the restarted replica got no request in 10 s")
                self.assertGreater(len(results), n0, "no traffic during restart %d" % k)
        finally:
            stop.set()
            for w in workers:
                w.join(T + 5)
        failed = [x for x in results if not x[1]]
        retried = [e for e in self.lb.log_entries() if "," in e["upstream"]]
        self.figures["rolling_restart"] = {
            "requests": len(results), "failed": len(failed),
            "streams": sum(1 for x in results if x[0] == "stream"),
            "requests_retried_by_nginx": len(retried),
            "retry_upstream_statuses": sorted({e["upstream_status"] for e in retried}),
            "restarts": restarts}
        self.assertGreater(len(results), 30)
        self.assertEqual(failed, [])

    # ---- 5 -----------------------------------------------------------------------------
    def test_5_sigkill_fails_only_that_replicas_streams(self):
        n = 6
        body = {"prompt": "ROMEO:", "max_tokens": 1500, "temperature": 0, "ignore_eos": True,
                "stream": True}
        rids = ["kill-%d-%s" % (i, uuid.uuid4().hex[:12]) for i in range(n)]
        first = [threading.Event() for _ in range(n)]
        outcome = [None] * n

        def client(i):
            try:
                r = self.lb_post(body, headers={"X-Request-Id": rids[i],
                                                "X-Session-Id": "kill-%d" % i}, stream=True)
                if r.status_code != 200:
                    outcome[i] = "status %d" % r.status_code
                    return
                done = False
                for line in r.iter_lines():
                    if line.startswith(b"data: "):
                        first[i].set()
                        if line == b"data: [DONE]":
                            done = True
                outcome[i] = "ok" if done else "no [DONE]"
            except Exception as e:
                outcome[i] = "broken: " + type(e).__name__
            finally:
                first[i].set()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for e in first:
            self.assertTrue(e.wait(T))
        running = {rep.addr: rep.counter("yunmin_running_sequences") for rep in self.replicas}
        victim = max(self.replicas, key=lambda rep: running[rep.addr])
        self.assertGreater(running[victim.addr], 0)
        Cluster.killed = victim.addr
        victim.stop(signal.SIGKILL)
        # New requests right away: all answered, by the replicas still up.
        for i in range(10):
            r = self.lb_post({"prompt": "JULIET:", "max_tokens": 4, "temperature": 0},
                             headers={"X-Session-Id": "after-kill-%d" % i})
            self.assertEqual(r.status_code, 200, r.text)
        for t in threads:
            t.join(T * 2)
        entries = self.lb.entries_for(rids)
        on_victim = {rid for rid in rids if served_by(entries[rid]) == victim.addr}
        failed = {rid for rid, o in zip(rids, outcome) if o != "ok"}
        self.figures["sigkill"] = {"streams": n, "running_per_replica": running,
                                   "victim": victim.addr, "failed": len(failed),
                                   "outcomes": outcome}
        self.assertEqual(len(on_victim), running[victim.addr])
        self.assertEqual(failed, on_victim)
        # The replica comes back on its port and takes its share again.
        victim.start()
        Cluster.killed = None


class Image(unittest.TestCase):
    """What the container image relies on, checked on the bare process."""

    def test_healthcheck_script(self):
        adir = tempfile.mkdtemp(prefix="yunmin-adapters-")
        rep = Replica(free_port(), adir, None).start()
        script = os.path.join(ROOT, "deploy", "healthcheck.sh")
        try:
            env = dict(clean_env(), YUNMIN_HEALTHCHECK_PORT=str(rep.port))
            self.assertEqual(subprocess.run([script], env=env, timeout=10).returncode, 0)
            env["YUNMIN_HEALTHCHECK_PORT"] = str(free_port())
            self.assertNotEqual(subprocess.run([script], env=env, timeout=10,
                                               stderr=subprocess.DEVNULL).returncode, 0)
        finally:
            self.assertEqual(rep.stop(), 0)
            subprocess.run(["rm", "-rf", adir])

    def test_pid1_drains_on_sigterm(self):
        """yunmind as PID 1 of its own PID namespace (as the image's ENTRYPOINT makes it):
        SIGHUP reloads, SIGTERM drains a running stream and exits 0."""
        probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                               capture_output=True, timeout=30)
        if probe.returncode != 0:
            self.skipTest("no PID namespaces here: %s" % probe.stderr.decode().strip())
        port = free_port()
        p = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", YUNMIND,
                              "--model", MODEL, "--port", str(port), "--threads", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
        try:
            self.assertIn("listening on", p.stdout.readline().decode())
            url = "http://127.0.0.1:%d" % port
            deadline = time.time() + 30
            while requests.get(url + "/readyz", timeout=T).status_code != 200:
                self.assertLess(time.time(), deadline)
                time.sleep(0.02)
            with open("/proc/%d/task/%d/children" % (p.pid, p.pid)) as f:
                child = int(f.read().split()[0])
            with open("/proc/%d/status" % child) as f:
                nspid = re.search(r"^NSpid:\s+(.*)$", f.read(), re.M).group(1).split()
            self.assertEqual(nspid[-1], "1")
            os.kill(child, signal.SIGHUP)
            time.sleep(0.3)
            self.assertEqual(requests.get(url + "/readyz", timeout=T).status_code, 200)
            r = requests.post(url + "/v1/completions", stream=True, timeout=T,
                              json={"prompt": "ROMEO:", "max_tokens": 400, "ignore_eos": True,
                                    "temperature": 0, "stream": True})
            it = r.iter_lines()
            next(it)
            os.kill(child, signal.SIGTERM)
            done = any(line == b"data: [DONE]" for line in it)
            self.assertTrue(done, "the stream was cut by the drain")
            self.assertEqual(p.wait(60), 0)
            self.assertIn(b"SIGTERM: draining", p.stderr.read())
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def main():
    global YUNMIND, ROOT, MODEL
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    YUNMIND, ROOT = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    MODEL = os.path.join(ROOT, "models", "shakespeare-mamba")
    loader = unittest.TestLoader()
    suite = unittest.TestSuite([loader.loadTestsFromTestCase(Cluster),
                                loader.loadTestsFromTestCase(Image)])
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
