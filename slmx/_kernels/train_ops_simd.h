/* slmx training row kernels: vector exp, small dense products for attention tiles, softmax and
 * cross-entropy rows, SwiGLU, RMSNorm and RoPE rows. Every function takes the dispatch level
 * first and has a portable scalar path; AVX2 and AVX-512 bodies carry their own target attribute.
 */
#ifndef SLMX_TRAIN_OPS_SIMD_H
#define SLMX_TRAIN_OPS_SIMD_H

#include "simd.h"
#include "train_gemm_simd.h"      /* tg_tr16x16_ps */
#include <math.h>
#include <float.h>
#include <string.h>

/* exp(x) for x in [-87.3, 88.3] (clamped): x = n ln2 + r, |r| <= ln2/2, degree-7 Taylor on r */
#define TG_EXP_LO (-87.3f)
#define TG_EXP_HI (88.3f)
#define TG_LN2_HI 0.693359375f
#define TG_LN2_LO (-2.12194440e-4f)
#define TG_LOG2E 1.44269504088896341f

static inline float tg_expf(float x) {
    return expf(x);
}

#if SLMX_X86
SLMX_TARGET_AVX512 static inline __m512 tg_exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(TG_EXP_LO)), _mm512_set1_ps(TG_EXP_HI));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(TG_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(TG_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(TG_LN2_LO), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

SLMX_TARGET_AVX2 static inline __m256 tg_exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(TG_EXP_LO)), _mm256_set1_ps(TG_EXP_HI));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(TG_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(TG_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(TG_LN2_LO), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

SLMX_TARGET_AVX512 static inline __mmask16 tg_mask16(long n) {
    return n >= 16 ? (__mmask16)0xffff : (n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1));
}

SLMX_TARGET_AVX2 static inline float tg_hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
SLMX_TARGET_AVX2 static inline float tg_hmax256(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* ---------------------------------------------------------------- transpose
 * dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols (16 x 16 blocks on AVX-512) */

static void tg_transpose_scalar(const float *src, long lds, long rows, long cols, float *dst, long ldd) {
    for (long r0 = 0; r0 < rows; r0 += 16)
        for (long c = 0; c < cols; c++)
            for (long r = r0; r < rows && r < r0 + 16; r++) dst[c * ldd + r] = src[r * lds + c];
}

#if SLMX_X86
SLMX_TARGET_AVX512 static void tg_transpose_avx512(const float *src, long lds, long rows, long cols, float *dst, long ldd) {
    for (long r0 = 0; r0 < rows; r0 += 16) {
        __mmask16 mr = tg_mask16(rows - r0);
        for (long c0 = 0; c0 < cols; c0 += 16) {
            __mmask16 mc = tg_mask16(cols - c0);
            __m512 v[16];
            for (int i = 0; i < 16; i++)
                v[i] = r0 + i < rows ? _mm512_maskz_loadu_ps(mc, src + (r0 + i) * lds + c0) : _mm512_setzero_ps();
            tg_tr16x16_ps(v);
            for (int j = 0; j < 16 && c0 + j < cols; j++) _mm512_mask_storeu_ps(dst + (c0 + j) * ldd + r0, mr, v[j]);
        }
    }
}
#endif

static inline void tg_transpose(int lvl, const float *src, long lds, long rows, long cols, float *dst, long ldd) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512) { tg_transpose_avx512(src, lds, rows, cols, dst, ldd); return; }
#endif
    tg_transpose_scalar(src, lds, rows, cols, dst, ldd);
}

/* ---------------------------------------------------------------- small products (attention tiles)
 * C (m x n) (+)= A (m x k) B (k x n),  a(r, kk) = A[r * a_rs + kk * a_ks], B and C row-major */

static void tg_small_gemm_scalar(int m, int n, int k, const float *A, long a_rs, long a_ks,
                                 const float *B, long ldb, float *C, long ldc, int acc) {
    for (int r = 0; r < m; r++) {
        float *c = C + r * ldc;
        if (!acc) for (int j = 0; j < n; j++) c[j] = 0.0f;
        for (int kk = 0; kk < k; kk++) {
            float a = A[r * a_rs + kk * a_ks];
            const float *b = B + kk * ldb;
            for (int j = 0; j < n; j++) c[j] += a * b[j];
        }
    }
}

