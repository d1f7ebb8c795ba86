"""yunmin_train.peft_scale: the domain split, each placement rule's layers, the trainable
parameter counts against the parameters attach() creates and a count from the matrix shapes,
the merge statistics and Pareto front, and one end-to-end run on a tiny model (CPU)."""

import json
import math
import os
import statistics

import numpy as np
import pytest
import torch

from test_masks import tiny_model_dir
from yunmin_train import adapters as A
from yunmin_train import peft_scale as P
from yunmin_train.model import load_model

SEP = P.SEP
BIBLE = ["Genesis 1\n\n1 In the beginning God created the heaven and the earth.\n\n2 And the "
         "earth was without form, and void.\n",
         "1 Kings 3\n\n1 And Solomon made affinity with Pharaoh king of Egypt.\n",
         "Song of Solomon 2\n\n1 I am the rose of Sharon, and the lily of the valleys.\n",
         "Psalms 23\n\n1 The LORD is my shepherd; I shall not want.\n"]
GCIDE = 'Pulpit \\Pul"pit\\, n. [L. pulpitum.]\n1. An elevated place.'
WORDNET = "declare\nv 1: state emphatically and authoritatively"
PERL = "NAME\n\nperlfaq5 - Files and Formats\n\nDESCRIPTION\n\nThis section deals with I/O."
OTHER = ".. SPDX-License-Identifier: GPL-2.0\n\n=====\nTitle\n=====\n\nText."


def test_domain_of_tells_the_corpus_domains_apart():
    for d in BIBLE:
        assert P.domain_of(d) == "bible"
    assert P.domain_of(GCIDE) == "gcide"
    assert P.domain_of(WORDNET) == "wordnet"
    assert P.domain_of(PERL) == "perl"
    assert P.domain_of(OTHER) == "other"
    assert P.domain_of("Genesis is a book.\n\n1 line") == "other"
    assert P.domain_of("The jury said 12\n\nno verse") == "other"


def test_task_texts_split_held_out_documents_by_index():
    val_docs = [f"Exodus {i}\n\n1 verse of chapter {i}.\n" for i in range(1, 10)]
    val = SEP.join([GCIDE] + val_docs[:4] + [WORDNET] + val_docs[4:])
    train = SEP.join([BIBLE[0], OTHER, BIBLE[1], PERL])
    tr, es, te = P.task_texts(train, val, "bible")
    assert tr == SEP.join(BIBLE[:2])
    assert es.split(SEP) == [val_docs[i] for i in (1, 5)]
    assert te.split(SEP) == [val_docs[i] for i in (0, 2, 3, 4, 6, 7, 8)]
    with pytest.raises(ValueError):
        P.task_texts(train, val, "perl")      # one train document, no held-out one


IMP = [{"layer": 0, "keep_fraction": 0.9, "mean_logit": 0.0},
       {"layer": 1, "keep_fraction": 0.2, "mean_logit": 0.0},
       {"layer": 2, "keep_fraction": 0.5, "mean_logit": 0.3},
       {"layer": 3, "keep_fraction": 0.5, "mean_logit": 0.1},
       {"layer": 4, "keep_fraction": 0.1, "mean_logit": 0.0},
       {"layer": 5, "keep_fraction": 0.6, "mean_logit": 0.0}]


def test_importance_from_logits_is_the_global_keep_fraction():
    c = np.array([[3.0, 2.0, 1.0, 0.5], [-1.0, -2.0, 0.9, -3.0], [2.5, 1.5, -0.5, 0.8]])
    imp, ch = P.importance_from_logits(c, 0.5)
    # global threshold: the 6 highest of 12 logits are kept (3, 2.5, 2, 1.5, 1, 0.9)
    assert ch.sum() == 6
    assert [e["keep_fraction"] for e in imp] == [0.75, 0.25, 0.5]
    assert P.ranked_layers(imp) == [0, 2, 1]


