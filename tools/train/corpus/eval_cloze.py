"""Score the continuation cloze (make_cloze_task.py) in yunmind, dense and under sparsity profiles.

    python3 tools/train/corpus/eval_cloze.py --yunmind build/server/yunmind --model DIR \\
        --task tools/train/results/scale/cloze.jsonl [--profile NAME=FILE]... \\
        [--check-torch 5] --out tools/train/results/scale/cloze_results.json

For each model (dense, then each profile, served with YUNMIN_SPARSITY; eval_genre.start) every
item is one /v1/completions request with its 4 prompts prompt + label (echo, logprobs 0,
max_tokens 0): a choice's score is the sum of the logprobs of the tokens from the label's first
character on (the request is refused here unless a token starts exactly there, so no token is
shared by the context and the label). Two scores per choice: "context" (after the item's
prompt: the passage up to the blank) and "no_context" (after "no_context_prompt", the blank's
line alone: what the model guesses without reading). Reported per model and per source:
accuracy of both, beside chance and the trivial rules written into the task (frequent,
recent, first, bigram), and how often the model's pick equals each rule's pick.
--check-torch K recomputes the dense context scores of the first K items of each source with
the toolkit's PyTorch model (CPU, float32) and stops (exit 1, after writing the results) if
a score differs by more than --tol nats or an item's best choice differs.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval_genre as eg  # noqa: E402
import make_cloze_task as mc  # noqa: E402

NEED = ("prompt", "no_context_prompt", "labels", "answer", "source", "baselines")


def score_prompt(port, prompt, labels):
    """[sum of the logprobs of label's tokens after prompt] for each label, one request."""
    r = eg.post(port, {"prompt": [prompt + lab for lab in labels], "max_tokens": 0,
                       "echo": True, "logprobs": 0})
    cut = len(prompt.encode("utf-8"))
    out = [None] * len(labels)
    for ch in r["choices"]:
        lp = ch["logprobs"]
        offs = lp["text_offset"]
        # text_offset counts bytes of the echoed text (checked by --check-torch on non-ASCII)
        if cut not in offs:
            raise SystemExit(f"no token starts at the label: {prompt[-40:]!r} + "
                             f"{labels[ch['index']][:40]!r}")
        out[ch["index"]] = sum(v for v, o in zip(lp["token_logprobs"], offs) if o >= cut)
    return out


def torch_scores(model_dir, items):
    """The context scores of items by the toolkit's PyTorch model (CPU, float32)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import torch
    from yunmin_train.model import load_model
    from yunmin_train.tokenizer import Tokenizer
    torch.set_num_threads(1)
    m = load_model(model_dir, device="cpu").float().eval()
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    out = []
    with torch.no_grad():
        for it in items:
            row = []
            p = tok.encode(it["prompt"])
            for lab in it["labels"]:
                ids = tok.encode(it["prompt"] + lab)
                if ids[:len(p)] != p:
                    raise SystemExit(f"item {it['id']}: label tokens do not start at the "
                                     "prompt's end")
                lp = torch.log_softmax(m(torch.tensor([ids])).float(), -1)[0]
                row.append(float(sum(lp[i - 1, ids[i]] for i in range(len(p), len(ids)))))
            out.append(row)
    return out


def argmax(s):
    return max(range(len(s)), key=s.__getitem__)


def evaluate(scores, items):
    """{source and "all": accuracy, n_right, n_items, agree_<rule>} of scores' picks."""
    out = {}
    for src in [*mc.SOURCES, "all"]:
        sel = [(s, it) for s, it in zip(scores, items) if src in ("all", it["source"])]
        if not sel:
            continue
        right = sum(argmax(s) == it["answer"] for s, it in sel)
        row = {"accuracy": right / len(sel), "n_right": right, "n_items": len(sel)}
        for r in mc.RULES:
            row["agree_" + r] = sum(argmax(s) == it["baselines"][r] for s, it in sel) / len(sel)
        out[src] = row
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--yunmind", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--profile", action="append", default=[], help="NAME=FILE")
    ap.add_argument("--check-torch", type=int, default=0,
                    help="K: recompute the first K items of each source with PyTorch")
    ap.add_argument("--tol", type=float, default=1e-3, help="nats, for --check-torch")
    ap.add_argument("--limit", type=int, default=0,
                    help="score only the first N items of each source (a smoke run)")
    ap.add_argument("--no-no-context", action="store_true",
                    help="skip the no-context scores (profiles: half the requests)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    items = eg.load_task(a.task, NEED)
    if any(it["source"] not in mc.SOURCES for it in items):
        raise SystemExit(f"{a.task}: an item's source is not one of {', '.join(mc.SOURCES)}")
    if a.limit:
        kept, n = [], {}
        for it in items:
            n[it["source"]] = n.get(it["source"], 0) + 1
            if n[it["source"]] <= a.limit:
                kept.append(it)
        items = kept
    res = {"task": os.path.basename(a.task), "n_items": len(items),
           "baselines": mc.summary(items), "models": {}}
    all_scores = {}
    for name, path in [("dense", "")] + [p.split("=", 1) for p in a.profile]:
        with eg.serving(a.yunmind, a.model, path) as port:
            t0 = time.time()
            ctx = [score_prompt(port, it["prompt"], it["labels"]) for it in items]
            dt = time.time() - t0
            noc = None if a.no_no_context else \
                [score_prompt(port, it["no_context_prompt"], it["labels"]) for it in items]
        all_scores[name] = {"context": ctx, "no_context": noc}
        res["models"][name] = {"sparsity": os.path.basename(path) or None,
                               "seconds": round(dt, 1), "context": evaluate(ctx, items)}
        if noc is not None:
            res["models"][name]["no_context"] = evaluate(noc, items)
        print(name, json.dumps({k: v["all"] for k, v in res["models"][name].items()
                                if isinstance(v, dict)}), flush=True)
    bad = False
    if a.check_torch:
        pick = [k for s in mc.SOURCES
                for k in [i for i, it in enumerate(items) if it["source"] == s][:a.check_torch]]
        sub = [items[k] for k in pick]
        got = [all_scores["dense"]["context"][k] for k in pick]
        ref = torch_scores(a.model, sub)
        diff = max(abs(x - y) for r, s in zip(ref, got) for x, y in zip(r, s))
        same = all(argmax(r) == argmax(s) for r, s in zip(ref, got))
        res["torch_check"] = {"item_ids": [it["id"] for it in sub], "tol": a.tol,
                              "max_abs_diff_choice_score": diff, "same_argmax": same,
                              "torch_scores": ref, "yunmin_scores": got}
        print("torch check", diff, same, flush=True)
        bad = diff > a.tol or not same
    res["scores"] = all_scores
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    if bad:
        print(f"torch check failed: max diff {diff:.3g} nats (tol {a.tol}), same argmax {same}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
