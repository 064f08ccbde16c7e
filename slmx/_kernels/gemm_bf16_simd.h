/* slmx bf16 GEMM: C (M, N) fp32 = X (M, K) bf16 . W (N, K)^T bf16, fp32 accumulation.
 *
 * bf16 values are uint16 bit patterns (the upper half of an IEEE float32). Every path computes
 * the exact products of the bf16 values and sums them in fp32; paths differ only in the order
 * of the fp32 additions.
 *
 * AMX (level >= BF16 and the OS granted the tiles): tdpbf16ps on 16 x 16 fp32 C tiles.
 *   A = 16 rows of X x 32 bf16, from a zero-padded copy of X packed tile by tile once per call
 *       (1 KB each, so the tile loads stream through memory), loaded with the no-reuse hint
 *       (tileloaddt1: the B block stays in L1);
 *   B = 16 pair-rows x 16 columns x 2 bf16 (the "VNNI" layout B[kp][n][j] = W[n][2 kp + j]):
 *       each panel of 32 weight rows is transposed (as 32-bit pairs) into a per-thread buffer
 *       before use (for depth <= 768 while the previous panel's tiles run; W is read in place,
 *       once per call) and reused by every 32-row block of X; or W is packed once
 *       (slmx_bf16_pack_weight; the next panel's block then prefetched into L2 during the
 *       current one). Tasks = groups of panels of equal tile columns x ranges of rows (with
 *       enough rows, one range per thread: each thread packs and multiplies only its own rows
 *       of X, no packed X shared between cores).
 *   Tiles: C 2 x 2 (tmm0..3) = 32 rows x 32 columns, held over a depth block (all of K up to
 *   640, else equal blocks <= 640: a B block of 40 KB stays in L1), A0/A1 = tmm4/5, B0/B1 =
 *   tmm6/7. The partial sums between depth blocks go to a per-thread accumulator (each C block
 *   as 4 contiguous tiles; or, without one, to C itself, reloaded). Full C blocks store their
 *   tiles at the output; edge blocks go through a 32 x 32 scratch (masked copies); an
 *   output off a 64-byte boundary gets its panels shifted onto one (no tile row split across
 *   cache lines; the columns left over on both sides share one "wrap" panel); a C far larger
 *   than the caches is written with non-temporal stores.
 * Dot-product paths (no AMX): out[m, n] = dot(X[m], W[n]) over K for blocks of MB rows of X and
 *   NB rows of W, the MB x NB sums in registers:
 *   BF16 (vdpbf16ps, 32 products per instruction), AVX-512 and AVX2 (bf16 widened by a 16-bit
 *   shift, then FMA), scalar (portable C).
 */
#ifndef SLMX_GEMM_BF16_SIMD_H
#define SLMX_GEMM_BF16_SIMD_H

#include "simd.h"
#include "vmath_simd.h"
#include <stdint.h>
#include <string.h>

#ifndef SLMX_ALWAYS_INLINE_G
#define SLMX_ALWAYS_INLINE_G static inline __attribute__((always_inline))
#endif

#define SLMX_BF16_BBUF (8 * 32 * 1024)   /* per-thread packed-B room (bf16, 512 KB): >= two panels of 32 x the
                                            largest depth block (2048); also sizes the tasks */

#define SLMX_BF16_AHEAD_MAX_KC 768      /* depth blocks up to this pack the next panel during the current one */

/* AMX depth block for K (a multiple of 32): all of K up to kmax (the C tiles stay in registers
 * over the whole sum), else equal blocks of at most kmax (a multiple of 32) */
static inline long slmx_bf16_amx_kc(long K, long kmax) {
    long Kp = (K + 31) / 32 * 32;
    kmax = kmax < 32 ? 32 : kmax / 32 * 32;
    if (Kp <= kmax) return Kp;
    long nb = (Kp + kmax - 1) / kmax;
    return (Kp / 32 + nb - 1) / nb * 32;
}

/* 32-column panels of B per AMX task for depth block kc: as many as fit SLMX_BF16_BBUF, 1..8 */
static inline long slmx_bf16_amx_ncp(long kc) {
    long n = SLMX_BF16_BBUF / (32 * kc);
    return n < 1 ? 1 : (n > 8 ? 8 : n);
}

static inline float slmx_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* round to nearest even; NaN stays NaN (quiet) */
static inline uint16_t slmx_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static void slmx_f32_to_bf16_n(const float *src, uint16_t *dst, long n) {
    for (long i = 0; i < n; i++) dst[i] = slmx_f32_to_bf16(src[i]);
}

static void slmx_bf16_to_f32_n(const uint16_t *src, float *dst, long n) {
    for (long i = 0; i < n; i++) dst[i] = slmx_bf16_to_f32(src[i]);
}

/* ------------------------------------------------------------------ scalar dot path */

