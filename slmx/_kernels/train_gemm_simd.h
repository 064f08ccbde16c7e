/* slmx training GEMM: C (M, N) (+)= op(A) (M, K) op(B) (K, N), fp32 and bf16 (AMX).
 *
 * Operands are read through strides, so one packer serves plain and transposed sources:
 *   a(i, k) = A[i * a_rs + k * a_cs],   b(k, n) = B[k * b_rs + n * b_cs]
 * (one of the two strides is 1). Blocks are packed into the micro-kernel's layout:
 *   fp32  A tile  (MR rows x kc):  [k][MR]         B panel (kc x NR):  [k][NR]
 *   AMX   A tile  (32 rows x kcp): [k/32][32][32]  B panel (kcp x 32): [k/2][32][2]  (bf16)
 * with zeros past the matrix edges (and past kc up to kcp = kc rounded up to 32 for AMX), so
 * micro-kernels always run full tiles and only the write-back is masked.
 *
 * Micro-kernels (C tile kept in registers; acc = 0 overwrites C, 1 adds to it):
 *   scalar 4 x 16 (portable C), AVX2 6 x 16, AVX-512 14 x 32, AMX 32 x 32 (2 x 2 tiles of 16 x 16).
 * bf16 without AMX: the fp32 packers round to bf16 (round to nearest even) and the fp32
 * micro-kernels run on the rounded values (exact products, fp32 accumulation).
 */
#ifndef SLMX_TRAIN_GEMM_SIMD_H
#define SLMX_TRAIN_GEMM_SIMD_H

#include "simd.h"
#include <stdint.h>
#include <string.h>

#if SLMX_X86
#define TG_TARGET_AMX __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")))
#endif

/* ---------------------------------------------------------------- tile shapes per level */

static inline int tg_gemm_mr(int lvl) {
    return lvl >= SLMX_SIMD_AVX512 ? 14 : (lvl >= SLMX_SIMD_AVX2 ? 6 : 4);
}
static inline int tg_gemm_nr(int lvl) {
    return lvl >= SLMX_SIMD_AVX512 ? 32 : 16;
}

/* fp32 -> bf16 bits, round to nearest even (NaN kept quiet) */
static inline uint16_t tg_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float tg_bf16_round(float f) {
    uint32_t u = (uint32_t)tg_f32_to_bf16(f) << 16;
    float r;
    memcpy(&r, &u, 4);
    return r;
}

/* order streaming stores before whatever follows (another thread reading C) */
static inline void tg_sfence(void) {
#if SLMX_X86
    _mm_sfence();
#endif
}

/* ---------------------------------------------------------------- fp32 packing */

/* A block (mc x kc) -> ceil(mc/MR) tiles of MR x kc, layout [tile][k][MR] */
static void tg_pack_a_f32(const float *A, long rs, long cs, long mc, long kc, int MR, float *dst, int rnd) {
    for (long t0 = 0; t0 < mc; t0 += MR) {
        int mr = (int)(mc - t0 < MR ? mc - t0 : MR);
        float *d = dst + t0 * kc;
        const float *a = A + t0 * rs;
        if (cs == 1) {
            for (int i = 0; i < mr; i++) {
                const float *ar = a + i * rs;
                if (rnd) for (long k = 0; k < kc; k++) d[k * MR + i] = tg_bf16_round(ar[k]);
                else     for (long k = 0; k < kc; k++) d[k * MR + i] = ar[k];
            }
            for (int i = mr; i < MR; i++)
                for (long k = 0; k < kc; k++) d[k * MR + i] = 0.0f;
        } else {
            for (long k = 0; k < kc; k++) {
                const float *ak = a + k * cs;
                float *dk = d + k * MR;
                if (rs == 1) {
                    if (rnd) for (int i = 0; i < mr; i++) dk[i] = tg_bf16_round(ak[i]);
                    else     for (int i = 0; i < mr; i++) dk[i] = ak[i];
                } else {
                    for (int i = 0; i < mr; i++) dk[i] = rnd ? tg_bf16_round(ak[i * rs]) : ak[i * rs];
                }
                for (int i = mr; i < MR; i++) dk[i] = 0.0f;
            }
        }
    }
}

