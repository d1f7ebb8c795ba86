"""Learned sparsity masks (yunmin_train.masks): the Gumbel-Sigmoid straight-through estimator,
exact sparsity targets at export, the profile file as the C engine reads it, and the served
output of an exported profile against the toolkit's masked forward (docs/ARCHITECTURE.md §4: x[d] := 0
after conv + silu for a dropped channel, s[d, n] held at 0 for a dropped entry). The magnitude
baseline is checked against `yunmin calibrate --baseline magnitude` on the same tokens.
Tiny random models on the CPU; the binary is $YUNMIN_BIN or build*/tools/yunmin.
"""
import os
import subprocess

import numpy as np
import pytest
import torch

from test_default_model import yunmin_bin
from test_sparsity_engine import engine_logits
from yunmin_train import masks as M
from yunmin_train import safetensors_io as st
from yunmin_train.model import MambaConfig, MambaLM, load_model, load_sparsity_masks, save_model
from yunmin_train.tokenizer import Tokenizer


def tiny_model_dir(tmp_path, tokenizer_path, seed=5, use_bias=False):
    n_vocab = Tokenizer.from_file(tokenizer_path).vocab_size
    cfg = MambaConfig(vocab_size=(n_vocab + 7) // 8 * 8, hidden_size=24, state_size=8,
                      num_hidden_layers=3, expand=2, conv_kernel=4, time_step_rank=3,
                      use_bias=use_bias)
    model = MambaLM(cfg).reset_parameters(seed=seed)
    d = str(tmp_path / "model")
    save_model(model, d, dtype="float32", tokenizer_path=tokenizer_path)
    return d


