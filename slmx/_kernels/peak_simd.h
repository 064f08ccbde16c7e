/* slmx machine ceilings: loops that run one instruction kind at its throughput, and a read loop.
 *
 * Each slmx_peak_* runs `iters` iterations of NACC independent accumulator chains (enough to hide
 * the instruction latency on both FMA ports) and returns the number of flops (or int8 ops) done;
 * the caller times it. The result is folded into a checksum the caller keeps, so the compiler
 * cannot drop the loop.
 *   fp32 FMA:       AVX-512 vfmadd231ps zmm (32 flops), AVX2 ymm (16), scalar (2)
 *   bf16 dot:       vdpbf16ps zmm: 16 lanes x 2 products x 2 flops = 64
 *   int8 dot:       vpdpbusd zmm: 16 lanes x 4 products x 2 ops = 128
 *   AMX bf16 / int8: tdpbf16ps / tdpbssd on 16 x 16 C tiles: 16*16*32*2 / 16*16*64*2 per instruction
 * slmx_read_bytes(p, n, pf) sums n bytes (64-byte aligned n) with wide loads, optionally prefetching pf
 * bytes ahead: the read-bandwidth loop.
 */
#ifndef SLMX_PEAK_SIMD_H
#define SLMX_PEAK_SIMD_H

#include "simd.h"
#include <stdint.h>
#include <string.h>
#include <time.h>

#define SLMX_PEAK_NACC 12

/* CPU seconds of the calling thread: rates from it are the hardware's even when the machine is
 * shared (time spent descheduled does not count). */
static inline double slmx_thread_seconds(void) {
#ifdef CLOCK_THREAD_CPUTIME_ID
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0) return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#endif
    return (double)clock() / CLOCKS_PER_SEC;
}

static double slmx_peak_fma_scalar(long iters, float *sink) {
    float a[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    volatile float m = 0.9999999f, c = 1e-7f;
    float mm = m, cc = c;
    for (long i = 0; i < iters; i++) {
        for (int j = 0; j < 8; j++) a[j] = a[j] * mm + cc;
    }
    float s = 0;
    for (int j = 0; j < 8; j++) s += a[j];
    *sink += s;
    return 2.0 * 8 * (double)iters;
}

#if SLMX_X86
static SLMX_TARGET_AVX2 double slmx_peak_fma_avx2(long iters, float *sink) {
    __m256 acc[SLMX_PEAK_NACC];
    __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
    for (int j = 0; j < SLMX_PEAK_NACC; j++) acc[j] = _mm256_set1_ps((float)j);
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < SLMX_PEAK_NACC; j++) acc[j] = _mm256_fmadd_ps(acc[j], m, c);
        __asm__ volatile("" : "+x"(m));
    }
    __m256 s = acc[0];
    for (int j = 1; j < SLMX_PEAK_NACC; j++) s = _mm256_add_ps(s, acc[j]);
    float t[8];
    _mm256_storeu_ps(t, s);
    *sink += t[0];
    return 16.0 * SLMX_PEAK_NACC * (double)iters;
}

static SLMX_TARGET_AVX512 double slmx_peak_fma_avx512(long iters, float *sink) {
    __m512 acc[SLMX_PEAK_NACC];
    __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
    for (int j = 0; j < SLMX_PEAK_NACC; j++) acc[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < SLMX_PEAK_NACC; j++) acc[j] = _mm512_fmadd_ps(acc[j], m, c);
        __asm__ volatile("" : "+v"(m));
    }
    __m512 s = acc[0];
    for (int j = 1; j < SLMX_PEAK_NACC; j++) s = _mm512_add_ps(s, acc[j]);
    *sink += _mm512_reduce_add_ps(s);
    return 32.0 * SLMX_PEAK_NACC * (double)iters;
}

