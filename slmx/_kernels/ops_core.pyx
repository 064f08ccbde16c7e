# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""fp32 row kernels of the transformer block: RMSNorm, softmax, GELU(tanh), SiLU, GeGLU,
SwiGLU, RoPE, residual add / mul / scale.

Every array is float32 and C-contiguous; "rows" are the leading dimensions flattened, so an
``x`` of shape (B, T, C) is normalised as (B*T, C). Results go into a caller-provided ``out``
(which may be the input itself: every kernel works in place). ``nthreads`` is the resolved
thread count (``cpu.resolve_threads``); work smaller than ~32k elements runs on one thread.
The SIMD path (scalar / AVX2 / AVX-512) is chosen at run time (``slmx_simd_level()``).
"""
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport cosf, sinf, powf, INFINITY
from libc.stdint cimport int32_t, int64_t

include "simd.pxi"

cnp.import_array()

cdef extern from "ops_core_simd.h" nogil:
    int SLMX_ACT_GELU, SLMX_ACT_SILU
    void slmx_ops_rmsnorm_row(int lvl, const float *x, const float *w, float *out, long C, float eps)
    void slmx_ops_softmax_row(int lvl, const float *x, float *out, long C)
    void slmx_ops_act(int lvl, int kind, const float *g, const float *u, float *out, long n)
    void slmx_ops_rope_rotate(int lvl, float *x, const float *c, const float *s, long half, int neox)
    void slmx_rope_cache(float pos, float theta_scale, float freq_scale, const float *ff, long half,
                         float sin_sign, float *c, float *s)
    void slmx_ops_binary(int lvl, int op, const float *a, const float *b, float *out, long n)
    void slmx_ops_scale(int lvl, const float *a, float s, float *out, long n)

# Below this many elements a kernel runs serially (a parallel region costs a few microseconds).
DEF PAR_MIN = 32768
# Flat elementwise work is split into chunks of this many floats (multiple of 16).
DEF CHUNK = 16384
DEF ROPE_MAX_HALF = 2048


# ----------------------------------------------------------------------------- checks

cdef object _f32c(object a, str name):
    """a as a float32 C-contiguous ndarray, or ValueError (never a silent copy)."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise ValueError(f"{name}: expected dtype float32, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")
    return a


cdef object _rows(object a, str name):
    """(R, C) view of a float32 C-contiguous array of ndim >= 1 (leading dims flattened)."""
    _f32c(a, name)
    if a.ndim < 1:
        raise ValueError(f"{name}: expected at least 1 dimension")
    if a.ndim == 2:
        return a
    cdef Py_ssize_t C = a.shape[a.ndim - 1], R = 1, i
    for i in range(a.ndim - 1):
        R *= a.shape[i]
    return a.reshape(R, C)


cdef object _same(object a, str an, object b, str bn):
    if a.shape != b.shape:
        raise ValueError(f"{bn}: shape {b.shape} does not match {an} {a.shape}")
    if bn == "out":
        _alias(a, an, b)


cdef object _alias(object a, str an, object out):
    """out (C-contiguous, a's shape) may be a itself but not overlap it partly: a kernel writing out
    row by row would read values it already overwrote."""
    cdef size_t a0 = <size_t>cnp.PyArray_DATA(<cnp.ndarray>a), o0 = <size_t>cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef size_t nb = <size_t>cnp.PyArray_NBYTES(<cnp.ndarray>a)
    if a0 != o0 and nb and a0 < o0 + nb and o0 < a0 + nb:
        raise ValueError(f"out partly overlaps {an}: pass {an} itself (in place) or a separate array")


cdef inline int _nt(Py_ssize_t work, int nthreads) noexcept nogil:
    if nthreads < 1 or work < PAR_MIN:
        return 1
    return nthreads


# ----------------------------------------------------------------------------- RMSNorm

