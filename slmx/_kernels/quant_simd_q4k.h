/* Q4_K M = 1 GEMV body (see quant_simd_avx512.h, which includes this for AVX-512 and twice for
 * VNNI: SLMX_Q4K_GFNI 0
 * splits the nibbles with a masked vpmulhuw + and, 1 with one GFNI affine byte transform; the
 * same integers either way). Defines SLMX_Q4K_FN with target SLMX_Q4K_TARGET. */
static SLMX_Q4K_TARGET void SLMX_Q4K_FN(const uint8_t *const *rows, const uint8_t *x, int K, float *out, int nr, size_t pf) {
    const int ts = 144;
    if (pf && pf < 8192) pf *= (8192 + pf - 1) / pf;   /* whole row groups ahead, >= 8 KB (K = 2048: 4 -> 8 rows) */
    const int nsb = K / 256, kcs = SLMX_KC / 256;
#if SLMX_Q4K_GFNI
    /* bit matrices: x & 0x0f in the lower 4 qwords, x >> 4 in the upper 4 (per byte) */
    const __m512i gfm = _mm512_inserti64x4(_mm512_set1_epi64(0x0102040800000000ll), _mm256_set1_epi64x(0x1020408000000000ll), 1);
#else
    const __m512i nib = _mm512_set1_epi8(0x0f);
    const __m512i m4096 = _mm512_set1_epi16(0x1000);              /* mulhi by 2^12 = >> 4 */
#endif
    const __m512i hidx0 = _mm512_broadcast_i32x4(_mm_load_si128((const __m128i *)QFN(slmx_q4k_hidx)[0]));
    const __m512i hidx1 = _mm512_broadcast_i32x4(_mm_load_si128((const __m128i *)QFN(slmx_q4k_hidx)[1]));
    const __m512i hsh = _mm512_broadcast_i32x4(_mm_setr_epi32(0, 0, 0, 4));
    const __m512i hm1 = _mm512_broadcast_i32x4(_mm_setr_epi32(0x3f3f3f3f, 0x3f3f3f3f, 0x0f0f0f0f, 0x0f0f0f0f));
    const __m512i hm2 = _mm512_broadcast_i32x4(_mm_setr_epi32(0, 0, 0x30303030, 0x30303030));
    const __m512i didx = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512i sidx[4];
    for (int c = 0; c < 4; c++) sidx[c] = _mm512_load_si512((const __m512i *)QFN(slmx_q4k_sidx)[c]);
    const __m256i midx = _mm256_load_si256((const __m256i *)QFN(slmx_q4k_sidx)[4]);
    const __m256 dsign = _mm256_setr_ps(0.0f, -0.0f, 0.0f, -0.0f, 0.0f, -0.0f, 0.0f, -0.0f);
    uint8_t dec[64] __attribute__((aligned(64)));
    float dd[8] __attribute__((aligned(32)));
    for (int s0 = 0; s0 < nsb; s0 += kcs) {
        const int ns = nsb - s0 < kcs ? nsb - s0 : kcs;
        __m512 f[SLMX_NR];
        for (int r = 0; r < SLMX_NR; r++) f[r] = _mm512_setzero_ps();
        for (int s = 0; s < ns; s++) {
            const slmx_xk_block *xb = (const slmx_xk_block *)x + s0 + s;
            __m512i xq[4];
            for (int c = 0; c < 4; c++) xq[c] = _mm512_load_si512((const __m512i *)(xb->q + 64 * c));
            const __m256i bs = _mm256_load_si256((const __m256i *)xb->bsums);
            const uint8_t *b[SLMX_NR];
            for (int r = 0; r < SLMX_NR; r++) {
                b[r] = rows[r] + (size_t)(s0 + s) * ts;
                /* into L2 only (the L1 prefetcher brings the lines on): 262144 x 2048 from memory at 2
                 * threads 29 vs 27 GB/s; a second prefetch further ahead, as the other bodies have, did nothing */
                _mm_prefetch((const char *)b[r] + pf, _MM_HINT_T1);
                _mm_prefetch((const char *)b[r] + pf + 64, _MM_HINT_T1);
                _mm_prefetch((const char *)b[r] + pf + 128, _MM_HINT_T1);
            }
            /* headers of the NR rows, one per 128-bit lane; decode as slmx_scale_min_k4_all */
            __m512i h = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)b[0]));
            h = _mm512_inserti32x4(h, _mm_loadu_si128((const __m128i *)b[1]), 1);
            h = _mm512_inserti32x4(h, _mm_loadu_si128((const __m128i *)b[2]), 2);
            h = _mm512_inserti32x4(h, _mm_loadu_si128((const __m128i *)b[3]), 3);
            __m512i t1 = _mm512_srlv_epi32(_mm512_shuffle_epi8(h, hidx0), hsh);
            __m512i t2 = _mm512_and_si512(_mm512_srli_epi64(_mm512_shuffle_epi8(h, hidx1), 2), hm2);
            _mm512_store_si512((__m512i *)dec, _mm512_ternarylogic_epi32(t1, hm1, t2, 0xEA));
            __m256 dh = _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutexvar_epi32(didx, h)));
            _mm256_store_ps(dd, _mm256_mul_ps(dh, _mm256_xor_ps(_mm256_set1_ps(xb->d), dsign)));
            __asm__ volatile("" ::: "memory");   /* re-read dec/dd with broadcast loads, not shuffles */
            for (int r = 0; r < SLMX_NR; r++) {
                const __m512i rb = _mm512_broadcast_i32x4(_mm_load_si128((const __m128i *)(dec + 16 * r)));
                __m512i tt = _mm512_setzero_si512();
                for (int c = 0; c < 4; c++) {
                    __m512i z = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b[r] + 16 + 32 * c)));
#if SLMX_Q4K_GFNI
                    z = _mm512_gf2p8affine_epi64_epi8(z, gfm, 0);
#else
                    z = _mm512_and_si512(_mm512_mask_mulhi_epu16(z, (__mmask32)0xffff0000u, z, m4096), nib);
#endif
#if QVNNI
                    tt = _mm512_dpwssd_epi32(tt, _mm512_maddubs_epi16(z, xq[c]), _mm512_shuffle_epi8(rb, sidx[c]));
#else
                    tt = _mm512_add_epi32(tt, _mm512_madd_epi16(_mm512_maddubs_epi16(z, xq[c]), _mm512_shuffle_epi8(rb, sidx[c])));
#endif
                }
                __m256i mm = _mm256_madd_epi16(_mm256_shuffle_epi8(_mm512_castsi512_si256(rb), midx), bs);
                f[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tt), _mm512_set1_ps(dd[2 * r]), f[r]);
                f[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_zextsi256_si512(mm)), _mm512_set1_ps(dd[2 * r + 1]), f[r]);
            }
        }
        QFN(slmx_store4)(out, QFN(slmx_hsum4)(f[0], f[1], f[2], f[3]), nr, s0 > 0);
    }
}

#undef SLMX_Q4K_FN
#undef SLMX_Q4K_TARGET
#undef SLMX_Q4K_GFNI
