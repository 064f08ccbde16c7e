/* slmx ops_core row kernels: RMSNorm, softmax, GELU(tanh)/SiLU and their GLU forms, RoPE
 * rotation, elementwise add/mul/scale. One body per ISA; slmx_ops_* dispatchers pick by level.
 * All pointers are float32; `out` may equal an input (in place).
 */
#ifndef SLMX_OPS_CORE_SIMD_H
#define SLMX_OPS_CORE_SIMD_H

#include "simd.h"
#include "vmath_simd.h"
#include <math.h>

#define SLMX_GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define SLMX_GELU_C 0.044715f

#define SLMX_ACT_GELU 0
#define SLMX_ACT_SILU 1

/* ================================================================= scalar (portable C) */

/* 1 / rms(x) from a double sum and a double root: for rows whose mean square is beyond float
 * (|x| >~ 1e19; a float sum overflows there and would make the row zeros). The usual paths below
 * keep their own float arithmetic and only come here when theirs overflowed (finite input). */
static float slmx_rms_scale_wide(const float *x, long C, float eps) {
    double ss = 0.0;
    for (long i = 0; i < C; i++) ss += (double)x[i] * (double)x[i];
    return (float)(1.0 / sqrt(ss / (double)C + (double)eps));
}

static void slmx_rmsnorm_row_scalar(const float *x, const float *w, float *out, long C, float eps) {
    double ss = 0.0;
    for (long i = 0; i < C; i++) ss += (double)x[i] * (double)x[i];
    float ms = (float)(ss / (double)C);
    float scale = isinf(ms) && !isinf(ss) ? slmx_rms_scale_wide(x, C, eps) : 1.0f / sqrtf(ms + eps);
    for (long i = 0; i < C; i++) out[i] = (x[i] * scale) * w[i];
}

static void slmx_softmax_row_scalar(const float *x, float *out, long C) {
    float m = -INFINITY;
    for (long i = 0; i < C; i++) m = x[i] > m ? x[i] : m;
    if (m == -INFINITY) {  /* every entry -inf (fully masked row): zeros, not NaN */
        for (long i = 0; i < C; i++) out[i] = 0.0f;
        return;
    }
    double s = 0.0;
    for (long i = 0; i < C; i++) { float e = expf(x[i] - m); out[i] = e; s += e; }
    float inv = (float)(1.0 / s);
    for (long i = 0; i < C; i++) out[i] *= inv;
}

static inline float slmx_gelu_scalar1(float x) {
    /* 0.5 x (1 + tanh(y)) == x * sigmoid(2y): no cancellation for negative x */
    float y = SLMX_GELU_K * (x + SLMX_GELU_C * x * x * x);
    return x / (1.0f + expf(-2.0f * y));
}

static inline float slmx_silu_scalar1(float x) { return x / (1.0f + expf(-x)); }

static void slmx_act_scalar(int kind, const float *g, const float *u, float *out, long n) {
    if (kind == SLMX_ACT_GELU) {
        if (u) for (long i = 0; i < n; i++) out[i] = slmx_gelu_scalar1(g[i]) * u[i];
        else for (long i = 0; i < n; i++) out[i] = slmx_gelu_scalar1(g[i]);
    } else {
        if (u) for (long i = 0; i < n; i++) out[i] = slmx_silu_scalar1(g[i]) * u[i];
        else for (long i = 0; i < n; i++) out[i] = slmx_silu_scalar1(g[i]);
    }
}

/* RoPE angles of one position: c[i], s[i] = cos, sin(freq_scale * theta_i / ff_i) (sin times
 * sin_sign), theta_0 = pos, theta_{i+1} = theta_i * theta_scale. The angle is accumulated in float
 * by multiplication, as ggml's CPU rope does (not the exactly rounded pos * base^(-2i/D)). */
static void slmx_rope_cache(float pos, float theta_scale, float freq_scale, const float *ff, long half,
                            float sin_sign, float *c, float *s) {
    float theta = pos;
    for (long i = 0; i < half; i++) {
        float ang = ff ? freq_scale * (theta / ff[i]) : freq_scale * theta;
        c[i] = cosf(ang);
        s[i] = sinf(ang) * sin_sign;
        theta = theta * theta_scale;
    }
}

