/* AVX2 + FMA + F16C bodies of the quant kernels (included by quant_simd.h).
 * Same activation / panel layouts as the AVX-512 bodies (a 64-element chunk is two ymm halves).
 * Register tile: MR (<= 2) activation rows x NR = 4 weight rows. Q8_0 weights stay signed
 * (maddubs(|w|, sign(x, w))): maddubs would saturate on q + 128.
 */
#define QA SLMX_TARGET_AVX2

SLMX_ALWAYS_INLINE QA float slmx_hmax8_avx2(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

SLMX_ALWAYS_INLINE QA int slmx_hsum8i_avx2(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* [sum(a), sum(b), sum(c), sum(d)] */
SLMX_ALWAYS_INLINE QA __m128 slmx_hsum4_avx2(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    __m256 s = _mm256_hadd_ps(ab, cd);
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

SLMX_ALWAYS_INLINE QA void slmx_store4_avx2(float *o, __m128 s, int nr, int accumulate) {
    if (nr == 4) {
        if (accumulate) s = _mm_add_ps(s, _mm_loadu_ps(o));
        _mm_storeu_ps(o, s);
    } else {
        float tmp[4];
        _mm_storeu_ps(tmp, s);
        for (int r = 0; r < nr; r++) o[r] = accumulate ? o[r] + tmp[r] : tmp[r];
    }
}

SLMX_ALWAYS_INLINE QA __m256i slmx_roundf_epi32_avx2(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 a = _mm256_andnot_ps(sign, v);
    __m256 f = _mm256_round_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m256 fr = _mm256_sub_ps(a, f);
    __m256 r = _mm256_add_ps(f, _mm256_round_ps(_mm256_add_ps(fr, fr), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
    r = _mm256_or_ps(r, _mm256_and_ps(sign, v));
    return _mm256_cvttps_epi32(r);
}

/* 4 x 8 int32 (each in [-128, 127]) -> 32 int8 in order */
SLMX_ALWAYS_INLINE QA __m256i slmx_pack32_avx2(__m256i q0, __m256i q1, __m256i q2, __m256i q3) {
    __m256i a = _mm256_packs_epi32(q0, q1), b = _mm256_packs_epi32(q2, q3);
    __m256i c = _mm256_packs_epi16(a, b);
    return _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* ------------------------------------------------------------------ activation quantizers */

static QA void slmx_xq_b32_avx2(const float *x, int K, int off, slmx_xb_chunk *dst) {
    int nb = K / 32, nc = (nb + 1) / 2;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int c = 0; c < nc; c++) {
        slmx_xb_chunk *ch = dst + c;
        memset(ch->c, 0, sizeof ch->c);
        for (int h = 0; h < 2; h++) {
            if (2 * c + h >= nb) {
                memset(ch->q + 32 * h, 0, 32);
                for (int l = 0; l < 8; l++) ch->d[8 * h + l] = 0.0f;
                continue;
            }
            const float *xb = x + 64 * c + 32 * h;
            __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
            __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
            __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                     _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
            float amax = slmx_hmax8_avx2(m);
            float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            __m256 iv = _mm256_set1_ps(id);
            __m256i q0 = slmx_roundf_epi32_avx2(_mm256_mul_ps(v0, iv)), q1 = slmx_roundf_epi32_avx2(_mm256_mul_ps(v1, iv));
            __m256i q2 = slmx_roundf_epi32_avx2(_mm256_mul_ps(v2, iv)), q3 = slmx_roundf_epi32_avx2(_mm256_mul_ps(v3, iv));
            _mm256_store_si256((__m256i *)(ch->q + 32 * h), slmx_pack32_avx2(q0, q1, q2, q3));
            int s = slmx_hsum8i_avx2(_mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3)));
            ch->c[8 * h] = -off * s;
            _mm256_store_ps(ch->d + 8 * h, _mm256_set1_ps(slmx_f16_to_f32(slmx_f32_to_f16(d))));
        }
    }
}

static QA void slmx_xq_k_avx2(const float *x, int K, slmx_xk_block *dst) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int b = 0; b < K / 256; b++) {
        const float *xb = x + 256 * b;
        slmx_xk_block *y = dst + b;
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < 32; j++) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + 8 * j)));
        float amax = slmx_hmax8_avx2(m);
        memset(y, 0, sizeof *y);
        if (amax == 0.0f) continue;
        float max = 0.0f;
        __m256 av = _mm256_set1_ps(amax);
        for (int j = 0; j < 32; j++) {
            int k = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(xb + 8 * j)), av, _CMP_EQ_OQ));
            if (k) { max = xb[8 * j + __builtin_ctz((unsigned)k)]; break; }
        }
        float iscale = -127.0f / max;
        __m256 iv = _mm256_set1_ps(iscale);
        const __m256i cap = _mm256_set1_epi32(127);
        for (int j = 0; j < 16; j++) {
            __m256i q0 = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(iv, _mm256_loadu_ps(xb + 16 * j))), cap);
            __m256i q1 = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(iv, _mm256_loadu_ps(xb + 16 * j + 8))), cap);
            y->bsums[j] = (int16_t)slmx_hsum8i_avx2(_mm256_add_epi32(q0, q1));
            __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), _MM_SHUFFLE(3, 1, 2, 0));
            __m128i b8 = _mm_packs_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
            _mm_store_si128((__m128i *)(y->q + 16 * j), b8);
        }
        y->d = 1.0f / iscale;
    }
}

