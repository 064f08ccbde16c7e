/* slmx block-quantized kernels: ggml block formats (bytes in the file = the structs).
 *
 *   Q8_0  32 elems, 34 B : f16 d | int8 qs[32]                      x = d * q
 *   Q4_0  32 elems, 18 B : f16 d | qs[16] (elem j low nibble of qs[j], elem 16+j high)
 *                                                                   x = d * (q - 8)
 *   Q5_0  32 elems, 22 B : f16 d | uint32 qh (bit j = 5th bit of elem j) | qs[16] as Q4_0
 *                                                                   x = d * (q - 16)
 *   Q4_1 / Q5_1 (x = d * q + m): quant_q1.h, which also holds their linear
 *   Q4_K 256 elems, 144 B: f16 d | f16 dmin | scales[12] (8 x 6-bit scale, 8 x 6-bit min) | qs[128]
 *                          64-elem group g: low nibbles of qs[32g..] = elems 64g+0..31, high = +32..63
 *                                                                   x = d*sc_j*q - dmin*m_j (j = e/32)
 *   Q5_K 256 elems, 176 B: as Q4_K plus qh[32] after scales: bit j of qh[l] = 5th bit of elem 32j+l
 *   Q6_K 256 elems, 210 B: ql[128] | qh[64] | int8 scales[16] | f16 d
 *                          elem 128h+32g+l: 4 low bits from ql[64h + l + 32(g&1)] (low nibble g<2,
 *                          high g>=2), 2 high bits (qh[32h+l] >> 2g) & 3;  x = d*sc[e/16]*(q - 32)
 *
 * linear (out = x W^T) never dequantizes W. Each activation row is quantized once (the "vec_dot
 * type" of llama.cpp): to Q8_0-style blocks of 32 for Q8_0/Q4_0/Q5_0 weights, to Q8_K-style
 * blocks of 256 (f32 d, per-16 sums) for K-quants; each block's products are summed in int32 and
 * scaled in float. By activation rows M:
 *   M = 1 (decode): NR = 4 weight rows at a time are decoded into registers and dotted at once,
 *     streaming each weight byte once, prefetching a few rows ahead (AVX-512 and AVX2 bodies, each
 *     with the arithmetic of its own panel kernel, so bit-identical to the M > 1 path; scalar uses
 *     the path below).
 *   M > 1: NR rows x KC columns of weights are unpacked into a cache-resident "panel" of bytes and
 *     scale vectors, reused for every activation row by an MR x NR integer micro-kernel (AVX-512
 *     VNNI dpbusd / AVX-512BW or AVX2 maddubs); the M = 1 path computes bit-identical numbers.
 *   M >= 16 with AMX: 32 x 32 output tiles on AMX-INT8 (quant_simd_amx.h).
 * F32/F16/BF16 weights use an MR x NR float FMA micro-kernel reading the rows directly.
 *
 * One body per ISA: portable C here, AVX2 in quant_simd_avx2.h, AVX-512 and AVX-512 VNNI from
 * quant_simd_avx512.h (included twice), AMX in quant_simd_amx.h. slmx_q_* dispatchers pick.
 */
#ifndef SLMX_QUANT_SIMD_H
#define SLMX_QUANT_SIMD_H

#include "simd.h"
#include <math.h>
#include <stddef.h>

#define SLMX_ALWAYS_INLINE static inline __attribute__((always_inline))

/* ggml type ids (slmx/qtypes.py) */
#define SLMX_T_F32 0
#define SLMX_T_F16 1
#define SLMX_T_Q4_0 2
#define SLMX_T_Q4_1 3
#define SLMX_T_Q5_0 6
#define SLMX_T_Q5_1 7
#define SLMX_T_Q8_0 8
#define SLMX_T_Q4_K 12
#define SLMX_T_Q5_K 13
#define SLMX_T_Q6_K 14
#define SLMX_T_BF16 30

#define SLMX_NR 4        /* weight rows per panel */
#define SLMX_KC 2048     /* activation columns per panel (multiple of 256) */
#ifndef SLMX_AMX_MIN_M
#define SLMX_AMX_MIN_M 16  /* activation rows from which linear uses AMX tiles (when available) */
#endif
#ifndef SLMX_PF_ROWS
#define SLMX_PF_ROWS 4   /* unpacking prefetches the weights this many rows ahead */
#endif

