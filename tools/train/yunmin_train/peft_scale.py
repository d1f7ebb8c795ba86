"""PEFT placement rules with a rank sweep, and a recovery fine-tune, on the corpus model.

    python -m yunmin_train.peft_scale tokenize --tokenizer T --train-text train.txt \\
        --val-text val.txt --cache-dir C          # the token cache (HF tokenizers if importable)
    python -m yunmin_train.peft_scale importance --model M --tokenizer T --train-text train.txt \\
        --val-text val.txt --cache-dir C --out importance.json [--bf16]
    python -m yunmin_train.peft_scale peft --model M ... --importance importance.json --seed 1 \\
        --time-budget S --out peft_seed1.json [--leader]
    python -m yunmin_train.peft_scale recover --model M ... --importance importance.json \\
        --seeds 1,2 --time-budget S --out recovery.json
    python -m yunmin_train.peft_scale merge --peft peft_seed*.json --recovery recovery.json \\
        --out-dir RESULTS

Task (peft). The corpus files are documents joined by "\\n<|endoftext|>\\n"; domain_of() tells
the domains from a document's first lines: GCIDE ("Word \\\\pro*nun\\\\, n."), WordNet ("word\\n
n 1: ..."), the KJV Bible ("Genesis 2\\n\\n1 ...", one chapter per document), the Perl
documentation ("NAME\\n\\n..."), and the rest (Brown, the Python and Linux documentation: not
told apart). The task adapts the model to one domain: trained on the domain's documents of
train.txt, early-stopped on every 4th of its documents in val.txt (index % 4 == 1, at most
--es-windows windows), tested on the others (at most --test-windows windows of --seq-len
tokens, evaluate.py's protocol from a zero state). The default domain is the KJV Bible: its
chapters are told apart without error, the 30 M-character train prefix holds ~280 of them
(~1 MB) and val.txt 64 from many books, a held-out set of ~50 k tokens; Perl's val.txt part is
6 documents, mostly release notes. --domain auto takes, of bible and perl, the one on which the
base model's held-out loss is highest. importance.json has every domain's base loss and the
mixed held-out loss (val.txt's first 96 windows), to tell whether the domain is a hard one.

Importance (importance). Channel masks learned on the frozen model at --level (default 50 %)
of the channels, one threshold over the whole model (yunmin_train.masks.learn_masks, as
scale_study's "learned"); a layer's importance is the fraction of its channels the global
threshold keeps (ties: the mean channel logit). The hard masks are saved beside the JSON
(.npz) for the recovery study.

Placement rules, each at LoRA rank r in --ranks (LoRA on in_proj and out_proj, alpha = 2 r,
so alpha / r = 2 at every rank; IA3 on in_proj input, x_proj output and out_proj input):
  ia3        IA3 on every layer (no LoRA: one run per seed, rank 0)
  top        LoRA on the --k most important layers, IA3 on the others (the seed's hybrid)
  least      LoRA on the k least important layers, IA3 on the others (control)
  last       LoRA on the last k layers, IA3 on the others (control without masks)
  learned    LoRA on every layer with ranks proportional to the importance, summing to k r
             (largest remainders; a layer given rank 0 gets IA3): the top rule's LoRA budget
  lora-all   LoRA on every layer at rank r, no IA3
  full       every weight of the model, lr --lr-full (the reference; one run per seed, rank 0,
             run last so that a short budget drops it first)
Every run: the same --steps of --batch-size x --seq-len tokens (sized by a probe when
--time-budget is given: the leader's probe decides for every seed, see --leader), AdamW,
LoRA lr --lr-lora, IA3 lr --lr-ia3 at every rank, 10 % warmup then cosine, the parameters of
the best early-stopping loss kept (yunmin_train.adapters.finetune). One JSON per seed, a row
appended as each run finishes.

Recovery (recover). The learned masks at --levels (50 %: importance's masks; other levels
learned in-process with the same protocol), then all weights fine-tuned with the masks fixed on
train.txt (yunmin_train.sparsity_study.recover: --rec-batch-size x --seq-len, lr --rec-lr,
10 % warmup, cosine) for N steps, N sized to the time; the control is the dense model given
the same N steps (an undertrained model also gains from more training). Held-out: val.txt's
first --max-windows windows; perplexity, and cos loss / KL against the original dense model,
before and after.

merge: mean, sample sd and n over seeds per (rule, rank) and per recovery profile, each rule's
test loss minus the top rule's at the same rank paired by seed (a seed fixes the batches and
the adapters' initialisation), the Pareto front of trainable parameters against mean test loss,
into RESULTS/peft_scale.json and .md.
"""

import argparse
import copy
import json
import math
import os
import re
import sys
import time

import numpy as np
import torch

from . import adapters as A
from . import data as data_mod
from . import masks as M
from .evaluate import nll_windows, pick_device
from .model import load_model
from .scale_study import fmt_summary as _fmt, summarize

