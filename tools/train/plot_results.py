"""Plots for docs/RESULTS.md, read only from the committed raw results.

    /usr/bin/python3 tools/train/plot_results.py            # from the repository root

writes
  docs/img/channel_masks_corpus.png  the channel-mask study on the corpus model: cosine loss,
      held-out perplexity and the definition -> headword task against the fraction of channels
      dropped, for learned masks, magnitude, random and the allocation controls; every point
      the mean over the seeds (tools/train/results/scale/scale_seed{1..5}.json) with +- 1
      sample standard deviation as its error bar; the 200-step check (steps200_seed{1,2}.json)
      as open markers;
  docs/img/speed_quality_corpus.png  the engine's speed-ups (prefill, batch-1 and batch-16
      decode; one `yunmin bench` run per profile, engine_bench_magnitude-alloc-*.txt) at the
      learned allocation against the counted weight-byte and multiply-add ratios, and held-out
      perplexity (mean +- sd over the 5 seeds) against the batch-1 decode speed-up;
  docs/img/peft_pareto_corpus.png  PEFT placement on two trainings of the corpus model
      (tools/train/results/peft_scale/trained/ and retrain3/, peft_seed*.json): test loss of
      the Bible adaptation against the trainable parameters (log scale) for each placement rule
      over the rank sweep 2-16, IA³ alone and full fine-tuning, mean +- sd over the seeds of
      each cell, the Pareto front of the means dotted (full fine-tuning, 0.1 nats lower, is
      written in the corner, not plotted);
  docs/img/prune_tradeoff.png  `yunmin prune` on the default model and the corpus model
      (bench/results/prune/): held-out perplexity along the search, perplexity on unseen text of
      the searched (held-out part at the text's end, and spread over it: spread/), uniform and
      learned allocations, the batch-1 decode speed-up (median of the
      alternated rounds, error bars from the first to the third quartile) against the
      weight-byte ratio, and the corpus model's test-perplexity increase with a one-document
      and a mixed held-out part;
and prints every plotted value (mean, sd, n) so that the tables in docs/RESULTS.md can be
checked against the raw files. Needs matplotlib (Debian python3-matplotlib); Agg backend, no
display. `--out-dir DIR` writes the PNGs elsewhere.
"""

import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCALE = os.path.join(ROOT, "tools", "train", "results", "scale")
PRUNE = os.path.join(ROOT, "bench", "results", "prune")
PEFT = os.path.join(ROOT, "tools", "train", "results", "peft_scale")

METHODS = [  # (name in the raw files, label, colour)
    ("learned", "learned (one threshold: own allocation)", "#1f77b4"),
    ("learned-uniform", "learned, same share per layer (control 1)", "#17becf"),
    ("learned-layer", "learned with per-layer constraint (control 1b)", "#9467bd"),
    ("magnitude", "magnitude (same share per layer)", "#ff7f0e"),
    ("magnitude-alloc", "magnitude at learned allocation (control 2)", "#d62728"),
    ("random", "random (same share per layer)", "#2ca02c"),
]


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def mean_sd(xs):
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return m, sd, n


def group(runs, key):
    """{(method, level): [value per seed]} over the rows of every run."""
    out = {}
    for run in runs:
        for r in run["rows"]:
            v = key(r)
            if v is not None:
                out.setdefault((r["method"], r["level"]), []).append(v)
    return out


