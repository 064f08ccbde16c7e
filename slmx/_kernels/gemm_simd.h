/* slmx fp32 GEMM building blocks: packing routines and register-blocked micro-kernels.
 *
 * Packed layouts (floats):
 *   A tile of mr rows x kc:   Ap[k*mr + i] = A[i, k]                       (i < mr <= MR)
 *   B panel of kc x 32 cols:  Bp[k*32 + j] = B[k, j]  (zero past the last column)
 * A micro-kernel computes the mr x 32 block C (+)= Ap * Bp, storing only the first nv columns.
 *   AVX-512: MR = 14, two zmm per row: 28 accumulators, B row in 2 zmm, A broadcast from memory.
 *   AVX2:    MR = 6, a 32-wide panel as two 16-wide halves, 12 ymm accumulators per half.
 *   scalar:  MR = 4, portable C (the compiler vectorizes what it can for the baseline ISA).
 * Small-M paths that skip packing: slmx_gemv_* (C = A B, B row-major (K, N): rows of B
 * streamed once) and slmx_gevm_* (C = X W^T, W (N, K): dot products along K).
 */
#ifndef SLMX_GEMM_SIMD_H
#define SLMX_GEMM_SIMD_H

#include "simd.h"
#include "vmath_simd.h"
#include <string.h>

#define SLMX_NR 32
#define SLMX_ALWAYS_INLINE_G static inline __attribute__((always_inline))

/* Cython's prange inside a parallel block is "omp for nowait": the driver places barriers
 * itself (an orphaned barrier binds to the enclosing parallel region). */
static inline void slmx_omp_barrier(void) {
#ifdef _OPENMP
#pragma omp barrier
#endif
}

typedef void (*slmx_ukr_t)(long kc, const float *A, const float *B, float *C, long ldc, int nv, int acc);

/* ============================================================== packing (portable) */

/* Ap[k*mr + i] = A[i*lda + k], i < mr, k < kc */
static void slmx_pack_a(const float *A, long lda, int mr, long kc, float *Ap) {
    for (long k = 0; k < kc; k++) {
        for (int i = 0; i < mr; i++) Ap[k * mr + i] = A[i * lda + k];
    }
}

/* Bp[k*32 + j] = B[k*ldb + j] for j < nv, 0 for nv <= j < 32 */
static void slmx_pack_b_rows(const float *B, long ldb, int nv, long kc, float *Bp) {
    for (long k = 0; k < kc; k++) {
        memcpy(Bp + k * SLMX_NR, B + k * ldb, (size_t)nv * sizeof(float));
        for (int j = nv; j < SLMX_NR; j++) Bp[k * SLMX_NR + j] = 0.0f;
    }
}

/* ncols (> 0) columns of B as ceil(ncols/32) consecutive panels of kc x 32: row by row, so
 * each row of B is read as one contiguous run of ncols floats */
static void slmx_pack_b_rows_multi(const float *B, long ldb, long ncols, long kc, float *Bp) {
    long np = (ncols + SLMX_NR - 1) / SLMX_NR;
    for (long k = 0; k < kc; k++) {
        const float *b = B + k * ldb;
        for (long p = 0; p < np; p++) {
            float *d = Bp + (p * kc + k) * SLMX_NR;
            long nv = ncols - p * SLMX_NR;
            if (nv >= SLMX_NR) memcpy(d, b + p * SLMX_NR, SLMX_NR * sizeof(float));
            else {
                memcpy(d, b + p * SLMX_NR, (size_t)nv * sizeof(float));
                for (long j = nv; j < SLMX_NR; j++) d[j] = 0.0f;
            }
        }
    }
}

/* B = W^T: Bp[k*32 + j] = W[j*ldw + k] for j < nv, 0 past nv */
static void slmx_pack_b_trans_scalar(const float *W, long ldw, int nv, long kc, float *Bp) {
    for (int j = 0; j < nv; j++) {
        const float *w = W + j * ldw;
        for (long k = 0; k < kc; k++) Bp[k * SLMX_NR + j] = w[k];
    }
    for (int j = nv; j < SLMX_NR; j++)
        for (long k = 0; k < kc; k++) Bp[k * SLMX_NR + j] = 0.0f;
}

/* ============================================================== scalar micro-kernel */

#define SLMX_MR_SCALAR 4

