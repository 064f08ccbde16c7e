/* Row loops of the training kernels, written once and compiled per target: train_ops_simd.h
 * includes this file with TG_SFX(name) (the suffixed name) and TG_ATTR (the target attribute).
 * Loops carry `omp simd` so every target vectorizes them at its own width. */

/* y = x * r * w with r = 1 / sqrt(mean(x^2) + eps); returns r */
TG_ATTR static float TG_SFX(tg_rmsnorm_fwd_row)(const float *restrict x, const float *restrict w,
                                                float *restrict y, long n, float eps) {
    float ss = 0.0f;
#pragma omp simd reduction(+:ss)
    for (long i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
#pragma omp simd
    for (long i = 0; i < n; i++) y[i] = x[i] * r * w[i];
    return r;
}

/* dx (+)= r (dy w) - (r^3 / n) x sum(dy w x)   (the weight gradient: tg_norm_dw_row) */
TG_ATTR static void TG_SFX(tg_rmsnorm_bwd_row)(const float *restrict dy, const float *restrict x,
                                               const float *restrict w, float r, float *restrict dx,
                                               long n, int acc) {
    float s = 0.0f;
#pragma omp simd reduction(+:s)
    for (long i = 0; i < n; i++) s += dy[i] * w[i] * x[i];
    float c = s * r * r * r / (float)n;
    if (acc) {
#pragma omp simd
        for (long i = 0; i < n; i++) dx[i] += dy[i] * w[i] * r - c * x[i];
    } else {
#pragma omp simd
        for (long i = 0; i < n; i++) dx[i] = dy[i] * w[i] * r - c * x[i];
    }
}

/* dw += dy x r  (one row's share of the norm weight's gradient) */
TG_ATTR static void TG_SFX(tg_norm_dw_row)(const float *restrict dy, const float *restrict x, float r,
                                           float *restrict dw, long n) {
#pragma omp simd
    for (long i = 0; i < n; i++) dw[i] += dy[i] * x[i] * r;
}

TG_ATTR static float TG_SFX(tg_dot_row)(const float *restrict a, const float *restrict b, long n) {
    float s = 0.0f;
#pragma omp simd reduction(+:s)
    for (long i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* rotate the pairs (x[2i], x[2i+1]) by sign * theta_i (cs = cos theta, sn = sin theta); y may be x */
TG_ATTR static void TG_SFX(tg_rope_row)(const float *x, float *y, const float *restrict cs,
                                        const float *restrict sn, long half, float sign) {
#pragma omp simd
    for (long i = 0; i < half; i++) {
        float x0 = x[2 * i], x1 = x[2 * i + 1], c = cs[i], s = sign * sn[i];
        y[2 * i] = x0 * c - x1 * s;
        y[2 * i + 1] = x0 * s + x1 * c;
    }
}

TG_ATTR static void TG_SFX(tg_scale_row_row)(float *restrict x, long n, float s) {
#pragma omp simd
    for (long i = 0; i < n; i++) x[i] *= s;
}

TG_ATTR static void TG_SFX(tg_add_row_row)(const float *restrict a, float *restrict y, long n) {
#pragma omp simd
    for (long i = 0; i < n; i++) y[i] += a[i];
}

/* attention backward: ds = p (dp - d) * scale */
TG_ATTR static void TG_SFX(tg_dsoftmax_row)(const float *restrict p, float *restrict dp, long n, float d, float scale) {
#pragma omp simd
    for (long i = 0; i < n; i++) dp[i] = p[i] * (dp[i] - d) * scale;
}

/* y = x * s */
TG_ATTR static void TG_SFX(tg_copy_scale_row)(const float *restrict x, float *restrict y, long n, float s) {
#pragma omp simd
    for (long i = 0; i < n; i++) y[i] = x[i] * s;
}
