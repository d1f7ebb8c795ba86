"""Adapters written by the toolkit (yunmin_train.adapters) are read by the C loader exactly as the
toolkit means them: PEFT LoRA, PEFT IA³ (input and output scaling) and a hybrid adapter set,
each loaded by `yunmin logits --adapter` and compared with the toolkit's float64 forward of the
same files; the shipped example adapters give the same greedy text in `yunmin generate` as in
the toolkit. Plus the importance -> plan step, the task split, a short fine-tune and the
multipart upload body. Tiny random models on the CPU except for the shipped adapters.
"""
import email.parser
import email.policy
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from test_default_model import MODEL, yunmin_bin
from test_masks import tiny_model_dir
from yunmin_train import adapters as A
from yunmin_train import masks as M
from yunmin_train import safetensors_io as st
from yunmin_train.model import load_model
from yunmin_train.tokenizer import Tokenizer


def engine_adapter_logits(model_dir, ids, adapter_dir):
    c = subprocess.run([yunmin_bin(), "logits", "--model", model_dir, "--ids",
                        ",".join(map(str, ids)), "--adapter", adapter_dir, "--threads", "1"],
                       capture_output=True, text=True, timeout=300)
    assert c.returncode == 0, c.stderr
    return np.array(json.loads(c.stdout)["logits"], dtype=np.float64)


