# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""fp32 GEMM: C = A B and C = X W^T (a linear layer), packed and cache-blocked.

Loop nest (per outer block of at most MC_OUTER rows of A), block sizes from cpu.cache_sizes():
    for pc in K by kc:            A rows packed into tiles of <= MR rows (kc x mr), shared
                                  (kc: all of K up to 3 KC, else equal blocks <= 2 KC; packed B: KC)
      tasks = (groups of A tiles, MC_ROWS rows kept in L2) x (groups of 32-column B panels),
              split over the threads (by columns when B is packed on the fly and A's block fits
              half of L2: each thread then packs only its own panels); each task:
        for each group of 8 panels: pack them (kc x 32 each, one panel ~2/3 of L1)
          for panel: for tile: micro-kernel mr x 32 (+)= A_tile B_panel
          (B = W^T: groups of 4096 / kc panels, 512 KB; for tile: for panel of the group)
The micro-kernel keeps mr x 32 accumulators in registers (AVX-512: 14 x 2 zmm; AVX2: 6 x 2 ymm
per 16-column half; scalar: portable C). Tiles of A are balanced (M = 16 gives two 8-row tiles,
not 14 + 2). Small M (< 8) skips packing: C = A B streams the rows of B once; C = X W^T runs
dot products along the rows of W.

B can be packed once (``pack_b``, ``pack_weight``) and reused by ``matmul_packed``: the packed
layout is the same for every SIMD level.
"""
import threading

import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange, parallel
from libc.stdlib cimport malloc, free
from libc.stdint cimport uintptr_t, uint16_t
from libc.string cimport memset, memcpy
from openmp cimport omp_get_thread_num, omp_get_num_threads

include "simd.pxi"

cnp.import_array()

ctypedef void (*slmx_ukr_t)(long kc, const float *A, const float *B, float *C, long ldc, int nv, int acc) noexcept nogil

cdef extern from "gemm_simd.h" nogil:
    int SLMX_NR
    void slmx_omp_barrier()
    void slmx_pack_a(const float *A, long lda, int mr, long kc, float *Ap)
    void slmx_pack_a_lvl(int lvl, const float *A, long lda, int mr, long kc, float *Ap)
    void slmx_pack_b_rows(const float *B, long ldb, int nv, long kc, float *Bp)
    void slmx_pack_b_rows_multi(const float *B, long ldb, long ncols, long kc, float *Bp)
    void slmx_pack_b_trans(int lvl, const float *W, long ldw, int nv, long kc, float *Bp)
    int slmx_gemm_mr(int lvl)
    slmx_ukr_t slmx_gemm_ukr(int lvl, int mr)
    void slmx_gemv(int lvl, int M, long K, const float *A, long lda, const float *B, long ldb,
                   float *C, long ldc, long n0, long n1)
    void slmx_gevm(int lvl, int M, long K, const float *X, long ldx, const float *W, long ldw,
                   float *C, long ldc, long n0, long n1, int stream)

cdef extern from "gemm_bf16_simd.h" nogil:
    int SLMX_BF16_BBUF
    long slmx_bf16_amx_kc(long K, long kmax)
    long slmx_bf16_amx_ncp(long kc)
    int slmx_bf16_pf_on
    void slmx_f32_to_bf16_n(const float *src, uint16_t *dst, long n)
    void slmx_f32_to_bf16_lvl(int lvl, const float *src, uint16_t *dst, long n)
    void slmx_bf16_to_f32_n(const uint16_t *src, float *dst, long n)
    void slmx_bf16_dot(int lvl, long K, const uint16_t *X, long ldx, const uint16_t *W, long ldw,
                       float *C, long ldc, long m0, long m1, long n0, long n1)
    void slmx_bf16_amx_config()
    void slmx_bf16_amx_release()
    void slmx_bf16_pack_b(const uint16_t *W, long ldw, long N, long K, long n0, long k0, long kc, uint16_t *Bp)
    void slmx_bf16_pack_x(const uint16_t *X, long M, long K, long mb0, long mb1, uint16_t *Xp)
    void slmx_bf16_amx_task(const uint16_t *Xp, long M, long K, const uint16_t *W, const uint16_t *Wp, long N,
                            long m0, long m1, long p0, long p1, long kc, uint16_t *Bp, float *C, long ldc,
                            int stream, long sh, float *Ca, long ncap)
    void slmx_bf16_pack_weight(const uint16_t *W, long N, long K, long p0, long p1, uint16_t *Wp)

cdef extern from "simd.h" nogil:
    ctypedef struct slmx_cpu_features_t:
        int amx_bf16
    const slmx_cpu_features_t *slmx_cpu_features()

DEF NR = 32
DEF MC_OUTER = 2048       # rows of A packed at once (MC_OUTER x KC floats)
DEF PANEL_GROUP = 8       # B panels packed together (rows of B read in runs of 8 x 32 floats)
DEF TRANS_GROUP_DEPTH = 4096  # B = W^T: groups of TRANS_GROUP_DEPTH / kc panels (<= PANEL_GROUP), 512 KB
DEF SMALL_M = 8           # M below this skips packing
DEF PAR_MIN_FMA = 1048576 # M*N*K below this runs on one thread

DEF B_ROWS = 0            # B given as (K, N) row-major
DEF B_TRANS = 1           # B = W^T, W given as (N, K) row-major
DEF B_PACKED = 2          # B already in packed panels


cdef inline Py_ssize_t _cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


# Block sizes from the data caches (cpu.cache_sizes()), fixed at import:
#   KC       depth of a packed block: a B panel (KC x 32 floats) takes ~2/3 of L1
#   MC_ROWS  rows of A per task group: MC_ROWS x KC floats take ~1/6 of L2 (the panels
#            being multiplied and C stream through the rest)
cdef Py_ssize_t KC = 256
cdef Py_ssize_t MC_ROWS = 336
cdef Py_ssize_t ALT_MAX_SLICE = 8 * 2097152     # see _next_direction
# linear_f32 (C = X W^T) with 16 <= M <= 3 MC_ROWS: depth blocks of all of K up to LINEAR_KC_MAX,
# else equal blocks of at most that (0: the rule of _call_kc); see TRANS_GROUP_DEPTH.
cdef Py_ssize_t LINEAR_KC_MAX = 1024


cdef inline Py_ssize_t _call_kc(Py_ssize_t K) noexcept nogil:
    """depth of the blocks of one unpacked call: all of K up to 3 KC (C is then written once, not
    once per block: a block of 640 beat 256 by 10-15% at N = 16384, measured), else equal blocks of
    at most 2 KC (multiples of 16)"""
    cdef Py_ssize_t nb
    if K <= 3 * KC:
        return max(K, <Py_ssize_t>1)
    nb = _cdiv(K, 2 * KC)
    return _cdiv(_cdiv(K, nb), 16) * 16


cdef inline Py_ssize_t _linear_kc(Py_ssize_t M, Py_ssize_t K) noexcept nogil:
    """depth of the blocks of linear_f32 (see LINEAR_KC_MAX); M < 16 keeps _call_kc's (its bits)"""
    cdef Py_ssize_t nb
    if LINEAR_KC_MAX <= 0 or M < 16 or M > 3 * MC_ROWS:
        return _call_kc(K)
    if K <= LINEAR_KC_MAX:
        return max(K, <Py_ssize_t>1)
    nb = _cdiv(K, LINEAR_KC_MAX)
    return _cdiv(_cdiv(K, nb), 16) * 16


