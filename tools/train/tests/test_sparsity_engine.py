"""The C engine's sparse serving against the toolkit's reference semantics of a sparsity
profile (docs/ARCHITECTURE.md §4): `yunmin logits --sparsity` (dropped channels and state entries
physically removed, channels permuted by scan_order, masked SIMD scan) equals MambaLM.forward
with masks= (x[d] := 0 after conv + silu, s[d, n] held at 0) in float64, within float32
rounding. The binary comes from $YUNMIN_BIN (scripts/test.sh sets it) or build*/tools/yunmin.
"""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from test_default_model import yunmin_bin
from yunmin_train import safetensors_io as st
from yunmin_train.model import MambaConfig, MambaLM, load_sparsity_masks, save_model


def write_profile(path, n_layer, d_inner, n_state, rng, p_ch, p_st, shuffle):
    tensors = {}
    for l in range(n_layer):
        tensors[f"layers.{l}.channel_logits"] = np.where(rng.random(d_inner) < p_ch, 1.0, -1.0
                                                         ).astype(np.float32)
        tensors[f"layers.{l}.state_logits"] = rng.normal(size=(d_inner, n_state)).astype(
            np.float32) + np.float32(np.log(p_st / (1 - p_st)) if 0 < p_st < 1 else 0)
        order = rng.permutation(d_inner) if shuffle else np.arange(d_inner)
        tensors[f"layers.{l}.scan_order"] = order.astype(np.int32)
    st.save(tensors, path, metadata={"format": "yunmin-sparsity", "version": "1",
                                     "method": "random"})


def engine_logits(model_dir, ids, profile=None):
    args = [yunmin_bin(), "logits", "--model", model_dir, "--ids", ",".join(map(str, ids))]
    if profile:
        args += ["--sparsity", profile]
    c = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert c.returncode == 0, c.stderr
    return np.array(json.loads(c.stdout)["logits"], dtype=np.float64)


@pytest.mark.parametrize("use_bias,p_ch,p_st,shuffle", [
    (False, 1.0, 0.999, True),   # nothing dropped, only the order: equal to dense
    (False, 0.6, 0.5, False),
    (True, 0.5, 0.3, True),
    (False, 0.85, 0.1, True),
])
def test_engine_sparse_logits_equal_masked_reference(tmp_path, use_bias, p_ch, p_st, shuffle):
    cfg = MambaConfig(vocab_size=97, hidden_size=24, state_size=16, num_hidden_layers=3,
                      expand=2, conv_kernel=4, time_step_rank=3, use_bias=use_bias)
    model = MambaLM(cfg).reset_parameters(seed=11)
    model_dir = str(tmp_path / "m")
    save_model(model, model_dir, dtype="float32")
    rng = np.random.default_rng(int(p_ch * 100) + 7)
    prof = str(tmp_path / "yunmin.sparsity.safetensors")
    write_profile(prof, cfg.num_hidden_layers, cfg.d_inner, cfg.state_size, rng, p_ch, p_st,
                  shuffle)
    ids = [int(v) for v in rng.integers(0, cfg.vocab_size, size=12)]
    m64 = model.double().eval()
    masks = load_sparsity_masks(prof)
    with torch.no_grad():
        want = m64(torch.tensor([ids]), masks=masks)[0].numpy()
        dense = m64(torch.tensor([ids]))[0].numpy()
    got = engine_logits(model_dir, ids, prof)
    scale = max(1.0, float(np.abs(want).max()))
    diff = float(np.abs(got - want).max())
    moved = float(np.abs(dense - want).max())
    print(f"bias={use_bias} p_ch={p_ch} p_st={p_st}: max |engine - masked ref| {diff:.2e}, "
          f"masks move the logits by {moved:.2e}")
    assert diff <= 2e-4 * scale
    # Token-by-token through the recurrent state gives the same masked logits.
    state = None
    rows = []
    with torch.no_grad():
        for t in ids:
            out, state = m64(torch.tensor([[t]]), state=state, return_state=True, masks=masks)
            rows.append(out[0, 0].numpy())
    assert float(np.abs(np.stack(rows) - want).max()) <= 1e-9 * scale
    if p_ch < 1.0:
        assert moved > 10 * diff, "the masks must matter more than the rounding"