/* B block (kc x nc) -> ceil(nc/NR) panels of kc x NR, layout [panel][k][NR] */
static void tg_pack_b_f32(const float *B, long rs, long cs, long kc, long nc, int NR, float *dst, int rnd) {
    for (long p0 = 0; p0 < nc; p0 += NR) {
        int nr = (int)(nc - p0 < NR ? nc - p0 : NR);
        float *d = dst + p0 * kc;
        const float *b = B + p0 * cs;
        if (cs == 1) {
            for (long k = 0; k < kc; k++) {
                const float *bk = b + k * rs;
                float *dk = d + k * NR;
                if (rnd) for (int j = 0; j < nr; j++) dk[j] = tg_bf16_round(bk[j]);
                else     for (int j = 0; j < nr; j++) dk[j] = bk[j];
                for (int j = nr; j < NR; j++) dk[j] = 0.0f;
            }
        } else {
            for (int j = 0; j < nr; j++) {
                const float *bj = b + j * cs;
                if (rs == 1) {
                    if (rnd) for (long k = 0; k < kc; k++) d[k * NR + j] = tg_bf16_round(bj[k]);
                    else     for (long k = 0; k < kc; k++) d[k * NR + j] = bj[k];
                } else {
                    for (long k = 0; k < kc; k++) d[k * NR + j] = rnd ? tg_bf16_round(bj[k * rs]) : bj[k * rs];
                }
            }
            for (int j = nr; j < NR; j++)
                for (long k = 0; k < kc; k++) d[k * NR + j] = 0.0f;
        }
    }
}

#if SLMX_X86
/* 16 x 16 transpose of 32-bit lanes, in place */
#define TG_TR16_BODY(VT, UNLO, UNHI, SHUF, SHUF4, CASTI, CASTO)                                 \
    VT t[16], u[16];                                                                          \
    for (int i = 0; i < 8; i++) {                                                             \
        t[2 * i] = UNLO(r[2 * i], r[2 * i + 1]);                                              \
        t[2 * i + 1] = UNHI(r[2 * i], r[2 * i + 1]);                                          \
    }                                                                                         \
    for (int j = 0; j < 4; j++) {                                                             \
        u[4 * j + 0] = SHUF(t[4 * j], t[4 * j + 2], 0x44);                                    \
        u[4 * j + 1] = SHUF(t[4 * j], t[4 * j + 2], 0xEE);                                    \
        u[4 * j + 2] = SHUF(t[4 * j + 1], t[4 * j + 3], 0x44);                                \
        u[4 * j + 3] = SHUF(t[4 * j + 1], t[4 * j + 3], 0xEE);                                \
    }                                                                                         \
    for (int c = 0; c < 4; c++) {                                                             \
        VT a0 = SHUF4(u[c], u[4 + c], 0x88), a1 = SHUF4(u[c], u[4 + c], 0xDD);                \
        VT b0 = SHUF4(u[8 + c], u[12 + c], 0x88), b1 = SHUF4(u[8 + c], u[12 + c], 0xDD);      \
        r[c] = SHUF4(a0, b0, 0x88);                                                           \
        r[4 + c] = SHUF4(a1, b1, 0x88);                                                       \
        r[8 + c] = SHUF4(a0, b0, 0xDD);                                                       \
        r[12 + c] = SHUF4(a1, b1, 0xDD);                                                      \
    }

SLMX_TARGET_AVX512 static inline void tg_tr16x16_ps(__m512 r[16]) {
    TG_TR16_BODY(__m512, _mm512_unpacklo_ps, _mm512_unpackhi_ps, _mm512_shuffle_ps, _mm512_shuffle_f32x4, , )
}

