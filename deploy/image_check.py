#!/usr/bin/python3
"""deploy/image_check.py - builds deploy/Dockerfile without a container engine, and runs it.

    sudo /usr/bin/python3 deploy/image_check.py [--keep DIR]

For machines with no Docker or Podman (CI here): each `FROM debian:12-slim` stage becomes a
Debian 12 root made by mmdebstrap (variant minbase, what the slim image is made of), and the
Dockerfile's own instructions are carried out in it: RUN in a chroot (with its own /proc, in a
private mount namespace), COPY from the build context filtered by .dockerignore or from an
earlier stage, WORKDIR, ENV, USER. Then the image is run as a container would run it: the
ENTRYPOINT as PID 1 of a new PID namespace, as the USER, with the image's ENV only, and checked:
it listens on 0.0.0.0, turns ready, answers a completion with the baked-in model, the
HEALTHCHECK command passes, and SIGTERM ends it with status 0. Needs root, mmdebstrap and the
Debian mirror; takes a few minutes. Not a full Dockerfile implementation: it refuses
instructions and forms deploy/Dockerfile does not use.
"""

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(ROOT, "deploy", "Dockerfile")
MIRRORS = ["deb http://deb.debian.org/debian bookworm main",
           "deb http://deb.debian.org/debian bookworm-updates main",
           "deb http://deb.debian.org/debian-security bookworm-security main"]


def log(msg):
    print("image-check: " + msg, flush=True)


def instructions(path):
    """[(KEYWORD, argument text)], continuation lines joined, comments dropped."""
    out, buf = [], ""
    with open(path) as f:
        for line in f:
            s = line.rstrip("\n")
            if not buf and (not s.strip() or s.lstrip().startswith("#")):
                continue
            if buf and s.lstrip().startswith("#"):
                continue
            if s.endswith("\\"):
                buf += s[:-1] + " "
                continue
            buf += s
            kw, _, arg = buf.strip().partition(" ")
            out.append((kw.upper(), arg.strip()))
            buf = ""
    return out


def dockerignore_filter(context):
    """A predicate rel_path -> kept, after .dockerignore (last matching pattern wins; a
    pattern matches a path or any directory above it; '*' stays within one level, '**' not)."""
    pats = []
    path = os.path.join(context, ".dockerignore")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                p = line.strip()
                if not p or p.startswith("#"):
                    continue
                neg = p.startswith("!")
                p = p[1:] if neg else p
                p = p.strip("/")
                rx = re.escape(p).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
                rx = rx.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
                pats.append((re.compile("^" + rx + "$"), neg))

    def kept(rel):
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        keep = True
        for rx, neg in pats:
            if any(rx.match(p) for p in prefixes):
                keep = neg
        return keep
    return kept


def make_context(dest):
    kept = dockerignore_filter(ROOT)
    n = 0
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        if rel_dir == ".":
            rel_dir = ""
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            rel = os.path.join(rel_dir, name) if rel_dir else name
            if kept(rel):
                os.makedirs(os.path.join(dest, rel_dir), exist_ok=True)
                shutil.copy2(os.path.join(ROOT, rel), os.path.join(dest, rel))
                n += 1
    return n


def run(cmd, **kw):
    p = subprocess.run(cmd, **kw)
    if p.returncode != 0:
        raise SystemExit("image-check: failed (%d): %s" % (p.returncode, " ".join(cmd)[:300]))
    return p


def in_root(root, shell, env, workdir, user=None):
    """Runs a shell command in root (chroot), with a fresh /proc, as a RUN step does."""
    script = "mount -t proc proc %s/proc && exec chroot %s %s /usr/bin/env -i %s /bin/sh -c %s" % (
        shlex.quote(root), "--userspec=" + user if user else "", shlex.quote(root),
        " ".join(shlex.quote("%s=%s" % kv) for kv in env.items()),
        shlex.quote("cd %s && %s" % (shlex.quote(workdir), shell)))
    return subprocess.run(["unshare", "--mount", "--fork", "sh", "-c", script])


