"""Head and state-entry sparsity of a Mamba-2 model: magnitude vs random vs learned masks.

    python -m yunmin_train.mamba2_study --model DIR --text TRAIN.txt --val-text VAL.txt \\
        --seed 1 --out seed1.json [--levels 0.5,0.75,0.9] [--time-budget S] [--bf16]
    python -m yunmin_train.mamba2_study --merge seed*.json --out-dir DIR
    python -m yunmin_train.mamba2_study export --model DIR --text TRAIN.txt --kind state \\
        --method magnitude --level 0.75 --out yunmin.sparsity.safetensors [--seed 1]
    python -m yunmin_train.mamba2_study export ... --method learned-mag --steps 120 --batch 4 \\
        [--lr 0.05] [--max-seconds S] [--device cpu]

Owns: the Mamba-2 mask study (scores, masks, learned gates, rows, merge). Runs: one process per
seed (they can share a GPU). Must not: change the model's weights (only mask gates learn).

Masks (the semantics of yunmin_train.mamba2, per layer; H heads of P channels, N state entries):
  head   [L, H]     a dropped head computes nothing: its state is held at 0 and its y (the D x
                    skip included) is 0 before the gated norm; the norm still runs over the
                    group's full width with those zeros in it.
  state  [L, H, N]  entry n of head h dropped: S[h, :, n] held at 0 (B[n] and C[n] do not
                    contribute for that head).
Level p: the fraction dropped. "same share per layer": round(p * H) heads (or round(p * H * N)
entries) dropped in every layer; "free" (learned-free): one threshold over the whole model.
Methods:
  magnitude     mean |S| over calibration tokens (--calib-tokens of the training text, windows
                of --ctx tokens each from a zero state; the start depends on the seed) of the
                head (mean over its P x N entries) or of the entry (mean over P); the lowest
                dropped.
  random        seeded uniform scores.
  learned       Gumbel-Sigmoid gates with a straight-through hard mask (forward: exactly 0/1,
                backward: the sigmoid's gradient), logits trained by distillation from the dense
                model (KL of the next-token distributions + 1 - cos of the final hidden states)
                on random windows of the training text; the threshold is recomputed every step
                at the ramped target quantile (cubic ramp over the first half, temperature
                annealed 1 -> 0.1), so the hard mask always meets the target and the logits
                learn an order; at the end the top logits are kept. learned-free: the same with
                one quantile over all layers. learned-mag: learned (per layer) starting from
                the magnitude scores instead of constant logits: per layer 2 x the z-score of
                log(score), the start masks.py and block_masks.py use for Mamba-1.
Each row: held-out perplexity and KL(dense || masked) per token on the first --eval-windows
windows of --ctx tokens of the held-out text (evaluate.py's protocol), the state bytes and SSM
FLOPs per token kept (below). Rows are appended to --out (rewritten atomically) as they finish.

export: one mask of the study (magnitude or random scores, the same calibration tokens and
"same share per layer" selection as the study's rows for that seed) written as the engine's head
profile (docs/FORMATS.md): per layer head_logits [H] and state_logits [H, N], +1 kept, -1
dropped, with metadata format, version, method, kind, level, seed and the calibration window;
`yunmin perplexity/bench/generate/serve --sparsity FILE` then serve the masked model.
The learned methods run the study's own learn_gates with the study's start (learned-mag: the
same magnitude scores; learned, learned-free: constant logits), seed, and final selection
(keep_top of the logits, per layer or "free"), for --steps steps of --batch x --ctx tokens of
the training text at --lr. --max-seconds stops the learning early (after at least one step);
the schedule stays the one for --steps, so a stopped run is not the study's mask, and the
metadata's steps_run says how many steps ran. The profile meets the level exactly either way.
--share group (state, magnitude): one keep row per group of heads instead of per head
(group_keep), so an entry is dropped for every head that reads the same B and C; with n_groups
1 that is one mask per layer.

Counted per token (recurrent form, float32 state): state bytes = 4 P * (kept (h, n) pairs);
SSM FLOPs = 5 P * (kept (h, n) pairs) (decay, input outer product and add: 3; readout: 2).
A dropped head also saves its projection rows: in_proj's z, x and dt rows (2P + 1) and
out_proj's P columns, 2 D FLOPs each, and its P conv channels (2 K each); those are counted in
mixer_flops. With n_groups 1 a dropped state entry saves no projection work unless every head
of the layer drops it (not counted).
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data as data_mod
from .evaluate import pick_device, window_batches, windows
from . import masks as M
from .mamba2 import allow_tf32, load_model
from .scale_study import fmt_summary, summarize

KINDS = ("head", "state")
METHODS = ("magnitude", "random", "learned", "learned-free", "learned-mag")
LEARNED = {"learned": "layer", "learned-free": "free", "learned-mag": "layer"}
SHARES = ("head", "group")
GROUP_SCORES = ("mean", "norm")


# ---------------------------------------------------------------------------------------------
# scores and masks

def keep_top(scores, level, allocation="layer"):
    """Boolean keep mask of scores [L, ...]: per layer (or over everything with "free") the
    round(level * count) lowest scores are dropped (ties: lower flat index dropped first)."""
    s = np.asarray(scores, dtype=np.float64)
    L = s.shape[0]
    flat = s.reshape(L, -1)
    keep = np.ones(flat.shape, dtype=bool)
    if allocation == "free":
        n_drop = int(math.floor(level * flat.size + 0.5))
        order = np.argsort(flat.reshape(-1), kind="stable")[:n_drop]
        keep.reshape(-1)[order] = False
    else:
        n_drop = int(math.floor(level * flat.shape[1] + 0.5))
        for l in range(L):
            keep[l, np.argsort(flat[l], kind="stable")[:n_drop]] = False
    return keep.reshape(s.shape)


def group_keep(score, level, n_groups, how="mean"):
    """Keep mask [L, H, N] of state-entry scores [L, H, N] shared by the heads of each group
    (heads g*H/G .. (g+1)*H/G - 1 read group g's B and C): per group and entry the mean over
    its heads of the score ("mean"), or of each head's scores divided by that head's mean
    ("norm"); then per layer the round(level * G * N) lowest (group, entry) pairs dropped
    (keep_top), the same row for every head of the group. An entry a whole group drops leaves
    B[n] and C[n] of that group unread."""
    s = np.asarray(score, dtype=np.float64)
    L, H, N = s.shape
    if how == "norm":
        s = s / np.maximum(s.mean(axis=2, keepdims=True), 1e-30)
    g = s.reshape(L, n_groups, H // n_groups, N).mean(axis=2)
    keep = keep_top(g, level)
    return np.repeat(keep, H // n_groups, axis=1)


@torch.no_grad()
def state_magnitude(model, ids, ctx=256, batch_size=8):
    """Mean |S[h, p, n]| over every token of `ids` cut into windows of ctx tokens, each run from
    a zero state: per layer [H, P, N] (float64 numpy), through the mixers' ssd_hook with the
    sequential recurrence."""
    c = model.config
    acc = [torch.zeros(c.num_heads, c.head_dim, c.state_size, dtype=torch.float64,
                       device=model.backbone.norm_f.weight.device) for _ in range(c.num_hidden_layers)]
    count = [0]

    def hook_for(l):
        def hook(x, dt, A, Bh):
            Bsz, T, H, P = x.shape
            s = torch.zeros(Bsz, H, P, Bh.shape[-1], dtype=x.dtype, device=x.device)
            for t in range(T):
                s = torch.exp(dt[:, t] * A)[:, :, None, None] * s \
                    + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
                acc[l] += s.abs().sum(0).double()
            if l == 0:
                count[0] += Bsz * T
        return hook

    layers = model.backbone.layers
    for l, layer in enumerate(layers):
        layer.mixer.ssd_hook = hook_for(l)
    try:
        wins = [w for w in windows(np.asarray(ids), ctx) if len(w) == ctx] or \
            windows(np.asarray(ids), ctx)
        dev = model.backbone.norm_f.weight.device
        for x in window_batches(wins, batch_size, dev):
            model(x)
    finally:
        for layer in layers:
            layer.mixer.ssd_hook = None
    return np.stack([(a / max(1, count[0])).cpu().numpy() for a in acc])


def profile_tensors(kind, keep, cfg):
    """The engine's head profile (docs/FORMATS.md) of a keep mask of `kind` ([L, H] heads or
    [L, H, N] state entries): {name: float32 array}, logits +1 kept and -1 dropped."""
    L, H, N = cfg.num_hidden_layers, cfg.num_heads, cfg.state_size
    keep = np.asarray(keep, dtype=bool)
    heads = keep.reshape(L, H) if kind == "head" else np.ones((L, H), dtype=bool)
    state = keep.reshape(L, H, N) if kind == "state" else np.ones((L, H, N), dtype=bool)
    out = {}
    for l in range(L):
        out[f"layers.{l}.head_logits"] = np.where(heads[l], 1.0, -1.0).astype(np.float32)
        out[f"layers.{l}.state_logits"] = np.where(state[l], 1.0, -1.0).astype(np.float32)
    return out


def frozen_model(path, device):
    """(device, the model at path on it in eval mode with every weight frozen): only mask
    gates learn here."""
    dev = pick_device(device)
    model = load_model(path, device=dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if dev.type == "cuda":
        allow_tf32()
    return dev, model


def export(argv):
    """`export`: write one magnitude, random or learned mask as an engine head profile."""
    ap = argparse.ArgumentParser(prog="python -m yunmin_train.mamba2_study export",
                                 description="write one mask of the study as the engine's "
                                             "sparsity profile (yunmin.sparsity.safetensors)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", default=None, help="default: the model's tokenizer.json")
    ap.add_argument("--text", required=True, help="training text: the calibration tokens")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--kind", choices=KINDS, required=True)
    ap.add_argument("--method", choices=METHODS, default="magnitude")
    ap.add_argument("--level", type=float, required=True, help="fraction dropped, [0, 1)")
    ap.add_argument("--seed", type=int, default=1, help="the calibration start (and random)")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=120, help="learned: steps of learning")
    ap.add_argument("--batch", type=int, default=8, help="learned: windows per step")
    ap.add_argument("--lr", type=float, default=0.05, help="learned: Adam's learning rate")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="learned: stop learning after this many seconds (at least one step)")
    ap.add_argument("--bf16", action="store_true", help="learned, on CUDA: bf16 autocast")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--share", choices=SHARES, default="head",
                    help="state, magnitude: one mask per head (the study's) or one per group "
                         "of heads (score: --group-score over the group's heads)")
    ap.add_argument("--group-score", choices=GROUP_SCORES, default="mean",
                    help="--share group: the heads' mean |S| averaged (mean) or each head's "
                         "scores divided by their mean first (norm: every head votes equally)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if not 0.0 <= a.level < 1.0:
        ap.error("--level must be in [0, 1)")
    if a.share == "group" and (a.kind != "state" or a.method != "magnitude"):
        ap.error("--share group needs --kind state --method magnitude")
    if a.steps < 1 or a.batch < 1 or not a.lr > 0.0:
        ap.error("--steps and --batch must be >= 1 and --lr > 0")
    if a.max_seconds is not None and not a.max_seconds > 0.0:
        ap.error("--max-seconds must be > 0")
    from . import safetensors_io
    dev, model = frozen_model(a.model, a.device)
    cfg = model.config
    tok = a.tokenizer or os.path.join(a.model, "tokenizer.json")
    # the whole text is the training split, as in the study with --val-text
    tr = data_mod.tokenize_cached(data_mod.read_text(a.text), tok, a.cache_dir, "train")
    n_cal = min(a.calib_tokens, max(a.ctx, tr.size - 1))
    cal0 = (a.seed * 7919 * n_cal) % max(1, tr.size - n_cal)   # run()'s window for this seed
    extra = {}
    if a.method in ("magnitude", "learned-mag"):
        absS = state_magnitude(model, tr[cal0:cal0 + n_cal], ctx=a.ctx)     # [L, H, P, N]
        score = absS.mean(axis=(2, 3)) if a.kind == "head" else absS.mean(axis=2)
    if a.method in LEARNED:                                                  # run()'s call
        init = magnitude_init(score) if a.method == "learned-mag" else None
        t0 = time.time()
        score, hist = learn_gates(model, tr, a.kind, a.level, allocation=LEARNED[a.method],
                                  steps=a.steps, batch_size=a.batch, seq_len=a.ctx, lr=a.lr,
                                  seed=a.seed, bf16=a.bf16, init=init,
                                  max_seconds=a.max_seconds)
        stopped = hist[-1].get("stopped_after_steps") if hist else None
        extra = {"steps": str(a.steps), "steps_run": str(stopped or a.steps),
                 "batch": str(a.batch), "ctx": str(a.ctx), "lr": repr(a.lr),
                 "allocation": LEARNED[a.method], "learn_seconds": f"{time.time() - t0:.1f}",
                 "history": json.dumps(hist[-3:])}
    elif a.method == "random":
        rng = np.random.default_rng(a.seed)
        shapes = {"head": (cfg.num_hidden_layers, cfg.num_heads),
                  "state": (cfg.num_hidden_layers, cfg.num_heads, cfg.state_size)}
        r = {k: rng.random(shapes[k]) for k in KINDS}                        # run()'s draws
        score = r[a.kind]
    if a.share == "group":
        keep = group_keep(score, a.level, cfg.n_groups, a.group_score)
        extra = {"share": "group", "group_score": a.group_score}
    else:
        keep = keep_top(score, a.level, LEARNED.get(a.method, "layer"))
    meta = {"format": "yunmin-sparsity", "version": "1", "method": a.method, "kind": a.kind,
            "level": repr(a.level), "seed": str(a.seed), "calibration_tokens": str(int(n_cal)),
            "calibration_start": str(int(cal0)), "source": "yunmin_train.mamba2_study export",
            **extra}
    safetensors_io.save(profile_tensors(a.kind, keep, cfg), a.out, metadata=meta)
    print(json.dumps({"out": a.out, "kind": a.kind, "method": a.method, "level": a.level,
                      "kept": float(np.mean(keep)), "calibration_start": int(cal0),
                      **{k: v for k, v in extra.items() if k != "history"}}))
    return 0


def masks_to_tensors(kind, keep, cfg, device):
    """(head_masks, state_masks) for Mamba2LM.forward from a boolean keep mask of `kind`."""
    t = torch.as_tensor(keep, dtype=torch.float32, device=device)
    return (t, None) if kind == "head" else (None, t)


def counted(cfg, kind, keep):
    """State bytes and FLOPs per token kept (module docstring), dense and masked."""
    L, H, P, N, D, K = (cfg.num_hidden_layers, cfg.num_heads, cfg.head_dim, cfg.state_size,
                        cfg.hidden_size, cfg.conv_kernel)
    if kind == "head":
        heads = keep.reshape(L, H).astype(np.int64)
        pairs = int(heads.sum()) * N
        dropped_heads = L * H - int(heads.sum())
    else:
        pairs = int(np.asarray(keep).sum())
        dropped_heads = 0
    dense_pairs = L * H * N
    proj_head = 2 * D * (2 * P + 1) + 2 * D * P + 2 * K * P
    proj_dense = L * (2 * D * (cfg.d_inner + cfg.conv_dim + H) + 2 * D * cfg.d_inner
                      + 2 * K * cfg.conv_dim)
    ssm_dense = 5 * P * dense_pairs
    mix_dense = proj_dense + ssm_dense
    mix = mix_dense - dropped_heads * proj_head - 5 * P * (dense_pairs - pairs)
    return {"state_bytes": 4 * P * pairs, "state_bytes_dense": 4 * P * dense_pairs,
            "state_kept": pairs / dense_pairs,
            "ssm_flops": 5 * P * pairs, "ssm_flops_dense": ssm_dense,
            "mixer_flops": mix, "mixer_flops_dense": mix_dense,
            "mixer_flops_cut": 1.0 - mix / mix_dense}


@torch.no_grad()
def heldout(model, ids, ctx, head_masks=None, state_masks=None, batch_size=16, bf16=False):
    """Perplexity of the masked model and KL(dense || masked) per scored token, on the windows
    of evaluate.py's protocol."""
    dev = model.backbone.norm_f.weight.device
    amp = bool(bf16 and dev.type == "cuda")
    nll, kl, n = 0.0, 0.0, 0
    for x in window_batches(windows(np.asarray(ids), ctx), batch_size, dev):
        with _autocast(amp):
            lt = model(x[:, :-1])
            ls = lt if head_masks is None and state_masks is None else \
                model(x[:, :-1], head_masks=head_masks, state_masks=state_masks)
        lt = F.log_softmax(lt.float(), -1)
        ls = F.log_softmax(ls.float(), -1)
        nll += float(-ls.gather(-1, x[:, 1:, None]).double().sum())
        kl += float((lt.exp() * (lt - ls)).sum(-1).double().sum())
        n += x.shape[0] * (x.shape[1] - 1)
    return {"ppl": math.exp(nll / n), "mean_nll": nll / n, "kl": kl / n, "n_scored": n}


