#!/usr/bin/python3
"""tests/cli/test_cli.py - the `yunmin` CLI: error handling, exit codes and JSON outputs.

Usage: test_cli.py YUNMIN_EXE FIXTURE_DIR      (meson runs it as the `cli` test)

Standard library only. What it checks:
  - usage errors: exactly one line "yunmin: ..." on stderr and exit 2; runtime errors
    (missing model directory or file) the same with exit 1; --help on stdout with exit 0;
  - tokenize / detokenize on a directory that holds only the GPT-NeoX tokenizer.json, against
    the Hugging Face ids in gpt-neox/cases.json;
  - logits / generate / inspect / perplexity on a tiny random Mamba written here (config.json +
    model.safetensors, built with struct): JSON shapes, inspect's counts against the file we
    wrote, greedy generate against argmax over `logits`, stop strings, seeds, and the
    perplexity protocol recomputed here from `logits` (log_softmax in double);
  - with tests/fixtures/conformance/<model>/ present (a real checkpoint), the same shape and
    consistency checks on it; skipped when absent;
  - bench --json --rounds N: the per-round bandwidth probes and batch-1 decodes, and the floor
    fractions (best over best, per round, median) recomputed here from them; --windows N: the
    windows' summary figures recomputed from the windows; batch 16 paired with batch 1 in
    every round, its ratios and their median recomputed;
  - --adapter on logits / generate with the PEFT fixtures (tests/fixtures/peft/): one adapter, a
    composition of several and an adapter set against the float64 references there, greedy
    generate against argmax over `logits --adapter`, and the errors for bad adapters.
"""

import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

YUNMIN = None
FIXTURES = None
TIMEOUT = 300


def run(args, env=None, input_bytes=None):
    """Run yunmin; returns (rc, stdout bytes, stderr str)."""
    full_env = dict(os.environ)
    full_env.pop("YUNMIN_MODEL", None)
    if env:
        full_env.update(env)
    p = subprocess.run([YUNMIN] + list(args), capture_output=True, env=full_env,
                       input=input_bytes, timeout=TIMEOUT)
    out = p.stdout
    if args and args[0] == "generate" and p.returncode == 0:
        # The generated text, then one newline that ends it.
        assert out.endswith(b"\n"), out
        out = out[:-1]
    return p.returncode, out, p.stderr.decode("utf-8", "replace")


def write_tiny_mamba(path, seed=0, d=16, n_layer=2, n_state=4, k=4, rank=1, vocab=50280):
    """A random Mamba-1 checkpoint in HF format. Returns (config, tensor element count,
    tensor bytes)."""
    rng = random.Random(seed)
    di = 2 * d
    cfg = {
        "architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": d,
        "num_hidden_layers": n_layer, "expand": 2, "intermediate_size": di,
        "state_size": n_state, "conv_kernel": k, "time_step_rank": rank, "vocab_size": vocab,
        "use_bias": False, "use_conv_bias": True, "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
    }
    tensors = []

    def add(name, shape, values):
        tensors.append((name, shape, values))

    def uni(shape, a):
        n = 1
        for s in shape:
            n *= s
        return [rng.uniform(-a, a) for _ in range(n)]

    add("backbone.embeddings.weight", [vocab, d], uni([vocab, d], 1.0))
    for layer in range(n_layer):
        p = "backbone.layers.%d." % layer
        add(p + "norm.weight", [d], [1.0 + rng.uniform(-0.1, 0.1) for _ in range(d)])
        add(p + "mixer.in_proj.weight", [2 * di, d], uni([2 * di, d], 1 / math.sqrt(d)))
        add(p + "mixer.conv1d.weight", [di, 1, k], uni([di, 1, k], 0.5))
        add(p + "mixer.conv1d.bias", [di], uni([di], 0.1))
        add(p + "mixer.x_proj.weight", [rank + 2 * n_state, di],
            uni([rank + 2 * n_state, di], 1 / math.sqrt(di)))
        add(p + "mixer.dt_proj.weight", [di, rank], uni([di, rank], 1.0))
        add(p + "mixer.dt_proj.bias", [di], uni([di], 0.5))
        add(p + "mixer.A_log", [di, n_state], [math.log(n + 1) for _ in range(di)
                                                for n in range(n_state)])
        add(p + "mixer.D", [di], [1.0] * di)
        add(p + "mixer.out_proj.weight", [d, di], uni([d, di], 1 / math.sqrt(di)))
    add("backbone.norm_f.weight", [d], [1.0] * d)

    header, blobs, off, count = {}, [], 0, 0
    for name, shape, values in tensors:
        b = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
        count += len(values)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    return cfg, count, off


def log_softmax_at(row, target):
    m = max(row)
    return row[target] - m - math.log(sum(math.exp(v - m) for v in row))


class CliTestBase(unittest.TestCase):
    def assert_one_line_error(self, rc_want, args, env=None, mention=None):
        rc, out, err = run(args, env=env)
        self.assertEqual(rc, rc_want, "%s: exit %d, stderr %r" % (args, rc, err))
        self.assertTrue(err.startswith("yunmin: "), "%s: stderr %r" % (args, err))
        self.assertEqual(err.count("\n"), 1, "%s: stderr is not one line: %r" % (args, err))
        self.assertTrue(err.endswith("\n"))
        self.assertEqual(out, b"", "%s: stdout %r" % (args, out))
        if mention is not None:
            self.assertIn(mention, err)
        return err

    def json_out(self, args, env=None):
        rc, out, err = run(args, env=env)
        self.assertEqual(rc, 0, "%s: exit %d, stderr %r" % (args, rc, err))
        return json.loads(out.decode("utf-8"))


class TestUsage(CliTestBase):
    """Usage errors: one line, exit 2. None of these needs a model."""

    def test_no_command(self):
        self.assert_one_line_error(2, [])

    def test_unknown_command(self):
        self.assert_one_line_error(2, ["frobnicate"], mention="frobnicate")

    def test_unknown_top_level_flag(self):
        self.assert_one_line_error(2, ["--frobnicate"])

    def test_help(self):
        rc, out, err = run(["--help"])
        self.assertEqual((rc, err), (0, ""))
        self.assertIn(b"usage: yunmin", out)
        for cmd in ["generate", "logits", "tokenize", "detokenize", "inspect", "perplexity"]:
            self.assertIn(cmd.encode(), out)
            rc, out2, err = run([cmd, "--help"])
            self.assertEqual((rc, err), (0, ""), cmd)
            self.assertIn(b"usage: yunmin " + cmd.encode(), out2)

    def test_unknown_flags(self):
        for args in (["generate", "--bogus"], ["generate", "-x", "-p", "hi"],
                     ["tokenize", "--bogus", "1"], ["detokenize", "--idz", "1"],
                     ["logits", "--ids", "1", "--nope"], ["inspect", "--verbose"],
                     ["perplexity", "--window", "3"]):
            self.assert_one_line_error(2, args)

    def test_missing_flag_values(self):
        for args, opt in ((["generate", "-p"], "-p"), (["generate", "--prompt"], "--prompt"),
                          (["generate", "-p", "hi", "--top-p"], "--top-p"),
                          (["tokenize", "--text"], "--text"), (["logits", "--ids"], "--ids"),
                          (["perplexity", "--file", "x", "--ctx"], "--ctx")):
            self.assert_one_line_error(2, args, mention=opt)

    def test_missing_required_flags(self):
        self.assert_one_line_error(2, ["generate"], mention="--prompt")
        self.assert_one_line_error(2, ["generate", "-p", ""], mention="empty")
        self.assert_one_line_error(2, ["logits"], mention="--ids")
        self.assert_one_line_error(2, ["detokenize"], mention="--ids")
        self.assert_one_line_error(2, ["tokenize"])
        self.assert_one_line_error(2, ["tokenize", "--text", "a", "--file", "b"])
        self.assert_one_line_error(2, ["perplexity"], mention="--file")

    def test_extra_positional_arguments(self):
        self.assert_one_line_error(2, ["generate", "-p", "hi", "extra"], mention="extra")
        self.assert_one_line_error(2, ["inspect", "a", "b"])

    def test_bad_numbers(self):
        for args, mention in (
                (["-n", "abc"], "--max-tokens"), (["-n", "1.5"], "--max-tokens"),
                (["-n", "-1"], "--max-tokens"), (["--temperature", "warm"], "--temperature"),
                (["--temperature", "-0.5"], "temperature"), (["--temperature", "nan"], None),
                (["--top-p", "1.5"], "top_p"), (["--top-p", "0"], "top_p"),
                (["--top-k", "-2"], "--top-k"), (["--top-k", "3x"], "--top-k"),
                (["--min-p", "2"], "min_p"), (["--repetition-penalty", "0"], "repetition"),
                (["--presence-penalty", "3"], "presence"), (["--frequency-penalty", "-9"],
                                                            "frequency"),
                (["--seed", "-1"], "--seed"), (["--seed", "12a"], "--seed"),
                (["--threads", "many"], "--threads")):
            self.assert_one_line_error(2, ["generate", "-p", "hi"] + args, mention=mention)
        self.assert_one_line_error(2, ["perplexity", "--file", "x", "--ctx", "1"], mention="--ctx")
        self.assert_one_line_error(2, ["perplexity", "--file", "x", "--tail-fraction", "0"],
                                   mention="--tail-fraction")
        self.assert_one_line_error(2, ["perplexity", "--file", "x", "--tail-fraction", "1.5"])

    def test_missing_model_directory_is_a_runtime_error(self):
        for args in (["tokenize", "--model", "/nonexistent/yunmin", "--text", "hi"],
                     ["detokenize", "--model", "/nonexistent/yunmin", "--ids", "1"],
                     ["logits", "--model", "/nonexistent/yunmin", "--ids", "1"],
                     ["generate", "--model", "/nonexistent/yunmin", "-p", "hi"],
                     ["inspect", "/nonexistent/yunmin"],
                     ["inspect", "--model", "/nonexistent/yunmin", "--json"]):
            self.assert_one_line_error(1, args, mention="/nonexistent/yunmin")
        self.assert_one_line_error(1, ["tokenize", "--text", "hi"],
                                   env={"YUNMIN_MODEL": "/nonexistent/from-env"},
                                   mention="/nonexistent/from-env")