/* ------------------------------------------------------------------ activation buffers
 * "b32": for Q8_0/Q4_0/Q5_0 weights. Per 64 elements (two blocks A, B of 32):
 *   q[64] int8 (round-to-nearest of x/d, d = amax/127 stored as f16 like Q8_0),
 *   d[16] float: lanes 0-7 = d_A, lanes 8-15 = d_B (the int32 lanes of a dot over 64 bytes),
 *   c[16] int32: c[0] = -off*sum(q_A), c[8] = -off*sum(q_B), others 0 — the correction for weights
 *   stored with an offset (q - off); the micro-kernel starts its int32 accumulator from c.
 * "k": for K-quants. Per 256 elements: q[256] int8, bsums[16] (sums of 16), d (f32),
 *   xs[8] = d * (sum of q over each 32) (the AMX kernel's Q4_K/Q5_K mins term).             */
typedef struct { int8_t q[64]; float d[16]; int32_t c[16]; } slmx_xb_chunk;        /* 192 B */
typedef struct { int8_t q[256]; int16_t bsums[16]; float d; float xs[8]; int32_t pad[15]; } slmx_xk_block; /* 384 B */

/* ------------------------------------------------------------------ weight panels
 * pb: per (64-element chunk, row): w[64] unsigned (q or q+128 for Q8_0 on VNNI; signed q for
 *     Q8_0 otherwise), d[16] = d_A x8, d_B x8.  Panel index = chunk * NR + row.
 * pk: per (256-element block, row): w[256] unsigned q; sc[c][32] int16 multiplier of each
 *     maddubs int16 lane of chunk c (64 elements); coef[16] int16 multiplier of the activation's
 *     16-sums and cs its float scale (Q4_K/Q5_K: coef = min, cs = -dmin; Q6_K: coef = -32*sc,
 *     cs = d); d the block's float scale.  dot = d*dx*sum(sc*w*x) + cs*dx*sum(coef*bsums).   */
typedef struct { uint8_t w[64]; float d[16]; } slmx_pb_chunk;                      /* 128 B */
typedef struct { uint8_t w[256]; int16_t sc[4][32]; int16_t coef[16]; float d, cs; uint8_t pad[24]; } slmx_pk_block; /* 576 B */

/* ------------------------------------------------------------------ f16 / bf16 (portable) */

static float slmx_f16_table[65536];
static int slmx_f16_table_ready = 0;

static inline uint32_t slmx_f16_bits_to_f32_bits(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) return sign | 0x7f800000u | (man << 13);      /* inf / NaN (payload kept) */
    if (exp != 0) return sign | ((exp + 112u) << 23) | (man << 13);
    if (man == 0) return sign;
    int e = -1;                                                     /* subnormal: normalise */
    do { e++; man <<= 1; } while (!(man & 0x400u));
    return sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
}

static void slmx_f16_table_init(void) {
    if (slmx_f16_table_ready) return;
    for (uint32_t h = 0; h < 65536; h++) {
        uint32_t b = slmx_f16_bits_to_f32_bits((uint16_t)h);
        memcpy(&slmx_f16_table[h], &b, 4);
    }
    slmx_f16_table_ready = 1;
}

static inline float slmx_f16_to_f32(uint16_t h) { return slmx_f16_table[h]; }

static inline uint16_t slmx_load_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t slmx_load_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t slmx_load_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline float slmx_load_f16(const uint8_t *p) { return slmx_f16_table[slmx_load_u16(p)]; }

/* float32 -> float16 bits, round to nearest even; NaN keeps its top payload bits (as numpy). */
static inline uint16_t slmx_f32_to_f16(float f) {
    uint32_t x; memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) { uint16_t m = (uint16_t)((ax >> 13) & 0x3ffu); return sign | 0x7c00u | (m ? m : 1u); }
    if (ax >= 0x477ff000u) return sign | 0x7c00u;                  /* >= 65520: inf */
    if (ax >= 0x38800000u) {                                        /* normal half */
        uint32_t r = ax - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1u);
        return sign | (uint16_t)(r >> 13);
    }
    if (ax < 0x33000000u) return sign;                              /* < 2^-25: zero */
    uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;        /* subnormal half */
    uint32_t sh = 126u - e, q = m >> sh, rem = m & ((1u << sh) - 1u), half = 1u << (sh - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return sign | (uint16_t)q;
}

/* float32 -> bfloat16 bits: NaN forced quiet, round to nearest even (as ggml / gguf-py). */
static inline uint16_t slmx_f32_to_bf16(float f) {
    uint32_t n; memcpy(&n, &f, 4);
    if ((n & 0x7fffffffu) > 0x7f800000u) n = (n & 0xffff0000u) | (64u << 16);
    return (uint16_t)(((uint64_t)n + 0x7fffu + ((n >> 16) & 1u)) >> 16);
}

