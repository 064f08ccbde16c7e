# Shared by every kernel module: the run-time SIMD dispatch level (see simd.h).
# `include "simd.pxi"` gives the module `_simd_level()` and `_set_simd_level(level)`.

cdef extern from "simd.h" nogil:
    int slmx_simd_level()
    int slmx_set_simd_level(int lvl)
    int slmx_amx_usable()
    int SLMX_SIMD_SCALAR, SLMX_SIMD_AVX2, SLMX_SIMD_AVX512, SLMX_SIMD_VNNI, SLMX_SIMD_BF16


def _simd_level():
    """The dispatch level this module uses (0 scalar .. 4 AVX-512 BF16)."""
    return slmx_simd_level()


def _set_simd_level(int level):
    """Force this module's dispatch level (capped at the hardware's); -1 restores the default."""
    return slmx_set_simd_level(level)