static void slmx_ukr_scalar(int mr, long kc, const float *A, const float *B, float *C, long ldc, int nv, int acc) {
    float c[SLMX_MR_SCALAR][SLMX_NR];
    memset(c, 0, sizeof c);
    for (long k = 0; k < kc; k++) {
        const float *b = B + k * SLMX_NR;
        for (int i = 0; i < mr; i++) {
            float a = A[k * mr + i];
            for (int j = 0; j < SLMX_NR; j++) c[i][j] += a * b[j];
        }
    }
    for (int i = 0; i < mr; i++) {
        float *cr = C + i * ldc;
        if (acc) for (int j = 0; j < nv; j++) cr[j] += c[i][j];
        else for (int j = 0; j < nv; j++) cr[j] = c[i][j];
    }
}

#define SLMX_UKR_SCALAR_DEF(MR) \
    static void slmx_ukr_scalar_##MR(long kc, const float *A, const float *B, float *C, long ldc, int nv, int acc) \
    { slmx_ukr_scalar(MR, kc, A, B, C, ldc, nv, acc); }
SLMX_UKR_SCALAR_DEF(1) SLMX_UKR_SCALAR_DEF(2) SLMX_UKR_SCALAR_DEF(3) SLMX_UKR_SCALAR_DEF(4)

static const slmx_ukr_t slmx_ukr_scalar_table[SLMX_MR_SCALAR + 1] = {
    0, slmx_ukr_scalar_1, slmx_ukr_scalar_2, slmx_ukr_scalar_3, slmx_ukr_scalar_4};

/* C[m, n0:n1] (+)= sum_k A[m, k] B[k, n0:n1]: the portable small-M path */
static void slmx_gemv_scalar(int M, long K, const float *A, long lda, const float *B, long ldb,
                             float *C, long ldc, long n0, long n1) {
    for (int m = 0; m < M; m++) {
        float *c = C + m * ldc;
        for (long n = n0; n < n1; n++) c[n] = 0.0f;
        for (long k = 0; k < K; k++) {
            float a = A[m * lda + k];
            const float *b = B + k * ldb;
            for (long n = n0; n < n1; n++) c[n] += a * b[n];
        }
    }
}

/* C[m, n] = dot(X[m, :K], W[n, :K]) for m < M, n0 <= n < n1 */
static void slmx_gevm_scalar(int M, long K, const float *X, long ldx, const float *W, long ldw,
                             float *C, long ldc, long n0, long n1) {
    for (long n = n0; n < n1; n++) {
        const float *w = W + n * ldw;
        for (int m = 0; m < M; m++) {
            const float *x = X + m * ldx;
            float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
            long k = 0;
            for (; k + 4 <= K; k += 4) {
                s0 += x[k] * w[k]; s1 += x[k + 1] * w[k + 1];
                s2 += x[k + 2] * w[k + 2]; s3 += x[k + 3] * w[k + 3];
            }
            for (; k < K; k++) s0 += x[k] * w[k];
            C[m * ldc + n] = (s0 + s1) + (s2 + s3);
        }
    }
}

#if SLMX_X86
/* ============================================================== AVX-512 */

#define SLMX_MR_AVX512 14

