/* slmx Q4_1 / Q5_1 ("_1" types: a scale and a minimum per block of 32), included by quant_simd.h.
 *
 *   Q4_1  32 elems, 20 B : f16 d | f16 m | qs[16] (elem j low nibble of qs[j], elem 16+j high)
 *                                                                   x = d * q + m
 *   Q5_1  32 elems, 24 B : f16 d | f16 m | uint32 qh (bit j = 5th bit of elem j) | qs[16]
 *                                                                   x = d * q + m
 *
 * dequantize / quantize: operation for operation gguf-py's (and ggml's reference) float32
 * arithmetic, no FMA contraction, so bit-identical.
 *
 * linear: each activation row is quantized to the b32 chunks of Q8_0-style blocks with weight
 * offset 0 (so the existing unsigned-weight micro-kernels compute d_w*d_x*sum(q_w*q_x)), followed
 * by one float per block s = d_x * sum(q_x) (llama.cpp's Q8_1 "s"); the min term sum_b m_b*s_b is
 * added after the integer kernels. Weights are unpacked into the same pb panels as Q4_0/Q5_0
 * (unsigned q, offset 0). No AMX path (slmx_use_amx is 0 for these types).
 */
#ifndef SLMX_QUANT_Q1_H
#define SLMX_QUANT_Q1_H

static inline int slmx_is_q1(int t) { return t == SLMX_T_Q4_1 || t == SLMX_T_Q5_1; }
static inline int slmx_q1_ts(int t) { return t == SLMX_T_Q4_1 ? 20 : 24; }

/* The 5-bit (Q5_1) or 4-bit (Q4_1) values of one block: q[32]. */
static inline void slmx_q1_values(int t, const uint8_t *b, uint8_t *q) {
    const uint8_t *qs = b + (t == SLMX_T_Q4_1 ? 4 : 8);
    uint32_t qh = t == SLMX_T_Q5_1 ? slmx_load_u32(b + 4) : 0u;
    for (int j = 0; j < 16; j++) {
        q[j] = (uint8_t)((qs[j] & 0x0f) | (((qh >> j) & 1u) << 4));
        q[j + 16] = (uint8_t)((qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
    }
}

#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

static void slmx_dequant_q1_blocks(int t, const uint8_t *src, float *y, int64_t nblocks) {
    const int ts = slmx_q1_ts(t);
    for (int64_t i = 0; i < nblocks; i++) {
        const uint8_t *b = src + (size_t)ts * i;
        float d = slmx_load_f16(b), m = slmx_load_f16(b + 2);
        uint8_t q[32];
        slmx_q1_values(t, b, q);
        float *yb = y + 32 * i;
        for (int j = 0; j < 32; j++) yb[j] = (d * (float)q[j]) + m;
    }
}

/* gguf-py Q4_1/Q5_1.quantize_blocks: d = (max - min) / nmax, q = trunc((x - min) / d + 0.5)
 * clipped to [0, nmax], d and min stored as f16. */
static void slmx_quant_q1_block(int t, const float *x, uint8_t *b) {
    const int nmax = t == SLMX_T_Q4_1 ? 15 : 31;
    float mx = x[0], mn = x[0];
    for (int j = 1; j < 32; j++) { mx = x[j] > mx ? x[j] : mx; mn = x[j] < mn ? x[j] : mn; }
    float d = (mx - mn) / (float)nmax, id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t dh = slmx_f32_to_f16(d), mh = slmx_f32_to_f16(mn);
    memcpy(b, &dh, 2);
    memcpy(b + 2, &mh, 2);
    uint8_t q[32];
    for (int j = 0; j < 32; j++) {
        float v = truncf((x[j] - mn) * id + 0.5f);
        int qi = v > (float)nmax ? nmax : (v > 0.0f ? (int)v : 0);
        q[j] = (uint8_t)qi;
    }
    uint8_t *qs = b + (t == SLMX_T_Q4_1 ? 4 : 8);
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4));
        qh |= (uint32_t)(q[j] >> 4) << j;
        qh |= (uint32_t)(q[j + 16] >> 4) << (j + 16);
    }
    if (t == SLMX_T_Q5_1) memcpy(b + 4, &qh, 4);
}

