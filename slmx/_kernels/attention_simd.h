/* slmx attention tile kernels (FlashAttention-style, fp32), one body per ISA.
 *
 * A key tile holds up to BK = 64 keys. For a block of query rows:
 *   pack_kt   Kt[d*64 + j] = K[j, d]               (the tile transposed: keys along a vector)
 *   qk        S[r*64 + j]  = q_r . k_j             (broadcast q_r[d] x Kt[d, 0:64])
 *   softmax   S -> P = exp(s - m_new) with the row's valid key interval [lo_r, hi_r),
 *             running max m_r, running sum l_r, alpha_r = exp(m_old - m_new)
 *   pv        O_r = alpha_r O_r + sum_j P[r, j] V[j, :]
 * The D-dependent kernels (pack_kt, qk, pv) take their SIMD body when D is a multiple of the
 * vector width (16 floats AVX-512, 8 AVX2), the portable one otherwise.
 */
#ifndef SLMX_ATTENTION_SIMD_H
#define SLMX_ATTENTION_SIMD_H

#include "simd.h"
#include "vmath_simd.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SLMX_ATT_BK 64
#define SLMX_ATT_AI static inline __attribute__((always_inline))

/* Per-thread scratch that grows on demand and is kept (no allocation in steady state).
 * slot 0: a task's tiles; slot 1: the caller's split-K partial states; slot 2: the caller's
 * packed K/V tiles shared by all tasks. NULL on failure. */
static float *slmx_att_scratch(int slot, size_t nfloats) {
    static __thread float *buf[3] = {0, 0, 0};
    static __thread size_t cap[3] = {0, 0, 0};
    if (nfloats > cap[slot]) {
        free(buf[slot]);
        buf[slot] = (float *)aligned_alloc(64, ((nfloats * sizeof(float) + 63) / 64) * 64);
        cap[slot] = buf[slot] ? nfloats : 0;
    }
    return buf[slot];
}

/* ============================================================== scalar */

static void slmx_att_pack_kt_scalar(const float *K, long ks, int bk, long D, float *Kt) {
    for (long d = 0; d < D; d++) {
        float *row = Kt + d * SLMX_ATT_BK;
        for (int j = 0; j < bk; j++) row[j] = K[j * ks + d];
        for (int j = bk; j < SLMX_ATT_BK; j++) row[j] = 0.0f;
    }
}

static void slmx_att_qk_scalar(const float *const *q, int nr, const float *Kt, long D, float *S) {
    for (int r = 0; r < nr; r++) {
        float acc[SLMX_ATT_BK];
        for (int j = 0; j < SLMX_ATT_BK; j++) acc[j] = 0.0f;
        const float *qr = q[r];
        for (long d = 0; d < D; d++) {
            float a = qr[d];
            const float *kt = Kt + d * SLMX_ATT_BK;
            for (int j = 0; j < SLMX_ATT_BK; j++) acc[j] += a * kt[j];
        }
        memcpy(S + r * SLMX_ATT_BK, acc, sizeof acc);
    }
}

static void slmx_att_softmax_scalar(float *S, int nr, int bk, float scale, float softcap,
                                    const int *lo, const int *hi, float *m, float *l, float *alpha) {
    for (int r = 0; r < nr; r++) {
        float *s = S + r * SLMX_ATT_BK;
        int a = lo[r] > 0 ? lo[r] : 0, b = hi[r] < bk ? hi[r] : bk;
        float mt = -INFINITY;
        int nan = 0;
        for (int j = a; j < b; j++) {
            float x = s[j] * scale;
            if (softcap > 0.0f) x = softcap * tanhf(x / softcap);
            s[j] = x;
            mt = x > mt ? x : mt;
            nan |= x != x;
        }
        if (nan) mt = NAN;                  /* a NaN score makes the row NaN (never a masked row's zeros) */
        if (b <= a || mt == -INFINITY) {
            memset(s, 0, SLMX_ATT_BK * sizeof(float));
            alpha[r] = 1.0f;
            continue;
        }
        float mn = m[r] > mt ? m[r] : mt;
        alpha[r] = expf(m[r] - mn);
        float sum = 0.0f;
        for (int j = 0; j < a; j++) s[j] = 0.0f;
        for (int j = a; j < b; j++) { float e = expf(s[j] - mn); s[j] = e; sum += e; }
        for (int j = b; j < SLMX_ATT_BK; j++) s[j] = 0.0f;
        l[r] = l[r] * alpha[r] + sum;
        m[r] = mn;
    }
}

