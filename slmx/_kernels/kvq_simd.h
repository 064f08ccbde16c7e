/* slmx KV-cache storage formats: rows of head_dim elements as F16, Q8_0 or Q4_0 blocks.
 *
 * The attention kernel reads a key / value tile (up to 64 rows) of a quantized cache by
 * dequantizing just that tile into fp32 scratch inside its online-softmax loop; the cache as a
 * whole is never dequantized. Formats (ggml's, so a row's bytes are what llama.cpp stores):
 *   F16   2 B per element
 *   Q8_0  32 elements, 34 B: f16 d | int8 q[32]                         x = d * q
 *   Q4_0  32 elements, 18 B: f16 d | qs[16] (elem j low nibble, 16+j high)  x = d * (q - 8)
 * Quantization is ggml's reference (bit-identical to gguf-py's quantize); dequantization is one
 * exact int->float conversion and one multiply per element, so every SIMD path gives the same
 * bits as the portable one.
 */
#ifndef SLMX_KVQ_SIMD_H
#define SLMX_KVQ_SIMD_H

#include "simd.h"
#include "f16_simd.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

#define SLMX_KVQ_F32 0
#define SLMX_KVQ_F16 1
#define SLMX_KVQ_Q4_0 2
#define SLMX_KVQ_Q8_0 8

/* bytes of one row of D elements (D a multiple of 32 for the block types); 0: unknown type */
static inline long slmx_kvq_row_bytes(int t, long D) {
    switch (t) {
    case SLMX_KVQ_F32: return 4 * D;
    case SLMX_KVQ_F16: return 2 * D;
    case SLMX_KVQ_Q8_0: return D / 32 * 34;
    case SLMX_KVQ_Q4_0: return D / 32 * 18;
    }
    return 0;
}

static inline float slmx_kvq_d(const uint8_t *b) {
    uint16_t h; memcpy(&h, b, 2);
    return slmx_f16_to_f32_soft(h);
}

/* ------------------------------------------------------------------ quantize (portable) */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

static void slmx_kvq_quant_row(int t, const float *x, long D, uint8_t *dst) {
    if (t == SLMX_KVQ_F32) { memcpy(dst, x, (size_t)D * 4); return; }
    if (t == SLMX_KVQ_F16) {
        for (long i = 0; i < D; i++) { uint16_t h = slmx_f32_to_f16_soft(x[i]); memcpy(dst + 2 * i, &h, 2); }
        return;
    }
    for (long b0 = 0; b0 < D; b0 += 32) {
        const float *xb = x + b0;
        if (t == SLMX_KVQ_Q8_0) {
            uint8_t *b = dst + b0 / 32 * 34;
            float amax = 0.0f;
            for (int j = 0; j < 32; j++) { float a = fabsf(xb[j]); amax = amax < a ? a : amax; }
            float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            uint16_t dh = slmx_f32_to_f16_soft(d);
            memcpy(b, &dh, 2);
            for (int j = 0; j < 32; j++) b[2 + j] = (uint8_t)(int8_t)roundf(xb[j] * id);
        } else {   /* Q4_0: d from the signed element of largest magnitude (the first such) */
            uint8_t *b = dst + b0 / 32 * 18;
            float amax = fabsf(xb[0]), mx = xb[0];
            for (int j = 1; j < 32; j++) { float a = fabsf(xb[j]); if (amax < a) { amax = a; mx = xb[j]; } }
            float d = mx / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            uint16_t dh = slmx_f32_to_f16_soft(d);
            memcpy(b, &dh, 2);
            for (int j = 0; j < 16; j++) {
                float t0 = truncf(xb[j] * id + 8.5f), t1 = truncf(xb[j + 16] * id + 8.5f);
                int q0 = t0 > 15.0f ? 15 : (t0 > 0.0f ? (int)t0 : 0);
                int q1 = t1 > 15.0f ? 15 : (t1 > 0.0f ? (int)t1 : 0);
                b[2 + j] = (uint8_t)(q0 | (q1 << 4));
            }
        }
    }
}

/* ------------------------------------------------------------------ dequantize one row */

