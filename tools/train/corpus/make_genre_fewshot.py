"""The Brown genre task with K labelled examples from training documents before each window.

    python3 tools/train/corpus/make_genre_fewshot.py --task tools/train/results/scale/genre.jsonl \\
        --train CORPUS/train.txt --train-docs CORPUS/train.docs.tsv --test CORPUS/test.txt \\
        --shots 3 --out tools/train/results/scale/genre_fewshot_k3.jsonl

The items are those of make_genre_task.py (held-out Brown windows, 15 labels); only the prompt
changes. Shots come from the TRAIN split only: the Brown documents of train.txt, found by their
domain "brown/<genre>" and character span in train.docs.tsv; a shot is the first SHOT_WORDS
words of such a document (make_genre_task.windows) and its label, written as
"<words>\\nGenre: <label>"; shots are joined by a blank line and followed by a blank line and
the item's own prompt ("<window>\\nGenre:"). A shot whose words occur in test.txt stops the
script (no held-out text may serve as an example).

N_SETS shot sets are drawn with random.Random(SEED): each holds MAX_SHOTS shots of distinct
genres, drawn uniformly from the 15 whatever the item, so the shots never rule a label out (a
set that left out the answer's genre would tell the model what the answer is not); item i uses
set i % N_SETS, its first K shots (the K = 3 shots are the first 3 of the K = 5 ones). Whether
the answer's genre is among an item's shots is recorded ("answer_in_shots"). Each line also
holds "prior_prompt": the same shots followed by the content-free "N/A" in place of a window
(Zhao et al. 2021, "Calibrate before use"), whose label scores eval_genre.py subtracts for the
calibrated score. Shots are shorter than the item's window (SHOT_WORDS = 30 against 60) so that
K = 3 stays near the 256 tokens the corpus model was trained on (247 tokens on average with a
label, at most 287); K = 5 (356, at most 409) goes beyond it.
Lines: the genre.jsonl fields plus {"shots": [{"doc", "genre"}], "answer_in_shots",
"prior_prompt"}, with "prompt" replaced.
"""

import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval_genre as eg  # noqa: E402
import make_genre_task as mg  # noqa: E402

SEED = 22
N_SETS = 6
MAX_SHOTS = 5
SHOT_WORDS = 30
NULL_WINDOW = "N/A"


def train_brown(train_text, docs_tsv):
    """{genre: [(doc id, text)]} of the Brown documents of the train split, in file order."""
    out = {}
    lines = docs_tsv.rstrip("\n").split("\n")
    head = lines[0].split("\t")
    if head[:6] != ["index", "source", "domain", "id", "char_start", "char_len"]:
        raise SystemExit("train.docs.tsv: unexpected header")
    for line in lines[1:]:
        _, source, domain, did, start, length = line.split("\t")[:6]
        if source != "brown":
            continue
        genre = domain.split("/", 1)[1]
        if genre not in mg.GENRES:
            raise SystemExit(f"brown {did}: unknown genre {genre}")
        out.setdefault(genre, []).append((did, train_text[int(start):int(start) + int(length)]))
    return out


def shot_sets(brown, test_text, seed=SEED):
    rng = random.Random(seed)
    sets = []
    for _ in range(N_SETS):
        shots = []
        for genre in rng.sample([g for g in mg.GENRES if g in brown], MAX_SHOTS):
            did, text = rng.choice(brown[genre])
            w = mg.windows(text, SHOT_WORDS, 1)
            if not w:
                raise SystemExit(f"brown {did}: shorter than {SHOT_WORDS} words")
            if w[0] in test_text:
                raise SystemExit(f"brown {did}: its shot occurs in the test split")
            shots.append({"doc": did, "genre": genre,
                          "text": w[0] + mg.SUFFIX + " " + mg.LABELS[mg.GENRES.index(genre)]})
        sets.append(shots)
    return sets


def build(items, sets, k):
    out = []
    for i, it in enumerate(items):
        shots = sets[i % len(sets)][:k]
        head = "".join(s["text"] + "\n\n" for s in shots)
        out.append(dict(it, prompt=head + it["prompt"], prior_prompt=head + NULL_WINDOW + mg.SUFFIX,
                        shots=[{"doc": s["doc"], "genre": s["genre"]} for s in shots],
                        answer_in_shots=it["genre"] in {s["genre"] for s in shots}))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", required=True, help="genre.jsonl of make_genre_task.py")
    ap.add_argument("--train", required=True, help="the corpus's train.txt")
    ap.add_argument("--train-docs", required=True, help="its train.docs.tsv")
    ap.add_argument("--test", required=True, help="the corpus's test.txt")
    ap.add_argument("--shots", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if not 0 <= a.shots <= MAX_SHOTS:
        raise SystemExit(f"--shots: 0 to {MAX_SHOTS}")
    items = eg.load_task(a.task, ("prompt", "labels", "answer", "genre", "doc"))
    train_text = open(a.train, encoding="utf-8", newline="").read()
    docs_tsv = open(a.train_docs, encoding="utf-8").read()
    test_text = open(a.test, encoding="utf-8", newline="").read()
    out = build(items, shot_sets(train_brown(train_text, docs_tsv), test_text), a.shots)
    with open(a.out, "w", encoding="utf-8") as f:
        for it in out:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    n_in = sum(it["answer_in_shots"] for it in out)
    print(f"{len(out)} items, {a.shots} shots each, answer's genre among the shots in {n_in} "
          f"-> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
