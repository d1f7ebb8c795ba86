#!/usr/bin/python3
"""tests/cli/test_prune_cli.py - `yunmin prune`: usage and runtime errors, and a run on the
embedded default model (models/shakespeare-mamba) checked from outside.

Usage: test_prune_cli.py YUNMIN_EXE SOURCE_ROOT      (meson runs it as the `cli-prune` test)

Standard library only. What it checks:
  - bad arguments: exactly one line "yunmin: ..." on stderr, nothing on stdout, exit 2 (usage)
    or 1 (a missing or malformed file, a text too short); `yunmin perplexity --sparsity` with
    a missing or malformed profile, the same;
  - a run with a 2 % budget on the first 12,000 characters of data/tinyshakespeare.txt,
    windows of 64 tokens: the written file is parsed here (safetensors header and tensors read
    with struct, not by yunmin): a valid profile keeping fewer channels than the dense model,
    every layer a multiple of 16, scan_order a permutation listing the kept channels first;
  - the held-out sample: the text's windows (counted here from `yunmin tokenize`'s ids), 10 %
    of them held out, distinct, spread evenly with windows from the first, middle and last
    third of the text; held-out and score part are a partition of the text's tokens (no token
    in both, none lost);
  - with --eval-tokens below F x the text, fewer held-out windows, still spread over it;
  - the held-out perplexity recomputed here from `yunmin logits --ids` of each held-out window
    (log-softmax in double in this file), dense and under the written profile: equal to
    prune's figures within 1e-5 relative, and within the budget.
"""

