# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Forward and backward kernels for training (fp32; bf16 matmuls optional).

Shapes use N = B*T rows (tokens), C = d_model. Every backward ADDS (+=) into weight gradients
and writes (=) activation gradients unless its docstring says otherwise.

    gemm            c (M, N) (+)= op(a) (M, K) op(b) (K, N)        packed, cache-blocked, OpenMP
    linear_forward  y = x W^T (+ residual);  linear_backward  dx (+)= dy W, dW += dy^T x
    embedding_forward / embedding_backward (dE[ids[n]] += dx[n], race-free by vocabulary range)
    rmsnorm_forward (saves 1/rms) / rmsnorm_backward
    rope_forward / rope_backward (interleaved pairs (2i, 2i+1); backward rotates by -theta)
    attention_forward (causal, GQA, saves log-sum-exp) / attention_backward (recomputes scores
        tile by tile: no T x T buffer; dK, dV summed over the query heads of a group)
    swiglu_forward / swiglu_backward
    cross_entropy_forward_backward: per row logsumexp, loss, and dlogits = (softmax - onehot) *
        scale written over the logits; targets < 0 ignored (zero gradient)

The SIMD path (scalar / AVX2 / AVX-512; AMX for bf16 matmuls when the OS grants it) is chosen at
run time from slmx_simd_level(); ``nthreads`` is the count resolved by cpu.resolve_threads.
Reductions that feed weight gradients (the token sums of dW, the norm weights' row sums) run in
a fixed order that does not depend on the thread count, so results are reproducible, and
splitting a batch into micro-batches at sequence boundaries gives bit-identical sums.
"""
import threading

import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.stdint cimport uintptr_t, uint16_t, int32_t

include "simd.pxi"

cnp.import_array()

cdef extern from "train_gemm_simd.h" nogil:
    ctypedef void (*tg_ukr_t)(long, const float *, const float *, float *, long, int, int, int) noexcept nogil
    int tg_gemm_mr(int lvl)
    int tg_gemm_nr(int lvl)
    tg_ukr_t tg_gemm_ukr(int lvl)
    void tg_pack_a_lvl(int lvl, const float *A, long rs, long cs, long mc, long kc, int MR, float *dst, int rnd)
    void tg_pack_b_lvl(int lvl, const float *B, long rs, long cs, long kc, long nc, int NR, float *dst, int rnd)
    void tg_amx_begin()
    void tg_amx_end()
    void tg_sfence()
    void tg_pack_a_amx(const float *A, long rs, long cs, long mc, long kc, uint16_t *dst)
    void tg_pack_b_amx(const float *B, long rs, long cs, long kc, long nc, uint16_t *dst)
    void tg_ukr_amx(long kcp, const uint16_t *A, const uint16_t *B, float *C, long ldc,
                    int mr, int nr, int acc, float *tmp)

# Blocking. fp32: the B panel (KC x 32 floats = 32 KiB) stays in L1 while A tiles stream from L2;
# AMX: bf16 panels of KC_AMX x 32. Module variables so that _set_blocking can try other sizes.
DEF KC_MAX = 1024
DEF NC_MAX = 8192
cdef Py_ssize_t KC = 256          # fp32: depth of a packed block
cdef Py_ssize_t MC_TARGET = 336   # fp32: rows of A packed at once (336 x 256 floats: L2)
cdef Py_ssize_t NC = 4096         # fp32: columns of B packed at once
cdef Py_ssize_t KC_AMX = 512      # AMX: depth of a packed block
cdef Py_ssize_t MC_AMX = 256      # AMX: rows of A packed at once (256 x 512 bf16 = 256 KiB)
cdef Py_ssize_t NC_AMX = 2048     # AMX: columns of B packed at once
DEF PAR_MIN_FMA = 262144          # M*N*K below this runs on one thread
DEF STREAM_MIN_FLOATS = 8388608   # outputs of at least 32 MiB bypass the caches (streaming stores)
DEF STREAM_MAX_K = 512            # ... when K fits one packed block


def _set_blocking(kc=256, mc=336, nc=4096, kc_amx=512, mc_amx=256, nc_amx=2048):
    """(tuning) GEMM block sizes; AMX sizes must be multiples of 32. Not thread-safe."""
    global KC, MC_TARGET, NC, KC_AMX, MC_AMX, NC_AMX
    if min(kc, mc, nc, kc_amx, mc_amx, nc_amx) <= 0 or (kc_amx | mc_amx | nc_amx) % 32:
        raise ValueError("block sizes must be positive (AMX: multiples of 32)")
    KC, MC_TARGET, NC = min(int(kc), KC_MAX), max(int(mc), 14), min(int(nc), NC_MAX)
    KC_AMX, MC_AMX, NC_AMX = int(kc_amx), int(mc_amx), int(nc_amx)


cdef inline Py_ssize_t _cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline Py_ssize_t _imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


# ----------------------------------------------------------------------------- workspace
# A 64-byte aligned scratch buffer grown on demand and reused across calls (no page faults per
# call); a call from a second Python thread while it is in use gets a private buffer.

cdef void *_ws_raw = NULL
cdef char *_ws = NULL
cdef size_t _ws_bytes = 0
_ws_lock = threading.Lock()


cdef class _Scratch:
    """Scratch memory for one kernel call: the shared buffer (locked) or a private one."""
    cdef char *ptr
    cdef void *own
    cdef bint locked

    def __cinit__(self, size_t nbytes):
        global _ws_raw, _ws, _ws_bytes
        self.own = NULL
        self.locked = _ws_lock.acquire(False)
        if self.locked:
            if nbytes > _ws_bytes:
                free(_ws_raw)
                _ws_raw = malloc(nbytes + 64)
                if _ws_raw == NULL:
                    _ws_bytes = 0
                    _ws = NULL
                    _ws_lock.release()
                    self.locked = False
                    raise MemoryError("train_ops workspace")
                _ws_bytes = nbytes
                _ws = <char *>((<uintptr_t>_ws_raw + 63) & ~(<uintptr_t>63))
            self.ptr = _ws
        else:
            self.own = malloc(nbytes + 64)
            if self.own == NULL:
                raise MemoryError("train_ops workspace")
            self.ptr = <char *>((<uintptr_t>self.own + 63) & ~(<uintptr_t>63))

    def release(self):
        if self.locked:
            _ws_lock.release()
            self.locked = False
        if self.own != NULL:
            free(self.own)
            self.own = NULL

    def __dealloc__(self):
        if self.locked:
            _ws_lock.release()
        if self.own != NULL:
            free(self.own)


# ----------------------------------------------------------------------------- GEMM driver

cdef int _use_amx(int lvl) noexcept nogil:
    return lvl >= SLMX_SIMD_BF16 and slmx_amx_usable()


cdef Py_ssize_t _depth(Py_ssize_t K, Py_ssize_t kc_block, bint amx) noexcept nogil:
    """depth of the packed blocks: kc_block when given, else K split into equal blocks <= KC"""
    cdef Py_ssize_t target = KC_AMX if amx else KC
    cdef Py_ssize_t kb = kc_block if kc_block > 0 else _cdiv(K, _cdiv(K, target)) if K > 0 else 1
    if K > 0 and kb > K:
        kb = K
    return kb


cdef size_t _gemm_ws_bytes(int lvl, bint amx, Py_ssize_t kcb) noexcept nogil:
    """scratch bytes one thread needs for depth blocks of kcb"""
    cdef int MR = tg_gemm_mr(lvl)
    cdef size_t kcp = (kcb + 31) & ~31
    if amx:
        return (<size_t>MC_AMX * kcp + kcp * NC_AMX) * 2 + 32 * 32 * 4 + 128
    return (<size_t>((MC_TARGET // MR) * MR) * kcb + <size_t>kcb * NC) * 4 + 128


cdef inline void _copy_tile(const float *D, Py_ssize_t ldd, float *C, Py_ssize_t ldc, Py_ssize_t mr,
                            Py_ssize_t nr) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(mr):
        memcpy(C + i * ldc, D + i * ldd, nr * sizeof(float))


cdef void _gemm_rect_f32(int lvl, int rnd, Py_ssize_t m0, Py_ssize_t m1, Py_ssize_t n0, Py_ssize_t n1,
                         Py_ssize_t K, Py_ssize_t kcb, const float *A, Py_ssize_t a_rs, Py_ssize_t a_cs,
                         const float *B, Py_ssize_t b_rs, Py_ssize_t b_cs, float *C, Py_ssize_t ldc,
                         int acc, const float *D, Py_ssize_t ldd, char *ws) noexcept nogil:
    """C[m0:m1, n0:n1] (+)= a[m0:m1, :] b[:, n0:n1] on one thread (fp32 micro-kernels).

    The depth is walked in blocks of kcb: each block's products are summed in registers from
    zero and then added to C, so C = (((C + s_0) + s_1) + ...) block by block. D (ldd): a matrix
    added to the product (C = D + a b), copied tile by tile into C just before its first block.
    """
    cdef int MR = tg_gemm_mr(lvl), NR = tg_gemm_nr(lvl)
    cdef Py_ssize_t MC = (MC_TARGET // MR) * MR
    cdef tg_ukr_t ukr = tg_gemm_ukr(lvl)
    cdef float *wa = <float *>ws
    cdef float *wb = wa + MC * kcb
    cdef Py_ssize_t jc, nc, pc, kc, ic, mc, jr, ir
    cdef int a2
    jc = n0
    while jc < n1:
        nc = _imin(NC, n1 - jc)
        pc = 0
        while pc < K:
            kc = _imin(kcb, K - pc)
            a2 = 1 if (acc > 0 or pc > 0) else (-1 if (acc < 0 and kc == K) else 0)
            tg_pack_b_lvl(lvl, B + pc * b_rs + jc * b_cs, b_rs, b_cs, kc, nc, NR, wb, rnd)
            ic = m0
            while ic < m1:
                mc = _imin(MC, m1 - ic)
                tg_pack_a_lvl(lvl, A + ic * a_rs + pc * a_cs, a_rs, a_cs, mc, kc, MR, wa, rnd)
                jr = 0
                while jr < nc:
                    ir = 0
                    while ir < mc:
                        if D != NULL and pc == 0:
                            _copy_tile(D + (ic + ir) * ldd + jc + jr, ldd, C + (ic + ir) * ldc + jc + jr, ldc,
                                       _imin(MR, mc - ir), _imin(NR, nc - jr))
                        ukr(kc, wa + ir * kc, wb + jr * kc, C + (ic + ir) * ldc + jc + jr, ldc,
                            <int>_imin(MR, mc - ir), <int>_imin(NR, nc - jr), 1 if D != NULL else a2)
                        ir += MR
                    jr += NR
                ic += mc
            pc += kc
        jc += nc
    tg_sfence()


cdef void _gemm_rect_amx(Py_ssize_t m0, Py_ssize_t m1, Py_ssize_t n0, Py_ssize_t n1,
                         Py_ssize_t K, Py_ssize_t kcb, const float *A, Py_ssize_t a_rs, Py_ssize_t a_cs,
                         const float *B, Py_ssize_t b_rs, Py_ssize_t b_cs, float *C, Py_ssize_t ldc,
                         int acc, const float *D, Py_ssize_t ldd, char *ws) noexcept nogil:
    """C[m0:m1, n0:n1] (+)= bf16(a) bf16(b) with fp32 accumulation, AMX tiles, one thread.

    kcb: depth block (each block is zero-padded to a multiple of 32 in the packed copies).
    """
    cdef Py_ssize_t kcbp = (kcb + 31) & ~31
    cdef uint16_t *wa = <uint16_t *>ws
    cdef uint16_t *wb = wa + MC_AMX * kcbp
    cdef float *tmp = <float *>(wb + kcbp * NC_AMX)
    cdef Py_ssize_t jc, nc, pc, kc, kcp, ic, mc, jr, ir
    cdef int a2
    tg_amx_begin()
    jc = n0
    while jc < n1:
        nc = _imin(NC_AMX, n1 - jc)
        pc = 0
        while pc < K:
            kc = _imin(kcb, K - pc)
            kcp = (kc + 31) & ~31
            a2 = 1 if (acc > 0 or pc > 0) else (-1 if (acc < 0 and kc == K) else 0)
            tg_pack_b_amx(B + pc * b_rs + jc * b_cs, b_rs, b_cs, kc, nc, wb)
            ic = m0
            while ic < m1:
                mc = _imin(MC_AMX, m1 - ic)
                tg_pack_a_amx(A + ic * a_rs + pc * a_cs, a_rs, a_cs, mc, kc, wa)
                jr = 0
                while jr < nc:
                    ir = 0
                    while ir < mc:
                        if D != NULL and pc == 0:
                            _copy_tile(D + (ic + ir) * ldd + jc + jr, ldd, C + (ic + ir) * ldc + jc + jr, ldc,
                                       _imin(32, mc - ir), _imin(32, nc - jr))
                        tg_ukr_amx(kcp, wa + ir * kcp, wb + jr * kcp, C + (ic + ir) * ldc + jc + jr, ldc,
                                   <int>_imin(32, mc - ir), <int>_imin(32, nc - jr), 1 if D != NULL else a2, tmp)
                        ir += 32
                    jr += 32
                ic += mc
            pc += kc
        jc += nc
    tg_amx_end()
    tg_sfence()


cdef void gemm_core(int lvl, int bf16, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                    const float *A, Py_ssize_t a_rs, Py_ssize_t a_cs,
                    const float *B, Py_ssize_t b_rs, Py_ssize_t b_cs,
                    float *C, Py_ssize_t ldc, int acc, Py_ssize_t kc_block, char *ws,
                    size_t ws_per_thread, int nthreads, const float *D=NULL, Py_ssize_t ldd=0) noexcept nogil:
    """C (M, N) (+)= a (M, K) b (K, N), a(i,k) = A[i a_rs + k a_cs], b(k,n) = B[k b_rs + n b_cs].

    bf16: operands rounded to bf16 (AMX tiles when usable), fp32 accumulation. kc_block > 0 fixes
    the depth blocks (each summed from zero, then added to C; see _gemm_rect_f32), 0: default.
    The output is split into nthreads rectangles along its longer side; each thread packs its
    own blocks. Every element of C is computed the same way whatever the split. D (ldd), when
    not NULL: C = D + a b (acc ignored).
    """
    cdef int amx = bf16 and _use_amx(lvl)
    cdef int unit_m = 32 if amx else tg_gemm_mr(lvl)
    cdef int unit_n = 32 if amx else tg_gemm_nr(lvl)
    cdef int nt = nthreads
    cdef Py_ssize_t t, m0, m1, n0, n1, i, j, nu
    cdef Py_ssize_t kcb = _depth(K, kc_block, amx)
    cdef bint split_n
    if M <= 0 or N <= 0:
        return
    if D != NULL:
        acc = 1
    # an output far larger than the caches is written with streaming stores (one pass over K)
    if acc == 0 and M * N >= STREAM_MIN_FLOATS and (<uintptr_t>C) % 64 == 0 and ldc % 16 == 0 \
            and K <= STREAM_MAX_K:
        acc = -1
        kcb = K
    if K <= 0:
        if D != NULL:
            _copy_tile(D, ldd, C, ldc, M, N)
        elif acc <= 0:
            for i in range(M):
                for j in range(N):
                    C[i * ldc + j] = 0.0
        return
    if nt < 1 or M * N * K < PAR_MIN_FMA:
        nt = 1
    split_n = N * 2 >= M
    nu = _cdiv(N, unit_n) if split_n else _cdiv(M, unit_m)
    if nt > nu:
        nt = <int>nu
    if nt <= 1:
        if amx:
            _gemm_rect_amx(0, M, 0, N, K, kcb, A, a_rs, a_cs, B, b_rs, b_cs, C, ldc, acc, D, ldd, ws)
        else:
            _gemm_rect_f32(lvl, bf16, 0, M, 0, N, K, kcb, A, a_rs, a_cs, B, b_rs, b_cs, C, ldc, acc, D, ldd, ws)
        return
    for t in prange(nt, num_threads=nt, schedule="static"):
        if split_n:
            m0 = 0
            m1 = M
            n0 = _imin(N, ((t * nu) // nt) * unit_n)
            n1 = _imin(N, (((t + 1) * nu) // nt) * unit_n)
        else:
            n0 = 0
            n1 = N
            m0 = _imin(M, ((t * nu) // nt) * unit_m)
            m1 = _imin(M, (((t + 1) * nu) // nt) * unit_m)
        if amx:
            _gemm_rect_amx(m0, m1, n0, n1, K, kcb, A, a_rs, a_cs, B, b_rs, b_cs, C, ldc, acc, D, ldd,
                           ws + t * ws_per_thread)
        else:
            _gemm_rect_f32(lvl, bf16, m0, m1, n0, n1, K, kcb, A, a_rs, a_cs, B, b_rs, b_cs, C, ldc, acc, D, ldd,
                           ws + t * ws_per_thread)


cdef class GemmPlan:
    """Scratch for gemm_core calls of depth blocks up to those of (K, kc_block) pairs given."""
    cdef _Scratch scratch
    cdef size_t per_thread
    cdef int lvl

    def __cinit__(self, int nthreads, bint bf16, tuple depths):
        self.lvl = slmx_simd_level()
        cdef bint amx = bf16 and _use_amx(self.lvl)
        cdef size_t need = 0, b
        cdef Py_ssize_t kb
        for K, kc_block in depths:
            kb = _depth(K, kc_block, amx)
            if K <= STREAM_MAX_K and K > kb:
                kb = K                  # a streamed output packs its whole depth at once
            b = _gemm_ws_bytes(self.lvl, amx, kb)
            need = b if b > need else need
        self.per_thread = (need + 63) & ~(<size_t>63)
        self.scratch = _Scratch(self.per_thread * max(1, nthreads))

    def release(self):
        self.scratch.release()


def workspace_bytes(int nthreads, bint bf16=False, Py_ssize_t K=4096, Py_ssize_t kc_block=0):
    """Bytes of the shared GEMM scratch (kept between calls) for a call of depth K."""
    cdef int lvl = slmx_simd_level()
    cdef bint amx = bf16 and _use_amx(lvl)
    cdef Py_ssize_t kb = _depth(K, kc_block, amx)
    if K <= STREAM_MAX_K and K > kb:
        kb = K
    return int((_gemm_ws_bytes(lvl, amx, kb) + 63) & ~63) * max(1, nthreads) + 64


# ----------------------------------------------------------------------------- checks

cdef object _f32(object a, str name, int ndim):
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise ValueError(f"{name}: expected dtype float32, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")
    return a


cdef inline float *_p2(float[:, ::1] v) noexcept nogil:
    return &v[0, 0] if v.shape[0] > 0 and v.shape[1] > 0 else NULL


cdef inline float *_p1(float[::1] v) noexcept nogil:
    return &v[0] if v.shape[0] > 0 else NULL


cdef void _no_overlap(object out, tuple inputs) except *:
    for a in inputs:
        if np.may_share_memory(out, a):
            raise ValueError("the output must not overlap an input")


# ----------------------------------------------------------------------------- Python API: GEMM

def gemm(a, b, c, bint trans_a=False, bint trans_b=False, bint accumulate=False, bint bf16=False,
         int nthreads=1, Py_ssize_t kc_block=0):
    """c (M, N) (+)= op(a) @ op(b)

    a: (M, K), or (K, M) with trans_a;  b: (K, N), or (N, K) with trans_b;  c: (M, N).
    accumulate: c += ... instead of c = ...; bf16: operands rounded to bfloat16 (AMX when the OS
    grants it), fp32 accumulation. kc_block > 0: the K sum runs in blocks of that many terms, each
    summed from zero and then added to c (0: the default blocking). float32, C-contiguous; c must
    not overlap a or b.
    """
    if kc_block < 0:
        raise ValueError("kc_block must be >= 0")
    _f32(a, "a", 2)
    _f32(b, "b", 2)
    _f32(c, "c", 2)
    cdef Py_ssize_t M = a.shape[1] if trans_a else a.shape[0]
    cdef Py_ssize_t K = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t Kb = b.shape[1] if trans_b else b.shape[0]
    cdef Py_ssize_t N = b.shape[0] if trans_b else b.shape[1]
    if Kb != K:
        raise ValueError(f"gemm: inner dimensions differ: op(a) is ({M}, {K}), op(b) is ({Kb}, {N})")
    if c.shape[0] != M or c.shape[1] != N:
        raise ValueError(f"c: expected shape ({M}, {N}), got {c.shape}")
    _no_overlap(c, (a, b))
    cdef float[:, ::1] av = a
    cdef float[:, ::1] bv = b
    cdef float[:, ::1] cv = c
    cdef Py_ssize_t a_rs = 1 if trans_a else K, a_cs = M if trans_a else 1
    cdef Py_ssize_t b_rs = 1 if trans_b else N, b_cs = K if trans_b else 1
    cdef GemmPlan plan = GemmPlan(nthreads, bf16, ((K, kc_block),))
    try:
        with nogil:
            gemm_core(plan.lvl, bf16, M, N, K, _p2(av), a_rs, a_cs, _p2(bv), b_rs, b_cs, _p2(cv), N,
                      accumulate, kc_block, plan.scratch.ptr, plan.per_thread, nthreads)
    finally:
        plan.release()
    return c


def amx_usable():
    """True when bf16 matmuls run on AMX tiles (CPU has AMX-BF16, the OS granted it, level >= 4)."""
    return bool(_use_amx(slmx_simd_level()))


# ============================================================================= row kernels

cdef extern from "train_ops_simd.h" nogil:
    void tg_small_gemm(int lvl, int m, int n, int k, const float *A, long a_rs, long a_ks,
                       const float *B, long ldb, float *C, long ldc, int acc)
    float tg_row_max(int lvl, const float *x, long n)
    double tg_exp_shift(int lvl, const float *x, float *y, long n, float mul, float shift, float scale)
    void tg_swiglu_fwd(int lvl, const float *g, const float *u, float *a, long n)
    void tg_swiglu_bwd(int lvl, const float *da, const float *g, const float *u, float *dg, float *du, long n)
    float tg_rmsnorm_fwd(int lvl, const float *x, const float *w, float *y, long n, float eps)
    void tg_rmsnorm_bwd(int lvl, const float *dy, const float *x, const float *w, float r, float *dx,
                        long n, int acc)
    void tg_norm_dw(int lvl, const float *dy, const float *x, float r, float *dw, long n)
    float tg_dot(int lvl, const float *a, const float *b, long n)
    void tg_rope(int lvl, const float *x, float *y, const float *cs, const float *sn, long half, float sign)
    void tg_scale_row(int lvl, float *x, long n, float s)
    void tg_add_row(int lvl, const float *a, float *y, long n)
    void tg_dsoftmax(int lvl, const float *p, float *dp, long n, float d, float scale)
    void tg_copy_scale(int lvl, const float *x, float *y, long n, float s)
    void tg_transpose(int lvl, const float *src, long lds, long rows, long cols, float *dst, long ldd)

from libc.math cimport logf, expf, log, INFINITY
from libc.string cimport memset, memcpy
from cython.parallel cimport threadid

DEF ROW_PAR_MIN = 32768   # elements below this run on one thread
DEF BQ = 64               # attention: query rows per tile
DEF BK = 64               # attention: key rows per tile


cdef inline int _nt_for(Py_ssize_t work, int nthreads) noexcept nogil:
    return 1 if nthreads < 1 or work < ROW_PAR_MIN else nthreads


cdef object _i32(object a, str name, Py_ssize_t n):
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.int32:
        raise ValueError(f"{name}: expected dtype int32, got {a.dtype}")
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")
    return a


cdef void _shape(object a, tuple shape, str name) except *:
    if tuple(a.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")


# ----------------------------------------------------------------------------- linear

def linear_forward(x, w, out, bint accumulate=False, bint bf16=False, int nthreads=1, residual=None):
    """out (M, N) = x (M, K) @ w (N, K)^T  [+ out (accumulate)]  [+ residual (M, N)]

    accumulate: out += ...; residual: out = residual + x w^T (a residual add fused into the
    GEMM, residual read tile by tile). bf16: operands rounded to bfloat16 (AMX tiles when the
    OS grants them), fp32 accumulation.
    """
    _f32(x, "x", 2)
    _f32(w, "w", 2)
    _f32(out, "out", 2)
    cdef Py_ssize_t M = x.shape[0], K = x.shape[1], N = w.shape[0]
    if w.shape[1] != K:
        raise ValueError(f"w: expected {K} columns to match x {x.shape}, got {w.shape}")
    _shape(out, (M, N), "out")
    _no_overlap(out, (x, w))
    cdef float[:, ::1] rv
    cdef const float *rp = NULL
    if residual is not None:
        if accumulate:
            raise ValueError("give either accumulate or residual")
        _f32(residual, "residual", 2)
        _shape(residual, (M, N), "residual")
        _no_overlap(out, (residual,))
        rv = residual
        rp = _p2(rv)
    cdef float[:, ::1] xv = x
    cdef float[:, ::1] wv = w
    cdef float[:, ::1] ov = out
    cdef GemmPlan plan = GemmPlan(nthreads, bf16, ((K, 0),))
    try:
        with nogil:
            gemm_core(plan.lvl, bf16, M, N, K, _p2(xv), K, 1, _p2(wv), 1, K, _p2(ov), N, accumulate, 0,
                      plan.scratch.ptr, plan.per_thread, nthreads, rp, N)
    finally:
        plan.release()
    return out


def linear_backward(dy, x, w, dx, dw, bint accumulate_dx=False, bint bf16=False, int nthreads=1,
                    Py_ssize_t dw_block=0):
    """dx (M, K) (+)= dy (M, N) @ w (N, K);  dw (N, K) += dy^T @ x (M, K)

    dx or dw may be None (not computed). dw always accumulates; dx is overwritten unless
    accumulate_dx. bf16: operands rounded to bfloat16, fp32 accumulation. dw_block > 0: the sum
    over the M rows runs in blocks of dw_block rows, each added to dw in turn -- with dw_block
    dividing every micro-batch's rows, micro-batches accumulate exactly like one big batch.
    """
    _f32(dy, "dy", 2)
    _f32(x, "x", 2)
    _f32(w, "w", 2)
    if dw_block < 0:
        raise ValueError("dw_block must be >= 0")
    cdef Py_ssize_t M = dy.shape[0], N = dy.shape[1], K = w.shape[1]
    _shape(w, (N, K), "w")
    _shape(x, (M, K), "x")
    cdef float[:, ::1] dyv = dy
    cdef float[:, ::1] xv = x
    cdef float[:, ::1] wv = w
    cdef float[:, ::1] dxv
    cdef float[:, ::1] dwv
    if dx is not None:
        _f32(dx, "dx", 2)
        _shape(dx, (M, K), "dx")
        _no_overlap(dx, (dy, x, w))
        dxv = dx
    if dw is not None:
        _f32(dw, "dw", 2)
        _shape(dw, (N, K), "dw")
        _no_overlap(dw, (dy, x, w))
        if dx is not None and np.may_share_memory(dx, dw):
            raise ValueError("dx and dw must not overlap")
        dwv = dw
    cdef GemmPlan plan = GemmPlan(nthreads, bf16, ((N, 0), (M, dw_block)))
    try:
        with nogil:
            if dx is not None:
                gemm_core(plan.lvl, bf16, M, K, N, _p2(dyv), N, 1, _p2(wv), K, 1, _p2(dxv), K,
                          accumulate_dx, 0, plan.scratch.ptr, plan.per_thread, nthreads)
            if dw is not None:
                gemm_core(plan.lvl, bf16, N, K, M, _p2(dyv), 1, N, _p2(xv), K, 1, _p2(dwv), K, 1,
                          dw_block, plan.scratch.ptr, plan.per_thread, nthreads)
    finally:
        plan.release()


# ----------------------------------------------------------------------------- embedding

def embedding_forward(ids, emb, out, int nthreads=1):
    """out (M, C) = emb (V, C)[ids (M,)]    ids int32 in [0, V)"""
    _f32(emb, "emb", 2)
    _f32(out, "out", 2)
    cdef Py_ssize_t V = emb.shape[0], C = emb.shape[1]
    cdef Py_ssize_t M = out.shape[0]
    _i32(ids, "ids", M)
    _shape(out, (M, C), "out")
    if M and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"ids: token ids must be in [0, {V})")
    cdef const int32_t[::1] iv = ids
    cdef float[:, ::1] ev = emb
    cdef float[:, ::1] ov = out
    cdef Py_ssize_t m
    cdef int nt = _nt_for(M * C, nthreads)
    if M == 0 or C == 0:
        return out
    with nogil:
        for m in prange(M, num_threads=nt, schedule="static"):
            memcpy(&ov[m, 0], &ev[iv[m], 0], C * sizeof(float))
    return out


def embedding_backward(ids, dout, demb, int nthreads=1):
    """demb (V, C) [ids[m]] += dout (M, C) [m]    (each thread owns a range of the vocabulary)"""
    _f32(dout, "dout", 2)
    _f32(demb, "demb", 2)
    cdef Py_ssize_t V = demb.shape[0], C = demb.shape[1], M = dout.shape[0]
    _i32(ids, "ids", M)
    _shape(dout, (M, C), "dout")
    if M and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"ids: token ids must be in [0, {V})")
    _no_overlap(demb, (dout,))
    cdef const int32_t[::1] iv = ids
    cdef float[:, ::1] dv = dout
    cdef float[:, ::1] gv = demb
    cdef int lvl = slmx_simd_level()
    cdef int nt = _nt_for(M * C, nthreads)
    cdef Py_ssize_t t, m, v0, v1, tok
    if M == 0 or C == 0:
        return demb
    with nogil:
        for t in prange(nt, num_threads=nt, schedule="static"):
            v0 = (t * V) // nt
            v1 = ((t + 1) * V) // nt
            for m in range(M):
                tok = iv[m]
                if tok >= v0 and tok < v1:
                    tg_add_row(lvl, &dv[m, 0], &gv[tok, 0], C)
    return demb


# ----------------------------------------------------------------------------- RMSNorm

def rmsnorm_forward(x, w, float eps, out, rstd, int nthreads=1):
    """out (M, C) = x * rstd * w,  rstd (M,) = 1 / sqrt(mean(x^2, -1) + eps) (saved for backward)"""
    _f32(x, "x", 2)
    _f32(w, "w", 1)
    _f32(out, "out", 2)
    _f32(rstd, "rstd", 1)
    cdef Py_ssize_t M = x.shape[0], C = x.shape[1]
    _shape(w, (C,), "w")
    _shape(out, (M, C), "out")
    _shape(rstd, (M,), "rstd")
    _no_overlap(out, (x, w, rstd))
    if not eps > 0:
        raise ValueError("eps must be positive")
    if M == 0 or C == 0:
        return out
    cdef float[:, ::1] xv = x
    cdef float[::1] wv = w
    cdef float[:, ::1] ov = out
    cdef float[::1] rv = rstd
    cdef int lvl = slmx_simd_level()
    cdef int nt = _nt_for(M * C, nthreads)
    cdef Py_ssize_t m
    with nogil:
        for m in prange(M, num_threads=nt, schedule="static"):
            rv[m] = tg_rmsnorm_fwd(lvl, &xv[m, 0], &wv[0], &ov[m, 0], C, eps)
    return out


def rmsnorm_backward(dy, x, w, rstd, dx, dw, bint accumulate_dx=False, int nthreads=1):
    """dx (M, C) (+)= d/dx of sum(dy * rmsnorm(x) w);  dw (C,) += sum_rows dy * x * rstd

    dw receives the rows one after another (row 0 first), each thread owning a range of columns,
    so splitting the rows over calls (micro-batches) gives bit-identical sums.
    """
    _f32(dy, "dy", 2)
    _f32(x, "x", 2)
    _f32(w, "w", 1)
    _f32(rstd, "rstd", 1)
    _f32(dx, "dx", 2)
    _f32(dw, "dw", 1)
    cdef Py_ssize_t M = x.shape[0], C = x.shape[1]
    _shape(dy, (M, C), "dy")
    _shape(w, (C,), "w")
    _shape(rstd, (M,), "rstd")
    _shape(dx, (M, C), "dx")
    _shape(dw, (C,), "dw")
    _no_overlap(dx, (dy, x, w, rstd, dw))
    _no_overlap(dw, (dy, x, w, rstd))
    if M == 0 or C == 0:
        return
    cdef int nt = _nt_for(M * C, nthreads)
    cdef Py_ssize_t ncol = _cdiv(C, 16)
    cdef int ntc = <int>_imin(nt, ncol)
    cdef float[:, ::1] dyv = dy
    cdef float[:, ::1] xv = x
    cdef float[::1] wv = w
    cdef float[::1] rv = rstd
    cdef float[:, ::1] dxv = dx
    cdef float[::1] dwv = dw
    cdef int lvl = slmx_simd_level()
    cdef Py_ssize_t t, m, c0, c1
    with nogil:
        for m in prange(M, num_threads=nt, schedule="static"):
            tg_rmsnorm_bwd(lvl, &dyv[m, 0], &xv[m, 0], &wv[0], rv[m], &dxv[m, 0], C, accumulate_dx)
        for t in prange(ntc, num_threads=ntc, schedule="static"):
            c0 = _imin(C, ((t * ncol) // ntc) * 16)
            c1 = _imin(C, (((t + 1) * ncol) // ntc) * 16)
            for m in range(M):
                tg_norm_dw(lvl, &dyv[m, c0], &xv[m, c0], rv[m], &dwv[c0], c1 - c0)


# ----------------------------------------------------------------------------- RoPE

def rope_tables(int T, int head_dim, float base=10000.0):
    """(cos, sin) of shape (T, head_dim/2): theta[t, i] = t * base^(-2i/head_dim), float32"""
    if head_dim <= 0 or head_dim % 2:
        raise ValueError("head_dim must be a positive even number")
    inv = (1.0 / (np.float32(base) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))))
    ang = np.outer(np.arange(T, dtype=np.float32), inv.astype(np.float32))
    return np.ascontiguousarray(np.cos(ang), np.float32), np.ascontiguousarray(np.sin(ang), np.float32)


cdef _rope(x, int n_heads, int head_dim, positions, cos, sin, float sign, int nthreads):
    _f32(x, "x", 2)
    _f32(cos, "cos", 2)
    _f32(sin, "sin", 2)
    cdef Py_ssize_t M = x.shape[0], W = x.shape[1]
    if head_dim <= 0 or head_dim % 2:
        raise ValueError("head_dim must be a positive even number")
    if n_heads < 0 or n_heads * head_dim > W:
        raise ValueError(f"x: {n_heads} heads of {head_dim} need {n_heads * head_dim} columns, got {W}")
    cdef Py_ssize_t half = head_dim // 2
    if cos.shape[1] != half or sin.shape[1] != half or cos.shape[0] != sin.shape[0]:
        raise ValueError(f"cos, sin: expected shape (T, {half}), got {cos.shape}, {sin.shape}")
    _i32(positions, "positions", M)
    cdef Py_ssize_t P = cos.shape[0]
    if M and (positions.min() < 0 or positions.max() >= P):
        raise ValueError(f"positions must be in [0, {P})")
    if M == 0 or n_heads == 0:
        return x
    cdef float[:, ::1] xv = x
    cdef float[:, ::1] cv = cos
    cdef float[:, ::1] sv = sin
    cdef const int32_t[::1] pv = positions
    cdef int lvl = slmx_simd_level()
    cdef int nt = _nt_for(M * n_heads * head_dim, nthreads)
    cdef Py_ssize_t m, h
    cdef float *row
    with nogil:
        for m in prange(M, num_threads=nt, schedule="static"):
            row = &xv[m, 0]
            for h in range(n_heads):
                tg_rope(lvl, row + h * head_dim, row + h * head_dim, &cv[pv[m], 0], &sv[pv[m], 0], half, sign)
    return x


def rope_forward(x, int n_heads, int head_dim, positions, cos, sin, int nthreads=1):
    """In place on the first n_heads heads of each row of x (M, W >= n_heads*head_dim):
    pairs (2i, 2i+1) of each head rotated by theta[positions[m], i] (tables from rope_tables)"""
    return _rope(x, n_heads, head_dim, positions, cos, sin, 1.0, nthreads)


def rope_backward(dx, int n_heads, int head_dim, positions, cos, sin, int nthreads=1):
    """In place: the gradient through rope_forward, i.e. the pairs rotated by -theta"""
    return _rope(dx, n_heads, head_dim, positions, cos, sin, -1.0, nthreads)


# ----------------------------------------------------------------------------- SwiGLU

def swiglu_forward(gu, out, int nthreads=1):
    """out (M, F) = silu(g) * u  where gu (M, 2F) = [g | u] per row"""
    _f32(gu, "gu", 2)
    _f32(out, "out", 2)
    cdef Py_ssize_t M = gu.shape[0], F2 = gu.shape[1]
    if F2 % 2:
        raise ValueError(f"gu: expected an even number of columns, got {gu.shape}")
    cdef Py_ssize_t F = F2 // 2
    _shape(out, (M, F), "out")
    _no_overlap(out, (gu,))
    if M == 0 or F == 0:
        return out
    cdef float[:, ::1] gv = gu
    cdef float[:, ::1] ov = out
    cdef int lvl = slmx_simd_level()
    cdef int nt = _nt_for(M * F, nthreads)
    cdef Py_ssize_t m
    with nogil:
        for m in prange(M, num_threads=nt, schedule="static"):
            tg_swiglu_fwd(lvl, &gv[m, 0], &gv[m, F], &ov[m, 0], F)
    return out


def swiglu_backward(dout, gu, dgu, int nthreads=1):
    """dgu (M, 2F) = [dg | du] for out = silu(g) * u;  dgu may be gu itself (in place)"""
    _f32(dout, "dout", 2)
    _f32(gu, "gu", 2)
    _f32(dgu, "dgu", 2)
    cdef Py_ssize_t M = gu.shape[0], F2 = gu.shape[1]
    if F2 % 2:
        raise ValueError(f"gu: expected an even number of columns, got {gu.shape}")
    cdef Py_ssize_t F = F2 // 2
    _shape(dout, (M, F), "dout")
    _shape(dgu, (M, F2), "dgu")
    _no_overlap(dout, (gu, dgu))
    if (dgu.ctypes.data != gu.ctypes.data) and np.may_share_memory(dgu, gu):
        raise ValueError("dgu must be gu itself or not overlap it")
    if M == 0 or F == 0:
        return dgu
    cdef float[:, ::1] dv = dout
    cdef float[:, ::1] gv = gu
    cdef float[:, ::1] ov = dgu
    cdef int lvl = slmx_simd_level()
    cdef int nt = _nt_for(M * F, nthreads)
    cdef Py_ssize_t m
    with nogil:
        for m in prange(M, num_threads=nt, schedule="static"):
            tg_swiglu_bwd(lvl, &dv[m, 0], &gv[m, 0], &gv[m, F], &ov[m, 0], &ov[m, F], F)
    return dgu


# ----------------------------------------------------------------------------- cross-entropy

cdef double _ce_row(int lvl, float *x, Py_ssize_t V, int tgt, float scale, bint backward) noexcept nogil:
    """loss of one row; with backward x := (softmax(x) - onehot(tgt)) * scale"""
    cdef float mx = tg_row_max(lvl, x, V)
    cdef double s = tg_exp_shift(lvl, x, NULL, V, 1.0, mx, 1.0)
    cdef double lse = <double>mx + log(s)
    cdef double loss = lse - <double>x[tgt]
    if backward:
        tg_exp_shift(lvl, x, x, V, 1.0, <float>lse, scale)
        x[tgt] -= scale
    return loss


cdef object _cross_entropy(logits, targets, float scale, bint backward, int nthreads):
    _f32(logits, "logits", 2)
    cdef Py_ssize_t M = logits.shape[0], V = logits.shape[1]
    _i32(targets, "targets", M)
    if M and targets.max() >= V:
        raise ValueError(f"targets must be < {V} (negative: ignored)")
    if M == 0:
        return 0.0, 0
    if V == 0:
        raise ValueError("logits: empty vocabulary")
    losses = np.zeros(M, np.float64)
    cdef double[::1] lv = losses
    cdef float[:, ::1] xv = logits
    cdef const int32_t[::1] tv = targets
    cdef int lvl = slmx_simd_level()
    cdef int nt = _nt_for(M * V, nthreads)
    cdef Py_ssize_t m
    with nogil:
        for m in prange(M, num_threads=nt, schedule="static"):
            if tv[m] >= 0:
                lv[m] = _ce_row(lvl, &xv[m, 0], V, tv[m], scale, backward)
            elif backward:
                memset(&xv[m, 0], 0, V * sizeof(float))
    return float(losses.sum()), int(np.count_nonzero(targets >= 0))


def cross_entropy_forward_backward(logits, targets, float scale, int nthreads=1):
    """Fused softmax + cross-entropy over the vocabulary, in place.

    logits (M, V) float32 is overwritten with dlogits = (softmax(logits) - onehot(targets)) * scale
    (rows with targets < 0: zeros). Returns (sum of the per-row losses, number of rows with a
    target); per row loss = logsumexp(logits) - logits[target].
    """
    return _cross_entropy(logits, targets, scale, True, nthreads)


def cross_entropy_forward(logits, targets, int nthreads=1):
    """(sum of per-row cross-entropy losses, number of rows with a target); logits untouched"""
    return _cross_entropy(logits, targets, 1.0, False, nthreads)


# ----------------------------------------------------------------------------- attention

DEF SR = 16               # attention: rows per causal strip


cdef void _attn_fwd_head(int lvl, const float *qkv, float *out, float *lse, Py_ssize_t T, Py_ssize_t W,
                         Py_ssize_t ldo, Py_ssize_t q_off, Py_ssize_t k_off, Py_ssize_t v_off,
                         Py_ssize_t hd, float scale, float *ws) noexcept nogil:
    """One (batch, head): out (T, hd) rows of stride ldo, lse (T,).

    K (transposed) and V are first copied into contiguous per-thread buffers; each 64 x 64 tile
    runs in strips of 16 query rows whose key range stops at the strip's last causal key.
    ws: 2*hd*T + 2*BQ*hd + BQ*BK + 2*BQ floats.
    """
    cdef float *kt = ws                    # (hd, T)  K transposed
    cdef float *vc = kt + hd * T           # (T, hd)  V
    cdef float *qs = vc + hd * T           # (BQ, hd) scaled Q tile
    cdef float *o = qs + BQ * hd           # (BQ, hd) output accumulator
    cdef float *s = o + BQ * hd            # (BQ, BK) scores / probabilities
    cdef float *mrow = s + BQ * BK         # (BQ,) running max
    cdef float *lrow = mrow + BQ           # (BQ,) running sum
    cdef Py_ssize_t t, q0, k0, br, bc, i, valid, r0, r1, nc
    cdef float mx, mnew, alpha
    cdef double sm
    tg_transpose(lvl, qkv + k_off, W, T, hd, kt, T)
    for t in range(T):
        memcpy(vc + t * hd, qkv + t * W + v_off, hd * sizeof(float))
    q0 = 0
    while q0 < T:
        br = _imin(BQ, T - q0)
        for i in range(br):
            tg_copy_scale(lvl, qkv + (q0 + i) * W + q_off, qs + i * hd, hd, scale)
            mrow[i] = -INFINITY
            lrow[i] = 0.0
        memset(o, 0, br * hd * sizeof(float))
        k0 = 0
        while k0 < q0 + br:
            bc = _imin(BK, q0 + br - k0)
            r0 = 0
            while r0 < br:
                r1 = _imin(br, r0 + SR)
                nc = _imin(bc, q0 + r1 - k0)           # keys any row of the strip may see
                if nc > 0:
                    tg_small_gemm(lvl, <int>(r1 - r0), <int>nc, <int>hd, qs + r0 * hd, hd, 1, kt + k0, T,
                                  s + r0 * BK, BK, 0)
                    for i in range(r0, r1):
                        valid = _imin(nc, q0 + i - k0 + 1)
                        if valid <= 0:
                            memset(s + i * BK, 0, nc * sizeof(float))
                            continue
                        mx = tg_row_max(lvl, s + i * BK, valid)
                        mnew = mx if mx > mrow[i] else mrow[i]
                        alpha = expf(mrow[i] - mnew)
                        sm = tg_exp_shift(lvl, s + i * BK, s + i * BK, valid, 1.0, mnew, 1.0)
                        if valid < nc:
                            memset(s + i * BK + valid, 0, (nc - valid) * sizeof(float))
                        lrow[i] = lrow[i] * alpha + <float>sm
                        mrow[i] = mnew
                        if alpha != 1.0:
                            tg_scale_row(lvl, o + i * hd, hd, alpha)
                    tg_small_gemm(lvl, <int>(r1 - r0), <int>hd, <int>nc, s + r0 * BK, BK, 1, vc + k0 * hd, hd,
                                  o + r0 * hd, hd, 1)
                r0 = r1
            k0 = k0 + bc
        for i in range(br):
            tg_copy_scale(lvl, o + i * hd, out + (q0 + i) * ldo, hd, 1.0 / lrow[i])
            lse[q0 + i] = mrow[i] + logf(lrow[i])
        q0 = q0 + br


cdef void _attn_bwd_group(int lvl, const float *qkv, const float *out, const float *dout, const float *lse,
                          float *dqkv, Py_ssize_t T, Py_ssize_t W, Py_ssize_t ldo, Py_ssize_t h0,
                          Py_ssize_t G, Py_ssize_t k_off, Py_ssize_t v_off, Py_ssize_t hd, float scale,
                          float *ws) noexcept nogil:
    """One (batch, kv head): dQ of its G query heads h0..h0+G-1, and dK, dV summed over them.

    Operands are copied into contiguous per-thread buffers (K, V transposed and plain, Q and dO
    of the current head) and the gradients accumulate there before being written out.
    ws: 8*hd*T + 2*BQ*BK + T floats.
    """
    cdef float *kt = ws                    # (hd, T)  K^T
    cdef float *vt = kt + hd * T           # (hd, T)  V^T
    cdef float *kc = vt + hd * T           # (T, hd)  K
    cdef float *qc = kc + hd * T           # (T, hd)  Q of head h
    cdef float *doc = qc + hd * T          # (T, hd)  dO of head h
    cdef float *dq = doc + hd * T          # (T, hd)
    cdef float *dk = dq + hd * T           # (T, hd)
    cdef float *dv = dk + hd * T           # (T, hd)
    cdef float *p = dv + hd * T            # (BQ, BK) probabilities
    cdef float *dp = p + BQ * BK           # (BQ, BK) dP, then dS
    cdef float *dd = dp + BQ * BK          # (T,) rowsum(dO * O)
    cdef const float *lh
    cdef Py_ssize_t t, h, q0, k0, br, bc, i, valid, q_off, r0, r1, nc
    tg_transpose(lvl, qkv + k_off, W, T, hd, kt, T)
    tg_transpose(lvl, qkv + v_off, W, T, hd, vt, T)
    for t in range(T):
        memcpy(kc + t * hd, qkv + t * W + k_off, hd * sizeof(float))
    memset(dk, 0, T * hd * sizeof(float))
    memset(dv, 0, T * hd * sizeof(float))
    for h in range(h0, h0 + G):
        q_off = h * hd
        lh = lse + (h - h0) * T
        for t in range(T):
            memcpy(qc + t * hd, qkv + t * W + q_off, hd * sizeof(float))
            memcpy(doc + t * hd, dout + t * ldo + q_off, hd * sizeof(float))
            dd[t] = tg_dot(lvl, dout + t * ldo + q_off, out + t * ldo + q_off, hd)
        memset(dq, 0, T * hd * sizeof(float))
        q0 = 0
        while q0 < T:
            br = _imin(BQ, T - q0)
            k0 = 0
            while k0 < q0 + br:
                bc = _imin(BK, q0 + br - k0)
                r0 = 0
                while r0 < br:
                    r1 = _imin(br, r0 + SR)
                    nc = _imin(bc, q0 + r1 - k0)
                    if nc <= 0:
                        for i in range(r0, r1):
                            memset(p + i * BK, 0, bc * sizeof(float))
                            memset(dp + i * BK, 0, bc * sizeof(float))
                        r0 = r1
                        continue
                    # P = exp(scale Q K^T - lse), causal
                    tg_small_gemm(lvl, <int>(r1 - r0), <int>nc, <int>hd, qc + (q0 + r0) * hd, hd, 1, kt + k0, T,
                                  p + r0 * BK, BK, 0)
                    # dP = dO V^T
                    tg_small_gemm(lvl, <int>(r1 - r0), <int>nc, <int>hd, doc + (q0 + r0) * hd, hd, 1, vt + k0, T,
                                  dp + r0 * BK, BK, 0)
                    for i in range(r0, r1):
                        valid = _imin(nc, q0 + i - k0 + 1)
                        if valid < 0:
                            valid = 0
                        if valid > 0:
                            tg_exp_shift(lvl, p + i * BK, p + i * BK, valid, scale, lh[q0 + i], 1.0)
                        if valid < bc:
                            memset(p + i * BK + valid, 0, (bc - valid) * sizeof(float))
                        # dS = P (dP - D) scale  (zero where P is)
                        tg_dsoftmax(lvl, p + i * BK, dp + i * BK, nc, dd[q0 + i], scale)
                        if nc < bc:
                            memset(dp + i * BK + nc, 0, (bc - nc) * sizeof(float))
                    # dQ += dS K
                    tg_small_gemm(lvl, <int>(r1 - r0), <int>hd, <int>nc, dp + r0 * BK, BK, 1, kc + k0 * hd, hd,
                                  dq + (q0 + r0) * hd, hd, 1)
                    r0 = r1
                # dV += P^T dO;  dK += dS^T Q
                tg_small_gemm(lvl, <int>bc, <int>hd, <int>br, p, 1, BK, doc + q0 * hd, hd, dv + k0 * hd, hd, 1)
                tg_small_gemm(lvl, <int>bc, <int>hd, <int>br, dp, 1, BK, qc + q0 * hd, hd, dk + k0 * hd, hd, 1)
                k0 = k0 + bc
            q0 = q0 + br
        for t in range(T):
            memcpy(dqkv + t * W + q_off, dq + t * hd, hd * sizeof(float))
    for t in range(T):
        memcpy(dqkv + t * W + k_off, dk + t * hd, hd * sizeof(float))
        memcpy(dqkv + t * W + v_off, dv + t * hd, hd * sizeof(float))


# ----------------------------------------------------------------------------- attention on AMX
# bf16 mode with AMX: per strip of 32 queries, the scores against all the keys it may see
# (32 x T, never T x T) on AMX tiles, an exact row softmax in fp32, and the products with V (and,
# backward, dO, K, Q) on AMX tiles. Operands are packed once per task by the GEMM packers.

cdef inline Py_ssize_t _r32(Py_ssize_t n) noexcept nogil:
    return (n + 31) & ~31


cdef size_t _attn_amx_ws(Py_ssize_t T, Py_ssize_t hd, bint backward) noexcept nogil:
    """per-thread scratch bytes of the AMX attention kernels"""
    cdef size_t Tp = _r32(T), hdp = _r32(hd)
    if not backward:
        return (2 * Tp * hdp + 32 * hdp + 32 * Tp) * 2 + (32 * Tp + 32 * hdp + 1024 + 64) * 4 + 256
    return (5 * Tp * hdp + 2 * 32 * hdp + 3 * 32 * Tp) * 2 + (2 * 32 * Tp + 2 * Tp * hd + Tp + 1024) * 4 + 256


cdef void _attn_fwd_head_amx(int lvl, const float *qkv, float *out, float *lse, Py_ssize_t T, Py_ssize_t W,
                             Py_ssize_t ldo, Py_ssize_t q_off, Py_ssize_t k_off, Py_ssize_t v_off,
                             Py_ssize_t hd, float scale, char *ws) noexcept nogil:
    """attention_forward of one (batch, head) on AMX (bf16 operands, fp32 softmax and sums)"""
    cdef Py_ssize_t Tp = _r32(T), hdp = _r32(hd)
    cdef uint16_t *kpt = <uint16_t *>ws            # K^T as B: Tp/32 panels of hdp x 32
    cdef uint16_t *vp = kpt + Tp * hdp             # V as B: hdp/32 panels of Tp x 32
    cdef uint16_t *qa = vp + hdp * Tp              # Q strip as A: 32 x hdp
    cdef uint16_t *pa = qa + 32 * hdp              # P strip as A: 32 x Tp
    cdef float *sc = <float *>(pa + 32 * Tp)       # scores / probabilities (32, Tp)
    cdef float *o = sc + 32 * Tp                   # (32, hd)
    cdef float *mrow = o + 32 * hdp                # (32,)
    cdef float *tmp = mrow + 64                    # 32 x 32 scratch of the micro-kernel
    cdef Py_ssize_t q0, rows, L, Lp, p, i, dn, valid
    cdef float mx
    cdef double sm
    tg_amx_begin()
    tg_pack_b_amx(qkv + k_off, 1, W, hd, T, kpt)
    tg_pack_b_amx(qkv + v_off, W, 1, T, hd, vp)
    q0 = 0
    while q0 < T:
        rows = _imin(32, T - q0)
        L = q0 + rows
        Lp = _r32(L)
        tg_pack_a_amx(qkv + q0 * W + q_off, W, 1, rows, hd, qa)
        p = 0
        while p < L:
            tg_ukr_amx(hdp, qa, kpt + p * hdp, sc + p, Tp, <int>rows, <int>_imin(32, L - p), 0, tmp)
            p += 32
        for i in range(rows):
            valid = q0 + i + 1
            mx = tg_row_max(lvl, sc + i * Tp, valid) * scale
            sm = tg_exp_shift(lvl, sc + i * Tp, sc + i * Tp, valid, scale, mx, 1.0)
            if valid < Lp:
                memset(sc + i * Tp + valid, 0, (Lp - valid) * sizeof(float))
            mrow[i] = <float>(1.0 / sm)
            lse[q0 + i] = mx + <float>log(sm)
        tg_pack_a_amx(sc, Tp, 1, rows, L, pa)
        dn = 0
        while dn < hd:
            tg_ukr_amx(Lp, pa, vp + dn * Tp, o + dn, hd, <int>rows, <int>_imin(32, hd - dn), 0, tmp)
            dn += 32
        for i in range(rows):
            tg_copy_scale(lvl, o + i * hd, out + (q0 + i) * ldo, hd, mrow[i])
        q0 += 32
    tg_amx_end()


cdef void _attn_bwd_group_amx(int lvl, const float *qkv, const float *out, const float *dout,
                              const float *lse, float *dqkv, Py_ssize_t T, Py_ssize_t W, Py_ssize_t ldo,
                              Py_ssize_t h0, Py_ssize_t G, Py_ssize_t k_off, Py_ssize_t v_off,
                              Py_ssize_t hd, float scale, char *ws) noexcept nogil:
    """attention_backward of one (batch, kv head) on AMX"""
    cdef Py_ssize_t Tp = _r32(T), hdp = _r32(hd)
    cdef uint16_t *kpt = <uint16_t *>ws            # K^T as B (S = Q K^T)
    cdef uint16_t *vpt = kpt + Tp * hdp            # V^T as B (dP = dO V^T)
    cdef uint16_t *kp = vpt + Tp * hdp             # K as B (dQ = dS K)
    cdef uint16_t *qp = kp + Tp * hdp              # Q of head h as B (dK += dS^T Q)
    cdef uint16_t *dop = qp + Tp * hdp             # dO of head h as B (dV += P^T dO)
    cdef uint16_t *qa = dop + Tp * hdp             # Q strip as A
    cdef uint16_t *doa = qa + 32 * hdp             # dO strip as A
    cdef uint16_t *pt = doa + 32 * hdp             # P^T strip as A (Tp x 32)
    cdef uint16_t *dsa = pt + 32 * Tp              # dS strip as A (32 x Tp)
    cdef uint16_t *dst = dsa + 32 * Tp             # dS^T strip as A (Tp x 32)
    cdef float *sc = <float *>(dst + 32 * Tp)      # P (32, Tp)
    cdef float *dp = sc + 32 * Tp                  # dP, then dS (32, Tp)
    cdef float *dk = dp + 32 * Tp                  # (Tp, hd)
    cdef float *dv = dk + Tp * hd                  # (Tp, hd)
    cdef float *dd = dv + Tp * hd                  # (Tp,) rowsum(dO * O)
    cdef float *tmp = <float *>((<uintptr_t>(dd + Tp) + 63) & ~(<uintptr_t>63))
    cdef const float *lh
    cdef Py_ssize_t h, t, q0, rows, L, Lp, p, i, dn, kt, valid, q_off
    tg_amx_begin()
    tg_pack_b_amx(qkv + k_off, 1, W, hd, T, kpt)
    tg_pack_b_amx(qkv + v_off, 1, W, hd, T, vpt)
    tg_pack_b_amx(qkv + k_off, W, 1, T, hd, kp)
    memset(dk, 0, Tp * hd * sizeof(float))
    memset(dv, 0, Tp * hd * sizeof(float))
    for h in range(h0, h0 + G):
        q_off = h * hd
        lh = lse + (h - h0) * T
        tg_pack_b_amx(qkv + q_off, W, 1, T, hd, qp)
        tg_pack_b_amx(dout + q_off, ldo, 1, T, hd, dop)
        for t in range(T):
            dd[t] = tg_dot(lvl, dout + t * ldo + q_off, out + t * ldo + q_off, hd)
        q0 = 0
        while q0 < T:
            rows = _imin(32, T - q0)
            L = q0 + rows
            Lp = _r32(L)
            tg_pack_a_amx(qkv + q0 * W + q_off, W, 1, rows, hd, qa)
            tg_pack_a_amx(dout + q0 * ldo + q_off, ldo, 1, rows, hd, doa)
            p = 0
            while p < L:
                tg_ukr_amx(hdp, qa, kpt + p * hdp, sc + p, Tp, <int>rows, <int>_imin(32, L - p), 0, tmp)
                tg_ukr_amx(hdp, doa, vpt + p * hdp, dp + p, Tp, <int>rows, <int>_imin(32, L - p), 0, tmp)
                p += 32
            for i in range(rows):
                valid = q0 + i + 1
                tg_exp_shift(lvl, sc + i * Tp, sc + i * Tp, valid, scale, lh[q0 + i], 1.0)
                tg_dsoftmax(lvl, sc + i * Tp, dp + i * Tp, valid, dd[q0 + i], scale)
                if valid < Lp:
                    memset(sc + i * Tp + valid, 0, (Lp - valid) * sizeof(float))
                    memset(dp + i * Tp + valid, 0, (Lp - valid) * sizeof(float))
            # dQ (rows of the strip) = dS K, written straight into dqkv
            tg_pack_a_amx(dp, Tp, 1, rows, L, dsa)
            dn = 0
            while dn < hd:
                tg_ukr_amx(Lp, dsa, kp + dn * Tp, dqkv + q0 * W + q_off + dn, W, <int>rows,
                           <int>_imin(32, hd - dn), 0, tmp)
                dn += 32
            # dV += P^T dO,  dK += dS^T Q  (over the strip's rows)
            tg_pack_a_amx(sc, 1, Tp, L, rows, pt)
            tg_pack_a_amx(dp, 1, Tp, L, rows, dst)
            kt = 0
            while kt < L:
                dn = 0
                while dn < hd:
                    tg_ukr_amx(32, pt + kt * 32, dop + dn * Tp + q0 * 32, dv + kt * hd + dn, hd,
                               <int>_imin(32, L - kt), <int>_imin(32, hd - dn), 1, tmp)
                    tg_ukr_amx(32, dst + kt * 32, qp + dn * Tp + q0 * 32, dk + kt * hd + dn, hd,
                               <int>_imin(32, L - kt), <int>_imin(32, hd - dn), 1, tmp)
                    dn += 32
                kt += 32
            q0 += 32
    for t in range(T):
        memcpy(dqkv + t * W + k_off, dk + t * hd, hd * sizeof(float))
        memcpy(dqkv + t * W + v_off, dv + t * hd, hd * sizeof(float))
    tg_amx_end()


cdef void _attn_check(qkv, out, lse, int B, int T, int n_heads, int n_kv_heads, int head_dim) except *:
    _f32(qkv, "qkv", 2)
    _f32(out, "out", 2)
    _f32(lse, "lse", 3)
    if B < 0 or T < 0 or n_heads <= 0 or n_kv_heads <= 0 or head_dim <= 0:
        raise ValueError("B, T must be >= 0; n_heads, n_kv_heads, head_dim > 0")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads {n_heads} must be a multiple of n_kv_heads {n_kv_heads}")
    _shape(qkv, (B * T, (n_heads + 2 * n_kv_heads) * head_dim), "qkv")
    _shape(out, (B * T, n_heads * head_dim), "out")
    _shape(lse, (B, n_heads, T), "lse")


def attention_forward(qkv, out, lse, int B, int T, int n_heads, int n_kv_heads, int head_dim,
                      float scale, int nthreads=1, bint bf16=False):
    """Causal grouped-query attention, FlashAttention-style (tiles of 64 x 64, online softmax).

    qkv (B*T, (H + 2 Hkv) D): per row [q heads | k heads | v heads]; out (B*T, H D);
    lse (B, H, T) = log-sum-exp of each row of scale * q k^T (saved for the backward).
    Query head h reads kv head h // (H / Hkv). bf16 (with AMX; scale > 0): the products run on
    AMX tiles with bf16 operands, strip by strip of 32 queries (softmax and sums in fp32).
    """
    _attn_check(qkv, out, lse, B, T, n_heads, n_kv_heads, head_dim)
    _no_overlap(out, (qkv, lse))
    _no_overlap(lse, (qkv,))
    if B == 0 or T == 0:
        return out
    cdef Py_ssize_t W = (n_heads + 2 * n_kv_heads) * head_dim, ldo = n_heads * head_dim
    cdef Py_ssize_t hd = head_dim, G = n_heads // n_kv_heads, H = n_heads, Hkv = n_kv_heads
    cdef int lvl = slmx_simd_level()
    cdef bint amx = bf16 and _use_amx(lvl) and scale > 0
    cdef Py_ssize_t per = 2 * hd * T + 2 * BQ * hd + BQ * BK + 2 * BQ + 16
    if amx:
        per = <Py_ssize_t>(_attn_amx_ws(T, hd, False) // 4 + 16)
    cdef int nt = nthreads if nthreads > 1 and B * H > 1 else 1
    work = np.empty(nt * per + 16, np.float32)
    cdef float[::1] wv = work
    cdef float *wp = <float *>((<uintptr_t>&wv[0] + 63) & ~(<uintptr_t>63))
    cdef float[:, ::1] qv = qkv
    cdef float[:, ::1] ov = out
    cdef float[:, :, ::1] lv = lse
    cdef Py_ssize_t task, b, h, g
    with nogil:
        for task in prange(B * H, num_threads=nt, schedule="dynamic"):
            b = task // H
            h = task % H
            g = h // G
            if amx:
                _attn_fwd_head_amx(lvl, &qv[b * T, 0], &ov[b * T, 0] + h * hd, &lv[b, h, 0], T, W, ldo,
                                   h * hd, (H + g) * hd, (H + Hkv + g) * hd, hd, scale,
                                   <char *>(wp + threadid() * per))
            else:
                _attn_fwd_head(lvl, &qv[b * T, 0], &ov[b * T, 0] + h * hd, &lv[b, h, 0], T, W, ldo,
                               h * hd, (H + g) * hd, (H + Hkv + g) * hd, hd, scale, wp + threadid() * per)
    return out


def attention_backward(qkv, out, dout, lse, dqkv, int B, int T, int n_heads, int n_kv_heads,
                       int head_dim, float scale, int nthreads=1, bint bf16=False):
    """Gradient of attention_forward: dqkv (B*T, (H + 2 Hkv) D) = [dq | dk | dv] (overwritten).

    Recomputes the probabilities tile by tile from qkv and lse (no T x T buffer); dK and dV of a
    kv head are summed over the H / Hkv query heads that read it. bf16: as attention_forward.
    """
    _attn_check(qkv, out, lse, B, T, n_heads, n_kv_heads, head_dim)
    _f32(dout, "dout", 2)
    _f32(dqkv, "dqkv", 2)
    _shape(dout, out.shape, "dout")
    _shape(dqkv, qkv.shape, "dqkv")
    _no_overlap(dqkv, (qkv, out, dout, lse))
    if B == 0 or T == 0:
        return dqkv
    cdef Py_ssize_t W = (n_heads + 2 * n_kv_heads) * head_dim, ldo = n_heads * head_dim
    cdef Py_ssize_t hd = head_dim, G = n_heads // n_kv_heads, H = n_heads, Hkv = n_kv_heads
    cdef int lvl = slmx_simd_level()
    cdef bint amx = bf16 and _use_amx(lvl) and scale > 0
    cdef Py_ssize_t per = 8 * hd * T + 2 * BQ * BK + T + 16
    if amx:
        per = <Py_ssize_t>(_attn_amx_ws(T, hd, True) // 4 + 16)
    cdef int nt = nthreads if nthreads > 1 and B * Hkv > 1 else 1
    work = np.empty(nt * per + 16, np.float32)
    cdef float[::1] wv = work
    cdef float *wp = <float *>((<uintptr_t>&wv[0] + 63) & ~(<uintptr_t>63))
    cdef float[:, ::1] qv = qkv
    cdef float[:, ::1] ov = out
    cdef float[:, ::1] dov = dout
    cdef float[:, :, ::1] lv = lse
    cdef float[:, ::1] dv = dqkv
    cdef Py_ssize_t task, b, g
    with nogil:
        for task in prange(B * Hkv, num_threads=nt, schedule="dynamic"):
            b = task // Hkv
            g = task % Hkv
            if amx:
                _attn_bwd_group_amx(lvl, &qv[b * T, 0], &ov[b * T, 0], &dov[b * T, 0], &lv[b, g * G, 0],
                                    &dv[b * T, 0], T, W, ldo, g * G, G, (H + g) * hd, (H + Hkv + g) * hd,
                                    hd, scale, <char *>(wp + threadid() * per))
            else:
                _attn_bwd_group(lvl, &qv[b * T, 0], &ov[b * T, 0], &dov[b * T, 0], &lv[b, g * G, 0],
                                &dv[b * T, 0], T, W, ldo, g * G, G, (H + g) * hd, (H + Hkv + g) * hd, hd,
                                scale, wp + threadid() * per)
    return dqkv