/* ------------------------------------------------------------------ weight unpacking */

/* 32 bits -> 32 bytes of 0xff (bit set) / 0x00 */
SLMX_ALWAYS_INLINE QA __m256i slmx_bits_to_bytes_avx2(uint32_t bits) {
    const __m256i shuf = _mm256_setr_epi64x(0x0000000000000000LL, 0x0101010101010101LL, 0x0202020202020202LL,
                                            0x0303030303030303LL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
    v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfeLL));
    return _mm256_cmpeq_epi8(v, _mm256_set1_epi8(-1));
}

SLMX_ALWAYS_INLINE QA __m256i slmx_unpack_block32_avx2(const int t, const uint8_t *b) {
    const __m256i nib = _mm256_set1_epi8(0x0f);
    if (t == SLMX_T_Q8_0) return _mm256_loadu_si256((const __m256i *)(b + 2));
    __m128i q = _mm_loadu_si128((const __m128i *)(b + (t == SLMX_T_Q4_0 ? 2 : 6)));
    __m256i z = _mm256_inserti128_si256(_mm256_castsi128_si256(q), _mm_srli_epi16(q, 4), 1);
    z = _mm256_and_si256(z, nib);
    if (t == SLMX_T_Q5_0)
        z = _mm256_or_si256(z, _mm256_and_si256(slmx_bits_to_bytes_avx2(slmx_load_u32(b + 2)), _mm256_set1_epi8(16)));
    return z;
}

SLMX_ALWAYS_INLINE QA void slmx_unpack_b32_body_avx2(const int t, const uint8_t *const *rows, int blk0, int nblk,
                                                     slmx_pb_chunk *p) {
    const int ts = t == SLMX_T_Q8_0 ? 34 : (t == SLMX_T_Q4_0 ? 18 : 22);
    const int nc = (nblk + 1) / 2;
    for (int r = 0; r < SLMX_NR; r++) {
        for (int c = 0; c < nc; c++) {
            const int two = 2 * c + 1 < nblk;
            const uint8_t *bA = rows[r] + (size_t)(blk0 + 2 * c) * ts, *bB = bA + ts;
            slmx_pb_chunk *pc = p + (size_t)c * SLMX_NR + r;
            _mm256_store_si256((__m256i *)pc->w, slmx_unpack_block32_avx2(t, bA));
            _mm256_store_si256((__m256i *)(pc->w + 32), two ? slmx_unpack_block32_avx2(t, bB) : _mm256_setzero_si256());
            _mm256_store_ps(pc->d, _mm256_set1_ps(_cvtsh_ss(slmx_load_u16(bA))));
            _mm256_store_ps(pc->d + 8, _mm256_set1_ps(two ? _cvtsh_ss(slmx_load_u16(bB)) : 0.0f));
        }
    }
}

