/* Encoders with SIMD bodies. K-quants (Q4_K, Q5_K, Q6_K) giving the same bytes as llama.cpp's
 * quantizer without an importance matrix (what `llama-quantize` / llama_model_quantize writes from F32 weights).
 *
 * Bit-exactness rests on doing the same IEEE float32 operations in the same order: every sum
 * runs sequentially over the elements, products are rounded before they are added (no FMA: the
 * header is compiled with fp-contract=off and its SIMD bodies enable no FMA unit), divisions are
 * true divisions, and rounding to an integer goes through the float mantissa (slmx_kq_round below:
 * round half to even, with the same wrap-around for huge values).
 *
 * Q4_K / Q5_K, per 256 elements = 8 sub-blocks of 32:
 *   each sub-block is fitted as x ~ s * q - m (q in 0..nmax, m >= 0) by weighted least squares,
 *   weights av + |x| (av = rms of the sub-block): a first guess from the range [min(x, 0), max(x)],
 *   then nstep + 1 trial scales (nmax + rmin + rdelta * i) / range, each re-solved in closed form,
 *   the one with the smallest weighted squared error kept. The 8 scales and 8 mins are stored as
 *   6-bit multiples of d = max(s) / 63 and dmin = max(m) / 63 (f16), and the elements re-rounded
 *   against the stored (d * sc, dmin * mn).
 * Q6_K, per 256 elements = 16 sub-blocks of 16:
 *   each sub-block is fitted as x ~ s * q (q in -32..31) weighting |x|^2: a first guess -32 / x_amax
 *   (x_amax the signed element of largest magnitude), then 18 neighbouring trial scales; the 16
 *   scales are stored as int8 multiples of d = -s_amax / 128 (f16) and the elements re-rounded.
 *
 * Three bodies: portable C, AVX2 (8 sub-blocks side by side in the 8 lanes, one lane per
 * sub-block, so each lane performs exactly the portable body's operations) and AVX-512 (16 lanes).
 * Also AVX2 bodies of the Q8_0 / Q4_0 / Q5_0 encoders of quant_simd.h (same bytes).
 */
#ifndef SLMX_QUANT_KQ_H
#define SLMX_QUANT_KQ_H

#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

#define SLMX_KQ_EPS 1e-15f

/* Round to the nearest integer, ties to even, through the float mantissa (exact for |v| < 2^22). */
static inline int slmx_kq_round(float v) {
    float f = v + 12582912.0f;
    int32_t i; memcpy(&i, &f, 4);
    return (i & 0x007fffff) - 0x00400000;
}

static inline int slmx_kq_clamp(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* Weighted fit x[i] ~ scale * L[i] - *mn over n elements, L in 0..nmax; returns scale. */
static float slmx_kq_fit_affine(int n, int nmax, const float *x, const float *w, uint8_t *L, float *mn,
                                uint8_t *Lt, float rmin, float rdelta, int nstep) {
    float lo = x[0], hi = x[0], sw = w[0], sx = w[0] * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
        sw += w[i];
        sx += w[i] * x[i];
    }
    if (lo > 0) lo = 0;
    if (hi == lo) {
        memset(L, 0, (size_t)n);
        *mn = -lo;
        return 0.0f;
    }
    float fnmax = (float)nmax;
    float inv = fnmax / (hi - lo), scale = 1.0f / inv, best = 0.0f;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)slmx_kq_clamp(slmx_kq_round(inv * (x[i] - lo)), 0, nmax);
        float e = scale * (float)L[i] + lo - x[i];
        best += w[i] * (e * e);
    }
    for (int s = 0; s <= nstep; s++) {
        inv = (rmin + rdelta * (float)s + fnmax) / (hi - lo);
        float sl = 0.0f, sl2 = 0.0f, sxl = 0.0f;
        for (int i = 0; i < n; i++) {
            int l = slmx_kq_clamp(slmx_kq_round(inv * (x[i] - lo)), 0, nmax);
            float fl = (float)l, wl = w[i] * fl;
            Lt[i] = (uint8_t)l;
            sl += wl;
            sl2 += wl * fl;
            sxl += wl * x[i];
        }
        float det = sw * sl2 - sl * sl;
        if (!(det > 0.0f)) continue;
        float ts = (sw * sxl - sx * sl) / det, tm = (sl2 * sx - sl * sxl) / det;
        if (tm > 0.0f) { tm = 0.0f; ts = sxl / sl2; }
        float err = 0.0f;
        for (int i = 0; i < n; i++) {
            float e = ts * (float)Lt[i] + tm - x[i];
            err += w[i] * (e * e);
        }
        if (err < best) {
            memcpy(L, Lt, (size_t)n);
            best = err;
            scale = ts;
            lo = tm;
        }
    }
    *mn = -lo;
    return scale;
}

/* Store 8 scales / mins (0..63) in the 12-byte K4 layout (inverse of slmx_scale_min_k4). */
static inline void slmx_kq_pack_scales(const uint8_t *ls, const uint8_t *lm, uint8_t *q) {
    for (int j = 0; j < 4; j++) {
        q[j] = (uint8_t)(ls[j] | ((ls[j + 4] >> 4) << 6));
        q[j + 4] = (uint8_t)(lm[j] | ((lm[j + 4] >> 4) << 6));
        q[j + 8] = (uint8_t)((ls[j + 4] & 0x0f) | ((lm[j + 4] & 0x0f) << 4));
    }
}