def plot_masks(out_dir):
    runs = [load(os.path.join(SCALE, "scale_seed%d.json" % s)) for s in range(1, 6)]
    runs200 = [load(os.path.join(SCALE, "steps200_seed%d.json" % s)) for s in (1, 2)]
    dense = runs[0]["dense"]
    for r in runs[1:]:  # every seed evaluated the same dense model on the same windows
        assert abs(r["dense"]["ppl"] - dense["ppl"]) < 1e-6 * dense["ppl"], r["dense"]
    cols = [("cos_loss", "cosine loss of final hidden states", lambda r: r["cos_loss"]),
            ("ppl", "held-out perplexity (log scale)", lambda r: r["ppl"]),
            ("task", "definition -> headword accuracy (%)",
             lambda r: 100 * r["task"]["all"] if "task" in r else None)]
    fig, ax = plt.subplots(1, 3, figsize=(17, 5.2))
    print("channel masks, corpus model: mean / sd / n seeds")
    for i, (name, ylabel, key) in enumerate(cols):
        g = group(runs, key)
        for m, label, col in METHODS:
            levels = sorted(lv for (mm, lv) in g if mm == m)
            if not levels:
                continue
            stats = [mean_sd(g[(m, lv)]) for lv in levels]
            for lv, (mu, sd, n) in zip(levels, stats):
                print("  %-8s %-16s %4.0f %%: %.4f +- %.4f (n=%d)" % (name, m, 100 * lv, mu, sd, n))
            shift = -1.2 if m == "learned-layer" else 0  # else hidden under learned-uniform
            ax[i].errorbar([100 * lv + shift for lv in levels], [s[0] for s in stats],
                           yerr=[s[1] for s in stats], color=col, label=label, capsize=3,
                           marker="o", ms=4, ls="-" if len(levels) > 1 else "none")
        if name != "task":
            g2 = group(runs200, key)
            for m, label, col in METHODS:
                levels = sorted(lv for (mm, lv) in g2 if mm == m)
                if m not in ("learned", "magnitude-alloc") or not levels:
                    continue
                stats = [mean_sd(g2[(m, lv)]) for lv in levels]
                for lv, (mu, sd, n) in zip(levels, stats):
                    print("  %-8s %-16s %4.0f %% (200 steps): %.4f +- %.4f (n=%d)"
                          % (name, m, 100 * lv, mu, sd, n))
                ax[i].errorbar([100 * lv + 1 for lv in levels], [s[0] for s in stats],
                               yerr=[s[1] for s in stats], color=col, mfc="white", marker="s",
                               ms=5, ls="none", capsize=3,
                               label="%s, 200 mask steps (2 seeds)" % m)
        ax[i].set_xlabel("channels dropped in the mixers (%)")
        ax[i].set_ylabel(ylabel)
        ax[i].grid(alpha=0.3)
    ax[1].axhline(dense["ppl"], color="black", ls=":", label="dense (%.1f)" % dense["ppl"])
    ax[1].set_yscale("log")
    ax[2].axhline(100 * dense["task"]["all"], color="black", ls=":",
                  label="dense (%.1f %%)" % (100 * dense["task"]["all"]))
    ax[2].axhline(25, color="gray", ls="--", lw=0.8, label="chance (25 %)")
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)
    ax[2].legend(fontsize=7)
    fig.suptitle("Channel masks on the corpus model (Mamba-1, %.1f M parameters, 8 layers x 1,280 "
                 "channels): mean +- sd over 5 seeds, 40 mask steps" % (runs[0]["n_params"] / 1e6),
                 fontsize=10)
    fig.tight_layout()
    dst = os.path.join(out_dir, "channel_masks_corpus.png")
    fig.savefig(dst, dpi=90)
    print("wrote", dst)


PEFT_RULES = [  # (rule in the raw files, label, colour)
    ("top", "hybrid: LoRA on the 2 most important layers (the seed's rule)", "#1f77b4"),
    ("least", "hybrid: LoRA on the 2 least important layers", "#ff7f0e"),
    ("last", "hybrid: LoRA on the last 2 layers", "#2ca02c"),
    ("learned", "hybrid: learned rank allocation", "#9467bd"),
    ("lora-all", "LoRA on every layer", "#d62728"),
    ("ia3", "IA3 alone", "#8c564b"),
    ("full", "full fine-tuning", "black"),
]


def peft_cells(folder):
    """{(rule, rank): ([test loss per seed], trainable params)} from a sweep's peft_seed*.json
    (a file whose processes failed may be missing; rows are written as they finish)."""
    cells = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith("peft_seed") and name.endswith(".json"):
            for r in load(os.path.join(folder, name))["rows"]:
                c = cells.setdefault((r["rule"], r["rank"]), ([], r["trainable_params"]))
                c[0].append(r["test_loss"])
    return cells


