import json
import os
import sys
from collections import Counter

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_DIR = os.path.dirname(HERE)
REPO = os.path.abspath(os.path.join(TRAIN_DIR, "..", ".."))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
for p in (TRAIN_DIR, FIXTURES):
    if p not in sys.path:
        sys.path.insert(0, p)

from yunmin_train.tokenizer import BYTE_TO_CHAR, split_gpt2  # noqa: E402

SAMPLE_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\n"
    "Resolved. resolved.\n\nFirst Citizen:\nFirst, you know Caius Marcius is chief enemy to "
    "the people.\n\nAll:\nWe know't, we know't.\n\n"
)


def train_tiny_bpe(text, n_merges=120, space_tokens=True):
    """A small GPT-NeoX-shaped tokenizer.json (dict) learned from `text` (naive BPE)."""
    words = Counter("".join(BYTE_TO_CHAR[b] for b in w.encode("utf-8")) for w in split_gpt2(text))
    splits = {w: list(w) for w in words}
    vocab = {"<|endoftext|>": 0}
    for b in range(256):
        vocab[BYTE_TO_CHAR[b]] = len(vocab)
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, c in words.items():
            s = splits[w]
            for i in range(len(s) - 1):
                pairs[(s[i], s[i + 1])] += c
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(list(best))
        if best[0] + best[1] not in vocab:
            vocab[best[0] + best[1]] = len(vocab)
        for w in words:
            s, out, i = splits[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            splits[w] = out
    added = [{"id": 0, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}]
    if space_tokens:
        for n in (2, 3, 4):
            added.append({"id": len(vocab) + n - 2, "content": " " * n, "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": True, "special": False})
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "NFC"}, "pre_tokenizer": bl, "post_processor": bl,
            "decoder": bl,
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
                      "merges": merges}}


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    p = d / "tokenizer.json"
    p.write_text(json.dumps(train_tiny_bpe(SAMPLE_TEXT * 3)), encoding="utf-8")
    return str(p)


@pytest.fixture(scope="session")
def sample_text_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    p = d / "sample.txt"
    p.write_text(SAMPLE_TEXT * 40, encoding="utf-8")
    return str(p)