import json
import math
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

    def test_perplexity_heldout_errors(self):
        """--heldout outside (0, 1), or beside --tail-fraction: one line, exit 2."""
        for extra, mention in ((["--heldout", "0"], "--heldout"), (["--heldout", "1"], "--heldout"),
                               (["--heldout", "x"], "--heldout"),
                               (["--heldout", "0.1", "--tail-fraction", "0.1"], "exclude")):
            rc, out, err = run(["perplexity", "--file", self.text] + extra)
            self.assertEqual(rc, 2, err)
            self.assertEqual((out, err.count("\n")), (b"", 1), err)
            self.assertIn(mention, err)

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
    CTX = 64
    HELDOUT = 0.1

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
                            "--ctx", str(cls.CTX), "--heldout", str(cls.HELDOUT),
                            "--max-evals", "60", "--speed-steps", "20", "--speed-rounds", "2",
                            "--threads", "1", "--json"])
        assert rc == 0, "prune: exit %d, stderr %s" % (rc, err)
        cls.summary = json.loads(out)
        cls.stderr = err
        rc, out, err = run(["tokenize", "--file", cls.text])
        assert rc == 0, "tokenize: exit %d, stderr %s" % (rc, err)
        cls.ids = json.loads(out)["ids"]

    def windows(self):
        """[(lo, hi)] token ranges of the text's windows, counted here as prune documents them:
        windows of CTX tokens, a last partial one only if it has at least 2 tokens."""
        n, w = len(self.ids), self.CTX
        n_win = n // w + (1 if n % w >= 2 else 0)
        return [(k * w, min(n, (k + 1) * w)) for k in range(n_win)]

    def heldout_nll(self, *extra):
        """Mean NLL over the held-out windows, each from a fresh state, every token but the
        window's first scored: logits from `yunmin logits`, log-softmax here in double."""
        total, count = 0.0, 0
        wins = self.windows()
        for k in self.summary["heldout_windows"]:
            lo, hi = wins[k]
            toks = self.ids[lo:hi]
            rc, out, err = run(["logits", "--ids", ",".join(map(str, toks)), "--threads", "1"]
                               + list(extra))
            self.assertEqual(rc, 0, err)
            rows = json.loads(out)["logits"]
            self.assertEqual(len(rows), len(toks))
            for r in range(1, len(toks)):
                row = rows[r - 1]
                m = max(row)
                lse = m + math.log(sum(math.exp(v - m) for v in row))
                total += lse - row[toks[r]]
                count += 1
        return total / count, count

    def test_progress_on_stderr(self):
        self.assertIn("prune: step 1:", self.stderr)

    def test_heldout_windows_spread_over_the_text(self):
        s, wins = self.summary, self.windows()
        n_win = len(wins)
        self.assertEqual(s["text_tokens"], len(self.ids))
        self.assertEqual(s["windows"], n_win)
        self.assertEqual(s["ctx"], self.CTX)
        held = s["heldout_windows"]
        self.assertGreaterEqual(n_win, 30)  # the test text must give a real sample
        self.assertEqual(len(held), int(math.floor(self.HELDOUT * n_win + 0.5)))
        self.assertEqual(held, sorted(set(held)))  # distinct, ascending
        self.assertTrue(all(0 <= k < n_win for k in held))
        thirds = [0, 0, 0]
        for k in held:
            thirds[min(2, 3 * k // n_win)] += 1
        self.assertTrue(all(thirds), "held-out windows by third of the text: %s" % thirds)
        # Evenly spread: the first within the first stretch of n_win / len(held) windows, the
        # last within the last stretch, and no gap wider than a stretch plus one window.
        stretch = n_win / len(held)
        self.assertLess(held[0], stretch)
        self.assertGreaterEqual(held[-1], n_win - stretch)
        for a, b in zip(held, held[1:]):
            self.assertLessEqual(b - a, math.ceil(stretch) + 1, held)
            self.assertGreaterEqual(b - a, math.floor(stretch) - 1, held)

    def test_heldout_and_score_part_partition_the_text(self):
        s, wins = self.summary, self.windows()
        held_tokens = set()
        for k in s["heldout_windows"]:
            lo, hi = wins[k]
            self.assertTrue(held_tokens.isdisjoint(range(lo, hi)))
            held_tokens.update(range(lo, hi))
        score_tokens = [i for i in range(len(self.ids)) if i not in held_tokens]
        # prune's two parts: its score part holds exactly the tokens outside the held-out
        # windows (no token in both, none dropped), and it scored the held-out windows' tokens.
        self.assertEqual(s["score_part_tokens"], len(score_tokens))
        self.assertEqual(s["score_part_tokens"] + len(held_tokens), s["text_tokens"])
        self.assertEqual(s["score_tokens"], min(256, len(score_tokens)))
        self.assertEqual(s["heldout_tokens_scored"],
                         sum(wins[k][1] - wins[k][0] - 1 for k in s["heldout_windows"]))
        self.assertFalse(s["heldout_cut"])

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
        nll_dense, n_dense = self.heldout_nll()
        nll_pruned, n_pruned = self.heldout_nll("--sparsity", self.out)
        self.assertEqual(n_dense, self.summary["heldout_tokens_scored"])
        self.assertEqual(n_pruned, n_dense)
        ppl_dense, ppl_pruned = math.exp(nll_dense), math.exp(nll_pruned)
        # prune's figures are the ones recomputed here (batched float32 forward there, one
        # window at a time here: 1e-5 relative).
        self.assertAlmostEqual(self.summary["ppl_dense"] / ppl_dense, 1.0, delta=1e-5)
        self.assertAlmostEqual(self.summary["ppl_pruned"] / ppl_pruned, 1.0, delta=1e-5)
        self.assertLessEqual(ppl_pruned, ppl_dense * (1 + self.BUDGET) * (1 + 1e-5),
                             "pruned %r dense %r" % (ppl_pruned, ppl_dense))
        self.assertGreater(ppl_pruned, ppl_dense * 0.9)  # it did prune something real
        self.assertTrue(self.summary["within_budget"])

    def test_perplexity_heldout_scores_prunes_heldout_part(self):
        """`yunmin perplexity --heldout F` (bench/prune.sh's held-out column) scores exactly the
        windows prune held out: the same window indices and token count, and prune's dense and
        pruned perplexities (the same batched forward: 1e-9 relative)."""
        for extra, key in (([], "ppl_dense"), (["--sparsity", self.out], "ppl_pruned")):
            rc, out, err = run(["perplexity", "--file", self.text, "--ctx", str(self.CTX),
                                "--heldout", str(self.HELDOUT), "--threads", "1"] + extra)
            self.assertEqual(rc, 0, err)
            r = json.loads(out)
            self.assertEqual(r["heldout_windows"], self.summary["heldout_windows"])
            self.assertEqual(r["windows"], len(self.summary["heldout_windows"]))
            self.assertEqual(r["tokens"], self.summary["heldout_tokens_scored"])
            self.assertAlmostEqual(r["ppl"] / self.summary[key], 1.0, delta=1e-9)

    def test_summary_fields(self):
        s = self.summary
        self.assertEqual(s["max_ppl_increase"], self.BUDGET)
        self.assertGreater(s["sparsity"], 0.0)
        self.assertLessEqual(s["evals"], 60 + 3)  # the search's, then dense, written, uniform
        self.assertIn(s["stop"], ("budget", "max-evals", "all-dropped"))
        for k in ("dense", "pruned"):
            self.assertGreater(s["decode_batch1"][k]["best_tok_s"], 0)
        self.assertGreater(s["uniform"]["ppl"], 0)


class TestPruneHeldoutCap(unittest.TestCase):
    """--eval-tokens caps the held-out windows at N / ctx, and the fewer windows are still spread
    over the whole text (not the first ones)."""

    def test_cap_keeps_the_spread(self):
        tmp = tempfile.mkdtemp(prefix="yunmin-prune-")
        with open(os.path.join(ROOT, "data", "tinyshakespeare.txt"), encoding="utf-8") as f:
            text = f.read()[:12000]
        cal = os.path.join(tmp, "cal.txt")
        with open(cal, "w", encoding="utf-8") as f:
            f.write(text)
        rc, out, err = run(["prune", "--text", cal, "--out", os.path.join(tmp, "p.safetensors"),
                            "--ctx", "64", "--heldout", "0.2", "--eval-tokens", "192",
                            "--tokens", "64", "--max-evals", "1", "--speed-steps", "0",
                            "--threads", "1", "--json"])
        self.assertEqual(rc, 0, err)
        s = json.loads(out)
        n_win, held = s["windows"], s["heldout_windows"]
        self.assertTrue(s["heldout_cut"])
        self.assertEqual(len(held), 3)  # 192 / 64, fewer than 0.2 x windows
        self.assertGreater(round(0.2 * n_win), 3)
        self.assertEqual(held, sorted(set(held)))
        self.assertLess(held[0], n_win / 3)
        self.assertTrue(n_win / 3 <= held[1] < 2 * n_win / 3, held)
        self.assertGreaterEqual(held[2], 2 * n_win / 3)
        self.assertEqual(s["heldout_tokens_scored"], 3 * 63)
        self.assertIn("fewer windows: --eval-tokens", err)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: test_prune_cli.py YUNMIN_EXE SOURCE_ROOT [unittest args]")
    YUNMIN = os.path.abspath(sys.argv[1])
    ROOT = os.path.abspath(sys.argv[2])
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2)
