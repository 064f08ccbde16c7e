"""safetensors files (and sharded ``model.safetensors.index.json`` folders): a hardened zero-copy reader.

File layout::

    header length   u64 little-endian, N
    header          N bytes of UTF-8 JSON: {name: {"dtype": "F32", "shape": [..],
                    "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}}
    data            the tensors' bytes; offsets are relative to the data start (8 + N)

The file is untrusted. Before anything is mapped as a tensor, the header is checked here
(length against the file size and a 100 MB cap, UTF-8, JSON without duplicate keys, every
entry's dtype, shape and offsets; offsets inside the data section, not overlapping, covering it
without holes; byte count = product(shape) x dtype size) so that every malformed file raises
:class:`slmx.errors.FormatError` naming the tensor and what is wrong, without allocating more
than the header's size. The ``safetensors`` library then opens the same file and must agree on
every name, dtype and shape (its own checks, one more line of defence). Tensor data are
read-only numpy views into one read-only mmap of the file: no tensor byte is copied.

    with read("model.safetensors") as f:
        w = f.tensors["model.embed_tokens.weight"]     # Tensor: .dtype "BF16", .shape, .type, .data
    m = read_folder("model_dir")                       # one file or the shards of an index
"""
import json
import math
import mmap
import os
import stat
import struct

import numpy as np

from .. import qtypes
from ..errors import FormatError

__all__ = ["Tensor", "SafetensorsFile", "ShardedModel", "read", "read_index", "read_folder",
           "DTYPES", "MAX_HEADER", "INDEX_NAME", "SINGLE_NAME"]

MAX_HEADER = 100_000_000          # the safetensors library's own limit on the header length
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# safetensors dtype -> (numpy dtype, ggml type id or None). BF16 is exposed as uint16 words.
DTYPES = {
    "F64": (np.dtype("<f8"), qtypes.BY_NAME["F64"].id),
    "F32": (np.dtype("<f4"), qtypes.F32),
    "F16": (np.dtype("<f2"), qtypes.F16),
    "BF16": (np.dtype("<u2"), qtypes.BF16),
    "I64": (np.dtype("<i8"), qtypes.BY_NAME["I64"].id),
    "I32": (np.dtype("<i4"), qtypes.BY_NAME["I32"].id),
    "I16": (np.dtype("<i2"), qtypes.BY_NAME["I16"].id),
    "I8": (np.dtype("i1"), qtypes.BY_NAME["I8"].id),
    "U64": (np.dtype("<u8"), None),
    "U32": (np.dtype("<u4"), None),
    "U16": (np.dtype("<u2"), None),
    "U8": (np.dtype("u1"), None),
    "BOOL": (np.dtype("?"), None),
}
# dtypes the format defines but slmx cannot represent (named in the error message)
_KNOWN_UNSUPPORTED = ("F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64")


class Tensor:
    """One tensor: ``name``, ``dtype`` (safetensors name), ``shape`` (numpy order), ``type``
    (ggml type id, or None for dtypes GGUF has no type for), ``offset`` (absolute, in its file),
    ``nbytes``, ``data`` (read-only numpy view into the file's mmap; BF16 as uint16)."""
    __slots__ = ("name", "dtype", "shape", "type", "offset", "nbytes", "_file")

    def __init__(self, f, name, dtype, shape, offset, nbytes):
        self._file = f
        self.name, self.dtype, self.shape = name, dtype, shape
        self.type = DTYPES[dtype][1]
        self.offset, self.nbytes = offset, nbytes

    @property
    def data(self):
        mm = self._file._mmap
        if mm is None:
            raise ValueError(f"safetensors file {self._file.path!r} is closed")
        dt = DTYPES[self.dtype][0]
        n = math.prod(self.shape)
        if n == 0:
            a = np.zeros(self.shape, dt)
            a.flags.writeable = False
            return a
        return np.frombuffer(mm, dtype=dt, count=n, offset=self.offset).reshape(self.shape)

    @property
    def path(self):
        return self._file.path

    def __repr__(self):
        return f"Tensor({self.name!r}, {self.dtype}, shape={self.shape}, offset={self.offset:#x})"


class SafetensorsFile:
    """A checked safetensors file backed by a read-only mmap: ``path``, ``metadata``
    (the ``__metadata__`` dict or {}), ``tensors`` (name -> :class:`Tensor`, offset order)."""

    def __init__(self, path, mm, metadata, tensors):
        self.path, self._mmap, self.metadata, self.tensors = path, mm, metadata, tensors

    def close(self):
        mm, self._mmap = self._mmap, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass      # views still exported; the map goes when they do

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"SafetensorsFile({self.path!r}, {len(self.tensors)} tensors)"