static void slmx_att_pv_scalar(float *const *O, int nr, const float *P, const float *alpha,
                               const float *V, long vs, int bk, long D) {
    for (int r = 0; r < nr; r++) {
        float *o = O[r];
        const float *p = P + r * SLMX_ATT_BK;
        float al = alpha[r];
        for (long d = 0; d < D; d++) o[d] *= al;
        for (int j = 0; j < bk; j++) {
            float pj = p[j];
            if (pj == 0.0f) continue;
            const float *vj = V + j * vs;
            for (long d = 0; d < D; d++) o[d] += pj * vj[d];
        }
    }
}

#if SLMX_X86
/* ============================================================== AVX-512 */

static SLMX_TARGET_AVX512 void slmx_att_pack_kt_avx512(const float *K, long ks, int bk, long D, float *Kt) {
    int j0 = 0;
    for (; j0 + 16 <= bk; j0 += 16) {
        for (long d0 = 0; d0 < D; d0 += 16) {
            __m512 r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(K + (j0 + i) * ks + d0);
            slmx_transpose16_avx512(r);
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) _mm512_storeu_ps(Kt + (d0 + i) * SLMX_ATT_BK + j0, r[i]);
        }
    }
    if (j0 < SLMX_ATT_BK) {
        for (long d = 0; d < D; d++) {
            float *row = Kt + d * SLMX_ATT_BK;
            for (int j = j0; j < bk; j++) row[j] = K[j * ks + d];
            for (int j = bk > j0 ? bk : j0; j < SLMX_ATT_BK; j++) row[j] = 0.0f;
        }
    }
}