cdef void rmsnorm_forward(const float *x, const float *w, float *out, Py_ssize_t R, Py_ssize_t C,
                          float eps, int nthreads) noexcept nogil:
    """out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w  for r < R; x, out (R, C), w (C,)"""
    cdef int lvl = slmx_simd_level()
    cdef Py_ssize_t r
    cdef int nt = _nt(R * C, nthreads)
    if nt == 1 or R == 1:
        for r in range(R):
            slmx_ops_rmsnorm_row(lvl, x + r * C, w, out + r * C, C, eps)
    else:
        for r in prange(R, num_threads=nt, schedule="static"):
            slmx_ops_rmsnorm_row(lvl, x + r * C, w, out + r * C, C, eps)


def rmsnorm(x, w, float eps, out, int nthreads=1):
    """out = x / sqrt(mean(x^2, axis=-1) + eps) * w

    x, out (..., C) float32 (out may be x); w (C,). Gemma GGUF files already store 1 + w, so
    the weight is applied as is.
    """
    xr = _rows(x, "x")
    _f32c(w, "w")
    _f32c(out, "out")
    _same(x, "x", out, "out")
    cdef Py_ssize_t R = xr.shape[0], C = xr.shape[1]
    if w.ndim != 1 or w.shape[0] != C:
        raise ValueError(f"w: expected shape ({C},), got {w.shape}")
    if C == 0 or R == 0:
        return out
    cdef const float[:, ::1] xv = xr
    cdef const float[::1] wv = w
    cdef float[:, ::1] ov = _rows(out, "out")
    with nogil:
        rmsnorm_forward(&xv[0, 0], &wv[0], &ov[0, 0], R, C, eps, nthreads)
    return out


# ----------------------------------------------------------------------------- softmax

cdef void softmax_forward(const float *x, float *out, Py_ssize_t R, Py_ssize_t C, int nthreads) noexcept nogil:
    """out[r] = exp(x[r] - max x[r]) / sum exp(x[r] - max x[r]); a row of all -inf gives zeros"""
    cdef int lvl = slmx_simd_level()
    cdef Py_ssize_t r
    cdef int nt = _nt(R * C, nthreads)
    if nt == 1 or R == 1:
        for r in range(R):
            slmx_ops_softmax_row(lvl, x + r * C, out + r * C, C)
    else:
        for r in prange(R, num_threads=nt, schedule="static"):
            slmx_ops_softmax_row(lvl, x + r * C, out + r * C, C)


def softmax(x, out, int nthreads=1):
    """out = softmax(x, axis=-1), numerically stable (the row max is subtracted).

    x, out (..., C) float32; out may be x. A row whose entries are all -inf (fully masked)
    gives all zeros instead of NaN; NaN inputs propagate.
    """
    xr = _rows(x, "x")
    _f32c(out, "out")
    _same(x, "x", out, "out")
    cdef Py_ssize_t R = xr.shape[0], C = xr.shape[1]
    if C == 0 or R == 0:
        return out
    cdef const float[:, ::1] xv = xr
    cdef float[:, ::1] ov = _rows(out, "out")
    with nogil:
        softmax_forward(&xv[0, 0], &ov[0, 0], R, C, nthreads)
    return out


# ----------------------------------------------------------------------------- activations

cdef void act_forward(int kind, const float *g, const float *u, float *out, Py_ssize_t n,
                      int nthreads) noexcept nogil:
    """out = act(g) (* u when u is not NULL), flat over n elements"""
    cdef int lvl = slmx_simd_level()
    cdef Py_ssize_t nchunks = (n + CHUNK - 1) // CHUNK, c, lo, m
    cdef int nt = _nt(n, nthreads)
    if nt == 1 or nchunks == 1:
        slmx_ops_act(lvl, kind, g, u, out, n)
        return
    for c in prange(nchunks, num_threads=nt, schedule="static"):
        lo = c * CHUNK
        m = min(CHUNK, n - lo)
        slmx_ops_act(lvl, kind, g + lo, (u + lo) if u != NULL else NULL, out + lo, m)