static inline float slmx_bf16_to_f32(uint16_t h) { uint32_t b = (uint32_t)h << 16; float f; memcpy(&f, &b, 4); return f; }

/* block geometry */
static inline int slmx_block_size(int t) {
    switch (t) {
    case SLMX_T_F32: case SLMX_T_F16: case SLMX_T_BF16: return 1;
    case SLMX_T_Q4_0: case SLMX_T_Q5_0: case SLMX_T_Q8_0: case SLMX_T_Q4_1: case SLMX_T_Q5_1: return 32;
    case SLMX_T_Q4_K: case SLMX_T_Q5_K: case SLMX_T_Q6_K: return 256;
    }
    return 0;
}
static inline int slmx_type_size(int t) {
    switch (t) {
    case SLMX_T_F32: return 4;
    case SLMX_T_F16: case SLMX_T_BF16: return 2;
    case SLMX_T_Q4_0: return 18;
    case SLMX_T_Q5_0: return 22;
    case SLMX_T_Q4_1: return 20;
    case SLMX_T_Q5_1: return 24;
    case SLMX_T_Q8_0: return 34;
    case SLMX_T_Q4_K: return 144;
    case SLMX_T_Q5_K: return 176;
    case SLMX_T_Q6_K: return 210;
    }
    return 0;
}

static inline int slmx_is_b32(int t) { return t == SLMX_T_Q8_0 || t == SLMX_T_Q4_0 || t == SLMX_T_Q5_0; }
static inline int slmx_is_k(int t) { return t == SLMX_T_Q4_K || t == SLMX_T_Q5_K || t == SLMX_T_Q6_K; }
static inline int slmx_is_float(int t) { return t == SLMX_T_F32 || t == SLMX_T_F16 || t == SLMX_T_BF16; }

/* The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block. */
static inline void slmx_scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) { *sc = q[j] & 63; *m = q[j + 4] & 63; }
    else { *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4); *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4); }
}

/* The same for all 8 sub-blocks at once: bytes 0..7 of *sc = scales, of *mn = mins. */
static inline void slmx_scale_min_k4_all(const uint8_t *q, uint64_t *sc, uint64_t *mn) {
    uint32_t a0 = slmx_load_u32(q), a1 = slmx_load_u32(q + 4), a2 = slmx_load_u32(q + 8);
    uint32_t s_lo = a0 & 0x3f3f3f3fu, m_lo = a1 & 0x3f3f3f3fu;
    uint32_t s_hi = (a2 & 0x0f0f0f0fu) | (((a0 >> 6) & 0x03030303u) << 4);
    uint32_t m_hi = ((a2 >> 4) & 0x0f0f0f0fu) | (((a1 >> 6) & 0x03030303u) << 4);
    *sc = (uint64_t)s_lo | ((uint64_t)s_hi << 32);
    *mn = (uint64_t)m_lo | ((uint64_t)m_hi << 32);
}

/* ================================================================= dequantize (portable)
 * Operation for operation the same float32 arithmetic as gguf-py (no FMA contraction), so the
 * results are bit-identical. */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

static void slmx_dequant_q8_0(const uint8_t *b, float *y) {
    float d = slmx_load_f16(b);
    for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)b[2 + j] * d;
}

static void slmx_dequant_q4_0(const uint8_t *b, float *y) {
    float d = slmx_load_f16(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((qs[j] & 0x0f) - 8);
        y[j + 16] = d * (float)((qs[j] >> 4) - 8);
    }
}

static void slmx_dequant_q5_0(const uint8_t *b, float *y) {
    float d = slmx_load_f16(b);
    uint32_t qh = slmx_load_u32(b + 2);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < 16; j++) {
        int lo = (qs[j] & 0x0f) | (int)(((qh >> j) & 1u) << 4);
        int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
        y[j] = d * (float)(lo - 16);
        y[j + 16] = d * (float)(hi - 16);
    }
}

static void slmx_dequant_qk(int t, const uint8_t *b, float *y) {
    if (t == SLMX_T_Q6_K) {
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        float d = slmx_load_f16(b + 208);
        for (int e = 0; e < 256; e++) {
            int h = e >> 7, g = (e >> 5) & 3, l = e & 31;
            int lo = ql[64 * h + l + 32 * (g & 1)];
            lo = (g >= 2) ? (lo >> 4) : (lo & 0x0f);
            int hi = (qh[32 * h + l] >> (2 * g)) & 3;
            float dl = d * (float)sc[e >> 4];
            y[e] = dl * (float)((lo | (hi << 4)) - 32);
        }
        return;
    }
    float d = slmx_load_f16(b), dmin = slmx_load_f16(b + 2);
    const uint8_t *scales = b + 4;
    const uint8_t *qh = (t == SLMX_T_Q5_K) ? b + 16 : NULL;
    const uint8_t *qs = (t == SLMX_T_Q5_K) ? b + 48 : b + 16;
    for (int j = 0; j < 8; j++) {
        int sc, m;
        slmx_scale_min_k4(j, scales, &sc, &m);
        float dl = d * (float)sc, ml = dmin * (float)m;
        const uint8_t *q = qs + 32 * (j >> 1);
        for (int l = 0; l < 32; l++) {
            int v = (j & 1) ? (q[l] >> 4) : (q[l] & 0x0f);
            if (qh) v |= ((qh[l] >> j) & 1) << 4;
            y[32 * j + l] = dl * (float)v - ml;
        }
    }
}

