#!/usr/bin/python3
"""Write a model directory with mamba2-130m's shapes and random weights, for server benchmarks.

    /usr/bin/python3 bench/make_synth_mamba2.py OUT_DIR [--tokenizer FILE] [--seed N]

The Mamba-2 counterpart of bench/make_synth_model.py (whose safetensors writer it uses): a
Hugging Face Mamba2ForCausalLM directory, config.json (Mamba2Config keys) and model.safetensors
(F32, tied embeddings), with state-spaces/mamba2-130m's shapes, the ones `yunmin bench --arch
mamba2` builds in memory: vocab 50288, hidden 768, 24 layers, 24 heads of 64, state 128, 1
group, conv 4; 129 M parameters, 516 MB, 19,390,464 state bytes per sequence. Random values
(uniform +-1/sqrt(fan_in), dt_bias for dt in [1e-3, 0.1], A_log = log(1..16) over the heads,
D = 1, unit norms): activations stay finite, which is all speed and memory measurements need.
Needs only numpy.
"""
import argparse
import importlib.util
import json
import os
import shutil
import sys

import numpy as np

D_MODEL, N_LAYER, N_HEAD, HEAD_DIM, N_GROUP, D_STATE, D_CONV, N_VOCAB = \
    768, 24, 24, 64, 1, 128, 4, 50288
D_INNER = N_HEAD * HEAD_DIM
CONV_DIM = D_INNER + 2 * N_GROUP * D_STATE
N_IN = D_INNER + CONV_DIM + N_HEAD


def tensors(rng):
    """(name, shape, maker) in file order; maker() returns the float32 array."""

    def uniform(shape, bound):
        return lambda: rng.uniform(-bound, bound, size=shape).astype(np.float32)

    def const(shape, v):
        return lambda: np.full(shape, v, dtype=np.float32)

    def dt_bias():
        u = rng.uniform(0.0, 1.0, size=N_HEAD)
        dt = np.exp(u * (np.log(0.1) - np.log(1e-3)) + np.log(1e-3))
        return (dt + np.log(-np.expm1(-dt))).astype(np.float32)  # softplus^-1(dt)

    out = [("backbone.embeddings.weight", (N_VOCAB, D_MODEL), uniform((N_VOCAB, D_MODEL),
                                                                      D_MODEL ** -0.5))]
    for l in range(N_LAYER):
        p = f"backbone.layers.{l}."
        out += [
            (p + "norm.weight", (D_MODEL,), const((D_MODEL,), 1.0)),
            (p + "mixer.in_proj.weight", (N_IN, D_MODEL), uniform((N_IN, D_MODEL),
                                                                  D_MODEL ** -0.5)),
            (p + "mixer.conv1d.weight", (CONV_DIM, 1, D_CONV),
             uniform((CONV_DIM, 1, D_CONV), D_CONV ** -0.5)),
            (p + "mixer.conv1d.bias", (CONV_DIM,), uniform((CONV_DIM,), D_CONV ** -0.5)),
            (p + "mixer.dt_bias", (N_HEAD,), dt_bias),
            (p + "mixer.A_log", (N_HEAD,),
             lambda: np.log(np.linspace(1.0, 16.0, N_HEAD)).astype(np.float32)),
            (p + "mixer.D", (N_HEAD,), const((N_HEAD,), 1.0)),
            (p + "mixer.norm.weight", (D_INNER,), const((D_INNER,), 1.0)),
            (p + "mixer.out_proj.weight", (D_MODEL, D_INNER),
             uniform((D_MODEL, D_INNER), D_INNER ** -0.5)),
        ]
    out.append(("backbone.norm_f.weight", (D_MODEL,), const((D_MODEL,), 1.0)))
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("make_synth_model",
                                                  os.path.join(here, "make_synth_model.py"))
    msm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(msm)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--tokenizer",
                    default=os.path.join(here, "..", "models", "shakespeare-mamba",
                                         "tokenizer.json"))
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    config = {
        "architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2",
        "hidden_size": D_MODEL, "num_hidden_layers": N_LAYER, "num_heads": N_HEAD,
        "head_dim": HEAD_DIM, "n_groups": N_GROUP, "state_size": D_STATE, "expand": 2,
        "conv_kernel": D_CONV, "chunk_size": 256, "use_bias": False, "use_conv_bias": True,
        "rms_norm": True, "time_step_limit": [0.0, {"__float__": "Infinity"}],
        "layer_norm_epsilon": 1e-5, "vocab_size": N_VOCAB, "tie_word_embeddings": True,
        "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0, "torch_dtype": "float32",
    }
    with open(os.path.join(a.out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    shutil.copyfile(a.tokenizer, os.path.join(a.out_dir, "tokenizer.json"))
    items = tensors(np.random.default_rng(a.seed))
    n = msm.write_safetensors(os.path.join(a.out_dir, "model.safetensors"), items)
    print(f"{a.out_dir}: {len(items)} tensors, {n / 4e6:.1f} M parameters, {n / 1e6:.1f} MB "
          "(F32)", file=sys.stderr)


if __name__ == "__main__":
    main()