cdef object _act(int kind, object g, object u, object out, int nthreads):
    _f32c(g, "x" if u is None else "gate")
    _f32c(out, "out")
    _same(g, "x" if u is None else "gate", out, "out")
    if u is not None:
        _f32c(u, "up")
        _same(g, "gate", u, "up")
        _alias(u, "up", out)
    cdef Py_ssize_t n = g.size
    if n == 0:
        return out
    cdef const float[::1] gv = g.reshape(-1)
    cdef float[::1] ov = out.reshape(-1)
    cdef const float[::1] uv
    cdef const float *up = NULL
    if u is not None:
        uv = u.reshape(-1)
        up = &uv[0]
    with nogil:
        act_forward(kind, &gv[0], up, &ov[0], n, nthreads)
    return out


def gelu_tanh(x, out, int nthreads=1):
    """out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (any shape; out may be x)

    Computed as x * sigmoid(2 y), the same function without the cancellation for x < 0.
    """
    return _act(SLMX_ACT_GELU, x, None, out, nthreads)


def silu(x, out, int nthreads=1):
    """out = x * sigmoid(x)   (any shape; out may be x)"""
    return _act(SLMX_ACT_SILU, x, None, out, nthreads)


def geglu(gate, up, out, int nthreads=1):
    """out = gelu_tanh(gate) * up   gate, up, out (R, F) (any equal shapes; out may be either)"""
    return _act(SLMX_ACT_GELU, gate, up, out, nthreads)


def swiglu(gate, up, out, int nthreads=1):
    """out = silu(gate) * up   gate, up, out (R, F) (any equal shapes; out may be either)"""
    return _act(SLMX_ACT_SILU, gate, up, out, nthreads)


# ----------------------------------------------------------------------------- elementwise

cdef void binary_forward(int op, const float *a, const float *b, float *out, Py_ssize_t n,
                         int nthreads) noexcept nogil:
    """out = a + b (op 0) or a * b (op 1), flat over n elements"""
    cdef int lvl = slmx_simd_level()
    cdef Py_ssize_t nchunks = (n + CHUNK - 1) // CHUNK, c, lo
    cdef int nt = _nt(n, nthreads)
    if nt == 1 or nchunks == 1:
        slmx_ops_binary(lvl, op, a, b, out, n)
        return
    for c in prange(nchunks, num_threads=nt, schedule="static"):
        lo = c * CHUNK
        slmx_ops_binary(lvl, op, a + lo, b + lo, out + lo, min(CHUNK, n - lo))


cdef object _binary(int op, object a, object b, object out, int nthreads):
    _f32c(a, "a")
    _f32c(b, "b")
    _f32c(out, "out")
    _same(a, "a", b, "b")
    _same(a, "a", out, "out")
    _alias(b, "b", out)
    cdef Py_ssize_t n = a.size
    if n == 0:
        return out
    cdef const float[::1] av = a.reshape(-1)
    cdef const float[::1] bv = b.reshape(-1)
    cdef float[::1] ov = out.reshape(-1)
    with nogil:
        binary_forward(op, &av[0], &bv[0], &ov[0], n, nthreads)
    return out


def add(a, b, out, int nthreads=1):
    """out = a + b   (equal shapes; out may be a or b: the residual add)"""
    return _binary(0, a, b, out, nthreads)


def add_inplace(a, b, int nthreads=1):
    """a += b   (equal shapes)"""
    return _binary(0, a, b, a, nthreads)


def mul(a, b, out, int nthreads=1):
    """out = a * b   (equal shapes; out may be a or b)"""
    return _binary(1, a, b, out, nthreads)