SEP = "\n<|endoftext|>\n"
DOMAINS = ("gcide", "wordnet", "bible", "perl", "other")
CANDIDATES = ("bible", "perl")
RULES = ("ia3", "full", "top", "least", "last", "learned", "lora-all")
LORA_MODULES = ["in_proj", "out_proj"]
_GCIDE = re.compile(r"[^\n\\]+\\[^\n\\]*\\")
_WORDNET = re.compile(r"[^\n]+\n(?:n|v|adj|adv)(?: \d+)?: ")
_BIBLE = re.compile(r"(?:[1-3] )?[A-Z][A-Za-z]*(?: [A-Za-z]+)* \d+\n\n1 ")
DOMAIN_VAL_CHARS = 150_000        # per-domain base loss: the first characters of its val text


# ---------------------------------------------------------------------------------------------
# the task

def domain_of(doc):
    """The domain of one corpus document (module docstring)."""
    if _GCIDE.match(doc):
        return "gcide"
    if _WORDNET.match(doc):
        return "wordnet"
    if _BIBLE.match(doc):
        return "bible"
    if doc.startswith("NAME\n\n"):
        return "perl"
    return "other"


def split_docs(text):
    return [d for d in text.split(SEP) if d.strip()]


def task_texts(train_text, val_text, domain):
    """(train, early-stopping, test) texts of one domain: its train.txt documents; of its
    val.txt documents, index % 4 == 1 -> early stopping, the others -> test."""
    tr = [d for d in split_docs(train_text) if domain_of(d) == domain]
    va = [d for d in split_docs(val_text) if domain_of(d) == domain]
    es = [d for i, d in enumerate(va) if i % 4 == 1]
    te = [d for i, d in enumerate(va) if i % 4 != 1]
    if len(tr) < 2 or not es or not te:
        raise ValueError(f"domain {domain!r}: {len(tr)} train and {len(va)} held-out documents")
    return SEP.join(tr), SEP.join(es), SEP.join(te)


def domain_val_texts(val_text):
    """Per domain, its val.txt documents joined (the first DOMAIN_VAL_CHARS characters)."""
    out = {d: [] for d in DOMAINS}
    for doc in split_docs(val_text):
        out[domain_of(doc)].append(doc)
    return {d: SEP.join(v)[:DOMAIN_VAL_CHARS] for d, v in out.items() if v}


def all_texts(train_text, val_text, domains=CANDIDATES):
    """{cache tag: text} of every text the studies tokenize besides train/val themselves."""
    out = {f"domval-{d}": t for d, t in domain_val_texts(val_text).items()}
    for d in domains:
        try:
            tr, es, te = task_texts(train_text, val_text, d)
        except ValueError:
            continue
        out.update({f"task-{d}-train": tr, f"task-{d}-es": es, f"task-{d}-test": te})
    return out


def ids_of(text, tok_path, cache_dir, tag):
    return data_mod.tokenize_cached(text, tok_path, cache_dir, tag)


def loss_of(model, ids, ctx, max_windows=0, masks=None):
    if masks is not None:
        r = M.information_loss(model, ids[:max_windows * ctx] if max_windows else ids, masks,
                               ctx=ctx)
        return r["mean_nll"]
    total, count = nll_windows(model, ids, ctx, batch_size=64, max_windows=max_windows)
    return total / count


# ---------------------------------------------------------------------------------------------
# placement rules

def importance_from_logits(channel_logits, level):
    """Per layer {"layer", "keep_fraction", "mean_logit"} from learned channel logits [L, Di]
    at the global threshold for `level`; also returns the hard masks [L, Di]."""
    c = np.asarray(channel_logits, dtype=np.float64)
    ch, _ = M.hard_from_scores(c, np.ones(c.shape + (1,)), level, 0.0, "global")
    imp = [{"layer": l, "keep_fraction": float(ch[l].mean()), "mean_logit": float(c[l].mean())}
           for l in range(c.shape[0])]
    return imp, ch


def ranked_layers(importance):
    """Layers, most important first (keep fraction, then mean logit, then the lower index)."""
    return [e["layer"] for e in sorted(importance, key=lambda e: (-e["keep_fraction"],
                                                                  -e["mean_logit"], e["layer"]))]


def proportional_ranks(weights, total):
    """Integer ranks >= 0 proportional to weights, summing to total (largest remainders; ties
    to the lower index)."""
    w = np.asarray(weights, dtype=np.float64)
    w = np.maximum(w, 0)
    if w.sum() <= 0:
        w = np.ones_like(w)
    q = w / w.sum() * total
    r = np.floor(q).astype(int)
    rem = q - r
    for i in sorted(range(len(w)), key=lambda i: (-rem[i], i))[:total - int(r.sum())]:
        r[i] += 1
    return [int(x) for x in r]