/* Second half of a Q4_K / Q5_K block once the 8 sub-block fits (sc, mn, L) are known: 6-bit
 * scales, f16 d / dmin, re-rounded elements, packed into b (144 or 176 bytes). */
static void slmx_kq_finish_k4(int q5, const float *x, const float *sc, const float *mn, uint8_t *L, uint8_t *b) {
    int nmax = q5 ? 31 : 15;
    float smax = 0.0f, mmax = 0.0f;
    for (int j = 0; j < 8; j++) {
        if (sc[j] > smax) smax = sc[j];
        if (mn[j] > mmax) mmax = mn[j];
    }
    float is = smax > 0.0f ? 63.0f / smax : 0.0f, im = mmax > 0.0f ? 63.0f / mmax : 0.0f;
    uint8_t ls[8], lm[8];
    for (int j = 0; j < 8; j++) {
        uint8_t a = (uint8_t)slmx_kq_round(is * sc[j]), c = (uint8_t)slmx_kq_round(im * mn[j]);
        ls[j] = a < 63 ? a : 63;
        lm[j] = c < 63 ? c : 63;
    }
    uint16_t dh = slmx_f32_to_f16(smax / 63.0f), mh = slmx_f32_to_f16(mmax / 63.0f);
    memcpy(b, &dh, 2);
    memcpy(b + 2, &mh, 2);
    slmx_kq_pack_scales(ls, lm, b + 4);
    float d = slmx_f16_to_f32(dh), dm = slmx_f16_to_f32(mh);
    for (int j = 0; j < 8; j++) {
        float dj = d * (float)ls[j];
        if (dj == 0.0f) continue;               /* keeps the fit's levels */
        float mj = dm * (float)lm[j];
        for (int i = 0; i < 32; i++)
            L[32 * j + i] = (uint8_t)slmx_kq_clamp(slmx_kq_round((x[32 * j + i] + mj) / dj), 0, nmax);
    }
    uint8_t *qs = b + (q5 ? 48 : 16);
    if (q5) memset(b + 16, 0, 32);
    for (int g = 0; g < 4; g++) {
        for (int i = 0; i < 32; i++) {
            int lo = L[64 * g + i], hi = L[64 * g + 32 + i];
            if (q5) {
                b[16 + i] |= (uint8_t)(((lo >> 4) << (2 * g)) | ((hi >> 4) << (2 * g + 1)));
                lo &= 15;
                hi &= 15;
            }
            qs[32 * g + i] = (uint8_t)(lo | (hi << 4));
        }
    }
}

/* One Q4_K (q5 = 0) or Q5_K (q5 = 1) block of 256 from x into b. */
static void slmx_quant_k4_scalar(int q5, const float *x, uint8_t *b) {
    uint8_t L[256], Lt[32];
    float w[32], sc[8], mn[8];
    for (int j = 0; j < 8; j++) {
        const float *xj = x + 32 * j;
        float s2 = 0.0f;
        for (int i = 0; i < 32; i++) s2 += xj[i] * xj[i];
        float av = sqrtf(s2 / 32.0f);
        for (int i = 0; i < 32; i++) w[i] = av + fabsf(xj[i]);
        sc[j] = q5 ? slmx_kq_fit_affine(32, 31, xj, w, L + 32 * j, &mn[j], Lt, -0.5f, 0.1f, 15)
                   : slmx_kq_fit_affine(32, 15, xj, w, L + 32 * j, &mn[j], Lt, -1.0f, 0.1f, 20);
    }
    slmx_kq_finish_k4(q5, x, sc, mn, L, b);
}

/* Fit x[i] ~ scale * (L[i] - 32) over 16 elements weighting x^2, L in 0..63; returns scale. */
static float slmx_kq_fit_sym16(const float *x, int8_t *L) {
    float amax = 0.0f, xmax = 0.0f;
    for (int i = 0; i < 16; i++) {
        float a = fabsf(x[i]);
        if (a > amax) { amax = a; xmax = x[i]; }
    }
    if (amax < SLMX_KQ_EPS) {
        memset(L, 0, 16);
        return 0.0f;
    }
    float inv = -32.0f / xmax, slx = 0.0f, sl2 = 0.0f;
    for (int i = 0; i < 16; i++) {
        int l = slmx_kq_clamp(slmx_kq_round(inv * x[i]), -32, 31);
        float fl = (float)l, w = x[i] * x[i];
        L[i] = (int8_t)(l + 32);
        slx += (w * x[i]) * fl;
        sl2 += (w * fl) * fl;
    }
    float scale = sl2 != 0.0f ? slx / sl2 : 0.0f, best = scale * slx;
    for (int s = -9; s <= 9; s++) {
        if (s == 0) continue;
        inv = -(32.0f + 0.1f * (float)s) / xmax;
        float tx = 0.0f, t2 = 0.0f;
        for (int i = 0; i < 16; i++) {
            float fl = (float)slmx_kq_clamp(slmx_kq_round(inv * x[i]), -32, 31), w = x[i] * x[i];
            tx += (w * x[i]) * fl;
            t2 += (w * fl) * fl;
        }
        if (t2 > 0.0f && tx * tx > best * t2) {
            for (int i = 0; i < 16; i++) L[i] = (int8_t)(slmx_kq_clamp(slmx_kq_round(inv * x[i]), -32, 31) + 32);
            scale = tx / t2;
            best = scale * tx;
        }
    }
    return scale;
}