static void slmx_dequant_q1_blocks(int t, const uint8_t *src, float *y, int64_t nblocks);   /* quant_q1.h */
static void slmx_quant_q1_blocks(int t, const float *x, uint8_t *dst, int64_t nblocks);

/* nblocks blocks of type t from src into y (nblocks * block_size floats). */
static void slmx_dequant_blocks(int t, const uint8_t *src, float *y, int64_t nblocks) {
    int64_t i;
    switch (t) {
    case SLMX_T_F32: memcpy(y, src, (size_t)nblocks * 4); break;
    case SLMX_T_F16: for (i = 0; i < nblocks; i++) y[i] = slmx_load_f16(src + 2 * i); break;
    case SLMX_T_BF16: for (i = 0; i < nblocks; i++) y[i] = slmx_bf16_to_f32(slmx_load_u16(src + 2 * i)); break;
    case SLMX_T_Q8_0: for (i = 0; i < nblocks; i++) slmx_dequant_q8_0(src + 34 * i, y + 32 * i); break;
    case SLMX_T_Q4_0: for (i = 0; i < nblocks; i++) slmx_dequant_q4_0(src + 18 * i, y + 32 * i); break;
    case SLMX_T_Q5_0: for (i = 0; i < nblocks; i++) slmx_dequant_q5_0(src + 22 * i, y + 32 * i); break;
    case SLMX_T_Q4_1: case SLMX_T_Q5_1: slmx_dequant_q1_blocks(t, src, y, nblocks); break;
    case SLMX_T_Q4_K: case SLMX_T_Q5_K: case SLMX_T_Q6_K: {
        int ts = slmx_type_size(t);
        for (i = 0; i < nblocks; i++) slmx_dequant_qk(t, src + (size_t)ts * i, y + 256 * i);
        break;
    }
    }
}

/* ================================================================= quantize (portable)
 * Bit-identical to gguf-py / ggml's reference quantizers. */

static inline float slmx_absmax_signed(const float *x, int n, float *amax_out) {
    float amax = fabsf(x[0]), max = x[0];      /* first element of largest magnitude (argmax) */
    for (int j = 1; j < n; j++) { float a = fabsf(x[j]); if (amax < a) { amax = a; max = x[j]; } }
    *amax_out = amax;
    return max;
}

static void slmx_quant_q8_0(const float *x, uint8_t *b) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) { float a = fabsf(x[j]); amax = amax < a ? a : amax; }
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t dh = slmx_f32_to_f16(d);
    memcpy(b, &dh, 2);
    for (int j = 0; j < 32; j++) b[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
}

static void slmx_quant_q4_0(const float *x, uint8_t *b) {
    float amax, max = slmx_absmax_signed(x, 32, &amax);
    float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t dh = slmx_f32_to_f16(d);
    memcpy(b, &dh, 2);
    for (int j = 0; j < 16; j++) {
        float t0 = truncf(x[j] * id + 8.5f), t1 = truncf(x[j + 16] * id + 8.5f);
        int q0 = t0 > 15.0f ? 15 : (t0 > 0.0f ? (int)t0 : 0);
        int q1 = t1 > 15.0f ? 15 : (t1 > 0.0f ? (int)t1 : 0);
        b[2 + j] = (uint8_t)(q0 | (q1 << 4));
    }
}

static void slmx_quant_q5_0(const float *x, uint8_t *b) {
    float amax, max = slmx_absmax_signed(x, 32, &amax);
    float d = max / -16.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t dh = slmx_f32_to_f16(d);
    memcpy(b, &dh, 2);
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        float t0 = truncf(x[j] * id + 16.5f), t1 = truncf(x[j + 16] * id + 16.5f);
        int q0 = t0 > 31.0f ? 31 : (t0 > 0.0f ? (int)t0 : 0);
        int q1 = t1 > 31.0f ? 31 : (t1 > 0.0f ? (int)t1 : 0);
        b[6 + j] = (uint8_t)((q0 & 0x0f) | ((q1 & 0x0f) << 4));
        qh |= (uint32_t)(q0 >> 4) << j;
        qh |= (uint32_t)(q1 >> 4) << (j + 16);
    }
    memcpy(b + 2, &qh, 4);
}

