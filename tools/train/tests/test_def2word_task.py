"""The definition -> headword task: its builder (tools/train/corpus/make_tasks.py) and its
scorer in yunmind (tools/train/corpus/eval_def2word.py).

* the builder: every item is an entry of the text with 3 distractors of the same part of
  speech, deterministic, --per-source N items of each source, too few entries refused;
* the scorer against a real yunmind on the default model: its per-choice scores equal the
  toolkit's PyTorch model's on the same ids (--check-torch), the paired counts and the exact
  McNemar p by hand, malformed task files and arguments refused with one line.
"""

import glob
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS_DIR = os.path.join(os.path.dirname(HERE), "corpus")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, CORPUS_DIR)

import eval_def2word as ed  # noqa: E402
import make_tasks as mt  # noqa: E402

WORDS = ["alder", "basin", "cinder", "dapple", "ember", "fable", "gable", "harbor", "island",
         "jasper", "kettle", "lantern", "meadow", "nectar", "orchard", "pebble", "quarry",
         "ripple", "saddle", "thistle", "umber", "valley", "willow", "yarrow", "zephyr"]


def fake_test_text(tmp_path):
    docs = []
    for i, w in enumerate(WORDS):
        docs.append(f"{w}\nn 1: a thing called {w} that is found in place number {i} of the "
                    f"list [syn: {w}]")
        docs.append(f"to {w}\nv 1: to act like a {w} in the manner number {i} of the list")
        pos = "n. (Bot.)"
        docs.append(f"G{w} \\G{w}\\, {pos}\nA {w} of the old kind, seen in place {i} of the "
                    f"list.\n\nA second sense that is not the first.")
    p = tmp_path / "test.txt"
    p.write_text(mt.SEP.join(docs), encoding="utf-8")
    return str(p)


def test_items_are_entries_with_distractors_of_the_same_part_of_speech(tmp_path):
    src = fake_test_text(tmp_path)
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    assert mt.main(src, a, per_source=12) == 0 and mt.main(src, b, per_source=12) == 0
    assert open(a).read() == open(b).read()                     # deterministic
    items = [json.loads(l) for l in open(a)]
    assert len(items) == 24 and [it["source"] for it in items] == ["wordnet"] * 12 + ["gcide"] * 12

    def pos(head):                          # the part of speech the builder matches on
        return head.rsplit("\\, ", 1)[1] if "\\, " in head else head.startswith("to ")

    for it in items:
        head = it["choices"][it["answer"]]
        word = head.split("\\")[0].strip()[1:] if it["source"] == "gcide" else \
            head[3:] if head.startswith("to ") else head
        # the continuation is that entry's first sense (WordNet: without the [syn: ...] tail;
        # GCIDE: its first paragraph)
        assert f"a {word} " in it["continuation"] or f"called {word} " in it["continuation"] \
            or f"A {word} " in it["continuation"], (head, it["continuation"])
        assert "[" not in it["continuation"] and "second sense" not in it["continuation"]
        assert len(set(it["choices"])) == 4
        assert all(pos(c) == pos(head) for c in it["choices"])
    with pytest.raises(SystemExit):
        mt.main(src, str(tmp_path / "c.jsonl"), per_source=26)
    r = subprocess.run([sys.executable, os.path.join(CORPUS_DIR, "make_tasks.py"), src,
                        str(tmp_path / "d.jsonl"), "--per-source", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--per-source" in r.stderr
    assert not (tmp_path / "d.jsonl").exists()


def test_mcnemar_by_hand():
    assert ed.mcnemar("1100", "1010") == {"only_first": 1, "only_second": 1, "p_two_sided": 1.0}
    r = ed.mcnemar("1111111", "0000000")
    assert (r["only_first"], r["only_second"]) == (7, 0)
    assert r["p_two_sided"] == pytest.approx(2 / 128)
    # 9 against 1: 2 * (1 + 10) / 1024
    assert ed.mcnemar("1" * 9 + "0", "0" * 9 + "1")["p_two_sided"] == pytest.approx(22 / 1024)
    assert ed.mcnemar("1", "1")["p_two_sided"] == 1.0


def run_script(*args):
    return subprocess.run([sys.executable, os.path.join(CORPUS_DIR, "eval_def2word.py"),
                           *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=os.path.dirname(HERE)))


@pytest.mark.parametrize("body,why", [
    ("{\"choices\": [\"a\", \"b\"], \"answer\": 0}\n", "an item needs choices"),
    ("{\"choices\": [\"a\"], \"continuation\": \"x\", \"answer\": 0}\n", "an item needs choices"),
    ("{\"choices\": [\"a\", \"b\"], \"continuation\": \"x\", \"answer\": 2}\n",
     "an item needs choices"),
    ("{\"choices\": [\"a\", \"b\"], \"continuation\": \"x\", \"answer\": 1}\n",
     "and a source"),
    ("not json\n", "not JSON"),
    ("", "no items"),
])
def test_malformed_task_file_is_refused_with_one_line(tmp_path, body, why):
    path = tmp_path / "task.jsonl"
    path.write_text(body)
    r = run_script("--yunmind", "/nonexistent", "--model", "/nonexistent", "--task", str(path),
                   "--out", str(tmp_path / "out.json"))
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and why in r.stderr, r.stderr
    assert not (tmp_path / "out.json").exists()


def test_bad_pair_and_profile_are_usage_errors(tmp_path):
    for extra in (["--pair", "dense,nope"], ["--pair", "dense"], ["--profile", "nofile"]):
        r = run_script("--yunmind", "/x", "--model", "/x", "--task", "/x", "--out",
                       str(tmp_path / "o.json"), *extra)
        assert r.returncode == 2, r.stderr


def test_scores_in_yunmind_equal_the_toolkits(tmp_path):
    found = sorted(glob.glob(os.path.join(REPO, "build*", "server", "yunmind")),
                   key=os.path.getmtime)
    if not found:
        pytest.skip("no yunmind binary (build it)")
    items = [{"source": "wordnet", "choices": ["ROMEO:", "JULIET:", "KING HENRY:", "Nurse:"],
              "continuation": "O, speak again, bright angel! for thou art", "answer": 0},
             {"source": "gcide", "choices": ["MENENIUS:", "First Citizen:", "BRUTUS:", "Ay."],
              "continuation": "We are accounted poor citizens, the patricians good.",
              "answer": 1}]
    task = tmp_path / "t.jsonl"
    task.write_text("".join(json.dumps(it) + "\n" for it in items))
    out = tmp_path / "r.json"
    assert ed.main(["--yunmind", found[-1], "--model",
                    os.path.join(REPO, "models", "shakespeare-mamba"), "--task", str(task),
                    "--profile", "same=" + os.path.join(REPO, "tools", "train", "results",
                                                       "learned-channels-50.sparsity.safetensors"),
                    "--pair", "dense,same", "--check-torch", "2", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["torch_check"]["n_items"] == 2 and r["torch_check"]["same_argmax"]
    assert r["torch_check"]["max_abs_diff"] < 1e-3
    d = r["models"]["dense"]
    assert len(d["correct"]) == 2 and d["n_right"] == d["correct"].count("1")
    assert set(d["by_source"]) == {"wordnet", "gcide"}
    p = r["pairs"][0]
    assert (p["first"], p["second"]) == ("dense", "same")
    assert p == {"first": "dense", "second": "same",
                 **ed.mcnemar(d["correct"], r["models"]["same"]["correct"])}
