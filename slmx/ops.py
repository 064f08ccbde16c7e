"""The public kernel API: numpy arrays in, numpy arrays out.

Each function checks its arguments, allocates the result (unless ``out=`` is given) and calls
the compiled kernel in ``slmx._kernels``; ``threads`` follows ``slmx._kernels.cpu.resolve_threads``
(argument, SLMX_NUM_THREADS, OMP_NUM_THREADS, usable cores; threadpoolctl limits apply).

Shapes: ``x`` (M, K) activations; weights ``w`` (N, K) "out x in", as model files store them.
A quantized weight is anything with ``.type`` (ggml type id or name), ``.shape`` (N, K) and
``.data`` (its raw block bytes, e.g. a ``slmx.gguf`` tensor): it is multiplied in place, never
dequantized to a full copy.
"""
import numpy as np

from . import qtypes
from ._kernels import attention as _attention
from ._kernels import cpu as _cpu
from ._kernels import gemm as _gemm
from ._kernels import ops_core as _core
from ._kernels import quant as _quant

__all__ = ["matmul", "linear", "to_bf16", "from_bf16", "pack_bf16", "rmsnorm", "softmax", "gelu", "silu", "geglu", "swiglu", "rope",
           "attention", "quantize", "dequantize", "get_rows", "QuantizedTensor"]


class QuantizedTensor:
    """A weight in a ggml block format: ``data`` uint8 (N, row_bytes), logical ``shape`` (N, K)."""

    __slots__ = ("type", "shape", "data")

    def __init__(self, data, type, shape):
        q = qtypes.qtype(type)
        shape = tuple(int(s) for s in shape)
        data = np.ascontiguousarray(np.asarray(data).view(np.uint8)) if q.name != "F32" else data
        if q.name != "F32":
            need = int(np.prod(shape[:-1], dtype=np.int64)) * qtypes.row_bytes(q.id, shape[-1])
            if data.size != need:
                raise ValueError(f"{q.name} tensor of shape {shape} needs {need} bytes, got {data.size}")
            data = data.reshape(shape[:-1] + (qtypes.row_bytes(q.id, shape[-1]),))
        self.type, self.shape, self.data = q.id, shape, data

    def __repr__(self):
        return f"QuantizedTensor({qtypes.qtype(self.type).name}, shape={self.shape})"


def _threads(threads):
    return _cpu.resolve_threads(threads)


def _f32(x, name):
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {x.dtype}")
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)   # (ascontiguousarray makes 0-d 1-d)