SLMX_ALWAYS_INLINE QA void slmx_unpack_k_body_avx2(const int t, const uint8_t *const *rows, int sb0, int nsb,
                                                   slmx_pk_block *p) {
    const int ts = t == SLMX_T_Q4_K ? 144 : (t == SLMX_T_Q5_K ? 176 : 210);
    const __m256i nib = _mm256_set1_epi8(0x0f), sixteen = _mm256_set1_epi8(16), hmask = _mm256_set1_epi8(0x30);
    for (int s = 0; s < nsb; s++) {
        for (int r = 0; r < SLMX_NR; r++) {
            const uint8_t *b = rows[r] + (size_t)(sb0 + s) * ts;
            slmx_pk_block *pk = p + (size_t)s * SLMX_NR + r;
            if (t == SLMX_T_Q6_K) {
                const int8_t *sc = (const int8_t *)(b + 192);
                float d = _cvtsh_ss(slmx_load_u16(b + 208));
                for (int h = 0; h < 2; h++) {
                    __m256i A = _mm256_loadu_si256((const __m256i *)(b + 64 * h));
                    __m256i B = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32));
                    __m256i Q = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
                    uint8_t *o = pk->w + 128 * h;
                    _mm256_store_si256((__m256i *)o, _mm256_or_si256(_mm256_and_si256(A, nib),
                                       _mm256_and_si256(_mm256_slli_epi16(Q, 4), hmask)));
                    _mm256_store_si256((__m256i *)(o + 32), _mm256_or_si256(_mm256_and_si256(B, nib),
                                       _mm256_and_si256(_mm256_slli_epi16(Q, 2), hmask)));
                    _mm256_store_si256((__m256i *)(o + 64), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(A, 4), nib),
                                       _mm256_and_si256(Q, hmask)));
                    _mm256_store_si256((__m256i *)(o + 96), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(B, 4), nib),
                                       _mm256_and_si256(_mm256_srli_epi16(Q, 2), hmask)));
                }
                for (int i = 0; i < 16; i++) {
                    _mm_store_si128((__m128i *)(&pk->sc[i >> 2][8 * (i & 3)]), _mm_set1_epi16((short)sc[i]));
                    pk->coef[i] = (int16_t)(-32 * sc[i]);
                }
                pk->d = d;
                pk->cs = d;
            } else {
                float d = _cvtsh_ss(slmx_load_u16(b)), dmin = _cvtsh_ss(slmx_load_u16(b + 2));
                const uint8_t *scales = b + 4;
                const uint8_t *qs = t == SLMX_T_Q5_K ? b + 48 : b + 16;
                __m256i qh = t == SLMX_T_Q5_K ? _mm256_loadu_si256((const __m256i *)(b + 16)) : _mm256_setzero_si256();
                uint64_t sc8, mn8;
                slmx_scale_min_k4_all(scales, &sc8, &mn8);
                for (int j = 0; j < 8; j++) {
                    int sc = (int)((sc8 >> (8 * j)) & 0xff), mn = (int)((mn8 >> (8 * j)) & 0xff);
                    __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * (j >> 1)));
                    if (j & 1) v = _mm256_srli_epi16(v, 4);
                    v = _mm256_and_si256(v, nib);
                    if (t == SLMX_T_Q5_K) {
                        __m256i bit = _mm256_set1_epi8((char)(1 << j));
                        v = _mm256_or_si256(v, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit), sixteen));
                    }
                    _mm256_store_si256((__m256i *)(pk->w + 32 * j), v);
                    _mm256_store_si256((__m256i *)(&pk->sc[j >> 1][16 * (j & 1)]), _mm256_set1_epi16((short)sc));
                    pk->coef[2 * j] = pk->coef[2 * j + 1] = (int16_t)mn;
                }
                pk->d = d;
                pk->cs = -dmin;
            }
        }
    }
}

/* ------------------------------------------------------------------ micro-kernels */

SLMX_ALWAYS_INLINE QA void slmx_kern_b32_body_avx2(const slmx_pb_chunk *p, int nc, const uint8_t *x, size_t ldx,
                                                   float *out, size_t ldo, int nr, int accumulate,
                                                   const int MR, const int SIGNED) {
    __m256 f[2][SLMX_NR];
    for (int i = 0; i < MR; i++)
        for (int r = 0; r < SLMX_NR; r++) f[i][r] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int c = 0; c < nc; c++) {
        const slmx_pb_chunk *pc = p + (size_t)c * SLMX_NR;
        for (int i = 0; i < MR; i++) {
            const slmx_xb_chunk *xc = (const slmx_xb_chunk *)(x + (size_t)i * ldx) + c;
            for (int h = 0; h < 2; h++) {
                __m256i xv = _mm256_load_si256((const __m256i *)(xc->q + 32 * h));
                __m256 xd = _mm256_load_ps(xc->d + 8 * h);
                __m256i xcr = _mm256_load_si256((const __m256i *)(xc->c + 8 * h));
                for (int r = 0; r < SLMX_NR; r++) {
                    __m256i wv = _mm256_load_si256((const __m256i *)(pc[r].w + 32 * h));
                    __m256i t;
                    if (SIGNED) t = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv)), ones);
                    else t = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones), xcr);
                    f[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_mul_ps(_mm256_load_ps(pc[r].d + 8 * h), xd), f[i][r]);
                }
            }
        }
    }
    for (int i = 0; i < MR; i++)
        slmx_store4_avx2(out + (size_t)i * ldo, slmx_hsum4_avx2(f[i][0], f[i][1], f[i][2], f[i][3]), nr, accumulate);
}

