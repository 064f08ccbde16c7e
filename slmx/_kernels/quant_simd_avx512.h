/* AVX-512 bodies of the quant kernels. Included twice by quant_simd.h:
 *   QFN(name) -> name_avx512, QTARGET = AVX-512 F/BW/VL/DQ, QVNNI 0 (maddubs + madd)
 *   QFN(name) -> name_vnni,   QTARGET = ... + VNNI,      QVNNI 1 (dpbusd / dpwssd)
 * Register tile: MR (<= 4) activation rows x NR = 4 weight rows, 16 zmm float accumulators.
 */

/* ------------------------------------------------------------------ helpers */
/* M = 1 bodies (Q8_0, Q4_0, Q5_0, Q6_K/Q5_K): besides the L1 prefetch pf bytes ahead, one into L2
 * SLMX_PF2 x pf ahead. For weights from memory the L1 prefetches alone keep too few lines in flight
 * (2 threads, from DRAM: 262144 x 640 Q8_0 +10%, Q5_0 +37%; 262144 x 2048 Q5_0 +13%, Q6_K +18%; L3-
 * sized weights unchanged; Q4_K's body gained nothing from it: its one prefetch goes to L2). 0: off. */
#ifndef SLMX_PF2
#define SLMX_PF2 4
#endif

/* [sum(a), sum(b), sum(c), sum(d)] */
SLMX_ALWAYS_INLINE QTARGET __m128 QFN(slmx_hsum4)(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
    s = _mm512_add_ps(s, _mm512_permute_ps(s, _MM_SHUFFLE(2, 3, 0, 1)));
    s = _mm512_add_ps(s, _mm512_permute_ps(s, _MM_SHUFFLE(1, 0, 3, 2)));
    __m512 r = _mm512_permutexvar_ps(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), s);
    return _mm512_castps512_ps128(r);
}

/* Store (or add) the NR sums of one output row; only the first nr are real. */
SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_store4)(float *o, __m128 s, int nr, int accumulate) {
    if (nr == 4) {
        if (accumulate) s = _mm_add_ps(s, _mm_loadu_ps(o));
        _mm_storeu_ps(o, s);
    } else {
        float tmp[4];
        _mm_storeu_ps(tmp, s);
        for (int r = 0; r < nr; r++) o[r] = accumulate ? o[r] + tmp[r] : tmp[r];
    }
}

/* round half away from zero (C roundf), exact: floor(a) + floor(2 (a - floor a)) */
SLMX_ALWAYS_INLINE QTARGET __m512i QFN(slmx_roundf_epi32)(__m512 v) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    __m512 a = _mm512_andnot_ps(sign, v);
    __m512 f = _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 fr = _mm512_sub_ps(a, f);
    __m512 r = _mm512_add_ps(f, _mm512_roundscale_ps(_mm512_add_ps(fr, fr), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
    r = _mm512_or_ps(r, _mm512_and_ps(sign, v));
    return _mm512_cvttps_epi32(r);
}

/* ------------------------------------------------------------------ activation quantizers */

static QTARGET void QFN(slmx_xq_b32)(const float *x, int K, int off, slmx_xb_chunk *dst) {
    int nb = K / 32, nc = (nb + 1) / 2;
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int c = 0; c < nc; c++) {
        slmx_xb_chunk *ch = dst + c;
        __m512 dv = _mm512_setzero_ps();
        int32_t cs[2] = {0, 0};
        for (int h = 0; h < 2; h++) {
            if (2 * c + h >= nb) { memset(ch->q + 32 * h, 0, 32); continue; }
            const float *xb = x + 64 * c + 32 * h;
            __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
            float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
            float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            __m512 iv = _mm512_set1_ps(id);
            __m512i q0 = QFN(slmx_roundf_epi32)(_mm512_mul_ps(v0, iv));
            __m512i q1 = QFN(slmx_roundf_epi32)(_mm512_mul_ps(v1, iv));
            _mm_storeu_si128((__m128i *)(ch->q + 32 * h), _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(ch->q + 32 * h + 16), _mm512_cvtepi32_epi8(q1));
            cs[h] = -off * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            float dr = slmx_f16_to_f32(slmx_f32_to_f16(d));
            dv = _mm512_mask_mov_ps(dv, h ? (__mmask16)0xff00 : (__mmask16)0x00ff, _mm512_set1_ps(dr));
        }
        _mm512_store_ps(ch->d, dv);
        _mm512_store_si512((__m512i *)ch->c, _mm512_setzero_si512());
        ch->c[0] = cs[0];
        ch->c[8] = cs[1];
    }
}

static QTARGET void QFN(slmx_xq_k)(const float *x, int K, slmx_xk_block *dst) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int b = 0; b < K / 256; b++) {
        const float *xb = x + 256 * b;
        slmx_xk_block *y = dst + b;
        __m512 m = _mm512_setzero_ps();
        for (int j = 0; j < 16; j++) m = _mm512_max_ps(m, _mm512_andnot_ps(sign, _mm512_loadu_ps(xb + 16 * j)));
        float amax = _mm512_reduce_max_ps(m);
        memset(y, 0, sizeof *y);
        if (amax == 0.0f) continue;
        float max = 0.0f;                       /* first element of largest magnitude */
        __m512 av = _mm512_set1_ps(amax);
        for (int j = 0; j < 16; j++) {
            __mmask16 k = _mm512_cmp_ps_mask(_mm512_andnot_ps(sign, _mm512_loadu_ps(xb + 16 * j)), av, _CMP_EQ_OQ);
            if (k) { max = xb[16 * j + __builtin_ctz((unsigned)k)]; break; }
        }
        float iscale = -127.0f / max;
        __m512 iv = _mm512_set1_ps(iscale);
        const __m512i cap = _mm512_set1_epi32(127);
        for (int j = 0; j < 16; j++) {
            __m512i q = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(iv, _mm512_loadu_ps(xb + 16 * j))), cap);
            _mm_store_si128((__m128i *)(y->q + 16 * j), _mm512_cvtepi32_epi8(q));
            y->bsums[j] = (int16_t)_mm512_reduce_add_epi32(q);
        }
        y->d = 1.0f / iscale;
    }
}

/* ------------------------------------------------------------------ weight unpacking */

/* One 64-element chunk (blocks A at bA, B = bA + ts; TWO = 0: B absent) decoded to 64 weight bytes
 * (unsigned q; Q8_0: q + 128 on VNNI, signed q otherwise) and the scales [d_A x8, d_B x8]. */
SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_b32_decode)(const int t, const int TWO, const uint8_t *bA, __m512i *zo,
                                                     __m512 *dvo) {
    const int ts = t == SLMX_T_Q8_0 ? 34 : (t == SLMX_T_Q4_0 ? 18 : 22);
    const uint8_t *bB = bA + ts;
    const __m512i dsel = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    uint32_t dh = (uint32_t)slmx_load_u16(bA) | (TWO ? (uint32_t)slmx_load_u16(bB) << 16 : 0u);
    *dvo = _mm512_permutexvar_ps(dsel, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128((int)dh))));
    __m512i z;
    if (t == SLMX_T_Q8_0) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(bA + 2));
        __m256i b = TWO ? _mm256_loadu_si256((const __m256i *)(bB + 2)) : _mm256_setzero_si256();
        z = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
        if (QVNNI) z = _mm512_xor_si512(z, _mm512_set1_epi8((char)0x80));
    } else {
        const int qo = t == SLMX_T_Q4_0 ? 2 : 6;
        /* [qs_A, qs_A, qs_B, qs_B] -> low nibbles, high nibbles of each */
        __m512i za = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(bA + qo)));
        __m512i zb = TWO ? _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(bB + qo))) : _mm512_setzero_si512();
        z = _mm512_mask_blend_epi64((__mmask8)0xf0, za, zb);
        z = _mm512_mask_srli_epi16(z, (__mmask32)0xff00ff00u, z, 4);
        z = _mm512_and_si512(z, _mm512_set1_epi8(0x0f));
        if (t == SLMX_T_Q5_0) {
            uint64_t hm = slmx_load_u32(bA + 2);
            if (TWO) hm |= (uint64_t)slmx_load_u32(bB + 2) << 32;
            z = _mm512_mask_add_epi8(z, (__mmask64)hm, z, _mm512_set1_epi8(16));
        }
    }
    *zo = z;
}

SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_unpack_b32_chunk)(const int t, const int TWO, const uint8_t *bA,
                                                           slmx_pb_chunk *pc) {
    __m512i z;
    __m512 dv;
    QFN(slmx_b32_decode)(t, TWO, bA, &z, &dv);
    _mm512_store_si512((__m512i *)pc->w, z);
    _mm512_store_ps(pc->d, dv);
}

/* Blocks blk0 .. blk0+nblk of NR rows (Q8_0/Q4_0/Q5_0) into pb chunks; prefetch pf bytes ahead. */
SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_unpack_b32_body)(const int t, const uint8_t *const *rows, int blk0, int nblk,
                                                          slmx_pb_chunk *p, size_t pf) {
    const int ts = t == SLMX_T_Q8_0 ? 34 : (t == SLMX_T_Q4_0 ? 18 : 22);
    const int nfull = nblk / 2;
    for (int r = 0; r < SLMX_NR; r++) {
        const uint8_t *b = rows[r] + (size_t)blk0 * ts;
        for (int c = 0; c < nfull; c++) {
            _mm_prefetch((const char *)b + 2 * ts * c + pf, _MM_HINT_T0);
            QFN(slmx_unpack_b32_chunk)(t, 1, b + (size_t)2 * ts * c, p + (size_t)c * SLMX_NR + r);
        }
        if (nblk & 1) QFN(slmx_unpack_b32_chunk)(t, 0, b + (size_t)2 * ts * nfull, p + (size_t)nfull * SLMX_NR + r);
    }
}

static const int16_t QFN(slmx_iota16)[32] __attribute__((aligned(64))) = {
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};

/* A K-quant super-block being decoded: its scales as int16 lanes and float factors. */
typedef struct {
    __m512i sc16;   /* Q4_K/Q5_K: the 8 scales (lanes 0..7); Q6_K: the 16 scales (lanes 0..15) */
    __m512i qh;     /* Q5_K: qh[32] in both halves */
    __m256i coef;   /* multipliers of the activation's 16-sums (see slmx_pk_block) */
    float d, cs;
} QFN(slmx_kmeta);

SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_k_meta)(const int t, const uint8_t *b, QFN(slmx_kmeta) *m) {
    if (t == SLMX_T_Q6_K) {
        __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 192)));
        m->sc16 = _mm512_castsi256_si512(s16);
        m->qh = _mm512_setzero_si512();
        m->coef = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(s16, 5));
        m->d = m->cs = _cvtsh_ss(slmx_load_u16(b + 208));
    } else {
        uint64_t sc8, mn8;
        slmx_scale_min_k4_all(b + 4, &sc8, &mn8);
        m->sc16 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc8)));
        __m128i mn16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)mn8));
        m->coef = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi16(mn16, mn16)),
                                          _mm_unpackhi_epi16(mn16, mn16), 1);
        m->qh = t == SLMX_T_Q5_K ? _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b + 16)))
                                 : _mm512_setzero_si512();
        m->d = _cvtsh_ss(slmx_load_u16(b));
        m->cs = -_cvtsh_ss(slmx_load_u16(b + 2));
    }
}

/* Weights (unsigned q) of chunk c (elements 64c .. 64c+63) of super-block b. */
SLMX_ALWAYS_INLINE QTARGET __m512i QFN(slmx_k_chunk_q)(const int t, const uint8_t *b, const QFN(slmx_kmeta) *m, const int c) {
    const __m512i nib = _mm512_set1_epi8(0x0f);
    if (t == SLMX_T_Q6_K) {
        const int h = c >> 1;
        const __m512i sh_l = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
        const __m512i sh_r = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
        __m512i zl = _mm512_loadu_si512((const __m512i *)(b + 64 * h));
        __m512i zh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h)));
        __m512i lo, hb;
        if (c & 1) {
            lo = _mm512_and_si512(_mm512_srli_epi16(zl, 4), nib);
            hb = _mm512_srlv_epi16(zh, sh_r);
        } else {
            lo = _mm512_and_si512(zl, nib);
            hb = _mm512_sllv_epi16(zh, sh_l);
        }
        return _mm512_or_si512(lo, _mm512_and_si512(hb, _mm512_set1_epi8(0x30)));
    }
    const uint8_t *qs = t == SLMX_T_Q5_K ? b + 48 : b + 16;
    __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
    __m512i z = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1), nib);
    if (t == SLMX_T_Q5_K) {
        __m512i sel = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * c))), _mm256_set1_epi8((char)(1 << (2 * c + 1))), 1);
        z = _mm512_mask_add_epi8(z, _mm512_test_epi8_mask(m->qh, sel), z, _mm512_set1_epi8(16));
    }
    return z;
}

/* int16 multipliers of chunk c's 32 maddubs lanes. */
SLMX_ALWAYS_INLINE QTARGET __m512i QFN(slmx_k_chunk_sc)(const int t, const QFN(slmx_kmeta) *m, const int c) {
    const __m512i iota = _mm512_load_si512((const __m512i *)QFN(slmx_iota16));
    __m512i idx = t == SLMX_T_Q6_K ? _mm512_add_epi16(_mm512_srli_epi16(iota, 3), _mm512_set1_epi16((short)(4 * c)))
                                   : _mm512_add_epi16(_mm512_srli_epi16(iota, 4), _mm512_set1_epi16((short)(2 * c)));
    return _mm512_permutexvar_epi16(idx, m->sc16);
}

/* Super-blocks sb0 .. sb0+nsb of NR rows (Q4_K/Q5_K/Q6_K) into pk blocks; prefetch pf bytes ahead. */
SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_unpack_k_body)(const int t, const uint8_t *const *rows, int sb0, int nsb,
                                                        slmx_pk_block *p, size_t pf) {
    const int ts = t == SLMX_T_Q4_K ? 144 : (t == SLMX_T_Q5_K ? 176 : 210);
    for (int r = 0; r < SLMX_NR; r++) {
        for (int s = 0; s < nsb; s++) {
            const uint8_t *b = rows[r] + (size_t)(sb0 + s) * ts;
            slmx_pk_block *pk = p + (size_t)s * SLMX_NR + r;
            for (int l = 0; l < ts; l += 64) _mm_prefetch((const char *)b + pf + l, _MM_HINT_T0);
            QFN(slmx_kmeta) m;
            QFN(slmx_k_meta)(t, b, &m);
            for (int c = 0; c < 4; c++) {
                _mm512_store_si512((__m512i *)(pk->w + 64 * c), QFN(slmx_k_chunk_q)(t, b, &m, c));
                _mm512_store_si512((__m512i *)pk->sc[c], QFN(slmx_k_chunk_sc)(t, &m, c));
            }
            _mm256_store_si256((__m256i *)pk->coef, m.coef);
            pk->d = m.d;
            pk->cs = m.cs;
        }
    }
}

/* ------------------------------------------------------------------ micro-kernels */

/* out[i, 0:nr] (+)= sum over nc chunks of panel p (NR rows) . activation rows x + i*ldx, i < MR */
SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_kern_b32_body)(const slmx_pb_chunk *p, int nc, const uint8_t *x, size_t ldx,
                                                        float *out, size_t ldo, int nr, int accumulate,
                                                        const int MR, const int SIGNED) {
    __m512 f[4][SLMX_NR];
    for (int i = 0; i < MR; i++)
        for (int r = 0; r < SLMX_NR; r++) f[i][r] = _mm512_setzero_ps();
    const __m512i ones = _mm512_set1_epi16(1);
    for (int c = 0; c < nc; c++) {
        const slmx_pb_chunk *pc = p + (size_t)c * SLMX_NR;
        for (int i = 0; i < MR; i++) {
            const slmx_xb_chunk *xc = (const slmx_xb_chunk *)(x + (size_t)i * ldx) + c;
            __m512i xv = _mm512_load_si512((const __m512i *)xc->q);
            __m512 xd = _mm512_load_ps(xc->d);
            __m512i xcr = _mm512_load_si512((const __m512i *)xc->c);
            for (int r = 0; r < SLMX_NR; r++) {
                __m512i wv = _mm512_load_si512((const __m512i *)pc[r].w);
                __m512i t;
#if QVNNI
                (void)ones;
                t = _mm512_dpbusd_epi32(xcr, wv, xv);
#else
                if (SIGNED) {
                    __m512i sx = _mm512_mask_sub_epi8(xv, _mm512_movepi8_mask(wv), _mm512_setzero_si512(), xv);
                    t = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(wv), sx), ones);
                } else {
                    t = _mm512_add_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(wv, xv), ones), xcr);
                }
