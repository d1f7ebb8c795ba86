import json
import os
import random
import re
import sys

import pytest

from conftest import FIXTURES, train_tiny_bpe, SAMPLE_TEXT
from yunmin_train.tokenizer import (Tokenizer, WHITESPACE, split_gpt2, bytes_to_unicode,
                                    char_class, LETTER, NUMBER)

NEOX = os.path.join(FIXTURES, "gpt-neox")
SHAKESPEARE = os.path.join(FIXTURES, "shakespeare")


@pytest.fixture(scope="module")
def neox():
    return Tokenizer.from_file(os.path.join(NEOX, "tokenizer.json"))


def _cases(path):
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)["cases"]


def test_gpt_neox_cases_match_hf_tokenizers(neox):
    cases = _cases(os.path.join(NEOX, "cases.json"))
    assert len(cases) == 47
    bad = [(c["text"], neox.encode(c["text"]), c["ids"]) for c in cases
           if neox.encode(c["text"]) != c["ids"]]
    assert not bad, f"{len(bad)} mismatches, first: {bad[0]!r}"


def test_gpt_neox_decode_round_trip(neox):
    for c in _cases(os.path.join(NEOX, "cases.json")):
        assert neox.decode(c["ids"]) == c["text"]


def test_added_space_tokens_are_split_first(neox):
    assert neox.encode("    Hello") == [50274, 12092]
    assert neox.encode("a<|endoftext|>b") == [66, 0, 67]
    assert neox.decode([0], skip_special_tokens=True) == ""
    assert neox.decode([50276]) == "  "


@pytest.mark.skipif(not os.path.exists(os.path.join(SHAKESPEARE, "cases.json")),
                    reason="tests/fixtures/shakespeare/cases.json not generated yet "
                           "(tools/train/train_tokenizer.py on the GPU machine)")
def test_shakespeare_cases_match_hf_tokenizers():
    tok = Tokenizer.from_file(os.path.join(SHAKESPEARE, "tokenizer.json"))
    cases = _cases(os.path.join(SHAKESPEARE, "cases.json"))
    bad = [c["text"] for c in cases if tok.encode(c["text"]) != c["ids"]]
    assert not bad, f"{len(bad)} of {len(cases)} mismatch, e.g. {bad[0]!r}"


def _regex_splitter():
    """GPT-2's regex rebuilt with explicit classes from unicodedata (slow to build, exact)."""
    letters, numbers = [], []
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        k = char_class(chr(cp))
        if k == LETTER:
            letters.append(cp)
        elif k == NUMBER:
            numbers.append(cp)

    def ranges(cps):
        out, start, prev = [], None, None
        for c in cps:
            if start is None:
                start = prev = c
            elif c == prev + 1:
                prev = c
            else:
                out.append((start, prev))
                start = prev = c
        out.append((start, prev))
        return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                       for a, b in out)

    L, N = ranges(letters), ranges(numbers)
    S = "".join(re.escape(c) for c in sorted(WHITESPACE))
    pat = (rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+")
    rx = re.compile(pat)
    return lambda s: rx.findall(s)


def test_hand_split_equals_regex_split_on_random_strings():
    rx = _regex_splitter()
    alphabet = (list("aZé'’sStdmlrve ") + [" ", " ", "\t", "\n", "\r", "\u00a0", "\u2003", "\u3000",
                "\u0085", "\x1c", "1", "٣", "½", "Ⅻ", "!", "?", ".", "-", "_", "😀", "\u200d",
                "\u0301", "漢", "字", "ﬁ", "<", "|", ">"])
    rnd = random.Random(1234)
    for _ in range(3000):
        s = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 24)))
        assert split_gpt2(s) == rx(s), repr(s)
    text = SAMPLE_TEXT + " 'll 've 're  x  \n\n  y\t\tz 12,345 ½ don't"
    assert split_gpt2(text) == rx(text)
    assert "".join(split_gpt2(text)) == text


def test_bytes_to_unicode_is_a_bijection_on_printables():
    m = bytes_to_unicode()
    assert len(set(m.values())) == 256
    assert m[ord("A")] == "A" and m[ord(" ")] == "\u0120" and m[ord("\n")] == "\u010a"


def test_merges_as_strings_or_pairs_give_the_same_ids():
    spec = train_tiny_bpe(SAMPLE_TEXT, n_merges=60)
    legacy = json.loads(json.dumps(spec))
    legacy["model"]["merges"] = [" ".join(m) for m in spec["model"]["merges"]]
    a, b = Tokenizer(spec), Tokenizer(legacy)
    for text in (SAMPLE_TEXT, "  Before   we\tproceed", "<|endoftext|>First"):
        assert a.encode(text) == b.encode(text)
        assert a.decode(a.encode(text)) == text


def test_nfc_normalizer_applies():
    tok = Tokenizer(train_tiny_bpe(SAMPLE_TEXT, n_merges=10))
    assert tok.encode("e\u0301") == tok.encode("\u00e9")


def test_leftmost_longest_added_tokens():
    spec = train_tiny_bpe("ab", n_merges=0, space_tokens=False)
    spec["added_tokens"] += [
        {"id": 300, "content": "abc", "normalized": False, "special": False},
        {"id": 301, "content": "bcd", "normalized": False, "special": False},
        {"id": 302, "content": "abcde", "normalized": False, "special": False},
    ]
    tok = Tokenizer(spec)
    bid = tok.vocab
    assert tok.encode("xabcdy") == [bid["x"], 300, bid["d"], bid["y"]]
    assert tok.encode("abcde") == [302]
    assert tok.encode("zbcd") == [bid["z"], 301]
