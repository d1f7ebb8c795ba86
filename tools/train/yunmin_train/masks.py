"""Sparsity profiles from the toolkit: learned Gumbel-Sigmoid masks and the two baselines.

    python -m yunmin_train.masks learn    --model DIR --text FILE --out PROFILE [options]
    python -m yunmin_train.masks baseline --method magnitude|random --model DIR --text FILE \\
                                          --out PROFILE [options]
    python -m yunmin_train.masks eval     --model DIR --text FILE --profile PROFILE

The profile is `yunmin.sparsity.safetensors` (docs/ARCHITECTURE.md §4, docs/FORMATS.md): per layer
channel_logits F32 [d_inner], state_logits F32 [d_inner, d_state], scan_order I32 [d_inner];
metadata format=yunmin-sparsity, version=1, method. Meaning, exactly as MambaLM.forward(masks=)
and the C engine serve it: channel d kept iff its logit > 0 (a dropped channel has x[d] := 0
right after conv + silu); entry (d, n) of a kept channel kept iff its logit > 0 (a dropped entry
has s[d, n] = 0 at every step).

Sparsity levels (the same definitions as `yunmin calibrate`):
  channel sparsity  fraction of the channels dropped;
  state sparsity    fraction of the kept channels' state entries dropped.
The baselines apply them per layer (round(p * count) dropped in every layer). Learned masks
apply them over the whole model by default (--allocation global: layers keep different
fractions, which is what the masks learn) or per layer (--allocation layer).

Learned masks. Every layer has logits c [d_inner] and s [d_inner, d_state].
One training step:
  * Gumbel-Sigmoid relaxation: m_soft = sigmoid((logit - t + log u - log(1 - u)) / tau),
    u ~ U(0, 1) (logistic noise: m_soft > 1/2 with probability sigmoid(logit - t), whatever tau);
  * straight-through hard mask: the forward uses m = 1[m_soft > 1/2] exactly, the backward the
    gradient of m_soft;
  * tau anneals geometrically from --tau-start to --tau-end over the run;
  * the dense model (frozen, no masks) is the teacher on the same batch of calibration text
    (random windows of the training split, yunmin_train.data): loss =
        --w-kl  * KL(p_dense || p_masked)             (next-token distributions, mean per token)
      + --w-cos * (1 - cos(h_dense, h_masked))         (final hidden states after norm_f)
  * the sparsity target ramps from 0 to the requested value over the first --ramp of the run
    (cubic schedule), so the masks are pruned gradually while the distillation keeps up, and is
    met in one of two ways (--mode):
      constraint (default)  t is recomputed every step as the threshold at the target quantile
                            of the current logits (one per kind for the whole model, or per
                            layer with --allocation layer), so the noiseless hard mask always
                            has exactly the target sparsity and the logits only learn an order;
                            logits start at 0 (or at magnitude_init's scores with
                            --init-from-magnitude) plus a 1e-3 jitter;
      penalty               t = 0 and the loss adds lambda1 * g + --lambda2 * g^2 per kind,
                            g = E[kept] - target_kept, E[kept] = mean sigmoid(c) (channels) and
                            the sigmoid(c)-weighted mean of sigmoid(s) (entries of kept
                            channels); lambda1 >= 0 is a Lagrange multiplier raised by
                            --lambda-lr * g each step (dual ascent); logits start at 3.
  Only the logits train; the model's weights are untouched. At export the hard masks meet the
  target exactly: the logits are shifted by one threshold per kind (global) or per layer and
  kind, so that exactly round(p * count) are <= 0; the exported logits are those shifted values
  (logit > 0 = kept, their size the learned margin).

Baselines (tools/cmd_calibrate.c's definitions, reimplemented here for the GPU):
  magnitude  run the first --tokens tokens of the training split as one sequence from a zero
             state; channel score = mean over steps of sum_n s[d, n]^2 (state energy), entry
             score = mean of |s[d, n]|; per layer drop the lowest-scoring channels, then among
             the kept channels' entries the lowest-scoring ones (ties: lower index first).
  random     per layer a seeded uniformly random choice of channels, then of kept entries.
(`yunmin calibrate --baseline magnitude|random` writes the same kind of profile from the C
engine; tools/train/tests/test_masks.py checks that both magnitude baselines agree.)

scan_order: identity, or copied from --order-from PROFILE (e.g. the correlation order of
`yunmin calibrate`). `yunmin calibrate --sparsity PROFILE --out OUT` re-derives the correlation
order over the kept channels of any profile.
"""