def test_rules_place_lora_and_ia3_on_the_right_layers():
    assert P.ranked_layers(IMP) == [0, 5, 2, 3, 1, 4]       # 2 before 3: higher mean logit
    plan = P.rule_plan("top", IMP, 6, 2, 8)
    assert plan["lora"]["layers"] == [0, 5] and plan["ia3"]["layers"] == [1, 2, 3, 4]
    assert plan["lora"]["r"] == 8 and plan["lora"]["alpha"] == 16
    plan = P.rule_plan("least", IMP, 6, 2, 8)
    assert plan["lora"]["layers"] == [1, 4] and plan["ia3"]["layers"] == [0, 2, 3, 5]
    plan = P.rule_plan("last", IMP, 6, 3, 4)
    assert plan["lora"]["layers"] == [3, 4, 5] and plan["ia3"]["layers"] == [0, 1, 2]
    plan = P.rule_plan("lora-all", IMP, 6, 2, 4)
    assert plan["lora"]["layers"] == list(range(6)) and plan["ia3"] is None
    plan = P.rule_plan("ia3", IMP, 6, 2, 4)
    assert plan["lora"] is None and plan["ia3"]["layers"] == list(range(6))
    plan = P.rule_plan("learned", IMP, 6, 2, 4)
    # 8 ranks in proportion to (0.9, 0.2, 0.5, 0.5, 0.1, 0.6) / 2.8: 2.57 0.57 1.43 1.43 0.29
    # 1.71 -> floors 2 0 1 1 0 1 (5), remainders to layers 1, 5, 0 -> 3 1 1 1 0 2
    assert plan["lora"]["layer_r"] == {"0": 3, "1": 1, "2": 1, "3": 1, "5": 2}
    assert plan["lora"]["layers"] == [0, 1, 2, 3, 5] and plan["ia3"]["layers"] == [4]


def test_proportional_ranks_sum_and_follow_the_weights():
    rng = np.random.default_rng(0)
    for _ in range(50):
        w = rng.random(8)
        total = int(rng.integers(1, 64))
        r = P.proportional_ranks(w, total)
        assert sum(r) == total and min(r) >= 0
        q = w / w.sum() * total
        assert all(abs(r[i] - q[i]) < 1 for i in range(8))
    assert P.proportional_ranks([0, 0, 0], 4) == [2, 1, 1]


@pytest.mark.parametrize("rule", P.RULES)
@pytest.mark.parametrize("r", [1, 4])
def test_parameter_counts_equal_the_attached_parameters(tmp_path, tiny_tokenizer_path, rule, r):
    d = tiny_model_dir(tmp_path, tiny_tokenizer_path, seed=4)
    model = load_model(d)
    cfg = model.config
    imp = [{"layer": l, "keep_fraction": f, "mean_logit": 0.0}
           for l, f in enumerate([0.3, 0.9, 0.5])]
    plan = P.rule_plan(rule, imp, 3, 1, r)
    n_before = sum(p.numel() for p in model.parameters())
    groups = A.attach(model, plan, seed=0)
    if rule == "full":
        assert plan == {"full": True} and P.plan_params(plan, cfg) is None
        assert A.count_trainable(groups) == n_before == sum(
            p.numel() for p in model.parameters() if p.requires_grad)
        return
    attached = sum(p.numel() for p in model.parameters()) - n_before
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert attached == trainable == A.count_trainable(groups) == P.plan_params(plan, cfg)
    # written out from the matrix shapes of this model (d_model 24, d_inner 48, d_state 8,
    # dt_rank 3): LoRA r x (24 + 96) on in_proj and r x (48 + 24) on out_proj = 192 r per
    # layer; IA3 24 (in_proj input) + 19 (x_proj output) + 48 (out_proj input) = 91 per layer
    want = {"ia3": 3 * 91, "top": 192 * r + 2 * 91, "least": 192 * r + 2 * 91,
            "last": 192 * r + 2 * 91, "lora-all": 3 * 192 * r}
    ranks = P.proportional_ranks([0.3, 0.9, 0.5], r)
    want["learned"] = 192 * sum(ranks) + 91 * sum(1 for x in ranks if x == 0)
    assert P.plan_params(plan, cfg) == want[rule]
    if rule == "learned":
        for l, layer in enumerate(model.backbone.layers):
            lo = getattr(layer.mixer.in_proj, "lora_A", None)
            assert (0 if lo is None else lo.shape[0]) == ranks[l]
            if lo is not None:         # alpha / r = 2 in every layer
                assert layer.mixer.in_proj.scaling == pytest.approx(2.0)