/* S rows r < NR (+)= q_r[d0:d1] Kt[d0:d1, 0:64]  (acc: add to S instead of overwriting) */
SLMX_ATT_AI SLMX_TARGET_AVX512 void
slmx_att_qk512_body(const int NR, const float *const *q, const float *Kt, long d0, long d1, float *S, int acc_in) {
    __m512 acc[6][4];
    const float *qp[6];
#pragma GCC unroll 6
    for (int r = 0; r < NR; r++) {
        qp[r] = q[r];
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
            acc[r][c] = acc_in ? _mm512_loadu_ps(S + r * SLMX_ATT_BK + 16 * c) : _mm512_setzero_ps();
    }
    for (long d = d0; d < d1; d++) {
        const float *kt = Kt + d * SLMX_ATT_BK;
        __m512 k0 = _mm512_load_ps(kt), k1 = _mm512_load_ps(kt + 16);
        __m512 k2 = _mm512_load_ps(kt + 32), k3 = _mm512_load_ps(kt + 48);
#pragma GCC unroll 6
        for (int r = 0; r < NR; r++) {
            __m512 a = _mm512_set1_ps(qp[r][d]);
            acc[r][0] = _mm512_fmadd_ps(a, k0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(a, k1, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(a, k2, acc[r][2]);
            acc[r][3] = _mm512_fmadd_ps(a, k3, acc[r][3]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < NR; r++) {
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) _mm512_storeu_ps(S + r * SLMX_ATT_BK + 16 * c, acc[r][c]);
    }
}

#define SLMX_ATT_QK512(NR) \
    static SLMX_TARGET_AVX512 void slmx_att_qk512_##NR(const float *const *q, const float *Kt, long d0, long d1, \
                                                       float *S, int acc_in) \
    { slmx_att_qk512_body(NR, q, Kt, d0, d1, S, acc_in); }
SLMX_ATT_QK512(1) SLMX_ATT_QK512(2) SLMX_ATT_QK512(3) SLMX_ATT_QK512(4) SLMX_ATT_QK512(5) SLMX_ATT_QK512(6)

/* depth chunks of 128: a 128 x 64 slice of Kt (32 KiB) stays in L1 across the row blocks */
#define SLMX_ATT_QK_DCHUNK 128

static SLMX_TARGET_AVX512 void slmx_att_qk_avx512(const float *const *q, int nr, const float *Kt, long D, float *S) {
    for (long d0 = 0; d0 < D; d0 += SLMX_ATT_QK_DCHUNK) {
        long d1 = d0 + SLMX_ATT_QK_DCHUNK < D ? d0 + SLMX_ATT_QK_DCHUNK : D;
        int acc = d0 > 0, r = 0;
        for (; r + 6 <= nr; r += 6) slmx_att_qk512_6(q + r, Kt, d0, d1, S + r * SLMX_ATT_BK, acc);
        switch (nr - r) {
            case 5: slmx_att_qk512_5(q + r, Kt, d0, d1, S + r * SLMX_ATT_BK, acc); break;
            case 4: slmx_att_qk512_4(q + r, Kt, d0, d1, S + r * SLMX_ATT_BK, acc); break;
            case 3: slmx_att_qk512_3(q + r, Kt, d0, d1, S + r * SLMX_ATT_BK, acc); break;
            case 2: slmx_att_qk512_2(q + r, Kt, d0, d1, S + r * SLMX_ATT_BK, acc); break;
            case 1: slmx_att_qk512_1(q + r, Kt, d0, d1, S + r * SLMX_ATT_BK, acc); break;
            default: break;
        }
    }
}

/* 16 vectors -> one vector of their 16 horizontal sums, in order (15 adds, 30 shuffles) */
SLMX_ATT_AI SLMX_TARGET_AVX512 __m512 slmx_hsum16_avx512(const __m512 x[16]) {
    __m512 t[8], u[4], v[2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(x[2 * i], x[2 * i + 1]), _mm512_unpackhi_ps(x[2 * i], x[2 * i + 1]));
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
        u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++)
        v[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(v[0], v[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(v[0], v[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* Few rows (decode): S[r*64 + j] = q_r . k_j straight from the keys (rows of K, stride ks), as
 * dot products along D, 4 rows x 4 keys at a time; no transposed tile is built (each key is
 * used by a few rows, so packing it would cost as much as using it). D % 16 == 0, nr <= 4. */
static SLMX_TARGET_AVX512 void slmx_att_qk_dot4_avx512(const float *const *q, int nr, const float *K, long ks,
                                                       int bk, long D, float *S) {
    const float *qr[4];
    for (int r = 0; r < 4; r++) qr[r] = q[r < nr ? r : 0];
    for (int j0 = 0; j0 < bk; j0 += 4) {
        const float *kp[4];
        for (int c = 0; c < 4; c++) kp[c] = K + (j0 + c < bk ? j0 + c : j0) * ks;
        __m512 acc[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
        for (long d = 0; d < D; d += 16) {
            __m512 kv[4], qv[4];
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) kv[c] = _mm512_loadu_ps(kp[c] + d);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) qv[r] = _mm512_loadu_ps(qr[r] + d);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
#pragma GCC unroll 4
                for (int c = 0; c < 4; c++) acc[4 * r + c] = _mm512_fmadd_ps(qv[r], kv[c], acc[4 * r + c]);
            }
        }
        float sums[16];
        _mm512_storeu_ps(sums, slmx_hsum16_avx512(acc));
        int nk = bk - j0 < 4 ? bk - j0 : 4;
        for (int r = 0; r < nr; r++)
            for (int c = 0; c < nk; c++) S[r * SLMX_ATT_BK + j0 + c] = sums[4 * r + c];
    }
}

/* nr <= 8: groups of 4 rows (the key tile is re-read from L1 by the second group) */
static SLMX_TARGET_AVX512 void slmx_att_qk_dot_avx512(const float *const *q, int nr, const float *K, long ks,
                                                      int bk, long D, float *S) {
    for (int r = 0; r < nr; r += 4)
        slmx_att_qk_dot4_avx512(q + r, nr - r < 4 ? nr - r : 4, K, ks, bk, D, S + r * SLMX_ATT_BK);
}

static SLMX_TARGET_AVX512 void slmx_att_softmax_avx512(float *S, int nr, int bk, float scale, float softcap,
                                                       const int *lo, const int *hi, float *m, float *l, float *alpha) {
    const __m512 idx0 = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 vscale = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(-INFINITY);
    const __m512 vcap = _mm512_set1_ps(softcap), vicap = _mm512_set1_ps(softcap > 0.0f ? 1.0f / softcap : 0.0f);
    for (int r = 0; r < nr; r++) {
        float *s = S + r * SLMX_ATT_BK;
        int a = lo[r] > 0 ? lo[r] : 0, b = hi[r] < bk ? hi[r] : bk;
        if (b <= a) {
            memset(s, 0, SLMX_ATT_BK * sizeof(float));
            alpha[r] = 1.0f;
            continue;
        }
        __m512 va = _mm512_set1_ps((float)a), vb = _mm512_set1_ps((float)b);
        __m512 x[4];
        __mmask16 ok[4];
        __m512 mx = ninf;
        __mmask16 nan = 0;
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m512 idx = _mm512_add_ps(idx0, _mm512_set1_ps(16.0f * c));
            ok[c] = _mm512_cmp_ps_mask(idx, va, _CMP_GE_OQ) & _mm512_cmp_ps_mask(idx, vb, _CMP_LT_OQ);
            __m512 t = _mm512_mul_ps(_mm512_loadu_ps(s + 16 * c), vscale);
            if (softcap > 0.0f) t = _mm512_mul_ps(vcap, slmx_tanh_avx512(_mm512_mul_ps(t, vicap)));
            x[c] = _mm512_mask_blend_ps(ok[c], ninf, t);
            mx = _mm512_max_ps(mx, x[c]);
            nan |= _mm512_mask_cmp_ps_mask(ok[c], t, t, _CMP_UNORD_Q);
        }
        float mt = nan ? NAN : slmx_hmax_avx512(mx);   /* a NaN score makes the row NaN */
        if (mt == -INFINITY) {
            memset(s, 0, SLMX_ATT_BK * sizeof(float));
            alpha[r] = 1.0f;
            continue;
        }
        float mn = m[r] > mt ? m[r] : mt;
        alpha[r] = expf(m[r] - mn);
        __m512 vm = _mm512_set1_ps(mn), sum = _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m512 e = _mm512_maskz_mov_ps(ok[c], slmx_exp_avx512(_mm512_sub_ps(x[c], vm)));
            sum = _mm512_add_ps(sum, e);
            _mm512_storeu_ps(s + 16 * c, e);
        }
        l[r] = l[r] * alpha[r] + slmx_hsum_avx512(sum);
        m[r] = mn;
    }
}

/* O rows r < NR (<= 6), columns [c0, c0 + 16*NZ); V: bk rows of 16*NZ floats, stride vs */
SLMX_ATT_AI SLMX_TARGET_AVX512 void
slmx_att_pv512_body(const int NR, const int NZ, float *const *O, long c0, const float *P, const float *alpha,
                    const float *V, long vs, int bk) {
    __m512 acc[6][4];
    const float *pr[6];
#pragma GCC unroll 6
    for (int r = 0; r < NR; r++) {
        __m512 al = _mm512_set1_ps(alpha[r]);
        pr[r] = P + r * SLMX_ATT_BK;
#pragma GCC unroll 4
        for (int z = 0; z < NZ; z++) acc[r][z] = _mm512_mul_ps(al, _mm512_loadu_ps(O[r] + c0 + 16 * z));
    }
    const float *vj = V;
    for (int j = 0; j < bk; j++, vj += vs) {
        __m512 v[4];
#pragma GCC unroll 4
        for (int z = 0; z < NZ; z++) v[z] = _mm512_loadu_ps(vj + 16 * z);
#pragma GCC unroll 6
        for (int r = 0; r < NR; r++) {
            __m512 p = _mm512_set1_ps(pr[r][j]);
#pragma GCC unroll 4
            for (int z = 0; z < NZ; z++) acc[r][z] = _mm512_fmadd_ps(p, v[z], acc[r][z]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < NR; r++) {
#pragma GCC unroll 4
        for (int z = 0; z < NZ; z++) _mm512_storeu_ps(O[r] + c0 + 16 * z, acc[r][z]);
    }
}

#define SLMX_ATT_PV512(NR, NZ) \
    static SLMX_TARGET_AVX512 void slmx_att_pv512_##NR##_##NZ(float *const *O, long c0, const float *P, \
                                                              const float *alpha, const float *V, long vs, int bk) \
    { slmx_att_pv512_body(NR, NZ, O, c0, P, alpha, V, vs, bk); }
SLMX_ATT_PV512(1, 4) SLMX_ATT_PV512(2, 4) SLMX_ATT_PV512(3, 4) SLMX_ATT_PV512(4, 4) SLMX_ATT_PV512(5, 4) SLMX_ATT_PV512(6, 4)
SLMX_ATT_PV512(1, 1) SLMX_ATT_PV512(2, 1) SLMX_ATT_PV512(3, 1) SLMX_ATT_PV512(4, 1) SLMX_ATT_PV512(5, 1) SLMX_ATT_PV512(6, 1)

typedef void (*slmx_att_pv512_t)(float *const *O, long c0, const float *P, const float *alpha,
                                 const float *V, long vs, int bk);

/* The AVX-512 PV reads the V tile copied into column chunks (64 wide, then 16 wide for the
 * rest of D), each chunk bk x width contiguous at Vp + c0 * 64: with the rows of a KV cache
 * 1-4 KiB apart, a chunk read in place would collide in a few L1 sets. */
static SLMX_TARGET_AVX512 void slmx_att_pack_v_avx512(const float *V, long vs, int bk, long D, float *Vp) {
    for (int j = 0; j < bk; j++) {
        const float *vj = V + j * vs;
        long c0 = 0;
        for (; c0 + 64 <= D; c0 += 64) {
            float *d = Vp + c0 * SLMX_ATT_BK + j * 64;
#pragma GCC unroll 4
            for (int z = 0; z < 4; z++) _mm512_storeu_ps(d + 16 * z, _mm512_loadu_ps(vj + c0 + 16 * z));
        }
        for (; c0 < D; c0 += 16) _mm512_storeu_ps(Vp + c0 * SLMX_ATT_BK + j * 16, _mm512_loadu_ps(vj + c0));
    }
}

/* column chunk outer, row blocks inner: a chunk of the packed V tile (Vp) is reused from L1 by
 * every row; Vp == NULL reads V in place (one row block: no reuse to protect) */
static SLMX_TARGET_AVX512 void slmx_att_pv_avx512(float *const *O, int nr, const float *P, const float *alpha,
                                                  const float *V, long vs, const float *Vp, int bk, long D) {
    static const slmx_att_pv512_t k4[7] = {0, slmx_att_pv512_1_4, slmx_att_pv512_2_4, slmx_att_pv512_3_4,
                                           slmx_att_pv512_4_4, slmx_att_pv512_5_4, slmx_att_pv512_6_4};
    static const slmx_att_pv512_t k1[7] = {0, slmx_att_pv512_1_1, slmx_att_pv512_2_1, slmx_att_pv512_3_1,
                                           slmx_att_pv512_4_1, slmx_att_pv512_5_1, slmx_att_pv512_6_1};
    for (long c0 = 0; c0 < D;) {
        int wide = c0 + 64 <= D;
        const slmx_att_pv512_t *kt = wide ? k4 : k1;
        for (int r = 0; r < nr; r += 6) {
            int n = nr - r < 6 ? nr - r : 6;
            if (Vp) kt[n](O + r, c0, P + r * SLMX_ATT_BK, alpha + r, Vp + c0 * SLMX_ATT_BK, wide ? 64 : 16, bk);
            else kt[n](O + r, c0, P + r * SLMX_ATT_BK, alpha + r, V + c0, vs, bk);
        }
        c0 += wide ? 64 : 16;
    }
}

/* ============================================================== AVX2 */

static SLMX_TARGET_AVX2 void slmx_att_pack_kt_avx2(const float *K, long ks, int bk, long D, float *Kt) {
    /* 8 keys x 8 dims at a time through an 8x8 transpose */
    int j0 = 0;
    for (; j0 + 8 <= bk; j0 += 8) {
        for (long d0 = 0; d0 < D; d0 += 8) {
            __m256 r0 = _mm256_loadu_ps(K + (j0 + 0) * ks + d0), r1 = _mm256_loadu_ps(K + (j0 + 1) * ks + d0);
            __m256 r2 = _mm256_loadu_ps(K + (j0 + 2) * ks + d0), r3 = _mm256_loadu_ps(K + (j0 + 3) * ks + d0);
            __m256 r4 = _mm256_loadu_ps(K + (j0 + 4) * ks + d0), r5 = _mm256_loadu_ps(K + (j0 + 5) * ks + d0);
            __m256 r6 = _mm256_loadu_ps(K + (j0 + 6) * ks + d0), r7 = _mm256_loadu_ps(K + (j0 + 7) * ks + d0);
            __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
            __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
            __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
            __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
            __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
            __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
            __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
            __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
            __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
            __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
            __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
            __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
            float *o = Kt + d0 * SLMX_ATT_BK + j0;
            _mm256_storeu_ps(o + 0 * SLMX_ATT_BK, _mm256_permute2f128_ps(u0, u4, 0x20));
            _mm256_storeu_ps(o + 1 * SLMX_ATT_BK, _mm256_permute2f128_ps(u1, u5, 0x20));
            _mm256_storeu_ps(o + 2 * SLMX_ATT_BK, _mm256_permute2f128_ps(u2, u6, 0x20));
            _mm256_storeu_ps(o + 3 * SLMX_ATT_BK, _mm256_permute2f128_ps(u3, u7, 0x20));
            _mm256_storeu_ps(o + 4 * SLMX_ATT_BK, _mm256_permute2f128_ps(u0, u4, 0x31));
            _mm256_storeu_ps(o + 5 * SLMX_ATT_BK, _mm256_permute2f128_ps(u1, u5, 0x31));
            _mm256_storeu_ps(o + 6 * SLMX_ATT_BK, _mm256_permute2f128_ps(u2, u6, 0x31));
            _mm256_storeu_ps(o + 7 * SLMX_ATT_BK, _mm256_permute2f128_ps(u3, u7, 0x31));
        }
    }
    if (j0 < SLMX_ATT_BK) {
        for (long d = 0; d < D; d++) {
            float *row = Kt + d * SLMX_ATT_BK;
            for (int j = j0; j < bk; j++) row[j] = K[j * ks + d];
            for (int j = bk > j0 ? bk : j0; j < SLMX_ATT_BK; j++) row[j] = 0.0f;
        }
    }
}

/* rows r < NR (<= 2), keys [c0, c0 + 32) */
SLMX_ATT_AI SLMX_TARGET_AVX2 void
slmx_att_qk256_body(const int NR, const float *const *q, const float *Kt, long D, float *S, int c0) {
    __m256 acc[2][4];
#pragma GCC unroll 2
    for (int r = 0; r < NR; r++) {
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) acc[r][c] = _mm256_setzero_ps();
    }
    for (long d = 0; d < D; d++) {
        const float *kt = Kt + d * SLMX_ATT_BK + c0;
        __m256 k0 = _mm256_loadu_ps(kt), k1 = _mm256_loadu_ps(kt + 8);
        __m256 k2 = _mm256_loadu_ps(kt + 16), k3 = _mm256_loadu_ps(kt + 24);
#pragma GCC unroll 2
        for (int r = 0; r < NR; r++) {
            __m256 a = _mm256_broadcast_ss(q[r] + d);
            acc[r][0] = _mm256_fmadd_ps(a, k0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, k1, acc[r][1]);
            acc[r][2] = _mm256_fmadd_ps(a, k2, acc[r][2]);
            acc[r][3] = _mm256_fmadd_ps(a, k3, acc[r][3]);
        }
    }
#pragma GCC unroll 2
    for (int r = 0; r < NR; r++) {
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) _mm256_storeu_ps(S + r * SLMX_ATT_BK + c0 + 8 * c, acc[r][c]);
    }
}

static SLMX_TARGET_AVX2 void slmx_att_qk_avx2(const float *const *q, int nr, const float *Kt, long D, float *S) {
    int r = 0;
    for (; r + 2 <= nr; r += 2) {
        slmx_att_qk256_body(2, q + r, Kt, D, S + r * SLMX_ATT_BK, 0);
        slmx_att_qk256_body(2, q + r, Kt, D, S + r * SLMX_ATT_BK, 32);
    }
    if (r < nr) {
        slmx_att_qk256_body(1, q + r, Kt, D, S + r * SLMX_ATT_BK, 0);
        slmx_att_qk256_body(1, q + r, Kt, D, S + r * SLMX_ATT_BK, 32);
    }
}

static SLMX_TARGET_AVX2 void slmx_att_softmax_avx2(float *S, int nr, int bk, float scale, float softcap,
                                                   const int *lo, const int *hi, float *m, float *l, float *alpha) {
    const __m256 idx0 = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 vscale = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-INFINITY);
    const __m256 vcap = _mm256_set1_ps(softcap), vicap = _mm256_set1_ps(softcap > 0.0f ? 1.0f / softcap : 0.0f);
    for (int r = 0; r < nr; r++) {
        float *s = S + r * SLMX_ATT_BK;
        int a = lo[r] > 0 ? lo[r] : 0, b = hi[r] < bk ? hi[r] : bk;
        if (b <= a) {
            memset(s, 0, SLMX_ATT_BK * sizeof(float));
            alpha[r] = 1.0f;
            continue;
        }
        __m256 va = _mm256_set1_ps((float)a), vb = _mm256_set1_ps((float)b);
        __m256 x[8], ok[8];
        __m256 mx = ninf, nan = _mm256_setzero_ps();
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) {
            __m256 idx = _mm256_add_ps(idx0, _mm256_set1_ps(8.0f * c));
            ok[c] = _mm256_and_ps(_mm256_cmp_ps(idx, va, _CMP_GE_OQ), _mm256_cmp_ps(idx, vb, _CMP_LT_OQ));
            __m256 t = _mm256_mul_ps(_mm256_loadu_ps(s + 8 * c), vscale);
            if (softcap > 0.0f) t = _mm256_mul_ps(vcap, slmx_tanh_avx2(_mm256_mul_ps(t, vicap)));
            x[c] = _mm256_blendv_ps(ninf, t, ok[c]);
            mx = _mm256_max_ps(mx, x[c]);
            nan = _mm256_or_ps(nan, _mm256_and_ps(ok[c], _mm256_cmp_ps(t, t, _CMP_UNORD_Q)));
        }
        float mt = _mm256_movemask_ps(nan) ? NAN : slmx_hmax_avx2(mx);   /* a NaN score makes the row NaN */
        if (mt == -INFINITY) {
            memset(s, 0, SLMX_ATT_BK * sizeof(float));
            alpha[r] = 1.0f;
            continue;
        }
        float mn = m[r] > mt ? m[r] : mt;
        alpha[r] = expf(m[r] - mn);
        __m256 vm = _mm256_set1_ps(mn), sum = _mm256_setzero_ps();
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) {
            __m256 e = _mm256_and_ps(ok[c], slmx_exp_avx2(_mm256_sub_ps(x[c], vm)));
            sum = _mm256_add_ps(sum, e);
            _mm256_storeu_ps(s + 8 * c, e);
        }
        l[r] = l[r] * alpha[r] + slmx_hsum_avx2(sum);
        m[r] = mn;
    }
}