/* Second half of a Q6_K block from the 16 sub-block scales and levels. */
static void slmx_kq_finish_q6(const float *x, const float *sc, int8_t *L, uint8_t *b) {
    float amax = 0.0f, smax = 0.0f;
    for (int j = 0; j < 16; j++) {
        float a = fabsf(sc[j]);
        if (a > amax) { amax = a; smax = sc[j]; }
    }
    if (amax < SLMX_KQ_EPS) {
        memset(b, 0, 210);
        return;
    }
    float inv = -128.0f / smax;
    uint16_t dh = slmx_f32_to_f16(1.0f / inv);
    memcpy(b + 208, &dh, 2);
    int8_t *scales = (int8_t *)(b + 192);
    for (int j = 0; j < 16; j++) {
        int v = slmx_kq_round(inv * sc[j]);
        scales[j] = (int8_t)(v < 127 ? v : 127);
    }
    float d = slmx_f16_to_f32(dh);
    for (int j = 0; j < 16; j++) {
        float dj = d * (float)scales[j];
        if (dj == 0.0f) continue;
        for (int i = 0; i < 16; i++)
            L[16 * j + i] = (int8_t)(slmx_kq_clamp(slmx_kq_round(x[16 * j + i] / dj), -32, 31) + 32);
    }
    for (int h = 0; h < 2; h++) {
        const int8_t *Lh = L + 128 * h;
        uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
        for (int i = 0; i < 32; i++) {
            int a = Lh[i], c = Lh[i + 32], e = Lh[i + 64], f = Lh[i + 96];
            ql[i] = (uint8_t)((a & 15) | ((e & 15) << 4));
            ql[i + 32] = (uint8_t)((c & 15) | ((f & 15) << 4));
            qh[i] = (uint8_t)((a >> 4) | ((c >> 4) << 2) | ((e >> 4) << 4) | ((f >> 4) << 6));
        }
    }
}

static void slmx_quant_q6_k_scalar(const float *x, uint8_t *b) {
    int8_t L[256];
    float sc[16];
    for (int j = 0; j < 16; j++) sc[j] = slmx_kq_fit_sym16(x + 16 * j, L + 16 * j);
    slmx_kq_finish_q6(x, sc, L, b);
}

#if SLMX_X86
/* ------------------------------------------------------------------ AVX2 bodies
 * Lane j works on sub-block j: the same operations as the portable body, in the same order, on
 * 8 sub-blocks at once. Target "avx2" only (no FMA unit), so nothing can be contracted. */
#define SLMX_KQ_TARGET __attribute__((target("avx2")))

SLMX_KQ_TARGET static inline __m256i slmx_kq_round8(__m256 v) {
    __m256i i = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12582912.0f)));
    return _mm256_sub_epi32(_mm256_and_si256(i, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x00400000));
}

SLMX_KQ_TARGET static inline __m256i slmx_kq_clamp8(__m256i v, int lo, int hi) {
    return _mm256_min_epi32(_mm256_max_epi32(v, _mm256_set1_epi32(lo)), _mm256_set1_epi32(hi));
}

/* slmx_kq_fit_affine for 8 sub-blocks of 32 (lane j = x[32 j .. 32 j + 31]); L gets the levels
 * in memory order (L[32 j + i]), sc / mn the scales and mins. */