/* Elementwise bodies written once in plain C and instantiated per ISA (the compiler vectorizes
 * each copy for its target). */
#define SLMX_ALWAYS_INLINE static inline __attribute__((always_inline))

SLMX_ALWAYS_INLINE void slmx_rope_rotate_body(float *x, const float *c, const float *s, long half, int neox) {
    if (neox) {
        float *x1 = x + half;
        for (long i = 0; i < half; i++) {
            float a = x[i], b = x1[i];
            x[i] = a * c[i] - b * s[i];
            x1[i] = a * s[i] + b * c[i];
        }
    } else {
        for (long i = 0; i < half; i++) {
            float a = x[2 * i], b = x[2 * i + 1];
            x[2 * i] = a * c[i] - b * s[i];
            x[2 * i + 1] = a * s[i] + b * c[i];
        }
    }
}

SLMX_ALWAYS_INLINE void slmx_binary_body(int op, const float *a, const float *b, float *out, long n) {
    if (op == 0) for (long i = 0; i < n; i++) out[i] = a[i] + b[i];
    else for (long i = 0; i < n; i++) out[i] = a[i] * b[i];
}

SLMX_ALWAYS_INLINE void slmx_scale_body(const float *a, float s, float *out, long n) {
    for (long i = 0; i < n; i++) out[i] = a[i] * s;
}

static void slmx_rope_rotate_scalar(float *x, const float *c, const float *s, long half, int neox) {
    slmx_rope_rotate_body(x, c, s, half, neox);
}
static void slmx_binary_scalar(int op, const float *a, const float *b, float *out, long n) {
    slmx_binary_body(op, a, b, out, n);
}
static void slmx_scale_scalar(const float *a, float s, float *out, long n) { slmx_scale_body(a, s, out, n); }

#if SLMX_X86
/* ================================================================= AVX-512 */

static SLMX_TARGET_AVX512 void slmx_rmsnorm_row_avx512(const float *x, const float *w, float *out, long C, float eps) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    long i = 0;
    for (; i + 64 <= C; i += 64) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        __m512 c = _mm512_loadu_ps(x + i + 32), d = _mm512_loadu_ps(x + i + 48);
        s0 = _mm512_fmadd_ps(a, a, s0); s1 = _mm512_fmadd_ps(b, b, s1);
        s2 = _mm512_fmadd_ps(c, c, s2); s3 = _mm512_fmadd_ps(d, d, s3);
    }
    for (; i < C; i += 16) {
        __m512 a = _mm512_maskz_loadu_ps(slmx_tail_mask16(C - i), x + i);
        s0 = _mm512_fmadd_ps(a, a, s0);
    }
    float ss = slmx_hsum_avx512(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
    float scale = isinf(ss / (float)C) ? slmx_rms_scale_wide(x, C, eps) : 1.0f / sqrtf(ss / (float)C + eps);
    __m512 sc = _mm512_set1_ps(scale);
    for (i = 0; i < C; i += 16) {
        __mmask16 m = slmx_tail_mask16(C - i);
        __m512 a = _mm512_maskz_loadu_ps(m, x + i);
        __m512 b = _mm512_maskz_loadu_ps(m, w + i);
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_mul_ps(a, sc), b));
    }
}

static SLMX_TARGET_AVX512 void slmx_softmax_row_avx512(const float *x, float *out, long C) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (long i = 0; i < C; i += 16) {
        __mmask16 m = slmx_tail_mask16(C - i);
        mx = _mm512_mask_max_ps(mx, m, _mm512_maskz_loadu_ps(m, x + i), mx);
    }
    float mxs = slmx_hmax_avx512(mx);
    if (mxs == -INFINITY) {
        for (long i = 0; i < C; i += 16) _mm512_mask_storeu_ps(out + i, slmx_tail_mask16(C - i), _mm512_setzero_ps());
        return;
    }
    __m512 vm = _mm512_set1_ps(mxs), sum = _mm512_setzero_ps();
    for (long i = 0; i < C; i += 16) {
        __mmask16 m = slmx_tail_mask16(C - i);
        __m512 e = slmx_exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm));
        e = _mm512_maskz_mov_ps(m, e);
        sum = _mm512_add_ps(sum, e);
        _mm512_mask_storeu_ps(out + i, m, e);
    }
    __m512 inv = _mm512_set1_ps(1.0f / slmx_hsum_avx512(sum));
    for (long i = 0; i < C; i += 16) {
        __mmask16 m = slmx_tail_mask16(C - i);
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, out + i), inv));
    }
}