/* O rows r < NR (<= 3), columns [c0, c0 + 8*NZ) */
SLMX_ATT_AI SLMX_TARGET_AVX2 void
slmx_att_pv256_body(const int NR, const int NZ, float *const *O, long c0, const float *P, const float *alpha,
                    const float *V, long vs, int bk) {
    __m256 acc[3][4];
#pragma GCC unroll 3
    for (int r = 0; r < NR; r++) {
        __m256 al = _mm256_set1_ps(alpha[r]);
#pragma GCC unroll 4
        for (int z = 0; z < NZ; z++) acc[r][z] = _mm256_mul_ps(al, _mm256_loadu_ps(O[r] + c0 + 8 * z));
    }
    const float *vj = V + c0;   /* V read in place */
    for (int j = 0; j < bk; j++, vj += vs) {
        __m256 v[4];
#pragma GCC unroll 4
        for (int z = 0; z < NZ; z++) v[z] = _mm256_loadu_ps(vj + 8 * z);
#pragma GCC unroll 3
        for (int r = 0; r < NR; r++) {
            __m256 p = _mm256_broadcast_ss(P + r * SLMX_ATT_BK + j);
#pragma GCC unroll 4
            for (int z = 0; z < NZ; z++) acc[r][z] = _mm256_fmadd_ps(p, v[z], acc[r][z]);
        }
    }
#pragma GCC unroll 3
    for (int r = 0; r < NR; r++) {
#pragma GCC unroll 4
        for (int z = 0; z < NZ; z++) _mm256_storeu_ps(O[r] + c0 + 8 * z, acc[r][z]);
    }
}