SLMX_KQ_TARGET static void slmx_kq_fit_affine8(int nmax, const float *x, uint8_t *L, float *sc, float *mn,
                                               float rmin, float rdelta, int nstep) {
    __m256 xv[32], wv[32];
    __m256i Lv[32], Ltv[32];
    const __m256i idx = _mm256_setr_epi32(0, 32, 64, 96, 128, 160, 192, 224);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), zero = _mm256_setzero_ps();
    __m256 s2 = zero;
    for (int i = 0; i < 32; i++) {
        xv[i] = _mm256_i32gather_ps(x + i, idx, 4);
        s2 = _mm256_add_ps(s2, _mm256_mul_ps(xv[i], xv[i]));
    }
    __m256 av = _mm256_sqrt_ps(_mm256_div_ps(s2, _mm256_set1_ps(32.0f)));
    for (int i = 0; i < 32; i++) wv[i] = _mm256_add_ps(av, _mm256_and_ps(xv[i], absmask));
    __m256 lo = xv[0], hi = xv[0], sw = wv[0], sx = _mm256_mul_ps(wv[0], xv[0]);
    for (int i = 1; i < 32; i++) {
        lo = _mm256_min_ps(xv[i], lo);
        hi = _mm256_max_ps(xv[i], hi);
        sw = _mm256_add_ps(sw, wv[i]);
        sx = _mm256_add_ps(sx, _mm256_mul_ps(wv[i], xv[i]));
    }
    lo = _mm256_blendv_ps(lo, zero, _mm256_cmp_ps(lo, zero, _CMP_GT_OQ));
    __m256 flat = _mm256_cmp_ps(hi, lo, _CMP_EQ_OQ);
    __m256 fnmax = _mm256_set1_ps((float)nmax);
    __m256 inv = _mm256_div_ps(fnmax, _mm256_sub_ps(hi, lo));
    __m256 scale = _mm256_div_ps(_mm256_set1_ps(1.0f), inv), best = zero;
    for (int i = 0; i < 32; i++) {
        Lv[i] = slmx_kq_clamp8(slmx_kq_round8(_mm256_mul_ps(inv, _mm256_sub_ps(xv[i], lo))), 0, nmax);
        __m256 e = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale, _mm256_cvtepi32_ps(Lv[i])), lo), xv[i]);
        best = _mm256_add_ps(best, _mm256_mul_ps(wv[i], _mm256_mul_ps(e, e)));
    }
    for (int s = 0; s <= nstep; s++) {
        inv = _mm256_div_ps(_mm256_set1_ps(rmin + rdelta * (float)s + (float)nmax), _mm256_sub_ps(hi, lo));
        __m256 sl = zero, sl2 = zero, sxl = zero;
        for (int i = 0; i < 32; i++) {
            Ltv[i] = slmx_kq_clamp8(slmx_kq_round8(_mm256_mul_ps(inv, _mm256_sub_ps(xv[i], lo))), 0, nmax);
            __m256 fl = _mm256_cvtepi32_ps(Ltv[i]), wl = _mm256_mul_ps(wv[i], fl);
            sl = _mm256_add_ps(sl, wl);
            sl2 = _mm256_add_ps(sl2, _mm256_mul_ps(wl, fl));
            sxl = _mm256_add_ps(sxl, _mm256_mul_ps(wl, xv[i]));
        }
        __m256 det = _mm256_sub_ps(_mm256_mul_ps(sw, sl2), _mm256_mul_ps(sl, sl));
        __m256 ok = _mm256_andnot_ps(flat, _mm256_cmp_ps(det, zero, _CMP_GT_OQ));
        if (_mm256_movemask_ps(ok) == 0) continue;
        __m256 ts = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sw, sxl), _mm256_mul_ps(sx, sl)), det);
        __m256 tm = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sl2, sx), _mm256_mul_ps(sl, sxl)), det);
        __m256 pos = _mm256_cmp_ps(tm, zero, _CMP_GT_OQ);
        tm = _mm256_blendv_ps(tm, zero, pos);
        ts = _mm256_blendv_ps(ts, _mm256_div_ps(sxl, sl2), pos);
        __m256 err = zero;
        for (int i = 0; i < 32; i++) {
            __m256 e = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(ts, _mm256_cvtepi32_ps(Ltv[i])), tm), xv[i]);
            err = _mm256_add_ps(err, _mm256_mul_ps(wv[i], _mm256_mul_ps(e, e)));
        }
        ok = _mm256_and_ps(ok, _mm256_cmp_ps(err, best, _CMP_LT_OQ));
        int m = _mm256_movemask_ps(ok);
        if (m == 0) continue;
        __m256i oki = _mm256_castps_si256(ok);
        for (int i = 0; i < 32; i++) Lv[i] = _mm256_blendv_epi8(Lv[i], Ltv[i], oki);
        best = _mm256_blendv_ps(best, err, ok);
        scale = _mm256_blendv_ps(scale, ts, ok);
        lo = _mm256_blendv_ps(lo, tm, ok);
    }
    scale = _mm256_blendv_ps(scale, zero, flat);
    _mm256_storeu_ps(sc, scale);
    _mm256_storeu_ps(mn, _mm256_xor_ps(lo, _mm256_set1_ps(-0.0f)));
    __m256i fl_i = _mm256_castps_si256(flat);
    for (int i = 0; i < 32; i++) {
        int32_t t[8];
        _mm256_storeu_si256((__m256i *)t, _mm256_andnot_si256(fl_i, Lv[i]));
        for (int j = 0; j < 8; j++) L[32 * j + i] = (uint8_t)t[j];
    }
}

SLMX_KQ_TARGET static void slmx_quant_k4_avx2(int q5, const float *x, uint8_t *b) {
    uint8_t L[256];
    float sc[8], mn[8];
    if (q5) slmx_kq_fit_affine8(31, x, L, sc, mn, -0.5f, 0.1f, 15);
    else slmx_kq_fit_affine8(15, x, L, sc, mn, -1.0f, 0.1f, 20);
    slmx_kq_finish_k4(q5, x, sc, mn, L, b);
}

