import json
import os

import numpy as np
import pytest
import torch

from yunmin_train import safetensors_io as st
from yunmin_train.model import (MambaConfig, MambaLM, load_model, save_model, scan_parallel,
                                scan_sequential, generate, load_config)


def tiny_cfg(**kw):
    base = dict(vocab_size=64, hidden_size=24, state_size=6, num_hidden_layers=2, expand=2,
                conv_kernel=4, time_step_rank="auto", use_bias=False, use_conv_bias=True)
    base.update(kw)
    return MambaConfig(**base)


def randomized(cfg, seed=0, dtype=torch.float64):
    """A model whose every parameter is random at a meaningful scale (not the default init)."""
    m = MambaLM(cfg).reset_parameters(seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.rand(p.shape, generator=g) * cfg.state_size + 0.5))
            elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(0.6 + 0.8 * torch.rand(p.shape, generator=g))
            elif name.endswith("dt_proj.bias"):
                p.copy_(torch.randn(p.shape, generator=g) - 2.0)
            else:
                fan = p.shape[-1] if p.ndim > 1 else 4
                p.copy_(torch.randn(p.shape, generator=g) / fan ** 0.5)
    return m.to(dtype)


@pytest.mark.parametrize("T", [1, 2, 7, 16, 33])
def test_parallel_scan_equals_sequential_float64(T):
    g = torch.Generator().manual_seed(T)
    B, Di, N = 3, 5, 4
    dA = torch.rand(B, T, Di, N, generator=g, dtype=torch.float64) * 0.999 + 1e-3
    dBx = torch.randn(B, T, Di, N, generator=g, dtype=torch.float64)
    C = torch.randn(B, T, N, generator=g, dtype=torch.float64)
    s0 = torch.randn(B, Di, N, generator=g, dtype=torch.float64)
    for init in (None, s0):
        y1, s1 = scan_sequential(dA, dBx, C, init)
        y2, s2 = scan_parallel(dA, dBx, C, init)
        assert torch.allclose(y1, y2, rtol=0, atol=1e-12), (y1 - y2).abs().max()
        assert torch.allclose(s1, s2, rtol=0, atol=1e-12)


