"""The toolkit forward against the conformance fixtures (tests/fixtures/conformance/).

The fixtures come from tests/fixtures/make_fixtures.py (GPU machine, transformers). The same
checks also run on a fixture set built here with --no-transformers, so the generator and this
test are exercised before the real fixtures exist.
"""

import json
import os

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from yunmin_train import safetensors_io as st
from yunmin_train.model import generate, load_model

CONFORMANCE = os.path.join(FIXTURES, "conformance")


def check_conformance_dir(root):
    with open(os.path.join(root, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["models"], "manifest lists no models"
    report = []
    for e in manifest["models"]:
        ref, _ = st.load_numpy(os.path.join(root, e["logits"]))
        ids = [int(t) for t in ref["ids"]]
        want = ref["logits"]
        scale = max(1.0, float(np.abs(want).max()))
        m64 = load_model(os.path.join(root, e["dir"]), dtype=torch.float64).eval()
        m32 = load_model(os.path.join(root, e["dir"]), dtype=torch.float32).eval()
        with torch.no_grad():
            got64 = m64(torch.tensor([ids]))[0].numpy()
            got32 = m32(torch.tensor([ids]))[0].double().numpy()
        assert got64.shape == want.shape, (e["name"], got64.shape, want.shape)
        d64 = float(np.abs(got64 - want).max())
        d32 = float(np.abs(got32 - want).max())
        assert d64 <= 1e-9 * scale, (e["name"], d64)
        assert d32 <= e["atol"], (e["name"], d32, e["atol"])
        n = int(e.get("greedy_compare_until", len(ref["greedy_ids"])))
        new = generate(m64, ids, len(ref["greedy_ids"]), temperature=0)
        assert new[:n] == [int(t) for t in ref["greedy_ids"][:n]], e["name"]
        report.append((e["name"], d64, d32))
    return report


@pytest.mark.skipif(not os.path.exists(os.path.join(CONFORMANCE, "manifest.json")),
                    reason="tests/fixtures/conformance/ not generated yet "
                           "(tests/fixtures/make_fixtures.py on the GPU machine)")
def test_toolkit_matches_conformance_fixtures():
    for name, d64, d32 in check_conformance_dir(CONFORMANCE):
        print(f"{name}: float64 max diff {d64:.2e}, float32 max diff {d32:.2e}")


def test_fixture_generator_without_transformers(tmp_path, tiny_tokenizer_path):
    import make_fixtures
    make_fixtures.problems.clear()
    out = tmp_path / "conf"
    rc = make_fixtures.main(["--tokenizer", tiny_tokenizer_path, "--out", str(out),
                             "--no-transformers", "--n-tokens", "24", "--n-greedy", "8"])
    assert rc == 0, make_fixtures.problems
    manifest = json.loads((out / "manifest.json").read_text())
    kinds = [e["kind"] for e in manifest["models"]]
    assert kinds.count("hf") == 4 and len(kinds) >= 6 and "state-spaces" in kinds and "sharded" in kinds
    assert (out / "sharded-m37-odd-n5-k2-f32" / "model.safetensors.index.json").exists()
    ss_cfg = json.loads((out / "ss-m37-odd-n5-k2-f32" / "config.json").read_text())
    assert "d_model" in ss_cfg and "ssm_cfg" in ss_cfg
    cfg40 = json.loads((out / "m40-bias-k3-f32" / "config.json").read_text())
    assert cfg40["time_step_rank"] == "auto"
    dtypes = set(st.dtype_names(str(out / "m72-deep-k5-nobias-bf16" / "model.safetensors")).values())
    assert dtypes == {"BF16"}
    dtypes = set(st.dtype_names(str(out / "m48-untied-e3-f16" / "model.safetensors")).values())
    assert dtypes == {"F16"}
    check_conformance_dir(str(out))