def _autocast(enabled):
    if enabled:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    import contextlib
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# learned gates

def quantile_threshold(logits, level, allocation):
    """Thresholds so that round(level * count) of the logits are <= them, per layer [L, 1...]
    or one for all ("free"): the midpoint between the last dropped and the first kept."""
    L = logits.shape[0]
    flat = logits.detach().reshape(L, -1) if allocation != "free" else \
        logits.detach().reshape(1, -1)
    n = flat.shape[1]
    k = int(math.floor(level * n + 0.5))
    srt = torch.sort(flat, dim=1).values
    if k <= 0:
        thr = srt[:, 0] - 1.0
    elif k >= n:
        thr = srt[:, -1] + 1.0
    else:
        thr = 0.5 * (srt[:, k - 1] + srt[:, k])
    shape = (-1,) + (1,) * (logits.dim() - 1)
    return thr.reshape(shape) if allocation != "free" else thr.reshape(())


def magnitude_init(score, scale=2.0):
    """Start logits from magnitude scores ([L, H] or [L, H, N]): per layer, scale x the z-score
    of log(score), so the first hard masks are close to the magnitude masks."""
    x = np.log(np.asarray(score, dtype=np.float64) + 1e-30)
    axes = tuple(range(1, x.ndim))
    return scale * (x - x.mean(axis=axes, keepdims=True)) / (x.std(axis=axes, keepdims=True) + 1e-12)