class TestTokenizerOnly(CliTestBase):
    """tokenize / detokenize need only DIR/tokenizer.json."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="yunmin-cli-")
        shutil.copy(os.path.join(FIXTURES, "gpt-neox", "tokenizer.json"), cls.tmp)
        with open(os.path.join(FIXTURES, "gpt-neox", "cases.json"), encoding="utf-8") as f:
            cls.cases = json.load(f)["cases"]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def test_tokenize_matches_hugging_face(self):
        for case in self.cases:
            got = self.json_out(["tokenize", "--model", self.tmp, "--text", case["text"]])
            self.assertEqual(list(got.keys()), ["ids"])
            self.assertEqual(got["ids"], case["ids"], case["text"])

    def test_tokenize_file_equals_text(self):
        text = "Hello world\n\nfrom  a   file: ½ 🦙"
        path = os.path.join(self.tmp, "input.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        a = self.json_out(["tokenize", "--model", self.tmp, "--file", path])
        b = self.json_out(["tokenize", "--model", self.tmp, "--text", text])
        self.assertEqual(a, b)
        self.assertGreater(len(a["ids"]), 5)

    def test_model_from_environment(self):
        got = self.json_out(["tokenize", "--text", "Hello world"], env={"YUNMIN_MODEL": self.tmp})
        self.assertEqual(got["ids"], [12092, 1533])

    def test_detokenize_round_trips_cases(self):
        for case in self.cases:
            if not case["ids"]:
                continue
            ids = ",".join(str(i) for i in case["ids"])
            got = self.json_out(["detokenize", "--model", self.tmp, "--ids", ids])
            self.assertEqual(got, {"text": case["text"]})

    def test_detokenize_escapes_json(self):
        rc, out, err = run(["detokenize", "--model", self.tmp, "--ids", "3,187,186,0"])
        self.assertEqual(rc, 0, err)
        self.assertNotIn(b"\n\t", out)  # control characters are escaped
        self.assertEqual(out.count(b"\n"), 1)
        self.assertEqual(json.loads(out), {"text": '"\n\t<|endoftext|>'})
        got = self.json_out(["detokenize", "--model", self.tmp, "--ids", "[12092, 13, 1533]"])
        self.assertEqual(got["text"], "Hello, world")

    def test_detokenize_bad_ids(self):
        for ids in ("1,x", "1,,2", "", "-1", "50277", "99999999999999999999", "1 2", "[1,2"):
            self.assert_one_line_error(2, ["detokenize", "--model", self.tmp, "--ids", ids])

    def test_missing_input_file(self):
        self.assert_one_line_error(1, ["tokenize", "--model", self.tmp, "--file",
                                       "/nonexistent/input.txt"], mention="/nonexistent/input.txt")

    def test_directory_without_tokenizer(self):
        empty = tempfile.mkdtemp(prefix="yunmin-cli-empty-")
        try:
            self.assert_one_line_error(1, ["tokenize", "--model", empty, "--text", "hi"],
                                       mention="tokenizer.json")
        finally:
            shutil.rmtree(empty)

    def test_model_commands_need_a_model(self):
        # Only a tokenizer here: the commands that run the model fail at run time.
        self.assert_one_line_error(1, ["logits", "--model", self.tmp, "--ids", "1,2"])
        self.assert_one_line_error(1, ["inspect", self.tmp])
        self.assert_one_line_error(1, ["generate", "--model", self.tmp, "-p", "hi"])


class ModelChecks(CliTestBase):
    """Checks that need a model directory: subclasses set cls.dir and cls.tokenizer_vocab."""

    dir = None

    def logits(self, ids):
        got = self.json_out(["logits", "--model", self.dir, "--ids", ",".join(map(str, ids))])
        self.assertEqual(list(got.keys()), ["logits"])
        return got["logits"]

    def tokenize(self, text):
        return self.json_out(["tokenize", "--model", self.dir, "--text", text])["ids"]

    def inspect(self):
        return self.json_out(["inspect", self.dir, "--json"])

    def test_logits_shape_and_causality(self):
        n_vocab = self.inspect()["n_vocab"]
        ids = self.tokenize("The quick brown fox jumps")
        rows = self.logits(ids)
        self.assertEqual(len(rows), len(ids))
        for row in rows:
            self.assertEqual(len(row), n_vocab)
            self.assertTrue(all(isinstance(v, float) for v in row[:100]))
        # A prefix's logits do not depend on what follows.
        prefix = self.logits(ids[:2])
        worst = max(abs(a - b) for r in range(2) for a, b in zip(prefix[r], rows[r]))
        self.assertLess(worst, 1e-4, "prefix logits differ by %g" % worst)

    def test_logits_rejects_ids_outside_the_model(self):
        n_vocab = self.inspect()["n_vocab"]
        self.assert_one_line_error(2, ["logits", "--model", self.dir, "--ids", "1,%d" % n_vocab],
                                   mention=str(n_vocab))

    def greedy_reference(self, prompt_ids, n):
        """Greedy continuation from `logits` (full recompute each step): ids, up to EOS."""
        info = self.inspect()
        n_real = min(info["n_vocab"], info["tokenizer_n_vocab"])
        eos = info["eos_id"]
        ids = list(prompt_ids)
        out = []
        for _ in range(n):
            row = self.logits(ids)[-1][:n_real]
            best = max(range(n_real), key=lambda i: (row[i], -i))
            if best == eos:
                break
            out.append(best)
            ids.append(best)
        return out

    def test_greedy_generate_equals_argmax_of_logits(self):
        prompt = "Once upon a time"
        want_ids = self.greedy_reference(self.tokenize(prompt), 6)
        rc, out, err = run(["generate", "--model", self.dir, "-p", prompt, "-n", "6",
                            "--temperature", "0"])
        self.assertEqual(rc, 0, err)
        self.assertEqual(err.count("\n"), 1, err)  # the summary line
        self.assertIn("generated", err)
        if want_ids:
            want = self.json_out(["detokenize", "--model", self.dir, "--ids",
                                  ",".join(map(str, want_ids))])["text"]
        else:
            want = ""
        self.assertEqual(out.decode("utf-8"), want)
        # --echo puts the prompt first.
        rc, out2, err = run(["generate", "--model", self.dir, "-p", prompt, "-n", "6",
                             "--temperature", "0", "--echo"])
        self.assertEqual(rc, 0, err)
        self.assertEqual(out2, prompt.encode() + out)

    def test_stop_string_cuts_the_output(self):
        args = ["generate", "--model", self.dir, "-p", "It was", "-n", "24", "--temperature", "0"]
        rc, full, err = run(args)
        self.assertEqual(rc, 0, err)
        text = full.decode("utf-8")
        if len(text) < 6:
            self.skipTest("the model ended too early to place a stop string")
        stop = text[3:6]
        rc, cut, err = run(args + ["--stop", stop])
        self.assertEqual(rc, 0, err)
        self.assertEqual(cut.decode("utf-8"), text[:text.index(stop)])
        self.assertIn("stop", err)
        # A stop that never appears changes nothing.
        rc, same, err = run(args + ["--stop", "\x01never\x02"])
        self.assertEqual((rc, same), (0, full))

    def test_seeded_sampling_is_reproducible(self):
        args = ["generate", "--model", self.dir, "-p", "Hello", "-n", "16", "--temperature", "1.0"]
        a = run(args + ["--seed", "7"])
        b = run(args + ["--seed", "7"])
        self.assertEqual(a[0], 0, a[2])
        self.assertEqual(a[1], b[1])
        outs = {run(args + ["--seed", str(s)])[1] for s in range(8, 12)}
        self.assertGreater(len(outs | {a[1]}), 1, "different seeds all gave the same text")

    def test_inspect_text_and_json(self):
        info = self.inspect()
        for key in ("config", "n_params", "weight_bytes", "file_bytes", "state_bytes", "n_vocab",
                    "tokenizer_n_vocab", "eos_id"):
            self.assertIn(key, info)
        cfg = info["config"]
        for key in ("d_model", "n_layer", "d_inner", "d_state", "d_conv", "dt_rank", "n_vocab",
                    "use_bias", "use_conv_bias", "tie_embeddings", "norm_eps",
                    "residual_in_fp32", "bos_id", "eos_id", "pad_id", "state_spaces"):
            self.assertIn(key, cfg)
        self.assertEqual(info["state_bytes"], 4 * cfg["n_layer"] * cfg["d_inner"] *
                         (cfg["d_conv"] - 1 + cfg["d_state"]))
        rc, out, err = run(["inspect", "--model", self.dir])
        self.assertEqual((rc, err), (0, ""))
        self.assertIn(b"parameters", out)
        self.assertIn(str(info["n_params"]).encode(), out)

    def perplexity_reference(self, text_bytes, ctx, tail=None):
        """The protocol of tools/cmd_perplexity.c / evaluate.py, computed from `logits`."""
        if tail is not None:
            # The toolkit's held-out rule, in characters (yunmin_train.data.split_text).
            text = text_bytes.decode("utf-8")
            skip = len(text) * (1000000 - round(tail * 1e6)) // 1000000
            text_bytes = text[skip:].encode("utf-8")
        path = os.path.join(self.scratch, "ref.txt")
        with open(path, "wb") as f:
            f.write(text_bytes)
        ids = self.json_out(["tokenize", "--model", self.dir, "--file", path])["ids"]
        windows = [ids[i:i + ctx] for i in range(0, len(ids), ctx)]
        windows = [w for w in windows if len(w) >= 2]
        nll, n = 0.0, 0
        for w in windows:
            rows = self.logits(w)
            for j in range(1, len(w)):
                nll -= log_softmax_at(rows[j - 1], w[j])
                n += 1
        return {"tokens": n, "nll": nll / n, "ppl": math.exp(nll / n), "windows": len(windows)}

    def test_perplexity_follows_the_protocol(self):
        self.scratch = tempfile.mkdtemp(prefix="yunmin-cli-ppl-")
        try:
            text = ("ROMEO: But soft, what light through yonder window breaks? "
                    "Ärger über Größe — ½ 🦙 It is the east.")
            data = text.encode("utf-8")
            path = os.path.join(self.scratch, "text.txt")
            with open(path, "wb") as f:
                f.write(data)
            # A tail fraction whose cut by bytes would land inside a multi-byte character,
            # so counting characters (as the toolkit does) matters.
            tail = next(f / 100 for f in range(5, 60)
                        if data[math.floor(len(data) * (1 - f / 100))] & 0xC0 == 0x80)
            for ctx, tail in ((7, None), (5, tail), (1000, None)):
                args = ["perplexity", "--model", self.dir, "--file", path, "--ctx", str(ctx)]
                if tail is not None:
                    args += ["--tail-fraction", str(tail)]
                got = self.json_out(args)
                want = self.perplexity_reference(data, ctx, tail)
                self.assertEqual(sorted(got.keys()), ["nll", "ppl", "tokens", "windows"])
                self.assertEqual(got["tokens"], want["tokens"], (ctx, tail))
                self.assertEqual(got["windows"], want["windows"], (ctx, tail))
                self.assertAlmostEqual(got["nll"], want["nll"], delta=1e-5 * want["nll"])
                self.assertAlmostEqual(got["ppl"], math.exp(got["nll"]),
                                       delta=1e-9 * got["ppl"])
            self.assert_one_line_error(1, ["perplexity", "--model", self.dir, "--file",
                                           "/nonexistent/text.txt"])
        finally:
            shutil.rmtree(self.scratch)


class TestTinyModel(ModelChecks):
    """A random tiny Mamba with the GPT-NeoX tokenizer, written by this test."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="yunmin-cli-model-")
        shutil.copy(os.path.join(FIXTURES, "gpt-neox", "tokenizer.json"), cls.dir)
        cls.cfg, cls.n_tensor_elems, cls.n_tensor_bytes = write_tiny_mamba(cls.dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir)

    def test_inspect_counts_match_the_checkpoint(self):
        info = self.inspect()
        self.assertEqual(info["n_params"], self.n_tensor_elems)
        self.assertEqual(info["file_bytes"], self.n_tensor_bytes)
        self.assertEqual(info["n_vocab"], self.cfg["vocab_size"])
        self.assertEqual(info["tokenizer_n_vocab"], 50277)
        self.assertEqual(info["eos_id"], 0)
        cfg = info["config"]
        self.assertEqual((cfg["d_model"], cfg["n_layer"], cfg["d_inner"], cfg["d_state"],
                          cfg["d_conv"], cfg["dt_rank"]),
                         (16, 2, 32, 4, 4, 1))

    def test_blas_kernel_is_chosen_from_cpu_features_and_never_overrides_the_user(self):
        # What this CPU deserves, read independently from /proc/cpuinfo's flags.
        with open("/proc/cpuinfo") as f:
            flags = next((l.split(":", 1)[1].split() for l in f if l.startswith("flags")), [])
        avx512 = all(x in flags for x in ("avx512f", "avx512dq", "avx512cd", "avx512bw",
                                           "avx512vl"))
        if avx512:
            want = "Cooperlake" if "avx512_bf16" in flags else "SkylakeX"
        elif "avx2" in flags and "fma" in flags:
            want = "Haswell"
        else:
            self.skipTest("CPU without AVX2: OpenBLAS's own choice stands")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_")}
        env.pop("YUNMIN_NO_REEXEC", None)
        p = subprocess.run([YUNMIN, "inspect", "--json", self.dir], capture_output=True,
                           env=env, timeout=TIMEOUT)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["blas_core"].lower(), want.lower())
        # A value the user set is kept, even a weaker one.
        env["OPENBLAS_CORETYPE"] = "Haswell"
        p = subprocess.run([YUNMIN, "inspect", "--json", self.dir], capture_output=True,
                           env=env, timeout=TIMEOUT)
        self.assertEqual(json.loads(p.stdout)["blas_core"].lower(), "haswell")

    def test_corrupt_checkpoint_is_a_runtime_error(self):
        bad = tempfile.mkdtemp(prefix="yunmin-cli-bad-")
        try:
            shutil.copy(os.path.join(self.dir, "config.json"), bad)
            shutil.copy(os.path.join(self.dir, "tokenizer.json"), bad)
            with open(os.path.join(bad, "model.safetensors"), "wb") as f:
                f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
            self.assert_one_line_error(1, ["logits", "--model", bad, "--ids", "1"])
            self.assert_one_line_error(1, ["inspect", bad])
        finally:
            shutil.rmtree(bad)