static SLMX_TARGET_AVX512VNNI double slmx_peak_vnni(long iters, float *sink) {
    __m512i acc[SLMX_PEAK_NACC];
    __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(1);
    for (int j = 0; j < SLMX_PEAK_NACC; j++) acc[j] = _mm512_set1_epi32(j);
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < SLMX_PEAK_NACC; j++) acc[j] = _mm512_dpbusd_epi32(acc[j], a, b);
        __asm__ volatile("" : "+v"(a));
    }
    __m512i s = acc[0];
    for (int j = 1; j < SLMX_PEAK_NACC; j++) s = _mm512_add_epi32(s, acc[j]);
    *sink += (float)_mm512_reduce_add_epi32(s);
    return 128.0 * SLMX_PEAK_NACC * (double)iters;
}

static SLMX_TARGET_AVX512BF16 double slmx_peak_dpbf16(long iters, float *sink) {
    __m512 acc[SLMX_PEAK_NACC];
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3380);
    for (int j = 0; j < SLMX_PEAK_NACC; j++) acc[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < SLMX_PEAK_NACC; j++) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
        __asm__ volatile("" : "+v"(a));
    }
    __m512 s = acc[0];
    for (int j = 1; j < SLMX_PEAK_NACC; j++) s = _mm512_add_ps(s, acc[j]);
    *sink += _mm512_reduce_add_ps(s);
    return 64.0 * SLMX_PEAK_NACC * (double)iters;
}

#define SLMX_PEAK_TARGET_AMX __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,amx-tile,amx-int8,amx-bf16")))

typedef struct {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} slmx_peak_tilecfg_t;

/* kind 0: tdpbf16ps, 1: tdpbssd. 4 accumulators C0..C3 = A{0,1} x B{0,1} (zero operands) */
static SLMX_PEAK_TARGET_AMX double slmx_peak_amx(int kind, long iters, float *sink) {
    slmx_peak_tilecfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) { cfg.rows[i] = 16; cfg.colsb[i] = 64; }
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg) : "memory");
    float buf[16 * 16];
    memset(buf, 0, sizeof buf);
    for (int i = 0; i < 8; i++) {
        switch (i) {   /* tile numbers must be immediates */
        case 0: _tile_zero(0); break; case 1: _tile_zero(1); break;
        case 2: _tile_zero(2); break; case 3: _tile_zero(3); break;
        case 4: _tile_loadd(4, buf, 64); break; case 5: _tile_loadd(5, buf, 64); break;
        case 6: _tile_loadd(6, buf, 64); break; default: _tile_loadd(7, buf, 64); break;
        }
    }
    if (kind == 0) {
        for (long i = 0; i < iters; i++) {
            _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
        }
    } else {
        for (long i = 0; i < iters; i++) {
            _tile_dpbssd(0, 4, 6); _tile_dpbssd(1, 4, 7);
            _tile_dpbssd(2, 5, 6); _tile_dpbssd(3, 5, 7);
        }
    }
    _tile_stored(0, buf, 64);
    _tile_release();
    *sink += buf[0];
    return 4.0 * 16 * 16 * (kind == 0 ? 32 : 64) * 2 * (double)iters;
}

static SLMX_TARGET_AVX512 uint64_t slmx_read_bytes_avx512(const uint8_t *p, size_t n, size_t pf) {
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 256 <= n; i += 256) {
        if (pf && i + pf + 256 <= n) {
            _mm_prefetch((const char *)(p + i + pf), _MM_HINT_T0);
            _mm_prefetch((const char *)(p + i + pf + 64), _MM_HINT_T0);
            _mm_prefetch((const char *)(p + i + pf + 128), _MM_HINT_T0);
            _mm_prefetch((const char *)(p + i + pf + 192), _MM_HINT_T0);
        }
        s0 = _mm512_add_epi64(s0, _mm512_load_si512((const void *)(p + i)));
        s1 = _mm512_add_epi64(s1, _mm512_load_si512((const void *)(p + i + 64)));
        s2 = _mm512_add_epi64(s2, _mm512_load_si512((const void *)(p + i + 128)));
        s3 = _mm512_add_epi64(s3, _mm512_load_si512((const void *)(p + i + 192)));
    }
    s0 = _mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3));
    uint64_t t = (uint64_t)_mm512_reduce_add_epi64(s0);
    for (; i < n; i++) t += p[i];
    return t;
}