/* fp32 packers, AVX-512: a row-major A tile is transposed 16 x 16 at a time */
SLMX_TARGET_AVX512 static void tg_pack_a_f32_avx512(const float *A, long rs, long cs, long mc, long kc, int MR,
                                                    float *dst, int rnd) {
    if (rs == 1 && !rnd && MR == 14) {
        /* a(i, k) = A[i + k * cs]: each k is 14 consecutive floats */
        for (long t0 = 0; t0 < mc; t0 += MR) {
            long mr = mc - t0 < MR ? mc - t0 : MR;
            __mmask16 mk = (__mmask16)((1u << mr) - 1);
            float *d = dst + t0 * kc;
            const float *a = A + t0;
            for (long k = 0; k < kc; k++)
                _mm512_mask_storeu_ps(d + k * 14, (__mmask16)0x3fff, _mm512_maskz_loadu_ps(mk, a + k * cs));
        }
        return;
    }
    if (cs != 1 || rnd || MR != 14) { tg_pack_a_f32(A, rs, cs, mc, kc, MR, dst, rnd); return; }
    for (long t0 = 0; t0 < mc; t0 += MR) {
        int mr = (int)(mc - t0 < MR ? mc - t0 : MR);
        float *d = dst + t0 * kc;
        const float *a = A + t0 * rs;
        long k0 = 0;
        for (; k0 + 16 <= kc; k0 += 16) {
            __m512 r[16];
            for (int i = 0; i < 16; i++)
                r[i] = i < mr ? _mm512_loadu_ps(a + i * rs + k0) : _mm512_setzero_ps();
            tg_tr16x16_ps(r);
            /* r[k] = column k0+k: rows 0..15; keep the first 14 */
            for (int k = 0; k < 16; k++)
                _mm512_mask_storeu_ps(d + (k0 + k) * MR, (__mmask16)0x3fff, r[k]);
        }
        for (; k0 < kc; k0++) {
            for (int i = 0; i < mr; i++) d[k0 * MR + i] = a[i * rs + k0];
            for (int i = mr; i < MR; i++) d[k0 * MR + i] = 0.0f;
        }
    }
}

SLMX_TARGET_AVX512 static void tg_pack_b_f32_avx512(const float *B, long rs, long cs, long kc, long nc, int NR,
                                                    float *dst, int rnd) {
    if (cs == 1 && !rnd && NR == 32) {
        /* b(k, n) = B[k * rs + n]: each k is 32 consecutive floats */
        for (long p0 = 0; p0 < nc; p0 += NR) {
            long nr = nc - p0 < NR ? nc - p0 : NR;
            __mmask16 m0 = nr >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
            __mmask16 m1 = nr >= 32 ? (__mmask16)0xffff : (nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : (__mmask16)0);
            float *d = dst + p0 * kc;
            const float *b = B + p0;
            for (long k = 0; k < kc; k++) {
                _mm512_storeu_ps(d + k * 32, _mm512_maskz_loadu_ps(m0, b + k * rs));
                _mm512_storeu_ps(d + k * 32 + 16, _mm512_maskz_loadu_ps(m1, b + k * rs + 16));
            }
        }
        return;
    }
    if (rs != 1 || rnd || NR != 32) { tg_pack_b_f32(B, rs, cs, kc, nc, NR, dst, rnd); return; }
    /* b(k, n) = W[n * cs + k]: 16 columns x 16 depths transposed at a time */
    for (long p0 = 0; p0 < nc; p0 += NR) {
        int nr = (int)(nc - p0 < NR ? nc - p0 : NR);
        float *d = dst + p0 * kc;
        for (int h = 0; h < 2; h++) {
            const float *w = B + (p0 + 16 * h) * cs;
            int nv = nr - 16 * h;
            if (nv > 16) nv = 16;
            long k0 = 0;
            for (; k0 + 16 <= kc; k0 += 16) {
                __m512 r[16];
                for (int j = 0; j < 16; j++)
                    r[j] = j < nv ? _mm512_loadu_ps(w + j * cs + k0) : _mm512_setzero_ps();
                tg_tr16x16_ps(r);
                for (int k = 0; k < 16; k++) _mm512_storeu_ps(d + (k0 + k) * NR + 16 * h, r[k]);
            }
            for (; k0 < kc; k0++)
                for (int j = 0; j < 16; j++) d[k0 * NR + 16 * h + j] = j < nv ? w[j * cs + k0] : 0.0f;
        }
    }
}
#endif