SLMX_ALWAYS_INLINE_G SLMX_TARGET_AVX512 void
slmx_ukr512_body(const int MR, long kc, const float *A, const float *B, float *C, long ldc, int nv, int acc) {
    __m512 c0[SLMX_MR_AVX512], c1[SLMX_MR_AVX512];
#pragma GCC unroll 14
    for (int i = 0; i < MR; i++) {
        _mm_prefetch((const char *)(C + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(C + i * ldc + 31), _MM_HINT_T0);
        c0[i] = _mm512_setzero_ps();
        c1[i] = _mm512_setzero_ps();
    }
    for (long k = 0; k < kc; k++) {
        __m512 b0 = _mm512_loadu_ps(B), b1 = _mm512_loadu_ps(B + 16);
#pragma GCC unroll 14
        for (int i = 0; i < MR; i++) {
            __m512 a = _mm512_set1_ps(A[i]);
            c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
            c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
        }
        A += MR;
        B += SLMX_NR;
    }
    if (nv == SLMX_NR) {
#pragma GCC unroll 14
        for (int i = 0; i < MR; i++) {
            float *cr = C + i * ldc;
            if (acc) {
                c0[i] = _mm512_add_ps(c0[i], _mm512_loadu_ps(cr));
                c1[i] = _mm512_add_ps(c1[i], _mm512_loadu_ps(cr + 16));
            }
            _mm512_storeu_ps(cr, c0[i]);
            _mm512_storeu_ps(cr + 16, c1[i]);
        }
    } else {
        __mmask16 m0 = slmx_tail_mask16(nv), m1 = slmx_tail_mask16(nv > 16 ? nv - 16 : 0);
#pragma GCC unroll 14
        for (int i = 0; i < MR; i++) {
            float *cr = C + i * ldc;
            if (acc) {
                c0[i] = _mm512_add_ps(c0[i], _mm512_maskz_loadu_ps(m0, cr));
                c1[i] = _mm512_add_ps(c1[i], _mm512_maskz_loadu_ps(m1, cr + 16));
            }
            _mm512_mask_storeu_ps(cr, m0, c0[i]);
            _mm512_mask_storeu_ps(cr + 16, m1, c1[i]);
        }
    }
}

#define SLMX_UKR512_DEF(MR) \
    static SLMX_TARGET_AVX512 void slmx_ukr512_##MR(long kc, const float *A, const float *B, float *C, long ldc, int nv, int acc) \
    { slmx_ukr512_body(MR, kc, A, B, C, ldc, nv, acc); }
SLMX_UKR512_DEF(1) SLMX_UKR512_DEF(2) SLMX_UKR512_DEF(3) SLMX_UKR512_DEF(4) SLMX_UKR512_DEF(5)
SLMX_UKR512_DEF(6) SLMX_UKR512_DEF(7) SLMX_UKR512_DEF(8) SLMX_UKR512_DEF(9) SLMX_UKR512_DEF(10)
SLMX_UKR512_DEF(11) SLMX_UKR512_DEF(12) SLMX_UKR512_DEF(13) SLMX_UKR512_DEF(14)

static const slmx_ukr_t slmx_ukr512_table[SLMX_MR_AVX512 + 1] = {
    0, slmx_ukr512_1, slmx_ukr512_2, slmx_ukr512_3, slmx_ukr512_4, slmx_ukr512_5, slmx_ukr512_6,
    slmx_ukr512_7, slmx_ukr512_8, slmx_ukr512_9, slmx_ukr512_10, slmx_ukr512_11, slmx_ukr512_12,
    slmx_ukr512_13, slmx_ukr512_14};

/* B = W^T packing with 16x16 register transposes (full 16-blocks), scalar for the edges */
static SLMX_TARGET_AVX512 void slmx_pack_b_trans_avx512(const float *W, long ldw, int nv, long kc, float *Bp) {
    long k16 = kc & ~15L;
    int jb;
    for (jb = 0; jb + 16 <= nv; jb += 16) {
        for (long k = 0; k < k16; k += 16) {
            __m512 r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(W + (jb + i) * ldw + k);
            slmx_transpose16_avx512(r);
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) _mm512_storeu_ps(Bp + (k + i) * SLMX_NR + jb, r[i]);
        }
        for (int j = jb; j < jb + 16; j++)
            for (long k = k16; k < kc; k++) Bp[k * SLMX_NR + j] = W[j * ldw + k];
    }
    for (int j = jb; j < SLMX_NR; j++) {
        if (j < nv) for (long k = 0; k < kc; k++) Bp[k * SLMX_NR + j] = W[j * ldw + k];
        else for (long k = 0; k < kc; k++) Bp[k * SLMX_NR + j] = 0.0f;
    }
}

/* slmx_pack_a with 16x16 register transposes: 16 columns of the mr rows at a time (rows past mr
 * read as zero), each column stored as mr consecutive floats; scalar for the last kc % 16 */
static SLMX_TARGET_AVX512 void slmx_pack_a_avx512(const float *A, long lda, int mr, long kc, float *Ap) {
    long k16 = kc & ~15L;
    __mmask16 ms = slmx_tail_mask16(mr);
    for (long k = 0; k < k16; k += 16) {
        __m512 r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) r[i] = i < mr ? _mm512_loadu_ps(A + i * lda + k) : _mm512_setzero_ps();
        slmx_transpose16_avx512(r);
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++) _mm512_mask_storeu_ps(Ap + (k + j) * mr, ms, r[j]);
    }
    for (long k = k16; k < kc; k++)
        for (int i = 0; i < mr; i++) Ap[k * mr + i] = A[i * lda + k];
}

/* M <= 2: C[m, n0:n1] = sum_k A[m,k] B[k, n0:n1] with KU rows of B streamed at a time and the
 * C rows (in L1) updated once per KU rows: every row of B is read front to back (for M = 1
 * this beats the register-blocked strips below, which pay a TLB walk per row and strip). */