def test_run_list_puts_ia3_first_once_and_ranks_in_order():
    assert P.run_list(["full", "ia3", "top", "lora-all"], [8, 2]) == [
        ("ia3", 0), ("top", 8), ("lora-all", 8), ("top", 2), ("lora-all", 2), ("full", 0)]


def test_pareto_front_keeps_the_undominated_points():
    pts = [{"params": 10, "loss": 3.0}, {"params": 20, "loss": 2.5}, {"params": 20, "loss": 2.7},
           {"params": 30, "loss": 2.6}, {"params": 40, "loss": 2.0}, {"params": 5, "loss": 3.5},
           {"params": 10, "loss": 3.0}]
    front = P.pareto(pts)
    assert [(p["params"], p["loss"]) for p in front] == [(5, 3.5), (10, 3.0), (10, 3.0),
                                                         (20, 2.5), (40, 2.0)]


def _peft_part(seed, losses, base):
    rows = []
    for (rule, rank), loss in losses.items():
        rows.append({"seed": seed, "rule": rule, "rank": rank, "lora_layers": [0],
                     "trainable_params": 100 * (rank + 1), "trainable_fraction": 0.01 * (rank + 1),
                     "test_loss": loss, "best_step": 10 * seed, "steps": 50})
    return {"rows": rows, "base_test_loss": base, "domain": "bible", "importance": IMP,
            "ranked": [0, 5, 2, 3, 1, 4], "n_params": 10 ** 6, "device": "cpu",
            "config": {}, "task": {"train_tokens": 1, "es_tokens": 1, "test_tokens": 1}}


