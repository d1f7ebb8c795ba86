"""Mamba-1 reference model in plain PyTorch (no custom kernels), Hugging Face layout.

Parameter names equal transformers' MambaForCausalLM state dict:
    backbone.embeddings.weight                      [V, D]
    backbone.layers.{l}.norm.weight                 [D]
    backbone.layers.{l}.mixer.in_proj.weight        [2*Di, D]      (+ .bias if use_bias)
    backbone.layers.{l}.mixer.conv1d.weight         [Di, 1, K]     (+ .bias if use_conv_bias)
    backbone.layers.{l}.mixer.x_proj.weight         [R + 2N, Di]
    backbone.layers.{l}.mixer.dt_proj.weight        [Di, R]        (+ .bias, always)
    backbone.layers.{l}.mixer.A_log                 [Di, N]
    backbone.layers.{l}.mixer.D                     [Di]
    backbone.layers.{l}.mixer.out_proj.weight       [D, Di]        (+ .bias if use_bias)
    backbone.norm_f.weight                          [D]
    lm_head.weight                                  [V, D]         only when untied
The forward is docs/ARCHITECTURE.md §3, per layer:
    r = h;  h = rmsnorm(h) * norm.weight             rmsnorm(h) = h * rsqrt(mean(h^2) + eps)
    [x, z] = in_proj(h)
    x = silu(causal_depthwise_conv(x))               left zero padding (or the conv state)
    [dt_lo, B, C] = x_proj(x);  dt = softplus(dt_proj(dt_lo));  A = -exp(A_log)
    s[d,n] = exp(dt[d] A[d,n]) s[d,n] + dt[d] B[n] x[d];   y[d] = sum_n C[n] s[d,n] + D[d] x[d]
    y = y * silu(z);  h = r + out_proj(y)
then norm_f and lm_head. Everything runs in the dtype of the parameters (model.double() is
float64 end to end). Under CUDA autocast (bf16) the projections run in bf16 while the norms,
softplus, scan and residual stream stay float32.

The scan over time has two implementations that compute the same recurrence:
    scan_sequential   one step per token (the plain reference, used in tests)
    scan_parallel     recursive even/odd doubling (a Blelloch-style parallel prefix scan with the
                      associative operator (a1,b1)∘(a2,b2) = (a1 a2, a2 b1 + b2)): log2(T) levels
                      of whole-tensor ops, O(T) work, only products of decays in (0, 1] — stable.
"""

import json
import math
import os
from dataclasses import dataclass, field, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import safetensors_io


# ---------------------------------------------------------------------------------------------
# configuration