/* C[m, n] = sum_k X[m, k] W[n, k] for m in [m0, m1), n in [n0, n1) */
static void slmx_bf16_dot_scalar(long K, const uint16_t *X, long ldx, const uint16_t *W, long ldw,
                                 float *C, long ldc, long m0, long m1, long n0, long n1) {
    for (long n = n0; n < n1; n++) {
        const uint16_t *w = W + n * ldw;
        for (long m = m0; m < m1; m++) {
            const uint16_t *x = X + m * ldx;
            float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
            long k = 0;
            for (; k + 4 <= K; k += 4) {
                s0 += slmx_bf16_to_f32(x[k]) * slmx_bf16_to_f32(w[k]);
                s1 += slmx_bf16_to_f32(x[k + 1]) * slmx_bf16_to_f32(w[k + 1]);
                s2 += slmx_bf16_to_f32(x[k + 2]) * slmx_bf16_to_f32(w[k + 2]);
                s3 += slmx_bf16_to_f32(x[k + 3]) * slmx_bf16_to_f32(w[k + 3]);
            }
            for (; k < K; k++) s0 += slmx_bf16_to_f32(x[k]) * slmx_bf16_to_f32(w[k]);
            C[m * ldc + n] = (s0 + s1) + (s2 + s3);
        }
    }
}

#if SLMX_X86
/* ------------------------------------------------------------------ AVX2 dot path */

SLMX_ALWAYS_INLINE_G SLMX_TARGET_AVX2 __m256 slmx_bf16x8_avx2(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

SLMX_ALWAYS_INLINE_G SLMX_TARGET_AVX2 void
slmx_bf16_dot256_block(const int MB, const int NB, long K, const uint16_t *X, long ldx, const uint16_t *W,
                       long ldw, float *C, long ldc, long m, long n) {
    __m256 s[4][2];
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++) {
#pragma GCC unroll 2
        for (int j = 0; j < NB; j++) s[i][j] = _mm256_setzero_ps();
    }
    long k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 w[2];
#pragma GCC unroll 2
        for (int j = 0; j < NB; j++) w[j] = slmx_bf16x8_avx2(W + (n + j) * ldw + k);
#pragma GCC unroll 4
        for (int i = 0; i < MB; i++) {
            __m256 x = slmx_bf16x8_avx2(X + (m + i) * ldx + k);
#pragma GCC unroll 2
            for (int j = 0; j < NB; j++) s[i][j] = _mm256_fmadd_ps(x, w[j], s[i][j]);
        }
    }
    for (int i = 0; i < MB; i++) {
        for (int j = 0; j < NB; j++) {
            float t = slmx_hsum_avx2(s[i][j]);
            const uint16_t *x = X + (m + i) * ldx, *w = W + (n + j) * ldw;
            for (long kk = k; kk < K; kk++) t += slmx_bf16_to_f32(x[kk]) * slmx_bf16_to_f32(w[kk]);
            C[(m + i) * ldc + n + j] = t;
        }
    }
}

/* ------------------------------------------------------------------ float32 -> bf16 (vector) */
/* the same rounding as slmx_f32_to_bf16 (nearest even on the bits, NaN kept quiet, denormals
 * kept: not vcvtneps2bf16, which flushes them) */

SLMX_ALWAYS_INLINE_G SLMX_TARGET_AVX2 __m256i slmx_f32_to_bf16x8_avx2(const float *p) {
    __m256i u = _mm256_loadu_si256((const __m256i *)p);
    __m256i h = _mm256_srli_epi32(u, 16);
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
                                                                       _mm256_and_si256(h, _mm256_set1_epi32(1)))), 16);
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    return _mm256_blendv_epi8(r, _mm256_or_si256(h, _mm256_set1_epi32(0x40)), nan);
}

static SLMX_TARGET_AVX2 void slmx_f32_to_bf16_avx2(const float *src, uint16_t *dst, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i p = _mm256_packus_epi32(slmx_f32_to_bf16x8_avx2(src + i), slmx_f32_to_bf16x8_avx2(src + i + 8));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_permute4x64_epi64(p, 0xD8));
    }
    for (; i < n; i++) dst[i] = slmx_f32_to_bf16(src[i]);
}

static SLMX_TARGET_AVX512 void slmx_f32_to_bf16_avx512(const float *src, uint16_t *dst, long n) {
    const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff);
    const __m512i absm = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
    const __m512i qbit = _mm512_set1_epi32(0x40);
    for (long i = 0; i < n; i += 16) {
        __mmask16 mk = slmx_tail_mask16(n - i);
        __m512i u = _mm512_maskz_loadu_epi32(mk, src + i);
        __m512i h = _mm512_srli_epi32(u, 16);
        __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(bias, _mm512_and_si512(h, one))), 16);
        __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, absm), inf);
        r = _mm512_mask_or_epi32(r, nan, h, qbit);
        _mm256_mask_storeu_epi16(dst + i, mk, _mm512_cvtepi32_epi16(r));
    }
}

/* ------------------------------------------------------------------ AVX-512 dot paths */

SLMX_ALWAYS_INLINE_G SLMX_TARGET_AVX512 __m512 slmx_bf16x16_avx512(const uint16_t *p, __mmask16 mk) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, p)), 16));
}

