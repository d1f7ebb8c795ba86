"""The whole sparsity + hybrid-PEFT pipeline (tools/train/run_sparsity_peft.sh) at tiny size on
the CPU: both sparsity-study axes, the PEFT comparison with its exports, the merged tables and
the chart; then the C tools take what it wrote (`yunmin logits --sparsity` with a learned
profile, `yunmin logits --adapter` with the exported adapter set and PEFT directories).
"""
import json
import os
import subprocess
import sys

import numpy as np

from test_default_model import REPO, yunmin_bin
from test_masks import tiny_model_dir
from yunmin_train import masks as M


def test_pipeline_runs_end_to_end_at_tiny_size(tmp_path, tiny_tokenizer_path, sample_text_path):
    model_dir = tiny_model_dir(tmp_path, tiny_tokenizer_path, seed=4)
    out = str(tmp_path / "out")
    env = dict(os.environ, MODEL=model_dir, TEXT=sample_text_path, MASK_STEPS="3",
               RECOVERY_STEPS="2", PEFT_STEPS="4", SEEDS="0", LEVELS="0.5", MAX_WINDOWS="2",
               BF16="0", MAG_INIT=os.environ.get("TEST_MAG_INIT", "0"),
               CHARACTER="First Citizen", N_LORA_LAYERS="1", OMP_NUM_THREADS="1",
               PYTHON=sys.executable)
    c = subprocess.run(["bash", os.path.join(REPO, "tools", "train", "run_sparsity_peft.sh"), out],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    logs = "".join(open(os.path.join(out, f)).read()[-1500:] for f in
                   ("sparsity-channels.log", "sparsity-states.log", "peft.log")
                   if os.path.exists(os.path.join(out, f)))
    assert c.returncode == 0, c.stdout + c.stderr + logs
    with open(os.path.join(out, "sparsity", "results.json")) as f:
        res = json.load(f)
    got = sorted((r["axis"], r["method"]) for r in res["rows"])
    methods = ("learned", "magnitude", "random") + \
        (("learned-mag",) if env["MAG_INIT"] == "1" else ())
    assert got == sorted((a, m) for a in ("channels", "states") for m in methods)
    for r in res["rows"]:
        assert r["recovered"]["ppl"] > 1 and 0 <= r["cos_loss"] < 2
        want = (0.5, 0.0) if r["axis"] == "channels" else (0.0, 0.5)
        assert abs(r["channel_sparsity"] - want[0]) < 0.02
        assert abs(r["state_sparsity"] - want[1]) < 0.02
    assert os.path.getsize(os.path.join(out, "sparsity", "masks_study.png")) > 100
    assert "| 50% | learned |" in open(os.path.join(out, "sparsity", "results.md")).read()

    prof = os.path.join(out, "sparsity-channels", "profiles", "learned-channels-50.safetensors")
    assert M.load_profile(prof)[3]["method"] == "gumbel-sigmoid"
    ids = "1,5,9,30,2,7"
    c = subprocess.run([yunmin_bin(), "logits", "--model", model_dir, "--ids", ids,
                        "--sparsity", prof], capture_output=True, text=True, timeout=300)
    assert c.returncode == 0, c.stderr

    with open(os.path.join(out, "peft", "peft_results.json")) as f:
        peft = json.load(f)
    methods = {s["method"]: s for s in peft["summary"]}
    assert sorted(methods) == sorted(["full", "lora", "ia3", "hybrid", "hybrid-least",
                                      "lora-selective"])
    assert methods["full"]["trainable_fraction"] == 1.0
    assert methods["ia3"]["trainable_params"] < methods["hybrid"]["trainable_params"] < \
        methods["lora"]["trainable_params"]
    for name in ("first citizen-hybrid", "first citizen-lora", "first citizen-ia3"):
        d = os.path.join(out, "peft", "adapters", name)
        assert os.path.isdir(d), name
        c = subprocess.run([yunmin_bin(), "logits", "--model", model_dir, "--ids", ids,
                            "--adapter", d], capture_output=True, text=True, timeout=300)
        assert c.returncode == 0, c.stderr
        assert np.isfinite(np.array(json.loads(c.stdout)["logits"], dtype=float)).all()
    assert os.path.exists(os.path.join(out, "peft", "adapters", "first citizen-hybrid",
                                       "adapter_set.json"))