def _int_arg(v, name, lo=0):
    """an integral argument (int, numpy integer, or an integral float) >= lo, as int."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer, float, np.floating)) \
            or v != v or int(v) != v:
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if int(v) < lo:
        raise ValueError(f"{name} must be >= {lo}, got {int(v)}")
    return int(v)


def _ids(a, name, lo=None, hi=None):
    """a 1-D int32 copy of integer array a, or ValueError naming what is wrong (never truncates floats
    or wraps values past int32). lo/hi: the half-open range [lo, hi) the values must lie in."""
    a = np.asarray(a)
    if a.size == 0:
        return np.zeros(a.shape, np.int32)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {a.dtype}")
    amin, amax = int(a.min()), int(a.max())
    lo = -2 ** 31 if lo is None else lo
    hi = 2 ** 31 if hi is None else hi
    if amin < lo or amax >= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}), got range [{amin}, {amax}]")
    return np.ascontiguousarray(a, dtype=np.int32)


def _weight(w):
    """(type_id, bytes-or-float32 2-D array, N, K) for a weight given as an array or a tensor."""
    if hasattr(w, "type") and hasattr(w, "data") and hasattr(w, "shape"):
        t = qtypes.qtype(w.type)
        shape = tuple(w.shape)
        if len(shape) != 2:
            raise ValueError(f"weight must be 2-D (N, K), got shape {shape}")
        n, k = shape
        if t.name == "F32":                 # float32 values, or their bytes (ops.quantize(x, "F32"))
            a = np.asarray(w.data)
            if a.dtype != np.float32:
                a = np.ascontiguousarray(a).view(np.uint8).reshape(-1).view(np.float32)
            return t.id, np.ascontiguousarray(a.reshape(n, k)), n, k
        data = np.ascontiguousarray(np.asarray(w.data).view(np.uint8)).reshape(n, qtypes.row_bytes(t.id, k))
        return t.id, data, n, k
    if isinstance(w, _gemm.PackedBF16):
        raise ValueError('a packed bf16 weight (ops.pack_bf16) is multiplied with dtype="bf16"')
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D (N, K), got shape {w.shape}")
    if w.dtype == np.float32:
        return qtypes.F32, np.ascontiguousarray(w), w.shape[0], w.shape[1]
    if w.dtype == np.float16:
        return qtypes.F16, np.ascontiguousarray(w).view(np.uint8), w.shape[0], w.shape[1]
    raise ValueError(f"weight array must be float32 or float16 (or a quantized tensor), got {w.dtype}")


def to_bf16(x, threads=None):
    """bfloat16 bits of float32 ``x`` as a uint16 array of the same shape (round to nearest even).

    bf16 values travel through ``slmx.ops`` as uint16 arrays of their bit patterns (the upper
    16 bits of the float32); an ``ml_dtypes.bfloat16`` array is accepted wherever bf16 is."""
    x = _f32(x, "x")
    out = np.empty(x.shape, np.uint16)
    _gemm.f32_to_bf16(x, out, _threads(threads))
    return out


def from_bf16(b):
    """float32 values (exact) of bf16 ``b`` (uint16 bits or an ml_dtypes.bfloat16 array)."""
    b = _bf16_bits(b, "b")
    out = np.empty(b.shape, np.float32)
    _gemm.bf16_to_f32(b, out)
    return out


def _bf16_bits(a, name, threads=None):
    """uint16 bf16 bits of a (uint16 bits, an ml_dtypes.bfloat16 array, or float32 to round)."""
    a = np.asarray(a)
    if a.dtype == np.uint16:
        return np.ascontiguousarray(a)
    if a.dtype.name == "bfloat16" and a.dtype.itemsize == 2:
        return np.ascontiguousarray(a).view(np.uint16)
    if a.dtype == np.float32:
        return to_bf16(a, threads)
    raise ValueError(f"{name}: bf16 operands are uint16 bits, ml_dtypes.bfloat16 or float32 (rounded); "
                     f"got {a.dtype}")


def _check_dtype(dtype):
    if dtype not in (None, "fp32", "float32", "bf16", "bfloat16"):
        raise ValueError(f"dtype: expected None, 'fp32' or 'bf16', got {dtype!r}")
    return dtype in ("bf16", "bfloat16")


def matmul(a, b, out=None, threads=None, dtype=None):
    """a @ b for a (M, K), b (K, N) -> float32 (M, N).

    dtype None / "fp32": float32 operands, the packed cache-blocked GEMM. dtype "bf16": bf16
    operands (uint16 bits, ml_dtypes.bfloat16, or float32 rounded to bf16), exact products and
    fp32 accumulation (AMX tiles when the OS grants them); b is transposed into a (N, K) copy,
    so for a fixed weight prefer ``linear(x, w, dtype="bf16")`` with w (N, K) converted once."""
    bf16 = _check_dtype(dtype)
    if bf16:
        a2, b2 = np.asarray(a), np.asarray(b)
        if a2.ndim != 2 or b2.ndim != 2 or a2.shape[1] != b2.shape[0]:
            raise ValueError(f"matmul: shapes {a2.shape} and {b2.shape} do not chain")
        return linear(a2, np.ascontiguousarray(_bf16_bits(b2, "b").T), out=out, threads=threads, dtype="bf16")
    a, b = _f32(a, "a"), _f32(b, "b")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not chain")
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), np.float32)
    _gemm.matmul(a, b, out, _threads(threads))
    return out


def pack_bf16(w, threads=None):
    """A bf16 weight w (N, K) packed once into the AMX tile layout: ``linear(x, packed,
    dtype="bf16")`` then skips packing w on each call (the packed copy takes N x K bf16 beside
    w, which it references for the paths without tiles and for an ``out`` off a 64-byte boundary
    with N % 16 == 0, packed per call then). w: uint16 bits, ml_dtypes.bfloat16 or float32
    (rounded)."""
    w = _bf16_bits(w, "w")
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D (N, K), got shape {w.shape}")
    return _gemm.pack_weight_bf16(w, _threads(threads))


def _empty_f32_64(shape):
    """an uninitialized C-contiguous float32 array whose data starts on a 64-byte boundary (the
    AMX path stores whole tile rows: with a packed weight an output off a boundary makes it pack
    the weight again per call)"""
    n = int(np.prod(shape))
    buf = np.empty(n + 16, np.float32)
    off = (-buf.ctypes.data % 64) // 4
    return buf[off:off + n].reshape(shape)


def _linear_out(out, lead, n, alloc=None):
    """(2-D (M, n) array the kernel writes, the array linear returns) for a result of shape lead + (n,).
    A given out must be that shape, float32, C-contiguous and writable (it is written in place)."""
    shape = tuple(lead) + (n,)
    m = int(np.prod(lead, dtype=np.int64))
    if out is None:
        res = alloc((m, n)) if alloc is not None else np.empty((m, n), np.float32)
        return res, res.reshape(shape)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != shape:
        raise ValueError(f"linear: out must be a float32 array of shape {shape}, got "
                         f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
    if not out.flags.c_contiguous:
        raise ValueError("linear: out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("linear: out is read-only")
    return out.reshape(m, n), out


def _linear_bf16(x, w, out, threads):
    if type(x) is np.ndarray and x.ndim == 2 and x.dtype == np.uint16 and x.flags.c_contiguous \
            and (type(w) is _gemm.PackedBF16 or (type(w) is np.ndarray and w.ndim == 2 and w.dtype == np.uint16
                                                 and w.flags.c_contiguous)) \
            and x.shape[1] == w.shape[1] \
            and (out is None or (type(out) is np.ndarray and out.dtype == np.float32
                                 and out.shape == (x.shape[0], w.shape[0]) and out.flags.c_contiguous
                                 and out.flags.writeable)):
        # the common case without the general path's conversions (~5 us per call; the kernel
        # checks overlap)
        res = _empty_f32_64((x.shape[0], w.shape[0])) if out is None else out
        _gemm.linear_bf16(x, w, res, _threads(threads))
        return res
    x = _bf16_bits(x, "x", threads)
    if not isinstance(w, _gemm.PackedBF16):
        w = _bf16_bits(w, "w")
    if len(w.shape) != 2:
        raise ValueError(f"weight must be 2-D (N, K), got shape {w.shape}")
    if x.ndim == 0:
        raise ValueError("linear: x must have at least 1 dimension (..., K)")
    n, k = w.shape
    if x.shape[-1] != k:
        raise ValueError(f"linear: x has {x.shape[-1]} features, weight expects {k}")
    x2 = x.reshape(-1, k)
    res, ret = _linear_out(out, x.shape[:-1], n, _empty_f32_64)
    _gemm.linear_bf16(np.ascontiguousarray(x2), w, res, _threads(threads))
    return ret


def linear(x, w, out=None, threads=None, dtype=None):
    """x @ w.T: x float32 (..., K), w (N, K) float32/float16 array or quantized tensor -> (..., N)
    (out=, if given, is that shape, float32, C-contiguous; it is returned).

    dtype "bf16": x and w (N, K) in bf16 (uint16 bits from ``to_bf16``, ml_dtypes.bfloat16, or
    float32 rounded on the fly; or w packed once by ``pack_bf16``), exact products summed in
    fp32 -> float32 (M, N); AMX tiles when the OS grants them, else AVX512_BF16 / AVX-512 /
    AVX2 / portable dot products. As in the hardware's bf16 dot products (AMX, AVX512_BF16),
    bf16 subnormal inputs count as zero."""
    if dtype is None and type(x) is np.ndarray and type(w) is np.ndarray and x.ndim == 2 and w.ndim == 2 \
            and x.dtype == np.float32 and w.dtype == np.float32 and x.flags.c_contiguous and w.flags.c_contiguous \
            and x.shape[1] == w.shape[1] and (out is None or type(out) is np.ndarray):
        # the common case without the general path's conversions (a few microseconds per call)
        res = np.empty((x.shape[0], w.shape[0]), np.float32) if out is None else out
        if res.shape != (x.shape[0], w.shape[0]) or res.dtype != np.float32:
            raise ValueError(f"linear: out must be a float32 array of shape {(x.shape[0], w.shape[0])}, got "
                             f"{res.dtype} {res.shape}")
        _gemm.linear_f32(x, w, res, _threads(threads))     # (checks out is C-contiguous and writable)
        return res
    if _check_dtype(dtype):
        return _linear_bf16(x, w, out, threads)
    x = _f32(x, "x")
    if x.ndim == 0:
        raise ValueError("linear: x must have at least 1 dimension (..., K)")
    tid, wd, n, k = _weight(w)
    if x.shape[-1] != k:
        raise ValueError(f"linear: x has {x.shape[-1]} features, weight expects {k}")
    x2 = x.reshape(-1, k)
    res, ret = _linear_out(out, x.shape[:-1], n)
    nt = _threads(threads)
    if tid == qtypes.F32:
        _gemm.linear_f32(x2, wd, res, nt)
    else:
        _quant.linear(x2, wd, tid, res, nt)
    return ret


def rmsnorm(x, weight, eps=1e-6, out=None, threads=None):
    """x / sqrt(mean(x**2, -1) + eps) * weight over the last axis; x float32 (..., C)."""
    x = _f32(x, "x")
    weight = _f32(weight, "weight")
    res = np.empty_like(x) if out is None else out
    _core.rmsnorm(x, weight, float(eps), res, _threads(threads))
    return res


def softmax(x, out=None, threads=None):
    """Softmax over the last axis of float32 x (..., C)."""
    x = _f32(x, "x")
    res = np.empty_like(x) if out is None else out
    _core.softmax(x, res, _threads(threads))
    return res


def _unary(fn, x, out):
    x = _f32(x, "x")
    res = np.empty_like(x) if out is None else out
    fn(x, res)
    return res


def gelu(x, out=None):
    """tanh-approximated GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return _unary(_core.gelu_tanh, x, out)


