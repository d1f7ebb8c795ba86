"""The QA task (tools/train/corpus/make_qa_task.py), the few-shot genre task
(make_genre_fewshot.py) and the task-file reader of the scoring scripts (eval_genre.load_task):
items only from held-out documents, shots only from training documents, deterministic, exactly
one correct choice per item, and a malformed task file refused with one line. Runs in about a
second, without the model or the corpus."""

import json
import os
import re
import subprocess
import sys

import pytest

from corpus_docs import CORPUS_DIR, SCALE, SEP, chapter, split
import eval_genre as eg  # noqa: E402
import make_genre_fewshot as mf  # noqa: E402
import make_qa_task as mq  # noqa: E402


def fake_test_text():
    docs = ["dog\nn 1: a domestic animal [syn: {Dog}]", chapter("Numbers 3", 14, 0),
            "Some Brown text. It Says Capitalised Words.", chapter("Luke 9", 12, 5)]
    return SEP.join(docs) + "\n"


def verse_texts(passage):
    return {line.split(" ", 1)[1] for line in passage.split("\n")}


def check_qa_item(it):
    labels = it["labels"]
    assert len(labels) == 4 and len(set(labels)) == 4
    assert it["question"].count("___") == 1
    # exactly one choice fills the blank back into a verse of the passage
    fits = [c for c in labels if it["question"].replace("___", c) in verse_texts(it["passage"])]
    assert fits == [labels[it["answer"]]]
    for c in labels:                                  # every choice is a word of the passage
        assert re.search(r"\b" + re.escape(c) + r"\b", it["passage"])
    assert it["prompt"] == it["passage"] + "\n\n" + it["no_passage_prompt"]
    assert it["no_passage_prompt"] == mq.QUESTION + it["question"] + mq.ANSWER
    count = [len(re.findall(r"\b" + re.escape(c) + r"\b", it["passage"])) for c in labels]
    assert count[it["frequent"]] == max(count)
    assert len(it["passage"].split()) <= mq.MAX_WORDS + it["passage"].count("\n") + 1


def test_qa_items_come_from_the_test_chapters_and_are_deterministic():
    text = fake_test_text()
    items = mq.build(text)
    assert len(items) > 5
    assert {it["doc"] for it in items} <= {"Numbers 3", "Luke 9"}
    lines = set(text.split("\n"))
    for it in items:
        check_qa_item(it)
        assert set(it["passage"].split("\n")) <= lines
    assert json.dumps(mq.build(text)) == json.dumps(items)
    assert json.dumps(mq.build(text, seed=mq.SEED + 1)) != json.dumps(items)


def test_qa_candidates_are_names_not_sentence_starts():
    lower = {"behold", "god"}
    got = [w for _, w in mq.candidates("And Moses said, Behold, God is in Egypt. Then Aaron "
                                       "came", lower)]
    assert got == ["Moses", "Egypt", "Aaron"]         # not "And", "Behold", "God", "Then"