#endif
                f[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(_mm512_load_ps(pc[r].d), xd), f[i][r]);
            }
        }
    }
    for (int i = 0; i < MR; i++)
        QFN(slmx_store4)(out + (size_t)i * ldo, QFN(slmx_hsum4)(f[i][0], f[i][1], f[i][2], f[i][3]), nr, accumulate);
}

SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_kern_k_body)(const slmx_pk_block *p, int nsb, const uint8_t *x, size_t ldx,
                                                      float *out, size_t ldo, int nr, int accumulate, const int MR) {
    __m512 f[4][SLMX_NR];
    for (int i = 0; i < MR; i++)
        for (int r = 0; r < SLMX_NR; r++) f[i][r] = _mm512_setzero_ps();
    for (int s = 0; s < nsb; s++) {
        const slmx_pk_block *pb = p + (size_t)s * SLMX_NR;
        for (int i = 0; i < MR; i++) {
            const slmx_xk_block *xb = (const slmx_xk_block *)(x + (size_t)i * ldx) + s;
            __m512i x0 = _mm512_load_si512((const __m512i *)(xb->q));
            __m512i x1 = _mm512_load_si512((const __m512i *)(xb->q + 64));
            __m512i x2 = _mm512_load_si512((const __m512i *)(xb->q + 128));
            __m512i x3 = _mm512_load_si512((const __m512i *)(xb->q + 192));
            __m256i bs = _mm256_load_si256((const __m256i *)xb->bsums);
            __m512 dx = _mm512_set1_ps(xb->d);
            for (int r = 0; r < SLMX_NR; r++) {
                const slmx_pk_block *w = pb + r;
                __m512i p0 = _mm512_maddubs_epi16(_mm512_load_si512((const __m512i *)(w->w)), x0);
                __m512i p1 = _mm512_maddubs_epi16(_mm512_load_si512((const __m512i *)(w->w + 64)), x1);
                __m512i p2 = _mm512_maddubs_epi16(_mm512_load_si512((const __m512i *)(w->w + 128)), x2);
                __m512i p3 = _mm512_maddubs_epi16(_mm512_load_si512((const __m512i *)(w->w + 192)), x3);
#if QVNNI
                __m512i t = _mm512_dpwssd_epi32(_mm512_setzero_si512(), p0, _mm512_load_si512((const __m512i *)w->sc[0]));
                t = _mm512_dpwssd_epi32(t, p1, _mm512_load_si512((const __m512i *)w->sc[1]));
                t = _mm512_dpwssd_epi32(t, p2, _mm512_load_si512((const __m512i *)w->sc[2]));
                t = _mm512_dpwssd_epi32(t, p3, _mm512_load_si512((const __m512i *)w->sc[3]));
#else
                __m512i t = _mm512_add_epi32(
                    _mm512_add_epi32(_mm512_madd_epi16(p0, _mm512_load_si512((const __m512i *)w->sc[0])),
                                     _mm512_madd_epi16(p1, _mm512_load_si512((const __m512i *)w->sc[1]))),
                    _mm512_add_epi32(_mm512_madd_epi16(p2, _mm512_load_si512((const __m512i *)w->sc[2])),
                                     _mm512_madd_epi16(p3, _mm512_load_si512((const __m512i *)w->sc[3]))));
#endif
                __m256i mm = _mm256_madd_epi16(_mm256_load_si256((const __m256i *)w->coef), bs);
                f[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(_mm512_set1_ps(w->d), dx), f[i][r]);
                f[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_zextsi256_si512(mm)),
                                          _mm512_mul_ps(_mm512_set1_ps(w->cs), dx), f[i][r]);
            }
        }
    }
    for (int i = 0; i < MR; i++)
        QFN(slmx_store4)(out + (size_t)i * ldo, QFN(slmx_hsum4)(f[i][0], f[i][1], f[i][2], f[i][3]), nr, accumulate);
}

/* M = 1: the same arithmetic as the panel kernels with MR = 1 (bit-identical results), the weights
 * decoded into registers and used at once instead of going through a panel. */
SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_gemv_b32_body)(const int t, const uint8_t *const *rows, const uint8_t *x, int K,
                                                        float *out, int nr, size_t pf) {
    const int ts = t == SLMX_T_Q8_0 ? 34 : (t == SLMX_T_Q4_0 ? 18 : 22);
#if !QVNNI
    const int SIGNED = t == SLMX_T_Q8_0;
    const __m512i ones = _mm512_set1_epi16(1);
#endif
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
                const uint8_t *bA = rows[r] + (size_t)(kb0 + 2 * c) * ts;
                _mm_prefetch((const char *)bA + pf, _MM_HINT_T0);
                if (SLMX_PF2) _mm_prefetch((const char *)bA + SLMX_PF2 * pf, _MM_HINT_T1);
                __m512i wv;
                __m512 dv;
                if (two) QFN(slmx_b32_decode)(t, 1, bA, &wv, &dv);
                else QFN(slmx_b32_decode)(t, 0, bA, &wv, &dv);
                __m512i tt;
#if QVNNI
                tt = _mm512_dpbusd_epi32(xcr, wv, xv);
#else
                if (SIGNED) {
                    __m512i sx = _mm512_mask_sub_epi8(xv, _mm512_movepi8_mask(wv), _mm512_setzero_si512(), xv);
                    tt = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(wv), sx), ones);
                } else {
                    tt = _mm512_add_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(wv, xv), ones), xcr);
                }
#endif
                f[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tt), _mm512_mul_ps(dv, xd), f[r]);
            }
        }
        QFN(slmx_store4)(out, QFN(slmx_hsum4)(f[0], f[1], f[2], f[3]), nr, kb0 > 0);
    }
}

#if QVNNI
/* Q5_0 (and once Q4_0), M = 1, VNNI: the arithmetic of slmx_gemv_b32_body (same int32 lanes, same float
 * products and sums, so bit-identical to it and to the panel kernels), with the four f16 weight
 * scales of two chunks converted at once and multiplied by the activation scales at once (per chunk:
 * two lane permutes instead of a scalar decode, a convert and a multiply). The body is bound by the
 * two vector ports (p0, p5 with 512-bit ops): Q5_0's four scales come by scalar loads (a word
 * permute of two sources cost 3 vector uops) and, with GFNI, a chunk's nibbles by one affine op
 * (per-qword matrices) instead of a shift and a mask: 26 vs 22 GB/s per core in L2. */
static const int16_t QFN(slmx_b32_didx)[32] __attribute__((aligned(64))) = {
    0, 9, 18, 27};            /* Q4_0: d at bytes 0, 18, 36, 54 of the 72-byte group */

/* x -> affine(x) per byte, the 8x8 bit matrix of each qword of m applied to the bytes of that qword
 * (inline assembly, so that only a caller that checked the CPU for GFNI runs it). */
SLMX_ALWAYS_INLINE QTARGET __m512i QFN(slmx_gf_affine)(__m512i x, __m512i m) {
    __m512i r;
    __asm__("vgf2p8affineqb $0, %2, %1, %0" : "=v"(r) : "v"(x), "v"(m));
    return r;
}

/* The weight bytes of the chunk at bA (blocks A, B): [lo(qs_A), hi(qs_A), lo(qs_B), hi(qs_B)] plus
 * 16 where Q5_0's fifth bit is set. G: the nibbles by one GFNI op (matrices [lo, lo, hi, hi] per
 * 32 bytes) instead of a shift and a mask. */
