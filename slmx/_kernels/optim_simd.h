/* slmx optimizer kernels over flat float32 buffers: AdamW / Adam, SGD with momentum, the sum of
 * squares for the global gradient norm and an in-place scale. One body per target (scalar,
 * AVX2, AVX-512) stamped out by TG_OPTIM_DEFINE; loops carry `omp simd`. Element-wise formulas
 * follow torch.optim (single-tensor path), in float32:
 *   AdamW  p *= 1 - lr wd (where mask);  m = m + (1 - b1)(g - m);  v = v b2 + (1 - b2) g g;
 *          p = p + (-step_size) m / (sqrt(v) / bc2_sqrt + eps)
 *   Adam   g = g + wd p (where mask), then the same moments and update
 *   SGD    g = g + wd p (where mask);  buf = first ? g : momentum buf + (1 - dampening) g;
 *          d = nesterov ? g + momentum buf : buf;  p = p + (-lr) d
 */
#ifndef SLMX_OPTIM_SIMD_H
#define SLMX_OPTIM_SIMD_H

#include "simd.h"
#include <math.h>
#include <stdint.h>

#define TG_OPTIM_DEFINE(SFX, ATTR)                                                                    \
ATTR static void opt_adam_##SFX(float *restrict p, const float *restrict g, float *restrict m,        \
                                float *restrict v, const uint8_t *restrict mask, long n,              \
                                float decay_mul, float l2, float w1, float b2, float w2,              \
                                float neg_step, float bc2s, float eps) {                              \
    _Pragma("omp simd")                                                                               \
    for (long i = 0; i < n; i++) {                                                                    \
        float pi = p[i], gi = g[i];                                                                   \
        if (mask[i]) { pi = pi * decay_mul; gi = gi + l2 * pi; }                                      \
        float mi = m[i] + w1 * (gi - m[i]);                                                           \
        float vi = v[i] * b2 + w2 * gi * gi;                                                          \
        m[i] = mi;                                                                                    \
        v[i] = vi;                                                                                    \
        p[i] = pi + neg_step * mi / (sqrtf(vi) / bc2s + eps);                                         \
    }                                                                                                 \
}                                                                                                     \
ATTR static void opt_sgd_##SFX(float *restrict p, const float *restrict g, float *restrict buf,       \
                               const uint8_t *restrict mask, long n, float wd, float momentum,        \
                               float damp1, int nesterov, int first, float neg_lr) {                  \
    if (momentum == 0.0f || buf == 0) {                                                               \
        _Pragma("omp simd")                                                                           \
        for (long i = 0; i < n; i++) {                                                                \
            float gi = g[i];                                                                          \
            if (mask[i]) gi = gi + wd * p[i];                                                         \
            p[i] = p[i] + neg_lr * gi;                                                                \
        }                                                                                             \
        return;                                                                                       \
    }                                                                                                 \
    _Pragma("omp simd")                                                                               \
    for (long i = 0; i < n; i++) {                                                                    \
        float gi = g[i];                                                                              \
        if (mask[i]) gi = gi + wd * p[i];                                                             \
        float b = first ? gi : buf[i] * momentum + damp1 * gi;                                        \
        buf[i] = b;                                                                                   \
        float d = nesterov ? gi + momentum * b : b;                                                   \
        p[i] = p[i] + neg_lr * d;                                                                     \
    }                                                                                                 \
}                                                                                                     \
ATTR static double opt_sumsq_##SFX(const float *restrict g, long n) {                                 \
    double s = 0.0;                                                                                   \
    _Pragma("omp simd reduction(+:s)")                                                                \
    for (long i = 0; i < n; i++) s += (double)g[i] * (double)g[i];                                    \
    return s;                                                                                         \
}                                                                                                     \
ATTR static void opt_scale_##SFX(float *restrict g, long n, float c) {                                \
    _Pragma("omp simd")                                                                               \
    for (long i = 0; i < n; i++) g[i] = g[i] * c;                                                     \
}

TG_OPTIM_DEFINE(scalar, )
#if SLMX_X86
TG_OPTIM_DEFINE(avx2, SLMX_TARGET_AVX2)
TG_OPTIM_DEFINE(avx512, __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,prefer-vector-width=512"))))
#define OPT_CALL(lvl, name, ...)                                                \
    ((lvl) >= SLMX_SIMD_AVX512 ? opt_##name##_avx512(__VA_ARGS__)              \
     : (lvl) >= SLMX_SIMD_AVX2 ? opt_##name##_avx2(__VA_ARGS__) : opt_##name##_scalar(__VA_ARGS__))
#else
#define OPT_CALL(lvl, name, ...) opt_##name##_scalar(__VA_ARGS__)
#endif

static inline void opt_adam(int lvl, float *p, const float *g, float *m, float *v, const uint8_t *mask, long n,
                            float decay_mul, float l2, float w1, float b2, float w2, float neg_step,
                            float bc2s, float eps) {
    OPT_CALL(lvl, adam, p, g, m, v, mask, n, decay_mul, l2, w1, b2, w2, neg_step, bc2s, eps);
}
static inline void opt_sgd(int lvl, float *p, const float *g, float *buf, const uint8_t *mask, long n, float wd,
                           float momentum, float damp1, int nesterov, int first, float neg_lr) {
    OPT_CALL(lvl, sgd, p, g, buf, mask, n, wd, momentum, damp1, nesterov, first, neg_lr);
}
static inline double opt_sumsq(int lvl, const float *g, long n) { return OPT_CALL(lvl, sumsq, g, n); }
static inline void opt_scale(int lvl, float *g, long n, float c) { OPT_CALL(lvl, scale, g, n, c); }

#endif