/* ---------------------------------------------------------------- fp32 micro-kernels */

static void tg_ukr_scalar(long kc, const float *A, const float *B, float *C, long ldc, int mr, int nr, int acc) {
    float c[4][16];
    if (acc < 0) acc = 0;
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 16; j++) c[i][j] = 0.0f;
    for (long k = 0; k < kc; k++) {
        const float *b = B + k * 16;
        for (int i = 0; i < 4; i++) {
            float a = A[k * 4 + i];
            for (int j = 0; j < 16; j++) c[i][j] += a * b[j];
        }
    }
    for (int i = 0; i < mr; i++) {
        float *cr = C + i * ldc;
        if (acc) for (int j = 0; j < nr; j++) cr[j] += c[i][j];
        else     for (int j = 0; j < nr; j++) cr[j] = c[i][j];
    }
}

#if SLMX_X86
SLMX_TARGET_AVX2 static void tg_ukr_avx2(long kc, const float *A, const float *B, float *C, long ldc, int mr, int nr, int acc) {
    __m256 c[6][2];
    if (acc < 0) acc = 0;
#pragma GCC unroll 6
    for (int i = 0; i < 6; i++) { c[i][0] = _mm256_setzero_ps(); c[i][1] = _mm256_setzero_ps(); }
    for (long k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(B + k * 16), b1 = _mm256_loadu_ps(B + k * 16 + 8);
#pragma GCC unroll 6
        for (int i = 0; i < 6; i++) {
            __m256 a = _mm256_broadcast_ss(A + k * 6 + i);
            c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
        }
    }
    if (nr == 16) {
#pragma GCC unroll 6
        for (int i = 0; i < 6; i++) {
            if (i >= mr) break;
            float *cr = C + i * ldc;
            if (acc) {
                c[i][0] = _mm256_add_ps(c[i][0], _mm256_loadu_ps(cr));
                c[i][1] = _mm256_add_ps(c[i][1], _mm256_loadu_ps(cr + 8));
            }
            _mm256_storeu_ps(cr, c[i][0]);
            _mm256_storeu_ps(cr + 8, c[i][1]);
        }
    } else {
        float tmp[16];
        for (int i = 0; i < mr; i++) {
            float *cr = C + i * ldc;
            _mm256_storeu_ps(tmp, c[i][0]);
            _mm256_storeu_ps(tmp + 8, c[i][1]);
            if (acc) for (int j = 0; j < nr; j++) cr[j] += tmp[j];
            else     for (int j = 0; j < nr; j++) cr[j] = tmp[j];
        }
    }
}

SLMX_TARGET_AVX512 static void tg_ukr_avx512(long kc, const float *A, const float *B, float *C, long ldc, int mr, int nr, int acc) {
    int stream = acc < 0;     /* acc = -1: overwrite C with streaming stores (full, aligned tiles) */
    if (stream) acc = 0;
    if (!stream) {
        /* fetch the C tile while the products run: its rows are usually far from L1 */
        int np = mr < 14 ? mr : 14;
        for (int i = 0; i < np; i++) {
            _mm_prefetch((const char *)(C + i * ldc), _MM_HINT_T0);
            _mm_prefetch((const char *)(C + i * ldc + 16), _MM_HINT_T0);
        }
    }
    __m512 c[14][2];
#pragma GCC unroll 14
    for (int i = 0; i < 14; i++) { c[i][0] = _mm512_setzero_ps(); c[i][1] = _mm512_setzero_ps(); }
    for (long k = 0; k < kc; k++) {
        __m512 b0 = _mm512_loadu_ps(B), b1 = _mm512_loadu_ps(B + 16);
        _mm_prefetch((const char *)(B + 32 * 8), _MM_HINT_T0);
#pragma GCC unroll 14
        for (int i = 0; i < 14; i++) {
            __m512 a = _mm512_set1_ps(A[i]);
            c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
        }
        A += 14;
        B += 32;
    }
    if (stream && mr == 14 && nr == 32) {
#pragma GCC unroll 14
        for (int i = 0; i < 14; i++) {
            _mm512_stream_ps(C + i * ldc, c[i][0]);
            _mm512_stream_ps(C + i * ldc + 16, c[i][1]);
        }
        return;
    }
    __mmask16 m0 = nr >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? (__mmask16)0xffff : (nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : (__mmask16)0);
#pragma GCC unroll 14
    for (int i = 0; i < 14; i++) {
        if (i >= mr) break;
        float *cr = C + i * ldc;
        if (acc) {
            c[i][0] = _mm512_add_ps(c[i][0], _mm512_maskz_loadu_ps(m0, cr));
            c[i][1] = _mm512_add_ps(c[i][1], _mm512_maskz_loadu_ps(m1, cr + 16));
        }
        _mm512_mask_storeu_ps(cr, m0, c[i][0]);
        _mm512_mask_storeu_ps(cr + 16, m1, c[i][1]);
    }
}
#endif

