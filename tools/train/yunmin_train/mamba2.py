"""Mamba-2 in plain PyTorch (no custom kernels), transformers' Mamba2ForCausalLM layout.

Owns: the Mamba-2 config (HF config.json keys), the model, its two SSD evaluations, Mamba-2
initialisation, head / state-entry masks. Runs: on torch 1.13 (CPU) and torch 2.x (CUDA).
Must not: copy model.py's I/O (load/save go through model.py's _read_weights / save_model).

Parameter names equal transformers' Mamba2ForCausalLM state dict (H heads of P channels,
G groups of N state entries, d_inner = H * P = expand * D, conv_dim = d_inner + 2 G N):
    backbone.embeddings.weight                  [V, D]
    backbone.layers.{l}.norm.weight             [D]
    backbone.layers.{l}.mixer.in_proj.weight    [d_inner + conv_dim + H, D]  (+ .bias if use_bias)
    backbone.layers.{l}.mixer.conv1d.weight     [conv_dim, 1, K]   (+ .bias if use_conv_bias)
    backbone.layers.{l}.mixer.dt_bias           [H]
    backbone.layers.{l}.mixer.A_log             [H]
    backbone.layers.{l}.mixer.D                 [H]
    backbone.layers.{l}.mixer.norm.weight       [d_inner]
    backbone.layers.{l}.mixer.out_proj.weight   [D, d_inner]       (+ .bias if use_bias)
    backbone.norm_f.weight                      [D]
    lm_head.weight                              [V, D]             only when untied
Per layer and token (Dao & Gu 2024, the SSD layer; the same equations as
tests/fixtures/mamba2_ref.py and the C engine):
    [z, xBC, dt] = in_proj(rmsnorm(h) * norm.weight)
    [x, B, C]    = silu(causal depthwise conv(xBC))      x [H, P], B, C [G, N]
    dt = clamp(softplus(dt + dt_bias), time_step_limit); A = -exp(A_log); head h uses group
    g = h // (H / G)
    S[h,p,n] = exp(dt[h] A[h]) S[h,p,n] + dt[h] x[h,p] B[g,n];  y[h,p] = sum_n S[h,p,n] C[g,n]
               + D[h] x[h,p]
    v = y * silu(z), RMS-normalised over each group of d_inner / G channels, times
    mixer.norm.weight (mamba_ssm's RMSNormGated; transformers 5.17 normalises over the whole
    d_inner, which differs when G > 1: this model follows mamba_ssm and the engine)
    h = h + out_proj(v)
then norm_f and the (tied) head.

Two evaluations of the SSM part, which agree to rounding (tests/test_mamba2.py):
    ssd_chunked      per chunk of Q tokens: y = (L o C B^T) (dt x) inside the chunk with L the
                     decay segment sums exp(cum_i - cum_j) (i >= j), chunk states, the
                     recurrence between chunks, and the entering state's term; the training form
    ssd_sequential   one token at a time (the plain reference, and decode)
Under CUDA autocast the projections run in bf16; the SSD part, norms and residual run in float32.

Masks (the sparsity study, yunmin_train.mamba2_study), per layer, 0/1:
    head [H]:        a dropped head computes nothing: its state is held at 0 and its y,
                     the D x skip included, is 0. The gated norm still runs over the group's full
                     width, with the zeros in it (the norm's statistics change; a served model
                     would do the same by keeping the norm's width).
    state [H, N]:    entry n of head h dropped: S[h, :, n] is held at 0, i.e. B[n] and C[n]
                     do not contribute for that head.
"""

import json
import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import model as m1


# ---------------------------------------------------------------------------------------------
# configuration

def _limit(v):
    if isinstance(v, dict):
        v = v.get("__float__")
    return float(v)