#define SLMX_ATT_PV256(NR) \
    static SLMX_TARGET_AVX2 void slmx_att_pv256_##NR(float *const *O, const float *P, const float *alpha, \
                                                     const float *V, long vs, int bk, long D) { \
        long c0 = 0; \
        for (; c0 + 32 <= D; c0 += 32) slmx_att_pv256_body(NR, 4, O, c0, P, alpha, V, vs, bk); \
        for (; c0 < D; c0 += 8) slmx_att_pv256_body(NR, 1, O, c0, P, alpha, V, vs, bk); \
    }
SLMX_ATT_PV256(1) SLMX_ATT_PV256(2) SLMX_ATT_PV256(3)

static SLMX_TARGET_AVX2 void slmx_att_pv_avx2(float *const *O, int nr, const float *P, const float *alpha,
                                              const float *V, long vs, int bk, long D) {
    int r = 0;
    for (; r + 3 <= nr; r += 3) slmx_att_pv256_3(O + r, P + r * SLMX_ATT_BK, alpha + r, V, vs, bk, D);
    if (nr - r == 2) slmx_att_pv256_2(O + r, P + r * SLMX_ATT_BK, alpha + r, V, vs, bk, D);
    else if (nr - r == 1) slmx_att_pv256_1(O + r, P + r * SLMX_ATT_BK, alpha + r, V, vs, bk, D);
}
#endif /* SLMX_X86 */

