#!/usr/bin/env python3
"""Rewrite a model directory's model.safetensors as shards + model.safetensors.index.json.

    PYTHONPATH=tools/train python3 tools/train/corpus/shard_model.py SRC_DIR DST_DIR \\
        [--max-shard-mib 15.5]

Tensors keep their dtype and bytes; they are packed in name order into shards of at most
--max-shard-mib (one tensor larger than that is an error: a tensor is never split).
config.json and tokenizer.json are copied. The index is transformers' layout
({"metadata": {"total_size": N}, "weight_map": {name: file}}), which yunmin and
yunmin_train.model.load_model read.
"""

import argparse
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from yunmin_train import safetensors_io  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--max-shard-mib", type=float, default=15.5)
    a = ap.parse_args(argv)
    cap = int(a.max_shard_mib * 1024 * 1024)
    limit = cap - min(64 * 1024, cap // 20)        # room for the header
    tensors, _ = safetensors_io.load(os.path.join(a.src, "model.safetensors"))
    shards, cur, size = [], {}, 0
    for k in sorted(tensors):
        nb = tensors[k].numel() * tensors[k].element_size()
        if nb > limit:
            raise SystemExit(f"{k}: {nb} bytes, larger than one shard ({limit})")
        if cur and size + nb > limit:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = tensors[k]
        size += nb
    if cur:
        shards.append(cur)
    os.makedirs(a.dst, exist_ok=True)
    wmap, total = {}, 0
    for i, sh in enumerate(shards):
        fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        safetensors_io.save(sh, os.path.join(a.dst, fn), metadata={"format": "pt"})
        for k, v in sh.items():
            wmap[k] = fn
            total += v.numel() * v.element_size()
        print(f"{fn}: {len(sh)} tensors, {os.path.getsize(os.path.join(a.dst, fn))} bytes")
    with open(os.path.join(a.dst, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f, indent=2)
        f.write("\n")
    for name in ("config.json", "tokenizer.json"):
        if os.path.exists(os.path.join(a.src, name)):
            shutil.copyfile(os.path.join(a.src, name), os.path.join(a.dst, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
