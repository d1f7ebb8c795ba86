"""The corpus builder's cleaning and split rules, train.py's --val-text, and the shard writer."""

import hashlib
import json
import os
import sys
import unicodedata

import numpy as np
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS_DIR = os.path.join(os.path.dirname(HERE), "corpus")
sys.path.insert(0, CORPUS_DIR)

import build_corpus as bc  # noqa: E402
import shard_model  # noqa: E402
from yunmin_train import data as data_mod  # noqa: E402
from yunmin_train.model import MambaConfig, MambaLM, load_model, save_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SHAKESPEARE_TOK = os.path.join(REPO, "tests", "fixtures", "shakespeare", "tokenizer.json")


def test_clean():
    s = "a\r\nb\rc  \n\n\n\n\x00d\x07\te\n\n"
    assert bc.clean(s) == "a\nb\nc\n\nd\te"
    assert bc.clean("\n\n  x  \n\n") == "  x"


def test_gcide_markup():
    assert bc.gcide_text('A["e]rate') == "Aërate"
    assert bc.gcide_text("caf['e] [ae]on na[~n]o {Air}") == "café æon naño Air"
    assert bc._PROVENANCE.match("      [1913 Webster]")
    assert bc._PROVENANCE.match("[WordNet 1.5]")
    assert not bc._PROVENANCE.match("   1. To combine [as, to aerate]")


def test_brown_detokenizer():
    toks = "The/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, it's/pps+bez fine/jj ./."
    assert bc.brown_sentence(toks.split()) == 'The jury said "no evidence", it\'s fine.'
    assert bc.brown_sentence("costs/vbz $/nn 5/cd (/( about/rb )/) ./.".split()) == \
        "costs $5 (about)."


def test_pod_text():
    pod = ("=head1 NAME\n\nperlfoo - the C<foo> thing\n\n=over 4\n\n=item * B<bold> I<it>\n\n"
           "=back\n\n=begin html\n\n<p>x</p>\n\n=end html\n\nE<lt>tagE<gt> done\n\n=cut\n")
    assert bc.pod_text(pod) == "NAME\n\nperlfoo - the foo thing\n\n* bold it\n\n<tag> done"


def test_split_rule_is_the_documented_hash():
    for src, group in [("gcide", "apple"), ("brown", "ca01"), ("bible", "Genesis 1")]:
        b = int(hashlib.sha256(f"{src}\0{group}".encode()).hexdigest()[:8], 16) % 100
        want = "train" if b < 90 else ("val" if b < 95 else "test")
        assert bc.split_of(src, group) == want
    counts = {"train": 0, "val": 0, "test": 0}
    for i in range(4000):
        counts[bc.split_of("x", str(i))] += 1
    assert 0.87 < counts["train"] / 4000 < 0.93
    assert 0.035 < counts["val"] / 4000 < 0.065 and 0.035 < counts["test"] / 4000 < 0.065


def test_committed_manifest_is_consistent():
    with open(os.path.join(CORPUS_DIR, "manifest.json"), encoding="utf-8") as f:
        m = json.load(f)
    assert set(m["sources"]) == set(bc.LICENCES)
    for sp in ("train", "val", "test"):
        docs = sum(s[sp]["docs"] for s in m["sources"].values())
        assert docs == m["splits"][sp]["docs"]
        # the split file = the documents + a separator between each two + the final newline
        chars = sum(s[sp]["chars"] for s in m["sources"].values())
        assert chars + (docs - 1) * len(bc.SEP) + 1 == m["splits"][sp]["chars"]
        assert len(m["files"][sp + ".txt"]["sha256"]) == 64
    for s in m["sources"].values():
        assert s["licence"] and s["package"]


@pytest.mark.skipif(not os.path.exists(SHAKESPEARE_TOK), reason="no Shakespeare tokenizer")
def test_load_splits_with_val_file(tmp_path):
    tr, va = tmp_path / "train.txt", tmp_path / "val.txt"
    tr.write_text("To be, or not to be: that is the question.\n" * 20, encoding="utf-8")
    va.write_text("Whether 'tis nobler in the mind to suffer\n" * 5, encoding="utf-8")
    a, b, info = data_mod.load_splits(str(tr), SHAKESPEARE_TOK, val_path=str(va))
    whole_a = data_mod.tokenize_cached(tr.read_text(encoding="utf-8"), SHAKESPEARE_TOK)
    whole_b = data_mod.tokenize_cached(va.read_text(encoding="utf-8"), SHAKESPEARE_TOK)
    assert a.tolist() == whole_a.tolist() and b.tolist() == whole_b.tolist()
    assert info["n_train_chars"] == len(tr.read_text(encoding="utf-8"))
    assert info["val_text"] == str(va) and info["val_percent"] is None
    # a cache filled by another tokenizer at cache_path() is what tokenize_cached returns
    cache = tmp_path / "cache"
    cache.mkdir()
    text = "hello"
    p = data_mod.cache_path(text, open(SHAKESPEARE_TOK, "rb").read(), str(cache), "x")
    np.save(p, np.array([7, 8, 9], dtype=np.int32))
    assert data_mod.tokenize_cached(text, SHAKESPEARE_TOK, str(cache), "x").tolist() == [7, 8, 9]


def test_shard_model_round_trip(tmp_path):
    cfg = MambaConfig(vocab_size=512, hidden_size=64, state_size=8, num_hidden_layers=3)
    m = MambaLM(cfg).reset_parameters(seed=3)
    save_model(m, str(tmp_path / "one"), dtype="bfloat16")
    assert shard_model.main([str(tmp_path / "one"), str(tmp_path / "sh"),
                             "--max-shard-mib", "0.1"]) == 0
    shards = sorted(p for p in os.listdir(tmp_path / "sh") if p.startswith("model-"))
    assert len(shards) >= 3
    idx = json.load(open(tmp_path / "sh" / "model.safetensors.index.json"))
    assert set(idx["weight_map"].values()) == set(shards)
    for s in shards:
        assert os.path.getsize(tmp_path / "sh" / s) <= 0.1 * 1024 * 1024
    a = load_model(str(tmp_path / "one"))
    b = load_model(str(tmp_path / "sh"))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    with pytest.raises(SystemExit):
        shard_model.main([str(tmp_path / "one"), str(tmp_path / "tiny"), "--max-shard-mib",
                          "0.06"])


CORPUS_TOK = os.path.join(CORPUS_DIR, "tokenizer")


@pytest.mark.skipif(not os.path.exists(os.path.join(CORPUS_TOK, "cases.json")),
                    reason="tools/train/corpus/tokenizer/ not generated yet "
                           "(tools/train/corpus/run_corpus_model.sh on the GPU machine)")
def test_corpus_tokenizer_cases_match_hf_tokenizers():
    from yunmin_train.tokenizer import Tokenizer
    tok = Tokenizer.from_file(os.path.join(CORPUS_TOK, "tokenizer.json"))
    with open(os.path.join(CORPUS_TOK, "cases.json"), encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    assert len(cases) > 60
    bad = [c["text"] for c in cases if tok.encode(c["text"]) != c["ids"]]
    assert not bad, f"{len(bad)} of {len(cases)} mismatch, e.g. {bad[0]!r}"
    for c in cases:
        assert tok.decode(c["ids"]) == unicodedata.normalize("NFC", c["text"])