SLMX_ALWAYS_INLINE QA void slmx_kern_k_body_avx2(const slmx_pk_block *p, int nsb, const uint8_t *x, size_t ldx,
                                                 float *out, size_t ldo, int nr, int accumulate, const int MR) {
    __m256 f[2][SLMX_NR];
    for (int i = 0; i < MR; i++)
        for (int r = 0; r < SLMX_NR; r++) f[i][r] = _mm256_setzero_ps();
    for (int s = 0; s < nsb; s++) {
        const slmx_pk_block *pb = p + (size_t)s * SLMX_NR;
        for (int i = 0; i < MR; i++) {
            const slmx_xk_block *xb = (const slmx_xk_block *)(x + (size_t)i * ldx) + s;
            __m256i bs = _mm256_load_si256((const __m256i *)xb->bsums);
            __m256 dx = _mm256_set1_ps(xb->d);
            for (int r = 0; r < SLMX_NR; r++) {
                const slmx_pk_block *w = pb + r;
                __m256i t = _mm256_setzero_si256();
                for (int hh = 0; hh < 8; hh++) {
                    __m256i pr = _mm256_maddubs_epi16(_mm256_load_si256((const __m256i *)(w->w + 32 * hh)),
                                                      _mm256_load_si256((const __m256i *)(xb->q + 32 * hh)));
                    t = _mm256_add_epi32(t, _mm256_madd_epi16(pr, _mm256_load_si256((const __m256i *)(&w->sc[hh >> 1][16 * (hh & 1)]))));
                }
                __m256i mm = _mm256_madd_epi16(_mm256_load_si256((const __m256i *)w->coef), bs);
                f[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_mul_ps(_mm256_set1_ps(w->d), dx), f[i][r]);
                f[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mm), _mm256_mul_ps(_mm256_set1_ps(w->cs), dx), f[i][r]);
            }
        }
    }
    for (int i = 0; i < MR; i++)
        slmx_store4_avx2(out + (size_t)i * ldo, slmx_hsum4_avx2(f[i][0], f[i][1], f[i][2], f[i][3]), nr, accumulate);
}

