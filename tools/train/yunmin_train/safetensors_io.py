"""Minimal safetensors reader and writer, pure Python (numpy; torch only for BF16 tensors).

File layout (https://github.com/huggingface/safetensors, "Format"):
    u64 little-endian N | N bytes of JSON header | data buffer
    header = {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
              "__metadata__": {"<str>": "<str>"}}            (metadata optional)
Offsets are relative to the start of the data buffer. The reader is strict, like the Rust
crate: the tensors must tile the buffer exactly (sorted by offset, no gap, no overlap, the last
one ending at the end of the file), each byte range must equal prod(shape) * itemsize, names are
unique, the header is a JSON object starting with '{' (trailing spaces allowed), metadata maps
strings to strings. Anything else raises SafetensorsError (a ValueError).

Public API
    load(path)            -> (dict name -> torch.Tensor, metadata)       any dtype, BF16 included
    load_numpy(path)      -> (dict name -> numpy array, metadata)        BF16 widened to float32
                                                                         exactly (bit shift)
    save(tensors, path, metadata=None)   tensors: name -> torch.Tensor or numpy array
    parse_header(data)    -> (entries, metadata, data_start)             for tests and tools
"""

import json
import os
import struct
import sys

import numpy as np

MAX_HEADER_BYTES = 100 * 1000 * 1000

# dtype name -> (itemsize, numpy dtype or None when numpy has no such type)
DTYPES = {
    "F64": (8, np.dtype("<f8")),
    "F32": (4, np.dtype("<f4")),
    "F16": (2, np.dtype("<f2")),
    "BF16": (2, None),
    "I64": (8, np.dtype("<i8")),
    "I32": (4, np.dtype("<i4")),
    "I16": (2, np.dtype("<i2")),
    "I8": (1, np.dtype("i1")),
    "U8": (1, np.dtype("u1")),
    "BOOL": (1, np.dtype("bool")),
}

_NUMPY_TO_ST = {
    np.dtype("float64"): "F64",
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("int16"): "I16",
    np.dtype("int8"): "I8",
    np.dtype("uint8"): "U8",
    np.dtype("bool"): "BOOL",
}

if sys.byteorder != "little":  # pragma: no cover - every machine we run on is little-endian
    raise ImportError("safetensors_io assumes a little-endian host")


class SafetensorsError(ValueError):
    pass


