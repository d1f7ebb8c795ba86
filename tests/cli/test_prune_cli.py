#!/usr/bin/python3
"""tests/cli/test_prune_cli.py - `yunmin prune`: usage and runtime errors, and a run on the
embedded default model (models/shakespeare-mamba) checked from outside.

Usage: test_prune_cli.py YUNMIN_EXE SOURCE_ROOT      (meson runs it as the `cli-prune` test)

Standard library only. What it checks:
  - bad arguments: exactly one line "yunmin: ..." on stderr, nothing on stdout, exit 2 (usage)
    or 1 (a missing or malformed file, a text too short); `yunmin perplexity --sparsity` with
    a missing or malformed profile, the same;
  - a run with a 2 % budget on the first 12,000 characters of data/tinyshakespeare.txt: the
    written file is parsed here (safetensors header and tensors read with struct, not by
    yunmin): a valid profile keeping fewer channels than the dense model, every layer a
    multiple of 16, scan_order a permutation listing the kept channels first; `yunmin
    perplexity --sparsity` loads it, and the held-out perplexity that command computes
    (--tail-fraction 0.1, the part prune held out) is within the budget of the dense model's
    perplexity computed by the same command; prune's own JSON agrees with both.
"""

import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

YUNMIN = None
ROOT = None
TIMEOUT = 600


