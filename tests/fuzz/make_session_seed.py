#!/usr/bin/env python3
"""Seed inputs for fuzz_session_blob: valid session blobs (docs/FORMATS.md "Session state") for
the fuzz target's dimensions (2 layers, d_inner 4, d_conv 3, d_state 2) and fingerprint (32 x
0xab), written independently of the C code from the format's description: state version 2
(XXH3-64 checksum, python3-xxhash), and one of version 1 (FNV-1a-64), which readers still take."""
import os
import struct
import sys

import xxhash


def fnv1a(b):
    h = 0xcbf29ce484222325
    for x in b:
        h ^= x
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def blob(n_tokens, scale, version=2):
    n_layer, d_inner, d_conv, d_state = 2, 4, 3, 2
    floats = [scale * i for i in range(n_layer * d_inner * (d_conv - 1 + d_state))]
    payload = struct.pack("<%df" % len(floats), *floats)
    sum_ = fnv1a(payload) if version == 1 else xxhash.xxh3_64_intdigest(payload)
    state = struct.pack("<4sIIIIIqQQ", b"YMST", version, n_layer, d_inner, d_conv, d_state,
                        n_tokens, len(payload), sum_) + payload
    return b"YMSS" + struct.pack("<I", 1) + b"\xab" * 32 + bytes(range(32)) + state


out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus",
                                                        "fuzz_session_blob")
os.makedirs(out, exist_ok=True)
for name, b in (("valid_1", blob(1, 0.5)), ("valid_300", blob(300, -0.25)),
                ("valid_v1_1", blob(1, 0.5, version=1))):
    with open(os.path.join(out, name), "wb") as f:
        f.write(b)