#include "quant_kq.h"

/* nblocks blocks of type t from x into dst. Types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K. */
static void slmx_quant_blocks(int t, const float *x, uint8_t *dst, int64_t nblocks) {
    int64_t i;
    if (slmx_is_b32(t) && slmx_quant_b32_simd(t, x, dst, nblocks)) return;
    switch (t) {
    case SLMX_T_F32: memcpy(dst, x, (size_t)nblocks * 4); break;
    case SLMX_T_F16: for (i = 0; i < nblocks; i++) { uint16_t h = slmx_f32_to_f16(x[i]); memcpy(dst + 2 * i, &h, 2); } break;
    case SLMX_T_BF16: for (i = 0; i < nblocks; i++) { uint16_t h = slmx_f32_to_bf16(x[i]); memcpy(dst + 2 * i, &h, 2); } break;
    case SLMX_T_Q8_0: for (i = 0; i < nblocks; i++) slmx_quant_q8_0(x + 32 * i, dst + 34 * i); break;
    case SLMX_T_Q4_0: for (i = 0; i < nblocks; i++) slmx_quant_q4_0(x + 32 * i, dst + 18 * i); break;
    case SLMX_T_Q5_0: for (i = 0; i < nblocks; i++) slmx_quant_q5_0(x + 32 * i, dst + 22 * i); break;
    case SLMX_T_Q4_1: case SLMX_T_Q5_1: slmx_quant_q1_blocks(t, x, dst, nblocks); break;
    case SLMX_T_Q4_K: case SLMX_T_Q5_K: case SLMX_T_Q6_K: slmx_quant_k_blocks(t, x, dst, nblocks); break;
    }
}

/* ================================================================= activation quantizers */

/* llama.cpp's nearest_int: round half to even through the float mantissa (|v| < 2^22). */
static inline int slmx_nearest_int(float v) {
    float f = v + 12582912.0f;
    int32_t i; memcpy(&i, &f, 4);
    return (i & 0x007fffff) - 0x00400000;
}

/* One Q8_0-style block of 32 activations: q = roundf(x/d), d = amax/127 (as f16). Returns the
 * f16-rounded d; *sum = sum(q). */
static inline float slmx_xq_block32(const float *x, int8_t *q, int32_t *sum) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) { float a = fabsf(x[j]); amax = amax < a ? a : amax; }
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    int32_t s = 0;
    for (int j = 0; j < 32; j++) { int v = (int)roundf(x[j] * id); q[j] = (int8_t)v; s += v; }
    *sum = s;
    return slmx_f16_to_f32(slmx_f32_to_f16(d));
}

/* x (K,) -> b32 chunks (ceil(K/64) of them); K a multiple of 32; off = weight offset (see top). */
/* NaN in an activation row: every block scale of its quantized row is set to NaN, so each output
 * of the row is NaN, as in float x @ W^T (8-bit rounding would otherwise turn the NaN into some
 * integer and the output into a finite number). */
static int slmx_row_has_nan(const float *x, int K) {
    int bad = 0;
    for (int i = 0; i < K; i++) bad |= x[i] != x[i];
    return bad;
}

static void slmx_xq_b32_nan(int K, slmx_xb_chunk *dst) {
    for (int c = 0; c < (K / 32 + 1) / 2; c++)
        for (int l = 0; l < 16; l++) dst[c].d[l] = NAN;
}

static void slmx_xq_b32_scalar(const float *x, int K, int off, slmx_xb_chunk *dst) {
    int nb = K / 32, nc = (nb + 1) / 2;
    for (int c = 0; c < nc; c++) {
        slmx_xb_chunk *ch = dst + c;
        memset(ch, 0, sizeof *ch);
        for (int h = 0; h < 2 && 2 * c + h < nb; h++) {
            int32_t s;
            float d = slmx_xq_block32(x + 64 * c + 32 * h, ch->q + 32 * h, &s);
            for (int l = 0; l < 8; l++) ch->d[8 * h + l] = d;
            ch->c[8 * h] = -off * s;
        }
    }
}

/* One Q8_K block of 256 (ggml's quantize_row_q8_K_ref): d = max/-127 by the signed value of
 * largest magnitude, q = nearest_int(x * -127/max) capped at 127, bsums of 16. */