def test_merge_gives_mean_sd_and_the_front(tmp_path):
    rng = np.random.default_rng(3)
    keys = [("ia3", 0), ("top", 2), ("least", 2), ("top", 8)]
    vals = {k: rng.normal(3.0, 0.1, 3) for k in keys}
    paths = []
    for i, seed in enumerate((1, 2, 3)):
        p = tmp_path / f"peft_seed{seed}.json"
        p.write_text(json.dumps(_peft_part(seed, {k: float(vals[k][i]) for k in keys}, 3.5)))
        paths.append(str(p))
    rec = {"config": {"rec_batch_size": 4, "seq_len": 8, "rec_lr": 1e-3, "max_windows": 2},
           "steps": 7, "before": {"dense": {"ppl": 30.0}, "learned-50": {"ppl": 60.0}},
           "profiles": {"learned-50": {"per_layer_kept": [3, 1]}},
           "rows": [{"seed": s, "profile": n, "steps": 7, "ppl_before": b, "ppl_after": a,
                     "cos_loss_after": 0.1, "kl_after": 0.2}
                    for s, n, b, a in ((1, "dense", 30.0, 28.0), (1, "learned-50", 60.0, 40.0),
                                       (2, "dense", 30.0, 27.0), (2, "learned-50", 60.0, 42.0))]}
    (tmp_path / "recovery.json").write_text(json.dumps(rec))
    (tmp_path / "eval.json").write_text(json.dumps({"ppl": 31.25, "n_scored": 36837, "ctx": 256,
                                                     "text": "/x/test-head.txt"}))
    assert P.merge(paths, str(tmp_path / "recovery.json"), str(tmp_path / "m"),
                   str(tmp_path / "eval.json")) == 0
    res = json.load(open(tmp_path / "m" / "peft_scale.json"))
    table = {(e["rule"], e["rank"]): e for e in res["peft"]["table"]}
    for k in keys:
        e = table[k]["test_loss"]
        assert e["n"] == 3
        assert e["mean"] == pytest.approx(statistics.fmean(vals[k]), abs=1e-12)
        assert e["sd"] == pytest.approx(statistics.stdev(vals[k]), abs=1e-12)
    # the front from the means, recomputed here by brute force
    means = {k: statistics.fmean(vals[k]) for k in keys}
    want = [k for k in keys if not any(
        (100 * (o[1] + 1) <= 100 * (k[1] + 1) and means[o] < means[k]) or
        (100 * (o[1] + 1) < 100 * (k[1] + 1) and means[o] <= means[k]) for o in keys)]
    assert sorted((p["rule"], p["rank"]) for p in res["peft"]["pareto"]) == sorted(want)
    pd = {(e["rule"], e["rank"]): e for e in res["peft"]["paired"]}
    d = vals[("least", 2)] - vals[("top", 2)]
    assert pd[("least", 2)]["diff"]["mean"] == pytest.approx(float(d.mean()), abs=1e-12)
    assert pd[("least", 2)]["diff"]["sd"] == pytest.approx(float(d.std(ddof=1)), abs=1e-12)
    assert pd[("least", 2)]["n_better"] == int((d < 0).sum())
    assert set(pd) == {("least", 2)}          # no other rule has a run at a rank with top
    rt = {e["profile"]: e for e in res["recovery"]["table"]}
    assert rt["learned-50"]["ppl_after"]["mean"] == pytest.approx(41.0)
    assert rt["learned-50"]["after_over_dense_after"]["mean"] == pytest.approx(
        (40 / 28 + 42 / 27) / 2)
    assert rt["learned-50"]["before_over_dense_before"] == pytest.approx(2.0)
    assert rt["dense"]["after_over_before"]["sd"] == pytest.approx(
        statistics.stdev([28 / 30, 27 / 30]))
    md = open(tmp_path / "m" / "peft_scale.md").read()
    assert "Pareto front" in md and "learned-50" in md
    assert md.startswith("The model studied: held-out perplexity 31.25 on test-head.txt (36837")


def test_merge_skips_a_truncated_file(tmp_path):
    good = tmp_path / "peft_seed1.json"
    good.write_text(json.dumps(_peft_part(1, {("ia3", 0): 3.0}, 3.5)))
    bad = tmp_path / "peft_seed2.json"
    bad.write_text('{"rows": [')
    assert P.merge([str(good), str(bad)], str(tmp_path / "none.json"), str(tmp_path / "m")) == 0
    res = json.load(open(tmp_path / "m" / "peft_scale.json"))
    assert res["peft"]["table"][0]["test_loss"]["n"] == 1 and "recovery" not in res