def read_safetensors(path):
    """name -> (dtype, shape, flat list of values) for I32 / F64 tensors (enough for fixtures)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        raw = data[8 + n + b:8 + n + end]
        fmt = {"I32": "i", "F64": "d", "F32": "f"}[e["dtype"]]
        out[name] = (e["dtype"], e["shape"], list(struct.unpack("<%d%s" % (len(raw) // struct.calcsize(fmt), fmt), raw)))
    return out


class TestAdapters(CliTestBase):
    """--adapter on the PEFT fixtures (tests/fixtures/peft/, made with peft 0.21)."""

    @classmethod
    def setUpClass(cls):
        cls.peft = os.path.join(FIXTURES, "peft")
        with open(os.path.join(cls.peft, "manifest.json")) as f:
            cls.cases = {c["name"]: c for c in json.load(f)["cases"]}

    def case_args(self, name):
        c = self.cases[name]
        model = os.path.normpath(os.path.join(self.peft, c["base"]))
        if "set" in c:
            ads = ["--adapter", os.path.join(self.peft, c["set"])]
        else:
            ads = sum((["--adapter", os.path.join(self.peft, a)] for a in c["adapters"]), [])
        ref = read_safetensors(os.path.join(self.peft, c["logits"]))
        return c, model, ads, ref["ids"][2], ref["logits"][2]

    def check_case(self, name):
        c, model, ads, ids, want = self.case_args(name)
        rows = self.json_out(["logits", "--model", model, "--ids", ",".join(map(str, ids))] +
                             ads)["logits"]
        V = len(rows[0])
        self.assertEqual(len(rows), len(ids))
        worst = max(abs(rows[t][v] - want[t * V + v]) for t in range(len(ids)) for v in range(V))
        self.assertLess(worst, c["atol_tight"], "%s: logits off by %g" % (name, worst))
        return model, ads, ids, rows

    def test_one_adapter_matches_the_peft_reference(self):
        self.check_case("lora-all4-m40")
        self.check_case("ia3-ff-m40")

    def test_several_adapters_compose(self):
        self.check_case("compose-m40")

    def test_adapter_set_directory(self):
        self.check_case("hybrid-m40")

    def test_greedy_generate_with_adapter_follows_its_logits(self):
        model, ads, _, _ = self.check_case("lora-all4-m40")
        rc, out, err = run(["generate", "--model", model, "-p", "First Citizen:", "-n", "6",
                            "--temperature", "0"] + ads)
        self.assertEqual(rc, 0, err)
        rc2, base_out, _ = run(["generate", "--model", model, "-p", "First Citizen:", "-n", "6",
                                "--temperature", "0"])
        self.assertEqual(rc2, 0)
        self.assertNotEqual(out, base_out, "the adapter changed nothing")
        prompt = self.json_out(["tokenize", "--model", model, "--text", "First Citizen:"])
        ids = prompt["ids"] if isinstance(prompt, dict) else prompt
        gen = []
        for _ in range(6):
            rows = self.json_out(["logits", "--model", model, "--ids",
                                  ",".join(map(str, ids + gen))] + ads)["logits"]
            last = rows[-1][:4099]
            gen.append(max(range(len(last)), key=lambda i: (last[i], -i)))
        text = self.json_out(["detokenize", "--model", model, "--ids", ",".join(map(str, gen))])
        text = text["text"] if isinstance(text, dict) else text
        self.assertEqual(out.decode("utf-8"), text)

    def test_bad_adapters_are_one_line_runtime_errors(self):
        model = os.path.normpath(os.path.join(self.peft, self.cases["lora-all4-m40"]["base"]))
        self.assert_one_line_error(1, ["logits", "--model", model, "--ids", "1",
                                       "--adapter", "/nonexistent/adapter"], mention="adapter")
        # an adapter made for another base model: the shapes disagree
        self.assert_one_line_error(1, ["logits", "--model", model, "--ids", "1", "--adapter",
                                       os.path.join(self.peft, "rslora-regex-m37")],
                                   mention="the base model wants")
        bad = tempfile.mkdtemp(prefix="yunmin-cli-adapter-")
        try:
            with open(os.path.join(bad, "adapter_config.json"), "w") as f:
                json.dump({"peft_type": "PREFIX_TUNING"}, f)
            self.assert_one_line_error(1, ["generate", "--model", model, "-p", "a",
                                           "--adapter", bad], mention="peft_type")
        finally:
            shutil.rmtree(bad)
        self.assert_one_line_error(2, ["logits", "--model", model, "--ids", "1", "--adapter"],
                                   mention="--adapter")


def write_profile(path, n_layer, d_inner, n_state, keep_ch=None, keep_st=None, order=None,
                  meta=None):
    """A yunmin.sparsity.safetensors (docs/ARCHITECTURE.md §4). keep_ch[l][d], keep_st[l][d][n] booleans
    (default all kept), order[l] a list (default identity). Returns the kept channel count."""
    header = {"__metadata__": meta or {"format": "yunmin-sparsity", "version": "1",
                                       "method": "random"}}
    blobs, off, kept = [], 0, 0
    for l in range(n_layer):
        ch = [keep_ch[l][d] if keep_ch else True for d in range(d_inner)]
        st = [keep_st[l][d][n] if keep_st else True for d in range(d_inner)
              for n in range(n_state)]
        od = order[l] if order else list(range(d_inner))
        kept += sum(ch)
        for name, dt, shape, b in (
                ("channel_logits", "F32", [d_inner],
                 struct.pack("<%df" % d_inner, *[1.0 if k else -1.0 for k in ch])),
                ("state_logits", "F32", [d_inner, n_state],
                 struct.pack("<%df" % len(st), *[0.5 if k else -0.5 for k in st])),
                ("scan_order", "I32", [d_inner], struct.pack("<%di" % d_inner, *od))):
            header["layers.%d.%s" % (l, name)] = {"dtype": dt, "shape": shape,
                                                  "data_offsets": [off, off + len(b)]}
            blobs.append(b)
            off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    return kept


class TestSparsity(CliTestBase):
    """--sparsity on logits / generate / inspect / bench with a tiny random model. The C unit
    tests compare the served model with the masked reference; here: the flag is honoured
    (masks change the logits, a pure reordering does not), errors are one line, JSON keys."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="yunmin-cli-sparse-")
        shutil.copy(os.path.join(FIXTURES, "gpt-neox", "tokenizer.json"), cls.dir)
        write_tiny_mamba(cls.dir, seed=3)
        rng = random.Random(5)
        cls.L, cls.DI, cls.N = 2, 32, 4
        cls.orders = [rng.sample(range(cls.DI), cls.DI) for _ in range(cls.L)]
        cls.keep_ch = [[rng.random() < 0.6 for _ in range(cls.DI)] for _ in range(cls.L)]
        cls.keep_st = [[[rng.random() < 0.5 for _ in range(cls.N)] for _ in range(cls.DI)]
                       for _ in range(cls.L)]
        cls.p_perm = os.path.join(cls.dir, "perm.safetensors")
        write_profile(cls.p_perm, cls.L, cls.DI, cls.N, order=cls.orders)
        cls.p_mask = os.path.join(cls.dir, "mask.safetensors")
        cls.kept = write_profile(cls.p_mask, cls.L, cls.DI, cls.N, cls.keep_ch, cls.keep_st,
                                 cls.orders)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir)

    def logits(self, *extra):
        return self.json_out(["logits", "--model", self.dir, "--ids", "5,17,300,2"] +
                             list(extra))["logits"]

    def test_reordering_alone_keeps_the_logits_and_masks_change_them(self):
        dense = self.logits()
        perm = self.logits("--sparsity", self.p_perm)
        masked = self.logits("--sparsity", self.p_mask)
        d_perm = max(abs(a - b) for r1, r2 in zip(dense, perm) for a, b in zip(r1, r2))
        d_mask = max(abs(a - b) for r1, r2 in zip(dense, masked) for a, b in zip(r1, r2))
        self.assertLess(d_perm, 1e-4, "a scan order is an exact reparametrization")
        self.assertGreater(d_mask, 1e-3, "the masks were ignored")

    def test_malformed_or_foreign_profiles_are_one_line_runtime_errors(self):
        bad = os.path.join(self.dir, "bad.safetensors")
        order = [list(range(self.DI)) for _ in range(self.L)]
        order[1][3] = 4
        write_profile(bad, self.L, self.DI, self.N, order=order)
        self.assert_one_line_error(1, ["logits", "--model", self.dir, "--ids", "1",
                                       "--sparsity", bad], mention="layers.1.scan_order")
        write_profile(bad, self.L, self.DI + 2, self.N)
        self.assert_one_line_error(1, ["logits", "--model", self.dir, "--ids", "1",
                                       "--sparsity", bad], mention="d_inner")
        write_profile(bad, self.L, self.DI, self.N, meta={"format": "other", "version": "1",
                                                          "method": "x"})
        self.assert_one_line_error(1, ["generate", "--model", self.dir, "-p", "hi",
                                       "--sparsity", bad], mention="format")
        self.assert_one_line_error(1, ["inspect", self.dir, "--sparsity",
                                       os.path.join(self.dir, "missing.safetensors")],
                                   mention="missing.safetensors")
        self.assert_one_line_error(2, ["logits", "--model", self.dir, "--ids", "1",
                                       "--sparsity"])

    def test_inspect_reports_the_profile(self):
        info = self.json_out(["inspect", self.dir, "--json", "--sparsity", self.p_mask])
        sp = info["sparsity"]
        self.assertEqual(sp["path"], self.p_mask)
        self.assertEqual(sp["method"], "random")
        self.assertAlmostEqual(sp["channel_live_fraction"], self.kept / (self.L * self.DI))
        live = sum(self.keep_ch[l][d] and self.keep_st[l][d][n] for l in range(self.L)
                   for d in range(self.DI) for n in range(self.N))
        self.assertAlmostEqual(sp["state_live_fraction"], live / (self.L * self.DI * self.N))
        self.assertEqual([e["channels"] for e in sp["layers"]],
                         [sum(self.keep_ch[l]) for l in range(self.L)])
        self.assertIsNone(self.json_out(["inspect", self.dir, "--json"])["sparsity"])

    def test_generate_and_bench_take_the_profile(self):
        rc, out, err = run(["generate", "--model", self.dir, "-p", "Hello", "-n", "4",
                            "--temperature", "0", "--sparsity", self.p_mask])
        self.assertEqual(rc, 0, err)
        b = self.json_out(["bench", "--model", self.dir, "--json", "--no-floors", "--prompt",
                           "8", "--steps", "2", "--batches", "1,2", "--sparsity", self.p_mask])
        self.assertEqual(b["sparsity"], self.p_mask)
        self.assertAlmostEqual(b["channel_live_fraction"], self.kept / (self.L * self.DI))
        for k in ("dense", "decode_speedup", "prefill_speedup", "ideal_byte_ratio",
                  "flops_per_token_scan", "scan_block_fill"):
            self.assertIn(k, b)
        self.assertLess(b["weight_bytes"], b["dense"]["weight_bytes"])
        self.assertEqual(set(b["decode_speedup"]), {"1", "2"})
        # state_bytes is the compact state the server allocates for this profile: per layer
        # the kept channels' conv windows and the scan plan's lanes, each padded to 16 floats
        info = self.json_out(["inspect", self.dir, "--json", "--sparsity", self.p_mask])
        k = info["config"]["d_conv"] - 1
        pad = lambda n: (n + 15) // 16 * 16
        compact = 4 * sum(pad(e["channels"] * k) + pad(e["scan_lanes"])
                          for e in info["sparsity"]["layers"])
        self.assertEqual(b["state_bytes"], compact)
        self.assertLess(b["state_bytes"], info["state_bytes"])
        b = self.json_out(["bench", "--model", self.dir, "--json", "--no-floors", "--prompt",
                           "8", "--steps", "2", "--batches", "1"])
        self.assertIsNone(b["sparsity"])
        self.assertEqual(b["channel_live_fraction"], 1.0)


