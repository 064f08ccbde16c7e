"""The roofline of this machine and where slmx's kernels sit under it (``slmx bench roofline``).

Ceilings (``measure_ceilings``): read bandwidth from memory (a buffer far beyond the caches) and
from the last-level cache, and peak rates of fp32 FMA, bf16 dot products (AVX512_BF16), int8 dot
products (VNNI) and AMX tiles (bf16, int8) where the CPU has them and the OS grants them (loops in
``slmx._kernels.peak``, rated on each thread's CPU time). Kernels (``measure_kernels``): fp32 and
bf16 GEMM, quantized GEMV (decode) and GEMM (prefill), attention; each gets its arithmetic
intensity (flops per byte moved from memory), its achieved rate, and the roofline at that
intensity, min(peak, intensity x bandwidth).
"""
from slmx._kernels import peak as _peak


def peak_flops(dtype="fp32", threads=1):
    """Peak GFLOP/s of ``threads`` cores for GEMM inputs of ``dtype`` ("fp32", "bf16", "int8").

    bf16: the AMX tiles when usable, else AVX512_BF16 dot products, else fp32 FMA (bf16 widened);
    int8: AMX int8, else VNNI, else fp32."""
    if dtype not in ("fp32", "bf16", "int8"):
        raise ValueError(f"dtype: expected 'fp32', 'bf16' or 'int8', got {dtype!r}")
    kinds = {"fp32": ["fp32"], "bf16": ["amx_bf16", "bf16", "fp32"], "int8": ["amx_int8", "int8", "fp32"]}[dtype]
    for kind in kinds:
        if _peak.available(kind):
            return _peak.peak(kind, threads, iters=400000 if kind.startswith("amx") else 2000000)
    raise RuntimeError("no peak measurement available")