@dataclass
class MambaConfig:
    vocab_size: int = 50280
    hidden_size: int = 768
    state_size: int = 16
    num_hidden_layers: int = 32
    expand: int = 2
    conv_kernel: int = 4
    time_step_rank: object = "auto"      # int or "auto" = ceil(hidden_size / 16)
    use_bias: bool = False
    use_conv_bias: bool = True
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True
    bos_token_id: int = 0
    eos_token_id: int = 0
    pad_token_id: int = 0
    # initialisation only (kept in config.json like transformers does)
    initializer_range: float = 0.02
    time_step_scale: float = 1.0
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    rescale_prenorm_residual: bool = True
    extra: dict = field(default_factory=dict)   # unknown keys, written back unchanged

    @property
    def d_inner(self):
        return int(self.expand * self.hidden_size)

    @property
    def dt_rank(self):
        if self.time_step_rank == "auto" or self.time_step_rank is None:
            return math.ceil(self.hidden_size / 16)
        return int(self.time_step_rank)

    @classmethod
    def from_dict(cls, d):
        """Accept transformers' MambaConfig keys or the original state-spaces keys.

        Missing keys take transformers' defaults for HF configs (use_bias=True there) and
        mamba_ssm's defaults for state-spaces configs (bias=False, conv_bias=True).
        """
        d = dict(d)
        if "d_model" in d and "hidden_size" not in d:
            ssm = d.get("ssm_cfg") or {}
            vocab = int(d["vocab_size"])
            mult = int(d.get("pad_vocab_size_multiple", 1) or 1)
            if vocab % mult:
                vocab += mult - vocab % mult
            known = {"d_model", "n_layer", "vocab_size", "ssm_cfg", "pad_vocab_size_multiple",
                     "rms_norm", "residual_in_fp32", "fused_add_norm", "tie_embeddings",
                     "d_intermediate", "attn_layer_idx", "attn_cfg", "norm_epsilon"}
            if ssm.get("layer", "Mamba1") not in ("Mamba1", "mamba1"):
                raise ValueError(f"ssm_cfg.layer {ssm.get('layer')!r}: only Mamba1 is supported")
            if d.get("rms_norm", True) is False:
                raise ValueError("rms_norm=false (LayerNorm) is not supported")
            return cls(
                vocab_size=vocab,
                hidden_size=int(d["d_model"]),
                state_size=int(ssm.get("d_state", 16)),
                num_hidden_layers=int(d["n_layer"]),
                expand=ssm.get("expand", 2),
                conv_kernel=int(ssm.get("d_conv", 4)),
                time_step_rank=ssm.get("dt_rank", "auto"),
                use_bias=bool(ssm.get("bias", False)),
                use_conv_bias=bool(ssm.get("conv_bias", True)),
                layer_norm_epsilon=float(d.get("norm_epsilon", 1e-5)),
                tie_word_embeddings=bool(d.get("tie_embeddings", True)),
                extra={k: v for k, v in d.items() if k not in known},
            )
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kw = {k: d.pop(k) for k in list(d) if k in names}
        if "intermediate_size" in d:
            inter = d.pop("intermediate_size")
            hidden = kw.get("hidden_size", cls.hidden_size)
            if "expand" not in kw and inter % hidden == 0:
                kw["expand"] = inter // hidden
        kw.setdefault("use_bias", True)            # transformers' MambaConfig default
        cfg = cls(**kw)
        if cfg.d_inner != int(cfg.expand * cfg.hidden_size):
            raise ValueError("inconsistent expand / intermediate_size")
        cfg.extra = d
        return cfg

    def to_hf_dict(self, dtype="float32"):
        d = {
            "architectures": ["MambaForCausalLM"],
            "model_type": "mamba",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.d_inner,
            "state_size": self.state_size,
            "num_hidden_layers": self.num_hidden_layers,
            "expand": self.expand,
            "conv_kernel": self.conv_kernel,
            "time_step_rank": self.dt_rank,
            "use_bias": self.use_bias,
            "use_conv_bias": self.use_conv_bias,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "hidden_act": "silu",
            "residual_in_fp32": True,
            "initializer_range": self.initializer_range,
            "time_step_scale": self.time_step_scale,
            "time_step_min": self.time_step_min,
            "time_step_max": self.time_step_max,
            "time_step_floor": self.time_step_floor,
            "time_step_init_scheme": "random",
            # Init-only flag, always saved false: transformers (seen with 5.17) re-applies
            # out_proj /= sqrt(n_layer) to the *loaded* weights in from_pretrained when it is
            # true, which silently changes the model (our own init uses the field above).
            "rescale_prenorm_residual": False,
            "use_cache": True,
            "dtype": dtype,
            "torch_dtype": dtype,
        }
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d


# ---------------------------------------------------------------------------------------------
# scans.  Inputs: dA, dBx [B, T, Di, N] (decay exp(dt A) and input dt B x), C [B, T, N],
# s0 [B, Di, N] or None.  Output: y [B, T, Di] = sum_n C s, and the last state [B, Di, N].

def scan_sequential(dA, dBx, C, s0=None):
    Bsz, T, Di, N = dA.shape
    s = torch.zeros(Bsz, Di, N, dtype=dA.dtype, device=dA.device) if s0 is None else s0
    ys = []
    for t in range(T):
        s = dA[:, t] * s + dBx[:, t]
        ys.append(torch.einsum("bdn,bn->bd", s, C[:, t]))
    return torch.stack(ys, dim=1), s


