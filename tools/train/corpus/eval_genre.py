"""Score the Brown genre task (make_genre_task.py) in yunmind, dense and under sparsity profiles.

    python3 tools/train/corpus/eval_genre.py --yunmind build/server/yunmind --model DIR \\
        --task tools/train/results/scale/genre.jsonl [--profile NAME=FILE]... \\
        [--check-torch 5] --out tools/train/results/scale/genre_results.json

For each model (dense, then each profile, served with YUNMIN_SPARSITY) the daemon is started on
a free port and every item is one /v1/completions request with the 15 prompts
window + "\\nGenre: <label>" (echo, logprobs 0, max_tokens 0): the score of a label is the sum
of the token logprobs from the label's text offset on. Reported: accuracy (items, and
documents by summed label scores over their windows), chance 1/15, the majority-class
baseline. Two scores per label: raw (the sum above) and calibrated, raw minus the label's
score after the content-free prompt "\\nGenre:" alone (its prior; Holtzman et al. 2021,
"domain-conditional PMI"), which removes the preference for a label regardless of the text.
An item with a "prior_prompt" (make_genre_fewshot.py: the same in-context examples before a
content-free window) is calibrated by that prompt's label scores instead; the task's
"shots" and "answer_in_shots" fields are reported when present.
--check-torch K recomputes the dense label scores of the first K items with the
toolkit's PyTorch model (CPU, float32) and records the largest difference.
"""

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


PRIOR_PROMPT = "\nGenre:"


def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    for _ in range(600):
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code != 503:                   # 503 while the model loads
                raise SystemExit(f"HTTP {e.code}: {e.read()[:300]!r}")
            time.sleep(0.5)
    raise SystemExit("yunmind stayed unavailable")


def start(yunmind, model, sparsity):
    env = dict(os.environ, YUNMIN_MODEL=model, YUNMIN_PORT="0", YUNMIN_SPARSITY=sparsity or "")
    p = subprocess.Popen(["nice", yunmind], env=env, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    for line in p.stderr:
        m = re.search(r"listening.*?:(\d+)", line)
        if m and "listening" in line:
            # keep reading its log: a full pipe would block the daemon's next write
            threading.Thread(target=p.stderr.read, daemon=True).start()
            return p, int(m.group(1))
        if time.time() - t0 > 120:
            break
    p.kill()
    raise SystemExit(f"yunmind did not start ({sparsity or 'dense'})")


@contextlib.contextmanager
def serving(yunmind, model, sparsity):
    """The port of a yunmind on model (under the sparsity profile, "" for dense), stopped
    (SIGTERM, then waited for) when the block ends, however it ends."""
    p, port = start(yunmind, model, sparsity)
    try:
        yield port
    finally:
        p.terminate()
        p.wait()


def score_item(port, it):
    return score_prompt(port, it["prompt"], it["labels"])


def score_prompt(port, prompt, labels):
    """[sum of the logprobs of the tokens of " " + label after prompt] for each label; yunmind's
    text_offset counts bytes of the UTF-8 text (docs/API.md), so the prompt is cut there."""
    prompts = [prompt + " " + lab for lab in labels]
    r = post(port, {"prompt": prompts, "max_tokens": 0, "echo": True, "logprobs": 0})
    cut = len(prompt.encode("utf-8"))
    out = [None] * len(prompts)
    for ch in r["choices"]:
        lp = ch["logprobs"]
        out[ch["index"]] = sum(v for v, o in zip(lp["token_logprobs"], lp["text_offset"])
                               if o >= cut)
    return out


def read_items(path, check):
    """A task file's items (one JSON object a line, blank lines skipped); check(item) returns
    what is wrong with an item, or None. A malformed file stops with a one-line message naming
    the file and the line."""
    items = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    it = json.loads(line)
                except ValueError as e:
                    raise SystemExit(f"{path}:{n}: not JSON ({e.msg})")
                why = check(it)
                if why:
                    raise SystemExit(f"{path}:{n}: {why}")
                items.append(it)
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"{path}: cannot read the task ({e.__class__.__name__})")
    if not items:
        raise SystemExit(f"{path}: no items")
    return items


def load_task(path, need=("prompt", "labels", "answer")):
    """The task file's items: each needs the keys `need`, a prompt string, 2 or more non-empty
    label strings and an answer index into them."""
    def check(it):
        if not isinstance(it, dict) or any(k not in it for k in need):
            return f"an item needs the keys {', '.join(need)}"
        labs, ans = it["labels"], it["answer"]
        if (not isinstance(it["prompt"], str) or not isinstance(labs, list) or len(labs) < 2
                or not all(isinstance(x, str) and x for x in labs)
                or not isinstance(ans, int) or isinstance(ans, bool)
                or not 0 <= ans < len(labs)):
            return "bad prompt, labels or answer"
        return None
    return read_items(path, check)