def _fail(path, msg):
    return FormatError(f"safetensors: {os.path.basename(path)}: {msg}")


def _no_duplicates(where):
    def hook(pairs):
        d = {}
        for k, v in pairs:
            if k in d:
                raise FormatError(f"{where}: duplicate key {k!r} in the JSON"[:300])
            d[k] = v
        return d
    return hook


def parse_json_object(text, where):
    """JSON text -> dict; FormatError when it is not JSON, not an object, or has a key twice."""
    try:
        d = json.loads(text, object_pairs_hook=_no_duplicates(where))
    except FormatError:
        raise
    except (ValueError, RecursionError) as e:
        raise FormatError(f"{where}: not valid JSON ({e})"[:300]) from None
    if not isinstance(d, dict):
        raise FormatError(f"{where}: expected a JSON object, got {type(d).__name__}")
    return d


def _is_uint(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _parse_header(path, buf, size):
    if size < 8:
        raise _fail(path, f"file is {size} bytes, too short for the 8-byte header length")
    (n,) = struct.unpack_from("<Q", buf, 0)
    if n > MAX_HEADER:
        raise _fail(path, f"header length {n} is absurd (limit {MAX_HEADER} bytes)")
    if n > size - 8:
        raise _fail(path, f"header length {n} is larger than the file ({size} bytes)")
    if n < 2:
        raise _fail(path, f"header length {n} is too short for a JSON object")
    raw = bytes(buf[8:8 + n])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(path, f"header is not UTF-8 ({e})") from None
    if not text.lstrip().startswith("{"):
        raise _fail(path, "header is not a JSON object (does not start with '{')")
    where = f"safetensors: {os.path.basename(path)}: header"
    head = parse_json_object(text, where)
    data_start = 8 + n
    data_size = size - data_start
    meta = head.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in meta.items()):
        raise _fail(path, "__metadata__ must be an object of strings")
    entries = []
    for name, e in head.items():
        w = f"tensor {name!r}"
        if not isinstance(e, dict):
            raise _fail(path, f"{w}: entry is not an object")
        extra = set(e) - {"dtype", "shape", "data_offsets"}
        if extra:
            raise _fail(path, f"{w}: unknown field(s) {sorted(extra)}")
        dt = e.get("dtype")
        if not isinstance(dt, str):
            raise _fail(path, f"{w}: dtype missing or not a string ({dt!r})"[:300])
        if dt not in DTYPES:
            if dt in _KNOWN_UNSUPPORTED:
                raise _fail(path, f"{w}: dtype {dt} is not supported by slmx")
            raise _fail(path, f"{w}: unknown dtype {dt!r}"[:300])
        shape = e.get("shape")
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise _fail(path, f"{w}: shape must be a list of non-negative integers, got {shape!r}"[:300])
        offs = e.get("data_offsets")
        if (not isinstance(offs, list) or len(offs) != 2 or not all(_is_uint(o) for o in offs)):
            raise _fail(path, f"{w}: data_offsets must be [begin, end] integers, got {offs!r}"[:300])
        b, end = offs
        if b > end:
            raise _fail(path, f"{w}: data_offsets [{b}, {end}] end before they begin")
        if end > data_size:
            raise _fail(path, f"{w}: data_offsets [{b}, {end}] run past the end of the data "
                              f"({data_size} bytes after the header)")
        count = math.prod(shape)           # exact Python ints: no overflow
        want = count * DTYPES[dt][0].itemsize
        if end - b != want:
            raise _fail(path, f"{w}: holds {end - b} bytes but shape {shape} x {dt} "
                              f"({DTYPES[dt][0].itemsize} bytes) needs {want}")
        entries.append((b, end, name, dt, tuple(shape)))
    entries.sort()
    pos = 0
    prev = None
    for b, end, name, _, _ in entries:
        if b < pos:
            raise _fail(path, f"tensor {name!r}: data_offsets [{b}, {end}] overlap tensor {prev!r} "
                              f"(which ends at {pos})")
        if b > pos:
            raise _fail(path, f"tensor {name!r}: data starts at {b} but the previous tensor ends at "
                              f"{pos} (a hole in the data section)")
        pos, prev = end, name
    if pos != data_size:
        raise _fail(path, f"the tensors cover {pos} bytes but the data section has {data_size}")
    return meta, data_start, entries


