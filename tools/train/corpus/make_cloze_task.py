"""Continuation cloze from held-out documents of four sources: Bible, Brown, GCIDE, WordNet.

    python3 tools/train/corpus/make_cloze_task.py --test CORPUS/test.txt \\
        --exclude CORPUS/train.txt --exclude CORPUS/val.txt \\
        --genre tools/train/results/scale/genre.jsonl --out tools/train/results/scale/cloze.jsonl

Reading as language modelling: the model reads a passage and continues it; at one point of the
continuation a word that already occurs in the passage is left out, and the model must choose
it among 4 words that all occur in the passage before that point. The item is scored as a
continuation (eval_cloze.py): argmax_c log P(c + rest | context), where "context" is the text
up to the blank and "rest" the text after it to the end of its line (verse, paragraph
sentence, dictionary line), the same for every choice. No question format: the model reads
text of the kinds it was trained on.

Items come only from test.txt (documents joined by "\\n<|endoftext|>\\n"), and each item's
document is checked against the corpus's split rule (build_corpus.split_of of its source and
group: the Bible chapter's title, the Brown file id, the dictionary headword lower-cased): an
item whose document would not be in the test split stops the build. Sources (peft_scale.domain_of
tells them apart; Brown is the "other" documents whose first 60 words are a window-0 prompt of
the Brown genre task (make_genre_task.py, --genre), which gives their file ids):

- bible: a verse of a chapter (not the first) is the target; the context is the verses before
  it (at most MAX_CONTEXT_WORDS words, whole verses, with their numbers); the blank is the
  first occurrence in the target verse of a name (a capitalised word that does not start a
  sentence and is never written in lower case in the held-out text of its source, as in
  make_qa_task.py) that also occurs in the context; the other choices are names of the context
  that occur nowhere in the target verse.
- brown: the same with sentences of a Brown document: the target is a sentence, the context
  the sentences before it (whole sentences, at most MAX_CONTEXT_WORDS words, paragraph breaks
  kept), the rest runs to the end of the target sentence.
- wordnet: an entry (headword line, then senses) whose headword recurs in its body; the blank
  is the last recurrence (in an example or a [syn: {...}] list), the context the entry up to
  it; the other choices are other {braced} terms of the entry before the blank, none of them
  in the rest of the line (in any case).
- gcide: an entry ("Head \\pron\\, pos." then senses and quotations) whose headword recurs in
  its body (any case; the answer is written as it stands there); the blank is the last
  recurrence; the other choices are content words of the context (STOP words and words under 4
  letters left out) in the answer's case form, not in the rest of the line (in any case).
With --exclude (train.txt and val.txt), an item is also left out when its blank with the 80
characters before it (EXCLUDE_CHARS) stands in one of those texts: WordNet gives every member
of a synset an entry with the same senses, so a held-out headword's senses and [syn: ...]
list are often trained on under a synonym's entry (of the other sources, none such was found).
A dictionary entry is used only when its headword's split is "test" (a dictd entry indexed under
another head, whose split the text cannot show, is left out).

Up to PER_DOC[source] items per document (a seeded draw of targets), at most MAX_ITEMS[source]
items per source (a seeded draw of documents). Deterministic: random.Random(seed).

Trivial baselines, written into each line as the index of the choice each rule picks, so a
result can be read against them (choices are shuffled, so ties go to a random choice; words
are matched whole and in any case, so a GCIDE headword "Queer" counts for "queer"):
- chance: 1/4;
- frequent: the choice occurring most often in the context (ties: the earlier choice);
- recent: the choice whose last occurrence in the context is nearest the blank;
- first: the choice occurring first in the context (for a dictionary entry, its headword);
- bigram: the choice that follows, somewhere in the context, the word just before the blank
  (an "induction" copy rule); when none or several do, frequent's pick.
"no_context_prompt" is a line break and the blank's line (verse, sentence or dictionary line)
up to the blank, alone, to measure what a model guesses without reading the passage.
Lines: {"id", "source", "doc", "context", "prompt", "no_context_prompt", "choices": [4],
"rest", "labels": [4] (choice + rest), "answer", "baselines": {rule: index}}; "prompt" ends
where the label's text starts (a label starts with the blank's separator, a space when there
is one), so a score is the sum of the label tokens' logprobs after "prompt".
"""

