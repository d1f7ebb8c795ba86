"""The continuation cloze task (tools/train/corpus/make_cloze_task.py): items only from
held-out documents of the four sources (a document outside the test split stops the build, a
dictionary entry whose headword is not in the test split is left out), deterministic for a
seed, every choice in the text before the blank, exactly the answer restoring the text, and
the trivial rules computed as documented, and an item whose passage stands in the training
text left out. Runs in about a second, without the model; with CLOZE_TEST_TXT set to the
corpus's test.txt and CLOZE_EXCLUDE to its train.txt and val.txt (separated by ":"; .xz is
read) it also rebuilds the committed task and compares."""

import json
import os
import re
import sys

import pytest

from corpus_docs import CORPUS_DIR, NAMES, SCALE, SEP, chapter, split
import eval_genre as eg  # noqa: E402
import make_cloze_task as mc  # noqa: E402


def brown_doc(n_pars):
    pars = []
    for p in range(n_pars):
        s = []
        for k in range(4):
            a, b = NAMES[(p + k) % len(NAMES)], NAMES[(2 * p + 3 * k + 1) % len(NAMES)]
            s.append(f"Later that day the man called {a} met {b} near the gate of the town.")
        pars.append(" ".join(s))
    return "\n".join(pars)


WORDNET = ("fennel\nn 1: aromatic bulbous stem base eaten cooked or raw in salads\n"
           "[syn: {Florence fennel}, {finocchio}]\n2: any of several aromatic herbs having "
           "edible seeds and\nleaves and stems [syn: {sweet anise}, {anise}, {fennel}]")
WORDNET_TRAIN = ("tent\nn 1: a portable shelter [syn: {collapsible shelter}, {canvas},\n"
                 "{pavilion}, {tent}]")
GCIDE = ("Lamp \\Lamp\\, n.\n1. A light-producing vessel; a vessel holding oil and a wick\n"
         "for burning.\n\n2. Figuratively, anything which enlightens; as, the lamp of "
         "knowledge.")
GCIDE_TRAIN = "Tent \\Tent\\, n.\n1. A portable shelter of canvas; as, the tent of skins."
LINUX = "==========\nA driver\n==========\n\nThe driver called Caleb binds Abner to Dathan."


def fake(extra=()):
    brown = brown_doc(6)
    docs = [WORDNET, chapter("Numbers 7", 14, 0), LINUX, GCIDE, brown, WORDNET_TRAIN,
            GCIDE_TRAIN, chapter("Luke 10", 12, 5), *extra]
    genre = [{"doc": "cb19", "window": 0,
              "prompt": " ".join(brown.split()[:60]) + "\nGenre:"},
             {"doc": "cb19", "window": 1, "prompt": "not a document start\nGenre:"}]
    return SEP.join(docs) + "\n", genre


def whole(word, text):
    return re.findall(r"(?<![A-Za-z0-9])" + re.escape(word) + r"(?![A-Za-z0-9])", text, re.I)


def check_item(it, text=None):
    ch, lab, ans = it["choices"], it["labels"], it["answer"]
    assert len(ch) == 4 and len(set(ch)) == 4 and 0 <= ans < 4
    lead = " " if lab[0].startswith(" " + ch[0]) else ""
    assert lab == [lead + c + it["rest"] for c in ch]
    assert it["prompt"] + lead == it["context"]
    for c in ch:                        # every choice stands in the text before the blank
        assert whole(c, it["context"]), c
    for k, c in enumerate(ch):          # no other choice is in the text after the blank
        if k != ans:
            assert not whole(c, it["rest"]), c
    line = it["no_context_prompt"]
    assert line.startswith("\n") and it["prompt"].endswith(line[1:])
    count = [len(whole(c, it["context"])) for c in ch]
    b = it["baselines"]
    assert set(b) == set(mc.RULES)
    assert count[b["frequent"]] == max(count)
    first = [whole_pos(c, it["context"])[0] for c in ch]
    last = [whole_pos(c, it["context"])[-1] for c in ch]
    assert first[b["first"]] == min(first) and last[b["recent"]] == max(last)
    if text is not None:                # the answer gives back the held-out text
        assert it["prompt"] + lab[ans] in text


def whole_pos(word, text):
    return [m.start() for m in re.finditer(r"(?<![A-Za-z0-9])" + re.escape(word)
                                           + r"(?![A-Za-z0-9])", text, re.I)]