static void slmx_quant_q1_blocks(int t, const float *x, uint8_t *dst, int64_t nblocks) {
    const int ts = slmx_q1_ts(t);
    for (int64_t i = 0; i < nblocks; i++) slmx_quant_q1_block(t, x + 32 * i, dst + (size_t)ts * i);
}

#pragma GCC pop_options

/* ------------------------------------------------------------------ activations */

static inline size_t slmx_q1_chunk_bytes(int K) { return (size_t)((K / 32 + 1) / 2) * sizeof(slmx_xb_chunk); }

/* b32 chunks, then (K/32 floats rounded up to 64 bytes) s. */
static inline size_t slmx_q1_xq_row_bytes(int K) {
    return slmx_q1_chunk_bytes(K) + ((size_t)(K / 32) * 4 + 63) / 64 * 64;
}

static void slmx_q1_quantize_x(int level, const float *x, int K, uint8_t *dst) {
#if SLMX_X86
    if (level >= SLMX_SIMD_AVX512) slmx_xq_b32_avx512(x, K, 0, (slmx_xb_chunk *)dst);
    else if (level >= SLMX_SIMD_AVX2) slmx_xq_b32_avx2(x, K, 0, (slmx_xb_chunk *)dst);
    else
#endif
    slmx_xq_b32_scalar(x, K, 0, (slmx_xb_chunk *)dst);
    (void)level;
    if (slmx_row_has_nan(x, K)) slmx_xq_b32_nan(K, (slmx_xb_chunk *)dst);
    const slmx_xb_chunk *ch = (const slmx_xb_chunk *)dst;
    float *s = (float *)(dst + slmx_q1_chunk_bytes(K));
    memset(s, 0, slmx_q1_xq_row_bytes(K) - slmx_q1_chunk_bytes(K));     /* padding read as 0 */
    for (int b = 0; b < K / 32; b++) {
        const slmx_xb_chunk *c = ch + (b >> 1);
        const int8_t *q = c->q + 32 * (b & 1);
        int32_t sum = 0;
        for (int j = 0; j < 32; j++) sum += q[j];
        s[b] = c->d[8 * (b & 1)] * (float)sum;
    }
}

/* ------------------------------------------------------------------ linear */

static float slmx_dot_q1_scalar(int t, const uint8_t *w, const uint8_t *xr, int K) {
    const int ts = slmx_q1_ts(t), nb = K / 32;
    const slmx_xb_chunk *ch = (const slmx_xb_chunk *)xr;
    const float *s = (const float *)(xr + slmx_q1_chunk_bytes(K));
    float acc = 0.0f;
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = w + (size_t)ts * b;
        const int8_t *q = ch[b >> 1].q + 32 * (b & 1);
        uint8_t v[32];
        slmx_q1_values(t, blk, v);
        int32_t sum = 0;
        for (int j = 0; j < 32; j++) sum += (int32_t)v[j] * q[j];
        acc += (slmx_load_f16(blk) * ch[b >> 1].d[8 * (b & 1)]) * (float)sum + slmx_load_f16(blk + 2) * s[b];
    }
    return acc;
}

