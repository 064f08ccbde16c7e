"""slmx.formats.safetensors: files written by the safetensors library read back zero-copy; every
kind of malformed file (generated here) raises FormatError naming what is wrong."""
import json
import os
import struct
import tracemalloc

import numpy as np
import pytest
from safetensors.numpy import save_file

from slmx.errors import FormatError
from slmx.formats import safetensors as st


def _raw(header, data=b"", header_bytes=None, length=None):
    h = header_bytes if header_bytes is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + data


def _write(tmp_path, blob, name="model.safetensors"):
    p = tmp_path / name
    p.write_bytes(blob)
    return str(p)


def test_reads_library_file_zero_copy(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float16)
    c = np.arange(4, dtype=np.int64)
    p = str(tmp_path / "x.safetensors")
    save_file({"a": a, "b": b, "c": c}, p, metadata={"format": "np"})
    with st.read(p) as f:
        assert f.metadata == {"format": "np"}
        assert set(f.tensors) == {"a", "b", "c"}
        ta = f.tensors["a"]
        assert ta.dtype == "F32" and ta.shape == (3, 5) and ta.type == 0
        np.testing.assert_array_equal(ta.data, a)
        np.testing.assert_array_equal(f.tensors["b"].data, b)
        np.testing.assert_array_equal(f.tensors["c"].data, c)
        d = ta.data
        assert not d.flags.writeable and not d.flags.owndata   # a view of the mmap
        assert d.base is not None


def test_bf16_as_uint16(tmp_path):
    import torch
    from safetensors.torch import save_file as save_pt
    x = torch.randn(4, 6).to(torch.bfloat16)
    p = str(tmp_path / "b.safetensors")
    save_pt({"w": x}, p)
    with st.read(p) as f:
        t = f.tensors["w"]
        assert t.dtype == "BF16" and t.type == 30
        np.testing.assert_array_equal(t.data, x.view(torch.int16).numpy().view(np.uint16))


def _entry(dtype="F32", shape=(2,), offs=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offs)}


