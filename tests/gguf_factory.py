"""Hand-built GGUF bytes, valid and malformed, for the reader's tests.

Written with ``struct`` straight from the format description, independent of
``slmx.formats.gguf``'s writer, so a bug shared by writer and reader cannot hide.

- ``build(...)`` lays out a file from pieces and returns ``(bytes, marks)``; marks are byte
  offsets of the sections (``kv[i]``, ``tensor_info[i]``, ``data``, ``tensor_data[i]``, ...)
  so tests can truncate or patch at known places.
- ``valid_file()`` is a small file using every metadata value type and several tensor types,
  with the values it holds (``VALID_METADATA``, ``VALID_TENSORS``).
- ``malformed_cases()`` -> list of ``(case name, bytes, substring the error must contain)``.
"""
import struct

import numpy as np

# value types
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
SCALAR_FMT = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
              FLOAT32: "<f", BOOL: "<B", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}
# ggml tensor types used here: (id, block size, bytes per block)
F32, F16, Q8_0, Q4_K, Q6_K, BF16, I32 = (0, 1, 4), (1, 1, 2), (8, 32, 34), (12, 256, 144), \
    (14, 256, 210), (30, 1, 2), (26, 1, 4)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def gstr(s, length=None):
    """GGUF string: u64 length (or a forged one) + bytes."""
    b = s.encode() if isinstance(s, str) else s
    return u64(len(b) if length is None else length) + b


def scalar(vtype, v):
    return struct.pack(SCALAR_FMT[vtype], v)


def kv(key, vtype, payload):
    """One metadata entry from its raw value bytes."""
    return gstr(key) + u32(vtype) + payload


def kv_scalar(key, vtype, v):
    return kv(key, vtype, scalar(vtype, v))


def kv_str(key, s):
    return kv(key, STRING, gstr(s))


def array_payload(etype, values, count=None):
    n = len(values) if count is None else count
    if etype == STRING:
        body = b"".join(gstr(v) for v in values)
    else:
        body = b"".join(scalar(etype, v) for v in values)
    return u32(etype) + u64(n) + body


def kv_array(key, etype, values, count=None):
    return kv(key, ARRAY, array_payload(etype, values, count))


def tensor_info(name, ne, type_id, offset, n_dims=None):
    return (gstr(name) + u32(len(ne) if n_dims is None else n_dims)
            + b"".join(u64(d) for d in ne) + u32(type_id) + u64(offset))


def tensor_nbytes(ttype, ne):
    tid, bs, ts = ttype
    n = 1
    for d in ne:
        n *= d
    return n // bs * ts