SLMX_ALWAYS_INLINE QA __m256 slmx_load_wf_avx2(const int WT, const uint8_t *row, int k) {
    if (WT == SLMX_T_F32) return _mm256_loadu_ps((const float *)row + k);
    __m128i h = _mm_loadu_si128((const __m128i *)(row + 2 * (size_t)k));
    if (WT == SLMX_T_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

SLMX_ALWAYS_INLINE QA float slmx_load_w1(const int WT, const uint8_t *row, int k) {
    if (WT == SLMX_T_F32) return ((const float *)row)[k];
    if (WT == SLMX_T_F16) return slmx_load_f16(row + 2 * (size_t)k);
    return slmx_bf16_to_f32(slmx_load_u16(row + 2 * (size_t)k));
}

SLMX_ALWAYS_INLINE QA void slmx_kern_f_body_avx2(const int WT, const uint8_t *const *rows, const float *x, size_t ldx,
                                                 int K, float *out, size_t ldo, int nr, const int MR) {
    __m256 f[2][SLMX_NR];
    for (int i = 0; i < MR; i++)
        for (int r = 0; r < SLMX_NR; r++) f[i][r] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wv[SLMX_NR];
        for (int r = 0; r < SLMX_NR; r++) wv[r] = slmx_load_wf_avx2(WT, rows[r], k);
        for (int i = 0; i < MR; i++) {
            __m256 xv = _mm256_loadu_ps(x + (size_t)i * ldx + k);
            for (int r = 0; r < SLMX_NR; r++) f[i][r] = _mm256_fmadd_ps(xv, wv[r], f[i][r]);
        }
    }
    for (int i = 0; i < MR; i++) {
        __m128 s = slmx_hsum4_avx2(f[i][0], f[i][1], f[i][2], f[i][3]);
        if (k < K) {
            float tail[4] = {0, 0, 0, 0};
            for (int r = 0; r < SLMX_NR; r++)
                for (int kk = k; kk < K; kk++) tail[r] += x[(size_t)i * ldx + kk] * slmx_load_w1(WT, rows[r], kk);
            s = _mm_add_ps(s, _mm_loadu_ps(tail));
        }
        slmx_store4_avx2(out + (size_t)i * ldo, s, nr, 0);
    }
}

#define SLMX_Q_INST_AVX2(MRV)                                                                                 \
    static QA void slmx_kern_b32_u##MRV##_avx2(const slmx_pb_chunk *p, int nc, const uint8_t *x, size_t ldx,  \
                                               float *out, size_t ldo, int nr, int acc) {                     \
        slmx_kern_b32_body_avx2(p, nc, x, ldx, out, ldo, nr, acc, MRV, 0);                                     \
    }                                                                                                         \
    static QA void slmx_kern_b32_s##MRV##_avx2(const slmx_pb_chunk *p, int nc, const uint8_t *x, size_t ldx,  \
                                               float *out, size_t ldo, int nr, int acc) {                     \
        slmx_kern_b32_body_avx2(p, nc, x, ldx, out, ldo, nr, acc, MRV, 1);                                     \
    }                                                                                                         \
    static QA void slmx_kern_k_##MRV##_avx2(const slmx_pk_block *p, int nsb, const uint8_t *x, size_t ldx,    \
                                            float *out, size_t ldo, int nr, int acc) {                        \
        slmx_kern_k_body_avx2(p, nsb, x, ldx, out, ldo, nr, acc, MRV);                                         \
    }                                                                                                         \
    static QA void slmx_kern_f32_##MRV##_avx2(const uint8_t *const *rows, const float *x, size_t ldx, int K,  \
                                              float *out, size_t ldo, int nr) {                               \
        slmx_kern_f_body_avx2(SLMX_T_F32, rows, x, ldx, K, out, ldo, nr, MRV);                                 \
    }                                                                                                         \
    static QA void slmx_kern_f16_##MRV##_avx2(const uint8_t *const *rows, const float *x, size_t ldx, int K,  \
                                              float *out, size_t ldo, int nr) {                               \
        slmx_kern_f_body_avx2(SLMX_T_F16, rows, x, ldx, K, out, ldo, nr, MRV);                                 \
    }                                                                                                         \
    static QA void slmx_kern_bf16_##MRV##_avx2(const uint8_t *const *rows, const float *x, size_t ldx, int K, \
                                               float *out, size_t ldo, int nr) {                              \
        slmx_kern_f_body_avx2(SLMX_T_BF16, rows, x, ldx, K, out, ldo, nr, MRV);                                \
    }

SLMX_Q_INST_AVX2(1)
SLMX_Q_INST_AVX2(2)
#undef SLMX_Q_INST_AVX2

/* ------------------------------------------------------------------ M = 1 (decode)
 * The panel kernels' arithmetic with MR = 1 (same int32 lanes, same float products in the same
 * order: bit-identical to the panel path), the weights decoded into registers and used at once
 * instead of being written to a panel and read back; prefetching pf bytes ahead. */