SLMX_ALWAYS_INLINE QTARGET __m512i QFN(slmx_b32_nibbles)(const int t, const int G, const uint8_t *bA) {
    const int ts = t == SLMX_T_Q4_0 ? 18 : 22, qo = t == SLMX_T_Q4_0 ? 2 : 6;
    const uint8_t *bB = bA + ts;
    __m512i za = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(bA + qo)));
    __m512i zb = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(bB + qo)));
    __m512i z = _mm512_mask_blend_epi64((__mmask8)0xf0, za, zb);
    if (G) {
        const long long lo = 0x0102040800000000ll, hi = 0x1020408000000000ll;
        z = QFN(slmx_gf_affine)(z, _mm512_set_epi64(hi, hi, lo, lo, hi, hi, lo, lo));
    } else {
        z = _mm512_mask_srli_epi16(z, (__mmask32)0xff00ff00u, z, 4);
        z = _mm512_and_si512(z, _mm512_set1_epi8(0x0f));
    }
    if (t == SLMX_T_Q5_0) {
        uint64_t hm = (uint64_t)slmx_load_u32(bA + 2) | (uint64_t)slmx_load_u32(bB + 2) << 32;
        z = _mm512_mask_add_epi8(z, (__mmask64)hm, z, _mm512_set1_epi8(16));
    }
    return z;
}

SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_gemv_b4_body)(const int t, const int G, const uint8_t *const *rows,
                                                       const uint8_t *x, int K, float *out, int nr, size_t pf) {
    const int ts = t == SLMX_T_Q4_0 ? 18 : 22;
    const __m512i didx = _mm512_castsi128_si512(_mm_loadl_epi64((const __m128i *)QFN(slmx_b32_didx)));
    const __m512i xdidx = _mm512_setr_epi32(0, 8, 16, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i sel0 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i sel1 = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
    const int nb = K / 32, kcb = SLMX_KC / 32;
    for (int kb0 = 0; kb0 < nb; kb0 += kcb) {
        const int nblk = nb - kb0 < kcb ? nb - kb0 : kcb, nc = (nblk + 1) / 2;
        const slmx_xb_chunk *xc = (const slmx_xb_chunk *)x + kb0 / 2;
        __m512 f[SLMX_NR];
        for (int r = 0; r < SLMX_NR; r++) f[r] = _mm512_setzero_ps();
        int c = 0;
        for (; 2 * c + 3 < nblk; c += 2) {                  /* two full chunks: blocks 2c .. 2c+3 */
            __m512i xv0 = _mm512_load_si512((const __m512i *)xc[c].q);
            __m512i xv1 = _mm512_load_si512((const __m512i *)xc[c + 1].q);
            __m512i xcr0 = _mm512_load_si512((const __m512i *)xc[c].c);
            __m512i xcr1 = _mm512_load_si512((const __m512i *)xc[c + 1].c);
            __m128 xd4 = _mm512_castps512_ps128(_mm512_permutex2var_ps(_mm512_load_ps(xc[c].d), xdidx,
                                                                       _mm512_load_ps(xc[c + 1].d)));
            for (int r = 0; r < SLMX_NR; r++) {
                const uint8_t *bA = rows[r] + (size_t)(kb0 + 2 * c) * ts;
                _mm_prefetch((const char *)bA + pf, _MM_HINT_T0);
                _mm_prefetch((const char *)bA + pf + 63, _MM_HINT_T0);
                if (SLMX_PF2) { _mm_prefetch((const char *)bA + SLMX_PF2 * pf, _MM_HINT_T1); _mm_prefetch((const char *)bA + SLMX_PF2 * pf + 63, _MM_HINT_T1); }
                __m128i dh;
                if (t == SLMX_T_Q4_0) {
                    dh = _mm512_castsi512_si128(_mm512_permutexvar_epi16(didx, _mm512_loadu_si512((const void *)bA)));
                } else {                                    /* scalar loads: no shuffle-port work */
                    uint64_t u = (uint64_t)slmx_load_u16(bA) | (uint64_t)slmx_load_u16(bA + 22) << 16
                               | (uint64_t)slmx_load_u16(bA + 44) << 32 | (uint64_t)slmx_load_u16(bA + 66) << 48;
                    dh = _mm_cvtsi64_si128((long long)u);
                }
                __m512 p4 = _mm512_castps128_ps512(_mm_mul_ps(_mm_cvtph_ps(dh), xd4));
                __m512i w0 = QFN(slmx_b32_nibbles)(t, G, bA), w1 = QFN(slmx_b32_nibbles)(t, G, bA + 2 * ts);
                __m512i t0 = _mm512_dpbusd_epi32(xcr0, w0, xv0), t1 = _mm512_dpbusd_epi32(xcr1, w1, xv1);
                f[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t0), _mm512_permutexvar_ps(sel0, p4), f[r]);
                f[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t1), _mm512_permutexvar_ps(sel1, p4), f[r]);
            }
        }
        for (; c < nc; c++) {                                /* the rest: slmx_gemv_b32_body's steps */
            const int two = 2 * c + 1 < nblk;
            __m512i xv = _mm512_load_si512((const __m512i *)xc[c].q);
            __m512 xd = _mm512_load_ps(xc[c].d);
            __m512i xcr = _mm512_load_si512((const __m512i *)xc[c].c);
            for (int r = 0; r < SLMX_NR; r++) {
                const uint8_t *bA = rows[r] + (size_t)(kb0 + 2 * c) * ts;
                __m512i wv;
                __m512 dv;
                if (two) QFN(slmx_b32_decode)(t, 1, bA, &wv, &dv);
                else QFN(slmx_b32_decode)(t, 0, bA, &wv, &dv);
                __m512i tt = _mm512_dpbusd_epi32(xcr, wv, xv);
                f[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tt), _mm512_mul_ps(dv, xd), f[r]);
            }
        }
        QFN(slmx_store4)(out, QFN(slmx_hsum4)(f[0], f[1], f[2], f[3]), nr, kb0 > 0);
    }
}
#endif

#if QVNNI
/* Q4_0 on VNNI: "g4" groups of 4 blocks (128 elements, 72 bytes). The qs bytes of blocks A..D of a
 * row, gathered by one word permute of the group's bytes 0..63 (A..C) and a 16-byte insert (D, from
 * byte 56) into z = [qs_A | qs_B | qs_C | qs_D], give lo = z & 15 (byte 16b+i = element i of block
 * b) and hi = z >> 4 (element 16+i; one GFNI affine op where allowed, slmx_q4k_gfni_ok, else
 * shift + and). The
 * activation chunks of the group (slmx_xb_chunk, unchanged) are rearranged to match once for all
 * weight rows: xlo = [q_A[0:16], q_B[0:16], q_C[0:16], q_D[0:16]] and xhi the second halves are
 * 128-bit lanes of the two chunks, d and the offset correction c permuted to int32 lanes 4b..4b+3
 * = block b. So int32 lane l holds the 8 products of block l/4's elements 4(l%4)..+3 and
 * 16+4(l%4)..+3 (plus c at lane 4b): t = dpbusd(dpbusd(c, lo, xlo), hi, xhi), then
 * f += float(t) * (d_w * d_x) per lane: one convert and one FMA per 128 weights; the four f16
 * weight scales come from the same 64-byte load (a word permute to 16 lanes, one convert). The
 * M = 1 body, the panel unpack (panel chunk 2g: lo and the scales, 2g+1: hi) and the panel
 * micro-kernel do the same arithmetic, so M = 1 is bit-identical to M > 1. A row's last group may
 * hold 1..3 blocks: it is decoded from a zeroed copy (never reading past the row), the absent
 * activation chunk read as zeros. (Q5_0 in this layout measured no faster than the 2-block body on
 * this core, whose shuffles run on one port, and moved Gemma 3's rounding; it keeps that body.) */
static const int16_t QFN(slmx_g4_widx)[32] __attribute__((aligned(64))) = {
    1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 19, 20, 21, 22, 23, 24, 25, 26, 0, 0, 0, 0, 0, 0, 0, 0};
static const int16_t QFN(slmx_g4_didx)[32] __attribute__((aligned(64))) = {
    0, 0, 0, 0, 9, 9, 9, 9, 18, 18, 18, 18, 27, 27, 27, 27};