#if SLMX_X86
SLMX_TARGET_AVX2 static void tg_small_gemm_avx2(int m, int n, int k, const float *A, long a_rs, long a_ks,
                                                const float *B, long ldb, float *C, long ldc, int acc) {
    int n16 = n & ~15;
    int r = 0;
    for (; r + 4 <= m; r += 4) {
        for (int j = 0; j < n16; j += 16) {
            __m256 c[4][2];
            for (int i = 0; i < 4; i++) {
                if (acc) { c[i][0] = _mm256_loadu_ps(C + (r + i) * ldc + j); c[i][1] = _mm256_loadu_ps(C + (r + i) * ldc + j + 8); }
                else { c[i][0] = _mm256_setzero_ps(); c[i][1] = _mm256_setzero_ps(); }
            }
            for (int kk = 0; kk < k; kk++) {
                __m256 b0 = _mm256_loadu_ps(B + kk * ldb + j), b1 = _mm256_loadu_ps(B + kk * ldb + j + 8);
                for (int i = 0; i < 4; i++) {
                    __m256 a = _mm256_set1_ps(A[(r + i) * a_rs + kk * a_ks]);
                    c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);
                    c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
                }
            }
            for (int i = 0; i < 4; i++) {
                _mm256_storeu_ps(C + (r + i) * ldc + j, c[i][0]);
                _mm256_storeu_ps(C + (r + i) * ldc + j + 8, c[i][1]);
            }
        }
    }
    /* leftover rows, and the columns past the last multiple of 16 */
    if (r < m) tg_small_gemm_scalar(m - r, n16, k, A + r * a_rs, a_rs, a_ks, B, ldb, C + r * ldc, ldc, acc);
    if (n16 < n) tg_small_gemm_scalar(m, n - n16, k, A, a_rs, a_ks, B + n16, ldb, C + n16, ldc, acc);
}

/* C[:, j:j+16 NV] (+)= A B[:, j:j+16 NV] with NV vectors per row (the last one masked by mlast),
 * RB rows per register block (RB x NV accumulators), leftover rows one at a time. */
#define TG_SG_KERNEL(NV, RB)                                                                          \
SLMX_TARGET_AVX512 static void tg_sg_nv##NV(int m, int k, const float *A, long a_rs, long a_ks,        \
                                            const float *B, long ldb, float *C, long ldc, int acc,     \
                                            __mmask16 mlast) {                                         \
    __mmask16 mk[NV];                                                                                 \
    for (int v = 0; v < NV; v++) mk[v] = v == NV - 1 ? mlast : (__mmask16)0xffff;                     \
    int r = 0;                                                                                        \
    for (; r + RB <= m; r += RB) {                                                                    \
        __m512 c[RB][NV];                                                                             \
        _Pragma("GCC unroll 16") for (int i = 0; i < RB; i++)                                         \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                      \
                c[i][v] = acc ? _mm512_maskz_loadu_ps(mk[v], C + (r + i) * ldc + 16 * v) : _mm512_setzero_ps(); \
        const float *a = A + r * a_rs;                                                                \
        for (int kk = 0; kk < k; kk++) {                                                              \
            const float *b = B + kk * ldb;                                                            \
            __m512 bv[NV];                                                                            \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                      \
                bv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(mk[v], b + 16 * v) : _mm512_loadu_ps(b + 16 * v); \
            _Pragma("GCC unroll 16") for (int i = 0; i < RB; i++) {                                   \
                __m512 av = _mm512_set1_ps(a[i * a_rs + kk * a_ks]);                                  \
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                  \
                    c[i][v] = _mm512_fmadd_ps(av, bv[v], c[i][v]);                                    \
            }                                                                                         \
        }                                                                                             \
        _Pragma("GCC unroll 16") for (int i = 0; i < RB; i++)                                         \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                      \
                _mm512_mask_storeu_ps(C + (r + i) * ldc + 16 * v, mk[v], c[i][v]);                    \
    }                                                                                                 \
    for (; r < m; r++) {                                                                              \
        __m512 c[NV];                                                                                 \
        for (int v = 0; v < NV; v++)                                                                  \
            c[v] = acc ? _mm512_maskz_loadu_ps(mk[v], C + r * ldc + 16 * v) : _mm512_setzero_ps();    \
        for (int kk = 0; kk < k; kk++) {                                                              \
            __m512 av = _mm512_set1_ps(A[r * a_rs + kk * a_ks]);                                      \
            for (int v = 0; v < NV; v++)                                                              \
                c[v] = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(mk[v], B + kk * ldb + 16 * v), c[v]); \
        }                                                                                             \
        for (int v = 0; v < NV; v++) _mm512_mask_storeu_ps(C + r * ldc + 16 * v, mk[v], c[v]);       \
    }                                                                                                 \
}