@dataclass
class Mamba2Config:
    vocab_size: int = 50288
    hidden_size: int = 768
    state_size: int = 128
    num_hidden_layers: int = 24
    expand: int = 2
    conv_kernel: int = 4
    n_groups: int = 1
    head_dim: int = 64
    num_heads: int = 24
    chunk_size: int = 256
    use_bias: bool = False
    use_conv_bias: bool = True
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True
    time_step_limit: tuple = (0.0, float("inf"))
    bos_token_id: int = 0
    eos_token_id: int = 0
    pad_token_id: int = 0
    initializer_range: float = 0.02
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    extra: dict = field(default_factory=dict)   # unknown keys, written back unchanged

    @property
    def d_inner(self):
        return self.num_heads * self.head_dim

    @property
    def conv_dim(self):
        return self.d_inner + 2 * self.n_groups * self.state_size

    def check(self):
        if self.num_heads * self.head_dim != int(self.expand * self.hidden_size):
            raise ValueError("num_heads * head_dim must equal expand * hidden_size")
        if self.n_groups < 1 or self.num_heads % self.n_groups:
            raise ValueError("num_heads must be a multiple of n_groups")
        return self

    @classmethod
    def from_dict(cls, d):
        """transformers' Mamba2Config keys, or mamba_ssm's raw form (d_model, n_layer,
        ssm_cfg with layer "Mamba2", pad_vocab_size_multiple; its defaults)."""
        d = dict(d)
        if "d_model" in d and "hidden_size" not in d:
            ssm = d.get("ssm_cfg") or {}
            if ssm.get("layer") not in ("Mamba2", "mamba2"):
                raise ValueError(f"ssm_cfg.layer {ssm.get('layer')!r} is not Mamba2")
            if int(d.get("d_intermediate", 0) or 0) or d.get("attn_layer_idx"):
                raise ValueError("MLP or attention layers are not supported")
            mult = int(d.get("pad_vocab_size_multiple", 1) or 1)
            D, expand = int(d["d_model"]), int(ssm.get("expand", 2))
            P = int(ssm.get("headdim", 64))
            lim = ssm.get("dt_limit", (0.0, float("inf")))
            return cls(vocab_size=(int(d["vocab_size"]) + mult - 1) // mult * mult,
                       hidden_size=D, state_size=int(ssm.get("d_state", 128)),
                       num_hidden_layers=int(d["n_layer"]), expand=expand,
                       conv_kernel=int(ssm.get("d_conv", 4)),
                       n_groups=int(ssm.get("ngroups", 1)), head_dim=P,
                       num_heads=expand * D // P, chunk_size=int(ssm.get("chunk_size", 256)),
                       use_bias=bool(ssm.get("bias", False)),
                       use_conv_bias=bool(ssm.get("conv_bias", True)),
                       layer_norm_epsilon=float(d.get("norm_epsilon", 1e-5)),
                       tie_word_embeddings=bool(d.get("tie_embeddings", True)),
                       time_step_limit=(_limit(lim[0]), _limit(lim[1]))).check()
        if d.get("model_type", "mamba2") != "mamba2":
            raise ValueError(f"model_type {d.get('model_type')!r} is not mamba2")
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kw = {k: d.pop(k) for k in list(d) if k in names}
        if "time_step_limit" in kw:
            lo, hi = kw["time_step_limit"]
            kw["time_step_limit"] = (_limit(lo), _limit(hi))
        cfg = cls(**kw)
        for k in ("architectures", "model_type", "dtype", "torch_dtype"):
            d.pop(k, None)
        cfg.extra = d
        return cfg.check()

    def to_hf_dict(self, dtype="float32"):
        lo, hi = self.time_step_limit
        d = {
            "architectures": ["Mamba2ForCausalLM"],
            "model_type": "mamba2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "state_size": self.state_size,
            "num_hidden_layers": self.num_hidden_layers,
            "expand": self.expand,
            "conv_kernel": self.conv_kernel,
            "n_groups": self.n_groups,
            "head_dim": self.head_dim,
            "num_heads": self.num_heads,
            "chunk_size": self.chunk_size,
            "use_bias": self.use_bias,
            "use_conv_bias": self.use_conv_bias,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "tie_word_embeddings": self.tie_word_embeddings,
            "time_step_limit": [lo, hi if math.isfinite(hi) else {"__float__": "Infinity"}],
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "hidden_act": "silu",
            "residual_in_fp32": True,
            "initializer_range": self.initializer_range,
            "time_step_min": self.time_step_min,
            "time_step_max": self.time_step_max,
            "time_step_floor": self.time_step_floor,
            "time_step_rank": math.ceil(self.hidden_size / 16),
            # init-only; always false so from_pretrained does not rescale loaded weights
            "rescale_prenorm_residual": False,
            "use_cache": True,
            "dtype": dtype,
            "torch_dtype": dtype,
        }
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d


# ---------------------------------------------------------------------------------------------
# the SSD layer.  x [B,T,H,P], dt [B,T,H] (after softplus / clamp), A [H] (< 0),
# Bh, Ch [B,T,H,N] (already per head: group broadcast and state mask applied), s0 [B,H,P,N]
# or None.  Returns y [B,T,H,P] (without the D skip) and the last state [B,H,P,N].