def _prefix_states(a, b):
    """h_t = a_t h_{t-1} + b_t along dim 1 with h_{-1} = 0, for all t (recursive doubling)."""
    T = a.shape[1]
    if T == 1:
        return b
    odd = T % 2
    if odd:   # pad with the identity element (a=1, b=0) to an even length
        a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
        b = torch.cat([b, torch.zeros_like(b[:, :1])], dim=1)
    a_e, a_o = a[:, 0::2], a[:, 1::2]
    b_e, b_o = b[:, 0::2], b[:, 1::2]
    # pair (2k, 2k+1) as one step: h_{2k+1} = (a_o a_e) h_{2k-1} + (a_o b_e + b_o)
    h_o = _prefix_states(a_o * a_e, a_o * b_e + b_o)
    # h_{2k} = a_e h_{2k-1} + b_e, with h_{-1} = 0
    h_e = torch.cat([b_e[:, :1], a_e[:, 1:] * h_o[:, :-1] + b_e[:, 1:]], dim=1)
    h = torch.stack([h_e, h_o], dim=2).reshape(a.shape)
    return h[:, :T] if odd else h


def scan_parallel(dA, dBx, C, s0=None, state_hook=None):
    if s0 is not None:
        dBx = torch.cat([dBx[:, :1] + dA[:, :1] * s0[:, None], dBx[:, 1:]], dim=1)
    h = _prefix_states(dA, dBx)
    if state_hook is not None:
        state_hook(h)
    y = torch.einsum("btdn,btn->btd", h, C)
    return y, h[:, -1]


SCANS = {"parallel": scan_parallel, "sequential": scan_sequential}


# ---------------------------------------------------------------------------------------------
# modules

def _compute_dtype(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, h):
        cd = _compute_dtype(h)
        h = h.to(cd)
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(cd)