def rule_plan(rule, importance, n_layer, k, r):
    """The adapters plan ({"lora", "ia3"}) of one placement rule (module docstring)."""
    def lora(layers, layer_r=None):
        p = {"layers": sorted(layers), "r": r, "alpha": 2 * r, "modules": list(LORA_MODULES)}
        if layer_r:
            p["layer_r"] = layer_r
        return p

    def ia3(layers):
        return A.ia3_part(sorted(layers)) if layers else None

    every = list(range(n_layer))
    if rule == "full":
        return {"full": True}
    if rule == "ia3":
        return {"lora": None, "ia3": ia3(every)}
    if rule == "lora-all":
        return {"lora": lora(every), "ia3": None}
    ranked = ranked_layers(importance)
    if rule in ("top", "least", "last"):
        chosen = ranked[:k] if rule == "top" else ranked[::-1][:k] if rule == "least" \
            else every[-k:]
        return {"lora": lora(chosen), "ia3": ia3([l for l in every if l not in chosen])}
    if rule == "learned":
        ranks = proportional_ranks([e["keep_fraction"] for e in
                                    sorted(importance, key=lambda e: e["layer"])], k * r)
        with_lora = [l for l in every if ranks[l] > 0]
        return {"lora": lora(with_lora, {str(l): ranks[l] for l in with_lora}),
                "ia3": ia3([l for l in every if ranks[l] == 0])}
    raise ValueError(f"unknown rule {rule!r}")


def plan_params(plan, cfg):
    """Trainable parameters of a plan counted from the shapes (independent of attach)."""
    if plan.get("full"):
        return None           # every parameter: the caller counts the model
    D, Di, N, R = cfg.hidden_size, cfg.d_inner, cfg.state_size, cfg.dt_rank
    shapes = {"in_proj": (D, 2 * Di), "x_proj": (Di, R + 2 * N), "out_proj": (Di, D),
              "dt_proj": (R, Di)}
    n = 0
    lo = plan.get("lora")
    if lo:
        for l in lo["layers"]:
            rl = int((lo.get("layer_r") or {}).get(str(l), lo["r"]))
            n += sum(rl * (shapes[m][0] + shapes[m][1]) for m in lo["modules"])
    ia = plan.get("ia3")
    if ia:
        for _ in ia["layers"]:
            for m in ia["modules"]:
                n += shapes[m][0] if m in ia.get("feedforward", []) else shapes[m][1]
    return n


def run_list(rules, ranks):
    """(rule, rank) in the order they run: ia3 once first, then rank by rank (priority
    order), full once last."""
    out = [("ia3", 0)] if "ia3" in rules else []
    for r in ranks:
        out += [(rule, r) for rule in rules if rule not in ("ia3", "full")]
    return out + ([("full", 0)] if "full" in rules else [])


# ---------------------------------------------------------------------------------------------
# steps

def _save(path, obj):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def _load_base(a, dev):
    base = load_model(a.model, device=dev).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    return base


def _tok(a):
    return a.tokenizer or os.path.join(a.model, "tokenizer.json")


def cmd_tokenize(a):
    """Fill the token cache: train/val (train.py's tags), val "all", and every task text."""
    tok_path = _tok(a)
    with open(tok_path, "rb") as f:
        tok_bytes = f.read()
    try:
        import tokenizers
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))), "corpus"))
        from train_corpus_tokenizer import encode_file
        hf = tokenizers.Tokenizer.from_file(tok_path)
    except ImportError:
        hf = None
    train_text = data_mod.read_text(a.train_text)
    val_text = data_mod.read_text(a.val_text)
    todo = [("train", train_text), ("val", val_text)]
    todo += sorted(all_texts(train_text, val_text).items())
    for path in a.extra or []:
        todo.append(("all", data_mod.read_text(path)))
    for tag, text in todo:
        t0 = time.time()
        p = data_mod.cache_path(text, tok_bytes, a.cache_dir, tag)
        if os.path.exists(p):
            ids = np.load(p)
        elif hf is not None:
            os.makedirs(a.cache_dir, exist_ok=True)
            ids = encode_file(hf, text)
            np.save(p, ids)
        else:
            ids = data_mod.tokenize_cached(text, tok_path, a.cache_dir, tag)
        print(f"{tag}: {len(text)} chars -> {ids.size} tokens ({time.time() - t0:.1f} s, "
              f"{'HF' if hf is not None else 'toolkit'})", flush=True)
    return 0


