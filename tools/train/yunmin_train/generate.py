"""Sample continuations from a model directory (used for models/*/samples.txt).

    python -m yunmin_train.generate --model models/shakespeare-mamba --prompt "ROMEO:" \\
        --max-new-tokens 200 --temperature 0.8 --seed 1234 --out samples.txt
Each prompt gets its own generator seeded with seed + prompt index, so the samples are
reproducible one by one. Output is unedited: prompt + continuation as decoded.
"""

import argparse
import os
import sys

import torch

from .evaluate import pick_device
from .model import generate, load_model
from .tokenizer import Tokenizer


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m yunmin_train.generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", action="append", default=None, help="repeatable")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    prompts = a.prompt or ["ROMEO:"]
    dev = pick_device(a.device)
    model = load_model(a.model, device=dev).eval()
    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    parts = []
    for i, p in enumerate(prompts):
        ids = tok.encode(p)
        new = generate(model, ids, a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                       seed=a.seed + i, stop_ids=() if eos is None else (eos,))
        text = tok.decode(ids + new)
        header = (f"=== sample {i + 1}: prompt {p!r}, temperature {a.temperature}, "
                  f"top_k {a.top_k}, seed {a.seed + i}, {len(new)} new tokens ===")
        parts.append(header + "\n" + text + "\n")
        print(header, flush=True)
        print(text, flush=True)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write("\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
