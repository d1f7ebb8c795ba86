"""tools/train/corpus/alloc_profiles.py: magnitude's ranking at given per-layer counts (from a
study's learned rows or from a profile) and at the same count in every layer (CPU)."""

import os
import sys

import numpy as np
import torch

from yunmin_train import masks as M
from yunmin_train.model import MambaConfig, MambaLM, load_model, save_model
from yunmin_train.tokenizer import Tokenizer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "corpus"))
import alloc_profiles  # noqa: E402


def _model_dir(tmp_path, tok_path):
    torch.manual_seed(5)
    cfg = MambaConfig(vocab_size=Tokenizer.from_file(tok_path).vocab_size, hidden_size=16, state_size=4, num_hidden_layers=3,
                      expand=2, conv_kernel=3, use_bias=False)
    d = tmp_path / "model"
    save_model(MambaLM(cfg).eval(), str(d), tokenizer_path=tok_path)
    return str(d)


def test_alloc_from_profile_and_uniform(tmp_path, tiny_tokenizer_path, sample_text_path):
    model_dir = _model_dir(tmp_path, tiny_tokenizer_path)
    L, Di, N = 3, 32, 4
    counts = [20, 5, 11]                      # an uneven allocation, 36 of 96 kept
    keep = np.zeros((L, Di), dtype=bool)
    for l, c in enumerate(counts):
        keep[l, :c] = True
    cl, sl = M.bool_to_logits(keep, np.repeat(keep[:, :, None], N, axis=2))
    src = str(tmp_path / "learned.sparsity.safetensors")
    M.save_profile(src, cl, sl, "gumbel-sigmoid", None, {})
    out = tmp_path / "out"
    assert alloc_profiles.main(["--model", model_dir, "--train-text", sample_text_path,
                                "--tokens", "256", "--alloc-from", f"0.625={src}",
                                "--uniform", "--out-dir", str(out)]) == 0
    ch_a, st_a, _, meta = M.load_profile(str(out / "magnitude-alloc-62.safetensors"))
    ch_u, _, _, _ = M.load_profile(str(out / "magnitude-uniform-62.safetensors"))
    assert [int(x) for x in (ch_a > 0).sum(axis=1)] == counts
    assert [int(x) for x in (ch_u > 0).sum(axis=1)] == [12, 12, 12]   # round(0.375 * 32)
    assert np.array_equal(st_a > 0, np.repeat((ch_a > 0)[:, :, None], N, axis=2))
    # the kept channels are the highest-energy ones of each layer
    m = load_model(model_dir, device="cpu").eval()
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    ids = np.asarray(tok.encode(open(sample_text_path, encoding="utf-8").read()))[:256]
    energy, _ = M.state_statistics(m, ids)
    for l in range(L):
        kept = energy[l][ch_a[l] > 0]
        dropped = energy[l][ch_a[l] <= 0]
        assert kept.min() >= dropped.max()


def test_needs_a_source(tmp_path, tiny_tokenizer_path, sample_text_path):
    model_dir = _model_dir(tmp_path, tiny_tokenizer_path)
    try:
        alloc_profiles.main(["--model", model_dir, "--train-text", sample_text_path,
                             "--out-dir", str(tmp_path / "o")])
    except SystemExit as e:
        assert "--study or --alloc-from" in str(e)
    else:
        raise AssertionError("no error without --study or --alloc-from")