BAD = {
    "too short": (lambda: b"\x01\x02", "too short"),
    "header longer than file": (lambda: _raw({}, length=1000), "larger than the file"),
    "absurd header": (lambda: _raw({}, length=2**62), "absurd"),
    "not json": (lambda: _raw(None, header_bytes=b"{not json at all"), "not valid JSON"),
    "not utf8": (lambda: _raw(None, header_bytes=b'{"\xff\xfe": 1}  '), "not UTF-8"),
    "not an object": (lambda: _raw(None, header_bytes=b"[1, 2, 3]"), "not a JSON object"),
    "duplicate keys": (lambda: _raw(None, header_bytes=(
        b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
        b'"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'), data=bytes(8)),
        "duplicate key 'a'"),
    "offsets past end": (lambda: _raw({"a": _entry(offs=(0, 8))}, bytes(4)), "past the end"),
    "overlap": (lambda: _raw({"a": _entry(offs=(0, 8)), "b": _entry(offs=(4, 12))}, bytes(12)),
                "overlap"),
    "hole": (lambda: _raw({"a": _entry(offs=(0, 8)), "b": _entry(offs=(12, 20))}, bytes(20)),
             "hole"),
    "byte count": (lambda: _raw({"a": _entry(shape=(3,), offs=(0, 8))}, bytes(8)), "needs 12"),
    "unknown dtype": (lambda: _raw({"a": _entry(dtype="Q9")}, bytes(8)), "unknown dtype 'Q9'"),
    "bad shape": (lambda: _raw({"a": _entry(shape=(-1,))}, bytes(8)), "shape must be"),
    "bad offsets": (lambda: _raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, bytes(8)),
                    "data_offsets must be"),
    "reversed offsets": (lambda: _raw({"a": _entry(offs=(8, 0))}, bytes(8)), "end before"),
    "trailing bytes": (lambda: _raw({"a": _entry()}, bytes(12)), "cover 8 bytes"),
    "bad metadata": (lambda: _raw({"__metadata__": {"k": 1}, "a": _entry()}, bytes(8)), "__metadata__"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_malformed(tmp_path, kind):
    make, words = BAD[kind]
    p = _write(tmp_path, make())
    with pytest.raises(FormatError, match=words.replace("(", r"\(")) as ei:
        st.read(p)
    assert "model.safetensors" in str(ei.value)


def test_absurd_header_allocates_nothing(tmp_path):
    p = _write(tmp_path, _raw({}, length=2**40))
    tracemalloc.start()
    with pytest.raises(FormatError):
        st.read(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


def test_huge_shape_small_bytes(tmp_path):
    # product of the shape overflows int64: still an exact byte-count error, no allocation
    p = _write(tmp_path, _raw({"a": _entry(shape=(2**40, 2**40), offs=(0, 8))}, bytes(8)))
    with pytest.raises(FormatError, match="needs"):
        st.read(p)


def _shards(tmp_path):
    a = np.ones((2, 2), np.float32)
    b = np.zeros(3, np.float32)
    save_file({"a": a}, str(tmp_path / "s1.safetensors"))
    save_file({"b": b}, str(tmp_path / "s2.safetensors"))
    return {"metadata": {}, "weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}


def test_sharded_index(tmp_path):
    (tmp_path / st.INDEX_NAME).write_text(json.dumps(_shards(tmp_path)))
    m = st.read_folder(str(tmp_path))
    assert set(m.tensors) == {"a", "b"} and m.tensors["a"].data.sum() == 4
    m.close()


@pytest.mark.parametrize("kind,words", [
    ("missing shard", "is missing"),
    ("wrong shard", "listed in shard 's2.safetensors' but that file does not hold it"),
    ("unlisted", "holds 'z', which the weight map"),
    ("path escape", "not a file name"),
    ("duplicate key", "duplicate key"),
])
def test_sharded_malformed(tmp_path, kind, words):
    idx = _shards(tmp_path)
    text = None
    if kind == "missing shard":
        os.unlink(tmp_path / "s2.safetensors")
    elif kind == "wrong shard":
        idx["weight_map"]["a"] = "s2.safetensors"
    elif kind == "unlisted":
        save_file({"a": np.ones((2, 2), np.float32), "z": np.ones(1, np.float32)},
                  str(tmp_path / "s1.safetensors"))
    elif kind == "path escape":
        idx["weight_map"]["a"] = "../s1.safetensors"
    else:
        text = '{"weight_map": {"a": "s1.safetensors", "a": "s1.safetensors"}}'
    (tmp_path / st.INDEX_NAME).write_text(text or json.dumps(idx))
    with pytest.raises(FormatError, match=words.replace("(", r"\(")):
        st.read_folder(str(tmp_path))


def test_folder_without_weights(tmp_path):
    with pytest.raises(FormatError, match="no model.safetensors"):
        st.read_folder(str(tmp_path))


def test_mutated_files_only_raise_format_error(tmp_path):
    """Random byte flips in the header and truncations of a valid file: a FormatError or a
    clean read (then every tensor view is in bounds), never another exception."""
    p = str(tmp_path / "ok.safetensors")
    save_file({"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.float16),
               "c": np.zeros((2, 2), np.int32)}, p)
    good = open(p, "rb").read()
    (n,) = struct.unpack_from("<Q", good, 0)
    rng = np.random.default_rng(0)
    q = str(tmp_path / "bad.safetensors")
    for i in range(300):
        b = bytearray(good)
        if i % 3 == 0:
            b = b[:int(rng.integers(0, len(b)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                j = int(rng.integers(0, 8 + n))
                b[j] = int(rng.integers(0, 256))
        open(q, "wb").write(bytes(b))
        try:
            f = st.read(q)
        except FormatError:
            continue
        with f:
            for t in f.tensors.values():
                assert t.data.nbytes == t.nbytes and t.offset + t.nbytes <= len(b)