class TestCalibrate(CliTestBase):
    """`yunmin calibrate` on the tiny random model: the profile it writes loads, its order is a
    permutation that puts kept channels first, the reported derived path is no worse than the
    identity one, baseline masks drop the requested fractions, and a seeded random baseline
    is reproducible."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="yunmin-cli-calib-")
        shutil.copy(os.path.join(FIXTURES, "gpt-neox", "tokenizer.json"), cls.dir)
        write_tiny_mamba(cls.dir, seed=4)
        cls.text = os.path.join(cls.dir, "calib.txt")
        with open(cls.text, "w") as f:
            f.write("The quick brown fox jumps over the lazy dog. " * 20)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir)

    def calibrate(self, out, *extra):
        return self.json_out(["calibrate", "--model", self.dir, "--text", self.text, "--out",
                              out, "--tokens", "40", "--json"] + list(extra))

    def read_profile(self, path):
        with open(path, "rb") as f:
            data = f.read()
        n = struct.unpack("<Q", data[:8])[0]
        hdr = json.loads(data[8:8 + n])
        body = data[8 + n:]
        out = {}
        for name, t in hdr.items():
            if name == "__metadata__":
                continue
            a, b = t["data_offsets"]
            fmt = "<%d%s" % ((b - a) // 4, "i" if t["dtype"] == "I32" else "f")
            out[name] = struct.unpack(fmt, body[a:b])
        return hdr["__metadata__"], out

    def test_correlation_order_with_baseline_masks(self):
        out = os.path.join(self.dir, "mag.safetensors")
        r = self.calibrate(out, "--baseline", "magnitude", "--channel-sparsity", "0.25",
                           "--state-sparsity", "0.5", "--two-opt")
        self.assertEqual(r["method"], "magnitude")
        self.assertEqual(r["order"], "correlation-nn+2opt")
        self.assertLessEqual(r["path_cost"]["derived"], r["path_cost"]["identity"] + 1e-9)
        meta, t = self.read_profile(out)
        self.assertEqual((meta["format"], meta["version"], meta["method"]),
                         ("yunmin-sparsity", "1", "magnitude"))
        for l in range(2):
            ch = t["layers.%d.channel_logits" % l]
            st = t["layers.%d.state_logits" % l]
            order = t["layers.%d.scan_order" % l]
            self.assertEqual(sorted(order), list(range(32)))
            kept = [d for d in range(32) if ch[d] > 0]
            self.assertEqual(len(kept), 24)                      # 25 % of 32 dropped
            self.assertEqual(sorted(order[:24]), kept)           # kept channels first
            live = sum(st[d * 4 + n] > 0 for d in kept for n in range(4))
            self.assertEqual(live, 48)                           # half of 24 * 4
            self.assertEqual(r["layers"][l]["channels_kept"], 24)
        m = os.path.join(self.dir, "mask-order.safetensors")
        r2 = self.calibrate(m, "--sparsity", out, "--order", "mask")
        self.assertEqual(r2["order"], "mask-nn")
        self.assertEqual(set(r2["block_fill"]), {"identity", "random", "derived", "mask"})
        self.assertEqual(sorted(self.read_profile(m)[1]["layers.0.scan_order"]), list(range(32)))
        info = self.json_out(["inspect", self.dir, "--json", "--sparsity", out])
        self.assertAlmostEqual(info["sparsity"]["channel_live_fraction"], 0.75)
        self.assertAlmostEqual(info["sparsity"]["state_live_fraction"], 96 / 256)

    def test_masks_from_a_profile_and_seeded_random_baseline(self):
        a = os.path.join(self.dir, "ra.safetensors")
        b = os.path.join(self.dir, "rb.safetensors")
        self.calibrate(a, "--baseline", "random", "--channel-sparsity", "0.5", "--seed", "9")
        self.calibrate(b, "--baseline", "random", "--channel-sparsity", "0.5", "--seed", "9")
        self.assertEqual(self.read_profile(a)[1], self.read_profile(b)[1])
        c = os.path.join(self.dir, "rc.safetensors")
        r = self.calibrate(c, "--sparsity", a, "--order", "identity")
        self.assertEqual(r["method"], "random")
        ta, tc = self.read_profile(a)[1], self.read_profile(c)[1]
        for l in range(2):
            self.assertEqual(ta["layers.%d.channel_logits" % l],
                             tc["layers.%d.channel_logits" % l])
            self.assertEqual(tc["layers.%d.scan_order" % l], tuple(range(32)))
        # The order only reparametrizes: logits under a and c agree.
        la = self.json_out(["logits", "--model", self.dir, "--ids", "3,9,27", "--sparsity", a])
        lc = self.json_out(["logits", "--model", self.dir, "--ids", "3,9,27", "--sparsity", c])
        worst = max(abs(x - y) for r1, r2 in zip(la["logits"], lc["logits"])
                    for x, y in zip(r1, r2))
        self.assertLess(worst, 1e-4)

    def test_usage_errors(self):
        out = os.path.join(self.dir, "x.safetensors")
        base = ["calibrate", "--model", self.dir, "--text", self.text]
        self.assert_one_line_error(2, base, mention="--out")
        self.assert_one_line_error(2, ["calibrate", "--model", self.dir, "--out", out],
                                   mention="--text")
        self.assert_one_line_error(2, base + ["--out", out, "--baseline", "top"],
                                   mention="magnitude")
        self.assert_one_line_error(2, base + ["--out", out, "--channel-sparsity", "0.5"],
                                   mention="--baseline")
        self.assert_one_line_error(2, base + ["--out", out, "--baseline", "random",
                                              "--channel-sparsity", "1.5"], mention="[0, 1]")
        self.assert_one_line_error(2, ["calibrate", "--model", "synthetic:mamba-130m",
                                       "--text", self.text, "--out", out],
                                   mention="--tokenizer")
        self.assert_one_line_error(1, base + ["--out", out, "--sparsity",
                                              os.path.join(self.dir, "none")], mention="none")


def read_raw_safetensors(path):
    """(header dict, data bytes) of a .safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_raw_safetensors(path, header, data, drop=()):
    """Write header/data back, leaving out the tensors named in drop (spans re-laid)."""
    out_h, blobs, off = {}, [], 0
    for name, e in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                          key=lambda kv: kv[1]["data_offsets"][0]):
        if name in drop:
            continue
        b = data[e["data_offsets"][0]:e["data_offsets"][1]]
        out_h[name] = dict(e, data_offsets=[off, off + len(b)])
        blobs.append(b)
        off += len(b)
    h = json.dumps(out_h).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


