/* slmx SIMD support: run-time CPU feature detection and dispatch levels.
 *
 * Kernels compile their SIMD bodies with per-function target attributes
 * (SLMX_TARGET_AVX2, SLMX_TARGET_AVX512, SLMX_TARGET_AVX512VNNI), so the extension is
 * built for baseline x86-64 and never executes an instruction the CPU lacks: the caller
 * picks the body from slmx_simd_level(), which is fixed once per process.
 *
 * Levels: 0 scalar (portable C), 1 AVX2+FMA+F16C, 2 AVX-512 F/BW/VL/DQ, 3 level 2 + VNNI,
 *         4 level 3 + AVX512_BF16.
 * SLMX_SIMD=scalar|avx2|avx512|vnni|bf16 in the environment caps the level (for tests).
 */
#ifndef SLMX_SIMD_H
#define SLMX_SIMD_H

#include <stdlib.h>
#include <string.h>
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#define SLMX_X86 1
#include <immintrin.h>
#include <cpuid.h>
#else
#define SLMX_X86 0
#endif

#define SLMX_SIMD_SCALAR 0
#define SLMX_SIMD_AVX2 1
#define SLMX_SIMD_AVX512 2
#define SLMX_SIMD_VNNI 3
#define SLMX_SIMD_BF16 4

#if SLMX_X86
#define SLMX_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define SLMX_TARGET_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")))
#define SLMX_TARGET_AVX512VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define SLMX_TARGET_AVX512BF16 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16")))
#endif

typedef struct {
    int avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512dq, avx512vnni, avx512bf16;
    int avxvnni, amx_tile, amx_int8, amx_bf16, os_avx, os_avx512, os_amx;
} slmx_cpu_features_t;

static slmx_cpu_features_t slmx_cpu_features_cache;
static int slmx_cpu_features_done = 0;

static inline void slmx_cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
#if SLMX_X86
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
#else
    r[0] = r[1] = r[2] = r[3] = 0; (void)leaf; (void)sub;
#endif
}

static inline uint64_t slmx_xgetbv0(void) {
#if SLMX_X86
    uint32_t lo, hi;
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
#else
    return 0;
#endif
}

#if defined(__linux__) && SLMX_X86
#include <unistd.h>
#include <sys/syscall.h>
#define SLMX_ARCH_GET_XCOMP_PERM 0x1022
#define SLMX_ARCH_REQ_XCOMP_PERM 0x1023
#define SLMX_XFEATURE_XTILEDATA 18
/* AMX tile data needs the kernel's permission per process (Linux >= 5.16). */
static int slmx_request_amx(void) {
    unsigned long bitmask = 0;
    if (syscall(SYS_arch_prctl, SLMX_ARCH_REQ_XCOMP_PERM, SLMX_XFEATURE_XTILEDATA) != 0) return 0;
    if (syscall(SYS_arch_prctl, SLMX_ARCH_GET_XCOMP_PERM, &bitmask) != 0) return 0;
    return (bitmask & (1UL << SLMX_XFEATURE_XTILEDATA)) != 0;
}
#else
static int slmx_request_amx(void) { return 0; }
#endif