static const int32_t QFN(slmx_g4_xdidx)[16] __attribute__((aligned(64))) = {0, 0, 0, 0, 8, 8, 8, 8, 16, 16, 16, 16, 24, 24, 24, 24};
static const int32_t QFN(slmx_g4_xcidx)[16] __attribute__((aligned(64))) = {0, 1, 1, 1, 8, 1, 1, 1, 16, 1, 1, 1, 24, 1, 1, 1};

#define SLMX_G4_GFNI 2
static int slmx_q4k_gfni_ok(void);   /* below: GFNI present and allowed (shared with Q4_K) */

/* x >> 4 per byte by GFNI's affine op: inline assembly, so that only a caller that checked the
 * CPU runs it (the rest of this body needs no GFNI target). */
SLMX_ALWAYS_INLINE QTARGET __m512i QFN(slmx_gf_hi4)(__m512i x) {
    return QFN(slmx_gf_affine)(x, _mm512_set1_epi64(0x1020408000000000ll));   /* bit i of each byte = bit i+4 */
}

/* The activation chunks of group g (chunks 2g, 2g+1; has1 = 0: 2g+1 absent) in the g4 lanes. */
typedef struct { __m512i lo, hi, c; __m512 d; } QFN(slmx_g4x);

SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_g4_xload)(const slmx_xb_chunk *xc, const int has1, QFN(slmx_g4x) *o) {
    __m512i q0 = _mm512_load_si512((const __m512i *)xc[0].q);
    __m512i q1 = has1 ? _mm512_load_si512((const __m512i *)xc[1].q) : _mm512_setzero_si512();
    __m512 d0 = _mm512_load_ps(xc[0].d), d1 = has1 ? _mm512_load_ps(xc[1].d) : _mm512_setzero_ps();
    __m512i c0 = _mm512_load_si512((const __m512i *)xc[0].c);
    __m512i c1 = has1 ? _mm512_load_si512((const __m512i *)xc[1].c) : _mm512_setzero_si512();
    o->lo = _mm512_shuffle_i64x2(q0, q1, _MM_SHUFFLE(2, 0, 2, 0));
    o->hi = _mm512_shuffle_i64x2(q0, q1, _MM_SHUFFLE(3, 1, 3, 1));
    o->d = _mm512_permutex2var_ps(d0, _mm512_load_si512((const __m512i *)QFN(slmx_g4_xdidx)), d1);
    o->c = _mm512_permutex2var_epi32(c0, _mm512_load_si512((const __m512i *)QFN(slmx_g4_xcidx)), c1);
}

/* One full group of 4 Q4_0 blocks at b (72 bytes): lo / hi weight bytes and the scales per lane. */
SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_g4_decode)(const int V, const uint8_t *b, __m512i *lo, __m512i *hi,
                                                    __m512 *dw) {
    const __m512i nib = _mm512_set1_epi8(0x0f);
    __m512i z0 = _mm512_loadu_si512((const void *)b);
    __m512i z = _mm512_permutexvar_epi16(_mm512_load_si512((const __m512i *)QFN(slmx_g4_widx)), z0);
    z = _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i *)(b + 56)), 3);
    __m512i zd = _mm512_permutexvar_epi16(_mm512_load_si512((const __m512i *)QFN(slmx_g4_didx)), z0);
    *dw = _mm512_cvtph_ps(_mm512_castsi512_si256(zd));
    *lo = _mm512_and_si512(z, nib);
    *hi = (V & SLMX_G4_GFNI) ? QFN(slmx_gf_hi4)(z) : _mm512_and_si512(_mm512_srli_epi16(z, 4), nib);
}

/* Group g of a row (nbk = 1..4 blocks at b): a short last group from a zeroed copy. */
SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_g4_decode_n)(const int V, const uint8_t *b, int nbk, __m512i *lo,
                                                      __m512i *hi, __m512 *dw) {
    if (nbk == 4) { QFN(slmx_g4_decode)(V, b, lo, hi, dw); return; }
    uint8_t buf[128] __attribute__((aligned(64)));
    _mm512_store_si512((__m512i *)buf, _mm512_setzero_si512());
    _mm512_store_si512((__m512i *)(buf + 64), _mm512_setzero_si512());
    memcpy(buf, b, (size_t)nbk * 18);
    QFN(slmx_g4_decode)(V, buf, lo, hi, dw);
}

/* M = 1 (see above): NR rows at once, the activation group rearranged once for all rows. */
SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_gemv_g4_body)(const int V, const uint8_t *const *rows, const uint8_t *x, int K,
                                                       float *out, int nr, size_t pf) {
    const int ts = 18;
    const int nb = K / 32, kcb = SLMX_KC / 32;
    for (int kb0 = 0; kb0 < nb; kb0 += kcb) {
        const int nblk = nb - kb0 < kcb ? nb - kb0 : kcb, nc = (nblk + 1) / 2, ng = (nblk + 3) / 4;
        const slmx_xb_chunk *xc = (const slmx_xb_chunk *)x + kb0 / 2;
        __m512 f[SLMX_NR];
        for (int r = 0; r < SLMX_NR; r++) f[r] = _mm512_setzero_ps();
        for (int g = 0; g < ng; g++) {
            const int nbk = nblk - 4 * g < 4 ? nblk - 4 * g : 4;
            QFN(slmx_g4x) xg;
            if (2 * g + 1 < nc) QFN(slmx_g4_xload)(xc + 2 * g, 1, &xg);
            else QFN(slmx_g4_xload)(xc + 2 * g, 0, &xg);
#pragma GCC unroll 4
            for (int r = 0; r < SLMX_NR; r++) {
                const uint8_t *b = rows[r] + (size_t)(kb0 + 4 * g) * ts;
                _mm_prefetch((const char *)b + pf, _MM_HINT_T0);
                _mm_prefetch((const char *)b + pf + 64, _MM_HINT_T0);
                __m512i lo, hi;
                __m512 dw;
                if (nbk == 4) QFN(slmx_g4_decode)(V, b, &lo, &hi, &dw);
                else QFN(slmx_g4_decode_n)(V, b, nbk, &lo, &hi, &dw);
                __m512i tt = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(xg.c, lo, xg.lo), hi, xg.hi);
                f[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tt), _mm512_mul_ps(dw, xg.d), f[r]);
            }
        }
        QFN(slmx_store4)(out, QFN(slmx_hsum4)(f[0], f[1], f[2], f[3]), nr, kb0 > 0);
    }
}

/* Blocks blk0 .. blk0+nblk of NR rows into g4 panel chunks: group g, row r -> chunk 2g (lo, scales)
 * and 2g+1 (hi) at index chunk * NR + r. */
SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_unpack_g4_body)(const int V, const uint8_t *const *rows, int blk0, int nblk,
                                                         slmx_pb_chunk *p, size_t pf) {
    const int ts = 18;
    const int ng = (nblk + 3) / 4;
    for (int r = 0; r < SLMX_NR; r++) {
        const uint8_t *b = rows[r] + (size_t)blk0 * ts;
        for (int g = 0; g < ng; g++) {
            const int nbk = nblk - 4 * g < 4 ? nblk - 4 * g : 4;
            _mm_prefetch((const char *)b + 4 * ts * g + pf, _MM_HINT_T0);
            _mm_prefetch((const char *)b + 4 * ts * g + pf + 64, _MM_HINT_T0);
            if (SLMX_PF2) { _mm_prefetch((const char *)b + 4 * ts * g + SLMX_PF2 * pf, _MM_HINT_T1); _mm_prefetch((const char *)b + 4 * ts * g + SLMX_PF2 * pf + 64, _MM_HINT_T1); }
            __m512i lo, hi;
            __m512 dw;
            QFN(slmx_g4_decode_n)(V, b + (size_t)4 * ts * g, nbk, &lo, &hi, &dw);
            slmx_pb_chunk *p0 = p + (size_t)(2 * g) * SLMX_NR + r, *p1 = p0 + SLMX_NR;
            _mm512_store_si512((__m512i *)p0->w, lo);
            _mm512_store_ps(p0->d, dw);
            _mm512_store_si512((__m512i *)p1->w, hi);
        }
    }
}

