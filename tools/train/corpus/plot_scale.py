"""Charts of the channel-mask study on the corpus model, from its committed merged results.

    /usr/bin/python3 tools/train/corpus/plot_scale.py tools/train/results/scale/scale_results.json \\
        tools/train/results/scale/masks_scale.png

Three panels, every point the mean over seeds with ± 1 sample sd as error bars:
cosine loss of the final hidden states against the fraction of channels dropped; held-out
perplexity (log scale, the dense model dotted); perplexity against the whole model's
multiply-add cut (the seed's 75 % and 90 % marked). Needs matplotlib (Debian python3-matplotlib).
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"learned": "#1f77b4", "learned-uniform": "#17becf", "learned-layer": "#9467bd",
          "magnitude": "#ff7f0e", "magnitude-alloc": "#d62728", "random": "#2ca02c"}


def main(src, dst):
    res = json.load(open(src, encoding="utf-8"))
    tab = res["table"]
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.8))
    for m, col in COLORS.items():
        sub = sorted((e for e in tab if e["method"] == m), key=lambda e: e["level"])
        if not sub:
            continue
        xs = [100 * e["level"] for e in sub]
        sd = lambda s: 0.0 if s["n"] < 2 else s["sd"]  # noqa: E731
        kw = dict(color=col, label=m, capsize=3, marker="o", ms=4,
                  ls="-" if len(sub) > 1 else "none")
        ax[0].errorbar(xs, [e["cos_loss"]["mean"] for e in sub],
                       yerr=[sd(e["cos_loss"]) for e in sub], **kw)
        ax[1].errorbar(xs, [e["ppl"]["mean"] for e in sub], yerr=[sd(e["ppl"]) for e in sub],
                       **kw)
        ax[2].errorbar([100 * e["flops_cut_model"]["mean"] for e in sub],
                       [e["ppl"]["mean"] for e in sub], yerr=[sd(e["ppl"]) for e in sub], **kw)
    dense = res["dense"]["ppl"]
    for a in (ax[1], ax[2]):
        a.axhline(dense, color="black", ls=":", label=f"dense ({dense:.1f})")
        a.set_yscale("log")
        a.set_ylabel("held-out perplexity")
    for x in (75, 90):
        ax[2].axvline(x, color="gray", ls="--", lw=0.8)
    ax[2].text(75.5, dense * 1.05, "seed: 75 %", fontsize=7, color="gray")
    ax[2].text(90.5, dense * 1.05, "90 %", fontsize=7, color="gray")
    ax[0].set_ylabel("cosine loss of final hidden states")
    ax[0].set_xlabel("channels dropped (%)")
    ax[1].set_xlabel("channels dropped (%)")
    ax[2].set_xlabel("whole-model multiply-adds cut (%)")
    ax[2].set_xlim(0, 100)
    n = max(len(e["seeds"]) for e in tab)
    fig.suptitle(f"Channel masks, corpus model ({res['n_params'] / 1e6:.1f} M parameters): "
                 f"mean ± sd over up to {n} seeds", fontsize=10)
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dst, dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