def learn_gates(model, train_ids, kind, level, allocation="layer", steps=100, batch_size=8,
                seq_len=256, lr=0.05, seed=1, bf16=False, tau_start=1.0, tau_end=0.1,
                ramp=0.5, init=None, max_seconds=None):
    """Learned head or state-entry gates (module docstring). Returns the final logits (numpy,
    [L, H] or [L, H, N]) and a short history. max_seconds: stop after the first step that ends
    past it (the schedule stays the one for `steps`); the history's last entry then says
    {"stopped_after_steps": n}."""
    c = model.config
    dev = model.backbone.norm_f.weight.device
    shape = (c.num_hidden_layers, c.num_heads) if kind == "head" else \
        (c.num_hidden_layers, c.num_heads, c.state_size)
    gen = torch.Generator().manual_seed(seed)
    start = torch.zeros(shape) if init is None else torch.as_tensor(init, dtype=torch.float32)
    logits = nn.Parameter((start + 1e-3 * torch.randn(shape, generator=gen)).to(dev))
    opt = torch.optim.Adam([logits], lr=lr)
    sampler = data_mod.BatchSampler(np.asarray(train_ids), batch_size, seq_len, seed=seed,
                                    device=dev)
    amp = bool(bf16 and dev.type == "cuda")
    torch.manual_seed(seed)
    hist = []
    t_begin = time.time()
    for step in range(steps):
        prog = step / max(1, steps)
        tau = tau_start * (tau_end / tau_start) ** prog
        tgt = level * (1.0 - (1.0 - min(1.0, prog / ramp)) ** 3) if ramp > 0 else level
        thr = quantile_threshold(logits, tgt, allocation)
        u = torch.rand(shape, device=dev).clamp_(1e-6, 1 - 1e-6)
        soft = torch.sigmoid((logits - thr + torch.log(u) - torch.log1p(-u)) / tau)
        gate = M._StraightThrough.apply(soft)
        x, _ = sampler.next()
        with _autocast(amp):
            with torch.no_grad():
                t_logits, t_hidden = model(x, return_hidden=True)
            hm, sm = (gate, None) if kind == "head" else (None, gate)
            s_logits, s_hidden = model(x, head_masks=hm, state_masks=sm, return_hidden=True)
        lt = F.log_softmax(t_logits.float(), -1)
        ls = F.log_softmax(s_logits.float(), -1)
        kl = (lt.exp() * (lt - ls)).sum(-1).mean()
        cos = (1.0 - F.cosine_similarity(t_hidden[-1].float(), s_hidden[-1].float(), dim=-1)).mean()
        loss = kl + cos
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            hist.append({"step": step, "tau": round(tau, 4), "target": round(tgt, 4),
                         "kl": round(float(kl), 5), "cos_loss": round(float(cos), 5)})
        if max_seconds is not None and step < steps - 1 and time.time() - t_begin > max_seconds:
            if hist[-1]["step"] != step:
                hist.append({"step": step, "tau": round(tau, 4), "target": round(tgt, 4),
                             "kl": round(float(kl), 5), "cos_loss": round(float(cos), 5)})
            hist.append({"stopped_after_steps": step + 1})
            break
    return logits.detach().double().cpu().numpy(), hist