SLMX_ALWAYS_INLINE_G SLMX_TARGET_AVX512 void
slmx_gemv512_rows_body(const int M, const int KU, const int PF, long K, const float *A, long lda,
                       const float *B, long ldb, float *C, long ldc, long n0, long n1) {
    for (int m = 0; m < M; m++) memset(C + m * ldc + n0, 0, (size_t)(n1 - n0) * sizeof(float));
    long k = 0;
    for (; k + KU <= K; k += KU) {
        __m512 a[2][16];
#pragma GCC unroll 2
        for (int m = 0; m < M; m++) {
#pragma GCC unroll 16
            for (int u = 0; u < KU; u++) a[m][u] = _mm512_set1_ps(A[m * lda + k + u]);
        }
        const float *b = B + k * ldb;
        const float *pf = B + (k + 2 * KU < K ? k + 2 * KU : k) * ldb;
        for (long n = n0; n < n1; n += 16) {
            __mmask16 mk = slmx_tail_mask16(n1 - n);
            __m512 v[16];
#pragma GCC unroll 16
            for (int u = 0; u < KU; u++) {
                if (PF) _mm_prefetch((const char *)(pf + u * ldb + n), _MM_HINT_T0);
                v[u] = _mm512_maskz_loadu_ps(mk, b + u * ldb + n);
            }
#pragma GCC unroll 2
            for (int m = 0; m < M; m++) {
                float *c = C + m * ldc + n;
                __m512 s0 = _mm512_maskz_loadu_ps(mk, c), s1 = _mm512_setzero_ps();
#pragma GCC unroll 16
                for (int u = 0; u < KU; u += 2) {
                    s0 = _mm512_fmadd_ps(a[m][u], v[u], s0);
                    if (u + 1 < KU) s1 = _mm512_fmadd_ps(a[m][u + 1], v[u + 1], s1);
                }
                _mm512_mask_storeu_ps(c, mk, _mm512_add_ps(s0, s1));
            }
        }
    }
    for (; k < K; k++) {
        const float *b0 = B + k * ldb;
        for (long n = n0; n < n1; n += 16) {
            __mmask16 mk = slmx_tail_mask16(n1 - n);
            __m512 v0 = _mm512_maskz_loadu_ps(mk, b0 + n);
            for (int m = 0; m < M; m++) {
                float *c = C + m * ldc + n;
                __m512 s = _mm512_fmadd_ps(_mm512_set1_ps(A[m * lda + k]), v0, _mm512_maskz_loadu_ps(mk, c));
                _mm512_mask_storeu_ps(c, mk, s);
            }
        }
    }
}

/* small M (<= 7): C[m, n0:n1] = sum_k A[m,k] B[k, n0:n1].
 * K in blocks of 64 rows; within a block, strips of NZ vectors (16*NZ columns) with the M x NZ
 * sums in registers, stored once per block. While a strip walks down its 64 rows, the same
 * rows of the next strip are prefetched (rows of B are pages apart, so the hardware prefetcher
 * does not follow); over the whole call B is read once. */
#define SLMX_GEMV_KB 64
SLMX_ALWAYS_INLINE_G SLMX_TARGET_AVX512 void
slmx_gemv512_body(const int M, const int NZ, long K, const float *A, long lda, const float *B, long ldb,
                  float *C, long ldc, long n0, long n1) {
    for (long k0 = 0; k0 < K; k0 += SLMX_GEMV_KB) {
        long kb = K - k0 < SLMX_GEMV_KB ? K - k0 : SLMX_GEMV_KB;
        for (long n = n0; n < n1; n += 16 * NZ) {
            __mmask16 mk[8];
            __m512 acc[7][8];
#pragma GCC unroll 8
            for (int z = 0; z < NZ; z++) mk[z] = slmx_tail_mask16(n + 16 * z < n1 ? n1 - n - 16 * z : 0);
#pragma GCC unroll 7
            for (int m = 0; m < M; m++) {
#pragma GCC unroll 8
                for (int z = 0; z < NZ; z++)
                    acc[m][z] = k0 ? _mm512_maskz_loadu_ps(mk[z], C + m * ldc + n + 16 * z) : _mm512_setzero_ps();
            }
            const float *b = B + k0 * ldb + n;
            const float *a = A + k0;
            for (long k = 0; k < kb; k++, b += ldb, a++) {
#pragma GCC unroll 8
                for (int z = 0; z < NZ; z++) _mm_prefetch((const char *)(b + 16 * NZ + 16 * z), _MM_HINT_T0);
                __m512 v[8];
#pragma GCC unroll 8
                for (int z = 0; z < NZ; z++) v[z] = _mm512_maskz_loadu_ps(mk[z], b + 16 * z);
#pragma GCC unroll 7
                for (int m = 0; m < M; m++) {
                    __m512 am = _mm512_set1_ps(a[m * lda]);
#pragma GCC unroll 8
                    for (int z = 0; z < NZ; z++) acc[m][z] = _mm512_fmadd_ps(am, v[z], acc[m][z]);
                }
            }
#pragma GCC unroll 7
            for (int m = 0; m < M; m++) {
#pragma GCC unroll 8
                for (int z = 0; z < NZ; z++) _mm512_mask_storeu_ps(C + m * ldc + n + 16 * z, mk[z], acc[m][z]);
            }
        }
    }
}