#if SLMX_X86
/* Blocks blk0 .. blk0+nblk of NR rows into pb chunks (unsigned q, offset 0). */
static SLMX_TARGET_AVX2 void slmx_unpack_q1_avx2(int t, const uint8_t *const *rows, int blk0, int nblk,
                                                 slmx_pb_chunk *p) {
    const int ts = slmx_q1_ts(t), qo = t == SLMX_T_Q4_1 ? 4 : 8;
    const int nc = (nblk + 1) / 2;
    const __m256i nib = _mm256_set1_epi8(0x0f);
    for (int r = 0; r < SLMX_NR; r++) {
        for (int c = 0; c < nc; c++) {
            for (int h = 0; h < 2; h++) {
                slmx_pb_chunk *pc = p + (size_t)c * SLMX_NR + r;
                if (2 * c + h >= nblk) {
                    _mm256_store_si256((__m256i *)(pc->w + 32 * h), _mm256_setzero_si256());
                    _mm256_store_ps(pc->d + 8 * h, _mm256_setzero_ps());
                    continue;
                }
                const uint8_t *b = rows[r] + (size_t)(blk0 + 2 * c + h) * ts;
                __m128i q = _mm_loadu_si128((const __m128i *)(b + qo));
                __m256i z = _mm256_inserti128_si256(_mm256_castsi128_si256(q), _mm_srli_epi16(q, 4), 1);
                z = _mm256_and_si256(z, nib);
                if (t == SLMX_T_Q5_1)
                    z = _mm256_or_si256(z, _mm256_and_si256(slmx_bits_to_bytes_avx2(slmx_load_u32(b + 4)),
                                                            _mm256_set1_epi8(16)));
                _mm256_store_si256((__m256i *)(pc->w + 32 * h), z);
                _mm256_store_ps(pc->d + 8 * h, _mm256_set1_ps(_cvtsh_ss(slmx_load_u16(b))));
            }
        }
    }
}

/* M = 1 on AVX-512 VNNI: NR rows decoded into registers (the panel bytes and scales of
 * slmx_unpack_q1_avx2, so the numbers are those of the MR = 1 panel kernel), then the min term. */
static SLMX_TARGET_AVX512VNNI void slmx_gemv_q1_vnni(int t, const uint8_t *const *rows, int nr, const uint8_t *x,
                                                    int K, float *out, size_t pf) {
    const int ts = slmx_q1_ts(t), qo = t == SLMX_T_Q4_1 ? 4 : 8;
    const __m512i dsel = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const int nb = K / 32, kcb = SLMX_KC / 32;
    for (int kb0 = 0; kb0 < nb; kb0 += kcb) {
        const int nblk = nb - kb0 < kcb ? nb - kb0 : kcb, nc = (nblk + 1) / 2;
        const slmx_xb_chunk *xc = (const slmx_xb_chunk *)x + kb0 / 2;
        __m512 f[SLMX_NR];
        for (int r = 0; r < SLMX_NR; r++) f[r] = _mm512_setzero_ps();
        for (int c = 0; c < nc; c++) {
            const int two = 2 * c + 1 < nblk;
            __m512i xv = _mm512_load_si512((const __m512i *)xc[c].q);
            __m512 xd = _mm512_load_ps(xc[c].d);
            __m512i xcr = _mm512_load_si512((const __m512i *)xc[c].c);
            for (int r = 0; r < SLMX_NR; r++) {
                const uint8_t *bA = rows[r] + (size_t)(kb0 + 2 * c) * ts, *bB = bA + ts;
                _mm_prefetch((const char *)bA + pf, _MM_HINT_T0);
                uint32_t dh = (uint32_t)slmx_load_u16(bA) | (two ? (uint32_t)slmx_load_u16(bB) << 16 : 0u);
                __m512 dv = _mm512_permutexvar_ps(dsel, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128((int)dh))));
                __m512i za = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(bA + qo)));
                __m512i zb = two ? _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(bB + qo))) : _mm512_setzero_si512();
                __m512i z = _mm512_mask_blend_epi64((__mmask8)0xf0, za, zb);
                z = _mm512_mask_srli_epi16(z, (__mmask32)0xff00ff00u, z, 4);
                z = _mm512_and_si512(z, _mm512_set1_epi8(0x0f));
                if (t == SLMX_T_Q5_1) {
                    uint64_t hm = slmx_load_u32(bA + 4);
                    if (two) hm |= (uint64_t)slmx_load_u32(bB + 4) << 32;
                    z = _mm512_mask_add_epi8(z, (__mmask64)hm, z, _mm512_set1_epi8(16));
                }
                f[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(xcr, z, xv)), _mm512_mul_ps(dv, xd), f[r]);
            }
        }
        slmx_store4_vnni(out, slmx_hsum4_vnni(f[0], f[1], f[2], f[3]), nr, kb0 > 0);
    }
}