/* ============================================================== dispatch */

/* the level the D-dependent kernels use for head size D */
static inline int slmx_att_level(int lvl, long D) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512 && D % 16 == 0) return SLMX_SIMD_AVX512;
    if (lvl >= SLMX_SIMD_AVX2 && D % 8 == 0) return SLMX_SIMD_AVX2;
#endif
    return SLMX_SIMD_SCALAR;
}

static inline void slmx_att_pack_kt(int dl, const float *K, long ks, int bk, long D, float *Kt) {
#if SLMX_X86
    if (dl >= SLMX_SIMD_AVX512) { slmx_att_pack_kt_avx512(K, ks, bk, D, Kt); return; }
    if (dl >= SLMX_SIMD_AVX2) { slmx_att_pack_kt_avx2(K, ks, bk, D, Kt); return; }
#endif
    slmx_att_pack_kt_scalar(K, ks, bk, D, Kt);
}

/* whether the few-row (decode) QK straight from K is available for this level and nr */
static inline int slmx_att_has_qk_dot(int dl, int nr) { return dl >= SLMX_SIMD_AVX512 && nr <= 8; }

static inline void slmx_att_qk_dot(int dl, const float *const *q, int nr, const float *K, long ks, int bk,
                                   long D, float *S) {
#if SLMX_X86
    if (dl >= SLMX_SIMD_AVX512) slmx_att_qk_dot_avx512(q, nr, K, ks, bk, D, S);
#endif
    (void)dl; (void)q; (void)nr; (void)K; (void)ks; (void)bk; (void)D; (void)S;
}

