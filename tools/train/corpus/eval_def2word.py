"""Score the definition -> headword task (make_tasks.py) in yunmind, dense and under sparsity
profiles, item by item, with paired comparisons between profiles.

    python3 tools/train/corpus/eval_def2word.py --yunmind build/server/yunmind --model DIR \\
        --task def2word.jsonl [--profile NAME=FILE]... [--pair A,B]... [--limit N] \\
        --out results.json

The protocol is the toolkit's (yunmin_train.scale_study.task_accuracy): an item's score for
choice c is sum log P(continuation | c + "\\n"), the prefix and the continuation tokenized
apart and joined as ids by the toolkit's own scale_study.load_task (the model's
tokenizer.json); the answer is the argmax. Each item is one /v1/completions request with its 4 id prompts (echo, logprobs 0,
max_tokens 0): the score sums the token_logprobs after the prefix's tokens. For each model (the
daemon started per profile, as eval_genre.py does): accuracy overall and per source, and the
items it got right ("correct": a string of 0/1 in task order). --pair A,B adds the paired
comparison of A against B on the same items: the items only A got right, only B, and the exact
two-sided binomial (McNemar) p of that split. --check-torch K recomputes the dense scores of
the first K items with the toolkit's PyTorch model (float32, CPU) and records the largest
difference from the engine's.
"""

import argparse
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import eval_genre as eg  # noqa: E402


def load_items(path, limit=None):
    """The task's items (the first `limit`); a malformed file stops with one line naming it."""
    def check(it):
        ch = it.get("choices") if isinstance(it, dict) else None
        if (not isinstance(ch, list) or len(ch) < 2 or not isinstance(it.get("source"), str)
                or not all(isinstance(c, str) and c for c in ch)
                or not isinstance(it.get("continuation"), str) or not it["continuation"]
                or not isinstance(it.get("answer"), int) or isinstance(it["answer"], bool)
                or not 0 <= it["answer"] < len(ch)):
            return ("an item needs choices (2 or more strings), a continuation, an answer index "
                    "and a source")
        return None
    items = eg.read_items(path, check)
    return items[:limit] if limit else items


def score_item(port, seqs):
    """[sum log P(continuation | prefix)] per (prefix, continuation) of one item."""
    r = eg.post(port, {"prompt": [p + c for p, c in seqs], "max_tokens": 0, "echo": True,
                       "logprobs": 0})
    out = [None] * len(seqs)
    for ch in r["choices"]:
        p, c = seqs[ch["index"]]
        lps = ch["logprobs"]["token_logprobs"]
        if len(lps) != len(p) + len(c):
            raise SystemExit(f"yunmind scored {len(lps)} tokens of a {len(p) + len(c)}-token "
                             "prompt")
        out[ch["index"]] = float(sum(lps[len(p):]))
    return out


def torch_scores(model_dir, seqs):
    """The toolkit's scores of the same (prefix, continuation) ids, one sequence at a time."""
    import torch
    from yunmin_train.model import load_model
    torch.set_num_threads(1)
    m = load_model(model_dir, device="cpu").float().eval()
    out = []
    with torch.no_grad():
        for item in seqs:
            row = []
            for p, c in item:
                x = torch.tensor([p + c])
                lp = torch.log_softmax(m(x).float(), -1)[0].double()
                row.append(float(sum(lp[i - 1, x[0, i]] for i in range(len(p), len(p) + len(c)))))
            out.append(row)
    return out


def mcnemar(a, b):
    """Items right only under a, only under b, and the exact two-sided binomial p."""
    only_a = sum(1 for x, y in zip(a, b) if x == "1" and y == "0")
    only_b = sum(1 for x, y in zip(a, b) if x == "0" and y == "1")
    n, k = only_a + only_b, min(only_a, only_b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {"only_first": only_a, "only_second": only_b, "p_two_sided": p}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--yunmind", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--profile", action="append", default=[], help="NAME=FILE")
    ap.add_argument("--pair", action="append", default=[], help="A,B: compare A with B")
    ap.add_argument("--limit", type=int, default=None, help="only the first N items")
    ap.add_argument("--check-torch", type=int, default=0, metavar="K")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    models = [("dense", "")] + [tuple(p.split("=", 1)) for p in a.profile]
    if any(len(m) != 2 or not m[0] or not m[1] for m in models[1:]):
        ap.error("--profile takes NAME=FILE")
    names = [m[0] for m in models]
    pairs = [tuple(p.split(",")) for p in a.pair]
    if any(len(p) != 2 or p[0] not in names or p[1] not in names for p in pairs):
        ap.error("--pair takes A,B, two model names (dense or a --profile NAME)")
    items = load_items(a.task, a.limit)
    # the toolkit's own encoding of the task: per choice (ids of choice + newline, continuation)
    from yunmin_train.scale_study import load_task as encode_task
    seqs = [it["seqs"] for it in encode_task(a.task, os.path.join(a.model, "tokenizer.json"))]
    seqs = seqs[:len(items)]
    res = {"task": os.path.basename(a.task), "n_items": len(items),
           "n_choices": len(items[0]["choices"]), "models": {}, "pairs": []}
    for name, path in models:
        with eg.serving(a.yunmind, a.model, path) as port:
            t0 = time.time()
            right, by_src, kept = [], {}, []
            for it, s in zip(items, seqs):
                sc = score_item(port, s)
                if name == "dense" and len(kept) < a.check_torch:
                    kept.append(sc)
                ok = int(max(range(len(sc)), key=sc.__getitem__) == it["answer"])
                right.append(ok)
                by_src.setdefault(it["source"], []).append(ok)
        res["models"][name] = {
            "profile": os.path.basename(path), "accuracy": sum(right) / len(right),
            "n_right": sum(right), "seconds": round(time.time() - t0, 1),
            "by_source": {k: sum(v) / len(v) for k, v in sorted(by_src.items())},
            "correct": "".join(map(str, right))}
        print(name, f"{res['models'][name]['accuracy']:.4f}", res["models"][name]["by_source"],
              f"{res['models'][name]['seconds']} s", flush=True)
        if kept:
            ref = torch_scores(a.model, seqs[:len(kept)])
            res["torch_check"] = {
                "n_items": len(kept),
                "max_abs_diff": max(abs(x - y) for r, k in zip(ref, kept) for x, y in zip(r, k)),
                "same_argmax": all(max(range(len(r)), key=r.__getitem__)
                                   == max(range(len(k)), key=k.__getitem__)
                                   for r, k in zip(ref, kept))}
            print("torch check", json.dumps(res["torch_check"]), flush=True)
    for x, y in pairs:
        r = {"first": x, "second": y,
             **mcnemar(res["models"][x]["correct"], res["models"][y]["correct"])}
        res["pairs"].append(r)
        print("pair", json.dumps(r), flush=True)
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
