"""Text data: the train / held-out split, tokenization with a cache, random training windows.

The held-out split (used by train.py, evaluate.py --split val, and `yunmin perplexity`):
  * the file is read as UTF-8 with no newline translation (`newline=""`), so "\\r\\n" stays;
  * n = number of characters (Unicode code points) of the file;
  * the first n_train = (n * 9) // 10 characters (integer arithmetic, rounding down) are the
    training text, the remaining n - n_train characters are the held-out (validation) text —
    i.e. the last 10 % of the characters, cut at that exact character index, not moved to a
    line or token boundary;
  * each part is tokenized on its own, as one string, with no special tokens added.
For tinyshakespeare.txt (1,115,394 ASCII characters): train = 1,003,854, held out = 111,540.
"""

import hashlib
import json
import os

import numpy as np

from .tokenizer import Tokenizer

VAL_PERCENT = 10


def read_text(path):
    with open(path, "r", encoding="utf-8", newline="") as f:
        return f.read()


def split_text(text, val_percent=VAL_PERCENT):
    """(train_text, heldout_text): the last val_percent % of the characters are held out."""
    n_train = (len(text) * (100 - val_percent)) // 100
    return text[:n_train], text[n_train:]


def select_split(text, split, val_percent=VAL_PERCENT):
    if split == "all":
        return text
    train, val = split_text(text, val_percent)
    if split == "train":
        return train
    if split in ("val", "heldout"):
        return val
    raise ValueError(f"unknown split {split!r} (all, train, val)")


def _sha(b):
    return hashlib.sha256(b).hexdigest()


def cache_path(text, tokenizer_bytes, cache_dir, tag="text"):
    """Where tokenize_cached keeps the ids of `text` (a faster tokenizer may fill it first)."""
    key = _sha(_sha(text.encode("utf-8")).encode() + _sha(tokenizer_bytes).encode())[:16]
    return os.path.join(cache_dir, f"tokens-{tag}-{key}.npy")


def tokenize_cached(text, tokenizer_path, cache_dir=None, tag="text"):
    """Token ids (int32 numpy) of `text`, cached as <cache_dir>/<tag>-<hash>.npy.

    The key hashes the text and the tokenizer.json bytes, so a changed file is re-tokenized.
    """
    with open(tokenizer_path, "rb") as f:
        tok_bytes = f.read()
    path = None
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        path = cache_path(text, tok_bytes, cache_dir, tag)
        if os.path.exists(path):
            return np.load(path)
    tok = Tokenizer(json.loads(tok_bytes.decode("utf-8")))
    ids = np.asarray(tok.encode(text), dtype=np.int32)
    if path:
        tmp = path + ".tmp.npy"
        np.save(tmp, ids)
        os.replace(tmp, path)
    return ids


def load_splits(text_path, tokenizer_path, cache_dir=None, val_percent=VAL_PERCENT,
                val_path=None):
    """(train_ids, val_ids, info) for a text file, with the split documented above; with
    val_path, the whole of text_path is training text and val_path is the held-out text."""
    text = read_text(text_path)
    if val_path:
        train, val = text, read_text(val_path)
    else:
        train, val = split_text(text, val_percent)
    tr = tokenize_cached(train, tokenizer_path, cache_dir, "train")
    va = tokenize_cached(val, tokenizer_path, cache_dir, "val")
    info = {"n_chars": len(train) + len(val), "n_train_chars": len(train),
            "n_val_chars": len(val),
            "n_train_tokens": int(tr.size), "n_val_tokens": int(va.size),
            "val_percent": None if val_path else val_percent, "val_text": val_path}
    return tr, va, info


class BatchSampler:
    """Random contiguous windows of seq_len + 1 tokens: inputs w[:-1], targets w[1:]."""

    def __init__(self, ids, batch_size, seq_len, seed=0, device="cpu"):
        import torch
        if ids.size < seq_len + 2:
            raise ValueError(f"need more than {seq_len + 1} tokens, have {ids.size}")
        self.torch = torch
        self.ids = torch.from_numpy(ids.astype(np.int64)).to(device)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.gen = torch.Generator().manual_seed(seed)
        self.offsets = torch.arange(seq_len + 1, device=device)
        self.device = device

    def next(self):
        torch = self.torch
        hi = self.ids.numel() - self.seq_len - 1
        starts = torch.randint(0, hi + 1, (self.batch_size,), generator=self.gen).to(self.device)
        w = self.ids[starts[:, None] + self.offsets[None, :]]
        return w[:, :-1], w[:, 1:]

    def state_dict(self):
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, d):
        self.gen.set_state(d["gen"])
