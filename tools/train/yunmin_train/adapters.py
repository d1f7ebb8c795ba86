"""Adapters from the toolkit (docs/ARCHITECTURE.md §5): LoRA and IA³ on Mamba's projections,
the hybrid allocation from learned-mask importance, fine-tuning, and PEFT-format files.

    python -m yunmin_train.adapters allocate --profile PROFILE [--profile P2] --out plan.json
    python -m yunmin_train.adapters tune --model DIR --text FILE --character NAME \\
        (--plan plan.json | --method lora|ia3|full) --out ADAPTER_DIR
    python -m yunmin_train.adapters generate --model DIR --adapter ADAPTER_DIR --prompt TEXT
    python -m yunmin_train.adapters upload --url http://HOST:PORT --name NAME [--key KEY] DIR

Numerics (what PEFT's merged model and yunmin's engine compute). A targeted projection
y = W x + b becomes, with an IA³ vector g and a LoRA (A [r, n_in], B [n_out, r], s = alpha / r,
or alpha / sqrt(r) with rsLoRA):
    feedforward IA³ (input scaling):   y = W (g ⊙ x) + b + s B A (g ⊙ x)
    output IA³:                        y = g ⊙ (W x + b + s B A x)      (the bias is scaled too)
LoRA alone is the first line with g = 1. Where a module has both, the LoRA applies first (as in
an adapter set: docs/FORMATS.md). IA³ on in_proj listed in feedforward_modules scales in_proj's
input, which is the block's RMSNorm output rmsnorm(h) * norm.weight: it is the same as
multiplying norm.weight by g (the "IA³ around the norms" of the seed), with d_model values.
IA³ on out_proj as feedforward scales y (per d_inner channel, after the silu(z) gate), IA³ on
x_proj as output scales dt_lo, B and C (the state expansion and contraction).

Hybrid plan. Layer importance comes from learned masks (yunmin_train.masks
learn, global allocation, so layers keep different fractions): per layer, the mean of
sigmoid(channel logit) (the soft fraction of channels the distillation wanted to keep) and the
mean of sigmoid(state logit) over the kept channels. Layers are ranked by the channel score
(by the state score when the profiles have no channel logits); the top --n-lora-layers get LoRA
on in_proj and out_proj (and x_proj with --lora-x-proj), the others IA³ on in_proj (input),
x_proj (output) and out_proj (input).

Files: a PEFT directory per kind (adapter_config.json with PEFT 0.21's keys, and
adapter_model.safetensors with PEFT's names base_model.model.backbone.layers.{l}.mixer.{module}.
lora_A.weight [r, n_in] / lora_B.weight [n_out, r] / ia3_l [n_out, 1] or [1, n_in]); a plan with
both kinds is written as an adapter set (adapter_set.json + lora/ + ia3/). PEFT itself refuses
LoRA on Mamba's out_proj (its fused GPU path bypasses it); yunmin accepts it (docs/ARCHITECTURE.md §5).
"""

import argparse
import json
import math
import os
import re
import sys
import time
import uuid

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data as data_mod
from . import safetensors_io
from .evaluate import nll_windows, pick_device
from .model import load_model
from .tokenizer import Tokenizer

MODULES = ("in_proj", "x_proj", "dt_proj", "out_proj")
PREFIX = "base_model.model."
PEFT_VERSION = "0.21.0"


# ---------------------------------------------------------------------------------------------
# the adapted projection

