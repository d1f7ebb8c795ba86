#!/usr/bin/env python3
"""Train the corpus BPE tokenizer on the train split only, with Hugging Face tokenizers.

    PYTHONPATH=tools/train python3 tools/train/corpus/train_corpus_tokenizer.py \\
        --corpus CORPUS_DIR --out tools/train/corpus/tokenizer [--vocab-size 16384] \\
        [--cache-dir WORK/data]

Same structure as the Shakespeare tokenizer (tools/train/train_tokenizer.py: NFC, byte-level
pre-tokenizer with GPT-2's regex, BPE merges as pairs, <|endoftext|> id 0 special, added
non-special tokens for runs of 2, 3 and 4 spaces). Trained on the documents of train.txt (the
file cut at its <|endoftext|> separators, then after blank lines, as train_tokenizer.py
does); val.txt and test.txt are never read for training.

Writes to --out: tokenizer.json, cases.json (strings with HF's ids: the fixed cases of
train_tokenizer.py plus lines of every domain of the train split), README.md. Then checks the
toolkit's pure-Python tokenizer against HF on every case (exit 1 on a mismatch with --strict).

With --cache-dir it also tokenizes the split files with HF (each file as one string) and stores
the ids where yunmin_train.data.tokenize_cached looks for them, under the tags train.py and
evaluate.py use: train.txt -> "train", val.txt -> "val" (train.py --text train.txt --val-text
val.txt) and each of val/test/test-head.txt -> "all" (evaluate.py --split all). The pure-Python
tokenizer is far slower on 100 MB; --check-file FILE compares it with HF on one whole file.
"""

import argparse
import json
import os
import random
import re
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_DIR = os.path.dirname(HERE)
if TRAIN_DIR not in sys.path:
    sys.path.insert(0, TRAIN_DIR)

SEP = "\n<|endoftext|>\n"
EOT = "<|endoftext|>"


def read_text(path):
    with open(path, "r", encoding="utf-8", newline="") as f:
        return f.read()


def train_chunks(text):
    """The pieces between <|endoftext|> tokens (what encoding sees after the special token is
    split off), each cut after blank lines as train_tokenizer.py cuts its text."""
    for piece in text.split(EOT):
        for c in re.split(r"(?<=\n\n)(?=[^\n])", piece):
            if c:
                yield c