import argparse
import json
import lzma
import os
import random
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import build_corpus as bc  # noqa: E402
import make_genre_task as mg  # noqa: E402
import make_qa_task as mq  # noqa: E402
from yunmin_train.peft_scale import domain_of  # noqa: E402

SEP = "\n<|endoftext|>\n"
SEED = 22
N_CHOICES = 4
MAX_CONTEXT_WORDS = 120
EXCLUDE_CHARS = 80
SOURCES = ("bible", "brown", "gcide", "wordnet")
PER_DOC = {"bible": 8, "brown": 12, "gcide": 1, "wordnet": 1}
MAX_ITEMS = {"bible": 250, "brown": 250, "gcide": 200, "wordnet": 200}
RULES = ("frequent", "recent", "first", "bigram")
STOP = set("""about above after again against also among another because been before being
below between both cannot could does doing down during each either even every from further
have having here into itself just like made make many more most much must neither only other
otherwise over same shall should some such than that their them then there these they this
those thou thee thus thy unto upon very what when where which while whom whose will with
within without would your""".split())
SENT_RE = re.compile(r"[^.?!]*(?:[.?!]+[\"')\]]*|$)\s*")
WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]")


def wb(word):
    """A regex for word as a whole word (no letter or digit beside it)."""
    return r"(?<![A-Za-z0-9])" + re.escape(word) + r"(?![A-Za-z0-9])"


def count(word, text):
    return len(re.findall(wb(word), text))


def baselines(choices, context, prefix):
    """{rule: index} of the trivial rules (module docstring)."""
    pos = [[m.start() for m in re.finditer(wb(c), context, re.I)] for c in choices]
    n = [len(p) for p in pos]
    if min(n) == 0:
        raise ValueError("a choice is not in the context")
    k = range(len(choices))
    frequent = max(k, key=lambda i: (n[i], -i))
    prev = WORD_RE.findall(prefix)
    follows = []
    if prev:
        for i, c in enumerate(choices):
            if re.search(wb(prev[-1]) + r"[\s{,;:\"'(]*" + re.escape(c) + r"(?![A-Za-z0-9])",
                         context, re.I):
                follows.append(i)
    return {"frequent": frequent, "recent": max(k, key=lambda i: pos[i][-1]),
            "first": min(k, key=lambda i: pos[i][0]),
            "bigram": follows[0] if len(follows) == 1 else frequent}


def make_item(source, doc, context, line_prefix, answer, others, rest, rng):
    """One item: the blank after context (whose last line starts line_prefix), answer and 3 of
    others as choices, in a seeded order; None when others has fewer than 3."""
    if len(others) < N_CHOICES - 1:
        return None
    choices = [answer] + rng.sample(sorted(others), N_CHOICES - 1)
    rng.shuffle(choices)
    full = context
    lead = ""
    if full.endswith(" "):          # the label carries the space, as the tokenizer groups it
        full, lead = full[:-1], " "
    short = "\n" + (line_prefix[:-1] if lead else line_prefix)
    return {"source": source, "doc": doc, "context": context, "prompt": full,
            "no_context_prompt": short, "choices": choices, "rest": rest,
            "labels": [lead + c + rest for c in choices], "answer": choices.index(answer),
            "baselines": baselines(choices, context, line_prefix)}


# ----- names (Bible, Brown) -----------------------------------------------------------------

def names(text, lower):
    """(start, name) of the capitalised words of text that do not start a sentence and are
    not in lower (make_qa_task.candidates), whole words only ("Eq" of "mEq" is none)."""
    return [(s, w) for s, w in mq.candidates(text, lower)
            if s == 0 or not text[s - 1].isalnum()]