SLMX_ALWAYS_INLINE_G SLMX_TARGET_AVX512 void
slmx_bf16_dot512_block(const int MB, const int NB, long K, const uint16_t *X, long ldx, const uint16_t *W,
                       long ldw, float *C, long ldc, long m, long n) {
    __m512 s[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++) {
#pragma GCC unroll 4
        for (int j = 0; j < NB; j++) s[i][j] = _mm512_setzero_ps();
    }
    for (long k = 0; k < K; k += 16) {
        __mmask16 mk = slmx_tail_mask16(K - k);
        __m512 w[4];
#pragma GCC unroll 4
        for (int j = 0; j < NB; j++) w[j] = slmx_bf16x16_avx512(W + (n + j) * ldw + k, mk);
#pragma GCC unroll 4
        for (int i = 0; i < MB; i++) {
            __m512 x = slmx_bf16x16_avx512(X + (m + i) * ldx + k, mk);
#pragma GCC unroll 4
            for (int j = 0; j < NB; j++) s[i][j] = _mm512_fmadd_ps(x, w[j], s[i][j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++) {
#pragma GCC unroll 4
        for (int j = 0; j < NB; j++) C[(m + i) * ldc + n + j] = slmx_hsum_avx512(s[i][j]);
    }
}

SLMX_ALWAYS_INLINE_G SLMX_TARGET_AVX512BF16 void
slmx_bf16_dotbf_block(const int MB, const int NB, long K, const uint16_t *X, long ldx, const uint16_t *W,
                      long ldw, float *C, long ldc, long m, long n) {
    __m512 s[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++) {
#pragma GCC unroll 4
        for (int j = 0; j < NB; j++) s[i][j] = _mm512_setzero_ps();
    }
    for (long k = 0; k < K; k += 32) {
        __mmask32 mk = K - k >= 32 ? 0xffffffffu : (((__mmask32)1 << (K - k)) - 1);
        __m512bh w[4];
#pragma GCC unroll 4
        for (int j = 0; j < NB; j++) w[j] = (__m512bh)_mm512_maskz_loadu_epi16(mk, W + (n + j) * ldw + k);
#pragma GCC unroll 4
        for (int i = 0; i < MB; i++) {
            __m512bh x = (__m512bh)_mm512_maskz_loadu_epi16(mk, X + (m + i) * ldx + k);
#pragma GCC unroll 4
            for (int j = 0; j < NB; j++) s[i][j] = _mm512_dpbf16_ps(s[i][j], x, w[j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++) {
#pragma GCC unroll 4
        for (int j = 0; j < NB; j++) C[(m + i) * ldc + n + j] = slmx_hsum_avx512(s[i][j]);
    }
}

/* m-rows x n-rows grid of blocks (MB x NB), edges by smaller blocks */
#define SLMX_BF16_DOT_GRID(NAME, TARGET, BLOCK, MBX, NBX)                                                   \
    static TARGET void NAME(long K, const uint16_t *X, long ldx, const uint16_t *W, long ldw, float *C,    \
                            long ldc, long m0, long m1, long n0, long n1) {                                 \
        long m = m0;                                                                                        \
        for (; m + MBX <= m1; m += MBX) {                                                                   \
            long n = n0;                                                                                    \
            for (; n + NBX <= n1; n += NBX) BLOCK(MBX, NBX, K, X, ldx, W, ldw, C, ldc, m, n);               \
            for (; n < n1; n++) BLOCK(MBX, 1, K, X, ldx, W, ldw, C, ldc, m, n);                             \
        }                                                                                                   \
        for (; m < m1; m++) {                                                                               \
            long n = n0;                                                                                    \
            for (; n + NBX <= n1; n += NBX) BLOCK(1, NBX, K, X, ldx, W, ldw, C, ldc, m, n);                 \
            for (; n < n1; n++) BLOCK(1, 1, K, X, ldx, W, ldw, C, ldc, m, n);                               \
        }                                                                                                   \
    }
SLMX_BF16_DOT_GRID(slmx_bf16_dot_avx2, SLMX_TARGET_AVX2, slmx_bf16_dot256_block, 4, 2)
SLMX_BF16_DOT_GRID(slmx_bf16_dot_avx512, SLMX_TARGET_AVX512, slmx_bf16_dot512_block, 4, 4)
SLMX_BF16_DOT_GRID(slmx_bf16_dot_bf, SLMX_TARGET_AVX512BF16, slmx_bf16_dotbf_block, 4, 4)

/* ------------------------------------------------------------------ AMX path */

#define SLMX_TARGET_AMXBF16 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")))

typedef struct {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} slmx_bf16_tilecfg_t;

static SLMX_TARGET_AMXBF16 void slmx_bf16_amx_config(void) {
    slmx_bf16_tilecfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) { cfg.rows[i] = 16; cfg.colsb[i] = 64; }
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg) : "memory");
}

static SLMX_TARGET_AMXBF16 void slmx_bf16_amx_release(void) { _tile_release(); }

/* B block for the 32 weight rows r(0..31) and depth [k0, k0 + kc) (kc a multiple of 32; columns >= K
 * zero): Bp[ks][t][kp][n][2] = W[r(16 t + n)][k0 + 32 ks + 2 kp + j], 1 KB tiles; r(i) = s0 + i for
 * i < l0, s1 + i - l0 for l0 <= i < l0 + l1, else a zero row. Each 16 x 16 block of 32-bit pairs is
 * transposed in registers. */
static SLMX_TARGET_AVX512 void slmx_bf16_pack_b2(const uint16_t *W, long ldw, long K, long s0, long l0, long s1,
                                                 long l1, long k0, long kc, uint16_t *Bp) {
    for (int t = 0; t < 2; t++) {
        const uint16_t *rp[16];
        for (int i = 0; i < 16; i++) {
            long j = 16 * t + i;
            rp[i] = j < l0 ? W + (s0 + j) * ldw : (j < l0 + l1 ? W + (s1 + j - l0) * ldw : NULL);
        }
        for (long ks = 0; ks < kc / 32; ks++) {
            long k = k0 + 32 * ks;
            long kv = K - k;                       /* valid bf16 in this step (may be <= 0) */
            __mmask32 mk = kv >= 32 ? 0xffffffffu : (kv <= 0 ? 0 : (((__mmask32)1 << kv) - 1));
            __m512 r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) {
                if (rp[i]) r[i] = _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(mk, rp[i] + k));
                else r[i] = _mm512_setzero_ps();
            }
            slmx_transpose16_avx512(r);        /* r[kp] = the pair kp of the 16 rows */
            uint16_t *d = Bp + (ks * 2 + t) * 512;
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) _mm512_storeu_ps((float *)(d + 32 * i), r[i]);
        }
    }
}