/* out[i, 0:nr] (+)= the g4 panel p (nc activation chunks) . activation rows x + i*ldx, i < MR */
SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_kern_g4_body)(const slmx_pb_chunk *p, int nc, const uint8_t *x, size_t ldx,
                                                       float *out, size_t ldo, int nr, int accumulate, const int MR) {
    __m512 f[4][SLMX_NR];
    for (int i = 0; i < MR; i++)
        for (int r = 0; r < SLMX_NR; r++) f[i][r] = _mm512_setzero_ps();
    const int ng = (nc + 1) / 2;
    for (int g = 0; g < ng; g++) {
        const slmx_pb_chunk *p0 = p + (size_t)(2 * g) * SLMX_NR, *p1 = p0 + SLMX_NR;
        const int has1 = 2 * g + 1 < nc;
        for (int i = 0; i < MR; i++) {
            const slmx_xb_chunk *xc = (const slmx_xb_chunk *)(x + (size_t)i * ldx) + 2 * g;
            QFN(slmx_g4x) xg;
            if (has1) QFN(slmx_g4_xload)(xc, 1, &xg);
            else QFN(slmx_g4_xload)(xc, 0, &xg);
            for (int r = 0; r < SLMX_NR; r++) {
                __m512i lo = _mm512_load_si512((const __m512i *)p0[r].w), hi = _mm512_load_si512((const __m512i *)p1[r].w);
                __m512i tt = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(xg.c, lo, xg.lo), hi, xg.hi);
                f[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tt), _mm512_mul_ps(_mm512_load_ps(p0[r].d), xg.d), f[i][r]);
            }
        }
    }
    for (int i = 0; i < MR; i++)
        QFN(slmx_store4)(out + (size_t)i * ldo, QFN(slmx_hsum4)(f[i][0], f[i][1], f[i][2], f[i][3]), nr, accumulate);
}

static QTARGET void QFN(slmx_gemv_g4)(const uint8_t *const *rows, const uint8_t *x, int K, float *out, int nr, size_t pf) {
    if (slmx_q4k_gfni_ok()) QFN(slmx_gemv_g4_body)(SLMX_G4_GFNI, rows, x, K, out, nr, pf);
    else QFN(slmx_gemv_g4_body)(0, rows, x, K, out, nr, pf);
}

static QTARGET void QFN(slmx_unpack_g4)(const uint8_t *const *rows, int blk0, int nblk, slmx_pb_chunk *p, size_t pf) {
    if (slmx_q4k_gfni_ok()) QFN(slmx_unpack_g4_body)(SLMX_G4_GFNI, rows, blk0, nblk, p, pf);
    else QFN(slmx_unpack_g4_body)(0, rows, blk0, nblk, p, pf);
}
#endif

SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_gemv_k_body)(const int t, const uint8_t *const *rows, const uint8_t *x, int K,
                                                      float *out, int nr, size_t pf) {
    const int ts = t == SLMX_T_Q4_K ? 144 : (t == SLMX_T_Q5_K ? 176 : 210);
    const int nsb = K / 256, kcs = SLMX_KC / 256;
    for (int s0 = 0; s0 < nsb; s0 += kcs) {
        const int ns = nsb - s0 < kcs ? nsb - s0 : kcs;
        __m512 f[SLMX_NR];
        for (int r = 0; r < SLMX_NR; r++) f[r] = _mm512_setzero_ps();
        for (int s = 0; s < ns; s++) {
            const slmx_xk_block *xb = (const slmx_xk_block *)x + s0 + s;
            __m512i xq[4];
            for (int c = 0; c < 4; c++) xq[c] = _mm512_load_si512((const __m512i *)(xb->q + 64 * c));
            __m256i bs = _mm256_load_si256((const __m256i *)xb->bsums);
            __m512 dx = _mm512_set1_ps(xb->d);
            for (int r = 0; r < SLMX_NR; r++) {
                const uint8_t *b = rows[r] + (size_t)(s0 + s) * ts;
                for (int l = 0; l < ts; l += 64) _mm_prefetch((const char *)b + pf + l, _MM_HINT_T0);
                if (SLMX_PF2) for (int l = 0; l < ts; l += 64) _mm_prefetch((const char *)b + SLMX_PF2 * pf + l, _MM_HINT_T1);
                QFN(slmx_kmeta) m;
                QFN(slmx_k_meta)(t, b, &m);
                __m512i p[4];
                for (int c = 0; c < 4; c++) p[c] = _mm512_maddubs_epi16(QFN(slmx_k_chunk_q)(t, b, &m, c), xq[c]);
#if QVNNI
                __m512i tt = _mm512_dpwssd_epi32(_mm512_setzero_si512(), p[0], QFN(slmx_k_chunk_sc)(t, &m, 0));
                tt = _mm512_dpwssd_epi32(tt, p[1], QFN(slmx_k_chunk_sc)(t, &m, 1));
                tt = _mm512_dpwssd_epi32(tt, p[2], QFN(slmx_k_chunk_sc)(t, &m, 2));
                tt = _mm512_dpwssd_epi32(tt, p[3], QFN(slmx_k_chunk_sc)(t, &m, 3));
#else
                __m512i tt = _mm512_add_epi32(
                    _mm512_add_epi32(_mm512_madd_epi16(p[0], QFN(slmx_k_chunk_sc)(t, &m, 0)),
                                     _mm512_madd_epi16(p[1], QFN(slmx_k_chunk_sc)(t, &m, 1))),
                    _mm512_add_epi32(_mm512_madd_epi16(p[2], QFN(slmx_k_chunk_sc)(t, &m, 2)),
                                     _mm512_madd_epi16(p[3], QFN(slmx_k_chunk_sc)(t, &m, 3))));
#endif
                __m256i mm = _mm256_madd_epi16(m.coef, bs);
                f[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tt), _mm512_mul_ps(_mm512_set1_ps(m.d), dx), f[r]);
                f[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_zextsi256_si512(mm)),
                                       _mm512_mul_ps(_mm512_set1_ps(m.cs), dx), f[r]);
            }
        }
        QFN(slmx_store4)(out, QFN(slmx_hsum4)(f[0], f[1], f[2], f[3]), nr, s0 > 0);
    }
}

/* Q4_K, M = 1 (VNNI; AVX-512 with madd + add for dpwssd): the same int32 lanes and float operations as slmx_kern_k_body with MR = 1
 * (bit-identical), arranged for this core's ports: shuffles (and shifts) issue on one port, the
 * integer/float multiply-adds on two, so the kernel avoids shuffles per row. Per super-block:
 *  - the 16-byte headers (d, dmin, 12 scale bytes) of the NR rows are gathered into one zmm
 *    (row r in 128-bit lane r) and their 6-bit scales/mins decoded for all rows at once into
 *    dec[16 r ..] = [sc0..3 | m0..3 | sc4..7 | m4..7]; [d*dx, (-dmin)*dx] of all rows in one mul;
 *    both go through a stack buffer, so each row reads them with broadcast loads;
 *  - per row and 64-element chunk c: qs[32c..32c+31] broadcast to both halves of a zmm, split to
 *    [low nibbles | high nibbles] = the panel's w chunk c by one GFNI affine byte transform (where
 *    the CPU has GFNI; else a masked vpmulhuw >> 4 and an and: no shuffle port either way);
 *    maddubs with the activation chunk and dpwssd with the chunk's int16 scales (one in-lane
 *    vpshufb of the row's dec bytes), exactly the panel kernel's lanes.
 * The body is quant_simd_q4k.h, instantiated twice (with and without GFNI). Prefetch: at least
 * 8 KB (whole row groups) ahead. */
static const int8_t QFN(slmx_q4k_hidx)[2][16] __attribute__((aligned(16))) = {
    {4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 12, 13, 14, 15},               /* [A = s0..7 | C C] */
    {-128, -128, -128, -128, -128, -128, -128, -128, 4, 5, 6, 7, 8, 9, 10, 11}}; /* [0 | A]   */
/* vpshufb indices into a row's dec bytes: [c] the int16 multipliers of chunk c's maddubs lanes
 * (sc[2c] in 128-bit lanes 0-1, sc[2c+1] in 2-3), [4] the 16-sum coefficients m[j/2] (ymm) */