def plot_peft(out_dir):
    runs = [("trained", "first training (test-head ppl 32.60)"),
            ("retrain3", "second training (test-head ppl 33.38)")]
    fig, ax = plt.subplots(1, 2, figsize=(15, 5.6), sharey=False)
    print("PEFT placement on the corpus model: test loss mean / sd / n seeds")
    for i, (folder, title) in enumerate(runs):
        cells = peft_cells(os.path.join(PEFT, folder))
        pts = []
        for rule, label, col in PEFT_RULES:
            keys = sorted(k for k in cells if k[0] == rule)
            if not keys:
                continue
            xs, ms, sds, ns = [], [], [], []
            for k in keys:
                mu, sd, n = mean_sd(cells[k][0])
                xs.append(cells[k][1])
                ms.append(mu)
                sds.append(sd)
                ns.append(n)
                pts.append((cells[k][1], mu))
                print("  %-9s %-9s r%-2d %9d params: %.4f +- %.4f (n=%d)"
                      % (folder, rule, k[1], cells[k][1], mu, sd, n))
            if rule == "full":  # 0.1 nats below the rest: a note, not a point on the scale
                ax[i].annotate("full fine-tuning (%s params): %.3f +- %.3f, n=%d, below"
                               % (format(xs[0], ","), ms[0], sds[0], ns[0]),
                               xy=(0.98, 0.02), xycoords="axes fraction", ha="right",
                               fontsize=8)
                continue
            ax[i].errorbar(xs, ms, yerr=sds, color=col, marker="o", ms=4, capsize=3,
                           ls="-" if len(xs) > 1 else "none",
                           label=label + ("" if len(set(ns)) == 1 and ns[0] > 1 else
                                          " (seeds: %s)" % "/".join(map(str, ns))))
        front = [p for p in pts if not any((q[0] <= p[0] and q[1] < p[1]) or
                                           (q[0] < p[0] and q[1] <= p[1]) for q in pts)]
        front.sort()
        lora = [p[1] for p in pts if p[0] < 1e7]
        ax[i].set_ylim(min(lora) - 0.01, max(lora) + 0.006)
        ax[i].plot([p[0] for p in front], [p[1] for p in front], color="gray", ls=":", lw=1,
                   label="Pareto front of the means")
        ax[i].set_xscale("log")
        ax[i].set_xlabel("trainable parameters (log scale); LoRA ranks 2, 4, 8, 16")
        ax[i].set_ylabel("Bible test loss (nats / token)")
        ax[i].set_title(title, fontsize=10)
        ax[i].grid(alpha=0.3)
        ax[i].legend(fontsize=7)
    fig.suptitle("PEFT placement on the corpus model (Mamba-1, 28.9 M parameters): mean +- sd "
                 "over seeds, 100 steps each", fontsize=10)
    fig.tight_layout()
    dst = os.path.join(out_dir, "peft_pareto_corpus.png")
    fig.savefig(dst, dpi=90)
    print("wrote", dst)


def read_ppl_pairs(path):
    """bench/prune.sh's ppl files: 'name held-out test' lines (default model) or, for the
    corpus model, a '--sparsity FILE' line before each pair of `yunmin perplexity` JSON lines
    (the held-out part, then the unseen text; the first pair is the dense model's)."""
    out, label, pair = {}, "dense", []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("--sparsity"):
                label, pair = os.path.basename(line.split()[1]).replace(".safetensors", ""), []
                continue
            pair.append(json.loads(line)["ppl"])
            if len(pair) == 2:
                out[label] = tuple(pair)
    return out