static SLMX_TARGET_AVX512 void slmx_act_avx512(int kind, const float *g, const float *u, float *out, long n) {
    const __m512 k = _mm512_set1_ps(2.0f * SLMX_GELU_K), c = _mm512_set1_ps(SLMX_GELU_C);
    for (long i = 0; i < n; i += 16) {
        __mmask16 m = slmx_tail_mask16(n - i);
        __m512 x = _mm512_maskz_loadu_ps(m, g + i), y;
        if (kind == SLMX_ACT_GELU) {
            __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
            __m512 t = _mm512_mul_ps(k, _mm512_fmadd_ps(c, x3, x)); /* 2y */
            y = slmx_xsigmoid_avx512(x, t);
        } else {
            y = slmx_xsigmoid_avx512(x, x);
        }
        if (u) y = _mm512_mul_ps(y, _mm512_maskz_loadu_ps(m, u + i));
        _mm512_mask_storeu_ps(out + i, m, y);
    }
}

static SLMX_TARGET_AVX512 void slmx_rope_rotate_avx512(float *x, const float *c, const float *s, long half, int neox) {
    slmx_rope_rotate_body(x, c, s, half, neox);
}
static SLMX_TARGET_AVX512 void slmx_binary_avx512(int op, const float *a, const float *b, float *out, long n) {
    slmx_binary_body(op, a, b, out, n);
}
static SLMX_TARGET_AVX512 void slmx_scale_avx512(const float *a, float s, float *out, long n) {
    slmx_scale_body(a, s, out, n);
}

/* ================================================================= AVX2 */

static SLMX_TARGET_AVX2 void slmx_rmsnorm_row_avx2(const float *x, const float *w, float *out, long C, float eps) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    long i = 0;
    for (; i + 32 <= C; i += 32) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        __m256 c = _mm256_loadu_ps(x + i + 16), d = _mm256_loadu_ps(x + i + 24);
        s0 = _mm256_fmadd_ps(a, a, s0); s1 = _mm256_fmadd_ps(b, b, s1);
        s2 = _mm256_fmadd_ps(c, c, s2); s3 = _mm256_fmadd_ps(d, d, s3);
    }
    for (; i < C; i += 8) {
        __m256 a = _mm256_maskload_ps(x + i, slmx_tail_mask8(C - i));
        s0 = _mm256_fmadd_ps(a, a, s0);
    }
    float ss = slmx_hsum_avx2(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    float scale = isinf(ss / (float)C) ? slmx_rms_scale_wide(x, C, eps) : 1.0f / sqrtf(ss / (float)C + eps);
    __m256 sc = _mm256_set1_ps(scale);
    for (i = 0; i < C; i += 8) {
        __m256i m = slmx_tail_mask8(C - i);
        __m256 a = _mm256_maskload_ps(x + i, m), b = _mm256_maskload_ps(w + i, m);
        _mm256_maskstore_ps(out + i, m, _mm256_mul_ps(_mm256_mul_ps(a, sc), b));
    }
}

