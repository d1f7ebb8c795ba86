"""Sparsity profiles for the engine from the mask study: magnitude's ranking inside each layer
with the learned masks' per-layer channel counts ("magnitude-alloc", which equals the learned
masks in cosine loss on the corpus model), written as yunmin.sparsity.safetensors.

    PYTHONPATH=tools/train /usr/bin/python3 tools/train/corpus/alloc_profiles.py \\
        --model MODEL --train-text TRAIN_HEAD.txt --study tools/train/results/scale/scale_seed1.json \\
        --levels 0.5,0.7,0.9 --out-dir DIR
    # the per-layer counts of learned profiles instead of a study's rows, and the same
    # levels with the same count in every layer (magnitude-uniform-P) as the control:
    ... alloc_profiles.py --model MODEL --train-text T --alloc-from 0.5=chan-50.sparsity.safetensors \\
        --alloc-from 0.7=... --uniform --out-dir DIR

Calibration: the first --tokens tokens of --train-text (training text), from a zero state.
"""

import argparse
import os
import sys

import numpy as np
import json

from yunmin_train import masks as M
from yunmin_train.model import load_model
from yunmin_train.tokenizer import Tokenizer


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--train-text", required=True)
    ap.add_argument("--study", default=None, help="a scale_seed*.json with learned rows")
    ap.add_argument("--alloc-from", action="append", default=[], metavar="LEVEL=PROFILE",
                    help="per-layer counts of this profile's kept channels (instead of --study)")
    ap.add_argument("--uniform", action="store_true",
                    help="also magnitude-uniform-P: round((1 - P) * d_inner) kept in every layer")
    ap.add_argument("--levels", default="0.5,0.7,0.9")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--out-dir", required=True)
    a = ap.parse_args(argv)
    model = load_model(a.model, device="cpu").eval()
    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    ids = np.asarray(tok.encode(open(a.train_text, encoding="utf-8").read()))[:a.tokens]
    energy, abs_s = M.state_statistics(model, ids)
    counts_of = {}
    if a.study:
        rows = json.load(open(a.study, encoding="utf-8"))["rows"]
        for level in [float(x) for x in a.levels.split(",")]:
            counts_of[level] = next(r["per_layer_kept"] for r in rows
                                    if r["method"] == "learned" and abs(r["level"] - level) < 1e-9)
    for spec in a.alloc_from:
        level, path = spec.split("=", 1)
        ch, _, _, _ = M.load_profile(path)
        counts_of[float(level)] = [int(c) for c in (ch > 0).sum(axis=1)]
    if not counts_of:
        raise SystemExit("alloc_profiles: --study or --alloc-from is needed")
    os.makedirs(a.out_dir, exist_ok=True)
    N = model.config.state_size
    L, Di = energy.shape
    for level, counts in sorted(counts_of.items()):
        kinds = [("magnitude-alloc", counts, "learned per-layer counts")]
        if a.uniform:
            kinds.append(("magnitude-uniform", [int(round((1 - level) * Di))] * L,
                          "the same count in every layer"))
        for name, cnt, what in kinds:
            ch = np.stack([M.top_keep(energy[l], cnt[l]) for l in range(len(cnt))])
            st = np.repeat(ch[:, :, None], N, axis=2)
            cl, sl = M.bool_to_logits(ch, st)
            path = os.path.join(a.out_dir, f"{name}-{int(round(level * 100))}.safetensors")
            M.save_profile(path, cl, sl, "magnitude", None,
                           {"channel_sparsity": f"{level:g}", "state_sparsity": "0",
                            "allocation": what, "counts": ",".join(map(str, cnt))})
            print(path, cnt, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