def build(chunks, vocab_size, min_frequency):
    """train_tokenizer.build with an iterator of chunks instead of one text."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors, trainers
    from train_tokenizer import SPACE_RUNS
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(chunks, trainer=trainer, length=len(chunks))
    tok.add_tokens([AddedToken(s, single_word=False, lstrip=False, rstrip=False,
                               normalized=True, special=False) for s in SPACE_RUNS])
    return tok


def domain_cases(corpus, n_per_domain=3, seed=11):
    """Lines from the train split, n per domain, chosen with a fixed seed."""
    text = read_text(os.path.join(corpus, "train.txt"))
    rows = [l.rstrip("\n").split("\t")
            for l in open(os.path.join(corpus, "train.docs.tsv"), encoding="utf-8")][1:]
    by_dom = {}
    for r in rows:
        by_dom.setdefault(r[2].split("/")[0] if r[2].startswith("brown") else r[2], []).append(r)
    rnd = random.Random(seed)
    out = []
    for dom in sorted(by_dom):
        for r in rnd.sample(by_dom[dom], min(n_per_domain, len(by_dom[dom]))):
            s, n = int(r[4]), int(r[5])
            out.append(text[s:s + min(n, 400)])
    # and one stretch across a document separator
    i = text.index(SEP)
    out.append(text[max(0, i - 60):i + len(SEP) + 60])
    return out


def encode_file(tok, text):
    """HF ids of `text` as one string, computed per <|endoftext|>-separated piece in parallel
    (the special token is split off first, so this equals tok.encode(text))."""
    pieces = text.split(EOT)
    enc = tok.encode_batch(pieces, add_special_tokens=False)
    eot = tok.token_to_id(EOT)
    out = []
    for i, e in enumerate(enc):
        if i:
            out.append(eot)
        out.extend(e.ids)
    return np.asarray(out, dtype=np.int32)


def check_files(out, files):
    """The pure-Python tokenizer against HF on whole files (each as one string)."""
    from tokenizers import Tokenizer as HF
    from yunmin_train.tokenizer import Tokenizer as Ours
    tok_path = os.path.join(out, "tokenizer.json")
    hf, ours = HF.from_file(tok_path), Ours.from_file(tok_path)
    res, bad = [], 0
    for path in files:
        t1 = time.time()
        text = read_text(path)
        hf_ids = encode_file(hf, text).tolist()
        our_ids = ours.encode(text)
        same = hf_ids == our_ids
        first = None
        if not same:
            bad += 1
            first = next((i for i, (x, y) in enumerate(zip(hf_ids, our_ids)) if x != y),
                         min(len(hf_ids), len(our_ids)))
        res.append({"file": os.path.basename(path), "chars": len(text), "tokens": len(hf_ids),
                    "identical": same, "first_difference": first,
                    "seconds": round(time.time() - t1, 1)})
        print(f"  pure-Python tokenizer on {path}: {len(hf_ids)} tokens, "
              f"{'identical' if same else 'DIFFERENT at %s' % first} ({time.time() - t1:.1f} s)",
              flush=True)
    with open(os.path.join(out, "tokenizer_check_files.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    return 1 if bad else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="directory of build_corpus.py's output")
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab-size", type=int, default=16384)
    ap.add_argument("--min-frequency", type=int, default=2)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--check-file", action="append", default=[],
                    help="compare the pure-Python tokenizer with HF on this whole file "
                         "(repeatable)")
    ap.add_argument("--check-only", action="store_true",
                    help="no training: check --out/tokenizer.json on the --check-file files and "
                         "write --out/tokenizer_check_files.json")
    ap.add_argument("--strict", action="store_true")
    a = ap.parse_args(argv)
    import tokenizers
    from train_tokenizer import FIXED_CASES
    if a.check_only:
        return check_files(a.out, a.check_file)
    t0 = time.time()
    train_text = read_text(os.path.join(a.corpus, "train.txt"))
    chunks = list(train_chunks(train_text))
    print(f"tokenizers {tokenizers.__version__}: training BPE (vocab {a.vocab_size}) on "
          f"{len(train_text)} characters, {len(chunks)} chunks of train.txt", flush=True)
    tok = build(chunks, a.vocab_size, a.min_frequency)
    os.makedirs(a.out, exist_ok=True)
    tok_path = os.path.join(a.out, "tokenizer.json")
    tok.save(tok_path, pretty=True)
    spec = json.load(open(tok_path, encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    n_total = tok.get_vocab_size(with_added_tokens=True)
    t_train = time.time() - t0
    print(f"trained in {t_train:.1f} s: {len(vocab)} BPE tokens, {len(spec['model']['merges'])} "
          f"merges, {n_total} ids with added tokens", flush=True)
    if vocab.get(EOT) != 0:
        raise SystemExit(f"{EOT} has id {vocab.get(EOT)}, expected 0")

    cases_text = FIXED_CASES + domain_cases(a.corpus)
    cases = [{"text": s, "ids": tok.encode(s).ids} for s in cases_text]
    with open(os.path.join(a.out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"source": f"reference tokenizations produced with Hugging Face tokenizers "
                             f"{tokenizers.__version__} for the corpus BPE tokenizer "
                             f"(tools/train/corpus/train_corpus_tokenizer.py)", "cases": cases},
                  f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(a.out, "README.md"), "w", encoding="utf-8") as f:
        f.write(
            "# Corpus byte-level BPE tokenizer\n\n"
            "Made by `tools/train/corpus/train_corpus_tokenizer.py` with Hugging Face tokenizers "
            f"{tokenizers.__version__} from the train split of the corpus "
            "(`tools/train/corpus/build_corpus.sh`; validation and test never seen). "
            "GPT-NeoX structure: NFC normalizer, ByteLevel pre-tokenizer (add_prefix_space "
            "false, use_regex true), ByteLevel decoder, BPE merges as pairs.\n"
            f"{len(vocab)} BPE tokens (id 0 `<|endoftext|>`, special) plus non-special added "
            f"tokens for runs of 2, 3 and 4 spaces (ids {len(vocab)}..{len(vocab) + 2}): "
            f"{n_total} ids.\n\n"
            f"`cases.json`: {len(cases)} strings with the ids HF tokenizers produces for them.\n")
    print(f"wrote {tok_path}, cases.json ({len(cases)} cases)", flush=True)

    from yunmin_train.tokenizer import Tokenizer as Ours
    from yunmin_train import data as data_mod
    ours = Ours.from_file(tok_path)
    bad = [c["text"] for c in cases if ours.encode(c["text"]) != c["ids"]]
    dec_bad = [c["text"] for c in cases
               if ours.decode(c["ids"]) != tok.decode(c["ids"], skip_special_tokens=False)]
    for s in (bad + dec_bad)[:10]:
        print(f"  MISMATCH on case {s[:80]!r}")
    result = {"tokenizers": tokenizers.__version__, "train_s": round(t_train, 1),
              "n_cases": len(cases), "case_mismatches": len(bad),
              "decode_mismatches": len(dec_bad), "vocab_bpe": len(vocab), "n_ids": n_total}

    if a.cache_dir:
        tok_bytes = open(tok_path, "rb").read()
        os.makedirs(a.cache_dir, exist_ok=True)
        todo = [("train.txt", "train"), ("val.txt", "val"), ("val.txt", "all"),
                ("test.txt", "all"), ("test-head.txt", "all")]
        done = {}
        for name, tag in todo:
            t1 = time.time()
            text = read_text(os.path.join(a.corpus, name))
            if name not in done:
                done[name] = encode_file(tok, text)
            ids = done[name]
            np.save(data_mod.cache_path(text, tok_bytes, a.cache_dir, tag), ids)
            result[f"tokens_{name}"] = int(ids.size)
            result[f"chars_{name}"] = len(text)
            print(f"  {name} [{tag}]: {len(text)} chars -> {ids.size} tokens "
                  f"({len(text) / max(ids.size, 1):.2f} chars/token, {time.time() - t1:.1f} s)",
                  flush=True)
        head = read_text(os.path.join(a.corpus, "test-head.txt"))
        same = tok.encode(head).ids == done["test-head.txt"].tolist()
        result["piecewise_equals_whole_on_test_head"] = same
        print(f"  piecewise HF encoding == whole-string HF encoding on test-head.txt: {same}")
    with open(os.path.join(a.out, "tokenizer_check.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    if bad or dec_bad:
        print(f"WARNING: toolkit tokenizer differs from HF: {len(bad)} case(s), "
              f"{len(dec_bad)} decode(s)", flush=True)
        return 1 if a.strict else 0
    print(f"toolkit tokenizer == HF tokenizers on all {len(cases)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