def _library_check(path, tensors):
    """The safetensors library opens the file and must see the same names, dtypes, shapes."""
    try:
        from safetensors import safe_open
    except ImportError:       # pragma: no cover - safetensors is a dependency
        return
    try:
        with safe_open(path, framework="numpy") as f:
            keys = set(f.keys())
            if keys != set(tensors):
                raise _fail(path, "the safetensors library sees other tensor names")
            for k in keys:
                s = f.get_slice(k)
                t = tensors[k]
                if s.get_dtype() != t.dtype or tuple(s.get_shape()) != t.shape:
                    raise _fail(path, f"tensor {k!r}: the safetensors library reads "
                                      f"{s.get_dtype()} {s.get_shape()}")
    except FormatError:
        raise
    except Exception as e:       # the library raises its own error types
        raise _fail(path, f"rejected by the safetensors library ({e})"[:300]) from None


def read(path):
    """Open and check one safetensors file -> :class:`SafetensorsFile` (tensors mmap'd).

    Raises FileNotFoundError when missing, :class:`FormatError` for a malformed file.
    """
    path = os.fspath(path)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"safetensors: {path!r} is not a regular file")
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 8:
            raise _fail(path, f"file is {size} bytes, too short for the 8-byte header length")
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        meta, data_start, entries = _parse_header(path, mm, size)
        f = SafetensorsFile(path, mm, meta, {})
        for b, end, name, dt, shape in entries:
            f.tensors[name] = Tensor(f, name, dt, shape, data_start + b, end - b)
        _library_check(path, f.tensors)
        return f
    except BaseException:
        try:
            mm.close()
        except BufferError:
            pass
        raise


class ShardedModel:
    """The tensors of one or more safetensors files as one mapping: ``tensors`` (name ->
    :class:`Tensor`), ``files`` (the open :class:`SafetensorsFile` objects), ``metadata``
    (the first file's ``__metadata__``)."""

    def __init__(self, files, tensors):
        self.files, self.tensors = files, tensors
        self.metadata = files[0].metadata if files else {}

    def close(self):
        for f in self.files:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_index(index_path):
    """A sharded model's ``model.safetensors.index.json`` -> :class:`ShardedModel`.

    Every shard it names must exist (a plain file name in the same folder), every tensor must
    be in the shard the weight map names, and no shard may hold a tensor the map does not list.
    """
    index_path = os.fspath(index_path)
    folder = os.path.dirname(os.path.abspath(index_path))
    where = f"safetensors index {os.path.basename(index_path)}"
    with open(index_path, "rb") as fh:
        raw = fh.read(MAX_HEADER + 1)
    if len(raw) > MAX_HEADER:
        raise FormatError(f"{where}: larger than {MAX_HEADER} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{where}: not UTF-8 ({e})") from None
    d = parse_json_object(text, where)
    wm = d.get("weight_map")
    if not isinstance(wm, dict) or not wm:
        raise FormatError(f"{where}: 'weight_map' missing or not a non-empty object")
    shards = {}
    for name, shard in wm.items():
        if not isinstance(shard, str) or not shard or os.path.basename(shard) != shard or shard in (".", ".."):
            raise FormatError(f"{where}: tensor {name!r}: shard {shard!r} is not a file name in the folder"[:300])
        shards.setdefault(shard, []).append(name)
    files = []
    tensors = {}
    try:
        for shard, names in shards.items():
            p = os.path.join(folder, shard)
            if not os.path.isfile(p):
                raise FormatError(f"{where}: shard {shard!r} (holding {names[0]!r}"
                                  f"{' and more' if len(names) > 1 else ''}) is missing")
            f = read(p)
            files.append(f)
            for name in names:
                if name not in f.tensors:
                    raise FormatError(f"{where}: tensor {name!r} is listed in shard {shard!r} "
                                      f"but that file does not hold it")
            unlisted = sorted(set(f.tensors) - set(names))
            if unlisted:
                raise FormatError(f"{where}: shard {shard!r} holds {unlisted[0]!r}, which the "
                                  f"weight map lists elsewhere or not at all")
            for name in names:
                tensors[name] = f.tensors[name]
    except BaseException:
        for f in files:
            f.close()
        raise
    return ShardedModel(files, tensors)


def read_folder(folder):
    """The weights of a Hugging Face model folder: ``model.safetensors.index.json`` (sharded)
    when present, else ``model.safetensors`` -> :class:`ShardedModel`."""
    folder = os.fspath(folder)
    idx = os.path.join(folder, INDEX_NAME)
    if os.path.isfile(idx):
        return read_index(idx)
    single = os.path.join(folder, SINGLE_NAME)
    if os.path.isfile(single):
        f = read(single)
        return ShardedModel([f], dict(f.tensors))
    raise FormatError(f"{folder}: no {SINGLE_NAME} or {INDEX_NAME}")