def evaluate(scores, items):
    n = len(items)
    right = [int(max(range(len(s)), key=s.__getitem__) == it["answer"])
             for s, it in zip(scores, items)]
    docs = {}
    for s, it in zip(scores, items):
        d = docs.setdefault(it["doc"], [it["answer"], [0.0] * len(s)])
        d[1] = [a + b for a, b in zip(d[1], s)]
    doc_right = [int(max(range(len(s)), key=s.__getitem__) == a) for a, s in docs.values()]
    pred = [max(range(len(s)), key=s.__getitem__) for s in scores]
    out = {"accuracy": sum(right) / n, "n_items": n, "n_right": sum(right),
           "doc_accuracy": sum(doc_right) / len(doc_right), "n_docs": len(doc_right),
           "predicted_counts": {items[0]["labels"][k]: pred.count(k) for k in sorted(set(pred))}}
    if "shots" in items[0]:
        inside = [r for r, it in zip(right, items) if it["answer_in_shots"]]
        outside = [r for r, it in zip(right, items) if not it["answer_in_shots"]]
        shown = [int(items[0]["labels"][k].replace(" ", "_") in {s["genre"] for s in it["shots"]})
                 for k, it in zip(pred, items)]
        out.update(right_answer_in_shots=[sum(inside), len(inside)],
                   right_answer_not_in_shots=[sum(outside), len(outside)],
                   predicted_a_shot_genre=sum(shown))
    return out


def torch_scores(model_dir, items):
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
            for lab in it["labels"]:
                p = tok.encode(it["prompt"])
                ids = tok.encode(it["prompt"] + " " + lab)
                if ids[:len(p)] != p:
                    raise SystemExit("label tokens do not start at the prompt's end")
                x = torch.tensor([ids])
                lp = torch.log_softmax(m(x).float(), -1)[0]
                row.append(float(sum(lp[i - 1, ids[i]] for i in range(len(p), len(ids)))))
            out.append(row)
    return out


def torch_check(model_dir, items, n, got, diff_key):
    """The first n items' scores recomputed by the toolkit's PyTorch model (torch_scores)
    against the engine's (got): the largest difference under diff_key, whether every item's
    best choice agrees, both score lists. Printed too."""
    ref = torch_scores(model_dir, items[:n])
    diff = max(abs(x - y) for r, s in zip(ref, got) for x, y in zip(r, s))
    same = all(max(range(len(r)), key=r.__getitem__) == max(range(len(s)), key=s.__getitem__)
               for r, s in zip(ref, got))
    print("torch check", diff, same, flush=True)
    return {"n_items": n, diff_key: diff, "same_argmax": same, "torch_scores": ref,
            "yunmin_scores": got[:n]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--yunmind", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--profile", action="append", default=[], help="NAME=FILE")
    ap.add_argument("--check-torch", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    items = load_task(a.task, ("prompt", "labels", "answer", "doc"))
    if any(it["labels"] != items[0]["labels"] for it in items):
        raise SystemExit(f"{a.task}: the items do not share one label list")
    counts = {}
    for it in items:
        counts[it["answer"]] = counts.get(it["answer"], 0) + 1
    res = {"task": os.path.basename(a.task), "n_items": len(items),
           "n_docs": len({it["doc"] for it in items}), "n_labels": len(items[0]["labels"]),
           "chance": 1 / len(items[0]["labels"]),
           "majority_baseline": max(counts.values()) / len(items),
           "majority_label": items[0]["labels"][max(counts, key=counts.get)], "models": {}}
    all_scores = {}
    for name, path in [("dense", "")] + [p.split("=", 1) for p in a.profile]:
        with serving(a.yunmind, a.model, path) as port:
            t0 = time.time()
            sc = [score_item(port, it) for it in items]
            dt = time.time() - t0
            priors = {q: score_prompt(port, q, items[0]["labels"])
                      for q in dict.fromkeys(it.get("prior_prompt", PRIOR_PROMPT) for it in items)}
        all_scores[name] = sc
        cal = [[x - q for x, q in zip(row, priors[it.get("prior_prompt", PRIOR_PROMPT)])]
               for row, it in zip(sc, items)]
        prior = priors[PRIOR_PROMPT] if len(priors) == 1 and PRIOR_PROMPT in priors else \
            list(priors.values())
        res["models"][name] = dict(evaluate(sc, items), sparsity=os.path.basename(path) or None,
                                   seconds=round(dt, 1), prior=prior,
                                   calibrated=evaluate(cal, items))
        print(name, json.dumps(res["models"][name]), flush=True)
    if a.check_torch:
        res["torch_check"] = torch_check(a.model, items, a.check_torch, all_scores["dense"],
                                         "max_abs_diff_label_score")
    res["scores"] = all_scores
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
