"""The shipped default model: the C engine's perplexity equals the toolkit's.

The engine evaluates models/shakespeare-mamba on the whole held-out split (the last 10 % of
data/tinyshakespeare.txt, windows of 256 tokens from a fresh state) and must reproduce the model
card's figure (eval.json, from the toolkit on the GPU) within 1 %. On the first 24,000 held-out
characters both the toolkit (PyTorch float32 on this CPU; the whole split takes too long here)
and the engine run the same protocol and must agree within 1 % too (in practice to 1e-6).
The binary comes from $YUNMIN_BIN (scripts/test.sh sets it) or build*/tools/yunmin.
"""
import glob
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
MODEL = os.path.join(REPO, "models", "shakespeare-mamba")
TEXT = os.path.join(REPO, "data", "tinyshakespeare.txt")


def yunmin_bin():
    b = os.environ.get("YUNMIN_BIN")
    if b:
        return b
    found = sorted(glob.glob(os.path.join(REPO, "build*", "tools", "yunmin")), key=os.path.getmtime)
    if not found:
        pytest.fail("no yunmin binary: build it or set YUNMIN_BIN")
    return found[-1]


def run_engine(text_path, tail=None):
    args = [yunmin_bin(), "perplexity", "--model", MODEL, "--file", text_path, "--ctx", "256"]
    if tail is not None:
        args += ["--tail-fraction", str(tail)]
    c = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert c.returncode == 0, c.stderr
    return json.loads(c.stdout)


def test_engine_reproduces_the_model_card_perplexity():
    engine = run_engine(TEXT, tail=0.1)
    with open(os.path.join(MODEL, "eval.json")) as f:
        card = json.load(f)
    print(f"held-out: engine ppl {engine['ppl']:.6f}, model card {card['ppl']:.6f}")
    assert engine["tokens"] == card["n_scored"]
    assert abs(engine["ppl"] / card["ppl"] - 1) < 0.01


def test_engine_perplexity_matches_toolkit_on_cpu(tmp_path):
    from yunmin_train.data import split_text

    with open(TEXT, encoding="utf-8") as f:
        _, heldout = split_text(f.read())
    part = tmp_path / "heldout-part.txt"
    part.write_text(heldout[:24000], encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "tools", "train"))
    tk = subprocess.run(
        [sys.executable, "-m", "yunmin_train.evaluate", "--model", MODEL, "--text", str(part),
         "--split", "all", "--ctx", "256", "--batch-size", "4", "--device", "cpu",
         "--dtype", "float32"],
        capture_output=True, text=True, env=env, timeout=600)
    assert tk.returncode == 0, tk.stderr[-2000:]
    toolkit = json.loads(tk.stdout[tk.stdout.index("{"):])
    engine = run_engine(str(part))
    print(f"toolkit ppl {toolkit['ppl']:.6f} ({toolkit['n_scored']} tokens), "
          f"engine ppl {engine['ppl']:.6f} ({engine['tokens']} tokens)")
    assert engine["tokens"] == toolkit["n_scored"]
    assert engine["windows"] == toolkit["n_windows"]
    assert abs(engine["ppl"] / toolkit["ppl"] - 1) < 0.01
