"""State masks per 16-channel block: the unit of work the engine's masked scan skips.

    python -m yunmin_train.block_masks magnitude --model DIR (--text FILE | --train-text FILE) \\
        --out-dir DIR [--levels 0.3,0.5,0.7] [--tokens 2048]
    python -m yunmin_train.block_masks learn --model DIR --text FILE --out PROFILE \\
        --state-sparsity 0.5 [--steps 200] [--max-seconds S] [--batch-size 16] [--seq-len 256]
    python -m yunmin_train.block_masks lanes PROFILE...
    python -m yunmin_train.block_masks summarize NAME-perf.jsonl... [--bench NAME-bench.jsonl] [--root DIR]

The engine's masked scan (engine/sparse.c, engine/kernels.c) cuts a layer's served channels
(the kept ones, in the profile's scan order) into blocks of 16 consecutive ones. For each block
it computes one 16-lane vector per state entry n that is live in at least one of the block's
channels, and skips the entry for the whole block otherwise. Lanes computed = sum over blocks
of (channels in the block) x (entries live in any of them). A mask that keeps or drops each
(block, n) pair as a whole computes exactly its live entries (block fill 1); a scattered mask
at 50 % computes nearly all lanes, half of them dead.

Blocks here are formed the same way, over every channel (all kept: these are state masks) in
the order of --order-from's scan_order, or identity. The profile written keeps that order, so
the served blocks are the blocks the masks were chosen for.

magnitude  The calibration statistic of `yunmin calibrate` and of masks.py's magnitude
           baseline: mean |s[d, n]| over the first --tokens tokens of the training text run as
           one sequence from a zero state. Score of (block b, entry n) = the mean of that
           statistic over the block's channels (the L1 size of what dropping the pair removes
           from the state, per channel). Per layer, round(p * pairs) lowest-scoring pairs are
           dropped (ties: lower index first). The same run also writes the scattered magnitude
           baseline (masks.py / calibrate: the lowest entries per layer), so the two differ only
           in structure. Files: block-magnitude-P.sparsity.safetensors and
           scatter-magnitude-P.sparsity.safetensors, P in percent.
learn      Gumbel-Sigmoid logits per (layer, block, n), the method of masks.py's learned state
           masks (constraint mode: one threshold for the whole model at the target quantile,
           ramped over the first --ramp of the run; straight-through hard masks; tau annealed
           from --tau-start to --tau-end; loss KL(dense || masked) + (1 - cos) of the final
           hidden states; the model frozen), except that one logit and one noise sample serve
           the 16 channels of a block. --max-seconds stops early; the schedule then still
           follows --steps (the log says where it stopped), so set --steps to what fits.
lanes      For each profile: live entries, lanes the engine's masked scan computes (its plan's
           count), block fill = live / lanes, lane fraction = lanes / (layers x d_inner x d_state).
summarize  A markdown table from the raw outputs of tools/train/results/blocks/perf_scan.py
           (perplexity, scan CPU time per token in prefill and decode; ratios to the all-kept
           profile, i.e. the masked kernel with every lane live, and to the dense model) and
           run_engine.sh (the median over bench processes of ratios measured inside one
           process: scan alone, decode batch 1 and 16, sparse / dense).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from . import data as data_mod
from . import masks as M
from .evaluate import pick_device
from .model import load_model
from .tokenizer import Tokenizer

BLOCK = 16          # YM_SCAN_BLOCK in engine/model.h


def block_index(order, keep, width=BLOCK):
    """The served blocks of one layer: blk [Di] = block of each original channel (-1 if dropped)
    and the number of blocks. Kept channels are served in `order` (a permutation), then cut
    into blocks of `width` consecutive served positions, as engine/sparse.c does."""
    order = np.asarray(order)
    keep = np.asarray(keep, dtype=bool)
    blk = np.full(order.size, -1, dtype=np.int64)
    p = 0
    for d in order:
        if keep[d]:
            blk[d] = p // width
            p += 1
    return blk, (p + width - 1) // width


def lanes(ch, st, order, width=BLOCK):
    """(live entries, lanes computed) of hard masks ch [L, Di], st [L, Di, N] served in order
    [L, Di]: the count of engine/sparse.c's build_plan."""
    ch = np.asarray(ch, dtype=bool)
    st = np.asarray(st, dtype=bool)
    live = lanes_n = 0
    for l in range(ch.shape[0]):
        blk, nb = block_index(order[l], ch[l], width)
        for b in range(nb):
            sel = blk == b
            s = st[l][sel]                               # [w, N]
            live += int(s.sum())
            lanes_n += int(sel.sum()) * int(s.any(axis=0).sum())
    return live, lanes_n


