"""Held-out perplexity of the Mamba-2 corpus model under engine head profiles, by the toolkit
(yunmin_train.mamba2, float32 on the CPU), on the study's protocol: the first --windows windows
of --ctx tokens of --val-text (evaluate.py's windows, each from a zero state).

    PYTHONPATH=tools/train /usr/bin/python3 tools/train/results/mamba2/engine/toolkit_ppl.py \
        --model MODEL --val-text val300k.txt --write-text val64w.txt P1.safetensors ...

Reads each profile's head_logits / state_logits (kept iff > 0) into the toolkit's head and state
masks, so the engine (`yunmin perplexity --sparsity P --file val64w.txt --ctx 256`) and the
toolkit score the very same masks. --write-text writes those windows' tokens decoded to text
(checked to re-encode to the same tokens), the file for the engine's run. Prints one JSON line
per profile (and "dense")."""

import argparse
import json
import os
import sys

import numpy as np
import torch

from yunmin_train import data as data_mod
from yunmin_train import mamba2_study as S
from yunmin_train import safetensors_io as st
from yunmin_train.mamba2 import load_model
from yunmin_train.tokenizer import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--val-text", required=True)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--write-text", default=None)
    ap.add_argument("profiles", nargs="*")
    a = ap.parse_args()
    torch.set_num_threads(2)
    model = load_model(a.model).eval()
    L = model.config.num_hidden_layers
    tokp = os.path.join(a.model, "tokenizer.json")
    tok = Tokenizer.from_file(tokp)
    va = np.asarray(tok.encode(data_mod.read_text(a.val_text)), dtype=np.int64)
    va = va[:a.windows * a.ctx]
    if a.write_text:
        text = tok.decode(va.tolist())
        assert tok.encode(text) == va.tolist(), "the windows' text does not re-encode the same"
        with open(a.write_text, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    print(json.dumps({"profile": "dense", **S.heldout(model, va, a.ctx)}), flush=True)
    for p in a.profiles:
        t, meta = st.load_numpy(p)
        hm = torch.tensor(np.stack([t[f"layers.{l}.head_logits"] > 0 for l in range(L)]),
                          dtype=torch.float32)
        sm = torch.tensor(np.stack([t[f"layers.{l}.state_logits"] > 0 for l in range(L)]),
                          dtype=torch.float32)
        r = S.heldout(model, va, a.ctx, head_masks=hm, state_masks=sm)
        print(json.dumps({"profile": os.path.basename(p), "kind": meta.get("kind"),
                          "level": meta.get("level"), **r}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
