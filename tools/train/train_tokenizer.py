#!/usr/bin/env python3
"""Train the Shakespeare byte-level BPE tokenizer (needs Hugging Face `tokenizers`).

    PYTHONPATH=tools/train python3 tools/train/train_tokenizer.py \\
        --text data/tinyshakespeare.txt --out tests/fixtures/shakespeare --vocab-size 4096

Same structure as GPT-NeoX's tokenizer.json: NFC normalizer, ByteLevel pre-tokenizer
(add_prefix_space false, use_regex true), ByteLevel decoder and post-processor, BPE with merges;
`<|endoftext|>` is special token id 0; then non-special added tokens (normalized: true) for runs
of 2, 3 and 4 spaces (ids vocab_size .. vocab_size+2), so added-token splitting is exercised like
GPT-NeoX's. The tokenizer is trained on the training part of the text only (the first 90 % of
the characters; the held-out 10 % stays unseen).

Writes <out>/tokenizer.json, <out>/cases.json ({"source", "cases": [{"text", "ids"}]}, the ids
computed by HF tokenizers) and <out>/README.md. Then cross-checks the toolkit's pure-Python
tokenizer (yunmin_train.tokenizer, if importable) against HF on every case and on the whole text,
and prints the result (a mismatch is reported loudly; --strict makes it an error).
"""

import argparse
import json
import os
import random
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

SPACE_RUNS = ["  ", "   ", "    "]

FIXED_CASES = [
    "", " ", "  ", "   ", "    ", "     ", "\t", "\n", "\n\n", "\n\n\n", "\t\n", " \n ", "\r\n",
    "Hello world", " Hello world", "Hello World!", "  Hello", "   Hello", "    Hello",
    "    Hello\n    Hello", "     five spaces then text",
    "ROMEO:\nBut, soft! what light through yonder window breaks?",
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n",
    "To be, or not to be: that is the question:",
    "I'll we're they've she'd it's don't can't won't O'er 'tis I'M YOU'LL",
    "Café résumé naïve façade coöperate",
    "e\u0301 (decomposed e + accent) vs \u00e9 (composed)",
    "Führer Straße ĳ ﬁ ﬂ",
    "нещо на Български",
    "日本語のテキストと中文字符",
    "한국어 텍스트 윤민",
    "🚀 (normal) 😶\u200d🌫️ (ZWJ sequence) ✅ 👍🏽",
    "emoji🙂inside🙂words",
    "<|endoftext|>",
    "before<|endoftext|>after",
    "a <|endoftext|> b",
    "<|endoftext|><|endoftext|>\n<|endoftext|>",
    "<|endoftext",
    "3", "33", "333", "3333", "12345678", "3.14159", "1,000,000", "½ ¾ ² ³ ٣ Ⅻ",
    "!!!!!!", "...", "?!?!", "--- ___ ***", "(parenthesis) [brackets] {braces}",
    "\"double\" 'single' `back`",
    "tab\tseparated\tvalues", "\t\tindented", "mixed \t \n whitespace  \n\n  end  ",
    "trailing spaces   ", "   leading spaces", "line1\nline2\n\nline4\n",
    "\u00a0nbsp\u00a0and\u2003em\u3000ideographic space",
    "x" * 50, "word " * 12,
    "Ὦ μέγα σέβας", "עברית العربية",
    "ALL CAPS SHOUTING", "camelCaseIdentifier snake_case_name",
    "http://example.com/path?q=1&r=2",
]


def split_train(text):
    try:
        from yunmin_train.data import split_text
        return split_text(text)
    except ImportError:   # same rule as yunmin_train.data: last 10 % of the characters held out
        n = (len(text) * 9) // 10
        return text[:n], text[n:]


def read_text(path):
    with open(path, "r", encoding="utf-8", newline="") as f:
        return f.read()


def shakespeare_lines(text, n, seed=7):
    lines = [l for l in text.split("\n") if len(l.strip()) > 20]
    rnd = random.Random(seed)
    return rnd.sample(lines, min(n, len(lines)))