static const slmx_cpu_features_t *slmx_cpu_features(void) {
    if (slmx_cpu_features_done) return &slmx_cpu_features_cache;
    slmx_cpu_features_t f;
    memset(&f, 0, sizeof f);
#if SLMX_X86
    unsigned r[4];
    slmx_cpuid(0, 0, r);
    unsigned max_leaf = r[0];
    slmx_cpuid(1, 0, r);
    int osxsave = (r[2] >> 27) & 1;
    f.fma = (r[2] >> 12) & 1;
    f.f16c = (r[2] >> 29) & 1;
    int avx = (r[2] >> 28) & 1;
    uint64_t xcr0 = osxsave ? slmx_xgetbv0() : 0;
    f.os_avx = avx && ((xcr0 & 0x6) == 0x6);
    f.os_avx512 = f.os_avx && ((xcr0 & 0xe0) == 0xe0);
    if (max_leaf >= 7) {
        slmx_cpuid(7, 0, r);
        f.avx2 = (r[1] >> 5) & 1;
        f.avx512f = (r[1] >> 16) & 1;
        f.avx512dq = (r[1] >> 17) & 1;
        f.avx512bw = (r[1] >> 30) & 1;
        f.avx512vl = (r[1] >> 31) & 1;
        f.avx512vnni = (r[2] >> 11) & 1;
        f.amx_bf16 = (r[3] >> 22) & 1;
        f.amx_tile = (r[3] >> 24) & 1;
        f.amx_int8 = (r[3] >> 25) & 1;
        slmx_cpuid(7, 1, r);
        f.avxvnni = (r[0] >> 4) & 1;
        f.avx512bf16 = (r[0] >> 5) & 1;
    }
    if (!f.os_avx) { f.avx2 = f.fma = f.f16c = f.avxvnni = 0; }
    if (!f.os_avx512) { f.avx512f = f.avx512dq = f.avx512bw = f.avx512vl = f.avx512vnni = f.avx512bf16 = 0; }
#endif
    slmx_cpu_features_cache = f;
    slmx_cpu_features_done = 1;
    return &slmx_cpu_features_cache;
}

/* Ask the OS for AMX (once). Returns 1 when AMX tiles may be used. */
static int slmx_amx_usable(void) {
    static int state = -1;
    if (state < 0) {
        const slmx_cpu_features_t *f = slmx_cpu_features();
        const char *env = getenv("SLMX_AMX");
        if (env && strcmp(env, "0") == 0) state = 0;
        else state = (f->amx_tile && (f->amx_bf16 || f->amx_int8)) ? slmx_request_amx() : 0;
        slmx_cpu_features_cache.os_amx = state;
    }
    return state;
}

static int slmx_simd_hw_level(void) {
    const slmx_cpu_features_t *f = slmx_cpu_features();
    int lvl = SLMX_SIMD_SCALAR;
    if (f->avx2 && f->fma && f->f16c) lvl = SLMX_SIMD_AVX2;
    if (lvl == SLMX_SIMD_AVX2 && f->avx512f && f->avx512bw && f->avx512vl && f->avx512dq) lvl = SLMX_SIMD_AVX512;
    if (lvl == SLMX_SIMD_AVX512 && f->avx512vnni) lvl = SLMX_SIMD_VNNI;
    if (lvl == SLMX_SIMD_VNNI && f->avx512bf16) lvl = SLMX_SIMD_BF16;
    return lvl;
}

static int slmx_simd_level_value = -1;

/* The dispatch level in force: the hardware level, capped by SLMX_SIMD. */
static inline int slmx_simd_level(void) {
    if (slmx_simd_level_value >= 0) return slmx_simd_level_value;
    int lvl = slmx_simd_hw_level();
    const char *env = getenv("SLMX_SIMD");
    if (env && *env) {
        int cap = lvl;
        if (!strcmp(env, "scalar") || !strcmp(env, "none") || !strcmp(env, "0")) cap = SLMX_SIMD_SCALAR;
        else if (!strcmp(env, "avx2")) cap = SLMX_SIMD_AVX2;
        else if (!strcmp(env, "avx512")) cap = SLMX_SIMD_AVX512;
        else if (!strcmp(env, "vnni")) cap = SLMX_SIMD_VNNI;
        else if (!strcmp(env, "bf16")) cap = SLMX_SIMD_BF16;
        if (cap < lvl) lvl = cap;
    }
    slmx_simd_level_value = lvl;
    return lvl;
}

/* Override (tests): set the level, capped at what the hardware has. Returns the level set. */
static inline int slmx_set_simd_level(int lvl) {
    int hw = slmx_simd_hw_level();
    if (lvl < 0) { slmx_simd_level_value = -1; return slmx_simd_level(); }
    slmx_simd_level_value = lvl < hw ? lvl : hw;
    return slmx_simd_level_value;
}

#endif
