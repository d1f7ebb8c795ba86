#!/usr/bin/python3
"""tests/integration/test_server.py - a real yunmind on 127.0.0.1 with real HTTP clients.

Usage: test_server.py YUNMIND_EXE YUNMIN_EXE SOURCE_ROOT   (meson runs it as the `server` test)

Each test class starts its own daemon (port 0, the port read from its stdout line), talks to
it with `requests` and raw sockets, and stops it with SIGTERM, checking the exit status. The
references are independent of the server: `yunmin generate` (same engine, no server, one-shot
prefill, token-by-token decode) for texts, `yunmin tokenize` for ids. Bounded: every request
has a timeout, every daemon is killed at the end whatever happens.
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

import requests

YUNMIND = None
YUNMIN = None
ROOT = None
MODEL = None
T = 60  # seconds: the bound on any single request


class Daemon:
    """yunmind on 127.0.0.1:0 with the given extra flags."""

    def __init__(self, *flags, env=None):
        full_env = dict(os.environ)
        for k in list(full_env):
            if k.startswith("YUNMIN_"):
                del full_env[k]
        full_env.update(env or {})
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [YUNMIND, "--model", MODEL, "--port", "0", "--threads", "1"] + list(flags),
            stdout=subprocess.PIPE, stderr=self.stderr, env=full_env)
        line = self.proc.stdout.readline().decode()
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError("yunmind did not start: %r %s" % (line, self.log()))
        self.port = int(m.group(1))
        self.url = "http://127.0.0.1:%d" % self.port
        deadline = time.time() + 30
        while time.time() < deadline:
            if requests.get(self.url + "/readyz", timeout=T).status_code == 200:
                return
            time.sleep(0.05)
        raise RuntimeError("yunmind never became ready: " + self.log())

    def log(self):
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")

    def post(self, path, body, **kw):
        return requests.post(self.url + path, json=body, timeout=T, **kw)

    def metric(self, name):
        text = requests.get(self.url + "/metrics", timeout=T).text
        m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
        return float(m.group(1)) if m else None

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def generate(prompt, n, *extra):
    """The reference text: `yunmin generate` on the same model."""
    p = subprocess.run([YUNMIN, "generate", "--model", MODEL, "-p", prompt, "-n", str(n),
                        "--threads", "1"] + list(extra), capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return cli_text(p.stdout)


def cli_text(stdout):
    """The text of `yunmin generate`'s stdout: it ends with one newline of its own."""
    assert stdout.endswith(b"\n"), stdout
    return stdout[:-1].decode("utf-8")


def stream(daemon, body, raw_events=None):
    """POST a streaming completion; returns (text, chunks, usage). raw_events gets every
    line of the SSE body."""
    body = dict(body, stream=True)
    r = requests.post(daemon.url + "/v1/completions", json=body, stream=True, timeout=T)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/event-stream")
    text, chunks, usage, done = "", [], None, False
    for line in r.iter_lines(decode_unicode=False):
        line = line.decode("utf-8")
        if raw_events is not None:
            raw_events.append(line)
        if not line.startswith("data: "):
            continue
        assert not done, "event after [DONE]"
        data = line[6:]
        if data == "[DONE]":
            done = True
            continue
        obj = json.loads(data)
        chunks.append(obj)
        if obj["choices"]:
            text += obj["choices"][0]["text"]
        elif obj.get("usage"):
            usage = obj["usage"]
    assert done, "stream ended without [DONE]"
    return text, chunks, usage


def read_text(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


PROMPTS = ["ROMEO:", "JULIET:\nO Romeo", "First Citizen:\nBefore we proceed",
           "KING RICHARD III:\nNow is the winter", "To be, or not", "MENENIUS:\nWhat work",
           "Second Servingman:\nWhy", "LADY CAPULET:\nMarry"]


class Completions(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon("--stream-ping-ms", "100")

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        if rc != 0:
            print(cls.d.log(), file=sys.stderr)
        assert rc == 0, "yunmind exit status %r after SIGTERM" % rc

    def test_health_ready_models(self):
        self.assertEqual(requests.get(self.d.url + "/healthz", timeout=T).json(), {"status": "ok"})
        self.assertEqual(requests.get(self.d.url + "/readyz", timeout=T).status_code, 200)
        m = requests.get(self.d.url + "/v1/models", timeout=T).json()
        self.assertEqual(m["object"], "list")
        self.assertEqual([x["id"] for x in m["data"]], ["shakespeare-mamba"])
        one = requests.get(self.d.url + "/v1/models/shakespeare-mamba", timeout=T)
        self.assertEqual(one.status_code, 200)
        self.assertEqual(one.json()["id"], "shakespeare-mamba")
        self.assertEqual(requests.get(self.d.url + "/v1/models/nope", timeout=T).status_code, 404)

    def test_greedy_equals_cli(self):
        for prompt in PROMPTS[:3]:
            want = generate(prompt, 40, "--temperature", "0")
            r = self.d.post("/v1/completions", {"model": "shakespeare-mamba", "prompt": prompt,
                                                "max_tokens": 40, "temperature": 0})
            self.assertEqual(r.status_code, 200, r.text)
            obj = r.json()
            self.assertEqual(obj["object"], "text_completion")
            self.assertEqual(obj["model"], "shakespeare-mamba")
            self.assertEqual(len(obj["choices"]), 1)
            ch = obj["choices"][0]
            self.assertEqual(ch["index"], 0)
            self.assertEqual(ch["text"], want)
            self.assertIn(ch["finish_reason"], ("stop", "length"))
            u = obj["usage"]
            self.assertEqual(u["total_tokens"], u["prompt_tokens"] + u["completion_tokens"])
            self.assertEqual(u["prompt_tokens_details"], {"cached_tokens": 0})
            self.assertEqual(r.headers.get("X-Request-Id"), obj["id"])

    def test_seeded_sampling_equals_cli(self):
        want = generate("ROMEO:", 60, "--temperature", "0.9", "--top-p", "0.95", "--top-k", "40",
                        "--seed", "1234")
        body = {"prompt": "ROMEO:", "max_tokens": 60, "temperature": 0.9, "top_p": 0.95,
                "top_k": 40, "seed": 1234}
        self.assertEqual(self.d.post("/v1/completions", body).json()["choices"][0]["text"], want)
        self.assertEqual(stream(self.d, body)[0], want)

    def test_stream_equals_plain(self):
        body = {"prompt": "JULIET:", "max_tokens": 50, "temperature": 0,
                "stream_options": {"include_usage": True}}
        plain = self.d.post("/v1/completions", {"prompt": "JULIET:", "max_tokens": 50,
                                                "temperature": 0}).json()
        text, chunks, usage = stream(self.d, body)
        self.assertEqual(text, plain["choices"][0]["text"])
        self.assertEqual(usage, plain["usage"])
        ids = {c["id"] for c in chunks}
        self.assertEqual(len(ids), 1)
        for c in chunks:
            self.assertEqual(c["object"], "text_completion")
            self.assertIn("usage", c)  # null in every chunk but the last (include_usage)
        self.assertEqual(chunks[-1]["choices"], [])
        last = [c for c in chunks if c["choices"]][-1]
        self.assertEqual(last["choices"][0]["finish_reason"], plain["choices"][0]["finish_reason"])
        for c in chunks[:-1]:
            if c is not last:
                self.assertIsNone(c["choices"][0]["finish_reason"])

    def test_stream_without_usage(self):
        text, chunks, usage = stream(self.d, {"prompt": "ROMEO:", "max_tokens": 5})
        self.assertIsNone(usage)
        for c in chunks:
            self.assertNotIn("usage", c)
            self.assertEqual(len(c["choices"]), 1)

    def test_token_id_prompt_and_tokenize(self):
        tok = self.d.post("/v1/tokenize", {"prompt": "ROMEO:\nWhat"}).json()
        p = subprocess.run([YUNMIN, "tokenize", "--model", MODEL, "--text", "ROMEO:\nWhat"],
                           capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        want_ids = json.loads(p.stdout)["ids"]
        self.assertEqual(tok["tokens"], want_ids)
        self.assertEqual(tok["count"], len(want_ids))
        back = self.d.post("/v1/detokenize", {"tokens": tok["tokens"]}).json()
        self.assertEqual(back["prompt"], "ROMEO:\nWhat")
        a = self.d.post("/v1/completions", {"prompt": tok["tokens"], "max_tokens": 20,
                                            "temperature": 0}).json()
        b = self.d.post("/v1/completions", {"prompt": "ROMEO:\nWhat", "max_tokens": 20,
                                            "temperature": 0}).json()
        self.assertEqual(a["choices"][0]["text"], b["choices"][0]["text"])
        self.assertEqual(a["usage"], b["usage"])

    def test_stop_strings(self):
        full = self.d.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 60,
                                               "temperature": 0}).json()["choices"][0]["text"]
        # Cut at a piece of the greedy text: the answer is the text before it, finish "stop".
        cut = full[len(full) // 2:len(full) // 2 + 3]
        self.assertTrue(cut)
        want = full[:full.index(cut)]
        for s in (cut, [cut, "zzzz-never"]):
            r = self.d.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 60,
                                                "temperature": 0, "stop": s}).json()
            self.assertEqual(r["choices"][0]["text"], want)
            self.assertEqual(r["choices"][0]["finish_reason"], "stop")
            self.assertEqual(stream(self.d, {"prompt": "ROMEO:", "max_tokens": 60,
                                             "temperature": 0, "stop": s})[0], want)

    def test_logprobs(self):
        r = self.d.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 8, "temperature": 0,
                                            "logprobs": 3}).json()
        lp = r["choices"][0]["logprobs"]
        n = r["usage"]["completion_tokens"]
        self.assertEqual(len(lp["tokens"]), n)
        self.assertEqual(len(lp["token_logprobs"]), n)
        self.assertEqual(len(lp["top_logprobs"]), n)
        self.assertEqual(len(lp["text_offset"]), n)
        for i in range(n):
            top = lp["top_logprobs"][i]
            self.assertLessEqual(len(top), 4)
            # Greedy: the chosen token is the most likely one.
            self.assertAlmostEqual(max(top.values()), lp["token_logprobs"][i], places=5)
            self.assertLessEqual(lp["token_logprobs"][i], 0.0)
        self.assertEqual("".join(lp["tokens"]), r["choices"][0]["text"])
        text, chunks, _ = stream(self.d, {"prompt": "ROMEO:", "max_tokens": 8, "temperature": 0,
                                          "logprobs": 3})
        toks = sum((c["choices"][0]["logprobs"]["tokens"] for c in chunks
                    if c["choices"] and c["choices"][0]["logprobs"]), [])
        self.assertEqual(toks, lp["tokens"])

    def test_echo_and_zero_tokens(self):
        r = self.d.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 5, "temperature": 0,
                                            "echo": True}).json()
        plain = self.d.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 5,
                                                "temperature": 0}).json()
        self.assertEqual(r["choices"][0]["text"], "ROMEO:" + plain["choices"][0]["text"])
        z = self.d.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 0}).json()
        self.assertEqual(z["choices"][0]["text"], "")
        self.assertEqual(z["usage"]["completion_tokens"], 0)
        self.assertEqual(z["choices"][0]["finish_reason"], "length")

    def test_default_max_tokens_is_16(self):
        r = self.d.post("/v1/completions", {"prompt": "ROMEO:", "temperature": 0,
                                            "ignore_eos": True}).json()
        self.assertEqual(r["usage"]["completion_tokens"], 16)

    def test_batched_equals_alone(self):
        alone = {}
        for p in PROMPTS:
            alone[p] = self.d.post("/v1/completions", {"prompt": p, "max_tokens": 48,
                                                       "temperature": 0}).json()
        got = {}

        def worker(p, use_stream):
            body = {"prompt": p, "max_tokens": 48, "temperature": 0}
            if use_stream:
                got[p] = stream(self.d, body)[0]
            else:
                got[p] = self.d.post("/v1/completions", body).json()["choices"][0]["text"]

        for rnd in range(2):
            got.clear()
            ths = [threading.Thread(target=worker, args=(p, (i + rnd) % 2 == 0))
                   for i, p in enumerate(PROMPTS)]
            for t in ths:
                t.start()
            for t in ths:
                t.join(T)
            for p in PROMPTS:
                self.assertEqual(got.get(p), alone[p]["choices"][0]["text"], p)

    def test_errors(self):
        cases = [
            (b"{not json", 400, None),
            (b"[1,2]", 400, None),
            (json.dumps({"max_tokens": 5}), 400, "prompt"),
            (json.dumps({"prompt": ""}), 400, "prompt"),
            (json.dumps({"prompt": 5}), 400, "prompt"),
            (json.dumps({"prompt": []}), 400, "prompt"),
            (json.dumps({"prompt": ["a", [1]]}), 400, "prompt"),
            (json.dumps({"prompt": [[1], "a"]}), 400, "prompt"),
            (json.dumps({"prompt": ["a", 5]}), 400, "prompt"),
            (json.dumps({"prompt": ["a", ""]}), 400, "prompt"),
            (json.dumps({"prompt": [[1], []]}), 400, "prompt"),
            (json.dumps({"prompt": [[1], [2, "x"]]}), 400, "prompt"),
            (json.dumps({"prompt": [[1], [10 ** 7]]}), 400, "prompt"),
            (json.dumps({"prompt": ["a"] * 17}), 400, "prompt"),
            (json.dumps({"prompt": ["a", "b", "c"], "n": 6}), 400, "prompt"),
            (json.dumps({"prompt": ["a", "b"], "session_id": "two"}), 400, "session_id"),
            (json.dumps({"prompt": [1, -2]}), 400, "prompt"),
            (json.dumps({"prompt": [10 ** 7]}), 400, "prompt"),
            (json.dumps({"prompt": "x", "temperature": 5}), 400, "temperature"),
            (json.dumps({"prompt": "x", "temperature": "hot"}), 400, "temperature"),
            (json.dumps({"prompt": "x", "top_p": 0}), 400, "top_p"),
            (json.dumps({"prompt": "x", "top_k": -5}), 400, "top_k"),
            (json.dumps({"prompt": "x", "min_p": 2}), 400, "min_p"),
            (json.dumps({"prompt": "x", "presence_penalty": 3}), 400, "presence_penalty"),
            (json.dumps({"prompt": "x", "frequency_penalty": -3}), 400, "frequency_penalty"),
            (json.dumps({"prompt": "x", "repetition_penalty": 0}), 400, "repetition_penalty"),
            (json.dumps({"prompt": "x", "max_tokens": -1}), 400, "max_tokens"),
            (json.dumps({"prompt": "x", "max_tokens": 10 ** 9}), 400, "max_tokens"),
            (json.dumps({"prompt": "x", "max_tokens": 1.5}), 400, "max_tokens"),
            (json.dumps({"prompt": "x", "n": 17}), 400, "n"),
            (json.dumps({"prompt": "x", "best_of": 3}), 400, "best_of"),
            (json.dumps({"prompt": "x", "stream": "yes"}), 400, "stream"),
            (json.dumps({"prompt": "x", "stream_options": {"include_usage": True}}), 400,
             "stream_options"),
            (json.dumps({"prompt": "x", "stop": 7}), 400, "stop"),
            (json.dumps({"prompt": "x", "stop": ["a"] * 17}), 400, "stop"),
            (json.dumps({"prompt": "x", "logprobs": 21}), 400, "logprobs"),
            (json.dumps({"prompt": "x", "seed": "s"}), 400, "seed"),
            (json.dumps({"prompt": "x", "logit_bias": {"5": 101}}), 400, "logit_bias"),
            (json.dumps({"prompt": "x", "suffix": "y"}), 400, "suffix"),
            (json.dumps({"prompt": "x", "echo": True, "logprobs": 1, "session_id": "s"}), 400,
             "session_id"),
            (json.dumps({"prompt": "x", "model": "gpt-4"}), 404, "model"),
        ]
        for body, status, param in cases:
            r = requests.post(self.d.url + "/v1/completions", data=body, timeout=T,
                              headers={"Content-Type": "application/json"})
            self.assertEqual(r.status_code, status, (body, r.text))
            err = r.json()["error"]
            self.assertEqual(set(err), {"message", "type", "param", "code"})
            self.assertTrue(err["message"])
            self.assertEqual(err["param"], param, (body, err))
        r = self.d.post("/v1/completions", {"prompt": "x", "echo": True, "logprobs": 0},
                        headers={"X-Session-Id": "s"})
        self.assertEqual(r.status_code, 400, r.text)
        self.assertEqual(r.json()["error"]["param"], "session_id")
        r = requests.get(self.d.url + "/v1/completions", timeout=T)
        self.assertEqual(r.status_code, 405)
        self.assertIn("POST", r.json()["error"]["message"])
        r = requests.post(self.d.url + "/v1/nothing", data=b"{}", timeout=T)
        self.assertEqual(r.status_code, 404)
        self.assertEqual(r.json()["error"]["type"], "not_found_error")
        r = self.d.post("/v1/detokenize", {"tokens": [1, 99999999]})
        self.assertEqual(r.status_code, 400)
        self.assertEqual(r.json()["error"]["param"], "tokens")
        r = self.d.post("/v1/tokenize", {"prompt": 5})
        self.assertEqual(r.json()["error"]["param"], "prompt")

    def test_oversize_body(self):
        big = json.dumps({"prompt": "x" * (5 << 20)})
        r = requests.post(self.d.url + "/v1/completions", data=big, timeout=T)
        self.assertEqual(r.status_code, 413)
        self.assertEqual(r.json()["error"]["code"], "body_too_large")
        # Without Content-Length (chunked upload): refused once past the limit.
        def gen():
            for _ in range(6):
                yield b"x" * (1 << 20)
        try:
            r = requests.post(self.d.url + "/v1/completions", data=gen(), timeout=T)
            self.assertEqual(r.status_code, 413)
        except requests.exceptions.ConnectionError:
            pass  # the server may close before the client finishes sending: also a refusal
        self.assertEqual(requests.get(self.d.url + "/healthz", timeout=T).status_code, 200)

    def test_bad_requests_do_not_disturb_streams(self):
        bodies = [{"prompt": p, "max_tokens": 64, "temperature": 0, "ignore_eos": True}
                  for p in PROMPTS[:4]]
        want = [self.d.post("/v1/completions", b).json()["choices"][0]["text"] for b in bodies]
        got = [None] * len(bodies)

        def worker(i):
            got[i] = stream(self.d, bodies[i])[0]

        ths = [threading.Thread(target=worker, args=(i,)) for i in range(len(bodies))]
        for t in ths:
            t.start()
        junk = [b"{", b"\x00\xff", b'{"prompt": "x", "temperature": 9}', b"[]" * 1000,
                b'{"prompt": [1, 2, "x"]}', b'{"prompt": "x", "n": 17}']
        for k in range(30):
            r = requests.post(self.d.url + "/v1/completions", data=junk[k % len(junk)], timeout=T)
            self.assertIn(r.status_code, (400, 413))
            # A raw malformed HTTP request too.
            with socket.create_connection(("127.0.0.1", self.d.port), timeout=T) as s:
                s.sendall(b"BLAH / HTTP/9.9\r\nContent-Length: -5\r\n\r\n")
                s.recv(1024)
        for t in ths:
            t.join(T)
        self.assertEqual(got, want)

    def test_cancel_on_disconnect(self):
        before = self.d.metric("yunmin_requests_cancelled_total")
        body = {"prompt": "ROMEO:", "max_tokens": 100000 // 20, "temperature": 0,
                "ignore_eos": True, "stream": True}
        r = requests.post(self.d.url + "/v1/completions", json=body, stream=True, timeout=T)
        it = r.iter_lines()
        for _ in range(3):
            next(it)
        r.close()  # the client goes away mid-stream
        # And a plain request whose client gives up while it runs.
        with socket.create_connection(("127.0.0.1", self.d.port), timeout=T) as s:
            payload = json.dumps(dict(body, stream=False)).encode()
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(payload),
                                                                              payload))
            time.sleep(0.3)
        deadline = time.time() + 20
        while time.time() < deadline:
            if (self.d.metric("yunmin_requests_cancelled_total") >= before + 2 and
                    self.d.metric("yunmin_running_sequences") == 0):
                break
            time.sleep(0.1)
        self.assertGreaterEqual(self.d.metric("yunmin_requests_cancelled_total"), before + 2)
        self.assertEqual(self.d.metric("yunmin_running_sequences"), 0)

    def test_metrics(self):
        self.d.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 4})
        text = requests.get(self.d.url + "/metrics", timeout=T).text
        for name in ("yunmin_http_requests_total{route=\"/v1/completions\",status=\"200\"}",
                     "yunmin_prompt_tokens_total", "yunmin_generation_tokens_total",
                     "yunmin_time_to_first_token_seconds_bucket",
                     "yunmin_inter_token_latency_seconds_bucket", "yunmin_queue_depth",
                     "yunmin_running_sequences", "yunmin_batch_rows_bucket",
                     "yunmin_engine_step_seconds_bucket"):
            self.assertIn(name, text)
        # Histogram buckets are cumulative and end at the count.
        for h in ("yunmin_time_to_first_token_seconds", "yunmin_batch_rows"):
            vals = [float(v) for v in re.findall(r"^%s_bucket\{[^}]*\} (\S+)$" % h, text, re.M)]
            self.assertEqual(vals, sorted(vals))
            count = float(re.search(r"^%s_count (\S+)$" % h, text, re.M).group(1))
            self.assertEqual(vals[-1], count)
            self.assertGreater(count, 0)

    def test_ping_during_long_prefill(self):
        # ~6000 prompt tokens in chunks of prefill_chunk (128) tokens: many steps before the
        # first token; with stream_ping_ms=100 the stream must carry ': ping' lines first.
        prompt = read_text("data/tinyshakespeare.txt")[:24000]
        events = []
        text, chunks, _ = stream(self.d, {"prompt": prompt, "max_tokens": 3}, raw_events=events)
        first_data = next(i for i, e in enumerate(events) if e.startswith("data: "))
        pings = [e for e in events[:first_data] if e.startswith(": ping")]
        n_prompt = len(self.d.post("/v1/tokenize", {"prompt": prompt}).json()["tokens"])
        step_s = None
        if not pings:
            # Only acceptable if the prefill really took less than one ping interval.
            t0 = time.time()
            self.d.post("/v1/completions", {"prompt": prompt, "max_tokens": 1})
            step_s = time.time() - t0
        self.assertTrue(pings or step_s < 0.1, (n_prompt, step_s))

    def test_huge_prompt_tokenized_off_the_loop(self):
        # More than 32 KiB of text is tokenized on the libuv pool; the answer is the same.
        prompt = "NORTHUMBERLAND:\n" + " Northumberland" * 2300
        self.assertGreater(len(prompt), 32 * 1024)
        want = generate(prompt, 8, "--temperature", "0")
        plain = self.d.post("/v1/completions", {"prompt": prompt, "max_tokens": 8,
                                                "temperature": 0}).json()
        self.assertEqual(plain["choices"][0]["text"], want)
        self.assertEqual(plain["usage"]["prompt_tokens"], 2300 + len(
            self.d.post("/v1/tokenize", {"prompt": "NORTHUMBERLAND:\n"}).json()["tokens"]))
        self.assertEqual(stream(self.d, {"prompt": prompt, "max_tokens": 8,
                                         "temperature": 0})[0], want)
        r = self.d.post("/v1/completions", {"prompt": "x" * 40000, "max_tokens": 1,
                                            "model": "other"})
        self.assertEqual(r.status_code, 404)

    def test_long_prompt_chunked_equals_cli(self):
        prompt = read_text("data/tinyshakespeare.txt")[5000:9000]
        want = generate(prompt, 30, "--temperature", "0")
        r = self.d.post("/v1/completions", {"prompt": prompt, "max_tokens": 30,
                                            "temperature": 0}).json()
        self.assertGreater(r["usage"]["prompt_tokens"], 128)  # more than one prefill chunk
        self.assertEqual(r["choices"][0]["text"], want)


