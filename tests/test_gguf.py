"""slmx.formats.gguf: reader (valid, malformed, real model vs gguf-py), writer, describe."""
import gc
import json
import os
import sys
import time
import tracemalloc

import numpy as np
import pytest

from slmx import qtypes
from slmx.errors import FormatError
from slmx.formats import gguf as G

sys.path.insert(0, os.path.dirname(__file__))
import gguf_factory as F  # noqa: E402

import gguf as gguf_py


def _write(tmp_path, data, name="x.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def _expect_format_error(path, file_size, expect=None):
    """read(path) must raise FormatError within 1 s, tracemalloc peak < max(1 MiB, 2 x size)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(FormatError) as ei:
            G.read(path)
        dt = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    msg = str(ei.value)
    assert msg.startswith("gguf: "), msg
    if expect is not None:
        assert expect in msg, msg
    assert dt < 1.0, f"took {dt:.3f} s: {msg}"
    assert peak < max(1 << 20, 2 * file_size), f"peak {peak} bytes: {msg}"
    return msg


# --------------------------------------------------------------------------------------------
# valid hand-built files

@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("alignment", [32, 64, 1])
def test_read_valid_file(tmp_path, version, alignment):
    data, marks = F.valid_file(version=version, alignment=alignment)
    path = _write(tmp_path, data)
    with G.read(path) as f:
        assert f.version == version
        assert f.alignment == alignment
        assert f.file_size == len(data)
        assert f.data_offset == marks["data"]
        expected_md = dict(F.VALID_METADATA)
        expected_md["general.alignment"] = (F.UINT32, None, alignment)
        assert list(f.metadata) == list(expected_md)
        for key, (vt, et, value) in expected_md.items():
            assert f.metadata_types[key] == (vt, et), key
            got = f.metadata[key]
            if vt == F.ARRAY and et != F.STRING:
                assert isinstance(got, np.ndarray) and got.ndim == 1, key
                np.testing.assert_array_equal(got, np.array(value, dtype=got.dtype), err_msg=key)
                assert got.dtype == {F.UINT8: np.uint8, F.INT32: np.int32, F.FLOAT32: np.float32,
                                     F.FLOAT64: np.float64, F.BOOL: np.bool_,
                                     F.UINT64: np.uint64}[et]
            else:
                assert got == value and type(got) is type(value), key
        assert list(f.tensors) == list(F.VALID_TENSORS)
        for i, (name, (ttype, shape, raw)) in enumerate(F.VALID_TENSORS.items()):
            t = f.tensors[name]
            assert t.name == name
            assert t.type == ttype[0] and t.type_name == qtypes.BY_ID[ttype[0]].name
            assert t.shape == shape and t.ne == tuple(reversed(shape))
            assert t.offset == marks[f"tensor_data[{i}]"]
            assert t.nbytes == len(raw) and t.n_elements == int(np.prod(shape))
            assert t.data.tobytes() == raw
            assert not t.data.flags.writeable
        d = f.tensors
        assert d["a.f32"].data.dtype == np.float32 and d["a.f32"].data.shape == (3, 8)
        np.testing.assert_array_equal(d["a.f32"].data, np.arange(24, dtype=np.float32).reshape(3, 8))
        assert d["b.f16"].data.dtype == np.float16 and d["b.f16"].data.shape == (2, 5)
        assert d["c.q8_0"].data.dtype == np.uint8 and d["c.q8_0"].data.shape == (2, 68)
        assert d["d.q4_k"].data.shape == (1, 144)
        assert d["e.bf16"].data.dtype == np.uint16 and d["e.bf16"].data.shape == (7,)
        assert d["f.i32"].data.dtype == np.int32 and d["f.i32"].data.shape == (2, 2, 2)


def test_tensor_views_are_zero_copy_and_survive_close(tmp_path):
    data, _ = F.valid_file()
    path = _write(tmp_path, data)
    f = G.read(path)
    view = f.tensors["a.f32"].data
    # the view's buffer is the mmap itself
    base = view
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    assert isinstance(base, (memoryview, type(f._mmap))) or base is f._mmap
    assert np.shares_memory(view, np.frombuffer(f._mmap, np.uint8))
    f.close()
    assert f.closed
    # an earlier view stays valid (the mapping lives as long as it does)
    np.testing.assert_array_equal(view, np.arange(24, dtype=np.float32).reshape(3, 8))
    with pytest.raises(ValueError, match="closed"):
        f.tensors["b.f16"].data
    f.close()  # idempotent


def test_string_decoding_is_lossless(tmp_path):
    bad = b"\xff\xfeab"
    kvs = [F.kv("t.s", F.STRING, F.gstr(bad)), F.kv("t.a", F.ARRAY, F.u32(F.STRING) + F.u64(1) + F.gstr(bad))]
    path = _write(tmp_path, F.build(kvs)[0])
    with G.read(path) as f:
        assert f.metadata["t.s"].encode("utf-8", "surrogateescape") == bad
        assert f.metadata["t.a"][0].encode("utf-8", "surrogateescape") == bad
        out = str(tmp_path / "y.gguf")
        G.write(out, f.metadata, {})
    with G.read(out) as g:
        assert g.metadata["t.s"].encode("utf-8", "surrogateescape") == bad


def test_zero_tensor_file(tmp_path):
    data, marks = F.build([F.kv_str("general.architecture", "x")])
    with G.read(_write(tmp_path, data)) as f:
        assert f.tensors == {} and f.metadata == {"general.architecture": "x"}
    # without the trailing padding it is still valid (nothing lives in the data section)
    with G.read(_write(tmp_path, data[:marks["infos_end"]], "y.gguf")) as f:
        assert f.tensors == {}


# --------------------------------------------------------------------------------------------
# malformed files

CASES = F.malformed_cases()


@pytest.mark.parametrize("name,data,expect", CASES, ids=[c[0] for c in CASES])
def test_malformed_raises_quickly(tmp_path, name, data, expect):
    _expect_format_error(_write(tmp_path, data), len(data), expect)


def test_malformed_case_coverage():
    names = {c[0] for c in CASES}
    for required in ["bad_magic", "version_1", "version_4", "string_length_past_end", "nested_array",
                     "unknown_value_type", "n_dims_5", "alignment_0", "alignment_3",
                     "tensor_offset_past_eof", "unknown_tensor_type_99", "ne0_not_multiple_q8_0",
                     "kv_count_2**63", "array_count_2**62", "tensor_count_2**40",
                     "dim_product_overflow", "tensors_overlap", "duplicate_key",
                     "duplicate_tensor_name", "tensor_data_truncated"]:
        assert required in names


def test_error_message_names_field_and_offset(tmp_path):
    kvs = [F.kv_str("general.architecture", "x"), F.kv("general.name", F.STRING, F.gstr("abc", length=999999999))]
    data, marks = F.build(kvs)
    length_at = marks["kv[1]"] + len(F.gstr("general.name")) + 4
    msg = _expect_format_error(_write(tmp_path, data), len(data))
    assert msg == (f"gguf: metadata key #1 'general.name': string value length 999999999 at byte "
                   f"{length_at:#x} runs past end of file (size {len(data)})")


def test_truncated_everywhere(tmp_path):
    good, cuts = F.truncation_points(40)
    assert len(cuts) >= 40
    # every single cut position fails (cheap), ...
    path = str(tmp_path / "t.gguf")
    for n in range(len(good)):
        with open(path, "wb") as fh:
            fh.write(good[:n])
        with pytest.raises(FormatError):
            G.read(path)
    # ... and the spread sample also within time and memory bounds
    for n in cuts:
        p = _write(tmp_path, good[:n], f"cut{n}.gguf")
        _expect_format_error(p, n)
    with G.read(_write(tmp_path, good, "whole.gguf")) as f:  # the uncut file is fine
        assert len(f.tensors) == len(F.VALID_TENSORS)


def test_random_corruption_never_crashes(tmp_path):
    """Flip bytes of the header area at random: either a clean parse or a FormatError."""
    good, marks = F.valid_file()
    rng = np.random.default_rng(0)
    path = str(tmp_path / "r.gguf")
    n_errors = 0
    for _ in range(400):
        b = bytearray(good)
        for pos in rng.integers(0, marks["data"], rng.integers(1, 4)):
            b[pos] = rng.integers(0, 256)
        with open(path, "wb") as fh:
            fh.write(b)
        t0 = time.perf_counter()
        try:
            G.read(path).close()
        except FormatError:
            n_errors += 1
        assert time.perf_counter() - t0 < 1.0
    assert n_errors > 100


def test_empty_directory_missing(tmp_path):
    p = _write(tmp_path, b"", "empty.gguf")
    with pytest.raises(FormatError, match="empty"):
        G.read(p)
    with pytest.raises(FormatError, match="directory"):
        G.read(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        G.read(str(tmp_path / "nope.gguf"))
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    with pytest.raises(FormatError, match="regular file"):
        G.read(fifo)


# --------------------------------------------------------------------------------------------
# writer

def _sample_tensors():
    rng = np.random.default_rng(5)
    return {
        "tok.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "half": (qtypes.F16, (2, 3), rng.standard_normal(6).astype(np.float16)),
        "q8": ("Q8_0", (4, 64), rng.integers(0, 256, 4 * 2 * 34, dtype=np.uint8).reshape(4, 68)),
        "q4k": (qtypes.Q4_K, (2, 256), rng.integers(0, 256, 2 * 144, dtype=np.uint8).tobytes()),
        "q6k": (qtypes.Q6_K, (1, 512), bytearray(rng.integers(0, 256, 2 * 210, dtype=np.uint8).tobytes())),
        "bf": (qtypes.BF16, (5,), rng.integers(0, 2**16, 5, dtype=np.uint16)),
        "ints": np.array([[1, -2], [3, -4]], dtype=np.int32),
    }


def _sample_metadata():
    return {
        "general.architecture": "testarch",
        "general.name": "W ✓",
        "testarch.block_count": 2,
        "testarch.big": 2**40,
        "testarch.neg": -3,
        "testarch.eps": 1e-6,
        "testarch.flag": True,
        "testarch.i32": G.typed(-7, "int32"),
        "testarch.u8": (G.ValueType.UINT8, 9),
        "testarch.f64": np.float64(0.1),
        "testarch.sections": [1, 2, 3],
        "testarch.signed": [-1, 5],
        "testarch.floats": [0.5, 1],
        "testarch.tags": ["a", "b c"],
        "testarch.bools": [True, False],
        "testarch.i16arr": G.typed([1, -1], "int16"),
        "testarch.np": np.array([1.5, 2.5], dtype=np.float32),
        "testarch.empty": [],
    }


VT = G.ValueType
EXPECTED_TYPES = {
    "general.architecture": (VT.STRING, None), "general.name": (VT.STRING, None),
    "testarch.block_count": (VT.UINT32, None), "testarch.big": (VT.INT64, None),
    "testarch.neg": (VT.INT64, None), "testarch.eps": (VT.FLOAT32, None),
    "testarch.flag": (VT.BOOL, None), "testarch.i32": (VT.INT32, None),
    "testarch.u8": (VT.UINT8, None), "testarch.f64": (VT.FLOAT64, None),
    "testarch.sections": (VT.ARRAY, VT.UINT32), "testarch.signed": (VT.ARRAY, VT.INT64),
    "testarch.floats": (VT.ARRAY, VT.FLOAT32), "testarch.tags": (VT.ARRAY, VT.STRING),
    "testarch.bools": (VT.ARRAY, VT.BOOL), "testarch.i16arr": (VT.ARRAY, VT.INT16),
    "testarch.np": (VT.ARRAY, VT.FLOAT32), "testarch.empty": (VT.ARRAY, VT.INT32),
}


def _expected_bytes(spec):
    if isinstance(spec, np.ndarray):
        return spec.tobytes()
    data = spec[2]
    return data.tobytes() if isinstance(data, np.ndarray) else bytes(data)


@pytest.mark.parametrize("alignment,version", [(32, 3), (64, 3), (32, 2)])
def test_write_read_roundtrip(tmp_path, alignment, version):
    path = str(tmp_path / "w.gguf")
    tensors = _sample_tensors()
    size = G.write(path, _sample_metadata(), tensors, alignment=alignment, version=version)
    assert os.path.getsize(path) == size
    assert sorted(os.listdir(tmp_path)) == ["w.gguf"]  # no temp file left behind
    with G.read(path) as f:
        assert f.alignment == alignment and f.version == version
        types = dict(f.metadata_types)
        if alignment != 32:
            assert types.pop("general.alignment") == (VT.UINT32, None)
        assert types == EXPECTED_TYPES
        md = f.metadata
        assert md["testarch.block_count"] == 2 and md["testarch.neg"] == -3
        assert md["testarch.eps"] == pytest.approx(1e-6) and md["testarch.f64"] == 0.1
        assert md["testarch.tags"] == ["a", "b c"]
        np.testing.assert_array_equal(md["testarch.signed"], [-1, 5])
        assert list(f.tensors) == list(tensors)
        for name, spec in tensors.items():
            t = f.tensors[name]
            assert t.data.tobytes() == _expected_bytes(spec), name
            assert t.offset % alignment == 0 and (t.offset - f.data_offset) % alignment == 0
        assert f.tensors["tok.weight"].type == qtypes.F32 and f.tensors["tok.weight"].shape == (3, 4)
        assert f.tensors["ints"].type_name == "I32"
        assert f.tensors["q8"].shape == (4, 64) and f.tensors["q6k"].shape == (1, 512)


def test_our_file_read_by_gguf_py(tmp_path):
    path = str(tmp_path / "w.gguf")
    tensors = _sample_tensors()
    G.write(path, _sample_metadata(), tensors)
    r = gguf_py.GGUFReader(path)
    fields = {k: v for k, v in r.fields.items() if not k.startswith("GGUF.")}
    assert list(fields) == list(EXPECTED_TYPES)
    for k, (vt, et) in EXPECTED_TYPES.items():
        assert int(fields[k].types[0]) == vt, k
        if et is not None and fields[k].data:
            assert int(fields[k].types[1]) == et, k
    assert fields["testarch.tags"].contents() == ["a", "b c"]
    assert fields["testarch.big"].contents() == 2**40
    assert fields["testarch.sections"].contents() == [1, 2, 3]
    assert fields["general.name"].contents() == "W ✓"
    assert [t.name for t in r.tensors] == list(tensors)
    with G.read(path) as f:
        for t in r.tensors:
            ours = f.tensors[t.name]
            assert int(t.tensor_type) == ours.type
            assert tuple(int(d) for d in t.shape) == ours.ne
            assert t.data_offset == ours.offset
            assert np.asarray(t.data).tobytes() == _expected_bytes(tensors[t.name])


def test_gguf_py_file_read_by_us(tmp_path):
    path = str(tmp_path / "g.gguf")
    rng = np.random.default_rng(9)
    w = gguf_py.GGUFWriter(path, "llama")
    w.add_block_count(3)
    w.add_uint64("llama.u64", 2**50)
    w.add_int8("llama.i8", -5)
    w.add_float32("llama.f", 0.25)
    w.add_float64("llama.d", 0.1)
    w.add_bool("llama.b", True)
    w.add_string("llama.s", "héllo")
    w.add_array("llama.arr_i", [1, 2, 3])
    w.add_array("llama.arr_s", ["x", "yy"])
    w.add_token_scores([0.0, -1.5, 2.0])
    a = rng.standard_normal((4, 32)).astype(np.float32)
    h = rng.standard_normal(8).astype(np.float16)
    q = rng.integers(0, 256, (3, 2 * 34), dtype=np.uint8)
    k = rng.integers(0, 256, (2, 144), dtype=np.uint8)
    w.add_tensor("a", a)
    w.add_tensor("h", h)
    w.add_tensor("q", q, raw_dtype=gguf_py.GGMLQuantizationType.Q8_0)
    w.add_tensor("k", k, raw_dtype=gguf_py.GGMLQuantizationType.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with G.read(path) as f:
        md = f.metadata
        assert md["general.architecture"] == "llama"
        assert md["llama.block_count"] == 3 and f.metadata_types["llama.block_count"] == (VT.UINT32, None)
        assert md["llama.u64"] == 2**50 and md["llama.i8"] == -5
        assert md["llama.f"] == 0.25 and md["llama.d"] == 0.1 and md["llama.b"] is True
        assert md["llama.s"] == "héllo" and md["llama.arr_s"] == ["x", "yy"]
        np.testing.assert_array_equal(md["llama.arr_i"], [1, 2, 3])
        np.testing.assert_array_equal(md["tokenizer.ggml.scores"], np.float32([0.0, -1.5, 2.0]))
        assert md["tokenizer.ggml.scores"].dtype == np.float32
        assert list(f.tensors) == ["a", "h", "q", "k"]
        np.testing.assert_array_equal(f.tensors["a"].data, a)
        np.testing.assert_array_equal(f.tensors["h"].data, h)
        assert f.tensors["q"].shape == (3, 64) and f.tensors["q"].type == qtypes.Q8_0
        np.testing.assert_array_equal(f.tensors["q"].data, q)
        assert f.tensors["k"].shape == (2, 256) and f.tensors["k"].type == qtypes.Q4_K
        np.testing.assert_array_equal(f.tensors["k"].data, k)
        # and our writer reproduces gguf-py's file byte for byte from what we read
        out = str(tmp_path / "again.gguf")
        G.write(out, f.typed_metadata(), f.tensors)
    assert open(out, "rb").read() == open(path, "rb").read()


def test_write_is_atomic_and_validates_first(tmp_path, monkeypatch):
    path = str(tmp_path / "m.gguf")
    G.write(path, {"general.architecture": "a"}, {"x": np.zeros(4, np.float32)})
    before = open(path, "rb").read()
    bad_inputs = [
        ({"k": object()}, {}),
        ({"k": [[1], [2]]}, {}),
        ({"k": ["a", 1]}, {}),
        ({"k": G.typed(300, "uint8")}, {}),
        ({"k": 2**64}, {}),
        ({}, {"x": (qtypes.Q8_0, (2, 33), bytes(2 * 34))}),          # not a block multiple
        ({}, {"x": (qtypes.Q8_0, (2, 32), bytes(10))}),              # wrong byte count
        ({}, {"x": (qtypes.F32, (2, 2), np.zeros(4, np.float64))}),  # wrong dtype
        ({}, {"x": (99, (2,), bytes(8))}),                           # unknown type
        ({}, {"x" * 64: np.zeros(1, np.float32)}),                   # name too long for llama.cpp
        ({}, {"x": (qtypes.F32, (1, 1, 1, 1, 1), bytes(4))}),        # > 4 dims
    ]
    for md, tensors in bad_inputs:
        with pytest.raises(ValueError):
            G.write(path, md, tensors)
    with pytest.raises(ValueError):
        G.write(path, {}, {}, alignment=48)
    with pytest.raises(ValueError):
        G.write(path, {}, {}, version=1)

    # a failure mid-write leaves the old file untouched and no temp file behind
    def failing_fsync(fd):
        raise OSError("disk on fire")
    monkeypatch.setattr(G.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk on fire"):
        G.write(path, {}, {"x": np.ones(4, np.float32)})
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["m.gguf"]


def test_typed_and_defaults():
    assert G.typed(3, "uint16") == G.Typed(3, VT.UINT16, None)
    assert G.typed([1, 2], "int32") == G.Typed([1, 2], VT.ARRAY, VT.INT32)
    assert G.typed([1, 2], "array", "float64").element_type == VT.FLOAT64
    with pytest.raises(ValueError):
        G.typed(1, "uint128")
    with pytest.raises(ValueError):
        G.typed([1], "array", "array")
    assert G._infer(2**32 - 1, "k").type == VT.UINT32
    assert G._infer(2**32, "k").type == VT.INT64
    assert G._infer(2**63, "k").type == VT.UINT64
    assert G._infer(-1, "k").type == VT.INT64
    assert G._infer(True, "k").type == VT.BOOL
    assert G._infer(np.int16(3), "k").type == VT.INT16


# --------------------------------------------------------------------------------------------
# the real model, against gguf-py

@pytest.fixture(scope="module")
def real(gemma3_path):
    f = G.read(gemma3_path)
    yield f
    f.close()


@pytest.fixture(scope="module")
def gguf_py_real(gemma3_path):
    return gguf_py.GGUFReader(gemma3_path)


def _rss_bytes():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_real_model_header(real):
    assert len(real.tensors) == 236
    assert real.version == 3 and real.alignment == 32
    assert real.metadata["general.architecture"] == "gemma3"
    assert real.metadata["gemma3.block_count"] == 18
    t = real.tensors["token_embd.weight"]
    assert t.shape == (262144, 640) and t.ne == (640, 262144)
    assert t.type == qtypes.Q8_0 and t.type_name == "Q8_0"
    assert t.data.shape == (262144, 680) and t.data.dtype == np.uint8
    assert len(real.metadata["tokenizer.ggml.tokens"]) == 262144
    assert real.metadata["tokenizer.ggml.scores"].dtype == np.float32
    assert real.metadata["tokenizer.ggml.token_type"].dtype == np.int32
    assert real.metadata_types["tokenizer.ggml.tokens"] == (VT.ARRAY, VT.STRING)


def test_real_model_read_is_fast_and_zero_copy(gemma3_path):
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        f = G.read(gemma3_path)
        times.append(time.perf_counter() - t0)
        f.close()
    assert min(times) < 0.5, times
    gc.collect()
    rss0 = _rss_bytes()
    f = G.read(gemma3_path)
    views = [t.data for t in f.tensors.values()]
    grown = _rss_bytes() - rss0
    total = sum(v.nbytes for v in views)
    assert total > 240e6
    assert grown < 0.25 * total, f"RSS grew by {grown} bytes for {total} tensor bytes"
    mm_bytes = np.frombuffer(f._mmap, np.uint8)
    for v in views[:20]:
        assert np.shares_memory(v, mm_bytes)
    del views, mm_bytes
    f.close()


def test_real_model_matches_gguf_py(real, gguf_py_real):
    r = gguf_py_real
    theirs = {t.name: t for t in r.tensors}
    assert list(theirs) == list(real.tensors)
    for name, t in theirs.items():
        ours = real.tensors[name]
        assert int(t.tensor_type) == ours.type, name
        assert tuple(int(d) for d in t.shape) == ours.ne, name
        assert t.data_offset == ours.offset, name
        assert t.n_bytes == ours.nbytes, name
    # full byte comparison of a few tensors of every type present
    picked = {}
    for name, ours in real.tensors.items():
        picked.setdefault(ours.type_name, []).append(name)
    names = [n for names in picked.values() for n in names[:2]]
    assert {"Q4_K", "Q6_K", "Q8_0", "Q5_0", "F32"} <= set(picked)
    for name in names + ["token_embd.weight"]:
        a, b = real.tensors[name].data, np.asarray(theirs[name].data)
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert a.tobytes() == b.tobytes(), name
    # metadata
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        vt, et = real.metadata_types[key]
        assert int(field.types[0]) == vt, key
        got, want = real.metadata[key], field.contents()
        if isinstance(got, np.ndarray):
            np.testing.assert_array_equal(got, np.asarray(want, dtype=got.dtype), err_msg=key)
        elif isinstance(got, float):
            assert got == pytest.approx(want), key
        else:
            assert got == want, key


def test_real_model_rewrite_is_byte_identical(real, tmp_path):
    """Our writer lays the file out exactly like llama.cpp did: same bytes."""
    out = tmp_path / "rewrite.gguf"
    try:
        size = G.write(out, real.typed_metadata(), real.tensors)
        assert size == real.file_size == os.path.getsize(out)
        with open(real.path, "rb") as a, open(out, "rb") as b:
            while True:
                x, y = a.read(1 << 24), b.read(1 << 24)
                assert x == y
                if not x:
                    break
    finally:
        out.unlink(missing_ok=True)


def test_describe(real, tmp_path):
    d = G.describe(real)
    json.dumps(d)  # plain Python values only
    assert d["architecture"] == "gemma3"
    assert d["hyperparameters"]["block_count"] == 18
    assert d["hyperparameters"]["embedding_length"] == 640
    assert d["hyperparameters"]["attention.head_count_kv"] == 1
    assert d["tensor_count"] == 236
    assert d["tokenizer"]["model"] == "llama" and d["tokenizer"]["vocab_size"] == 262144
    assert d["tokenizer"]["bos_token_id"] == 2
    assert d["file_type_name"] == "MOSTLY_Q4_K_M"
    by = d["tensors_by_type"]
    assert sum(e["count"] for e in by.values()) == 236
    assert d["tensor_bytes"] == sum(t.nbytes for t in real.tensors.values()) == sum(e["bytes"] for e in by.values())
    assert by["Q8_0"]["bytes"] >= 262144 * 680
    # from a path, on a small file
    data, _ = F.valid_file()
    d2 = G.describe(_write(tmp_path, data))
    assert d2["architecture"] == "testarch" and d2["tensor_count"] == 6
    assert d2["hyperparameters"] == {} and d2["tokenizer"] == {}
    assert d2["tensors_by_type"]["Q8_0"] == {"count": 1, "bytes": 136, "elements": 128}