def test_gumbel_sigmoid_is_hard_forward_soft_backward():
    torch.manual_seed(0)
    logit = torch.tensor([1.0, -0.5, 0.0, 2.0], requires_grad=True)
    m = M.MaskLogits.gumbel_sigmoid(logit.expand(20000, 4), tau=0.5)
    assert set(m.detach().unique().tolist()) <= {0.0, 1.0}
    # P(m = 1) = sigmoid(logit) whatever tau (logistic noise).
    want = torch.sigmoid(logit.detach())
    got = m.detach().mean(0)
    assert float((got - want).abs().max()) < 0.015, (got, want)
    m.sum().backward()
    assert logit.grad is not None and bool((logit.grad > 0).all())
    no_noise = M.MaskLogits.gumbel_sigmoid(logit, tau=0.1, noise=False)
    assert no_noise.tolist() == [1.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("allocation", ["global", "layer"])
def test_export_meets_the_targets_exactly(allocation):
    torch.manual_seed(1)
    lg = M.MaskLogits(4, 40, 6, init=0.0)
    with torch.no_grad():
        lg.channel.normal_()
        lg.state.normal_()
        lg.channel[1, :5] = 0.25            # ties are broken, not double counted
    cl, sl = M.export_learned(lg, 0.3, 0.5, allocation)
    stats = M.profile_stats(cl > 0, sl > 0)
    kept_ch = (cl > 0).sum()
    assert kept_ch == 160 - M.round_half_up(0.3 * 160) if allocation == "global" else \
        all((cl[l] > 0).sum() == 40 - M.round_half_up(0.3 * 40) for l in range(4))
    live = ((sl > 0) & (cl > 0)[:, :, None]).sum()
    if allocation == "global":
        assert live == kept_ch * 6 - M.round_half_up(0.5 * kept_ch * 6)
    else:
        for l in range(4):
            k = (cl[l] > 0).sum() * 6
            assert ((sl[l] > 0) & (cl[l] > 0)[:, None]).sum() == k - M.round_half_up(0.5 * k)
    assert abs(stats["channel_sparsity"] - 0.3) < 0.01 and abs(stats["state_sparsity"] - 0.5) < 0.01
    # The order is what was learned: every kept channel's logit >= every dropped one's.
    c = lg.channel.detach().numpy()
    if allocation == "global":
        assert c[cl > 0].min() >= c[cl <= 0].max()


def test_learned_profile_is_served_as_the_toolkit_masks_it(tmp_path, tiny_tokenizer_path,
                                                          sample_text_path):
    model_dir = tiny_model_dir(tmp_path, tiny_tokenizer_path)
    prof = str(tmp_path / "learned.safetensors")
    rc = M.main(["learn", "--model", model_dir, "--text", sample_text_path, "--out", prof,
                 "--channel-sparsity", "0.4", "--state-sparsity", "0.3", "--steps", "4",
                 "--batch-size", "2", "--seq-len", "16", "--device", "cpu",
                 "--log", str(tmp_path / "log.jsonl")])
    assert rc == 0
    tensors, meta = st.load_numpy(prof)
    assert meta["format"] == "yunmin-sparsity" and meta["version"] == "1"
    assert meta["method"] == "gumbel-sigmoid"
    assert sorted(tensors) == sorted(f"layers.{l}.{k}" for l in range(3)
                                     for k in ("channel_logits", "state_logits", "scan_order"))
    assert tensors["layers.0.channel_logits"].dtype == np.float32
    assert tensors["layers.0.state_logits"].shape == (48, 8)
    assert tensors["layers.0.scan_order"].dtype == np.int32
    ch, sl, _, _ = M.load_profile(prof)
    stats = M.profile_stats(ch > 0, sl > 0)
    assert (ch > 0).sum() == 144 - M.round_half_up(0.4 * 144)
    assert abs(stats["state_sparsity"] - 0.3) < 0.01

    # `yunmin calibrate --sparsity` keeps these masks and writes its correlation order.
    ordered = str(tmp_path / "ordered.safetensors")
    c = subprocess.run([yunmin_bin(), "calibrate", "--model", model_dir, "--text",
                        sample_text_path, "--sparsity", prof, "--out", ordered, "--tokens", "48",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert c.returncode == 0, c.stderr
    ch2, sl2, order2, meta2 = M.load_profile(ordered)
    assert np.array_equal(ch2 > 0, ch > 0) and np.array_equal((sl2 > 0) & (ch2 > 0)[:, :, None],
                                                             (sl > 0) & (ch > 0)[:, :, None])
    assert meta2["method"] == "gumbel-sigmoid"

    m64 = load_model(model_dir, dtype=torch.float64).eval()
    rng = np.random.default_rng(3)
    ids = [int(v) for v in rng.integers(0, Tokenizer.from_file(tiny_tokenizer_path).vocab_size,
                                        size=14)]
    masks = load_sparsity_masks(prof)
    with torch.no_grad():
        want = m64(torch.tensor([ids]), masks=masks)[0].numpy()
        dense = m64(torch.tensor([ids]))[0].numpy()
    scale = max(1.0, float(np.abs(want).max()))
    for p in (prof, ordered):
        got = engine_logits(model_dir, ids, p)
        diff = float(np.abs(got - want).max())
        print(f"{os.path.basename(p)}: max |engine - masked toolkit| {diff:.2e}, masks move the "
              f"logits by {float(np.abs(dense - want).max()):.2e}")
        assert diff <= 2e-4 * scale
    assert float(np.abs(dense - want).max()) > 100 * 2e-4 * scale


def test_magnitude_baseline_equals_yunmin_calibrate(tmp_path, tiny_tokenizer_path,
                                                   sample_text_path):
    model_dir = tiny_model_dir(tmp_path, tiny_tokenizer_path, seed=9)
    out = str(tmp_path / "mag.safetensors")
    c = subprocess.run([yunmin_bin(), "calibrate", "--model", model_dir, "--text",
                        sample_text_path, "--out", out, "--tokens", "64", "--baseline",
                        "magnitude", "--channel-sparsity", "0.5", "--state-sparsity", "0.3",
                        "--order", "identity"], capture_output=True, text=True, timeout=300)
    assert c.returncode == 0, c.stderr
    ch_c, st_c, _, meta = M.load_profile(out)
    assert meta["method"] == "magnitude"
    with open(sample_text_path, encoding="utf-8") as f:
        ids = Tokenizer.from_file(tiny_tokenizer_path).encode(f.read())[:64]
    model = load_model(model_dir, dtype=torch.float64).eval()
    ch, st_ = M.magnitude_masks(model, ids, 0.5, 0.3)
    live_c = (st_c > 0) & (ch_c > 0)[:, :, None]
    assert np.array_equal(ch, ch_c > 0)
    assert np.array_equal(st_, live_c)


def test_magnitude_init_keeps_the_magnitude_order_per_layer():
    rng = np.random.default_rng(2)
    energy = rng.gamma(0.5, size=(3, 20))
    abs_s = rng.gamma(0.5, size=(3, 20, 4))
    c, s = M.magnitude_init(energy, abs_s)
    for l in range(3):
        assert np.array_equal(np.argsort(c[l], kind="stable"), np.argsort(energy[l], kind="stable"))
        assert np.array_equal(np.argsort(s[l].ravel(), kind="stable"),
                              np.argsort(abs_s[l].ravel(), kind="stable"))
        assert abs(c[l].mean()) < 1e-9 and abs(c[l].std() - 2.0) < 1e-6
    # Per layer, the same masks as the magnitude baseline.
    ch, st_ = M.hard_from_scores(c, s, 0.4, 0.3, "layer")
    ch0, st0 = M.hard_from_scores(energy, abs_s, 0.4, 0.3, "layer")
    assert np.array_equal(ch, ch0) and np.array_equal(st_, st0)