def jinja_render(template, messages, add_generation_prompt=True, **tokens):
    """The prompt Jinja2 makes of messages, set up as transformers sets it up (the reference for
    the server's C renderer)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages,
                                            add_generation_prompt=add_generation_prompt,
                                            **tokens)


def chat_stream(daemon, body):
    """POST a streaming chat completion; returns (text, chunks, usage)."""
    body = dict(body, stream=True)
    r = requests.post(daemon.url + "/v1/chat/completions", json=body, stream=True, timeout=T)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/event-stream")
    text, chunks, usage, done = "", [], None, False
    for line in r.iter_lines(decode_unicode=False):
        line = line.decode("utf-8")
        if not line.startswith("data: "):
            continue
        assert not done, "event after [DONE]"
        if line[6:] == "[DONE]":
            done = True
            continue
        obj = json.loads(line[6:])
        chunks.append(obj)
        if obj["choices"]:
            text += obj["choices"][0]["delta"].get("content", "")
        elif obj.get("usage"):
            usage = obj["usage"]
    assert done, "stream ended without [DONE]"
    return text, chunks, usage


class Chat(unittest.TestCase):
    """POST /v1/chat/completions. The reference for every answer is the prompt Jinja2 renders
    from the model's own template (as transformers renders it) run by `yunmin generate`, or by
    /v1/completions where a server feature (sessions, streaming) is what is compared."""

    CONV = [{"role": "system", "content": "A street in Verona."},
            {"role": "user", "content": "Good morrow, fair maid. What is thy name?"}]

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon()
        cls.template = read_text("models/shakespeare-mamba/chat_template.jinja")

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        if rc != 0:
            print(cls.d.log(), file=sys.stderr)
        assert rc == 0, "yunmind exit status %r after SIGTERM" % rc

    def chat(self, body, d=None):
        r = (d or self.d).post("/v1/chat/completions", body)
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()

    def test_plain_equals_rendered_prompt(self):
        convs = [self.CONV,
                 [{"role": "developer", "content": "Enter ROMEO and JULIET."},
                  {"role": "user", "content": [{"type": "text", "text": "O, "},
                                               {"type": "text", "text": "speak again, \"bright\" {angel}!"}]},
                  {"role": "assistant", "content": "Ay me! ü"},
                  {"role": "user", "content": "She speaks."}]]
        for conv in convs:
            ref_msgs = [dict(m, content="".join(p["text"] for p in m["content"]))
                        if isinstance(m["content"], list) else m for m in conv]
            prompt = jinja_render(self.template, ref_msgs)
            want = generate(prompt, 24, "--temperature", "0")
            r = self.d.post("/v1/chat/completions",
                            {"model": "shakespeare-mamba", "messages": conv, "max_tokens": 24,
                             "temperature": 0})
            self.assertEqual(r.status_code, 200, r.text)
            obj = r.json()
            self.assertEqual(obj["object"], "chat.completion")
            self.assertTrue(obj["id"].startswith("chatcmpl-"), obj["id"])
            self.assertEqual(r.headers["X-Request-Id"], obj["id"])
            self.assertEqual(obj["model"], "shakespeare-mamba")
            self.assertEqual(len(obj["choices"]), 1)
            ch = obj["choices"][0]
            self.assertEqual(ch["index"], 0)
            self.assertEqual(ch["message"], {"role": "assistant", "content": want})
            self.assertIsNone(ch["logprobs"])
            self.assertIn(ch["finish_reason"], ("stop", "length"))
            tokens = self.d.post("/v1/tokenize", {"prompt": prompt}).json()["count"]
            u = obj["usage"]
            self.assertEqual(u["prompt_tokens"], tokens)
            self.assertEqual(u["total_tokens"], u["prompt_tokens"] + u["completion_tokens"])

    def test_ids_agree_with_the_header(self):
        """The body's id (and every chunk's) is the X-Request-Id header: "chatcmpl-" for a
        chat, "cmpl-" for a completion (OpenAI's prefixes), "req-" for other routes; a
        client's own X-Request-Id names the answer whole."""
        for path, body, prefix in (
                ("/v1/chat/completions", {"messages": self.CONV, "max_tokens": 3}, "chatcmpl-"),
                ("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 3}, "cmpl-")):
            r = self.d.post(path, body)
            self.assertEqual(r.status_code, 200, r.text)
            self.assertTrue(r.json()["id"].startswith(prefix), r.json()["id"])
            self.assertEqual(r.json()["id"], r.headers["X-Request-Id"])
            r = requests.post(self.d.url + path, json=dict(body, stream=True), stream=True,
                              timeout=T)
            ids = {json.loads(line[6:])["id"] for line in r.iter_lines()
                   if line.startswith(b"data: {")}
            self.assertEqual(ids, {r.headers["X-Request-Id"]})
            self.assertTrue(ids.pop().startswith(prefix))
            r = self.d.post(path, body, headers={"X-Request-Id": "client-7"})
            self.assertEqual((r.json()["id"], r.headers["X-Request-Id"]), ("client-7", "client-7"))
        r = self.d.post("/v1/tokenize", {"prompt": "ROMEO:"})
        self.assertTrue(r.headers["X-Request-Id"].startswith("req-"), r.headers["X-Request-Id"])

    def test_fields_as_completions(self):
        """Sampling fields, stop, max_completion_tokens and seed: the same answer as
        /v1/completions with the rendered prompt and the same fields."""
        prompt = jinja_render(self.template, self.CONV)
        common = {"temperature": 0.8, "top_p": 0.9, "top_k": 30, "seed": 77,
                  "presence_penalty": 0.5, "frequency_penalty": 0.3, "stop": ["\n\n"]}
        want = self.d.post("/v1/completions", dict(common, prompt=prompt, max_tokens=40)).json()
        got = self.chat(dict(common, messages=self.CONV, max_completion_tokens=40))
        self.assertEqual(got["choices"][0]["message"]["content"], want["choices"][0]["text"])
        self.assertEqual(got["choices"][0]["finish_reason"], want["choices"][0]["finish_reason"])
        self.assertEqual(got["usage"], want["usage"])
        # max_completion_tokens wins over max_tokens (OpenAI deprecates the latter for it)
        got = self.chat({"messages": self.CONV, "max_tokens": 30, "max_completion_tokens": 3,
                         "temperature": 0})
        self.assertEqual(got["usage"]["completion_tokens"], 3)
        self.assertEqual(got["choices"][0]["finish_reason"], "length")

    def test_stream_chunks(self):
        body = {"messages": self.CONV, "max_tokens": 20, "temperature": 0,
                "stream_options": {"include_usage": True}}
        plain = self.chat({"messages": self.CONV, "max_tokens": 20, "temperature": 0})
        text, chunks, usage = chat_stream(self.d, body)
        self.assertEqual(text, plain["choices"][0]["message"]["content"])
        self.assertEqual(usage, plain["usage"])
        ids = {c["id"] for c in chunks}
        self.assertEqual(len(ids), 1)
        self.assertTrue(ids.pop().startswith("chatcmpl-"))
        for c in chunks:
            self.assertEqual(c["object"], "chat.completion.chunk")
            self.assertIn("usage", c)
        # role first, alone; then content; then finish_reason with an empty delta; then usage
        self.assertEqual(chunks[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        self.assertIsNone(chunks[0]["choices"][0]["finish_reason"])
        last = chunks[-2]["choices"][0]
        self.assertEqual(last["delta"], {})
        self.assertEqual(last["finish_reason"], plain["choices"][0]["finish_reason"])
        for c in chunks[1:-2]:
            self.assertEqual(list(c["choices"][0]["delta"]), ["content"])
            self.assertIsNone(c["choices"][0]["finish_reason"])
        self.assertEqual(chunks[-1]["choices"], [])
        # without include_usage: no usage anywhere
        text2, chunks2, usage2 = chat_stream(self.d, {"messages": self.CONV, "max_tokens": 20,
                                                      "temperature": 0})
        self.assertEqual(text2, text)
        self.assertIsNone(usage2)
        self.assertTrue(all("usage" not in c for c in chunks2))

    def test_logprobs_chat_form(self):
        prompt = jinja_render(self.template, self.CONV)
        ref = self.d.post("/v1/completions", {"prompt": prompt, "max_tokens": 6, "temperature": 0,
                                              "logprobs": 2}).json()["choices"][0]["logprobs"]
        obj = self.chat({"messages": self.CONV, "max_tokens": 6, "temperature": 0,
                         "logprobs": True, "top_logprobs": 2})
        content = obj["choices"][0]["logprobs"]["content"]
        self.assertEqual([c["token"] for c in content], ref["tokens"])
        for c, lp, top in zip(content, ref["token_logprobs"], ref["top_logprobs"]):
            self.assertAlmostEqual(c["logprob"], lp, places=5)
            self.assertEqual(bytes(c["bytes"]).decode("utf-8", "replace"), c["token"])
            self.assertEqual(len(c["top_logprobs"]), 2)
            self.assertEqual({t["token"]: round(t["logprob"], 5) for t in c["top_logprobs"]},
                             {k: round(v, 5) for k, v in top.items()
                              if k in {t["token"] for t in c["top_logprobs"]}})
        obj = self.chat({"messages": self.CONV, "max_tokens": 3, "temperature": 0,
                         "logprobs": True})
        self.assertTrue(all(c["top_logprobs"] == []
                            for c in obj["choices"][0]["logprobs"]["content"]))

    def test_session_resumes(self):
        """A conversation with session_id: the second turn resumes from the first turn's state
        (cached_tokens > 0) and answers what a cold run of the whole conversation answers."""
        sid = "chat-conv-1"
        body = {"max_tokens": 30, "temperature": 0, "stop": ["\n\n"], "session_id": sid}
        conv = [{"role": "user", "content": "Good morrow, fair maid."}]
        first = self.chat(dict(body, messages=conv))
        self.assertEqual(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
        answer = first["choices"][0]["message"]["content"]
        conv = conv + [{"role": "assistant", "content": answer},
                       {"role": "user", "content": "What art thou?"}]
        second = self.chat(dict(body, messages=conv))
        cold = self.chat({"max_tokens": 30, "temperature": 0, "stop": ["\n\n"],
                          "messages": conv})
        self.assertGreater(second["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
        self.assertEqual(cold["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
        self.assertEqual(second["choices"][0]["message"], cold["choices"][0]["message"])
        self.assertEqual(second["usage"]["prompt_tokens"], cold["usage"]["prompt_tokens"])
        self.assertEqual(requests.get(self.d.url + "/v1/sessions/" + sid, timeout=T).status_code,
                         200)

    def test_long_conversation_tokenized_off_the_loop(self):
        """A rendered prompt over 32 KiB is tokenized on the libuv pool: same answer as
        /v1/completions with Jinja2's rendering, and a client's own X-Request-Id names it."""
        long = read_text("data/tinyshakespeare.txt")[:40000]
        conv = [{"role": "system", "content": long[:20000]},
                {"role": "user", "content": long[20000:]}]
        prompt = jinja_render(self.template, conv)
        self.assertGreater(len(prompt.encode()), 32 * 1024)
        want = self.d.post("/v1/completions", {"prompt": prompt, "max_tokens": 8,
                                               "temperature": 0}).json()
        r = self.d.post("/v1/chat/completions", {"messages": conv, "max_tokens": 8,
                                                 "temperature": 0},
                        headers={"X-Request-Id": "my-chat.1"})
        self.assertEqual(r.status_code, 200, r.text)
        obj = r.json()
        self.assertEqual(obj["id"], "my-chat.1")  # the client's own id, as the header says
        self.assertEqual(r.headers["X-Request-Id"], "my-chat.1")
        self.assertEqual(obj["choices"][0]["message"]["content"], want["choices"][0]["text"])
        for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
            self.assertEqual(obj["usage"][k], want["usage"][k])
        # the same prompt: the chat resumed from the completion's prefix checkpoints
        self.assertGreater(obj["usage"]["prompt_tokens_details"]["cached_tokens"], 0)

    def test_logit_bias(self):
        """+100 makes a token the only choice, -100 bans it (OpenAI's semantics), in
        completions and chat; ids outside the tokenizer's vocabulary are refused."""
        the = self.d.post("/v1/tokenize", {"prompt": " the"}).json()["tokens"]
        self.assertEqual(len(the), 1)
        the = the[0]
        base = {"prompt": "ROMEO:", "max_tokens": 12, "temperature": 0, "logprobs": 0,
                "return_tokens_as_token_ids": True}
        forced = self.d.post("/v1/completions",
                             dict(base, logit_bias={str(the): 100})).json()["choices"][0]
        self.assertEqual(forced["logprobs"]["tokens"], ["token_id:%d" % the] * 12)
        self.assertEqual(forced["text"], " the" * 12)
        # the logprob reported is the model's raw one, not the biased one
        self.assertLess(forced["logprobs"]["token_logprobs"][0], -0.5)
        plain = self.d.post("/v1/completions", base).json()["choices"][0]["logprobs"]["tokens"]
        banned = sorted(set(plain))[:3]
        bias = {t.split(":")[1]: -100 for t in banned}
        for extra in ({"temperature": 0}, {"temperature": 1.0, "seed": 5}):
            got = self.d.post("/v1/completions",
                              dict(base, logit_bias=bias, **extra)).json()["choices"][0]
            self.assertTrue(set(got["logprobs"]["tokens"]).isdisjoint(banned),
                            (banned, got["logprobs"]["tokens"]))
        self.assertNotEqual(got["logprobs"]["tokens"], plain)
        # a bias of 0 changes nothing
        zero = self.d.post("/v1/completions", dict(base, logit_bias={str(the): 0})).json()
        self.assertEqual(zero["choices"][0]["logprobs"]["tokens"], plain)
        # chat: the same forcing
        obj = self.chat({"messages": self.CONV, "max_tokens": 5, "temperature": 0.7, "seed": 3,
                         "logit_bias": {str(the): 100}})
        self.assertEqual(obj["choices"][0]["message"]["content"], " the" * 5)
        # the vocabulary is the tokenizer's: 4099 ids (4096 + 3 added), the embedding has 4104
        n_vocab = 4099
        for path, body in (("/v1/completions", {"prompt": "ROMEO:"}),
                           ("/v1/chat/completions", {"messages": self.CONV})):
            for lb in ({str(n_vocab): 1}, {"4103": 1}, {"99999999": 1}, {"1": 100.5}, {"x": 1},
                       {"01": 1}, [1]):
                r = self.d.post(path, dict(body, logit_bias=lb))
                self.assertEqual(r.status_code, 400, (path, lb, r.text))
                self.assertEqual(r.json()["error"]["param"], "logit_bias")
        r = self.d.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 1,
                                            "logit_bias": {str(n_vocab - 1): -100}})
        self.assertEqual(r.status_code, 200, r.text)

    def test_refused_fields(self):
        msgs = [{"role": "user", "content": "hi"}]
        cases = [
            ({"messages": msgs, "tools": [{"type": "function", "function": {"name": "f"}}]},
             "tools"),
            ({"messages": msgs, "tool_choice": "auto"}, "tool_choice"),
            ({"messages": msgs, "response_format": {"type": "json_object"}}, "response_format"),
            ({"messages": msgs, "response_format": {"type": "json_schema",
                                                    "json_schema": {"name": "x"}}},
             "response_format"),
            ({"messages": msgs, "audio": {"voice": "alloy", "format": "wav"}}, "audio"),
            ({"messages": msgs, "modalities": ["text", "audio"]}, "modalities"),
            ({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
             "messages[0].content[1]"),
            ({"messages": [{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]},
             "messages[0].content[0]"),
            ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
             "messages[0].role"),
            ({"messages": []}, "messages"),
            ({"prompt": "hi"}, "messages"),
            ({"messages": msgs, "n": 17}, "n"),
            ({"messages": msgs, "top_logprobs": 2}, "top_logprobs"),
            ({"messages": msgs, "max_completion_tokens": 10 ** 9}, "max_completion_tokens"),
            ({"messages": msgs, "temperature": 3}, "temperature"),
            ({"messages": msgs, "session_append": True}, "session_append"),
        ]
        for body, param in cases:
            r = self.d.post("/v1/chat/completions", body)
            self.assertEqual(r.status_code, 400, (body, r.text))
            err = r.json()["error"]
            self.assertEqual(err["param"], param, err)
            self.assertEqual(err["type"], "invalid_request_error")
            self.assertEqual(err["code"], "invalid_request")
            self.assertIn(param.split("[")[0], err["message"])
        # the template's own refusal (raise_exception) is a 400 carrying its message
        r = self.d.post("/v1/chat/completions", {"messages": msgs, "model": "nope"})
        self.assertEqual(r.status_code, 404)
        self.assertEqual(r.json()["error"]["code"], "model_not_found")

    def test_template_errors_and_override(self):
        """No template: chat answers 400 naming the model, completions still serve. A
        chat_template file overrides the model's; one that does not parse stops the start."""
        tmp = tempfile.mkdtemp()
        try:
            bare = os.path.join(tmp, "bare")
            os.mkdir(bare)
            for f in ("config.json", "model.safetensors", "tokenizer.json"):
                os.symlink(os.path.join(MODEL, f), os.path.join(bare, f))
            tpl = os.path.join(tmp, "override.jinja")
            with open(tpl, "w") as f:
                f.write("{% for m in messages %}{{ m.role | upper }}:\n{{ m.content }}\n\n"
                        "{% endfor %}{% if add_generation_prompt %}JULIET:\n{% endif %}")
            broken = os.path.join(tmp, "broken.jinja")
            with open(broken, "w") as f:
                f.write("{% for m in messages %}{{ m.content }")
            msgs = [{"role": "user", "content": "Good morrow."}]
            d = Daemon("--model", bare)
            try:
                r = d.post("/v1/chat/completions", {"messages": msgs})
                self.assertEqual(r.status_code, 400, r.text)
                err = r.json()["error"]
                self.assertEqual(err["param"], "model")
                self.assertIn("no chat template", err["message"])
                self.assertNotIn(tmp, err["message"])
                r = d.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 4})
                self.assertEqual(r.status_code, 200, r.text)
            finally:
                self.assertEqual(d.stop(), 0)
            for how in ("flag", "env"):
                d = (Daemon("--chat-template", tpl) if how == "flag"
                     else Daemon(env={"YUNMIN_CHAT_TEMPLATE": tpl}))
                try:
                    with open(tpl) as f:
                        prompt = jinja_render(f.read(), msgs)
                    self.assertEqual(prompt, "USER:\nGood morrow.\n\nJULIET:\n")
                    obj = self.chat({"messages": msgs, "max_tokens": 10, "temperature": 0}, d)
                    self.assertEqual(obj["choices"][0]["message"]["content"],
                                     generate(prompt, 10, "--temperature", "0"))
                finally:
                    self.assertEqual(d.stop(), 0)
            p = subprocess.run([YUNMIND, "--model", MODEL, "--port", "0", "--chat-template",
                                broken], capture_output=True, timeout=60)
            self.assertEqual(p.returncode, 1)
            self.assertIn("chat_template", p.stderr.decode())
            self.assertIn("line 1", p.stderr.decode())
        finally:
            import shutil
            shutil.rmtree(tmp)

    def test_template_raise_is_400(self):
        r = self.d.post("/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "hi"},
                                      {"role": "assistant", "content": "x"}],
                         "max_tokens": 2})
        self.assertEqual(r.status_code, 200, r.text)  # any order of the four roles renders
        with tempfile.NamedTemporaryFile("w", suffix=".jinja", delete=False) as f:
            f.write("{% if messages[0].role != 'user' %}{{ raise_exception('Conversation "
                    "roles must start with user') }}{% endif %}{{ messages[0].content }}")
        d = Daemon("--chat-template", f.name)
        try:
            r = d.post("/v1/chat/completions", {"messages": [{"role": "system", "content": "s"}]})
            self.assertEqual(r.status_code, 400, r.text)
            err = r.json()["error"]
            self.assertEqual(err["param"], "messages")
            self.assertIn("Conversation roles must start with user", err["message"])
        finally:
            self.assertEqual(d.stop(), 0)
            os.unlink(f.name)


class Choices(unittest.TestCase):
    """n: several choices of one request, the prompt prefilled once and its state copied per
    choice. The reference for each choice is a plain request of n = 1 (with seed + i for
    choice i), itself checked against `yunmin generate` by the classes above."""

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon("--max-running", "8")

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        if rc != 0:
            print(cls.d.log(), file=sys.stderr)
        assert rc == 0, "yunmind exit status %r after SIGTERM" % rc

    def complete(self, body):
        r = self.d.post("/v1/completions", body)
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()

    def test_n1_is_a_plain_request(self):
        body = {"prompt": "ROMEO:", "max_tokens": 12, "temperature": 0}
        a, b = self.complete(body), self.complete(dict(body, n=1))
        self.assertEqual(a["choices"], b["choices"])
        self.assertEqual(a["usage"], b["usage"])

    def test_greedy_choices_are_equal(self):
        body = {"prompt": "JULIET:\nO Romeo", "max_tokens": 12, "temperature": 0}
        plain = self.complete(body)
        one = plain["choices"][0]["text"]
        self.assertEqual(one, generate("JULIET:\nO Romeo", 12, "--temperature", "0"))
        r = self.complete(dict(body, n=4))
        self.assertEqual([c["index"] for c in r["choices"]], [0, 1, 2, 3])
        self.assertEqual([c["text"] for c in r["choices"]], [one] * 4)
        self.assertEqual([c["finish_reason"] for c in r["choices"]],
                         [plain["choices"][0]["finish_reason"]] * 4)
        u = plain["usage"]
        self.assertEqual(r["usage"]["prompt_tokens"], u["prompt_tokens"])
        self.assertEqual(r["usage"]["completion_tokens"], 4 * u["completion_tokens"])
        self.assertEqual(r["usage"]["total_tokens"],
                         u["prompt_tokens"] + 4 * u["completion_tokens"])

    def test_seeded_choices(self):
        body = {"prompt": "To be, or not", "max_tokens": 16, "temperature": 1.0, "seed": 42,
                "ignore_eos": True}
        r1, r2 = self.complete(dict(body, n=4)), self.complete(dict(body, n=4))
        texts = [c["text"] for c in r1["choices"]]
        self.assertEqual(texts, [c["text"] for c in r2["choices"]])
        for i in range(4):
            self.assertEqual(texts[i], self.complete(dict(body, seed=42 + i))["choices"][0]["text"])
        self.assertGreater(len(set(texts)), 1)

    def test_chat_choices(self):
        body = {"messages": [{"role": "user", "content": "Speak."}], "max_tokens": 8,
                "temperature": 1.0, "seed": 7}
        r = self.d.post("/v1/chat/completions", dict(body, n=3))
        self.assertEqual(r.status_code, 200, r.text)
        got = [c["message"]["content"] for c in r.json()["choices"]]
        for i in range(3):
            one = self.d.post("/v1/chat/completions", dict(body, seed=7 + i)).json()
            self.assertEqual(got[i], one["choices"][0]["message"]["content"])
            self.assertEqual(r.json()["choices"][i]["index"], i)

    def test_stream(self):
        body = {"prompt": "ROMEO:", "max_tokens": 10, "temperature": 1.0, "seed": 3}
        _, chunks, usage = stream(self.d, dict(body, n=3,
                                               stream_options={"include_usage": True}))
        texts, fins = ["", "", ""], [None, None, None]
        for c in chunks:
            for ch in c["choices"]:
                self.assertIsNone(fins[ch["index"]], "output after finish_reason")
                texts[ch["index"]] += ch["text"]
                fins[ch["index"]] = ch["finish_reason"]
        self.assertTrue(all(f in ("stop", "length") for f in fins), fins)
        want = [self.complete(dict(body, seed=3 + i)) for i in range(3)]
        self.assertEqual(texts, [w["choices"][0]["text"] for w in want])
        self.assertEqual(fins, [w["choices"][0]["finish_reason"] for w in want])
        self.assertEqual(usage["completion_tokens"],
                         sum(w["usage"]["completion_tokens"] for w in want))
        # Chat: each index gets its role chunk, its content and its own finish_reason.
        r = requests.post(self.d.url + "/v1/chat/completions", stream=True, timeout=T,
                          json={"messages": [{"role": "user", "content": "Speak."}], "n": 3,
                                "max_tokens": 6, "stream": True})
        fins, roles, done = {}, set(), 0
        for line in r.iter_lines():
            if not line.startswith(b"data: "):
                continue
            if line == b"data: [DONE]":
                done += 1
                continue
            for ch in json.loads(line[6:])["choices"]:
                if "role" in ch["delta"]:
                    roles.add(ch["index"])
                if ch["finish_reason"]:
                    self.assertNotIn(ch["index"], fins)
                    fins[ch["index"]] = ch["finish_reason"]
        self.assertEqual(done, 1)
        self.assertEqual(roles, {0, 1, 2})
        self.assertEqual(sorted(fins), [0, 1, 2])

    def test_limits(self):
        for n, want in ((9, "max_running"), (17, "n"), (0, "n")):
            for path, body in (("/v1/completions", {"prompt": "x"}),
                               ("/v1/chat/completions",
                                {"messages": [{"role": "user", "content": "x"}]})):
                r = self.d.post(path, dict(body, n=n))
                self.assertEqual(r.status_code, 400, r.text)
                self.assertEqual(r.json()["error"]["param"], "n")
                self.assertIn(want, r.json()["error"]["message"])

    def test_session_keeps_choice_0(self):
        """With session_id, the session holds choice 0's state: the next turn built on
        choice 0's answer resumes from it and answers what a cold run answers."""
        body = {"max_tokens": 12, "temperature": 1.0, "seed": 5, "stop": ["\n\n"],
                "session_id": "choices-conv"}
        conv = [{"role": "user", "content": "Good morrow, fair maid."}]
        r = self.d.post("/v1/chat/completions", dict(body, messages=conv, n=3))
        self.assertEqual(r.status_code, 200, r.text)
        answer = r.json()["choices"][0]["message"]["content"]
        conv = conv + [{"role": "assistant", "content": answer},
                       {"role": "user", "content": "What art thou?"}]
        second = self.d.post("/v1/chat/completions", dict(body, messages=conv)).json()
        cold = self.d.post("/v1/chat/completions",
                           {"messages": conv, "max_tokens": 12, "temperature": 1.0, "seed": 5,
                            "stop": ["\n\n"]}).json()
        self.assertGreater(second["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
        self.assertEqual(second["choices"][0]["message"], cold["choices"][0]["message"])

    def test_cancel_frees_every_slot(self):
        body = {"prompt": "ROMEO:", "max_tokens": 5000, "temperature": 1.0, "n": 4,
                "ignore_eos": True, "stream": True}
        r = requests.post(self.d.url + "/v1/completions", json=body, stream=True, timeout=T)
        it = r.iter_lines()
        for _ in range(6):
            next(it)
        self.assertEqual(self.d.metric("yunmin_running_sequences"), 4)
        r.close()
        deadline = time.time() + 20
        while time.time() < deadline and self.d.metric("yunmin_running_sequences") != 0:
            time.sleep(0.1)
        self.assertEqual(self.d.metric("yunmin_running_sequences"), 0)
        # The slots are free: a group of max_running choices runs.
        r = self.complete({"prompt": "ROMEO:", "max_tokens": 3, "n": 8})
        self.assertEqual(len(r["choices"]), 8)


_REF_MODEL = None


def reference_logprobs(ids):
    """Each position's log-softmax over the tokenizer's vocabulary, [len(ids), V]: the Python
    toolkit's own Mamba (tools/train/yunmin_train, PyTorch, float64) on the served model's
    weights, written from the published equations independently of the C engine. The
    embedding's padding rows beyond the tokenizer's ids (4104 rows, 4100 ids here) are no
    tokens: the server's distribution leaves them out, and so does this one."""
    global _REF_MODEL
    import torch
    if _REF_MODEL is None:
        sys.path.insert(0, os.path.join(ROOT, "tools", "train"))
        from yunmin_train.model import load_model
        _REF_MODEL = load_model(MODEL, dtype=torch.float64).eval()
    with open(os.path.join(MODEL, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    n_real = 1 + max(list(tj["model"]["vocab"].values()) +
                     [t["id"] for t in tj.get("added_tokens", [])])
    with torch.no_grad():
        logits = _REF_MODEL(torch.tensor([ids]))[0]
        return torch.log_softmax(logits[:, :n_real], dim=-1)


LOGPROB_TOL = 1e-4  # float32 engine against the float64 reference: measured <= 1e-5


class EchoLogprobs(unittest.TestCase):
    """echo with logprobs on /v1/completions: the prompt's tokens are scored too (OpenAI's
    "score a prompt" use with max_tokens 0). The reference for every prompt token's logprob
    and alternatives is reference_logprobs(); the generated part is the plain request's."""

    @classmethod
    def setUpClass(cls):
        # A short checkpoint interval: long prompts cross checkpoints that a second request
        # could resume from (echo with logprobs must not).
        cls.d = Daemon("--checkpoint-interval", "32")

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        if rc != 0:
            print(cls.d.log(), file=sys.stderr)
        assert rc == 0, "yunmind exit status %r after SIGTERM" % rc

    def ids(self, text):
        return self.d.post("/v1/tokenize", {"prompt": text}).json()["tokens"]

    def check_prompt_part(self, lp, ids, text, k):
        """The first len(ids) entries of lp score ids against the reference."""
        ref = reference_logprobs(ids)
        n = len(ids)
        self.assertIsNone(lp["token_logprobs"][0])
        self.assertIsNone(lp["top_logprobs"][0])
        self.assertEqual(lp["text_offset"][0], 0)
        worst = 0.0
        for i in range(1, n):
            want = ref[i - 1, ids[i]].item()
            worst = max(worst, abs(lp["token_logprobs"][i] - want))
            top = lp["top_logprobs"][i]
            self.assertLessEqual(len(top), k + 1)
            best = sorted(ref[i - 1].tolist(), reverse=True)[:k]
            got = sorted(top.values(), reverse=True)
            for a, b in zip(got, best):  # the k best, plus the prompt's token if not among them
                worst = max(worst, abs(a - b))
        print("echo logprobs: %d prompt tokens, max |server - reference| = %.2g" % (n, worst),
              file=sys.stderr)
        self.assertLess(worst, LOGPROB_TOL)
        # Offsets: where each token's text starts in the echoed prompt.
        toks = lp["tokens"][:n]
        self.assertEqual("".join(toks), text)
        self.assertEqual(lp["text_offset"][:n],
                         [len("".join(toks[:i]).encode()) for i in range(n)])

    def test_score_a_prompt_with_max_tokens_0(self):
        text = "KING RICHARD III:\nNow is the winter of our discontent"
        ids = self.ids(text)
        r = self.d.post("/v1/completions", {"prompt": text, "max_tokens": 0, "echo": True,
                                            "logprobs": 5})
        self.assertEqual(r.status_code, 200, r.text)
        ch = r.json()["choices"][0]
        self.assertEqual(ch["text"], text)
        self.assertEqual(ch["finish_reason"], "length")
        self.assertEqual(len(ch["logprobs"]["tokens"]), len(ids))
        self.check_prompt_part(ch["logprobs"], ids, text, 5)
        self.assertEqual(r.json()["usage"]["completion_tokens"], 0)
        self.assertEqual(r.json()["usage"]["prompt_tokens"], len(ids))

    def test_prompt_then_generated_tokens(self):
        text = "JULIET:\nO Romeo, Romeo"
        ids = self.ids(text)
        plain = self.d.post("/v1/completions", {"prompt": text, "max_tokens": 8,
                                                "temperature": 0, "logprobs": 2}).json()
        r = self.d.post("/v1/completions", {"prompt": text, "max_tokens": 8, "temperature": 0,
                                            "logprobs": 2, "echo": True}).json()
        ch, pch = r["choices"][0], plain["choices"][0]
        self.assertEqual(ch["text"], text + pch["text"])
        lp, plp = ch["logprobs"], pch["logprobs"]
        self.check_prompt_part(lp, ids, text, 2)
        n = len(ids)
        self.assertEqual(lp["tokens"][n:], plp["tokens"])
        self.assertEqual(lp["token_logprobs"][n:], plp["token_logprobs"])
        self.assertEqual(lp["top_logprobs"][n:], plp["top_logprobs"])
        self.assertEqual(lp["text_offset"][n:], [len(text) + o for o in plp["text_offset"]])
        self.assertEqual(r["usage"], plain["usage"])
        # Token-id prompts echo their decoded text; ids name the tokens when asked.
        r = self.d.post("/v1/completions", {"prompt": ids, "max_tokens": 0, "echo": True,
                                            "logprobs": 0, "return_tokens_as_token_ids": True})
        lp = r.json()["choices"][0]["logprobs"]
        self.assertEqual(r.json()["choices"][0]["text"], text)
        self.assertEqual(lp["tokens"], ["token_id:%d" % i for i in ids])

    def test_long_prompt_scored_over_many_chunks_and_never_resumed(self):
        """A prompt of several hundred tokens: scored in many steps (a step holds a bounded
        number of scored rows), equal to the reference; sent twice, the second run may not
        start from the first one's prefix checkpoints (they hold no logits)."""
        text = read_text("data/tinyshakespeare.txt")[:1500]
        ids = self.ids(text)
        self.assertGreater(len(ids), 200)
        for _ in range(2):
            r = self.d.post("/v1/completions", {"prompt": text, "max_tokens": 2, "echo": True,
                                                "logprobs": 1, "temperature": 0}).json()
            self.assertEqual(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
            self.check_prompt_part(r["choices"][0]["logprobs"], ids, text, 1)
        # The checkpoints exist: the same prompt without logprobs resumes from them.
        r = self.d.post("/v1/completions", {"prompt": text, "max_tokens": 2, "echo": True,
                                            "temperature": 0}).json()
        self.assertGreater(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0)

    def test_stream_first_chunk_carries_the_prompt(self):
        text = "ROMEO:\nWhat light"
        ids = self.ids(text)
        body = {"prompt": text, "max_tokens": 6, "temperature": 0, "logprobs": 3, "echo": True}
        plain = self.d.post("/v1/completions", body).json()["choices"][0]
        _, chunks, _ = stream(self.d, body)
        first = chunks[0]["choices"][0]
        self.assertEqual(first["text"], text)
        self.assertEqual(first["logprobs"]["tokens"], plain["logprobs"]["tokens"][:len(ids)])
        self.assertEqual(first["logprobs"]["token_logprobs"],
                         plain["logprobs"]["token_logprobs"][:len(ids)])
        self.assertIsNone(first["finish_reason"])
        merged = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        text_all = ""
        for c in chunks:
            ch = c["choices"][0]
            text_all += ch["text"]
            for k in merged:
                merged[k] += (ch["logprobs"] or {}).get(k, [])
        self.assertEqual(text_all, plain["text"])
        self.assertEqual(merged, plain["logprobs"])
        # max_tokens 0: the prompt's chunk, then the finish.
        _, chunks, _ = stream(self.d, dict(body, max_tokens=0))
        self.assertEqual(chunks[0]["choices"][0]["text"], text)
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")

    def test_n_and_several_prompts(self):
        texts = ["ROMEO:", "First Citizen:\nBefore we proceed"]
        r = self.d.post("/v1/completions", {"prompt": texts, "n": 2, "max_tokens": 4,
                                            "temperature": 0, "echo": True,
                                            "logprobs": 1}).json()
        self.assertEqual([c["index"] for c in r["choices"]], [0, 1, 2, 3])
        for p, text in enumerate(texts):
            one = self.d.post("/v1/completions", {"prompt": text, "max_tokens": 4,
                                                  "temperature": 0, "echo": True,
                                                  "logprobs": 1}).json()["choices"][0]
            for j in range(2):
                # The same tokens; logprobs equal up to float rounding (a batch of other
                # rows may take other matrix kernels than a request alone).
                ch = r["choices"][p * 2 + j]
                self.assertEqual(ch["text"], one["text"])
                got, want = ch["logprobs"], one["logprobs"]
                for k in ("tokens", "text_offset"):
                    self.assertEqual(got[k], want[k])
                for a, b in zip(got["token_logprobs"], want["token_logprobs"]):
                    self.assertTrue(a == b or abs(a - b) < 1e-4, (a, b))


class Prompts(unittest.TestCase):
    """Several prompts in one /v1/completions request (OpenAI's list forms). Each prompt's
    choices equal a request of that prompt alone (itself checked against `yunmin generate`
    above); choice index = prompt index * n + j."""

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        if rc != 0:
            print(cls.d.log(), file=sys.stderr)
        assert rc == 0, "yunmind exit status %r after SIGTERM" % rc

    def complete(self, body):
        r = self.d.post("/v1/completions", body)
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()

    def test_list_of_strings_and_of_id_lists(self):
        prompts = PROMPTS[:3]
        body = {"max_tokens": 10, "temperature": 1.0, "seed": 11, "n": 2}
        alone = [self.complete(dict(body, prompt=p)) for p in prompts]
        ids = [self.d.post("/v1/tokenize", {"prompt": p}).json()["tokens"] for p in prompts]
        for form in (prompts, ids):
            r = self.complete(dict(body, prompt=form))
            self.assertEqual([c["index"] for c in r["choices"]], list(range(6)))
            for p in range(3):
                for j in range(2):
                    got, want = r["choices"][p * 2 + j], alone[p]["choices"][j]
                    self.assertEqual((got["text"], got["finish_reason"]),
                                     (want["text"], want["finish_reason"]))
            for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
                self.assertEqual(r["usage"][k], sum(a["usage"][k] for a in alone), k)
        # echo gives each choice its own prompt's text
        r = self.complete({"prompt": prompts, "max_tokens": 3, "temperature": 0, "echo": True})
        for p in range(3):
            self.assertTrue(r["choices"][p]["text"].startswith(prompts[p]))
        # A one-element list is one prompt; 16 choices in all is the limit.
        self.assertEqual(len(self.complete({"prompt": ["ROMEO:"], "max_tokens": 1})["choices"]), 1)
        r = self.complete({"prompt": PROMPTS[:4], "n": 4, "max_tokens": 1})
        self.assertEqual(len(r["choices"]), 16)

    def test_long_prompts_tokenized_off_the_loop(self):
        """Prompts over 32 KiB together are tokenized on the libuv pool, all of them."""
        t = read_text("data/tinyshakespeare.txt")
        texts = [t[:16500], t[16500:33000]]  # 33000 bytes together
        r = self.complete({"prompt": texts, "max_tokens": 3, "temperature": 0})
        alone = [self.complete({"prompt": x, "max_tokens": 3, "temperature": 0}) for x in texts]
        self.assertEqual([c["text"] for c in r["choices"]],
                         [a["choices"][0]["text"] for a in alone])
        self.assertEqual(r["usage"]["prompt_tokens"], sum(a["usage"]["prompt_tokens"]
                                                          for a in alone))

    def test_stream_chunks_carry_their_index(self):
        prompts = ["ROMEO:", "JULIET:"]
        body = {"prompt": prompts, "n": 2, "max_tokens": 8, "temperature": 1.0, "seed": 4}
        plain = self.complete(body)
        _, chunks, usage = stream(self.d, dict(body, stream_options={"include_usage": True}))
        texts, fins = [""] * 4, [None] * 4
        for c in chunks:
            for ch in c["choices"]:
                self.assertIsNone(fins[ch["index"]], "output after finish_reason")
                texts[ch["index"]] += ch["text"]
                fins[ch["index"]] = ch["finish_reason"]
        self.assertEqual(texts, [c["text"] for c in plain["choices"]])
        self.assertEqual(fins, [c["finish_reason"] for c in plain["choices"]])
        self.assertEqual(usage, plain["usage"])

    def test_prompts_run_together_in_the_batch(self):
        """4 prompts of 24 tokens each: run together they take 24 engine steps, each with the
        4 sequences (they enter the queue at once, so one admission takes them all); one
        after another they would take about 96."""
        steps0 = self.d.metric("yunmin_engine_steps_total")
        seqs0 = self.d.metric("yunmin_batch_sequences_sum")
        r = self.complete({"prompt": PROMPTS[:4], "max_tokens": 24, "ignore_eos": True,
                           "temperature": 0})
        self.assertEqual(r["usage"]["completion_tokens"], 96)
        steps = self.d.metric("yunmin_engine_steps_total") - steps0
        seqs = self.d.metric("yunmin_batch_sequences_sum") - seqs0
        print("4 prompts x 24 tokens: %d engine steps, %.2f sequences per step"
              % (steps, seqs / steps), file=sys.stderr)
        self.assertLessEqual(steps, 25)
        self.assertGreaterEqual(seqs / steps, 3.8)

    def test_a_full_queue_refuses_the_whole_request(self):
        """Each prompt takes a place in the queue: when they do not all fit, the request is
        refused (503) and none of its prompts is queued or run."""
        d = Daemon("--max-running", "1", "--max-queue", "1")
        try:
            r = d.post("/v1/completions", {"prompt": PROMPTS[:4], "max_tokens": 50})
            self.assertEqual(r.status_code, 503, r.text)
            self.assertEqual(r.json()["error"]["code"], "queue_full")
            deadline = time.time() + 20
            while time.time() < deadline and (d.metric("yunmin_running_sequences") or
                                              d.metric("yunmin_queue_depth")):
                time.sleep(0.05)
            self.assertEqual(d.metric("yunmin_running_sequences"), 0)
            self.assertEqual(d.metric("yunmin_queue_depth"), 0)
            r = d.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 3})
            self.assertEqual(r.status_code, 200, r.text)
        finally:
            self.assertEqual(d.stop(), 0)

    def test_cancel_reaches_every_prompt(self):
        body = {"prompt": PROMPTS[:3], "n": 2, "max_tokens": 5000, "ignore_eos": True,
                "stream": True}
        r = requests.post(self.d.url + "/v1/completions", json=body, stream=True, timeout=T)
        it = r.iter_lines()
        for _ in range(8):
            next(it)
        self.assertEqual(self.d.metric("yunmin_running_sequences"), 6)
        r.close()
        deadline = time.time() + 20
        while time.time() < deadline and self.d.metric("yunmin_running_sequences") != 0:
            time.sleep(0.1)
        self.assertEqual(self.d.metric("yunmin_running_sequences"), 0)


class Limits(unittest.TestCase):
    def test_queue_full_gives_503(self):
        d = Daemon("--max-running", "1", "--max-queue", "1")
        try:
            body = {"prompt": "ROMEO:", "max_tokens": 400, "ignore_eos": True, "temperature": 0}
            results = []

            def worker():
                results.append(requests.post(d.url + "/v1/completions", json=body, timeout=T))

            ths = [threading.Thread(target=worker) for _ in range(4)]
            for t in ths:
                t.start()
                time.sleep(0.05)
            for t in ths:
                t.join(T)
            codes = sorted(r.status_code for r in results)
            self.assertIn(200, codes)
            self.assertIn(503, codes)
            busy = [r for r in results if r.status_code == 503][0]
            self.assertEqual(busy.headers.get("Retry-After"), "1")
            self.assertEqual(busy.json()["error"]["code"], "queue_full")
            self.assertGreaterEqual(d.metric("yunmin_requests_rejected_busy_total"), 1)
        finally:
            self.assertEqual(d.stop(), 0)

    def test_limits_from_config_file_and_env(self):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"max_tokens_cap": 10, "default_max_tokens": 5, "max_body_bytes": 1000}, f)
        try:
            d = Daemon("--config", f.name, env={"YUNMIN_MAX_PROMPT_TOKENS": "5"})
            try:
                r = d.post("/v1/completions", {"prompt": "x", "max_tokens": 11})
                self.assertEqual((r.status_code, r.json()["error"]["param"]), (400, "max_tokens"))
                r = d.post("/v1/completions", {"prompt": "a b c d e f g h i j k"})
                self.assertEqual((r.status_code, r.json()["error"]["code"]),
                                 (400, "prompt_too_long"))
                r = d.post("/v1/completions", {"prompt": "y" * 2000})
                self.assertEqual(r.status_code, 413)
                # SIGHUP re-reads the file: the cap changes without a restart.
                with open(f.name, "w") as g:
                    json.dump({"max_tokens_cap": 20, "default_max_tokens": 5,
                               "max_body_bytes": 1000}, g)
                d.proc.send_signal(signal.SIGHUP)
                deadline = time.time() + 10
                while time.time() < deadline:
                    r = d.post("/v1/completions", {"prompt": "x", "max_tokens": 15})
                    if r.status_code == 200:
                        break
                    time.sleep(0.1)
                self.assertEqual(r.status_code, 200)
            finally:
                self.assertEqual(d.stop(), 0)
        finally:
            os.unlink(f.name)


def new_key():
    p = subprocess.run([YUNMIND, "--new-key"], capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


class Tenants(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.a, cls.b, cls.c = new_key(), new_key(), new_key()
        cls.file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        cls.write_tenants([("alpha", cls.a, 1), ("beta", cls.b, 0)])
        cls.d = Daemon("--tenants-file", cls.file.name)

    @classmethod
    def write_tenants(cls, entries):
        with open(cls.file.name, "w") as f:
            json.dump({"tenants": [{"name": n, "keys": [k["hash"]], "max_concurrent": m}
                                   for n, k, m in entries]}, f)

    @classmethod
    def tearDownClass(cls):
        try:
            assert cls.d.stop() == 0
        finally:
            os.unlink(cls.file.name)

    def get(self, path, key=None):
        h = {"Authorization": "Bearer " + key["key"]} if key else {}
        return requests.get(self.d.url + path, headers=h, timeout=T)

    def post(self, path, body, key=None, raw_auth=None):
        h = {"Authorization": raw_auth or "Bearer " + key["key"]} if (key or raw_auth) else {}
        return requests.post(self.d.url + path, json=body, headers=h, timeout=T)

    def test_keys_are_required_on_v1_only(self):
        for path in ("/healthz", "/readyz", "/metrics"):
            self.assertEqual(self.get(path).status_code, 200, path)
        r = self.get("/v1/models")
        self.assertEqual(r.status_code, 401)
        self.assertEqual(r.headers.get("WWW-Authenticate"), "Bearer")
        self.assertEqual(r.json()["error"]["type"], "authentication_error")
        for auth in ("Bearer nope", "Basic " + self.a["key"], "Bearer", self.a["key"],
                     "Bearer " + self.a["hash"], "Bearer " + self.a["key"] + "x"):
            r = self.post("/v1/completions", {"prompt": "x", "max_tokens": 1}, raw_auth=auth)
            self.assertEqual(r.status_code, 401, auth)
        self.assertEqual(self.get("/v1/models", self.a).status_code, 200)
        r = self.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 3}, self.b)
        self.assertEqual(r.status_code, 200, r.text)
        r = self.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 3},
                      raw_auth="bearer  " + self.b["key"] + " ")
        self.assertEqual(r.status_code, 200, r.text)

    def test_concurrency_limit_per_tenant(self):
        body = {"prompt": "ROMEO:", "max_tokens": 8000, "ignore_eos": True, "stream": True}
        first = requests.post(self.d.url + "/v1/completions", json=body, stream=True, timeout=T,
                              headers={"Authorization": "Bearer " + self.a["key"]})
        self.assertEqual(first.status_code, 200)
        # Keep the line iterator: a discarded one closes the connection when it is collected,
        # and the server then cancels the stream and frees the tenant's slot.
        lines = first.iter_lines()
        self.assertTrue(next(lines).startswith(b"data: {"))
        try:
            r = self.post("/v1/completions", {"prompt": "x", "max_tokens": 1}, self.a)
            self.assertEqual(r.status_code, 429)
            self.assertEqual(r.json()["error"]["code"], "concurrency_limit")
            self.assertEqual(r.headers.get("Retry-After"), "1")
            # Another tenant is not affected.
            r = self.post("/v1/completions", {"prompt": "x", "max_tokens": 1}, self.b)
            self.assertEqual(r.status_code, 200)
        finally:
            first.close()
        deadline = time.time() + 20
        while time.time() < deadline:
            r = self.post("/v1/completions", {"prompt": "x", "max_tokens": 1}, self.a)
            if r.status_code == 200:
                break
            time.sleep(0.1)
        self.assertEqual(r.status_code, 200)

    def test_sighup_reloads_keys(self):
        self.write_tenants([("alpha", self.a, 1), ("gamma", self.c, 0)])
        self.d.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while time.time() < deadline and self.get("/v1/models", self.c).status_code != 200:
            time.sleep(0.1)
        self.assertEqual(self.get("/v1/models", self.c).status_code, 200)
        self.assertEqual(self.get("/v1/models", self.b).status_code, 401)
        # A broken file changes nothing.
        with open(self.file.name, "w") as f:
            f.write("{broken")
        self.d.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        self.assertEqual(self.get("/v1/models", self.c).status_code, 200)
        self.write_tenants([("alpha", self.a, 1), ("beta", self.b, 0)])
        self.d.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while time.time() < deadline and self.get("/v1/models", self.b).status_code != 200:
            time.sleep(0.1)

    def test_key_tools_and_bad_files(self):
        p = subprocess.run([YUNMIND, "--hash-key"], input=self.a["key"].encode() + b"\n",
                           capture_output=True, timeout=30)
        self.assertEqual(p.stdout.decode().strip(), self.a["hash"])
        self.assertNotEqual(new_key()["key"], new_key()["key"])
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump({"tenants": [{"name": "x", "keys": [self.a["key"]]}]}, f)
            f.flush()
            p = subprocess.run([YUNMIND, "--tenants-file", f.name, "--port", "0"],
                               capture_output=True, timeout=30)
            self.assertEqual(p.returncode, 2)
            self.assertIn("sha256", p.stderr.decode())
        d = Daemon()
        try:
            self.assertIn("open mode", d.log())
            r = requests.get(d.url + "/v1/models", timeout=T)
            self.assertEqual(r.status_code, 200)
        finally:
            self.assertEqual(d.stop(), 0)


def upload(d, name, adir, key=None, extra=None, drop=None):
    """PUT an adapter directory as multipart, one part per file (part name = relative path)."""
    files = []
    for root, _, names in os.walk(adir):
        for n in sorted(names):
            path = os.path.join(root, n)
            rel = os.path.relpath(path, adir)
            if drop and rel in drop:
                continue
            with open(path, "rb") as f:
                files.append((rel, (n, f.read(), "application/octet-stream")))
    for rel, data in (extra or {}).items():
        files.append((rel, (os.path.basename(rel), data, "application/octet-stream")))
    h = {"Authorization": "Bearer " + key["key"]} if key else {}
    return requests.put(d.url + "/v1/adapters/" + name, files=files, headers=h, timeout=T)


def store_listing(adir):
    """Every file under an adapter store, except uploads in progress."""
    out = []
    for root, dirs, names in os.walk(adir):
        for n in names + [x for x in dirs if os.path.islink(os.path.join(root, x))]:
            rel = os.path.relpath(os.path.join(root, n), adir)
            if "/.tmp/" not in "/" + rel:
                out.append(rel)
    return sorted(out)


class Adapters(unittest.TestCase):
    """Uploads, management, hot swap and replicas on the m40 conformance model, with the PEFT
    adapters of tests/fixtures/peft (made by the peft library). Texts are checked against
    `yunmin generate --adapter`, which loads the same directory without the server."""

    @classmethod
    def setUpClass(cls):
        cls.model = os.path.join(ROOT, "tests", "fixtures", "conformance", "m40-bias-k3-f32")
        cls.peft = os.path.join(ROOT, "tests", "fixtures", "peft")
        cls.dir = tempfile.mkdtemp(prefix="yunmin-adapters-")
        cls.d = Daemon("--model", cls.model, "--adapter-dir", cls.dir)

    @classmethod
    def tearDownClass(cls):
        try:
            assert cls.d.stop() == 0
        finally:
            subprocess.run(["rm", "-rf", cls.dir])

    def cli_text(self, adapter, prompt="ROMEO:", n=12):
        p = subprocess.run([YUNMIN, "generate", "--model", self.model, "--adapter",
                            os.path.join(self.peft, adapter), "-p", prompt, "-n", str(n),
                            "--temperature", "0", "--threads", "1"], capture_output=True,
                           timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        return cli_text(p.stdout)

    def complete(self, model, prompt="ROMEO:", n=12, d=None, **kw):
        body = dict({"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0}, **kw)
        return (d or self.d).post("/v1/completions", body)

    def test_upload_describe_serve_delete(self):
        r = upload(self.d, "up1", os.path.join(self.peft, "lora-all4-m40"))
        self.assertEqual(r.status_code, 201, r.text)
        info = r.json()
        self.assertEqual((info["id"], info["object"], info["type"]), ("up1", "adapter", "lora"))
        self.assertEqual(info["targets"], ["in_proj", "x_proj", "dt_proj", "out_proj"])
        self.assertEqual(info["rank"], 4)
        self.assertGreater(info["trainable_params"], 0)
        self.assertGreater(info["bytes"], 0)
        self.assertEqual(self.d.post("/v1/completions", {}).status_code, 400)
        got = requests.get(self.d.url + "/v1/adapters/up1", timeout=T).json()
        self.assertEqual(got, info)
        ids = [m["id"] for m in requests.get(self.d.url + "/v1/models", timeout=T).json()["data"]]
        self.assertIn("up1", ids)
        r = self.complete("up1")
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(r.json()["model"], "up1")
        self.assertEqual(r.json()["choices"][0]["text"], self.cli_text("lora-all4-m40"))
        self.assertNotEqual(r.json()["choices"][0]["text"],
                            self.complete(None).json()["choices"][0]["text"])
        # Also by the adapters list, and streamed.
        r = self.complete(None, adapters=["up1"])
        self.assertEqual(r.json()["choices"][0]["text"], self.cli_text("lora-all4-m40"))
        self.assertEqual(stream(self.d, {"model": "up1", "prompt": "ROMEO:", "max_tokens": 12,
                                         "temperature": 0})[0], self.cli_text("lora-all4-m40"))
        r = requests.delete(self.d.url + "/v1/adapters/up1", timeout=T)
        self.assertEqual(r.status_code, 200)
        self.assertTrue(r.json()["deleted"])
        self.assertEqual(requests.get(self.d.url + "/v1/adapters/up1", timeout=T).status_code, 404)
        self.assertEqual(self.complete("up1").status_code, 404)
        self.assertEqual(requests.delete(self.d.url + "/v1/adapters/up1", timeout=T).status_code,
                         404)
        self.assertNotIn("up1", store_listing(os.path.join(self.dir, "default")))

    def test_every_kind_and_composition(self):
        for name in ("ia3-ff-m40", "ia3-out-m40", "hybrid-m40"):
            r = upload(self.d, name, os.path.join(self.peft, name))
            self.assertEqual(r.status_code, 201, (name, r.text))
            self.assertEqual(self.complete(name).json()["choices"][0]["text"],
                             self.cli_text(name), name)
        r = upload(self.d, "l4", os.path.join(self.peft, "lora-all4-m40"))
        self.assertEqual(r.status_code, 201)
        p = subprocess.run([YUNMIN, "generate", "--model", self.model, "--adapter",
                            os.path.join(self.peft, "lora-all4-m40"), "--adapter",
                            os.path.join(self.peft, "ia3-out-m40"), "-p", "ROMEO:", "-n", "12",
                            "--temperature", "0", "--threads", "1"], capture_output=True,
                           timeout=120)
        r = self.complete("l4", adapters=["ia3-out-m40"])
        self.assertEqual(r.json()["choices"][0]["text"], cli_text(p.stdout))
        r = self.complete(None, adapters=["l4", "nope"])
        self.assertEqual((r.status_code, r.json()["error"]["param"]), (404, "adapters"))

    def test_bad_uploads_change_nothing(self):
        good = os.path.join(self.peft, "lora-all4-m40")
        self.assertEqual(upload(self.d, "keep", good).status_code, 201)
        want = self.complete("keep").json()["choices"][0]["text"]
        before = store_listing(self.dir)
        with open(os.path.join(good, "adapter_model.safetensors"), "rb") as f:
            st = f.read()
        with open(os.path.join(good, "adapter_config.json")) as f:
            cfg = json.load(f)
        hlen = struct.unpack("<Q", st[:8])[0]
        nan = bytearray(st)
        nan[8 + hlen:8 + hlen + 4] = struct.pack("<f", float("nan"))
        cases = [
            ("keep", {"drop": ["adapter_model.safetensors"]}, 422),
            ("keep", {"drop": ["adapter_config.json"]}, 400),
            ("keep", {"extra": {"../evil.json": b"{}"}}, 400),
            ("keep", {"extra": {"notes.txt": b"hi"}}, 400),
            ("keep", {"extra": {"/abs/adapter_config.json": b"{}"}}, 400),
            ("keep", {"drop": ["adapter_model.safetensors"],
                      "extra": {"adapter_model.safetensors": st[:len(st) // 2]}}, 422),
            ("keep", {"drop": ["adapter_model.safetensors"],
                      "extra": {"adapter_model.safetensors": bytes(nan)}}, 422),
            ("keep", {"drop": ["adapter_config.json"],
                      "extra": {"adapter_config.json": json.dumps(dict(cfg, peft_type="PREFIX_TUNING")).encode()}}, 422),
            ("keep", {"drop": ["adapter_config.json"],
                      "extra": {"adapter_config.json": json.dumps(dict(cfg, target_modules=["conv1d"])).encode()}}, 422),
            ("keep", {"drop": ["adapter_config.json"],
                      "extra": {"adapter_config.json": json.dumps(dict(cfg, r=8)).encode()}}, 422),
            ("bad/name", {}, 400),
            (".hidden", {}, 400),
            ("m40-bias-k3-f32", {}, 400),  # permanent: not a 409, which clients retry
        ]
        for name, kw, status in cases:
            r = upload(self.d, name, good, **kw)
            self.assertEqual(r.status_code, status, (name, kw.keys(), r.text))
            self.assertTrue(r.json()["error"]["message"])
            self.assertNotIn(self.dir, r.text)
        # An adapter made for another model (shape mismatch).
        r = upload(self.d, "keep", os.path.join(self.peft, "lora-pattern-m72"))
        self.assertEqual(r.status_code, 422, r.text)
        self.assertIn("model", r.json()["error"]["message"])
        self.assertNotIn(self.dir, r.text)  # server paths do not leak to clients
        # Not multipart at all, and a truncated multipart body.
        r = requests.put(self.d.url + "/v1/adapters/keep", data=b"{}", timeout=T,
                         headers={"Content-Type": "application/json"})
        self.assertEqual(r.status_code, 400)
        r = requests.put(self.d.url + "/v1/adapters/keep", data=b"--b\r\nContent-Disposition: "
                         b"form-data; name=adapter_config.json\r\n\r\n{}", timeout=T,
                         headers={"Content-Type": "multipart/form-data; boundary=b"})
        self.assertEqual(r.status_code, 400)
        # A client that goes away in the middle of an upload.
        with socket.create_connection(("127.0.0.1", self.d.port), timeout=T) as s:
            s.sendall(b"PUT /v1/adapters/keep HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      b"multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
                      b"--b\r\nContent-Disposition: form-data; name=adapter_config.json\r\n\r\n"
                      b"{\"peft_type\":")
            time.sleep(0.3)
        time.sleep(0.3)
        self.assertEqual(store_listing(self.dir), before)
        self.assertEqual(self.complete("keep").json()["choices"][0]["text"], want)
        leftovers = os.listdir(os.path.join(self.dir, "default", ".tmp"))
        self.assertEqual([x for x in leftovers if x.startswith("up-")], [])

    def test_hot_swap_under_load(self):
        a = os.path.join(self.peft, "lora-all4-m40")
        b = os.path.join(self.peft, "ia3-out-m40")
        self.assertIn(upload(self.d, "swap", a).status_code, (200, 201))
        texts = {self.cli_text("lora-all4-m40", n=24), self.cli_text("ia3-out-m40", n=24)}
        self.assertEqual(len(texts), 2)
        stop = threading.Event()
        results, failures = [], []

        def client(streaming):
            while not stop.is_set():
                body = {"model": "swap", "prompt": "ROMEO:", "max_tokens": 24, "temperature": 0}
                try:
                    if streaming:
                        results.append(stream(self.d, body)[0])
                    else:
                        r = self.d.post("/v1/completions", body)
                        if r.status_code != 200:
                            failures.append(r.text)
                        else:
                            results.append(r.json()["choices"][0]["text"])
                except Exception as e:  # noqa: BLE001 - any failure counts
                    failures.append(repr(e))

        ths = [threading.Thread(target=client, args=(i % 2 == 0,)) for i in range(3)]
        for t in ths:
            t.start()
        versions = []
        for i in range(20):
            r = upload(self.d, "swap", b if i % 2 == 0 else a)
            self.assertEqual(r.status_code, 200, r.text)
            versions.append(r.json()["version"])
            time.sleep(0.05)
        stop.set()
        for t in ths:
            t.join(T)
        self.assertEqual(failures, [])
        self.assertGreater(len(results), 20)
        self.assertTrue(set(results) <= texts, set(results) - texts)
        self.assertEqual(versions, sorted(versions))
        self.assertEqual(len(set(versions)), 20)

    def test_restart_and_replica_pick_up_the_store(self):
        self.assertIn(upload(self.d, "shared", os.path.join(self.peft, "ia3-ff-m40")).status_code,
                      (200, 201))
        want = self.cli_text("ia3-ff-m40")
        other = Daemon("--model", self.model, "--adapter-dir", self.dir)
        try:
            deadline = time.time() + 10
            while time.time() < deadline and self.complete("shared", d=other).status_code != 200:
                time.sleep(0.05)
            self.assertEqual(self.complete("shared", d=other).json()["choices"][0]["text"], want)
            # An upload to one replica is served by the other (watched directory).
            t0 = time.time()
            self.assertIn(upload(self.d, "shared", os.path.join(self.peft, "lora-all4-m40"))
                          .status_code, (200, 201))
            want2 = self.cli_text("lora-all4-m40")
            while time.time() - t0 < 10:
                if self.complete("shared", d=other).json()["choices"][0]["text"] == want2:
                    break
                time.sleep(0.05)
            self.assertEqual(self.complete("shared", d=other).json()["choices"][0]["text"], want2)
            # A delete too.
            requests.delete(self.d.url + "/v1/adapters/shared", timeout=T)
            deadline = time.time() + 10
            while time.time() < deadline and self.complete("shared", d=other).status_code != 404:
                time.sleep(0.05)
            self.assertEqual(self.complete("shared", d=other).status_code, 404)
        finally:
            self.assertEqual(other.stop(), 0)


class AdapterTenants(unittest.TestCase):
    def test_tenants_see_only_their_adapters(self):
        a, b = new_key(), new_key()
        adir = tempfile.mkdtemp(prefix="yunmin-adapters-")
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"tenants": [{"name": "ta", "keys": [a["hash"]], "max_adapters": 1},
                                   {"name": "tb", "keys": [b["hash"]],
                                    "max_adapter_bytes": 1000}]}, f)
        model = os.path.join(ROOT, "tests", "fixtures", "conformance", "m40-bias-k3-f32")
        peft = os.path.join(ROOT, "tests", "fixtures", "peft")
        d = Daemon("--model", model, "--adapter-dir", adir, "--tenants-file", f.name)
        try:
            ha = {"Authorization": "Bearer " + a["key"]}
            hb = {"Authorization": "Bearer " + b["key"]}
            self.assertEqual(upload(d, "mine", os.path.join(peft, "ia3-out-m40"), key=a)
                             .status_code, 201)
            self.assertTrue(os.path.islink(os.path.join(adir, "ta", "mine")))
            # Another tenant: 404, exactly as for a name that does not exist.
            for method in ("get", "delete"):
                r = getattr(requests, method)(d.url + "/v1/adapters/mine", headers=hb, timeout=T)
                self.assertEqual(r.status_code, 404)
            self.assertEqual(requests.get(d.url + "/v1/adapters", headers=hb, timeout=T)
                             .json()["data"], [])
            r = requests.post(d.url + "/v1/completions", headers=hb, timeout=T,
                              json={"model": "mine", "prompt": "x", "max_tokens": 1})
            self.assertEqual(r.status_code, 404)
            r = requests.post(d.url + "/v1/completions", headers=ha, timeout=T,
                              json={"model": "mine", "prompt": "x", "max_tokens": 1})
            self.assertEqual(r.status_code, 200)
            # Limits: ta may hold one adapter; tb may store 1000 bytes.
            r = upload(d, "second", os.path.join(peft, "ia3-out-m40"), key=a)
            # Permanent until one is deleted: a status the OpenAI SDKs do not retry.
            self.assertEqual((r.status_code, r.json()["error"]["code"]), (403, "adapter_limit"))
            self.assertNotIn("Retry-After", r.headers)
            self.assertEqual(upload(d, "mine", os.path.join(peft, "ia3-ff-m40"), key=a)
                             .status_code, 200)  # replacing is not a new adapter
            r = upload(d, "big", os.path.join(peft, "lora-all4-m40"), key=b)
            self.assertEqual(r.status_code, 413, r.text)
            self.assertFalse(os.path.exists(os.path.join(adir, "tb", "big")))
            self.assertEqual(upload(d, "x", os.path.join(peft, "ia3-out-m40")).status_code, 401)
        finally:
            self.assertEqual(d.stop(), 0)
            os.unlink(f.name)
            subprocess.run(["rm", "-rf", adir])


def gen_ids(resp):
    """Token ids of a completion made with logprobs and return_tokens_as_token_ids."""
    return [int(t.split(":")[1]) for t in resp["choices"][0]["logprobs"]["tokens"]]


class Sessions(unittest.TestCase):
    """Sessions and prefix checkpoints (the state cache). Every resumed answer is compared with
    a cold run of the same prompt on a second daemon whose cache is off (cache_bytes 0); the
    expected cached_tokens follow from the token histories the test itself keeps."""

    INTERVAL = 64

    @classmethod
    def setUpClass(cls):
        cls.alpha, cls.beta, cls.ops = new_key(), new_key(), new_key()
        cls.file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump({"tenants": [{"name": "alpha", "keys": [cls.alpha["hash"]]},
                               {"name": "beta", "keys": [cls.beta["hash"]]},
                               {"name": "ops", "keys": [cls.ops["hash"]], "admin": True}]},
                  cls.file)
        cls.file.close()
        cls.d = Daemon("--tenants-file", cls.file.name, "--checkpoint-interval",
                       str(cls.INTERVAL))
        cls.cold = Daemon("--tenants-file", cls.file.name, "--cache-bytes", "0")
        cls.text = read_text("data/tinyshakespeare.txt")

    @classmethod
    def tearDownClass(cls):
        try:
            assert cls.d.stop() == 0
            assert cls.cold.stop() == 0
        finally:
            os.unlink(cls.file.name)

    def complete(self, prompt, key=None, sid=None, d=None, n=16, headers=None, **kw):
        body = dict({"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True,
                     "logprobs": 0, "return_tokens_as_token_ids": True}, **kw)
        if sid is not None:
            body["session_id"] = sid
        h = {"Authorization": "Bearer " + (key or self.alpha)["key"]}
        h.update(headers or {})
        r = (d or self.d).post("/v1/completions", body, headers=h)
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()

    def ids(self, text):
        r = self.d.post("/v1/tokenize", {"prompt": text},
                        headers={"Authorization": "Bearer " + self.alpha["key"]})
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()["tokens"]

    def cold_ids(self, prompt, n=16, **kw):
        return gen_ids(self.complete(prompt, d=self.cold, n=n, **kw))

    def turns(self, sid, opening, replies, key=None, d=None):
        """A conversation by token ids: each turn sends the whole history (previous prompt,
        the answer's ids, the next reply) and must resume from the session. Returns the
        history and the cached_tokens of each turn."""
        hist, cached, expect = list(opening), [], 0
        for i, reply in enumerate([[]] + replies):
            hist += reply
            r = self.complete(hist, key=key, sid=sid, d=d)
            got = gen_ids(r)
            self.assertEqual(got, self.cold_ids(hist), "turn %d" % i)
            cached.append(r["usage"]["prompt_tokens_details"]["cached_tokens"])
            self.assertEqual(r["usage"]["prompt_tokens"], len(hist))
            if i > 0:
                self.assertEqual(cached[-1], expect, "turn %d" % i)
            # The session holds the prompt and every answer token but the last (never fed).
            expect = len(hist) + len(got) - 1
            hist += got
        return hist, cached

    def test_long_multi_turn_conversation_resumes_exactly(self):
        opening = self.ids("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
                           "All:\nSpeak, speak.\n\n")
        replies = [self.ids(t) for t in ("\n\nFirst Citizen:\nYou are all resolved rather to "
                                         "die than to famish?\n\n", "\n\nAll:\nResolved. "
                                         "resolved.\n\n", "\n\nMENENIUS:\nWhat work's, my "
                                         "countrymen, in hand? where go you\n",
                                         "\n\nSecond Citizen:\nOur business is not unknown to "
                                         "the senate\n") * 3]
        hist, cached = self.turns("long-1", opening, replies)
        self.assertGreater(len(hist), 400)
        self.assertTrue(all(c > 0 for c in cached[1:]), cached)
        info = requests.get(self.d.url + "/v1/sessions/long-1", timeout=T,
                            headers={"Authorization": "Bearer " + self.alpha["key"]}).json()
        self.assertEqual((info["id"], info["object"]), ("long-1", "session"))
        self.assertEqual(info["tokens"], len(hist) - 1)
        self.assertGreater(info["bytes"], 0)

    def test_text_prompts_resume_when_the_text_extends_the_history(self):
        # The client sends text: prompt + answer + next line. When the text's tokens extend
        # the stored history the turn resumes; the answer equals a cold run either way.
        prompt, resumed = "ROMEO:\nBut soft, what light through yonder window breaks?\n", 0
        for i, line in enumerate(["", "JULIET:\nAy me!\n", "ROMEO:\nShe speaks.\n",
                                  "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n"]):
            prompt += line
            body = {"prompt": prompt, "max_tokens": 20, "temperature": 0, "ignore_eos": True}
            r = self.d.post("/v1/completions", dict(body, session_id="text-1"),
                            headers={"Authorization": "Bearer " + self.alpha["key"]})
            c = self.cold.post("/v1/completions", body,
                               headers={"Authorization": "Bearer " + self.alpha["key"]})
            self.assertEqual(r.json()["choices"][0]["text"], c.json()["choices"][0]["text"])
            resumed += r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
            prompt += r.json()["choices"][0]["text"] + "\n"
        self.assertGreaterEqual(resumed, 2)

    def test_streamed_usage_reports_cached_tokens(self):
        opening = self.ids("KING RICHARD III:\nNow is the winter of our discontent\n")
        first = self.complete(opening, sid="stream-1")
        hist = opening + gen_ids(first) + self.ids("\n")
        h = {"Authorization": "Bearer " + self.alpha["key"]}
        body = {"prompt": hist, "max_tokens": 8, "temperature": 0, "session_id": "stream-1",
                "stream_options": {"include_usage": True}}
        r = requests.post(self.d.url + "/v1/completions", json=dict(body, stream=True),
                          headers=h, stream=True, timeout=T)
        usage = [json.loads(l[6:])["usage"] for l in r.iter_lines(decode_unicode=True)
                 if l.startswith("data: {") and json.loads(l[6:]).get("usage")]
        self.assertEqual(usage[-1]["prompt_tokens_details"]["cached_tokens"],
                         len(opening) + 16 - 1)

    def test_shared_preamble_resumes_from_a_checkpoint(self):
        preamble = self.ids(self.text[:1500])
        self.assertGreater(len(preamble), 3 * self.INTERVAL)
        q1, q2 = self.ids("Who speaks first?\n"), self.ids("And who answers?\n")
        self.assertNotEqual(q1[0], q2[0])
        before = self.d.metric("yunmin_cache_prefix_hits_total")
        r1 = self.complete(preamble + q1, n=4)
        r2 = self.complete(preamble + q2, n=4)
        self.assertEqual(r2["usage"]["prompt_tokens_details"]["cached_tokens"],
                         len(preamble) // self.INTERVAL * self.INTERVAL)
        self.assertEqual(gen_ids(r2), self.cold_ids(preamble + q2, n=4))
        self.assertEqual(gen_ids(r1), self.cold_ids(preamble + q1, n=4))
        self.assertGreaterEqual(self.d.metric("yunmin_cache_prefix_hits_total"), before + 1)
        # Another tenant shares nothing, even the same tokens.
        r3 = self.complete(preamble + q2, key=self.beta, n=4)
        self.assertEqual(r3["usage"]["prompt_tokens_details"]["cached_tokens"], 0)

    def test_prompt_that_does_not_extend_replaces_the_session_and_delete(self):
        h = {"Authorization": "Bearer " + self.alpha["key"]}
        a = self.ids("MENENIUS:\nWhat work's, my countrymen?\n")
        first = self.complete(a, sid="repl-1")
        other = self.ids("SICINIUS:\nNay, but speak not maliciously.\n") + gen_ids(first)
        r = self.complete(other, sid="repl-1")
        self.assertEqual(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
        self.assertEqual(gen_ids(r), self.cold_ids(other))
        info = requests.get(self.d.url + "/v1/sessions/repl-1", headers=h, timeout=T).json()
        self.assertEqual(info["tokens"], len(other) + 16 - 1)
        # Sessions are per tenant: beta sees none, and beta's same id starts cold.
        hb = {"Authorization": "Bearer " + self.beta["key"]}
        self.assertEqual(requests.get(self.d.url + "/v1/sessions/repl-1", headers=hb,
                                      timeout=T).status_code, 404)
        r = self.complete(other + gen_ids(r), key=self.beta, sid="repl-1")
        self.assertEqual(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
        r = requests.delete(self.d.url + "/v1/sessions/repl-1", headers=h, timeout=T)
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.json(), {"id": "repl-1", "object": "session", "deleted": True})
        self.assertEqual(requests.get(self.d.url + "/v1/sessions/repl-1", headers=h,
                                      timeout=T).status_code, 404)
        self.assertEqual(requests.delete(self.d.url + "/v1/sessions/repl-1", headers=h,
                                         timeout=T).status_code, 404)
        r = self.complete(other + [5], sid="repl-1")
        self.assertLess(r["usage"]["prompt_tokens_details"]["cached_tokens"], len(other))

    def test_session_header_and_bad_ids(self):
        a = self.ids("LUCIO:\nWhy, how now, Claudio!\n")
        first = self.complete(a, headers={"X-Session-Id": "hdr-1"})
        r = self.complete(a + gen_ids(first) + [5], headers={"X-Session-Id": "hdr-1"},
                          sid="hdr-1")
        self.assertEqual(r["usage"]["prompt_tokens_details"]["cached_tokens"], len(a) + 15)
        h = {"Authorization": "Bearer " + self.alpha["key"]}
        for body, headers, param in (
                ({"session_id": "a"}, {"X-Session-Id": "b"}, "session_id"),
                ({"session_id": "bad id"}, {}, "session_id"),
                ({"session_id": "x" * 257}, {}, "session_id"),
                ({"session_id": ""}, {}, "session_id"),
                ({"session_id": 7}, {}, "session_id"),
                ({}, {"X-Session-Id": "semi;colon"}, "X-Session-Id")):
            r = self.d.post("/v1/completions", dict({"prompt": "A", "max_tokens": 1}, **body),
                            headers=dict(h, **headers))
            self.assertEqual(r.status_code, 400, (body, headers, r.text))
            self.assertEqual(r.json()["error"]["param"], param)
        self.assertEqual(requests.get(self.d.url + "/v1/sessions/bad%20id", headers=h,
                                      timeout=T).status_code, 400)
        self.assertEqual(requests.get(self.d.url + "/v1/sessions/x", timeout=T).status_code, 401)

    def test_admin_export_import_moves_a_session(self):
        opening = self.ids("DUKE VINCENTIO:\nOf government the properties to unfold,\n")
        first = self.complete(opening, sid="move-1")
        ops = {"Authorization": "Bearer " + self.ops["key"]}
        url = "/admin/sessions/alpha/move-1"
        blob = requests.get(self.d.url + url, headers=ops, timeout=T)
        self.assertEqual(blob.status_code, 200, blob.text)
        self.assertEqual(blob.headers["Content-Type"], "application/octet-stream")
        self.assertEqual(blob.content[:4], b"YMSS")
        # Not for tenants, not for unknown sessions.
        alpha = {"Authorization": "Bearer " + self.alpha["key"]}
        self.assertEqual(requests.get(self.d.url + url, headers=alpha, timeout=T).status_code,
                         403)
        self.assertEqual(requests.get(self.d.url + url, timeout=T).status_code, 401)
        self.assertEqual(requests.get(self.d.url + "/admin/sessions/alpha/none", headers=ops,
                                      timeout=T).status_code, 404)
        d2 = Daemon("--tenants-file", self.file.name)
        try:
            # Malformed blobs are refused and store nothing.
            bad = [blob.content[:100], blob.content[:-1], b"",
                   blob.content[:9] + bytes([blob.content[9] ^ 1]) + blob.content[10:],
                   blob.content[:-5] + bytes([blob.content[-5] ^ 1]) + blob.content[-4:]]
            for b in bad:
                r = requests.put(d2.url + url, data=b, headers=ops, timeout=T)
                self.assertEqual(r.status_code, 422, r.text)
                self.assertEqual(r.json()["error"]["code"], "invalid_session_state")
            self.assertEqual(requests.get(d2.url + "/v1/sessions/move-1", headers=alpha,
                                          timeout=T).status_code, 404)
            self.assertEqual(requests.put(d2.url + url, data=blob.content, headers=alpha,
                                          timeout=T).status_code, 403)
            r = requests.put(d2.url + url, data=blob.content, headers=ops, timeout=T)
            self.assertEqual(r.status_code, 201, r.text)
            self.assertEqual(r.json()["tokens"], len(opening) + 15)
            hist = opening + gen_ids(first) + self.ids("\n")
            r = self.complete(hist, sid="move-1", d=d2)
            self.assertEqual(r["usage"]["prompt_tokens_details"]["cached_tokens"],
                             len(opening) + 15)
            self.assertEqual(gen_ids(r), self.cold_ids(hist))
            # An imported session carries no running hash: appending needs a full turn first.
            r = d2.post("/v1/completions", {"prompt": [5], "max_tokens": 1, "session_id": "x-1",
                                            "session_append": True}, headers=alpha)
            self.assertEqual(r.status_code, 404)
            requests.put(d2.url + "/admin/sessions/alpha/x-1", data=blob.content, headers=ops,
                         timeout=T)
            r = d2.post("/v1/completions", {"prompt": [5], "max_tokens": 1, "session_id": "x-1",
                                            "session_append": True}, headers=alpha)
            self.assertEqual(r.status_code, 409)
            self.assertEqual(r.json()["error"]["code"], "session_mismatch")
        finally:
            self.assertEqual(d2.stop(), 0)

    def test_append_mode_sends_only_the_new_tokens(self):
        opening = self.ids("HAMLET:\nWho's there?\n\nBERNARDO:\nNay, answer me.\n")
        r = self.complete(opening, sid="app-1")
        hist = opening + gen_ids(r)
        stored = len(hist) - 1  # the last answer token is pending, not consumed
        for i, text in enumerate(["\n\nFRANCISCO:\nStand, and unfold yourself.\n",
                                  "\n\nBERNARDO:\nLong live the king!\n",
                                  "\n\nFRANCISCO:\nBernardo?\n", "\n\nBERNARDO:\nHe.\n"]):
            new = self.ids(text)
            r = self.complete(new, sid="app-1", session_append=True)
            self.assertEqual(r["usage"]["prompt_tokens_details"]["cached_tokens"], stored, i)
            self.assertEqual(r["usage"]["prompt_tokens"], len(hist) + len(new), i)
            self.assertEqual(gen_ids(r), self.cold_ids(hist + new), i)
            hist += new + gen_ids(r)
            stored = len(hist) - 1
        # The stored history is the same as a full resend's: the next turn may resend it all.
        r = self.complete(hist + [5], sid="app-1")
        self.assertEqual(r["usage"]["prompt_tokens_details"]["cached_tokens"], stored)
        self.assertEqual(gen_ids(r), self.cold_ids(hist + [5]))
        # And text appends work the same way (the text's tokens follow the history).
        hist += [5] + gen_ids(r)
        r = self.complete("\nHORATIO:\nFriends to this ground.\n", sid="app-1",
                          session_append=True)
        self.assertEqual(gen_ids(r),
                         self.cold_ids(hist + self.ids("\nHORATIO:\nFriends to this ground.\n")))
        h = {"Authorization": "Bearer " + self.alpha["key"]}
        for body, status, param in (
                ({"session_id": "no-such", "session_append": True}, 404, "session_id"),
                ({"session_append": True}, 400, "session_append"),
                ({"session_id": "app-1", "session_append": "yes"}, 400, "session_append"),
                ({"session_id": "app-1", "session_append": True, "repetition_penalty": 1.3},
                 400, "repetition_penalty")):
            r = self.d.post("/v1/completions", dict({"prompt": [5], "max_tokens": 1}, **body),
                            headers=h)
            self.assertEqual(r.status_code, status, (body, r.text))
            self.assertEqual(r.json()["error"]["param"], param)
        # Another tenant cannot append to it.
        r = self.d.post("/v1/completions", {"prompt": [5], "max_tokens": 1, "session_id": "app-1",
                                            "session_append": True},
                        headers={"Authorization": "Bearer " + self.beta["key"]})
        self.assertEqual(r.status_code, 404)

    def test_metrics_count_hits_misses_and_tokens_saved(self):
        names = ("yunmin_cache_session_hits_total", "yunmin_cache_misses_total",
                 "yunmin_cache_saved_tokens_total", "yunmin_cache_stores_total")
        before = [self.d.metric(n) for n in names]
        a = self.ids("ANGELO:\nWe must not make a scarecrow of the law,\n")
        first = self.complete(a, sid="met-1")
        self.complete(a + gen_ids(first), sid="met-1")
        after = [self.d.metric(n) for n in names]
        self.assertEqual(after[0] - before[0], 1)
        self.assertEqual(after[1] - before[1], 1)
        self.assertEqual(after[2] - before[2], len(a) + 15)
        self.assertGreaterEqual(after[3] - before[3], 2)
        self.assertGreater(self.d.metric("yunmin_cache_bytes"), 0)
        self.assertEqual(self.d.metric("yunmin_cache_budget_bytes"), 1 << 30)


class SessionBudget(unittest.TestCase):
    def test_lru_budget_evicts_the_oldest_and_admin_needs_tenants(self):
        probe = Daemon("--checkpoint-interval", "0")
        try:
            probe.post("/v1/completions", {"prompt": "A", "max_tokens": 1, "session_id": "p"})
            one = requests.get(probe.url + "/v1/sessions/p", timeout=T).json()["bytes"]
            # Open mode: the admin routes are closed.
            self.assertEqual(requests.get(probe.url + "/admin/sessions/default/p",
                                          timeout=T).status_code, 403)
        finally:
            self.assertEqual(probe.stop(), 0)
        d = Daemon("--checkpoint-interval", "0", "--cache-bytes", str(3 * one + one // 2))
        try:
            for i in range(6):
                r = d.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 2,
                                               "session_id": "s%d" % i})
                self.assertEqual(r.status_code, 200)
            codes = [requests.get(d.url + "/v1/sessions/s%d" % i, timeout=T).status_code
                     for i in range(6)]
            self.assertEqual(codes, [404, 404, 404, 200, 200, 200])
            self.assertEqual(d.metric("yunmin_cache_evictions_total"), 3)
            self.assertEqual(d.metric("yunmin_cache_sessions"), 3)
            self.assertLessEqual(d.metric("yunmin_cache_bytes"),
                                 d.metric("yunmin_cache_budget_bytes"))
        finally:
            self.assertEqual(d.stop(), 0)


class SessionAdapters(unittest.TestCase):
    """Sessions with adapters on the m40 conformance model: a session run with an adapter
    resumes exactly, and a new version of the adapter never resumes an old version's state."""

    @classmethod
    def setUpClass(cls):
        cls.model = os.path.join(ROOT, "tests", "fixtures", "conformance", "m40-bias-k3-f32")
        cls.peft = os.path.join(ROOT, "tests", "fixtures", "peft")
        cls.dir = tempfile.mkdtemp(prefix="yunmin-sessions-")
        cls.d = Daemon("--model", cls.model, "--adapter-dir", cls.dir, "--checkpoint-interval",
                       "16")
        cls.cold = Daemon("--model", cls.model, "--adapter-dir", cls.dir, "--cache-bytes", "0")

    @classmethod
    def tearDownClass(cls):
        try:
            assert cls.d.stop() == 0
            assert cls.cold.stop() == 0
        finally:
            subprocess.run(["rm", "-rf", cls.dir])

    def complete(self, d, prompt, sid=None, model="voice", n=10):
        body = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0,
                "ignore_eos": True, "logprobs": 0, "return_tokens_as_token_ids": True}
        if sid:
            body["session_id"] = sid
        r = d.post("/v1/completions", body)
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()

    def wait_version(self, version):
        """Until the cold daemon serves this version of 'voice' (it watches the store)."""
        deadline = time.time() + 20
        while time.time() < deadline:
            r = requests.get(self.cold.url + "/v1/adapters/voice", timeout=T)
            if r.status_code == 200 and r.json()["version"] == version:
                return
            time.sleep(0.05)
        self.fail("the second daemon never loaded version %s" % version)

    def test_adapter_sessions_resume_and_hot_swap_never_reuses_old_states(self):
        r = upload(self.d, "voice", os.path.join(self.peft, "lora-all4-m40"))
        self.assertEqual(r.status_code, 201, r.text)
        self.wait_version(r.json()["version"])
        hist, expect = list(range(3, 40)), 0
        for turn in range(4):
            r = self.complete(self.d, hist, sid="conv")
            self.assertEqual(gen_ids(r), gen_ids(self.complete(self.cold, hist)))
            if turn > 0:
                self.assertEqual(r["usage"]["prompt_tokens_details"]["cached_tokens"], expect)
            expect = len(hist) + 9
            hist += gen_ids(r) + [7, 8, 9]
        # The base model with the same session id and history does not resume the adapter's
        # state (nor its checkpoints).
        base = self.complete(self.d, hist, sid="conv", model=None)
        self.assertEqual(base["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
        self.assertEqual(gen_ids(base), gen_ids(self.complete(self.cold, hist, model=None)))
        # Back on the adapter: the session now holds the base run, so nothing to resume there,
        # but the adapter's checkpoints still serve.
        r = self.complete(self.d, hist, sid="conv")
        self.assertEqual(r["usage"]["prompt_tokens_details"]["cached_tokens"] % 16, 0)
        self.assertGreater(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
        self.assertEqual(gen_ids(r), gen_ids(self.complete(self.cold, hist)))
        hist += gen_ids(r) + [7]
        # Hot swap: a new version under the same name. The next turn extends the session's
        # history but must run cold, and gives the new version's tokens.
        r = upload(self.d, "voice", os.path.join(self.peft, "ia3-out-m40"))
        self.assertEqual(r.status_code, 200, r.text)
        self.wait_version(r.json()["version"])
        appended = self.d.post("/v1/completions", {"model": "voice", "prompt": [7],
                                                   "session_id": "conv", "session_append": True})
        self.assertEqual(appended.status_code, 409, appended.text)
        r = self.complete(self.d, hist, sid="conv")
        self.assertEqual(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
        self.assertEqual(gen_ids(r), gen_ids(self.complete(self.cold, hist)))
        # And the following turn resumes the new version's state.
        expect = len(hist) + 9
        hist += gen_ids(r) + [7]
        r = self.complete(self.d, hist, sid="conv")
        self.assertEqual(r["usage"]["prompt_tokens_details"]["cached_tokens"], expect)
        self.assertEqual(gen_ids(r), gen_ids(self.complete(self.cold, hist)))


class SparseServing(unittest.TestCase):
    """yunmind serving a sparsity profile: the texts of `yunmin generate --sparsity` with the
    same profile, sessions resume on it exactly, adapters compiled against its layout serve
    as the CLI does, and a bad profile stops the start with a message."""

    def test_profile_served_like_the_cli_with_sessions(self):
        tmp = tempfile.mkdtemp(prefix="yunmin-sparse-")
        prof = os.path.join(tmp, "p.safetensors")
        p = subprocess.run([YUNMIN, "calibrate", "--model", MODEL, "--text",
                            os.path.join(ROOT, "data", "tinyshakespeare.txt"), "--tokens", "128",
                            "--baseline", "magnitude", "--channel-sparsity", "0.5",
                            "--state-sparsity", "0.5", "--threads", "1", "--out", prof],
                           capture_output=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        d = Daemon("--sparsity", prof)
        cold = Daemon("--sparsity", prof, "--cache-bytes", "0")
        try:
            for prompt in PROMPTS[:3]:
                r = d.post("/v1/completions", {"prompt": prompt, "max_tokens": 16,
                                               "temperature": 0})
                self.assertEqual(r.json()["choices"][0]["text"],
                                 generate(prompt, 16, "--temperature", "0", "--sparsity", prof))
            dense = Daemon()
            try:
                r = dense.post("/v1/completions", {"prompt": PROMPTS[0], "max_tokens": 16,
                                                   "temperature": 0})
                self.assertNotEqual(r.json()["choices"][0]["text"],
                                    generate(PROMPTS[0], 16, "--temperature", "0",
                                             "--sparsity", prof))
            finally:
                self.assertEqual(dense.stop(), 0)
            body = {"max_tokens": 12, "temperature": 0, "ignore_eos": True, "logprobs": 0,
                    "return_tokens_as_token_ids": True}
            hist = list(range(40, 80))
            for turn in range(3):
                r = d.post("/v1/completions", dict(body, prompt=hist, session_id="sp")).json()
                c = cold.post("/v1/completions", dict(body, prompt=hist)).json()
                self.assertEqual(gen_ids(r), gen_ids(c))
                if turn:
                    self.assertGreater(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
                hist += gen_ids(r) + [5]
        finally:
            self.assertEqual(d.stop(), 0)
            self.assertEqual(cold.stop(), 0)
            subprocess.run(["rm", "-rf", tmp])
        self.assertIn("serving the sparsity profile", d.log())

    def test_adapters_on_a_sparse_model_give_the_cli_texts(self):
        model = os.path.join(ROOT, "tests", "fixtures", "conformance", "m40-bias-k3-f32")
        tmp = tempfile.mkdtemp(prefix="yunmin-sparse-")
        prof = os.path.join(tmp, "p.safetensors")
        p = subprocess.run([YUNMIN, "calibrate", "--model", model, "--text",
                            os.path.join(ROOT, "data", "tinyshakespeare.txt"), "--tokens", "64",
                            "--baseline", "random", "--channel-sparsity", "0.3", "--threads", "1",
                            "--out", prof], capture_output=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        d = Daemon("--model", model, "--sparsity", prof, "--adapter-dir", tmp)
        try:
            r = upload(d, "up", os.path.join(ROOT, "tests", "fixtures", "peft", "lora-all4-m40"))
            self.assertEqual(r.status_code, 201, r.text)
            cli = subprocess.run([YUNMIN, "generate", "--model", model, "--sparsity", prof,
                                  "--adapter", os.path.join(ROOT, "tests", "fixtures", "peft",
                                                            "lora-all4-m40"),
                                  "-p", "ROMEO:", "-n", "12", "--temperature", "0",
                                  "--threads", "1"], capture_output=True, timeout=120)
            self.assertEqual(cli.returncode, 0, cli.stderr)
            for body in ({"model": "up"}, {"adapters": ["up"]}):
                r = d.post("/v1/completions", dict({"prompt": "ROMEO:", "max_tokens": 12,
                                                    "temperature": 0}, **body))
                self.assertEqual(r.status_code, 200, r.text)
                self.assertEqual(r.json()["choices"][0]["text"], cli_text(cli.stdout))
            r = d.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 12,
                                           "temperature": 0})
            self.assertNotEqual(r.json()["choices"][0]["text"], cli_text(cli.stdout))
        finally:
            self.assertEqual(d.stop(), 0)
            subprocess.run(["rm", "-rf", tmp])

    def test_bad_profile_is_a_startup_error(self):
        tmp = tempfile.NamedTemporaryFile(suffix=".safetensors", delete=False)
        tmp.write(b"not a profile")
        tmp.close()
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("YUNMIN_")}
            p = subprocess.run([YUNMIND, "--model", MODEL, "--port", "0", "--sparsity", tmp.name],
                               capture_output=True, timeout=60, env=env)
            self.assertEqual(p.returncode, 1)
            self.assertIn("sparsity profile " + tmp.name, p.stderr.decode())
        finally:
            os.unlink(tmp.name)


class ShippedAdapters(unittest.TestCase):
    """The example adapters shipped with the embedded model, uploaded to yunmind, give the
    texts of `yunmin generate --adapter` (which tools/train/tests/test_adapters.py ties to the
    toolkit's own greedy text), dense and under the learned sparsity profile."""

    def test_each_shipped_adapter_served_like_the_cli(self):
        shipped = os.path.join(MODEL, "adapters")
        names = sorted(n for n in os.listdir(shipped)
                       if os.path.isdir(os.path.join(shipped, n)))
        self.assertGreaterEqual(len(names), 2)
        profile = os.path.join(ROOT, "tools", "train", "results",
                               "learned-channels-50.sparsity.safetensors")
        for extra in ([], ["--sparsity", profile]):
            tmp = tempfile.mkdtemp(prefix="yunmin-shipped-")
            d = Daemon("--adapter-dir", tmp, *extra)
            try:
                for name in names:
                    r = upload(d, name, os.path.join(shipped, name))
                    self.assertEqual(r.status_code, 201, r.text)
                    r = d.post("/v1/completions", {"model": name, "prompt": "PETRUCHIO:",
                                                   "max_tokens": 24, "temperature": 0})
                    self.assertEqual(r.status_code, 200, r.text)
                    self.assertEqual(r.json()["choices"][0]["text"],
                                     generate("PETRUCHIO:", 24, "--temperature", "0",
                                              "--adapter", os.path.join(shipped, name), *extra),
                                     (name, extra))
            finally:
                self.assertEqual(d.stop(), 0)
                subprocess.run(["rm", "-rf", tmp])


class Lifecycle(unittest.TestCase):
    def test_drain_on_sigterm_completes_streams(self):
        d = Daemon("--drain-timeout-s", "60")
        try:
            body = {"prompt": "ROMEO:", "max_tokens": 300, "temperature": 0, "ignore_eos": True}
            want = d.post("/v1/completions", body).json()["choices"][0]["text"]
            got = {}

            def worker():
                got["text"] = stream(d, body)[0]

            t = threading.Thread(target=worker)
            t.start()
            time.sleep(0.2)
            d.proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            if d.proc.poll() is None:
                # While draining: not ready, new work refused, the stream goes on.
                try:
                    r = requests.get(d.url + "/readyz", timeout=T)
                    self.assertEqual(r.status_code, 503)
                    r = d.post("/v1/completions", {"prompt": "x"})
                    self.assertEqual(r.status_code, 503)
                    self.assertEqual(r.json()["error"]["code"], "draining")
                except requests.exceptions.ConnectionError:
                    pass  # already drained and gone: the stream check below still holds
            t.join(T)
            self.assertEqual(got.get("text"), want)
            self.assertEqual(d.proc.wait(30), 0)
        finally:
            d.kill()

    def test_drain_timeout_cancels(self):
        d = Daemon("--drain-timeout-s", "0")
        try:
            body = {"prompt": "ROMEO:", "max_tokens": 8000, "ignore_eos": True, "stream": True}
            r = requests.post(d.url + "/v1/completions", json=body, stream=True, timeout=T)
            self.assertEqual(r.status_code, 200)
            lines = r.iter_lines()  # kept: a collected iterator closes the connection
            self.assertTrue(next(lines).startswith(b"data: {"))
            d.proc.send_signal(signal.SIGTERM)
            self.assertEqual(d.proc.wait(30), 0)
        finally:
            d.kill()

    def test_cli_options(self):
        p = subprocess.run([YUNMIND, "--help"], capture_output=True, timeout=30)
        self.assertEqual(p.returncode, 0)
        out = p.stdout.decode()
        for opt in ("--model", "--host", "--port", "--config", "YUNMIN_MODEL", "YUNMIN_HOST",
                    "YUNMIN_PORT", "--max-queue", "--drain-timeout-s"):
            self.assertIn(opt, out)
        for args, msg in ((["--port", "70000"], "port"), (["--bogus"], "--bogus"),
                          (["--max-running", "10", "--max-batch-tokens", "5"], "max_running"),
                          (["--log-level", "loud"], "log_level"), (["extra"], "extra"),
                          (["--config", "/nonexistent.json"], "nonexistent")):
            p = subprocess.run([YUNMIND] + args, capture_output=True, timeout=30)
            self.assertEqual(p.returncode, 2, args)
            err = p.stderr.decode().strip()
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertIn(msg, err)
        p = subprocess.run([YUNMIND, "--model", "/nonexistent-model", "--port", "0"],
                           capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 1)
        self.assertIn("/nonexistent-model", p.stderr.decode())

    def test_shipped_config_is_the_defaults(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("YUNMIN_")}
        a = subprocess.run([YUNMIND, "--print-config"], capture_output=True, timeout=30, env=env)
        b = subprocess.run([YUNMIND, "--print-config", "--config",
                            os.path.join(ROOT, "conf", "yunmind.json")], capture_output=True,
                           timeout=30, env=env)
        self.assertEqual(a.returncode, 0)
        self.assertEqual(b.returncode, 0, b.stderr)
        self.assertEqual(json.loads(a.stdout), json.loads(b.stdout))
        env["YUNMIN_PORT"] = "9999"
        c = subprocess.run([YUNMIND, "--print-config"], capture_output=True, timeout=30, env=env)
        self.assertEqual(json.loads(c.stdout)["port"], 9999)
        d = subprocess.run([YUNMIND, "--print-config", "--port", "7"], capture_output=True,
                           timeout=30, env=env)
        self.assertEqual(json.loads(d.stdout)["port"], 7)

    def test_port_in_use(self):
        d = Daemon()
        try:
            p = subprocess.run([YUNMIND, "--model", MODEL, "--port", str(d.port)],
                               capture_output=True, timeout=30)
            self.assertEqual(p.returncode, 1)
            self.assertIn(str(d.port), p.stderr.decode())
        finally:
            self.assertEqual(d.stop(), 0)


class Mamba2Serving(unittest.TestCase):
    """A Mamba-2 checkpoint (tests/fixtures/mamba2/m2-g1-k4-f32) served end to end: a completion
    equals `yunmin generate` on it, and a session resumed equals a cold run (a daemon with its
    cache off)."""

    @classmethod
    def setUpClass(cls):
        global MODEL
        cls.key, cls.ops = new_key(), new_key()
        cls.file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump({"tenants": [{"name": "alpha", "keys": [cls.key["hash"]]},
                               {"name": "ops", "keys": [cls.ops["hash"]], "admin": True}]},
                  cls.file)
        cls.file.close()
        saved, MODEL = MODEL, os.path.join(ROOT, "tests", "fixtures", "mamba2", "m2-g1-k4-f32")
        try:
            cls.d = Daemon("--tenants-file", cls.file.name)
            cls.cold = Daemon("--tenants-file", cls.file.name, "--cache-bytes", "0")
            cls.want = generate("First Citizen:\n", 12, "--temperature", "0")
        finally:
            MODEL = saved

    @classmethod
    def tearDownClass(cls):
        try:
            assert cls.d.stop() == 0
            assert cls.cold.stop() == 0
        finally:
            os.unlink(cls.file.name)

    def complete(self, prompt, d, n=12, sid=None):
        body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True,
                "logprobs": 0, "return_tokens_as_token_ids": True}
        if sid is not None:
            body["session_id"] = sid
        r = d.post("/v1/completions", body, headers={"Authorization": "Bearer " + self.key["key"]})
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()

    def test_completion_equals_the_cli(self):
        r = self.d.post("/v1/completions", {"prompt": "First Citizen:\n", "max_tokens": 12,
                                            "temperature": 0, "ignore_eos": True},
                        headers={"Authorization": "Bearer " + self.key["key"]})
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(r.json()["choices"][0]["text"], self.want)

    def test_session_resumed_equals_a_cold_run(self):
        hist = list(range(5, 45))
        r = self.complete(hist, self.d, sid="m2-1")
        self.assertEqual(gen_ids(r), gen_ids(self.complete(hist, self.cold)))
        hist += gen_ids(r) + list(range(100, 120))
        r = self.complete(hist, self.d, sid="m2-1")
        self.assertGreater(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
        self.assertEqual(gen_ids(r), gen_ids(self.complete(hist, self.cold)))

    def test_state_blob_moves_between_mamba2_daemons_not_to_mamba1(self):
        hist = list(range(7, 37))
        first = gen_ids(self.complete(hist, self.d, sid="m2-blob"))
        ops = {"Authorization": "Bearer " + self.ops["key"]}
        blob = requests.get(self.d.url + "/admin/sessions/alpha/m2-blob", headers=ops, timeout=T)
        self.assertEqual(blob.status_code, 200, blob.text)
        r = requests.put(self.d.url + "/admin/sessions/alpha/m2-copy", data=blob.content,
                         headers=ops, timeout=T)
        self.assertEqual(r.status_code, 201, r.text)
        hist += first + [50, 51, 52]
        r = self.complete(hist, self.d, sid="m2-copy")
        self.assertEqual(r["usage"]["prompt_tokens_details"]["cached_tokens"], 30 + 11)
        self.assertEqual(gen_ids(r), gen_ids(self.complete(hist, self.cold)))
        m1 = Daemon("--tenants-file", self.file.name)  # the Mamba-1 default model
        try:
            r = requests.put(m1.url + "/admin/sessions/alpha/m2-blob", data=blob.content,
                             headers=ops, timeout=T)
            self.assertEqual(r.status_code, 422, r.text)
            self.assertEqual(r.json()["error"]["code"], "invalid_session_state")
        finally:
            self.assertEqual(m1.stop(), 0)

    def test_adapters_on_a_head_profile_give_the_cli_texts(self):
        """A Mamba-2 model under a head profile with an uploaded LoRA and IA³: each completion
        equals `yunmin generate` with the same profile and adapter, differs from the bare
        pruned model's, and the bare model still serves beside them."""
        model = os.path.join(ROOT, "tests", "fixtures", "mamba2", "m2-g2-bias-untied-k3-bf16")
        prof = os.path.join(ROOT, "tests", "fixtures", "mamba2_sparse", "head-g2-bias-k3-bf16",
                            "yunmin.sparsity.safetensors")
        tmp = tempfile.mkdtemp(prefix="yunmin-m2-sparse-")
        d = Daemon("--model", model, "--sparsity", prof, "--adapter-dir", tmp)
        try:
            body = {"prompt": "First Citizen:\n", "max_tokens": 12, "temperature": 0,
                    "ignore_eos": True}

            def cli(adapter):
                extra = ["--adapter", adapter] if adapter else []
                p = subprocess.run([YUNMIN, "generate", "--model", model, "--sparsity", prof,
                                    "-p", body["prompt"], "-n", "12", "--temperature", "0",
                                    "--threads", "1"] + extra,
                                   capture_output=True, timeout=120)
                self.assertEqual(p.returncode, 0, p.stderr)
                return cli_text(p.stdout)

            bare = d.post("/v1/completions", body)
            self.assertEqual(bare.status_code, 200, bare.text)
            self.assertEqual(bare.json()["choices"][0]["text"], cli(None))
            for name in ("lora-m2-g2", "ia3-m2-g2"):
                src = os.path.join(ROOT, "tests", "fixtures", "mamba2", name)
                r = upload(d, name, src, drop={"logits.safetensors"})
                self.assertEqual(r.status_code, 201, (name, r.text))
                r = d.post("/v1/completions", dict(body, model=name))
                self.assertEqual(r.status_code, 200, r.text)
                text = r.json()["choices"][0]["text"]
                self.assertEqual(text, cli(src), name)
                self.assertNotEqual(text, bare.json()["choices"][0]["text"], name)
            self.assertEqual(d.post("/v1/completions", body).json()["choices"][0]["text"],
                             bare.json()["choices"][0]["text"])
            # a session on the pruned model (compact states) resumes as a cold run computes
            cold = Daemon("--model", model, "--sparsity", prof, "--cache-bytes", "0")
            try:
                turn = {"max_tokens": 8, "temperature": 0, "ignore_eos": True, "logprobs": 0,
                        "return_tokens_as_token_ids": True}
                hist = list(range(5, 45))
                for k in range(2):
                    r = d.post("/v1/completions", dict(turn, prompt=hist, session_id="sp"))
                    c = cold.post("/v1/completions", dict(turn, prompt=hist))
                    self.assertEqual(r.status_code, 200, r.text)
                    self.assertEqual(c.status_code, 200, c.text)
                    self.assertEqual(gen_ids(r.json()), gen_ids(c.json()))
                    if k:
                        self.assertGreater(
                            r.json()["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
                    hist += gen_ids(r.json()) + [7]
            finally:
                self.assertEqual(cold.stop(), 0)
        finally:
            self.assertEqual(d.stop(), 0)
            subprocess.run(["rm", "-rf", tmp])
        self.assertIn("adapters are compiled against this layout", d.log())



class FalconMambaAdapters(unittest.TestCase):
    """PEFT adapters uploaded to a Falcon-Mamba daemon (tests/fixtures/mamba2/fm-bias-k3-f32,
    adapters of tests/fixtures/falcon_peft, whose logits the unit tests check against the
    float64 PEFT reference): a completion equals `yunmin generate --adapter` on the same
    directory, and a target that cannot apply is refused by name with the daemon unchanged."""

    @classmethod
    def setUpClass(cls):
        cls.model = os.path.join(ROOT, "tests", "fixtures", "mamba2", "fm-bias-k3-f32")
        cls.peft = os.path.join(ROOT, "tests", "fixtures", "falcon_peft")
        cls.dir = tempfile.mkdtemp(prefix="yunmin-fm-adapters-")
        cls.d = Daemon("--model", cls.model, "--adapter-dir", cls.dir)

    @classmethod
    def tearDownClass(cls):
        try:
            assert cls.d.stop() == 0
        finally:
            subprocess.run(["rm", "-rf", cls.dir])

    def cli_text(self, adapter, prompt="First Citizen:\n", n=12):
        cmd = [YUNMIN, "generate", "--model", self.model, "-p", prompt, "-n", str(n),
               "--temperature", "0", "--threads", "1"]
        if adapter is not None:
            cmd += ["--adapter", os.path.join(self.peft, adapter)]
        p = subprocess.run(cmd, capture_output=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        return cli_text(p.stdout)

    def complete(self, model, prompt="First Citizen:\n", n=12):
        return self.d.post("/v1/completions", {"model": model, "prompt": prompt, "max_tokens": n,
                                               "temperature": 0, "ignore_eos": True})

    def test_lora_and_ia3_uploads_serve_as_the_cli(self):
        base = self.complete(None)
        self.assertEqual(base.status_code, 200, base.text)
        self.assertEqual(base.json()["choices"][0]["text"], self.cli_text(None))
        for name, kind in (("lora-fm", "lora"), ("ia3-fm-in-x-ff", "ia3")):
            r = upload(self.d, name, os.path.join(self.peft, name), drop={"logits.safetensors"})
            self.assertEqual(r.status_code, 201, (name, r.text))
            self.assertEqual(r.json()["type"], kind)
            self.assertEqual(r.json()["targets"], ["in_proj", "x_proj", "dt_proj", "out_proj"])
            r = self.complete(name)
            self.assertEqual(r.status_code, 200, r.text)
            text = r.json()["choices"][0]["text"]
            self.assertEqual(text, self.cli_text(name), name)
            self.assertNotEqual(text, base.json()["choices"][0]["text"], name)

    def test_targets_that_cannot_apply_are_refused_by_name(self):
        src = os.path.join(self.peft, "lora-fm")
        with open(os.path.join(src, "adapter_config.json")) as f:
            cfg = json.load(f)
        cfg["target_modules"] = ["in_proj", "conv1d"]
        r = upload(self.d, "conv", src, extra={"adapter_config.json": json.dumps(cfg).encode()},
                   drop={"adapter_config.json", "logits.safetensors"})
        self.assertEqual(r.status_code, 422, r.text)
        self.assertIn("conv1d", r.json()["error"]["message"])
        # a Mamba-2 adapter: its in_proj is [z|xBC|dt], not Falcon-Mamba's [x|z]
        r = upload(self.d, "m2", os.path.join(ROOT, "tests", "fixtures", "mamba2", "lora-m2-g2"),
                   drop={"logits.safetensors"})
        self.assertEqual(r.status_code, 422, r.text)
        self.assertIn("in_proj", r.json()["error"]["message"])
        for name in ("conv", "m2"):
            self.assertEqual(requests.get(self.d.url + "/v1/adapters/" + name,
                                          timeout=T).status_code, 404)
        self.assertEqual(self.complete(None).status_code, 200)


if __name__ == "__main__":
    YUNMIND, YUNMIN, ROOT = sys.argv[1], sys.argv[2], sys.argv[3]
    MODEL = os.path.join(ROOT, "models", "shakespeare-mamba")
    del sys.argv[1:4]
    unittest.main(verbosity=2)