def scale(x, float s, out, int nthreads=1):
    """out = s * x   (equal shapes; out may be x)"""
    _f32c(x, "x")
    _f32c(out, "out")
    _same(x, "x", out, "out")
    cdef Py_ssize_t n = x.size, nchunks, c, lo
    if n == 0:
        return out
    cdef float[::1] xv = x.reshape(-1)
    cdef float[::1] ov = out.reshape(-1)
    cdef int lvl = slmx_simd_level()
    cdef int nt = _nt(n, nthreads)
    nchunks = (n + CHUNK - 1) // CHUNK
    with nogil:
        if nt == 1 or nchunks == 1:
            slmx_ops_scale(lvl, &xv[0], s, &ov[0], n)
        else:
            for c in prange(nchunks, num_threads=nt, schedule="static"):
                lo = c * CHUNK
                slmx_ops_scale(lvl, &xv[0] + lo, s, &ov[0] + lo, min(CHUNK, n - lo))
    return out


# ----------------------------------------------------------------------------- RoPE

cdef void rope_forward_rows(float *x, Py_ssize_t t0, Py_ssize_t t1, Py_ssize_t H, Py_ssize_t D,
                            const int64_t *pos64, const int32_t *pos32, float theta_scale,
                            float freq_scale, const float *freq_factors, Py_ssize_t half,
                            float sin_sign, bint neox, int lvl) noexcept nogil:
    """rotate rows t0..t1 of x (T, H, D) in place: the first 2*half dims of every head"""
    cdef float c[ROPE_MAX_HALF]
    cdef float s[ROPE_MAX_HALF]
    cdef Py_ssize_t t, h
    cdef float p
    for t in range(t0, t1):
        p = <float>(pos64[t] if pos64 != NULL else pos32[t])
        slmx_rope_cache(p, theta_scale, freq_scale, freq_factors, half, sin_sign, c, s)
        for h in range(H):
            slmx_ops_rope_rotate(lvl, x + (t * H + h) * D, c, s, half, neox)


def rope(x, positions, float base, bint neox, int nthreads=1, float freq_scale=1.0,
         freq_factors=None, Py_ssize_t n_rot=-1, bint inverse=False):
    """Rotary position embedding, in place: x (T, H, D) float32, positions (T,) int32/int64.

    Pair i (i < n_rot/2) of every head is rotated by theta_i = pos * freq_scale * base^(-2i/n_rot)
    (divided by freq_factors[i] when given, Llama 3 style). neox=True pairs (i, i + n_rot/2)
    (Gemma, Qwen2); neox=False pairs (2i, 2i+1) (Llama GGUF). Dims >= n_rot (default D) are
    left alone. inverse=True rotates by -theta (the backward of the forward rotation).
    theta_i follows ggml: theta_0 = pos (float), theta_{i+1} = theta_i * powf(base, -2/n_rot).
    """
    _f32c(x, "x")
    if x.ndim != 3:
        raise ValueError(f"x: expected shape (T, H, D), got {x.shape}")
    cdef Py_ssize_t T = x.shape[0], H = x.shape[1], D = x.shape[2]
    if n_rot < 0:
        n_rot = D
    if n_rot % 2 or n_rot > D:
        raise ValueError(f"n_rot={n_rot} must be even and <= D={D}")
    cdef Py_ssize_t half = n_rot // 2
    if half > ROPE_MAX_HALF:
        raise ValueError(f"n_rot={n_rot} too large (max {2 * ROPE_MAX_HALF})")
    if not isinstance(positions, np.ndarray) or positions.ndim != 1 or positions.shape[0] != T:
        raise ValueError(f"positions: expected an ndarray of shape ({T},)")
    if positions.dtype != np.int32 and positions.dtype != np.int64:
        raise ValueError(f"positions: expected int32 or int64, got {positions.dtype}")
    if not positions.flags.c_contiguous:
        raise ValueError("positions: must be contiguous")
    cdef const float *ffp = NULL
    cdef float[::1] ffv
    if freq_factors is not None:
        _f32c(freq_factors, "freq_factors")
        if freq_factors.ndim != 1 or freq_factors.shape[0] < half:
            raise ValueError(f"freq_factors: expected shape ({half},), got {freq_factors.shape}")
        ffv = freq_factors
        ffp = &ffv[0]
    if T == 0 or H == 0 or half == 0:
        return x
    cdef float[:, :, ::1] xv = x
    cdef const int64_t[::1] p64
    cdef const int32_t[::1] p32
    cdef const int64_t *pp64 = NULL
    cdef const int32_t *pp32 = NULL
    if positions.dtype == np.int64:
        p64 = positions
        pp64 = &p64[0]
    else:
        p32 = positions
        pp32 = &p32[0]
    cdef float minus_two = -2.0
    cdef float theta_scale = powf(base, minus_two / <float>n_rot)  # as ggml: powf(base, -2.0f/n_dims)
    cdef float sin_sign = -1.0 if inverse else 1.0
    cdef int lvl = slmx_simd_level()
    cdef int nt = _nt(T * H * D, nthreads)
    cdef Py_ssize_t t
    cdef float *xp = &xv[0, 0, 0]
    with nogil:
        if nt == 1 or T == 1:
            rope_forward_rows(xp, 0, T, H, D, pp64, pp32, theta_scale, freq_scale, ffp, half,
                              sin_sign, neox, lvl)
        else:
            for t in prange(T, num_threads=nt, schedule="static"):
                rope_forward_rows(xp, t, t + 1, H, D, pp64, pp32, theta_scale, freq_scale, ffp,
                                  half, sin_sign, neox, lvl)
    return x