class AdaptedLinear(nn.Module):
    """A frozen nn.Linear with an optional LoRA and an optional IA³ vector (module docstring)."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.lora_A = None          # Parameter [r, n_in]
        self.lora_B = None          # Parameter [n_out, r]
        self.scaling = 0.0
        self.ia3 = None             # Parameter [n_in] (feedforward) or [n_out]
        self.ia3_ff = False

    @property
    def in_features(self):
        return self.base.in_features

    @property
    def out_features(self):
        return self.base.out_features

    def add_lora(self, r, alpha, rslora=False, generator=None):
        if self.lora_A is not None:
            raise ValueError("this module already has a LoRA (the toolkit holds one per module)")
        dev, dt = self.base.weight.device, torch.float32
        bound = 1.0 / math.sqrt(self.in_features)    # PEFT: kaiming_uniform_(a=sqrt(5))
        a = (torch.rand(r, self.in_features, generator=generator) * 2 - 1) * bound
        self.lora_A = nn.Parameter(a.to(dev, dt))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=dev, dtype=dt))
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r

    def add_ia3(self, feedforward):
        if self.ia3 is not None:
            raise ValueError("this module already has an IA³ vector")
        n = self.in_features if feedforward else self.out_features
        self.ia3 = nn.Parameter(torch.ones(n, device=self.base.weight.device,
                                           dtype=torch.float32))
        self.ia3_ff = bool(feedforward)

    def forward(self, x):
        if self.ia3 is not None and self.ia3_ff:
            x = x * self.ia3.to(x.dtype)
        y = self.base(x)
        if self.lora_A is not None:
            d = F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))
            y = y + d * self.scaling
        if self.ia3 is not None and not self.ia3_ff:
            y = y * self.ia3.to(y.dtype)
        return y


def _mixer(model, l):
    return model.backbone.layers[l].mixer


def _wrap(model, l, m):
    mixer = _mixer(model, l)
    mod = getattr(mixer, m)
    if not isinstance(mod, AdaptedLinear):
        mod = AdaptedLinear(mod)
        setattr(mixer, m, mod)
    return mod


def adapted_modules(model):
    """[(layer, module name, AdaptedLinear)] in layer, MODULES order."""
    out = []
    for l, layer in enumerate(model.backbone.layers):
        for m in MODULES:
            mod = getattr(layer.mixer, m)
            if isinstance(mod, AdaptedLinear):
                out.append((l, m, mod))
    return out


def attach(model, plan, seed=0):
    """Add the plan's LoRA and IA³ to the model (weights frozen unless plan['full']).
    Returns {"lora": [params], "ia3": [params], "full": [params]}."""
    groups = {"lora": [], "ia3": [], "full": []}
    if plan.get("full"):
        for p in model.parameters():
            p.requires_grad_(True)
            groups["full"].append(p)
        return groups
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    lo = plan.get("lora")
    if lo:
        # "layer_r" {str(layer): rank} (a per-layer allocation, fine-tuning only: save_adapter
        # writes one r) overrides r, with alpha scaled alike (the same alpha / r in every layer)
        layer_r = lo.get("layer_r") or {}
        for l in lo["layers"]:
            r = int(layer_r.get(str(l), lo["r"]))
            if r <= 0:
                continue
            for m in lo["modules"]:
                mod = _wrap(model, l, m)
                mod.add_lora(r, lo["alpha"] * r / lo["r"], lo.get("rslora", False), generator=g)
                groups["lora"] += [mod.lora_A, mod.lora_B]
    ia = plan.get("ia3")
    if ia:
        for l in ia["layers"]:
            for m in ia["modules"]:
                mod = _wrap(model, l, m)
                mod.add_ia3(m in ia.get("feedforward", []))
                groups["ia3"].append(mod.ia3)
    return groups


def count_trainable(groups):
    return sum(p.numel() for ps in groups.values() for p in ps)


# ---------------------------------------------------------------------------------------------
# PEFT files

def _lora_config(part, base_name):
    return {
        "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None,
        "auto_mapping": None, "base_model_name_or_path": base_name, "bias": "none",
        "corda_config": None, "ensure_weight_tying": False, "eva_config": None,
        "exclude_modules": None, "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "kasa_config": None, "layer_replication": None,
        "layers_pattern": None, "layers_to_transform": sorted(part["layers"]),
        "loftq_config": {}, "lora_alpha": part["alpha"], "lora_bias": False,
        "lora_dropout": 0.0, "lora_ga_config": None, "megatron_config": None,
        "megatron_core": "megatron.core", "modules_to_save": None, "monteclora_config": None,
        "peft_type": "LORA", "peft_version": PEFT_VERSION, "qalora_group_size": 16,
        "r": part["r"], "rank_pattern": {}, "revision": None,
        "target_modules": sorted(part["modules"]), "target_parameters": None,
        "task_type": "CAUSAL_LM", "trainable_token_indices": None, "use_bdlora": None,
        "use_dora": False, "use_qalora": False, "use_rslora": bool(part.get("rslora", False)),
        "velora_config": None,
    }


def _module_regex(layers, modules):
    """A PEFT target regex (matched against the whole module name) for some layers' modules."""
    ls = "|".join(str(l) for l in sorted(layers))
    ms = "|".join(sorted(modules))
    return rf"backbone\.layers\.({ls})\.mixer\.({ms})"