/* slmx_kq_fit_sym16 for 8 sub-blocks of 16 (lane j = x[16 j .. 16 j + 15]). */
SLMX_KQ_TARGET static void slmx_kq_fit_sym16x8(const float *x, int8_t *L, float *sc) {
    __m256 xv[16], wv[16];
    __m256i Lv[16], Ltv[16];
    const __m256i idx = _mm256_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), zero = _mm256_setzero_ps();
    __m256 amax = zero, xmax = zero;
    for (int i = 0; i < 16; i++) {
        xv[i] = _mm256_i32gather_ps(x + i, idx, 4);
        wv[i] = _mm256_mul_ps(xv[i], xv[i]);
        __m256 a = _mm256_and_ps(xv[i], absmask), gt = _mm256_cmp_ps(a, amax, _CMP_GT_OQ);
        amax = _mm256_blendv_ps(amax, a, gt);
        xmax = _mm256_blendv_ps(xmax, xv[i], gt);
    }
    __m256 zl = _mm256_cmp_ps(amax, _mm256_set1_ps(SLMX_KQ_EPS), _CMP_LT_OQ);
    __m256 inv = _mm256_div_ps(_mm256_set1_ps(-32.0f), xmax), slx = zero, sl2 = zero;
    for (int i = 0; i < 16; i++) {
        Lv[i] = slmx_kq_clamp8(slmx_kq_round8(_mm256_mul_ps(inv, xv[i])), -32, 31);
        __m256 fl = _mm256_cvtepi32_ps(Lv[i]);
        slx = _mm256_add_ps(slx, _mm256_mul_ps(_mm256_mul_ps(wv[i], xv[i]), fl));
        sl2 = _mm256_add_ps(sl2, _mm256_mul_ps(_mm256_mul_ps(wv[i], fl), fl));
    }
    __m256 scale = _mm256_and_ps(_mm256_div_ps(slx, sl2), _mm256_cmp_ps(sl2, zero, _CMP_NEQ_UQ));
    __m256 best = _mm256_mul_ps(scale, slx);
    for (int s = -9; s <= 9; s++) {
        if (s == 0) continue;
        inv = _mm256_div_ps(_mm256_set1_ps(-(32.0f + 0.1f * (float)s)), xmax);
        __m256 tx = zero, t2 = zero;
        for (int i = 0; i < 16; i++) {
            Ltv[i] = slmx_kq_clamp8(slmx_kq_round8(_mm256_mul_ps(inv, xv[i])), -32, 31);
            __m256 fl = _mm256_cvtepi32_ps(Ltv[i]);
            tx = _mm256_add_ps(tx, _mm256_mul_ps(_mm256_mul_ps(wv[i], xv[i]), fl));
            t2 = _mm256_add_ps(t2, _mm256_mul_ps(_mm256_mul_ps(wv[i], fl), fl));
        }
        __m256 ok = _mm256_and_ps(_mm256_cmp_ps(t2, zero, _CMP_GT_OQ),
                                  _mm256_cmp_ps(_mm256_mul_ps(tx, tx), _mm256_mul_ps(best, t2), _CMP_GT_OQ));
        ok = _mm256_andnot_ps(zl, ok);
        if (_mm256_movemask_ps(ok) == 0) continue;
        __m256i oki = _mm256_castps_si256(ok);
        for (int i = 0; i < 16; i++) Lv[i] = _mm256_blendv_epi8(Lv[i], Ltv[i], oki);
        __m256 ns = _mm256_div_ps(tx, t2);
        scale = _mm256_blendv_ps(scale, ns, ok);
        best = _mm256_blendv_ps(best, _mm256_mul_ps(ns, tx), ok);
    }
    _mm256_storeu_ps(sc, _mm256_blendv_ps(scale, zero, zl));
    __m256i zli = _mm256_castps_si256(zl), off = _mm256_set1_epi32(32);
    for (int i = 0; i < 16; i++) {
        int32_t t[8];
        _mm256_storeu_si256((__m256i *)t, _mm256_andnot_si256(zli, _mm256_add_epi32(Lv[i], off)));
        for (int j = 0; j < 8; j++) L[16 * j + i] = (int8_t)t[j];
    }
}

SLMX_KQ_TARGET static void slmx_quant_q6_k_avx2(const float *x, uint8_t *b) {
    int8_t L[256];
    float sc[16];
    slmx_kq_fit_sym16x8(x, L, sc);
    slmx_kq_fit_sym16x8(x + 128, L + 128, sc + 8);
    slmx_kq_finish_q6(x, sc, L, b);
}

/* ------------------------------------------------------------------ AVX-512 bodies
 * The AVX2 bodies' lane-per-sub-block scheme on 16 lanes: Q4_K / Q5_K take two blocks at a
 * time (16 sub-blocks of 32), Q6_K one block (16 sub-blocks of 16). Comparisons give masks. */
#define SLMX_KQ_TARGET512 __attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512dq")))

SLMX_KQ_TARGET512 static inline __m512i slmx_kq_round16(__m512 v) {
    __m512i i = _mm512_castps_si512(_mm512_add_ps(v, _mm512_set1_ps(12582912.0f)));
    return _mm512_sub_epi32(_mm512_and_si512(i, _mm512_set1_epi32(0x007fffff)), _mm512_set1_epi32(0x00400000));
}

SLMX_KQ_TARGET512 static inline __m512i slmx_kq_clamp16(__m512i v, int lo, int hi) {
    return _mm512_min_epi32(_mm512_max_epi32(v, _mm512_set1_epi32(lo)), _mm512_set1_epi32(hi));
}