/* the 8 horizontal sums of s[0..7], as one 8-float vector (lane r = sum of s[r]) */
SLMX_ALWAYS_INLINE_G SLMX_TARGET_AVX512 __m256 slmx_hsum8_avx512(const __m512 *s) {
    __m256 h[8];
#pragma GCC unroll 8
    for (int r = 0; r < 8; r++) h[r] = _mm256_add_ps(_mm512_castps512_ps256(s[r]), _mm512_extractf32x8_ps(s[r], 1));
    __m256 a0 = _mm256_hadd_ps(h[0], h[1]), a1 = _mm256_hadd_ps(h[2], h[3]);
    __m256 a2 = _mm256_hadd_ps(h[4], h[5]), a3 = _mm256_hadd_ps(h[6], h[7]);
    __m256 b0 = _mm256_hadd_ps(a0, a1), b1 = _mm256_hadd_ps(a2, a3);   /* per 128-bit half: sums 0-3 / 4-7 */
    return _mm256_add_ps(_mm256_permute2f128_ps(b0, b1, 0x20), _mm256_permute2f128_ps(b0, b1, 0x31));
}

/* the horizontal sum of one vector in the order slmx_hsum8_avx512 sums each lane: ((a0+a1)+(a2+a3))
 * + ((a4+a5)+(a6+a7)) with a = low half + high half, so a row's sum does not depend on how many
 * rows went through the kernel with it (an 8-row group or a tail row) */
SLMX_ALWAYS_INLINE_G SLMX_TARGET_AVX512 float slmx_hsum1_avx512(__m512 s) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));
    __m256 t = _mm256_hadd_ps(a, a);
    t = _mm256_hadd_ps(t, t);
    return _mm_cvtss_f32(_mm256_castps256_ps128(t)) + _mm_cvtss_f32(_mm256_extractf128_ps(t, 1));
}

/* small M: C[m, n] = dot(X[m], W[n]) for n in [n0, n1); R rows of W at a time, M*R accumulators.
 * The first (masked) step stops where row n of W reaches a 64-byte boundary, so the main loop
 * loads whole cache lines of W without masks (numpy's large arrays sit 16 bytes past a page:
 * a load across two lines halved the rate from L2, measured); the last step is masked. */
SLMX_ALWAYS_INLINE_G SLMX_TARGET_AVX512 void
slmx_gevm512_body(const int M, const int R, const long PFD, long K, const float *X, long ldx, const float *W,
                  long ldw, float *C, long ldc, long n) {
    __m512 s[7][8];
#pragma GCC unroll 7
    for (int m = 0; m < M; m++) {
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) s[m][r] = _mm512_setzero_ps();
    }
    const float *w = W + n * ldw;
    long k = (long)(((64 - ((uintptr_t)w & 63)) & 63) / 4);
    if (k > K) k = K;
    if (k) {
        __mmask16 mk = slmx_tail_mask16(k);
        __m512 wv[8];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) wv[r] = _mm512_maskz_loadu_ps(mk, w + r * ldw);
#pragma GCC unroll 7
        for (int m = 0; m < M; m++) {
            __m512 xv = _mm512_maskz_loadu_ps(mk, X + m * ldx);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) s[m][r] = _mm512_fmadd_ps(xv, wv[r], s[m][r]);
        }
    }
    for (; k + 16 <= K; k += 16) {
        __m512 wv[8];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            if (PFD) _mm_prefetch((const char *)(w + r * ldw + k) + PFD, _MM_HINT_T1);
            wv[r] = _mm512_loadu_ps(w + r * ldw + k);
        }
#pragma GCC unroll 7
        for (int m = 0; m < M; m++) {
            __m512 xv = _mm512_loadu_ps(X + m * ldx + k);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) s[m][r] = _mm512_fmadd_ps(xv, wv[r], s[m][r]);
        }
    }
    if (k < K) {
        __mmask16 mk = slmx_tail_mask16(K - k);
        __m512 wv[8];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) wv[r] = _mm512_maskz_loadu_ps(mk, w + r * ldw + k);
#pragma GCC unroll 7
        for (int m = 0; m < M; m++) {
            __m512 xv = _mm512_maskz_loadu_ps(mk, X + m * ldx + k);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) s[m][r] = _mm512_fmadd_ps(xv, wv[r], s[m][r]);
        }
    }