def _ia3_config(part, base_name, n_layer):
    """PEFT 0.21's IA3Config has no layers_to_transform (it warns and ignores the key), so a
    subset of layers is named by regular expressions, as IA3Config allows for both lists."""
    ff = sorted(part.get("feedforward", []))
    if sorted(part["layers"]) == list(range(n_layer)):
        targets, ffm = sorted(part["modules"]), ff
    else:
        targets = _module_regex(part["layers"], part["modules"])
        ffm = _module_regex(part["layers"], ff) if ff else []
    return {
        "auto_mapping": None, "base_model_name_or_path": base_name, "exclude_modules": None,
        "fan_in_fan_out": False, "feedforward_modules": ffm, "inference_mode": True,
        "init_ia3_weights": True, "modules_to_save": None, "peft_type": "IA3",
        "peft_version": PEFT_VERSION, "revision": None, "target_modules": targets,
        "task_type": "CAUSAL_LM",
    }


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _save_peft(model, out_dir, kind, part, base_name):
    os.makedirs(out_dir, exist_ok=True)
    tensors = {}
    for l, m, mod in adapted_modules(model):
        key = f"{PREFIX}backbone.layers.{l}.mixer.{m}"
        if kind == "lora" and mod.lora_A is not None:
            tensors[f"{key}.lora_A.weight"] = mod.lora_A.detach().float().cpu().contiguous()
            tensors[f"{key}.lora_B.weight"] = mod.lora_B.detach().float().cpu().contiguous()
        elif kind == "ia3" and mod.ia3 is not None:
            v = mod.ia3.detach().float().cpu()
            tensors[f"{key}.ia3_l"] = (v[None, :] if mod.ia3_ff else v[:, None]).contiguous()
    if not tensors:
        raise ValueError(f"no {kind} tensors to save")
    safetensors_io.save(tensors, os.path.join(out_dir, "adapter_model.safetensors"),
                        metadata={"format": "pt"})
    cfg = _lora_config(part, base_name) if kind == "lora" else \
        _ia3_config(part, base_name, model.config.num_hidden_layers)
    _write_json(os.path.join(out_dir, "adapter_config.json"), cfg)


def save_adapter(model, out_dir, plan, base_name="shakespeare-mamba", description=None):
    """Write the plan's adapters: one PEFT directory (one kind) or an adapter set (both)."""
    lo, ia = plan.get("lora"), plan.get("ia3")
    if plan.get("full") or not (lo or ia):
        raise ValueError("only LoRA / IA³ plans are saved as adapters")
    if lo and ia:
        os.makedirs(out_dir, exist_ok=True)
        _save_peft(model, os.path.join(out_dir, "lora"), "lora", lo, base_name)
        _save_peft(model, os.path.join(out_dir, "ia3"), "ia3", ia, base_name)
        s = {"format": "yunmin-adapter-set", "version": 1, "adapters": ["lora", "ia3"]}
        if description:
            s["description"] = description
        _write_json(os.path.join(out_dir, "adapter_set.json"), s)
    elif lo:
        _save_peft(model, out_dir, "lora", lo, base_name)
    else:
        _save_peft(model, out_dir, "ia3", ia, base_name)


