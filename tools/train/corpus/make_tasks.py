"""Downstream task from the corpus's test split: dictionary definition -> headword (4 choices).

    python3 tools/train/corpus/make_tasks.py CORPUS/test.txt tools/train/results/scale/def2word.jsonl
    python3 tools/train/corpus/make_tasks.py CORPUS/test.txt big.jsonl --per-source 1000

Every item is one dictionary entry of test.txt (documents joined by "\\n<|endoftext|>\\n"; no
test document was trained on): its first line is the headword line (WordNet: the headword;
GCIDE: headword, pronunciation and part of speech), the continuation is the entry's first
sense (WordNet: the line after the headword up to the first "[" or "2:"; GCIDE: the first
paragraph), cut at a word before 160 characters. The 3 distractors are the headword lines of
other test entries of the same source and the same part of speech (WordNet: the first token
of the sense, "n" / "v" / "adj" / "adv"; GCIDE: the exact text after the last "\\, " of the
headword line, e.g. "n. (Bot.)"), so the part of speech gives nothing away. A model answers by
the choice under which the continuation is most likely: argmax_c sum log P(continuation | c + "\\n")
(the prefix's own tokens are not scored). Chance: 25 %. Deterministic (random.Random(SEED));
--per-source N (default 150, the committed task's) draws N entries of each source.
Lines: {"id", "source", "choices": [4 headword lines], "continuation", "answer"}.
"""

import json
import random
import re
import sys

SEP = "\n<|endoftext|>\n"
SEED = 22
N_PER_SOURCE = 150


def cut(s, n=160):
    s = " ".join(s.split())
    if len(s) <= n:
        return s
    return s[:n].rsplit(" ", 1)[0]


def parse(doc):
    lines = doc.split("\n")
    if len(lines) < 2:
        return None
    head = lines[0]
    if "\\" in head and "\\, " in head:                # GCIDE
        pos = head.rsplit("\\, ", 1)[1].strip()
        para = "\n".join(lines[1:]).split("\n\n")[0]
        cont = cut(para)
        src = "gcide"
    elif re.match(r"^(n|v|adj|adv) 1: ", lines[1]):    # WordNet
        pos = lines[1].split(" ", 1)[0]
        body = " ".join(lines[1:])
        body = re.split(r"\[|\s2: ", body)[0]
        cont = cut(body)
        src = "wordnet"
    else:
        return None
    if len(cont) < 20 or not head.strip():
        return None
    return {"source": src, "pos": pos, "head": head, "cont": cont}


def main(src, dst, per_source=N_PER_SOURCE):
    text = open(src, encoding="utf-8", newline="").read()
    entries = [e for e in (parse(d) for d in text.split(SEP)) if e]
    rnd = random.Random(SEED)
    items = []
    for source in ("wordnet", "gcide"):
        pool = [e for e in entries if e["source"] == source]
        by_pos = {}
        for e in pool:
            by_pos.setdefault(e["pos"], []).append(e)
        cands = [e for e in pool if len(by_pos[e["pos"]]) >= 20]
        if per_source > len(cands):
            raise SystemExit(f"{src}: {len(cands)} {source} entries, fewer than {per_source}")
        for e in rnd.sample(cands, per_source):
            others = [o for o in by_pos[e["pos"]] if o["head"] != e["head"]]
            dis = rnd.sample(others, 3)
            choices = [e["head"]] + [o["head"] for o in dis]
            rnd.shuffle(choices)
            items.append({"id": len(items), "source": source, "choices": choices,
                          "continuation": e["cont"], "answer": choices.index(e["head"])})
    with open(dst, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    print(f"{len(items)} items from {len(entries)} parsed entries -> {dst}")
    return 0


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--per-source", type=int, default=N_PER_SOURCE)
    a = ap.parse_args()
    if a.per_source < 1:
        ap.error("--per-source must be >= 1")
    sys.exit(main(a.src, a.dst, a.per_source))
