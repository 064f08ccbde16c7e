# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Block-quantized tensors in ggml's formats: dequantize, quantize, linear (x W^T), get_rows.

Blocks are the bytes of the GGUF file (see quant_simd.h for each layout): F32, F16, BF16,
Q8_0, Q4_0, Q5_0, Q4_1, Q5_1 (32 elements a block), Q4_K, Q5_K, Q6_K (256). A weight matrix W (N, K) is a
uint8 array (N, row_bytes), one output feature a row, and is never dequantized as a whole:
``linear`` quantizes each activation row once to 8 bits (Q8_0-style blocks of 32 for
Q8_0/Q4_0/Q5_0, the same plus per-block sums (llama.cpp's Q8_1) for Q4_1/Q5_1, Q8_K-style blocks of 256 for K-quants, as llama.cpp does) and runs integer dot
products on the blocks (AVX-512 VNNI, AVX-512BW, AVX2, or portable C, chosen at run time).

``nthreads`` is the resolved thread count (``cpu.resolve_threads``); ``-1`` resolves it here.
"""
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange, threadid
from libc.stdint cimport uint8_t, int32_t, int64_t
from libc.stdlib cimport free
from libc.string cimport memset

from slmx import qtypes

include "simd.pxi"

cnp.import_array()

include "quant_decl.pxi"

slmx_f16_table_init()

# Types each entry point handles (ggml ids).
DEQUANT_TYPES = (qtypes.F32, qtypes.F16, qtypes.BF16, qtypes.Q8_0, qtypes.Q4_0, qtypes.Q5_0,
                 qtypes.Q4_K, qtypes.Q5_K, qtypes.Q6_K, qtypes.Q4_1, qtypes.Q5_1)
QUANT_TYPES = DEQUANT_TYPES
LINEAR_TYPES = DEQUANT_TYPES

# Blocks per parallel work item of dequantize / quantize.
DEF BLOCK_CHUNK = 2048
# ... of quantize for K-quants (256-element blocks, compute-bound).
DEF K_BLOCK_CHUNK = 16

# linear may use AMX tiles for M >= 16 when the CPU and OS allow (tests switch it off and on).
cdef int _amx_allowed = 1


def _set_amx(bint allowed):
    """Allow (default) or forbid linear's AMX path; returns whether AMX would be used now."""
    global _amx_allowed
    _amx_allowed = allowed
    return bool(slmx_use_amx(slmx_simd_level(), qtypes.Q8_0, 1 << 20, _amx_allowed))


def _set_gfni(bint allowed):
    """Allow (default) or forbid the GFNI variant of the Q4_K and Q4_0 decode kernels (same numbers;
    tests run both); returns whether it is used when the dispatch level has VNNI."""
    return bool(slmx_q_set_gfni(allowed))


def _amx_for(int type_id, int M):
    """Whether linear of M activation rows with weights of type_id would run on AMX tiles now."""
    return bool(slmx_use_amx(slmx_simd_level(), type_id, M, _amx_allowed))


# ----------------------------------------------------------------------------- checks

cdef str _tname(int t):
    q = qtypes.BY_ID.get(t)
    return q.name if q is not None else f"type id {t}"


cdef int _check_type(int t, tuple allowed, str fn) except -1:
    if t not in allowed:
        raise ValueError(f"{fn}: unsupported tensor type {_tname(t)}; supported: "
                         + ", ".join(_tname(a) for a in allowed))
    return 0


cdef object _array(object a, str name):
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")
    return a


cdef object _weight2d(object w, int t, str fn):
    """w as a 2-D uint8 (N, row_bytes) view; float weights may also come as float32/float16."""
    _array(w, f"{fn}: w")
    if w.ndim != 2:
        raise ValueError(f"{fn}: w must be 2-D (N, row_bytes), got shape {w.shape}")
    if w.dtype == np.uint8:
        return w
    if ((t == qtypes.F32 and w.dtype == np.float32) or (t == qtypes.F16 and w.dtype == np.float16)
            or (t == qtypes.BF16 and (w.dtype == np.uint16 or w.dtype == np.int16))):
        return w.view(np.uint8)
    raise ValueError(f"{fn}: w must be uint8 (the {_tname(t)} blocks' bytes), got dtype {w.dtype}")


cdef object _aligned_bytes(Py_ssize_t nbytes):
    """A uint8 array of nbytes (>= 64) whose data starts on a 64-byte boundary."""
    if nbytes < 64:
        nbytes = 64
    buf = np.empty(nbytes + 64, np.uint8)
    cdef size_t addr = <size_t>buf.ctypes.data
    cdef Py_ssize_t off = <Py_ssize_t>((64 - addr % 64) % 64)
    out = buf[off:off + nbytes]
    if out.shape[0] != nbytes or (<size_t>out.ctypes.data) % 64:
        raise MemoryError("could not align a scratch buffer")
    return out


cdef void *_amalloc(size_t nbytes) except NULL:
    """64-byte aligned scratch memory (free with free())."""
    cdef void *p = aligned_alloc(64, (nbytes + 127) // 64 * 64)
    if p == NULL:
        raise MemoryError(f"could not allocate {nbytes} bytes of scratch")
    return p


cdef bint _is_f32_2d(object a):
    return (isinstance(a, np.ndarray) and cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_FLOAT32
            and cnp.PyArray_NDIM(<cnp.ndarray>a) == 2 and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a))


cdef int _resolve(int nthreads):
    if nthreads > 0:
        return nthreads
    from slmx._kernels import cpu
    return cpu.resolve_threads(None)


# ----------------------------------------------------------------------------- dequantize

cdef void dequantize_blocks(int t, const uint8_t *src, float *y, int64_t nblocks, int nthreads) noexcept nogil:
    """y (nblocks * block_size,) = decode of nblocks blocks of type t at src."""
    cdef int bs = slmx_block_size(t), ts = slmx_type_size(t)
    cdef int64_t nch = (nblocks + BLOCK_CHUNK - 1) // BLOCK_CHUNK, c, b0, nb
    if nthreads <= 1 or nch <= 1 or nblocks * ts < PAR_MIN_BYTES:
        slmx_dequant_blocks(t, src, y, nblocks)
        return
    for c in prange(nch, schedule='static', num_threads=nthreads):
        b0 = c * BLOCK_CHUNK
        nb = nblocks - b0
        if nb > BLOCK_CHUNK:
            nb = BLOCK_CHUNK
        slmx_dequant_blocks(t, src + b0 * ts, y + b0 * bs, nb)


def dequantize(src, int type_id, Py_ssize_t n, int nthreads=-1):
    """float32 (n,) = the n elements stored as type_id blocks in src (uint8, C-contiguous, any shape).

    Bit-identical to ``gguf.quants.dequantize``.
    """
    _check_type(type_id, DEQUANT_TYPES, "dequantize")
    a = np.asarray(src)
    _array(a, "dequantize: src")
    if a.dtype != np.uint8:
        raise ValueError(f"dequantize: src must be uint8 (view the buffer as uint8), got {a.dtype}")
    cdef int bs = slmx_block_size(type_id), ts = slmx_type_size(type_id)
    if n < 0 or n % bs:
        raise ValueError(f"dequantize: n={n} is not a non-negative multiple of {_tname(type_id)}'s block size {bs}")
    cdef Py_ssize_t need = n // bs * ts
    if a.size != need:
        raise ValueError(f"dequantize: {n} {_tname(type_id)} elements take {need} bytes, src has {a.size}")
    out = np.empty(n, np.float32)
    if n == 0:
        return out
    cdef const uint8_t[::1] s = a.reshape(-1)
    cdef float[::1] y = out
    cdef int nt = _resolve(nthreads)
    with nogil:
        dequantize_blocks(type_id, &s[0], &y[0], n // bs, nt)
    return out


# ----------------------------------------------------------------------------- quantize

cdef void quantize_blocks(int t, const float *x, uint8_t *dst, int64_t nblocks, int nthreads) noexcept nogil:
    """dst (nblocks * type_size bytes) = blocks of type t encoding x (nblocks * block_size,)."""
    cdef int bs = slmx_block_size(t), ts = slmx_type_size(t)
    # K-quant encoders are compute-bound (~100x the work per byte): smaller chunks balance threads.
    cdef int64_t chunk = K_BLOCK_CHUNK if slmx_is_k(t) else BLOCK_CHUNK
    cdef int64_t nch = (nblocks + chunk - 1) // chunk, c, b0, nb
    cdef int64_t min_bytes = PAR_MIN_BYTES // 64 if slmx_is_k(t) else PAR_MIN_BYTES
    if nthreads <= 1 or nch <= 1 or nblocks * bs * 4 < min_bytes:
        slmx_quant_blocks(t, x, dst, nblocks)
        return
    if slmx_is_k(t):
        for c in prange(nch, schedule='dynamic', num_threads=nthreads):
            b0 = c * chunk
            nb = nblocks - b0
            if nb > chunk:
                nb = chunk
            slmx_quant_blocks(t, x + b0 * bs, dst + b0 * ts, nb)
        return
    for c in prange(nch, schedule='static', num_threads=nthreads):
        b0 = c * chunk
        nb = nblocks - b0
        if nb > chunk:
            nb = chunk
        slmx_quant_blocks(t, x + b0 * bs, dst + b0 * ts, nb)


def quantize(x, int type_id, int nthreads=-1):
    """uint8 (..., row_bytes) = x float32 (..., K) encoded row by row as type_id blocks.

    Bit-identical to ``gguf.quants.quantize`` for F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, and to
    llama.cpp's quantizer without an importance matrix for Q4_K, Q5_K, Q6_K.
    K must be a multiple of the block size.
    """
    _check_type(type_id, QUANT_TYPES, "quantize")
    _array(x, "quantize: x")
    if x.dtype != np.float32:
        raise ValueError(f"quantize: x must be float32, got {x.dtype}")
    if x.ndim < 1:
        raise ValueError("quantize: x must have at least 1 dimension")
    cdef int bs = slmx_block_size(type_id), ts = slmx_type_size(type_id)
    cdef Py_ssize_t K = x.shape[x.ndim - 1]
    if K % bs:
        raise ValueError(f"quantize: row length {K} is not a multiple of {_tname(type_id)}'s block size {bs}")
    cdef Py_ssize_t nblocks = x.size // bs
    out = np.empty(x.shape[:x.ndim - 1] + (K // bs * ts,), np.uint8)
    if nblocks == 0:
        return out
    cdef const float[::1] xv = x.reshape(-1)
    cdef uint8_t[::1] ov = out.reshape(-1)
    cdef int nt = _resolve(nthreads)
    with nogil:
        quantize_blocks(type_id, &xv[0], &ov[0], nblocks, nt)
    return out


# ----------------------------------------------------------------------------- linear

cdef void linear_forward(int level, int amx, int t, const float *x, Py_ssize_t M, Py_ssize_t K,
                         const uint8_t *w, Py_ssize_t N, size_t rb, uint8_t *xq, uint8_t *scratch,
                         size_t panel_bytes, float *out, int nthreads) noexcept nogil:
    """out (M, N) = x (M, K) @ W.T, W (N, K) as N rows of rb bytes of type t.

    xq: room for slmx_xq_rows(M, amx) quantized activation rows (slmx_xq_row_bytes each; unused
    for float types), scratch: nthreads panels of panel_bytes, both 64-byte aligned.
    """
    cdef size_t ldx
    cdef const uint8_t *xp
    cdef Py_ssize_t m, g, m0, mc, MC, ngroups, n0, n1, mpad
    cdef int nt, group = slmx_row_group(amx), mstep = 32 if amx else 4
    if slmx_is_float(t):
        xp = <const uint8_t *>x
        ldx = K * 4
    else:
        ldx = slmx_xq_row_bytes(t, <int>K)
        if M > 1 and nthreads > 1 and M * K * 4 >= PAR_MIN_BYTES:
            for m in prange(M, schedule='static', num_threads=nthreads):
                slmx_q_quantize_x(level, t, x + m * K, <int>K, xq + m * ldx)
        else:
            for m in range(M):
                slmx_q_quantize_x(level, t, x + m * K, <int>K, xq + m * ldx)
        mpad = slmx_xq_rows(<int>M, amx)
        if mpad > M:
            memset(xq + M * ldx, 0, (mpad - M) * ldx)
        xp = xq
    MC = M
    if M > 1 and <size_t>M * ldx > X_PASS_BYTES:
        MC = X_PASS_BYTES // ldx // mstep * mstep
        if MC < mstep:
            MC = mstep
    ngroups = (N + group - 1) // group
    nt = nthreads
    if nt > ngroups:
        nt = <int>ngroups
    if <size_t>N * rb * M < PAR_MIN_BYTES:
        nt = 1
    m0 = 0
    while m0 < M:
        mc = M - m0
        if mc > MC:
            mc = MC
        if nt <= 1:
            slmx_q_linear_range(level, amx, t, w, rb, 0, N, xp + m0 * ldx, ldx, <int>mc, <int>K,
                                out + m0 * N, N, scratch)
        else:
            for g in prange(ngroups, schedule='static', num_threads=nt):
                n0 = g * group
                n1 = n0 + group
                if n1 > N:
                    n1 = N
                slmx_q_linear_range(level, amx, t, w, rb, n0, n1, xp + m0 * ldx, ldx, <int>mc, <int>K,
                                    out + m0 * N, N, scratch + threadid() * panel_bytes)
        m0 += mc


def linear(x, w, int type_id, out, int nthreads):
    """out (M, N) = x (M, K) @ W.T for W (N, K) stored as type_id blocks.

    x float32 (M, K) C-contiguous; w uint8 (N, row_bytes) C-contiguous, the rows of W in their
    block layout (F32/F16 weights may also be float32/float16 (N, K)); out float32 (M, N)
    C-contiguous, overwritten. K must be a multiple of the block size.
    """
    cdef int bs = slmx_block_size(type_id), ts = slmx_type_size(type_id)
    if bs == 0:                                           # not one of LINEAR_TYPES
        _check_type(type_id, LINEAR_TYPES, "linear")
    if not _is_f32_2d(x):
        _array(x, "linear: x")
        raise ValueError(f"linear: x must be float32 (M, K), got {x.dtype} {x.shape}")
    if not (isinstance(w, np.ndarray) and cnp.PyArray_TYPE(<cnp.ndarray>w) == cnp.NPY_UINT8
            and cnp.PyArray_NDIM(<cnp.ndarray>w) == 2 and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>w)):
        w = _weight2d(w, type_id, "linear")
    if not _is_f32_2d(out):
        _array(out, "linear: out")
        raise ValueError(f"linear: out must be float32 (M, N), got {out.dtype} {out.shape}")
    cdef cnp.ndarray xa = <cnp.ndarray>x, wa = <cnp.ndarray>w, oa = <cnp.ndarray>out
    if not cnp.PyArray_ISWRITEABLE(oa):
        raise ValueError("linear: out is read-only")
    cdef Py_ssize_t M = cnp.PyArray_DIM(xa, 0), K = cnp.PyArray_DIM(xa, 1), N = cnp.PyArray_DIM(wa, 0)
    if K == 0 or K % bs:
        raise ValueError(f"linear: K={K} is not a positive multiple of {_tname(type_id)}'s block size {bs}")
    if K > 1 << 30:
        raise ValueError(f"linear: K={K} is too large")
    cdef size_t rb = K // bs * ts
    if <size_t>cnp.PyArray_DIM(wa, 1) != rb:
        raise ValueError(f"linear: w rows have {w.shape[1]} bytes; {K} {_tname(type_id)} elements take {rb}")
    if cnp.PyArray_DIM(oa, 0) != M or cnp.PyArray_DIM(oa, 1) != N:
        raise ValueError(f"linear: out must be float32 {(M, N)}, got {out.dtype} {out.shape}")
    if M == 0 or N == 0:
        return out
    cdef int nt = nthreads if nthreads > 0 else _resolve(nthreads)
    cdef int level = slmx_simd_level()
    cdef int amx = slmx_use_amx(level, type_id, <int>M, _amx_allowed)
    cdef size_t pb = slmx_panel_bytes(type_id, amx)
    cdef uint8_t *xq = <uint8_t *>_amalloc(slmx_xq_rows(<int>M, amx) * slmx_xq_row_bytes(type_id, <int>K))
    cdef uint8_t *scratch = NULL
    try:
        scratch = <uint8_t *>_amalloc(nt * pb)
        with nogil:
            linear_forward(level, amx, type_id, <const float *>cnp.PyArray_DATA(xa), M, K,
                           <const uint8_t *>cnp.PyArray_DATA(wa), N, rb, xq, scratch, pb,
                           <float *>cnp.PyArray_DATA(oa), nt)
    finally:
        free(xq)
        free(scratch)
    return out


# ----------------------------------------------------------------------------- get_rows

cdef void get_rows_forward(int t, const uint8_t *w, size_t rb, Py_ssize_t K, const int64_t *ids,
                           Py_ssize_t R, float *out, int nthreads) noexcept nogil:
    """out (R, K) = rows ids of W dequantized (ids already checked in range)."""
    cdef Py_ssize_t i
    cdef int64_t nb = K // slmx_block_size(t)
    if nthreads <= 1 or <size_t>R * rb < PAR_MIN_BYTES:
        for i in range(R):
            slmx_dequant_blocks(t, w + ids[i] * rb, out + i * K, nb)
    else:
        for i in prange(R, schedule='static', num_threads=nthreads):
            slmx_dequant_blocks(t, w + ids[i] * rb, out + i * K, nb)


def get_rows(w, int type_id, ids, out, int nthreads=-1):
    """out (len(ids), K) = rows ids of W (V, K) dequantized; w uint8 (V, row_bytes) blocks.

    ids int32 or int64, 1-D; every id must be in [0, V). Bit-identical to dequantizing W.
    """
    _check_type(type_id, DEQUANT_TYPES, "get_rows")
    wb = _weight2d(w, type_id, "get_rows")
    cdef int bs = slmx_block_size(type_id), ts = slmx_type_size(type_id)
    cdef Py_ssize_t V = wb.shape[0], rb = wb.shape[1]
    if rb % ts:
        raise ValueError(f"get_rows: w rows have {rb} bytes, not a multiple of {_tname(type_id)}'s {ts}")
    cdef Py_ssize_t K = rb // ts * bs
    if not isinstance(ids, np.ndarray):
        ids = np.asarray(ids)
    if ids.dtype != np.int32 and ids.dtype != np.int64:
        raise ValueError(f"get_rows: ids must be int32 or int64, got {ids.dtype}")
    if ids.ndim != 1:
        raise ValueError(f"get_rows: ids must be 1-D, got shape {ids.shape}")
    idx = np.ascontiguousarray(ids, dtype=np.int64)
    cdef Py_ssize_t R = idx.shape[0]
    _array(out, "get_rows: out")
    if out.dtype != np.float32 or out.shape != (R, K):
        raise ValueError(f"get_rows: out must be float32 {(R, K)}, got {out.dtype} {out.shape}")
    if R == 0 or K == 0:
        return out
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= V:
        raise ValueError(f"get_rows: ids must be in [0, {V}), got range [{lo}, {hi}]")
    cdef const uint8_t[:, ::1] wv = wb
    cdef const int64_t[::1] iv = idx
    cdef float[:, ::1] ov = out
    cdef int nt = _resolve(nthreads)
    with nogil:
        get_rows_forward(type_id, &wv[0, 0], rb, K, &iv[0], R, &ov[0, 0], nt)
    return out


# ----------------------------------------------------------------------------- test helpers

def quantize_act(x, int type_id):
    """The 8-bit activation rows linear computes with for weights of type_id, decoded.

    x float32 (M, K) -> (q int8 (M, K), d float32 (M, K // block)) where block is 32 (Q8_0,
    Q4_0, Q5_0, Q4_1, Q5_1 weights: Q8_0 blocks, d rounded to f16) or 256 (K-quants: Q8_K blocks).
    x_q = q * d[:, k // block] is what the integer dot products see.
    """
    _check_type(type_id, (qtypes.Q8_0, qtypes.Q4_0, qtypes.Q5_0, qtypes.Q4_1, qtypes.Q5_1,
                          qtypes.Q4_K, qtypes.Q5_K, qtypes.Q6_K),
                "quantize_act")
    _array(x, "quantize_act: x")
    if x.dtype != np.float32 or x.ndim != 2:
        raise ValueError(f"quantize_act: x must be float32 (M, K), got {x.dtype} {x.shape}")
    cdef Py_ssize_t M = x.shape[0], K = x.shape[1], m
    cdef int blk = 256 if slmx_is_k(type_id) else 32
    if K == 0 or K % blk:
        raise ValueError(f"quantize_act: K={K} is not a positive multiple of {blk}")
    cdef size_t xrb = slmx_xq_row_bytes(type_id, <int>K)
    buf = _aligned_bytes(<Py_ssize_t>(M * xrb))
    cdef const float[:, ::1] xv = x
    cdef uint8_t[::1] bv = buf
    cdef int level = slmx_simd_level()
    for m in range(M):
        slmx_q_quantize_x(level, type_id, &xv[m, 0], <int>K, &bv[0] + m * xrb)
    rows = np.asarray(buf).reshape(M, xrb)
    if blk == 256:
        blocks = rows.reshape(M, K // 256, -1)
        q = blocks[:, :, :256].view(np.int8).reshape(M, K)
        d = np.ascontiguousarray(blocks[:, :, 288:292]).view(np.float32).reshape(M, K // 256)
    else:
        nc = (K // 32 + 1) // 2
        chunks = rows[:, :nc * 192].reshape(M, nc, 192)
        q = chunks[:, :, :64].view(np.int8).reshape(M, nc * 64)[:, :K]
        dd = np.ascontiguousarray(chunks[:, :, 64:128]).view(np.float32).reshape(M, nc, 16)[:, :, ::8]
        d = dd.reshape(M, nc * 2)[:, :K // 32]
    return np.ascontiguousarray(q), np.ascontiguousarray(d)