/* slmx_kq_fit_affine for 16 sub-blocks of 32 (lane j = x[32 j .. 32 j + 31], two blocks). */
SLMX_KQ_TARGET512 static void slmx_kq_fit_affine16(int nmax, const float *x, uint8_t *L, float *sc, float *mn,
                                                   float rmin, float rdelta, int nstep) {
    __m512 xv[32], wv[32];
    __m512i Lv[32], Ltv[32];
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(32));
    const __m512 zero = _mm512_setzero_ps();
    __m512 s2 = zero;
    for (int i = 0; i < 32; i++) {
        xv[i] = _mm512_i32gather_ps(idx, x + i, 4);
        s2 = _mm512_add_ps(s2, _mm512_mul_ps(xv[i], xv[i]));
    }
    __m512 av = _mm512_sqrt_ps(_mm512_div_ps(s2, _mm512_set1_ps(32.0f)));
    for (int i = 0; i < 32; i++) wv[i] = _mm512_add_ps(av, _mm512_abs_ps(xv[i]));
    __m512 lo = xv[0], hi = xv[0], sw = wv[0], sx = _mm512_mul_ps(wv[0], xv[0]);
    for (int i = 1; i < 32; i++) {
        lo = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(xv[i], lo, _CMP_LT_OQ), lo, xv[i]);
        hi = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(xv[i], hi, _CMP_GT_OQ), hi, xv[i]);
        sw = _mm512_add_ps(sw, wv[i]);
        sx = _mm512_add_ps(sx, _mm512_mul_ps(wv[i], xv[i]));
    }
    lo = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(lo, zero, _CMP_GT_OQ), lo, zero);
    __mmask16 flat = _mm512_cmp_ps_mask(hi, lo, _CMP_EQ_OQ);
    __m512 inv = _mm512_div_ps(_mm512_set1_ps((float)nmax), _mm512_sub_ps(hi, lo));
    __m512 scale = _mm512_div_ps(_mm512_set1_ps(1.0f), inv), best = zero;
    for (int i = 0; i < 32; i++) {
        Lv[i] = slmx_kq_clamp16(slmx_kq_round16(_mm512_mul_ps(inv, _mm512_sub_ps(xv[i], lo))), 0, nmax);
        __m512 e = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(scale, _mm512_cvtepi32_ps(Lv[i])), lo), xv[i]);
        best = _mm512_add_ps(best, _mm512_mul_ps(wv[i], _mm512_mul_ps(e, e)));
    }
    for (int s = 0; s <= nstep; s++) {
        inv = _mm512_div_ps(_mm512_set1_ps(rmin + rdelta * (float)s + (float)nmax), _mm512_sub_ps(hi, lo));
        __m512 sl = zero, sl2 = zero, sxl = zero;
        for (int i = 0; i < 32; i++) {
            Ltv[i] = slmx_kq_clamp16(slmx_kq_round16(_mm512_mul_ps(inv, _mm512_sub_ps(xv[i], lo))), 0, nmax);
            __m512 fl = _mm512_cvtepi32_ps(Ltv[i]), wl = _mm512_mul_ps(wv[i], fl);
            sl = _mm512_add_ps(sl, wl);
            sl2 = _mm512_add_ps(sl2, _mm512_mul_ps(wl, fl));
            sxl = _mm512_add_ps(sxl, _mm512_mul_ps(wl, xv[i]));
        }
        __m512 det = _mm512_sub_ps(_mm512_mul_ps(sw, sl2), _mm512_mul_ps(sl, sl));
        __mmask16 ok = (__mmask16)(~flat & _mm512_cmp_ps_mask(det, zero, _CMP_GT_OQ));
        if (!ok) continue;
        __m512 ts = _mm512_div_ps(_mm512_sub_ps(_mm512_mul_ps(sw, sxl), _mm512_mul_ps(sx, sl)), det);
        __m512 tm = _mm512_div_ps(_mm512_sub_ps(_mm512_mul_ps(sl2, sx), _mm512_mul_ps(sl, sxl)), det);
        __mmask16 pos = _mm512_cmp_ps_mask(tm, zero, _CMP_GT_OQ);
        tm = _mm512_mask_blend_ps(pos, tm, zero);
        ts = _mm512_mask_blend_ps(pos, ts, _mm512_div_ps(sxl, sl2));
        __m512 err = zero;
        for (int i = 0; i < 32; i++) {
            __m512 e = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(ts, _mm512_cvtepi32_ps(Ltv[i])), tm), xv[i]);
            err = _mm512_add_ps(err, _mm512_mul_ps(wv[i], _mm512_mul_ps(e, e)));
        }
        ok = (__mmask16)(ok & _mm512_cmp_ps_mask(err, best, _CMP_LT_OQ));
        if (!ok) continue;
        for (int i = 0; i < 32; i++) Lv[i] = _mm512_mask_blend_epi32(ok, Lv[i], Ltv[i]);
        best = _mm512_mask_blend_ps(ok, best, err);
        scale = _mm512_mask_blend_ps(ok, scale, ts);
        lo = _mm512_mask_blend_ps(ok, lo, tm);
    }
    scale = _mm512_mask_blend_ps(flat, scale, zero);
    _mm512_storeu_ps(sc, scale);
    _mm512_storeu_ps(mn, _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(lo), _mm512_set1_epi32((int)0x80000000))));
    for (int i = 0; i < 32; i++) {
        int32_t t[16];
        _mm512_storeu_si512((void *)t, _mm512_maskz_mov_epi32((__mmask16)~flat, Lv[i]));
        for (int j = 0; j < 16; j++) L[32 * j + i] = (uint8_t)t[j];
    }
}

/* Two consecutive Q4_K (q5 = 0) or Q5_K blocks from x (512 elements) into b. */
SLMX_KQ_TARGET512 static void slmx_quant_k4x2_avx512(int q5, const float *x, uint8_t *b) {
    uint8_t L[512];
    float sc[16], mn[16];
    if (q5) slmx_kq_fit_affine16(31, x, L, sc, mn, -0.5f, 0.1f, 15);
    else slmx_kq_fit_affine16(15, x, L, sc, mn, -1.0f, 0.1f, 20);
    int ts = q5 ? 176 : 144;
    slmx_kq_finish_k4(q5, x, sc, mn, L, b);
    slmx_kq_finish_k4(q5, x + 256, sc + 8, mn + 8, L + 256, b + ts);
}

