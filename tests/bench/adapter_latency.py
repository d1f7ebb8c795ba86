#!/usr/bin/python3
"""Upload-to-served latency of a LoRA adapter, on one replica and on a second one sharing the
adapter directory.

    /usr/bin/python3 tests/bench/adapter_latency.py BUILD_DIR MODEL_DIR [--rank 8] [--runs 5]

Starts two yunmind processes on MODEL_DIR sharing a fresh adapter_dir, writes a random PEFT
LoRA adapter (rank r on in_proj, x_proj, dt_proj, out_proj of every layer; the layout PEFT's
save_pretrained writes) sized for the model, and for each run replaces adapter "bench" on
replica A and measures, from the start of the PUT:
  - upload: the PUT's answer (streamed to disk, validated, compiled, committed, published);
  - served on A: the first completion with model="bench" that runs on the new version;
  - served on B: the same on the other replica (it learns of it through its watch on the store).
"Runs on the new version" is told apart by the adapter's version in GET /v1/adapters/bench.
Prints one JSON object with the medians and every run. For the 130m shape, make MODEL_DIR with
bench/make_synth_model.py.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import requests


def start(yunmind, model, adir):
    p = subprocess.Popen([yunmind, "--model", model, "--port", "0", "--threads", "1",
                          "--adapter-dir", adir, "--log-level", "warn"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    m = re.search(r":(\d+)$", p.stdout.readline().decode().strip())
    url = "http://127.0.0.1:%s" % m.group(1)
    for _ in range(600):
        try:
            if requests.get(url + "/readyz", timeout=5).status_code == 200:
                return p, url
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError("yunmind did not become ready")


def write_lora(path, cfg, r, seed):
    """A PEFT LoRA directory with random non-zero A and B."""
    d, n_layer = cfg["hidden_size"], cfg["num_hidden_layers"]
    di = cfg.get("intermediate_size", 2 * d)
    ds = cfg.get("state_size", 16)
    dtr = cfg.get("time_step_rank", (d + 15) // 16)
    if dtr == "auto":
        dtr = (d + 15) // 16
    shapes = {"in_proj": (2 * di, d), "x_proj": (dtr + 2 * ds, di), "dt_proj": (di, dtr),
              "out_proj": (d, di)}
    rng = np.random.default_rng(seed)
    tensors = []
    for layer in range(n_layer):
        for mod, (n_out, n_in) in shapes.items():
            base = "base_model.model.backbone.layers.%d.mixer.%s" % (layer, mod)
            tensors.append((base + ".lora_A.weight",
                            rng.uniform(-1, 1, (r, n_in)).astype(np.float32) / np.sqrt(n_in)))
            tensors.append((base + ".lora_B.weight",
                            rng.uniform(-0.1, 0.1, (n_out, r)).astype(np.float32)))
    header, off = {}, 0
    for name, a in tensors:
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "adapter_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for _, a in tensors:
            f.write(a.tobytes())
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "use_rslora": False,
                   "target_modules": list(shapes), "bias": "none", "fan_in_fan_out": False,
                   "base_model_name_or_path": "bench", "task_type": "CAUSAL_LM"}, f)
    return off


def upload(url, path):
    files = [(n, (n, open(os.path.join(path, n), "rb").read(), "application/octet-stream"))
             for n in ("adapter_config.json", "adapter_model.safetensors")]
    return requests.put(url + "/v1/adapters/bench", files=files, timeout=600)


def served(url, version, t0, deadline=60):
    while time.time() - t0 < deadline:
        info = requests.get(url + "/v1/adapters/bench", timeout=60)
        if info.status_code == 200 and info.json()["version"] >= version:
            r = requests.post(url + "/v1/completions", json={"model": "bench", "prompt": "a",
                                                             "max_tokens": 1}, timeout=60)
            if r.status_code == 200:
                return time.time() - t0
        time.sleep(0.005)
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("model")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    yunmind = os.path.join(a.build, "server", "yunmind")
    with open(os.path.join(a.model, "config.json")) as f:
        cfg = json.load(f)
    work = tempfile.mkdtemp(prefix="yunmin-adapter-bench-")
    adir = os.path.join(work, "store")
    procs = []
    try:
        pa, ua = start(yunmind, a.model, adir)
        procs.append(pa)
        pb, ub = start(yunmind, a.model, adir)
        procs.append(pb)
        runs = []
        for i in range(a.runs):
            src = os.path.join(work, "lora%d" % i)
            nbytes = write_lora(src, cfg, a.rank, i)
            t0 = time.time()
            r = upload(ua, src)
            t_up = time.time() - t0
            if r.status_code not in (200, 201):
                raise RuntimeError(r.text)
            v = r.json()["version"]
            t_a = served(ua, v, t0)
            t_b = served(ub, v, t0)
            runs.append({"upload_s": t_up, "served_a_s": t_a, "served_b_s": t_b,
                         "adapter_bytes": nbytes})
        med = lambda k: statistics.median(x[k] for x in runs if x[k] is not None)
        print(json.dumps({"model": a.model, "rank": a.rank, "runs": runs,
                          "median_upload_s": med("upload_s"),
                          "median_served_same_replica_s": med("served_a_s"),
                          "median_served_other_replica_s": med("served_b_s")}, indent=1))
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
