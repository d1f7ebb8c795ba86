"""Hybrid PEFT against LoRA everywhere, IA³ only and full fine-tuning, on one character's voice.

    python -m yunmin_train.peft_study --model models/shakespeare-mamba \\
        --text data/tinyshakespeare.txt --profile LEARNED.safetensors --out-dir OUT \\
        [--character PETRUCHIO] [--steps 120] [--seeds 0,1,2] [--n-lora-layers 3] [--r 8]

Task (yunmin_train.adapters.character_splits): the character's speeches, every 5th one held out
as the test set, every 10th (offset 3) as the early-stopping validation set, the rest trained
on. Task loss = mean next-token NLL on the test speeches (windows of --seq-len tokens from a
zero state), at the parameters of the best validation loss.

Methods (the same steps, batch, schedule and per-kind learning rates for all):
  full            every weight of the model
  lora            LoRA r on in_proj, out_proj and x_proj of every layer
  ia3             IA³ on every layer: in_proj input, x_proj output, out_proj input
  hybrid          LoRA r on in_proj and out_proj of the --n-lora-layers most important layers
                  (learned-mask importance, adapters.layer_importance), IA³ on the others
  hybrid-least    the same with LoRA on the least important layers (does importance matter?)
  lora-selective  only the LoRA part of hybrid (no IA³ on the other layers)
Trainable fraction = trainable parameters / the model's parameters. Training time = seconds
inside the training steps (no evaluation), on the device it ran on.

Exports (seed of --export-seed): OUT/adapters/<character>-hybrid (adapter set), -lora, -ia3
(PEFT directories), the plan as OUT/plan.json. When transformers and peft are importable, the
IA³ adapter and the LoRA one (without its out_proj part, which PEFT refuses for Mamba) are
loaded by PEFT into transformers' MambaForCausalLM, merged, and compared with the toolkit's
forward with the same files (OUT/peft_results.json, "peft_check"). `--check DIR...` does only
that, for any adapter directories or sets (each part of a set on its own).
"""

import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import torch

from . import adapters as A
from .evaluate import pick_device
from .model import load_model
from .tokenizer import Tokenizer

METHODS = ("full", "lora", "ia3", "hybrid", "hybrid-least", "lora-selective")


def plans(importance, n_layer, n_lora, r, alpha):
    hy = A.hybrid_plan(importance, n_lora, r, alpha)
    least = A.hybrid_plan(importance, n_lora, r, alpha, least=True)
    return {"full": A.method_plan("full", n_layer),
            "lora": A.method_plan("lora", n_layer, r, alpha, lora_x_proj=True),
            "ia3": A.method_plan("ia3", n_layer),
            "hybrid": hy,
            "hybrid-least": least,
            "lora-selective": {"lora": hy["lora"], "ia3": None}}