/* One Q6_K block: 16 sub-blocks of 16 in the 16 lanes. */
SLMX_KQ_TARGET512 static void slmx_quant_q6_k_avx512(const float *x, uint8_t *b) {
    __m512 xv[16], wv[16];
    __m512i Lv[16], Ltv[16];
    int8_t L[256];
    float sc[16];
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(16));
    const __m512 zero = _mm512_setzero_ps();
    __m512 amax = zero, xmax = zero;
    for (int i = 0; i < 16; i++) {
        xv[i] = _mm512_i32gather_ps(idx, x + i, 4);
        wv[i] = _mm512_mul_ps(xv[i], xv[i]);
        __m512 a = _mm512_abs_ps(xv[i]);
        __mmask16 gt = _mm512_cmp_ps_mask(a, amax, _CMP_GT_OQ);
        amax = _mm512_mask_blend_ps(gt, amax, a);
        xmax = _mm512_mask_blend_ps(gt, xmax, xv[i]);
    }
    __mmask16 zl = _mm512_cmp_ps_mask(amax, _mm512_set1_ps(SLMX_KQ_EPS), _CMP_LT_OQ);
    __m512 inv = _mm512_div_ps(_mm512_set1_ps(-32.0f), xmax), slx = zero, sl2 = zero;
    for (int i = 0; i < 16; i++) {
        Lv[i] = slmx_kq_clamp16(slmx_kq_round16(_mm512_mul_ps(inv, xv[i])), -32, 31);
        __m512 fl = _mm512_cvtepi32_ps(Lv[i]);
        slx = _mm512_add_ps(slx, _mm512_mul_ps(_mm512_mul_ps(wv[i], xv[i]), fl));
        sl2 = _mm512_add_ps(sl2, _mm512_mul_ps(_mm512_mul_ps(wv[i], fl), fl));
    }
    __m512 scale = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(sl2, zero, _CMP_NEQ_UQ), _mm512_div_ps(slx, sl2));
    __m512 best = _mm512_mul_ps(scale, slx);
    for (int s = -9; s <= 9; s++) {
        if (s == 0) continue;
        inv = _mm512_div_ps(_mm512_set1_ps(-(32.0f + 0.1f * (float)s)), xmax);
        __m512 tx = zero, t2 = zero;
        for (int i = 0; i < 16; i++) {
            Ltv[i] = slmx_kq_clamp16(slmx_kq_round16(_mm512_mul_ps(inv, xv[i])), -32, 31);
            __m512 fl = _mm512_cvtepi32_ps(Ltv[i]);
            tx = _mm512_add_ps(tx, _mm512_mul_ps(_mm512_mul_ps(wv[i], xv[i]), fl));
            t2 = _mm512_add_ps(t2, _mm512_mul_ps(_mm512_mul_ps(wv[i], fl), fl));
        }
        __mmask16 ok = (__mmask16)(~zl & _mm512_cmp_ps_mask(t2, zero, _CMP_GT_OQ)
                                   & _mm512_cmp_ps_mask(_mm512_mul_ps(tx, tx), _mm512_mul_ps(best, t2), _CMP_GT_OQ));
        if (!ok) continue;
        for (int i = 0; i < 16; i++) Lv[i] = _mm512_mask_blend_epi32(ok, Lv[i], Ltv[i]);
        __m512 ns = _mm512_div_ps(tx, t2);
        scale = _mm512_mask_blend_ps(ok, scale, ns);
        best = _mm512_mask_blend_ps(ok, best, _mm512_mul_ps(ns, tx));
    }
    _mm512_storeu_ps(sc, _mm512_mask_blend_ps(zl, scale, zero));
    for (int i = 0; i < 16; i++) {
        int32_t t[16];
        _mm512_storeu_si512((void *)t, _mm512_maskz_add_epi32((__mmask16)~zl, Lv[i], _mm512_set1_epi32(32)));
        for (int j = 0; j < 16; j++) L[16 * j + i] = (int8_t)t[j];
    }
    slmx_kq_finish_q6(x, sc, L, b);
}

/* ------------------------------------------------------------------ AVX2 Q8_0 / Q4_0 / Q5_0
 * The portable encoders of quant_simd.h (gguf-py's arithmetic) on 8 elements at a time: the
 * block maximum is exact in any order, roundf / truncf are done exactly (truncate, then the
 * exact fractional part decides), clamps keep the portable NaN behaviour (NaN -> 0). */

/* roundf (half away from zero) of v, exactly. */
SLMX_KQ_TARGET static inline __m256 slmx_kq_roundf8(__m256 v) {
    __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 up = _mm256_cmp_ps(_mm256_and_ps(_mm256_sub_ps(v, t), absmask), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_andnot_ps(absmask, v));   /* copysign(1, v) */
    return _mm256_add_ps(t, _mm256_and_ps(up, one));
}

/* max |x| over 32 elements (NaN never wins, as in the portable loops). */
SLMX_KQ_TARGET static inline float slmx_kq_amax32(const __m256 *a) {
    __m256 m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}

