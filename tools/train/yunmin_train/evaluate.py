"""Perplexity of a model over a text file (or its held-out split).

Protocol (the C engine's `yunmin perplexity --ctx N` uses the same one):
  * tokenize the text as one string (no BOS or other special token is added);
  * cut the ids into non-overlapping windows of ctx tokens: [0, ctx), [ctx, 2 ctx), ...; the last
    window may be shorter and is kept if it has at least 2 tokens;
  * run every window from a fresh (zero) recurrent state — no state is carried between windows;
  * in a window w_0 .. w_{m-1}, the model's output at position i is scored against w_{i+1}, for
    i = 0 .. m-2: the first token of each window is never scored (m - 1 scored tokens);
  * NLL = -log softmax(logits)[target], summed in float64 over all scored tokens;
    ppl = exp(NLL_sum / n_scored), exactly.
Output: one JSON object (stdout, and --out FILE).
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from . import data as data_mod
from .model import load_model


def windows(ids, ctx):
    """The evaluation windows (lists of numpy slices) of the protocol above."""
    if ctx < 2:
        raise ValueError("ctx must be at least 2")
    out = []
    for s in range(0, len(ids), ctx):
        w = ids[s:s + ctx]
        if len(w) >= 2:
            out.append(w)
    return out


def window_batches(wins, batch_size, device):
    """Consecutive windows of one length, up to batch_size at a time, as int64 tensors on device
    (only the last window can be shorter, so this is the windows in order)."""
    i = 0
    while i < len(wins):
        j = i
        while j < len(wins) and j - i < batch_size and len(wins[j]) == len(wins[i]):
            j += 1
        yield torch.from_numpy(np.stack(wins[i:j]).astype(np.int64)).to(device)
        i = j


@torch.no_grad()
def nll_windows(model, ids, ctx, batch_size=32, device=None, max_windows=0, autocast_dtype=None):
    """(nll_sum float64, n_scored) of the protocol above."""
    device = torch.device(device) if device is not None else model.backbone.norm_f.weight.device
    wins = windows(np.asarray(ids), ctx)
    if max_windows:
        wins = wins[:max_windows]
    total = 0.0
    count = 0
    was_training = model.training
    model.eval()
    for x in window_batches(wins, batch_size, device):
        if autocast_dtype is not None and device.type == "cuda":
            with torch.autocast(device_type="cuda", dtype=autocast_dtype):
                logits = model(x[:, :-1])
        else:
            logits = model(x[:, :-1])
        lp = F.log_softmax(logits.to(torch.float64 if logits.dtype == torch.float64
                                     else torch.float32), dim=-1)
        nll = -lp.gather(-1, x[:, 1:, None]).squeeze(-1)
        total += float(nll.double().sum())
        count += nll.numel()
    model.train(was_training)
    return total, count


def evaluate_ids(model, ids, ctx, **kw):
    total, count = nll_windows(model, ids, ctx, **kw)
    mean = total / count if count else float("nan")
    return {"ctx": ctx, "n_tokens": int(len(ids)), "n_windows": len(windows(np.asarray(ids), ctx)),
            "n_scored": count, "nll_sum": total, "mean_nll": mean,
            "ppl": math.exp(mean) if count else float("nan")}


def pick_device(name="auto"):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m yunmin_train.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (HF layout)")
    ap.add_argument("--text", required=True, help="UTF-8 text file")
    ap.add_argument("--split", default="all", choices=["all", "train", "val"],
                    help="all = whole file; val = the held-out last 10%% of the characters")
    ap.add_argument("--ctx", type=int, default=256, help="window length in tokens")
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json (default: in --model)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-windows", type=int, default=0, help="0 = all")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--cache-dir", default=None, help="cache token ids here (.npy)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)

    dev = pick_device(a.device)
    tok_path = a.tokenizer or os.path.join(a.model, "tokenizer.json")
    text = data_mod.select_split(data_mod.read_text(a.text), a.split)
    ids = data_mod.tokenize_cached(text, tok_path, a.cache_dir, a.split)
    model = load_model(a.model, dtype=getattr(torch, a.dtype), device=dev).eval()
    res = evaluate_ids(model, ids, a.ctx, batch_size=a.batch_size, device=dev,
                       max_windows=a.max_windows)
    res.update({"model": a.model, "text": a.text, "split": a.split, "n_chars": len(text),
                "dtype": a.dtype, "device": str(dev),
                "protocol": "non-overlapping windows of ctx tokens, fresh state per window, "
                            "first token of each window not scored, last window kept if >= 2 "
                            "tokens, ppl = exp(mean NLL over scored tokens)"})
    s = json.dumps(res, indent=2)
    print(s)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(s + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