def plot_prune(out_dir):
    p5, p10 = load(os.path.join(PRUNE, "prune-5.json")), load(os.path.join(PRUNE, "prune-10.json"))
    greedy = load(os.path.join(PRUNE, "greedy-5.json"))
    ppl = {}
    for name in ("dense", "prune-5", "prune-10", "uniform-5", "uniform-10", "learned",
                 "searched-at-compare", "uniform-compare", "greedy-5"):
        with open(os.path.join(PRUNE, name + ".ppl"), encoding="utf-8") as f:
            w = f.read().split()
        ppl[name] = (float(w[-2]), float(w[-1]))  # held-out part, unseen test text
    fig, ax2 = plt.subplots(2, 2, figsize=(13, 9.5))
    ax = ax2.ravel()
    d_h, d_t = ppl["dense"]
    print("prune, default model: dense held-out %.3f, test %.3f" % (d_h, d_t))

    # (a) the search path on its own held-out part: 5 % budget, then on past it to 50 %.
    steps = p5["search_steps"]
    ax[0].plot([0] + [100 * s["sparsity"] for s in steps],
               [0.0] + [100 * (s["ppl"] / p5["ppl_dense"] - 1)
                                                   for s in steps],
               color="#1f77b4", label="search path (each accepted step)")
    for name, sp, col, mk in (("prune-5", p5["sparsity"], "#1f77b4", "o"),
                              ("prune-10", p10["sparsity"], "#1f77b4", "o"),
                              ("uniform-5", p5["sparsity"], "#ff7f0e", "s"),
                              ("uniform-10", p10["sparsity"], "#ff7f0e", "s"),
                              ("searched-at-compare", 0.5, "#1f77b4", "o"),
                              ("uniform-compare", 0.5, "#ff7f0e", "s"),
                              ("learned", 0.5, "#9467bd", "^")):
        ax[0].plot(100 * sp, 100 * (ppl[name][0] / d_h - 1), marker=mk, color=col, ls="none")
    ax[0].axhline(5, color="gray", ls="--", lw=0.8)
    ax[0].axhline(10, color="gray", ls="--", lw=0.8)
    ax[0].set_title("default model: search's held-out part (the last 10 % of cal.txt, 1,841 tokens)", fontsize=9)
    ax[0].set_ylabel("perplexity increase over dense (%)")

    # (b) unseen text.
    series = [("searched (lazy)", [("prune-5", p5["sparsity"]), ("prune-10", p10["sparsity"]),
                                   ("searched-at-compare", 0.5)], "#1f77b4", "o"),
              ("uniform magnitude", [("uniform-5", p5["sparsity"]), ("uniform-10", p10["sparsity"]),
                                     ("uniform-compare", 0.5)], "#ff7f0e", "s"),
              ("learned masks", [("learned", 0.5)], "#9467bd", "^"),
              ("searched (greedy, 5 %)", [("greedy-5", greedy["sparsity"])], "#8c564b", "v")]
    spread = load(os.path.join(PRUNE, "spread", "spread-5.json"))
    with open(os.path.join(PRUNE, "spread", "test-ppl.txt"), encoding="utf-8") as f:
        sp_t = [json.loads(ln)["ppl"] for ln in f if ln.startswith("{")]
    assert abs(sp_t[0] - d_t) < 1e-9 * d_t, sp_t  # the same dense figure on the same test text
    ppl["spread-5"] = (spread["ppl_pruned"], sp_t[1])
    series.append(("searched, held-out windows spread (5 %)", [("spread-5", spread["sparsity"])],
                   "#e377c2", "D"))
    for label, pts, col, mk in series:
        xs = [100 * sp for _, sp in pts]
        ys = [100 * (ppl[n][1] / d_t - 1) for n, _ in pts]
        for (n, _), x, y in zip(pts, xs, ys):
            print("  test ppl %-20s %5.1f %% sparsity: %.3f (%+.1f %%)" % (n, x, ppl[n][1], y))
        ax[1].plot(xs, ys, marker=mk, color=col, label=label, ls="-" if len(pts) > 1 else "none")
    ax[1].set_title("default model: unseen text (second half of the held-out 10 %)", fontsize=9)
    ax[1].set_ylabel("perplexity increase over dense (%)")
    for a in ax[:2]:
        a.set_xlabel("channels dropped (%)")
        a.grid(alpha=0.3)
    ax[0].plot([], [], marker="o", color="#1f77b4", ls="none", label="searched")
    ax[0].plot([], [], marker="s", color="#ff7f0e", ls="none", label="uniform magnitude")
    ax[0].plot([], [], marker="^", color="#9467bd", ls="none", label="learned masks")
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)

    # (c) speed: median and quartiles of the alternated rounds; the weight-byte ratio.
    pts = [("5 % budget", p5["sparsity"], p5["decode_batch1"]["pruned"], p5["weight_bytes_ratio"]),
           ("10 % budget", p10["sparsity"], p10["decode_batch1"]["pruned"],
            p10["weight_bytes_ratio"]),
           ("searched at 50 %", 0.5, p5["decode_batch1"]["searched_at_compare"], None),
           ("learned 50 %", 0.5, p5["decode_batch1"]["compare"], None)]
    for i, (label, sp, d, br) in enumerate(pts):
        x = 100 * sp + (1.2 if label.startswith("learned") else 0)
        med = d["speedup_median"]
        print("  decode b1 %-17s %5.1f %%: median %.3f (quartiles %.3f-%.3f), byte ratio %s"
              % (label, 100 * sp, med, d["speedup_q1"], d["speedup_q3"], br))
        ax[2].errorbar([x], [med], yerr=[[med - d["speedup_q1"]], [d["speedup_q3"] - med]],
                       marker="^" if label.startswith("learned") else "o", capsize=4,
                       color="#9467bd" if label.startswith("learned") else "#1f77b4",
                       label=("searched, 5 % and 10 % budgets" if i == 0 else
                              label if i >= 2 else None), ls="none")
        if br is not None:
            ax[2].plot([100 * sp], [br], marker="x", color="black", ms=8,
                       label="weight-byte ratio (counted)" if i == 0 else None, ls="none")
    ax[2].set_xlabel("channels dropped (%)")
    ax[2].set_ylabel("batch-1 decode speed-up (pruned / dense)")
    ax[2].set_title("default model: decode, 1 thread, 30 rounds\n(median, bars: quartiles)",
                    fontsize=9)
    ax[2].grid(alpha=0.3)
    ax[2].legend(fontsize=7)

    # (d) the corpus model: one-document against mixed held-out part, on unseen text.
    one = read_ppl_pairs(os.path.join(PRUNE, "corpus", "ppl.txt"))
    mix = read_ppl_pairs(os.path.join(PRUNE, "corpus", "ppl-mix.txt"))
    bars = [("one-document held-out,\ntest text", one, "prune-5", "uniform-5"),
            ("mixed held-out,\nmixed test text", mix, "mix-5", "uniform-mix-5")]
    for i, (label, t, s_name, u_name) in enumerate(bars):
        dt = t["dense"][1]
        ys = [100 * (t[s_name][1] / dt - 1), 100 * (t[u_name][1] / dt - 1)]
        print("  corpus model %s: searched %+.1f %%, uniform %+.1f %%"
              % (label.replace("\n", " "), ys[0], ys[1]))
        ax[3].bar([3 * i, 3 * i + 1], ys, color=["#1f77b4", "#ff7f0e"],
                  label=["searched (5 % budget)", "uniform, same sparsity"] if i == 0 else None)
    ax[3].set_xticks([0.5, 3.5])
    ax[3].set_xticklabels([b[0] for b in bars], fontsize=8)
    ax[3].set_ylabel("unseen-text perplexity increase (%)")
    ax[3].set_title("corpus model (28.9 M): 19-21 % of channels dropped", fontsize=9)
    ax[3].grid(alpha=0.3, axis="y")
    ax[3].legend(fontsize=7)
    fig.suptitle("yunmin prune: searched per-layer allocation against uniform magnitude pruning "
                 "and learned masks (bench/results/prune/)", fontsize=10)
    fig.tight_layout()
    dst = os.path.join(out_dir, "prune_tradeoff.png")
    fig.savefig(dst, dpi=90)
    print("wrote", dst)