# ----------------------------------------------------------------------------- fp16 rounding (ggml)

cdef extern from "f16_simd.h" nogil:
    void slmx_f16_round(int lvl, float *x, long n)
    void slmx_gelu_f16_init()
    void slmx_geglu_f16(int lvl, const float *g, const float *u, float *out, long n)

slmx_gelu_f16_init()


def round_f16(x, int nthreads=1):
    """x := float32(float16(x)) in place, round to nearest even (an fp16 KV cache's values)"""
    _f32c(x, "x")
    cdef Py_ssize_t n = x.size, c, nchunks
    if n == 0:
        return x
    cdef float[::1] xv = x.reshape(-1)
    cdef float *p = &xv[0]
    cdef int lvl = slmx_simd_level()
    cdef int nt = _nt(n, nthreads)
    nchunks = (n + CHUNK - 1) // CHUNK
    with nogil:
        if nt == 1:
            slmx_f16_round(lvl, p, n)
        else:
            for c in prange(nchunks, num_threads=nt, schedule="static"):
                slmx_f16_round(lvl, p + c * CHUNK, min(<Py_ssize_t>CHUNK, n - c * CHUNK))
    return x


def geglu_f16(gate, up, out, int nthreads=1):
    """out = gelu16(gate) * up, GELU through an fp16 table as ggml's CPU backend computes it

    gelu16(x) = 0 for x <= -10, x for x >= 10, else fp16(gelu_tanh(fp16(x))). gate, up, out equal
    shapes; out may be either input.
    """
    _f32c(gate, "gate")
    _f32c(up, "up")
    _f32c(out, "out")
    _same(gate, "gate", up, "up")
    _same(gate, "gate", out, "out")
    _alias(up, "up", out)
    cdef Py_ssize_t n = gate.size, c, nchunks
    if n == 0:
        return out
    cdef const float[::1] gv = gate.reshape(-1)
    cdef const float[::1] uv = up.reshape(-1)
    cdef float[::1] ov = out.reshape(-1)
    cdef const float *gp = &gv[0]
    cdef const float *up_ = &uv[0]
    cdef float *op = &ov[0]
    cdef int nt = _nt(n, nthreads)
    cdef int lvl = slmx_simd_level()
    nchunks = (n + CHUNK - 1) // CHUNK
    with nogil:
        if nt == 1:
            slmx_geglu_f16(lvl, gp, up_, op, n)
        else:
            for c in prange(nchunks, num_threads=nt, schedule="static"):
                slmx_geglu_f16(lvl, gp + c * CHUNK, up_ + c * CHUNK, op + c * CHUNK,
                               min(<Py_ssize_t>CHUNK, n - c * CHUNK))
    return out
