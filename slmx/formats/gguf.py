"""GGUF v2/v3 (little-endian): a hardened zero-copy reader, an atomic writer, a summary.

File layout (every integer little-endian)::

    header        magic b"GGUF" | version u32 | tensor_count u64 | kv_count u64
    metadata      kv_count x  key: string | value_type u32 | value
    tensor infos  tensor_count x  name: string | n_dims u32 | ne u64[n_dims] | type u32 | offset u64
    padding       zeros up to a multiple of `alignment` (metadata ``general.alignment``, default 32)
    data          tensor bytes; each offset is relative to the data start, a multiple of `alignment`

    string = length u64 | UTF-8 bytes        array = element_type u32 | count u64 | elements

``ne`` is GGUF's dimension order (``ne[0]`` is the contiguous, fastest-varying one); numpy
order is ``shape = ne[::-1]``, so ``token_embd.weight`` with ``ne = (640, 262144)`` has
``shape = (262144, 640)``: rows are output features.

The reader treats the file as untrusted: every length, count, dimension, offset and the
alignment is checked against the file before it is used, so a malformed file raises
:class:`slmx.errors.FormatError` (naming the field and its byte offset) quickly and without
allocating more than about the file's size. Tensors are read-only numpy views into a
read-only mmap; no tensor byte is copied.

Metadata values come back as Python ``int``/``float``/``bool``/``str``; arrays of strings as a
``list`` of ``str``; arrays of numbers or bools as a 1-D numpy array (an owned copy in native
little-endian byte order, e.g. ``tokenizer.ggml.scores`` is ``float32``, ``token_type``
``int32``). Strings are decoded as UTF-8 with ``errors="surrogateescape"``, so invalid UTF-8
(some vocabularies have it) reads without error and :func:`write` re-encodes it to the same
bytes.
"""
import enum
import math
import mmap
import os
import stat
import struct
import tempfile
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from .. import qtypes
from ..errors import FormatError

__all__ = ["ValueType", "GGUFFile", "Tensor", "Typed", "read", "write", "typed", "describe",
           "MAGIC", "SUPPORTED_VERSIONS", "DEFAULT_ALIGNMENT", "MAX_DIMS"]

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4          # GGML_MAX_DIMS
MAX_NAME = 64         # GGML_MAX_NAME: llama.cpp rejects tensor names of 64 bytes or more
_INT64_MAX = 2**63 - 1
_MIN_KV_BYTES = 8 + 4 + 1            # empty key, value type, smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims = 0, type, offset


class ValueType(enum.IntEnum):
    """GGUF metadata value types (the u32 stored before every value)."""
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_VT = ValueType
# Fixed-size value types: struct format and numpy dtype (both little-endian).
_SCALAR_FORMATS = {
    _VT.UINT8: ("<B", "<u1"), _VT.INT8: ("<b", "<i1"),
    _VT.UINT16: ("<H", "<u2"), _VT.INT16: ("<h", "<i2"),
    _VT.UINT32: ("<I", "<u4"), _VT.INT32: ("<i", "<i4"),
    _VT.UINT64: ("<Q", "<u8"), _VT.INT64: ("<q", "<i8"),
    _VT.FLOAT32: ("<f", "<f4"), _VT.FLOAT64: ("<d", "<f8"),
    _VT.BOOL: ("<?", "<u1"),
}
_STRUCT = {vt: struct.Struct(f) for vt, (f, _) in _SCALAR_FORMATS.items()}
_DTYPE = {vt: np.dtype(d) for vt, (_, d) in _SCALAR_FORMATS.items()}
_INT_RANGE = {vt: (int(np.iinfo(_DTYPE[vt]).min), int(np.iinfo(_DTYPE[vt]).max))
              for vt in _SCALAR_FORMATS if _DTYPE[vt].kind in "iu" and vt != _VT.BOOL}
_U32 = _STRUCT[_VT.UINT32]
_U64 = _STRUCT[_VT.UINT64]
_KNOWN_VALUE_TYPES = frozenset(int(v) for v in ValueType)

# numpy dtype of a tensor's elements for the types that have one; block-quantized types are
# exposed as uint8 rows of packed blocks.
_TENSOR_DTYPE = {
    qtypes.BY_NAME["F32"].id: np.dtype("<f4"), qtypes.BY_NAME["F16"].id: np.dtype("<f2"),
    qtypes.BY_NAME["BF16"].id: np.dtype("<u2"), qtypes.BY_NAME["F64"].id: np.dtype("<f8"),
    qtypes.BY_NAME["I8"].id: np.dtype("i1"), qtypes.BY_NAME["I16"].id: np.dtype("<i2"),
    qtypes.BY_NAME["I32"].id: np.dtype("<i4"), qtypes.BY_NAME["I64"].id: np.dtype("<i8"),
}