def test_end_to_end_on_a_tiny_model(tmp_path, tiny_tokenizer_path):
    d = tiny_model_dir(tmp_path, tiny_tokenizer_path, seed=6)
    rng = np.random.default_rng(0)
    words = ["And", "the", "LORD", "said", "unto", "Moses", "land", "people", "king", "house"]

    def chapter(book, n):
        verses = [f"{v} " + " ".join(rng.choice(words, 12)) + "." for v in range(1, 8)]
        return f"{book} {n}\n\n" + "\n\n".join(verses) + "\n"
    train = SEP.join([chapter("Genesis", i) for i in range(1, 12)] + [GCIDE, WORDNET, OTHER] * 4)
    val = SEP.join([chapter("Exodus", i) for i in range(1, 9)] + [GCIDE, WORDNET, PERL, OTHER] * 3)
    (tmp_path / "train.txt").write_text(train)
    (tmp_path / "val.txt").write_text(val)
    cache = str(tmp_path / "cache")
    common = ["--model", d, "--train-text", str(tmp_path / "train.txt"), "--val-text",
              str(tmp_path / "val.txt"), "--cache-dir", cache, "--device", "cpu",
              "--seq-len", "16", "--max-windows", "4"]
    assert P.main(["tokenize", "--tokenizer", os.path.join(d, "tokenizer.json"), "--train-text",
                   str(tmp_path / "train.txt"), "--val-text", str(tmp_path / "val.txt"),
                   "--cache-dir", cache]) == 0
    imp_path = str(tmp_path / "importance.json")
    assert P.main(["importance", *common, "--mask-steps", "3", "--mask-batch-size", "2",
                   "--out", imp_path]) == 0
    imp = json.load(open(imp_path))
    assert sorted(imp["ranked"]) == [0, 1, 2] and sum(imp["per_layer_kept"]) == 3 * 48 // 2
    assert set(imp["domain_val_loss"]) == {"bible", "gcide", "wordnet", "perl", "other"}
    for seed in (1, 2):           # sized by a probe: seed 1 leads, seed 2 takes its sizing
        assert P.main(["peft", *common, "--importance", imp_path, "--seed", str(seed),
                       "--ranks", "2,1", "--k", "1", "--time-budget", "120", "--min-steps", "3",
                       "--max-steps", "3", "--probe-steps", "2", "--eval-every", "2",
                       "--batch-size", "2", "--es-windows", "2", "--test-windows", "3",
                       "--out", str(tmp_path / f"peft_seed{seed}.json")]
                      + (["--leader"] if seed == 1 else [])) == 0
    assert json.load(open(tmp_path / "peft_seed2.json"))["sizing"]["from_leader"]
    part = json.load(open(tmp_path / "peft_seed1.json"))
    assert part["sizing"]["steps"] == 3 and part["sizing"]["ranks"] == [2, 1]
    assert part["done"] and part["domain"] == "bible"
    assert [(r["rule"], r["rank"]) for r in part["rows"]] == P.run_list(P.RULES, [2, 1])
    for r in part["rows"]:
        assert r["trainable_params"] == r["params_counted"] and r["steps"] == 3
        assert math.isfinite(r["test_loss"]) and r["val_loss"] <= r["val_loss_before"]
    assert P.main(["recover", *common, "--importance", imp_path, "--seeds", "1",
                   "--levels", "0.5,0.7", "--time-budget", "60", "--min-steps", "2",
                   "--max-steps", "2", "--probe-steps", "2", "--rec-batch-size", "2",
                   "--mask-steps", "2", "--mask-batch-size", "2",
                   "--out", str(tmp_path / "recovery.json")]) == 0
    rec = json.load(open(tmp_path / "recovery.json"))
    assert [r["profile"] for r in rec["rows"]] == ["dense", "learned-50", "learned-70"]
    assert rec["profiles"]["learned-50"]["from"] == "importance step"
    assert rec["profiles"]["learned-70"]["per_layer_kept"] and \
        sum(rec["profiles"]["learned-70"]["per_layer_kept"]) == round(0.3 * 3 * 48)
    assert P.main(["merge", "--peft", str(tmp_path / "peft_seed1.json"),
                   str(tmp_path / "peft_seed2.json"), "--recovery", str(tmp_path / "recovery.json"),
                   "--out-dir", str(tmp_path / "m")]) == 0
    res = json.load(open(tmp_path / "m" / "peft_scale.json"))
    assert all(e["test_loss"]["n"] == 2 for e in res["peft"]["table"])
    assert len(res["peft"]["table"]) == 2 + 5 * 2
    full = next(r for r in part["rows"] if r["rule"] == "full")
    assert full["trainable_fraction"] == 1.0 and full["params_counted"] == part["n_params"]
    torch.manual_seed(0)