TG_SG_KERNEL(1, 8)
TG_SG_KERNEL(2, 8)
TG_SG_KERNEL(3, 6)
TG_SG_KERNEL(4, 4)

SLMX_TARGET_AVX512 static void tg_small_gemm_avx512(int m, int n, int k, const float *A, long a_rs, long a_ks,
                                                    const float *B, long ldb, float *C, long ldc, int acc) {
    for (int j = 0; j < n; j += 64) {
        int w = n - j < 64 ? n - j : 64;
        int nv = (w + 15) / 16;
        __mmask16 mlast = tg_mask16(w - 16 * (nv - 1));
        switch (nv) {
        case 1: tg_sg_nv1(m, k, A, a_rs, a_ks, B + j, ldb, C + j, ldc, acc, mlast); break;
        case 2: tg_sg_nv2(m, k, A, a_rs, a_ks, B + j, ldb, C + j, ldc, acc, mlast); break;
        case 3: tg_sg_nv3(m, k, A, a_rs, a_ks, B + j, ldb, C + j, ldc, acc, mlast); break;
        default: tg_sg_nv4(m, k, A, a_rs, a_ks, B + j, ldb, C + j, ldc, acc, mlast); break;
        }
    }
}
#endif

static inline void tg_small_gemm(int lvl, int m, int n, int k, const float *A, long a_rs, long a_ks,
                                 const float *B, long ldb, float *C, long ldc, int acc) {
    if (m <= 0 || n <= 0) return;
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512) { tg_small_gemm_avx512(m, n, k, A, a_rs, a_ks, B, ldb, C, ldc, acc); return; }
    if (lvl >= SLMX_SIMD_AVX2) { tg_small_gemm_avx2(m, n, k, A, a_rs, a_ks, B, ldb, C, ldc, acc); return; }
#endif
    tg_small_gemm_scalar(m, n, k, A, a_rs, a_ks, B, ldb, C, ldc, acc);
}

/* ---------------------------------------------------------------- softmax rows */

#if SLMX_X86
SLMX_TARGET_AVX512 static float tg_row_max_avx512(const float *x, long n) {
    __m512 m = _mm512_set1_ps(-INFINITY);
    long i = 0;
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
    if (i < n) m = _mm512_mask_max_ps(m, tg_mask16(n - i), m, _mm512_maskz_loadu_ps(tg_mask16(n - i), x + i));
    return _mm512_reduce_max_ps(m);
}
#endif

/* max of x[0:n] (-inf when n == 0) */
static inline float tg_row_max(int lvl, const float *x, long n) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512) return tg_row_max_avx512(x, n);
#endif
    float m = -INFINITY;
    for (long i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

#if SLMX_X86
/* y = exp(x * mul - shift) * scale; returns sum of exp(x * mul - shift) (y may be x; NULL: no write) */
SLMX_TARGET_AVX512 static double tg_exp_shift_avx512(const float *x, float *y, long n, float mul, float shift, float scale) {
    __m512 s = _mm512_setzero_ps(), sh = _mm512_set1_ps(shift), sc = _mm512_set1_ps(scale), mu = _mm512_set1_ps(mul);
    long i = 0;
    for (; i < n; i += 16) {
        __mmask16 mk = tg_mask16(n - i);
        __m512 e = tg_exp512(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(mk, x + i), mu, sh));
        e = _mm512_maskz_mov_ps(mk, e);
        s = _mm512_add_ps(s, e);
        if (y) _mm512_mask_storeu_ps(y + i, mk, _mm512_mul_ps(e, sc));
    }
    return (double)_mm512_reduce_add_ps(s);
}