def build(kvs=(), tensors=(), version=3, alignment=32, magic=b"GGUF", n_tensors=None, n_kv=None,
          raw_infos=None, pad_last=True):
    """Lay out a GGUF file.

    kvs: list of encoded kv entries (``kv_*`` above). tensors: list of
    ``(name, ne, ttype, data bytes)`` with ttype one of the ``(id, block, size)`` tuples or a
    raw type id (then data length is taken as given). Offsets follow llama.cpp: relative to the
    data start, each tensor padded to `alignment`. raw_infos replaces the encoded tensor
    infos (offsets still computed for the data). Returns (bytes, marks).
    """
    marks = {}
    out = bytearray()
    out += magic
    marks["version"] = len(out)
    out += u32(version)
    marks["tensor_count"] = len(out)
    out += u64(len(tensors) if n_tensors is None else n_tensors)
    marks["kv_count"] = len(out)
    out += u64(len(kvs) if n_kv is None else n_kv)
    for i, e in enumerate(kvs):
        marks[f"kv[{i}]"] = len(out)
        out += e
    offsets = []
    off = 0
    for name, ne, ttype, data in tensors:
        offsets.append(off)
        off += -(-len(data) // alignment) * alignment
    if raw_infos is None:
        infos = [tensor_info(name, ne, ttype[0] if isinstance(ttype, tuple) else ttype, o)
                 for (name, ne, ttype, data), o in zip(tensors, offsets)]
    else:
        infos = raw_infos
    for i, info in enumerate(infos):
        marks[f"tensor_info[{i}]"] = len(out)
        out += info
    marks["infos_end"] = len(out)
    out += bytes(-len(out) % alignment)
    marks["data"] = len(out)
    for i, ((name, ne, ttype, data), o) in enumerate(zip(tensors, offsets)):
        assert len(out) == marks["data"] + o
        marks[f"tensor_data[{i}]"] = len(out)
        out += data
        if pad_last or i + 1 < len(tensors):
            out += bytes(-len(data) % alignment)
    marks["end"] = len(out)
    return bytes(out), marks


# --------------------------------------------------------------------------------------------
# A valid file using every value type

def _rng_bytes(n, seed):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


VALID_METADATA = {
    "general.architecture": (STRING, None, "testarch"),
    "general.name": (STRING, None, "tiny ✓ model"),
    "general.alignment": (UINT32, None, 32),
    "t.u8": (UINT8, None, 200), "t.i8": (INT8, None, -100),
    "t.u16": (UINT16, None, 60000), "t.i16": (INT16, None, -30000),
    "t.u32": (UINT32, None, 4000000000), "t.i32": (INT32, None, -2000000000),
    "t.u64": (UINT64, None, 2**63 + 5), "t.i64": (INT64, None, -2**62),
    "t.f32": (FLOAT32, None, 0.5), "t.f64": (FLOAT64, None, 3.141592653589793),
    "t.bool_true": (BOOL, None, True), "t.bool_false": (BOOL, None, False),
    "t.empty_string": (STRING, None, ""),
    "t.arr_u8": (ARRAY, UINT8, [1, 2, 255]),
    "t.arr_i32": (ARRAY, INT32, [-1, 0, 7]),
    "t.arr_f32": (ARRAY, FLOAT32, [0.25, -1.5]),
    "t.arr_f64": (ARRAY, FLOAT64, [1e300]),
    "t.arr_bool": (ARRAY, BOOL, [True, False, True]),
    "t.arr_u64": (ARRAY, UINT64, [2**64 - 1]),
    "t.arr_str": (ARRAY, STRING, ["a", "", "<0x0A>", "▁hello"]),
    "t.arr_empty": (ARRAY, INT32, []),
}


def encode_metadata(md):
    out = []
    for key, (vt, et, v) in md.items():
        if vt == ARRAY:
            out.append(kv_array(key, et, v))
        elif vt == STRING:
            out.append(kv_str(key, v))
        else:
            out.append(kv_scalar(key, vt, v))
    return out


# name -> (ttype, numpy shape, data bytes). Last tensor's size is a multiple of 32 so that a cut
# anywhere in the file truncates something.
VALID_TENSORS = {
    "a.f32": (F32, (3, 8), np.arange(24, dtype="<f4").tobytes()),
    "b.f16": (F16, (2, 5), np.linspace(-1, 1, 10).astype("<f2").tobytes()),
    "c.q8_0": (Q8_0, (2, 64), _rng_bytes(2 * 2 * 34, 1)),
    "d.q4_k": (Q4_K, (1, 256), _rng_bytes(144, 2)),
    "e.bf16": (BF16, (7,), _rng_bytes(14, 3)),
    "f.i32": (I32, (2, 2, 2), np.arange(8, dtype="<i4").tobytes()),
}


def valid_tensor_list(tensors=None):
    tensors = VALID_TENSORS if tensors is None else tensors
    return [(name, tuple(reversed(shape)), ttype, data) for name, (ttype, shape, data) in tensors.items()]


def valid_file(version=3, alignment=32):
    md = dict(VALID_METADATA)
    if alignment != 32:
        md["general.alignment"] = (UINT32, None, alignment)
    return build(encode_metadata(md), valid_tensor_list(), version=version, alignment=alignment,
                 pad_last=False)


# --------------------------------------------------------------------------------------------
# Malformed files

def _small_kvs():
    return [kv_str("general.architecture", "x"), kv_str("general.name", "n"),
            kv_scalar("x.block_count", UINT32, 2)]


def _one_tensor(ne=(32, 2), ttype=F32, offset=0, n_dims=None, data=None):
    tid = ttype[0] if isinstance(ttype, tuple) else ttype
    info = tensor_info("w", ne, tid, offset, n_dims)
    if data is None:
        data = bytes(256)
    return info, data


def _with_info(info, data=bytes(256), kvs=None, alignment=32, n_tensors=1):
    kvs = _small_kvs() if kvs is None else kvs
    b, _ = build(kvs, [("w", (1,), 0, data)], raw_infos=[info], alignment=alignment,
                 n_tensors=n_tensors)
    return b


def _unpadded(kvs):
    """A file of just header + kvs, no padding after them (so a value cannot read padding)."""
    b, marks = build(kvs)
    return b[:marks["infos_end"]]


def malformed_cases():
    """-> list of (name, file bytes, substring expected in the FormatError message)."""
    cases = []
    add = lambda name, data, expect: cases.append((name, data, expect))
    good, marks = valid_file()

    add("bad_magic", b"GGML" + good[4:], "bad magic")
    add("bad_magic_zeros", bytes(64), "bad magic")
    add("short_magic", b"GG", "magic")
    for v in (0, 1, 4, 2**31):
        add(f"version_{v}", good[:4] + u32(v) + good[8:], "version")
    add("big_endian", good[:4] + struct.pack(">I", 3) + good[8:], "big-endian")
    add("header_truncated_in_version", good[:6], "version")
    add("header_truncated_in_counts", good[:20], "kv count")

    # counts far beyond the file
    add("kv_count_2**63", build(_small_kvs(), n_kv=2**63)[0], "kv count")
    add("kv_count_2**64-1", build(_small_kvs(), n_kv=2**64 - 1)[0], "kv count")
    add("kv_count_plus_one", build(_small_kvs(), n_kv=4)[0], "metadata key #3")
    add("tensor_count_2**40", build(_small_kvs(), n_tensors=2**40)[0], "tensor count")
    add("tensor_count_2**64-1", build(_small_kvs(), n_tensors=2**64 - 1)[0], "tensor count")
    add("array_count_2**62", build(_small_kvs() + [kv("t.arr", ARRAY, u32(INT32) + u64(2**62) + bytes(16))])[0],
        "array count")
    add("string_array_count_2**62",
        build(_small_kvs() + [kv("t.arr", ARRAY, u32(STRING) + u64(2**62) + gstr("ab"))])[0],
        "array count")
    add("array_count_slightly_big",
        _unpadded(_small_kvs() + [kv("t.arr", ARRAY, u32(FLOAT32) + u64(5) + bytes(16))]), "array count")

    # strings
    add("string_length_past_end",
        build([kv_str("general.architecture", "x"), kv("general.name", STRING, gstr("abc", length=999999999))])[0],
        "string value length 999999999")
    add("string_length_2**64-1",
        build([kv("general.name", STRING, gstr("abc", length=2**64 - 1))])[0], "string value length")
    add("key_length_past_end", build([gstr("general.name", length=10**12) + u32(STRING) + gstr("x")])[0],
        "key length")
    add("string_in_array_past_end",
        build(_small_kvs() + [kv("t.arr", ARRAY, u32(STRING) + u64(3) + gstr("a") + gstr("b") + gstr("c", 10**9))])[0],
        "string #2 length")
    add("string_array_truncated_in_length",
        _unpadded(_small_kvs() + [kv("t.arr", ARRAY, u32(STRING) + u64(3) + gstr("a" * 10) + gstr("b") + b"\x01\x00")]),
        "string #2 length (uint64)")

    # value types
    add("nested_array",
        build(_small_kvs() + [kv("t.nested", ARRAY, u32(ARRAY) + u64(1) + array_payload(INT32, [1]))])[0],
        "nested")
    add("unknown_value_type", build(_small_kvs() + [kv("t.x", 13, u32(0))])[0], "unknown value type 13")
    add("unknown_value_type_huge", build(_small_kvs() + [kv("t.x", 0xFFFFFFFF, u32(0))])[0], "unknown value type")
    add("unknown_array_element_type",
        build(_small_kvs() + [kv("t.x", ARRAY, u32(77) + u64(1) + u32(0))])[0], "unknown array element type 77")
    add("duplicate_key", build(_small_kvs() + [kv_str("general.name", "again")])[0], "duplicate key")

    # alignment
    def with_alignment(payload, vtype=UINT32):
        return build(_small_kvs() + [kv("general.alignment", vtype, payload)],
                     [("w", (32,), F32, bytes(128))])[0]
    add("alignment_0", with_alignment(u32(0)), "alignment 0")
    add("alignment_3", with_alignment(u32(3)), "alignment 3")
    add("alignment_48", with_alignment(u32(48)), "power of two")
    add("alignment_uint64", with_alignment(u64(32), UINT64), "UINT32")
    add("alignment_string", with_alignment(gstr("32"), STRING), "UINT32")

    # tensor infos
    add("n_dims_5", _with_info(tensor_info("w", (32, 1, 1, 1, 1), 0, 0)), "n_dims 5")
    add("n_dims_2**32-1", _with_info(tensor_info("w", (), 0, 0, n_dims=2**32 - 1) + bytes(64)), "n_dims")
    add("unknown_tensor_type_4", _with_info(tensor_info("w", (32,), 4, 0)), "unknown tensor type id 4")
    add("unknown_tensor_type_99", _with_info(tensor_info("w", (32,), 99, 0)), "unknown tensor type id 99")
    add("ne0_not_multiple_q8_0", _with_info(tensor_info("w", (33, 1), Q8_0[0], 0)), "block size")
    add("ne0_not_multiple_q4_k", _with_info(tensor_info("w", (128, 1), Q4_K[0], 0)), "block size")
    add("dim_negative", _with_info(tensor_info("w", (32, 2**64 - 1), 0, 0)), "negative")
    add("dim_product_overflow", _with_info(tensor_info("w", (2**32, 2**32), 0, 0)), "overflow")
    add("dim_product_overflow_4d", _with_info(tensor_info("w", (2**16, 2**16, 2**16, 2**16), 0, 0)), "overflow")
    add("dim_product_overflow_int64_max", _with_info(tensor_info("w", (2**62, 2), 0, 0)), "overflow")
    # Q4_0 packs 32 elements in 18 bytes: the byte size fits int64 even though the count does not
    add("dim_product_overflow_q4_0", _with_info(tensor_info("w", (2**62, 2), 2, 0)), "element count overflows")
    add("tensor_bytes_past_eof", _with_info(tensor_info("w", (2**20, 2**20), 0, 0)), "runs past end of file")
    add("tensor_offset_past_eof", _with_info(tensor_info("w", (32,), 0, 2**40)), "runs past end of file")
    add("tensor_offset_2**64-32", _with_info(tensor_info("w", (32,), 0, 2**64 - 32)), "runs past end of file")
    add("tensor_offset_misaligned", _with_info(tensor_info("w", (32,), 0, 4)), "not a multiple of the alignment")
    add("tensor_name_past_end", _with_info(gstr("w", length=2**40) + bytes(40)), "name length")
    add("tensor_count_plus_one", _with_info(tensor_info("w", (32,), 0, 0), n_tensors=2), "tensor")
    two = tensor_info("w", (64,), 0, 0) + tensor_info("v", (32,), 0, 128)
    add("tensors_overlap", _with_info(two, n_tensors=2, data=bytes(512)), "overlaps")
    dup = tensor_info("w", (32,), 0, 0) + tensor_info("w", (32,), 0, 128)
    add("duplicate_tensor_name", _with_info(dup, n_tensors=2, data=bytes(512)), "duplicate tensor name")
    add("tensor_data_truncated", good[:marks["tensor_data[5]"] + 5], "runs past end of file")
    add("tensor_data_missing", good[:marks["data"]], "runs past end of file")
    return cases


def truncation_points(n_points=40):
    """-> (valid file bytes, sorted cut positions: section boundaries +-1 and ~n_points spread)."""
    good, marks = valid_file()
    cuts = set()
    for m in marks.values():
        for d in (-1, 0, 1, 5):
            if 0 <= m + d < len(good):
                cuts.add(m + d)
    step = max(1, len(good) // n_points)
    cuts.update(range(0, len(good), step))
    return good, sorted(cuts)