def read_engine_bench(path):
    """The speed-up ratios and the ideal weight-byte ratio of one `yunmin bench` text output."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if "ideal ratio" in line:
                out["bytes"] = float(line.rsplit("ideal ratio", 1)[1].strip(" )\n"))
            for key, tag in (("prefill", "prefill 128 tokens:"), ("decode1", "decode batch 1  :"),
                             ("decode16", "decode batch 16 :")):
                if line.startswith(tag):
                    out[key] = float(line.rsplit("(x", 1)[1].strip(" )\n"))
    return out


def plot_speed(out_dir):
    runs = [load(os.path.join(SCALE, "scale_seed%d.json" % s)) for s in range(1, 6)]
    ppl = group(runs, lambda r: r["ppl"])
    cut = group(runs, lambda r: r["flops_cut_model"])
    dense = runs[0]["dense"]["ppl"]
    levels = [0.5, 0.7, 0.9]
    bench = {lv: read_engine_bench(os.path.join(
        SCALE, "engine_bench_magnitude-alloc-%d.txt" % round(100 * lv))) for lv in levels}
    fig, ax = plt.subplots(1, 2, figsize=(13, 5.0))
    xs = [100 * lv for lv in levels]
    print("engine speed at the learned allocation (corpus model, one run each, best of 3 rounds)")
    for lv in levels:
        print("  %2.0f %%: %s; whole-model FLOP ratio %.3f" % (
            100 * lv, bench[lv], 1 / (1 - mean_sd(cut[("magnitude-alloc", lv)])[0])))
    for key, label, col, mk in (("prefill", "prefill, 128-token prompt", "#2ca02c", "o"),
                                ("decode16", "decode, batch 16", "#ff7f0e", "o"),
                                ("decode1", "decode, batch 1", "#1f77b4", "o"),
                                ("bytes", "weight bytes per token (counted)", "black", "x")):
        ax[0].plot(xs, [bench[lv][key] for lv in levels], marker=mk, color=col, label=label,
                   ls="-" if key != "bytes" else ":")
    ax[0].plot(xs, [1 / (1 - mean_sd(cut[("magnitude-alloc", lv)])[0]) for lv in levels],
               color="gray", ls="--", label="whole-model multiply-adds (counted)")
    ax[0].axhline(4, color="gray", lw=0.8, ls="-.")
    ax[0].text(50, 4.15, "4x = the seed's 75 % FLOP cut", fontsize=7, color="gray")
    ax[0].set_ylim(1, None)
    ax[0].set_xlabel("channels dropped (%)")
    ax[0].set_ylabel("dense time / sparse time")
    ax[0].set_title("engine, CPU, 2 threads, bf16: one run per profile, best of 3 rounds\n"
                    "(no spread recorded, so no error bars)", fontsize=9)
    for m, col, mk in (("learned", "#1f77b4", "o"), ("magnitude-alloc", "#d62728", "s")):
        st = [mean_sd(ppl[(m, lv)]) for lv in levels]
        ax[1].errorbar([bench[lv]["decode1"] for lv in levels], [s[0] for s in st],
                       yerr=[s[1] for s in st], marker=mk, color=col, capsize=3,
                       label="%s (mean +- sd, 5 seeds)" % m)
        for lv, s_ in zip(levels, st):
            ax[1].annotate("%d %%" % round(100 * lv), (bench[lv]["decode1"], s_[0]),
                           textcoords="offset points", xytext=(6, -10), fontsize=7, color=col)
    ax[1].axhline(dense, color="black", ls=":", label="dense (%.1f)" % dense)
    ax[1].axvline(4, color="gray", lw=0.8, ls="-.", label="4x")
    ax[1].set_yscale("log")
    ax[1].set_xlabel("batch-1 decode speed-up at that channel allocation")
    ax[1].set_ylabel("held-out perplexity (log scale)")
    ax[1].set_title("quality against speed (speed timed on seed 1's allocation,\n"
                    "magnitude ranking calibrated on the train prefix)", fontsize=9)
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle("Channel sparsity at the learned allocation on the corpus model: speed in the "
                 "engine", fontsize=10)
    fig.tight_layout()
    dst = os.path.join(out_dir, "speed_quality_corpus.png")
    fig.savefig(dst, dpi=90)
    print("wrote", dst)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "docs", "img"))
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    plot_masks(args.out_dir)
    plot_speed(args.out_dir)
    plot_peft(args.out_dir)
    plot_prune(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