SLMX_ALWAYS_INLINE QA void slmx_gemv_b32_body_avx2(const int t, const uint8_t *const *rows, const uint8_t *x, int K,
                                                   float *out, int nr, size_t pf) {
    const int ts = t == SLMX_T_Q8_0 ? 34 : (t == SLMX_T_Q4_0 ? 18 : 22);
    const __m256i ones = _mm256_set1_epi16(1);
    const int nb = K / 32, kcb = SLMX_KC / 32;
    for (int kb0 = 0; kb0 < nb; kb0 += kcb) {
        const int nblk = nb - kb0 < kcb ? nb - kb0 : kcb, nc = (nblk + 1) / 2;
        const slmx_xb_chunk *xc = (const slmx_xb_chunk *)x + kb0 / 2;
        __m256 f[SLMX_NR];
        for (int r = 0; r < SLMX_NR; r++) f[r] = _mm256_setzero_ps();
        for (int c = 0; c < nc; c++) {
            for (int h = 0; h < 2; h++) {
                const int have = 2 * c + h < nblk;
                __m256i xv = _mm256_load_si256((const __m256i *)(xc[c].q + 32 * h));
                __m256 xd = _mm256_load_ps(xc[c].d + 8 * h);
                __m256i xcr = _mm256_load_si256((const __m256i *)(xc[c].c + 8 * h));
                for (int r = 0; r < SLMX_NR; r++) {
                    const uint8_t *b = rows[r] + (size_t)(kb0 + 2 * c + h) * ts;
                    __m256i wv = _mm256_setzero_si256();
                    __m256 dw = _mm256_setzero_ps();
                    if (have) {
                        _mm_prefetch((const char *)b + pf, _MM_HINT_T0);
                        wv = slmx_unpack_block32_avx2(t, b);
                        dw = _mm256_set1_ps(_cvtsh_ss(slmx_load_u16(b)));
                    }
                    __m256i tt;
                    if (t == SLMX_T_Q8_0) tt = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv)), ones);
                    else tt = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones), xcr);
                    f[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tt), _mm256_mul_ps(dw, xd), f[r]);
                }
            }
        }
        slmx_store4_avx2(out, slmx_hsum4_avx2(f[0], f[1], f[2], f[3]), nr, kb0 > 0);
    }
}

SLMX_ALWAYS_INLINE QA void slmx_gemv_k_body_avx2(const int t, const uint8_t *const *rows, const uint8_t *x, int K,
                                                 float *out, int nr, size_t pf) {
    const int ts = t == SLMX_T_Q4_K ? 144 : (t == SLMX_T_Q5_K ? 176 : 210);
    const __m256i nib = _mm256_set1_epi8(0x0f), sixteen = _mm256_set1_epi8(16), hmask = _mm256_set1_epi8(0x30);
    const int nsb = K / 256, kcs = SLMX_KC / 256;
    for (int s0 = 0; s0 < nsb; s0 += kcs) {
        const int ns = nsb - s0 < kcs ? nsb - s0 : kcs;
        __m256 f[SLMX_NR];
        for (int r = 0; r < SLMX_NR; r++) f[r] = _mm256_setzero_ps();
        for (int s = 0; s < ns; s++) {
            const slmx_xk_block *xb = (const slmx_xk_block *)x + s0 + s;
            __m256i bs = _mm256_load_si256((const __m256i *)xb->bsums);
            __m256 dx = _mm256_set1_ps(xb->d);
            for (int r = 0; r < SLMX_NR; r++) {
                const uint8_t *b = rows[r] + (size_t)(s0 + s) * ts;
                for (int l = 0; l < ts; l += 64) _mm_prefetch((const char *)b + pf + l, _MM_HINT_T0);
                __m256i tt = _mm256_setzero_si256(), coef;
                float d, cs;
                if (t == SLMX_T_Q6_K) {
                    const int8_t *sc = (const int8_t *)(b + 192);
                    d = cs = _cvtsh_ss(slmx_load_u16(b + 208));
                    __m128i s16 = _mm_loadu_si128((const __m128i *)sc);
                    __m256i sc16 = _mm256_cvtepi8_epi16(s16);
                    coef = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 5));
                    for (int h = 0; h < 2; h++) {
                        __m256i A = _mm256_loadu_si256((const __m256i *)(b + 64 * h));
                        __m256i B = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32));
                        __m256i Q = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
                        __m256i w[4];
                        w[0] = _mm256_or_si256(_mm256_and_si256(A, nib), _mm256_and_si256(_mm256_slli_epi16(Q, 4), hmask));
                        w[1] = _mm256_or_si256(_mm256_and_si256(B, nib), _mm256_and_si256(_mm256_slli_epi16(Q, 2), hmask));
                        w[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(A, 4), nib), _mm256_and_si256(Q, hmask));
                        w[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(B, 4), nib),
                                               _mm256_and_si256(_mm256_srli_epi16(Q, 2), hmask));
                        for (int k = 0; k < 4; k++) {
                            const int hh = 4 * h + k;
                            /* lanes 0-7: scale 2hh, lanes 8-15: scale 2hh+1 */
                            __m256i sv = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16((short)sc[2 * hh])),
                                                                 _mm_set1_epi16((short)sc[2 * hh + 1]), 1);
                            __m256i pr = _mm256_maddubs_epi16(w[k], _mm256_load_si256((const __m256i *)(xb->q + 32 * hh)));
                            tt = _mm256_add_epi32(tt, _mm256_madd_epi16(pr, sv));
                        }
                    }
                } else {
                    d = _cvtsh_ss(slmx_load_u16(b));
                    cs = -_cvtsh_ss(slmx_load_u16(b + 2));
                    const uint8_t *qs = t == SLMX_T_Q5_K ? b + 48 : b + 16;
                    __m256i qh = t == SLMX_T_Q5_K ? _mm256_loadu_si256((const __m256i *)(b + 16)) : _mm256_setzero_si256();
                    uint64_t sc8, mn8;
                    slmx_scale_min_k4_all(b + 4, &sc8, &mn8);
                    __m128i mn16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)mn8));
                    coef = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi16(mn16, mn16)),
                                                   _mm_unpackhi_epi16(mn16, mn16), 1);
                    for (int j = 0; j < 8; j++) {
                        __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * (j >> 1)));
                        if (j & 1) v = _mm256_srli_epi16(v, 4);
                        v = _mm256_and_si256(v, nib);
                        if (t == SLMX_T_Q5_K) {
                            __m256i bit = _mm256_set1_epi8((char)(1 << j));
                            v = _mm256_or_si256(v, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit), sixteen));
                        }
                        __m256i pr = _mm256_maddubs_epi16(v, _mm256_load_si256((const __m256i *)(xb->q + 32 * j)));
                        tt = _mm256_add_epi32(tt, _mm256_madd_epi16(pr, _mm256_set1_epi16((short)((sc8 >> (8 * j)) & 0xff))));
                    }
                }
                __m256i mm = _mm256_madd_epi16(coef, bs);
                f[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tt), _mm256_mul_ps(_mm256_set1_ps(d), dx), f[r]);
                f[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mm), _mm256_mul_ps(_mm256_set1_ps(cs), dx), f[r]);
            }
        }
        slmx_store4_avx2(out, slmx_hsum4_avx2(f[0], f[1], f[2], f[3]), nr, s0 > 0);
    }
}

