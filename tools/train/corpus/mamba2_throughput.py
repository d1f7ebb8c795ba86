"""Training throughput of transformers' Mamba2ForCausalLM (its plain-PyTorch path, random
weights and tokens) at the corpus model's sizes, to size a Mamba-2 run before making it.

    python3 tools/train/corpus/mamba2_throughput.py --out OUT/mamba2_throughput.json [--seconds 15]

Per shape: d_model x layers, d_state 128, head_dim 64, expand 2, one group, vocab 12,296,
chunk 256; batch --batch x 256 tokens, bf16 autocast, AdamW; tokens/s = median over the
steps after 3 warm-up steps within --seconds; peak memory.
"""

import argparse
import json
import statistics
import time

import torch


def run(d, n, a):
    from transformers import Mamba2Config, Mamba2ForCausalLM
    cfg = Mamba2Config(vocab_size=12296, hidden_size=d, num_hidden_layers=n, state_size=128,
                       expand=2, head_dim=64, num_heads=2 * d // 64, n_groups=1,
                       chunk_size=256, tie_word_embeddings=True)
    torch.manual_seed(0)
    m = Mamba2ForCausalLM(cfg).cuda()
    n_params = sum(p.numel() for p in m.parameters())
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    torch.cuda.reset_peak_memory_stats()
    rates, t_end = [], time.time() + a.seconds
    step = 0
    while time.time() < t_end or step < 5:
        x = torch.randint(0, 12296, (a.batch, 257), device="cuda")
        torch.cuda.synchronize()
        t0 = time.time()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = m(input_ids=x[:, :-1], labels=x[:, :-1])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= 3:
            rates.append(a.batch * 256 / (time.time() - t0))
        step += 1
    return {"d_model": d, "n_layer": n, "n_params": n_params, "steps": step,
            "tokens_per_s_median": statistics.median(rates), "loss_last": float(out.loss),
            "max_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--shapes", default="640x8,768x12")
    a = ap.parse_args()
    import transformers
    res = {"torch": torch.__version__, "transformers": transformers.__version__,
           "device": torch.cuda.get_device_name(0), "shapes": []}
    for s in a.shapes.split(","):
        d, n = map(int, s.split("x"))
        try:
            r = run(d, n, a)
        except Exception as e:  # noqa: BLE001
            r = {"d_model": d, "n_layer": n, "error": repr(e)[:500]}
        res["shapes"].append(r)
        print(json.dumps(r), flush=True)
        json.dump(res, open(a.out, "w"), indent=1)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