def test_committed_qa_items():
    items = eg.load_task(os.path.join(SCALE, "qa.jsonl"),
                         ("prompt", "no_passage_prompt", "labels", "answer", "frequent"))
    assert 150 <= len(items) <= 400
    assert [it["id"] for it in items] == list(range(len(items)))
    for it in items:
        assert split("bible", it["doc"]) == "test", it["doc"]
        check_qa_item(it)
    assert len({(it["doc"], it["verse"]) for it in items}) == len(items)
    # the answer's position is not a constant
    pos = [it["answer"] for it in items]
    assert all(pos.count(k) > len(items) // 8 for k in range(4))


def fake_train(tmp_path):
    """train.txt and train.docs.tsv with two Brown documents per genre and one other."""
    docs, rows = [], []
    pos = 0
    for k, genre in enumerate(["", *mf.mg.GENRES, *mf.mg.GENRES]):
        src, dom = ("gcide", "dictionary/gcide") if not genre else ("brown", f"brown/{genre}")
        did = f"x{k}" if not genre else f"c{genre[:2]}{k:02d}"
        text = " ".join(f"{did}w{i}" for i in range(80))
        rows.append(f"{len(docs)}\t{src}\t{dom}\t{did}\t{pos}\t{len(text)}")
        docs.append(text)
        pos += len(text) + len(SEP)
    (tmp_path / "train.txt").write_text(SEP.join(docs) + "\n")
    (tmp_path / "train.docs.tsv").write_text(
        "index\tsource\tdomain\tid\tchar_start\tchar_len\n" + "\n".join(rows) + "\n")
    return SEP.join(docs) + "\n", (tmp_path / "train.docs.tsv").read_text()


def genre_items():
    return [{"id": i, "doc": f"cz{i // 3}", "genre": g, "window": i % 3,
             "prompt": f"test window {i}" + mf.mg.SUFFIX, "labels": mf.mg.LABELS,
             "answer": mf.mg.GENRES.index(g)}
            for i, g in enumerate(mf.mg.GENRES[:8])]


def test_fewshot_shots_come_from_train_brown_documents(tmp_path):
    train_text, tsv = fake_train(tmp_path)
    brown = mf.train_brown(train_text, tsv)
    assert sorted(brown) == sorted(mf.mg.GENRES)
    assert all(len(v) == 2 for v in brown.values())
    sets = mf.shot_sets(brown, "held-out text")
    items = genre_items()
    for k in (0, 3, 5):
        out = mf.build(items, sets, k)
        for i, (it, orig) in enumerate(zip(out, items)):
            assert len(it["shots"]) == k
            assert len({s["genre"] for s in it["shots"]}) == k
            assert it["prompt"].endswith("\n\n" + orig["prompt"] if k else orig["prompt"])
            assert it["prior_prompt"].endswith(mf.NULL_WINDOW + mf.mg.SUFFIX)
            assert it["answer"] == orig["answer"] and it["labels"] == orig["labels"]
            assert it["answer_in_shots"] == (it["genre"] in {s["genre"] for s in it["shots"]})
            for s in it["shots"]:
                text = dict(brown[s["genre"]])[s["doc"]]
                words = " ".join(text.split()[:mf.SHOT_WORDS])
                assert words + mf.mg.SUFFIX + " " + mf.mg.LABELS[mf.mg.GENRES.index(s["genre"])] \
                    in it["prompt"]
            if k == 3:       # the first 3 shots of the 5-shot prompt
                five = mf.build(items, sets, 5)[i]
                assert five["shots"][:3] == it["shots"]
    assert json.dumps(mf.shot_sets(brown, "held-out text")) == json.dumps(sets)


def test_fewshot_refuses_a_shot_found_in_the_test_split(tmp_path):
    train_text, tsv = fake_train(tmp_path)
    brown = mf.train_brown(train_text, tsv)
    test_text = "\n".join(" ".join(t.split()[:mf.SHOT_WORDS]) for v in brown.values()
                          for _, t in v)
    with pytest.raises(SystemExit, match="occurs in the test split"):
        mf.shot_sets(brown, test_text)


def test_committed_fewshot_items():
    base = eg.load_task(os.path.join(SCALE, "genre.jsonl"))
    by_k = {}
    for k in (3, 5):
        items = eg.load_task(os.path.join(SCALE, f"genre_fewshot_k{k}.jsonl"))
        assert len(items) == len(base)
        for it, b in zip(items, base):
            assert it["prompt"].endswith("\n\n" + b["prompt"])
            assert (it["answer"], it["labels"], it["doc"]) == (b["answer"], b["labels"], b["doc"])
            assert len(it["shots"]) == k and len({s["genre"] for s in it["shots"]}) == k
            for s in it["shots"]:
                assert split("brown", s["doc"]) == "train", s["doc"]
                assert s["doc"] != it["doc"]
        by_k[k] = items
    assert all(a["shots"] == b["shots"][:3] for a, b in zip(by_k[3], by_k[5]))


@pytest.mark.parametrize("body,why", [
    ("", "no items"),
    ("{\"prompt\": \"p\", \"labels\": [\"a\", \"b\"], \"answer\": 0}\n{oops\n", ":2: not JSON"),
    ("[1, 2]\n", ":1: an item needs the keys"),
    ("{\"prompt\": \"p\", \"labels\": [\"a\", \"b\"]}\n", ":1: an item needs the keys"),
    ("{\"prompt\": \"p\", \"labels\": [\"a\", \"b\"], \"answer\": 2}\n", ":1: bad prompt"),
    ("{\"prompt\": \"p\", \"labels\": [\"a\", \"b\"], \"answer\": true}\n", ":1: bad prompt"),
    ("{\"prompt\": \"p\", \"labels\": \"ab\", \"answer\": 0}\n", ":1: bad prompt"),
    ("{\"prompt\": \"p\", \"labels\": [\"a\", \"\"], \"answer\": 0}\n", ":1: bad prompt"),
    (b"\xff\xfe\n", "cannot read"),
])
def test_malformed_task_file_is_refused(tmp_path, body, why):
    path = tmp_path / "task.jsonl"
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body)
    with pytest.raises(SystemExit, match=re.escape(why)):
        eg.load_task(str(path))


@pytest.mark.parametrize("script", ["eval_qa.py", "eval_genre.py"])
def test_malformed_task_file_one_line_error(tmp_path, script):
    path = tmp_path / "task.jsonl"
    path.write_text("{\"prompt\": \"p\"}\n")
    r = subprocess.run([sys.executable, os.path.join(CORPUS_DIR, script), "--yunmind",
                        "/nonexistent", "--model", "/nonexistent", "--task", str(path),
                        "--out", str(tmp_path / "out.json")], capture_output=True, text=True)
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and "task.jsonl:1: an item needs the keys" in r.stderr
    assert not (tmp_path / "out.json").exists()