static SLMX_TARGET_AVX2 uint64_t slmx_read_bytes_avx2(const uint8_t *p, size_t n, size_t pf) {
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {
        if (pf && i + pf + 128 <= n) {
            _mm_prefetch((const char *)(p + i + pf), _MM_HINT_T0);
            _mm_prefetch((const char *)(p + i + pf + 64), _MM_HINT_T0);
        }
        s0 = _mm256_add_epi64(s0, _mm256_load_si256((const __m256i *)(p + i)));
        s1 = _mm256_add_epi64(s1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        s2 = _mm256_add_epi64(s2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        s3 = _mm256_add_epi64(s3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    s0 = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
    uint64_t t[4];
    _mm256_storeu_si256((__m256i *)t, s0);
    uint64_t r = t[0] + t[1] + t[2] + t[3];
    for (; i < n; i++) r += p[i];
    return r;
}
#endif

static uint64_t slmx_read_bytes_scalar(const uint8_t *p, size_t n, size_t pf) {
    const uint64_t *q = (const uint64_t *)p;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0, m = n / 8;
    for (; i + 4 <= m; i += 4) {
#if defined(__GNUC__)
        if (pf && (i & 7) == 0 && 8 * i + pf + 64 <= n) __builtin_prefetch(p + 8 * i + pf);
#endif
        s0 += q[i]; s1 += q[i + 1]; s2 += q[i + 2]; s3 += q[i + 3];
    }
    for (; i < m; i++) s0 += q[i];
    uint64_t t = s0 + s1 + s2 + s3;
    for (size_t j = m * 8; j < n; j++) t += p[j];
    return t;
}

/* pf: software-prefetch distance in bytes ahead of the loads (0: none; the hardware prefetcher alone) */
static uint64_t slmx_read_bytes(int lvl, const uint8_t *p, size_t n, size_t pf) {
#if SLMX_X86
    if (lvl >= SLMX_SIMD_AVX512) return slmx_read_bytes_avx512(p, n, pf);
    if (lvl >= SLMX_SIMD_AVX2) return slmx_read_bytes_avx2(p, n, pf);
#endif
    return slmx_read_bytes_scalar(p, n, pf);
}

/* kind: 0 fp32 FMA at the level's width, 1 bf16 dot (AVX512_BF16), 2 int8 dot (VNNI),
 * 3 AMX bf16, 4 AMX int8. Returns flops done, or -1 when the level lacks the instruction. */
static double slmx_peak_run(int lvl, int kind, int amx, long iters, float *sink) {
#if SLMX_X86
    switch (kind) {
    case 0:
        if (lvl >= SLMX_SIMD_AVX512) return slmx_peak_fma_avx512(iters, sink);
        if (lvl >= SLMX_SIMD_AVX2) return slmx_peak_fma_avx2(iters, sink);
        return slmx_peak_fma_scalar(iters, sink);
    case 1: return lvl >= SLMX_SIMD_BF16 ? slmx_peak_dpbf16(iters, sink) : -1.0;
    case 2: return lvl >= SLMX_SIMD_VNNI ? slmx_peak_vnni(iters, sink) : -1.0;
    case 3: return (amx && lvl >= SLMX_SIMD_BF16) ? slmx_peak_amx(0, iters / 8 + 1, sink) : -1.0;
    case 4: return (amx && lvl >= SLMX_SIMD_VNNI) ? slmx_peak_amx(1, iters / 8 + 1, sink) : -1.0;
    }
    return -1.0;
#else
    (void)amx;
    return kind == 0 ? slmx_peak_fma_scalar(iters, sink) : -1.0;
#endif
}

#endif
