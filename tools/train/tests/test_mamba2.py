"""yunmin_train.mamba2 (Mamba-2 in PyTorch) and yunmin_train.mamba2_study.

* the toolkit forward, both SSD forms, float64 and float32, against every Mamba-2 fixture of
  tests/fixtures/mamba2/ that has logits (the float64 reference of mamba2_ref.py, which
  transformers matches where the norm is per group; manifest tolerance atol = 1e-3 *
  max(1, max |logit|));
* the chunked form against the sequential recurrence in float64 (values, final state and
  gradients), and a prefill + token-by-token continuation against one full forward;
* save -> load round trips (float32 exact, bfloat16 = the rounded weights; sharded);
* masked forwards against an independent float64 numpy reference written here from the
  equations, in which dropped heads and state entries are *removed* (never computed) rather
  than multiplied by 0;
* a tiny model saved by the toolkit served by `yunmin logits` (skipped without the binary:
  $YUNMIN_BIN or build*/tools/yunmin);
* the study's mask selection, learned-gate thresholds, counting and merge.
"""

import glob
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from conftest import FIXTURES, REPO
from yunmin_train import mamba2_study as S
from yunmin_train import safetensors_io as st
from yunmin_train.mamba2 import (Mamba2Config, Mamba2LM, load_model, save_model, ssd_chunked,
                                 ssd_sequential)

M2 = os.path.join(FIXTURES, "mamba2")


def fixture_models():
    with open(os.path.join(M2, "manifest.json"), encoding="utf-8") as f:
        man = json.load(f)
    return [e for e in man["models"] if e["kind"] in ("mamba2-hf", "mamba2-mamba_ssm")
            and e.get("logits")]


def test_the_fixture_set_is_there():
    names = {e["name"] for e in fixture_models()}
    assert {"m2-g1-k4-f32", "m2-g2-bias-untied-k3-bf16", "m2-g3-odd-k2-f32",
            "ss-m2-g1-k4-f32"} <= names


@pytest.mark.parametrize("entry", fixture_models(), ids=lambda e: e["name"])
@pytest.mark.parametrize("form", ["chunked", "sequential"])
def test_fixture_logits(entry, form):
    ref, _ = st.load_numpy(os.path.join(M2, entry["logits"]))
    ids = [int(t) for t in ref["ids"]]
    want = ref["logits"].astype(np.float64)
    scale = max(1.0, float(np.abs(want).max()))
    for dtype, tol in ((torch.float64, 1e-5 * scale), (torch.float32, entry["atol"])):
        m = load_model(os.path.join(M2, entry["dir"]), dtype=dtype).eval()
        m.set_scan(form, chunk=m.config.chunk_size)
        with torch.no_grad():
            got = m(torch.tensor([ids]))[0].double().numpy()
        assert got.shape == want.shape
        d = float(np.abs(got - want).max())
        assert d <= tol, (entry["name"], form, dtype, d, tol)
    # the float64 forward is as close as the stored float32 logits allow
    assert d <= entry["atol"]


def tiny_config(**kw):
    c = dict(vocab_size=61, hidden_size=24, state_size=8, num_hidden_layers=2, expand=2,
             conv_kernel=4, n_groups=2, head_dim=8, num_heads=6, use_bias=False)
    c.update(kw)
    return Mamba2Config(**c).check()