def randomize(model, seed):
    """Non-zero adapter values (a fresh LoRA has B = 0 and IA³ = 1, which would test nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, _, mod in A.adapted_modules(model):
            if mod.lora_A is not None:
                mod.lora_B.copy_(0.3 * torch.randn(mod.lora_B.shape, generator=g))
            if mod.ia3 is not None:
                mod.ia3.copy_(1 + 0.4 * torch.randn(mod.ia3.shape, generator=g))


PLANS = {
    "lora": {"lora": {"layers": [0, 2], "modules": ["in_proj", "x_proj", "out_proj"], "r": 4,
                      "alpha": 8}},
    "ia3": {"ia3": A.ia3_part([0, 1, 2])},
    "hybrid": {"lora": {"layers": [1], "modules": ["in_proj", "out_proj"], "r": 3, "alpha": 6,
                        "rslora": True},
               "ia3": A.ia3_part([0, 2])},
    "overlap": {"lora": {"layers": [0, 1, 2], "modules": ["in_proj", "dt_proj"], "r": 2,
                         "alpha": 4},
                "ia3": {"layers": [0, 1, 2], "modules": ["in_proj", "dt_proj", "out_proj"],
                        "feedforward": ["dt_proj"]}},
}


@pytest.mark.parametrize("name", sorted(PLANS))
def test_engine_applies_toolkit_adapters_as_the_toolkit(tmp_path, tiny_tokenizer_path, name):
    model_dir = tiny_model_dir(tmp_path, tiny_tokenizer_path, seed=21, use_bias=(name != "lora"))
    model = load_model(model_dir)
    A.attach(model, PLANS[name], seed=3)
    randomize(model, 4)
    out = str(tmp_path / name)
    A.save_adapter(model, out, PLANS[name], "tiny")
    if "lora" in PLANS[name] and "ia3" in PLANS[name]:
        with open(os.path.join(out, "adapter_set.json")) as f:
            assert json.load(f) == {"format": "yunmin-adapter-set", "version": 1,
                                    "adapters": ["lora", "ia3"]}
        with open(os.path.join(out, "ia3", "adapter_config.json")) as f:
            cfg = json.load(f)
        assert cfg["peft_type"] == "IA3" and "layers_to_transform" not in cfg
        if name == "hybrid":      # a subset of layers: regular expressions (PEFT's IA3Config)
            assert cfg["target_modules"] == \
                r"backbone\.layers\.(0|2)\.mixer\.(in_proj|out_proj|x_proj)"
            assert cfg["feedforward_modules"] == \
                r"backbone\.layers\.(0|2)\.mixer\.(in_proj|out_proj)"
    else:
        tensors, meta = st.load_numpy(os.path.join(out, "adapter_model.safetensors"))
        assert meta == {"format": "pt"}
        for k, v in tensors.items():
            assert k.startswith("base_model.model.backbone.layers.")
            if k.endswith("ia3_l"):
                ff = ".in_proj." in k or ".out_proj." in k
                assert v.shape[0] == 1 if ff else v.shape[1] == 1
    # Reference: a fresh float64 model with the files loaded back (the files are the contract).
    ref = load_model(model_dir, dtype=torch.float64)
    A.load_adapter(ref, out)
    ref = ref.double().eval()
    base = load_model(model_dir, dtype=torch.float64).eval()
    ids = [int(v) for v in np.random.default_rng(7).integers(0, 300, size=11)]
    with torch.no_grad():
        want = ref(torch.tensor([ids]))[0].numpy()
        plain = base(torch.tensor([ids]))[0].numpy()
        f32 = model.eval()(torch.tensor([ids]))[0].double().numpy()
    got = engine_adapter_logits(model_dir, ids, out)
    scale = max(1.0, float(np.abs(want).max()))
    diff = float(np.abs(got - want).max())
    print(f"{name}: max |engine - toolkit| {diff:.2e}; the adapter moves the logits by "
          f"{float(np.abs(plain - want).max()):.2e}")
    assert float(np.abs(f32 - want).max()) <= 2e-4 * scale      # save/load kept every value
    assert diff <= 2e-4 * scale
    assert float(np.abs(plain - want).max()) > 100 * 2e-4 * scale


def test_importance_plan_and_task_split(tmp_path):
    rng = np.random.default_rng(0)
    L, Di, N = 4, 16, 4
    ch = rng.normal(size=(L, Di)).astype(np.float32)
    ch[2] += 3.0                     # layer 2 keeps the most channels, then layer 0
    ch[0] += 1.5
    sl = np.ones((L, Di, N), dtype=np.float32)
    prof = str(tmp_path / "p.safetensors")
    M.save_profile(prof, ch, sl, "gumbel-sigmoid")
    imp = A.layer_importance([prof])
    assert [e["state"] for e in imp] == [None] * L
    plan = A.hybrid_plan(imp, n_lora_layers=2, r=4, alpha=8)
    assert plan["lora"]["layers"] == [0, 2] and plan["ia3"]["layers"] == [1, 3]
    assert plan["ranked"][:2] == [2, 0]
    least = A.hybrid_plan(imp, n_lora_layers=2, least=True)
    assert least["lora"]["layers"] == [1, 3]
    text = "".join(f"BOB:\nline {i}\n\nALICE:\nreply {i}\n\n" for i in range(20))
    tr, va, te = A.character_splits(text, "BOB")
    assert te.count("BOB:") == 4 and va.count("BOB:") == 2 and tr.count("BOB:") == 14
    assert "ALICE" not in tr + va + te and "line 0\n" in te and "line 3\n" in va


def test_finetune_lowers_the_task_loss_and_restores_the_best(tmp_path, tiny_tokenizer_path,
                                                            sample_text_path):
    model_dir = tiny_model_dir(tmp_path, tiny_tokenizer_path, seed=2)
    with open(sample_text_path, encoding="utf-8") as f:
        text = f.read()
    tr, va, te = A.task_ids(text, "First Citizen", tiny_tokenizer_path)
    model = load_model(model_dir)
    plan = PLANS["hybrid"]
    res = A.finetune(model, plan, tr, va, steps=12, batch_size=4, seq_len=16, lr_lora=1e-2,
                     lr_ia3=5e-2, eval_every=4, seed=0)
    assert res["val_loss"] < res["val_loss_before"]
    assert res["val_loss"] == pytest.approx(min(h["val_loss"] for h in res["history"]), abs=1e-5)
    assert abs(A._loss(model, va, 16) - res["val_loss"]) < 1e-4
    n = sum(p.numel() for p in load_model(model_dir).parameters())
    # LoRA r=3 on layer 1: in_proj 3 * (24 + 96), out_proj 3 * (48 + 24); IA³ on layers 0 and 2:
    # in_proj input 24, x_proj output 3 + 2 * 8, out_proj input 48.
    assert res["trainable_params"] == 3 * (24 + 96) + 3 * (48 + 24) + 2 * (24 + 19 + 48)
    assert res["base_params"] == n


def test_multipart_body_names_each_part_by_its_path(tmp_path):
    d = tmp_path / "set"
    for sub in ("lora", "ia3"):
        (d / sub).mkdir(parents=True)
        (d / sub / "adapter_config.json").write_text("{}")
        (d / sub / "adapter_model.safetensors").write_bytes(b"\x00\x01" + sub.encode())
    (d / "adapter_set.json").write_text(json.dumps({"format": "yunmin-adapter-set",
                                                    "version": 1, "adapters": ["lora", "ia3"]}))
    ctype, body = A.multipart_body(str(d))
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {ctype}\r\n\r\n".encode() + body)
    parts = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
             for p in msg.iter_parts()}
    assert sorted(parts) == sorted(["adapter_set.json", "lora/adapter_config.json",
                                    "lora/adapter_model.safetensors", "ia3/adapter_config.json",
                                    "ia3/adapter_model.safetensors"])
    assert parts["ia3/adapter_model.safetensors"] == b"\x00\x01ia3"


SHIPPED = os.path.join(MODEL, "adapters")


SHIPPED_NAMES = sorted(n for n in os.listdir(SHIPPED) if os.path.isdir(os.path.join(SHIPPED, n))) \
    if os.path.isdir(SHIPPED) else []


@pytest.mark.skipif(not SHIPPED_NAMES, reason="no shipped adapters")
@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_shipped_adapter_greedy_text_equals_toolkit(name):
    d = os.path.join(SHIPPED, name)
    prompt = "PETRUCHIO:\nNow, Kate,"
    n_new = 24
    tok = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    model = load_model(MODEL)
    A.load_adapter(model, d)
    ids = A.greedy(model.eval(), tok.encode(prompt), n_new, tok.vocab_size)
    base = A.greedy(load_model(MODEL).eval(), tok.encode(prompt), n_new, tok.vocab_size)
    eos = tok.token_to_id("<|endoftext|>")
    if eos in ids:
        ids = ids[:ids.index(eos)]
    want = tok.decode(ids)
    c = subprocess.run([yunmin_bin(), "generate", "--model", MODEL, "--adapter", d, "-p", prompt,
                        "-n", str(n_new), "--temperature", "0", "--threads", "1"],
                       capture_output=True, text=True, timeout=300)
    assert c.returncode == 0, c.stderr
    print(f"{name}: {c.stdout!r}")
    # yunmin generate ends its text with one newline of its own (before the stats line).
    assert c.stdout.endswith("\n")
    assert c.stdout[:-1] == want
    assert ids != base[:len(ids)], "the adapter must change the greedy text"


RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHIPPED, "petruchio-hybrid")),
                    reason="no shipped hybrid adapter")
def test_learned_profile_and_hybrid_adapter_served_together():
    """Seed pillars 2 + 3 at once on the default model: the engine serves the learned profile
    (channels removed, correlation order) with the hybrid adapter set compiled against it; the
    toolkit runs the dense model with the same masks and adapters (float64)."""
    prof = os.path.join(RESULTS, "learned-channels-50.sparsity.safetensors")
    adapter = os.path.join(SHIPPED, "petruchio-hybrid")
    tok = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    ids = tok.encode("PETRUCHIO:\nCome, come, you wasp")
    ref = load_model(MODEL, dtype=torch.float64)
    A.load_adapter(ref, adapter)
    ref = ref.double().eval()
    from yunmin_train.model import load_sparsity_masks
    masks = load_sparsity_masks(prof)
    with torch.no_grad():
        want = ref(torch.tensor([ids]), masks=masks)[0].numpy()
        dense = ref(torch.tensor([ids]))[0].numpy()
    c = subprocess.run([yunmin_bin(), "logits", "--model", MODEL, "--ids", ",".join(map(str, ids)),
                        "--sparsity", prof, "--adapter", adapter, "--threads", "1"],
                       capture_output=True, text=True, timeout=300)
    assert c.returncode == 0, c.stderr
    got = np.array(json.loads(c.stdout)["logits"], dtype=np.float64)
    diff = float(np.abs(got - want).max())
    print(f"max |engine - toolkit| {diff:.2e}; the masks move the adapted logits by "
          f"{float(np.abs(dense - want).max()):.2e}")
    assert diff <= 2e-4 * max(1.0, float(np.abs(want).max()))