def cmd_importance(a):
    dev = pick_device(a.device)
    t0 = time.time()
    base = _load_base(a, dev)
    tok_path = _tok(a)
    tr, va, info = data_mod.load_splits(a.train_text, tok_path, cache_dir=a.cache_dir,
                                        val_path=a.val_text)
    out = {"config": vars(a), "device": str(dev), "torch": torch.__version__,
           "n_params": sum(p.numel() for p in base.parameters()), "data": info}
    out["mixed_val_loss"] = loss_of(base, va, a.seq_len, a.max_windows)
    val_text = data_mod.read_text(a.val_text)
    dl = {}
    for d, text in domain_val_texts(val_text).items():
        ids = ids_of(text, tok_path, a.cache_dir, f"domval-{d}")
        if ids.size > a.seq_len:
            dl[d] = {"loss": loss_of(base, ids, a.seq_len, a.max_windows),
                     "tokens": int(min(ids.size, a.max_windows * a.seq_len))}
    out["domain_val_loss"] = dl
    cands = [d for d in CANDIDATES if d in dl]
    out["auto_domain"] = max(cands, key=lambda d: dl[d]["loss"]) if cands else None
    out["auto_domain_rule"] = "of bible and perl, the highest base held-out loss"
    print(json.dumps({"mixed_val_loss": out["mixed_val_loss"], "domain_val_loss": dl,
                      "auto_domain": out["auto_domain"]}), flush=True)
    t1 = time.time()
    logits, _ = M.learn_masks(base, tr, a.level, 0.0, steps=a.mask_steps,
                              batch_size=a.mask_batch_size, seq_len=a.seq_len, lr=a.mask_lr,
                              seed=a.seed, bf16=a.bf16, log=None)
    c = logits.channel.detach().double().cpu().numpy()
    imp, ch = importance_from_logits(c, a.level)
    out.update({"level": a.level, "mask_steps": a.mask_steps, "learn_s": round(time.time() - t1, 2),
                "importance": imp, "ranked": ranked_layers(imp),
                "per_layer_kept": [int(x) for x in ch.sum(axis=1)]})
    mk = M.masks_from_bool(ch, np.repeat(ch[:, :, None], base.config.state_size, axis=2),
                           device=dev)
    out["masked_val"] = M.information_loss(base, va[:a.max_windows * a.seq_len], mk,
                                           ctx=a.seq_len)
    np.savez(os.path.splitext(a.out)[0] + ".npz", **{f"ch_{int(round(a.level * 100))}": ch})
    out["elapsed_s"] = round(time.time() - t0, 1)
    _save(a.out, out)
    print(json.dumps({k: out[k] for k in ("ranked", "per_layer_kept", "learn_s", "elapsed_s")}),
          flush=True)
    return 0


def _steps_for(left, n_runs, s_step, t_es, t_test, eval_every, overhead=0.3):
    """Steps per run so that n_runs runs fit `left` seconds."""
    per_step = s_step + t_es / eval_every
    return int((left / max(1, n_runs) - t_test - 2 * t_es - overhead) / per_step)