SLMX_TARGET_AVX2 static double tg_exp_shift_avx2(const float *x, float *y, long n, float mul, float shift, float scale) {
    __m256 s = _mm256_setzero_ps(), sh = _mm256_set1_ps(shift), sc = _mm256_set1_ps(scale), mu = _mm256_set1_ps(mul);
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = tg_exp256(_mm256_fmsub_ps(_mm256_loadu_ps(x + i), mu, sh));
        s = _mm256_add_ps(s, e);
        if (y) _mm256_storeu_ps(y + i, _mm256_mul_ps(e, sc));
    }
    double t = (double)tg_hsum256(s);
    for (; i < n; i++) {
        float e = expf(x[i] * mul - shift);
        t += e;
        if (y) y[i] = e * scale;
    }
    return t;
}
#endif

static inline double tg_exp_shift(int lvl, const float *x, float *y, long n, float mul, float shift, float scale) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512) return tg_exp_shift_avx512(x, y, n, mul, shift, scale);
    if (lvl >= SLMX_SIMD_AVX2) return tg_exp_shift_avx2(x, y, n, mul, shift, scale);
#endif
    double t = 0.0;
    for (long i = 0; i < n; i++) {
        float e = expf(x[i] * mul - shift);
        t += e;
        if (y) y[i] = e * scale;
    }
    return t;
}

/* ---------------------------------------------------------------- SwiGLU
 * forward  a = silu(g) * u,  silu(g) = g * sigmoid(g)
 * backward dg = da * u * s * (1 + g (1 - s)),  du = da * silu(g)   (dg, du may alias g, u) */

static inline void tg_swiglu_fwd_scalar(const float *g, const float *u, float *a, long n) {
    for (long i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + expf(-g[i]));
        a[i] = g[i] * s * u[i];
    }
}
static inline void tg_swiglu_bwd_scalar(const float *da, const float *g, const float *u, float *dg, float *du, long n) {
    for (long i = 0; i < n; i++) {
        float gi = g[i], ui = u[i], d = da[i];
        float s = 1.0f / (1.0f + expf(-gi));
        float sl = gi * s;
        dg[i] = d * ui * s * (1.0f + gi * (1.0f - s));
        du[i] = d * sl;
    }
}

#if SLMX_X86
SLMX_TARGET_AVX512 static void tg_swiglu_fwd_avx512(const float *g, const float *u, float *a, long n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (long i = 0; i < n; i += 16) {
        __mmask16 mk = tg_mask16(n - i);
        __m512 gv = _mm512_maskz_loadu_ps(mk, g + i), uv = _mm512_maskz_loadu_ps(mk, u + i);
        __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, tg_exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
        _mm512_mask_storeu_ps(a + i, mk, _mm512_mul_ps(_mm512_mul_ps(gv, s), uv));
    }
}
SLMX_TARGET_AVX512 static void tg_swiglu_bwd_avx512(const float *da, const float *g, const float *u, float *dg, float *du, long n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (long i = 0; i < n; i += 16) {
        __mmask16 mk = tg_mask16(n - i);
        __m512 gv = _mm512_maskz_loadu_ps(mk, g + i), uv = _mm512_maskz_loadu_ps(mk, u + i);
        __m512 d = _mm512_maskz_loadu_ps(mk, da + i);
        __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, tg_exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
        __m512 sl = _mm512_mul_ps(gv, s);
        __m512 t = _mm512_fmadd_ps(gv, _mm512_sub_ps(one, s), one);
        _mm512_mask_storeu_ps(dg + i, mk, _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(d, uv), s), t));
        _mm512_mask_storeu_ps(du + i, mk, _mm512_mul_ps(d, sl));
    }
}
SLMX_TARGET_AVX2 static void tg_swiglu_fwd_avx2(const float *g, const float *u, float *a, long n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i), uv = _mm256_loadu_ps(u + i);
        __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, tg_exp256(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
        _mm256_storeu_ps(a + i, _mm256_mul_ps(_mm256_mul_ps(gv, s), uv));
    }
    tg_swiglu_fwd_scalar(g + i, u + i, a + i, n - i);
}
SLMX_TARGET_AVX2 static void tg_swiglu_bwd_avx2(const float *da, const float *g, const float *u, float *dg, float *du, long n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i), uv = _mm256_loadu_ps(u + i), d = _mm256_loadu_ps(da + i);
        __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, tg_exp256(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
        __m256 sl = _mm256_mul_ps(gv, s);
        __m256 t = _mm256_fmadd_ps(gv, _mm256_sub_ps(one, s), one);
        _mm256_storeu_ps(dg + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(d, uv), s), t));
        _mm256_storeu_ps(du + i, _mm256_mul_ps(d, sl));
    }
    tg_swiglu_bwd_scalar(da + i, g + i, u + i, dg + i, du + i, n - i);
}
#endif

