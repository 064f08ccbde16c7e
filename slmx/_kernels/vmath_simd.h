/* slmx vector math shared by the fp32 kernels (ops_core, attention): exp, sigmoid, tanh and
 * horizontal reductions for AVX2 and AVX-512, each function compiled for its own ISA (see simd.h).
 *
 * exp(x): x = n*ln2 + r with n = round(x*log2(e)), |r| <= ln2/2 (Cody-Waite split of ln2), e^r by
 * its degree-7 Taylor polynomial in Horner form (truncation < 2e-9 relative), then scaled by 2^n.
 * Relative error ~1.5e-7 (a few float ulps) over the whole range.
 * AVX-512 scales with vscalefps, so overflow gives +inf and underflow 0 (denormals in between).
 * AVX2 builds 2^n in the exponent field: x > 88.72 gives +inf, x < -87.33 gives 0 (no denormals).
 * NaN propagates in both.
 */
#ifndef SLMX_VMATH_SIMD_H
#define SLMX_VMATH_SIMD_H

#include "simd.h"
#include <math.h>

#define SLMX_LOG2E 1.44269504088896341f
#define SLMX_LN2_HI 0.693359375f
#define SLMX_LN2_LO -2.12194440e-4f

#if SLMX_X86

/* ---------------------------------------------------------------- AVX-512 */

static inline SLMX_TARGET_AVX512 __m512 slmx_exp_avx512(__m512 x) {
    /* max/min return the second operand when either is NaN: keep x second so NaN survives. */
    x = _mm512_min_ps(_mm512_set1_ps(88.8f), x);
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(SLMX_LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(SLMX_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(SLMX_LN2_LO), r);
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

/* x * sigmoid(k*x) = x / (1 + exp(-k*x)) */
static inline SLMX_TARGET_AVX512 __m512 slmx_xsigmoid_avx512(__m512 x, __m512 kx) {
    __m512 e = slmx_exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), kx));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

/* tanh(x) = 1 - 2 / (exp(2x) + 1): absolute error ~1e-7 (relative error grows near 0). */
static inline SLMX_TARGET_AVX512 __m512 slmx_tanh_avx512(__m512 x) {
    __m512 e = slmx_exp_avx512(_mm512_add_ps(x, x));
    __m512 t = _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, _mm512_set1_ps(1.0f)));
    return _mm512_sub_ps(_mm512_set1_ps(1.0f), t);
}

static inline SLMX_TARGET_AVX512 float slmx_hsum_avx512(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

static inline SLMX_TARGET_AVX512 float slmx_hmax_avx512(__m512 v) {
    __m256 a = _mm256_max_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 b = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_max_ps(b, _mm_movehl_ps(b, b));
    b = _mm_max_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

static inline SLMX_TARGET_AVX512 __mmask16 slmx_tail_mask16(long n) {
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
}

/* 16x16 transpose of rows r[0..15] (in place) */
static inline __attribute__((always_inline)) SLMX_TARGET_AVX512 void slmx_transpose16_avx512(__m512 r[16]) {
    __m512 t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    /* now r[4i + j] holds, per 128-bit lane L, element j of rows 4i..4i+3 at column 4L + j */
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) {
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], _MM_SHUFFLE(2, 0, 2, 0));
            t[8 * i + 4 + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], _MM_SHUFFLE(3, 1, 3, 1));
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], _MM_SHUFFLE(2, 0, 2, 0));
        r[j + 8] = _mm512_shuffle_f32x4(t[j], t[8 + j], _MM_SHUFFLE(3, 1, 3, 1));
        r[j + 4] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], _MM_SHUFFLE(2, 0, 2, 0));
        r[j + 12] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], _MM_SHUFFLE(3, 1, 3, 1));
    }
}

/* ---------------------------------------------------------------- AVX2 */

static inline SLMX_TARGET_AVX2 __m256 slmx_exp_avx2(__m256 x) {
    __m256 hi = _mm256_set1_ps(88.72f), lo = _mm256_set1_ps(-87.33f);
    __m256 over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    __m256 xc = _mm256_max_ps(lo, _mm256_min_ps(hi, x));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(SLMX_LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(SLMX_LN2_HI), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(SLMX_LN2_LO), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* n is in [-126, 128]: scale by 2^h * 2^(n-h), h = n >> 1, so both factors are normal floats */
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i h = _mm256_srai_epi32(ni, 1);
    __m256i bias = _mm256_set1_epi32(127);
    __m256 e1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, bias), 23));
    __m256 e2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), bias), 23));
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, e1), e2);
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), over);
    y = _mm256_andnot_ps(under, y);
    return y;
}

static inline SLMX_TARGET_AVX2 __m256 slmx_xsigmoid_avx2(__m256 x, __m256 kx) {
    __m256 e = slmx_exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), kx));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

static inline SLMX_TARGET_AVX2 __m256 slmx_tanh_avx2(__m256 x) {
    __m256 e = slmx_exp_avx2(_mm256_add_ps(x, x));
    __m256 t = _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f)));
    return _mm256_sub_ps(_mm256_set1_ps(1.0f), t);
}

static inline SLMX_TARGET_AVX2 float slmx_hsum_avx2(__m256 v) {
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

static inline SLMX_TARGET_AVX2 float slmx_hmax_avx2(__m256 v) {
    __m128 b = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    b = _mm_max_ps(b, _mm_movehl_ps(b, b));
    b = _mm_max_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

/* mask for _mm256_maskload/maskstore: the first n (0..8) lanes set */
static inline SLMX_TARGET_AVX2 __m256i slmx_tail_mask8(long n) {
    static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    if (n > 8) n = 8;
    if (n < 0) n = 0;
    return _mm256_loadu_si256((const __m256i *)(m + 8 - n));
}

#endif /* SLMX_X86 */

#endif