def silu(x, out=None):
    """x * sigmoid(x)."""
    return _unary(_core.silu, x, out)


def _glu(fn, gate, up, out):
    gate, up = _f32(gate, "gate"), _f32(up, "up")
    if gate.shape != up.shape:
        raise ValueError(f"gate {gate.shape} and up {up.shape} differ")
    res = np.empty_like(gate) if out is None else out
    fn(gate, up, res)
    return res


def geglu(gate, up, out=None):
    """gelu_tanh(gate) * up (Gemma's FFN)."""
    return _glu(_core.geglu, gate, up, out)


def swiglu(gate, up, out=None):
    """silu(gate) * up (Llama's FFN)."""
    return _glu(_core.swiglu, gate, up, out)


def rope(x, positions, base=10000.0, neox=False, freq_scale=1.0, threads=None):
    """Rotary embedding of x (T, H, D) at integer positions (T,); returns a rotated copy.

    neox=False rotates pairs (2i, 2i+1) (GGUF Llama); neox=True rotates (i, i + D/2) (Gemma, Qwen2).
    Angles are computed in float32, as ggml does: at position 32767 the rotated values differ from
    a float64 reference by up to ~1e-2 (for unit inputs) and match ggml's to ~2e-7.
    """
    x = np.array(_f32(x, "x"), copy=True)
    if x.ndim != 3:
        raise ValueError(f"rope: x must be (T, H, D), got {x.shape}")
    if x.shape[2] % 2:
        raise ValueError(f"rope: the head dimension D must be even, got {x.shape[2]}")
    for v, nm in ((base, "base"), (freq_scale, "freq_scale")):
        if not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v) or v <= 0:
            raise ValueError(f"rope: {nm} must be a finite number > 0, got {v!r}")
    pos = _ids(positions, "rope: positions")
    if pos.shape != (x.shape[0],):
        raise ValueError(f"rope: positions must have shape ({x.shape[0]},), got {pos.shape}")
    _core.rope(x, pos, float(base), bool(neox), _threads(threads), float(freq_scale))
    return x


