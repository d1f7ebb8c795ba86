#!/usr/bin/python3
"""tests/integration/test_tiers.py - the state cache's tiers over real HTTP. Disk
(state_dir): sessions resume after SIGTERM and after SIGKILL of their daemon, corrupted and
forged state files are refused (the request runs cold and succeeds), files keep being read
after the state format's version 2 (XXH3-64 checksum, python3-xxhash here) replaced version 1
(FNV-1a), a bad state checksum behind a valid MAC is refused, and the byte budget
evicts the least recently written file first. Shared store (session_store, a real
redis-server started here on a free loopback port): two replicas without affinity resume each
other's turns, requests keep succeeding when redis is killed mid-run, a forged entry is
refused, the prefix-checkpoint walk asks the store about all its boundaries in one round
trip (counted with redis' INFO commandstats). A slow store (replies delayed by a proxy here) delays only the request whose state it
holds: another stream keeps its pace, the slow request still resumes, and one past
the store's timeout runs cold and succeeds. The same holds for the three requests that read
a session before they answer (GET /v1/sessions/{id}, a session_append turn, the admin
export): the stream keeps its pace while each waits, each answers as a replica that held the
session in RAM would (the export byte for byte), past the timeout each answers 404, and a
client that hangs up while its read waits gets nothing and costs nothing.

Usage: test_tiers.py YUNMIND_EXE YUNMIN_EXE SOURCE_ROOT   (meson runs it as the `tiers` test)

Same conventions as test_server.py, whose Daemon helper it uses. The reference for a resumed
turn is the same turn on a daemon without a state_dir that never stopped (temperature 0), and
a cold run of the whole prompt; file names and MACs are recomputed here with Python's hashlib
from docs/FORMATS.md, independently of the server's code.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import test_server as ts
from test_server import Daemon

TURN1 = "ROMEO: What light through yonder window breaks?\nJULIET:"
MORE = "\nROMEO: Speak again, bright angel.\nJULIET:"


def session_file(tenant, sid):
    """The file name of a session: BLAKE2b-256 of the tag, the two lengths, tenant, id."""
    h = hashlib.blake2b(digest_size=32)
    h.update(b"yunmin session\0")
    h.update(struct.pack("<QQ", len(tenant.encode()), len(sid.encode())))
    h.update(tenant.encode() + sid.encode())
    return h.hexdigest() + ".yst"


def complete(d, prompt, sid=None, n=12):
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0}
    if sid is not None:
        body["session_id"] = sid
    r = d.post("/v1/completions", body)
    assert r.status_code == 200, r.text
    j = r.json()
    return j["choices"][0]["text"], j["usage"]["prompt_tokens_details"]["cached_tokens"]


class Reference:
    """Turn texts from a daemon without a state_dir that never stops."""
    turn1 = None
    turn2 = None
    cold2 = None
    append2 = None  # the second turn sent with session_append (only the new text)

    @classmethod
    def get(cls):
        if cls.turn1 is None:
            d = Daemon("--checkpoint-interval", "0")
            try:
                cls.turn1, _ = complete(d, TURN1, "ref")
                cls.turn2, cached = complete(d, TURN1 + cls.turn1 + MORE, "ref")
                assert cached > 0
                cls.cold2, cached = complete(d, TURN1 + cls.turn1 + MORE)
                assert cached == 0
                complete(d, TURN1, "ref-append")
                r = d.post("/v1/completions", {"prompt": MORE, "max_tokens": 12,
                                               "temperature": 0, "session_id": "ref-append",
                                               "session_append": True})
                assert r.status_code == 200, r.text
                cls.append2 = r.json()["choices"][0]["text"]
            finally:
                assert d.stop() == 0
        return cls


class DiskTier(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ym-tiers-")
        self.ref = Reference.get()
        self.assertEqual(self.ref.turn2, self.ref.cold2)  # resuming changes nothing

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def daemon(self, *flags):
        return Daemon("--state-dir", self.dir, "--checkpoint-interval", "0", *flags)

    def first_turn(self, d, sid="s1"):
        text, cached = complete(d, TURN1, sid)
        self.assertEqual(text, self.ref.turn1)
        self.assertEqual(cached, 0)
        return os.path.join(self.dir, session_file("default", sid))

    def second_turn(self, d, sid="s1"):
        return complete(d, TURN1 + self.ref.turn1 + MORE, sid)

    def resumes_from_disk(self):
        """A fresh daemon answers the second turn from the state file, as a daemon that never
        stopped would."""
        d = self.daemon()
        try:
            text, cached = self.second_turn(d)
            self.assertEqual(text, self.ref.turn2)
            self.assertGreater(cached, 0)
            self.assertEqual(d.metric("yunmin_state_disk_hits_total"), 1)
            self.assertEqual(d.metric("yunmin_state_disk_refused_total"), 0)
        finally:
            self.assertEqual(d.stop(), 0)

    def second_turn_runs_cold(self, d, logged):
        """The second turn on d finds its state file refused (the log says `logged`) and runs
        cold."""
        text, cached = self.second_turn(d)
        self.assertEqual(text, self.ref.cold2)
        self.assertEqual(cached, 0)
        self.assertEqual(d.metric("yunmin_state_disk_refused_total"), 1)
        self.assertIn(logged, d.log())

    def resume_after(self, sig):
        d = self.daemon()
        try:
            path = self.first_turn(d)
            # The response completed: the state is on disk already, under its documented name.
            self.assertTrue(os.path.exists(path), os.listdir(self.dir))
            if sig == signal.SIGKILL:
                d.kill()
            else:
                self.assertEqual(d.stop(sig), 0)
        finally:
            d.kill()
        self.resumes_from_disk()

    def test_resume_after_sigterm(self):
        self.resume_after(signal.SIGTERM)

    def test_resume_after_sigkill(self):
        self.resume_after(signal.SIGKILL)

    def test_append_after_sigkill(self):
        # session_append continues from the restored running history hash and pending token.
        d = self.daemon()
        try:
            self.first_turn(d, "ap")
        finally:
            d.kill()
        d = self.daemon()
        try:
            r = d.post("/v1/completions", {"prompt": MORE, "max_tokens": 12, "temperature": 0,
                                           "session_id": "ap", "session_append": True})
            self.assertEqual(r.status_code, 200, r.text)
            self.assertEqual(r.json()["choices"][0]["text"], self.ref.append2)
            self.assertGreater(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
        finally:
            self.assertEqual(d.stop(), 0)

    def refused_cold(self, mutate, *flags):
        d = self.daemon()
        try:
            path = self.first_turn(d)
        finally:
            self.assertEqual(d.stop(), 0)
        with open(path, "rb") as f:
            data = bytearray(f.read())
        with open(path, "wb") as f:
            f.write(mutate(data))
        d = self.daemon(*flags)
        try:
            self.second_turn_runs_cold(d, "refused and deleted a state file")
            # The next turn resumes from the state the cold run stored.
            text, cached = complete(d, TURN1 + self.ref.turn1 + MORE + self.ref.turn2 + MORE,
                                    "s1")
            self.assertGreater(cached, 0)
        finally:
            self.assertEqual(d.stop(), 0)

    def test_corrupted_file_refused(self):
        def flip(data):
            data[len(data) // 2] ^= 0x40  # a byte of the state
            return data
        self.refused_cold(flip)

    def test_forged_file_refused(self):
        # Someone without the key changes the state and recomputes the MAC with a key of
        # their own: refused.
        def forge(data):
            data[len(data) // 2] ^= 0x40
            body = bytes(data[:-32])
            return body + hashlib.blake2b(body, digest_size=32, key=os.urandom(32)).digest()
        self.refused_cold(forge)

    def test_other_secret_refused(self):
        # Written by a daemon with a random key (state.key), read by one with a secret.
        self.refused_cold(lambda data: data, "--state-secret", "another replica's secret")

    def test_mac_is_keyed_blake2b(self):
        # The documented MAC: keyed BLAKE2b-256 (key: state.key) over all but the last 32
        # bytes; a file re-MACed here with that key is accepted as it was.
        d = self.daemon()
        try:
            path = self.first_turn(d)
        finally:
            self.assertEqual(d.stop(), 0)
        with open(os.path.join(self.dir, "state.key"), "rb") as f:
            key = f.read()
        self.assertEqual(len(key), 32)
        self.assertEqual(os.stat(os.path.join(self.dir, "state.key")).st_mode & 0o777, 0o600)
        with open(path, "rb") as f:
            data = f.read()
        self.assertEqual(data[:4], b"YMSF")
        self.assertEqual(hashlib.blake2b(data[:-32], digest_size=32, key=key).digest(),
                         data[-32:])

    def rewrite_state(self, mutate):
        """First turn on a daemon, then mutate(file, state offset) on its file and re-MAC it
        with state.key, as a daemon holding the key would have written it."""
        d = self.daemon()
        try:
            path = self.first_turn(d)
        finally:
            self.assertEqual(d.stop(), 0)
        with open(os.path.join(self.dir, "state.key"), "rb") as f:
            key = f.read()
        with open(path, "rb") as f:
            data = bytearray(f.read())
        # docs/FORMATS.md: header (120 bytes), R bytes of running hash, the session blob's
        # 72-byte head, then the serialized state; the MAC last.
        (r,) = struct.unpack_from("<I", data, 20)
        so = 120 + r + 72
        self.assertEqual(data[so:so + 4], b"YMST")
        mutate(data, so)
        body = bytes(data[:-32])
        with open(path, "wb") as f:
            f.write(body + hashlib.blake2b(body, digest_size=32, key=key).digest())

    def test_state_checksum_is_xxh3_and_version_1_still_read(self):
        # The daemon writes state version 2, XXH3-64 of the payload (python3-xxhash computes
        # it here); a file whose state is rewritten as version 1 (FNV-1a-64, computed here),
        # as a daemon before version 2 wrote it, still resumes the session.
        import xxhash

        def to_v1(data, so):
            version, = struct.unpack_from("<I", data, so + 4)
            nbytes, sum2 = struct.unpack_from("<QQ", data, so + 32)
            payload = bytes(data[so + 48:so + 48 + nbytes])
            self.assertEqual(so + 48 + nbytes, len(data) - 32)
            self.assertEqual(version, 2)
            self.assertEqual(sum2, xxhash.xxh3_64_intdigest(payload))
            h = 0xcbf29ce484222325
            for x in payload:
                h = ((h ^ x) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
            struct.pack_into("<I", data, so + 4, 1)
            struct.pack_into("<Q", data, so + 40, h)
        self.rewrite_state(to_v1)
        self.resumes_from_disk()

    def test_bad_state_checksum_refused_behind_a_good_mac(self):
        # A payload bit flipped and the file re-MACed with the right key: the MAC passes, the
        # state's checksum does not; the file is refused and the turn runs cold.
        def flip(data, so):
            data[so + 48 + 100] ^= 0x08
        self.rewrite_state(flip)
        d = self.daemon()
        try:
            self.second_turn_runs_cold(d, "checksum")
        finally:
            self.assertEqual(d.stop(), 0)

    def test_budget_evicts_least_recently_written(self):
        d = self.daemon()
        try:
            first = self.first_turn(d, "a")
            size = os.path.getsize(first)
        finally:
            self.assertEqual(d.stop(), 0)
        # Room for two and a half files: a, b, then a again (rewritten), then c -> b goes.
        d = self.daemon("--state-dir-bytes", str(size * 5 // 2))
        try:
            self.first_turn(d, "b")
            self.second_turn(d, "a")
            complete(d, TURN1, "c")
            names = set(n for n in os.listdir(self.dir) if n.endswith(".yst"))
            want = {session_file("default", s) for s in ("a", "c")}
            self.assertEqual(names, want)
            self.assertEqual(d.metric("yunmin_state_disk_evictions_total"), 1)
            self.assertEqual(d.metric("yunmin_state_disk_files"), 2)
        finally:
            self.assertEqual(d.stop(), 0)
        # A stray temp file (a write cut short) is removed at start; the index is rebuilt.
        stray = os.path.join(self.dir, "." + session_file("default", "x") + ".7.tmp")
        with open(stray, "wb") as f:
            f.write(b"partial")
        d = self.daemon("--state-dir-bytes", str(size * 5 // 2))
        try:
            self.assertFalse(os.path.exists(stray))
            self.assertEqual(d.metric("yunmin_state_disk_files"), 2)
            _, cached = self.second_turn(d, "b")
            self.assertEqual(cached, 0)  # evicted
        finally:
            self.assertEqual(d.stop(), 0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resp(port, *args):
    """One Redis command over a plain socket (RESP); the reply's first line and bulk body."""
    msg = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        msg += b"$%d\r\n%s\r\n" % (len(a), a)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(msg)
        f = s.makefile("rb")
        line = f.readline()
        if line.startswith(b"$") and int(line[1:]) >= 0:
            return line, f.read(int(line[1:]) + 2)[:-2]
        if line.startswith(b"*"):
            items = []
            for _ in range(int(line[1:])):
                n = int(f.readline()[1:])
                items.append(f.read(n + 2)[:-2])
            return line, items
        return line, None


