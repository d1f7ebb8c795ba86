"""Shared pieces of the task-builder tests (test_qa_task.py, test_cloze_task.py): where the
corpus scripts and the committed task files are, the corpus's document separator and split
rule, and Bible-like chapters with names to blank. Importing it puts tools/train/corpus on
sys.path, so the tests can import the builders."""

import hashlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS_DIR = os.path.join(os.path.dirname(HERE), "corpus")
if CORPUS_DIR not in sys.path:
    sys.path.insert(0, CORPUS_DIR)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SCALE = os.path.join(REPO, "tools", "train", "results", "scale")
SEP = "\n<|endoftext|>\n"
NAMES = ["Abner", "Bezaleel", "Caleb", "Dathan", "Eliab", "Gilead", "Hebron", "Ithamar",
         "Jabesh", "Kadesh", "Laban", "Mizpah"]


def split(source, group):
    """The corpus's split rule, written out again from its manifest's words."""
    b = int(hashlib.sha256(f"{source}\0{group}".encode()).hexdigest()[:8], 16) % 100
    return "train" if b < 90 else ("val" if b < 95 else "test")


def chapter(title, n_verses, shift):
    verses = []
    for v in range(1, n_verses + 1):
        a, b = NAMES[(v + shift) % len(NAMES)], NAMES[(3 * v + shift + 1) % len(NAMES)]
        verses.append(f"{v} And {a} went up unto {b} in the day {v}, and he spake unto the men.")
    return title + "\n\n" + "\n".join(verses)