def attention(q, k, v, causal=True, window=None, scale=None, q_offset=None, out=None, threads=None):
    """softmax(q k^T * scale + mask) v, tiled (FlashAttention-style: no T x S buffer).

    q (T, H, D), k and v (S, H_kv, D) with H a multiple of H_kv (grouped/multi-query). Query i sits at
    position q_offset + i (default S - T, i.e. the queries are the last T keys' positions); causal
    masks later keys; window=W >= 1 keeps only the last W positions (sliding window; None or 0:
    no window). -> (T, H, D).
    """
    q, k, v = _f32(q, "q"), _f32(k, "k"), _f32(v, "v")
    if q.ndim != 3 or k.ndim != 3 or v.shape != k.shape:
        raise ValueError(f"attention: need q (T,H,D), k=v (S,Hkv,D); got {q.shape}, {k.shape}, {v.shape}")
    t, h, d = q.shape
    s, hkv, dk = k.shape
    if h == 0 or hkv == 0 or d == 0:
        raise ValueError(f"attention: need at least one head and head_dim >= 1; got q {q.shape}, k {k.shape}")
    if dk != d or h % hkv:
        raise ValueError(f"attention: head dims {d} vs {dk} or heads {h} not a multiple of {hkv}")
    if scale is not None and not np.isfinite(scale):
        raise ValueError(f"attention: scale must be finite, got {scale!r}")
    if q_offset is not None:
        q_offset = _int_arg(q_offset, "attention: q_offset")
    if window is not None:
        window = _int_arg(window, "attention: window (None, 0 = no window, or >= 1)")
    if t == 0:
        return np.empty_like(q) if out is None else out
    if s == 0:
        raise ValueError("attention: k and v hold no keys (S = 0)")
    if scale is None:
        scale = 1.0 / np.sqrt(d)
    if q_offset is None:
        if t > s:
            raise ValueError(f"attention: {t} queries but only {s} keys; with T > S pass q_offset "
                             "(the position of the first query, >= 0)")
        q_offset = s - t
    res = np.empty_like(q) if out is None else out
    _attention.attention(q, k, v, res, float(scale), bool(causal), int(q_offset), int(window or 0),
                         _threads(threads), 0.0, s)
    return res


