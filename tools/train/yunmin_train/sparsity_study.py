"""Information loss of sparsity masks: learned (Gumbel-Sigmoid) vs magnitude vs random.

    python -m yunmin_train.sparsity_study --model models/shakespeare-mamba \\
        --text data/tinyshakespeare.txt --out-dir OUT [--levels 0.3,0.5,0.7] \\
        [--axes channels,states] [--mask-steps 200] [--recovery-steps 40] [--bf16]

For every axis (channels: that fraction of channels dropped, all entries of the kept ones live;
states: that fraction of state entries dropped, all channels kept) and level, the profiles of
--methods (yunmin_train.masks: `learned` = Gumbel-Sigmoid masks learned by distillation from a
constant start, global allocation; `learned-mag` = the same started from the magnitude scores;
`magnitude` and `random` per layer, the definitions of `yunmin calibrate`) are measured on the
held-out split (the last 10 % of the text; windows of --ctx tokens from a zero state,
evaluate.py's protocol):
  cos_loss   mean over positions of 1 - cos(h_dense, h_masked), final hidden states (norm_f)
  kl         mean KL(p_dense || p_masked) per position
  ppl        perplexity of the masked model
and again after a short recovery fine-tune of the model's weights with the masks fixed
(--recovery-steps of next-token cross-entropy on the training split, the same for every
profile; the dense model gets the same fine-tune as a control). cos_loss after recovery is
measured against the original dense model.

Writes OUT/results.json (rows as they finish), OUT/results.md (tables), OUT/profiles/*.safetensors
and OUT/masks_study.png (matplotlib when importable, else a plain chart from yunmin_train.png).
"""

import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import data as data_mod
from . import masks as M
from .evaluate import pick_device
from .model import load_model

METHODS = ("learned", "learned-mag", "magnitude", "random")
SEED_COS = 0.21          # the seed's reported cosine loss of learned masks at 30-50 % sparsity