#pragma GCC unroll 7
    for (int m = 0; m < M; m++) {
        if (R == 8) {
            _mm256_storeu_ps(C + m * ldc + n, slmx_hsum8_avx512(s[m]));
        } else {
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) C[m * ldc + n + r] = slmx_hsum1_avx512(s[m][r]);
        }
    }
}

#define SLMX_GEVM512_DEF(M, R, NZ) \
    static SLMX_TARGET_AVX512 void slmx_gevm512_##M(long K, const float *X, long ldx, const float *W, long ldw, \
                                                    float *C, long ldc, long n0, long n1) { \
        long n = n0; \
        for (; n + R <= n1; n += R) slmx_gevm512_body(M, R, 0, K, X, ldx, W, ldw, C, ldc, n); \
        for (; n < n1; n++) slmx_gevm512_body(M, 1, 0, K, X, ldx, W, ldw, C, ldc, n); \
    } \
    static SLMX_TARGET_AVX512 void slmx_gemv512_##M(long K, const float *A, long lda, const float *B, long ldb, \
                                                    float *C, long ldc, long n0, long n1) { \
        if (M == 1) slmx_gemv512_rows_body(1, 16, 0, K, A, lda, B, ldb, C, ldc, n0, n1); \
        else if (M == 2) slmx_gemv512_rows_body(2, 8, 0, K, A, lda, B, ldb, C, ldc, n0, n1); \
        else slmx_gemv512_body(M, NZ, K, A, lda, B, ldb, C, ldc, n0, n1); \
    }
SLMX_GEVM512_DEF(1, 8, 8) SLMX_GEVM512_DEF(2, 6, 8) SLMX_GEVM512_DEF(3, 6, 8) SLMX_GEVM512_DEF(4, 5, 6)
SLMX_GEVM512_DEF(5, 4, 4) SLMX_GEVM512_DEF(6, 4, 4) SLMX_GEVM512_DEF(7, 3, 3)

typedef void (*slmx_gevm_t)(long K, const float *X, long ldx, const float *W, long ldw, float *C, long ldc, long n0, long n1);

/* M = 1 over a weight that streams from memory: 2 rows at a time (2 read streams instead of 8:
 * the hardware prefetchers keep up with fewer streams) and a software prefetch into L2 of the
 * bytes SLMX_GEVM_STREAM_PFD ahead in each row, which runs across the 4 KB pages the hardware
 * prefetcher stops at. Each row's sum is the same as slmx_gevm512_1's when W's rows start at
 * the same offset from a cache line (K a multiple of 16 for an aligned W; any row of a group
 * takes the first row's step to the line boundary). */
#define SLMX_GEVM_STREAM_PFD 8192
static SLMX_TARGET_AVX512 void slmx_gevm512_stream1(long K, const float *X, long ldx, const float *W, long ldw,
                                                    float *C, long ldc, long n0, long n1) {
    long n = n0;
    for (; n + 2 <= n1; n += 2) slmx_gevm512_body(1, 2, SLMX_GEVM_STREAM_PFD, K, X, ldx, W, ldw, C, ldc, n);
    for (; n < n1; n++) slmx_gevm512_body(1, 1, 0, K, X, ldx, W, ldw, C, ldc, n);
}
static const slmx_gevm_t slmx_gevm512_table[8] = {0, slmx_gevm512_1, slmx_gevm512_2, slmx_gevm512_3,
                                                  slmx_gevm512_4, slmx_gevm512_5, slmx_gevm512_6, slmx_gevm512_7};
static const slmx_gevm_t slmx_gemv512_table[8] = {0, slmx_gemv512_1, slmx_gemv512_2, slmx_gemv512_3,
                                                  slmx_gemv512_4, slmx_gemv512_5, slmx_gemv512_6, slmx_gemv512_7};

/* ============================================================== AVX2 */

#define SLMX_MR_AVX2 6

SLMX_ALWAYS_INLINE_G SLMX_TARGET_AVX2 void
slmx_ukr256_half(const int MR, long kc, const float *A, const float *B, float *C, long ldc, int nv, int acc) {
    __m256 c0[SLMX_MR_AVX2], c1[SLMX_MR_AVX2];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) { c0[i] = _mm256_setzero_ps(); c1[i] = _mm256_setzero_ps(); }
    for (long k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(B), b1 = _mm256_loadu_ps(B + 8);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            __m256 a = _mm256_broadcast_ss(A + i);
            c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
            c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
        }
        A += MR;
        B += SLMX_NR;
    }
    __m256i m0 = slmx_tail_mask8(nv), m1 = slmx_tail_mask8(nv - 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        float *cr = C + i * ldc;
        if (nv >= 16) {
            if (acc) {
                c0[i] = _mm256_add_ps(c0[i], _mm256_loadu_ps(cr));
                c1[i] = _mm256_add_ps(c1[i], _mm256_loadu_ps(cr + 8));
            }
            _mm256_storeu_ps(cr, c0[i]);
            _mm256_storeu_ps(cr + 8, c1[i]);
        } else {
            if (acc) {
                c0[i] = _mm256_add_ps(c0[i], _mm256_maskload_ps(cr, m0));
                c1[i] = _mm256_add_ps(c1[i], _mm256_maskload_ps(cr + 8, m1));
            }
            _mm256_maskstore_ps(cr, m0, c0[i]);
            _mm256_maskstore_ps(cr + 8, m1, c1[i]);
        }
    }
}