def build(train_text, vocab_size, min_frequency):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors, trainers
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    try:
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    except TypeError:
        tok.post_processor = processors.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    # paragraphs (cut after a blank line), so runs of newlines are seen whole
    chunks = [c for c in re.split(r"(?<=\n\n)(?=[^\n])", train_text) if c]
    tok.train_from_iterator(chunks, trainer=trainer, length=len(chunks))
    added = []
    for s in SPACE_RUNS:
        try:
            added.append(AddedToken(s, single_word=False, lstrip=False, rstrip=False,
                                    normalized=True, special=False))
        except TypeError:     # older tokenizers without `special`
            added.append(AddedToken(s, single_word=False, lstrip=False, rstrip=False,
                                    normalized=True))
    tok.add_tokens(added)
    return tok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", default=os.environ.get("SHAKESPEARE_TXT"),
                    help="training text (default: $SHAKESPEARE_TXT)")
    ap.add_argument("--out", default="tests/fixtures/shakespeare")
    ap.add_argument("--vocab-size", type=int, default=4096,
                    help="BPE vocabulary incl. <|endoftext|> (the 3 space tokens come on top)")
    ap.add_argument("--min-frequency", type=int, default=2)
    ap.add_argument("--strict", action="store_true", help="exit 1 if the toolkit tokenizer differs")
    a = ap.parse_args(argv)
    if not a.text or not os.path.exists(a.text):
        raise SystemExit(f"text file not found: {a.text!r} (pass --text or set SHAKESPEARE_TXT)")
    import tokenizers
    t0 = time.time()
    text = read_text(a.text)
    train_text, _ = split_train(text)
    print(f"tokenizers {tokenizers.__version__}; training BPE (vocab {a.vocab_size}) on "
          f"{len(train_text)} of {len(text)} characters of {a.text}", flush=True)
    tok = build(train_text, a.vocab_size, a.min_frequency)
    os.makedirs(a.out, exist_ok=True)
    tok_path = os.path.join(a.out, "tokenizer.json")
    tok.save(tok_path, pretty=True)
    with open(tok_path, "r", encoding="utf-8") as f:
        spec = json.load(f)
    vocab = spec["model"]["vocab"]
    n_total = tok.get_vocab_size(with_added_tokens=True)
    print(f"trained in {time.time() - t0:.1f} s: {len(vocab)} BPE tokens, "
          f"{len(spec['model']['merges'])} merges, {n_total} with added tokens", flush=True)
    eot = vocab.get("<|endoftext|>")
    if eot != 0:
        raise SystemExit(f"<|endoftext|> has id {eot}, expected 0")
    added = {t["content"]: t for t in spec["added_tokens"]}
    for s in SPACE_RUNS:
        t = added.get(s)
        print(f"  added token {s!r}: id {t and t['id']}, normalized {t and t.get('normalized')}, "
              f"special {t and t.get('special')}")

    cases_text = FIXED_CASES + shakespeare_lines(text, 8)
    cases = [{"text": s, "ids": tok.encode(s).ids} for s in cases_text]
    with open(os.path.join(a.out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"source": f"reference tokenizations produced with Hugging Face tokenizers "
                             f"{tokenizers.__version__} for the Shakespeare BPE tokenizer "
                             f"(tools/train/train_tokenizer.py)", "cases": cases},
                  f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(a.out, "README.md"), "w", encoding="utf-8") as f:
        f.write(
            "# Shakespeare byte-level BPE tokenizer\n\n"
            "Made by `tools/train/train_tokenizer.py` with Hugging Face tokenizers "
            f"{tokenizers.__version__} from the first 90 % of the characters of "
            "tinyshakespeare.txt. GPT-NeoX structure: NFC normalizer, ByteLevel pre-tokenizer "
            "(add_prefix_space false, use_regex true), ByteLevel decoder, BPE merges as pairs.\n"
            f"{len(vocab)} BPE tokens (id 0 `<|endoftext|>`, special) plus non-special added "
            f"tokens for runs of 2, 3 and 4 spaces (ids {len(vocab)}..{len(vocab) + 2}, "
            f"normalized: true): {n_total} ids.\n\n"
            f"`cases.json`: {len(cases)} strings with the ids HF tokenizers produces for them.\n")
    print(f"wrote {tok_path}, cases.json ({len(cases)} cases), README.md", flush=True)

    # cross-check the toolkit's pure-Python tokenizer
    try:
        from yunmin_train.tokenizer import Tokenizer as Ours
    except ImportError as e:
        print(f"note: yunmin_train not importable ({e}); skipping the cross-check "
              f"(run with PYTHONPATH=tools/train)")
        return 0
    ours = Ours.from_file(tok_path)
    bad = [c["text"] for c in cases if ours.encode(c["text"]) != c["ids"]]
    for s in bad[:10]:
        print(f"  MISMATCH on case {s!r}")
    dec_bad = [c["text"] for c in cases
               if ours.decode(c["ids"]) != tok.decode(c["ids"], skip_special_tokens=False)]
    for s in dec_bad[:10]:
        print(f"  DECODE MISMATCH on case {s!r}")
    t1 = time.time()
    train_part, val_part = split_train(text)
    whole = {"whole file": text, "training part": train_part, "held-out part": val_part}
    whole_bad = []
    for name, s in whole.items():
        hf_ids = tok.encode(s).ids
        our_ids = ours.encode(s)
        same = hf_ids == our_ids
        print(f"  {name}: {len(hf_ids)} tokens, toolkit {'identical' if same else 'DIFFERENT'}")
        if not same:
            whole_bad.append(name)
    print(f"  (whole-text cross-check took {time.time() - t1:.1f} s)")
    if bad or dec_bad or whole_bad:
        print(f"WARNING: toolkit tokenizer differs from HF tokenizers: {len(bad)} case(s), "
              f"{len(dec_bad)} decode(s), texts {whole_bad}", flush=True)
        return 1 if a.strict else 0
    print(f"toolkit tokenizer == HF tokenizers on all {len(cases)} cases and the whole text")
    return 0


if __name__ == "__main__":
    sys.exit(main())
