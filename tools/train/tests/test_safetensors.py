import json
import struct

import numpy as np
import pytest
import torch

from yunmin_train import safetensors_io as st


def _file(header, data=b"", pad=True):
    h = json.dumps(header).encode() if not isinstance(header, bytes) else header
    if pad:
        h += b" " * ((-len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + data


def test_round_trip_all_dtypes(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f64": torch.randn(3, 4, generator=g, dtype=torch.float64),
        "f32": torch.randn(5, generator=g),
        "f16": torch.randn(2, 3, generator=g).half(),
        "bf16": torch.randn(7, 2, generator=g).to(torch.bfloat16),
        "i32": torch.arange(-5, 5, dtype=torch.int32),
        "i64": torch.arange(6, dtype=torch.int64).reshape(2, 3) * (1 << 40),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }
    p = tmp_path / "x.safetensors"
    st.save(tensors, str(p), metadata={"format": "pt", "note": "héllo"})
    back, meta = st.load(str(p))
    assert meta == {"format": "pt", "note": "héllo"}
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype, k
        assert back[k].shape == v.shape, k
        assert torch.equal(back[k], v), k
    # numpy view: bf16 widened exactly
    npd, _ = st.load_numpy(str(p))
    assert npd["bf16"].dtype == np.float32
    assert np.array_equal(npd["bf16"], tensors["bf16"].float().numpy())
    assert np.array_equal(npd["f64"], tensors["f64"].numpy())
    # header is 8-byte aligned, data starts right after it
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    entries, _, start = st.parse_header(raw)
    assert start == 8 + n
    assert st.dtype_names(str(p))["bf16"] == "BF16"


def test_numpy_inputs_and_no_metadata(tmp_path):
    p = tmp_path / "n.safetensors"
    st.save({"a": np.arange(4, dtype=np.int32), "b": np.ones((2, 2), np.float32)}, str(p))
    back, meta = st.load_numpy(str(p))
    assert meta is None
    assert back["a"].tolist() == [0, 1, 2, 3]


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "I32", "shape": [1], "data_offsets": [8, 12]}}


def test_well_formed_minimal_file_parses():
    entries, meta, _ = st.parse_header(_file(GOOD, b"\0" * 12))
    assert entries["b"] == ("I32", (1,), 8, 12)


@pytest.mark.parametrize("blob, why", [
    (b"", "too small"),
    (b"\x10\0\0\0\0\0\0\0{}", "past the end"),
    (struct.pack("<Q", 1 << 40) + b"{}", "exceeds"),
    (_file(b"[1, 2]      "), "does not start"),
    (_file(b"{not json}  "), "not valid JSON"),
    (_file(b"\xff\xfe{}    "), "not UTF-8"),
    (_file(b'{"a": 1, "a": 2}'), "duplicate"),
    (_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4), "tensors cover"),
    (_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12), "tensors cover"),
    (_file({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), "needs 12"),
    (_file({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8), "unknown dtype"),
    (_file({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8), "shape"),
    (_file({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, b"\0" * 8), "shape"),
    (_file({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4), "shape"),
    (_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8), "end"),
    (_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, b"\0" * 8), "data_offsets"),
    (_file({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), "missing"),
    (_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}}, b"\0" * 8),
     "unexpected"),
    (_file({"a": [1, 2]}), "not an object"),
    (_file({"__metadata__": {"k": 1}}), "not a string"),
    (_file({"__metadata__": ["k"]}), "not an object"),
    (_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12), "overlap"),
    (_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}, b"\0" * 16), "gap"),
    (_file({"": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}), "empty tensor name"),
])
def test_malformed_headers_are_rejected(blob, why):
    with pytest.raises(st.SafetensorsError, match=why):
        st.parse_header(blob)


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(st.SafetensorsError):
        st.save({"a": np.zeros(2, dtype=np.complex64)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(st.SafetensorsError):
        st.save({"a": np.zeros(2, np.float32)}, str(tmp_path / "m.safetensors"), metadata={"k": 1})
    with pytest.raises(st.SafetensorsError):
        st.save({"__metadata__": np.zeros(2, np.float32)}, str(tmp_path / "n.safetensors"))
