"""Train a Mamba-1 language model on a text file.

    PYTHONPATH=tools/train python3 -m yunmin_train.train --text data.txt \\
        --tokenizer tokenizer.json --out models/my-model --work-dir build/my-run [options]

* Data: the last 10 % of the file's characters are held out (see yunmin_train.data), or, with
  --val-text, that whole file is; training batches are random contiguous windows of --seq-len
  tokens from the training text.
* Optimiser: AdamW (weight decay on matrices and embeddings, not on norms, biases, A_log, D),
  linear warmup over --warmup-steps, then cosine decay to --min-lr-ratio * --lr. The schedule's
  progress is max(step / --max-steps, elapsed / --time-budget): with a time budget the cosine
  always completes inside the budget, whatever the speed of the machine.
* Every --eval-interval steps: held-out loss / perplexity (evaluate.py's protocol with
  --eval-ctx), a checkpoint in <work-dir>/checkpoint (model + optimizer + trainer state), and,
  when the held-out loss improved, an export of the model to --out in HF layout
  (config.json, model.safetensors in --save-dtype, tokenizer.json). The shipped model is thus
  the best held-out checkpoint (early stopping); it is written before training can be cut off.
* SIGINT / SIGTERM: stop after the current step, evaluate, checkpoint, export, exit 0.
* --resume continues from <work-dir>/checkpoint (the time budget counts the earlier run).
* Log: JSON lines on stdout and in <out>/train_log.jsonl (type config / train / eval / done).
"""

import argparse
import json
import math
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import data as data_mod
from .evaluate import nll_windows, pick_device
from .model import MambaConfig, MambaLM, load_model, save_model, config_asdict
from .mamba2 import Mamba2Config, Mamba2LM, allow_tf32
from .tokenizer import Tokenizer


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m yunmin_train.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("data")
    g.add_argument("--text", required=True, help="UTF-8 training text file")
    g.add_argument("--tokenizer", required=True, help="HF tokenizer.json")
    g.add_argument("--out", required=True, help="model directory written in HF layout")
    g.add_argument("--work-dir", default=None,
                   help="checkpoints and token cache (default: <out>/work)")
    g.add_argument("--val-percent", type=int, default=data_mod.VAL_PERCENT)
    g.add_argument("--val-text", default=None,
                   help="held-out text file; then all of --text is training text")
    g = ap.add_argument_group("model")
    g.add_argument("--init-from", default=None, help="start from this model directory")
    g.add_argument("--arch", default="mamba", choices=["mamba", "mamba2"],
                   help="mamba (Mamba-1, model.py) or mamba2 (mamba2.py)")
    g.add_argument("--head-dim", type=int, default=64, help="mamba2: channels per head")
    g.add_argument("--n-groups", type=int, default=1, help="mamba2: B/C groups")
    g.add_argument("--ssd-chunk", type=int, default=64,
                   help="mamba2: tokens per chunk of the chunked SSD form in training")
    g.add_argument("--d-model", type=int, default=256)
    g.add_argument("--n-layer", type=int, default=8)
    g.add_argument("--d-state", type=int, default=16)
    g.add_argument("--expand", type=int, default=2)
    g.add_argument("--d-conv", type=int, default=4)
    g.add_argument("--dt-rank", default="auto")
    g.add_argument("--use-bias", action="store_true", help="bias in in_proj / out_proj")
    g.add_argument("--no-conv-bias", action="store_true")
    g.add_argument("--untied", action="store_true", help="separate lm_head")
    g.add_argument("--pad-vocab-multiple", type=int, default=8)
    g.add_argument("--dropout", type=float, default=0.0,
                   help="dropout on the embeddings and each mixer output (training only)")
    g.add_argument("--scan", default="parallel", choices=["parallel", "sequential"])
    g = ap.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--seq-len", type=int, default=256)
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--min-lr-ratio", type=float, default=0.1)
    g.add_argument("--warmup-steps", type=int, default=100)
    g.add_argument("--max-steps", type=int, default=5000)
    g.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds of training (0 = no limit); the schedule fits inside it")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--beta1", type=float, default=0.9)
    g.add_argument("--beta2", type=float, default=0.95)
    g.add_argument("--grad-clip", type=float, default=1.0)
    g = ap.add_argument_group("run")
    g.add_argument("--eval-interval", type=int, default=100)
    g.add_argument("--eval-ctx", type=int, default=256)
    g.add_argument("--eval-max-windows", type=int, default=0, help="0 = whole held-out split")
    g.add_argument("--log-interval", type=int, default=10)
    g.add_argument("--seed", type=int, default=1337)
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    g.add_argument("--compile", action="store_true", help="torch.compile (torch 2.x)")
    g.add_argument("--save-dtype", default="float32", choices=["float32", "bfloat16"])
    g.add_argument("--resume", action="store_true")
    g.add_argument("--quiet", action="store_true", help="do not echo log lines to stdout")
    return ap