def quantize(x, type, threads=None):
    """Quantize float32 x (..., K) row by row into ggml blocks of `type` -> uint8 (..., row_bytes)."""
    q = qtypes.qtype(type)
    x = _f32(x, "x")
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x.reshape(-1)))
        raise ValueError(f"quantize: x holds {bad.size} non-finite value(s) (NaN or inf), the first at flat "
                         f"index {int(bad[0])}")
    rb = qtypes.row_bytes(q.id, x.shape[-1]) if x.ndim else None
    data = _quant.quantize(x.reshape(-1), q.id)
    return data.reshape(x.shape[:-1] + (rb,)) if x.ndim else data


def dequantize(blocks, type, shape):
    """Decode ggml blocks of `type` (uint8 buffer) into float32 of `shape`."""
    q = qtypes.qtype(type)
    shape = tuple(int(s) for s in np.atleast_1d(shape))
    if any(s < 0 for s in shape):
        raise ValueError(f"dequantize: shape must not have negative sizes, got {shape}")
    n = 1
    for s_ in shape:
        n *= s_                                           # Python ints: no int64 wrap-around
    if n > 2 ** 40:
        raise ValueError(f"dequantize: shape {shape} holds {n} elements (more than 2**40)")
    data = np.ascontiguousarray(np.asarray(blocks)).view(np.uint8).reshape(-1)
    need = n // q.block_size * q.type_size
    if n % q.block_size or data.size != need:
        raise ValueError(f"dequantize: {n} {q.name} elements need {need} bytes, got {data.size}")
    return _quant.dequantize(data, q.id, n).reshape(shape)


def get_rows(table, ids, out=None):
    """Rows `ids` (integers in [0, V), any shape) of a (V, K) table (float32 array or quantized
    tensor), dequantized -> ids.shape + (K,)."""
    tid, wd, n, k = _weight(table)
    ids = _ids(ids, "get_rows: ids", 0, n)
    shape = ids.shape + (k,)
    ids = ids.reshape(-1)
    res = np.empty(shape, np.float32) if out is None else out
    if not isinstance(res, np.ndarray) or res.shape != shape or res.dtype != np.float32 \
            or not res.flags.c_contiguous:
        raise ValueError(f"get_rows: out must be a C-contiguous float32 array of shape {shape}, "
                         f"got {getattr(res, 'dtype', type(res).__name__)} {getattr(res, 'shape', '')}")
    ret, res = res, res.reshape(ids.size, k)
    if tid == qtypes.F32:
        np.take(wd, ids, axis=0, out=res)
    else:
        _quant.get_rows(wd, tid, ids, res)
    return ret