typedef void (*tg_ukr_t)(long, const float *, const float *, float *, long, int, int, int);

static inline tg_ukr_t tg_gemm_ukr(int lvl) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512) return tg_ukr_avx512;
    if (lvl >= SLMX_SIMD_AVX2) return tg_ukr_avx2;
#endif
    return tg_ukr_scalar;
}

static inline void tg_pack_a_lvl(int lvl, const float *A, long rs, long cs, long mc, long kc, int MR, float *dst, int rnd) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512) { tg_pack_a_f32_avx512(A, rs, cs, mc, kc, MR, dst, rnd); return; }
#endif
    tg_pack_a_f32(A, rs, cs, mc, kc, MR, dst, rnd);
}

static inline void tg_pack_b_lvl(int lvl, const float *B, long rs, long cs, long kc, long nc, int NR, float *dst, int rnd) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512) { tg_pack_b_f32_avx512(B, rs, cs, kc, nc, NR, dst, rnd); return; }
#endif
    tg_pack_b_f32(B, rs, cs, kc, nc, NR, dst, rnd);
}

/* ---------------------------------------------------------------- AMX bf16 */

#if SLMX_X86
typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tg_amx_cfg_t;

/* The 8 tiles as 16 rows x 64 bytes. A static object: GCC 12 drops stores to a local one
 * before ldtilecfg (it does not see the instruction read them). */
static const tg_amx_cfg_t tg_amx_cfg __attribute__((aligned(64))) = {
    1, 0, {0}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

/* Configure the tiles (call in every thread before tg_ukr_amx). */
TG_TARGET_AMX static void tg_amx_begin(void) { _tile_loadconfig(&tg_amx_cfg); }
TG_TARGET_AMX static void tg_amx_end(void) { _tile_release(); }

/* interleave the bf16 of lo (16 floats) and hi (16 floats): [lo0 hi0 lo1 hi1 ...] (32 bf16) */
TG_TARGET_AMX static inline __m512i tg_bf16_pairs(__m512 lo, __m512 hi) {
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                         23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    __m512i v = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);   /* [lo(16) | hi(16)] */
    return _mm512_permutexvar_epi16(idx, v);
}

TG_TARGET_AMX static inline __mmask16 tg_m16(long n) {
    return n >= 16 ? (__mmask16)0xffff : (n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1));
}

/* A block (mc x kc) -> ceil(mc/32) tiles of 32 rows x kcp (kcp = kc rounded up to 32),
 * layout [tile][k/32][32 rows][32 k] bf16 */