# ---------------------------------------------------------------------------------------------
# the study

def run(a):
    t_start = time.time()
    dev, model = frozen_model(a.model, a.device)
    cfg = model.config
    tok = a.tokenizer or os.path.join(a.model, "tokenizer.json")
    tr, va, info = data_mod.load_splits(a.text, tok, cache_dir=a.cache_dir, val_path=a.val_text)
    va = va[:a.eval_windows * a.ctx]
    levels = [float(x) for x in a.levels.split(",") if x]
    kinds = [k for k in a.kinds.split(",") if k]
    methods = [m for m in a.methods.split(",") if m]
    out = {"config": vars(a), "data": info, "device": str(dev), "torch": torch.__version__,
           "model": {k: getattr(cfg, k) for k in ("hidden_size", "num_hidden_layers",
                                                 "num_heads", "head_dim", "state_size",
                                                 "n_groups", "vocab_size")},
           "n_params": model.num_parameters(), "rows": []}

    def save():
        out["elapsed_s"] = round(time.time() - t_start, 1)
        with open(a.out + ".tmp", "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
        os.replace(a.out + ".tmp", a.out)

    def left():
        return a.time_budget - (time.time() - t_start) if a.time_budget > 0 else float("inf")

    t0 = time.time()
    out["dense"] = heldout(model, va, a.ctx, bf16=a.bf16)
    eval_s = time.time() - t0
    out["dense"]["eval_s"] = round(eval_s, 2)
    save()
    print(json.dumps({"seed": a.seed, "dense": out["dense"]}), flush=True)

    def measure(kind, method, level, keep, extra=None):
        t1 = time.time()
        hm, sm = masks_to_tensors(kind, keep, cfg, dev)
        row = {"seed": a.seed, "kind": kind, "method": method, "level": level,
               "dropped": 1.0 - float(np.mean(keep))}
        row.update(counted(cfg, kind, keep))
        row.update(heldout(model, va, a.ctx, hm, sm, bf16=a.bf16))
        row["per_layer_kept"] = keep.reshape(keep.shape[0], -1).sum(1).tolist()
        row["eval_s"] = round(time.time() - t1, 2)
        if extra:
            row.update(extra)
        out["rows"].append(row)
        save()
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                          for k, v in row.items() if k not in ("per_layer_kept",)}), flush=True)

    # magnitude and random: cheap, all of them first
    n_cal = min(a.calib_tokens, max(a.ctx, tr.size - 1))
    cal0 = (a.seed * 7919 * n_cal) % max(1, tr.size - n_cal)
    t1 = time.time()
    absS = state_magnitude(model, tr[cal0:cal0 + n_cal], ctx=a.ctx)          # [L, H, P, N]
    out["calibration"] = {"tokens": int(n_cal), "start": int(cal0),
                          "seconds": round(time.time() - t1, 2)}
    scores = {"head": absS.mean(axis=(2, 3)), "state": absS.mean(axis=2)}
    rng = np.random.default_rng(a.seed)
    rand = {"head": rng.random(scores["head"].shape), "state": rng.random(scores["state"].shape)}
    for kind in kinds:
        for level in levels:
            if "magnitude" in methods:
                measure(kind, "magnitude", level, keep_top(scores[kind], level))
            if "random" in methods:
                measure(kind, "random", level, keep_top(rand[kind], level))
    # learned: steps sized from a probe so that every run fits the time left
    runs = [(kind, level, m) for m in ("learned", "learned-free", "learned-mag")
            if m in methods for kind in kinds for level in levels]
    if not runs:
        out["done"] = True
        save()
        return 0
    steps = a.learn_steps
    if a.time_budget > 0:
        # two untimed steps first: the first steps of a process include CUDA's start-up
        # (kernel loading, autotuning), which made a 4-step probe read 0.93 s per step
        # where the steps took 0.08 s, and sized the runs to 20 steps
        learn_gates(model, tr, runs[0][0], runs[0][1], steps=2,
                    batch_size=a.learn_batch, seq_len=a.ctx, seed=a.seed, bf16=a.bf16)
        t1 = time.time()
        learn_gates(model, tr, runs[0][0], runs[0][1], steps=a.probe_steps,
                    batch_size=a.learn_batch, seq_len=a.ctx, seed=a.seed, bf16=a.bf16)
        s_step = (time.time() - t1) / a.probe_steps
        # a masked evaluation runs the dense and the masked model: 2 x the dense eval's time
        budget = left() - len(runs) * 2.5 * eval_s - 5.0
        steps = int(max(a.min_steps, min(a.learn_steps, budget / (len(runs) * s_step))))
        out["sizing"] = {"probe_steps": a.probe_steps, "s_per_step": round(s_step, 4),
                         "n_runs": len(runs), "steps": steps}
        save()
        print(json.dumps({"seed": a.seed, "sizing": out["sizing"]}), flush=True)
    for kind, level, method in runs:
        alloc = LEARNED[method]
        if left() < steps * out.get("sizing", {}).get("s_per_step", 0.0) + 3.0 * eval_s + 1.0:
            out.setdefault("skipped_for_time", []).append(
                {"kind": kind, "level": level, "allocation": alloc})
            save()
            continue
        t1 = time.time()
        init = magnitude_init(scores[kind]) if method == "learned-mag" else None
        lg, hist = learn_gates(model, tr, kind, level, allocation=alloc, steps=steps,
                               batch_size=a.learn_batch, seq_len=a.ctx, lr=a.learn_lr,
                               seed=a.seed, bf16=a.bf16, init=init)
        learn_s = round(time.time() - t1, 2)
        measure(kind, method, level,
                keep_top(lg, level, alloc),
                {"steps": steps, "learn_s": learn_s, "history": hist[-2:]})
    out["done"] = True
    save()
    return 0