import argparse
import contextlib
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
from . import safetensors_io
from .evaluate import pick_device, window_batches, windows
from .model import load_model

FORMAT = "yunmin-sparsity"
VERSION = "1"


def round_half_up(x):
    """C's lround for x >= 0 (Python's round() rounds half to even)."""
    return int(math.floor(x + 0.5))


# ---------------------------------------------------------------------------------------------
# masks as tensors

def ones_masks(cfg, device=None, dtype=torch.float32):
    return [(torch.ones(cfg.d_inner, device=device, dtype=dtype),
             torch.ones(cfg.d_inner, cfg.state_size, device=device, dtype=dtype))
            for _ in range(cfg.num_hidden_layers)]


def masks_from_bool(ch, st, device=None, dtype=torch.float32):
    """ch [L, Di], st [L, Di, N] booleans (numpy or torch) -> per-layer (channel, state) floats."""
    ch = torch.as_tensor(np.asarray(ch)).to(device=device, dtype=dtype)
    st = torch.as_tensor(np.asarray(st)).to(device=device, dtype=dtype)
    return [(ch[l], st[l]) for l in range(ch.shape[0])]


def profile_stats(ch, st):
    """Kept fractions of hard masks ch [L, Di], st [L, Di, N] (numpy bool)."""
    ch = np.asarray(ch, dtype=bool)
    st = np.asarray(st, dtype=bool)
    live = st & ch[:, :, None]
    n_ch = ch.sum(axis=1)
    per_layer = []
    for l in range(ch.shape[0]):
        per_layer.append({"channels_kept": int(n_ch[l]),
                          "entries_live": int(live[l].sum()),
                          "channel_sparsity": 1 - n_ch[l] / ch.shape[1],
                          "state_sparsity": (1 - live[l].sum() / (n_ch[l] * st.shape[2]))
                          if n_ch[l] else 1.0})
    total_ch = int(ch.sum())
    return {"channel_sparsity": 1 - total_ch / ch.size,
            "state_sparsity": 1 - live.sum() / (total_ch * st.shape[2]) if total_ch else 1.0,
            "live_fraction": float(live.sum() / st.size),
            "per_layer": per_layer}


# ---------------------------------------------------------------------------------------------
# profile files

def save_profile(path, channel_logits, state_logits, method, scan_order=None, metadata=None):
    """Write a yunmin.sparsity.safetensors. channel_logits [L, Di], state_logits [L, Di, N]
    (kept iff > 0), scan_order [L, Di] permutations or None (identity). Metadata values are
    converted to strings."""
    ch = np.asarray(channel_logits, dtype=np.float32)
    st = np.asarray(state_logits, dtype=np.float32)
    L, Di = ch.shape
    if st.shape[:2] != (L, Di):
        raise ValueError(f"state_logits shape {st.shape} does not fit channel_logits {ch.shape}")
    if np.isnan(ch).any() or np.isnan(st).any():
        raise ValueError("NaN logit")
    if scan_order is None:
        scan_order = np.tile(np.arange(Di, dtype=np.int32), (L, 1))
    order = np.asarray(scan_order, dtype=np.int32)
    tensors = {}
    for l in range(L):
        if not np.array_equal(np.sort(order[l]), np.arange(Di)):
            raise ValueError(f"layers.{l}.scan_order is not a permutation of [0, {Di})")
        tensors[f"layers.{l}.channel_logits"] = np.ascontiguousarray(ch[l])
        tensors[f"layers.{l}.state_logits"] = np.ascontiguousarray(st[l])
        tensors[f"layers.{l}.scan_order"] = np.ascontiguousarray(order[l])
    meta = {"format": FORMAT, "version": VERSION, "method": str(method)}
    for k, v in (metadata or {}).items():
        if k not in meta:
            meta[k] = v if isinstance(v, str) else json.dumps(v)
    tmp = path + ".tmp"
    safetensors_io.save(tensors, tmp, metadata=meta)
    os.replace(tmp, path)


def load_profile(path):
    """(channel_logits [L, Di], state_logits [L, Di, N], scan_order [L, Di], metadata)."""
    tensors, meta = safetensors_io.load_numpy(path)
    meta = meta or {}
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} version {VERSION} file")
    ch, st, order = [], [], []
    l = 0
    while f"layers.{l}.channel_logits" in tensors:
        ch.append(tensors[f"layers.{l}.channel_logits"])
        st.append(tensors[f"layers.{l}.state_logits"])
        order.append(tensors[f"layers.{l}.scan_order"])
        l += 1
    if l == 0:
        raise ValueError(f"{path}: no layers")
    return np.stack(ch), np.stack(st), np.stack(order), meta


