"""Channel masks at scale: learned vs magnitude vs random, with allocation controls and seeds.

    python -m yunmin_train.scale_study --model MODEL --text train.txt --val-text val.txt \\
        --seed 1 --levels 0.5,0.7,0.3,0.85,0.9 --out OUT/seed1.json [--bf16]
    python -m yunmin_train.scale_study --merge OUT/seed*.json --out-dir RESULTS

One process per seed (several can share a GPU); each writes its rows to --out as they finish.
For every level p (fraction of the d_inner channels dropped; every state entry of a kept
channel stays live), with the model's weights frozen:
  learned          Gumbel-Sigmoid logits learned by distillation (yunmin_train.masks.learn_masks,
                   the sparsity as a constraint, one threshold over the whole model: the layers
                   keep different fractions), exported at exactly p
  learned-uniform  control 1: the same logits, exported with p dropped in every layer
  learned-layer    control 1b (--layer-trained-levels): logits learned with the per-layer
                   constraint from the start
  magnitude        yunmin calibrate's baseline: per layer, the channels of lowest mean state
                   energy over --tokens calibration tokens (a different slice of the training
                   text per seed), p dropped in every layer
  magnitude-alloc  control 2: magnitude's ranking inside each layer, with the learned profile's
                   per-layer counts
  random           per layer a seeded random choice, p dropped in every layer
Measured on the first --max-windows windows of --ctx tokens of the held-out file (from a zero
state, evaluate.py's protocol): cos_loss (mean 1 - cos of the final hidden states against the
dense model), kl (mean KL(dense || masked) per position), ppl; plus the multiply-add count per
token of the served model (`flops_per_token`: the engine drops a masked channel's rows of
in_proj, its conv, its columns of x_proj and out_proj, its dt_proj row and its scan lanes).

--merge averages the seeds (mean, sample sd, n) into OUT-DIR/scale_results.json and .md.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch

from . import data as data_mod
from . import masks as M
from .evaluate import pick_device
from .model import load_model


def flops_per_token(cfg, ch_kept, st_kept=None):
    """Multiply-adds x 2 per token of the served model: (mixers, whole model incl. lm_head).

    ch_kept: per layer the number of kept channels; st_kept: per layer the number of live state
    entries (default: all entries of the kept channels). Scan: 6 flops per live entry (dA = exp
    counted as 1, dA*h, dB*x, +, C*h, +); norms and the embedding lookup are left out."""
    D, N, R, K, V = cfg.hidden_size, cfg.state_size, cfg.dt_rank, cfg.conv_kernel, cfg.vocab_size
    mix = 0
    for l, c in enumerate(ch_kept):
        s = c * N if st_kept is None else st_kept[l]
        mix += 2 * D * 2 * c          # in_proj (x and z rows of the kept channels)
        mix += 2 * K * c              # depthwise conv
        mix += 2 * c * (R + 2 * N)    # x_proj
        mix += 2 * R * c              # dt_proj
        mix += 6 * s                  # selective scan
        mix += 4 * c                  # D skip and SiLU gate
        mix += 2 * c * D              # out_proj
    return mix, mix + 2 * D * V


def load_task(path, tokenizer_path):
    """def2word items (tools/train/corpus/make_tasks.py) as token ids: per item 4 (prefix ids,
    continuation ids) and the answer."""
    from .tokenizer import Tokenizer
    tok = Tokenizer.from_file(tokenizer_path)
    items = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
    out = []
    for it in items:
        cont = tok.encode(it["continuation"])
        out.append({"source": it["source"], "answer": it["answer"],
                    "seqs": [(tok.encode(c + "\n"), cont) for c in it["choices"]]})
    return out


@torch.no_grad()
def task_accuracy(model, task, masks=None, batch_items=64):
    """Accuracy (overall and per source) of argmax_c sum log P(continuation | choice c)."""
    dev = model.backbone.norm_f.weight.device
    right = {}
    for i in range(0, len(task), batch_items):
        chunk = task[i:i + batch_items]
        seqs = [p + c for it in chunk for p, c in it["seqs"]]
        T = max(len(x) for x in seqs)
        x = torch.zeros(len(seqs), T, dtype=torch.long)
        for j, q in enumerate(seqs):
            x[j, :len(q)] = torch.as_tensor(q)
        x = x.to(dev)
        lp = torch.log_softmax(model(x, masks=masks).float(), -1)
        tgt = lp[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1).double().cpu()
        k = 0
        for it in chunk:
            scores = []
            for p, c in it["seqs"]:
                scores.append(float(tgt[k, len(p) - 1:len(p) + len(c) - 1].sum()))
                k += 1
            ok = int(max(range(len(scores)), key=scores.__getitem__) == it["answer"])
            right.setdefault(it["source"], []).append(ok)
            right.setdefault("all", []).append(ok)
    return {k: sum(v) / len(v) for k, v in right.items()}


def counts_from(ch):
    return [int(x) for x in np.asarray(ch).sum(axis=1)]


def alloc_hard(scores, counts):
    """Per layer keep counts[l] highest scores."""
    return np.stack([M.top_keep(scores[l], counts[l]) for l in range(len(counts))])


def run(a):
    dev = pick_device(a.device)
    t_start = time.time()
    base = load_model(a.model, device=dev).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    cfg = base.config
    tok = a.tokenizer or os.path.join(a.model, "tokenizer.json")
    tr, va, info = data_mod.load_splits(a.text, tok, cache_dir=a.cache_dir, val_path=a.val_text)
    va = va[:a.max_windows * a.ctx]
    L, Di, N = cfg.num_hidden_layers, cfg.d_inner, cfg.state_size
    full_mix, full_all = flops_per_token(cfg, [Di] * L)
    out = {"config": vars(a), "data": info, "device": str(dev), "torch": torch.__version__,
           "n_params": sum(p.numel() for p in base.parameters()),
           "flops_dense": {"mixers": full_mix, "model": full_all}, "rows": []}

    def save():
        out["elapsed_s"] = round(time.time() - t_start, 1)
        with open(a.out + ".tmp", "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
        os.replace(a.out + ".tmp", a.out)

    t0 = time.time()
    out["dense"] = M.information_loss(base, va, None, ctx=a.ctx)
    out["dense"]["eval_s"] = round(time.time() - t0, 2)
    task = None
    if a.task:
        try:                      # the downstream task must never cost the mask study
            task = load_task(a.task, tok)
            t1 = time.time()
            out["dense"]["task"] = task_accuracy(base, task)
            out["dense"]["task_s"] = round(time.time() - t1, 2)
        except Exception as e:    # noqa: BLE001
            out["task_error"] = repr(e)
            task = None
    save()
    print(json.dumps({"seed": a.seed, "dense": out["dense"]}), flush=True)
    cal0 = (a.seed * 7919 * a.tokens) % max(1, tr.size - a.tokens)
    energy, abs_s = M.state_statistics(base, tr[cal0:cal0 + a.tokens])
    rng = np.random.default_rng(a.seed)
    rand_ch = rng.random((L, Di))
    ones_st = np.ones((L, Di, N))
    layer_levels = [float(x) for x in a.layer_trained_levels.split(",") if x]
    levels = [float(x) for x in a.levels.split(",")]
    steps = a.mask_steps
    if a.time_budget > 0:
        # size the runs: a short probe of the mask learning measures seconds per step here
        # (other processes sharing the GPU included), then every run gets the same steps so
        # that all of them fit the budget (evaluations counted at the dense eval's time x 1.5)
        t1 = time.time()
        M.learn_masks(base, tr, levels[0], 0.0, steps=a.probe_steps,
                      batch_size=a.mask_batch_size, seq_len=a.seq_len, lr=a.mask_lr,
                      seed=a.seed, bf16=a.bf16, log=None)
        s_step = (time.time() - t1) / a.probe_steps
        n_runs = len(levels) + sum(1 for x in levels if any(abs(x - y) < 1e-9
                                                            for y in layer_levels))
        n_evals = 5 * len(levels) + n_runs - len(levels)
        left = a.time_budget - (time.time() - t_start) - 1.5 * n_evals * out["dense"]["eval_s"] \
            - 1.5 * 3 * len(levels) * out["dense"].get("task_s", 0.0)
        steps = int(max(a.min_steps, min(a.mask_steps, left / (n_runs * s_step))))
        out["sizing"] = {"probe_steps": a.probe_steps, "s_per_step": round(s_step, 4),
                         "n_runs": n_runs, "n_evals": n_evals, "steps": steps}
        save()
        print(json.dumps({"seed": a.seed, "sizing": out["sizing"]}), flush=True)

    def measure(method, level, ch, extra=None):
        t1 = time.time()
        st = np.repeat(ch[:, :, None], N, axis=2)
        mk = M.masks_from_bool(ch, st, device=dev)
        row = {"seed": a.seed, "level": level, "method": method,
               "channel_sparsity": 1 - float(ch.mean()),
               "per_layer_kept": counts_from(ch)}
        mix, whole = flops_per_token(cfg, row["per_layer_kept"])
        row.update({"flops_mixers": mix, "flops_model": whole,
                    "flops_cut_mixers": 1 - mix / full_mix, "flops_cut_model": 1 - whole / full_all})
        row.update(M.information_loss(base, va, mk, ctx=a.ctx))
        if task and method in ("learned", "magnitude", "random"):
            try:
                row["task"] = task_accuracy(base, task, mk)
            except Exception as e:    # noqa: BLE001
                row["task_error"] = repr(e)
        row["eval_s"] = round(time.time() - t1, 2)
        if extra:
            row.update(extra)
        out["rows"].append(row)
        save()
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                          for k, v in row.items() if k != "per_layer_kept"}), flush=True)
        return row

    for level in levels:
        t1 = time.time()
        logits, hist = M.learn_masks(base, tr, level, 0.0, steps=steps,
                                     batch_size=a.mask_batch_size, seq_len=a.seq_len,
                                     lr=a.mask_lr, seed=a.seed, bf16=a.bf16, log=None)
        learn_s = round(time.time() - t1, 2)
        c = logits.channel.detach().double().cpu().numpy()
        ch_g, _ = M.hard_from_scores(c, ones_st, level, 0.0, "global")
        ch_u, _ = M.hard_from_scores(c, ones_st, level, 0.0, "layer")
        learned = measure("learned", level, ch_g,
                          {"learn_s": learn_s, "steps": steps,
                           "tokens_per_s": round(steps * a.mask_batch_size * a.seq_len
                                                 / learn_s)})
        measure("learned-uniform", level, ch_u)
        ch_m, _ = M.hard_from_scores(energy, ones_st, level, 0.0, "layer")
        measure("magnitude", level, ch_m)
        measure("magnitude-alloc", level, alloc_hard(energy, learned["per_layer_kept"]))
        ch_r, _ = M.hard_from_scores(rand_ch, ones_st, level, 0.0, "layer")
        measure("random", level, ch_r)
        if a.save_profiles:
            os.makedirs(a.save_profiles, exist_ok=True)
            cl, sl = M.export_learned(logits, level, 0.0, "global")
            M.save_profile(os.path.join(a.save_profiles,
                                        f"learned-channels-{int(round(level * 100))}-s{a.seed}"
                                        ".safetensors"), cl, sl, "gumbel-sigmoid", None,
                           {"channel_sparsity": f"{level:g}", "state_sparsity": "0",
                            "allocation": "global", "seed": str(a.seed)})
        if any(abs(level - x) < 1e-9 for x in layer_levels):
            t1 = time.time()
            lg, _ = M.learn_masks(base, tr, level, 0.0, steps=steps,
                                  batch_size=a.mask_batch_size, seq_len=a.seq_len, lr=a.mask_lr,
                                  seed=a.seed, bf16=a.bf16, log=None, allocation="layer")
            c2 = lg.channel.detach().double().cpu().numpy()
            ch_l, _ = M.hard_from_scores(c2, ones_st, level, 0.0, "layer")
            measure("learned-layer", level, ch_l, {"learn_s": round(time.time() - t1, 2),
                                                   "steps": steps})
    out["done"] = True
    save()
    return 0


METHODS = ("learned", "learned-uniform", "learned-layer", "magnitude", "magnitude-alloc",
           "random")


def summarize(vals):
    """Mean, sample sd and count of the values that are there (None and NaN left out); None when
    none is. The merges of scale_study, mamba2_study and peft_scale share it."""
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
    return {"mean": statistics.fmean(vals), "sd": sd, "n": len(vals)}


def fmt_summary(s, d=4):
    """A summarize() result as "mean ± sd" with d decimals ("mean" for one value, "-" for none)."""
    if s is None:
        return "-"
    return f"{s['mean']:.{d}f} ± {s['sd']:.{d}f}" if s["n"] > 1 else f"{s['mean']:.{d}f}"


def merge(paths, out_dir):
    parts = [json.load(open(p, encoding="utf-8")) for p in paths]
    rows = [r for p in parts for r in p["rows"]]
    groups = {}
    for r in rows:
        groups.setdefault((r["level"], r["method"]), []).append(r)
    table = []
    for (level, method), rs in sorted(groups.items(),
                                      key=lambda kv: (kv[0][0], METHODS.index(kv[0][1]))):
        e = {"level": level, "method": method, "seeds": sorted(r["seed"] for r in rs)}
        for k in ("cos_loss", "kl", "ppl", "flops_cut_mixers", "flops_cut_model"):
            e[k] = summarize([r[k] for r in rs])
        if any("task" in r for r in rs):
            e["task"] = summarize([r["task"]["all"] for r in rs if "task" in r])
        table.append(e)
    dense = parts[0]["dense"]
    res = {"from": [os.path.basename(p) for p in paths], "n_params": parts[0]["n_params"],
           "dense": dense, "flops_dense": parts[0]["flops_dense"], "device": parts[0]["device"],
           "config": parts[0]["config"], "table": table, "rows": rows}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "scale_results.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    fmt = fmt_summary
    lines = ["# Channel masks on the corpus model: mean ± sd over seeds", "",
             f"Dense: held-out perplexity {dense['ppl']:.3f} on {dense['n_scored']} scored tokens; "
             f"def2word accuracy {dense.get('task', {}).get('all', float('nan')):.3f}.",
             "", "| channels dropped | method | seeds | cos loss | KL | ppl | mixer FLOPs cut | "
             "model FLOPs cut | def2word acc |", "|---|---|---|---|---|---|---|---|---|"]
    for e in table:
        lines.append(f"| {e['level']:.0%} | {e['method']} | {len(e['seeds'])} | "
                     f"{fmt(e['cos_loss'])} | {fmt(e['kl'])} | {fmt(e['ppl'], 2)} | "
                     f"{e['flops_cut_mixers']['mean']:.1%} | {e['flops_cut_model']['mean']:.1%} | "
                     f"{fmt(e.get('task'), 3)} |")
    with open(os.path.join(out_dir, "scale_results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m yunmin_train.scale_study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--text", help="training text (the masks learn and calibrate on it)")
    ap.add_argument("--val-text", help="held-out text")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--out", help="this seed's results JSON")
    ap.add_argument("--merge", nargs="+", default=None, metavar="SEED_JSON")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--levels", default="0.5,0.7,0.3,0.85,0.9")
    ap.add_argument("--layer-trained-levels", default="0.5")
    ap.add_argument("--mask-steps", type=int, default=150)
    ap.add_argument("--mask-batch-size", type=int, default=8)
    ap.add_argument("--time-budget", type=float, default=0,
                    help="seconds for this process: a probe sizes the steps (at most "
                         "--mask-steps, at least --min-steps) to fit; 0 = --mask-steps")
    ap.add_argument("--probe-steps", type=int, default=10)
    ap.add_argument("--min-steps", type=int, default=40)
    ap.add_argument("--mask-lr", type=float, default=0.05)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--max-windows", type=int, default=96)
    ap.add_argument("--tokens", type=int, default=2048, help="magnitude calibration tokens")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--task", default=None, help="def2word.jsonl: the downstream task")
    ap.add_argument("--save-profiles", default=None, help="directory for the learned profiles")
    a = ap.parse_args(argv)
    if a.merge:
        return merge(a.merge, a.out_dir or ".")
    if not (a.model and a.text and a.val_text and a.out):
        ap.error("--model, --text, --val-text and --out are required (unless --merge)")
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
