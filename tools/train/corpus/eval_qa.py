"""Score the QA task (make_qa_task.py) in yunmind, dense and under sparsity profiles.

    python3 tools/train/corpus/eval_qa.py --yunmind build/server/yunmind --model DIR \\
        --task tools/train/results/scale/qa.jsonl [--profile NAME=FILE]... \\
        [--check-torch 5] --out tools/train/results/scale/qa_results.json

Every item is scored as eval_genre.py scores a genre item (its helpers, one /v1/completions
request per prompt set with echo, logprobs 0, max_tokens 0): a choice's score is the sum of the
logprobs of its tokens " <choice>" after the prompt. Three scores per choice: raw (after the
passage and the question), no passage (after the question alone: what the model guesses
without reading), and calibrated (raw minus the choice's score after the content-free
"\\nAnswer:", its prior). Reported per model: accuracy of each, beside chance (1/4) and the
frequent-choice baseline (the choice occurring most often in the passage). --check-torch K
recomputes the dense raw scores of the first K items with the toolkit's PyTorch model.
--verse scores instead, without the Question/Answer format, the quoted verse itself after the
passage: argmax_c log P(c + rest of the verse | passage + "\n\n" + verse up to the blank), the
usual language-model cloze score (verse_items); it tells whether the model can copy the name
from the passage when no question format is in the way.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval_genre as eg  # noqa: E402
import make_qa_task as mq  # noqa: E402


def verse_items(items):
    """The verse score as items eval_genre scores: prompt = the passage, a blank line and the
    quoted verse up to the blank (its space dropped), labels = each choice and the rest of the
    verse, so a choice is scored with the text that follows it (the passage's verse, or not)."""
    out = []
    for it in items:
        pre, post = it["question"].split("___")
        if not pre.endswith(" "):
            raise SystemExit(f"item {it['id']}: no space before the blank")
        out.append(dict(it, prompt=it["passage"] + "\n\n" + pre[:-1],
                        labels=[c + post for c in it["labels"]]))
    return out


def accuracy(scores, items):
    right = sum(max(range(len(s)), key=s.__getitem__) == it["answer"]
                for s, it in zip(scores, items))
    return {"accuracy": right / len(items), "n_right": right, "n_items": len(items)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--yunmind", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--profile", action="append", default=[], help="NAME=FILE")
    ap.add_argument("--check-torch", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="score only the first N items")
    ap.add_argument("--verse", action="store_true",
                    help="the verse score only (verse_items) in place of the three scores")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    items = eg.load_task(a.task, ("prompt", "no_passage_prompt", "labels", "answer", "frequent"))
    if a.limit:
        items = items[:a.limit]
    if a.verse:
        items = verse_items(items)
    n_lab = len(items[0]["labels"])
    res = {"task": os.path.basename(a.task), "n_items": len(items),
           "n_docs": len({it.get("doc") for it in items}), "n_choices": n_lab,
           "chance": 1 / n_lab,
           "frequent_baseline": sum(it["frequent"] == it["answer"] for it in items) / len(items),
           "models": {}}
    all_scores = {}
    for name, path in [("dense", "")] + [p.split("=", 1) for p in a.profile]:
        with eg.serving(a.yunmind, a.model, path) as port:
            t0 = time.time()
            raw = [eg.score_prompt(port, it["prompt"], it["labels"]) for it in items]
            dt = time.time() - t0
            if a.verse:
                nop = prior = [[0.0] * n_lab for _ in items]
            else:
                nop = [eg.score_prompt(port, it["no_passage_prompt"], it["labels"])
                       for it in items]
                prior = [eg.score_prompt(port, mq.ANSWER, it["labels"]) for it in items]
        if a.verse:
            all_scores[name] = {"verse": raw}
            res["models"][name] = dict(accuracy(raw, items), score="verse",
                                       sparsity=os.path.basename(path) or None,
                                       seconds=round(dt, 1))
            print(name, json.dumps(res["models"][name]), flush=True)
            continue
        cal = [[x - q for x, q in zip(r, pr)] for r, pr in zip(raw, prior)]
        all_scores[name] = {"raw": raw, "no_passage": nop, "prior": prior}
        res["models"][name] = dict(accuracy(raw, items), sparsity=os.path.basename(path) or None,
                                   seconds=round(dt, 1), no_passage=accuracy(nop, items),
                                   calibrated=accuracy(cal, items))
        print(name, json.dumps(res["models"][name]), flush=True)
    if a.check_torch:
        res["torch_check"] = eg.torch_check(a.model, items, a.check_torch,
                                            all_scores["dense"]["verse" if a.verse else "raw"],
                                            "max_abs_diff_choice_score")
    res["scores"] = all_scores
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