def cmd_peft(a):
    dev = pick_device(a.device)
    t_start = time.time()
    imp = json.load(open(a.importance, encoding="utf-8"))
    domain = imp["auto_domain"] if a.domain == "auto" else a.domain
    base = _load_base(a, dev)
    cfg = base.config
    tok_path = _tok(a)
    train_text = data_mod.read_text(a.train_text)
    val_text = data_mod.read_text(a.val_text)
    texts = task_texts(train_text, val_text, domain)
    del train_text, val_text
    tr, es, te = (ids_of(t, tok_path, a.cache_dir, f"task-{domain}-{n}")
                  for t, n in zip(texts, ("train", "es", "test")))
    es = es[:a.es_windows * a.seq_len]
    te = te[:a.test_windows * a.seq_len]
    ranks = [int(x) for x in a.ranks.split(",") if x]
    rules = [x for x in a.rules.split(",") if x]
    n_layer = cfg.num_hidden_layers
    out = {"config": vars(a), "device": str(dev), "torch": torch.__version__, "seed": a.seed,
           "domain": domain, "domain_val_loss": imp.get("domain_val_loss"),
           "mixed_val_loss": imp.get("mixed_val_loss"),
           "n_params": sum(p.numel() for p in base.parameters()),
           "task": {"train_tokens": int(tr.size), "es_tokens": int(es.size),
                    "test_tokens": int(te.size)},
           "importance": imp["importance"], "ranked": ranked_layers(imp["importance"]),
           "rows": []}
    t0 = time.time()
    out["base_test_loss"] = loss_of(base, te, a.seq_len)
    t_test = time.time() - t0
    t0 = time.time()
    out["base_es_loss"] = loss_of(base, es, a.seq_len)
    t_es = time.time() - t0
    steps = a.steps
    if a.time_budget > 0:
        plan = rule_plan("lora-all", imp["importance"], n_layer, a.k, max(ranks))
        for n in (2, a.probe_steps):          # 2 untimed steps first: kernels, allocator
            m = copy.deepcopy(base)
            pr = A.finetune(m, plan, tr, es, n, a.batch_size, a.seq_len, a.lr_lora,
                            a.lr_ia3, 0.0, 10 ** 9, a.seed, a.bf16)
            del m
        s_step = pr["train_s"] / a.probe_steps
        sizing = {"probe_steps": a.probe_steps, "s_per_step": round(s_step, 4),
                  "t_es": round(t_es, 3), "t_test": round(t_test, 3)}
        lead = os.path.join(os.path.dirname(os.path.abspath(a.out)), "peft_sizing.json")
        if a.leader:
            while True:
                left = a.time_budget - (time.time() - t_start) - 5
                steps = _steps_for(left, len(run_list(rules, ranks)), s_step, t_es, t_test,
                                   a.eval_every)
                if steps >= a.min_steps or len(ranks) <= 1:
                    break
                ranks = ranks[:-1]            # fewer ranks rather than too few steps
            steps = max(a.min_steps, min(a.max_steps, steps // 10 * 10))
            sizing.update({"steps": steps, "ranks": ranks})
            _save(lead, sizing)
        else:                                 # the leader's sizing, so every seed runs alike
            for _ in range(int(a.wait_leader * 10)):
                if os.path.exists(lead):
                    break
                time.sleep(0.1)
            if os.path.exists(lead):
                got = json.load(open(lead, encoding="utf-8"))
                steps, ranks = got["steps"], got["ranks"]
                sizing["from_leader"] = True
            else:
                left = a.time_budget - (time.time() - t_start) - 5
                steps = max(a.min_steps, min(a.max_steps, _steps_for(
                    left, len(run_list(rules, ranks)), s_step, t_es, t_test,
                    a.eval_every) // 10 * 10))
                sizing["from_leader"] = False
            sizing.update({"steps": steps, "ranks": ranks})
        out["sizing"] = sizing
        print(json.dumps({"seed": a.seed, "sizing": sizing}), flush=True)
    out["steps"] = steps
    out["ranks"] = ranks
    _save(a.out, out)
    for rule, r in run_list(rules, ranks):
        plan = rule_plan(rule, imp["importance"], n_layer, a.k, max(r, 1))
        m = copy.deepcopy(base)
        res = A.finetune(m, plan, tr, es, steps, a.batch_size, a.seq_len, a.lr_lora, a.lr_ia3,
                         a.lr_full, a.eval_every, a.seed, a.bf16)
        res["test_loss"] = loss_of(m, te, a.seq_len)
        del m
        row = {"seed": a.seed, "rule": rule, "rank": r, "k": a.k,
               "lora_layers": plan["lora"]["layers"] if plan.get("lora") else [],
               "layer_r": (plan.get("lora") or {}).get("layer_r"),
               "ia3_layers": plan["ia3"]["layers"] if plan.get("ia3") else [],
               "params_counted": plan_params(plan, cfg) or out["n_params"]}
        row.update({k: v for k, v in res.items() if k != "history"})
        row["history"] = [(h["step"], h["val_loss"]) for h in res["history"]]
        out["rows"].append(row)
        out["elapsed_s"] = round(time.time() - t_start, 1)
        _save(a.out, out)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                          for k, v in row.items() if k not in ("history", "layer_r")}),
              flush=True)
    out["done"] = True
    _save(a.out, out)
    return 0


def cmd_recover(a):
    from .sparsity_study import recover
    dev = pick_device(a.device)
    t_start = time.time()
    imp = json.load(open(a.importance, encoding="utf-8"))
    saved = dict(np.load(os.path.splitext(a.importance)[0] + ".npz"))
    base = _load_base(a, dev)
    cfg = base.config
    tr, va, info = data_mod.load_splits(a.train_text, _tok(a), cache_dir=a.cache_dir,
                                        val_path=a.val_text)
    va = va[:a.max_windows * a.seq_len]
    seeds = [int(x) for x in a.seeds.split(",") if x]
    levels = [float(x) for x in a.levels.split(",") if x]
    out = {"config": vars(a), "device": str(dev), "torch": torch.__version__, "data": info,
           "n_params": sum(p.numel() for p in base.parameters()), "profiles": {}, "rows": []}

    def save():
        out["elapsed_s"] = round(time.time() - t_start, 1)
        _save(a.out, out)

    masks = {"dense": None}
    for level in levels:
        key = f"ch_{int(round(level * 100))}"
        t1 = time.time()
        if key in saved:
            ch = saved[key].astype(bool)
            how = "importance step"
        else:
            lg, _ = M.learn_masks(base, tr, level, 0.0, steps=a.mask_steps,
                                  batch_size=a.mask_batch_size, seq_len=a.seq_len, lr=a.mask_lr,
                                  seed=imp["config"]["seed"], bf16=a.bf16, log=None)
            ch, _ = M.hard_from_scores(lg.channel.detach().double().cpu().numpy(),
                                       np.ones((cfg.num_hidden_layers, cfg.d_inner, 1)), level,
                                       0.0, "global")
            how = f"learned here, {a.mask_steps} steps"
        name = f"learned-{int(round(level * 100))}"
        masks[name] = M.masks_from_bool(ch, np.repeat(ch[:, :, None], cfg.state_size, axis=2),
                                        device=dev)
        out["profiles"][name] = {"level": level, "per_layer_kept": [int(x) for x in ch.sum(1)],
                                 "channel_sparsity": 1 - float(ch.mean()), "from": how,
                                 "s": round(time.time() - t1, 2)}
    t1 = time.time()
    before = {n: M.information_loss(base, va, mk, ctx=a.seq_len) for n, mk in masks.items()}
    t_eval = (time.time() - t1) / len(masks)
    out["before"] = before
    save()
    print(json.dumps({"before": {n: b["ppl"] for n, b in before.items()}}), flush=True)
    steps = a.steps
    if a.time_budget > 0:
        for n in (2, a.probe_steps):          # 2 untimed steps first: kernels, allocator
            m = copy.deepcopy(base)
            s_probe = recover(m, None, tr, n, a.rec_batch_size, a.seq_len, a.rec_lr, 0,
                              a.bf16) / n
            del m
        n_runs = len(seeds) * len(masks)
        left = a.time_budget - (time.time() - t_start) - 5
        steps = int((left / n_runs - t_eval - 0.3) / s_probe)
        steps = max(a.min_steps, min(a.max_steps, steps // 10 * 10))
        out["sizing"] = {"probe_steps": a.probe_steps, "s_per_step": round(s_probe, 4),
                         "t_eval": round(t_eval, 3), "n_runs": n_runs, "steps": steps}
        print(json.dumps({"sizing": out["sizing"]}), flush=True)
    out["steps"] = steps
    for seed in seeds:
        for name, mk in masks.items():
            m = copy.deepcopy(base)
            secs = recover(m, mk, tr, steps, a.rec_batch_size, a.seq_len, a.rec_lr, seed, a.bf16)
            after = M.information_loss(m, va, mk, ctx=a.seq_len, teacher=base)
            del m
            row = {"seed": seed, "profile": name, "steps": steps, "train_s": round(secs, 2),
                   "ppl_before": before[name]["ppl"], "ppl_after": after["ppl"],
                   "cos_loss_before": before[name]["cos_loss"], "kl_before": before[name]["kl"],
                   "cos_loss_after": after["cos_loss"], "kl_after": after["kl"]}
            out["rows"].append(row)
            save()
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                              for k, v in row.items()}), flush=True)
    out["done"] = True
    save()
    return 0