def _reject_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise SafetensorsError(f"duplicate key {k!r} in header")
        out[k] = v
    return out


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def parse_header(data):
    """Validate the header of a whole safetensors file held in `data` (bytes-like).

    Returns (entries, metadata, data_start) where entries maps name -> (dtype, shape, begin, end),
    offsets relative to data_start.
    """
    mv = memoryview(data)
    size = len(mv)
    if size < 8:
        raise SafetensorsError(f"file too small ({size} bytes) for the 8-byte header length")
    (n,) = struct.unpack("<Q", mv[:8])
    if n > MAX_HEADER_BYTES:
        raise SafetensorsError(f"header length {n} exceeds the {MAX_HEADER_BYTES} limit")
    if 8 + n > size:
        raise SafetensorsError(f"header length {n} runs past the end of the file ({size} bytes)")
    raw = bytes(mv[8:8 + n])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SafetensorsError(f"header is not UTF-8: {e}") from None
    if not text.startswith("{"):
        raise SafetensorsError("header does not start with '{'")
    try:
        header = json.loads(text, object_pairs_hook=_reject_duplicates)
    except SafetensorsError:
        raise
    except ValueError as e:
        raise SafetensorsError(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise SafetensorsError("header is not a JSON object")

    metadata = None
    if "__metadata__" in header:
        metadata = header.pop("__metadata__")
        if not isinstance(metadata, dict):
            raise SafetensorsError("__metadata__ is not an object")
        for k, v in metadata.items():
            if not isinstance(v, str):
                raise SafetensorsError(f"__metadata__[{k!r}] is not a string")

    data_len = size - 8 - n
    entries = {}
    for name, info in header.items():
        if not name:
            raise SafetensorsError("empty tensor name")
        if not isinstance(info, dict):
            raise SafetensorsError(f"{name}: entry is not an object")
        extra = set(info) - {"dtype", "shape", "data_offsets"}
        missing = {"dtype", "shape", "data_offsets"} - set(info)
        if missing or extra:
            raise SafetensorsError(f"{name}: bad keys (missing {sorted(missing)}, "
                                   f"unexpected {sorted(extra)})")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPES:
            raise SafetensorsError(f"{name}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise SafetensorsError(f"{name}: shape must be a list of non-negative integers")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(_is_int(o) and o >= 0 for o in offs)):
            raise SafetensorsError(f"{name}: data_offsets must be two non-negative integers")
        begin, end = offs
        if end < begin:
            raise SafetensorsError(f"{name}: data_offsets end {end} < begin {begin}")
        nelem = 1
        for d in shape:
            nelem *= d
        want = nelem * DTYPES[dtype][0]
        if end - begin != want:
            raise SafetensorsError(f"{name}: {end - begin} bytes for dtype {dtype} shape {shape} "
                                   f"(needs {want})")
        entries[name] = (dtype, tuple(shape), begin, end)

    pos = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != pos:
            kind = "gap before" if begin > pos else "overlap at"
            raise SafetensorsError(f"{name}: {kind} offset {begin} (expected {pos})")
        pos = end
    if pos != data_len:
        raise SafetensorsError(f"tensors cover {pos} bytes but the data buffer has {data_len}")
    return entries, metadata, 8 + n


def _read_file(path):
    with open(path, "rb") as f:
        return f.read()


def load_numpy(path):
    """Read a safetensors file into numpy arrays; BF16 becomes float32 (exact)."""
    data = _read_file(path)
    entries, metadata, start = parse_header(data)
    out = {}
    for name, (dtype, shape, begin, end) in entries.items():
        buf = data[start + begin:start + end]
        if dtype == "BF16":
            u16 = np.frombuffer(buf, dtype="<u2").astype(np.uint32)
            arr = (u16 << 16).view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype=DTYPES[dtype][1]).copy()
        out[name] = arr.reshape(shape)
    return out, metadata


def load(path):
    """Read a safetensors file into torch tensors of the stored dtype."""
    import torch
    data = _read_file(path)
    entries, metadata, start = parse_header(data)
    out = {}
    for name, (dtype, shape, begin, end) in entries.items():
        buf = data[start + begin:start + end]
        if dtype == "BF16":
            arr = np.frombuffer(buf, dtype="<i2").copy()
            t = torch.from_numpy(arr).view(torch.bfloat16)
        else:
            arr = np.frombuffer(buf, dtype=DTYPES[dtype][1]).copy()
            t = torch.from_numpy(arr)
        out[name] = t.reshape(shape)
    return out, metadata


def dtype_names(path):
    """name -> dtype string, without reading the tensor data into arrays."""
    entries, _, _ = parse_header(_read_file(path))
    return {k: v[0] for k, v in entries.items()}


def _to_bytes(value):
    """(dtype name, shape, bytes) for a torch tensor or numpy array."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        shape = list(t.shape)
        if t.dtype == torch.bfloat16:
            return "BF16", shape, t.view(torch.int16).numpy().tobytes()
        value = t.numpy()
    arr = np.asarray(value)
    if arr.dtype not in _NUMPY_TO_ST:
        raise SafetensorsError(f"unsupported dtype {arr.dtype}")
    shape = list(arr.shape)              # (np.ascontiguousarray would turn 0-d into 1-d)
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    return _NUMPY_TO_ST[arr.dtype], shape, arr.tobytes(order="C")


def save(tensors, path, metadata=None):
    """Write tensors (name -> torch.Tensor | numpy array) to `path` atomically.

    Data is laid out in name order; the header is padded with spaces to a multiple of 8 bytes.
    """
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise SafetensorsError("metadata must map str to str")
    header = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    blobs = []
    pos = 0
    for name in sorted(tensors):
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise SafetensorsError(f"bad tensor name {name!r}")
        dtype, shape, raw = _to_bytes(tensors[name])
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + len(raw)]}
        blobs.append(raw)
        pos += len(raw)
    hbytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hbytes += b" " * ((-len(hbytes)) % 8)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)
