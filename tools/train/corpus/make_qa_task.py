"""QA task from the corpus's held-out Bible chapters: a passage, a question, 4 names to choose from.

    python3 tools/train/corpus/make_qa_task.py --test CORPUS/test.txt \\
        --out tools/train/results/scale/qa.jsonl

Reading comprehension as a cloze question. Items come only from the King James Bible chapters
of test.txt (documents joined by "\\n<|endoftext|>\\n"; a chapter is a document whose first line
is its title, e.g. "Romans 7", followed by a blank line and numbered verses); no test document
was trained on. Per chapter up to PER_CHAPTER items, each built from a seeded draw:

- passage: consecutive verses of the chapter, as they stand in the corpus ("12 And Moses ..."),
  at most MAX_WORDS words, holding the question's verse;
- candidates: the passage's names: capitalised words (CAND_RE) that do not start a sentence
  and whose lower-case form is no word of any held-out chapter (so "Behold" after "saying,",
  "Friend" or "God" ("gods") are not names; "Moses", "Israel", "Jerusalem" are); the passage
  must hold at least 4 distinct ones;
- question: the text of one verse of the passage (its number dropped) with one occurrence of a
  candidate replaced by "___"; "Which name fills the blank?" asks for it;
- choices: the blanked word and 3 other candidates of the passage that do not occur in the
  question's verse, in a seeded order; exactly one choice rebuilds a sentence of the passage.

The prompt is the passage, a blank line, "Question: Which name fills the blank? <question>",
and "\\nAnswer:"; a model answers by the choice whose tokens " <choice>" are most likely after
it (argmax_c sum log P(" c" | prompt), as eval_genre.py scores labels). So the answer is in the
text the model reads (the verse is quoted with a hole) and the model must find it there.
Baselines, written into every line so a result can be read: chance 1/4, and "frequent": the
choice that occurs most often in the passage (ties: the one occurring first). The line also
holds "no_passage_prompt", the question without the passage, to measure what the model
guesses without reading. Deterministic (random.Random(SEED)).
Lines: {"id", "doc", "verse", "passage", "question", "prompt", "no_passage_prompt",
"labels": [4], "answer", "frequent"}.
"""

import argparse
import json
import random
import re
import sys

SEP = "\n<|endoftext|>\n"
SEED = 22
PER_CHAPTER = 12
MAX_WORDS = 120
N_CHOICES = 4
TITLE_RE = re.compile(r"^([1-3]?\s?[A-Z][A-Za-z ]+?) (\d+)$")     # build_corpus._CHAPTER
VERSE_RE = re.compile(r"^(\d+) (.+)$")
CAND_RE = re.compile(r"[A-Z][A-Za-z]+")
QUESTION = "Question: Which name fills the blank? "
ANSWER = "\nAnswer:"


def chapters(test_text):
    """(title, [(number, text)]) of every Bible chapter document of test_text."""
    out = []
    for doc in test_text.rstrip("\n").split(SEP):
        lines = doc.split("\n")
        if len(lines) < 3 or not TITLE_RE.match(lines[0]) or lines[1] != "":
            continue
        verses = [VERSE_RE.match(l) for l in lines[2:]]
        if not verses or not all(verses) or int(verses[0].group(1)) != 1:
            continue
        out.append((lines[0], [(int(v.group(1)), v.group(2)) for v in verses]))
    return out


def lower_words(chs):
    """Every word written in lower case somewhere in the chapters."""
    return {w for _, verses in chs for _, t in verses for w in re.findall(r"\b[a-z]+\b", t)}


def candidates(text, lower):
    """(start, word) of the names in text: capitalised words that do not start a sentence
    and are not in lower (lower_words) once lower-cased."""
    out = []
    for m in CAND_RE.finditer(text):
        before = text[:m.start()].rstrip(" (")
        if before == "" or before[-1] in ".?!" or m.group().lower() in lower:
            continue
        out.append((m.start(), m.group()))
    return out


def passage_around(verses, i, rng):
    """Consecutive verses holding verses[i], at most MAX_WORDS words, or None."""
    lo = hi = i
    n = len(verses[i][1].split())
    if n > MAX_WORDS // 2:
        return None
    while True:
        grow = []
        if lo > 0 and n + len(verses[lo - 1][1].split()) <= MAX_WORDS:
            grow.append(-1)
        if hi + 1 < len(verses) and n + len(verses[hi + 1][1].split()) <= MAX_WORDS:
            grow.append(1)
        if not grow:
            break
        if rng.choice(grow) < 0:
            lo -= 1
            n += len(verses[lo][1].split())
        else:
            hi += 1
            n += len(verses[hi][1].split())
    return lo, hi


def make_item(title, verses, i, rng, lower):
    span = passage_around(verses, i, rng)
    if span is None:
        return None
    lo, hi = span
    lines = [f"{num} {text}" for num, text in verses[lo:hi + 1]]
    passage = "\n".join(lines)
    words = []
    for line in lines:
        for _, w in candidates(line.split(" ", 1)[1], lower):
            if w not in words:
                words.append(w)
    verse = verses[i][1]
    in_verse = candidates(verse, lower)
    blanks = [(s, w) for s, w in in_verse]
    others = [w for w in words if w not in {w for _, w in in_verse}]
    if not blanks or len(others) < N_CHOICES - 1:
        return None
    start, answer = rng.choice(blanks)
    question = verse[:start] + "___" + verse[start + len(answer):]
    labels = [answer] + rng.sample(others, N_CHOICES - 1)
    rng.shuffle(labels)
    body = passage.split("\n")
    texts = {l.split(" ", 1)[1] for l in body}
    if sum(question.replace("___", c, 1) in texts for c in labels) != 1:
        return None
    count = {c: sum(len(re.findall(r"\b" + re.escape(c) + r"\b", l.split(" ", 1)[1]))
                    for l in body) for c in labels}
    first = {c: passage.find(c) for c in labels}
    frequent = max(range(N_CHOICES), key=lambda k: (count[labels[k]], -first[labels[k]]))
    q = QUESTION + question + ANSWER
    return {"doc": title, "verse": verses[i][0], "passage": passage, "question": question,
            "prompt": passage + "\n\n" + q, "no_passage_prompt": q, "labels": labels,
            "answer": labels.index(answer), "frequent": frequent}


def build(test_text, seed=SEED, per_chapter=PER_CHAPTER):
    rng = random.Random(seed)
    items = []
    chs = chapters(test_text)
    lower = lower_words(chs)
    for title, verses in chs:
        order = list(range(len(verses)))
        rng.shuffle(order)
        got = 0
        for i in order:
            if got == per_chapter:
                break
            it = make_item(title, verses, i, rng, lower)
            if it is not None:
                items.append(dict(id=len(items), **it))
                got += 1
    return items


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--test", required=True, help="the corpus's test.txt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=SEED)
    a = ap.parse_args(argv)
    test_text = open(a.test, encoding="utf-8", newline="").read()
    items = build(test_text, a.seed)
    if not items:
        raise SystemExit(f"{a.test}: no Bible chapter gives an item")
    with open(a.out, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    n_docs = len({it["doc"] for it in items})
    freq = sum(it["frequent"] == it["answer"] for it in items) / len(items)
    print(f"{len(items)} items from {n_docs} held-out Bible chapters -> {a.out} "
          f"(frequent-choice baseline {freq:.3f}, chance {1 / N_CHOICES:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