def summarize(perf_paths, bench_path=None, root="."):
    """Markdown table (module docstring, summarize) from perf_scan.py's (one or more files) and
    run_engine.sh's JSON lines. Profile paths are read relative to root (for the lane counts)."""
    med = lambda xs: float(np.median(xs)) if xs else float("nan")      # noqa: E731
    cell = lambda x, f: "" if x != x else f.format(x)                  # noqa: E731
    perf = {}
    for line in (ln for p in perf_paths for ln in open(p, encoding="utf-8")):
        r = json.loads(line)
        perf.setdefault(r["profile"], {}).setdefault(r["workload"], []).append(r)
    bench = {}
    if bench_path:
        for line in open(bench_path, encoding="utf-8"):
            r = json.loads(line)
            bench.setdefault(r["profile"], []).append(r["bench"])

    def scan(prof, w):
        return med([r["scan_cpu_us_per_token"] for r in perf.get(prof, {}).get(w, [])])



    allk = next((p for p in perf if "all-kept" in p), None)
    rows = ["| profile | live | lanes | block fill | ppl | prefill scan CPU us/token | "
            "/ all-kept | / dense | decode scan CPU us/token | / all-kept | decode CPU us/token, "
            "whole process | / dense | bench: scan alone / dense | bench: decode b1 / dense | "
            "bench: decode b16 / dense |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for prof, w in perf.items():
        if not w:
            continue
        name = "dense" if prof == "none" else \
            "/".join(prof.split("/")[-2:]).replace(".sparsity.safetensors", "")
        if prof == "none":
            live = ln = fill = "1"
        else:
            ch, st, order, _ = M.load_profile(os.path.join(root, prof))
            rep = lane_report(ch > 0, (st > 0) & (ch > 0)[:, :, None], order)
            live, ln, fill = (f"{rep['live_fraction']:.3f}", f"{rep['lane_fraction']:.3f}",
                              f"{rep['block_fill']:.3f}")
        ppl = w["perplexity"][0]["ppl"] if "perplexity" in w else float("nan")
        pf, dc = scan(prof, "perplexity"), scan(prof, "decode")
        tot = med([r["cpu_us_per_token"] for r in w.get("decode", [])])
        tot_d = med([r["cpu_us_per_token"] for r in perf.get("none", {}).get("decode", [])])
        bs = bench.get(prof, [])
        b_scan = med([b["scan_us_per_token"] / b["dense"]["scan_us_per_token"] for b in bs])
        b1 = med([b["decode_speedup"]["1"] for b in bs])
        b16 = med([b["decode_speedup"]["16"] for b in bs])
        rows.append(f"| {name} | {live} | {ln} | {fill} | {cell(ppl, '{:.2f}')} "
                    f"| {cell(pf, '{:.1f}')} "
                    f"| {cell(pf / scan(allk, 'perplexity') if allk else float('nan'), '{:.2f}')} "
                    f"| {cell(pf / scan('none', 'perplexity'), '{:.2f}')} | {dc:.1f} "
                    f"| {cell(dc / scan(allk, 'decode') if allk else float('nan'), '{:.2f}')} "
                    f"| {cell(tot, '{:.0f}')} | {cell(tot / tot_d, '{:.3f}')} "
                    f"| {cell(b_scan, '{:.2f}')} | {cell(b1, '{:.2f}x')} | {cell(b16, '{:.2f}x')} |")
    return "\n".join(rows)


def lane_report(ch, st, order, width=BLOCK):
    live, ln = lanes(ch, st, order, width)
    total = st.shape[0] * st.shape[1] * st.shape[2]
    return {"live": live, "lanes": ln, "total": total, "live_fraction": live / total,
            "lane_fraction": ln / total, "block_fill": live / ln if ln else 1.0}


def block_scores(stat, blk, nb):
    """stat [Di, N] per-entry scores -> [nb, N]: the mean over each block's channels."""
    out = np.zeros((nb, stat.shape[1]), dtype=np.float64)
    for b in range(nb):
        out[b] = stat[blk == b].mean(axis=0)
    return out


def expand(block_mask, blk):
    """[nb, N] per-block values -> [Di, N] per channel (rows of dropped channels: block 0's,
    never served)."""
    return np.asarray(block_mask)[np.maximum(blk, 0)]


def magnitude_block_init(abs_s, order, scale=2.0, width=BLOCK):
    """Starting block logits [L, nb, N] from the magnitude block scores: per layer, scale * the
    z-score of the log score (masks.magnitude_init's rule for entries, applied to blocks)."""
    L, Di, N = abs_s.shape
    out = []
    for l in range(L):
        blk, nb = block_index(order[l], np.ones(Di, dtype=bool), width)
        x = np.log(block_scores(abs_s[l], blk, nb) + 1e-30)
        out.append(scale * (x - x.mean()) / (x.std() + 1e-12))
    return np.stack(out)


def magnitude_block_masks(abs_s, order, sparsity, width=BLOCK):
    """Hard state masks [L, Di, N] dropping round(sparsity * pairs) (block, n) pairs per layer,
    the lowest mean |s| over the block's channels (all channels kept)."""
    L, Di, N = abs_s.shape
    st = np.zeros((L, Di, N), dtype=bool)
    for l in range(L):
        blk, nb = block_index(order[l], np.ones(Di, dtype=bool), width)
        sc = block_scores(abs_s[l], blk, nb).reshape(-1)
        keep = M.top_keep(sc, sc.size - M.round_half_up(sparsity * sc.size)).reshape(nb, N)
        st[l] = expand(keep, blk)
    return st


# ---------------------------------------------------------------------------------------------
# learned per block

def learn_block_masks(model, train_ids, order, state_sparsity, steps=200, batch_size=16,
                      seq_len=256, lr=0.05, tau_start=1.0, tau_end=0.1, ramp=0.5, w_kl=1.0,
                      w_cos=1.0, seed=1, max_seconds=None, log=None, log_every=10,
                      width=BLOCK, init_state=None):
    """Block logits [L, nb, N] trained by distillation (module docstring); init_state [L, nb, N]
    starting logits or None (constant). Returns (MaskLogits over blocks, per-layer blk arrays,
    history)."""
    dev = model.backbone.norm_f.weight.device
    cfg = model.config
    L, Di, N = cfg.num_hidden_layers, cfg.d_inner, cfg.state_size
    torch.manual_seed(seed)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    blks = [block_index(order[l], np.ones(Di, dtype=bool), width) for l in range(L)]
    nb = blks[0][1]
    # MaskLogits with "channels" = blocks: the state logits [L, nb, N] are what is learned.
    logits = M.MaskLogits(L, nb, N, 0.0, train_channels=False, train_states=True).to(dev)
    with torch.no_grad():
        if init_state is not None:
            logits.state.copy_(torch.as_tensor(np.asarray(init_state), dtype=torch.float32))
        gen = torch.Generator().manual_seed(seed)
        logits.state.add_(1e-3 * torch.randn(logits.state.shape, generator=gen).to(dev))
    gather = [torch.as_tensor(np.maximum(b, 0), device=dev) for b, _ in blks]
    ones = torch.ones(Di, device=dev)
    opt = torch.optim.Adam([logits.state], lr=lr)
    sampler = data_mod.BatchSampler(np.asarray(train_ids), batch_size, seq_len, seed=seed,
                                    device=dev)
    hist = []
    t0 = time.time()
    for step in range(steps):
        progress = step / max(1, steps)
        tau = tau_start * (tau_end / tau_start) ** progress
        tgt = M.ramp_target(state_sparsity, progress, ramp)
        x, _ = sampler.next()
        thr = logits.thresholds(0.0, tgt, "global")
        sampled = logits.sample(tau, True, *thr)
        masks = [(ones, sampled[l][1][gather[l]]) for l in range(L)]
        with torch.no_grad():
            t_logits, t_hidden = model(x, return_hidden=True)
        s_logits, s_hidden = model(x, masks=masks, return_hidden=True)
        kl, cosl = M.distill_losses(t_logits, t_hidden[-1], s_logits, s_hidden[-1])
        loss = w_kl * kl + w_cos * cosl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        elapsed = time.time() - t0
        last = step == steps - 1 or (max_seconds is not None and elapsed >= max_seconds)
        if log is not None and (step % log_every == 0 or last):
            rec = {"step": step, "tau": round(tau, 4), "kl": round(float(kl), 5),
                   "cos_loss": round(float(cosl), 5), "target_state_sparsity": round(tgt, 4),
                   "elapsed_s": round(elapsed, 2)}
            hist.append(rec)
            log(rec)
        if last:
            break
    return logits, [b for b, _ in blks], hist


def export_block(logits, blks, state_sparsity):
    """Profile logits (channel [L, Di] all +1, state [L, Di, N]) whose hard masks drop exactly
    round(state_sparsity * all pairs) (block, n) pairs over the whole model."""
    _, s_blk = M.export_learned(logits, 0.0, state_sparsity, "global")
    st = np.stack([s_blk[l][np.maximum(b, 0)] for l, b in enumerate(blks)])
    return np.ones(st.shape[:2], dtype=np.float32), st.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# CLI

def _order(a, L, Di):
    if a.order_from:
        return M.load_profile(a.order_from)[2]
    return np.tile(np.arange(Di, dtype=np.int32), (L, 1))


def _train_ids(a, model_dir):
    tok = a.tokenizer or os.path.join(model_dir, "tokenizer.json")
    if getattr(a, "train_text", None):
        t = Tokenizer.from_file(tok)
        with open(a.train_text, encoding="utf-8") as f:
            return np.asarray(t.encode(f.read()), dtype=np.int64)
    return data_mod.load_splits(a.text, tok, cache_dir=a.cache_dir)[0]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m yunmin_train.block_masks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("magnitude", "learn"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True)
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--text", help="text whose training split (first 90 %%) calibrates")
        src.add_argument("--train-text", help="training text, used whole")
        p.add_argument("--tokenizer", default=None)
        p.add_argument("--cache-dir", default=None)
        p.add_argument("--order-from", default=None, help="blocks in this profile's scan order")
        p.add_argument("--device", default="cpu")
        p.add_argument("--seed", type=int, default=1)
    p = sub.choices["magnitude"]
    p.add_argument("--out-dir", required=True)
    p.add_argument("--levels", default="0.3,0.5,0.7")
    p.add_argument("--tokens", type=int, default=2048)
    p = sub.choices["learn"]
    p.add_argument("--out", required=True)
    p.add_argument("--state-sparsity", type=float, required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--tau-start", type=float, default=1.0)
    p.add_argument("--tau-end", type=float, default=0.1)
    p.add_argument("--ramp", type=float, default=0.5)
    p.add_argument("--max-seconds", type=float, default=None)
    p.add_argument("--init-from-magnitude", action="store_true",
                   help="start from the magnitude block scores (magnitude_block_init)")
    p.add_argument("--tokens", type=int, default=2048, help="calibration tokens (magnitude)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--log", default=None)
    p = sub.add_parser("lanes")
    p.add_argument("profiles", nargs="+")
    p = sub.add_parser("summarize")
    p.add_argument("perf", nargs="+", help="NAME-perf.jsonl files of perf_scan.py")
    p.add_argument("--bench", default=None, help="NAME-bench.jsonl of run_engine.sh")
    p.add_argument("--root", default=".", help="profile paths are relative to this")
    a = ap.parse_args(argv)

    if a.cmd == "summarize":
        print(summarize(a.perf, a.bench, a.root))
        return 0

    if a.cmd == "lanes":
        for path in a.profiles:
            ch, st, order, meta = M.load_profile(path)
            rep = lane_report(ch > 0, (st > 0) & (ch > 0)[:, :, None], order)
            print(json.dumps({"profile": path, "method": meta.get("method"), **rep}))
        return 0

    dev = pick_device(a.device)
    model = load_model(a.model, device=dev).eval()
    cfg = model.config
    L, Di = cfg.num_hidden_layers, cfg.d_inner
    order = _order(a, L, Di)
    ids = _train_ids(a, a.model)
    meta = {"state_sparsity_unit": f"(block of {BLOCK} served channels, state entry)",
            "order": "copied" if a.order_from else "identity", "seed": str(a.seed),
            "calibration_text": os.path.basename(a.text or a.train_text)}
    ones = np.ones((L, Di), dtype=bool)

    if a.cmd == "magnitude":
        os.makedirs(a.out_dir, exist_ok=True)
        t0 = time.time()
        _, abs_s = M.state_statistics(model, ids[:a.tokens])
        meta["calibration_tokens"] = str(min(a.tokens, len(ids)))
        print(json.dumps({"statistics_s": round(time.time() - t0, 1)}), flush=True)
        for level in [float(x) for x in a.levels.split(",")]:
            pc = int(round(level * 100))
            for kind in ("block", "scatter"):
                if kind == "block":
                    st = magnitude_block_masks(abs_s, order, level)
                else:
                    st = M.hard_from_scores(np.ones((L, Di)), abs_s, 0.0, level, "layer")[1]
                cl, sl = M.bool_to_logits(ones, st)
                path = os.path.join(a.out_dir, f"{kind}-magnitude-{pc}.sparsity.safetensors")
                M.save_profile(path, cl, sl, "magnitude", order,
                               {**meta, "state_sparsity": f"{level:g}", "structure": kind})
                print(json.dumps({"out": path, **lane_report(ones, st, order)}), flush=True)
        return 0

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    logf = open(a.log, "w", encoding="utf-8") if a.log else None

    def log(rec):
        line = json.dumps(rec)
        print(line, flush=True)
        if logf:
            logf.write(line + "\n")
            logf.flush()

    init = None
    if a.init_from_magnitude:
        init = magnitude_block_init(M.state_statistics(model, ids[:a.tokens])[1], order)
    logits, blks, hist = learn_block_masks(
        model, ids, order, a.state_sparsity, steps=a.steps, batch_size=a.batch_size,
        seq_len=a.seq_len, lr=a.lr, tau_start=a.tau_start, tau_end=a.tau_end, ramp=a.ramp,
        seed=a.seed, max_seconds=a.max_seconds, log=log, init_state=init)
    cl, sl = export_block(logits, blks, a.state_sparsity)
    done = hist[-1]["step"] + 1 if hist else 0
    M.save_profile(a.out, cl, sl, "gumbel-sigmoid", order,
                   {**meta, "state_sparsity": f"{a.state_sparsity:g}", "structure": "block",
                    "steps": f"{done} of {a.steps}", "batch": f"{a.batch_size}x{a.seq_len}",
                    "allocation": "global", "loss": "kl+cos", "target": "constraint",
                    "init": "magnitude" if a.init_from_magnitude else "constant"})
    log({"out": a.out, "steps_done": done,
         **lane_report(np.ones((L, Di), dtype=bool), sl > 0, order)})
    if logf:
        logf.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