def ssd_sequential(x, dt, A, Bh, Ch, s0=None):
    Bsz, T, H, P = x.shape
    N = Bh.shape[-1]
    s = x.new_zeros(Bsz, H, P, N) if s0 is None else s0
    ys = []
    for t in range(T):
        dA = torch.exp(dt[:, t] * A)                                        # [B, H]
        s = dA[:, :, None, None] * s \
            + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", s, Ch[:, t]))
    return torch.stack(ys, dim=1), s


def ssd_chunked(x, dt, A, Bh, Ch, chunk, s0=None):
    Bsz, T, H, P = x.shape
    N = Bh.shape[-1]
    Q = max(1, min(chunk, T))
    pad = (-T) % Q
    if pad:       # zero dt and x on padding tokens: no decay, no input; their y is dropped
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        Bh = F.pad(Bh, (0, 0, 0, 0, 0, pad))
        Ch = F.pad(Ch, (0, 0, 0, 0, 0, pad))
    c = (T + pad) // Q
    x = x.reshape(Bsz, c, Q, H, P)
    dt = dt.reshape(Bsz, c, Q, H)
    Bc = Bh.reshape(Bsz, c, Q, H, N)
    Cc = Ch.reshape(Bsz, c, Q, H, N)
    a = dt * A                                                              # [B,c,Q,H] <= 0
    cum = torch.cumsum(a, dim=2)
    cum_h = cum.permute(0, 1, 3, 2)                                         # [B,c,H,Q]
    seg = cum_h[..., :, None] - cum_h[..., None, :]                         # [B,c,H,Q,Q] i-j
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    L = torch.exp(seg.masked_fill(~causal, float("-inf")))
    CB = torch.einsum("bcihn,bcjhn->bchij", Cc, Bc)
    xdt = x * dt[..., None]                                                 # [B,c,Q,H,P]
    y = torch.einsum("bchij,bcjhp->bcihp", CB * L, xdt)
    # each chunk's own contribution to the state at its end
    w = torch.exp(cum[:, :, -1:, :] - cum)                                  # [B,c,Q,H]
    states = torch.einsum("bcjhp,bcjhn->bchpn", xdt * w[..., None], Bc)
    decay = torch.exp(cum[:, :, -1, :])                                     # [B,c,H]
    s = x.new_zeros(Bsz, H, P, N) if s0 is None else s0
    entering = []
    for k in range(c):
        entering.append(s)
        s = decay[:, k, :, None, None] * s + states[:, k]
    S_in = torch.stack(entering, dim=1)                                     # [B,c,H,P,N]
    y = y + torch.exp(cum)[..., None] * torch.einsum("bcihn,bchpn->bcihp", Cc, S_in)
    y = y.reshape(Bsz, c * Q, H, P)[:, :T]
    return y, s


# ---------------------------------------------------------------------------------------------
# modules