#define SLMX_Q4K_W(p) (p), -128, (p), -128, (p), -128, (p), -128, (p), -128, (p), -128, (p), -128, (p), -128
static const int8_t QFN(slmx_q4k_sidx)[5][64] __attribute__((aligned(64))) = {
    {SLMX_Q4K_W(0), SLMX_Q4K_W(0), SLMX_Q4K_W(1), SLMX_Q4K_W(1)},
    {SLMX_Q4K_W(2), SLMX_Q4K_W(2), SLMX_Q4K_W(3), SLMX_Q4K_W(3)},
    {SLMX_Q4K_W(8), SLMX_Q4K_W(8), SLMX_Q4K_W(9), SLMX_Q4K_W(9)},
    {SLMX_Q4K_W(10), SLMX_Q4K_W(10), SLMX_Q4K_W(11), SLMX_Q4K_W(11)},
    {4, -128, 4, -128, 5, -128, 5, -128, 6, -128, 6, -128, 7, -128, 7, -128,
     12, -128, 12, -128, 13, -128, 13, -128, 14, -128, 14, -128, 15, -128, 15, -128}};
#undef SLMX_Q4K_W

#define SLMX_Q4K_FN QFN(slmx_gemv_q4k)
#define SLMX_Q4K_TARGET QTARGET
#define SLMX_Q4K_GFNI 0
#include "quant_simd_q4k.h"
#if QVNNI
#define SLMX_Q4K_FN QFN(slmx_gemv_q4k_gfni)
#define SLMX_Q4K_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,gfni")))
#define SLMX_Q4K_GFNI 1
#include "quant_simd_q4k.h"

/* GFNI (CPUID.7.0:ECX bit 8) for the Q4_K kernel; SLMX_GFNI=0 in the environment, or
 * slmx_q4k_set_gfni(0) (tests), uses the other nibble split. */
static int slmx_q4k_gfni_state = -1;
static int slmx_q4k_gfni_ok(void) {
    if (slmx_q4k_gfni_state < 0) {
        unsigned r[4];
        slmx_cpuid(0, 0, r);
        int ok = 0;
        if (r[0] >= 7) { slmx_cpuid(7, 0, r); ok = (r[2] >> 8) & 1; }
        const char *env = getenv("SLMX_GFNI");
        if (env && strcmp(env, "0") == 0) ok = 0;
        slmx_q4k_gfni_state = ok;
    }
    return slmx_q4k_gfni_state;
}
static int slmx_q4k_set_gfni(int allowed) {
    slmx_q4k_gfni_state = -1;
    if (slmx_q4k_gfni_ok() && !allowed) slmx_q4k_gfni_state = 0;
    return slmx_q4k_gfni_state;
}
#endif

static QTARGET void QFN(slmx_gemv)(int t, const uint8_t *const *rows, const uint8_t *x, int K, float *out, int nr, size_t pf) {
    switch (t) {
    case SLMX_T_Q8_0: QFN(slmx_gemv_b32_body)(SLMX_T_Q8_0, rows, x, K, out, nr, pf); break;
#if QVNNI
    case SLMX_T_Q4_0: QFN(slmx_gemv_g4)(rows, x, K, out, nr, pf); break;
    case SLMX_T_Q5_0:
        if (slmx_q4k_gfni_ok()) QFN(slmx_gemv_b4_body)(SLMX_T_Q5_0, 1, rows, x, K, out, nr, pf);
        else QFN(slmx_gemv_b4_body)(SLMX_T_Q5_0, 0, rows, x, K, out, nr, pf);
        break;
#else
    case SLMX_T_Q4_0: QFN(slmx_gemv_b32_body)(SLMX_T_Q4_0, rows, x, K, out, nr, pf); break;
    case SLMX_T_Q5_0: QFN(slmx_gemv_b32_body)(SLMX_T_Q5_0, rows, x, K, out, nr, pf); break;
#endif
#if QVNNI
    case SLMX_T_Q4_K:
        if (slmx_q4k_gfni_ok()) QFN(slmx_gemv_q4k_gfni)(rows, x, K, out, nr, pf);
        else QFN(slmx_gemv_q4k)(rows, x, K, out, nr, pf);
        break;
#else
    case SLMX_T_Q4_K: QFN(slmx_gemv_q4k)(rows, x, K, out, nr, pf); break;
#endif
    case SLMX_T_Q5_K: QFN(slmx_gemv_k_body)(SLMX_T_Q5_K, rows, x, K, out, nr, pf); break;
    default: QFN(slmx_gemv_k_body)(SLMX_T_Q6_K, rows, x, K, out, nr, pf); break;
    }
}

/* 16 weights of row type WT (F32/F16/BF16) at element k, as float; n < 16 masks the tail. */
SLMX_ALWAYS_INLINE QTARGET __m512 QFN(slmx_load_wf)(const int WT, const uint8_t *row, int k, __mmask16 m) {
    if (WT == SLMX_T_F32) return _mm512_maskz_loadu_ps(m, row + 4 * (size_t)k);
    __m256i h = _mm256_maskz_loadu_epi16(m, row + 2 * (size_t)k);
    if (WT == SLMX_T_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

SLMX_ALWAYS_INLINE QTARGET void QFN(slmx_kern_f_body)(const int WT, const uint8_t *const *rows, const float *x, size_t ldx,
                                                      int K, float *out, size_t ldo, int nr, const int MR) {
    __m512 f[4][SLMX_NR];
    for (int i = 0; i < MR; i++)
        for (int r = 0; r < SLMX_NR; r++) f[i][r] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 wv[SLMX_NR];
        for (int r = 0; r < SLMX_NR; r++) wv[r] = QFN(slmx_load_wf)(WT, rows[r], k, (__mmask16)0xffff);
        for (int i = 0; i < MR; i++) {
            __m512 xv = _mm512_loadu_ps(x + (size_t)i * ldx + k);
            for (int r = 0; r < SLMX_NR; r++) f[i][r] = _mm512_fmadd_ps(xv, wv[r], f[i][r]);
        }
    }
    if (k < K) {
        __mmask16 m = (__mmask16)((1u << (K - k)) - 1u);
        __m512 wv[SLMX_NR];
        for (int r = 0; r < SLMX_NR; r++) wv[r] = QFN(slmx_load_wf)(WT, rows[r], k, m);
        for (int i = 0; i < MR; i++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + (size_t)i * ldx + k);
            for (int r = 0; r < SLMX_NR; r++) f[i][r] = _mm512_fmadd_ps(xv, wv[r], f[i][r]);
        }
    }
    for (int i = 0; i < MR; i++)
        QFN(slmx_store4)(out + (size_t)i * ldo, QFN(slmx_hsum4)(f[i][0], f[i][1], f[i][2], f[i][3]), nr, 0);
}

/* Out-of-line instances: one per (type, MR). */
#define SLMX_Q_INST_B32(MRV)                                                                                   \
    static QTARGET void QFN(slmx_kern_b32_u##MRV)(const slmx_pb_chunk *p, int nc, const uint8_t *x, size_t ldx, \
                                                  float *out, size_t ldo, int nr, int acc) {                   \
        QFN(slmx_kern_b32_body)(p, nc, x, ldx, out, ldo, nr, acc, MRV, 0);                                     \
    }                                                                                                          \
    static QTARGET void QFN(slmx_kern_b32_s##MRV)(const slmx_pb_chunk *p, int nc, const uint8_t *x, size_t ldx, \
                                                  float *out, size_t ldo, int nr, int acc) {                   \
        QFN(slmx_kern_b32_body)(p, nc, x, ldx, out, ldo, nr, acc, MRV, 1);                                     \
    }                                                                                                          \
    static QTARGET void QFN(slmx_kern_k_##MRV)(const slmx_pk_block *p, int nsb, const uint8_t *x, size_t ldx,    \
                                               float *out, size_t ldo, int nr, int acc) {                      \
        QFN(slmx_kern_k_body)(p, nsb, x, ldx, out, ldo, nr, acc, MRV);                                         \
    }                                                                                                          \
    static QTARGET void QFN(slmx_kern_f32_##MRV)(const uint8_t *const *rows, const float *x, size_t ldx, int K,  \
                                                 float *out, size_t ldo, int nr) {                             \
        QFN(slmx_kern_f_body)(SLMX_T_F32, rows, x, ldx, K, out, ldo, nr, MRV);                                 \
    }                                                                                                          \
    static QTARGET void QFN(slmx_kern_f16_##MRV)(const uint8_t *const *rows, const float *x, size_t ldx, int K,  \
                                                 float *out, size_t ldo, int nr) {                             \
        QFN(slmx_kern_f_body)(SLMX_T_F16, rows, x, ldx, K, out, ldo, nr, MRV);                                 \
    }                                                                                                          \
    static QTARGET void QFN(slmx_kern_bf16_##MRV)(const uint8_t *const *rows, const float *x, size_t ldx, int K, \
                                                  float *out, size_t ldo, int nr) {                            \
        QFN(slmx_kern_f_body)(SLMX_T_BF16, rows, x, ldx, K, out, ldo, nr, MRV);                                \
    }

