/* AMX-INT8 body of quant linear for M > 1 (included by quant_simd.h).
 *
 * C (16 activation rows x 16 weight rows, int32) = A . B per block of KB elements (KB = 32, or 16
 * for Q6_K whose scales cover 16):
 *   A = 16 activation rows x KB int8, read straight from the quantized activation buffer (row
 *       stride ldx: the b32 / k layouts keep each block's 32 q's contiguous);
 *   B = KB/4 rows x 64 bytes: 16 weight rows' KB values in the VNNI-4 layout
 *       B[kk][4 n + j] = w[n][4 kk + j], unpacked once per panel of 32 weight rows.
 * Tiles: C0..C3 = tmm0..3 (2 x 2 grid of 16 x 16), A0/A1 = tmm4/5, B0/B1 = tmm6/7: 32 x 32 outputs
 * per step. Each block's int32 tile is scaled by dw[n] * dx[m] and added to float accumulators with
 * AVX-512 (the epilogue of block b runs while the tile unit computes block b+1).
 * Weights: Q8_0/Q4_0/Q5_0 signed (q - offset, tdpbssd); Q6_K signed q - 32 (tdpbssd, KB = 16);
 * Q4_K/Q5_K unsigned q (tdpbsud) with the mins term dmin*m_j * (dx * sum_j x) added per super-block.
 */
#define SLMX_TARGET_AMX __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,amx-tile,amx-int8")))

#define SLMX_AMX_NR 32        /* weight rows per panel (two B tiles) */
#define SLMX_AMX_MR 32        /* activation rows per step (two A tiles) */
#define SLMX_AMX_KC 1024      /* elements of K per panel */

typedef struct {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} slmx_tilecfg_t;

/* Scratch layout per thread (bytes): B tiles, weight scales sw[block][32], mins mw[sb][8][32],
 * float accumulators acc[32][32], two C buffers [4][16][16] int32. */
#define SLMX_AMX_TILES_BYTES (SLMX_AMX_KC * SLMX_AMX_NR)                      /* 32 KB */
#define SLMX_AMX_SW_BYTES ((SLMX_AMX_KC / 16) * SLMX_AMX_NR * 4)              /* 8 KB */
#define SLMX_AMX_MW_BYTES ((SLMX_AMX_KC / 256) * 8 * SLMX_AMX_NR * 4)         /* 4 KB */
#define SLMX_AMX_ACC_BYTES (SLMX_AMX_MR * SLMX_AMX_NR * 4)                    /* 4 KB */
#define SLMX_AMX_CBUF_BYTES (2 * 4 * 16 * 16 * 4)                            /* 8 KB */
#define SLMX_AMX_SCRATCH (SLMX_AMX_TILES_BYTES + SLMX_AMX_SW_BYTES + SLMX_AMX_MW_BYTES + \
                          SLMX_AMX_ACC_BYTES + SLMX_AMX_CBUF_BYTES)

static SLMX_TARGET_AMX void slmx_amx_config(int kb) {
    slmx_tilecfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 4; i++) { cfg.rows[i] = 16; cfg.colsb[i] = 64; }
    for (int i = 4; i < 6; i++) { cfg.rows[i] = 16; cfg.colsb[i] = (uint16_t)kb; }
    for (int i = 6; i < 8; i++) { cfg.rows[i] = (uint8_t)(kb / 4); cfg.colsb[i] = 64; }
    /* not _tile_loadconfig: GCC 12 does not see that builtin read cfg and drops the stores */
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg) : "memory");
}

/* ------------------------------------------------------------------ weight unpacking */

/* Scatter the 16 dwords of z (64 int8 values of weight row ni (0..31) = blocks b0, b0+1, ... of
 * KB elements each) into the B tiles. */