def peft_check(model_dir, adapter_dirs, work):
    """PEFT's merged forward of our files vs the toolkit's forward (both float32)."""
    try:
        import transformers
        import peft
    except ImportError as e:
        return {"skipped": f"not importable: {e}"}
    out = {"transformers": transformers.__version__, "peft": peft.__version__}
    n_vocab = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json")).vocab_size
    ids = torch.tensor([[int(v) for v in np.random.default_rng(0).integers(5, n_vocab, 24)]])
    for name, d in adapter_dirs.items():
        try:
            src = d
            with open(os.path.join(d, "adapter_config.json")) as f:
                cfg = json.load(f)
            if cfg["peft_type"] == "LORA" and "out_proj" in cfg["target_modules"]:
                from . import safetensors_io
                src = os.path.join(work, name + "-no-out-proj")
                os.makedirs(src, exist_ok=True)
                t, meta = safetensors_io.load(os.path.join(d, "adapter_model.safetensors"))
                safetensors_io.save({k: v for k, v in t.items() if ".out_proj." not in k},
                                    os.path.join(src, "adapter_model.safetensors"), meta)
                cfg["target_modules"] = [m for m in cfg["target_modules"] if m != "out_proj"]
                with open(os.path.join(src, "adapter_config.json"), "w") as f:
                    json.dump(cfg, f)
            base = transformers.MambaForCausalLM.from_pretrained(model_dir,
                                                                 dtype=torch.float32)
            pm = peft.PeftModel.from_pretrained(base, src)
            merged = pm.merge_and_unload().eval()
            with torch.no_grad():
                got = merged(ids).logits[0].double()
            ref = load_model(model_dir)
            A.load_adapter(ref, src)
            plain = load_model(model_dir).eval()
            with torch.no_grad():
                want = ref.eval()(ids)[0].double()
                moved = float((plain(ids)[0].double() - want).abs().max())
            out[name] = {"checked": os.path.basename(src),
                         "max_abs_diff": float((got - want).abs().max()),
                         "adapter_moves_logits_by": moved}
        except Exception as e:       # recorded, not fatal: the C loader test is the contract
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m yunmin_train.peft_study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--text")
    ap.add_argument("--profile", action="append",
                    help="learned profile(s) for the importance")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--check", nargs="+", default=None, metavar="ADAPTER_DIR",
                    help="only cross-check these adapters (a set: each of its parts) with PEFT "
                         "and write OUT-DIR/peft_check.json")
    ap.add_argument("--character", default="PETRUCHIO")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--lr-lora", type=float, default=2e-3)
    ap.add_argument("--lr-ia3", type=float, default=1e-2)
    ap.add_argument("--lr-full", type=float, default=3e-4)
    ap.add_argument("--n-lora-layers", type=int, default=3)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--export-seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--no-peft-check", action="store_true")
    a = ap.parse_args(argv)

    os.makedirs(a.out_dir, exist_ok=True)
    if a.check:
        dirs = {}
        for d in a.check:
            name = os.path.basename(os.path.normpath(d))
            set_path = os.path.join(d, "adapter_set.json")
            if os.path.exists(set_path):
                with open(set_path, "r", encoding="utf-8") as f:
                    for part in json.load(f)["adapters"]:
                        dirs[f"{name}.{part}"] = os.path.join(d, part)
            else:
                dirs[name] = d
        res = peft_check(a.model, dirs, os.path.join(a.out_dir, "peft-check"))
        A._write_json(os.path.join(a.out_dir, "peft_check.json"), res)
        print(json.dumps(res), flush=True)
        return 0
    if not a.text or not a.profile:
        ap.error("--text and --profile are required (unless --check)")
    dev = pick_device(a.device)
    with open(a.text, "r", encoding="utf-8", newline="") as f:
        text = f.read()
    tok_path = os.path.join(a.model, "tokenizer.json")
    tr, va, te = A.task_ids(text, a.character, tok_path)
    n_layer = load_model(a.model).config.num_hidden_layers
    importance = A.layer_importance(a.profile)
    P = plans(importance, n_layer, a.n_lora_layers, a.r, a.alpha)
    A._write_json(os.path.join(a.out_dir, "plan.json"),
                  dict(P["hybrid"], profiles=[os.path.basename(p) for p in a.profile]))
    out = {"config": vars(a), "task": {"character": a.character, "train_tokens": int(tr.size),
                                       "val_tokens": int(va.size), "test_tokens": int(te.size)},
           "device": str(dev), "torch": torch.__version__, "importance": importance,
           "hybrid_lora_layers": P["hybrid"]["lora"]["layers"], "runs": []}
    base = load_model(a.model, device=dev).eval()
    out["base_test_loss"] = A._loss(base, te, a.seq_len)
    out["base_val_loss"] = A._loss(base, va, a.seq_len)
    del base
    res_path = os.path.join(a.out_dir, "peft_results.json")

    def save():
        with open(res_path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
        os.replace(res_path + ".tmp", res_path)

    exports = {}
    for seed in [int(s) for s in a.seeds.split(",")]:
        for method in a.methods.split(","):
            model = load_model(a.model, device=dev)
            res = A.finetune(model, P[method], tr, va, a.steps, a.batch_size, a.seq_len,
                             a.lr_lora, a.lr_ia3, a.lr_full, a.eval_every, seed, a.bf16)
            res["test_loss"] = A._loss(model, te, a.seq_len)
            res.update({"method": method, "seed": seed})
            out["runs"].append(res)
            save()
            print(json.dumps({k: v for k, v in res.items() if k != "history"}), flush=True)
            if seed == a.export_seed and method in ("hybrid", "lora", "ia3"):
                d = os.path.join(a.out_dir, "adapters", f"{a.character.lower()}-{method}")
                if os.path.isdir(d):
                    shutil.rmtree(d)
                A.save_adapter(model.cpu(), d, P[method], os.path.basename(
                    os.path.normpath(a.model)), f"{a.character} voice, {method}")
                exports[method] = d
            del model

    summary = []
    for method in a.methods.split(","):
        rs = [r for r in out["runs"] if r["method"] == method]
        tl = np.array([r["test_loss"] for r in rs])
        summary.append({"method": method, "trainable_params": rs[0]["trainable_params"],
                        "trainable_fraction": rs[0]["trainable_fraction"],
                        "test_loss_mean": float(tl.mean()),
                        "test_loss_sd": float(tl.std(ddof=1)) if len(tl) > 1 else 0.0,
                        "test_ppl_mean": float(np.exp(tl).mean()),
                        "train_s_mean": float(np.mean([r["train_s"] for r in rs])),
                        "best_step_mean": float(np.mean([r["best_step"] for r in rs])),
                        "n_seeds": len(rs)})
    out["summary"] = summary
    save()
    lines = [f"Task: {a.character}'s speeches ({tr.size} train / {va.size} val / {te.size} test "
             f"tokens); base model test loss {out['base_test_loss']:.4f} "
             f"(ppl {math.exp(out['base_test_loss']):.2f}).", "",
             "| method | trainable params | fraction | test loss | test ppl | train s | "
             "best step |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['method']} | {s['trainable_params']:,} | "
                     f"{100 * s['trainable_fraction']:.3f} % | {s['test_loss_mean']:.4f} ± "
                     f"{s['test_loss_sd']:.4f} | {s['test_ppl_mean']:.2f} | "
                     f"{s['train_s_mean']:.1f} | {s['best_step_mean']:.0f} |")
    with open(os.path.join(a.out_dir, "peft_results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    if not a.no_peft_check and exports:
        chk = {k: v for k, v in exports.items() if k in ("lora", "ia3")}
        out["peft_check"] = peft_check(a.model, chk, os.path.join(a.out_dir, "peft-check"))
        save()
        print(json.dumps(out["peft_check"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