/* slmx_unpack_q1_avx2 in 64-byte registers (the same panel bytes and scales). */
static SLMX_TARGET_AVX512 void slmx_unpack_q1_avx512(int t, const uint8_t *const *rows, int blk0, int nblk,
                                                     slmx_pb_chunk *p, size_t pf) {
    const int ts = slmx_q1_ts(t), qo = t == SLMX_T_Q4_1 ? 4 : 8;
    const __m512i dsel = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const int nc = (nblk + 1) / 2;
    for (int r = 0; r < SLMX_NR; r++) {
        for (int c = 0; c < nc; c++) {
            const int two = 2 * c + 1 < nblk;
            const uint8_t *bA = rows[r] + (size_t)(blk0 + 2 * c) * ts, *bB = bA + ts;
            _mm_prefetch((const char *)bA + pf, _MM_HINT_T0);
            uint32_t dh = (uint32_t)slmx_load_u16(bA) | (two ? (uint32_t)slmx_load_u16(bB) << 16 : 0u);
            __m512 dv = _mm512_permutexvar_ps(dsel, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128((int)dh))));
            __m512i za = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(bA + qo)));
            __m512i zb = two ? _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(bB + qo))) : _mm512_setzero_si512();
            __m512i z = _mm512_mask_blend_epi64((__mmask8)0xf0, za, zb);
            z = _mm512_mask_srli_epi16(z, (__mmask32)0xff00ff00u, z, 4);
            z = _mm512_and_si512(z, _mm512_set1_epi8(0x0f));
            if (t == SLMX_T_Q5_1) {
                uint64_t hm = slmx_load_u32(bA + 4);
                if (two) hm |= (uint64_t)slmx_load_u32(bB + 4) << 32;
                z = _mm512_mask_add_epi8(z, (__mmask64)hm, z, _mm512_set1_epi8(16));
            }
            slmx_pb_chunk *pc = p + (size_t)c * SLMX_NR + r;
            _mm512_store_si512((__m512i *)pc->w, z);
            _mm512_store_ps(pc->d, dv);
        }
    }
}

/* out[m, n] += sum_b m_w[n, b] * s[m, b] for n in [n0, n1): 16 weight rows in the lanes of two
 * vectors, one broadcast activation sum a block. */
static SLMX_TARGET_AVX2 void slmx_q1_min_range_avx2(int t, const uint8_t *w, size_t rb, int64_t n0, int64_t n1,
                                                    const uint8_t *x, size_t ldx, int M, int K, float *out,
                                                    size_t ldo) {
    const int ts = slmx_q1_ts(t), nb = K / 32;
    const size_t so = slmx_q1_chunk_bytes(K);
    float mwt[128][16] __attribute__((aligned(32)));
    for (int64_t nn = n0; nn < n1; nn += 16) {
        const int cols = (int)(n1 - nn < 16 ? n1 - nn : 16);
        for (int b0 = 0; b0 < nb; b0 += 128) {
            const int cnt = nb - b0 < 128 ? nb - b0 : 128;
            for (int j = 0; j < 16; j++) {
                const uint8_t *mp = w + (size_t)(nn + j) * rb + (size_t)ts * b0 + 2;
                if (j < cols) for (int b = 0; b < cnt; b++) mwt[b][j] = slmx_load_f16(mp + (size_t)ts * b);
                else for (int b = 0; b < cnt; b++) mwt[b][j] = 0.0f;
            }
            for (int m = 0; m < M; m++) {
                const float *s = (const float *)(x + (size_t)m * ldx + so) + b0;
                __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
                for (int b = 0; b < cnt; b++) {
                    __m256 sv = _mm256_set1_ps(s[b]);
                    a0 = _mm256_fmadd_ps(_mm256_load_ps(mwt[b]), sv, a0);
                    a1 = _mm256_fmadd_ps(_mm256_load_ps(mwt[b] + 8), sv, a1);
                }
                float *om = out + (size_t)m * ldo + nn;
                if (cols == 16) {
                    _mm256_storeu_ps(om, _mm256_add_ps(_mm256_loadu_ps(om), a0));
                    _mm256_storeu_ps(om + 8, _mm256_add_ps(_mm256_loadu_ps(om + 8), a1));
                } else {
                    float tmp[16];
                    _mm256_storeu_ps(tmp, a0);
                    _mm256_storeu_ps(tmp + 8, a1);
                    for (int j = 0; j < cols; j++) om[j] += tmp[j];
                }
            }
        }
    }
}