SLMX_ALWAYS_INLINE SLMX_TARGET_AMX void slmx_amx_scatter(uint8_t *tiles, const int KB, int b0, int ni, __m512i z) {
    const int tb = KB * 16;                         /* bytes of one B tile */
    const int per = KB / 4;                         /* dwords of one block */
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    /* dword l -> block b0 + l / per, row kk = l % per */
    __m512i blk = KB == 32 ? _mm512_srli_epi32(lane, 3) : _mm512_srli_epi32(lane, 2);
    __m512i kk = _mm512_and_si512(lane, _mm512_set1_epi32(per - 1));
    __m512i idx = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_add_epi32(_mm512_slli_epi32(
                      _mm512_add_epi32(blk, _mm512_set1_epi32(b0)), 1), _mm512_set1_epi32(ni >> 4)), _mm512_set1_epi32(tb)),
                  _mm512_add_epi32(_mm512_slli_epi32(kk, 6), _mm512_set1_epi32((ni & 15) * 4)));
    _mm512_i32scatter_epi32(tiles, idx, z, 1);
}

/* Panel of SLMX_AMX_NR rows, elements [k0, k0 + kc) (kc a multiple of 64 or the row's end). */
SLMX_ALWAYS_INLINE SLMX_TARGET_AMX void slmx_amx_unpack_body(const int t, const uint8_t *const *rows, int k0, int kc,
                                                             uint8_t *scratch, size_t pf) {
    uint8_t *tiles = scratch;
    float *sw = (float *)(scratch + SLMX_AMX_TILES_BYTES);
    float *mw = (float *)(scratch + SLMX_AMX_TILES_BYTES + SLMX_AMX_SW_BYTES);
    const __m512i nib = _mm512_set1_epi8(0x0f);
    if (slmx_is_b32(t)) {
        const int ts = t == SLMX_T_Q8_0 ? 34 : (t == SLMX_T_Q4_0 ? 18 : 22);
        const int nblk = kc / 32, b00 = k0 / 32;
        const __m512i off = _mm512_set1_epi8(t == SLMX_T_Q8_0 ? 0 : (t == SLMX_T_Q4_0 ? 8 : 16));
        for (int r = 0; r < SLMX_AMX_NR; r++) {
            const uint8_t *row = rows[r] + (size_t)b00 * ts;
            for (int b = 0; b < nblk; b += 2) {
                const int two = b + 1 < nblk;
                const uint8_t *bA = row + (size_t)b * ts, *bB = bA + ts;
                _mm_prefetch((const char *)bA + pf, _MM_HINT_T0);
                __m512i z;
                if (t == SLMX_T_Q8_0) {
                    __m256i a = _mm256_loadu_si256((const __m256i *)(bA + 2));
                    __m256i bb = two ? _mm256_loadu_si256((const __m256i *)(bB + 2)) : _mm256_setzero_si256();
                    z = _mm512_inserti64x4(_mm512_castsi256_si512(a), bb, 1);
                } else {
                    const int qo = t == SLMX_T_Q4_0 ? 2 : 6;
                    __m512i za = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(bA + qo)));
                    __m512i zb = two ? _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(bB + qo))) : za;
                    z = _mm512_mask_blend_epi64((__mmask8)0xf0, za, zb);
                    z = _mm512_and_si512(_mm512_mask_srli_epi16(z, (__mmask32)0xff00ff00u, z, 4), nib);
                    if (t == SLMX_T_Q5_0) {
                        uint64_t hm = slmx_load_u32(bA + 2);
                        if (two) hm |= (uint64_t)slmx_load_u32(bB + 2) << 32;
                        z = _mm512_mask_add_epi8(z, (__mmask64)hm, z, _mm512_set1_epi8(16));
                    }
                    z = _mm512_sub_epi8(z, off);
                }
                if (two) {
                    slmx_amx_scatter(tiles, 32, b, r, z);
                } else {                                 /* last odd block: only the low 8 dwords */
                    uint32_t tmp[16];
                    _mm512_storeu_si512((__m512i *)tmp, z);
                    for (int kk = 0; kk < 8; kk++)
                        memcpy(tiles + (size_t)(2 * b + (r >> 4)) * 512 + kk * 64 + (r & 15) * 4, &tmp[kk], 4);
                }
                sw[b * SLMX_AMX_NR + r] = _cvtsh_ss(slmx_load_u16(bA));
                if (two) sw[(b + 1) * SLMX_AMX_NR + r] = _cvtsh_ss(slmx_load_u16(bB));
            }
        }
        return;
    }
    const int ts = t == SLMX_T_Q4_K ? 144 : (t == SLMX_T_Q5_K ? 176 : 210);
    const int nsb = kc / 256, s00 = k0 / 256;
    const __m512i sh_l = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i sh_r = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
    for (int r = 0; r < SLMX_AMX_NR; r++) {
        for (int s = 0; s < nsb; s++) {
            const uint8_t *b = rows[r] + (size_t)(s00 + s) * ts;
            for (int l = 0; l < ts; l += 64) _mm_prefetch((const char *)b + pf + l, _MM_HINT_T0);
            if (t == SLMX_T_Q6_K) {
                const uint8_t *ql = b, *qh = b + 128;
                const int8_t *sc = (const int8_t *)(b + 192);
                float d = _cvtsh_ss(slmx_load_u16(b + 208));
                for (int c = 0; c < 4; c++) {
                    const int h = c >> 1;
                    __m512i zl = _mm512_loadu_si512((const __m512i *)(ql + 64 * h));
                    __m512i zh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qh + 32 * h)));
                    __m512i lo, hb;
                    if (c & 1) {
                        lo = _mm512_and_si512(_mm512_srli_epi16(zl, 4), nib);
                        hb = _mm512_and_si512(_mm512_srlv_epi16(zh, sh_r), _mm512_set1_epi8(0x30));
                    } else {
                        lo = _mm512_and_si512(zl, nib);
                        hb = _mm512_and_si512(_mm512_sllv_epi16(zh, sh_l), _mm512_set1_epi8(0x30));
                    }
                    __m512i z = _mm512_sub_epi8(_mm512_or_si512(lo, hb), _mm512_set1_epi8(32));
                    slmx_amx_scatter(tiles, 16, 16 * s + 4 * c, r, z);
                }
                for (int i = 0; i < 16; i++) sw[(16 * s + i) * SLMX_AMX_NR + r] = d * (float)sc[i];
            } else {
                float d = _cvtsh_ss(slmx_load_u16(b)), dmin = _cvtsh_ss(slmx_load_u16(b + 2));
                const uint8_t *qs = t == SLMX_T_Q5_K ? b + 48 : b + 16;
                uint64_t sc8, mn8;
                slmx_scale_min_k4_all(b + 4, &sc8, &mn8);
                __m512i qhz = _mm512_setzero_si512();
                if (t == SLMX_T_Q5_K) qhz = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b + 16)));
                for (int c = 0; c < 4; c++) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
                    __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
                    z = _mm512_and_si512(z, nib);
                    if (t == SLMX_T_Q5_K) {
                        __m512i sel = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * c))),
                                                         _mm256_set1_epi8((char)(1 << (2 * c + 1))), 1);
                        z = _mm512_mask_add_epi8(z, _mm512_test_epi8_mask(qhz, sel), z, _mm512_set1_epi8(16));
                    }
                    slmx_amx_scatter(tiles, 32, 8 * s + 2 * c, r, z);
                }
                for (int j = 0; j < 8; j++) {
                    sw[(8 * s + j) * SLMX_AMX_NR + r] = d * (float)((sc8 >> (8 * j)) & 0xff);
                    mw[(8 * s + j) * SLMX_AMX_NR + r] = -dmin * (float)((mn8 >> (8 * j)) & 0xff);
                }
            }
        }
    }
}