SLMX_KQ_TARGET static void slmx_quant_q8_0_avx2(const float *x, uint8_t *b) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 v[4], a[4];
    for (int k = 0; k < 4; k++) { v[k] = _mm256_loadu_ps(x + 8 * k); a[k] = _mm256_and_ps(v[k], absmask); }
    float amax = slmx_kq_amax32(a);
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t dh = slmx_f32_to_f16(d);
    memcpy(b, &dh, 2);
    __m256 idv = _mm256_set1_ps(id);
    for (int k = 0; k < 4; k++) {
        __m256i q = _mm256_cvttps_epi32(slmx_kq_roundf8(_mm256_mul_ps(v[k], idv)));
        int32_t t[8];
        _mm256_storeu_si256((__m256i *)t, q);
        for (int j = 0; j < 8; j++) b[2 + 8 * k + j] = (uint8_t)(int8_t)t[j];
    }
}

/* Q4_0 (nmax 8, 4 bits) or Q5_0 (nmax 16, 5 bits). */
SLMX_KQ_TARGET static void slmx_quant_b32_avx2(int q5, const float *x, uint8_t *b) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 v[4], a[4];
    for (int k = 0; k < 4; k++) { v[k] = _mm256_loadu_ps(x + 8 * k); a[k] = _mm256_and_ps(v[k], absmask); }
    float amax = slmx_kq_amax32(a), max = x[0];
    if (amax > fabsf(x[0])) {                   /* the first element of that magnitude, signed */
        __m256 am = _mm256_set1_ps(amax);
        for (int k = 0; k < 4; k++) {
            int m = _mm256_movemask_ps(_mm256_cmp_ps(a[k], am, _CMP_EQ_OQ));
            if (m) { max = x[8 * k + __builtin_ctz((unsigned)m)]; break; }
        }
    }
    float d = max / (q5 ? -16.0f : -8.0f), id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t dh = slmx_f32_to_f16(d);
    memcpy(b, &dh, 2);
    __m256 idv = _mm256_set1_ps(id), off = _mm256_set1_ps(q5 ? 16.5f : 8.5f);
    __m256 hi = _mm256_set1_ps(q5 ? 31.0f : 15.0f), zero = _mm256_setzero_ps();
    int32_t q[32];
    uint32_t qh = 0;
    for (int k = 0; k < 4; k++) {
        __m256 t = _mm256_round_ps(_mm256_add_ps(_mm256_mul_ps(v[k], idv), off), _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        __m256i qi = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(t, zero), hi));
        _mm256_storeu_si256((__m256i *)(q + 8 * k), qi);
        if (q5) qh |= (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(qi, 27))) << (8 * k);
    }
    uint8_t *qs = b + (q5 ? 6 : 2);
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)((q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4));
    if (q5) memcpy(b + 2, &qh, 4);
}
#endif

/* Q8_0 / Q4_0 / Q5_0 blocks by the body for the dispatch level (0 when there is no SIMD body). */
static int slmx_quant_b32_simd(int t, const float *x, uint8_t *dst, int64_t nblocks) {
#if SLMX_X86
    if (slmx_simd_level() >= SLMX_SIMD_AVX2) {
        int ts = slmx_type_size(t);
        for (int64_t i = 0; i < nblocks; i++) {
            if (t == SLMX_T_Q8_0) slmx_quant_q8_0_avx2(x + 32 * i, dst + (size_t)ts * i);
            else slmx_quant_b32_avx2(t == SLMX_T_Q5_0, x + 32 * i, dst + (size_t)ts * i);
        }
        return 1;
    }
#endif
    (void)t; (void)x; (void)dst; (void)nblocks;
    return 0;
}


/* nblocks K-quant blocks of type t from x into dst, by the body for the dispatch level. */
static void slmx_quant_k_blocks(int t, const float *x, uint8_t *dst, int64_t nblocks) {
    int ts = slmx_type_size(t);
#if SLMX_X86
    int lvl = slmx_simd_level();
    if (lvl >= SLMX_SIMD_AVX512) {
        int64_t i = 0;
        if (t == SLMX_T_Q6_K) {
            for (; i < nblocks; i++) slmx_quant_q6_k_avx512(x + 256 * i, dst + (size_t)ts * i);
            return;
        }
        for (; i + 2 <= nblocks; i += 2) slmx_quant_k4x2_avx512(t == SLMX_T_Q5_K, x + 256 * i, dst + (size_t)ts * i);
        if (i < nblocks) slmx_quant_k4_avx2(t == SLMX_T_Q5_K, x + 256 * i, dst + (size_t)ts * i);
        return;
    }
    if (lvl >= SLMX_SIMD_AVX2) {
        for (int64_t i = 0; i < nblocks; i++) {
            if (t == SLMX_T_Q6_K) slmx_quant_q6_k_avx2(x + 256 * i, dst + (size_t)ts * i);
            else slmx_quant_k4_avx2(t == SLMX_T_Q5_K, x + 256 * i, dst + (size_t)ts * i);
        }
        return;
    }
#endif
    for (int64_t i = 0; i < nblocks; i++) {
        if (t == SLMX_T_Q6_K) slmx_quant_q6_k_scalar(x + 256 * i, dst + (size_t)ts * i);
        else slmx_quant_k4_scalar(t == SLMX_T_Q5_K, x + 256 * i, dst + (size_t)ts * i);
    }
}

#pragma GCC pop_options

#endif