# ---------------------------------------------------------------------------------------------
# merge

def pareto(points):
    """The points (dicts with "params" and "loss") that no other point beats: none has
    params <= and loss <, or params < and loss <=. Sorted by params."""
    front = []
    for p in points:
        if not any((q["params"] <= p["params"] and q["loss"] < p["loss"]) or
                   (q["params"] < p["params"] and q["loss"] <= p["loss"]) for q in points):
            front.append(p)
    return sorted(front, key=lambda p: (p["params"], p["loss"]))


def merge_peft(parts):
    rows = [r for p in parts for r in p["rows"]]
    groups = {}
    for r in rows:
        groups.setdefault((r["rule"], r["rank"]), []).append(r)
    table = []
    for (rule, rank), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], RULES.index(
            kv[0][0]))):
        table.append({"rule": rule, "rank": rank, "seeds": sorted(r["seed"] for r in rs),
                      "trainable_params": rs[0]["trainable_params"],
                      "trainable_fraction": rs[0]["trainable_fraction"],
                      "lora_layers": rs[0]["lora_layers"], "layer_r": rs[0].get("layer_r"),
                      "test_loss": summarize([r["test_loss"] for r in rs]),
                      "best_step": summarize([r["best_step"] for r in rs]),
                      "steps": sorted({r["steps"] for r in rs})})
    front = pareto([{"rule": e["rule"], "rank": e["rank"], "params": e["trainable_params"],
                     "loss": e["test_loss"]["mean"]} for e in table])
    # the rules against the seed's hybrid at the same rank, paired by seed (same batches)
    paired = []
    by = {(r["rule"], r["rank"], r["seed"]): r["test_loss"] for r in rows}
    for rank in sorted({r["rank"] for r in rows if r["rank"] > 0}):
        for rule in ("least", "last", "learned", "lora-all"):
            d = [by[(rule, rank, s)] - by[("top", rank, s)] for (ru, rk, s) in by
                 if ru == rule and rk == rank and ("top", rank, s) in by]
            if d:
                paired.append({"rank": rank, "rule": rule, "minus": "top",
                               "diff": summarize(d),
                               "n_better": sum(1 for x in d if x < 0)})
    base = summarize([p["base_test_loss"] for p in parts])
    return {"domain": parts[0]["domain"], "task": parts[0]["task"],
            "domain_val_loss": parts[0].get("domain_val_loss"),
            "mixed_val_loss": parts[0].get("mixed_val_loss"),
            "base_test_loss": base, "importance": parts[0]["importance"],
            "ranked": parts[0]["ranked"], "n_params": parts[0]["n_params"],
            "device": parts[0]["device"], "config": parts[0]["config"],
            "sizing": [p.get("sizing") for p in parts], "table": table, "pareto": front,
            "paired": paired,
            "rows": rows}