#define SLMX_UKR256_DEF(MR) \
    static SLMX_TARGET_AVX2 void slmx_ukr256_##MR(long kc, const float *A, const float *B, float *C, long ldc, int nv, int acc) \
    { \
        slmx_ukr256_half(MR, kc, A, B, C, ldc, nv < 16 ? nv : 16, acc); \
        if (nv > 16) slmx_ukr256_half(MR, kc, A, B + 16, C + 16, ldc, nv - 16, acc); \
    }
SLMX_UKR256_DEF(1) SLMX_UKR256_DEF(2) SLMX_UKR256_DEF(3) SLMX_UKR256_DEF(4) SLMX_UKR256_DEF(5) SLMX_UKR256_DEF(6)

static const slmx_ukr_t slmx_ukr256_table[SLMX_MR_AVX2 + 1] = {
    0, slmx_ukr256_1, slmx_ukr256_2, slmx_ukr256_3, slmx_ukr256_4, slmx_ukr256_5, slmx_ukr256_6};

SLMX_ALWAYS_INLINE_G SLMX_TARGET_AVX2 void
slmx_gemv256_body(const int M, long K, const float *A, long lda, const float *B, long ldb,
                  float *C, long ldc, long n0, long n1) {
    for (int m = 0; m < M; m++) memset(C + m * ldc + n0, 0, (size_t)(n1 - n0) * sizeof(float));
    long k = 0;
    for (; k + 4 <= K; k += 4) {
        const float *b0 = B + k * ldb, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
        long n = n0;
        for (; n + 8 <= n1; n += 8) {
            __m256 v0 = _mm256_loadu_ps(b0 + n), v1 = _mm256_loadu_ps(b1 + n);
            __m256 v2 = _mm256_loadu_ps(b2 + n), v3 = _mm256_loadu_ps(b3 + n);
#pragma GCC unroll 7
            for (int m = 0; m < M; m++) {
                const float *a = A + m * lda + k;
                float *c = C + m * ldc + n;
                __m256 s = _mm256_loadu_ps(c);
                s = _mm256_fmadd_ps(_mm256_broadcast_ss(a), v0, s);
                s = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 1), v1, s);
                s = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 2), v2, s);
                s = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 3), v3, s);
                _mm256_storeu_ps(c, s);
            }
        }
        for (; n < n1; n++)
            for (int m = 0; m < M; m++) {
                const float *a = A + m * lda + k;
                C[m * ldc + n] += a[0] * b0[n] + a[1] * b1[n] + a[2] * b2[n] + a[3] * b3[n];
            }
    }
    for (; k < K; k++) {
        const float *b0 = B + k * ldb;
        for (int m = 0; m < M; m++) {
            float a = A[m * lda + k];
            float *c = C + m * ldc;
            for (long n = n0; n < n1; n++) c[n] += a * b0[n];
        }
    }
}

SLMX_ALWAYS_INLINE_G SLMX_TARGET_AVX2 void
slmx_gevm256_body(const int M, const int R, long K, const float *X, long ldx, const float *W, long ldw,
                  float *C, long ldc, long n) {
    __m256 s[7][4];
#pragma GCC unroll 7
    for (int m = 0; m < M; m++) {
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) s[m][r] = _mm256_setzero_ps();
    }
    const float *w = W + n * ldw;
    long k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = _mm256_loadu_ps(w + r * ldw + k);
#pragma GCC unroll 7
        for (int m = 0; m < M; m++) {
            __m256 xv = _mm256_loadu_ps(X + m * ldx + k);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) s[m][r] = _mm256_fmadd_ps(xv, wv[r], s[m][r]);
        }
    }
    for (int m = 0; m < M; m++) {
        for (int r = 0; r < R; r++) {
            float t = slmx_hsum_avx2(s[m][r]);
            for (long kk = k; kk < K; kk++) t += X[m * ldx + kk] * w[r * ldw + kk];
            C[m * ldc + n + r] = t;
        }
    }
}