def unit_items(source, doc, units, lower, rng, per_doc):
    """Items from a document split into units (verses or sentences): unit i is the target, the
    units before it (whole, at most MAX_CONTEXT_WORDS words) the context. units: list of
    (text, joiner) where joiner is the text put before the unit ("\\n" or " ")."""
    order = list(range(1, len(units)))
    rng.shuffle(order)
    out = []
    for i in order:
        if len(out) == per_doc:
            break
        lo, n = i, 0
        while lo > 0 and n + len(units[lo - 1][0].split()) <= MAX_CONTEXT_WORDS:
            lo -= 1
            n += len(units[lo][0].split())
        if lo == i:
            continue
        ctx = units[lo][0] + "".join(j + t for t, j in units[lo + 1:i])
        target, joiner = units[i]
        body = target.split(" ", 1)[1] if source == "bible" else target
        skip = len(target) - len(body)
        in_target = {w for _, w in names(body, lower)}
        ctx_names = {w for _, w in names(ctx, lower)}
        blanks = [(s + skip, w) for s, w in names(body, lower) if w in ctx_names]
        if not blanks:
            continue
        seen = set()
        firsts = []
        for s, w in blanks:
            if w not in seen and not re.search(wb(w), target[:s]):
                firsts.append((s, w))
            seen.add(w)
        if not firsts:
            continue
        s, w = rng.choice(firsts)
        others = ctx_names - in_target
        prefix = target[:s]
        rest = target[s + len(w):]
        it = make_item(source, doc, ctx + joiner + prefix, prefix, w, others, rest, rng)
        if it is not None:
            out.append(it)
    return out


def bible_docs(docs):
    out = []
    for d in docs:
        lines = d.split("\n")
        if len(lines) < 4 or lines[1] != "" or not all(mq.VERSE_RE.match(x) for x in lines[2:]):
            continue
        out.append((lines[0], [(x, "\n") for x in lines[2:]]))
    return out


def brown_units(text):
    """(sentence, joiner) of a Brown document, sentences as they stand in the text; joiner is
    the text between a sentence and the one before it ("\\n" between paragraphs)."""
    units = []
    for par in text.split("\n"):
        prev = None
        for m in SENT_RE.finditer(par):
            s = m.group().strip()
            if not s:
                continue
            start = m.start() + len(m.group()) - len(m.group().lstrip())
            units.append((s, "\n" + par[:start] if prev is None else par[prev:start]))
            prev = start + len(s)
    return units


def lower_words(texts):
    return {w for t in texts for w in re.findall(r"\b[a-z]+\b", t)}


# ----- dictionaries -------------------------------------------------------------------------

def wordnet_item(doc, rng):
    head, body = doc.split("\n", 1)
    hits = list(re.finditer(wb(head), body))
    if not hits:
        return None
    m = hits[-1]
    start = len(head) + 1 + m.start()
    context = doc[:start]
    line_start = context.rfind("\n") + 1
    end = doc.find("\n", start)
    end = len(doc) if end < 0 else end
    rest = doc[start + len(head):end]
    terms = {t for t in re.findall(r"\{([^{}]+)\}", context) if t.lower() != head.lower()}
    others = {t for t in terms if not re.search(wb(t), rest, re.I) and re.search(wb(t), context)}
    return make_item("wordnet", head, context, context[line_start:], head, others, rest, rng)


def gcide_head(doc):
    m = re.match(r"([^\n\\]+?) \\", doc)
    return m.group(1) if m else None


def gcide_item(doc, rng):
    head = gcide_head(doc)
    if head is None or " " in head:
        return None
    first = doc.find("\n")
    if first < 0:
        return None
    hits = list(re.finditer(wb(head), doc[first:], re.I))
    if not hits:
        return None
    m = hits[-1]
    start, ans = first + m.start(), m.group()
    context = doc[:start]
    line_start = context.rfind("\n") + 1
    end = doc.find("\n", start)
    end = len(doc) if end < 0 else end
    rest = doc[start + len(ans):end]
    form = str.istitle if ans[0].isupper() else str.islower
    words = {w for w in WORD_RE.findall(context[first:]) if len(w) >= 4 and form(w)
             and w.lower() not in STOP and w.lower() != ans.lower() and "'" not in w}
    others = {w for w in words if not re.search(wb(w), rest, re.I)}
    words_ok = {w for w in others if re.search(wb(w), context)}
    return make_item("gcide", head, context, context[line_start:], ans, words_ok, rest, rng)


# ----- the whole task -----------------------------------------------------------------------

def brown_ids(genre_items):
    """{first 60 words: Brown file id} of the genre task's window-0 items."""
    out = {}
    for it in genre_items:
        if it.get("window") == 0:
            out[it["prompt"][:-len(mg.SUFFIX)]] = it["doc"]
    return out


def group_of(source, doc):
    return doc if source in ("bible", "brown") else doc.lower()