def merge(paths, out_dir):
    parts = []
    for p in paths:
        try:
            with open(p, encoding="utf-8") as f:
                parts.append(json.load(f))
        except (OSError, ValueError) as e:
            print(f"{p}: skipped ({e})", file=sys.stderr)
    if not parts:
        raise SystemExit("nothing to merge")
    rows = [r for p in parts for r in p.get("rows", [])]
    groups = {}
    for r in rows:
        groups.setdefault((r["kind"], r["level"], r["method"]), []).append(r)
    order = lambda k: (KINDS.index(k[0]), k[1], METHODS.index(k[2]))  # noqa: E731
    table = []
    for key in sorted(groups, key=order):
        rs = groups[key]
        e = {"kind": key[0], "level": key[1], "method": key[2],
             "seeds": sorted(r["seed"] for r in rs)}
        for k in ("ppl", "kl", "state_kept", "mixer_flops_cut"):
            e[k] = summarize([r[k] for r in rs])
        table.append(e)
    dense = [p["dense"] for p in parts if "dense" in p]
    res = {"from": [os.path.basename(p) for p in paths], "n_params": parts[0]["n_params"],
           "model": parts[0]["model"], "dense": dense[0] if dense else None,
           "device": parts[0]["device"], "config": parts[0]["config"], "table": table,
           "rows": rows}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "mamba2_study.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    fmt = fmt_summary
    m = res["model"]
    lines = ["# Mamba-2 head and state-entry masks: mean ± sd over seeds", "",
             f"Model: d_model {m['hidden_size']}, {m['num_hidden_layers']} layers, "
             f"{m['num_heads']} heads x {m['head_dim']} channels x {m['state_size']} state "
             f"entries, {res['n_params'] / 1e6:.1f} M parameters.",
             "" if res["dense"] is None else
             f"Dense: held-out perplexity {res['dense']['ppl']:.3f} on "
             f"{res['dense']['n_scored']} scored tokens.", "",
             "| kind | dropped | method | seeds | ppl | KL | state kept | mixer FLOPs cut |",
             "|---|---|---|---|---|---|---|---|"]
    for e in table:
        lines.append(f"| {e['kind']} | {e['level']:.0%} | {e['method']} | {len(e['seeds'])} | "
                     f"{fmt(e['ppl'], 2)} | {fmt(e['kl'], 4)} | "
                     f"{e['state_kept']['mean']:.1%} | {e['mixer_flops_cut']['mean']:.1%} |")
    with open(os.path.join(out_dir, "mamba2_study.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["export"]:
        return export(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m yunmin_train.mamba2_study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--merge", nargs="+", default=None, help="merge these JSON files")
    ap.add_argument("--out-dir", default=None, help="--merge: where the table goes")
    ap.add_argument("--model")
    ap.add_argument("--tokenizer", default=None, help="default: the model's tokenizer.json")
    ap.add_argument("--text", help="training text (calibration and mask learning)")
    ap.add_argument("--val-text", help="held-out text (evaluation)")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", help="JSON rows")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--levels", default="0.75,0.9,0.5")
    ap.add_argument("--kinds", default="head,state")
    ap.add_argument("--methods", default="magnitude,random,learned,learned-free")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=64)
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--learn-steps", type=int, default=300, help="at most (time budget sizes)")
    ap.add_argument("--min-steps", type=int, default=20)
    ap.add_argument("--probe-steps", type=int, default=4)
    ap.add_argument("--learn-batch", type=int, default=8)
    ap.add_argument("--learn-lr", type=float, default=0.05)
    ap.add_argument("--time-budget", type=float, default=0.0, help="seconds, 0 = no limit")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    if a.merge:
        return merge(a.merge, a.out_dir or ".")
    for k in ("model", "text", "val_text", "out"):
        if not getattr(a, k):
            ap.error(f"--{k.replace('_', '-')} is required")
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