/* B block for weight rows [n0, n0 + 32) (rows >= N zero), as slmx_bf16_pack_b2 */
static void slmx_bf16_pack_b(const uint16_t *W, long ldw, long N, long K, long n0, long k0, long kc,
                             uint16_t *Bp) {
    slmx_bf16_pack_b2(W, ldw, K, n0, N - n0 < 32 ? N - n0 : 32, 0, 0, k0, kc, Bp);
}

/* W (N, K) packed once for the AMX path: panels [p0, p1) of 32 rows at full depth Kp (K rounded
 * up to 32) into Wp + p * 32 * Kp, the layout of slmx_bf16_pack_b (depth block kb of panel p
 * starts at Wp + p * 32 * Kp + kb * 32). Needs AVX-512 (call only when AMX is usable). */
static void slmx_bf16_pack_weight(const uint16_t *W, long N, long K, long p0, long p1, uint16_t *Wp) {
    long Kp = (K + 31) / 32 * 32;
    for (long p = p0; p < p1; p++) slmx_bf16_pack_b(W, K, N, K, p * 32, 0, Kp, Wp + p * 32 * Kp);
}

/* X (M, K) -> tiles Xp[mb][ks][16][32] (1 KB each, contiguous: tile loads stream through memory),
 * zero past row M and column K; mb in [mb0, mb1), nks = ceil(K / 32). One masked 64-byte load and
 * aligned store per tile row (Xp 64-byte aligned). Needs AVX-512 (call only when AMX is usable). */
static SLMX_TARGET_AVX512 void slmx_bf16_pack_x(const uint16_t *X, long M, long K, long mb0, long mb1,
                                                uint16_t *Xp) {
    long nks = (K + 31) / 32;
    for (long mb = mb0; mb < mb1; mb++) {
        for (long ks = 0; ks < nks; ks++) {
            uint16_t *d = Xp + (mb * nks + ks) * 512;
            long k = 32 * ks, kv = K - k < 32 ? K - k : 32;
            __mmask32 mk = kv >= 32 ? 0xffffffffu : (((__mmask32)1 << kv) - 1);
            for (int i = 0; i < 16; i++) {
                long m = mb * 16 + i;
                __m512i v = m < M ? _mm512_maskz_loadu_epi16(mk, X + m * K + k) : _mm512_setzero_si512();
                _mm512_store_si512((void *)(d + 32 * i), v);
            }
        }
    }
}

/* Packing of the next panel's B block (slmx_bf16_pack_b2's layout) in units of one 16 x 16
 * transpose, done between the tile instructions of the current panel's blocks (the AVX-512
 * shuffles run while the tile unit works): unit u = half t = u % 2 of depth step u / 2. */
typedef struct {
    const uint16_t *rp[32];    /* the 32 weight rows (NULL: a zero row) */
    long K, k0, nu, u;         /* depth, first column of the block, units, next unit */
    uint16_t *dst;
} slmx_bf16_packjob_t;

static SLMX_TARGET_AVX512 void slmx_bf16_packjob_init(slmx_bf16_packjob_t *j, const uint16_t *W, long ldw, long K,
                                                       long s0, long l0, long s1, long l1, long k0, long kc,
                                                       uint16_t *dst) {
    for (int i = 0; i < 32; i++)
        j->rp[i] = i < l0 ? W + (s0 + i) * ldw : (i < l0 + l1 ? W + (s1 + i - l0) * ldw : NULL);
    j->K = K; j->k0 = k0; j->nu = kc / 32 * 2; j->u = 0; j->dst = dst;
}