static SLMX_TARGET_AMX void slmx_amx_unpack(int t, const uint8_t *const *rows, int k0, int kc, uint8_t *scratch,
                                            size_t pf) {
    switch (t) {
    case SLMX_T_Q8_0: slmx_amx_unpack_body(SLMX_T_Q8_0, rows, k0, kc, scratch, pf); break;
    case SLMX_T_Q4_0: slmx_amx_unpack_body(SLMX_T_Q4_0, rows, k0, kc, scratch, pf); break;
    case SLMX_T_Q5_0: slmx_amx_unpack_body(SLMX_T_Q5_0, rows, k0, kc, scratch, pf); break;
    case SLMX_T_Q4_K: slmx_amx_unpack_body(SLMX_T_Q4_K, rows, k0, kc, scratch, pf); break;
    case SLMX_T_Q5_K: slmx_amx_unpack_body(SLMX_T_Q5_K, rows, k0, kc, scratch, pf); break;
    default: slmx_amx_unpack_body(SLMX_T_Q6_K, rows, k0, kc, scratch, pf); break;
    }
}

/* ------------------------------------------------------------------ tile steps */

/* acc[m][n] += C[m][n] * sw[n] * dx[m] for the 32 x 32 step; cb = 4 tiles [mt*2+nt][16][16],
 * dx of activation row m at *(float *)(xd + m * ldx). */