class Redis:
    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if resp(self.port, "PING")[0].startswith(b"+PONG"):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def url(self, db=1):
        return "redis://127.0.0.1:%d/%d" % (self.port, db)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class SlowProxy:
    """A TCP proxy to redis that holds every reply for `delay` seconds while slow is set:
    a store that answers late (a loaded or distant Redis)."""

    def __init__(self, port):
        self.target = port
        self.slow = threading.Event()
        self.delay = 0.0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def url(self, db=1):
        return "redis://127.0.0.1:%d/%d" % (self.port, db)

    def accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            r = socket.create_connection(("127.0.0.1", self.target))
            asked = threading.Event()  # a command went out: its reply's first bytes wait
            threading.Thread(target=self.pipe, args=(c, r, asked, False), daemon=True).start()
            threading.Thread(target=self.pipe, args=(r, c, asked, True), daemon=True).start()

    def pipe(self, src, dst, asked, replies):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not replies:
                    asked.set()
                elif asked.is_set():
                    asked.clear()
                    if self.slow.is_set():
                        time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.sock.close()


def stream_times(d, body, out, stop, headers=None):
    """Stream a completion; append (arrival time, text) per SSE chunk to out until the stream
    ends or stop is set (then hang up: the daemon cancels it)."""
    r = ts.requests.post(d.url + "/v1/completions", json=dict(body, stream=True), stream=True,
                         timeout=ts.T, headers=headers)
    assert r.status_code == 200, r.text
    for line in r.iter_lines(decode_unicode=False):
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            out.append((time.monotonic(), line))
        if stop.is_set():
            break
    r.close()