static QA void slmx_gemv_avx2(int t, const uint8_t *const *rows, const uint8_t *x, int K, float *out, int nr, size_t pf) {
    switch (t) {
    case SLMX_T_Q8_0: slmx_gemv_b32_body_avx2(SLMX_T_Q8_0, rows, x, K, out, nr, pf); break;
    case SLMX_T_Q4_0: slmx_gemv_b32_body_avx2(SLMX_T_Q4_0, rows, x, K, out, nr, pf); break;
    case SLMX_T_Q5_0: slmx_gemv_b32_body_avx2(SLMX_T_Q5_0, rows, x, K, out, nr, pf); break;
    case SLMX_T_Q4_K: slmx_gemv_k_body_avx2(SLMX_T_Q4_K, rows, x, K, out, nr, pf); break;
    case SLMX_T_Q5_K: slmx_gemv_k_body_avx2(SLMX_T_Q5_K, rows, x, K, out, nr, pf); break;
    default: slmx_gemv_k_body_avx2(SLMX_T_Q6_K, rows, x, K, out, nr, pf); break;
    }
}

static QA void slmx_unpack_b32_avx2(int t, const uint8_t *const *rows, int blk0, int nblk, slmx_pb_chunk *p) {
    if (t == SLMX_T_Q8_0) slmx_unpack_b32_body_avx2(SLMX_T_Q8_0, rows, blk0, nblk, p);
    else if (t == SLMX_T_Q4_0) slmx_unpack_b32_body_avx2(SLMX_T_Q4_0, rows, blk0, nblk, p);
    else slmx_unpack_b32_body_avx2(SLMX_T_Q5_0, rows, blk0, nblk, p);
}

static QA void slmx_unpack_k_avx2(int t, const uint8_t *const *rows, int sb0, int nsb, slmx_pk_block *p) {
    if (t == SLMX_T_Q4_K) slmx_unpack_k_body_avx2(SLMX_T_Q4_K, rows, sb0, nsb, p);
    else if (t == SLMX_T_Q5_K) slmx_unpack_k_body_avx2(SLMX_T_Q5_K, rows, sb0, nsb, p);
    else slmx_unpack_k_body_avx2(SLMX_T_Q6_K, rows, sb0, nsb, p);
}