SLMX_ALWAYS_INLINE SLMX_TARGET_AMX void slmx_amx_epilogue(const int32_t *cb, const float *sw, const uint8_t *xd,
                                                          size_t ldx, float *acc, const int FIRST) {
    const __m512 w0 = _mm512_loadu_ps(sw), w1 = _mm512_loadu_ps(sw + 16);
    for (int mt = 0; mt < 2; mt++) {
        const int32_t *c0 = cb + mt * 512, *c1 = c0 + 256;
        const uint8_t *xm = xd + (size_t)16 * mt * ldx;
        float *a = acc + 512 * mt;
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
            __m512 dx = _mm512_set1_ps(*(const float *)(xm + (size_t)i * ldx));
            __m512 f0 = _mm512_cvtepi32_ps(_mm512_load_si512((const __m512i *)(c0 + 16 * i)));
            __m512 f1 = _mm512_cvtepi32_ps(_mm512_load_si512((const __m512i *)(c1 + 16 * i)));
            /* FIRST: acc = C * scale (an fma on zero: every block is rounded the same way) */
            __m512 a0 = FIRST ? _mm512_setzero_ps() : _mm512_load_ps(a + 32 * i);
            __m512 a1 = FIRST ? _mm512_setzero_ps() : _mm512_load_ps(a + 32 * i + 16);
            _mm512_store_ps(a + 32 * i, _mm512_fmadd_ps(f0, _mm512_mul_ps(w0, dx), a0));
            _mm512_store_ps(a + 32 * i + 16, _mm512_fmadd_ps(f1, _mm512_mul_ps(w1, dx), a1));
        }
    }
}

/* Tiles for block b: C = A(rows xa, stride ldx) . B(tiles of block b), then C -> cb. */
#define SLMX_AMX_STEP(SIGNED_W, xa, ldx, tb, cb)                              \
    do {                                                                      \
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);           \
        _tile_loadd(4, (xa), (long)(ldx));                                    \
        _tile_loadd(5, (xa) + 16 * (size_t)(ldx), (long)(ldx));               \
        _tile_loadd(6, (tb), 64);                                             \
        _tile_loadd(7, (tb) + tbytes, 64);                                    \
        if (SIGNED_W) {                                                       \
            _tile_dpbssd(0, 4, 6); _tile_dpbssd(1, 4, 7);                     \
            _tile_dpbssd(2, 5, 6); _tile_dpbssd(3, 5, 7);                     \
        } else {                                                              \
            _tile_dpbsud(0, 4, 6); _tile_dpbsud(1, 4, 7);                     \
            _tile_dpbsud(2, 5, 6); _tile_dpbsud(3, 5, 7);                     \
        }                                                                     \
        _tile_stored(0, (cb), 64); _tile_stored(1, (cb) + 256, 64);           \
        _tile_stored(2, (cb) + 512, 64); _tile_stored(3, (cb) + 768, 64);     \
    } while (0)