def _set_linear_kc_max(Py_ssize_t n):
    """Set LINEAR_KC_MAX (a multiple of 16, or 0 for the general rule; tuning experiments, tests);
    returns the previous value."""
    global LINEAR_KC_MAX
    if n < 0 or n % 16:
        raise ValueError(f"n must be 0 or a positive multiple of 16, got {n}")
    prev = LINEAR_KC_MAX
    LINEAR_KC_MAX = n
    return prev


def _block_sizes(l1, l2):
    """(KC, MC_ROWS) for data caches of l1 and l2 bytes"""
    kc = max(128, min(512, (int(l1) * 2 // 3) // (NR * 4) // 16 * 16))
    mc = max(56, (int(l2) // 6) // (kc * 4))
    return kc, mc


def block_sizes():
    """(KC, MC_ROWS, MC_OUTER, NR) in use"""
    return KC, MC_ROWS, MC_OUTER, NR


def _set_block_sizes(kc, mc):
    """Override (KC, MC_ROWS) for tuning experiments; PackedB objects keep their own kc."""
    global KC, MC_ROWS
    if kc < 16 or kc % 16 or mc < 1:
        raise ValueError(f"block sizes: kc must be a multiple of 16 >= 16 and mc >= 1, got {kc}, {mc}")
    KC, MC_ROWS = kc, mc


def _init_block_sizes():
    global KC, MC_ROWS, ALT_MAX_SLICE
    try:
        from slmx._kernels.cpu import cache_sizes
        l1, l2, _ = cache_sizes()
        KC, MC_ROWS = _block_sizes(l1 or 32768, l2 or 1048576)
        ALT_MAX_SLICE = 8 * (l2 or 2097152)
    except Exception:       # no cpu module / sysfs: keep the defaults
        pass


_init_block_sizes()


# ----------------------------------------------------------------------------- workspace
# One grown-on-demand, 64-byte aligned scratch buffer for packing, owned by whichever call
# holds the lock; a concurrent call (another Python thread) takes a private buffer instead.

cdef float *_ws = NULL
cdef void *_ws_raw = NULL
cdef size_t _ws_floats = 0
_ws_lock = threading.Lock()


cdef float *_aligned(void *raw) noexcept nogil:
    return <float *>((<uintptr_t>raw + 63) & ~(<uintptr_t>63))


cdef float *_ws_get(size_t nfloats) except NULL:
    global _ws, _ws_raw, _ws_floats
    if nfloats > _ws_floats:
        free(_ws_raw)
        _ws_raw = malloc(nfloats * sizeof(float) + 64)
        if _ws_raw == NULL:
            _ws_floats = 0
            _ws = NULL
            raise MemoryError("gemm workspace")
        _ws_floats = nfloats
        _ws = _aligned(_ws_raw)
    return _ws


# ----------------------------------------------------------------------------- packed driver

cdef inline void _gemm_task(int lvl, Py_ssize_t q, Py_ssize_t n_mg, Py_ssize_t n_ng, Py_ssize_t ntiles,
                            Py_ssize_t npan, Py_ssize_t mb, Py_ssize_t i0, Py_ssize_t pc, Py_ssize_t kc,
                            Py_ssize_t N, Py_ssize_t npad, const float *B, Py_ssize_t ldb, int bkind,
                            const float *abuf, float *bbuf, float *C, Py_ssize_t ldc) noexcept nogil:
    """task q of the (A tile group) x (B panel group) grid for depth block [pc, pc + kc)"""
    cdef Py_ssize_t mg = q // n_ng, ng = q % n_ng
    cdef Py_ssize_t t0 = (mg * ntiles) // n_mg, t1 = ((mg + 1) * ntiles) // n_mg
    cdef Py_ssize_t p0 = (ng * npan) // n_ng, p1 = ((ng + 1) * npan) // n_ng
    cdef Py_ssize_t pp, tt, r0, r1, nv, g, ng2, pg, g1
    cdef const float *bp
    cdef slmx_ukr_t ukr
    if bkind == B_TRANS:
        # groups of panels packed together, then each tile of A against all of them: a tile is
        # read from L2 (or L3) once per group, not once per panel; the group (512 KB) stays in
        # L2. With depth blocks of 1024 (LINEAR_KC_MAX), 2 threads, M = 512, K, N = 2048..4096:
        # 1.02x -> 1.08-1.13x numpy's matmul (before: each panel against every tile in turn)
        ng2 = max(1, min(<Py_ssize_t>PANEL_GROUP, TRANS_GROUP_DEPTH // kc))
        pg = p0
        while pg < p1:
            g1 = min(pg + ng2, p1)
            for pp in range(pg, g1):
                slmx_pack_b_trans(lvl, B + (pp * NR) * ldb + pc, ldb, <int>min(<Py_ssize_t>NR, N - pp * NR), kc,
                                  bbuf + (pp - pg) * kc * NR)
            for tt in range(t0, t1):
                r0 = (tt * mb) // ntiles
                r1 = ((tt + 1) * mb) // ntiles
                ukr = slmx_gemm_ukr(lvl, <int>(r1 - r0))
                for pp in range(pg, g1):
                    ukr(kc, abuf + r0 * kc, bbuf + (pp - pg) * kc * NR, C + (i0 + r0) * ldc + pp * NR, ldc,
                        <int>min(<Py_ssize_t>NR, N - pp * NR), pc > 0)
            pg = g1
        return
    for pp in range(p0, p1):
        nv = min(<Py_ssize_t>NR, N - pp * NR)
        if bkind == B_PACKED:
            bp = B + pc * npad + pp * kc * NR
        else:
            # pack a group of up to PANEL_GROUP panels when entering it
            g = (pp - p0) % PANEL_GROUP
            if g == 0:
                ng2 = min(<Py_ssize_t>PANEL_GROUP, p1 - pp)
                slmx_pack_b_rows_multi(B + pc * ldb + pp * NR, ldb, min(ng2 * NR, N - pp * NR), kc, bbuf)
            bp = bbuf + g * kc * NR
        for tt in range(t0, t1):
            r0 = (tt * mb) // ntiles
            r1 = ((tt + 1) * mb) // ntiles
            ukr = slmx_gemm_ukr(lvl, <int>(r1 - r0))
            ukr(kc, abuf + r0 * kc, bp, C + (i0 + r0) * ldc + pp * NR, ldc, <int>nv, pc > 0)


cdef void gemm_blocked(int lvl, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                       const float *A, Py_ssize_t lda, const float *B, Py_ssize_t ldb, int bkind,
                       Py_ssize_t kcb, Py_ssize_t npad, float *C, Py_ssize_t ldc,
                       float *wsA, Py_ssize_t wsa_stride, float *wsB, int nthreads) noexcept nogil:
    """C (M, N) = A (M, K) B (K, N); B per bkind (rows / W^T / packed with depth kcb, npad cols)

    wsA: MC_OUTER x kcb floats per thread, at a stride of wsa_stride floats (the packed tiles of A:
    shared by the threads, or one copy per thread in the column-split mode); wsB: PANEL_GROUP
    panels of kcb x 32 per thread (B is packed right before use, so a panel is in L1 for its tiles).

    Column-split mode (B packed on the fly, A's block fits half of L2, enough panels): each thread
    packs all of A's block itself and multiplies its own columns: no barrier, so a thread that the
    OS deschedules on a shared machine holds up no one until the end of the call.
    """
    cdef int MR = slmx_gemm_mr(lvl)
    cdef int nt = nthreads, tid, team
    cdef Py_ssize_t i0, mb, ntiles, npan, pc, kc, n_mg, n_ng, ntasks, tpg, t, q, r0, r1, u, s0, s1
    cdef bint priv
    cdef float *bbuf
    cdef float *abuf
    if nt < 1 or M * N * K < PAR_MIN_FMA:
        nt = 1
    npan = _cdiv(N, NR)
    i0 = mb = ntiles = pc = kc = n_mg = n_ng = ntasks = 0
    tpg = max(1, MC_ROWS // MR)   # MC_ROWS is sized for kcb = KC
    bbuf = abuf = NULL
    tid = team = 0
    priv = False
    with parallel(num_threads=nt):
        tid = omp_get_thread_num()
        team = omp_get_num_threads()
        bbuf = wsB + tid * kcb * NR * PANEL_GROUP
        i0 = 0
        while i0 < M:
            mb = min(<Py_ssize_t>MC_OUTER, M - i0)
            ntiles = _cdiv(mb, MR)
            # task grid: groups of A tiles (L2 blocks) x groups of B panels, >= nt tasks
            n_mg = _cdiv(ntiles, tpg)
            n_ng = 1
            priv = bkind != B_PACKED and team > 1 and npan >= 2 * team and mb <= 3 * MC_ROWS
            if priv:
                n_mg = 1
                n_ng = team
            elif team == 1 and bkind != B_PACKED and mb <= 3 * MC_ROWS:
                n_mg = 1        # one group of A tiles: B is packed once per depth block, not per group
            elif n_mg >= team:
                n_mg = min(ntiles, _cdiv(n_mg, team) * team)
            else:
                n_ng = min(npan, _cdiv(team, n_mg))
                if n_ng * n_mg < team:
                    n_mg = min(ntiles, _cdiv(team, n_ng))
            ntasks = n_mg * n_ng
            pc = 0
            while pc < K:
                kc = min(kcb, K - pc)
                if priv:
                    abuf = wsA + tid * wsa_stride
                    for u in range(ntiles):
                        s0 = (u * mb) // ntiles
                        s1 = ((u + 1) * mb) // ntiles
                        slmx_pack_a_lvl(lvl, A + (i0 + s0) * lda + pc, lda, <int>(s1 - s0), kc, abuf + s0 * kc)
                    _gemm_task(lvl, tid, n_mg, n_ng, ntiles, npan, mb, i0, pc, kc, N, npad, B, ldb, bkind,
                               abuf, bbuf, C, ldc)
                else:
                    abuf = wsA
                    for t in prange(ntiles, schedule="static"):
                        r0 = (t * mb) // ntiles
                        r1 = ((t + 1) * mb) // ntiles
                        slmx_pack_a_lvl(lvl, A + (i0 + r0) * lda + pc, lda, <int>(r1 - r0), kc, wsA + r0 * kc)
                    slmx_omp_barrier()
                    for q in prange(ntasks, schedule="static"):
                        _gemm_task(lvl, q, n_mg, n_ng, ntiles, npan, mb, i0, pc, kc, N, npad, B, ldb, bkind,
                                   wsA, bbuf, C, ldc)
                    slmx_omp_barrier()   # wsA is rewritten next
                pc = pc + kc
            i0 = i0 + mb


# The small-M W^T path walks each thread's rows of W in the direction opposite to its last call on
# the same W (remembered per weight pointer in a small direct-mapped table, updated under the GIL):
# a weight read again soon (a repeated call; a decode loop whose weights fit in cache) then starts
# on the rows its previous pass left in the core's L2 instead of the rows LRU evicted first.
# Each output row's dot product is the same whichever the order, so results do not change.
# Only while a thread's slice is at most ALT_MAX_SLICE bytes (8 x L2): beyond, the few % it could
# reuse were lost to the chunk order running against the prefetchers (262144 x 640, 4096 x 4096
# at one thread: 0.96-1.00x, measured).
DEF DIR_SLOTS = 64
cdef uintptr_t _dir_ptr[DIR_SLOTS]
cdef unsigned char _dir_bit[DIR_SLOTS]


cdef inline int _next_direction(const void *w) noexcept:
    """1: walk backward this call; alternates per weight (call with the GIL held)"""
    cdef uintptr_t key = <uintptr_t>w
    cdef int h = <int>(((key >> 6) ^ (key >> 17) ^ (key >> 29)) & (DIR_SLOTS - 1))
    cdef int d = 0
    if _dir_ptr[h] == key:
        d = _dir_bit[h] ^ 1
    _dir_ptr[h] = key
    _dir_bit[h] = <unsigned char>d
    return d


# M = 1 over a weight of at least STREAM_MIN_BYTES (whatever the thread count, so the kernel and the
# bits do not depend on it) with rows of at most STREAM_MAX_ROW bytes runs the streaming kernel:
# 8 interleaved rows shorter than a page are 8 short streams the hardware prefetcher barely ramps
# up on (262144 x 640 from memory: +5-7% at one thread, measured); with longer rows it made no
# difference or lost a few % (4096 x 16384), so those keep the 8-row kernel.
cdef Py_ssize_t STREAM_MIN_BYTES = 64 << 20
DEF STREAM_MAX_ROW = 4096


def _set_stream_min_bytes(Py_ssize_t nbytes):
    """Set the weight size from which M = 1 runs the streaming kernel (tuning experiments, tests);
    returns the previous value."""
    global STREAM_MIN_BYTES
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    prev = STREAM_MIN_BYTES
    STREAM_MIN_BYTES = nbytes
    return prev


cdef inline void _gevm_range(int lvl, int M, Py_ssize_t K, const float *A, Py_ssize_t lda, const float *W,
                             Py_ssize_t ldw, float *C, Py_ssize_t ldc, Py_ssize_t N, Py_ssize_t chunk,
                             Py_ssize_t c0, Py_ssize_t c1, int backward, int stream) noexcept nogil:
    """rows [c0 * chunk, min(N, c1 * chunk)) of C = A W^T, chunk by chunk, last chunk first if backward"""
    cdef Py_ssize_t c, cc
    for cc in range(c0, c1):
        c = c1 - 1 - (cc - c0) if backward else cc
        slmx_gevm(lvl, M, K, A, lda, W, ldw, C, ldc, c * chunk, min(N, (c + 1) * chunk), stream)


cdef void gemm_small_m(int lvl, int M, Py_ssize_t N, Py_ssize_t K, const float *A, Py_ssize_t lda,
                       const float *B, Py_ssize_t ldb, bint trans, float *C, Py_ssize_t ldc,
                       int nthreads, int backward) noexcept nogil:
    """M < 8 without packing. trans=0: C = A B, B (K, N); trans=1: C = A W^T, W (N, K).
    trans: thread t of T always takes the same rows, chunks [t * nchunks / T, (t + 1) * nchunks / T)
    (its slice stays in its own core's cache), walked backward if backward"""
    cdef Py_ssize_t chunk, nchunks, c, n0, n1
    cdef int nt = nthreads, tid, team
    cdef int stream = (trans and M == 1 and N * K * <Py_ssize_t>sizeof(float) >= STREAM_MIN_BYTES
                       and K * <Py_ssize_t>sizeof(float) <= STREAM_MAX_ROW)
    if nt < 1 or M * N * K < PAR_MIN_FMA // 4:
        nt = 1
    if trans:
        chunk = 64
    else:
        chunk = max(256, min(2048, (8192 // M) // 16 * 16))
    nchunks = _cdiv(N, chunk)
    if nt > 1 and not trans and nchunks < nt:
        chunk = _cdiv(_cdiv(N, nt), 16) * 16
        nchunks = _cdiv(N, chunk)
    if trans and N * K * <Py_ssize_t>sizeof(float) > ALT_MAX_SLICE * nt:
        backward = 0
    if nt == 1 or nchunks == 1:
        if trans:
            _gevm_range(lvl, M, K, A, lda, B, ldb, C, ldc, N, chunk, 0, nchunks, backward, stream)
        else:
            for c in range(nchunks):
                slmx_gemv(lvl, M, K, A, lda, B, ldb, C, ldc, c * chunk, min(N, (c + 1) * chunk))
        return
    if trans:
        with parallel(num_threads=nt):
            tid = omp_get_thread_num()
            team = omp_get_num_threads()
            _gevm_range(lvl, M, K, A, lda, B, ldb, C, ldc, N, chunk, (nchunks * tid) // team,
                        (nchunks * (tid + 1)) // team, backward, stream)
        return
    for c in prange(nchunks, num_threads=nt, schedule="static"):
        n0 = c * chunk
        n1 = min(N, n0 + chunk)
        slmx_gemv(lvl, M, K, A, lda, B, ldb, C, ldc, n0, n1)


cdef int gemm_forward(const float *A, Py_ssize_t lda, const float *B, Py_ssize_t ldb, int bkind,
                      Py_ssize_t kcb, Py_ssize_t npad, float *C, Py_ssize_t ldc,
                      Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, int nthreads) except -1:
    """C (M, N) = A (M, K) op(B): picks the small-M or the packed path, finds scratch memory"""
    cdef int lvl = slmx_simd_level()
    cdef Py_ssize_t r
    cdef float *ws
    cdef void *raw = NULL
    cdef size_t na, nbw, nta
    cdef int backward
    if M == 0 or N == 0:
        return 0
    if K == 0:
        with nogil:
            for r in range(M):
                for nbw in range(<size_t>N):
                    C[r * ldc + nbw] = 0.0
        return 0
    if M < SMALL_M and bkind != B_PACKED:
        backward = _next_direction(B) if bkind == B_TRANS else 0
        with nogil:
            gemm_small_m(lvl, <int>M, N, K, A, lda, B, ldb, bkind == B_TRANS, C, ldc, nthreads, backward)
        return 0
    na = <size_t>min(M, <Py_ssize_t>MC_OUTER) * <size_t>min(K, kcb) + 64    # per thread (column split)
    nbw = <size_t>(max(1, nthreads) * NR * PANEL_GROUP) * <size_t>kcb
    nta = <size_t>max(1, nthreads)
    locked = _ws_lock.acquire(False)
    try:
        if locked:
            ws = _ws_get(nta * na + nbw)
        else:
            raw = malloc((nta * na + nbw) * sizeof(float) + 64)
            if raw == NULL:
                raise MemoryError("gemm workspace")
            ws = _aligned(raw)
        with nogil:
            gemm_blocked(lvl, M, N, K, A, lda, B, ldb, bkind, kcb, npad, C, ldc, ws, na, ws + nta * na, nthreads)
    finally:
        if locked:
            _ws_lock.release()
        else:
            free(raw)
    return 0


# ----------------------------------------------------------------------------- Python API

cdef object _mat(object a, str name):
    if (type(a) is np.ndarray and cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_FLOAT32
            and cnp.PyArray_NDIM(<cnp.ndarray>a) == 2 and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)):
        return a
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise ValueError(f"{name}: expected dtype float32, got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")
    return a


cdef inline const float *_ptr(const float[:, ::1] v):
    return &v[0, 0] if v.shape[0] > 0 and v.shape[1] > 0 else NULL


cdef inline char *_data(object a):
    return <char *>cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline bint _overlap(object a, object b):
    """do the buffers of C-contiguous arrays a and b share bytes?"""
    cdef char *p = _data(a)
    cdef char *q = _data(b)
    cdef Py_ssize_t na = cnp.PyArray_NBYTES(<cnp.ndarray>a), nb = cnp.PyArray_NBYTES(<cnp.ndarray>b)
    return na > 0 and nb > 0 and p < q + nb and q < p + na


cdef void _check_out(object out, Py_ssize_t M, Py_ssize_t N, tuple inputs) except *:
    _mat(out, "out")
    if not out.flags.writeable:
        raise ValueError("out: the array is read-only")
    if out.shape[0] != M or out.shape[1] != N:
        raise ValueError(f"out: expected shape ({M}, {N}), got {out.shape}")
    for a in inputs:
        if _overlap(out, a):
            raise ValueError("out must not overlap an input")


def matmul(a, b, out, int nthreads=1):
    """out = a @ b    a (M, K), b (K, N), out (M, N); float32, C-contiguous, out not an input"""
    _mat(a, "a")
    _mat(b, "b")
    cdef cnp.npy_intp *as_ = cnp.PyArray_DIMS(<cnp.ndarray>a)
    cdef cnp.npy_intp *bs = cnp.PyArray_DIMS(<cnp.ndarray>b)
    cdef Py_ssize_t M = as_[0], K = as_[1], N = bs[1]
    if bs[0] != K:
        raise ValueError(f"b: expected {K} rows to match a {a.shape}, got {b.shape}")
    _check_out(out, M, N, (a, b))
    gemm_forward(<const float *>_data(a), K, <const float *>_data(b), N, B_ROWS, _call_kc(K), 0, <float *>_data(out),
                 N, M, N, K, nthreads)
    return out


def linear_f32(x, w, out, int nthreads=1):
    """out = x @ w.T    x (M, K), w (N, K) (a linear layer's weight), out (M, N); float32"""
    _mat(x, "x")
    _mat(w, "w")
    cdef cnp.npy_intp *xs = cnp.PyArray_DIMS(<cnp.ndarray>x)
    cdef cnp.npy_intp *ws = cnp.PyArray_DIMS(<cnp.ndarray>w)
    cdef Py_ssize_t M = xs[0], K = xs[1], N = ws[0]
    if ws[1] != K:
        raise ValueError(f"w: expected {K} columns to match x {x.shape}, got {w.shape}")
    _check_out(out, M, N, (x, w))
    gemm_forward(<const float *>_data(x), K, <const float *>_data(w), K, B_TRANS, _linear_kc(M, K), 0, <float *>_data(out),
                 N, M, N, K, nthreads)
    return out


cdef class PackedB:
    """A (K, N) right-hand operand packed once into the micro-kernel's panels.

    Layout: for each depth block of ``kc`` rows, ceil(N/32) panels of kc x 32 floats
    (row k of a panel = 32 consecutive columns, zero past column N). Built by ``pack_b``
    (from b (K, N)) or ``pack_weight`` (from w (N, K), i.e. B = w.T); level-independent.
    """
    cdef readonly Py_ssize_t K, N, kc, npad
    cdef readonly object data          # 1-D float32, 64-byte aligned view
    cdef float *ptr

    def __repr__(self):
        return f"PackedB(K={self.K}, N={self.N}, kc={self.kc})"

    @property
    def shape(self):
        return (self.K, self.N)


cdef PackedB _pack(object src, bint trans, int nthreads):
    cdef Py_ssize_t K, N
    if trans:
        N, K = src.shape[0], src.shape[1]
    else:
        K, N = src.shape[0], src.shape[1]
    cdef PackedB pk = PackedB.__new__(PackedB)
    pk.K, pk.N, pk.kc = K, N, KC
    pk.npad = _cdiv(N, NR) * NR
    raw = np.empty(max(1, K * pk.npad) + 16, dtype=np.float32)
    cdef float[::1] rv = raw
    cdef Py_ssize_t off = ((64 - (<uintptr_t>&rv[0]) % 64) % 64) // 4
    pk.data = raw[off:off + K * pk.npad]
    pk.ptr = &rv[0] + off
    if K == 0 or N == 0:
        return pk
    cdef const float[:, ::1] sv = src
    cdef const float *s = &sv[0, 0]
    cdef int lvl = slmx_simd_level()
    cdef Py_ssize_t kcb = pk.kc, npad = pk.npad
    cdef Py_ssize_t npan = npad // NR, nblk = _cdiv(K, kcb), job, blk, p, pc, kc, nv
    cdef int nt = nthreads if nthreads > 1 and K * N >= 262144 else 1
    cdef float *dst = pk.ptr
    with nogil:
        for job in prange(nblk * npan, num_threads=nt, schedule="static"):
            blk = job // npan
            p = job % npan
            pc = blk * kcb
            kc = min(kcb, K - pc)
            nv = min(<Py_ssize_t>NR, N - p * NR)
            if trans:
                slmx_pack_b_trans(lvl, s + (p * NR) * K + pc, K, nv, kc, dst + pc * npad + p * kc * NR)
            else:
                slmx_pack_b_rows(s + pc * N + p * NR, N, nv, kc, dst + pc * npad + p * kc * NR)
    return pk


def pack_b(b, int nthreads=1):
    """PackedB of b (K, N) float32, for ``matmul_packed(a, packed, out)`` = a @ b"""
    return _pack(_mat(b, "b"), False, nthreads)


def pack_weight(w, int nthreads=1):
    """PackedB of w.T for a weight w (N, K) float32: ``matmul_packed(x, packed, out)`` = x @ w.T"""
    return _pack(_mat(w, "w"), True, nthreads)


def matmul_packed(a, PackedB packed, out, int nthreads=1):
    """out = a @ B    a (M, K), B the (K, N) operand packed by pack_b / pack_weight, out (M, N)"""
    _mat(a, "a")
    if packed is None:
        raise ValueError("packed: expected a PackedB")
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], N = packed.N
    if packed.K != K:
        raise ValueError(f"a: expected {packed.K} columns to match the packed operand, got {a.shape}")
    _check_out(out, M, N, (a, packed.data))
    cdef const float[:, ::1] av = a
    cdef float[:, ::1] ov = out
    gemm_forward(_ptr(av), K, packed.ptr, 0, B_PACKED, packed.kc, packed.npad, <float *>_ptr(ov), N,
                 M, N, K, nthreads)
    return out


# ----------------------------------------------------------------------------- bf16 GEMM
# bf16 values travel as uint16 bit patterns (the upper half of a float32).

cdef int _amx_bf16_allowed = 1
cdef int _bf16_cacc_allowed = 1
cdef int _bf16_xprivate_on = 1
DEF BF16_XPRIV_MAX = 1048576        # bytes of packed X up to which each thread packs its own copy
cdef int _bf16_msplit_mode = 1      # 0 never, 1 by size, 2 always (tests)
cdef Py_ssize_t _bf16_stream_floats = 16777216   # C of at least this many floats (64 MB) is written
                                                 # with non-temporal stores on the AMX path
DEF BF16_STATIC_TASKS = 8               # AMX tasks per thread up to which they are split statically
DEF BF16_CVT_CHUNK = 65536              # elements per task of f32_to_bf16
DEF BF16_PACKED_MAX_BYTES = 33554432   # a PackedBF16's panels are read directly up to this size
DEF BF16_CACC_MAX = 2097152        # floats of the per-thread accumulator at most (8 MB)
DEF BF16_WS_KEEP = 67108864         # a larger workspace is allocated per call, not kept
# The AMX path's workspace (X packed into tiles + per-thread packed B), grown on demand and kept
# (a 1 MB allocation per call costs page faults); a concurrent call takes a private buffer.
cdef uint16_t *_bws = NULL
cdef void *_bws_raw = NULL
cdef size_t _bws_bytes = 0
_bws_lock = threading.Lock()


cdef uint16_t *_bws_get(size_t nbytes) except NULL:
    global _bws, _bws_raw, _bws_bytes
    if nbytes > _bws_bytes:
        free(_bws_raw)
        _bws_raw = malloc(nbytes + 64)
        if _bws_raw == NULL:
            _bws_bytes = 0
            _bws = NULL
            raise MemoryError("bf16 gemm workspace")
        _bws_bytes = nbytes
        _bws = <uint16_t *>_aligned(_bws_raw)
    return _bws
DEF BF16_AMX_MIN_M = 16   # fewer rows of x: dot products (an AMX tile would be mostly padding;
                          # M = 1 reads W at half the rate on tiles, measured)


def _set_bf16_stream_floats(Py_ssize_t n):
    """Set the output size (floats) from which the AMX path writes C with non-temporal stores
    (tests); returns the previous value."""
    global _bf16_stream_floats
    old = _bf16_stream_floats
    _bf16_stream_floats = max(0, n)
    return old


def _set_bf16_prefetch(bint on):
    """Turn the AMX path's software prefetch of coming B data on or off (tests, tuning);
    returns the previous setting"""
    global slmx_bf16_pf_on
    old = bool(slmx_bf16_pf_on)
    slmx_bf16_pf_on = on
    return old


def _set_bf16_msplit(int mode):
    """When the AMX path splits the rows of x between the threads (tests, tuning): 0 never, 1
    by size (default), 2 always (with at least one 32-row block per thread); returns the
    previous mode"""
    global _bf16_msplit_mode
    if mode not in (0, 1, 2):
        raise ValueError(f"mode: 0, 1 or 2, got {mode}")
    old = _bf16_msplit_mode
    _bf16_msplit_mode = mode
    return old


def _set_bf16_xprivate(bint on):
    """Allow or forbid a packed copy of a small X per thread on the AMX path (tests, tuning);
    returns the previous setting"""
    global _bf16_xprivate_on
    old = bool(_bf16_xprivate_on)
    _bf16_xprivate_on = on
    return old


def _set_bf16_cacc(bint allowed):
    """Allow or forbid the AMX path's accumulator of partial sums (tests: without it C itself
    is reloaded between depth blocks); returns the previous setting"""
    global _bf16_cacc_allowed
    old = bool(_bf16_cacc_allowed)
    _bf16_cacc_allowed = allowed
    return old


def _set_amx(bint allowed):
    """Allow or forbid the AMX path of linear_bf16 (tests); returns whether AMX is now used."""
    global _amx_bf16_allowed
    _amx_bf16_allowed = allowed
    return bool(_use_amx_bf16(slmx_simd_level()))


cdef int _use_amx_bf16(int lvl) noexcept nogil:
    return _amx_bf16_allowed and lvl >= SLMX_SIMD_BF16 and slmx_cpu_features().amx_bf16 and slmx_amx_usable()


def amx_bf16_used():
    """True when linear_bf16 runs on AMX tiles (AMX-BF16 present, granted by the OS, level bf16)."""
    return bool(_use_amx_bf16(slmx_simd_level()))


cdef object _u16(object a, str name):
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.uint16:
        raise ValueError(f"{name}: expected bf16 bits as uint16, got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")
    return a


def f32_to_bf16(src, dst, int nthreads=1):
    """dst = bf16(src), round to nearest even: src float32, dst uint16, same number of elements"""
    if not (isinstance(src, np.ndarray) and src.dtype == np.float32 and src.flags.c_contiguous):
        raise ValueError("src: expected a C-contiguous float32 array")
    if not (isinstance(dst, np.ndarray) and dst.dtype == np.uint16 and dst.flags.c_contiguous):
        raise ValueError("dst: expected a C-contiguous uint16 array")
    if src.size != dst.size:
        raise ValueError(f"dst: expected {src.size} elements, got {dst.size}")
    if src.size == 0:
        return dst
    cdef const float[::1] sv = src.reshape(-1)
    cdef uint16_t[::1] dv = dst.reshape(-1)
    cdef Py_ssize_t n = sv.shape[0], nch = _cdiv(n, BF16_CVT_CHUNK), c, a0
    cdef int lvl = slmx_simd_level()
    cdef int nt = nthreads if nthreads > 1 and nch > 1 else 1
    cdef const float *s = &sv[0]
    cdef uint16_t *d = &dv[0]
    with nogil:
        for c in prange(nch, num_threads=nt, schedule="static"):
            a0 = c * BF16_CVT_CHUNK
            slmx_f32_to_bf16_lvl(lvl, s + a0, d + a0, min(<Py_ssize_t>BF16_CVT_CHUNK, n - a0))
    return dst


def bf16_to_f32(src, dst):
    """dst = float32(src): src uint16 bf16 bits, dst float32, same number of elements (exact)"""
    if not (isinstance(src, np.ndarray) and src.dtype == np.uint16 and src.flags.c_contiguous):
        raise ValueError("src: expected a C-contiguous uint16 array")
    if not (isinstance(dst, np.ndarray) and dst.dtype == np.float32 and dst.flags.c_contiguous):
        raise ValueError("dst: expected a C-contiguous float32 array")
    if src.size != dst.size:
        raise ValueError(f"dst: expected {src.size} elements, got {dst.size}")
    if src.size == 0:
        return dst
    cdef const uint16_t[::1] sv = src.reshape(-1)
    cdef float[::1] dv = dst.reshape(-1)
    with nogil:
        slmx_bf16_to_f32_n(&sv[0], &dv[0], sv.shape[0])
    return dst


cdef void _bf16_dot_par(int lvl, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const uint16_t *X,
                        const uint16_t *W, float *C, int nt) noexcept nogil:
    """C = X W^T by the dot-product kernels: N split into chunks of rows of W (or M when N is small)"""
    cdef Py_ssize_t chunk, nch, c, a0, a1
    if nt == 1:
        slmx_bf16_dot(lvl, K, X, K, W, K, C, N, 0, M, 0, N)
        return
    if N >= 64 * nt:
        chunk = 64
        nch = _cdiv(N, chunk)
        for c in prange(nch, num_threads=nt, schedule="static"):
            a0 = c * chunk
            a1 = min(N, a0 + chunk)
            slmx_bf16_dot(lvl, K, X, K, W, K, C, N, 0, M, a0, a1)
    else:
        chunk = max(4, _cdiv(M, 4 * nt) * 4)
        nch = _cdiv(M, chunk)
        for c in prange(nch, num_threads=nt, schedule="static"):
            a0 = c * chunk
            a1 = min(M, a0 + chunk)
            slmx_bf16_dot(lvl, K, X, K, W, K, C, N, a0, a1, 0, N)


cdef inline Py_ssize_t _bf16_first_panel(Py_ssize_t u, Py_ssize_t u0) noexcept nogil:
    """the first panel whose start is at or past u tile columns (16 columns each) from the left:
    panel 0 has u0 of them (1 or 2), every other 2"""
    if u <= 0:
        return 0
    if u <= u0:
        return 1
    return 1 + (u - u0 + 1) // 2


cdef inline void _bf16_amx_task(Py_ssize_t t, Py_ssize_t nmg, Py_ssize_t nmb, Py_ssize_t ngrp, Py_ssize_t npan,
                                Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const uint16_t *Xp, const uint16_t *W,
                                const uint16_t *Wp, Py_ssize_t kc, uint16_t *bp, float *C, int stream,
                                Py_ssize_t sh, float *ca, Py_ssize_t ncap, bint msplit) noexcept nogil:
    """task t of the grid (ngrp groups of panels, of equal numbers of tile columns) x (nmg
    ranges of 32-row blocks); msplit: row range major (a static split gives each thread one)"""
    cdef Py_ssize_t g = t % ngrp if msplit else t // nmg
    cdef Py_ssize_t mg = t // ngrp if msplit else t % nmg
    cdef Py_ssize_t u0 = (((N - sh) % 32 + sh) // 16) if sh else 2
    cdef Py_ssize_t units = u0 + 2 * (npan - 1)
    cdef Py_ssize_t p0 = min(npan, _bf16_first_panel((g * units) // ngrp, u0))
    cdef Py_ssize_t p1 = min(npan, _bf16_first_panel(((g + 1) * units) // ngrp, u0))
    if p0 >= p1:
        return
    slmx_bf16_amx_task(Xp, M, K, W, Wp, N, (mg * nmb) // nmg * 32, min(M, ((mg + 1) * nmb) // nmg * 32),
                       p0, p1, kc, bp, C, N, stream, sh, ca, ncap)


# AMX depth blocks of at most this many (a multiple of 32; K beyond it: equal blocks): a B block
# of 32 x 640 bf16 (40 KB) stays in L1 over the 32-row blocks of X, whose tiles are loaded with
# the no-reuse hint (tileloaddt1) so that they do not evict it. 2 threads, 512 rows: 4096 x 1024
# 1646 -> 2572 GFLOP/s (with the accumulator, see linear_bf16); limits 320..512 were no faster
# with a plain weight (packed in each call), and blocks of 256 for few columns (N <= 640, K >=
# 2048, once 7-10% faster with whole-K blocks) are now 2-5% slower than 640. Fewer than 64 rows
# (one block of X: no reuse of B in L1 to win): blocks of up to 2048, 5-10% faster at M = 16.
cdef Py_ssize_t _bf16_kc_max = 640, _bf16_kc_max_few = 2048
DEF BF16_FEW_ROWS = 64


def _set_bf16_kc(Py_ssize_t kmax, Py_ssize_t kmax_few=-1):
    """Set the AMX depth-block limits (multiples of 32 in [32, 2048]; tests, tuning): from 64
    rows of x on, and below (default: the same); returns the old pair"""
    global _bf16_kc_max, _bf16_kc_max_few
    if kmax_few < 0:
        kmax_few = kmax
    for v in (kmax, kmax_few):
        if v < 32 or v % 32 or v > 2048:
            raise ValueError(f"depth block: a multiple of 32 in [32, 2048], got {v}")
    old = (_bf16_kc_max, _bf16_kc_max_few)
    _bf16_kc_max, _bf16_kc_max_few = kmax, kmax_few
    return old


cdef void _bf16_amx(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const uint16_t *X, uint16_t *Xp, int xcopies,
                    const uint16_t *W, const uint16_t *Wp, float *C, uint16_t *bws, int nt, Py_ssize_t kc,
                    float *caw, Py_ssize_t ncap) noexcept nogil:
    """C (M, N) = X W^T on AMX tiles. Xp: room for xcopies of X packed into 16 x 32 tiles
    (ceil(M / 16) x ceil(K / 32) of them each); bws: SLMX_BF16_BBUF bf16 per thread; Wp: W packed by
    slmx_bf16_pack_weight, or NULL (each task packs its panels of W).

    Tasks: groups of ncp 32-column panels (x, when there are fewer groups than threads, ranges
    of 32-row blocks); beyond a few per thread they are handed out dynamically, so a thread the
    OS deschedules on a busy machine takes fewer of them instead of holding up the call."""
    # non-temporal stores when C is far beyond the caches (rows of 64-byte multiples). When C
    # does not start on a 64-byte boundary (numpy aligns large arrays to 16) and its rows are
    # 64-byte multiples, the panels are shifted so that all but the first start on one: a tile
    # row stored across two cache lines made the whole call 13% slower (1 thread, 512 x 640 x
    # 640). A packed weight's panels are fixed: with such an output the call packs W itself
    # (as fast as the packed panels with split stores, measured).
    cdef int rows64 = N % 16 == 0 and (<uintptr_t>C) % 4 == 0
    cdef int stream = M * N >= _bf16_stream_floats and rows64
    cdef Py_ssize_t sh = (((64 - (<uintptr_t>C) % 64) % 64) // 4) if rows64 and N >= 64 else 0   # < 16
    if sh and Wp != NULL:
        Wp = NULL
    cdef Py_ssize_t nmb = _cdiv(M, 32)
    cdef Py_ssize_t npan = (1 + (N - sh) // 32) if sh else _cdiv(N, 32)   # with sh: the wrap panel + full ones
    cdef Py_ssize_t ncp = min(slmx_bf16_amx_ncp(kc), _cdiv(npan, nt))
    cdef Py_ssize_t ngrp, nmg, ntask, t, mb
    # groups of about ncp panels, a multiple of the threads when there are enough panels
    ngrp = min(npan, nt * _cdiv(npan, nt * ncp))
    nmg = min(nmb, _cdiv(nt, ngrp))
    # the rows split between the threads (each packs its own rows of X and multiplies them by
    # every panel: no packed X read across cores, which was the main cost with 2 threads; but
    # each thread reads all of W, and with a plain W packs all of it). 2 threads, packed W: M =
    # 512 +7..40% at every K, N; 256 +1..22% up to N = 8 M, 7% slower at 640 x 4096; 128
    # 15-20% slower. Plain W: M = 512 +10..25% up to N = 1024, 2% slower from 2048; M = 1024
    # +12..18% up to N = 4096; M = 256 0..19% slower.
    cdef Py_ssize_t mt = M // nt
    cdef bint msplit = _bf16_msplit_mode != 0 and nt > 1 and nmb >= nt and (_bf16_msplit_mode == 2 or (
        (mt >= 128 and N <= 8 * M) if Wp != NULL else (mt >= 192 and (N <= 2 * M or mt >= 512))))
    if msplit:
        ncp = slmx_bf16_amx_ncp(kc)
        ngrp = _cdiv(npan, ncp)
        nmg = nt
    ntask = ngrp * nmg
    cdef Py_ssize_t tid, nth, n16 = _cdiv(M, 16), r0, r1
    # columns split (a small X, room for a copy per thread): each thread packs all of X into its
    # own copy, not half of one copy read by both (2 threads, plain W: 128 x 640 x 640 +17%,
    # 512 x 640 x 2048..4096 +2..9%, 512 x 1024 x 2048..4096 +1..2%, 256 x 640..1024 x
    # 640..2048 +4..10%; packed 128 x 640..2048 x 640..2048 +3..21%; but 512 x 2048 x 4096
    # (X of 2 MB) 3% slower, 512 x 4096 x 4096 9%)
    cdef bint xpriv = _bf16_xprivate_on and not msplit and nt > 1 and xcopies == nt
    cdef uint16_t *bp
    cdef float *ca
    cdef uint16_t *xpt
    with parallel(num_threads=nt):
        xpt = Xp
        bp = bws + omp_get_thread_num() * SLMX_BF16_BBUF
        ca = (caw + omp_get_thread_num() * ncap) if caw != NULL else NULL
        slmx_bf16_amx_config()
        if msplit:
            # each thread its own rows (those of its tasks when the team has nt threads); the
            # barrier keeps any other split correct
            tid = omp_get_thread_num()
            nth = omp_get_num_threads()
            if nth == nmg:
                r0 = min(n16, 2 * ((tid * nmb) // nmg))
                r1 = min(n16, 2 * (((tid + 1) * nmb) // nmg))
            else:
                r0 = (n16 * tid) // nth
                r1 = (n16 * (tid + 1)) // nth
            slmx_bf16_pack_x(X, M, K, r0, r1, Xp)
            slmx_omp_barrier()
        elif xpriv:
            xpt = Xp + omp_get_thread_num() * (n16 * 16 * _cdiv(K, 32) * 32)
            slmx_bf16_pack_x(X, M, K, 0, n16, xpt)
        else:
            for mb in prange(_cdiv(M, 16), schedule="static"):
                slmx_bf16_pack_x(X, M, K, mb, mb + 1, Xp)
        # few tasks (or the rows split): a static split (2-8% faster with 2 threads at 512 x
        # 640..1024 x 640..1024); many: handed out one by one
        if msplit or ntask <= BF16_STATIC_TASKS * nt:
            for t in prange(ntask, schedule="static"):
                _bf16_amx_task(t, nmg, nmb, ngrp, npan, M, N, K, xpt, W, Wp, kc, bp, C, stream, sh, ca, ncap, msplit)
        else:
            for t in prange(ntask, schedule="dynamic"):
                _bf16_amx_task(t, nmg, nmb, ngrp, npan, M, N, K, xpt, W, Wp, kc, bp, C, stream, sh, ca, ncap, msplit)
        slmx_bf16_amx_release()


cdef class PackedBF16:
    """A bf16 weight w (N, K) packed once into the AMX tile layout, for ``linear_bf16``.

    Layout (``data``, uint16, 64-byte aligned): ceil(N / 32) panels of 32 rows of w x Kp
    (K rounded up to 32; zero past row N and column K), each [Kp / 32][2 halves][16 pairs of
    depth][16 rows][2] -- the B tiles of tdpbf16ps. ``w`` is the weight itself (a reference, not
    a copy), used by the dot-product paths (M < 16, AMX not usable) and when the output does
    not start on a 64-byte boundary while N % 16 == 0 (the AMX path then shifts its panels onto
    the boundary and packs from w per call; ``ops.linear`` allocates its outputs aligned);
    ``data`` is None when AMX was not usable at packing time.
    """
    cdef readonly Py_ssize_t N, K
    cdef readonly object w, data
    cdef const uint16_t *wptr
    cdef uint16_t *ptr

    def __repr__(self):
        return f"PackedBF16(N={self.N}, K={self.K}, packed={self.data is not None})"

    @property
    def shape(self):
        return (self.N, self.K)


def pack_weight_bf16(w, int nthreads=1):
    """PackedBF16 of a weight w (N, K) bf16 bits (uint16): ``linear_bf16(x, packed, out)`` = x @ w.T
    without packing w on every call (the packed copy takes N x K bf16 beside w)"""
    _u16(w, "w")
    cdef PackedBF16 pk = PackedBF16.__new__(PackedBF16)
    pk.N, pk.K = w.shape[0], w.shape[1]
    pk.w = w
    pk.data = None
    pk.ptr = NULL
    cdef const uint16_t[:, ::1] wv
    if pk.N > 0 and pk.K > 0:
        wv = w
        pk.wptr = &wv[0, 0]
    if pk.N == 0 or pk.K == 0 or not _use_amx_bf16(slmx_simd_level()):
        return pk
    cdef Py_ssize_t npan = _cdiv(pk.N, 32), Kp = _cdiv(pk.K, 32) * 32, n = npan * 32 * Kp, p
    raw = np.empty(n + 32, np.uint16)
    cdef uint16_t[::1] rv = raw
    cdef Py_ssize_t off = ((64 - (<uintptr_t>&rv[0]) % 64) % 64) // 2
    pk.data = raw[off:off + n]
    pk.ptr = &rv[0] + off
    cdef int nt = nthreads if nthreads > 1 and n >= 262144 else 1
    cdef Py_ssize_t N = pk.N, K = pk.K
    cdef const uint16_t *W = pk.wptr
    cdef uint16_t *Wp = pk.ptr
    with nogil:
        for p in prange(npan, num_threads=nt, schedule="static"):
            slmx_bf16_pack_weight(W, N, K, p, p + 1, Wp)
    return pk


def linear_bf16(x, w, out, int nthreads=1):
    """out = x @ w.T    x (M, K), w (N, K) bf16 bits (uint16) or a PackedBF16 of it, out (M, N)
    float32; exact bf16 products, fp32 accumulation (AMX tiles when granted and M >= 16, else
    AVX512_BF16 / AVX-512 / AVX2 / scalar dot products)"""
    cdef const uint16_t *Wp = NULL
    cdef PackedBF16 pk
    _u16(x, "x")
    if isinstance(w, PackedBF16):
        pk = w
        w = pk.w
        # packed panels beyond the caches would be read by the tile loads straight from memory
        # (stalls); packing from w in each task is faster there (1 thread, 512 x 640 x 65536:
        # 748 vs 782 GFLOP/s; up to 16384 rows the packed panels win)
        if pk.data is not None and pk.data.nbytes <= BF16_PACKED_MAX_BYTES:
            Wp = pk.ptr
            if np.may_share_memory(out, pk.data):
                raise ValueError("out must not overlap an input")
    else:
        _u16(w, "w")
    _mat(out, "out")
    cdef Py_ssize_t M = x.shape[0], K = x.shape[1], N = w.shape[0]
    if w.shape[1] != K:
        raise ValueError(f"w: expected {K} columns to match x {x.shape}, got {w.shape}")
    if out.shape[0] != M or out.shape[1] != N:
        raise ValueError(f"out: expected shape ({M}, {N}), got {out.shape}")
    if np.may_share_memory(out, x) or np.may_share_memory(out, w):
        raise ValueError("out must not overlap an input")
    if M == 0 or N == 0:
        return out
    cdef float[:, ::1] ov = out
    cdef float *C = &ov[0, 0]
    if K == 0:
        out[...] = 0
        return out
    cdef const uint16_t[:, ::1] xv = x
    cdef const uint16_t[:, ::1] wv = w
    cdef const uint16_t *X = &xv[0, 0]
    cdef const uint16_t *W = &wv[0, 0]
    cdef int lvl = slmx_simd_level()
    cdef int nt = nthreads if nthreads > 1 and M * N * K >= PAR_MIN_FMA // 4 else 1
    cdef Py_ssize_t Mp, Kp
    cdef uint16_t *xp
    cdef uint16_t *bws
    if M < BF16_AMX_MIN_M or not _use_amx_bf16(lvl):
        with nogil:
            _bf16_dot_par(lvl, M, N, K, X, W, C, nt)
        return out
    Mp = _cdiv(M, 16) * 16
    Kp = _cdiv(K, 32) * 32
    # per-thread accumulator of a task's partial sums over depth blocks (K beyond one block): C
    # blocks of 32 x 32 as 4 contiguous tiles (tile stores into C's rows 4 KB apart collided in
    # L1 / L2; 2 threads, 512 x 1024 x 1024: 1846 -> 2244 GFLOP/s, packed weight)
    cdef Py_ssize_t ncap = 0
    cdef Py_ssize_t kc = slmx_bf16_amx_kc(K, _bf16_kc_max if M >= BF16_FEW_ROWS else _bf16_kc_max_few)
    if Kp > kc:
        ncap = _cdiv(M, 32) * 1024 * (slmx_bf16_amx_ncp(kc) + 1)
        if ncap > BF16_CACC_MAX or not _bf16_cacc_allowed:
            ncap = 0
    # a small X: one packed copy per thread (see _bf16_amx)
    cdef int xcopies = nt if nt > 1 and <size_t>Mp * Kp * 2 <= BF16_XPRIV_MAX else 1
    cdef size_t nbytes = <size_t>Mp * Kp * 2 * xcopies + <size_t>nt * SLMX_BF16_BBUF * 2 + <size_t>nt * ncap * 4
    cdef void *raw = NULL
    locked = nbytes <= BF16_WS_KEEP and _bws_lock.acquire(False)
    try:
        if locked:
            xp = _bws_get(nbytes)
        else:
            raw = malloc(nbytes + 64)
            if raw == NULL:
                raise MemoryError("bf16 gemm workspace")
            xp = <uint16_t *>_aligned(raw)
        bws = xp + Mp * Kp * xcopies
        with nogil:
            _bf16_amx(M, N, K, X, xp, xcopies, W, Wp, C, bws, nt, kc, <float *>(bws + nt * SLMX_BF16_BBUF) if ncap else NULL, ncap)
    finally:
        if locked:
            _bws_lock.release()
        else:
            free(raw)
    return out
