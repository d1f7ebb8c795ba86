"""tools/train/corpus/carry_corpus.py: the cut corpus keeps whole documents, the train prefix,
val's start and every later document of the kept domains, and test-head unchanged."""

import lzma
import os
import sys

from yunmin_train.peft_scale import SEP, domain_of

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "corpus"))
import carry_corpus  # noqa: E402

BIBLE = "Genesis 1\n\n1 In the beginning God created the heaven and the earth.\n"
PERL = "NAME\n\nperlfoo - a manual page\n"


def other(i):
    return f"Other document number {i}: " + "words " * (i + 3)


def _xz(path):
    with lzma.open(path, "rt", encoding="utf-8", newline="") as f:
        return f.read()


def test_cut(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    train = [other(i) for i in range(10)]
    val = [other(i) for i in range(4)] + [BIBLE, other(20), PERL, other(21), BIBLE + "x"]
    (src / "train.txt").write_text(SEP.join(train) + "\n", encoding="utf-8")
    with lzma.open(src / "val.txt.xz", "wt", encoding="utf-8") as f:   # .xz input too
        f.write(SEP.join(val) + "\n")
    (src / "test-head.txt").write_text("held out\n", encoding="utf-8")
    assert domain_of(BIBLE) == "bible" and domain_of(PERL) == "perl"
    head = sum(len(d) + len(SEP) for d in val[:2]) + 1        # docs 0, 1 and 2 start before
    cut = sum(len(d) + len(SEP) for d in train[:3]) + 1       # train docs 0-3 start before
    out = tmp_path / "out"
    assert carry_corpus.main([str(src), str(out), "--train-chars", str(cut),
                              "--val-head-chars", str(head)]) == 0
    assert _xz(out / "train.txt.xz") == SEP.join(train[:4]) + "\n"
    assert _xz(out / "val.txt.xz") == SEP.join(val[:3] + [BIBLE, PERL, BIBLE + "x"]) + "\n"
    assert _xz(out / "test-head.txt.xz") == "held out\n"
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    # everything kept: the same text
    assert carry_corpus.main([str(src), str(out), "--train-chars", "10000000"]) == 0
    assert _xz(out / "train.txt.xz") == (src / "train.txt").read_text(encoding="utf-8")
    # --keep-domains empty: only val's start
    assert carry_corpus.main([str(src), str(out), "--train-chars", "1", "--val-head-chars",
                              str(head), "--keep-domains", ""]) == 0
    assert _xz(out / "train.txt.xz") == train[0] + "\n"
    assert _xz(out / "val.txt.xz") == SEP.join(val[:3]) + "\n"