/* One 32 x 32 output step over the panel's kc elements: acc = sum over blocks. x points at the
 * panel's first element in activation row m0 (32 rows at stride ldx, padded rows zero). */
SLMX_ALWAYS_INLINE SLMX_TARGET_AMX void slmx_amx_tile_body(const int t, const uint8_t *scratch, int kc,
                                                           const uint8_t *x, size_t ldx, float *acc, int32_t *cbuf) {
    const int KB = t == SLMX_T_Q6_K ? 16 : 32;
    const int SIGNED_W = !(t == SLMX_T_Q4_K || t == SLMX_T_Q5_K);
    const uint8_t *tiles = scratch;
    const float *sw = (const float *)(scratch + SLMX_AMX_TILES_BYTES);
    const float *mw = (const float *)(scratch + SLMX_AMX_TILES_BYTES + SLMX_AMX_SW_BYTES);
    const size_t tbytes = (size_t)KB * 16;
    const int nblk = kc / KB;
    /* where block b's q's and dx live in an activation row */
#define SLMX_AMX_XQ(b) (slmx_is_b32(t) ? ((size_t)((b) >> 1) * sizeof(slmx_xb_chunk) + ((b) & 1) * 32) \
                                       : ((size_t)((b) * KB / 256) * sizeof(slmx_xk_block) + ((b) * KB) % 256))
#define SLMX_AMX_XD(b) (slmx_is_b32(t) ? ((size_t)((b) >> 1) * sizeof(slmx_xb_chunk) + 64 + ((b) & 1) * 32) \
                                       : ((size_t)((b) * KB / 256) * sizeof(slmx_xk_block) + offsetof(slmx_xk_block, d)))
    SLMX_AMX_STEP(SIGNED_W, x + SLMX_AMX_XQ(0), ldx, tiles, cbuf);
    for (int b = 0; b < nblk; b++) {
        int32_t *cur = cbuf + (b & 1) * 1024;
        if (b + 1 < nblk)
            SLMX_AMX_STEP(SIGNED_W, x + SLMX_AMX_XQ(b + 1), ldx, tiles + (size_t)(b + 1) * 2 * tbytes,
                          cbuf + ((b + 1) & 1) * 1024);
        if (b == 0) slmx_amx_epilogue(cur, sw, x + SLMX_AMX_XD(0), ldx, acc, 1);
        else slmx_amx_epilogue(cur, sw + (size_t)b * SLMX_AMX_NR, x + SLMX_AMX_XD(b), ldx, acc, 0);
        if (!SIGNED_W && (b & 7) == 7) {                 /* mins of super-block b / 8 */
            const int s = b >> 3;
            const uint8_t *xs = x + (size_t)s * sizeof(slmx_xk_block) + offsetof(slmx_xk_block, xs);
            for (int m = 0; m < 32; m++) {
                float *a = acc + m * 32;
                __m512 a0 = _mm512_load_ps(a), a1 = _mm512_load_ps(a + 16);
                const float *xm = (const float *)(xs + (size_t)m * ldx);
                for (int j = 0; j < 8; j++) {
                    __m512 v = _mm512_set1_ps(xm[j]);
                    a0 = _mm512_fmadd_ps(v, _mm512_loadu_ps(mw + (size_t)(8 * s + j) * SLMX_AMX_NR), a0);
                    a1 = _mm512_fmadd_ps(v, _mm512_loadu_ps(mw + (size_t)(8 * s + j) * SLMX_AMX_NR + 16), a1);
                }
                _mm512_store_ps(a, a0);
                _mm512_store_ps(a + 16, a1);
            }
        }
    }
#undef SLMX_AMX_XQ
#undef SLMX_AMX_XD
}

