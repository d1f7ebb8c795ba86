"""The Brown genre task's item builder (tools/train/corpus/make_genre_task.py): held-out
documents only, deterministic, and the committed items consistent with the split rule and with
the Brown Corpus's own category letters. Runs in about a second, without the model or the
corpus."""

import hashlib
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS_DIR = os.path.join(os.path.dirname(HERE), "corpus")
sys.path.insert(0, CORPUS_DIR)

import make_genre_task as mg  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
ITEMS = os.path.join(REPO, "tools", "train", "results", "scale", "genre.jsonl")

# The Brown Corpus manual (Francis & Kucera): the letter of a text's id is its category.
LETTER = {"a": "news", "b": "editorial", "c": "reviews", "d": "religion", "e": "hobbies",
          "f": "lore", "g": "belles_lettres", "h": "government", "j": "learned",
          "k": "fiction", "l": "mystery", "m": "science_fiction", "n": "adventure",
          "p": "romance", "r": "humor"}


def split(group):
    """The corpus's split rule, written out again from its manifest's words."""
    b = int(hashlib.sha256(f"brown\0{group}".encode()).hexdigest()[:8], 16) % 100
    return "train" if b < 90 else ("val" if b < 95 else "test")


def fake_brown(tmp_path, n_per_letter=34):
    """A Brown-shaped package: cats.txt with 500 ids, one tagged file each."""
    ids = []
    for letter in sorted(LETTER):
        ids += [f"c{letter}{i:02d}" for i in range(1, n_per_letter + 1)]
    ids = ids[:500]
    with open(tmp_path / "cats.txt", "w") as f:
        for fid in ids:
            f.write(f"{fid} {LETTER[fid[1]]}\n")
    for fid in ids:
        paras = []
        for p in range(6):
            words = " ".join(f"{fid}w{p}x{k}/nn" for k in range(30))
            paras.append(f"\t{words} ./.\n")
        (tmp_path / fid).write_text("\n\n".join(paras))
    return ids


def docs_text(tmp_path, ids):
    import build_corpus as bc
    by_id = {d["id"]: bc.clean(d["text"]) for d in bc.brown_docs(str(tmp_path))}
    return by_id


def test_only_test_split_documents(tmp_path):
    ids = fake_brown(tmp_path)
    by_id = docs_text(tmp_path, ids)
    test_ids = [i for i in ids if split(i) == "test"]
    assert 10 < len(test_ids) < 50
    test_txt = mg.SEP.join(["other doc"] + [by_id[i] for i in test_ids]) + "\n"
    docs = mg.held_out_docs(str(tmp_path), test_txt)
    assert [d[0] for d in docs] == test_ids
    assert all(d[1] == LETTER[d[0][1]] for d in docs)
    items = mg.build(docs)
    assert {it["doc"] for it in items} == set(test_ids)
    for it in items:
        assert split(it["doc"]) == "test"
        assert it["prompt"].endswith("\nGenre:")
        assert len(it["prompt"][:-len("\nGenre:")].split()) == mg.N_WORDS
        assert it["prompt"][:-len("\nGenre:")] in " ".join(by_id[it["doc"]].split())
        assert it["labels"][it["answer"]] == it["genre"].replace("_", " ")
    # deterministic: the same bytes twice
    again = mg.build(mg.held_out_docs(str(tmp_path), test_txt))
    assert json.dumps(again) == json.dumps(items)


def test_refuses_a_document_missing_from_the_test_text(tmp_path):
    ids = fake_brown(tmp_path)
    by_id = docs_text(tmp_path, ids)
    test_ids = [i for i in ids if split(i) == "test"]
    test_txt = mg.SEP.join(by_id[i] for i in test_ids[1:]) + "\n"
    with pytest.raises(SystemExit, match=test_ids[0]):
        mg.held_out_docs(str(tmp_path), test_txt)


def test_windows_are_distinct_paragraph_starts():
    text = "\n".join(" ".join(f"p{p}w{k}" for k in range(70)) for p in range(9))
    w = mg.windows(text)
    assert len(w) == 3 and len(set(w)) == 3
    assert [x.split()[0] for x in w] == ["p0w0", "p3w0", "p6w0"]
    assert mg.windows("too few words") == []


def test_committed_items_are_held_out():
    items = [json.loads(l) for l in open(ITEMS, encoding="utf-8")]
    assert 50 <= len(items) <= 300
    assert [it["id"] for it in items] == list(range(len(items)))
    for it in items:
        assert split(it["doc"]) == "test", it["doc"]
        assert it["genre"] == LETTER[it["doc"][1]]
        assert it["labels"] == [g.replace("_", " ") for g in sorted(LETTER.values())]
        assert it["labels"][it["answer"]] == it["genre"].replace("_", " ")
    assert len({(it["doc"], it["prompt"]) for it in items}) == len(items)


def test_score_prompt_cuts_at_the_prompts_bytes():
    """eval_genre.score_prompt against a real yunmind on the default model, with a prompt of
    non-ASCII text (text_offset counts UTF-8 bytes, docs/API.md): a label's score must be the
    log-probability of the whole prompt + label minus that of the prompt alone (the prompt's
    tokens being a prefix of both), so no prompt token is counted with the label."""
    import glob
    import eval_genre as eg
    found = sorted(glob.glob(os.path.join(REPO, "build*", "server", "yunmind")),
                   key=os.path.getmtime)
    if not found:
        pytest.skip("no yunmind binary (build it)")
    p, port = eg.start(found[-1], os.path.join(REPO, "models", "shakespeare-mamba"), None)
    try:
        prompt = "Été à Noël, où ça? Là-bas, près du château"
        labels = ["news", "romance"]
        got = eg.score_prompt(port, prompt, labels)

        def total(text):
            r = eg.post(port, {"prompt": text, "max_tokens": 0, "echo": True, "logprobs": 0})
            lp = r["choices"][0]["logprobs"]
            return lp["tokens"], sum(v for v in lp["token_logprobs"] if v is not None)

        ptoks, pscore = total(prompt)
        for lab, g in zip(labels, got):
            ftoks, fscore = total(prompt + " " + lab)
            assert ftoks[:len(ptoks)] == ptoks
            assert abs(g - (fscore - pscore)) < 1e-4, (lab, g, fscore - pscore)
    finally:
        p.kill()
        p.wait()