def test_items_from_the_test_documents_of_each_source_and_deterministic():
    text, genre = fake()
    items = mc.build(text, genre)
    by = {s: [it for it in items if it["source"] == s] for s in mc.SOURCES}
    assert all(by.values()), {s: len(v) for s, v in by.items()}
    assert {it["doc"] for it in by["bible"]} <= {"Numbers 7", "Luke 10"}
    assert {it["doc"] for it in by["brown"]} == {"cb19"}
    assert [it["doc"] for it in by["wordnet"]] == ["fennel"]
    assert [it["doc"] for it in by["gcide"]] == ["Lamp"]
    assert [it["id"] for it in items] == list(range(len(items)))
    for it in items:
        check_item(it, text)
        assert split(it["source"], it["doc"] if it["source"] in ("bible", "brown")
                     else it["doc"].lower()) == "test"
    wn = by["wordnet"][0]
    assert wn["choices"][wn["answer"]] == "fennel" and wn["rest"] == "}]"
    assert set(wn["choices"]) <= {"fennel", "Florence fennel", "finocchio", "sweet anise",
                                  "anise"}
    gc = by["gcide"][0]
    assert gc["choices"][gc["answer"]] == "lamp"
    assert all(c.islower() for c in gc["choices"])
    assert json.dumps(mc.build(text, genre)) == json.dumps(items)
    assert json.dumps(mc.build(text, genre, seed=mc.SEED + 1)) != json.dumps(items)


def test_a_document_outside_the_test_split_stops_the_build():
    assert split("bible", "Numbers 1") == "train"
    text, genre = fake([chapter("Numbers 1", 14, 3)])
    with pytest.raises(SystemExit, match="'Numbers 1' is not in the test split"):
        mc.build(text, genre)


def test_an_item_whose_passage_was_trained_on_is_left_out():
    text, genre = fake()
    items = mc.build(text, genre)
    wn = [it for it in items if it["source"] == "wordnet"]
    assert len(wn) == 1
    # the same senses under a synonym's headword, as WordNet writes them, in the training text
    train = "finocchio\n" + WORDNET.split("\n", 1)[1]
    kept = mc.build(text, genre, exclude=[train])
    assert [it for it in kept if it["source"] == "wordnet"] == []
    assert [it for it in kept if it["source"] != "wordnet"] == \
        [dict(it, id=k) for k, it in enumerate(i for i in items if i["source"] != "wordnet")]
    assert mc.build(text, genre, exclude=["unrelated training text"]) == items


def test_baselines():
    ctx = "Abner saw Caleb. Then Dathan and Caleb came to Eliab, and Abner went unto Dathan."
    b = mc.baselines(["Abner", "Caleb", "Dathan", "Eliab"], ctx + " Later he went unto",
                     "Later he went unto")
    # counts 2, 2, 2, 1: the first of the most frequent; Dathan is nearest; Abner first;
    # "unto" is followed by Dathan once
    assert b == {"frequent": 0, "recent": 2, "first": 0, "bigram": 2}
    b = mc.baselines(["Eliab", "Caleb"], ctx + " Then", "Then")   # "Then Dathan": no choice
    assert b["bigram"] == b["frequent"] == 1
    with pytest.raises(ValueError):
        mc.baselines(["Abner", "Mizpah"], ctx, "")


def test_committed_cloze_items():
    items = eg.load_task(os.path.join(SCALE, "cloze.jsonl"),
                         ("prompt", "no_context_prompt", "labels", "answer", "source",
                          "baselines"))
    assert len(items) >= 600
    assert [it["id"] for it in items] == list(range(len(items)))
    for s in mc.SOURCES:
        assert sum(it["source"] == s for it in items) >= 100, s
    for it in items:
        group = it["doc"] if it["source"] in ("bible", "brown") else it["doc"].lower()
        assert split(it["source"], group) == "test", (it["source"], it["doc"])
        check_item(it)
    pos = [it["answer"] for it in items]
    assert all(pos.count(k) > len(items) // 8 for k in range(4))
    assert len({(it["prompt"], it["rest"]) for it in items}) == len(items)


@pytest.mark.skipif(not os.environ.get("CLOZE_TEST_TXT"), reason="CLOZE_TEST_TXT not set")
def test_rebuild_matches_the_committed_task():
    text = open(os.environ["CLOZE_TEST_TXT"], encoding="utf-8", newline="").read()
    genre = [json.loads(line) for line in open(os.path.join(SCALE, "genre.jsonl"))]
    exclude = [mc.lzma.open(x, "rt", encoding="utf-8").read() if x.endswith(".xz")
               else open(x, encoding="utf-8").read()
               for x in os.environ.get("CLOZE_EXCLUDE", "").split(":") if x]
    items = mc.build(text, genre, exclude=exclude)
    with open(os.path.join(SCALE, "cloze.jsonl"), encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == items
    for it in items:
        check_item(it, text)


def test_eval_cloze_refuses_a_malformed_task_file_with_one_line(tmp_path):
    import subprocess
    path = tmp_path / "task.jsonl"
    path.write_text("{\"prompt\": \"p\", \"labels\": [\"a\", \"b\"], \"answer\": 0}\n")
    r = subprocess.run([sys.executable, os.path.join(CORPUS_DIR, "eval_cloze.py"), "--yunmind",
                        "/nonexistent", "--model", "/nonexistent", "--task", str(path),
                        "--out", str(tmp_path / "out.json")], capture_output=True, text=True)
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and "task.jsonl:1: an item needs the keys" in r.stderr
    assert not (tmp_path / "out.json").exists()