SLMX_ALWAYS_INLINE_G SLMX_TARGET_AVX512 void slmx_bf16_packjob_unit(slmx_bf16_packjob_t *j) {
    long u = j->u++, t = u & 1, ks = u >> 1;
    long k = j->k0 + 32 * ks, kv = j->K - k;
    __mmask32 mk = kv >= 32 ? 0xffffffffu : (kv <= 0 ? 0 : (((__mmask32)1 << kv) - 1));
    const uint16_t *const *rp = j->rp + 16 * t;
    __m512 r[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++)
        r[i] = rp[i] ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(mk, rp[i] + k)) : _mm512_setzero_ps();
    slmx_transpose16_avx512(r);
    uint16_t *d = j->dst + (ks * 2 + t) * 512;
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) _mm512_storeu_ps((float *)(d + 32 * i), r[i]);
}

static SLMX_TARGET_AVX512 void slmx_bf16_packjob_finish(slmx_bf16_packjob_t *j) {
    while (j->u < j->nu) slmx_bf16_packjob_unit(j);
}

/* Software prefetch (into L2) of the B data a coming panel reads, a few lines per depth step of
 * the current panel's blocks: nr segments of len bytes (the next packed B block, or the weight
 * rows the next panel's packing job reads) */
static int slmx_bf16_pf_on = 1;
typedef struct {
    const char *rp[32];
    long len, o;
    int nr, r, per;
} slmx_bf16_pf_t;

SLMX_ALWAYS_INLINE_G void slmx_bf16_pf_step(slmx_bf16_pf_t *f) {
    for (int i = 0; i < f->per && f->r < f->nr; i++) {
        _mm_prefetch(f->rp[f->r] + f->o, _MM_HINT_T1);
        f->o += 64;
        if (f->o >= f->len) { f->o = 0; f->r++; }
    }
}

/* set f to nr segments of len bytes at rp (stride bytes apart), spread over nsteps steps */
static inline slmx_bf16_pf_t *slmx_bf16_pf_init(slmx_bf16_pf_t *f, const void *rp, long stride, int nr, long len,
                                                long nsteps) {
    if (!slmx_bf16_pf_on || nr <= 0 || len <= 0 || nsteps <= 0) return NULL;
    for (int i = 0; i < nr; i++) f->rp[i] = (const char *)rp + i * stride;
    f->nr = nr; f->len = len; f->o = 0; f->r = 0;
    long lines = nr * ((len + 63) / 64);
    f->per = (int)((lines + nsteps - 1) / nsteps);
    return f;
}

/* One block of C: mv <= 32 rows x nv <= 32 columns at c (row stride ldc) (+)= X . B over nk steps
 * of 32 depth: a0 = the first packed tile of X for this block and depth (the next 16 rows at
 * a0 + astr), b = the packed B of the panel (2 tiles per step). The 2 x 2 fp32 C tiles stay in
 * tmm0..3 over all nk steps. A full 32 x 32 block loads / stores its tiles at c; an edge block
 * (or stream) goes through a 32 x 32 scratch, copied with masked (or non-temporal) stores.
 * acc = 0 starts from zero, else from the values in C. With an accumulator ca (the block's 4
 * tiles, 1 KB each, contiguous): cin starts from the sum in ca (not C), cout stores the sum into
 * ca (C not written). */