static inline void slmx_att_qk(int dl, const float *const *q, int nr, const float *Kt, long D, float *S) {
#if SLMX_X86
    if (dl >= SLMX_SIMD_AVX512) { slmx_att_qk_avx512(q, nr, Kt, D, S); return; }
    if (dl >= SLMX_SIMD_AVX2) { slmx_att_qk_avx2(q, nr, Kt, D, S); return; }
#endif
    slmx_att_qk_scalar(q, nr, Kt, D, S);
}

static inline void slmx_att_softmax(int lvl, float *S, int nr, int bk, float scale, float softcap,
                                    const int *lo, const int *hi, float *m, float *l, float *alpha) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512) { slmx_att_softmax_avx512(S, nr, bk, scale, softcap, lo, hi, m, l, alpha); return; }
    if (lvl >= SLMX_SIMD_AVX2) { slmx_att_softmax_avx2(S, nr, bk, scale, softcap, lo, hi, m, l, alpha); return; }
#endif
    slmx_att_softmax_scalar(S, nr, bk, scale, softcap, lo, hi, m, l, alpha);
}

/* whether slmx_att_pv reads a packed V tile (slmx_att_pack_v) rather than V in place */
static inline int slmx_att_packs_v(int dl) { return dl >= SLMX_SIMD_AVX512; }

/* Vp: 64 * D floats */
static inline void slmx_att_pack_v(int dl, const float *V, long vs, int bk, long D, float *Vp) {
#if SLMX_X86
    if (dl >= SLMX_SIMD_AVX512) slmx_att_pack_v_avx512(V, vs, bk, D, Vp);
#endif
    (void)dl; (void)V; (void)vs; (void)bk; (void)D; (void)Vp;
}

/* O_r = alpha_r O_r + P_r V: V (bk rows, stride vs) in place, or the packed Vp when
 * slmx_att_packs_v(dl) and Vp != NULL */
static inline void slmx_att_pv(int dl, float *const *O, int nr, const float *P, const float *alpha,
                               const float *V, long vs, const float *Vp, int bk, long D) {
#if SLMX_X86
    if (dl >= SLMX_SIMD_AVX512) { slmx_att_pv_avx512(O, nr, P, alpha, V, vs, Vp, bk, D); return; }
    if (dl >= SLMX_SIMD_AVX2) { slmx_att_pv_avx2(O, nr, P, alpha, V, vs, bk, D); return; }
#endif
    slmx_att_pv_scalar(O, nr, P, alpha, V, vs, bk, D);
}

#endif