static void slmx_kvq_deq_row_scalar(int t, const uint8_t *src, long D, float *y) {
    if (t == SLMX_KVQ_F16) {
        for (long i = 0; i < D; i++) { uint16_t h; memcpy(&h, src + 2 * i, 2); y[i] = slmx_f16_to_f32_soft(h); }
        return;
    }
    for (long b0 = 0; b0 < D; b0 += 32) {
        if (t == SLMX_KVQ_Q8_0) {
            const uint8_t *b = src + b0 / 32 * 34;
            float d = slmx_kvq_d(b);
            for (int j = 0; j < 32; j++) y[b0 + j] = (float)(int8_t)b[2 + j] * d;
        } else {
            const uint8_t *b = src + b0 / 32 * 18;
            float d = slmx_kvq_d(b);
            for (int j = 0; j < 16; j++) {
                y[b0 + j] = (float)((b[2 + j] & 0x0f) - 8) * d;
                y[b0 + j + 16] = (float)((b[2 + j] >> 4) - 8) * d;
            }
        }
    }
}
#pragma GCC pop_options

#if SLMX_X86
static SLMX_TARGET_AVX2 void slmx_kvq_deq_row_avx2(int t, const uint8_t *src, long D, float *y) {
    if (t == SLMX_KVQ_F16) {
        long i = 0;
        for (; i + 8 <= D; i += 8)
            _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
        for (; i < D; i++) { uint16_t h; memcpy(&h, src + 2 * i, 2); y[i] = slmx_f16_to_f32_soft(h); }
        return;
    }
    for (long b0 = 0; b0 < D; b0 += 32) {
        if (t == SLMX_KVQ_Q8_0) {
            const uint8_t *b = src + b0 / 32 * 34;
            __m256 d = _mm256_set1_ps(slmx_kvq_d(b));
            for (int g = 0; g < 4; g++) {
                __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + 8 * g)));
                _mm256_storeu_ps(y + b0 + 8 * g, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
            }
        } else {
            const uint8_t *b = src + b0 / 32 * 18;
            __m256 d = _mm256_set1_ps(slmx_kvq_d(b));
            __m128i qs = _mm_loadu_si128((const __m128i *)(b + 2));
            __m128i m4 = _mm_set1_epi8(0x0f), e8 = _mm_set1_epi8(8);
            __m128i lo = _mm_sub_epi8(_mm_and_si128(qs, m4), e8);
            __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(qs, 4), m4), e8);
            _mm256_storeu_ps(y + b0, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), d));
            _mm256_storeu_ps(y + b0 + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), d));
            _mm256_storeu_ps(y + b0 + 16, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), d));
            _mm256_storeu_ps(y + b0 + 24, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), d));
        }
    }
}

static SLMX_TARGET_AVX512 void slmx_kvq_deq_row_avx512(int t, const uint8_t *src, long D, float *y) {
    if (t == SLMX_KVQ_F16) {
        long i = 0;
        for (; i + 16 <= D; i += 16)
            _mm512_storeu_ps(y + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + 2 * i))));
        for (; i < D; i++) { uint16_t h; memcpy(&h, src + 2 * i, 2); y[i] = slmx_f16_to_f32_soft(h); }
        return;
    }
    for (long b0 = 0; b0 < D; b0 += 32) {
        if (t == SLMX_KVQ_Q8_0) {
            const uint8_t *b = src + b0 / 32 * 34;
            __m512 d = _mm512_set1_ps(slmx_kvq_d(b));
            __m512i q0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 2)));
            __m512i q1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 18)));
            _mm512_storeu_ps(y + b0, _mm512_mul_ps(_mm512_cvtepi32_ps(q0), d));
            _mm512_storeu_ps(y + b0 + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(q1), d));
        } else {
            const uint8_t *b = src + b0 / 32 * 18;
            __m512 d = _mm512_set1_ps(slmx_kvq_d(b));
            __m128i qs = _mm_loadu_si128((const __m128i *)(b + 2));
            __m128i m4 = _mm_set1_epi8(0x0f), e8 = _mm_set1_epi8(8);
            __m128i lo = _mm_sub_epi8(_mm_and_si128(qs, m4), e8);
            __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(qs, 4), m4), e8);
            _mm512_storeu_ps(y + b0, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)), d));
            _mm512_storeu_ps(y + b0 + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)), d));
        }
    }
}
#endif

/* y (n, D) fp32 contiguous = n rows of type t starting at src, rs bytes apart */
static void slmx_kvq_dequant_rows(int lvl, int t, const uint8_t *src, long rs, int n, long D, float *y) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512 && D % 32 == 0) {
        for (int j = 0; j < n; j++) slmx_kvq_deq_row_avx512(t, src + j * rs, D, y + j * D);
        return;
    }
    if (lvl >= SLMX_SIMD_AVX2 && D % 32 == 0) {
        for (int j = 0; j < n; j++) slmx_kvq_deq_row_avx2(t, src + j * rs, D, y + j * D);
        return;
    }
#endif
    for (int j = 0; j < n; j++) slmx_kvq_deq_row_scalar(t, src + j * rs, D, y + j * D);
}

#endif
