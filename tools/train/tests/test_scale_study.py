"""yunmin_train.scale_study: the FLOP count, the allocation control, the downstream scoring and
the merge, on tiny random models (CPU)."""

import json
import math
import statistics

import numpy as np
import torch

from yunmin_train import masks as M
from yunmin_train import scale_study as S
from yunmin_train.model import MambaConfig, MambaLM


def tiny(seed=3):
    torch.manual_seed(seed)
    cfg = MambaConfig(vocab_size=64, hidden_size=16, state_size=4, num_hidden_layers=3,
                      expand=2, conv_kernel=3, use_bias=False)
    return MambaLM(cfg).eval()


def test_dense_flops_equal_twice_the_weights_used_per_token():
    m = tiny()
    cfg = m.config
    mix, whole = S.flops_per_token(cfg, [cfg.d_inner] * cfg.num_hidden_layers)
    # reference: 2 x every matrix/conv weight touched per token (from the parameter shapes),
    # plus the scan (6 per state entry) and D skip + gate (4 per channel)
    ref = 0
    for layer in m.backbone.layers:
        mx = layer.mixer
        for w in (mx.in_proj.weight, mx.x_proj.weight, mx.dt_proj.weight, mx.out_proj.weight,
                  mx.conv1d.weight):
            ref += 2 * w.numel()
        ref += 6 * mx.A_log.numel() + 4 * mx.D.numel()
    assert mix == ref
    assert whole == ref + 2 * m.backbone.embeddings.weight.numel()
    half, _ = S.flops_per_token(cfg, [cfg.d_inner // 2] * cfg.num_hidden_layers)
    assert half * 2 == mix


def test_alloc_hard_keeps_the_given_counts_and_the_highest_scores():
    rng = np.random.default_rng(0)
    sc = rng.random((3, 10))
    keep = S.alloc_hard(sc, [2, 5, 9])
    assert keep.sum(axis=1).tolist() == [2, 5, 9]
    for l in range(3):
        assert sc[l][keep[l]].min() > sc[l][~keep[l]].max()


def test_task_accuracy_equals_one_sequence_at_a_time():
    m = tiny()
    rng = np.random.default_rng(1)
    task = []
    for i in range(7):
        seqs = [(rng.integers(1, 64, rng.integers(1, 6)).tolist(),
                 rng.integers(1, 64, rng.integers(1, 9)).tolist()) for _ in range(4)]
        task.append({"source": "a" if i % 2 else "b", "answer": int(rng.integers(0, 4)),
                     "seqs": seqs})
    ch = np.ones((3, 32), dtype=bool)
    ch[:, ::3] = False
    mk = M.masks_from_bool(ch, np.repeat(ch[:, :, None], 4, axis=2))
    for masks in (None, mk):
        right = []
        with torch.no_grad():
            for it in task:
                scores = []
                for p, c in it["seqs"]:
                    x = torch.tensor([p + c])
                    lp = torch.log_softmax(m.double()(x, masks=masks).float(), -1)[0]
                    scores.append(sum(float(lp[len(p) - 1 + j, t]) for j, t in enumerate(c)))
                right.append(int(np.argmax(scores) == it["answer"]))
        m.float()
        got = S.task_accuracy(m, task, masks, batch_items=3)
        assert math.isclose(got["all"], sum(right) / len(right))


def test_merge_mean_and_sd(tmp_path):
    paths = []
    for s, cos in ((1, 0.1), (2, 0.3)):
        row = {"seed": s, "level": 0.5, "method": "learned", "cos_loss": cos, "kl": 1.0,
               "ppl": 10.0 * s, "flops_cut_mixers": 0.5, "flops_cut_model": 0.4,
               "task": {"all": 0.5}}
        p = tmp_path / f"s{s}.json"
        p.write_text(json.dumps({"rows": [row], "dense": {"ppl": 9.0, "n_scored": 5},
                                 "n_params": 1, "flops_dense": {}, "device": "cpu",
                                 "config": {}}))
        paths.append(str(p))
    S.merge(paths, str(tmp_path / "m"))
    res = json.loads((tmp_path / "m" / "scale_results.json").read_text())
    e = res["table"][0]
    assert math.isclose(e["cos_loss"]["mean"], 0.2)
    assert math.isclose(e["cos_loss"]["sd"], statistics.stdev([0.1, 0.3]))
    assert e["ppl"]["n"] == 2 and e["task"]["mean"] == 0.5