static SLMX_TARGET_AVX2 void slmx_softmax_row_avx2(const float *x, float *out, long C) {
    __m256 mx = _mm256_set1_ps(-INFINITY);
    long i = 0;
    for (; i + 8 <= C; i += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(x + i));
    float mxs = slmx_hmax_avx2(mx);
    for (; i < C; i++) mxs = x[i] > mxs ? x[i] : mxs;
    if (mxs == -INFINITY) {
        for (i = 0; i < C; i++) out[i] = 0.0f;
        return;
    }
    __m256 vm = _mm256_set1_ps(mxs), sum = _mm256_setzero_ps();
    for (i = 0; i < C; i += 8) {
        __m256i m = slmx_tail_mask8(C - i);
        __m256 e = slmx_exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(x + i, m), vm));
        e = _mm256_and_ps(e, _mm256_castsi256_ps(m));
        sum = _mm256_add_ps(sum, e);
        _mm256_maskstore_ps(out + i, m, e);
    }
    __m256 inv = _mm256_set1_ps(1.0f / slmx_hsum_avx2(sum));
    for (i = 0; i < C; i += 8) {
        __m256i m = slmx_tail_mask8(C - i);
        _mm256_maskstore_ps(out + i, m, _mm256_mul_ps(_mm256_maskload_ps(out + i, m), inv));
    }
}

static SLMX_TARGET_AVX2 void slmx_act_avx2(int kind, const float *g, const float *u, float *out, long n) {
    const __m256 k = _mm256_set1_ps(2.0f * SLMX_GELU_K), c = _mm256_set1_ps(SLMX_GELU_C);
    for (long i = 0; i < n; i += 8) {
        __m256i m = slmx_tail_mask8(n - i);
        __m256 x = _mm256_maskload_ps(g + i, m), y;
        if (kind == SLMX_ACT_GELU) {
            __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
            __m256 t = _mm256_mul_ps(k, _mm256_fmadd_ps(c, x3, x));
            y = slmx_xsigmoid_avx2(x, t);
        } else {
            y = slmx_xsigmoid_avx2(x, x);
        }
        if (u) y = _mm256_mul_ps(y, _mm256_maskload_ps(u + i, m));
        _mm256_maskstore_ps(out + i, m, y);
    }
}

static SLMX_TARGET_AVX2 void slmx_rope_rotate_avx2(float *x, const float *c, const float *s, long half, int neox) {
    slmx_rope_rotate_body(x, c, s, half, neox);
}
static SLMX_TARGET_AVX2 void slmx_binary_avx2(int op, const float *a, const float *b, float *out, long n) {
    slmx_binary_body(op, a, b, out, n);
}
static SLMX_TARGET_AVX2 void slmx_scale_avx2(const float *a, float s, float *out, long n) {
    slmx_scale_body(a, s, out, n);
}
#endif /* SLMX_X86 */

/* ================================================================= dispatch */

#if SLMX_X86
#define SLMX_DISPATCH(lvl, name, ...)                                         \
    do {                                                                      \
        if ((lvl) >= SLMX_SIMD_AVX512) name##_avx512(__VA_ARGS__);            \
        else if ((lvl) >= SLMX_SIMD_AVX2) name##_avx2(__VA_ARGS__);           \
        else name##_scalar(__VA_ARGS__);                                      \
    } while (0)
#else
#define SLMX_DISPATCH(lvl, name, ...) name##_scalar(__VA_ARGS__)
#endif

static inline void slmx_ops_rmsnorm_row(int lvl, const float *x, const float *w, float *out, long C, float eps) {
    SLMX_DISPATCH(lvl, slmx_rmsnorm_row, x, w, out, C, eps);
}
static inline void slmx_ops_softmax_row(int lvl, const float *x, float *out, long C) {
    SLMX_DISPATCH(lvl, slmx_softmax_row, x, out, C);
}
static inline void slmx_ops_act(int lvl, int kind, const float *g, const float *u, float *out, long n) {
    SLMX_DISPATCH(lvl, slmx_act, kind, g, u, out, n);
}
static inline void slmx_ops_rope_rotate(int lvl, float *x, const float *c, const float *s, long half, int neox) {
    SLMX_DISPATCH(lvl, slmx_rope_rotate, x, c, s, half, neox);
}
static inline void slmx_ops_binary(int lvl, int op, const float *a, const float *b, float *out, long n) {
    SLMX_DISPATCH(lvl, slmx_binary, op, a, b, out, n);
}
static inline void slmx_ops_scale(int lvl, const float *a, float s, float *out, long n) {
    SLMX_DISPATCH(lvl, slmx_scale, a, s, out, n);
}

#endif
