# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""This machine's ceilings for the roofline: peak instruction throughput and read bandwidth.

``peak(kind, nthreads)``: GFLOP/s (GOP/s for int8) of a loop that runs one instruction kind on
independent accumulators in every thread at once; kinds: "fp32" (FMA at the dispatch level's
width), "bf16" (AVX512_BF16 dot), "int8" (AVX512_VNNI dot), "amx_bf16", "amx_int8" (AMX tiles,
only after the OS granted them). ``read_bandwidth(buf, nthreads)``: GB/s of reading buf once,
split over the threads.

Rates are summed over the threads, each thread's from its own CPU time (CLOCK_THREAD_CPUTIME_ID):
on a shared machine the time a thread spends descheduled does not count, so the figure is the
hardware's ceiling rather than this moment's share of it.
"""
import numpy as np
cimport numpy as cnp
from cython.parallel cimport parallel, prange
from libc.stdint cimport uint8_t, uint64_t
from openmp cimport omp_get_wtime

include "simd.pxi"

cnp.import_array()

cdef extern from "peak_simd.h" nogil:
    double slmx_peak_run(int lvl, int kind, int amx, long iters, float *sink)
    uint64_t slmx_read_bytes(int lvl, const uint8_t *p, size_t n, size_t pf)
    double slmx_thread_seconds()

cdef extern from "simd.h" nogil:
    ctypedef struct slmx_cpu_features_t:
        int amx_bf16, amx_int8
    const slmx_cpu_features_t *slmx_cpu_features()

KINDS = {"fp32": 0, "bf16": 1, "int8": 2, "amx_bf16": 3, "amx_int8": 4}


def available(str kind):
    """True when this machine (at the current dispatch level) runs ``kind``."""
    cdef int lvl = slmx_simd_level()
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {sorted(KINDS)}, got {kind!r}")
    if kind == "fp32":
        return True
    if kind == "bf16":
        return lvl >= SLMX_SIMD_BF16
    if kind == "int8":
        return lvl >= SLMX_SIMD_VNNI
    cdef const slmx_cpu_features_t *f = slmx_cpu_features()
    if kind == "amx_bf16":
        return lvl >= SLMX_SIMD_BF16 and bool(f.amx_bf16) and bool(slmx_amx_usable())
    return lvl >= SLMX_SIMD_VNNI and bool(f.amx_int8) and bool(slmx_amx_usable())


def peak(str kind="fp32", int nthreads=1, long iters=2000000, int repeats=3):
    """Best GFLOP/s over ``repeats`` runs of ``iters`` iterations per thread, all threads at once.

    Returns None when ``kind`` is not available here."""
    if not available(kind):
        return None
    if nthreads < 1 or iters < 1 or repeats < 1:
        raise ValueError("nthreads, iters and repeats must be >= 1")
    cdef int k = KINDS[kind], lvl = slmx_simd_level(), amx = 1 if kind.startswith("amx") else 0
    cdef double best = 0.0, rate, c0
    cdef float sink = 0.0
    cdef float[64] sinks
    cdef int r, t
    cdef double[64] done
    cdef double[64] secs
    if nthreads > 64:
        nthreads = 64
    for r in range(repeats):
        with nogil:
            for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
                sinks[t] = 0.0
                c0 = slmx_thread_seconds()
                done[t] = slmx_peak_run(lvl, k, amx, iters, &sinks[t])
                secs[t] = slmx_thread_seconds() - c0
        rate = 0.0
        for t in range(nthreads):
            if secs[t] > 0:
                rate += done[t] / secs[t] / 1e9
            sink += sinks[t]
        best = max(best, rate)
    return best + 0.0 * sink


def read_bandwidth(buf, int nthreads=1, int repeats=5, bint wall=False, long prefetch=0):
    """Best GB/s of reading the bytes of ``buf`` (a contiguous numpy array) once, split over threads.

    prefetch: a software prefetch this many bytes ahead of the loads (0: none, the hardware
    prefetcher alone; kernels that prefetch can read faster than the plain loop).

    wall: rate on the wall clock of the whole read (what a kernel timed the same way can reach on
    this machine as it is loaded now) instead of the threads' CPU time."""
    a = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    cdef const uint8_t[::1] v = a
    cdef size_t n = v.shape[0]
    if n < 4096:
        raise ValueError("buf: need at least 4096 bytes")
    if nthreads < 1:
        raise ValueError("nthreads must be >= 1")
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, got {prefetch}")
    cdef size_t pf = <size_t>prefetch
    cdef const uint8_t *p = &v[0]
    cdef size_t off = (64 - (<size_t>p) % 64) % 64
    cdef size_t body = ((n - off) // 4096) * 4096
    cdef size_t chunk = (body // 4096 + nthreads - 1) // nthreads * 4096
    cdef int lvl = slmx_simd_level(), r, t
    cdef double best = 0.0, rate, s0, w0 = 0.0, w1 = 0.0
    cdef uint64_t s = 0
    cdef uint64_t[64] sums
    cdef double[64] secs
    cdef size_t[64] nb
    cdef size_t c0, c1
    if nthreads > 64:
        nthreads = 64
    for r in range(repeats):
        with nogil:
            w0 = omp_get_wtime()
            for t in prange(nthreads, num_threads=nthreads, schedule="static", chunksize=1):
                c0 = min(body, t * chunk)
                c1 = min(body, c0 + chunk)
                nb[t] = c1 - c0
                s0 = slmx_thread_seconds()
                sums[t] = slmx_read_bytes(lvl, p + off + c0, c1 - c0, pf)
                secs[t] = slmx_thread_seconds() - s0
            w1 = omp_get_wtime()
        rate = 0.0
        for t in range(nthreads):
            s += sums[t]
            if secs[t] > 0:
                rate += nb[t] / secs[t] / 1e9
        if wall:
            rate = body / (w1 - w0) / 1e9 if w1 > w0 else 0.0
        best = max(best, rate)
    return best + 0.0 * s