static QA void slmx_linear_range_avx2(int t, const uint8_t *w, size_t rb, int64_t n0, int64_t n1,
                                      const uint8_t *x, size_t ldx, int M, int K, float *out, size_t ldo,
                                      void *scratch) {
    const int is_signed = t == SLMX_T_Q8_0;
    for (int64_t n = n0; n < n1; n += SLMX_NR) {
        const int nr = (int)(n1 - n < SLMX_NR ? n1 - n : SLMX_NR);
        const uint8_t *rows[SLMX_NR];
        for (int r = 0; r < SLMX_NR; r++) rows[r] = w + (size_t)(n + (r < nr ? r : nr - 1)) * rb;
        float *o = out + n;
        if (M == 1 && !slmx_is_float(t)) {
            slmx_gemv_avx2(t, rows, x, K, o, nr, SLMX_PF_ROWS * rb);
        } else if (slmx_is_float(t)) {
            for (int m = 0; m < M; m += 2) {
                const float *xm = (const float *)(x + (size_t)m * ldx);
                float *om = o + (size_t)m * ldo;
                size_t lf = ldx / 4;
                if (M - m >= 2) {
                    if (t == SLMX_T_F32) slmx_kern_f32_2_avx2(rows, xm, lf, K, om, ldo, nr);
                    else if (t == SLMX_T_F16) slmx_kern_f16_2_avx2(rows, xm, lf, K, om, ldo, nr);
                    else slmx_kern_bf16_2_avx2(rows, xm, lf, K, om, ldo, nr);
                } else {
                    if (t == SLMX_T_F32) slmx_kern_f32_1_avx2(rows, xm, lf, K, om, ldo, nr);
                    else if (t == SLMX_T_F16) slmx_kern_f16_1_avx2(rows, xm, lf, K, om, ldo, nr);
                    else slmx_kern_bf16_1_avx2(rows, xm, lf, K, om, ldo, nr);
                }
            }
        } else if (slmx_is_b32(t)) {
            const int nb = K / 32, kcb = SLMX_KC / 32;
            for (int kb0 = 0; kb0 < nb; kb0 += kcb) {
                int nblk = nb - kb0 < kcb ? nb - kb0 : kcb, nc = (nblk + 1) / 2;
                slmx_pb_chunk *p = (slmx_pb_chunk *)scratch;
                slmx_unpack_b32_avx2(t, rows, kb0, nblk, p);
                const uint8_t *xk = x + (size_t)(kb0 / 2) * sizeof(slmx_xb_chunk);
                for (int m = 0; m < M; m += 2) {
                    const uint8_t *xm = xk + (size_t)m * ldx;
                    float *om = o + (size_t)m * ldo;
                    if (M - m >= 2) {
                        if (is_signed) slmx_kern_b32_s2_avx2(p, nc, xm, ldx, om, ldo, nr, kb0 > 0);
                        else slmx_kern_b32_u2_avx2(p, nc, xm, ldx, om, ldo, nr, kb0 > 0);
                    } else {
                        if (is_signed) slmx_kern_b32_s1_avx2(p, nc, xm, ldx, om, ldo, nr, kb0 > 0);
                        else slmx_kern_b32_u1_avx2(p, nc, xm, ldx, om, ldo, nr, kb0 > 0);
                    }
                }
            }
        } else {
            const int nsb = K / 256, kcs = SLMX_KC / 256;
            for (int s0 = 0; s0 < nsb; s0 += kcs) {
                int ns = nsb - s0 < kcs ? nsb - s0 : kcs;
                slmx_pk_block *p = (slmx_pk_block *)scratch;
                slmx_unpack_k_avx2(t, rows, s0, ns, p);
                const uint8_t *xk = x + (size_t)s0 * sizeof(slmx_xk_block);
                for (int m = 0; m < M; m += 2) {
                    if (M - m >= 2) slmx_kern_k_2_avx2(p, ns, xk + (size_t)m * ldx, ldx, o + (size_t)m * ldo, ldo, nr, s0 > 0);
                    else slmx_kern_k_1_avx2(p, ns, xk + (size_t)m * ldx, ldx, o + (size_t)m * ldo, ldo, nr, s0 > 0);
                }
            }
        }
    }
}

#undef QA