class MambaMixer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        D, Di, N, R, K = cfg.hidden_size, cfg.d_inner, cfg.state_size, cfg.dt_rank, cfg.conv_kernel
        self.d_inner, self.d_state, self.dt_rank, self.d_conv = Di, N, R, K
        self.in_proj = nn.Linear(D, 2 * Di, bias=cfg.use_bias)
        self.conv1d = nn.Conv1d(Di, Di, K, groups=Di, padding=0, bias=cfg.use_conv_bias)
        self.x_proj = nn.Linear(Di, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, Di, bias=True)
        self.A_log = nn.Parameter(torch.zeros(Di, N))
        self.D = nn.Parameter(torch.ones(Di))
        self.out_proj = nn.Linear(Di, D, bias=cfg.use_bias)
        self.scan = "parallel"
        # Called with every state s_t [B, T, Di, N] when set (calibration statistics, e.g. the
        # magnitude baseline of yunmin_train.masks); forces the parallel scan.
        self.state_hook = None

    def forward(self, h, state=None, mask=None):
        """h [B, T, D]; state None or (conv [B, Di, K-1], ssm [B, Di, N]) -> (out, new_state).

        mask: None, or (channel [Di], state [Di, N]) of 0/1 (a sparsity profile's hard masks,
        docs/ARCHITECTURE.md §4): x[d] := 0 right after conv + silu where channel[d] is 0, and s[d, n] held
        at 0 where channel[d] * state[d, n] is 0. This is the meaning the C engine serves by
        removing those channels and entries."""
        Bsz, T, _ = h.shape
        K = self.d_conv
        xz = self.in_proj(h)
        x, z = xz.chunk(2, dim=-1)
        xt = x.transpose(1, 2)                                       # [B, Di, T]
        if state is not None and K > 1:
            xpad = torch.cat([state[0].to(xt.dtype), xt], dim=-1)
        else:
            xpad = F.pad(xt, (K - 1, 0))
        conv_state = xpad[:, :, xpad.shape[-1] - (K - 1):] if K > 1 else xpad[:, :, :0]
        x = F.silu(self.conv1d(xpad)).transpose(1, 2)                # [B, T, Di]
        if mask is not None:
            x = x * mask[0].to(x.dtype)                              # dropped channels: x = 0
        dbc = self.x_proj(x)
        dt_lo, Bm, Cm = torch.split(dbc, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        cd = _compute_dtype(self.A_log)
        dt = F.softplus(self.dt_proj(dt_lo).to(cd))                  # [B, T, Di]
        A = -torch.exp(self.A_log.to(cd))                            # [Di, N]
        x = x.to(cd)
        dA = torch.exp(dt[..., None] * A)                            # [B, T, Di, N]
        dBx = (dt * x)[..., None] * Bm.to(cd)[:, :, None, :]         # [B, T, Di, N]
        s0 = None if state is None else state[1].to(cd)
        if mask is not None:
            # s = dA s + dBx stays 0 where both terms (and the start) are 0.
            live = (mask[0][:, None] * mask[1]).to(cd)               # [Di, N]
            dA = dA * live
            dBx = dBx * live
            s0 = None if s0 is None else s0 * live
        if self.state_hook is not None:
            y, s_last = scan_parallel(dA, dBx, Cm.to(cd), s0, state_hook=self.state_hook)
        else:
            y, s_last = SCANS[self.scan](dA, dBx, Cm.to(cd), s0)
        y = (y + x * self.D.to(cd)) * F.silu(z.to(cd))
        return self.out_proj(y), (conv_state, s_last)


def run_stack(lm, ids, state, return_state, return_hidden, mixer_args):
    """The language model around the mixers, shared by Mamba-1 (MambaLM) and Mamba-2
    (mamba2.Mamba2LM): embeddings, per layer the pre-norm mixer with a residual kept in the
    compute dtype, the final norm and the (tied or separate) head. lm has backbone (embeddings,
    layers with norm + mixer, norm_f), dropout (None or a module) and head_weight();
    mixer_args(i) gives layer i's mixer arguments after (x, state) (its masks).
    Returns logits, then the new per-layer states if return_state, then the hidden states
    after every layer and after norm_f if return_hidden."""
    h = lm.backbone.embeddings(ids)
    if lm.dropout is not None:
        h = lm.dropout(h)
    new_state, hidden = [], []
    for i, layer in enumerate(lm.backbone.layers):
        r = h.to(_compute_dtype(h))
        out, st = layer.mixer(layer.norm(h), None if state is None else state[i],
                              *mixer_args(i))
        if lm.dropout is not None:
            out = lm.dropout(out)
        h = r + out.to(r.dtype)
        new_state.append(st)
        if return_hidden:
            hidden.append(h)
    h = lm.backbone.norm_f(h)
    if return_hidden:
        hidden.append(h)
    w = lm.head_weight()
    logits = F.linear(h.to(w.dtype) if not torch.is_autocast_enabled() else h, w)
    extras = []
    if return_state:
        extras.append(new_state)
    if return_hidden:
        extras.append(hidden)
    return (logits, *extras) if extras else logits


class MambaBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        self.mixer = MambaMixer(cfg)


class MambaBackbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([MambaBlock(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm_f = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)


class MambaLM(nn.Module):
    """Mamba-1 causal LM. forward(ids [B, T]) -> logits [B, T, V] (dtype of the parameters)."""

    def __init__(self, cfg, dropout=0.0):
        super().__init__()
        self.config = cfg
        self.backbone = MambaBackbone(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    # -- helpers ------------------------------------------------------------------------
    def head_weight(self):
        if self.config.tie_word_embeddings:
            return self.backbone.embeddings.weight
        return self.lm_head.weight

    def set_scan(self, name):
        if name not in SCANS:
            raise ValueError(f"unknown scan {name!r} (choose from {sorted(SCANS)})")
        for layer in self.backbone.layers:
            layer.mixer.scan = name
        return self

    def init_state(self, batch, device=None, dtype=None):
        """Fresh (zero) state per layer: (conv [B, Di, K-1], ssm [B, Di, N])."""
        p = self.backbone.norm_f.weight
        device = device or p.device
        dtype = dtype or _compute_dtype(p)
        c = self.config
        return [(torch.zeros(batch, c.d_inner, c.conv_kernel - 1, device=device, dtype=dtype),
                 torch.zeros(batch, c.d_inner, c.state_size, device=device, dtype=dtype))
                for _ in range(c.num_hidden_layers)]

    # -- forward ------------------------------------------------------------------------
    def forward(self, ids, state=None, return_state=False, return_hidden=False, masks=None):
        """masks: None, or per layer (channel [Di], state [Di, N]) 0/1 tensors
        (load_sparsity_masks): the reference semantics of a sparsity profile."""
        return run_stack(self, ids, state, return_state, return_hidden,
                         lambda i: (None if masks is None else masks[i],))

    # -- init ---------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, seed=None):
        """Mamba-style initialisation (mamba_ssm's defaults)."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        c = self.config

        def normal_(t, std):
            t.copy_(torch.randn(t.shape, generator=g) * std)

        def uniform_(t, lo, hi):
            t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

        def linear_default_(lin):    # PyTorch's nn.Linear/Conv default: U(-1/sqrt(fan_in), ..)
            w = lin.weight
            fan_in = w[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            uniform_(w, -bound, bound)

        normal_(self.backbone.embeddings.weight, c.initializer_range)
        if not c.tie_word_embeddings:
            normal_(self.lm_head.weight, c.initializer_range)
        self.backbone.norm_f.weight.fill_(1.0)
        for layer in self.backbone.layers:
            m = layer.mixer
            layer.norm.weight.fill_(1.0)
            linear_default_(m.in_proj)
            linear_default_(m.conv1d)
            linear_default_(m.x_proj)
            linear_default_(m.out_proj)
            for lin in (m.in_proj, m.out_proj):
                if lin.bias is not None:
                    lin.bias.zero_()
            if m.conv1d.bias is not None:
                fan_in = m.conv1d.weight[0].numel()
                uniform_(m.conv1d.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
            dt_std = c.dt_rank ** -0.5 * c.time_step_scale
            uniform_(m.dt_proj.weight, -dt_std, dt_std)
            u = torch.rand(c.d_inner, generator=g, dtype=torch.float64)
            lo, hi = math.log(c.time_step_min), math.log(c.time_step_max)
            dt = torch.exp(u * (hi - lo) + lo).clamp(min=c.time_step_floor)
            m.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))        # softplus^-1(dt)
            A = torch.arange(1, c.state_size + 1, dtype=torch.float64)
            m.A_log.copy_(torch.log(A)[None, :].expand(c.d_inner, -1))
            m.D.fill_(1.0)
            if c.rescale_prenorm_residual:
                m.out_proj.weight.div_(math.sqrt(c.num_hidden_layers))
        return self

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------------------------------------
# generation

@torch.no_grad()
def generate(model, prompt_ids, max_new_tokens, temperature=1.0, top_k=0, seed=None,
             stop_ids=()):
    """Sample a continuation token by token with the recurrent state. Returns the new ids.

    temperature 0 means greedy. The prompt is run as one chunk (prefill), then one token per step.
    """
    dev = model.backbone.norm_f.weight.device
    g = torch.Generator(device="cpu")
    if seed is not None:
        g.manual_seed(seed)
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=dev)
    logits, state = model(ids, state=model.init_state(1), return_state=True)
    last = logits[0, -1].float().cpu()
    out = []
    for _ in range(max_new_tokens):
        if temperature <= 0:
            nxt = int(torch.argmax(last))
        else:
            lg = last / temperature
            if top_k and top_k < lg.numel():
                kth = torch.topk(lg, top_k).values[-1]
                lg = torch.where(lg < kth, torch.full_like(lg, -float("inf")), lg)
            probs = torch.softmax(lg.double(), dim=-1)
            nxt = int(torch.multinomial(probs, 1, generator=g))
        out.append(nxt)
        if nxt in stop_ids:
            break
        step = torch.tensor([[nxt]], dtype=torch.long, device=dev)
        logits, state = model(step, state=state, return_state=True)
        last = logits[0, -1].float().cpu()
    return out


# ---------------------------------------------------------------------------------------------
# Hugging Face directory I/O

def _read_weights(model_dir):
    single = os.path.join(model_dir, "model.safetensors")
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(single):
        tensors, _ = safetensors_io.load(single)
        return tensors
    if os.path.exists(index):
        with open(index, "r", encoding="utf-8") as f:
            wmap = json.load(f)["weight_map"]
        tensors = {}
        for shard in sorted(set(wmap.values())):
            part, _ = safetensors_io.load(os.path.join(model_dir, shard))
            for k, v in part.items():
                if wmap.get(k) != shard:
                    raise ValueError(f"{shard}: tensor {k} is not mapped to this shard")
                tensors[k] = v
        missing = set(wmap) - set(tensors)
        if missing:
            raise ValueError(f"index lists tensors missing from the shards: {sorted(missing)[:5]}")
        return tensors
    raise FileNotFoundError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def _canonical_name(k):
    if k.startswith("backbone.embedding."):                          # state-spaces naming
        return "backbone.embeddings." + k[len("backbone.embedding."):]
    return k


def load_config(model_dir):
    with open(os.path.join(model_dir, "config.json"), "r", encoding="utf-8") as f:
        return MambaConfig.from_dict(json.load(f))


def load_sparsity_masks(path, dtype=torch.float64):
    """The hard masks of a yunmin.sparsity.safetensors (docs/ARCHITECTURE.md §4): per layer
    (channel [Di], state [Di, N]) with 1 where the logit is > 0. The scan order is not needed:
    it is an exact reparametrization of the served layout."""
    tensors, meta = safetensors_io.load_numpy(path)
    if (meta or {}).get("format") != "yunmin-sparsity" or (meta or {}).get("version") != "1":
        raise ValueError(f"{path}: not a yunmin-sparsity version 1 file")
    masks, l = [], 0
    while f"layers.{l}.channel_logits" in tensors:
        ch = torch.as_tensor(tensors[f"layers.{l}.channel_logits"] > 0, dtype=dtype)
        st = torch.as_tensor(tensors[f"layers.{l}.state_logits"] > 0, dtype=dtype)
        masks.append((ch, st))
        l += 1
    return masks


def load_model(model_dir, dtype=torch.float32, device="cpu", dropout=0.0):
    """Load a HF-layout (or state-spaces-layout) Mamba directory into MambaLM (a Mamba-2
    directory, config model_type "mamba2", into yunmin_train.mamba2.Mamba2LM)."""
    from . import mamba2
    if mamba2.is_mamba2_dir(model_dir):
        return mamba2.load_model(model_dir, dtype=dtype, device=device, dropout=dropout)
    cfg = load_config(model_dir)
    raw = {_canonical_name(k): v for k, v in _read_weights(model_dir).items()}
    emb = raw.get("backbone.embeddings.weight")
    if emb is None:
        raise ValueError("checkpoint has no backbone.embeddings.weight / backbone.embedding.weight")
    if emb.shape[0] != cfg.vocab_size:
        raise ValueError(f"embedding has {emb.shape[0]} rows, config vocab_size {cfg.vocab_size}")
    if cfg.tie_word_embeddings:
        raw.pop("lm_head.weight", None)   # a tied checkpoint may still carry the copy
    return load_weights_into(MambaLM(cfg, dropout=dropout), raw, model_dir, dtype, device)


def load_weights_into(model, raw, model_dir, dtype, device):
    """Copy the checkpoint's tensors (raw: canonical name -> tensor) into a freshly built model
    (Mamba-1 or Mamba-2): every tensor the model has must be there, with its shape, and no
    other; returns the model in dtype on device. model_dir only names the checkpoint in errors."""
    want = model.state_dict()
    missing = sorted(set(want) - set(raw))
    unexpected = sorted(set(raw) - set(want))
    if missing or unexpected:
        raise ValueError(f"{model_dir}: missing tensors {missing[:8]}, unexpected {unexpected[:8]}")
    for k, t in raw.items():
        if tuple(t.shape) != tuple(want[k].shape):
            raise ValueError(f"{k}: shape {tuple(t.shape)} in file, model needs {tuple(want[k].shape)}")
    model.load_state_dict({k: v.to(torch.float64 if dtype == torch.float64 else torch.float32)
                           for k, v in raw.items()})
    return model.to(device=device, dtype=dtype)


def save_model(model, model_dir, dtype="float32", tokenizer_path=None, extra_config=None):
    """Write config.json + model.safetensors (dtype 'float32' or 'bfloat16') [+ tokenizer.json]."""
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"unsupported save dtype {dtype!r}")
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    os.makedirs(model_dir, exist_ok=True)
    sd = {k: v.detach().to("cpu", tdt).contiguous() for k, v in model.state_dict().items()}
    safetensors_io.save(sd, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
    cfgd = model.config.to_hf_dict(dtype=dtype)
    if extra_config:
        cfgd.update(extra_config)
    tmp = os.path.join(model_dir, "config.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(cfgd, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, os.path.join(model_dir, "config.json"))
    if tokenizer_path is not None:
        dst = os.path.join(model_dir, "tokenizer.json")
        if os.path.abspath(tokenizer_path) != os.path.abspath(dst):
            with open(tokenizer_path, "rb") as fi, open(dst + ".tmp", "wb") as fo:
                fo.write(fi.read())
            os.replace(dst + ".tmp", dst)


def config_asdict(cfg):
    d = asdict(cfg)
    d.pop("extra", None)
    return d