def recover(model, masks, train_ids, steps, batch_size=16, seq_len=256, lr=5e-4, seed=0,
            bf16=False):
    """Fine-tune all weights for `steps` with the masks fixed (cross-entropy, AdamW without
    weight decay, 10 % warmup then cosine to 0). Returns seconds spent."""
    dev = model.backbone.norm_f.weight.device
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    sampler = data_mod.BatchSampler(np.asarray(train_ids), batch_size, seq_len, seed=seed,
                                    device=dev)
    amp = bool(bf16 and dev.type == "cuda")
    warm = max(1, steps // 10)
    t0 = time.time()
    model.train()
    for step in range(1, steps + 1):
        f = step / warm if step <= warm else \
            0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
        for g in opt.param_groups:
            g["lr"] = lr * f
        x, y = sampler.next()
        with M.autocast_bf16(amp):
            logits = model(x, masks=masks)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.time() - t0


def axis_levels(axis, level):
    return (level, 0.0) if axis == "channels" else (0.0, level)


def write_tables(rows, dense, path):
    lines = ["# Sparsity masks: information loss on the held-out split", ""]
    lines.append(f"Dense model: perplexity {dense['ppl']:.2f}; after the same recovery "
                 f"fine-tune {dense.get('ppl_recovered', float('nan')):.2f}.")
    lines.append("")
    for axis in ("channels", "states"):
        sub = [r for r in rows if r["axis"] == axis]
        if not sub:
            continue
        lines += [f"## {axis} sparsity", "",
                  "| level | method | cos loss | KL | ppl | ppl after recovery | "
                  "cos loss after recovery |",
                  "|---|---|---|---|---|---|---|"]
        for r in sorted(sub, key=lambda r: (r["level"], METHODS.index(r["method"]))):
            rec = r.get("recovered") or {}
            lines.append(
                f"| {r['level']:.0%} | {r['method']} | {r['cos_loss']:.4f} | {r['kl']:.4f} | "
                f"{r['ppl']:.2f} | {rec.get('ppl', float('nan')):.2f} | "
                f"{rec.get('cos_loss', float('nan')):.4f} |")
        lines.append("")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def plot(rows, dense, path):
    """2 x 2 chart: cosine loss and perplexity (log scale) against sparsity, per axis."""
    axes_names = [a for a in ("channels", "states") if any(r["axis"] == a for r in rows)]
    colors = {"learned": "#1f77b4", "learned-mag": "#9467bd", "magnitude": "#ff7f0e",
              "random": "#2ca02c"}
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from . import png
        series = []
        for a in axes_names:
            for m in METHODS:
                pts = sorted((r["level"], r["cos_loss"]) for r in rows
                             if r["axis"] == a and r["method"] == m)
                series.append((colors[m], pts, a == "states"))
        png.line_chart(path, series)
        return "png"
    fig, ax = plt.subplots(2, len(axes_names), figsize=(5.2 * len(axes_names), 7.5),
                           squeeze=False)
    for j, a in enumerate(axes_names):
        for m in METHODS:
            sub = sorted((r for r in rows if r["axis"] == a and r["method"] == m),
                         key=lambda r: r["level"])
            if not sub:
                continue
            xs = [100 * r["level"] for r in sub]
            ax[0][j].plot(xs, [r["cos_loss"] for r in sub], "o-", color=colors[m], label=m)
            ax[1][j].plot(xs, [r["ppl"] for r in sub], "o-", color=colors[m], label=m)
            rec = [r["recovered"]["ppl"] for r in sub if r.get("recovered")]
            if len(rec) == len(sub):
                ax[1][j].plot(xs, rec, "s--", color=colors[m], alpha=0.7,
                              label=f"{m}, after recovery")
        ax[0][j].axhline(SEED_COS, color="gray", ls=":", label="seed's figure (0.21)")
        ax[0][j].set_title(f"{a} sparsity")
        ax[0][j].set_ylabel("cosine loss of final hidden states")
        ax[1][j].axhline(dense["ppl"], color="black", ls=":", label="dense")
        ax[1][j].set_yscale("log")
        ax[1][j].set_ylabel("held-out perplexity")
        for i in (0, 1):
            ax[i][j].set_xlabel("sparsity (%)")
            ax[i][j].grid(alpha=0.3)
            ax[i][j].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return "matplotlib"


def merge(paths, out_dir):
    parts = []
    for p in paths:
        with open(p, "r", encoding="utf-8") as f:
            parts.append(json.load(f))
    out = dict(next((p for p in parts if "ppl_recovered" in p["dense"]), parts[0]))
    out["rows"] = [r for part in parts for r in part["rows"]]
    out["merged_from"] = paths
    out["elapsed_s"] = max(part.get("elapsed_s", 0) for part in parts)
    os.makedirs(out_dir, exist_ok=True)
    write_tables(out["rows"], out["dense"], os.path.join(out_dir, "results.md"))
    out["plot"] = plot(out["rows"], out["dense"], os.path.join(out_dir, "masks_study.png"))
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m yunmin_train.sparsity_study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--text")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--merge", nargs="+", default=None, metavar="RESULTS_JSON",
                    help="only merge these results.json files (runs split by --axes) into "
                         "OUT-DIR/results.json, results.md and masks_study.png")
    ap.add_argument("--levels", default="0.3,0.5,0.7")
    ap.add_argument("--axes", default="channels,states")
    ap.add_argument("--methods", default="learned,magnitude,random",
                    help="of: " + ", ".join(METHODS))
    ap.add_argument("--no-dense-recovery", action="store_true",
                    help="skip the dense model's recovery control (run by another process)")
    ap.add_argument("--mask-steps", type=int, default=200)
    ap.add_argument("--mask-batch-size", type=int, default=16)
    ap.add_argument("--mask-lr", type=float, default=0.05)
    ap.add_argument("--recovery-steps", type=int, default=40)
    ap.add_argument("--recovery-lr", type=float, default=5e-4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=256, help="held-out window length")
    ap.add_argument("--max-windows", type=int, default=0, help="0 = whole held-out split")
    ap.add_argument("--tokens", type=int, default=2048, help="magnitude calibration tokens")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args(argv)

    if a.merge:
        return merge(a.merge, a.out_dir)
    if not a.model or not a.text:
        ap.error("--model and --text are required (unless --merge)")
    dev = pick_device(a.device)
    os.makedirs(os.path.join(a.out_dir, "profiles"), exist_ok=True)
    t_start = time.time()
    base = load_model(a.model, device=dev).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    cfg = base.config
    tr, va, info = data_mod.load_splits(a.text, os.path.join(a.model, "tokenizer.json"),
                                        cache_dir=a.cache_dir)
    if a.max_windows:
        va = va[:a.max_windows * a.ctx]
    levels = [float(x) for x in a.levels.split(",")]
    axes = a.axes.split(",")
    methods = a.methods.split(",")
    res_path = os.path.join(a.out_dir, "results.json")
    out = {"config": vars(a), "data": info, "device": str(dev), "torch": torch.__version__,
           "rows": []}

    def save():
        out["elapsed_s"] = round(time.time() - t_start, 1)
        with open(res_path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
        os.replace(res_path + ".tmp", res_path)

    dense = M.information_loss(base, va, None, ctx=a.ctx)
    out["dense"] = dense
    print(json.dumps({"dense": dense}), flush=True)
    energy, abs_s = M.state_statistics(base, tr[:a.tokens])
    rng = np.random.default_rng(a.seed)
    rand_ch, rand_st = rng.random((cfg.num_hidden_layers, cfg.d_inner)), \
        rng.random((cfg.num_hidden_layers, cfg.d_inner, cfg.state_size))

    profiles = []
    # Middle level first, so the profile the hybrid PEFT plan reads exists early.
    order = sorted(levels, key=lambda x: (abs(x - 0.5), x))
    for level in order:
        for axis in axes:
            ch_sp, st_sp = axis_levels(axis, level)
            for method in methods:
                t0 = time.time()
                hist = None
                if method == "magnitude":
                    ch, st = M.hard_from_scores(energy, abs_s, ch_sp, st_sp, "layer")
                    cl, sl = M.bool_to_logits(ch, st)
                elif method == "random":
                    ch, st = M.hard_from_scores(rand_ch, rand_st, ch_sp, st_sp, "layer")
                    cl, sl = M.bool_to_logits(ch, st)
                else:
                    init = M.magnitude_init(energy, abs_s) if method == "learned-mag" else \
                        (None, None)
                    logits, hist = M.learn_masks(base, tr, ch_sp, st_sp, steps=a.mask_steps,
                                                 batch_size=a.mask_batch_size,
                                                 seq_len=a.seq_len, lr=a.mask_lr, seed=a.seed,
                                                 bf16=a.bf16, log=None, init_channel=init[0],
                                                 init_state=init[1])
                    cl, sl = M.export_learned(logits, ch_sp, st_sp, "global")
                name = f"{method}-{axis}-{int(round(level * 100))}"
                ppath = os.path.join(a.out_dir, "profiles", name + ".safetensors")
                M.save_profile(ppath, cl, sl,
                               "gumbel-sigmoid" if method.startswith("learned") else method,
                               None,
                               {"channel_sparsity": f"{ch_sp:g}", "state_sparsity": f"{st_sp:g}",
                                "allocation": "global" if method.startswith("learned")
                                else "layer",
                                "init": "magnitude" if method == "learned-mag" else "constant",
                                "calibration_text": os.path.basename(a.text)})
                mk = M.masks_from_bool(cl > 0, sl > 0, device=dev)
                row = {"axis": axis, "level": level, "method": method, "profile": name,
                       "build_s": round(time.time() - t0, 2)}
                st = M.profile_stats(cl > 0, sl > 0)
                row.update({k: st[k] for k in ("channel_sparsity", "state_sparsity",
                                               "live_fraction")})
                row["per_layer_channel_sparsity"] = [round(x["channel_sparsity"], 4)
                                                     for x in st["per_layer"]]
                row["per_layer_state_sparsity"] = [round(x["state_sparsity"], 4)
                                                   for x in st["per_layer"]]
                row.update(M.information_loss(base, va, mk, ctx=a.ctx))
                if hist:
                    row["learn_final"] = hist[-1] if hist else None
                out["rows"].append(row)
                profiles.append((row, mk))
                save()
                print(json.dumps({k: v for k, v in row.items() if not k.startswith("per_")}),
                      flush=True)

    if a.recovery_steps > 0 and not a.no_dense_recovery:
        m = copy.deepcopy(base)
        secs = recover(m, None, tr, a.recovery_steps, a.mask_batch_size, a.seq_len,
                       a.recovery_lr, a.seed, a.bf16)
        r = M.information_loss(m, va, None, ctx=a.ctx, teacher=base)
        out["dense"]["ppl_recovered"] = r["ppl"]
        out["dense"]["recovery_s"] = round(secs, 2)
        save()
    if a.recovery_steps > 0:
        for row, mk in profiles:
            m = copy.deepcopy(base)
            secs = recover(m, mk, tr, a.recovery_steps, a.mask_batch_size, a.seq_len,
                           a.recovery_lr, a.seed, a.bf16)
            r = M.information_loss(m, va, mk, ctx=a.ctx, teacher=base)
            row["recovered"] = {"ppl": r["ppl"], "cos_loss": r["cos_loss"], "kl": r["kl"],
                                "seconds": round(secs, 2)}
            save()
            print(json.dumps({"profile": row["profile"], "recovered": row["recovered"]}),
                  flush=True)
    write_tables(out["rows"], out["dense"], os.path.join(a.out_dir, "results.md"))
    out["plot"] = plot(out["rows"], out["dense"], os.path.join(a.out_dir, "masks_study.png"))
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