def bool_to_logits(ch, st):
    return (np.where(ch, 1.0, -1.0).astype(np.float32),
            np.where(st, 1.0, -1.0).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# exact targets from scores

def top_keep(scores, n_keep):
    """Boolean mask keeping the n_keep highest scores of a 1-D array (ties: lower index kept,
    the same order calibrate drops in: lowest score first, lower index first)."""
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.size
    order = np.lexsort((np.arange(n), scores))      # ascending score, then index
    keep = np.ones(n, dtype=bool)
    keep[order[:n - n_keep]] = False
    return keep


def shift_logits(logits, keep):
    """(logits - t, t): one threshold t such that exactly `keep` is > 0 (sizes preserved; a
    value that ties the threshold is nudged 1e-4 to its side)."""
    logits = np.asarray(logits, dtype=np.float64)
    if keep.all():
        t = min(0.0, float(logits.min()) - 1.0) if logits.size else 0.0
    elif not keep.any():
        t = max(0.0, float(logits.max()) + 1.0)
    else:
        t = 0.5 * (float(logits[keep].min()) + float(logits[~keep].max()))
    out = logits - t
    out = np.where(keep, np.maximum(out, 1e-4), np.minimum(out, -1e-4))
    return out.astype(np.float32), t


def hard_from_scores(ch_score, st_score, channel_sparsity, state_sparsity, allocation="layer"):
    """Exact-target hard masks from scores (higher = keep): (ch [L, Di], st [L, Di, N]).

    Channels: round(p * count) dropped per layer (allocation 'layer') or over all layers
    ('global'). Entries: among the kept channels' entries, round(q * count) dropped, per layer
    or globally. Entries of dropped channels are marked dropped too (they are not served)."""
    ch_score = np.asarray(ch_score, dtype=np.float64)
    st_score = np.asarray(st_score, dtype=np.float64)
    L, Di = ch_score.shape
    N = st_score.shape[2]
    ch = np.zeros((L, Di), dtype=bool)
    st = np.zeros((L, Di, N), dtype=bool)
    if allocation == "global":
        n_keep = ch_score.size - round_half_up(channel_sparsity * ch_score.size)
        ch = top_keep(ch_score.reshape(-1), n_keep).reshape(L, Di)
        idx = np.nonzero(np.repeat(ch[:, :, None], N, axis=2).reshape(-1))[0]
        sc = st_score.reshape(-1)[idx]
        keep = top_keep(sc, sc.size - round_half_up(state_sparsity * sc.size))
        flat = np.zeros(L * Di * N, dtype=bool)
        flat[idx[keep]] = True
        st = flat.reshape(L, Di, N)
    elif allocation == "layer":
        for l in range(L):
            ch[l] = top_keep(ch_score[l], Di - round_half_up(channel_sparsity * Di))
            idx = np.nonzero(np.repeat(ch[l][:, None], N, axis=1).reshape(-1))[0]
            sc = st_score[l].reshape(-1)[idx]
            keep = top_keep(sc, sc.size - round_half_up(state_sparsity * sc.size))
            flat = np.zeros(Di * N, dtype=bool)
            flat[idx[keep]] = True
            st[l] = flat.reshape(Di, N)
    else:
        raise ValueError(f"allocation {allocation!r}: global or layer")
    return ch, st


# ---------------------------------------------------------------------------------------------
# baselines

@torch.no_grad()
def state_statistics(model, ids):
    """Run ids (1-D) as one sequence from a zero state; per layer the mean state energy of each
    channel [L, Di] and the mean |s| of each entry [L, Di, N] over the steps (float64)."""
    cfg = model.config
    dev = model.backbone.norm_f.weight.device
    energy = torch.zeros(cfg.num_hidden_layers, cfg.d_inner, dtype=torch.float64, device=dev)
    abs_s = torch.zeros(cfg.num_hidden_layers, cfg.d_inner, cfg.state_size, dtype=torch.float64,
                        device=dev)
    mixers = [layer.mixer for layer in model.backbone.layers]

    def hook_for(l):
        def hook(h):                                   # h [1, T, Di, N]
            h = h[0].double()
            energy[l] += (h * h).sum(-1).sum(0)
            abs_s[l] += h.abs().sum(0)
        return hook

    try:
        for l, m in enumerate(mixers):
            m.state_hook = hook_for(l)
        model(torch.as_tensor(np.asarray(ids, dtype=np.int64), device=dev)[None])
    finally:
        for m in mixers:
            m.state_hook = None
    T = len(ids)
    return (energy / T).cpu().numpy(), (abs_s / T).cpu().numpy()


def magnitude_init(energy, abs_s, scale=2.0):
    """Initial logits from the magnitude scores: per layer, scale * the z-score of the log score
    (channels: mean state energy, entries: mean |s|). With the constraint's threshold the first
    masks are then close to the magnitude baseline, and distillation moves them from there."""
    def z(x, axes):
        x = np.log(np.asarray(x, dtype=np.float64) + 1e-30)
        return scale * (x - x.mean(axis=axes, keepdims=True)) / \
            (x.std(axis=axes, keepdims=True) + 1e-12)
    return z(energy, 1), z(abs_s, (1, 2))


def magnitude_masks(model, ids, channel_sparsity, state_sparsity):
    energy, abs_s = state_statistics(model, ids)
    return hard_from_scores(energy, abs_s, channel_sparsity, state_sparsity, "layer")


def random_masks(cfg, channel_sparsity, state_sparsity, seed=1):
    rng = np.random.default_rng(seed)
    L, Di, N = cfg.num_hidden_layers, cfg.d_inner, cfg.state_size
    return hard_from_scores(rng.random((L, Di)), rng.random((L, Di, N)), channel_sparsity,
                            state_sparsity, "layer")


# ---------------------------------------------------------------------------------------------
# learned masks

class _StraightThrough(torch.autograd.Function):
    """Forward: the hard mask 1[soft > 1/2], exactly 0 or 1 (hard + soft - soft.detach() is not
    exact in floating point). Backward: the gradient of soft, unchanged."""

    @staticmethod
    def forward(ctx, soft):
        return (soft > 0.5).to(soft.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


class MaskLogits(nn.Module):
    """Per-layer mask logits: channel [L, Di] and state [L, Di, N]. A kind that is not trained
    stays all kept (its mask is the constant 1)."""

    def __init__(self, n_layer, d_inner, d_state, init=3.0, train_channels=True,
                 train_states=True):
        super().__init__()
        self.train_channels, self.train_states = train_channels, train_states
        self.channel = nn.Parameter(torch.full((n_layer, d_inner), float(init)),
                                    requires_grad=train_channels)
        self.state = nn.Parameter(torch.full((n_layer, d_inner, d_state), float(init)),
                                  requires_grad=train_states)

    @staticmethod
    def gumbel_sigmoid(logits, tau, noise=True, hard=True):
        if noise:
            u = torch.rand_like(logits).clamp_(1e-6, 1.0 - 1e-6)
            logits = logits + torch.log(u) - torch.log1p(-u)
        soft = torch.sigmoid(logits / tau)
        if not hard:
            return soft
        return _StraightThrough.apply(soft)

    def sample(self, tau, noise=True, thr_channel=None, thr_state=None):
        """Per-layer (channel [Di], state [Di, N]) masks for MambaLM.forward(masks=...).
        thr_*: None (threshold 0), or thresholds [L, 1] / [L, 1, 1] (or scalars) subtracted from
        the logits first (constraint mode)."""
        one = torch.ones((), device=self.channel.device)
        c, s = self.channel, self.state
        if thr_channel is not None:
            c = c - thr_channel
        if thr_state is not None:
            s = s - thr_state
        ch = self.gumbel_sigmoid(c, tau, noise) if self.train_channels else one.expand_as(c)
        st = self.gumbel_sigmoid(s, tau, noise) if self.train_states else one.expand_as(s)
        return [(ch[l], st[l]) for l in range(ch.shape[0])]

    @torch.no_grad()
    def thresholds(self, channel_sparsity, state_sparsity, allocation):
        """Thresholds that make exactly the requested fractions of the current logits hard-drop
        (the same choice as the export): channel [L, 1] and state [L, 1, 1] tensors."""
        c = self.channel.detach().double().cpu().numpy()
        s = self.state.detach().double().cpu().numpy()
        L = c.shape[0]
        ch_keep, st_keep = hard_from_scores(c, s, channel_sparsity, state_sparsity, allocation)
        tc = np.zeros(L)
        ts = np.zeros(L)
        if allocation == "global":
            tc[:] = shift_logits(c.reshape(-1), ch_keep.reshape(-1))[1]
            sel = np.repeat(ch_keep[:, :, None], s.shape[2], axis=2)
            ts[:] = shift_logits(s[sel], st_keep[sel])[1]
        else:
            for l in range(L):
                tc[l] = shift_logits(c[l], ch_keep[l])[1]
                sel = np.repeat(ch_keep[l][:, None], s.shape[2], axis=1)
                ts[l] = shift_logits(s[l][sel], st_keep[l][sel])[1]
        dev, dt = self.channel.device, self.channel.dtype
        return (torch.tensor(tc, device=dev, dtype=dt)[:, None],
                torch.tensor(ts, device=dev, dtype=dt)[:, None, None])

    def expected_kept(self):
        """(E[fraction of channels kept], E[fraction of kept channels' entries kept])."""
        pc = torch.sigmoid(self.channel) if self.train_channels else \
            torch.ones_like(self.channel)
        if self.train_states:
            ps = torch.sigmoid(self.state)
            kept_st = (pc[:, :, None] * ps).sum() / (pc.sum() * ps.shape[-1])
        else:
            kept_st = torch.ones((), device=pc.device)
        return pc.mean(), kept_st

    def hard(self):
        """Current hard masks (logit > 0) as numpy booleans: (channel [L, Di], state [L, Di, N])."""
        ch = self.channel.detach() > 0 if self.train_channels else \
            torch.ones_like(self.channel, dtype=torch.bool)
        st = self.state.detach() > 0 if self.train_states else \
            torch.ones_like(self.state, dtype=torch.bool)
        return ch.cpu().numpy(), st.cpu().numpy()


def autocast_bf16(enabled):
    """bf16 autocast on CUDA when enabled, else nothing (torch 1.13 on CPU has no CUDA one)."""
    if enabled:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def ramp_target(sparsity, progress, ramp):
    """Cubic ramp of the sparsity from 0 to `sparsity` over the first `ramp` of the run."""
    if ramp <= 0:
        return sparsity
    p = min(1.0, progress / ramp)
    return sparsity * (1.0 - (1.0 - p) ** 3)


def distill_losses(t_logits, t_hidden, s_logits, s_hidden):
    """(KL(p_t || p_s) per token, 1 - cos of the final hidden states), both means."""
    lt = F.log_softmax(t_logits.float(), dim=-1)
    ls = F.log_softmax(s_logits.float(), dim=-1)
    kl = (lt.exp() * (lt - ls)).sum(-1).mean()
    cos = F.cosine_similarity(t_hidden.float(), s_hidden.float(), dim=-1)
    return kl, (1.0 - cos).mean()


def learn_masks(model, train_ids, channel_sparsity=0.0, state_sparsity=0.0, steps=300,
                batch_size=16, seq_len=256, lr=0.05, init=None, tau_start=1.0, tau_end=0.1,
                ramp=0.5, w_kl=1.0, w_cos=1.0, lambda2=10.0, lambda_lr=0.5, seed=0,
                device=None, bf16=False, log=None, log_every=25, mode="constraint",
                allocation="global", init_channel=None, init_state=None, max_seconds=None):
    """Train mask logits by distillation from the dense model (module docstring). Returns
    (MaskLogits, history). The model is frozen (requires_grad off) and left in eval mode.
    max_seconds: stop after the step that passes it (the schedule still follows `steps`; the
    last log record says where it stopped)."""
    dev = torch.device(device) if device is not None else model.backbone.norm_f.weight.device
    cfg = model.config
    torch.manual_seed(seed)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if mode not in ("constraint", "penalty"):
        raise ValueError(f"mode {mode!r}: constraint or penalty")
    if init is None:
        init = 0.0 if mode == "constraint" else 3.0
    logits = MaskLogits(cfg.num_hidden_layers, cfg.d_inner, cfg.state_size, init,
                        train_channels=channel_sparsity > 0,
                        train_states=state_sparsity > 0).to(dev)
    with torch.no_grad():         # a start from scores (e.g. magnitude_init), else constant
        if init_channel is not None:
            logits.channel.copy_(torch.as_tensor(np.asarray(init_channel), dtype=torch.float32))
        if init_state is not None:
            logits.state.copy_(torch.as_tensor(np.asarray(init_state), dtype=torch.float32))
    if mode == "constraint":      # break the ties of a constant start (the order is then learned)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(seed)
            logits.channel.add_(1e-3 * torch.randn(logits.channel.shape, generator=gen).to(dev))
            logits.state.add_(1e-3 * torch.randn(logits.state.shape, generator=gen).to(dev))
    params = [p for p in logits.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to learn: channel and state sparsity are both 0")
    opt = torch.optim.Adam(params, lr=lr)
    sampler = data_mod.BatchSampler(np.asarray(train_ids), batch_size, seq_len, seed=seed,
                                    device=dev)
    lam1 = {"channels": 0.0, "states": 0.0}
    amp = bool(bf16 and dev.type == "cuda")
    hist = []
    t0 = time.time()
    for step in range(steps):
        progress = step / max(1, steps)
        tau = tau_start * (tau_end / tau_start) ** progress
        tgt_ch = 1.0 - ramp_target(channel_sparsity, progress, ramp)
        tgt_st = 1.0 - ramp_target(state_sparsity, progress, ramp)
        x, _ = sampler.next()
        thr = logits.thresholds(1 - tgt_ch, 1 - tgt_st, allocation) if mode == "constraint" \
            else (None, None)
        with autocast_bf16(amp):
            with torch.no_grad():
                t_logits, t_hidden = model(x, return_hidden=True)
            s_logits, s_hidden = model(x, masks=logits.sample(tau, True, *thr),
                                       return_hidden=True)
        kl, cosl = distill_losses(t_logits, t_hidden[-1], s_logits, s_hidden[-1])
        kept_ch, kept_st = logits.expected_kept()
        loss = w_kl * kl + w_cos * cosl
        gaps = {}
        if mode == "constraint":
            pass
        elif logits.train_channels:
            g = kept_ch - tgt_ch
            loss = loss + lam1["channels"] * g + lambda2 * g * g
            gaps["channels"] = float(g)
        if mode == "penalty" and logits.train_states:
            g = kept_st - tgt_st
            loss = loss + lam1["states"] * g + lambda2 * g * g
            gaps["states"] = float(g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for k, g in gaps.items():                     # dual ascent on the inequality kept <= target
            lam1[k] = max(0.0, lam1[k] + lambda_lr * g)
        last = step == steps - 1 or (max_seconds is not None
                                     and time.time() - t0 >= max_seconds)
        if log is not None and (step % log_every == 0 or last):
            if mode == "constraint":
                thr = logits.thresholds(1 - tgt_ch, 1 - tgt_st, allocation)
                with torch.no_grad():
                    c0, s0 = logits.channel - thr[0], logits.state - thr[1]
                hc = (c0 > 0).cpu().numpy() if logits.train_channels else \
                    np.ones(tuple(c0.shape), dtype=bool)
                hs = (s0 > 0).cpu().numpy() if logits.train_states else \
                    np.ones(tuple(s0.shape), dtype=bool)
            else:
                hc, hs = logits.hard()
            rec = {"step": step, "tau": round(tau, 4), "kl": round(float(kl), 5),
                   "cos_loss": round(float(cosl), 5),
                   "target_channel_sparsity": round(1 - tgt_ch, 4),
                   "target_state_sparsity": round(1 - tgt_st, 4),
                   "hard": {k: round(v, 4) for k, v in profile_stats(hc, hs).items()
                            if k in ("channel_sparsity", "state_sparsity")},
                   "elapsed_s": round(time.time() - t0, 2)}
            if mode == "penalty":
                rec.update({"expected_channel_sparsity": round(1 - float(kept_ch), 4),
                            "expected_state_sparsity": round(1 - float(kept_st), 4),
                            "lambda1": {k: round(v, 4) for k, v in lam1.items()}})
            hist.append(rec)
            log(rec)
        if last:
            break
    return logits, hist


def export_learned(logits, channel_sparsity, state_sparsity, allocation="global"):
    """Exported logits meeting the targets exactly: (channel [L, Di], state [L, Di, N]) float32,
    each kind shifted by one threshold (global) or one per layer, so that logit > 0 = kept."""
    c = logits.channel.detach().double().cpu().numpy()
    s = logits.state.detach().double().cpu().numpy()
    ch_keep, st_keep = hard_from_scores(c, s, channel_sparsity, state_sparsity, allocation)
    L, Di, N = s.shape
    if not logits.train_channels:
        c_out = np.ones_like(c, dtype=np.float32)
    elif allocation == "global":
        c_out = shift_logits(c.reshape(-1), ch_keep.reshape(-1))[0].reshape(c.shape)
    else:
        c_out = np.stack([shift_logits(c[l], ch_keep[l])[0] for l in range(L)])
    if not logits.train_states:
        return c_out, np.ones_like(s, dtype=np.float32)
    # Entries of kept channels decide the threshold; those of dropped channels (not served)
    # are shifted by the same threshold, so the file still holds what was learned.
    s_out = np.empty(s.shape, dtype=np.float32)
    sel = np.repeat(ch_keep[:, :, None], N, axis=2)
    if allocation == "global":
        shifted, t = shift_logits(s[sel], st_keep[sel])
        s_out[:] = s - t
        s_out[sel] = shifted
    else:
        for l in range(L):
            shifted, t = shift_logits(s[l][sel[l]], st_keep[l][sel[l]])
            s_out[l] = s[l] - t
            s_out[l][sel[l]] = shifted
    return c_out.astype(np.float32), s_out


# ---------------------------------------------------------------------------------------------
# information loss

@torch.no_grad()
def information_loss(model, ids, masks, ctx=256, batch_size=32, teacher=None):
    """Held-out information loss of `masks` (per-layer tensors, or None = dense) against the
    dense `teacher` (default: the same model without masks), on evaluate.py's windows:
    mean 1 - cos of the final hidden states over every input position, mean KL(dense || masked)
    per position, and the perplexity protocol of evaluate.py (first token of a window unscored)."""
    teacher = model if teacher is None else teacher
    dev = model.backbone.norm_f.weight.device
    wins = windows(np.asarray(ids), ctx)
    was = model.training
    model.eval()
    teacher.eval()
    cos_sum = kl_sum = nll_sum = 0.0
    n_pos = n_scored = 0
    for x in window_batches(wins, batch_size, dev):
        s_logits, s_hidden = model(x[:, :-1], masks=masks, return_hidden=True)
        t_logits, t_hidden = teacher(x[:, :-1], return_hidden=True)
        lt = F.log_softmax(t_logits.float(), -1)
        ls = F.log_softmax(s_logits.float(), -1)
        kl_sum += float((lt.exp() * (lt - ls)).sum(-1).double().sum())
        cos = F.cosine_similarity(t_hidden[-1].float(), s_hidden[-1].float(), dim=-1)
        cos_sum += float((1.0 - cos).double().sum())
        n_pos += cos.numel()
        nll = -ls.gather(-1, x[:, 1:, None]).squeeze(-1)
        nll_sum += float(nll.double().sum())
        n_scored += nll.numel()
    model.train(was)
    return {"cos_loss": cos_sum / n_pos, "kl": kl_sum / n_pos,
            "ppl": math.exp(nll_sum / n_scored), "mean_nll": nll_sum / n_scored,
            "n_scored": n_scored}


# ---------------------------------------------------------------------------------------------
# CLI

def _common(ap):
    ap.add_argument("--model", required=True, help="model directory (HF layout)")
    ap.add_argument("--text", required=True, help="UTF-8 text; its training split calibrates")
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json (default: in --model)")
    ap.add_argument("--channel-sparsity", type=float, default=0.0)
    ap.add_argument("--state-sparsity", type=float, default=0.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache-dir", default=None, help="cache token ids here (.npy)")


def _train_ids(a):
    tok = a.tokenizer or os.path.join(a.model, "tokenizer.json")
    tr, va, _ = data_mod.load_splits(a.text, tok, cache_dir=a.cache_dir)
    return tr, va


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m yunmin_train.masks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("learn", help="learn Gumbel-Sigmoid masks by distillation")
    _common(p)
    p.add_argument("--out", required=True, help="profile to write")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--mode", default="constraint", choices=["constraint", "penalty"],
                   help="sparsity target as a hard constraint (threshold at the target "
                        "quantile) or a penalty with dual ascent")
    p.add_argument("--init", type=float, default=None,
                   help="initial logit (default 0 for constraint, 3 for penalty)")
    p.add_argument("--tau-start", type=float, default=1.0)
    p.add_argument("--tau-end", type=float, default=0.1)
    p.add_argument("--ramp", type=float, default=0.5, help="fraction of the run the target ramps")
    p.add_argument("--w-kl", type=float, default=1.0)
    p.add_argument("--w-cos", type=float, default=1.0)
    p.add_argument("--lambda2", type=float, default=10.0)
    p.add_argument("--lambda-lr", type=float, default=0.5)
    p.add_argument("--allocation", default="global", choices=["global", "layer"])
    p.add_argument("--init-from-magnitude", action="store_true",
                   help="start the logits from the magnitude scores (magnitude_init)")
    p.add_argument("--tokens", type=int, default=2048, help="calibration tokens (magnitude)")
    p.add_argument("--order-from", default=None, help="copy scan_order from this profile")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--log", default=None, help="JSON-lines log file")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop after the step that passes this (the schedule follows --steps)")
    p = sub.add_parser("baseline", help="magnitude or random masks (calibrate's definitions)")
    _common(p)
    p.add_argument("--out", required=True)
    p.add_argument("--method", required=True, choices=["magnitude", "random"])
    p.add_argument("--tokens", type=int, default=2048, help="calibration tokens (magnitude)")
    p.add_argument("--order-from", default=None)
    p = sub.add_parser("eval", help="information loss of a profile on the held-out split")
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--profile", default=None, help="none = the dense model")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=None)
    a = ap.parse_args(argv)

    dev = pick_device(a.device)
    model = load_model(a.model, device=dev).eval()
    cfg = model.config
    if a.cmd == "eval":
        _, va = _train_ids(a)
        masks = None
        stats = None
        if a.profile:
            ch, st, _, meta = load_profile(a.profile)
            stats = profile_stats(ch > 0, st > 0)
            masks = masks_from_bool(ch > 0, st > 0, device=dev)
        res = information_loss(model, va, masks, ctx=a.ctx)
        if stats:
            res.update({k: stats[k] for k in ("channel_sparsity", "state_sparsity",
                                              "live_fraction")})
        print(json.dumps(res, indent=2))
        return 0

    order = load_profile(a.order_from)[2] if a.order_from else None
    tr, _ = _train_ids(a)
    meta = {"channel_sparsity": f"{a.channel_sparsity:g}",
            "state_sparsity": f"{a.state_sparsity:g}",
            "calibration_text": os.path.basename(a.text), "seed": str(a.seed),
            "order": "copied" if order is not None else "identity"}
    if a.cmd == "baseline":
        if a.method == "magnitude":
            ch, st = magnitude_masks(model, tr[:a.tokens], a.channel_sparsity, a.state_sparsity)
            meta["calibration_tokens"] = str(min(a.tokens, len(tr)))
        else:
            ch, st = random_masks(cfg, a.channel_sparsity, a.state_sparsity, a.seed)
        cl, sl = bool_to_logits(ch, st)
        save_profile(a.out, cl, sl, a.method, order, meta)
        print(json.dumps({"out": a.out, **{k: v for k, v in profile_stats(ch, st).items()
                                           if k != "per_layer"}}))
        return 0

    logf = open(a.log, "w", encoding="utf-8") if a.log else None

    def log(rec):
        line = json.dumps(rec)
        print(line, flush=True)
        if logf:
            logf.write(line + "\n")
            logf.flush()

    init_c = init_s = None
    if a.init_from_magnitude:
        init_c, init_s = magnitude_init(*state_statistics(model, tr[:a.tokens]))
    logits, _ = learn_masks(model, tr, a.channel_sparsity, a.state_sparsity, steps=a.steps,
                            batch_size=a.batch_size, seq_len=a.seq_len, lr=a.lr, init=a.init,
                            tau_start=a.tau_start, tau_end=a.tau_end, ramp=a.ramp, w_kl=a.w_kl,
                            w_cos=a.w_cos, lambda2=a.lambda2, lambda_lr=a.lambda_lr,
                            seed=a.seed, device=dev, bf16=a.bf16, log=log, mode=a.mode,
                            allocation=a.allocation, init_channel=init_c, init_state=init_s,
                            max_seconds=a.max_seconds)
    cl, sl = export_learned(logits, a.channel_sparsity, a.state_sparsity, a.allocation)
    meta.update({"allocation": a.allocation, "steps": str(a.steps),
                 "tau": f"{a.tau_start:g}->{a.tau_end:g}", "loss": "kl+cos",
                 "target": a.mode, "init": "magnitude" if a.init_from_magnitude else "constant"})
    save_profile(a.out, cl, sl, "gumbel-sigmoid", order, meta)
    stats = profile_stats(cl > 0, sl > 0)
    log({"out": a.out, **{k: v for k, v in stats.items() if k != "per_layer"}})
    if logf:
        logf.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
