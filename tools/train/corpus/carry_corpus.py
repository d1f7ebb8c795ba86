#!/usr/bin/env python3
"""A smaller copy of the corpus splits that the GPU scripts read, to fit the machine's transfer.

    python3 tools/train/corpus/carry_corpus.py CORPUS_DIR OUT_DIR [--train-chars 21000000]
        [--val-head-chars 1200000] [--keep-domains bible,perl]

CORPUS_DIR holds train.txt, val.txt and test-head.txt (or their .xz). Writes OUT_DIR/<split>.txt.xz
(xz -9e) for:
  train      its first documents, whole, up to --train-chars characters (the split's order is a
             fixed shuffle, so a prefix samples every domain);
  val        every document that starts before --val-head-chars, then every later document of
             --keep-domains, in the split's order. What the studies read from val.txt is kept:
             the training's held-out windows and the recovery windows come from its start, the
             per-domain base losses read each domain's first 150,000 characters, and the PEFT task
             reads all of a domain's documents (run_peft_scale.sh picks the Bible);
  test-head  unchanged.
Prints each split's documents, characters, compressed bytes and sha256 of the text.
"""

import argparse
import hashlib
import lzma
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from yunmin_train.peft_scale import SEP, domain_of  # noqa: E402


def read_split(corpus, name):
    path = os.path.join(corpus, name + ".txt")
    if os.path.exists(path):
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    with lzma.open(path + ".xz", "rt", encoding="utf-8", newline="") as f:
        return f.read()


def docs_of(text):
    """The documents of a split; the split's final newline is not part of its last one."""
    if text.endswith("\n"):
        text = text[:-1]
    return [d for d in text.split(SEP) if d.strip()]


def train_prefix(docs, max_chars):
    """The first documents whose start lies before max_chars (joined with SEP)."""
    out, pos = [], 0
    for d in docs:
        if pos >= max_chars:
            break
        out.append(d)
        pos += len(d) + len(SEP)
    return out


def val_subset(docs, head_chars, keep):
    """Documents that start before head_chars, then later ones whose domain is in keep."""
    out, pos = [], 0
    for d in docs:
        if pos < head_chars or domain_of(d) in keep:
            out.append(d)
        pos += len(d) + len(SEP)
    return out


def write_xz(path, text):
    data = text.encode("utf-8")
    with open(path + ".tmp", "wb") as f:
        f.write(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    os.replace(path + ".tmp", path)
    return len(data), os.path.getsize(path), hashlib.sha256(data).hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus")
    ap.add_argument("out")
    ap.add_argument("--train-chars", type=int, default=21_000_000)
    ap.add_argument("--val-head-chars", type=int, default=1_200_000)
    ap.add_argument("--keep-domains", default="bible,perl")
    a = ap.parse_args(argv)
    keep = {d for d in a.keep_domains.split(",") if d}
    os.makedirs(a.out, exist_ok=True)
    tr = docs_of(read_split(a.corpus, "train"))
    va = docs_of(read_split(a.corpus, "val"))
    parts = {"train": train_prefix(tr, a.train_chars),
             "val": val_subset(va, a.val_head_chars, keep)}
    totals = {"train": len(tr), "val": len(va)}
    for name, docs in parts.items():
        n, z, h = write_xz(os.path.join(a.out, name + ".txt.xz"), SEP.join(docs) + "\n")
        print(f"{name}: {len(docs)} of {totals[name]} documents, {n} bytes -> {z} xz, sha256 {h}")
    n, z, h = write_xz(os.path.join(a.out, "test-head.txt.xz"), read_split(a.corpus, "test-head"))
    print(f"test-head: {n} bytes -> {z} xz, sha256 {h}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