SLMX_ALWAYS_INLINE_G SLMX_TARGET_AMXBF16 void
slmx_bf16_amx_block(const uint16_t *a0, long astr, long nk, const uint16_t *b, float *c, long ldc,
                    long mv, long nv, int acc, int stream, slmx_bf16_packjob_t *job, float *ca, int cin, int cout,
                    slmx_bf16_pf_t *pf) {
    float sc[32 * 32] __attribute__((aligned(64)));
    const int direct = mv == 32 && nv == 32 && !stream;
    float *t = direct ? c : sc;
    const long ldt = direct ? ldc : 32;
    const int two_m = mv > 16, two_n = nv > 16;
    const uint16_t *a1 = a0 + astr;
    if (cin) {                 /* the sum so far from the block's accumulator (tile-contiguous) */
        _tile_loadd(0, ca, 64);
        if (two_n) _tile_loadd(1, ca + 256, 64);
        if (two_m) {
            _tile_loadd(2, ca + 512, 64);
            if (two_n) _tile_loadd(3, ca + 768, 64);
        }
    } else if (acc) {
        if (!direct) {
            __mmask16 k0 = slmx_tail_mask16(nv), k1 = slmx_tail_mask16(nv - 16 > 0 ? nv - 16 : 0);
            for (long i = 0; i < mv; i++) {
                _mm512_store_ps(sc + 32 * i, _mm512_maskz_loadu_ps(k0, c + i * ldc));
                _mm512_store_ps(sc + 32 * i + 16, _mm512_maskz_loadu_ps(k1, c + i * ldc + 16));
            }
        }
        _tile_loadd(0, t, ldt * 4);
        if (two_n) _tile_loadd(1, t + 16, ldt * 4);
        if (two_m) {
            _tile_loadd(2, t + 16 * ldt, ldt * 4);
            if (two_n) _tile_loadd(3, t + 16 * ldt + 16, ldt * 4);
        }
    } else {
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    }
    if (two_m && two_n) {
        for (long ks = 0; ks < nk; ks++) {
            if (job && job->u < job->nu) slmx_bf16_packjob_unit(job);
            if (pf) slmx_bf16_pf_step(pf);
            _tile_stream_loadd(4, a0 + 512 * ks, 64);
            _tile_loadd(6, b + ks * 1024, 64);
            _tile_loadd(7, b + ks * 1024 + 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_stream_loadd(5, a1 + 512 * ks, 64);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    } else if (two_n) {
        for (long ks = 0; ks < nk; ks++) {
            if (job && job->u < job->nu) slmx_bf16_packjob_unit(job);
            if (pf) slmx_bf16_pf_step(pf);
            _tile_stream_loadd(4, a0 + 512 * ks, 64);
            _tile_loadd(6, b + ks * 1024, 64);
            _tile_loadd(7, b + ks * 1024 + 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
        }
    } else if (two_m) {
        for (long ks = 0; ks < nk; ks++) {
            if (job && job->u < job->nu) slmx_bf16_packjob_unit(job);
            if (pf) slmx_bf16_pf_step(pf);
            _tile_stream_loadd(4, a0 + 512 * ks, 64);
            _tile_stream_loadd(5, a1 + 512 * ks, 64);
            _tile_loadd(6, b + ks * 1024, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(2, 5, 6);
        }
    } else {
        for (long ks = 0; ks < nk; ks++) {
            if (job && job->u < job->nu) slmx_bf16_packjob_unit(job);
            if (pf) slmx_bf16_pf_step(pf);
            _tile_stream_loadd(4, a0 + 512 * ks, 64);
            _tile_loadd(6, b + ks * 1024, 64);
            _tile_dpbf16ps(0, 4, 6);
        }
    }
    if (cout) {                /* a partial sum: into the accumulator, C comes later */
        _tile_stored(0, ca, 64);
        if (two_n) _tile_stored(1, ca + 256, 64);
        if (two_m) {
            _tile_stored(2, ca + 512, 64);
            if (two_n) _tile_stored(3, ca + 768, 64);
        }
        return;
    }
    _tile_stored(0, t, ldt * 4);
    if (two_n) _tile_stored(1, t + 16, ldt * 4);
    if (two_m) {
        _tile_stored(2, t + 16 * ldt, ldt * 4);
        if (two_n) _tile_stored(3, t + 16 * ldt + 16, ldt * 4);
    }
    if (direct) return;
    if (nv == 32 && stream) {
        for (long i = 0; i < mv; i++) {
            _mm512_stream_ps(c + i * ldc, _mm512_load_ps(sc + 32 * i));
            _mm512_stream_ps(c + i * ldc + 16, _mm512_load_ps(sc + 32 * i + 16));
        }
    } else {
        __mmask16 k0 = slmx_tail_mask16(nv), k1 = slmx_tail_mask16(nv - 16 > 0 ? nv - 16 : 0);
        for (long i = 0; i < mv; i++) {
            _mm512_mask_storeu_ps(c + i * ldc, k0, _mm512_load_ps(sc + 32 * i));
            _mm512_mask_storeu_ps(c + i * ldc + 16, k1, _mm512_load_ps(sc + 32 * i + 16));
        }
    }
}

/* The wrap panel's block (see slmx_bf16_amx_task): its 32 columns are C columns [0, l0) at c0 and
 * [0, l1) at c1 (l0 + l1 <= 32; B rows past l0 + l1 zero), through a 32 x 32 scratch */
static SLMX_TARGET_AMXBF16 void slmx_bf16_amx_block_wrap(const uint16_t *a0, long astr, long nk, const uint16_t *b,
                                                         float *c0, long l0, float *c1, long l1, long ldc, long mv,
                                                         int acc, slmx_bf16_packjob_t *job, float *ca, int cin,
                                                         int cout, slmx_bf16_pf_t *pf) {
    float sc[32 * 32] __attribute__((aligned(64)));
    __mmask16 k0 = slmx_tail_mask16(l0), k1 = slmx_tail_mask16(l0 - 16 > 0 ? l0 - 16 : 0);
    __mmask16 k2 = slmx_tail_mask16(l1);
    if (acc) {                 /* (columns past l0 + l1 of sc: left as they are, never copied out) */
        for (long i = 0; i < mv; i++) {
            _mm512_store_ps(sc + 32 * i, _mm512_maskz_loadu_ps(k0, c0 + i * ldc));
            _mm512_store_ps(sc + 32 * i + 16, _mm512_maskz_loadu_ps(k1, c0 + i * ldc + 16));
            _mm512_mask_storeu_ps(sc + 32 * i + l0, k2, _mm512_maskz_loadu_ps(k2, c1 + i * ldc));
        }
    }
    slmx_bf16_amx_block(a0, astr, nk, b, sc, 32, mv, 32, acc, 0, job, ca, cin, cout, pf);
    if (cout) return;
    for (long i = 0; i < mv; i++) {
        _mm512_mask_storeu_ps(c0 + i * ldc, k0, _mm512_load_ps(sc + 32 * i));
        _mm512_mask_storeu_ps(c0 + i * ldc + 16, k1, _mm512_load_ps(sc + 32 * i + 16));
        _mm512_mask_storeu_ps(c1 + i * ldc, k2, _mm512_loadu_ps(sc + 32 * i + l0));
    }
}

/* One task of the AMX GEMM: C rows [m0, m1) x the 32-column panels [p0, p1) = X W^T over all of K.
 * Xp: X packed by slmx_bf16_pack_x (all rows, nks = ceil(K / 32) tiles per 16 rows); W (N, K)
 * row-major bf16, read in place; Bp: room for 2 x 32 x kc bf16 (this thread's); or Wp: W packed once
 * by slmx_bf16_pack_weight (then W and Bp are not used); kc: depth block (a multiple of 32);
 * Ca: room for ncap floats (this thread's), the partial sums of a task's C blocks between depth
 * blocks when they fit (a tile store into C's rows itself, 4 KB apart at N = 1024, 2048, ...,
 * then a tile load of them collided in L1 / L2: 1 thread, the kernel alone, 32 x 512 deep
 * blocks, 68% -> 40% of the AMX peak), else C is reloaded (or NULL).
 * Panel by panel: its depth block is packed into Bp (a size that stays in L1; for depth blocks
 * up to SLMX_BF16_AHEAD_MAX_KC packed while the previous panel's tiles run, slmx_bf16_packjob_t)
 * and multiplied by every 32-row block of X (streamed from L2); the C tiles stay in tile registers
 * over the depth block. (Packing a group of panels first and reusing each 32-row block of X across them was
 * 2-14% slower with 2 threads at 512 x 640..1024 x 640..1024.) stream: non-temporal stores for
 * C (an output far larger than the caches).
 * Panels: columns [32 p, 32 p + 32); or, with a shift sh in (0, 16) (N % 16 == 0, not with Wp: C
 * + sh is on a 64-byte boundary, so are the rows), panel p >= 1 = columns [sh + 32 (p - 1), sh +
 * 32 p), all full, and panel 0 the wrap panel: the tail [sh + 32 nmid, N) and the head [0, sh)
 * (nmid = (N - sh) / 32; 16 or 32 columns in all), multiplied into a scratch and copied out. */
static SLMX_TARGET_AMXBF16 void slmx_bf16_amx_task(const uint16_t *Xp, long M, long K, const uint16_t *W,
                                                  const uint16_t *Wp, long N, long m0, long m1, long p0, long p1,
                                                  long kc, uint16_t *Bp, float *C, long ldc, int stream, long sh,
                                                  float *Ca, long ncap) {
    long Kp = (K + 31) / 32 * 32, nks = Kp / 32;
    long ts = sh ? sh + (N - sh) / 32 * 32 : 0, tl = N - ts;
    long nmk = (m1 - m0 + 31) / 32;
    /* more than one depth block: the partial sums go to the accumulator Ca when it holds the task */
    float *ca0 = Kp > kc && Ca && (p1 - p0) * nmk * 1024 <= ncap ? Ca : NULL;
    slmx_bf16_packjob_t job;
    for (long kb = 0; kb < Kp; kb += kc) {
        long kcb = Kp - kb < kc ? Kp - kb : kc;
        int acc = kb > 0 && !ca0, st = stream && kb + kcb >= Kp;
        int cin = ca0 && kb > 0, cout = ca0 && kb + kcb < Kp;
        /* packing ahead: 4-13% faster at depth 640 (1 thread, 512 x 640..1024 x 640..2048), even at
         * 1024, 4-6% slower at 2048 (two 128 KB blocks) */
        int ahead = kcb <= SLMX_BF16_AHEAD_MAX_KC;
        for (long p = p0; p < p1; p++) {
            long n0 = sh ? sh + 32 * (p - 1) : 32 * p, n1 = n0 + 32 < N ? n0 + 32 : N;
            const uint16_t *b;
            slmx_bf16_packjob_t *jp = NULL;
            if (Wp) b = Wp + p * 32 * Kp + kb * 32;
            else {
                /* this panel's block: packed ahead (in the previous panel's blocks) into Bp + (p & 1) *
                 * 32 kc; the next one's packed in this panel's blocks */
                uint16_t *bb = ahead ? Bp + (p & 1) * 32 * kc : Bp;
                if (p == p0 || !ahead) {
                    if (sh && p == 0) slmx_bf16_pack_b2(W, K, K, ts, tl, 0, sh, kb, kcb, bb);
                    else slmx_bf16_pack_b(W, K, n1, K, n0, kb, kcb, bb);
                } else slmx_bf16_packjob_finish(&job);
                b = bb;
                if (ahead && p + 1 < p1) {
                    long m0n = sh ? sh + 32 * p : 32 * (p + 1), l = N - m0n < 32 ? N - m0n : 32;
                    slmx_bf16_packjob_init(&job, W, K, K, m0n, l, 0, 0, kb, kcb, Bp + ((p + 1) & 1) * 32 * kc);
                    jp = &job;
                }
            }
            /* prefetch (with Wp): the next panel's block, or after the last panel the first one's
             * next depth block. (Of the weight rows that the packing job after the next one reads,
             * with a plain W: 3-6% slower at 128 x 640..4096 x 1024..4096, none faster.) */
            slmx_bf16_pf_t pfs, *pf = NULL;
            long nsteps = nmk * (kcb / 32);
            if (Wp && nmk >= 4) {      /* (with 1 block of 16 rows: 40% slower, the lines all at once) */
                if (p + 1 < p1) pf = slmx_bf16_pf_init(&pfs, Wp + (p + 1) * 32 * Kp + kb * 32, 0, 1, 64 * kcb, nsteps);
                else if (kb + kcb < Kp) {
                    long kn = Kp - kb - kcb < kc ? Kp - kb - kcb : kc;
                    pf = slmx_bf16_pf_init(&pfs, Wp + p0 * 32 * Kp + (kb + kcb) * 32, 0, 1, 64 * kn, nsteps);
                }
            }
            float *ca = ca0 ? ca0 + (p - p0) * nmk * 1024 : NULL;
            for (long m = m0; m < m1; m += 32, ca = ca ? ca + 1024 : NULL) {
                long mv = M - m < 32 ? M - m : 32;
                const uint16_t *a0 = Xp + ((m / 16) * nks + kb / 32) * 512;
                if (sh && p == 0)
                    slmx_bf16_amx_block_wrap(a0, nks * 512, kcb / 32, b, C + m * ldc + ts, tl, C + m * ldc, sh, ldc,
                                             mv, acc, jp, ca, cin, cout, pf);
                else
                    slmx_bf16_amx_block(a0, nks * 512, kcb / 32, b, C + m * ldc + n0, ldc, mv, n1 - n0, acc, st, jp,
                                        ca, cin, cout, pf);
            }
        }
    }
    if (stream) _mm_sfence();
}
#else
static void slmx_bf16_amx_config(void) {}
static void slmx_bf16_amx_release(void) {}
static void slmx_bf16_pack_b(const uint16_t *W, long ldw, long N, long K, long n0, long k0, long kc, uint16_t *Bp) {
    (void)W; (void)ldw; (void)N; (void)K; (void)n0; (void)k0; (void)kc; (void)Bp;
}
static void slmx_bf16_pack_weight(const uint16_t *W, long N, long K, long p0, long p1, uint16_t *Wp) {
    (void)W; (void)N; (void)K; (void)p0; (void)p1; (void)Wp;
}
static void slmx_bf16_pack_x(const uint16_t *X, long M, long K, long mb0, long mb1, uint16_t *Xp) {
    (void)X; (void)M; (void)K; (void)mb0; (void)mb1; (void)Xp;
}
static void slmx_bf16_amx_task(const uint16_t *Xp, long M, long K, const uint16_t *W, const uint16_t *Wp, long N,
                               long m0, long m1, long p0, long p1, long kc, uint16_t *Bp, float *C, long ldc,
                               int stream, long sh, float *Ca, long ncap) {
    (void)Ca; (void)ncap;
    (void)sh; (void)Xp; (void)M; (void)K; (void)W; (void)Wp; (void)N; (void)m0; (void)m1; (void)p0; (void)p1; (void)kc; (void)Bp;
    (void)C; (void)ldc; (void)stream;
}
#endif /* SLMX_X86 */

/* ------------------------------------------------------------------ dispatch (dot paths) */

static inline void slmx_f32_to_bf16_lvl(int lvl, const float *src, uint16_t *dst, long n) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512) { slmx_f32_to_bf16_avx512(src, dst, n); return; }
    if (lvl >= SLMX_SIMD_AVX2) { slmx_f32_to_bf16_avx2(src, dst, n); return; }
#endif
    slmx_f32_to_bf16_n(src, dst, n);
}


static inline void slmx_bf16_dot(int lvl, long K, const uint16_t *X, long ldx, const uint16_t *W, long ldw,
                                 float *C, long ldc, long m0, long m1, long n0, long n1) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_BF16) { slmx_bf16_dot_bf(K, X, ldx, W, ldw, C, ldc, m0, m1, n0, n1); return; }
    if (lvl >= SLMX_SIMD_AVX512) { slmx_bf16_dot_avx512(K, X, ldx, W, ldw, C, ldc, m0, m1, n0, n1); return; }
    if (lvl >= SLMX_SIMD_AVX2) { slmx_bf16_dot_avx2(K, X, ldx, W, ldw, C, ldc, m0, m1, n0, n1); return; }
#endif
    slmx_bf16_dot_scalar(K, X, ldx, W, ldw, C, ldc, m0, m1, n0, n1);
}

#endif
