import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from yunmin_train import data as data_mod
from yunmin_train import evaluate as ev
from yunmin_train.model import load_model, MambaConfig, MambaLM
from yunmin_train.tokenizer import Tokenizer
from yunmin_train.train import build_parser, train, lr_at


def test_split_is_last_ten_percent_of_characters():
    text = "".join(chr(0x61 + i % 26) for i in range(1005)) + "é" * 12
    tr, va = data_mod.split_text(text)
    n = len(text)
    assert len(tr) == (n * 9) // 10 and tr + va == text
    assert data_mod.select_split(text, "all") == text
    assert data_mod.select_split(text, "val") == va
    # tinyshakespeare numbers quoted in data.py's docstring
    tr, va = data_mod.split_text("x" * 1115394)
    assert (len(tr), len(va)) == (1003854, 111540)


def test_token_cache_round_trip(tmp_path, tiny_tokenizer_path):
    ids1 = data_mod.tokenize_cached("hear me speak", tiny_tokenizer_path, str(tmp_path), "t")
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".npy")
    ids2 = data_mod.tokenize_cached("hear me speak", tiny_tokenizer_path, str(tmp_path), "t")
    assert ids1.tolist() == ids2.tolist() == Tokenizer.from_file(tiny_tokenizer_path).encode("hear me speak")


def test_batches_are_contiguous_windows():
    ids = np.arange(1000, dtype=np.int32)
    s = data_mod.BatchSampler(ids, 4, 16, seed=0)
    x, y = s.next()
    assert x.shape == (4, 16) and y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.all(x[:, 1:] - x[:, :-1] == 1)


def test_lr_schedule():
    a = build_parser().parse_args(["--text", "t", "--tokenizer", "k", "--out", "o",
                                   "--lr", "1e-3", "--warmup-steps", "10"])
    assert lr_at(a, 0, 0.0) == pytest.approx(1e-4)
    assert lr_at(a, 9, 0.0) == pytest.approx(1e-3)
    assert lr_at(a, 100, 0.5) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr_at(a, 100, 1.0) == pytest.approx(1e-4)


def _train_args(tmp_path, text, tok, extra=()):
    return build_parser().parse_args([
        "--text", text, "--tokenizer", tok, "--out", str(tmp_path / "out"),
        "--work-dir", str(tmp_path / "work"), "--d-model", "32", "--n-layer", "2",
        "--d-state", "4", "--batch-size", "8", "--seq-len", "32", "--lr", "1e-2",
        "--warmup-steps", "2", "--eval-interval", "15", "--eval-ctx", "32", "--log-interval", "5",
        "--seed", "1", "--device", "cpu", "--quiet", *extra])


def test_training_reduces_loss_and_checkpoints(tmp_path, sample_text_path, tiny_tokenizer_path):
    a = _train_args(tmp_path, sample_text_path, tiny_tokenizer_path, ["--max-steps", "30"])
    done = train(a)
    recs = [json.loads(l) for l in open(tmp_path / "out" / "train_log.jsonl")]
    tr = [r for r in recs if r["type"] == "train"]
    evs = [r for r in recs if r["type"] == "eval"]
    assert recs[0]["type"] == "config" and recs[-1]["type"] == "done"
    assert tr[-1]["loss"] < tr[0]["loss"] - 1.0, (tr[0], tr[-1])
    assert {"step", "loss", "lr", "tokens_per_s"} <= set(tr[0])
    assert len(evs) == 2 and evs[1]["val_loss"] < evs[0]["val_loss"]
    assert done["step"] == 30
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp_path / "out" / f).exists()
    ck = tmp_path / "work" / "checkpoint"
    assert json.loads((ck / "trainer_state.json").read_text())["step"] == 30
    # the exported model is the best held-out checkpoint; evaluate reproduces its loss
    m = load_model(str(tmp_path / "out"))
    va = data_mod.load_splits(sample_text_path, tiny_tokenizer_path)[1]
    r = ev.evaluate_ids(m, va, 32)
    assert r["mean_nll"] == pytest.approx(done["best_val_loss"], rel=1e-5)

    # resume: continue to 40 steps from the checkpoint, log appended
    a2 = _train_args(tmp_path, sample_text_path, tiny_tokenizer_path,
                     ["--max-steps", "40", "--resume"])
    done2 = train(a2)
    assert done2["step"] == 40
    recs2 = [json.loads(l) for l in open(tmp_path / "out" / "train_log.jsonl")]
    assert len(recs2) > len(recs) and recs2[len(recs)]["resumed"] is True


def test_training_cli_help_runs():
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--help"])
    assert e.value.code == 0


def _manual_ppl(model, ids, ctx):
    """The protocol written out with a per-token recurrent loop (no batching)."""
    total, n = 0.0, 0
    model.set_scan("sequential")
    for s in range(0, len(ids), ctx):
        w = [int(t) for t in ids[s:s + ctx]]
        if len(w) < 2:
            continue
        state = model.init_state(1)
        for i in range(len(w) - 1):
            logits, state = model(torch.tensor([[w[i]]]), state=state, return_state=True)
            lp = torch.log_softmax(logits[0, -1].double(), -1)
            total -= float(lp[w[i + 1]])
            n += 1
    model.set_scan("parallel")
    return math.exp(total / n), n


@pytest.mark.parametrize("n_ids, ctx", [(50, 16), (49, 16), (33, 16), (10, 32)])
def test_perplexity_equals_exp_of_manual_nll(n_ids, ctx):
    cfg = MambaConfig(vocab_size=40, hidden_size=16, state_size=4, num_hidden_layers=2)
    m = MambaLM(cfg).reset_parameters(0).double().eval()
    with torch.no_grad():
        m.backbone.embeddings.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(2))
    ids = np.random.RandomState(0).randint(0, 40, n_ids)
    r = ev.evaluate_ids(m, ids, ctx, batch_size=2)
    ppl, n = _manual_ppl(m, ids, ctx)
    full, last = divmod(n_ids, ctx)
    assert r["n_scored"] == n == full * (ctx - 1) + max(0, last - 1)
    assert r["ppl"] == pytest.approx(ppl, rel=1e-12)
    assert r["ppl"] == pytest.approx(math.exp(r["nll_sum"] / r["n_scored"]), rel=1e-15)


def test_evaluate_cli_prints_json(tmp_path, sample_text_path, tiny_tokenizer_path, capsys):
    cfg = MambaConfig(vocab_size=400, hidden_size=16, state_size=4, num_hidden_layers=1)
    from yunmin_train.model import save_model
    save_model(MambaLM(cfg).reset_parameters(0), str(tmp_path / "m"), tokenizer_path=tiny_tokenizer_path)
    out = tmp_path / "eval.json"
    ev.main(["--model", str(tmp_path / "m"), "--text", sample_text_path, "--split", "val",
             "--ctx", "64", "--device", "cpu", "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["split"] == "val" and r["ctx"] == 64 and r["n_scored"] > 0
    assert r["ppl"] == pytest.approx(math.exp(r["mean_nll"]))
    assert json.loads(capsys.readouterr().out)["ppl"] == r["ppl"]
