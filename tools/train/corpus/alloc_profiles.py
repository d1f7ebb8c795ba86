"""Sparsity profiles for the engine from the mask study: magnitude's ranking inside each layer
with the learned masks' per-layer channel counts ("magnitude-alloc", which equals the learned
masks in cosine loss on the corpus model), written as yunmin.sparsity.safetensors.

    PYTHONPATH=tools/train /usr/bin/python3 tools/train/corpus/alloc_profiles.py \\
        --model MODEL --train-text TRAIN_HEAD.txt --study tools/train/results/scale/scale_seed1.json \\
        --levels 0.5,0.7,0.9 --out-dir DIR

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
    ap.add_argument("--study", required=True, help="a scale_seed*.json with learned rows")
    ap.add_argument("--levels", default="0.5,0.7,0.9")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--out-dir", required=True)
    a = ap.parse_args(argv)
    model = load_model(a.model, device="cpu").eval()
    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    ids = np.asarray(tok.encode(open(a.train_text, encoding="utf-8").read()))[:a.tokens]
    energy, abs_s = M.state_statistics(model, ids)
    rows = json.load(open(a.study, encoding="utf-8"))["rows"]
    os.makedirs(a.out_dir, exist_ok=True)
    N = model.config.state_size
    for level in [float(x) for x in a.levels.split(",")]:
        counts = next(r["per_layer_kept"] for r in rows
                      if r["method"] == "learned" and abs(r["level"] - level) < 1e-9)
        ch = np.stack([M.top_keep(energy[l], counts[l]) for l in range(len(counts))])
        st = np.repeat(ch[:, :, None], N, axis=2)
        cl, sl = M.bool_to_logits(ch, st)
        path = os.path.join(a.out_dir, f"magnitude-alloc-{int(round(level * 100))}.safetensors")
        M.save_profile(path, cl, sl, "magnitude", None,
                       {"channel_sparsity": f"{level:g}", "state_sparsity": "0",
                        "allocation": "learned per-layer counts", "counts": ",".join(map(str, counts))})
        print(path, counts, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