#define SLMX_GEVM256_DEF(M, R) \
    static SLMX_TARGET_AVX2 void slmx_gevm256_##M(long K, const float *X, long ldx, const float *W, long ldw, \
                                                  float *C, long ldc, long n0, long n1) { \
        long n = n0; \
        for (; n + R <= n1; n += R) slmx_gevm256_body(M, R, K, X, ldx, W, ldw, C, ldc, n); \
        for (; n < n1; n++) slmx_gevm256_body(M, 1, K, X, ldx, W, ldw, C, ldc, n); \
    } \
    static SLMX_TARGET_AVX2 void slmx_gemv256_##M(long K, const float *A, long lda, const float *B, long ldb, \
                                                  float *C, long ldc, long n0, long n1) { \
        slmx_gemv256_body(M, K, A, lda, B, ldb, C, ldc, n0, n1); \
    }
SLMX_GEVM256_DEF(1, 4) SLMX_GEVM256_DEF(2, 4) SLMX_GEVM256_DEF(3, 3) SLMX_GEVM256_DEF(4, 2)
SLMX_GEVM256_DEF(5, 2) SLMX_GEVM256_DEF(6, 2) SLMX_GEVM256_DEF(7, 1)

static const slmx_gevm_t slmx_gevm256_table[8] = {0, slmx_gevm256_1, slmx_gevm256_2, slmx_gevm256_3,
                                                  slmx_gevm256_4, slmx_gevm256_5, slmx_gevm256_6, slmx_gevm256_7};
static const slmx_gevm_t slmx_gemv256_table[8] = {0, slmx_gemv256_1, slmx_gemv256_2, slmx_gemv256_3,
                                                  slmx_gemv256_4, slmx_gemv256_5, slmx_gemv256_6, slmx_gemv256_7};
#endif /* SLMX_X86 */

/* ============================================================== dispatch */

static inline int slmx_gemm_mr(int lvl) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512) return SLMX_MR_AVX512;
    if (lvl >= SLMX_SIMD_AVX2) return SLMX_MR_AVX2;
#endif
    return SLMX_MR_SCALAR;
}

static inline slmx_ukr_t slmx_gemm_ukr(int lvl, int mr) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512) return slmx_ukr512_table[mr];
    if (lvl >= SLMX_SIMD_AVX2) return slmx_ukr256_table[mr];
#endif
    return slmx_ukr_scalar_table[mr];
}

/* slmx_pack_a at level lvl */
static inline void slmx_pack_a_lvl(int lvl, const float *A, long lda, int mr, long kc, float *Ap) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512 && mr <= 16) { slmx_pack_a_avx512(A, lda, mr, kc, Ap); return; }
#endif
    slmx_pack_a(A, lda, mr, kc, Ap);
}

static inline void slmx_pack_b_trans(int lvl, const float *W, long ldw, int nv, long kc, float *Bp) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512) { slmx_pack_b_trans_avx512(W, ldw, nv, kc, Bp); return; }
#endif
    slmx_pack_b_trans_scalar(W, ldw, nv, kc, Bp);
}

/* C[:M, n0:n1] = A[:M] B[:, n0:n1], M <= 7 */
static inline void slmx_gemv(int lvl, int M, long K, const float *A, long lda, const float *B, long ldb,
                             float *C, long ldc, long n0, long n1) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512) { slmx_gemv512_table[M](K, A, lda, B, ldb, C, ldc, n0, n1); return; }
    if (lvl >= SLMX_SIMD_AVX2) { slmx_gemv256_table[M](K, A, lda, B, ldb, C, ldc, n0, n1); return; }
#endif
    slmx_gemv_scalar(M, K, A, lda, B, ldb, C, ldc, n0, n1);
}

/* C[:M, n0:n1] = X[:M] W[n0:n1]^T, M <= 7; stream: W is read from memory (beyond the caches) */
static inline void slmx_gevm(int lvl, int M, long K, const float *X, long ldx, const float *W, long ldw,
                             float *C, long ldc, long n0, long n1, int stream) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512 && M == 1 && stream) { slmx_gevm512_stream1(K, X, ldx, W, ldw, C, ldc, n0, n1); return; }
    if (lvl >= SLMX_SIMD_AVX512) { slmx_gevm512_table[M](K, X, ldx, W, ldw, C, ldc, n0, n1); return; }
    if (lvl >= SLMX_SIMD_AVX2) { slmx_gevm256_table[M](K, X, ldx, W, ldw, C, ldc, n0, n1); return; }
#endif
    slmx_gevm_scalar(M, K, X, ldx, W, ldw, C, ldc, n0, n1);
}

#endif