class GatedRMSNorm(nn.Module):
    def __init__(self, d, n_groups, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.n_groups, self.eps = n_groups, eps

    def forward(self, y, z):
        v = y * F.silu(z)
        sh = v.shape
        vg = v.reshape(sh[:-1] + (self.n_groups, sh[-1] // self.n_groups))
        vg = vg * torch.rsqrt(vg.pow(2).mean(-1, keepdim=True) + self.eps)
        return vg.reshape(sh) * self.weight.to(v.dtype)


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        H, G, K = cfg.num_heads, cfg.n_groups, cfg.conv_kernel
        Di = cfg.d_inner
        self.in_proj = nn.Linear(cfg.hidden_size, Di + cfg.conv_dim + H, bias=cfg.use_bias)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, K, groups=cfg.conv_dim, padding=0,
                                bias=cfg.use_conv_bias)
        self.dt_bias = nn.Parameter(torch.zeros(H))
        self.A_log = nn.Parameter(torch.zeros(H))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = GatedRMSNorm(Di, G, cfg.layer_norm_epsilon)
        self.out_proj = nn.Linear(Di, cfg.hidden_size, bias=cfg.use_bias)
        self.ssd = "chunked"
        self.chunk = 64
        # Called with (x [B,T,H,P], dt [B,T,H], A [H], Bh [B,T,H,N]) when set (calibration
        # statistics of the magnitude baseline).
        self.ssd_hook = None

    def forward(self, h, state=None, head_mask=None, state_mask=None):
        """h [B,T,D]; state None or (conv [B, conv_dim, K-1], ssm [B,H,P,N]) -> (out, state).
        head_mask [H], state_mask [H, N]: 0/1 (the semantics in the module docstring)."""
        c = self.cfg
        Bsz, T, _ = h.shape
        H, P, N, G, K = c.num_heads, c.head_dim, c.state_size, c.n_groups, c.conv_kernel
        Di = c.d_inner
        zxd = self.in_proj(h)
        z, xbc, dt = torch.split(zxd, [Di, c.conv_dim, H], dim=-1)
        xt = xbc.transpose(1, 2)                                            # [B, conv_dim, T]
        if state is not None and K > 1:
            xpad = torch.cat([state[0].to(xt.dtype), xt], dim=-1)
        else:
            xpad = F.pad(xt, (K - 1, 0))
        conv_state = xpad[:, :, xpad.shape[-1] - (K - 1):] if K > 1 else xpad[:, :, :0]
        xbc = F.silu(self.conv1d(xpad)).transpose(1, 2)                     # [B, T, conv_dim]
        cd = m1._compute_dtype(self.A_log)
        with _no_autocast(xbc):
            xbc = xbc.to(cd)
            x = xbc[..., :Di].reshape(Bsz, T, H, P)
            Bm = xbc[..., Di:Di + G * N].reshape(Bsz, T, G, 1, N)
            Cm = xbc[..., Di + G * N:].reshape(Bsz, T, G, 1, N)
            Bh = Bm.expand(Bsz, T, G, H // G, N).reshape(Bsz, T, H, N)
            Ch = Cm.expand(Bsz, T, G, H // G, N).reshape(Bsz, T, H, N)
            dt = F.softplus(dt.to(cd) + self.dt_bias.to(cd))
            lo, hi = c.time_step_limit
            if lo > 0.0 or math.isfinite(hi):
                dt = dt.clamp(min=lo, max=hi)
            A = -torch.exp(self.A_log.to(cd))
            s0 = None if state is None else state[1].to(cd)
            live = None
            if state_mask is not None:
                live = state_mask.to(cd)
            if head_mask is not None:
                hm = head_mask.to(cd)[:, None]
                live = hm.expand(H, N) if live is None else live * hm
            if live is not None:
                Bh = Bh * live
                Ch = Ch * live
                if s0 is not None:
                    s0 = s0 * live[:, None, :]
            if self.ssd_hook is not None:
                self.ssd_hook(x, dt, A, Bh)
            if self.ssd == "sequential":
                y, s_last = ssd_sequential(x, dt, A, Bh, Ch, s0)
            else:
                y, s_last = ssd_chunked(x, dt, A, Bh, Ch, self.chunk, s0)
            y = y + x * self.D.to(cd)[:, None]
            if head_mask is not None:
                y = y * head_mask.to(cd)[:, None]
            v = self.norm(y.reshape(Bsz, T, Di), z.to(cd))
        return self.out_proj(v), (conv_state, s_last)


def allow_tf32():
    """TF32 for the float32 SSD matmuls on CUDA (newer torch's setting first, then the old)."""
    try:                       # torch 1.13 raises AssertionError("Unknown attribute ...")
        torch.backends.cuda.matmul.fp32_precision = "tf32"
    except Exception:          # noqa: BLE001
        try:
            torch.backends.cuda.matmul.allow_tf32 = True
        except Exception:      # noqa: BLE001
            pass


class _no_autocast:
    """Disable CUDA autocast inside (the SSD part runs in float32)."""

    def __init__(self, t):
        self.ctx = torch.autocast(device_type="cuda", enabled=False) \
            if t.is_cuda and torch.is_autocast_enabled() else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *e):
        if self.ctx is not None:
            return self.ctx.__exit__(*e)
        return False


class Mamba2Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm = m1.RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        self.mixer = Mamba2Mixer(cfg)


class Mamba2Backbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([Mamba2Block(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm_f = m1.RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)


SSDS = ("chunked", "sequential")


class Mamba2LM(nn.Module):
    """Mamba-2 causal LM. forward(ids [B, T]) -> logits [B, T, V] (dtype of the parameters)."""

    def __init__(self, cfg, dropout=0.0):
        super().__init__()
        self.config = cfg.check()
        self.backbone = Mamba2Backbone(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def head_weight(self):
        if self.config.tie_word_embeddings:
            return self.backbone.embeddings.weight
        return self.lm_head.weight

    def set_scan(self, name, chunk=None):
        """'chunked' (training form; 'parallel' is accepted as its alias) or 'sequential'."""
        name = "chunked" if name == "parallel" else name
        if name not in SSDS:
            raise ValueError(f"unknown SSD form {name!r} (choose from {SSDS})")
        for layer in self.backbone.layers:
            layer.mixer.ssd = name
            if chunk:
                layer.mixer.chunk = int(chunk)
        return self

    def init_state(self, batch, device=None, dtype=None):
        p = self.backbone.norm_f.weight
        device = device or p.device
        dtype = dtype or m1._compute_dtype(p)
        c = self.config
        return [(torch.zeros(batch, c.conv_dim, c.conv_kernel - 1, device=device, dtype=dtype),
                 torch.zeros(batch, c.num_heads, c.head_dim, c.state_size, device=device,
                             dtype=dtype))
                for _ in range(c.num_hidden_layers)]

    def forward(self, ids, state=None, return_state=False, return_hidden=False,
                head_masks=None, state_masks=None):
        """head_masks: None or [L, H]; state_masks: None or [L, H, N] (0/1 or soft gates)."""
        return m1.run_stack(self, ids, state, return_state, return_hidden,
                            lambda i: (None if head_masks is None else head_masks[i],
                                       None if state_masks is None else state_masks[i]))

    @torch.no_grad()
    def reset_parameters(self, seed=None):
        """mamba_ssm's Mamba2 initialisation: dt log-uniform in [time_step_min, max] through
        dt_bias = softplus^-1(dt), A = U(1, 16) per head, D = 1, PyTorch default Linear / conv
        init, embeddings N(0, initializer_range), out_proj scaled by 1/sqrt(n_layer)."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        c = self.config

        def uniform_(t, lo, hi):
            t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

        def default_(mod):
            bound = 1.0 / math.sqrt(mod.weight[0].numel())
            uniform_(mod.weight, -bound, bound)
            if mod.bias is not None:
                uniform_(mod.bias, -bound, bound)

        self.backbone.embeddings.weight.copy_(
            torch.randn(self.backbone.embeddings.weight.shape, generator=g) * c.initializer_range)
        if not c.tie_word_embeddings:
            self.lm_head.weight.copy_(torch.randn(self.lm_head.weight.shape, generator=g)
                                      * c.initializer_range)
        self.backbone.norm_f.weight.fill_(1.0)
        for layer in self.backbone.layers:
            m = layer.mixer
            layer.norm.weight.fill_(1.0)
            m.norm.weight.fill_(1.0)
            default_(m.in_proj)
            default_(m.conv1d)
            default_(m.out_proj)
            for lin in (m.in_proj, m.out_proj):
                if lin.bias is not None:
                    lin.bias.zero_()
            m.out_proj.weight.div_(math.sqrt(c.num_hidden_layers))
            u = torch.rand(c.num_heads, generator=g, dtype=torch.float64)
            lo, hi = math.log(c.time_step_min), math.log(c.time_step_max)
            dt = torch.exp(u * (hi - lo) + lo).clamp(min=c.time_step_floor)
            m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            A = torch.rand(c.num_heads, generator=g, dtype=torch.float64) * 15.0 + 1.0
            m.A_log.copy_(torch.log(A))
            m.D.fill_(1.0)
        return self

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------------------------------------
# Hugging Face directory I/O (model.py's reader and writer)

def is_mamba2_dir(model_dir):
    try:
        with open(os.path.join(model_dir, "config.json"), "r", encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError):
        return False
    return d.get("model_type") == "mamba2" or \
        (d.get("ssm_cfg") or {}).get("layer") in ("Mamba2", "mamba2")


def load_config(model_dir):
    with open(os.path.join(model_dir, "config.json"), "r", encoding="utf-8") as f:
        return Mamba2Config.from_dict(json.load(f))


def load_model(model_dir, dtype=torch.float32, device="cpu", dropout=0.0):
    """A HF-layout Mamba2ForCausalLM directory (single file or sharded) into Mamba2LM. The
    embedding's row count is the vocabulary (config vocab_size may name fewer ids)."""
    cfg = load_config(model_dir)
    raw = {m1._canonical_name(k): v for k, v in m1._read_weights(model_dir).items()}
    emb = raw.get("backbone.embeddings.weight")
    if emb is None:
        raise ValueError("checkpoint has no backbone.embeddings.weight")
    cfg.vocab_size = int(emb.shape[0])
    if cfg.tie_word_embeddings:
        raw.pop("lm_head.weight", None)
    return m1.load_weights_into(Mamba2LM(cfg, dropout=dropout), raw, model_dir, dtype, device)


def save_model(model, model_dir, dtype="float32", tokenizer_path=None, extra_config=None):
    return m1.save_model(model, model_dir, dtype=dtype, tokenizer_path=tokenizer_path,
                         extra_config=extra_config)
