#!/usr/bin/python3
"""Write a model directory with mamba-130m's shapes and random weights, for server benchmarks.

    /usr/bin/python3 bench/make_synth_model.py OUT_DIR [--tokenizer FILE] [--seed N]

`yunmin bench` builds the same shapes in memory (ym_model_new_random); yunmind needs a
directory, so this writes one in Hugging Face's Mamba layout: config.json (MambaConfig keys),
model.safetensors (F32, tied embeddings, no lm_head.weight) and a copy of a tokenizer.json
(default: the embedded model's). Shapes: vocab 50280, hidden 768, 24 layers, state 16,
expand 2, conv 4, dt_rank 48; 129.1 M parameters, 516.6 MB of weights, the same bytes per
decoded token as the real mamba-130m. The initialisation follows ym_model_new_random (uniform
+-1/sqrt(fan_in), Mamba's dt bias, A_log = log(n+1), D = 1), so activations stay finite; the
values differ, which does not matter for speed. The default tokenizer has fewer ids than the
vocabulary: the server never samples the padding ids (it masks them), as with real
checkpoints. Needs only numpy; writes the file in pieces, so it stays small in memory.
"""
import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

D_MODEL, N_LAYER, D_STATE, EXPAND, D_CONV, N_VOCAB = 768, 24, 16, 2, 4, 50280
D_INNER = EXPAND * D_MODEL
DT_RANK = (D_MODEL + 15) // 16


def tensors(rng):
    """(name, shape, maker) in file order; maker() returns the float32 array."""

    def uniform(shape, bound):
        return lambda: rng.uniform(-bound, bound, size=shape).astype(np.float32)

    def const(shape, v):
        return lambda: np.full(shape, v, dtype=np.float32)

    def dt_bias():
        u = rng.uniform(0.0, 1.0, size=D_INNER)
        dt = np.exp(u * (np.log(0.1) - np.log(1e-3)) + np.log(1e-3))
        dt = np.maximum(dt, 1e-4)
        return (dt + np.log(-np.expm1(-dt))).astype(np.float32)  # softplus^-1(dt)

    def a_log():
        return np.tile(np.log(np.arange(1, D_STATE + 1, dtype=np.float32)), (D_INNER, 1))

    out = [("backbone.embeddings.weight", (N_VOCAB, D_MODEL), uniform((N_VOCAB, D_MODEL),
                                                                      D_MODEL ** -0.5))]
    for l in range(N_LAYER):
        p = f"backbone.layers.{l}."
        out += [
            (p + "norm.weight", (D_MODEL,), const((D_MODEL,), 1.0)),
            (p + "mixer.in_proj.weight", (2 * D_INNER, D_MODEL),
             uniform((2 * D_INNER, D_MODEL), D_MODEL ** -0.5)),
            (p + "mixer.conv1d.weight", (D_INNER, 1, D_CONV),
             uniform((D_INNER, 1, D_CONV), D_CONV ** -0.5)),
            (p + "mixer.conv1d.bias", (D_INNER,), uniform((D_INNER,), D_CONV ** -0.5)),
            (p + "mixer.x_proj.weight", (DT_RANK + 2 * D_STATE, D_INNER),
             uniform((DT_RANK + 2 * D_STATE, D_INNER), D_INNER ** -0.5)),
            (p + "mixer.dt_proj.weight", (D_INNER, DT_RANK),
             uniform((D_INNER, DT_RANK), DT_RANK ** -0.5)),
            (p + "mixer.dt_proj.bias", (D_INNER,), dt_bias),
            (p + "mixer.A_log", (D_INNER, D_STATE), a_log),
            (p + "mixer.D", (D_INNER,), const((D_INNER,), 1.0)),
            (p + "mixer.out_proj.weight", (D_MODEL, D_INNER),
             uniform((D_MODEL, D_INNER), D_INNER ** -0.5)),
        ]
    out.append(("backbone.norm_f.weight", (D_MODEL,), const((D_MODEL,), 1.0)))
    return out


def write_safetensors(path, items):
    header, offset = {"__metadata__": {"format": "pt", "source": "bench/make_synth_model.py"}}, 0
    for name, shape, _ in items:
        n = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # the data starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name, shape, make in items:
            a = make()
            assert a.shape == tuple(shape) and a.dtype == np.float32, name
            f.write(np.ascontiguousarray(a).astype("<f4", copy=False).tobytes())
    os.replace(tmp, path)
    return offset


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--tokenizer",
                    default=os.path.join(here, "..", "models", "shakespeare-mamba",
                                         "tokenizer.json"))
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    config = {
        "architectures": ["MambaForCausalLM"],
        "model_type": "mamba",
        "hidden_size": D_MODEL,
        "num_hidden_layers": N_LAYER,
        "state_size": D_STATE,
        "expand": EXPAND,
        "intermediate_size": D_INNER,
        "conv_kernel": D_CONV,
        "time_step_rank": DT_RANK,
        "vocab_size": N_VOCAB,
        "use_bias": False,
        "use_conv_bias": True,
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": True,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }
    with open(os.path.join(a.out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    shutil.copyfile(a.tokenizer, os.path.join(a.out_dir, "tokenizer.json"))
    items = tensors(np.random.default_rng(a.seed))
    n = write_safetensors(os.path.join(a.out_dir, "model.safetensors"), items)
    params = n // 4
    print(f"{a.out_dir}: {len(items)} tensors, {params / 1e6:.1f} M parameters, "
          f"{n / 1e6:.1f} MB (F32)", file=sys.stderr)


if __name__ == "__main__":
    main()