def seen_in(it, exclude):
    """Whether the item's blank, with the EXCLUDE_CHARS characters before it, stands in one of
    the texts of exclude (the answer's text was trained on under another document)."""
    s = it["prompt"][-EXCLUDE_CHARS:] + it["labels"][it["answer"]]
    return any(s in t for t in exclude)


def build(test_text, genre_items, seed=SEED, max_items=None, exclude=()):
    """The items (module docstring) from test_text; genre_items: the genre task's items (for
    the Brown file ids); exclude: texts (train.txt, val.txt) whose passages an item must not
    repeat (seen_in). Stops (SystemExit) if an item's document is not in the test split."""
    max_items = dict(MAX_ITEMS, **(max_items or {}))
    rng = random.Random(seed)
    docs = [d for d in test_text.rstrip("\n").split(SEP) if d.strip()]
    by = {s: [] for s in SOURCES}
    ids = brown_ids(genre_items)
    for d in docs:
        dom = domain_of(d)
        if dom == "other":
            fid = ids.get(" ".join(d.split()[:mg.N_WORDS]))
            if fid is not None:
                by["brown"].append((fid, d))
        elif dom in by:
            by[dom].append(d)
    items = []
    bible = bible_docs(by["bible"])
    lower_b = lower_words(t for _, us in bible for t, _ in us)
    lower_r = lower_words(d for _, d in by["brown"])
    for source in SOURCES:
        got = []
        if source == "bible":
            pool = [(title, us) for title, us in bible]
        elif source == "brown":
            pool = [(fid, brown_units(d)) for fid, d in by["brown"]]
        else:
            pool = list(by[source])
        rng.shuffle(pool)
        for entry in pool:
            if len(got) >= max_items[source]:
                break
            if source in ("bible", "brown"):
                doc, units = entry
                lower = lower_b if source == "bible" else lower_r
                new = unit_items(source, doc, units, lower, rng, PER_DOC[source])
            else:
                it = (wordnet_item if source == "wordnet" else gcide_item)(entry, rng)
                # a dictd entry may be indexed under another head than its first word: keep
                # only those whose headword's split can be checked (below)
                new = [it] if it is not None and bc.split_of(
                    source, group_of(source, it["doc"])) == "test" else []
            new = [it for it in new if not seen_in(it, exclude)]
            got.extend(new[:max_items[source] - len(got)])
        items.extend(got)
    for k, it in enumerate(items):
        it["id"] = k
        if bc.split_of(it["source"], group_of(it["source"], it["doc"])) != "test":
            raise SystemExit(f"{it['source']} document {it['doc']!r} is not in the test split")
        if it["prompt"] + it["labels"][it["answer"]] not in test_text:
            raise SystemExit(f"item {k}: its text is not in the test split")
    return [dict(id=it.pop("id"), **it) for it in items]


def summary(items):
    """{source: {n_items, n_docs, chance, rule: accuracy}} and the same over all items."""
    out = {}
    for s in [*SOURCES, "all"]:
        its = [it for it in items if s in ("all", it["source"])]
        if not its:
            continue
        row = {"n_items": len(its), "n_docs": len({(it["source"], it["doc"]) for it in its}),
               "chance": 1 / N_CHOICES}
        for r in RULES:
            row[r] = sum(it["baselines"][r] == it["answer"] for it in its) / len(its)
        out[s] = row
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--test", required=True, help="the corpus's test.txt")
    ap.add_argument("--genre", required=True, help="the Brown genre task (its Brown file ids)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--exclude", action="append", default=[],
                    help="train.txt / val.txt (or .xz): drop an item whose passage they repeat")
    a = ap.parse_args(argv)
    try:
        test_text = open(a.test, encoding="utf-8", newline="").read()
        genre = [json.loads(line) for line in open(a.genre, encoding="utf-8") if line.strip()]
        exclude = [(lzma.open if x.endswith(".xz") else open)(x, "rt", encoding="utf-8").read()
                   for x in a.exclude]
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SystemExit(f"cannot read the inputs ({e.__class__.__name__}: {e})")
    items = build(test_text, genre, a.seed, exclude=exclude)
    if not items:
        raise SystemExit(f"{a.test}: no held-out document gives an item")
    with open(a.out, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    print(f"{len(items)} items -> {a.out}")
    for s, row in summary(items).items():
        print(f"  {s:8s} " + " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