SLMX_Q_INST_B32(1)
SLMX_Q_INST_B32(2)
SLMX_Q_INST_B32(3)
SLMX_Q_INST_B32(4)
#undef SLMX_Q_INST_B32

#if QVNNI
#define SLMX_Q_INST_G4(MRV)                                                                                    \
    static QTARGET void QFN(slmx_kern_g4_##MRV)(const slmx_pb_chunk *p, int nc, const uint8_t *x, size_t ldx,   \
                                                float *out, size_t ldo, int nr, int acc) {                     \
        QFN(slmx_kern_g4_body)(p, nc, x, ldx, out, ldo, nr, acc, MRV);                                         \
    }
SLMX_Q_INST_G4(1)
SLMX_Q_INST_G4(2)
SLMX_Q_INST_G4(3)
SLMX_Q_INST_G4(4)
#undef SLMX_Q_INST_G4
#endif

static QTARGET void QFN(slmx_unpack_b32)(int t, const uint8_t *const *rows, int blk0, int nblk, slmx_pb_chunk *p, size_t pf) {
    if (t == SLMX_T_Q8_0) QFN(slmx_unpack_b32_body)(SLMX_T_Q8_0, rows, blk0, nblk, p, pf);
    else if (t == SLMX_T_Q4_0) QFN(slmx_unpack_b32_body)(SLMX_T_Q4_0, rows, blk0, nblk, p, pf);
    else QFN(slmx_unpack_b32_body)(SLMX_T_Q5_0, rows, blk0, nblk, p, pf);
}

static QTARGET void QFN(slmx_unpack_k)(int t, const uint8_t *const *rows, int sb0, int nsb, slmx_pk_block *p, size_t pf) {
    if (t == SLMX_T_Q4_K) QFN(slmx_unpack_k_body)(SLMX_T_Q4_K, rows, sb0, nsb, p, pf);
    else if (t == SLMX_T_Q5_K) QFN(slmx_unpack_k_body)(SLMX_T_Q5_K, rows, sb0, nsb, p, pf);
    else QFN(slmx_unpack_k_body)(SLMX_T_Q6_K, rows, sb0, nsb, p, pf);
}

typedef void (*QFN(slmx_kb32_fn))(const slmx_pb_chunk *, int, const uint8_t *, size_t, float *, size_t, int, int);
typedef void (*QFN(slmx_kk_fn))(const slmx_pk_block *, int, const uint8_t *, size_t, float *, size_t, int, int);
typedef void (*QFN(slmx_kf_fn))(const uint8_t *const *, const float *, size_t, int, float *, size_t, int);

/* See slmx_q_linear_range. */
static QTARGET void QFN(slmx_linear_range)(int t, const uint8_t *w, size_t rb, int64_t n0, int64_t n1,
                                           const uint8_t *x, size_t ldx, int M, int K, float *out, size_t ldo,
                                           void *scratch) {
    const int is_signed = (t == SLMX_T_Q8_0) && !QVNNI;
    QFN(slmx_kb32_fn) kb[5] = {0, QFN(slmx_kern_b32_u1), QFN(slmx_kern_b32_u2), QFN(slmx_kern_b32_u3), QFN(slmx_kern_b32_u4)};
    if (is_signed) { kb[1] = QFN(slmx_kern_b32_s1); kb[2] = QFN(slmx_kern_b32_s2); kb[3] = QFN(slmx_kern_b32_s3); kb[4] = QFN(slmx_kern_b32_s4); }
#if QVNNI
    const int g4 = t == SLMX_T_Q4_0;      /* the g4 panel (see slmx_gemv_g4_body) */
    if (g4) { kb[1] = QFN(slmx_kern_g4_1); kb[2] = QFN(slmx_kern_g4_2); kb[3] = QFN(slmx_kern_g4_3); kb[4] = QFN(slmx_kern_g4_4); }
#endif
    QFN(slmx_kk_fn) kk[5] = {0, QFN(slmx_kern_k_1), QFN(slmx_kern_k_2), QFN(slmx_kern_k_3), QFN(slmx_kern_k_4)};
    QFN(slmx_kf_fn) kf[5] = {0, QFN(slmx_kern_f32_1), QFN(slmx_kern_f32_2), QFN(slmx_kern_f32_3), QFN(slmx_kern_f32_4)};
    if (t == SLMX_T_F16) { kf[1] = QFN(slmx_kern_f16_1); kf[2] = QFN(slmx_kern_f16_2); kf[3] = QFN(slmx_kern_f16_3); kf[4] = QFN(slmx_kern_f16_4); }
    if (t == SLMX_T_BF16) { kf[1] = QFN(slmx_kern_bf16_1); kf[2] = QFN(slmx_kern_bf16_2); kf[3] = QFN(slmx_kern_bf16_3); kf[4] = QFN(slmx_kern_bf16_4); }

    for (int64_t n = n0; n < n1; n += SLMX_NR) {
        const int nr = (int)(n1 - n < SLMX_NR ? n1 - n : SLMX_NR);
        const uint8_t *rows[SLMX_NR];
        for (int r = 0; r < SLMX_NR; r++) rows[r] = w + (size_t)(n + (r < nr ? r : nr - 1)) * rb;
        float *o = out + n;
        if (M == 1 && !slmx_is_float(t)) {
            QFN(slmx_gemv)(t, rows, x, K, o, nr, SLMX_PF_ROWS * rb);
        } else if (slmx_is_float(t)) {
            for (int m = 0; m < M; m += 4) {
                int mr = M - m < 4 ? M - m : 4;
                kf[mr](rows, (const float *)(x + (size_t)m * ldx), ldx / 4, K, o + (size_t)m * ldo, ldo, nr);
            }
        } else if (slmx_is_b32(t)) {
            const int nb = K / 32, kcb = SLMX_KC / 32;
            for (int kb0 = 0; kb0 < nb; kb0 += kcb) {
                int nblk = nb - kb0 < kcb ? nb - kb0 : kcb;
                slmx_pb_chunk *p = (slmx_pb_chunk *)scratch;
#if QVNNI
                if (g4) QFN(slmx_unpack_g4)(rows, kb0, nblk, p, SLMX_PF_ROWS * rb);
                else
#endif
                QFN(slmx_unpack_b32)(t, rows, kb0, nblk, p, SLMX_PF_ROWS * rb);
                const uint8_t *xk = x + (size_t)(kb0 / 2) * sizeof(slmx_xb_chunk);
                for (int m = 0; m < M; m += 4) {
                    int mr = M - m < 4 ? M - m : 4;
                    kb[mr](p, (nblk + 1) / 2, xk + (size_t)m * ldx, ldx, o + (size_t)m * ldo, ldo, nr, kb0 > 0);
                }
            }
        } else {
            const int nsb = K / 256, kcs = SLMX_KC / 256;
            for (int s0 = 0; s0 < nsb; s0 += kcs) {
                int ns = nsb - s0 < kcs ? nsb - s0 : kcs;
                slmx_pk_block *p = (slmx_pk_block *)scratch;
                QFN(slmx_unpack_k)(t, rows, s0, ns, p, SLMX_PF_ROWS * rb);
                const uint8_t *xk = x + (size_t)s0 * sizeof(slmx_xk_block);
                for (int m = 0; m < M; m += 4) {
                    int mr = M - m < 4 ? M - m : 4;
                    kk[mr](p, ns, xk + (size_t)m * ldx, ldx, o + (size_t)m * ldo, ldo, nr, s0 > 0);
                }
            }
        }
    }
}