def spread(model, seed):
    """Larger random weights than the init, so the logits differ far beyond rounding."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.rand(p.shape, generator=g) * 1.5 - 0.5)
            elif name.endswith("dt_bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 - 1.0)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def test_chunked_equals_sequential_values_state_and_gradients():
    torch.manual_seed(0)
    Bsz, T, H, P, N = 2, 23, 3, 4, 5
    x = torch.randn(Bsz, T, H, P, dtype=torch.float64, requires_grad=True)
    dt = (torch.rand(Bsz, T, H, dtype=torch.float64) * 0.5 + 0.01).requires_grad_()
    A = -(torch.rand(H, dtype=torch.float64) * 2 + 0.1)
    Bh = torch.randn(Bsz, T, H, N, dtype=torch.float64, requires_grad=True)
    Ch = torch.randn(Bsz, T, H, N, dtype=torch.float64, requires_grad=True)
    s0 = torch.randn(Bsz, H, P, N, dtype=torch.float64)
    w = torch.randn(Bsz, T, H, P, dtype=torch.float64)
    res = {}
    for name, fn in (("seq", lambda: ssd_sequential(x, dt, A, Bh, Ch, s0)),
                     ("c5", lambda: ssd_chunked(x, dt, A, Bh, Ch, 5, s0)),
                     ("c64", lambda: ssd_chunked(x, dt, A, Bh, Ch, 64, s0))):
        y, s = fn()
        grads = torch.autograd.grad((y * w).sum() + s.sum(), (x, dt, Bh, Ch))
        res[name] = (y.detach(), s.detach(), grads)
    for name in ("c5", "c64"):
        assert torch.allclose(res[name][0], res["seq"][0], atol=1e-11, rtol=0)
        assert torch.allclose(res[name][1], res["seq"][1], atol=1e-11, rtol=0)
        for ga, gb in zip(res[name][2], res["seq"][2]):
            assert torch.allclose(ga, gb, atol=1e-10, rtol=0)


def test_prefill_then_decode_equals_one_forward():
    m = spread(Mamba2LM(tiny_config()).reset_parameters(seed=3), 4).double().eval()
    m.set_scan("chunked", chunk=4)
    ids = torch.tensor([[5, 9, 1, 33, 2, 60, 7, 7, 12, 40, 3]])
    with torch.no_grad():
        full = m(ids)
        a, state = m(ids[:, :6], state=m.init_state(1), return_state=True)
        rows = [a]
        for t in range(6, ids.shape[1]):
            r, state = m(ids[:, t:t + 1], state=state, return_state=True)
            rows.append(r)
    assert torch.allclose(torch.cat(rows, 1), full, atol=1e-10, rtol=0)
    assert float(full.std()) > 0.5       # a model whose logits tell positions apart


def test_malformed_checkpoints_are_refused(tmp_path):
    d = str(tmp_path / "m")
    save_model(Mamba2LM(tiny_config()).reset_parameters(seed=1), d)
    path = os.path.join(d, "model.safetensors")
    good, _ = st.load(path)

    def rewrite(tensors, cfg=None):
        st.save(tensors, path)
        if cfg is not None:
            json.dump(cfg, open(os.path.join(d, "config.json"), "w"))

    cfg = json.load(open(os.path.join(d, "config.json")))
    k = next(n for n in good if n.endswith("mixer.D"))
    rewrite({n: t for n, t in good.items() if n != k})
    with pytest.raises(ValueError, match="missing tensors"):
        load_model(d)
    rewrite(dict(good, **{"backbone.extra.weight": good[k]}))
    with pytest.raises(ValueError, match="unexpected"):
        load_model(d)
    rewrite(dict(good, **{k: torch.zeros(good[k].numel() + 1)}))
    with pytest.raises(ValueError, match="shape"):
        load_model(d)
    rewrite({n: t for n, t in good.items() if "embeddings" not in n})
    with pytest.raises(ValueError, match="embeddings"):
        load_model(d)
    rewrite(good, dict(cfg, num_heads=5))          # heads x head_dim != expand x hidden
    with pytest.raises(ValueError):
        load_model(d)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_save_load_round_trip(tmp_path, dtype):
    m = Mamba2LM(tiny_config(use_bias=True, tie_word_embeddings=False,
                             time_step_limit=(0.01, 0.5))).reset_parameters(seed=1)
    save_model(m, str(tmp_path / "m"), dtype=dtype)
    m2 = load_model(str(tmp_path / "m"))
    cfg = json.load(open(tmp_path / "m" / "config.json"))
    assert cfg["model_type"] == "mamba2" and cfg["n_groups"] == 2 and cfg["head_dim"] == 8
    assert cfg["time_step_limit"] == [0.01, 0.5]
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2
        want = a if dtype == "float32" else a.to(torch.bfloat16).float()
        assert torch.equal(want, b), k
    # a sharded copy loads to the same weights
    sh = str(tmp_path / "sharded")
    c = subprocess.run(["/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3",
                        os.path.join(REPO, "tools", "train", "corpus", "shard_model.py"),
                        str(tmp_path / "m"), sh, "--max-shard-mib", "0.02"],
                       capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.path.join(REPO, "tools", "train")))
    assert c.returncode == 0, c.stderr
    assert len(glob.glob(os.path.join(sh, "model-*.safetensors"))) > 1
    m3 = load_model(sh)
    for k, v in m2.state_dict().items():
        assert torch.equal(v, m3.state_dict()[k]), k


# ---------------------------------------------------------------------------------------------
# masked forward against a float64 numpy reference with the dropped parts removed

def _silu(v):
    return v / (1.0 + np.exp(-v))


def ref_masked_logits(model, ids, head_keep, state_keep):
    """Per token, from the equations; head_keep [L][H] bool, state_keep [L][H, N] bool. A
    dropped head is skipped (no state, y = 0); a kept head's state has only its kept entries
    (B and C gathered at those n); the gated norm runs over the group's full width."""
    c = model.config
    w = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    H, P, N, G, K, Di = (c.num_heads, c.head_dim, c.state_size, c.n_groups, c.conv_kernel,
                         c.d_inner)
    eps = c.layer_norm_epsilon
    h = w["backbone.embeddings.weight"][ids]
    T = len(ids)
    for l in range(c.num_hidden_layers):
        p = lambda n: w.get(f"backbone.layers.{l}.mixer.{n}")  # noqa: E731
        hn = h / np.sqrt(np.mean(h * h, -1, keepdims=True) + eps) * w[f"backbone.layers.{l}.norm.weight"]
        zxd = hn @ p("in_proj.weight").T + (p("in_proj.bias") if p("in_proj.bias") is not None else 0)
        z, xbc, dtr = zxd[:, :Di], zxd[:, Di:Di + c.conv_dim], zxd[:, Di + c.conv_dim:]
        cw = p("conv1d.weight")[:, 0, :]
        pad = np.concatenate([np.zeros((K - 1, c.conv_dim)), xbc], 0)
        conv = np.stack([(pad[t:t + K].T * cw).sum(1) for t in range(T)]) + p("conv1d.bias")
        xbc = _silu(conv)
        dt = np.logaddexp(0.0, dtr + p("dt_bias"))
        A = -np.exp(p("A_log"))
        y = np.zeros((T, H, P))
        for hh in range(H):
            if not head_keep[l][hh]:
                continue
            g = hh // (H // G)
            keep_n = np.nonzero(state_keep[l][hh])[0]
            s = np.zeros((P, len(keep_n)))
            for t in range(T):
                x = xbc[t, hh * P:(hh + 1) * P]
                Bv = xbc[t, Di + g * N:Di + (g + 1) * N][keep_n]
                Cv = xbc[t, Di + G * N + g * N:Di + G * N + (g + 1) * N][keep_n]
                s = np.exp(dt[t, hh] * A[hh]) * s + dt[t, hh] * np.outer(x, Bv)
                y[t, hh] = s @ Cv + p("D")[hh] * x
        v = y.reshape(T, Di) * _silu(z)
        vg = v.reshape(T, G, Di // G)
        vg = vg / np.sqrt(np.mean(vg * vg, -1, keepdims=True) + eps)
        out = vg.reshape(T, Di) * p("norm.weight")
        h = h + out @ p("out_proj.weight").T + (p("out_proj.bias") if p("out_proj.bias") is not None else 0)
    hf = h / np.sqrt(np.mean(h * h, -1, keepdims=True) + eps) * w["backbone.norm_f.weight"]
    return hf @ w["backbone.embeddings.weight"].T


@pytest.mark.parametrize("form", ["chunked", "sequential"])
def test_masked_forward_equals_reference_with_parts_removed(form):
    cfg = tiny_config(use_bias=True)
    m = spread(Mamba2LM(cfg).reset_parameters(seed=7), 8).double().eval()
    m.set_scan(form, chunk=4)
    rng = np.random.default_rng(3)
    L, H, N = cfg.num_hidden_layers, cfg.num_heads, cfg.state_size
    head_keep = rng.random((L, H)) > 0.4
    head_keep[:, 0] = True
    state_keep = rng.random((L, H, N)) > 0.5
    ids = [3, 17, 40, 2, 9, 9, 55, 21, 1, 30]
    x = torch.tensor([ids])
    with torch.no_grad():
        dense = m(x)[0].numpy()
        got_h = m(x, head_masks=torch.tensor(head_keep, dtype=torch.float64))[0].numpy()
        got_s = m(x, state_masks=torch.tensor(state_keep, dtype=torch.float64))[0].numpy()
        got_b = m(x, head_masks=torch.tensor(head_keep, dtype=torch.float64),
                  state_masks=torch.tensor(state_keep, dtype=torch.float64))[0].numpy()
    all_h, all_s = np.ones((L, H), bool), np.ones((L, H, N), bool)
    assert np.abs(dense - ref_masked_logits(m, ids, all_h, all_s)).max() < 1e-9
    want_h = ref_masked_logits(m, ids, head_keep, all_s)
    want_s = ref_masked_logits(m, ids, all_h, state_keep)
    want_b = ref_masked_logits(m, ids, head_keep, state_keep)
    for got, want in ((got_h, want_h), (got_s, want_s), (got_b, want_b)):
        assert np.abs(got - want).max() < 1e-9
        assert np.abs(want - dense).max() > 1e-2         # the masks change the output


# ---------------------------------------------------------------------------------------------
# the engine serves what the toolkit saves

def yunmin_or_skip():
    b = os.environ.get("YUNMIN_BIN")
    if not b:
        found = sorted(glob.glob(os.path.join(REPO, "build*", "tools", "yunmin")),
                       key=os.path.getmtime)
        b = found[-1] if found else None
    if not b or not os.path.exists(b):
        pytest.skip("no yunmin binary (set YUNMIN_BIN or build it)")
    return b


@pytest.mark.parametrize("dtype,use_bias,groups", [("float32", False, 1),
                                                   ("bfloat16", True, 2)])
def test_engine_logits_equal_toolkit(tmp_path, dtype, use_bias, groups):
    yb = yunmin_or_skip()
    cfg = tiny_config(use_bias=use_bias, n_groups=groups, vocab_size=64,
                      tie_word_embeddings=groups == 1)
    m = spread(Mamba2LM(cfg).reset_parameters(seed=11), 12)
    d = str(tmp_path / "m")
    save_model(m, d, dtype=dtype)
    ids = [1, 5, 9, 33, 2, 60, 7, 7, 12, 40, 3, 0, 18]
    c = subprocess.run([yb, "logits", "--model", d, "--ids", ",".join(map(str, ids))],
                       capture_output=True, text=True, timeout=300)
    assert c.returncode == 0, c.stderr
    got = np.array(json.loads(c.stdout)["logits"], dtype=np.float64)
    ref = load_model(d, dtype=torch.float64).eval()
    with torch.no_grad():
        want = ref(torch.tensor([ids]))[0].numpy()
    scale = max(1.0, float(np.abs(want).max()))
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * scale, np.abs(got - want).max()
    assert float(want.std()) > 0.5


# ---------------------------------------------------------------------------------------------
# the study's pieces

def test_keep_top_drops_the_lowest_per_layer_or_overall():
    s = np.array([[3.0, 1.0, 2.0, 0.5], [9.0, 8.0, 7.0, 6.0]])
    k = S.keep_top(s, 0.5)
    assert k.tolist() == [[True, False, True, False], [True, True, False, False]]
    k = S.keep_top(s, 0.5, "free")
    assert k.tolist() == [[False, False, False, False], [True, True, True, True]]
    k3 = S.keep_top(np.arange(24.0).reshape(2, 3, 4), 0.75)
    assert k3.reshape(2, -1).sum(1).tolist() == [3, 3]


def test_quantile_threshold_meets_the_target():
    torch.manual_seed(0)
    lg = torch.randn(3, 5, 7)
    for level in (0.0, 0.5, 0.75, 0.9, 1.0):
        t = S.quantile_threshold(lg, level, "layer")
        dropped = (lg <= t).reshape(3, -1).sum(1)
        assert dropped.tolist() == [int(np.floor(level * 35 + 0.5))] * 3
        t = S.quantile_threshold(lg, level, "free")
        assert int((lg <= t).sum()) == int(np.floor(level * 105 + 0.5))


def test_counting():
    cfg = tiny_config()
    L, H, N = cfg.num_hidden_layers, cfg.num_heads, cfg.state_size
    dense = S.counted(cfg, "head", np.ones((L, H), bool))
    assert dense["state_bytes"] == 4 * L * H * cfg.head_dim * N and dense["mixer_flops_cut"] == 0
    # mixer FLOPs of the dense model from the weight shapes
    m = Mamba2LM(cfg)
    mix = L * 5 * cfg.head_dim * H * N
    for l in m.backbone.layers:
        mix += 2 * l.mixer.in_proj.weight.numel() + 2 * l.mixer.out_proj.weight.numel() \
            + 2 * l.mixer.conv1d.weight.numel()
    assert dense["mixer_flops"] == mix
    keep = np.ones((L, H), bool)
    keep[0, 1] = False
    one = S.counted(cfg, "head", keep)
    P, D, K = cfg.head_dim, cfg.hidden_size, cfg.conv_kernel
    assert dense["mixer_flops"] - one["mixer_flops"] == \
        5 * P * N + 2 * D * (2 * P + 1) + 2 * D * P + 2 * K * P
    st_keep = np.ones((L, H, N), bool)
    st_keep[1, 2, :3] = False
    s = S.counted(cfg, "state", st_keep)
    assert dense["state_bytes"] - s["state_bytes"] == 3 * 4 * P


def test_study_runs_and_merges(tmp_path, tiny_tokenizer_path, sample_text_path):
    from yunmin_train.tokenizer import Tokenizer
    v = Tokenizer.from_file(tiny_tokenizer_path).vocab_size
    cfg = tiny_config(vocab_size=(v + 7) // 8 * 8, n_groups=1)
    d = str(tmp_path / "m")
    save_model(Mamba2LM(cfg).reset_parameters(seed=2), d, tokenizer_path=tiny_tokenizer_path)
    outs = []
    for seed in (1, 2):
        o = str(tmp_path / f"s{seed}.json")
        assert S.main(["--model", d, "--text", sample_text_path, "--val-text", sample_text_path,
                       "--seed", str(seed), "--levels", "0.5,0.75", "--ctx", "16",
                       "--eval-windows", "4", "--calib-tokens", "64", "--learn-steps", "3",
                       "--learn-batch", "2", "--out", o]) == 0
        outs.append(o)
    r = json.load(open(outs[0]))
    assert r["done"] and len(r["rows"]) == 2 * 2 * 4
    assert S.main(["--merge"] + outs + ["--out-dir", str(tmp_path / "merged")]) == 0
    res = json.load(open(tmp_path / "merged" / "mamba2_study.json"))
    assert len(res["table"]) == 16 and all(e["ppl"]["n"] == 2 for e in res["table"])
    md = open(tmp_path / "merged" / "mamba2_study.md").read()
    assert "| head | 50% | magnitude | 2 |" in md
    o = str(tmp_path / "mag.json")
    assert S.main(["--model", d, "--text", sample_text_path, "--val-text", sample_text_path,
                   "--levels", "0.5", "--kinds", "state", "--methods", "magnitude,learned-mag",
                   "--ctx", "16", "--eval-windows", "4", "--calib-tokens", "64",
                   "--learn-steps", "3", "--learn-batch", "2", "--out", o]) == 0
    assert [r["method"] for r in json.load(open(o))["rows"]] == ["magnitude", "learned-mag"]


def test_magnitude_start_keeps_the_magnitude_masks():
    rng = np.random.default_rng(5)
    for shape in ((3, 4), (3, 4, 8)):
        score = rng.random(shape) * rng.random((shape[0],) + (1,) * (len(shape) - 1)) * 10
        init = S.magnitude_init(score)
        for level in (0.25, 0.5, 0.75):
            assert (S.keep_top(init, level) == S.keep_top(score, level)).all()
        # per layer: zero mean, 2 x unit spread of log(score)
        flat = init.reshape(shape[0], -1)
        assert np.allclose(flat.mean(1), 0) and np.allclose(flat.std(1), 2)


def test_train_arch_mamba2_lowers_the_loss_and_exports(tmp_path, tiny_tokenizer_path,
                                                      sample_text_path):
    from yunmin_train import train as T
    from yunmin_train.evaluate import main as eval_main
    out = str(tmp_path / "model")
    T.main(["--arch", "mamba2", "--text", sample_text_path, "--tokenizer", tiny_tokenizer_path,
            "--out", out, "--work-dir", str(tmp_path / "work"), "--d-model", "32",
            "--n-layer", "2", "--d-state", "8", "--head-dim", "16", "--ssd-chunk", "8",
            "--batch-size", "4", "--seq-len", "32", "--max-steps", "40", "--lr", "3e-3",
            "--warmup-steps", "5", "--eval-interval", "20", "--log-interval", "5", "--quiet"])
    log = [json.loads(l) for l in open(os.path.join(out, "train_log.jsonl"))]
    tr = [r for r in log if r["type"] == "train"]
    assert tr[-1]["loss"] < tr[0]["loss"] - 0.5
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["model_type"] == "mamba2" and cfg["num_heads"] == 4 and cfg["state_size"] == 8
    assert isinstance(load_model(out), Mamba2LM)
    assert eval_main(["--model", out, "--text", sample_text_path, "--ctx", "32",
                      "--max-windows", "4"]) == 0