TG_TARGET_AMX static void tg_pack_a_amx(const float *A, long rs, long cs, long mc, long kc, uint16_t *dst) {
    long kcp = (kc + 31) & ~31L, nkb = kcp / 32;
    for (long t0 = 0; t0 < mc; t0 += 32) {
        uint16_t *d = dst + t0 * kcp;
        const float *a = A + t0 * rs;
        long mr = mc - t0 < 32 ? mc - t0 : 32;
        if (cs == 1) {
            for (long i = 0; i < 32; i++) {
                const float *ar = a + i * rs;
                for (long kb = 0; kb < nkb; kb++) {
                    __m512i v;
                    if (i < mr) {
                        long k0 = kb * 32;
                        __m512 lo = _mm512_maskz_loadu_ps(tg_m16(kc - k0), ar + k0);
                        __m512 hi = _mm512_maskz_loadu_ps(tg_m16(kc - k0 - 16), ar + k0 + 16);
                        v = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
                    } else {
                        v = _mm512_setzero_si512();
                    }
                    _mm512_storeu_si512((void *)(d + (kb * 32 + i) * 32), v);
                }
            }
        } else {
            /* a(i, k) = A[i * rs + k * cs] with rs == 1: 16 rows x 16 k-pairs transposed at a time */
            for (long kb = 0; kb < nkb; kb++) {
                for (int h = 0; h < 2; h++) {
                    long i0 = 16 * h;
                    __mmask16 mi = tg_m16(mr - i0);
                    __m512 r[16];
                    for (int p = 0; p < 16; p++) {
                        long k = kb * 32 + 2 * p;
                        __m512 lo = k < kc ? _mm512_maskz_loadu_ps(mi, a + i0 + k * cs) : _mm512_setzero_ps();
                        __m512 hi = k + 1 < kc ? _mm512_maskz_loadu_ps(mi, a + i0 + (k + 1) * cs) : _mm512_setzero_ps();
                        r[p] = _mm512_castsi512_ps(tg_bf16_pairs(lo, hi));   /* lane i: row i0+i, pair p */
                    }
                    tg_tr16x16_ps(r);                                          /* r[i]: row i0+i, lanes = pairs */
                    for (int i = 0; i < 16; i++)
                        _mm512_storeu_ps((float *)(d + (kb * 32 + i0 + i) * 32), r[i]);
                }
            }
        }
    }
}

/* B block (kc x nc) -> ceil(nc/32) panels of kcp x 32, layout [panel][k/2][32 cols][2] bf16 */
TG_TARGET_AMX static void tg_pack_b_amx(const float *B, long rs, long cs, long kc, long nc, uint16_t *dst) {
    long kcp = (kc + 31) & ~31L;
    for (long p0 = 0; p0 < nc; p0 += 32) {
        uint16_t *d = dst + p0 * kcp;
        long nr = nc - p0 < 32 ? nc - p0 : 32;
        if (cs == 1) {
            const float *b = B + p0;
            for (long kp = 0; kp < kcp / 2; kp++) {
                long k = 2 * kp;
                for (int h = 0; h < 2; h++) {
                    __mmask16 mn = tg_m16(nr - 16 * h);
                    __m512 lo = k < kc ? _mm512_maskz_loadu_ps(mn, b + k * rs + 16 * h) : _mm512_setzero_ps();
                    __m512 hi = k + 1 < kc ? _mm512_maskz_loadu_ps(mn, b + (k + 1) * rs + 16 * h) : _mm512_setzero_ps();
                    _mm512_storeu_si512((void *)(d + kp * 64 + 32 * h), tg_bf16_pairs(lo, hi));
                }
            }
        } else {
            /* b(k, n) = B[k + n * cs] (rs == 1): per 16 columns, 32 k -> 16 pairs, transposed */
            for (int h = 0; h < 2; h++) {
                const float *w = B + (p0 + 16 * h) * cs;
                long nv = nr - 16 * h;
                for (long k0 = 0; k0 < kcp; k0 += 32) {
                    __m512 r[16];
                    __mmask16 mlo = tg_m16(kc - k0), mhi = tg_m16(kc - k0 - 16);
                    for (int j = 0; j < 16; j++) {
                        if (j < nv) {
                            __m512 lo = _mm512_maskz_loadu_ps(mlo, w + j * cs + k0);
                            __m512 hi = _mm512_maskz_loadu_ps(mhi, w + j * cs + k0 + 16);
                            r[j] = _mm512_castsi512_ps((__m512i)_mm512_cvtne2ps_pbh(hi, lo));  /* lane p: pair p of col j */
                        } else {
                            r[j] = _mm512_setzero_ps();
                        }
                    }
                    tg_tr16x16_ps(r);                                                         /* r[p]: lanes = cols */
                    for (int p = 0; p < 16; p++)
                        _mm512_storeu_ps((float *)(d + (k0 / 2 + p) * 64 + 32 * h), r[p]);
                }
            }
        }
    }
}

