# The block-format kernels of quant_simd.h and the thresholds of quantized linear, shared by
# the modules that drive them (quant: the public entry points; fused: few-row decode steps).
# `include "quant_decl.pxi"` after the libc.stdint cimports.

cdef extern from "quant_simd.h" nogil:
    int SLMX_NR
    void slmx_f16_table_init()
    int slmx_block_size(int t)
    int slmx_type_size(int t)
    void slmx_dequant_blocks(int t, const uint8_t *src, float *y, int64_t nblocks)
    void slmx_quant_blocks(int t, const float *x, uint8_t *dst, int64_t nblocks)
    size_t slmx_xq_row_bytes(int t, int K)
    size_t slmx_panel_bytes(int t, int amx)
    int slmx_xq_rows(int M, int amx)
    int slmx_row_group(int amx)
    int slmx_use_amx(int level, int t, int M, int allowed)
    int slmx_q_set_gfni(int allowed)
    int slmx_is_b32(int t)
    int slmx_is_k(int t)
    int slmx_is_float(int t)
    void slmx_q_quantize_x(int level, int t, const float *x, int K, uint8_t *dst)
    void slmx_q_linear_range(int level, int amx, int t, const uint8_t *w, size_t rb, int64_t n0, int64_t n1,
                             const uint8_t *x, size_t ldx, int M, int K, float *out, size_t ldo,
                             void *scratch)

cdef extern from "stdlib.h" nogil:
    void *aligned_alloc(size_t alignment, size_t size)

# Work below this many bytes (weights streamed, elements converted) runs on one thread.
DEF PAR_MIN_BYTES = 65536
# Activation bytes kept cache-resident per pass of linear over the weights (M > 1).
DEF X_PASS_BYTES = 1048576
