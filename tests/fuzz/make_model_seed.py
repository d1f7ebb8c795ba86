#!/usr/bin/python3
"""Seed for fuzz_model_load: a valid int8 checkpoint of its tiny model (hidden 8, one layer,
vocabulary 5, state 2, conv 2, d_inner 16, dt_rank 1, tied), in the format of docs/FORMATS.md,
written with the standard library only.  usage: make_model_seed.py OUT_FILE"""
import json
import struct
import sys

DM, DI, DS, DC, R, V = 8, 16, 2, 2, 1, 5
tensors = []  # (name, dtype, shape, bytes)


def f32(name, shape, fn):
    n = 1
    for s in shape:
        n *= s
    tensors.append((name, "F32", shape, struct.pack("<%df" % n, *[fn(i) for i in range(n)])))


def i8(name, rows, cols):
    q = [((r * 7 + c * 3) % 255) - 127 for r in range(rows) for c in range(cols)]
    tensors.append((name, "I8", [rows, cols], struct.pack("<%db" % len(q), *q)))
    f32(name + "_scale", [rows], lambda i: 0.01 * (i % 5 + 1))


L = "backbone.layers.0."
i8("backbone.embeddings.weight", V, DM)
f32(L + "norm.weight", [DM], lambda i: 1.0)
i8(L + "mixer.in_proj.weight", 2 * DI, DM)
f32(L + "mixer.conv1d.weight", [DI, 1, DC], lambda i: 0.1)
f32(L + "mixer.conv1d.bias", [DI], lambda i: 0.0)
i8(L + "mixer.x_proj.weight", R + 2 * DS, DI)
f32(L + "mixer.dt_proj.weight", [DI, R], lambda i: 0.5)
f32(L + "mixer.dt_proj.bias", [DI], lambda i: -2.0)
f32(L + "mixer.A_log", [DI, DS], lambda i: 0.0)
f32(L + "mixer.D", [DI], lambda i: 1.0)
i8(L + "mixer.out_proj.weight", DM, DI)
f32("backbone.norm_f.weight", [DM], lambda i: 1.0)

# contiguous spans (no holes allowed); every size here is a multiple of 4, so all stay aligned
header, off, blob = {}, 0, b""
for name, dt, shape, data in tensors:
    header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
    blob, off = blob + data, off + len(data)
header["__metadata__"] = {"yunmin.weights": "int8"}
h = json.dumps(header, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + blob)