def copy_into(srcs, base, root, dest, workdir):
    if not dest.startswith("/"):
        dest = os.path.join(workdir, dest)
    target = root + dest
    to_dir = dest.endswith("/") or len(srcs) > 1
    for s in srcs:
        src = os.path.join(base, s.lstrip("/"))
        if not os.path.exists(src):
            raise SystemExit("image-check: COPY source %s missing (.dockerignore?)" % s)
        if os.path.isdir(src):  # a directory: its contents go into dest
            os.makedirs(target, exist_ok=True)
            run(["cp", "-a", src.rstrip("/") + "/.", target])
        else:
            t = os.path.join(target, os.path.basename(src)) if to_dir or os.path.isdir(target) \
                else target
            os.makedirs(os.path.dirname(t), exist_ok=True)
            run(["cp", "-a", src, t])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="build in DIR and leave it there")
    a = ap.parse_args()
    if os.geteuid() != 0:
        log("needs root (chroot, mounts, namespaces)")
        return 2
    if shutil.which("mmdebstrap") is None:
        log("needs mmdebstrap (apt-get install mmdebstrap)")
        return 2
    work = a.keep or tempfile.mkdtemp(prefix="yunmin-image-")
    os.makedirs(work, exist_ok=True)
    proc = None
    try:
        t0 = time.time()
        ctx = os.path.join(work, "context")
        shutil.rmtree(ctx, ignore_errors=True)
        log("build context: %d files after .dockerignore" % make_context(ctx))
        args, stages, cur = {}, {}, None
        base = os.path.join(work, "base")
        for kw, arg in instructions(DOCKERFILE):
            arg = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), arg) \
                if kw not in ("RUN", "HEALTHCHECK") else arg
            if kw == "ARG":
                k, _, v = arg.partition("=")
                args[k] = v
            elif kw == "FROM":
                m = re.match(r"^(\S+)(?:\s+AS\s+(\S+))?$", arg, re.I)
                if m.group(1) != "debian:12-slim":
                    raise SystemExit("image-check: only debian:12-slim bases, not " + arg)
                if not os.path.isdir(base):
                    log("mmdebstrap bookworm (minbase)")
                    run(["mmdebstrap", "--quiet", "--variant=minbase", "bookworm", base] + MIRRORS)
                name = m.group(2) or "stage%d" % len(stages)
                root = os.path.join(work, "root-" + name)
                shutil.rmtree(root, ignore_errors=True)
                run(["cp", "-a", base, root])
                shutil.copy("/etc/resolv.conf", os.path.join(root, "etc", "resolv.conf"))
                cur = stages[name] = {"root": root, "env": {
                    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
                    "workdir": "/", "user": None, "meta": {}}
                log("FROM %s" % arg)
            elif kw == "RUN":
                log("RUN %s" % (arg[:100] + ("..." if len(arg) > 100 else "")))
                env = dict(cur["env"], HOME="/root")
                if in_root(cur["root"], arg, env, cur["workdir"], cur["user"]).returncode != 0:
                    raise SystemExit("image-check: RUN failed: " + arg[:200])
            elif kw == "COPY":
                words = arg.split()
                src_base = ctx
                if words[0].startswith("--from="):
                    src_base = stages[words[0][7:]]["root"]
                    words = words[1:]
                if any(w.startswith("--") for w in words):
                    raise SystemExit("image-check: COPY option not handled: " + arg)
                copy_into(words[:-1], src_base, cur["root"], words[-1], cur["workdir"])
            elif kw == "WORKDIR":
                cur["workdir"] = arg
                os.makedirs(cur["root"] + arg, exist_ok=True)
            elif kw == "ENV":
                k, _, v = arg.partition("=")
                cur["env"][k] = v
            elif kw == "USER":
                cur["user"] = arg
            elif kw in ("EXPOSE", "VOLUME", "HEALTHCHECK", "STOPSIGNAL", "ENTRYPOINT", "CMD"):
                cur["meta"][kw] = arg
            else:
                raise SystemExit("image-check: instruction not handled: " + kw)
        img = cur
        log("built in %.0f s; runtime root %s MB" % (
            time.time() - t0, subprocess.run(["du", "-sm", img["root"]], capture_output=True,
                                             text=True).stdout.split()[0]))

        # ---- run it as a container would ------------------------------------------------
        entry = json.loads(img["meta"]["ENTRYPOINT"])
        hc = re.search(r"CMD\s+(\[.*\])$", img["meta"]["HEALTHCHECK"]).group(1)
        for v in json.loads(img["meta"].get("VOLUME", "[]")):
            os.makedirs(img["root"] + v, exist_ok=True)
        port = free_port()
        env = dict(img["env"], YUNMIN_PORT=str(port))  # as `docker run -e YUNMIN_PORT=...`
        r = img["root"]
        script = "mount -t proc proc %s/proc && exec chroot --userspec=%s %s /usr/bin/env -i %s %s" % (
            shlex.quote(r), img["user"], shlex.quote(r),
            " ".join(shlex.quote("%s=%s" % kv) for kv in env.items()),
            " ".join(shlex.quote(x) for x in entry))
        proc = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--kill-child",
                                 "sh", "-c", script], stdout=subprocess.PIPE)
        line = proc.stdout.readline().decode()
        if "listening on http://0.0.0.0:%d" % port not in line:
            raise SystemExit("image-check: unexpected start line %r" % line)
        url = "http://127.0.0.1:%d" % port
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=10) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit("image-check: not ready in 60 s")
            time.sleep(0.1)
        with open("/proc/%d/task/%d/children" % (proc.pid, proc.pid)) as f:
            pid1 = int(f.read().split()[0])
        with open("/proc/%d/status" % pid1) as f:
            st = f.read()
        nspid = re.search(r"^NSpid:\s+(.*)$", st, re.M).group(1).split()[-1]
        uid = re.search(r"^Uid:\s+(\d+)", st, re.M).group(1)
        if nspid != "1" or uid != img["user"].split(":")[0]:
            raise SystemExit("image-check: entrypoint is pid %s uid %s" % (nspid, uid))
        log("ENTRYPOINT runs as PID 1, uid %s, listening on 0.0.0.0:%d" % (uid, port))
        req = urllib.request.Request(url + "/v1/completions", method="POST",
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps({"prompt": "ROMEO:", "max_tokens": 8,
                                                      "temperature": 0}).encode())
        with urllib.request.urlopen(req, timeout=60) as resp:
            body = json.load(resp)
        log("completion from the baked-in model %s: %r" % (body["model"],
                                                            body["choices"][0]["text"]))
        hc_cmd = " ".join(shlex.quote(x) for x in json.loads(hc))
        if in_root(r, hc_cmd, env, "/", img["user"]).returncode != 0:
            raise SystemExit("image-check: HEALTHCHECK failed")
        log("HEALTHCHECK %s: ok" % hc)
        os.kill(pid1, signal.SIGTERM)
        rc = proc.wait(45)
        proc = None
        if rc != 0:
            raise SystemExit("image-check: exit status %d after SIGTERM" % rc)
        log("SIGTERM: drained, exit status 0; all checks passed in %.0f s" % (time.time() - t0))
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