def run(args):
    env = dict(os.environ)
    env.pop("YUNMIN_MODEL", None)
    p = subprocess.run([YUNMIN] + list(args), capture_output=True, env=env, timeout=TIMEOUT)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def read_safetensors(path):
    """(metadata dict, {name: (dtype, shape, list of values)}) for F32 / I32 tensors."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, t in header.items():
        lo, hi = t["data_offsets"]
        fmt = {"F32": "f", "I32": "i"}[t["dtype"]]
        count = (hi - lo) // 4
        tensors[name] = (t["dtype"], t["shape"],
                         list(struct.unpack("<%d%s" % (count, fmt), data[base + lo:base + hi])))
    return meta, tensors


class TestPruneErrors(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="yunmin-prune-")
        self.text = os.path.join(self.tmp, "cal.txt")
        with open(self.text, "w", encoding="utf-8") as f:
            f.write("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20)
        self.out = os.path.join(self.tmp, "p.safetensors")

    def assert_one_line_error(self, rc_want, args, mention=None):
        rc, out, err = run(args)
        self.assertEqual(rc, rc_want, "%s: exit %d, stderr %r" % (args, rc, err))
        self.assertTrue(err.startswith("yunmin: "), "%s: stderr %r" % (args, err))
        self.assertEqual(err.count("\n"), 1, "%s: stderr is not one line: %r" % (args, err))
        self.assertEqual(out, b"", "%s: stdout %r" % (args, out))
        if mention is not None:
            self.assertIn(mention, err)
        self.assertFalse(os.path.exists(self.out), "%s: wrote a profile" % args)

    def test_help(self):
        rc, out, err = run(["prune", "--help"])
        self.assertEqual((rc, err), (0, ""))
        self.assertIn(b"usage: yunmin prune", out)

    def test_usage_errors(self):
        t, o = ["--text", self.text], ["--out", self.out]
        for args, mention in [
            (["prune"] + o, "--text"),
            (["prune"] + t, "--out"),
            (["prune"] + t + o + ["--max-ppl-increase", "abc"], "--max-ppl-increase"),
            (["prune"] + t + o + ["--max-ppl-increase", "-1%"], "--max-ppl-increase"),
            (["prune"] + t + o + ["--max-ppl-increase", "%"], "--max-ppl-increase"),
            (["prune"] + t + o + ["--max-ppl-increase", "5000%"], "--max-ppl-increase"),
            (["prune"] + t + o + ["--heldout", "1"], "--heldout"),
            (["prune"] + t + o + ["--heldout", "0"], "--heldout"),
            (["prune"] + t + o + ["--block", "24"], "--block"),
            (["prune"] + t + o + ["--block", "8"], "--block"),
            (["prune"] + t + o + ["--block", "1024"], "--block"),
            (["prune"] + t + o + ["--search", "exhaustive"], "--search"),
            (["prune"] + t + o + ["--max-evals", "0"], "--max-evals"),
            (["prune"] + t + o + ["--tokens", "x"], "--tokens"),
            (["prune"] + t + o + ["--speed-rounds", "0"], "--speed-rounds"),
            (["prune"] + t + o + ["--compare-out", self.out + ".c"], "--compare"),
            (["prune"] + t + o + ["--frobnicate"], "--frobnicate"),
            (["prune"] + t + o + ["extra"], "extra"),
            (["prune"] + t + o + ["--model", "synthetic:mamba-130m"], "tokenizer"),
        ]:
            self.assert_one_line_error(2, args, mention)

    def test_runtime_errors(self):
        t, o = ["--text", self.text], ["--out", self.out]
        short = os.path.join(self.tmp, "short.txt")
        with open(short, "w") as f:
            f.write("a")
        bad = os.path.join(self.tmp, "bad.safetensors")
        with open(bad, "wb") as f:
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
        for args, mention in [
            (["prune", "--text", os.path.join(self.tmp, "none.txt")] + o, "none.txt"),
            (["prune", "--model", os.path.join(self.tmp, "nomodel")] + t + o, None),
            (["prune", "--text", short] + o, "tokens"),
            (["prune"] + t + o + ["--compare", os.path.join(self.tmp, "none.safetensors")],
             "none.safetensors"),
            (["prune"] + t + o + ["--compare", bad], "bad.safetensors"),
        ]:
            self.assert_one_line_error(1, args, mention)

    def test_perplexity_sparsity_errors(self):
        """`yunmin perplexity --sparsity`, the flag the checks below rely on, refuses a missing
        or malformed profile with one line and exit 1."""
        bad = os.path.join(self.tmp, "bad.safetensors")
        with open(bad, "wb") as f:
            f.write(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
        for prof in (os.path.join(self.tmp, "none.safetensors"), bad):
            rc, out, err = run(["perplexity", "--file", self.text, "--sparsity", prof])
            self.assertEqual(rc, 1, err)
            self.assertEqual((out, err.count("\n")), (b"", 1), err)
            self.assertTrue(err.startswith("yunmin: "), err)


class TestPruneDefaultModel(unittest.TestCase):
    BUDGET = 0.02

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="yunmin-prune-")
        with open(os.path.join(ROOT, "data", "tinyshakespeare.txt"), encoding="utf-8") as f:
            text = f.read()[:12000]
        cls.text = os.path.join(cls.tmp, "cal.txt")
        with open(cls.text, "w", encoding="utf-8") as f:
            f.write(text)
        cls.out = os.path.join(cls.tmp, "pruned.safetensors")
        rc, out, err = run(["prune", "--text", cls.text, "--out", cls.out,
                            "--max-ppl-increase", "2%", "--tokens", "256", "--search", "lazy",
                            "--max-evals", "60", "--speed-steps", "20", "--speed-rounds", "2",
                            "--threads", "1", "--json"])
        assert rc == 0, "prune: exit %d, stderr %s" % (rc, err)
        cls.summary = json.loads(out)
        cls.stderr = err

    def perplexity(self, *extra):
        rc, out, err = run(["perplexity", "--file", self.text, "--tail-fraction", "0.1",
                            "--threads", "1"] + list(extra))
        self.assertEqual(rc, 0, err)
        return json.loads(out)

    def test_progress_on_stderr(self):
        self.assertIn("prune: step 1:", self.stderr)

    def test_profile_file_keeps_fewer_channels(self):
        meta, tensors = read_safetensors(self.out)
        self.assertEqual(meta["format"], "yunmin-sparsity")
        self.assertEqual(meta["version"], "1")
        self.assertEqual(meta["order"], "correlation-nn")
        with open(os.path.join(ROOT, "models", "shakespeare-mamba", "config.json")) as f:
            cfg = json.load(f)
        n_layer, d_inner = cfg["num_hidden_layers"], cfg["intermediate_size"]
        kept_total = 0
        for layer in range(n_layer):
            dtype, shape, logits = tensors["layers.%d.channel_logits" % layer]
            self.assertEqual((dtype, shape), ("F32", [d_inner]))
            kept = [d for d in range(d_inner) if logits[d] > 0]
            self.assertEqual(len(kept) % 16, 0, "layer %d keeps %d" % (layer, len(kept)))
            _, _, order = tensors["layers.%d.scan_order" % layer]
            self.assertEqual(sorted(order), list(range(d_inner)))
            self.assertEqual(sorted(order[:len(kept)]), kept)  # kept channels first
            _, _, states = tensors["layers.%d.state_logits" % layer]
            self.assertTrue(all(v > 0 for v in states))  # channel pruning only
            self.assertEqual(self.summary["layers_kept"][layer], len(kept))
            kept_total += len(kept)
        self.assertLess(kept_total, n_layer * d_inner)
        self.assertEqual(self.summary["channels_kept"], kept_total)

    def test_heldout_perplexity_within_budget(self):
        dense = self.perplexity()
        pruned = self.perplexity("--sparsity", self.out)
        self.assertEqual(dense["tokens"], pruned["tokens"])
        self.assertEqual(dense["tokens"], self.summary["heldout_tokens_scored"])
        # The budget is on perplexity; 1e-12 relative for the last bit of exp().
        self.assertLessEqual(pruned["ppl"], dense["ppl"] * (1 + self.BUDGET) * (1 + 1e-12),
                             "pruned %r dense %r" % (pruned, dense))
        self.assertGreater(pruned["ppl"], dense["ppl"] * 0.9)  # it did prune something real
        # prune's figures are the ones `yunmin perplexity` computes.
        self.assertAlmostEqual(self.summary["ppl_dense"] / dense["ppl"], 1.0, delta=1e-9)
        self.assertAlmostEqual(self.summary["ppl_pruned"] / pruned["ppl"], 1.0, delta=1e-9)
        self.assertTrue(self.summary["within_budget"])

    def test_summary_fields(self):
        s = self.summary
        self.assertEqual(s["max_ppl_increase"], self.BUDGET)
        self.assertGreater(s["sparsity"], 0.0)
        self.assertLessEqual(s["evals"], 60 + 3)  # the search's, then dense, written, uniform
        self.assertIn(s["stop"], ("budget", "max-evals", "all-dropped"))
        for k in ("dense", "pruned"):
            self.assertGreater(s["decode_batch1"][k]["best_tok_s"], 0)
        self.assertGreater(s["uniform"]["ppl"], 0)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: test_prune_cli.py YUNMIN_EXE SOURCE_ROOT [unittest args]")
    YUNMIN = os.path.abspath(sys.argv[1])
    ROOT = os.path.abspath(sys.argv[2])
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2)