static inline void tg_swiglu_fwd(int lvl, const float *g, const float *u, float *a, long n) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512) { tg_swiglu_fwd_avx512(g, u, a, n); return; }
    if (lvl >= SLMX_SIMD_AVX2) { tg_swiglu_fwd_avx2(g, u, a, n); return; }
#endif
    tg_swiglu_fwd_scalar(g, u, a, n);
}
static inline void tg_swiglu_bwd(int lvl, const float *da, const float *g, const float *u, float *dg, float *du, long n) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512) { tg_swiglu_bwd_avx512(da, g, u, dg, du, n); return; }
    if (lvl >= SLMX_SIMD_AVX2) { tg_swiglu_bwd_avx2(da, g, u, dg, du, n); return; }
#endif
    tg_swiglu_bwd_scalar(da, g, u, dg, du, n);
}

/* ---------------------------------------------------------------- dot-style row loops
 * The generic bodies in train_rows_body.h, compiled once per target. */

#define TG_SFX(name) name##_scalar
#define TG_ATTR
#include "train_rows_body.h"
#undef TG_SFX
#undef TG_ATTR

#if SLMX_X86
#define TG_SFX(name) name##_avx2
#define TG_ATTR SLMX_TARGET_AVX2
#include "train_rows_body.h"
#undef TG_SFX
#undef TG_ATTR

#define TG_SFX(name) name##_avx512
#define TG_ATTR __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,prefer-vector-width=512")))
#include "train_rows_body.h"
#undef TG_SFX
#undef TG_ATTR

#define TG_DISPATCH(lvl, name, ...)                                        \
    ((lvl) >= SLMX_SIMD_AVX512 ? name##_avx512(__VA_ARGS__)               \
     : (lvl) >= SLMX_SIMD_AVX2 ? name##_avx2(__VA_ARGS__) : name##_scalar(__VA_ARGS__))
#else
#define TG_DISPATCH(lvl, name, ...) name##_scalar(__VA_ARGS__)
#endif

static inline float tg_rmsnorm_fwd(int lvl, const float *x, const float *w, float *y, long n, float eps) {
    return TG_DISPATCH(lvl, tg_rmsnorm_fwd_row, x, w, y, n, eps);
}
static inline void tg_rmsnorm_bwd(int lvl, const float *dy, const float *x, const float *w, float r, float *dx,
                                  long n, int acc) {
    TG_DISPATCH(lvl, tg_rmsnorm_bwd_row, dy, x, w, r, dx, n, acc);
}
static inline void tg_norm_dw(int lvl, const float *dy, const float *x, float r, float *dw, long n) {
    TG_DISPATCH(lvl, tg_norm_dw_row, dy, x, r, dw, n);
}
static inline float tg_dot(int lvl, const float *a, const float *b, long n) {
    return TG_DISPATCH(lvl, tg_dot_row, a, b, n);
}
static inline void tg_rope(int lvl, const float *x, float *y, const float *cs, const float *sn, long half, float sign) {
    TG_DISPATCH(lvl, tg_rope_row, x, y, cs, sn, half, sign);
}
static inline void tg_scale_row(int lvl, float *x, long n, float s) {
    TG_DISPATCH(lvl, tg_scale_row_row, x, n, s);
}
static inline void tg_add_row(int lvl, const float *a, float *y, long n) {
    TG_DISPATCH(lvl, tg_add_row_row, a, y, n);
}
static inline void tg_dsoftmax(int lvl, const float *p, float *dp, long n, float d, float scale) {
    TG_DISPATCH(lvl, tg_dsoftmax_row, p, dp, n, d, scale);
}
static inline void tg_copy_scale(int lvl, const float *x, float *y, long n, float s) {
    TG_DISPATCH(lvl, tg_copy_scale_row, x, y, n, s);
}

#endif