/* C (mr x nr, <= 32 x 32) (+)= A tile (32 x kcp) B panel (kcp x 32); tmp: 32 x 32 floats scratch
 * (64-byte aligned). acc = -1: overwrite C through tmp with streaming stores (C rows 64-byte
 * aligned): for outputs much larger than the caches, no read-for-ownership of C. */
TG_TARGET_AMX static void tg_ukr_amx(long kcp, const uint16_t *A, const uint16_t *B, float *C, long ldc,
                                     int mr, int nr, int acc, float *tmp) {
    int stream = acc < 0;
    if (stream) acc = 0;
    int full = mr == 32 && nr == 32;
    int direct = full && !stream;          /* tiles load/store C itself */
    float *c = direct ? C : tmp;
    long ldb = direct ? ldc * 4 : 128;
    if (direct && !acc)
        for (int i = 0; i < 32; i++) {
            _mm_prefetch((const char *)(C + i * ldc), _MM_HINT_T0);
            _mm_prefetch((const char *)(C + i * ldc + 16), _MM_HINT_T0);
        }
    if (acc) {
        if (!direct) {
            for (int i = 0; i < 32; i++)
                for (int j = 0; j < 32; j++) tmp[i * 32 + j] = (i < mr && j < nr) ? C[i * ldc + j] : 0.0f;
        }
        _tile_loadd(0, c, ldb);
        _tile_loadd(1, c + 16, ldb);
        _tile_loadd(2, c + 16 * (ldb / 4), ldb);
        _tile_loadd(3, c + 16 * (ldb / 4) + 16, ldb);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    /* Tile registers are not renamed: each operand tile of block kb+1 is loaded as soon as the
     * last product reading it from block kb has issued, so loads overlap the products. */
    long nkb = kcp / 32;
    _tile_loadd(4, A, 64);
    _tile_loadd(6, B, 128);
    _tile_loadd(7, B + 32, 128);
    _tile_loadd(5, A + 512, 64);
    for (long kb = 0; kb + 1 < nkb; kb++) {
        const uint16_t *a = A + (kb + 1) * 1024, *b = B + (kb + 1) * 1024;
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(4, a, 64);
        _tile_dpbf16ps(2, 5, 6);
        _tile_loadd(6, b, 128);
        _tile_dpbf16ps(3, 5, 7);
        _tile_loadd(5, a + 512, 64);
        _tile_loadd(7, b + 32, 128);
    }
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
    _tile_stored(0, c, ldb);
    _tile_stored(1, c + 16, ldb);
    _tile_stored(2, c + 16 * (ldb / 4), ldb);
    _tile_stored(3, c + 16 * (ldb / 4) + 16, ldb);
    if (full && stream) {
        for (int i = 0; i < 32; i++) {
            _mm512_stream_ps(C + i * ldc, _mm512_load_ps(tmp + i * 32));
            _mm512_stream_ps(C + i * ldc + 16, _mm512_load_ps(tmp + i * 32 + 16));
        }
    } else if (!full) {
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++) C[i * ldc + j] = tmp[i * 32 + j];
    }
}
#else
static void tg_amx_begin(void) {}
static void tg_amx_end(void) {}
static void tg_pack_a_amx(const float *A, long rs, long cs, long mc, long kc, uint16_t *dst) {}
static void tg_pack_b_amx(const float *B, long rs, long cs, long kc, long nc, uint16_t *dst) {}
static void tg_ukr_amx(long kcp, const uint16_t *A, const uint16_t *B, float *C, long ldc,
                       int mr, int nr, int acc, float *tmp) {}
#endif

#endif
