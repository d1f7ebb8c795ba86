#!/usr/bin/env python3
"""Cut a split to its first documents, at most --max-chars characters (a smaller copy to carry).

    python3 tools/train/corpus/prefix_split.py CORPUS_DIR OUT_DIR [--split train]
        [--max-chars 60000000]

Writes OUT_DIR/<split>.txt (the documents before the first one that starts at or after
--max-chars, joined as in the corpus, ending with "\\n") and OUT_DIR/<split>.docs.tsv (their
rows; the character spans stay valid). The split's order is a fixed shuffle, so the prefix is
a deterministic sample of every domain.
"""

import argparse
import hashlib
import os
import sys

SEP = "\n<|endoftext|>\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus")
    ap.add_argument("out")
    ap.add_argument("--split", default="train")
    ap.add_argument("--max-chars", type=int, default=60_000_000)
    a = ap.parse_args(argv)
    with open(os.path.join(a.corpus, a.split + ".txt"), encoding="utf-8", newline="") as f:
        text = f.read()
    with open(os.path.join(a.corpus, a.split + ".docs.tsv"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    header, rows = lines[0], [r for r in lines[1:] if r]
    k = next((i for i, r in enumerate(rows) if int(r.split("\t")[4]) >= a.max_chars), len(rows))
    cut = int(rows[k].split("\t")[4]) - len(SEP) if k < len(rows) else len(text) - 1
    prefix = text[:cut] + "\n"
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, a.split + ".txt"), "w", encoding="utf-8", newline="") as f:
        f.write(prefix)
    with open(os.path.join(a.out, a.split + ".docs.tsv"), "w", encoding="utf-8",
              newline="") as f:
        f.write(header + "\n" + "\n".join(rows[:k]) + "\n")
    print(f"{a.split}: {k} of {len(rows)} documents, {len(prefix)} characters, sha256 "
          f"{hashlib.sha256(prefix.encode('utf-8')).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