# llama.cpp's llama_ftype (general.file_type) names.
FILE_TYPE_NAMES = {
    0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 7: "MOSTLY_Q8_0",
    8: "MOSTLY_Q5_0", 9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S",
    12: "MOSTLY_Q3_K_M", 13: "MOSTLY_Q3_K_L", 14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M",
    16: "MOSTLY_Q5_K_S", 17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K", 19: "MOSTLY_IQ2_XXS",
    20: "MOSTLY_IQ2_XS", 21: "MOSTLY_Q2_K_S", 22: "MOSTLY_IQ3_XS", 23: "MOSTLY_IQ3_XXS",
    24: "MOSTLY_IQ1_S", 25: "MOSTLY_IQ4_NL", 26: "MOSTLY_IQ3_S", 27: "MOSTLY_IQ3_M",
    28: "MOSTLY_IQ2_S", 29: "MOSTLY_IQ2_M", 30: "MOSTLY_IQ4_XS", 31: "MOSTLY_IQ1_M",
    32: "MOSTLY_BF16", 36: "MOSTLY_TQ1_0", 37: "MOSTLY_TQ2_0", 1024: "GUESSED",
}


def _align(n, alignment):
    return (n + alignment - 1) // alignment * alignment


def _vt_name(v):
    return ValueType(v).name if v in _KNOWN_VALUE_TYPES else str(v)


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------

class Tensor:
    """One tensor of a :class:`GGUFFile`: its info and a zero-copy view of its bytes.

    ``shape`` is numpy order (``ne`` reversed); ``offset`` is the absolute file offset.
    ``data`` is a read-only numpy view into the file's mmap: ``float32``/``float16``/
    ``float64``/``int8..int64`` of ``shape`` for those types, ``uint16`` of ``shape`` for BF16,
    and for block-quantized types ``uint8`` of ``shape[:-1] + (row_bytes,)``.
    """
    __slots__ = ("name", "type", "ne", "shape", "offset", "nbytes", "n_elements", "_file", "_data")

    def __init__(self, gguf_file, name, type_id, ne, offset, nbytes, n_elements):
        self._file = gguf_file
        self.name = name
        self.type = type_id
        self.ne = ne
        self.shape = tuple(reversed(ne))
        self.offset = offset
        self.nbytes = nbytes
        self.n_elements = n_elements
        self._data = None

    @property
    def qtype(self):
        """The :class:`slmx.qtypes.QType` of this tensor."""
        return qtypes.BY_ID[self.type]

    @property
    def type_name(self):
        return qtypes.BY_ID[self.type].name

    @property
    def row_bytes(self):
        """Bytes of one row (``ne[0]`` elements)."""
        q = qtypes.BY_ID[self.type]
        ne0 = self.ne[0] if self.ne else 1
        return ne0 // q.block_size * q.type_size

    @property
    def data(self):
        if self._data is None:
            self._data = self._view()
        return self._data

    def _view(self):
        mm = self._file._mmap
        if mm is None:
            raise ValueError(f"GGUF file {self._file.path!r} is closed")
        dt = _TENSOR_DTYPE.get(self.type)
        if dt is not None:
            shape, count = self.shape, self.n_elements
        else:
            dt, shape, count = np.dtype(np.uint8), self.shape[:-1] + (self.row_bytes,), self.nbytes
        if count == 0:
            arr = np.zeros(shape, dt)
            arr.flags.writeable = False
            return arr
        return np.frombuffer(mm, dtype=dt, count=count, offset=self.offset).reshape(shape)

    def __repr__(self):
        return (f"Tensor({self.name!r}, {self.type_name}, shape={self.shape}, "
                f"offset={self.offset:#x}, nbytes={self.nbytes})")


