# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused steps of a transformer block for few activation rows (decode, small batches).

A decode step is dominated by call and parallel-region overhead on the small per-layer
matrices, not by arithmetic. These entries do several steps of the block in one call and one
OpenMP region, with the same kernels (quant_simd.h, ops_core_simd.h, f16_simd.h) in the same
order as the separate calls, so the results are bit-identical to them:

``LinearGroup``: out_i = norm(x) W_i^T (+ b_i) for up to 3 weights that share the input (q, k, v;
  or gate, up): RMSNorm of x and its 8-bit quantization done once, every weight streamed in one
  parallel region (each thread a contiguous share of each weight's rows), optionally the GLU
  (act(gate) * up) applied by each thread to the rows it just computed, and optionally an
  epilogue out = rmsnorm(out) then residual += out (Gemma's post-norms and the residual add).
``qk_rope``: per-head RMSNorm of q and k, RoPE of both (by a ``rope_table`` shared by the layers
  with the same RoPE parameters), the fp16 rounding of q, k, v, and the store of k, v into the
  KV cache rows in the cache's format, in one call.

Only for M <= ``LinearGroup.max_rows`` rows (below linear's AMX/multi-pass thresholds) and
block-quantized or F16/BF16 weights; the transformer uses the separate kernels otherwise.
"""
import numpy as np
cimport numpy as cnp
cimport openmp
from cython.parallel cimport parallel, threadid
from libc.math cimport powf
from libc.stdint cimport uint8_t, int32_t, int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from slmx import qtypes

include "simd.pxi"

cnp.import_array()

include "quant_decl.pxi"

cdef extern from "ops_core_simd.h" nogil:
    int SLMX_ACT_GELU, SLMX_ACT_SILU
    void slmx_ops_rmsnorm_row(int lvl, const float *x, const float *w, float *out, long C, float eps)
    void slmx_ops_act(int lvl, int kind, const float *g, const float *u, float *out, long n)
    void slmx_ops_rope_rotate(int lvl, float *x, const float *c, const float *s, long half, int neox)
    void slmx_rope_cache(float pos, float theta_scale, float freq_scale, const float *ff, long half,
                         float sin_sign, float *c, float *s)

cdef extern from "f16_simd.h" nogil:
    void slmx_f16_round(int lvl, float *x, long n)
    void slmx_gelu_f16_init()
    void slmx_geglu_f16(int lvl, const float *g, const float *u, float *out, long n)

cdef extern from "kvq_simd.h" nogil:
    long slmx_kvq_row_bytes(int t, long D)
    void slmx_kvq_quant_row(int t, const float *x, long D, uint8_t *dst)

slmx_f16_table_init()
slmx_gelu_f16_init()

# Rows of one output range a work item covers (quant.linear's row group without AMX).
DEF GROUP = 16
DEF MAXW = 3
# linear uses AMX tiles from 16 rows on (and passes of X_PASS_BYTES of activations).
DEF MAX_ROWS = 15
DEF ROPE_MAX_HALF = 2048

GLU = {None: 0, "geglu": 1, "swiglu": 2, "geglu_f16": 3}


cdef struct Plan:
    int nw
    int K
    int glu
    int types[MAXW]
    const uint8_t *w[MAXW]
    size_t rb[MAXW]
    int64_t N[MAXW]
    const float *bias[MAXW]
    int xsrc[MAXW]          # weight whose quantized activations weight i reads (itself or earlier)
    size_t ldx[MAXW]
    size_t xoff[MAXW]       # byte offset of weight i's activation rows in the xq buffer


cdef object _f32_2d(object a, str name):
    if not (isinstance(a, np.ndarray) and cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_FLOAT32
            and cnp.PyArray_NDIM(<cnp.ndarray>a) == 2 and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)):
        raise ValueError(f"{name}: expected a float32 C-contiguous 2-D array, got "
                         f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    return a


cdef object _f32_vec(object a, Py_ssize_t n, str name):
    if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 1 and a.shape[0] == n
            and a.flags.c_contiguous):
        raise ValueError(f"{name}: expected float32 ({n},), got {getattr(a, 'dtype', type(a).__name__)} "
                         f"{getattr(a, 'shape', '')}")
    return a


cdef void _work(const Plan *p, int level, const uint8_t *xq, int M, float **outs, uint8_t *scratch,
                int tid, int nt) noexcept nogil:
    """Thread tid of nt: its contiguous share of each weight's row groups, then the GLU on it."""
    cdef int i
    cdef int64_t ng, g0, g1, n0, n1, m
    cdef int64_t gn0 = 0, gn1 = 0
    for i in range(p.nw):
        ng = (p.N[i] + GROUP - 1) // GROUP
        g0 = ng * tid // nt
        g1 = ng * (tid + 1) // nt
        n0 = g0 * GROUP
        n1 = g1 * GROUP
        if n1 > p.N[i]:
            n1 = p.N[i]
        if i == 0:
            gn0, gn1 = n0, n1
        if n1 <= n0:
            continue
        slmx_q_linear_range(level, 0, p.types[i], p.w[i], p.rb[i], n0, n1, xq + p.xoff[i], p.ldx[i], M, p.K,
                            outs[i], p.N[i], scratch)
        if p.bias[i] != NULL:
            for m in range(M):
                _add_into(outs[i] + m * p.N[i] + n0, p.bias[i] + n0, n1 - n0)
    if p.glu and gn1 > gn0:
        for m in range(M):
            if p.glu == 3:
                slmx_geglu_f16(level, outs[0] + m * p.N[0] + gn0, outs[1] + m * p.N[0] + gn0,
                               outs[0] + m * p.N[0] + gn0, gn1 - gn0)
            else:
                slmx_ops_act(level, SLMX_ACT_GELU if p.glu == 1 else SLMX_ACT_SILU,
                             outs[0] + m * p.N[0] + gn0, outs[1] + m * p.N[0] + gn0,
                             outs[0] + m * p.N[0] + gn0, gn1 - gn0)


cdef inline void _add_into(float *a, const float *b, int64_t n) noexcept nogil:
    cdef int64_t j
    for j in range(n):
        a[j] = a[j] + b[j]


cdef class LinearGroup:
    """out_i (M, N_i) = rmsnorm(x) W_i^T (+ b_i) for weights W_i (N_i, K) sharing x (M, K), one call.

    weights: 1 to 3 (data, type_id, bias) with data uint8 (N_i, row_bytes) blocks (or F16/BF16
    rows), bias float32 (N_i,) or None; not F32 (the transformer's F32 weights use gemm).
    norm: float32 (K,) RMSNorm weight applied to x first (None: x as is), eps its epsilon.
    glu: None, "geglu", "geglu_f16" or "swiglu": with two weights of equal N, out_0 := act(out_0) * out_1.
    post_norm: float32 (N_0,) for one weight: out_0 := rmsnorm(out_0) after the product. With
    one weight, `residual` given to the call: residual += out_0 last.
    The arrays are kept referenced (not copied). Results equal the separate rmsnorm, linear,
    GLU, rmsnorm and add calls bit for bit.
    """
    cdef Plan p
    cdef const float *norm_w
    cdef const float *post_w
    cdef float eps
    cdef size_t xq_bytes
    cdef size_t panel
    cdef int64_t wbytes
    cdef readonly int max_rows
    cdef object _keep
    cdef uint8_t *_buf          # scratch kept across calls: xq rows, normalized x, per-thread panels
    cdef size_t _buf_bytes
    cdef bint _busy             # set (under the GIL) while a call uses _buf; a concurrent call allocates its own

    def __dealloc__(self):
        free(self._buf)

    def __init__(self, weights, norm=None, float eps=0.0, glu=None, post_norm=None):
        weights = list(weights)
        if not 1 <= len(weights) <= MAXW:
            raise ValueError(f"LinearGroup: 1 to {MAXW} weights, got {len(weights)}")
        if glu not in GLU:
            raise ValueError(f"LinearGroup: glu must be one of {list(GLU)}, got {glu!r}")
        keep = []
        cdef int i, j, t, bs
        cdef Py_ssize_t K = -1, N
        cdef size_t rb, ldx_max = 0
        self.p.nw = len(weights)
        self.panel = 64
        self.wbytes = 0
        self.xq_bytes = 0
        for i, (data, t, bias) in enumerate(weights):
            bs = slmx_block_size(t)
            if bs == 0 or t == qtypes.F32:
                raise ValueError(f"LinearGroup: weight {i}: type id {t} is not a block-quantized, F16 or BF16 type")
            if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                    and data.flags.c_contiguous):
                raise ValueError(f"LinearGroup: weight {i} must be a uint8 C-contiguous (N, row_bytes) array")
            N = data.shape[0]
            rb = data.shape[1]
            if rb % slmx_type_size(t):
                raise ValueError(f"LinearGroup: weight {i}: rows of {rb} bytes are not whole blocks")
            if K < 0:
                K = rb // slmx_type_size(t) * bs
            elif <size_t>(K // bs * slmx_type_size(t)) != rb or K % bs:
                raise ValueError(f"LinearGroup: weight {i}: rows of {rb} bytes do not hold K={K} elements")
            if N == 0 or K == 0:
                raise ValueError(f"LinearGroup: weight {i} is empty")
            self.p.types[i] = t
            self.p.w[i] = <const uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>data)
            self.p.rb[i] = rb
            self.p.N[i] = N
            self.p.bias[i] = NULL
            if bias is not None:
                _f32_vec(bias, N, f"LinearGroup: bias {i}")
                self.p.bias[i] = <const float *>cnp.PyArray_DATA(<cnp.ndarray>bias)
            self.wbytes += N * rb
            self.panel = max(self.panel, slmx_panel_bytes(t, 0))
            keep += [data, bias]
        self.p.K = <int>K
        for i in range(self.p.nw):
            t = self.p.types[i]
            self.p.ldx[i] = K * 4 if slmx_is_float(t) else slmx_xq_row_bytes(t, <int>K)
            ldx_max = max(ldx_max, self.p.ldx[i])
            self.p.xsrc[i] = i
            for j in range(i):
                if self.p.types[j] == t:
                    self.p.xsrc[i] = j
                    break
        self.max_rows = <int>min(MAX_ROWS, X_PASS_BYTES // ldx_max)
        for i in range(self.p.nw):                   # offsets in the xq buffer (per max_rows rows)
            if self.p.xsrc[i] == i:
                self.p.xoff[i] = self.xq_bytes
                self.xq_bytes += (self.p.ldx[i] * self.max_rows + 63) // 64 * 64
            else:
                self.p.xoff[i] = self.p.xoff[self.p.xsrc[i]]
        self.p.glu = GLU[glu]
        if self.p.glu:
            if self.p.nw != 2 or self.p.N[0] != self.p.N[1]:
                raise ValueError("LinearGroup: glu needs two weights (gate, up) of the same N")
        self.norm_w = NULL
        self.post_w = NULL
        self.eps = eps
        if norm is not None:
            _f32_vec(norm, K, "LinearGroup: norm")
            self.norm_w = <const float *>cnp.PyArray_DATA(<cnp.ndarray>norm)
        if post_norm is not None:
            if self.p.nw != 1:
                raise ValueError("LinearGroup: post_norm needs exactly one weight")
            _f32_vec(post_norm, self.p.N[0], "LinearGroup: post_norm")
            self.post_w = <const float *>cnp.PyArray_DATA(<cnp.ndarray>post_norm)
        self._keep = (keep, norm, post_norm)

    @property
    def n_weights(self):
        return self.p.nw

    def __call__(self, x, outs, int nthreads, residual=None):
        """Run on x float32 (M, K), M <= max_rows; outs: one float32 (M, N_i) array per weight
        (overwritten; with glu outs[0] ends as act(gate) * up); residual: float32 (M, N_0) += the
        (post-normed) out_0 (one weight only). x may not alias an output."""
        cdef int i, nw = self.p.nw
        _f32_2d(x, "LinearGroup: x")
        cdef Py_ssize_t M = cnp.PyArray_DIM(<cnp.ndarray>x, 0)
        if cnp.PyArray_DIM(<cnp.ndarray>x, 1) != self.p.K:
            raise ValueError(f"LinearGroup: x has {x.shape[1]} columns, the weights {self.p.K}")
        if M < 1 or M > self.max_rows:
            raise ValueError(f"LinearGroup: {M} rows; 1 to {self.max_rows} supported")
        if len(outs) != nw:
            raise ValueError(f"LinearGroup: {nw} outputs expected, got {len(outs)}")
        cdef float *op[MAXW]
        for i in range(nw):
            o = _f32_2d(outs[i], f"LinearGroup: outs[{i}]")
            if cnp.PyArray_DIM(<cnp.ndarray>o, 0) != M or cnp.PyArray_DIM(<cnp.ndarray>o, 1) != self.p.N[i]:
                raise ValueError(f"LinearGroup: outs[{i}] must be ({M}, {self.p.N[i]}), got {o.shape}")
            op[i] = <float *>cnp.PyArray_DATA(<cnp.ndarray>o)
        cdef float *res = NULL
        if residual is not None:
            if nw != 1:
                raise ValueError("LinearGroup: residual needs exactly one weight")
            _f32_2d(residual, "LinearGroup: residual")
            if residual.shape != (M, self.p.N[0]):
                raise ValueError(f"LinearGroup: residual must be ({M}, {self.p.N[0]}), got {residual.shape}")
            res = <float *>cnp.PyArray_DATA(<cnp.ndarray>residual)
        cdef int nt = nthreads
        if nt < 1:
            from slmx._kernels import cpu
            nt = cpu.resolve_threads(None)
        if self.wbytes * M < PAR_MIN_BYTES:
            nt = 1
        cdef const float *xp = <const float *>cnp.PyArray_DATA(<cnp.ndarray>x)
        cdef size_t need = (self.xq_bytes + self.max_rows * self.p.K * 4 + nt * self.panel + 127) // 64 * 64
        cdef bint own = self._busy
        cdef uint8_t *buf
        if own:
            buf = <uint8_t *>aligned_alloc(64, need)
        else:
            if self._buf_bytes < need:
                free(self._buf)
                self._buf_bytes = 0
                self._buf = <uint8_t *>aligned_alloc(64, need)
                if self._buf != NULL:
                    self._buf_bytes = need
            buf = self._buf
        if buf == NULL:
            raise MemoryError("LinearGroup: could not allocate scratch")
        self._busy = True
        cdef float *xn = <float *>(buf + self.xq_bytes)
        cdef uint8_t *scratch = buf + (self.xq_bytes + M * self.p.K * 4 + 63) // 64 * 64
        cdef int level = slmx_simd_level()
        cdef Py_ssize_t m
        cdef int tid, nth
        cdef int64_t N0 = self.p.N[0], j
        with nogil:
            if self.norm_w != NULL:
                for m in range(M):
                    slmx_ops_rmsnorm_row(level, xp + m * self.p.K, self.norm_w, xn + m * self.p.K, self.p.K, self.eps)
            else:
                memcpy(xn, xp, M * self.p.K * 4)
            for i in range(nw):
                if self.p.xsrc[i] == i:
                    if slmx_is_float(self.p.types[i]):
                        memcpy(buf + self.p.xoff[i], xn, M * self.p.K * 4)
                    else:
                        for m in range(M):
                            slmx_q_quantize_x(level, self.p.types[i], xn + m * self.p.K, self.p.K,
                                              buf + self.p.xoff[i] + m * self.p.ldx[i])
            if nt <= 1:
                _work(&self.p, level, buf, <int>M, op, scratch, 0, 1)
            else:
                with parallel(num_threads=nt):
                    tid = threadid()
                    nth = openmp.omp_get_num_threads()
                    _work(&self.p, level, buf, <int>M, op, scratch + tid * self.panel, tid, nth)
            if self.post_w != NULL:
                for m in range(M):
                    slmx_ops_rmsnorm_row(level, op[0] + m * N0, self.post_w, op[0] + m * N0, N0, self.eps)
            if res != NULL:
                for j in range(M * N0):
                    res[j] = res[j] + op[0][j]
        if own:
            free(buf)
        else:
            self._busy = False
        return outs


def rope_table(positions, float base, Py_ssize_t D, float freq_scale=1.0, freq_factors=None):
    """float32 (T, 2, D // 2): row t = cos, sin of the RoPE angles of positions[t] (int32 (T,)),
    exactly those ops_core.rope rotates by (n_rot = D, base, freq_scale, freq_factors (D // 2,)).
    Layers sharing the RoPE parameters share one table (qk_rope's `table`)."""
    if D <= 0 or D % 2 or D // 2 > ROPE_MAX_HALF:
        raise ValueError(f"rope_table: head_dim {D} must be even, positive and at most {2 * ROPE_MAX_HALF}")
    if not (isinstance(positions, np.ndarray) and positions.dtype == np.int32 and positions.ndim == 1
            and positions.flags.c_contiguous):
        raise ValueError("rope_table: positions must be a contiguous int32 (T,) array")
    cdef Py_ssize_t half = D // 2, T = positions.shape[0], t
    cdef const float *ff = NULL
    if freq_factors is not None:
        if not (isinstance(freq_factors, np.ndarray) and freq_factors.dtype == np.float32
                and freq_factors.ndim == 1 and freq_factors.shape[0] >= half and freq_factors.flags.c_contiguous):
            raise ValueError(f"rope_table: freq_factors must be float32 ({half},)")
        ff = <const float *>cnp.PyArray_DATA(<cnp.ndarray>freq_factors)
    out = np.empty((T, 2, half), np.float32)
    cdef float *op = <float *>cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef const int32_t *pp = <const int32_t *>cnp.PyArray_DATA(<cnp.ndarray>positions)
    cdef float minus_two = -2.0
    cdef float theta_scale = powf(base, minus_two / <float>D)      # as ops_core.rope
    with nogil:
        for t in range(T):
            slmx_rope_cache(<float>pp[t], theta_scale, freq_scale, ff, half, 1.0, op + 2 * t * half,
                            op + (2 * t + 1) * half)
    return out


cdef object _kv_dest(object a, Py_ssize_t Hk, Py_ssize_t rb, int kv_type, str name):
    if not (isinstance(a, np.ndarray) and a.ndim == 3 and a.flags.c_contiguous
            and a.dtype == (np.float32 if kv_type == 0 else np.uint8)
            and a.shape[1] == Hk and a.shape[2] * a.itemsize == rb):
        raise ValueError(f"qk_rope: {name} must be the C-contiguous cache array (rows, {Hk}, row) of kv_type {kv_type}")
    return a


def qk_rope(q, k, v, positions, q_norm, k_norm, float eps, table, bint neox, bint f16=False,
            kc=None, vc=None, Py_ssize_t ring=0, int kv_type=0):
    """In place, for q (T, H, D), k (T, Hkv, D), v (T, Hkv, D) float32 at positions (T,) int32:
    q, k := rmsnorm of every head row by q_norm, k_norm (D,) (skipped when None), then RoPE by
    `table` (rope_table of these positions; neox pairing or not), then with f16 q, k, v :=
    fp16-rounded. Equals rmsnorm, rope and round_f16 called one after the other, bit for bit.
    With kc, vc (a KV cache layer's arrays: (rows, Hkv, D) float32, or uint8 rows of kv_type
    F16 (1) / Q4_0 (2) / Q8_0 (8) as attention.kv_quantize writes them) the final k, v of token t
    are also written to row positions[t] (positions[t] % ring when ring > 0) — the cache store.
    """
    for a, nm in ((q, "q"), (k, "k"), (v, "v")):
        if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 3 and a.flags.c_contiguous):
            raise ValueError(f"qk_rope: {nm} must be a float32 C-contiguous (T, heads, D) array")
    cdef Py_ssize_t T = q.shape[0], H = q.shape[1], D = q.shape[2], Hk = k.shape[1]
    if k.shape[0] != T or k.shape[2] != D or v.shape != k.shape:
        raise ValueError(f"qk_rope: k {k.shape} / v {v.shape} do not match q {q.shape}")
    cdef Py_ssize_t half = D // 2
    if not (isinstance(positions, np.ndarray) and positions.dtype == np.int32 and positions.ndim == 1
            and positions.shape[0] == T and positions.flags.c_contiguous):
        raise ValueError(f"qk_rope: positions must be int32 ({T},)")
    if not (isinstance(table, np.ndarray) and table.dtype == np.float32 and table.flags.c_contiguous
            and table.shape == (T, 2, half)):
        raise ValueError(f"qk_rope: table must be float32 ({T}, 2, {half}) (rope_table)")
    cdef const float *qn = NULL
    cdef const float *kn = NULL
    if (q_norm is None) != (k_norm is None):
        raise ValueError("qk_rope: give both q_norm and k_norm or neither")
    if q_norm is not None:
        qn = <const float *>cnp.PyArray_DATA(<cnp.ndarray>_f32_vec(q_norm, D, "qk_rope: q_norm"))
        kn = <const float *>cnp.PyArray_DATA(<cnp.ndarray>_f32_vec(k_norm, D, "qk_rope: k_norm"))
    cdef const int32_t *pp = <const int32_t *>cnp.PyArray_DATA(<cnp.ndarray>positions)
    cdef Py_ssize_t t, h, rb = 0, rows = 0, row
    cdef uint8_t *kd = NULL
    cdef uint8_t *vd = NULL
    if (kc is None) != (vc is None):
        raise ValueError("qk_rope: give both kc and vc or neither")
    if kc is not None:
        rb = slmx_kvq_row_bytes(kv_type, D)
        if rb == 0 or (kv_type in (2, 8) and D % 32):
            raise ValueError(f"qk_rope: kv_type {kv_type} cannot store rows of {D} elements")
        _kv_dest(kc, Hk, rb, kv_type, "kc")
        _kv_dest(vc, Hk, rb, kv_type, "vc")
        rows = kc.shape[0]
        if vc.shape[0] != rows or ring < 0 or ring > rows:
            raise ValueError(f"qk_rope: kc, vc of {kc.shape[0]}, {vc.shape[0]} rows, ring {ring}")
        for t in range(T):
            row = pp[t] % ring if ring > 0 else pp[t]
            if row < 0 or row >= rows:
                raise ValueError(f"qk_rope: position {pp[t]} is outside the cache of {rows} rows")
        kd = <uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>kc)
        vd = <uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>vc)
    cdef float *qp = <float *>cnp.PyArray_DATA(<cnp.ndarray>q)
    cdef float *kp = <float *>cnp.PyArray_DATA(<cnp.ndarray>k)
    cdef float *vp = <float *>cnp.PyArray_DATA(<cnp.ndarray>v)
    cdef const float *tp = <const float *>cnp.PyArray_DATA(<cnp.ndarray>table)
    cdef int lvl = slmx_simd_level()
    with nogil:
        if qn != NULL:
            for h in range(T * H):
                slmx_ops_rmsnorm_row(lvl, qp + h * D, qn, qp + h * D, D, eps)
            for h in range(T * Hk):
                slmx_ops_rmsnorm_row(lvl, kp + h * D, kn, kp + h * D, D, eps)
        for t in range(T):
            for h in range(H):
                slmx_ops_rope_rotate(lvl, qp + (t * H + h) * D, tp + 2 * t * half, tp + (2 * t + 1) * half, half, neox)
            for h in range(Hk):
                slmx_ops_rope_rotate(lvl, kp + (t * Hk + h) * D, tp + 2 * t * half, tp + (2 * t + 1) * half, half, neox)
        if f16:
            slmx_f16_round(lvl, qp, T * H * D)
            slmx_f16_round(lvl, kp, T * Hk * D)
            slmx_f16_round(lvl, vp, T * Hk * D)
        if kd != NULL:
            for t in range(T):
                row = pp[t] % ring if ring > 0 else pp[t]
                for h in range(Hk):
                    slmx_kvq_quant_row(kv_type, kp + (t * Hk + h) * D, D, kd + (row * Hk + h) * rb)
                    slmx_kvq_quant_row(kv_type, vp + (t * Hk + h) * D, D, vd + (row * Hk + h) * rb)
    return q, k, v
