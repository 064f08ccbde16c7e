/* fp16 rounding kernels, bit-exact with ggml's CPU conventions.
 *
 * slmx_f16_round: x <- fp32(fp16(x)), round to nearest even (what F16C's vcvtps2ph does and what
 *   ggml applies when it stores K and V in an fp16 KV cache and converts q for the fp16 dot).
 * slmx_geglu_f16: out = gelu16(gate) * up, where gelu16(x) = 0 for x <= -10, x for x >= 10, else
 *   fp32(table[fp16(x)]) with table[h] = fp16(gelu_tanh(fp32(h))): ggml's GGML_GELU_FP16 path.
 * A portable path (bit manipulation) and an F16C path (chosen by the caller's SIMD level >= 1).
 */
#ifndef SLMX_F16_SIMD_H
#define SLMX_F16_SIMD_H
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "simd.h"

static inline uint16_t slmx_f32_to_f16_soft(float f) {
    uint32_t x; memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);            /* overflow -> inf */
    if (ax < 0x38800000u) {                                               /* subnormal or zero */
        if (ax < 0x33000000u) return (uint16_t)sign;                      /* < 2^-25 rounds to 0 */
        uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;                                         /* 14 + (113 - e) - 1 */
        uint32_t r = m >> (shift);
        uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ax - 0x38000000u;                                        /* rebias exponent */
    uint32_t h = r >> 13, rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

static inline float slmx_f16_to_f32_soft(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ffu, x;
    if (e == 0) {
        if (m == 0) x = sign;
        else { e = 113; while (!(m & 0x400u)) { m <<= 1; e--; } x = sign | (e << 23) | ((m & 0x3ffu) << 13); }
    } else if (e == 31) x = sign | 0x7f800000u | (m << 13);
    else x = sign | ((e + 112) << 23) | (m << 13);
    float f; memcpy(&f, &x, 4); return f;
}

#if SLMX_X86
SLMX_TARGET_AVX2 static void slmx_f16_round_f16c(float *x, long n) {
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++) x[i] = slmx_f16_to_f32_soft(slmx_f32_to_f16_soft(x[i]));
}
#endif

static void slmx_f16_round(int lvl, float *x, long n) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX2) { slmx_f16_round_f16c(x, n); return; }
#endif
    (void)lvl;
    for (long i = 0; i < n; i++) x[i] = slmx_f16_to_f32_soft(slmx_f32_to_f16_soft(x[i]));
}

static float slmx_gelu_f16_table[65536];
static int slmx_gelu_f16_table_ready = 0;

static void slmx_gelu_f16_init(void) {
    if (slmx_gelu_f16_table_ready) return;
    const float c = 0.79788456080286535587989211986876f, a = 0.044715f;
    for (int i = 0; i < 65536; i++) {
        float x = slmx_f16_to_f32_soft((uint16_t)i);
        float g = 0.5f * x * (1.0f + tanhf(c * x * (1.0f + a * x * x)));
        slmx_gelu_f16_table[i] = slmx_f16_to_f32_soft(slmx_f32_to_f16_soft(g));
    }
    slmx_gelu_f16_table_ready = 1;
}

#if SLMX_X86
/* F16C conversion of 8 lanes at a time, then 8 table look-ups. */
SLMX_TARGET_AVX2 static void slmx_geglu_f16_f16c(const float *g, const float *u, float *out, long n) {
    long i = 0;
    const __m256 lo = _mm256_set1_ps(-10.0f), hi = _mm256_set1_ps(10.0f);
    uint16_t h[8];
    float t[8];
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        _mm_storeu_si128((__m128i *)h, _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
        for (int j = 0; j < 8; j++) t[j] = slmx_gelu_f16_table[h[j]];
        __m256 y = _mm256_loadu_ps(t);
        y = _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, hi, _CMP_GE_OQ));
        y = _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LE_OQ), y);
        _mm256_storeu_ps(out + i, _mm256_mul_ps(y, _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) {
        float x = g[i], y;
        if (x <= -10.0f) y = 0.0f;
        else if (x >= 10.0f) y = x;
        else y = slmx_gelu_f16_table[slmx_f32_to_f16_soft(x)];
        out[i] = y * u[i];
    }
}
#endif

static void slmx_geglu_f16(int lvl, const float *g, const float *u, float *out, long n) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX2) { slmx_geglu_f16_f16c(g, u, out, n); return; }
#endif
    (void)lvl;
    for (long i = 0; i < n; i++) {
        float x = g[i], y;
        if (x <= -10.0f) y = 0.0f;
        else if (x >= 10.0f) y = x;
        else y = slmx_gelu_f16_table[slmx_f32_to_f16_soft(x)];
        out[i] = y * u[i];
    }
}
#endif