class GGUFFile:
    """A parsed GGUF file backed by a read-only mmap. Use as a context manager or ``close()``.

    Attributes: ``path``, ``file_size``, ``version``, ``alignment``, ``metadata`` (key ->
    value, file order), ``metadata_types`` (key -> ``(ValueType, element ValueType or None)``),
    ``tensors`` (name -> :class:`Tensor`, file order), ``data_offset`` (absolute start of
    the data section).
    """

    def __init__(self, path, mm, file_size):
        self.path = path
        self.file_size = file_size
        self._mmap = mm
        self.version = None
        self.alignment = DEFAULT_ALIGNMENT
        self.metadata = {}
        self.metadata_types = {}
        self.tensors = {}
        self.data_offset = None

    @property
    def closed(self):
        return self._mmap is None

    @property
    def tensor_bytes(self):
        """Sum of all tensors' byte sizes."""
        return sum(t.nbytes for t in self.tensors.values())

    def typed_metadata(self):
        """metadata with every value wrapped in :class:`Typed` with its file type, so that
        ``write(path, f.typed_metadata(), f.tensors)`` keeps every key's GGUF type."""
        return {k: Typed(v, *self.metadata_types[k]) for k, v in self.metadata.items()}

    def close(self):
        """Release the mapping. Tensor views still held elsewhere keep it alive until freed."""
        for t in self.tensors.values():
            t._data = None
        mm, self._mmap = self._mmap, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # numpy views still export the buffer; the map goes when they do

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        arch = self.metadata.get("general.architecture")
        return (f"GGUFFile({self.path!r}, version={self.version}, architecture={arch!r}, "
                f"{len(self.metadata)} keys, {len(self.tensors)} tensors"
                f"{', closed' if self.closed else ''})")


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; errors name field and byte offset."""
    __slots__ = ("buf", "size", "pos")

    def __init__(self, buf, size):
        self.buf = buf
        self.size = size
        self.pos = 0

    def fail(self, ctx, detail):
        return FormatError(f"gguf: {ctx}: {detail}")

    def need(self, n, ctx, what):
        if n > self.size - self.pos:
            raise self.fail(ctx, f"{what} at byte {self.pos:#x} runs past end of file "
                                 f"(needs {n} bytes, size {self.size})")

    def scalar(self, vt, ctx, what):
        st = _STRUCT[vt]
        self.need(st.size, ctx, f"{what} ({vt.name.lower()})")
        (v,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return v

    def u32(self, ctx, what):
        return self.scalar(_VT.UINT32, ctx, what)

    def u64(self, ctx, what):
        return self.scalar(_VT.UINT64, ctx, what)

    def string(self, ctx, what):
        at = self.pos
        n = self.u64(ctx, f"{what} length")
        if n > self.size - self.pos:
            raise self.fail(ctx, f"{what} length {n} at byte {at:#x} runs past end of file "
                                 f"(size {self.size})")
        s = str(self.buf[self.pos:self.pos + n], "utf-8", "surrogateescape")
        self.pos += n
        return s

    def value_type(self, ctx, what):
        at = self.pos
        v = self.u32(ctx, what)
        if v not in _KNOWN_VALUE_TYPES:
            raise self.fail(ctx, f"unknown {what} {v} at byte {at:#x}")
        return ValueType(v)

    def value(self, vt, ctx):
        """-> (value, element type or None)."""
        if vt == _VT.STRING:
            return self.string(ctx, "string value"), None
        if vt == _VT.ARRAY:
            return self.array(ctx)
        v = self.scalar(vt, ctx, "value")
        return v, None

    def array(self, ctx):
        at = self.pos
        et = self.value_type(ctx, "array element type")
        if et == _VT.ARRAY:
            raise self.fail(ctx, f"array of arrays at byte {at:#x}: arrays nested in arrays "
                                 "are not supported")
        count_at = self.pos
        count = self.u64(ctx, "array count")
        min_size = 8 if et == _VT.STRING else _STRUCT[et].size
        remaining = self.size - self.pos
        if count * min_size > remaining:
            raise self.fail(ctx, f"array count {count} of {et.name} at byte {count_at:#x} needs "
                                 f"at least {count * min_size} bytes but only {remaining} remain "
                                 f"(size {self.size})")
        if et == _VT.STRING:
            return self.string_array(count, ctx), et
        dt = _DTYPE[et]
        if count == 0:
            arr = np.empty(0, dt)
        else:
            arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).copy()
        self.pos += count * dt.itemsize
        if et == _VT.BOOL:
            arr = arr != 0
        return arr, et

    def string_array(self, count, ctx):
        buf, size, pos = self.buf, self.size, self.pos
        unpack = _U64.unpack_from
        out = []
        append = out.append
        i = 0
        try:
            for i in range(count):
                (n,) = unpack(buf, pos)
                pos += 8
                if n > size - pos:
                    raise self.fail(ctx, f"string #{i} length {n} at byte {pos - 8:#x} runs past "
                                         f"end of file (size {size})")
                append(str(buf[pos:pos + n], "utf-8", "surrogateescape"))
                pos += n
        except struct.error:
            raise self.fail(ctx, f"string #{i} length (uint64) at byte {pos:#x} runs past end "
                                 f"of file (size {size})") from None
        self.pos = pos
        return out


def read(path):
    """Parse the GGUF file at `path` (mmap'd read-only) -> :class:`GGUFFile`.

    Raises FileNotFoundError if it does not exist, :class:`FormatError` for anything that is
    not a well-formed little-endian GGUF v2/v3 file (including a directory or an empty file).
    """
    path = os.fspath(path)
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise FormatError(f"gguf: {path!r} is a directory, not a GGUF file")
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"gguf: {path!r} is not a regular file")
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise FormatError(f"gguf: {path!r} is empty (0 bytes)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse(mm, len(mm), path)
    except BaseException:
        try:
            mm.close()
        except BufferError:
            pass
        raise


def _parse(buf, size, path):
    g = GGUFFile(path, buf, size)
    c = _Cursor(buf, size)

    # header
    c.need(4, "header", "magic")
    magic = bytes(buf[0:4])
    if magic != MAGIC:
        raise c.fail("header", f"bad magic {magic!r} at byte 0x0 (expected {MAGIC!r})")
    c.pos = 4
    version = c.u32("header", "version")
    if version not in SUPPORTED_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if swapped in SUPPORTED_VERSIONS:
            raise c.fail("header", f"big-endian GGUF (version {swapped} byte-swapped) at byte 0x4 "
                                   "is not supported")
        raise c.fail("header", f"unsupported GGUF version {version} at byte 0x4 "
                               f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    g.version = version
    tc_at = c.pos
    tensor_count = c.u64("header", "tensor count")
    kv_at = c.pos
    kv_count = c.u64("header", "kv count")
    remaining = size - c.pos
    if kv_count * _MIN_KV_BYTES > remaining:
        raise c.fail("header", f"kv count {kv_count} at byte {kv_at:#x} needs at least "
                               f"{kv_count * _MIN_KV_BYTES} bytes but only {remaining} remain "
                               f"(size {size})")
    if tensor_count * _MIN_TENSOR_INFO_BYTES > remaining - kv_count * _MIN_KV_BYTES:
        raise c.fail("header", f"tensor count {tensor_count} at byte {tc_at:#x} needs at least "
                               f"{tensor_count * _MIN_TENSOR_INFO_BYTES} bytes of tensor infos "
                               f"but only {remaining} remain (size {size})")

    # metadata
    metadata, types = g.metadata, g.metadata_types
    for i in range(kv_count):
        key_at = c.pos
        key = c.string(f"metadata key #{i}", "key")
        ctx = f"metadata key #{i} {key!r}"
        if key in metadata:
            raise c.fail(ctx, f"duplicate key at byte {key_at:#x}")
        vt = c.value_type(ctx, "value type")
        value, et = c.value(vt, ctx)
        metadata[key] = value
        types[key] = (vt, et)

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        vt, _ = types["general.alignment"]
        a = metadata["general.alignment"]
        if vt != _VT.UINT32:
            raise c.fail("metadata 'general.alignment'", f"must be UINT32, got {vt.name}")
        if a == 0 or a & (a - 1):
            raise c.fail("metadata 'general.alignment'",
                         f"alignment {a} is not a nonzero power of two")
        alignment = a
    g.alignment = alignment

    # tensor infos
    remaining = size - c.pos
    if tensor_count * _MIN_TENSOR_INFO_BYTES > remaining:
        raise c.fail("header", f"tensor count {tensor_count} at byte {tc_at:#x} needs at least "
                               f"{tensor_count * _MIN_TENSOR_INFO_BYTES} bytes of tensor infos "
                               f"but only {remaining} remain after the metadata (size {size})")
    infos = []
    names = set()
    for i in range(tensor_count):
        name_at = c.pos
        name = c.string(f"tensor info #{i}", "name")
        ctx = f"tensor #{i} {name!r}"
        if name in names:
            raise c.fail(ctx, f"duplicate tensor name at byte {name_at:#x}")
        names.add(name)
        at = c.pos
        n_dims = c.u32(ctx, "n_dims")
        if n_dims > MAX_DIMS:
            raise c.fail(ctx, f"n_dims {n_dims} at byte {at:#x} exceeds {MAX_DIMS}")
        ne = []
        n_elements = 1
        for d in range(n_dims):
            at = c.pos
            v = c.u64(ctx, f"ne[{d}]")
            if v > _INT64_MAX:
                raise c.fail(ctx, f"ne[{d}] = {v} at byte {at:#x} is negative as int64")
            n_elements *= v
            if n_elements > _INT64_MAX:
                raise c.fail(ctx, f"dimensions {ne + [v]} (ne[{d}] at byte {at:#x}): element "
                                  "count overflows int64")
            ne.append(v)
        at = c.pos
        type_id = c.u32(ctx, "type")
        q = qtypes.BY_ID.get(type_id)
        if q is None:
            raise c.fail(ctx, f"unknown tensor type id {type_id} at byte {at:#x}")
        ne0 = ne[0] if ne else 1
        if ne0 % q.block_size:
            raise c.fail(ctx, f"ne[0] = {ne0} is not a multiple of {q.name}'s block size "
                              f"{q.block_size}")
        nbytes = n_elements // q.block_size * q.type_size
        if nbytes > _INT64_MAX:
            raise c.fail(ctx, f"size {nbytes} bytes overflows int64")
        at = c.pos
        offset = c.u64(ctx, "offset")
        if offset % alignment:
            raise c.fail(ctx, f"offset {offset} at byte {at:#x} is not a multiple of the "
                              f"alignment {alignment}")
        infos.append((ctx, name, type_id, tuple(ne), offset, nbytes, n_elements))

    data_offset = _align(c.pos, alignment)
    g.data_offset = data_offset

    # tensor data: inside the file, not overlapping
    spans = []
    for ctx, name, type_id, ne, offset, nbytes, n_elements in infos:
        start = data_offset + offset
        end = start + nbytes
        if end > size:
            raise c.fail(ctx, f"data at bytes [{start:#x}, {end:#x}) ({nbytes} bytes at relative "
                              f"offset {offset}) runs past end of file (size {size})")
        g.tensors[name] = Tensor(g, name, type_id, ne, start, nbytes, n_elements)
        if nbytes:
            spans.append((start, end, ctx))
    spans.sort()
    for (s0, e0, ctx0), (s1, e1, ctx1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise c.fail(ctx1, f"data at bytes [{s1:#x}, {e1:#x}) overlaps {ctx0} at "
                               f"[{s0:#x}, {e0:#x})")
    return g


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------

class Typed(NamedTuple):
    """A metadata value with an explicit GGUF type (see :func:`typed`)."""
    value: object
    type: ValueType
    element_type: object = None  # ValueType for arrays


def _value_type(t, what="value type"):
    if isinstance(t, ValueType):
        return t
    if isinstance(t, str):
        try:
            return ValueType[t.upper()]
        except KeyError:
            raise ValueError(f"unknown GGUF {what} {t!r}; known: "
                             f"{', '.join(v.name.lower() for v in ValueType)}") from None
    try:
        return ValueType(int(t))
    except (ValueError, TypeError):
        raise ValueError(f"unknown GGUF {what} {t!r}") from None


def typed(value, type, element_type=None):
    """Force a metadata value's GGUF type, e.g. ``typed(18, "uint32")``, ``typed(-1, "int32")``,
    ``typed([1, 2], "int32")`` or ``typed([1, 2], "array", "int32")`` (arrays of int32)."""
    vt = _value_type(type)
    if vt == _VT.ARRAY:
        if element_type is None:
            raise ValueError("typed(..., 'array', element_type): element_type is required")
        et = _value_type(element_type, "array element type")
        if et == _VT.ARRAY:
            raise ValueError("arrays nested in arrays are not supported")
        return Typed(value, vt, et)
    if element_type is not None:
        raise ValueError("element_type is only for type 'array'")
    if isinstance(value, (list, tuple, np.ndarray)):
        return Typed(value, _VT.ARRAY, vt)
    return Typed(value, vt, None)


_NP_KIND_TO_VT = {
    np.dtype("u1"): _VT.UINT8, np.dtype("i1"): _VT.INT8, np.dtype("u2"): _VT.UINT16,
    np.dtype("i2"): _VT.INT16, np.dtype("u4"): _VT.UINT32, np.dtype("i4"): _VT.INT32,
    np.dtype("u8"): _VT.UINT64, np.dtype("i8"): _VT.INT64, np.dtype("f4"): _VT.FLOAT32,
    np.dtype("f8"): _VT.FLOAT64, np.dtype("?"): _VT.BOOL,
}


def _default_int_type(v):
    if 0 <= v < 2**32:
        return _VT.UINT32
    if -2**63 <= v < 2**63:
        return _VT.INT64
    if 0 <= v < 2**64:
        return _VT.UINT64
    raise ValueError(f"integer {v} does not fit in 64 bits")


def _infer(value, key):
    """-> Typed with the default GGUF type for a Python/numpy value."""
    if isinstance(value, Typed):
        return value
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], ValueType):
        return typed(value[1], value[0])
    if isinstance(value, (bool, np.bool_)):
        return Typed(bool(value), _VT.BOOL)
    if isinstance(value, np.generic) and value.dtype.newbyteorder("=") in _NP_KIND_TO_VT:
        return Typed(value.item(), _NP_KIND_TO_VT[value.dtype.newbyteorder("=")])
    if isinstance(value, int):
        return Typed(value, _default_int_type(value))
    if isinstance(value, float):
        return Typed(value, _VT.FLOAT32)
    if isinstance(value, (str, bytes)):
        return Typed(value, _VT.STRING)
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise ValueError(f"metadata {key!r}: numpy arrays must be 1-D, got shape {value.shape}")
        if value.dtype.kind in "US":
            return Typed(value.tolist(), _VT.ARRAY, _VT.STRING)
        dt = value.dtype.newbyteorder("=")
        if dt not in _NP_KIND_TO_VT:
            raise ValueError(f"metadata {key!r}: no GGUF type for numpy dtype {value.dtype}")
        return Typed(value, _VT.ARRAY, _NP_KIND_TO_VT[dt])
    if isinstance(value, (list, tuple)):
        if not value:
            return Typed(value, _VT.ARRAY, _VT.INT32)
        if any(isinstance(v, (list, tuple, np.ndarray, dict)) for v in value):
            raise ValueError(f"metadata {key!r}: arrays nested in arrays are not supported")
        if all(isinstance(v, (str, bytes)) for v in value):
            return Typed(value, _VT.ARRAY, _VT.STRING)
        if all(isinstance(v, (bool, np.bool_)) for v in value):
            return Typed(value, _VT.ARRAY, _VT.BOOL)
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
               for v in value):
            lo, hi = min(value), max(value)
            return Typed(value, _VT.ARRAY, _VT.UINT32 if 0 <= lo and hi < 2**32 else _VT.INT64)
        if all(isinstance(v, (int, float, np.integer, np.floating))
               and not isinstance(v, (bool, np.bool_)) for v in value):
            return Typed(value, _VT.ARRAY, _VT.FLOAT32)
        raise ValueError(f"metadata {key!r}: list mixes types "
                         f"{sorted({type(v).__name__ for v in value})}")
    raise ValueError(f"metadata {key!r}: no GGUF type for {type(value).__name__}")


def _encode_string(s, key):
    if isinstance(s, str):
        b = s.encode("utf-8", "surrogateescape")
    elif isinstance(s, (bytes, bytearray)):
        b = bytes(s)
    else:
        raise ValueError(f"metadata {key!r}: expected a string, got {type(s).__name__}")
    return _U64.pack(len(b)) + b


def _encode_scalar(vt, v, key):
    if vt == _VT.STRING:
        return _encode_string(v, key)
    if vt == _VT.BOOL:
        if not isinstance(v, (bool, np.bool_)) and v not in (0, 1):
            raise ValueError(f"metadata {key!r}: {v!r} is not a bool")
        return _STRUCT[vt].pack(bool(v))
    if vt in _INT_RANGE:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"metadata {key!r}: {vt.name} value must be an int, got {v!r}")
        lo, hi = _INT_RANGE[vt]
        if not lo <= v <= hi:
            raise ValueError(f"metadata {key!r}: {v} does not fit in {vt.name}")
        return _STRUCT[vt].pack(int(v))
    if vt in (_VT.FLOAT32, _VT.FLOAT64):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"metadata {key!r}: {vt.name} value must be a number, got {v!r}")
        try:
            return _STRUCT[vt].pack(float(v))
        except OverflowError:
            raise ValueError(f"metadata {key!r}: {v} does not fit in {vt.name}") from None
    raise ValueError(f"metadata {key!r}: {vt.name} is not a scalar type")


def _encode_array(et, values, key):
    if et == _VT.ARRAY:
        raise ValueError(f"metadata {key!r}: arrays nested in arrays are not supported")
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"metadata {key!r}: array value must be a list or 1-D numpy array")
    n = len(values)
    head = _U32.pack(et) + _U64.pack(n)
    if et == _VT.STRING:
        pack = _U64.pack
        parts = [head]
        for s in values:
            b = s.encode("utf-8", "surrogateescape") if isinstance(s, str) else s
            if not isinstance(b, (bytes, bytearray)):
                raise ValueError(f"metadata {key!r}: string array holds {type(s).__name__}")
            parts.append(pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    if isinstance(values, np.ndarray) and values.ndim != 1:
        raise ValueError(f"metadata {key!r}: numpy arrays must be 1-D, got shape {values.shape}")
    if any(isinstance(v, (list, tuple, np.ndarray)) for v in
           (values if not isinstance(values, np.ndarray) else ())):
        raise ValueError(f"metadata {key!r}: arrays nested in arrays are not supported")
    try:
        arr = np.asarray(values)
    except (ValueError, OverflowError) as e:
        raise ValueError(f"metadata {key!r}: {e}") from None
    if arr.ndim != 1 and n:
        raise ValueError(f"metadata {key!r}: array must be 1-D")
    dt = _DTYPE[et]
    if n:
        kind = arr.dtype.kind
        if et == _VT.BOOL:
            if kind != "b" and not (kind in "iu" and np.isin(arr, (0, 1)).all()):
                raise ValueError(f"metadata {key!r}: BOOL array holds non-bool values")
            arr = arr.astype(bool)
        elif et in _INT_RANGE:
            if kind not in "iub":
                raise ValueError(f"metadata {key!r}: {et.name} array needs integers, got {arr.dtype}")
            lo, hi = _INT_RANGE[et]
            if int(arr.min()) < lo or int(arr.max()) > hi:
                raise ValueError(f"metadata {key!r}: values out of range for {et.name}")
        elif kind not in "iuf":
            raise ValueError(f"metadata {key!r}: {et.name} array needs numbers, got {arr.dtype}")
    return head + np.ascontiguousarray(arr, dtype=dt).tobytes()


def _encode_kv(key, value):
    if not isinstance(key, str) or not key:
        raise ValueError(f"metadata key must be a non-empty str, got {key!r}")
    t = _infer(value, key)
    body = (_encode_array(t.element_type, t.value, key) if t.type == _VT.ARRAY
            else _encode_scalar(t.type, t.value, key))
    return _encode_string(key, key) + _U32.pack(t.type) + body


class _OutTensor(NamedTuple):
    name: bytes
    type_id: int
    ne: tuple
    nbytes: int
    data: memoryview


def _tensor_specs(tensors):
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    for item in items:
        if isinstance(item, Tensor):
            yield item.name, item
        elif len(item) == 2:
            yield item[0], item[1]
        elif len(item) == 4:
            yield item[0], tuple(item[1:])
        else:
            raise ValueError(f"tensor entry {item!r}: expected (name, spec) or "
                             "(name, type, shape, data)")


def _out_tensor(name, spec):
    if not isinstance(name, str) or not name:
        raise ValueError(f"tensor name must be a non-empty str, got {name!r}")
    bname = name.encode("utf-8", "surrogateescape")
    if len(bname) >= MAX_NAME:
        raise ValueError(f"tensor {name!r}: name is {len(bname)} bytes; llama.cpp allows at most "
                         f"{MAX_NAME - 1}")
    if isinstance(spec, Tensor):
        type_id, shape, data = spec.type, spec.shape, spec.data
    elif isinstance(spec, np.ndarray):
        dt = spec.dtype.newbyteorder("<") if spec.dtype.byteorder != "|" else spec.dtype
        matches = [t for t, d in _TENSOR_DTYPE.items() if d == dt and t != qtypes.BF16]
        if not matches:
            raise ValueError(f"tensor {name!r}: no tensor type for numpy dtype {spec.dtype}; "
                             "pass (type, shape, data)")
        type_id, shape, data = matches[0], spec.shape, spec
    else:
        try:
            type_id, shape, data = spec
        except (TypeError, ValueError):
            raise ValueError(f"tensor {name!r}: expected (type, shape, data), a numpy array or "
                             "a Tensor") from None
    try:
        q = qtypes.qtype(type_id)
    except ValueError as e:
        raise ValueError(f"tensor {name!r}: {e}") from None
    shape = tuple(int(d) for d in shape)
    if not 1 <= len(shape) <= MAX_DIMS:
        raise ValueError(f"tensor {name!r}: shape {shape} must have 1..{MAX_DIMS} dimensions")
    if any(d < 0 for d in shape):
        raise ValueError(f"tensor {name!r}: negative dimension in shape {shape}")
    n = math.prod(shape)
    if n > _INT64_MAX:
        raise ValueError(f"tensor {name!r}: shape {shape} has too many elements")
    if shape[-1] % q.block_size:
        raise ValueError(f"tensor {name!r}: last dimension {shape[-1]} is not a multiple of "
                         f"{q.name}'s block size {q.block_size}")
    nbytes = n // q.block_size * q.type_size
    if isinstance(data, np.ndarray):
        want = _TENSOR_DTYPE.get(q.id)
        if data.dtype.itemsize == 1 and data.dtype.kind in "uiV" and (
                want is None or want.itemsize != 1 or data.dtype.kind == "V"):
            pass  # raw bytes
        elif want is not None and data.dtype.kind == want.kind and data.dtype.itemsize == want.itemsize:
            if data.size != n:
                raise ValueError(f"tensor {name!r}: array has {data.size} elements, shape {shape} "
                                 f"needs {n}")
            data = data.astype(want, copy=False)
        elif q.name == "BF16" and data.dtype.itemsize == 2 and "bfloat16" in str(data.dtype):
            data = data.view(np.uint16)
        else:
            raise ValueError(f"tensor {name!r}: numpy dtype {data.dtype} does not match type "
                             f"{q.name}" + (f" ({want})" if want is not None else " (pass uint8 bytes)"))
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        mv = memoryview(data)
    else:
        try:
            mv = memoryview(data)
        except TypeError:
            raise ValueError(f"tensor {name!r}: data must be bytes-like or a numpy array, "
                             f"got {type(data).__name__}") from None
        if not mv.c_contiguous:
            raise ValueError(f"tensor {name!r}: data buffer is not contiguous")
        mv = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
    if mv.nbytes != nbytes:
        raise ValueError(f"tensor {name!r}: {mv.nbytes} bytes of data, {q.name} {shape} needs "
                         f"{nbytes}")
    return _OutTensor(bname, q.id, tuple(reversed(shape)), nbytes, mv)


def _umask():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def write(path, metadata, tensors, alignment=None, version=3):
    """Write a GGUF file atomically (temp file in the same directory, fsync, rename).

    metadata: dict key -> value. Default types: bool -> BOOL, int -> UINT32 if 0 <= v < 2**32
      else INT64, float -> FLOAT32, str -> STRING, list of str -> ARRAY of STRING, list of
      ints -> ARRAY of UINT32 (INT64 if any is outside uint32), list with floats -> ARRAY of
      FLOAT32, 1-D numpy array -> ARRAY of its dtype, numpy scalars -> their dtype. Force a type
      with ``typed(value, "int32")`` or ``(ValueType.INT32, value)``.
    tensors: dict name -> ``(type, shape, data)`` (type: ggml id or name; shape in numpy order;
      data: bytes-like or numpy array of the type's dtype, or uint8 raw bytes), a numpy array
      (F32/F16/F64/I8..I64 from its dtype), or a :class:`Tensor` (copied from another file);
      or an iterable of ``(name, spec)`` / ``(name, type, shape, data)``. File order = given order.
    alignment: data alignment; None -> metadata's ``general.alignment`` or 32. If it is not
      32 it is stored as ``general.alignment`` (UINT32).
    Layout is llama.cpp's: tensor offsets relative to the data section start, every tensor
    padded to `alignment`. Returns the file size in bytes.
    """
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"version must be one of {SUPPORTED_VERSIONS}, got {version}")
    metadata = dict(metadata)
    if "general.alignment" in metadata:
        a = metadata["general.alignment"]
        a = a.value if isinstance(a, Typed) else a
        if alignment is not None and a != alignment:
            raise ValueError(f"alignment={alignment} but metadata general.alignment={a}")
        alignment = a
    alignment = DEFAULT_ALIGNMENT if alignment is None else alignment
    if (isinstance(alignment, bool) or not isinstance(alignment, (int, np.integer))
            or not 0 < alignment < 2**32 or alignment & (alignment - 1)):
        raise ValueError(f"alignment must be a power of two below 2**32, got {alignment!r}")
    alignment = int(alignment)
    if "general.alignment" in metadata or alignment != DEFAULT_ALIGNMENT:
        metadata["general.alignment"] = Typed(alignment, _VT.UINT32)

    kvs = [_encode_kv(k, v) for k, v in metadata.items()]
    outs = []
    seen = set()
    for name, spec in _tensor_specs(tensors):
        t = _out_tensor(name, spec)
        if t.name in seen:
            raise ValueError(f"duplicate tensor name {name!r}")
        seen.add(t.name)
        outs.append(t)

    infos = []
    offset = 0
    for t in outs:
        infos.append(_U64.pack(len(t.name)) + t.name + _U32.pack(len(t.ne))
                     + b"".join(_U64.pack(d) for d in t.ne) + _U32.pack(t.type_id)
                     + _U64.pack(offset))
        offset += _align(t.nbytes, alignment)
    head = b"".join([MAGIC, _U32.pack(version), _U64.pack(len(outs)), _U64.pack(len(kvs))]
                    + kvs + infos)
    head += bytes(_align(len(head), alignment) - len(head))
    total = len(head) + offset

    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            for t in outs:
                f.write(t.data)
                pad = _align(t.nbytes, alignment) - t.nbytes
                if pad:
                    f.write(bytes(pad))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return total


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------

def _plain(v):
    """numpy values -> plain Python (JSON-friendly)."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


_TOKENIZER_KEYS = ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id",
                   "seperator_token_id", "mask_token_id", "add_bos_token", "add_eos_token",
                   "add_sep_token", "add_space_prefix")


def describe(gguf_file):
    """Summary of a :class:`GGUFFile` (or a path) as a JSON-friendly dict.

    Keys: path, file_size, version, alignment, metadata_count, architecture, name,
    file_type (id) and file_type_name, quantization_version, general (other short general.*
    values), hyperparameters (``<arch>.*`` keys without the prefix, e.g.
    ``"attention.head_count"``), tensor_count, tensor_bytes, parameter_count, tensors_by_type
    (type name -> {count, bytes, elements}, largest first), tokenizer (model, pre, vocab_size,
    merges_count, special token ids and flags that are present).
    """
    if not isinstance(gguf_file, GGUFFile):
        with read(gguf_file) as f:
            return describe(f)
    md = gguf_file.metadata
    arch = md.get("general.architecture")
    hyper = {}
    if isinstance(arch, str):
        prefix = arch + "."
        hyper = {k[len(prefix):]: _plain(v) for k, v in md.items() if k.startswith(prefix)}
    general = {}
    for k, v in md.items():
        if k.startswith("general.") and k not in ("general.architecture", "general.name",
                                                  "general.file_type",
                                                  "general.quantization_version",
                                                  "general.alignment"):
            v = _plain(v)
            if isinstance(v, list) and len(v) > 16:
                v = f"<{len(v)} values>"
            general[k[len("general."):]] = v
    by_type = {}
    params = 0
    for t in gguf_file.tensors.values():
        e = by_type.setdefault(t.type_name, {"count": 0, "bytes": 0, "elements": 0})
        e["count"] += 1
        e["bytes"] += t.nbytes
        e["elements"] += t.n_elements
        params += t.n_elements
    by_type = dict(sorted(by_type.items(), key=lambda kv: -kv[1]["bytes"]))
    tok = {}
    if "tokenizer.ggml.model" in md:
        tok["model"] = md["tokenizer.ggml.model"]
    if "tokenizer.ggml.pre" in md:
        tok["pre"] = md["tokenizer.ggml.pre"]
    if "tokenizer.ggml.tokens" in md:
        tok["vocab_size"] = len(md["tokenizer.ggml.tokens"])
    if "tokenizer.ggml.merges" in md:
        tok["merges_count"] = len(md["tokenizer.ggml.merges"])
    for k in _TOKENIZER_KEYS:
        if "tokenizer.ggml." + k in md:
            tok[k] = _plain(md["tokenizer.ggml." + k])
    if "tokenizer.chat_template" in md:
        tok["has_chat_template"] = True
    ft = md.get("general.file_type")
    return {
        "path": gguf_file.path,
        "file_size": gguf_file.file_size,
        "version": gguf_file.version,
        "alignment": gguf_file.alignment,
        "metadata_count": len(md),
        "architecture": arch,
        "name": md.get("general.name"),
        "file_type": _plain(ft),
        "file_type_name": FILE_TYPE_NAMES.get(ft) if isinstance(ft, int) else None,
        "quantization_version": _plain(md.get("general.quantization_version")),
        "general": general,
        "hyperparameters": hyper,
        "tensor_count": len(gguf_file.tensors),
        "tensor_bytes": sum(e["bytes"] for e in by_type.values()),
        "parameter_count": params,
        "tensors_by_type": by_type,
        "tokenizer": tok,
    }