def test_parallel_scan_gradients_match_sequential():
    g = torch.Generator().manual_seed(5)
    shape = (2, 9, 3, 4)
    dA = (torch.rand(shape, generator=g, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    dBx = torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()
    C = torch.randn(2, 9, 4, generator=g, dtype=torch.float64).requires_grad_()
    grads = []
    for fn in (scan_sequential, scan_parallel):
        y, _ = fn(dA, dBx, C)
        grads.append(torch.autograd.grad((y ** 2).sum(), (dA, dBx, C)))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("kw", [dict(), dict(use_bias=True, conv_kernel=3),
                                dict(use_conv_bias=False, conv_kernel=5, tie_word_embeddings=False),
                                dict(conv_kernel=1, time_step_rank=3, expand=3)])
def test_full_forward_equals_token_by_token_and_chunked(kw):
    m = randomized(tiny_cfg(**kw), seed=3).eval()
    ids = torch.randint(0, 64, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(ids)
        m.set_scan("sequential")
        seq = m(ids)
        m.set_scan("parallel")
        st_ = m.init_state(2)
        steps = []
        for t in range(ids.shape[1]):
            lg, st_ = m(ids[:, t:t + 1], state=st_, return_state=True)
            steps.append(lg)
        a, s1 = m(ids[:, :8], state=m.init_state(2), return_state=True)
        b, _ = m(ids[:, 8:], state=s1, return_state=True)
    assert torch.allclose(full, seq, atol=1e-12)
    assert torch.allclose(full, torch.cat(steps, 1), atol=1e-12)
    assert torch.allclose(full, torch.cat([a, b], 1), atol=1e-12)


def test_double_is_float64_end_to_end():
    m = randomized(tiny_cfg(), dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    logits, state, hidden = m(torch.tensor([[1, 2, 3]]), return_state=True, return_hidden=True)
    assert logits.dtype == torch.float64
    assert all(h.dtype == torch.float64 for h in hidden)
    assert all(c.dtype == torch.float64 and s.dtype == torch.float64 for c, s in state)


def test_parameter_names_match_transformers():
    m = MambaLM(tiny_cfg(use_bias=True, tie_word_embeddings=False))
    names = set(m.state_dict())
    l0 = "backbone.layers.0."
    expect = {"backbone.embeddings.weight", "backbone.norm_f.weight", "lm_head.weight",
              l0 + "norm.weight"} | {l0 + "mixer." + s for s in (
                  "in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias",
                  "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D",
                  "out_proj.weight", "out_proj.bias")}
    assert expect <= names
    assert tuple(m.state_dict()[l0 + "mixer.conv1d.weight"].shape) == (48, 1, 4)
    assert tuple(m.state_dict()[l0 + "mixer.x_proj.weight"].shape) == (2 + 12, 48)
    tied = MambaLM(tiny_cfg())
    assert "lm_head.weight" not in tied.state_dict()


def test_mamba_init():
    cfg = tiny_cfg(num_hidden_layers=3)
    m = MambaLM(cfg).reset_parameters(7)
    mix = m.backbone.layers[0].mixer
    assert torch.allclose(mix.A_log.exp()[0], torch.arange(1, 7, dtype=torch.float32))
    assert torch.all(mix.D == 1)
    dt = torch.nn.functional.softplus(mix.dt_proj.bias.double())
    assert dt.min() >= 1e-4 - 1e-9 and dt.max() <= 0.1 + 1e-6


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("tie", [True, False])
def test_save_load_round_trip_hf_layout(tmp_path, dtype, tie):
    m = randomized(tiny_cfg(use_bias=True, tie_word_embeddings=tie), dtype=torch.float32)
    d = tmp_path / "m"
    save_model(m, str(d), dtype=dtype)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "mamba" and cfg["architectures"] == ["MambaForCausalLM"]
    assert cfg["tie_word_embeddings"] is tie and cfg["time_step_rank"] == 2
    # transformers re-scales loaded out_proj weights when this is true (see to_hf_dict)
    assert cfg["rescale_prenorm_residual"] is False and m.config.rescale_prenorm_residual
    names = st.dtype_names(str(d / "model.safetensors"))
    assert set(names.values()) == {"F32" if dtype == "float32" else "BF16"}
    assert ("lm_head.weight" in names) is (not tie)
    m2 = load_model(str(d))
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2
        want = a if dtype == "float32" else a.to(torch.bfloat16).float()
        assert torch.equal(want, b), k
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        if dtype == "float32":
            assert torch.equal(m(x), m2(x))
    assert load_model(str(d), dtype=torch.float64).backbone.norm_f.weight.dtype == torch.float64


def test_state_spaces_layout_and_config(tmp_path):
    m = randomized(tiny_cfg(vocab_size=64), dtype=torch.float32)
    d = tmp_path / "ss"
    d.mkdir()
    sd = {("backbone.embedding.weight" if k == "backbone.embeddings.weight" else k): v
          for k, v in m.state_dict().items()}
    sd["lm_head.weight"] = m.state_dict()["backbone.embeddings.weight"]   # old tied copies
    st.save(sd, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({
        "d_model": 24, "n_layer": 2, "vocab_size": 61, "pad_vocab_size_multiple": 8,
        "ssm_cfg": {"d_state": 6}, "rms_norm": True, "residual_in_fp32": True,
        "fused_add_norm": True}))
    cfg = load_config(str(d))
    assert cfg.vocab_size == 64 and cfg.use_bias is False and cfg.use_conv_bias is True
    m2 = load_model(str(d))
    x = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))


def test_sharded_checkpoint_loads(tmp_path):
    m = randomized(tiny_cfg(), dtype=torch.float32)
    d = tmp_path / "sh"
    save_model(m, str(d))
    full, _ = st.load(str(d / "model.safetensors"))
    os.remove(d / "model.safetensors")
    names = sorted(full)
    parts = [names[: len(names) // 2], names[len(names) // 2:]]
    wmap = {}
    for i, part in enumerate(parts):
        fn = f"model-0000{i + 1}-of-00002.safetensors"
        st.save({k: full[k] for k in part}, str(d / fn))
        wmap.update({k: fn for k in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    m2 = load_model(str(d))
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_load_rejects_wrong_shapes_and_names(tmp_path):
    m = randomized(tiny_cfg(), dtype=torch.float32)
    d = tmp_path / "bad"
    save_model(m, str(d))
    cfg = json.loads((d / "config.json").read_text())
    cfg["state_size"] = 7
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="A_log"):
        load_model(str(d))
    cfg["state_size"] = 6
    cfg["use_bias"] = True
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="missing"):
        load_model(str(d))


def test_hf_config_defaults():
    cfg = MambaConfig.from_dict({"hidden_size": 32, "num_hidden_layers": 1, "vocab_size": 10,
                                 "intermediate_size": 64, "time_step_rank": "auto"})
    assert cfg.use_bias is True and cfg.tie_word_embeddings is True and cfg.dt_rank == 2
    assert cfg.d_inner == 64 and cfg.conv_kernel == 4 and cfg.state_size == 16


def test_greedy_generate_matches_argmax_of_full_forward():
    m = randomized(tiny_cfg(), seed=11).eval()
    prompt = [3, 1, 4, 1, 5]
    new = generate(m, prompt, 6, temperature=0)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            seq.append(int(m(torch.tensor([seq]))[0, -1].argmax()))
    assert new == seq[len(prompt):]
    s1 = generate(m, prompt, 8, temperature=0.8, seed=3)
    assert s1 == generate(m, prompt, 8, temperature=0.8, seed=3)