def merge_recovery(rec):
    groups = {}
    for r in rec["rows"]:
        groups.setdefault(r["profile"], []).append(r)
    table = []
    for name, rs in groups.items():
        e = {"profile": name, "seeds": sorted(r["seed"] for r in rs), "steps": rs[0]["steps"],
             "per_layer_kept": (rec["profiles"].get(name) or {}).get("per_layer_kept")}
        for k in ("ppl_before", "ppl_after", "cos_loss_after", "kl_after"):
            e[k] = summarize([r[k] for r in rs])
        e["after_over_before"] = summarize([r["ppl_after"] / r["ppl_before"] for r in rs])
        dense = {r["seed"]: r for r in groups.get("dense", [])}
        e["after_over_dense_after"] = summarize([r["ppl_after"] / dense[r["seed"]]["ppl_after"]
                                                 for r in rs if r["seed"] in dense])
        e["before_over_dense_before"] = rs[0]["ppl_before"] / rec["before"]["dense"]["ppl"]
        table.append(e)
    return {"steps": rec.get("steps"), "sizing": rec.get("sizing"), "table": table,
            "rows": rec["rows"], "profiles": rec["profiles"], "config": rec["config"]}


def merge(peft_paths, rec_path, out_dir, model_eval=None):
    res = {}
    lines = []
    if model_eval and os.path.exists(model_eval):
        try:
            ev = json.load(open(model_eval, encoding="utf-8"))
            res["model_eval"] = ev
            lines += [f"The model studied: held-out perplexity {ev['ppl']:.2f} on "
                      f"{os.path.basename(ev.get('text', model_eval))} ({ev.get('n_scored')} "
                      f"scored tokens, ctx {ev.get('ctx')}).", ""]
        except (ValueError, KeyError, TypeError) as e:
            print(f"{model_eval}: skipped ({e})", file=sys.stderr)
    parts = []
    for p in peft_paths or []:
        try:
            parts.append(json.load(open(p, encoding="utf-8")))
        except (OSError, ValueError) as e:
            print(f"{p}: skipped ({e})", file=sys.stderr)
    parts = [p for p in parts if p.get("rows")]
    if parts:
        pf = merge_peft(parts)
        res["peft"] = pf
        b = pf["base_test_loss"]
        lines += [f"# PEFT placement on the corpus model: domain {pf['domain']}", "",
                  f"Task: {pf['task']['train_tokens']:,} train / {pf['task']['es_tokens']:,} "
                  f"early-stopping / {pf['task']['test_tokens']:,} test tokens; base test loss "
                  f"{b['mean']:.4f} (ppl {math.exp(b['mean']):.2f}). Layers by importance "
                  f"(most first): {pf['ranked']}. Steps per run: "
                  f"{sorted({s for e in pf['table'] for s in e['steps']})}.", ""]
        if pf.get("domain_val_loss"):
            lines += ["Base model's held-out loss by domain (val.txt, first windows of each): " +
                      ", ".join(f"{d} {v['loss']:.3f}" for d, v in pf["domain_val_loss"].items())
                      + f"; mixed (val.txt's first windows) {pf['mixed_val_loss']:.3f}.", ""]
        lines += ["| rank | rule | LoRA layers | trainable params | fraction | seeds | "
                  "test loss | test ppl | best step |", "|---|---|---|---|---|---|---|---|---|"]
        for e in pf["table"]:
            lay = e["lora_layers"] if not e.get("layer_r") else \
                ",".join(f"{l}:{r}" for l, r in sorted(e["layer_r"].items(), key=lambda x:
                                                      int(x[0])))
            lines.append(f"| {e['rank']} | {e['rule']} | {lay} | {e['trainable_params']:,} | "
                         f"{100 * e['trainable_fraction']:.3f} % | {len(e['seeds'])} | "
                         f"{_fmt(e['test_loss'])} | {math.exp(e['test_loss']['mean']):.2f} | "
                         f"{_fmt(e['best_step'], 0)} |")
        lines += ["", "Pareto front (trainable parameters, mean test loss): " + "; ".join(
            f"{p['rule']} r{p['rank']} ({p['params']:,}, {p['loss']:.4f})"
            for p in pf["pareto"]), "",
            "Test loss of each rule minus the seed's hybrid (top) at the same rank, paired by "
            "seed (negative: better than top):", "",
            "| rank | rule | minus top | seeds better than top |", "|---|---|---|---|"]
        for e in pf["paired"]:
            lines.append(f"| {e['rank']} | {e['rule']} | {_fmt(e['diff'])} | "
                         f"{e['n_better']} of {e['diff']['n']} |")
        lines += [""]
    if rec_path and os.path.exists(rec_path):
        try:
            rec = json.load(open(rec_path, encoding="utf-8"))
        except ValueError as e:
            rec = None
            print(f"{rec_path}: skipped ({e})", file=sys.stderr)
        if rec and rec.get("rows"):
            rc = merge_recovery(rec)
            res["recovery"] = rc
            lines += ["# Recovery fine-tune (all weights, masks fixed) against the dense control",
                      "", f"{rc['steps']} steps of {rec['config']['rec_batch_size']} x "
                      f"{rec['config']['seq_len']} train tokens, lr {rec['config']['rec_lr']}; "
                      f"held-out: val.txt's first {rec['config']['max_windows']} windows.", "",
                      "| profile | seeds | ppl before | ppl after | after / before | "
                      "after / dense after | before / dense before | cos loss after |",
                      "|---|---|---|---|---|---|---|---|"]
            for e in rc["table"]:
                lines.append(f"| {e['profile']} | {len(e['seeds'])} | {_fmt(e['ppl_before'], 2)}"
                             f" | {_fmt(e['ppl_after'], 2)} | {_fmt(e['after_over_before'], 3)} | "
                             f"{_fmt(e['after_over_dense_after'], 3)} | "
                             f"{e['before_over_dense_before']:.3f} | "
                             f"{_fmt(e['cos_loss_after'])} |")
    os.makedirs(out_dir, exist_ok=True)
    _save(os.path.join(out_dir, "peft_scale.json"), res)
    with open(os.path.join(out_dir, "peft_scale.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if res else 1


# ---------------------------------------------------------------------------------------------
# CLI

def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m yunmin_train.peft_scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--model", required=True)
        p.add_argument("--tokenizer", default=None)
        p.add_argument("--train-text", required=True)
        p.add_argument("--val-text", required=True)
        p.add_argument("--cache-dir", default=None)
        p.add_argument("--out", required=True)
        p.add_argument("--seq-len", type=int, default=256)
        p.add_argument("--max-windows", type=int, default=96)
        p.add_argument("--device", default="auto")
        p.add_argument("--bf16", action="store_true")
        p.add_argument("--mask-steps", type=int, default=40)
        p.add_argument("--mask-batch-size", type=int, default=8)
        p.add_argument("--mask-lr", type=float, default=0.05)
        p.add_argument("--time-budget", type=float, default=0)
        p.add_argument("--min-steps", type=int, default=20)
        p.add_argument("--probe-steps", type=int, default=5)

    p = sub.add_parser("tokenize", help="fill the token cache")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--train-text", required=True)
    p.add_argument("--val-text", required=True)
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--extra", action="append", help="another file, cached under the tag 'all'")
    p = sub.add_parser("importance", help="learned-mask layer importance and the domain")
    common(p)
    p.add_argument("--level", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("peft", help="the placement rules x ranks for one seed")
    common(p)
    p.add_argument("--importance", required=True)
    p.add_argument("--domain", default="bible", choices=("auto",) + CANDIDATES)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ranks", default="8,2,16,4", help="in priority order (dropped from the end "
                                                       "when the time is short)")
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr-lora", type=float, default=2e-3)
    p.add_argument("--lr-ia3", type=float, default=1e-2)
    p.add_argument("--lr-full", type=float, default=3e-4)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--es-windows", type=int, default=32)
    p.add_argument("--test-windows", type=int, default=160)
    p.add_argument("--leader", action="store_true",
                   help="this process's probe sizes the runs of every seed (peft_sizing.json "
                        "beside --out); the others wait for it up to --wait-leader s")
    p.add_argument("--wait-leader", type=float, default=60)
    p = sub.add_parser("recover", help="recovery fine-tune of masked models, dense control")
    common(p)
    p.add_argument("--importance", required=True)
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--levels", default="0.5,0.7")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=600)
    p.add_argument("--rec-batch-size", type=int, default=16)
    p.add_argument("--rec-lr", type=float, default=5e-4)
    p = sub.add_parser("merge", help="tables from the JSON files")
    p.add_argument("--peft", nargs="*", default=[])
    p.add_argument("--recovery", default=None)
    p.add_argument("--model-eval", default=None, help="evaluate.py's JSON for the model")
    p.add_argument("--out-dir", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "merge":
        return merge(a.peft, a.recovery, a.out_dir, a.model_eval)
    return {"tokenize": cmd_tokenize, "importance": cmd_importance, "peft": cmd_peft,
            "recover": cmd_recover}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