@unittest.skipIf(shutil.which("redis-server") is None, "redis-server not installed "
                 "(scripts/deps.sh test)")
class StoreTier(unittest.TestCase):
    SECRET = "shared by the replicas"

    def setUp(self):
        self.ref = Reference.get()
        self.redis = Redis()
        self.daemons = []

    def tearDown(self):
        for d in self.daemons:
            d.kill()
        self.redis.kill()

    def replica(self, *flags):
        d = Daemon("--session-store", self.redis.url(), "--state-secret", self.SECRET,
                   "--checkpoint-interval", "0", *flags)
        self.daemons.append(d)
        return d

    def test_replicas_without_affinity_resume(self):
        a, b = self.replica(), self.replica()
        text, cached = complete(a, TURN1, "c1")
        self.assertEqual((text, cached), (self.ref.turn1, 0))
        # The next turn on the other replica: its state comes from the store.
        text, cached = complete(b, TURN1 + self.ref.turn1 + MORE, "c1")
        self.assertEqual(text, self.ref.turn2)
        self.assertGreater(cached, 0)
        self.assertEqual(b.metric("yunmin_state_store_hits_total"), 1)
        # And back: a's own RAM copy is older; it resumes (from RAM or the store) all the same.
        prompt3 = TURN1 + self.ref.turn1 + MORE + self.ref.turn2 + MORE
        text3, cached = complete(a, prompt3, "c1")
        self.assertGreater(cached, 0)
        cold = Daemon("--checkpoint-interval", "0")
        try:
            self.assertEqual(text3, complete(cold, prompt3)[0])
        finally:
            self.assertEqual(cold.stop(), 0)
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_checkpoint_walk_asks_the_store_once(self):
        # Replica a stores prefix checkpoints every 8 tokens of a prompt; replica b, fresh,
        # gets a longer prompt that extends it. b's walk looks for the longest boundary of
        # its prompt in the store: one pipelined round trip of EXISTS for every boundary,
        # then one GET, where a GET per boundary would need one for each boundary past the
        # stored ones as well.
        B = 8
        a = self.replica("--checkpoint-interval", str(B))
        b = self.replica("--checkpoint-interval", str(B))
        short = TURN1 * 3
        long_ = short + MORE * 3
        r = a.post("/v1/completions", {"prompt": short, "max_tokens": 1, "temperature": 0})
        self.assertEqual(r.status_code, 200, r.text)
        n_short = r.json()["usage"]["prompt_tokens"]
        deadline = time.monotonic() + 10  # the store writer's queue empties
        while a.metric("yunmin_state_store_writes_total") < n_short // B:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)

        def calls(cmd):
            stats = resp(self.redis.port, "INFO", "commandstats")[1].decode()
            for line in stats.splitlines():
                if line.startswith("cmdstat_%s:" % cmd):
                    return int(line.split("calls=")[1].split(",")[0])
            return 0
        gets, exists = calls("get"), calls("exists")
        body = {"prompt": long_, "max_tokens": 8, "temperature": 0}
        r = b.post("/v1/completions", body)
        self.assertEqual(r.status_code, 200, r.text)
        usage = r.json()["usage"]
        k_max = (usage["prompt_tokens"] - 1) // B
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        self.assertEqual(cached % B, 0)
        self.assertGreater(cached, 0)
        self.assertLessEqual(cached, n_short)
        self.assertGreaterEqual(k_max - cached // B, 2)  # boundaries not in the store
        self.assertEqual(calls("get") - gets, 1)
        self.assertEqual(calls("exists") - exists, k_max)
        self.assertEqual(b.metric("yunmin_state_store_hits_total"), 1)
        cold = Daemon("--checkpoint-interval", "0")
        try:
            self.assertEqual(r.json()["choices"][0]["text"],
                             cold.post("/v1/completions", body).json()["choices"][0]["text"])
        finally:
            self.assertEqual(cold.stop(), 0)
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_store_killed_mid_run(self):
        a, b = self.replica(), self.replica()
        complete(a, TURN1, "k1")
        self.redis.kill()
        t0 = time.monotonic()
        # Every request still succeeds, on either replica, with or without a state.
        text, cached = complete(b, TURN1 + self.ref.turn1 + MORE, "k1")
        self.assertEqual(text, self.ref.cold2)
        self.assertEqual(cached, 0)
        text, cached = complete(a, TURN1 + self.ref.turn1 + MORE, "k1")
        self.assertEqual(text, self.ref.turn2)
        self.assertGreater(cached, 0)  # its own RAM
        for i in range(5):
            complete(b, TURN1, "k%d" % (i + 2))
        self.assertLess(time.monotonic() - t0, 30)
        self.assertGreater(b.metric("yunmin_state_store_errors_total"), 0)
        log = b.log()
        self.assertIn("session store", log)
        self.assertLessEqual(log.count("session store"), 2)  # once per interval (and kind)
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def test_store_hit_written_to_disk(self):
        a = self.replica()
        complete(a, TURN1, "w1")
        self.assertEqual(a.stop(), 0)
        d = tempfile.mkdtemp(prefix="ym-tiers-")
        try:
            b = self.replica("--state-dir", d)
            path = os.path.join(d, session_file("default", "w1"))
            self.assertFalse(os.path.exists(path))
            # A read-only look at the session: no turn runs, so nothing but the store's answer
            # can put the file on b's disk.
            r = ts.requests.get(b.url + "/v1/sessions/w1", timeout=ts.T)
            self.assertEqual(r.status_code, 200, r.text)
            self.assertEqual(b.metric("yunmin_state_store_hits_total"), 1)
            deadline = time.monotonic() + 10  # the write runs on the disk tier's thread
            while (b.metric("yunmin_state_disk_writes_total") < 1 and
                   time.monotonic() < deadline):
                time.sleep(0.05)
            self.assertEqual(b.metric("yunmin_state_disk_writes_total"), 1)
            self.assertEqual(b.metric("yunmin_state_store_writes_total"), 0)  # not sent back
            self.assertTrue(os.path.exists(path), os.listdir(d))
            self.assertEqual(b.stop(), 0)
            # Without the store, a restarted replica resumes from the file written back.
            self.redis.kill()
            c = Daemon("--state-dir", d, "--state-secret", self.SECRET,
                       "--checkpoint-interval", "0")
            self.daemons.append(c)
            text, cached = complete(c, TURN1 + self.ref.turn1 + MORE, "w1")
            self.assertEqual(text, self.ref.turn2)
            self.assertGreater(cached, 0)
            self.assertEqual(c.metric("yunmin_state_disk_hits_total"), 1)
            self.assertEqual(c.stop(), 0)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def test_forged_entry_refused(self):
        a = self.replica()
        complete(a, TURN1, "f1")
        self.assertEqual(a.stop(), 0)
        name = "yunmin:state:" + session_file("default", "f1")[:-4]
        # SELECT applies per connection: read and write with the database in one pipeline.
        with socket.create_connection(("127.0.0.1", self.redis.port), timeout=10) as s:
            s.sendall(b"*2\r\n$6\r\nSELECT\r\n$1\r\n1\r\n")
            f = s.makefile("rb")
            self.assertTrue(f.readline().startswith(b"+OK"))
            s.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(name), name.encode()))
            n = int(f.readline()[1:])
            self.assertGreater(n, 0)
            data = bytearray(f.read(n + 2)[:-2])
            data[len(data) // 2] ^= 0x40
            body = bytes(data[:-32])
            forged = body + hashlib.blake2b(body, digest_size=32, key=os.urandom(32)).digest()
            s.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" %
                      (len(name), name.encode(), len(forged), forged))
            self.assertTrue(f.readline().startswith(b"+OK"))
        b = self.replica()
        text, cached = complete(b, TURN1 + self.ref.turn1 + MORE, "f1")
        self.assertEqual(text, self.ref.cold2)
        self.assertEqual(cached, 0)
        self.assertEqual(b.metric("yunmin_state_store_refused_total"), 1)
        self.assertEqual(b.stop(), 0)


    def test_append_from_the_store_with_token_ids(self):
        # A session_append turn whose prompt is token ids and whose session only the store
        # holds: the session is read off the loop, the ids travel with the read, and the turn
        # continues the history as on the replica that ran the first turn.
        a, b = self.replica(), self.replica()
        complete(a, TURN1, "ids1")
        ids = ts.requests.post(b.url + "/v1/tokenize", json={"prompt": MORE},
                               timeout=ts.T).json()["tokens"]
        r = b.post("/v1/completions", {"prompt": ids, "max_tokens": 12, "temperature": 0,
                                       "session_id": "ids1", "session_append": True})
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(r.json()["choices"][0]["text"], self.ref.append2)
        self.assertGreater(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
        self.assertEqual(b.metric("yunmin_state_store_hits_total"), 1)
        # A session no tier holds: 404, as without tiers.
        r = b.post("/v1/completions", {"prompt": ids, "max_tokens": 4, "session_id": "none1",
                                       "session_append": True})
        self.assertEqual(r.status_code, 404, r.text)
        self.assertEqual(r.json()["error"]["code"], "session_not_found")
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

    def slow_store_replica(self, timeout_ms):
        """A session stored by replica a; replica b reads the store through a slow proxy."""
        a = self.replica()
        complete(a, TURN1, "slow1")
        self.assertEqual(a.stop(), 0)
        proxy = SlowProxy(self.redis.port)
        self.addCleanup(proxy.close)
        b = Daemon("--session-store", proxy.url(), "--state-secret", self.SECRET,
                   "--checkpoint-interval", "0", "--session-store-timeout-ms", str(timeout_ms),
                   env={"YUNMIN_MAX_TOKENS_CAP": "100000"})
        self.daemons.append(b)
        return proxy, b

    def stalls_during(self, proxy, b, delay):
        """Start a long stream on b, make the store slow, run the second turn of slow1 on b.
        The turn's (text, cached, seconds) and the stream's longest gap between chunks while
        the turn waited."""
        (text, cached), took, gap = self.stalls_while(
            proxy, b, delay, lambda: complete(b, TURN1 + self.ref.turn1 + MORE, "slow1"))
        return text, cached, took, gap

    def stalls_while(self, proxy, b, delay, call, headers=None):
        """Start a long stream on b, make the store slow, run call(). Its result, its seconds
        and the stream's longest gap between chunks while it waited."""
        chunks, stop = [], threading.Event()
        t = threading.Thread(target=stream_times, args=(b, {
            "prompt": "KING:", "max_tokens": 100000, "ignore_eos": True, "temperature": 0},
            chunks, stop, headers))
        t.start()
        deadline = time.monotonic() + 30
        while len(chunks) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertGreaterEqual(len(chunks), 20)
        proxy.delay = delay
        proxy.slow.set()
        t0 = time.monotonic()
        try:
            got = call()
        except BaseException:
            proxy.slow.clear()
            stop.set()  # the stream hangs up at its next chunk
            t.join()
            raise
        t1 = time.monotonic()
        proxy.slow.clear()
        stop.set()
        t.join()
        # The stream outlasted the turn, so its gaps over [t0, t1] say whether it waited.
        self.assertGreater(chunks[-1][0], t1, "the stream ended before the turn")
        times = [c[0] for c in chunks if t0 <= c[0] <= t1]
        self.assertGreater(len(times), 10, "too few chunks while the turn waited")
        gaps = sorted(((y - x, x - t0) for x, y in zip(times, times[1:])), reverse=True)
        print("longest gaps (s, at s after the turn was sent): %s" %
              ", ".join("%.3f @ %.2f" % g for g in gaps[:4]), file=sys.stderr)
        return got, t1 - t0, gaps[0][0]

    def test_slow_store_does_not_stall_other_streams(self):
        delay = 2.0
        proxy, b = self.slow_store_replica(timeout_ms=10000)
        text, cached, took, gap = self.stalls_during(proxy, b, delay)
        # The store answered (late): the turn resumed from it.
        self.assertGreaterEqual(took, delay)
        self.assertEqual(text, self.ref.turn2)
        self.assertGreater(cached, 0)
        self.assertEqual(b.metric("yunmin_state_store_hits_total"), 1)
        # Before lookups moved off the engine thread, every stream stopped for the whole delay
        # (twice: SELECT, then GET). The bound leaves room for a loaded machine and TSan.
        print("slow store %.1f s: turn took %.2f s, longest gap of the other stream %.3f s" %
              (delay, took, gap), file=sys.stderr)
        self.assertLess(gap, delay / 2)
        self.assertEqual(b.stop(), 0)

    def test_slow_store_past_timeout_runs_cold(self):
        delay = 2.0
        # Past the 1.5 s timeout: the lookup gives up (an engine thread waiting for it would
        # stall every stream for that long).
        proxy, b = self.slow_store_replica(timeout_ms=1500)
        text, cached, took, gap = self.stalls_during(proxy, b, delay)
        self.assertEqual(text, self.ref.cold2)
        self.assertEqual(cached, 0)
        self.assertLess(took, 15)
        self.assertGreater(b.metric("yunmin_state_store_errors_total"), 0)
        self.assertEqual(b.metric("yunmin_state_store_hits_total"), 0)
        self.assertLess(gap, delay / 2)
        self.assertEqual(b.stop(), 0)

    def slow_store_tenants(self, timeout_ms):
        """Sessions of tenant alpha stored by replica a (g1: described, ap1: appended to, x1:
        exported; x1's blob as a exported it from RAM); replica b, with the same tenants file,
        reads the store through a slow proxy. (proxy, b, alpha's and ops' headers, x1's blob)"""
        alpha, ops = ts.new_key(), ts.new_key()
        f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        self.addCleanup(os.unlink, f.name)
        json.dump({"tenants": [{"name": "alpha", "keys": [alpha["hash"]]},
                               {"name": "ops", "keys": [ops["hash"]], "admin": True}]}, f)
        f.close()
        ha = {"Authorization": "Bearer " + alpha["key"]}
        ho = {"Authorization": "Bearer " + ops["key"]}
        a = self.replica("--tenants-file", f.name)
        for sid in ("g1", "ap1", "x1"):
            r = a.post("/v1/completions", {"prompt": TURN1, "max_tokens": 12, "temperature": 0,
                                           "session_id": sid}, headers=ha)
            self.assertEqual(r.status_code, 200, r.text)
            self.assertEqual(r.json()["choices"][0]["text"], self.ref.turn1)
        self.g1 = ts.requests.get(a.url + "/v1/sessions/g1", headers=ha, timeout=ts.T).json()
        blob = ts.requests.get(a.url + "/admin/sessions/alpha/x1", headers=ho, timeout=ts.T)
        self.assertEqual(blob.status_code, 200, blob.text)
        self.assertEqual(a.stop(), 0)
        proxy = SlowProxy(self.redis.port)
        self.addCleanup(proxy.close)
        b = Daemon("--session-store", proxy.url(), "--state-secret", self.SECRET,
                   "--checkpoint-interval", "0", "--session-store-timeout-ms", str(timeout_ms),
                   "--tenants-file", f.name, env={"YUNMIN_MAX_TOKENS_CAP": "100000"})
        self.daemons.append(b)
        return proxy, b, ha, ho, blob.content

    def session_reads(self, b, ha, ho):
        """The three requests that read a session from the tiers before they answer: GET
        /v1/sessions/g1, a session_append turn on ap1, the admin export of x1."""
        return [
            ("GET /v1/sessions", lambda: ts.requests.get(b.url + "/v1/sessions/g1", headers=ha,
                                                         timeout=ts.T)),
            ("session_append", lambda: b.post("/v1/completions", {
                "prompt": MORE, "max_tokens": 12, "temperature": 0, "session_id": "ap1",
                "session_append": True}, headers=ha)),
            ("admin export", lambda: ts.requests.get(b.url + "/admin/sessions/alpha/x1",
                                                     headers=ho, timeout=ts.T)),
        ]

    def test_slow_store_session_reads_do_not_stall_streams(self):
        # Each of the three waits on the store (two replies held 2 s each: SELECT, GET) while
        # another stream runs; when they read on the loop thread, the stream's chunks waited
        # as long as they did.
        delay = 2.0
        proxy, b, ha, ho, blob = self.slow_store_tenants(timeout_ms=10000)
        reads = self.session_reads(b, ha, ho)
        for name, call in reads:
            with self.subTest(name):
                r, took, gap = self.stalls_while(proxy, b, delay, call, ha)
                print("slow store %.1f s, %s: took %.2f s, longest gap of the other stream "
                      "%.3f s" % (delay, name, took, gap), file=sys.stderr)
                self.assertEqual(r.status_code, 200, r.text)
                self.assertGreaterEqual(took, delay)
                self.assertLess(gap, delay / 2)
                if name == "GET /v1/sessions":
                    self.assertEqual(r.json(), self.g1)
                elif name == "session_append":
                    self.assertEqual(r.json()["choices"][0]["text"], self.ref.append2)
                    self.assertGreater(
                        r.json()["usage"]["prompt_tokens_details"]["cached_tokens"], 0)
                else:
                    self.assertEqual(r.headers["Content-Type"], "application/octet-stream")
                    self.assertEqual(r.content, blob)  # the same state, byte for byte
        self.assertEqual(b.metric("yunmin_state_store_hits_total"), 3)
        self.assertEqual(b.stop(), 0)

    def test_slow_store_session_reads_past_timeout(self):
        # Past the 1.5 s timeout the read gives up: the session is not there for this replica
        # (404, as for any missing session), and the other stream never waited.
        delay = 2.0
        proxy, b, ha, ho, _ = self.slow_store_tenants(timeout_ms=1500)
        for i, (name, call) in enumerate(self.session_reads(b, ha, ho)):
            with self.subTest(name):
                if i > 0:
                    # After a timeout the store backs off (at most 5 s), missing at once
                    # meanwhile; past it, the next read waits for the store again.
                    time.sleep(5.5)
                r, took, gap = self.stalls_while(proxy, b, delay, call, ha)
                print("slow store %.1f s past the timeout, %s: took %.2f s, longest gap %.3f s"
                      % (delay, name, took, gap), file=sys.stderr)
                self.assertEqual(r.status_code, 404, r.text)
                self.assertEqual(r.json()["error"]["code"], "session_not_found", r.text)
                self.assertLess(took, 15)
                self.assertLess(gap, delay / 2)
        self.assertGreater(b.metric("yunmin_state_store_errors_total"), 0)
        self.assertEqual(b.metric("yunmin_state_store_hits_total"), 0)
        self.assertEqual(b.stop(), 0)

    def test_client_gone_while_a_session_read_waits(self):
        # The client hangs up while its read waits for the store: the daemon answers nothing,
        # frees the request when the read ends, and keeps serving (and stops cleanly).
        proxy, b, ha, ho, blob = self.slow_store_tenants(timeout_ms=10000)
        proxy.delay = 1.5
        proxy.slow.set()
        for path, h in (("/v1/sessions/g1", ha), ("/admin/sessions/alpha/x1", ho)):
            with self.assertRaises(ts.requests.exceptions.ReadTimeout):
                ts.requests.get(b.url + path, headers=h, timeout=0.5)
        time.sleep(4)  # both reads end (two held replies each) with their clients gone
        proxy.slow.clear()
        r = ts.requests.get(b.url + "/admin/sessions/alpha/x1", headers=ho, timeout=ts.T)
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(r.content, blob)
        self.assertEqual(b.stop(), 0)

    def test_sigterm_while_a_turn_waits_for_the_store(self):
        # SIGTERM comes while a turn's lookup waits for the store: the drain waits for that
        # turn too, it resumes, its new state is on disk before its response ends, and the
        # daemon exits 0 (everything written).
        a = self.replica()
        complete(a, TURN1, "term1")
        self.assertEqual(a.stop(), 0)
        proxy = SlowProxy(self.redis.port)
        self.addCleanup(proxy.close)
        d = tempfile.mkdtemp(prefix="ym-tiers-")
        self.addCleanup(shutil.rmtree, d, True)
        b = Daemon("--session-store", proxy.url(), "--state-secret", self.SECRET,
                   "--checkpoint-interval", "0", "--session-store-timeout-ms", "10000",
                   "--state-dir", d)
        self.daemons.append(b)
        proxy.delay = 1.0
        proxy.slow.set()
        got = {}
        prompt2 = TURN1 + self.ref.turn1 + MORE
        t = threading.Thread(target=lambda: got.update(r=complete(b, prompt2, "term1")))
        t.start()
        time.sleep(0.5)  # the lookup waits for SELECT's reply, then GET's
        b.proc.send_signal(signal.SIGTERM)
        t.join()
        self.assertEqual(b.stop(), 0)
        text, cached = got["r"]
        self.assertEqual(text, self.ref.turn2)
        self.assertGreater(cached, 0)
        self.assertTrue(os.path.exists(os.path.join(d, session_file("default", "term1"))))
        # The file holds the second turn's state: a daemon with that disk alone resumes the
        # third turn from it, past the second turn's history.
        proxy.slow.clear()
        c = Daemon("--state-dir", d, "--state-secret", self.SECRET, "--checkpoint-interval", "0")
        self.daemons.append(c)
        _, cached3 = complete(c, prompt2 + self.ref.turn2 + MORE, "term1")
        self.assertGreater(cached3, len(ts.requests.post(c.url + "/v1/tokenize", json={
            "prompt": prompt2}, timeout=ts.T).json()["tokens"]))
        self.assertEqual(c.stop(), 0)


if __name__ == "__main__":
    ts.YUNMIND, ts.YUNMIN, ts.ROOT = sys.argv[1], sys.argv[2], sys.argv[3]
    ts.MODEL = os.path.join(ts.ROOT, "models", "shakespeare-mamba")
    del sys.argv[1:4]
    unittest.main(verbosity=2)