class TestWeights(CliTestBase):
    """--weights and `yunmin quantize` on a tiny random F32 model: the int8 checkpoint follows
    docs/FORMATS.md (checked here from the f32 values, in Python), loads in place and serves
    exactly what --weights int8 serves; errors are one line with the right exit code."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="yunmin-cli-weights-")
        cls.src = os.path.join(cls.dir, "f32")
        os.mkdir(cls.src)
        shutil.copy(os.path.join(FIXTURES, "gpt-neox", "tokenizer.json"), cls.src)
        write_tiny_mamba(cls.src, seed=11)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir)

    def logits(self, model, *extra):
        return self.json_out(["logits", "--model", model, "--ids", "1,2,3,4"] + list(extra))["logits"]

    def test_bad_weights_are_usage_errors(self):
        for cmd in (["logits", "--model", self.src, "--ids", "1"], ["bench", "--no-floors"],
                    ["perplexity", "--model", self.src, "--file", "x"],
                    ["generate", "--model", self.src, "-p", "a"]):
            self.assert_one_line_error(2, cmd + ["--weights", "q4_0"], mention="q4_0")
        self.assert_one_line_error(2, ["quantize", "--model", self.src], mention="--out")
        self.assert_one_line_error(2, ["quantize", "--model", self.src, "--out", self.src],
                                   mention="differ")
        self.assert_one_line_error(2, ["quantize", "--model", self.src, "--out",
                                       os.path.join(self.dir, "x"), "--weights", "auto"])
        self.assert_one_line_error(1, ["quantize", "--model", os.path.join(self.dir, "none"),
                                       "--out", os.path.join(self.dir, "y")])

    def test_quantize_int8_format_and_exact_serving(self):
        out = os.path.join(self.dir, "q8")
        rc, _, err = run(["quantize", "--model", self.src, "--out", out])
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.json_out(["inspect", out, "--json"])["weights"], "int8")
        h, data = read_raw_safetensors(os.path.join(out, "model.safetensors"))
        hs, ds = read_raw_safetensors(os.path.join(self.src, "model.safetensors"))
        name = "backbone.layers.1.mixer.in_proj.weight"
        self.assertEqual(h[name]["dtype"], "I8")
        self.assertEqual(h[name + "_scale"]["dtype"], "F32")
        rows, cols = h[name]["shape"]
        self.assertEqual(h[name + "_scale"]["shape"], [rows])
        q = struct.unpack("<%db" % (rows * cols), data[slice(*h[name]["data_offsets"])])
        sc = struct.unpack("<%df" % rows, data[slice(*h[name + "_scale"]["data_offsets"])])
        w = struct.unpack("<%df" % (rows * cols), ds[slice(*hs[name]["data_offsets"])])
        for r in range(rows):
            amax = max(abs(v) for v in w[r * cols:(r + 1) * cols])
            self.assertAlmostEqual(sc[r], amax / 127, delta=1e-6 * amax)
            for c in range(cols):
                self.assertLessEqual(abs(q[r * cols + c] - w[r * cols + c] / sc[r]), 0.5 + 1e-3)
        # the small tensors are copied as they were
        n2 = "backbone.layers.0.mixer.A_log"
        self.assertEqual(h[n2]["dtype"], "F32")
        self.assertEqual(data[slice(*h[n2]["data_offsets"])], ds[slice(*hs[n2]["data_offsets"])])
        # served in place: the same logits as --weights int8 from the f32 checkpoint, close to f32
        a = self.logits(out)
        self.assertEqual(a, self.logits(self.src, "--weights", "int8"))
        f = self.logits(self.src)
        worst = max(abs(x - y) for ra, rf in zip(a, f) for x, y in zip(ra, rf))
        scale = max(abs(x) for rf in f for x in rf)
        self.assertLess(worst, 0.1 * scale)
        self.assertGreater(worst, 0.0)  # int8 does change them
        # loaded as f32, q * scale: close to the int8 serving with f32 activations
        b = self.logits(out, "--weights", "f32")
        self.assertLess(max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)), 0.1 * scale)
        # a missing scale tensor: one line naming the matrix, exit 1
        bad = os.path.join(self.dir, "bad")
        shutil.copytree(out, bad)
        write_raw_safetensors(os.path.join(bad, "model.safetensors"), h, data,
                              drop=(name + "_scale",))
        self.assert_one_line_error(1, ["logits", "--model", bad, "--ids", "1"], mention=name)

    def test_bf16_serving_and_bench_json(self):
        out = os.path.join(self.dir, "b16")
        rc, _, err = run(["quantize", "--model", self.src, "--out", out, "--weights", "bf16"])
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.json_out(["inspect", out, "--json"])["weights"], "bf16")
        self.assertEqual(self.logits(out), self.logits(self.src, "--weights", "bf16"))
        j = self.json_out(["bench", "--model", out, "--json", "--no-floors", "--batches", "1",
                           "--prompt", "4", "--steps", "2"])
        self.assertEqual(j["weights"], "bf16")
        j32 = self.json_out(["bench", "--model", out, "--json", "--no-floors", "--batches", "1",
                             "--prompt", "4", "--steps", "2", "--weights", "f32"])
        self.assertEqual(j32["weights"], "f32")
        self.assertLess(j["weight_bytes"], j32["weight_bytes"])
        self.assertGreater(j["rss_bytes"], 0)



class TestBenchFloor(CliTestBase):
    """`bench --json --rounds N`: the bandwidth probe and batch-1 decode alternate in N rounds.
    The figures `bench` derives (best of the rounds, floor fractions best over best, each
    round's own fraction and their median, with and without the state bytes) are recomputed
    here from the per-round measurements and the byte counts it reports; every fraction must
    be positive. How close decode comes to the floor is a benchmark's question, not this
    test's (docs/BENCHMARKS.md): on a loaded machine or under a sanitizer a single round's
    pair, and even best over best, can land above 1."""

    ROUNDS = 3

    def check_floor_fields(self, j, n_rounds):
        rel = 1e-4  # the JSON carries 6 significant digits
        self.assertEqual(j["rounds"], n_rounds)
        bw_r, dec_r = j["bandwidth_gb_s_rounds"], j["decode1_tok_s_rounds"]
        self.assertEqual(len(bw_r), n_rounds)
        self.assertEqual(len(dec_r), n_rounds)
        self.assertTrue(all(v > 0 for v in bw_r + dec_r), (bw_r, dec_r))
        self.assertAlmostEqual(j["bandwidth_gb_s"], max(bw_r), delta=rel * max(bw_r))
        self.assertAlmostEqual(j["decode_tok_s"]["1"], max(dec_r), delta=rel * max(dec_r))
        for suffix, nbytes in (("", j["weight_bytes"]),
                               ("_with_state", j["weight_bytes"] + 2 * j["state_bytes"])):
            key = "decode_floor%s_fraction" % suffix
            want = max(dec_r) / (max(bw_r) * 1e9 / nbytes)
            self.assertAlmostEqual(j[key], want, delta=2 * rel * want, msg=key)
            per_round = [d / (b * 1e9 / nbytes) for b, d in zip(bw_r, dec_r)]
            got = j[key + "_rounds"]
            self.assertEqual(len(got), n_rounds, key)
            for g, w in zip(got, per_round):
                self.assertAlmostEqual(g, w, delta=2 * rel * w, msg=key)
            med = sorted(per_round)[n_rounds // 2] if n_rounds % 2 else \
                0.5 * (sorted(per_round)[n_rounds // 2 - 1] + sorted(per_round)[n_rounds // 2])
            self.assertAlmostEqual(j[key + "_median"], med, delta=2 * rel * med, msg=key)
            for f in got + [j[key], j[key + "_median"]]:
                self.assertGreater(f, 0.0, key)

    def test_rounds_pair_the_probe_with_decode(self):
        for extra in ([], ["--arch", "mamba2"]):
            j = self.json_out(["bench", "--json", "--rounds", str(self.ROUNDS), "--batches",
                               "1,2", "--prompt", "4", "--steps", "4", "--threads", "1",
                               "--windows", "2"] + extra)
            self.check_floor_fields(j, self.ROUNDS)
            self.assertEqual(sorted(j["decode_tok_s"]), ["1", "2"])
        j = self.json_out(["bench", "--json", "--rounds", "2", "--batches", "1", "--prompt", "4",
                           "--steps", "4", "--threads", "1", "--windows", "2"])
        self.check_floor_fields(j, 2)

    def test_windows_pair_each_step_with_the_passes_beside_it(self):
        # --windows N: N batch-1 steps, each against the faster of the two passes of the
        # model's own bytes beside it. The summary figures are recomputed from the windows.
        for extra in ([], ["--arch", "mamba2"]):
            j = self.json_out(["bench", "--json", "--rounds", "1", "--batches", "1", "--prompt",
                               "4", "--steps", "2", "--threads", "1", "--windows", "5"] + extra)
            w = j["decode_floor_with_state_windows"]
            self.assertEqual(j["floor_windows"], 5)
            self.assertEqual(len(w), 5)
            self.assertTrue(all(v > 0 for v in w), w)
            sw = sorted(w)
            rel = 2e-4
            for key, want in (("median", sw[2]), ("min", sw[0]), ("max", sw[4]),
                              ("q25", sw[1]), ("q75", sw[3])):
                got = j["decode_floor_with_state_window_" + key]
                self.assertAlmostEqual(got, want, delta=rel * want, msg=key)
            share = j["weight_bytes"] / (j["weight_bytes"] + 2 * j["state_bytes"])
            self.assertAlmostEqual(j["decode_floor_window_median"], sw[2] * share,
                                   delta=rel * sw[2])
            self.assertGreater(j["decode_floor_with_state_window_best_over_best"], 0)
            cpu = [j["decode_floor_with_state_window_cpu_" + k] for k in ("q25", "median", "q75")]
            self.assertTrue(0 < cpu[0] <= cpu[1] <= cpu[2], cpu)
            self.assertGreater(j["bandwidth_gb_s_window_median"], 0)
        for extra in (["--windows", "0"], ["--no-floors"]):
            j = self.json_out(["bench", "--json", "--batches", "1", "--prompt", "4", "--steps",
                               "1", "--threads", "1", "--rounds", "1"] + extra)
            self.assertEqual(j["floor_windows"], 0)
            self.assertEqual(j["decode_floor_with_state_windows"], [])
            self.assertEqual(j["decode_floor_with_state_window_median"], 0)
            self.assertEqual(j["decode_floor_with_state_window_cpu_median"], 0)
        self.assert_one_line_error(2, ["bench", "--windows", "-1", "--json"], mention="windows")

    def test_batch_16_pairs_with_batch_1_in_every_round(self):
        j = self.json_out(["bench", "--json", "--rounds", "2", "--batches", "1,16", "--prompt",
                           "4", "--steps", "2", "--threads", "1", "--windows", "0", "--arch",
                           "mamba2"])
        d1, d16 = j["decode1_tok_s_rounds"], j["decode16_tok_s_rounds"]
        self.assertEqual((len(d1), len(d16)), (2, 2))
        rel = 2e-4
        self.assertAlmostEqual(j["decode_tok_s"]["16"], max(d16), delta=rel * max(d16))
        ratios = [b / a for a, b in zip(d1, d16)]
        for g, w in zip(j["decode_batch16_speedup_rounds"], ratios):
            self.assertAlmostEqual(g, w, delta=rel * w)
        med = 0.5 * (ratios[0] + ratios[1])
        self.assertAlmostEqual(j["decode_batch16_speedup_median"], med, delta=rel * med)
        self.assertAlmostEqual(j["decode_batch16_speedup"], max(d16) / max(d1),
                               delta=rel * max(d16) / max(d1))
        j = self.json_out(["bench", "--json", "--rounds", "2", "--batches", "1,4", "--prompt",
                           "4", "--steps", "1", "--threads", "1", "--windows", "0"])
        self.assertEqual(j["decode16_tok_s_rounds"], [])
        self.assertEqual(j["decode_batch16_speedup_median"], 0)

    def test_without_floors_or_batch_1(self):
        j = self.json_out(["bench", "--json", "--no-floors", "--rounds", "4", "--batches", "1",
                           "--prompt", "4", "--steps", "1", "--threads", "1"])
        self.assertEqual(j["rounds"], 1)  # nothing to pair a decode with
        self.assertEqual(len(j["decode1_tok_s_rounds"]), 1)
        for key in ("bandwidth_gb_s_rounds", "decode_floor_fraction_rounds",
                    "decode_floor_with_state_fraction_rounds"):
            self.assertEqual(j[key], [], key)
        self.assertEqual(j["decode_floor_fraction"], 0)
        self.assertEqual(j["decode_floor_fraction_median"], 0)
        j = self.json_out(["bench", "--json", "--rounds", "2", "--batches", "2", "--prompt", "4",
                           "--steps", "1", "--threads", "1"])
        self.assertEqual(len(j["bandwidth_gb_s_rounds"]), 2)
        self.assertEqual(j["decode1_tok_s_rounds"], [])
        self.assertEqual(j["decode_floor_fraction_rounds"], [])
        self.assertEqual(j["decode_floor_fraction"], 0)

    def test_bad_rounds(self):
        for v in ("0", "-1", "x", "2x"):
            self.assert_one_line_error(2, ["bench", "--rounds", v], mention="rounds")

def safetensors_header(path):
    """The JSON header of a safetensors file (name -> dtype, shape, offsets) and its data size."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data_bytes = os.path.getsize(path) - 8 - n
    header.pop("__metadata__", None)
    return header, data_bytes


def family_dims(cfg):
    """The engine's dimensions of a Mamba-2 or Falcon-Mamba config.json, read here from the
    Hugging Face keys (or mamba_ssm's raw ones) with the writing classes' defaults."""
    if "ssm_cfg" in cfg:                                   # mamba_ssm MambaConfig, Mamba2 layer
        ssm = cfg["ssm_cfg"]
        d = cfg["d_model"]
        di = ssm.get("expand", 2) * d
        pad = cfg.get("pad_vocab_size_multiple", 8)
        return {"arch": "mamba2", "d_model": d, "n_layer": cfg["n_layer"], "d_inner": di,
                "d_state": ssm.get("d_state", 128), "d_conv": ssm.get("d_conv", 4),
                "head_dim": ssm.get("headdim", 64), "n_head": di // ssm.get("headdim", 64),
                "n_group": ssm.get("ngroups", 1),
                "n_vocab": (cfg["vocab_size"] + pad - 1) // pad * pad}
    d = cfg["hidden_size"]
    out = {"d_model": d, "n_layer": cfg["num_hidden_layers"], "d_state": cfg["state_size"],
           "d_conv": cfg["conv_kernel"], "n_vocab": cfg["vocab_size"]}
    if cfg["model_type"] == "mamba2":
        out.update(arch="mamba2", d_inner=cfg["expand"] * d, n_head=cfg["num_heads"],
                   head_dim=cfg["head_dim"], n_group=cfg["n_groups"])
    else:
        out.update(arch="falcon_mamba", d_inner=cfg.get("intermediate_size") or cfg["expand"] * d,
                   dt_rank=cfg["time_step_rank"])
    return out


def family_state_bytes(dims):
    """A sequence's f32 state: per layer the conv window over the conv channels (d_inner, or
    x|B|C for Mamba-2) of d_conv - 1 inputs, and the SSM state ([d_inner, d_state], or
    [heads, head_dim, d_state] for Mamba-2)."""
    if dims["arch"] == "mamba2":
        conv_ch = dims["d_inner"] + 2 * dims["n_group"] * dims["d_state"]
        ssm = dims["n_head"] * dims["head_dim"] * dims["d_state"]
    else:
        conv_ch, ssm = dims["d_inner"], dims["d_inner"] * dims["d_state"]
    return 4 * dims["n_layer"] * (conv_ch * (dims["d_conv"] - 1) + ssm)


class TestMamba2AndFalconMamba(CliTestBase):
    """`bench --arch`, `inspect` and `perplexity` on Mamba-2 and Falcon-Mamba: the synthetic
    130m shapes' JSON fields and state and weight sizes computed here from the shapes, and the
    fixture checkpoints of tests/fixtures/mamba2/ (made with transformers by
    make_mamba2_fixtures.py): inspect's dimensions and counts against their config.json and
    safetensors header, perplexity against the value computed here from the fixtures' float64
    reference logits on the same tokens."""

    M2 = os.path.join("mamba2", "%s")
    FIXTURE_MODELS = ("m2-g1-k4-f32", "m2-g2-bias-untied-k3-bf16", "m2-g3-odd-k2-f32",
                      "ss-m2-g1-k4-f32", "fm-bias-k3-f32", "fm-untied-k4-bf16")

    def fixture(self, name):
        return os.path.join(FIXTURES, "mamba2", name)

    def test_bench_arch_json_fields_and_state_bytes(self):
        # mamba2-130m (state-spaces/mamba2-130m) and mamba-130m's shapes, as the help says
        shapes = {
            "mamba2": {"arch": "mamba2", "d_model": 768, "n_layer": 24, "d_inner": 1536,
                       "d_state": 128, "d_conv": 4, "n_head": 24, "head_dim": 64, "n_group": 1,
                       "n_vocab": 50288},
            "falcon_mamba": {"arch": "falcon_mamba", "d_model": 768, "n_layer": 24,
                             "d_inner": 1536, "d_state": 16, "d_conv": 4, "dt_rank": 48,
                             "n_vocab": 50280},
        }
        for arch, dims in shapes.items():
            j = self.json_out(["bench", "--arch", arch, "--json", "--no-floors", "--batches",
                               "1,2", "--prompt", "4", "--steps", "1", "--threads", "1"])
            for key in ("model", "threads", "weights", "weight_bytes", "rss_bytes",
                        "prefill_tokens", "prefill_tok_s", "decode_tok_s", "arch",
                        "state_bytes", "decode_floor_with_state_tok_s",
                        "decode_floor_with_state_fraction", "prefill_vs_token_by_token",
                        "scan_us_per_token"):
                self.assertIn(key, j, (arch, key))
            self.assertEqual(j["arch"], arch)
            self.assertEqual(j["weights"], "f32")
            self.assertEqual(sorted(j["decode_tok_s"]), ["1", "2"])
            self.assertTrue(all(v > 0 for v in j["decode_tok_s"].values()), j["decode_tok_s"])
            self.assertGreater(j["prefill_tok_s"], 0)
            self.assertEqual(j["state_bytes"], family_state_bytes(dims), arch)
            # every parameter in f32, the head tied: counted here from the shapes
            d, di, n, L, V = (dims["d_model"], dims["d_inner"], dims["d_state"], dims["n_layer"],
                              dims["n_vocab"])
            if arch == "mamba2":
                h, g, k = dims["n_head"], dims["n_group"], dims["d_conv"]
                conv = di + 2 * g * n
                per_layer = (d + (di + conv + h) * d + conv * k + conv + 3 * h + di + d * di)
            else:
                r, k = dims["dt_rank"], dims["d_conv"]
                per_layer = (d + 2 * di * d + di * k + di + (r + 2 * n) * di + di * r + di
                             + di * n + di + d * di)
            self.assertEqual(j["weight_bytes"], 4 * (V * d + L * per_layer + d), arch)
        self.assertEqual(family_state_bytes(shapes["mamba2"]), 19390464)   # 18.49 MiB
        self.assert_one_line_error(2, ["bench", "--arch", "mamba3", "--json"], mention="mamba3")
        self.assert_one_line_error(2, ["bench", "--arch", "mamba2", "--model",
                                       self.fixture("m2-g1-k4-f32")])

    def test_inspect_fixture_checkpoints(self):
        for name in self.FIXTURE_MODELS:
            d = self.fixture(name)
            with open(os.path.join(d, "config.json")) as f:
                dims = family_dims(json.load(f))
            header, data_bytes = safetensors_header(os.path.join(d, "model.safetensors"))
            info = self.json_out(["inspect", "--json", d])
            cfg = info["config"]
            for key, want in dims.items():
                self.assertEqual(cfg[key], want, (name, key))
            self.assertEqual(info["state_bytes"], family_state_bytes(dims), name)
            self.assertEqual(info["file_bytes"], data_bytes, name)
            n_params = 0
            for e in header.values():
                n_params += math.prod(e["shape"])
            self.assertEqual(info["n_params"], n_params, name)
            self.assertEqual(info["weights"], "bf16" if "bf16" in name else "f32", name)
            rc, out, err = run(["inspect", d])
            self.assertEqual((rc, err), (0, ""), name)
            self.assertIn(("arch             %s" % dims["arch"]).encode(), out)
            self.assertIn(str(info["n_params"]).encode(), out)

    def test_perplexity_equals_the_float64_reference(self):
        scratch = tempfile.mkdtemp(prefix="yunmin-cli-m2ppl-")
        try:
            for name in self.FIXTURE_MODELS:
                d = self.fixture(name)
                src = name[3:] if name.startswith("ss-") else name    # shares its logits
                ref = read_safetensors(os.path.join(FIXTURES, "mamba2", src,
                                                    "logits.safetensors"))
                ids = ref["ids"][2]
                T, V = ref["logits"][1]
                logits = ref["logits"][2]
                # the text of exactly these ids (checked to tokenize back to them)
                text = self.json_out(["detokenize", "--model", d, "--ids",
                                      ",".join(str(i) for i in ids)])["text"]
                path = os.path.join(scratch, name + ".txt")
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
                self.assertEqual(self.json_out(["tokenize", "--model", d, "--file", path])["ids"],
                                 ids, name)
                nll = -sum(log_softmax_at(logits[(t - 1) * V:t * V], ids[t]) for t in range(1, T))
                want = nll / (T - 1)
                got = self.json_out(["perplexity", "--model", d, "--file", path, "--ctx",
                                     "1000", "--threads", "2"])
                self.assertEqual((got["tokens"], got["windows"]), (T - 1, 1), name)
                # the engine's logits are within 1e-5 of the reference's (test_mamba2.c)
                self.assertAlmostEqual(got["nll"], want, delta=1e-4, msg=name)
                self.assertAlmostEqual(got["ppl"], math.exp(want), delta=1e-4 * math.exp(want),
                                       msg=name)
                # two windows: each from a fresh state, the second's first token not scored
                got2 = self.json_out(["perplexity", "--model", d, "--file", path, "--ctx", "9"])
                w = [ids[i:i + 9] for i in range(0, T, 9)]
                w = [x for x in w if len(x) >= 2]
                self.assertEqual((got2["windows"], got2["tokens"]),
                                 (len(w), sum(len(x) - 1 for x in w)), name)
                if os.environ.get("YM_TEST_VERBOSE"):
                    print("%s: nll %.8f, reference %.8f, |diff| %.2g" %
                          (name, got["nll"], want, abs(got["nll"] - want)), file=sys.stderr)
        finally:
            shutil.rmtree(scratch)


def conformance_dirs():
    root = os.path.join(FIXTURES, "conformance") if FIXTURES else None
    if not root or not os.path.isdir(root):
        return []
    found = []
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if all(os.path.exists(os.path.join(d, f)) for f in ("config.json", "tokenizer.json")) \
                and any(f.startswith("model.safetensors") for f in os.listdir(d)):
            found.append(d)
    return found


def load_tests(loader, standard_tests, pattern):
    suite = unittest.TestSuite()
    for cls in (TestUsage, TestTokenizerOnly, TestTinyModel, TestSparsity,
                TestCalibrate, TestWeights, TestBenchFloor):
        suite.addTests(loader.loadTestsFromTestCase(cls))
    if FIXTURES and os.path.exists(os.path.join(FIXTURES, "peft", "manifest.json")):
        suite.addTests(loader.loadTestsFromTestCase(TestAdapters))
    if FIXTURES and os.path.exists(os.path.join(FIXTURES, "mamba2", "manifest.json")):
        suite.addTests(loader.loadTestsFromTestCase(TestMamba2AndFalconMamba))
    dirs = conformance_dirs()
    if not dirs:
        print("cli: no model under tests/fixtures/conformance/: real-checkpoint checks skipped",
              file=sys.stderr)
    for d in dirs:
        cls = type("TestConformance_" + os.path.basename(d).replace("-", "_"), (ModelChecks,),
                   {"dir": d})
        suite.addTests(loader.loadTestsFromTestCase(cls))
    return suite


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: test_cli.py YUNMIN_EXE FIXTURE_DIR [unittest args]")
    YUNMIN = os.path.abspath(sys.argv[1])
    FIXTURES = os.path.abspath(sys.argv[2])
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2)