static void slmx_xq_k_block_scalar(const float *x, slmx_xk_block *y) {
    float amax, max = slmx_absmax_signed(x, 256, &amax);
    memset(y, 0, sizeof *y);
    if (amax == 0.0f) return;
    float iscale = -127.0f / max;
    for (int j = 0; j < 256; j++) {
        int v = slmx_nearest_int(iscale * x[j]);
        y->q[j] = (int8_t)(v < 127 ? v : 127);
    }
    for (int j = 0; j < 16; j++) {
        int s = 0;
        for (int l = 0; l < 16; l++) s += y->q[16 * j + l];
        y->bsums[j] = (int16_t)s;
    }
    y->d = 1.0f / iscale;
}

static void slmx_xq_k_scalar(const float *x, int K, slmx_xk_block *dst) {
    for (int b = 0; b < K / 256; b++) slmx_xq_k_block_scalar(x + 256 * b, dst + b);
}

#pragma GCC pop_options

/* ================================================================= scalar linear (portable) */

static float slmx_dot_b32_scalar(int t, const uint8_t *w, const slmx_xb_chunk *x, int nb) {
    float acc = 0.0f;
    for (int b = 0; b < nb; b++) {
        const slmx_xb_chunk *ch = x + (b >> 1);
        const int8_t *q = ch->q + 32 * (b & 1);
        int32_t s = 0;
        float dw;
        if (t == SLMX_T_Q8_0) {
            const uint8_t *blk = w + 34 * (size_t)b;
            dw = slmx_load_f16(blk);
            for (int j = 0; j < 32; j++) s += (int8_t)blk[2 + j] * q[j];
        } else if (t == SLMX_T_Q4_0) {
            const uint8_t *blk = w + 18 * (size_t)b;
            dw = slmx_load_f16(blk);
            for (int j = 0; j < 16; j++)
                s += ((blk[2 + j] & 0x0f) - 8) * q[j] + ((blk[2 + j] >> 4) - 8) * q[j + 16];
        } else {
            const uint8_t *blk = w + 22 * (size_t)b;
            dw = slmx_load_f16(blk);
            uint32_t qh = slmx_load_u32(blk + 2);
            for (int j = 0; j < 16; j++) {
                int lo = (blk[6 + j] & 0x0f) | (int)(((qh >> j) & 1u) << 4);
                int hi = (blk[6 + j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
                s += (lo - 16) * q[j] + (hi - 16) * q[j + 16];
            }
        }
        acc += (dw * ch->d[8 * (b & 1)]) * (float)s;
    }
    return acc;
}

static float slmx_dot_k_scalar(int t, const uint8_t *w, const slmx_xk_block *x, int nsb) {
    int ts = slmx_type_size(t);
    float acc = 0.0f;
    for (int s = 0; s < nsb; s++) {
        const uint8_t *b = w + (size_t)ts * s;
        const slmx_xk_block *xb = x + s;
        if (t == SLMX_T_Q6_K) {
            const uint8_t *ql = b, *qh = b + 128;
            const int8_t *sc = (const int8_t *)(b + 192);
            float d = slmx_load_f16(b + 208);
            int32_t tot = 0;
            for (int sb = 0; sb < 16; sb++) {
                int32_t part = 0;
                for (int i = 0; i < 16; i++) {
                    int e = 16 * sb + i, h = e >> 7, g = (e >> 5) & 3, l = e & 31;
                    int lo = ql[64 * h + l + 32 * (g & 1)];
                    lo = (g >= 2) ? (lo >> 4) : (lo & 0x0f);
                    int hi = (qh[32 * h + l] >> (2 * g)) & 3;
                    part += ((lo | (hi << 4)) - 32) * xb->q[e];
                }
                tot += sc[sb] * part;
            }
            acc += (d * xb->d) * (float)tot;
        } else {
            float d = slmx_load_f16(b), dmin = slmx_load_f16(b + 2);
            const uint8_t *scales = b + 4;
            const uint8_t *qh = (t == SLMX_T_Q5_K) ? b + 16 : NULL;
            const uint8_t *qs = (t == SLMX_T_Q5_K) ? b + 48 : b + 16;
            int32_t tot = 0, mins = 0;
            for (int j = 0; j < 8; j++) {
                int sc, m;
                slmx_scale_min_k4(j, scales, &sc, &m);
                const uint8_t *q = qs + 32 * (j >> 1);
                int32_t part = 0;
                for (int l = 0; l < 32; l++) {
                    int v = (j & 1) ? (q[l] >> 4) : (q[l] & 0x0f);
                    if (qh) v |= ((qh[l] >> j) & 1) << 4;
                    part += v * xb->q[32 * j + l];
                }
                tot += sc * part;
                mins += m * (xb->bsums[2 * j] + xb->bsums[2 * j + 1]);
            }
            acc += (d * xb->d) * (float)tot - (dmin * xb->d) * (float)mins;
        }
    }
    return acc;
}

static float slmx_dot_f_scalar(int t, const uint8_t *w, const float *x, int K) {
    float acc = 0.0f;
    if (t == SLMX_T_F32) { const float *wf = (const float *)w; for (int k = 0; k < K; k++) acc += wf[k] * x[k]; }
    else if (t == SLMX_T_F16) { for (int k = 0; k < K; k++) acc += slmx_load_f16(w + 2 * k) * x[k]; }
    else { for (int k = 0; k < K; k++) acc += slmx_bf16_to_f32(slmx_load_u16(w + 2 * k)) * x[k]; }
    return acc;
}

/* out[m, n] for m < M, n in [n0, n1): x is the quantized activation buffer (ldx bytes a row) or,
 * for float weights, the float32 activations. */
static void slmx_qlinear_range_scalar(int t, const uint8_t *w, size_t rb, int64_t n0, int64_t n1,
                                      const uint8_t *x, size_t ldx, int M, int K, float *out, size_t ldo) {
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *wr = w + (size_t)n * rb;
        for (int m = 0; m < M; m++) {
            const uint8_t *xr = x + (size_t)m * ldx;
            float v;
            if (t == SLMX_T_Q8_0 || t == SLMX_T_Q4_0 || t == SLMX_T_Q5_0) v = slmx_dot_b32_scalar(t, wr, (const slmx_xb_chunk *)xr, K / 32);
            else if (t == SLMX_T_Q4_K || t == SLMX_T_Q5_K || t == SLMX_T_Q6_K) v = slmx_dot_k_scalar(t, wr, (const slmx_xk_block *)xr, K / 256);
            else v = slmx_dot_f_scalar(t, wr, (const float *)xr, K);
            out[(size_t)m * ldo + n] = v;
        }
    }
}

#if SLMX_X86
#include "quant_simd_avx2.h"
#define QFN(name) name##_avx512
#define QTARGET SLMX_TARGET_AVX512
#define QVNNI 0
#include "quant_simd_avx512.h"
#undef QFN
#undef QTARGET
#undef QVNNI
#define QFN(name) name##_vnni
#define QTARGET SLMX_TARGET_AVX512VNNI
#define QVNNI 1
#include "quant_simd_avx512.h"
#undef QFN
#undef QTARGET
#undef QVNNI
#include "quant_simd_amx.h"
#endif
#include "quant_q1.h"

/* ================================================================= dispatch */

/* Allow (default) or forbid the GFNI variant of the Q4_K decode kernel; returns whether it runs. */
static inline int slmx_q_set_gfni(int allowed) {
#if SLMX_X86
    return slmx_q4k_set_gfni(allowed);
#else
    (void)allowed;
    return 0;
#endif
}

/* Weight offset the b32 activation sums are corrected for (see slmx_xb_chunk). */
static inline int slmx_b32_offset(int level, int t) {
    if (t == SLMX_T_Q4_0) return 8;
    if (t == SLMX_T_Q5_0) return 16;
    return level >= SLMX_SIMD_VNNI ? 128 : 0;     /* Q8_0: q+128 unsigned on VNNI, sign trick otherwise */
}


/* Bytes of one quantized activation row of K elements (0 for float weights: x is used as is). */
static inline size_t slmx_xq_row_bytes(int t, int K) {
    if (slmx_is_b32(t)) return (size_t)((K / 32 + 1) / 2) * sizeof(slmx_xb_chunk);
    if (slmx_is_k(t)) return (size_t)(K / 256) * sizeof(slmx_xk_block);
    if (slmx_is_q1(t)) return slmx_q1_xq_row_bytes(K);
    return 0;
}

/* Scratch bytes per thread (one weight panel; amx: the AMX kernel's). */
static inline size_t slmx_panel_bytes(int t, int amx) {
    size_t b = 64;
    if (slmx_is_b32(t) || slmx_is_q1(t)) b = (size_t)(SLMX_KC / 64) * SLMX_NR * sizeof(slmx_pb_chunk);
    if (slmx_is_k(t)) b = (size_t)(SLMX_KC / 256) * SLMX_NR * sizeof(slmx_pk_block);
#if SLMX_X86
    if (amx && !slmx_is_float(t) && b < SLMX_AMX_SCRATCH) b = SLMX_AMX_SCRATCH;
#else
    (void)amx;
#endif
    return b;
}

/* Rows of the activation buffer the kernels may read for M rows (AMX reads whole 32-row tiles;
 * the extra rows must be zero). */
static inline int slmx_xq_rows(int M, int amx) {
#if SLMX_X86
    if (amx) return (M + SLMX_AMX_MR - 1) / SLMX_AMX_MR * SLMX_AMX_MR;
#else
    (void)amx;
#endif
    return M;
}

/* Weight rows a thread's work item should cover (a multiple of the kernel's panel). */
static inline int slmx_row_group(int amx) {
#if SLMX_X86
    if (amx) return SLMX_AMX_NR;
#else
    (void)amx;
#endif
    return 16;
}

/* Whether linear with M activation rows of weights t runs on AMX tiles at this level. */
static inline int slmx_use_amx(int level, int t, int M, int allowed) {
#if SLMX_X86
    return allowed && level >= SLMX_SIMD_VNNI && M >= SLMX_AMX_MIN_M && !slmx_is_float(t) && !slmx_is_q1(t)
           && slmx_amx_usable();
#else
    (void)level; (void)t; (void)M; (void)allowed;
    return 0;
#endif
}

/* Quantize one activation row x (K,) for weights of type t into dst (slmx_xq_row_bytes). */
static void slmx_q_quantize_x(int level, int t, const float *x, int K, uint8_t *dst) {
    if (slmx_is_q1(t)) { slmx_q1_quantize_x(level, x, K, dst); return; }
    if (slmx_is_b32(t)) {
        int off = slmx_b32_offset(level, t);
#if SLMX_X86
        if (level >= SLMX_SIMD_AVX512) slmx_xq_b32_avx512(x, K, off, (slmx_xb_chunk *)dst);
        else if (level >= SLMX_SIMD_AVX2) slmx_xq_b32_avx2(x, K, off, (slmx_xb_chunk *)dst);
        else
#endif
        slmx_xq_b32_scalar(x, K, off, (slmx_xb_chunk *)dst);
        if (slmx_row_has_nan(x, K)) slmx_xq_b32_nan(K, (slmx_xb_chunk *)dst);
    } else if (slmx_is_k(t)) {
#if SLMX_X86
        if (level >= SLMX_SIMD_AVX512) slmx_xq_k_avx512(x, K, (slmx_xk_block *)dst);
        else if (level >= SLMX_SIMD_AVX2) slmx_xq_k_avx2(x, K, (slmx_xk_block *)dst);
        else
#endif
        slmx_xq_k_scalar(x, K, (slmx_xk_block *)dst);
    }
    if (slmx_is_k(t)) {
        slmx_xk_block *y = (slmx_xk_block *)dst;
        if (slmx_row_has_nan(x, K))
            for (int b = 0; b < K / 256; b++) y[b].d = NAN;
        for (int b = 0; b < K / 256; b++)
            for (int j = 0; j < 8; j++) y[b].xs[j] = y[b].d * (float)(y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
    }
}

/* out[m, n] = sum_k x[m, k] W[n, k] for m < M, n in [n0, n1). w: rows of rb bytes; x: quantized
 * activations (ldx bytes a row) or float32 rows (ldx bytes); out row stride ldo floats;
 * scratch: slmx_panel_bytes(t, amx), 64-byte aligned. amx (slmx_use_amx): AMX tiles, x holding
 * slmx_xq_rows(M, 1) rows. */
static void slmx_q_linear_range(int level, int amx, int t, const uint8_t *w, size_t rb, int64_t n0, int64_t n1,
                                const uint8_t *x, size_t ldx, int M, int K, float *out, size_t ldo,
                                void *scratch) {
    if (slmx_is_q1(t)) { slmx_linear_range_q1(level, t, w, rb, n0, n1, x, ldx, M, K, out, ldo, scratch); return; }
#if SLMX_X86
    if (amx) { slmx_linear_range_amx(t, w, rb, n0, n1, x, ldx, M, K, out, ldo, scratch); return; }
    if (level >= SLMX_SIMD_VNNI) { slmx_linear_range_vnni(t, w, rb, n0, n1, x, ldx, M, K, out, ldo, scratch); return; }
    if (level >= SLMX_SIMD_AVX512) { slmx_linear_range_avx512(t, w, rb, n0, n1, x, ldx, M, K, out, ldo, scratch); return; }
    if (level >= SLMX_SIMD_AVX2) { slmx_linear_range_avx2(t, w, rb, n0, n1, x, ldx, M, K, out, ldo, scratch); return; }
#endif
    (void)scratch;
    slmx_qlinear_range_scalar(t, w, rb, n0, n1, x, ldx, M, K, out, ldo);
}

#endif