def param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim >= 2 and not name.endswith("A_log"):
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_at(a, step, progress):
    peak = a.lr
    floor = a.lr * a.min_lr_ratio
    warm = min(1.0, (step + 1) / a.warmup_steps) if a.warmup_steps > 0 else 1.0
    p = min(1.0, max(0.0, progress))
    return warm * (floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * p)))


class Logger:
    def __init__(self, path, quiet=False):
        self.path, self.quiet = path, quiet

    def __call__(self, rec):
        line = json.dumps(rec, sort_keys=False)
        if not self.quiet:
            print(line, flush=True)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")


def _torch_load(path, device):
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except TypeError:      # torch < 1.13 has no weights_only
        return torch.load(path, map_location=device)


def _atomic_torch_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def make_config(a, vocab):
    mult = max(1, a.pad_vocab_multiple)
    v = ((vocab + mult - 1) // mult) * mult
    if a.arch == "mamba2":
        return Mamba2Config(vocab_size=v, hidden_size=a.d_model, state_size=a.d_state,
                            num_hidden_layers=a.n_layer, expand=a.expand, conv_kernel=a.d_conv,
                            n_groups=a.n_groups, head_dim=a.head_dim,
                            num_heads=a.expand * a.d_model // a.head_dim, use_bias=a.use_bias,
                            use_conv_bias=not a.no_conv_bias,
                            tie_word_embeddings=not a.untied).check()
    rank = a.dt_rank if a.dt_rank == "auto" else int(a.dt_rank)
    return MambaConfig(vocab_size=v, hidden_size=a.d_model, state_size=a.d_state,
                       num_hidden_layers=a.n_layer, expand=a.expand, conv_kernel=a.d_conv,
                       time_step_rank=rank, use_bias=a.use_bias,
                       use_conv_bias=not a.no_conv_bias, tie_word_embeddings=not a.untied)


def train(a):
    t_setup = time.time()
    dev = pick_device(a.device)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    work = a.work_dir or os.path.join(a.out, "work")
    ckpt = os.path.join(work, "checkpoint")
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    log = Logger(os.path.join(a.out, "train_log.jsonl"), quiet=a.quiet)
    if not a.resume and os.path.exists(log.path):
        os.remove(log.path)
    use_amp = bool(a.bf16 and dev.type == "cuda")
    if a.bf16 and not use_amp:
        print("note: --bf16 ignored (not on CUDA)", flush=True)

    tok = Tokenizer.from_file(a.tokenizer)
    train_ids, val_ids, info = data_mod.load_splits(a.text, a.tokenizer,
                                                    cache_dir=os.path.join(work, "data"),
                                                    val_percent=a.val_percent,
                                                    val_path=a.val_text)
    print(f"data: {info['n_train_tokens']} train tokens, {info['n_val_tokens']} held-out tokens "
          f"({info['n_chars']} chars, tokenized in {time.time() - t_setup:.1f} s)", flush=True)
    if int(train_ids.max()) >= tok.vocab_size:
        raise SystemExit("token id outside the tokenizer vocabulary")

    state = {"step": 0, "best_val": None, "elapsed": 0.0, "tokens": 0}
    resumed = a.resume and os.path.exists(os.path.join(ckpt, "trainer_state.json"))
    if resumed:
        model = load_model(ckpt, device=dev, dropout=a.dropout)
        with open(os.path.join(ckpt, "trainer_state.json"), "r", encoding="utf-8") as f:
            state.update(json.load(f))
    elif a.init_from:
        model = load_model(a.init_from, device=dev, dropout=a.dropout)
    else:
        cfg = make_config(a, tok.vocab_size)
        cls = Mamba2LM if a.arch == "mamba2" else MambaLM
        model = cls(cfg, dropout=a.dropout).reset_parameters(seed=a.seed).to(dev)
    if isinstance(model, Mamba2LM):
        model.set_scan(a.scan, chunk=a.ssd_chunk)
        if dev.type == "cuda":
            allow_tf32()                   # the float32 SSD matmuls
    else:
        model.set_scan(a.scan)
    cfg = model.config
    if cfg.vocab_size < tok.vocab_size:
        raise SystemExit(f"model vocab {cfg.vocab_size} < tokenizer vocab {tok.vocab_size}")

    opt = torch.optim.AdamW(param_groups(model, a.weight_decay), lr=a.lr,
                            betas=(a.beta1, a.beta2), eps=1e-8)
    sampler = data_mod.BatchSampler(train_ids, a.batch_size, a.seq_len, seed=a.seed, device=dev)
    if resumed:
        blob = _torch_load(os.path.join(ckpt, "optimizer.pt"), dev)
        opt.load_state_dict(blob["optimizer"])
        sampler.load_state_dict(blob["sampler"])
        torch.set_rng_state(blob["torch_rng"].cpu())
        print(f"resumed from {ckpt} at step {state['step']}", flush=True)

    fwd = model
    if a.compile and hasattr(torch, "compile"):
        try:
            fwd = torch.compile(model)
        except Exception as e:  # pragma: no cover - GPU-only path
            print(f"note: torch.compile failed ({e}); running eagerly", flush=True)
            fwd = model

    log({"type": "config", "resumed": bool(resumed), "args": vars(a),
         "model": config_asdict(cfg), "n_params": model.num_parameters(), "data": info,
         "device": str(dev), "torch": torch.__version__, "autocast_bf16": use_amp})
    print(f"model: {model.num_parameters() / 1e6:.2f} M parameters, d_model {cfg.hidden_size}, "
          f"{cfg.num_hidden_layers} layers, vocab {cfg.vocab_size}; device {dev}", flush=True)

    stop = {"flag": False}

    def on_signal(signum, _frame):
        print(f"signal {signum}: stopping after this step", flush=True)
        stop["flag"] = True
        signal.signal(signum, signal.SIG_DFL)   # a second signal kills

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def progress(elapsed):
        p = state["step"] / a.max_steps if a.max_steps > 0 else 0.0
        if a.time_budget > 0:
            p = max(p, elapsed / a.time_budget)
        return p

    def do_eval(elapsed):
        rec = {"type": "eval", "step": state["step"], "elapsed_s": round(elapsed, 2)}
        if len(val_ids) >= 2:
            t0 = time.time()
            total, count = nll_windows(model, val_ids, a.eval_ctx, batch_size=a.batch_size,
                                       device=dev, max_windows=a.eval_max_windows)
            vl = total / count
            rec.update({"val_loss": vl, "val_ppl": math.exp(vl), "n_scored": count,
                        "eval_s": round(time.time() - t0, 2)})
            improved = state["best_val"] is None or vl < state["best_val"]
        else:
            improved = True
        rec["best"] = improved
        if dev.type == "cuda":
            rec["max_mem_gb"] = round(torch.cuda.max_memory_allocated(dev) / 1e9, 2)
        if improved:
            if "val_loss" in rec:
                state["best_val"] = rec["val_loss"]
                state["best_step"] = state["step"]
            save_model(model, a.out, dtype=a.save_dtype, tokenizer_path=a.tokenizer)
        # checkpoint (model float32 + optimizer + trainer state); trainer_state.json last
        os.makedirs(ckpt, exist_ok=True)
        save_model(model, ckpt, dtype="float32", tokenizer_path=a.tokenizer)
        _atomic_torch_save({"optimizer": opt.state_dict(), "sampler": sampler.state_dict(),
                            "torch_rng": torch.get_rng_state()},
                           os.path.join(ckpt, "optimizer.pt"))
        st = dict(state)
        st["elapsed"] = elapsed
        _write_json(os.path.join(ckpt, "trainer_state.json"), st)
        log(rec)

    prior = state["elapsed"]
    t_start = time.time()
    t_log = t_start
    tokens_since = 0
    last_eval_step = -1
    V = cfg.vocab_size
    model.train()
    try:
        while True:
            elapsed = prior + (time.time() - t_start)
            p = progress(elapsed)
            if stop["flag"] or p >= 1.0 or (a.max_steps > 0 and state["step"] >= a.max_steps):
                break
            lr = lr_at(a, state["step"], p)
            for grp in opt.param_groups:
                grp["lr"] = lr
            x, y = sampler.next()
            if use_amp:
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    logits = fwd(x)
            else:
                logits = fwd(x)
            loss = F.cross_entropy(logits.float().reshape(-1, V), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip) \
                if a.grad_clip > 0 else torch.tensor(0.0)
            opt.step()
            state["step"] += 1
            state["tokens"] += x.numel()
            tokens_since += x.numel()
            if state["step"] % a.log_interval == 0 or state["step"] == 1:
                lv = float(loss.detach())          # synchronises the device
                now = time.time()
                if not math.isfinite(lv):
                    log({"type": "error", "step": state["step"], "loss": lv})
                    raise SystemExit("loss is not finite; stopping")
                log({"type": "train", "step": state["step"], "loss": round(lv, 5),
                     "lr": lr, "grad_norm": round(float(gn), 4),
                     "tokens_per_s": round(tokens_since / max(now - t_log, 1e-9), 1),
                     "elapsed_s": round(prior + now - t_start, 2), "progress": round(p, 4)})
                t_log, tokens_since = now, 0
            if state["step"] % a.eval_interval == 0:
                do_eval(prior + time.time() - t_start)
                last_eval_step = state["step"]
                t_log, tokens_since = time.time(), 0
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
    elapsed = prior + time.time() - t_start
    if last_eval_step != state["step"]:
        do_eval(elapsed)
    done = {"type": "done", "step": state["step"], "elapsed_s": round(elapsed, 2),
            "best_val_loss": state["best_val"], "best_step": state.get("best_step"),
            "stopped_by_signal": stop["flag"], "tokens": state["tokens"]}
    if state["best_val"] is not None:
        done["best_val_ppl"] = math.exp(state["best_val"])
    log(done)
    return done


def main(argv=None):
    a = build_parser().parse_args(argv)
    train(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