typedef void (*slmx_q1_kern_fn)(const slmx_pb_chunk *, int, const uint8_t *, size_t, float *, size_t, int, int);

static void slmx_linear_range_q1_simd(int level, int t, const uint8_t *w, size_t rb, int64_t n0, int64_t n1,
                                      const uint8_t *x, size_t ldx, int M, int K, float *out, size_t ldo,
                                      void *scratch) {
    slmx_q1_kern_fn kb[5] = {0, 0, 0, 0, 0};
    int mstep = 4;
    if (level >= SLMX_SIMD_VNNI) {
        kb[1] = slmx_kern_b32_u1_vnni; kb[2] = slmx_kern_b32_u2_vnni; kb[3] = slmx_kern_b32_u3_vnni; kb[4] = slmx_kern_b32_u4_vnni;
    } else if (level >= SLMX_SIMD_AVX512) {
        kb[1] = slmx_kern_b32_u1_avx512; kb[2] = slmx_kern_b32_u2_avx512; kb[3] = slmx_kern_b32_u3_avx512; kb[4] = slmx_kern_b32_u4_avx512;
    } else {
        kb[1] = slmx_kern_b32_u1_avx2; kb[2] = slmx_kern_b32_u2_avx2;
        mstep = 2;
    }
    const int nb = K / 32, kcb = SLMX_KC / 32;
    for (int64_t n = n0; n < n1; n += SLMX_NR) {
        const int nr = (int)(n1 - n < SLMX_NR ? n1 - n : SLMX_NR);
        const uint8_t *rows[SLMX_NR];
        for (int r = 0; r < SLMX_NR; r++) rows[r] = w + (size_t)(n + (r < nr ? r : nr - 1)) * rb;
        float *o = out + n;
        if (M == 1 && level >= SLMX_SIMD_VNNI) {
            slmx_gemv_q1_vnni(t, rows, nr, x, K, o, SLMX_PF_ROWS * rb);
            continue;
        }
        for (int kb0 = 0; kb0 < nb; kb0 += kcb) {
            int nblk = nb - kb0 < kcb ? nb - kb0 : kcb;
            slmx_pb_chunk *p = (slmx_pb_chunk *)scratch;
            if (level >= SLMX_SIMD_AVX512) slmx_unpack_q1_avx512(t, rows, kb0, nblk, p, SLMX_PF_ROWS * rb);
            else slmx_unpack_q1_avx2(t, rows, kb0, nblk, p);
            const uint8_t *xk = x + (size_t)(kb0 / 2) * sizeof(slmx_xb_chunk);
            for (int m = 0; m < M; m += mstep) {
                int mr = M - m < mstep ? M - m : mstep;
                kb[mr](p, (nblk + 1) / 2, xk + (size_t)m * ldx, ldx, o + (size_t)m * ldo, ldo, nr, kb0 > 0);
            }
        }
    }
    slmx_q1_min_range_avx2(t, w, rb, n0, n1, x, ldx, M, K, out, ldo);
}
#endif

static void slmx_linear_range_q1(int level, int t, const uint8_t *w, size_t rb, int64_t n0, int64_t n1,
                                 const uint8_t *x, size_t ldx, int M, int K, float *out, size_t ldo, void *scratch) {
#if SLMX_X86
    if (level >= SLMX_SIMD_AVX2) { slmx_linear_range_q1_simd(level, t, w, rb, n0, n1, x, ldx, M, K, out, ldo, scratch); return; }
#endif
    (void)level; (void)scratch;
    for (int64_t n = n0; n < n1; n++)
        for (int m = 0; m < M; m++)
            out[(size_t)m * ldo + n] = slmx_dot_q1_scalar(t, w + (size_t)n * rb, x + (size_t)m * ldx, K);
}

#endif