static SLMX_TARGET_AMX void slmx_amx_tile(int t, const uint8_t *scratch, int kc, const uint8_t *x, size_t ldx,
                                          float *acc, int32_t *cbuf) {
    switch (t) {
    case SLMX_T_Q8_0: slmx_amx_tile_body(SLMX_T_Q8_0, scratch, kc, x, ldx, acc, cbuf); break;
    case SLMX_T_Q4_0: slmx_amx_tile_body(SLMX_T_Q4_0, scratch, kc, x, ldx, acc, cbuf); break;
    case SLMX_T_Q5_0: slmx_amx_tile_body(SLMX_T_Q5_0, scratch, kc, x, ldx, acc, cbuf); break;
    case SLMX_T_Q4_K: slmx_amx_tile_body(SLMX_T_Q4_K, scratch, kc, x, ldx, acc, cbuf); break;
    case SLMX_T_Q5_K: slmx_amx_tile_body(SLMX_T_Q5_K, scratch, kc, x, ldx, acc, cbuf); break;
    default: slmx_amx_tile_body(SLMX_T_Q6_K, scratch, kc, x, ldx, acc, cbuf); break;
    }
}

/* See slmx_q_linear_range; x has M rounded up to 32 rows (the extra rows zero). */
static SLMX_TARGET_AMX void slmx_linear_range_amx(int t, const uint8_t *w, size_t rb, int64_t n0, int64_t n1,
                                                  const uint8_t *x, size_t ldx, int M, int K, float *out, size_t ldo,
                                                  void *scratch_v) {
    uint8_t *scratch = (uint8_t *)scratch_v;
    float *acc = (float *)(scratch + SLMX_AMX_TILES_BYTES + SLMX_AMX_SW_BYTES + SLMX_AMX_MW_BYTES);
    int32_t *cbuf = (int32_t *)((uint8_t *)acc + SLMX_AMX_ACC_BYTES);
    slmx_amx_config(t == SLMX_T_Q6_K ? 16 : 32);
    for (int64_t n = n0; n < n1; n += SLMX_AMX_NR) {
        const int nr = (int)(n1 - n < SLMX_AMX_NR ? n1 - n : SLMX_AMX_NR);
        const uint8_t *rows[SLMX_AMX_NR];
        for (int r = 0; r < SLMX_AMX_NR; r++) rows[r] = w + (size_t)(n + (r < nr ? r : nr - 1)) * rb;
        const __mmask16 m0 = nr >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1u);
        const __mmask16 m1 = nr >= 32 ? (__mmask16)0xffff : (nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1u) : 0);
        for (int k0 = 0; k0 < K; k0 += SLMX_AMX_KC) {
            const int kc = K - k0 < SLMX_AMX_KC ? K - k0 : SLMX_AMX_KC;
            slmx_amx_unpack(t, rows, k0, kc, scratch, (size_t)SLMX_AMX_NR * rb);
            const uint8_t *xk = x + (slmx_is_b32(t) ? (size_t)(k0 / 64) * sizeof(slmx_xb_chunk)
                                                    : (size_t)(k0 / 256) * sizeof(slmx_xk_block));
            for (int m = 0; m < M; m += SLMX_AMX_MR) {
                slmx_amx_tile(t, scratch, kc, xk + (size_t)m * ldx, ldx, acc, cbuf);
                const int mr = M - m < SLMX_AMX_MR ? M - m : SLMX_AMX_MR;
                for (int i = 0; i < mr; i++) {
                    float *o = out + (size_t)(m + i) * ldo + n;
                    __m512 v0 = _mm512_load_ps(acc + i * 32), v1 = _mm512_load_ps(acc + i * 32 + 16);
                    if (k0 > 0) {
                        v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, o));
                        v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, o + 16));
                    }
                    _mm512_mask_storeu_ps(o, m0, v0);
                    _mm512_mask_storeu_ps(o + 16, m1, v1);
                }
            }
        }
    }
    _tile_release();
}
