"""`python -m yunmin_train.mamba2_study export`: a study mask written as the engine's head
profile (docs/FORMATS.md).

* the file holds exactly the study's mask for that seed (same calibration window, same
  magnitude scores recomputed here, same per-layer share), in the head-profile layout with its
  metadata; random masks are the study's draws;
* served by the engine (`yunmin logits --sparsity`, skipped without the binary), the masked
  model's logits equal the toolkit's float64 forward with the same masks;
* learned masks (learned-mag, learned, learned-free) are the study's learn_gates run with the
  study's start, seed and final selection, recomputed here; the profile meets the level exactly
  (per layer, or over the model for learned-free), also when --max-seconds stops the learning;
* bad arguments are refused.
"""

import json
import os
import subprocess

import numpy as np
import pytest
import torch

from yunmin_train import data as data_mod
from yunmin_train import mamba2_study as S
from yunmin_train import safetensors_io as st
from yunmin_train.mamba2 import Mamba2LM, load_model, save_model

from test_mamba2 import spread, tiny_config, yunmin_or_skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizer_path):
    from yunmin_train.tokenizer import Tokenizer
    v = Tokenizer.from_file(tiny_tokenizer_path).vocab_size
    cfg = tiny_config(vocab_size=(v + 7) // 8 * 8, n_groups=2)
    d = str(tmp_path_factory.mktemp("m2export") / "m")
    save_model(spread(Mamba2LM(cfg).reset_parameters(seed=3), 4), d,
               tokenizer_path=tiny_tokenizer_path)
    return d


def export(tmp_path, model, text, *extra):
    out = str(tmp_path / "p.safetensors")
    assert S.main(["export", "--model", model, "--text", text, "--ctx", "16",
                   "--calib-tokens", "64", "--out", out, *extra]) == 0
    return st.load_numpy(out)


@pytest.mark.parametrize("kind,level", [("state", 0.75), ("head", 0.5)])
def test_export_writes_the_study_mask(tmp_path, tiny, sample_text_path, kind, level):
    tensors, meta = export(tmp_path, tiny, sample_text_path, "--kind", kind, "--level",
                           str(level), "--seed", "2")
    model = load_model(tiny).eval()
    c = model.config
    L, H, N = c.num_hidden_layers, c.num_heads, c.state_size
    assert sorted(tensors) == sorted([f"layers.{l}.{t}" for l in range(L)
                                      for t in ("head_logits", "state_logits")])
    assert meta["format"] == "yunmin-sparsity" and meta["version"] == "1"
    assert meta["method"] == "magnitude" and meta["kind"] == kind and meta["seed"] == "2"
    # the study's calibration window for seed 2 and its magnitude scores, recomputed
    tok = os.path.join(tiny, "tokenizer.json")
    tr = data_mod.tokenize_cached(data_mod.read_text(sample_text_path), tok, None, "train")
    n_cal = min(64, max(16, tr.size - 1))
    cal0 = (2 * 7919 * n_cal) % max(1, tr.size - n_cal)
    assert meta["calibration_start"] == str(cal0)
    absS = S.state_magnitude(model, tr[cal0:cal0 + n_cal], ctx=16)
    score = absS.mean(axis=(2, 3)) if kind == "head" else absS.mean(axis=2)
    want = S.keep_top(score, level)
    for l in range(L):
        hl, sl = tensors[f"layers.{l}.head_logits"], tensors[f"layers.{l}.state_logits"]
        assert hl.dtype == np.float32 and hl.shape == (H,)
        assert sl.dtype == np.float32 and sl.shape == (H, N)
        assert set(np.unique(hl)) <= {-1.0, 1.0} and set(np.unique(sl)) <= {-1.0, 1.0}
        if kind == "head":
            assert np.array_equal(hl > 0, want[l]) and (sl > 0).all()
            assert int((hl <= 0).sum()) == round(level * H)
        else:
            assert np.array_equal(sl > 0, want[l]) and (hl > 0).all()
            assert int((sl <= 0).sum()) == round(level * H * N)


def test_group_keep_by_hand():
    # 1 layer, 4 heads in 2 groups, 3 entries; level 0.5 drops round(0.5 * 2 * 3) = 3 pairs
    score = np.array([[[1.0, 9.0, 5.0], [3.0, 1.0, 5.0],        # group 0: means 2, 5, 5
                       [8.0, 2.0, 0.5], [8.0, 4.0, 0.5]]])      # group 1: means 8, 3, 0.5
    keep = S.group_keep(score, 0.5, 2, "mean")
    # lowest pairs: (1, 2) 0.5, (0, 0) 2, (1, 1) 3
    want_g = np.array([[False, True, True], [True, False, False]])
    assert np.array_equal(keep[0], np.repeat(want_g, 2, axis=0))
    # "norm": each head's scores over its mean first; head 1 = [3, 1, 5] / 3, head 0 / 5
    keep = S.group_keep(score, 0.5, 2, "norm")
    g0 = (np.array([1.0, 9.0, 5.0]) / 5 + np.array([3.0, 1.0, 5.0]) / 3) / 2
    g1 = (np.array([8.0, 2.0, 0.5]) / 3.5 + np.array([8.0, 4.0, 0.5]) / 12.5 * 3) / 2
    flat = np.concatenate([g0, g1])
    drop = np.argsort(flat, kind="stable")[:3]
    want = np.ones(6, dtype=bool)
    want[drop] = False
    assert np.array_equal(keep[0], np.repeat(want.reshape(2, 3), 2, axis=0))


@pytest.mark.parametrize("how", ["mean", "norm"])
def test_export_group_shared_state_mask(tmp_path, tiny, sample_text_path, how):
    tensors, meta = export(tmp_path, tiny, sample_text_path, "--kind", "state", "--level",
                           "0.75", "--seed", "2", "--share", "group", "--group-score", how)
    model = load_model(tiny).eval()
    c = model.config
    L, H, N, G = c.num_hidden_layers, c.num_heads, c.state_size, c.n_groups
    assert G == 2 and meta["share"] == "group" and meta["group_score"] == how
    tok = os.path.join(tiny, "tokenizer.json")
    tr = data_mod.tokenize_cached(data_mod.read_text(sample_text_path), tok, None, "train")
    n_cal = min(64, max(16, tr.size - 1))
    cal0 = (2 * 7919 * n_cal) % max(1, tr.size - n_cal)
    score = S.state_magnitude(model, tr[cal0:cal0 + n_cal], ctx=16).mean(axis=2)
    if how == "norm":
        score = score / score.mean(axis=2, keepdims=True)
    per = H // G
    for l in range(L):
        got = tensors[f"layers.{l}.state_logits"] > 0
        assert (tensors[f"layers.{l}.head_logits"] > 0).all()
        for g in range(G):
            rows = got[g * per:(g + 1) * per]
            assert (rows == rows[0]).all()                      # one row per group
        # the group's pairs dropped are the lowest of the heads' averaged scores
        gs = np.stack([score[l, g * per:(g + 1) * per].mean(0) for g in range(G)])
        kept = np.stack([got[g * per] for g in range(G)])
        assert int((~kept).sum()) == round(0.75 * G * N)
        assert gs[~kept].max() <= gs[kept].min()
    # not the per-head mask (else the option does nothing on this model)
    per_head = S.keep_top(S.state_magnitude(model, tr[cal0:cal0 + n_cal], ctx=16).mean(axis=2),
                          0.75)
    assert not np.array_equal(np.stack([tensors[f"layers.{l}.state_logits"] > 0
                                        for l in range(L)]), per_head)


def test_export_random_is_the_study_draw(tmp_path, tiny, sample_text_path):
    tensors, meta = export(tmp_path, tiny, sample_text_path, "--kind", "state", "--method",
                           "random", "--level", "0.5", "--seed", "5")
    c = load_model(tiny).config
    rng = np.random.default_rng(5)
    rng.random((c.num_hidden_layers, c.num_heads))                 # the study draws heads first
    want = S.keep_top(rng.random((c.num_hidden_layers, c.num_heads, c.state_size)), 0.5)
    assert meta["method"] == "random"
    for l in range(c.num_hidden_layers):
        assert np.array_equal(tensors[f"layers.{l}.state_logits"] > 0, want[l])


LEARN = ["--steps", "6", "--batch", "2", "--lr", "0.2"]


@pytest.mark.parametrize("method,kind,level", [("learned-mag", "state", 0.75),
                                               ("learned-mag", "head", 0.5),
                                               ("learned", "state", 0.5),
                                               ("learned-free", "state", 0.75)])
def test_export_learned_is_the_study_mask(tmp_path, tiny, sample_text_path, method, kind,
                                          level):
    tensors, meta = export(tmp_path, tiny, sample_text_path, "--kind", kind, "--method", method,
                           "--level", str(level), "--seed", "3", *LEARN)
    model = load_model(tiny).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    c = model.config
    L, H, N = c.num_hidden_layers, c.num_heads, c.state_size
    assert meta["method"] == method and meta["kind"] == kind and meta["seed"] == "3"
    assert meta["steps"] == "6" and meta["steps_run"] == "6" and meta["batch"] == "2"
    alloc = S.LEARNED[method]
    assert meta["allocation"] == alloc
    # the study's run() for this seed: magnitude start on its calibration window, then
    # learn_gates with the same seed and keep_top of the final logits
    tok = os.path.join(tiny, "tokenizer.json")
    tr = data_mod.tokenize_cached(data_mod.read_text(sample_text_path), tok, None, "train")
    init = None
    if method == "learned-mag":
        n_cal = min(64, max(16, tr.size - 1))
        cal0 = (3 * 7919 * n_cal) % max(1, tr.size - n_cal)
        absS = S.state_magnitude(model, tr[cal0:cal0 + n_cal], ctx=16)
        init = S.magnitude_init(absS.mean(axis=(2, 3)) if kind == "head" else absS.mean(axis=2))
    lg, _ = S.learn_gates(model, tr, kind, level, allocation=alloc, steps=6, batch_size=2,
                          seq_len=16, lr=0.2, seed=3, init=init)
    want = S.keep_top(lg, level, alloc)
    key = "head_logits" if kind == "head" else "state_logits"
    other = "state_logits" if kind == "head" else "head_logits"
    got = np.stack([tensors[f"layers.{l}.{key}"] > 0 for l in range(L)])
    assert all((tensors[f"layers.{l}.{other}"] > 0).all() for l in range(L))
    assert np.array_equal(got, want)
    per_layer = H if kind == "head" else H * N
    dropped = (~got).reshape(L, -1).sum(1)
    if alloc == "free":
        assert int(dropped.sum()) == round(level * L * per_layer)
    else:
        assert (dropped == round(level * per_layer)).all()
    if method == "learned-mag" and kind == "state":
        # learning moved the mask away from its magnitude start (else this test shows nothing;
        # the tiny model's 6 heads per layer are too few and too far apart to move in 6 steps)
        assert not np.array_equal(got, S.keep_top(init, level))


def test_export_learned_stops_at_max_seconds(tmp_path, tiny, sample_text_path):
    tensors, meta = export(tmp_path, tiny, sample_text_path, "--kind", "state", "--method",
                           "learned-mag", "--level", "0.75", "--steps", "500", "--batch", "2",
                           "--max-seconds", "1e-6")
    assert meta["steps"] == "500" and meta["steps_run"] == "1"
    assert json.loads(meta["history"])[-1] == {"stopped_after_steps": 1}
    c = load_model(tiny).config
    for l in range(c.num_hidden_layers):
        assert int((tensors[f"layers.{l}.state_logits"] <= 0).sum()) == \
            round(0.75 * c.num_heads * c.state_size)


@pytest.mark.parametrize("kind,level,method", [("state", 0.75, "magnitude"),
                                               ("state", 0.75, "group"),
                                               ("head", 0.5, "magnitude"),
                                               ("state", 0.75, "learned-mag"),
                                               ("state", 0.75, "learned-free")])
def test_engine_serves_the_exported_profile_as_the_toolkit_masks(tmp_path, tiny,
                                                                 sample_text_path, kind, level,
                                                                 method):
    yb = yunmin_or_skip()
    out = str(tmp_path / "p.safetensors")
    how = ["--method", method] if method != "group" else ["--share", "group"]
    assert S.main(["export", "--model", tiny, "--text", sample_text_path, "--ctx", "16",
                   "--calib-tokens", "64", "--kind", kind, "--level", str(level),
                   *how, *LEARN, "--out", out]) == 0
    tensors, _ = st.load_numpy(out)
    ref = load_model(tiny, dtype=torch.float64).eval()
    L = ref.config.num_hidden_layers
    hm = torch.tensor(np.stack([tensors[f"layers.{l}.head_logits"] > 0 for l in range(L)]),
                      dtype=torch.float64)
    sm = torch.tensor(np.stack([tensors[f"layers.{l}.state_logits"] > 0 for l in range(L)]),
                      dtype=torch.float64)
    ids = [1, 5, 9, 33, 2, 40, 7, 7, 12, 30, 3, 0, 18, 21, 4, 8, 11, 2]
    c = subprocess.run([yb, "logits", "--model", tiny, "--sparsity", out,
                        "--ids", ",".join(map(str, ids))],
                       capture_output=True, text=True, timeout=300)
    assert c.returncode == 0, c.stderr
    got = np.array(json.loads(c.stdout)["logits"], dtype=np.float64)
    with torch.no_grad():
        want = ref(torch.tensor([ids]), head_masks=hm, state_masks=sm)[0].numpy()
        dense = ref(torch.tensor([ids]))[0].numpy()
    scale = max(1.0, float(np.abs(want).max()))
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * scale, np.abs(got - want).max()
    assert np.abs(dense - want).max() > 100 * 1e-4 * scale      # the masks matter here


def test_export_refuses_bad_arguments(tmp_path, tiny, sample_text_path):
    base = ["export", "--model", tiny, "--text", sample_text_path, "--out",
            str(tmp_path / "p.safetensors")]
    for bad in (["--kind", "channel", "--level", "0.5"], ["--kind", "state", "--level", "1.0"],
                ["--kind", "state", "--level", "0.5", "--method", "learned-bogus"],
                ["--kind", "head"],
                ["--kind", "state", "--level", "0.5", "--method", "learned-mag", "--steps", "0"],
                ["--kind", "state", "--level", "0.5", "--method", "learned", "--batch", "0"],
                ["--kind", "state", "--level", "0.5", "--method", "learned", "--lr", "0"],
                ["--kind", "state", "--level", "0.5", "--method", "learned-mag",
                 "--max-seconds", "0"],
                ["--kind", "head", "--level", "0.5", "--share", "group"],
                ["--kind", "state", "--level", "0.5", "--method", "random", "--share", "group"],
                ["--kind", "state", "--level", "0.5", "--share", "group",
                 "--group-score", "max"]):
        with pytest.raises(SystemExit) as e:
            S.main(base + bad)
        assert e.value.code == 2
    assert not os.path.exists(tmp_path / "p.safetensors")