def _matches(name, targets):
    """PEFT's rule: a list entry t matches name k when k == t or k ends with '.t'; a string is
    a regular expression that must match the whole name."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def load_peft(model, adapter_dir):
    """Attach a PEFT LoRA or IA³ directory to the model (the toolkit's reference of what it
    means). Supports what save_adapter writes and PEFT's plain forms: list or regex targets,
    layers_to_transform, use_rslora; refuses rank_pattern / alpha_pattern and other features."""
    with open(os.path.join(adapter_dir, "adapter_config.json"), "r", encoding="utf-8") as f:
        cfg = json.load(f)
    tensors, _ = safetensors_io.load(os.path.join(adapter_dir, "adapter_model.safetensors"))
    kind = cfg.get("peft_type")
    if kind not in ("LORA", "IA3"):
        raise ValueError(f"{adapter_dir}: peft_type {kind!r}")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{adapter_dir}: rank_pattern / alpha_pattern are not supported here")
    layers = cfg.get("layers_to_transform")
    if isinstance(layers, int):
        layers = [layers]
    used = set()
    for l in range(model.config.num_hidden_layers):
        if layers is not None and l not in layers:
            continue
        for m in MODULES:
            name = f"backbone.layers.{l}.mixer.{m}"
            if not _matches(name, cfg["target_modules"]):
                continue
            key = PREFIX + name
            mod = _wrap(model, l, m)
            dev = mod.base.weight.device
            if kind == "LORA":
                A = tensors[f"{key}.lora_A.weight"].float()
                B = tensors[f"{key}.lora_B.weight"].float()
                r = A.shape[0]
                if r != cfg["r"] or tuple(A.shape) != (r, mod.in_features) or \
                        tuple(B.shape) != (mod.out_features, r):
                    raise ValueError(f"{key}: LoRA shapes {tuple(A.shape)} {tuple(B.shape)}")
                mod.add_lora(r, cfg.get("lora_alpha", 8), bool(cfg.get("use_rslora")))
                mod.lora_A.data.copy_(A.to(dev))
                mod.lora_B.data.copy_(B.to(dev))
                used |= {f"{key}.lora_A.weight", f"{key}.lora_B.weight"}
            else:
                ff = _matches(name, cfg.get("feedforward_modules") or [])
                v = tensors[f"{key}.ia3_l"].float()
                want = (1, mod.in_features) if ff else (mod.out_features, 1)
                if tuple(v.shape) != want:
                    raise ValueError(f"{key}.ia3_l: shape {tuple(v.shape)}, want {want}")
                mod.add_ia3(ff)
                mod.ia3.data.copy_(v.reshape(-1).to(dev))
                used.add(f"{key}.ia3_l")
    extra = set(tensors) - used
    if extra:
        raise ValueError(f"{adapter_dir}: tensors for untargeted modules: {sorted(extra)[:4]}")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_adapter(model, adapter_dir):
    """A PEFT directory or an adapter set (its parts in adapter_set.json order; the toolkit's
    modules apply LoRA before IA³ whatever that order, as the set's meaning requires)."""
    set_path = os.path.join(adapter_dir, "adapter_set.json")
    if os.path.exists(set_path):
        with open(set_path, "r", encoding="utf-8") as f:
            s = json.load(f)
        if s.get("format") != "yunmin-adapter-set" or s.get("version") != 1:
            raise ValueError(f"{set_path}: not a yunmin-adapter-set version 1")
        for name in s["adapters"]:
            load_peft(model, os.path.join(adapter_dir, name))
        return model
    return load_peft(model, adapter_dir)


# ---------------------------------------------------------------------------------------------
# importance and the hybrid plan

def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def layer_importance(profile_paths):
    """Per layer {"channel": mean sigmoid(channel logits) or None, "state": mean sigmoid(state
    logits) over kept channels or None}, from learned profiles. A kind whose logits are all
    equal in a profile (not learned there) carries no information and is skipped; when several
    profiles give the same kind, their scores are averaged."""
    from .masks import load_profile
    chans, states = [], []
    for p in profile_paths:
        ch, st, _, _ = load_profile(p)
        if np.ptp(ch) > 0:
            chans.append(_sigmoid(ch).mean(axis=1))
        kept = ch > 0
        if np.ptp(st[kept]) > 0 if kept.any() else False:
            s = _sigmoid(st)
            states.append(np.array([s[l][kept[l]].mean() if kept[l].any() else 0.0
                                    for l in range(st.shape[0])]))
    n = len((chans or states)[0]) if (chans or states) else 0
    if n == 0:
        raise ValueError("no learned logits in the given profiles")
    c = np.mean(chans, axis=0) if chans else None
    s = np.mean(states, axis=0) if states else None
    return [{"layer": l, "channel": None if c is None else float(c[l]),
             "state": None if s is None else float(s[l])} for l in range(n)]


def hybrid_plan(importance, n_lora_layers=3, r=8, alpha=16, lora_x_proj=False, least=False):
    """LoRA on the n most important layers, IA³ on the others (least=True: the n least
    important get LoRA, a control)."""
    key = "channel" if importance[0]["channel"] is not None else "state"
    ranked = sorted(importance, key=lambda e: (-e[key], e["layer"]))
    if least:
        ranked = ranked[::-1]
    lora_layers = sorted(e["layer"] for e in ranked[:n_lora_layers])
    rest = sorted(e["layer"] for e in ranked[n_lora_layers:])
    plan = {"importance_key": key, "importance": importance, "ranked": [e["layer"] for e in ranked]}
    plan["lora"] = {"layers": lora_layers, "r": r, "alpha": alpha,
                    "modules": ["in_proj", "out_proj"] + (["x_proj"] if lora_x_proj else [])} \
        if lora_layers else None
    plan["ia3"] = ia3_part(rest) if rest else None
    return plan


def ia3_part(layers):
    return {"layers": list(layers), "modules": ["in_proj", "x_proj", "out_proj"],
            "feedforward": ["in_proj", "out_proj"]}


def method_plan(method, n_layer, r=8, alpha=16, lora_x_proj=True):
    """The comparison plans: 'lora' (LoRA on in_proj, out_proj[, x_proj] of every layer),
    'ia3' (IA³ on every layer), 'full' (every weight)."""
    if method == "full":
        return {"full": True}
    if method == "lora":
        return {"lora": {"layers": list(range(n_layer)), "r": r, "alpha": alpha,
                         "modules": ["in_proj", "out_proj"] + (["x_proj"] if lora_x_proj else [])},
                "ia3": None}
    if method == "ia3":
        return {"lora": None, "ia3": ia3_part(range(n_layer))}
    raise ValueError(f"unknown method {method!r}")


# ---------------------------------------------------------------------------------------------
# the downstream task: one character's voice

def character_splits(text, character):
    """(train, val, test) texts: the character's speeches (blocks separated by a blank line
    whose first line is 'NAME:'), over the whole file in order; block i goes to test when
    i % 5 == 0, to val when i % 10 == 3, else to train. Blocks are joined by a blank line."""
    blocks = [b for b in text.split("\n\n") if b.split("\n", 1)[0] == character + ":"]
    if len(blocks) < 10:
        raise ValueError(f"{character!r}: only {len(blocks)} speeches in the text")
    parts = {"train": [], "val": [], "test": []}
    for i, b in enumerate(blocks):
        parts["test" if i % 5 == 0 else "val" if i % 10 == 3 else "train"].append(b)
    return tuple("\n\n".join(parts[k]) + "\n\n" for k in ("train", "val", "test"))


def task_ids(text, character, tokenizer_path):
    tok = Tokenizer.from_file(tokenizer_path)
    return tuple(np.asarray(tok.encode(t), dtype=np.int32)
                 for t in character_splits(text, character))


# ---------------------------------------------------------------------------------------------
# fine-tuning

def _loss(model, ids, ctx):
    total, count = nll_windows(model, ids, ctx, batch_size=64)
    return total / count


def finetune(model, plan, train_ids, val_ids, steps=200, batch_size=8, seq_len=128,
             lr_lora=2e-3, lr_ia3=1e-2, lr_full=3e-4, eval_every=10, seed=0, bf16=False,
             log=None):
    """Attach the plan and train it on random windows of train_ids (next-token cross-entropy,
    AdamW without weight decay, linear warmup over 10 % of the steps then cosine to 0), with
    early stopping: the parameters of the best held-out (val_ids) loss are restored at the end.
    Returns a summary dict."""
    dev = model.backbone.norm_f.weight.device
    torch.manual_seed(seed)
    n_base = sum(p.numel() for p in model.parameters())
    groups = attach(model, plan, seed=seed)
    n_train = count_trainable(groups)
    opt_groups = [{"params": ps, "lr": lr} for ps, lr in
                  ((groups["lora"], lr_lora), (groups["ia3"], lr_ia3), (groups["full"], lr_full))
                  if ps]
    for gr in opt_groups:
        gr["peak"] = gr["lr"]
    opt = torch.optim.AdamW(opt_groups, weight_decay=0.0, betas=(0.9, 0.99))
    sampler = data_mod.BatchSampler(np.asarray(train_ids), batch_size, seq_len, seed=seed,
                                    device=dev)
    params = [p for gr in opt_groups for p in gr["params"]]
    amp = bool(bf16 and dev.type == "cuda")
    from .masks import autocast_bf16
    model.eval()
    base_val = _loss(model, val_ids, seq_len)
    best = {"val_loss": base_val, "step": 0, "state": [p.detach().clone() for p in params]}
    warm = max(1, steps // 10)
    train_s = 0.0
    hist = []
    for step in range(1, steps + 1):
        frac = step / warm if step <= warm else \
            0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
        for gr in opt.param_groups:
            gr["lr"] = gr["peak"] * frac
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        model.train()
        x, y = sampler.next()
        with autocast_bf16(amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        train_s += time.time() - t0
        if step % eval_every == 0 or step == steps:
            model.eval()
            vl = _loss(model, val_ids, seq_len)
            rec = {"step": step, "train_loss": round(float(loss), 5), "val_loss": round(vl, 5)}
            hist.append(rec)
            if log:
                log(rec)
            if vl < best["val_loss"]:
                best = {"val_loss": vl, "step": step,
                        "state": [p.detach().clone() for p in params]}
    with torch.no_grad():
        for p, v in zip(params, best["state"]):
            p.copy_(v)
    model.eval()
    return {"trainable_params": n_train, "base_params": n_base,
            "trainable_fraction": n_train / n_base, "train_s": train_s,
            "steps": steps, "best_step": best["step"], "val_loss_before": base_val,
            "val_loss": best["val_loss"], "history": hist}


# ---------------------------------------------------------------------------------------------
# upload (PUT /v1/adapters/{name}, docs/API.md)

def adapter_files(adapter_dir):
    """Relative paths of the files an upload sends (what the server accepts as part names)."""
    out = []
    for rel in ("adapter_set.json", "adapter_config.json", "adapter_model.safetensors"):
        if os.path.exists(os.path.join(adapter_dir, rel)):
            out.append(rel)
    set_path = os.path.join(adapter_dir, "adapter_set.json")
    if os.path.exists(set_path):
        with open(set_path, "r", encoding="utf-8") as f:
            for sub in json.load(f)["adapters"]:
                for fn in ("adapter_config.json", "adapter_model.safetensors"):
                    out.append(f"{sub}/{fn}")
    return out


def multipart_body(adapter_dir):
    """(content type, body bytes): one form-data part per file, named by its path."""
    boundary = "yunmin-" + uuid.uuid4().hex
    chunks = []
    for rel in adapter_files(adapter_dir):
        with open(os.path.join(adapter_dir, rel), "rb") as f:
            data = f.read()
        ctype = "application/json" if rel.endswith(".json") else "application/octet-stream"
        chunks.append((f"--{boundary}\r\nContent-Disposition: form-data; name=\"{rel}\"; "
                       f"filename=\"{os.path.basename(rel)}\"\r\nContent-Type: {ctype}\r\n\r\n"
                       ).encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks)


def upload(url, name, adapter_dir, key=None, timeout=60):
    import urllib.error
    import urllib.request
    ctype, body = multipart_body(adapter_dir)
    req = urllib.request.Request(url.rstrip("/") + f"/v1/adapters/{name}", data=body,
                                 method="PUT", headers={"Content-Type": ctype})
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read().decode("utf-8") or "{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode("utf-8") or "{}")


# ---------------------------------------------------------------------------------------------
# CLI

def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m yunmin_train.adapters", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("allocate", help="hybrid plan from learned-mask importance")
    p.add_argument("--profile", action="append", required=True, help="learned profile(s)")
    p.add_argument("--n-lora-layers", type=int, default=3)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--lora-x-proj", action="store_true")
    p.add_argument("--least", action="store_true", help="LoRA on the least important (control)")
    p.add_argument("--out", required=True)
    p = sub.add_parser("tune", help="fine-tune a plan on one character's speeches, export it")
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--character", default="PETRUCHIO")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--plan", help="plan.json from allocate")
    g.add_argument("--method", choices=["lora", "ia3", "full"])
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr-lora", type=float, default=2e-3)
    p.add_argument("--lr-ia3", type=float, default=1e-2)
    p.add_argument("--lr-full", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--out", required=True, help="adapter directory (or model dir for full)")
    p = sub.add_parser("generate", help="greedy (or sampled) text with an adapter, toolkit side")
    p.add_argument("--model", required=True)
    p.add_argument("--adapter", default=None)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p = sub.add_parser("upload", help="PUT the adapter to a yunmind server")
    p.add_argument("--url", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--key", default=os.environ.get("YUNMIN_API_KEY"))
    p.add_argument("dir")
    a = ap.parse_args(argv)

    if a.cmd == "allocate":
        plan = hybrid_plan(layer_importance(a.profile), a.n_lora_layers, a.r, a.alpha,
                           a.lora_x_proj, a.least)
        plan["profiles"] = [os.path.basename(x) for x in a.profile]
        _write_json(a.out, plan)
        print(json.dumps({k: plan[k] for k in ("ranked", "lora", "ia3")}))
        return 0
    if a.cmd == "upload":
        status, body = upload(a.url, a.name, a.dir, a.key)
        print(json.dumps({"status": status, "response": body}))
        return 0 if status in (200, 201) else 1
    if a.cmd == "generate":
        model = load_model(a.model, device=a.device).eval()
        if a.adapter:
            load_adapter(model, a.adapter)
        tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
        ids = greedy(model, tok.encode(a.prompt), a.max_new_tokens, tok.vocab_size)
        print(json.dumps({"ids": ids, "text": tok.decode(ids)}))
        return 0

    dev = pick_device(a.device)
    model = load_model(a.model, device=dev)
    with open(a.text, "r", encoding="utf-8", newline="") as f:
        text = f.read()
    tr, va, te = task_ids(text, a.character, os.path.join(a.model, "tokenizer.json"))
    if a.plan:
        with open(a.plan, "r", encoding="utf-8") as f:
            plan = json.load(f)
    else:
        plan = method_plan(a.method, model.config.num_hidden_layers, a.r, a.alpha)
    model.eval()
    test_before = _loss(model, te, a.seq_len)
    res = finetune(model, plan, tr, va, a.steps, a.batch_size, a.seq_len, a.lr_lora, a.lr_ia3,
                   a.lr_full, seed=a.seed, bf16=a.bf16, log=lambda r: print(json.dumps(r)))
    res["test_loss_before"] = test_before
    res["test_loss"] = _loss(model, te, a.seq_len)
    if plan.get("full"):
        from .model import save_model
        save_model(model, a.out, dtype="float32",
                   tokenizer_path=os.path.join(a.model, "tokenizer.json"))
    else:
        save_adapter(model, a.out, plan, os.path.basename(os.path.normpath(a.model)),
                     f"{a.character} voice")
    res.pop("history")
    print(json.dumps(res))
    return 0


@torch.no_grad()
def greedy(model, prompt_ids, n_new, n_vocab=None):
    """Greedy continuation (prefill, then one token at a time through the state); the argmax
    runs over the first n_vocab logits (the tokenizer's, not the embedding's padding rows),
    ties to the lowest id, as `yunmin generate --temperature 0` does."""
    dev = model.backbone.norm_f.weight.device
    logits, state = model(torch.tensor([list(prompt_ids)], device=dev), return_state=True)
    out = []
    for _ in range(n_new):
        last = logits[0, -1, :n_vocab] if n_vocab else logits[0, -1]
        nxt = int(torch.argmax(last))
        out.append(nxt)
        logits, state = model(torch.tensor([[nxt]], device=dev), state=state, return_state=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
