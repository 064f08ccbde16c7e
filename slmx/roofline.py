"""The roofline of this machine and where slmx's kernels sit under it (``slmx bench roofline``).

Ceilings (``measure_ceilings``): read bandwidth from memory (a buffer far beyond the caches) and
from a buffer the size of a few L2s, and peak rates of fp32 FMA, bf16 dot products
(AVX512_BF16), int8 dot products (VNNI) and AMX tiles (bf16, int8) where the CPU has them and the
OS grants them (loops in ``slmx._kernels.peak``). Kernels (``measure_kernels``): fp32 and bf16
GEMM and GEMV, quantized GEMV (decode) and GEMM (prefill), flash attention; each gets its
arithmetic intensity I (flops per byte of its operands), its rate, and its roofline
min(peak of its instruction kind, I x the read bandwidth of a buffer as large as its operands),
so a matrix that the last-level cache holds is held to the cache's rate, not to DRAM's.

The ceilings are rated on each thread's CPU time (the loops have no synchronisation, so time a
thread spends descheduled on a shared machine does not count); the kernels on the best wall-clock
time of repeated calls (their threads meet at barriers, where CPU time would count spinning).
On an idle machine both are the wall-clock rates; on a loaded one the kernels' figures drop.
"""
import os
import time

import numpy as np

from slmx._kernels import peak as _peak

__all__ = ["peak_flops", "measure_ceilings", "measure_kernels", "report", "plot", "run"]


def peak_flops(dtype="fp32", threads=1):
    """Peak GFLOP/s of ``threads`` cores for GEMM inputs of ``dtype`` ("fp32", "bf16", "int8").

    bf16: the AMX tiles when usable, else AVX512_BF16 dot products, else fp32 FMA (bf16 widened);
    int8: AMX int8, else VNNI, else fp32."""
    if dtype not in ("fp32", "bf16", "int8"):
        raise ValueError(f"dtype: expected 'fp32', 'bf16' or 'int8', got {dtype!r}")
    for kind in _kinds(dtype):
        if _peak.available(kind):
            return _peak.peak(kind, threads, iters=400000 if kind.startswith("amx") else 2000000)
    raise RuntimeError("no peak measurement available")


def _kinds(dtype):
    return {"fp32": ["fp32"], "bf16": ["amx_bf16", "bf16", "fp32"], "int8": ["amx_int8", "int8", "fp32"]}[dtype]


def measure_ceilings(threads=2, quick=False):
    """dict: 'bandwidth' GB/s (memory), 'bandwidth_cache' GB/s (16 MiB buffer), and GFLOP/s (GOP/s
    for int8) for each available kind of 'fp32', 'bf16', 'int8', 'amx_bf16', 'amx_int8'."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    mem = np.ones((64 if quick else 1024) << 20, np.uint8)
    cache = np.ones(16 << 20, np.uint8)
    out = {"threads": threads,
           "bandwidth": _peak.read_bandwidth(mem, threads, repeats=2 if quick else 5),
           "bandwidth_cache": _peak.read_bandwidth(cache, threads, repeats=3 if quick else 10)}
    del mem
    for kind in ("fp32", "bf16", "int8", "amx_bf16", "amx_int8"):
        iters = 50000 if quick else 2000000
        if kind.startswith("amx"):
            iters //= 4
        r = _peak.peak(kind, threads, iters=iters, repeats=2 if quick else 3)
        if r is not None:
            out[kind] = r
    return out


def _best_time(fn, min_time):
    """best wall-clock seconds of one call of fn over calls filling min_time (at least 3)"""
    fn()
    best, n = float("inf"), 0
    end = time.perf_counter() + min_time
    while n < 3 or time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        n += 1
    return max(best, 1e-9)


def measure_kernels(threads=2, quick=False):
    """list of dicts (name, kind, flops, bytes, seconds) for slmx's main kernels at model shapes.

    kind: the ceiling the kernel's instructions run against (fp32 / bf16 / int8 peak)."""
    from slmx import ops, qtypes
    from slmx._kernels import attention as _attention
    from slmx._kernels import gemm as _gemm
    from slmx._kernels import quant as _quant

    rng = np.random.default_rng(0)
    min_time = 0.05 if quick else 0.3
    big_n = 2048 if quick else 8192
    m_big = 128 if quick else 512
    res = []

    def add(name, kind, flops, nbytes, fn):
        # the memory roof at this kernel's data size (the last-level cache may hold it): a plain
        # read of as many bytes, timed like the kernel (best wall-clock run)
        buf = np.ones(max(int(nbytes), 1 << 16), np.uint8)
        bw = _peak.read_bandwidth(buf, threads, repeats=3 if quick else 10, wall=True)
        del buf
        res.append({"name": name, "kind": kind, "flops": float(flops), "bytes": float(nbytes),
                    "seconds": _best_time(fn, min_time), "bandwidth": bw})

    # fp32 GEMM (x @ W^T) and GEMV
    K = N = 2048
    x = rng.standard_normal((m_big, K), dtype=np.float32)
    w = rng.standard_normal((N, K), dtype=np.float32)
    o = np.empty((m_big, N), np.float32)
    add(f"fp32 GEMM {m_big}x{K}x{N}", "fp32", 2 * m_big * K * N, 4 * (m_big * K + N * K + m_big * N),
        lambda: _gemm.linear_f32(x, w, o, threads))
    wv = rng.standard_normal((big_n, 4096), dtype=np.float32)
    xv = rng.standard_normal((1, 4096), dtype=np.float32)
    ov = np.empty((1, big_n), np.float32)
    add(f"fp32 GEMV 1x4096x{big_n}", "fp32", 2 * 4096 * big_n, wv.nbytes, lambda: _gemm.linear_f32(xv, wv, ov, threads))
    del wv
    # bf16
    xb, wb = ops.to_bf16(x), ops.to_bf16(w)
    add(f"bf16 GEMM {m_big}x{K}x{N}", "bf16", 2 * m_big * K * N, 2 * (m_big * K + N * K) + 4 * m_big * N,
        lambda: _gemm.linear_bf16(xb, wb, o, threads))
    wvb = ops.to_bf16(rng.standard_normal((big_n, 4096), dtype=np.float32))
    xvb = ops.to_bf16(xv)
    add(f"bf16 GEMV 1x4096x{big_n}", "bf16", 2 * 4096 * big_n, wvb.nbytes,
        lambda: _gemm.linear_bf16(xvb, wvb, ov, threads))
    del wvb
    # quantized: GEMV per type (decode) and a Q8_0 / Q4_K GEMM (prefill)
    for tname in ("Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q6_K"):
        tid = qtypes.qtype(tname).id
        wq = _random_blocks(tname, big_n, 4096, rng)
        add(f"{tname} GEMV 1x4096x{big_n}", "int8", 2 * 4096 * big_n, wq.nbytes,
            lambda: _quant.linear(xv, wq, tid, ov, threads))
    for tname in ("Q8_0", "Q4_K"):
        tid = qtypes.qtype(tname).id
        wq = _random_blocks(tname, N, K, rng)
        add(f"{tname} GEMM {m_big}x{K}x{N}", "int8", 2 * m_big * K * N, wq.nbytes + 4 * (m_big * K + m_big * N),
            lambda: _quant.linear(x, wq, tid, o, threads))
    # flash attention, causal prefill, Gemma 3 270M heads (H 4, Hkv 1, D 256)
    T = 512 if quick else 2048
    q = rng.standard_normal((T, 4, 256), dtype=np.float32)
    k = rng.standard_normal((T, 1, 256), dtype=np.float32)
    v = rng.standard_normal((T, 1, 256), dtype=np.float32)
    oa = np.empty_like(q)
    add(f"attention T={T} H=4 D=256", "fp32", 2 * 2 * 4 * 256 * T * (T + 1) / 2, q.nbytes * 2 + k.nbytes + v.nbytes,
        lambda: _attention.attention(q, k, v, oa, 1 / 16, True, 0, 0, threads))
    return res


def _random_blocks(name, n, k, rng):
    """random block bytes with small finite fp16 scales (any quant bytes are valid)"""
    from slmx import qtypes
    q = qtypes.qtype(name)
    nb = n * k // q.block_size
    b = rng.integers(0, 256, size=(nb, q.type_size), dtype=np.uint8)
    offsets = {"Q8_0": (0,), "Q4_0": (0,), "Q5_0": (0,), "Q4_K": (0, 2), "Q6_K": (208,)}[name]
    for o in offsets:
        b[:, o:o + 2] = rng.uniform(-0.01, 0.01, nb).astype(np.float16).view(np.uint8).reshape(nb, 2)
    return b.reshape(n, -1)


def _roof(kernel, ceilings):
    """(roofline GFLOP/s, bound, peak kind) at the kernel's intensity"""
    kinds = {"fp32": ["fp32"], "bf16": ["amx_bf16", "bf16", "fp32"], "int8": ["amx_int8", "int8", "fp32"]}
    peak_kind = next(k for k in kinds[kernel["kind"]] if k in ceilings)
    if kernel["kind"] != "fp32" and "GEMV" in kernel["name"]:
        # M = 1 runs on the vector units (AMX needs 16 rows): its compute roof is the dot product's
        peak_kind = next(k for k in kinds[kernel["kind"]] if k in ceilings and not k.startswith("amx"))
    intensity = kernel["flops"] / kernel["bytes"]
    mem = intensity * kernel.get("bandwidth", ceilings["bandwidth"])
    p = ceilings[peak_kind]
    return (mem, "memory", peak_kind) if mem < p else (p, "compute", peak_kind)


def report(ceilings, kernels):
    """The roofline table as text lines."""
    lines = [f"machine ({ceilings['threads']} threads): memory read {ceilings['bandwidth']:.1f} GB/s, "
             f"16 MiB read {ceilings['bandwidth_cache']:.1f} GB/s"]
    for kind, label in (("fp32", "fp32 FMA"), ("bf16", "bf16 dot (AVX512_BF16)"), ("int8", "int8 dot (VNNI)"),
                        ("amx_bf16", "AMX bf16"), ("amx_int8", "AMX int8")):
        if kind in ceilings:
            lines.append(f"  peak {label:24s} {ceilings[kind]:9.0f} G{'OP' if 'int8' in kind else 'FLOP'}/s")
    lines.append("")
    hdr = (f"{'kernel':32s} {'flop/B':>8s} {'GFLOP/s':>9s} {'GB/s':>7s} {'read GB/s':>9s} {'roof':>9s} "
           f"{'bound':>16s} {'% roof':>7s}")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for k in kernels:
        roof, bound, pk = _roof(k, ceilings)
        g = k["flops"] / k["seconds"] / 1e9
        gb = k["bytes"] / k["seconds"] / 1e9
        bw = k.get("bandwidth", ceilings["bandwidth"])
        lines.append(f"{k['name']:32s} {k['flops'] / k['bytes']:8.2f} {g:9.1f} {gb:7.1f} {bw:9.1f} {roof:9.1f} "
                     f"{bound + ('' if bound == 'memory' else ':' + pk):>16s} {100 * g / roof:6.0f}%")
    return lines


def have_matplotlib():
    """Whether matplotlib (needed only for the plot) can be imported."""
    import importlib.util
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):     # a None entry in sys.modules raises ValueError
        return False


def plot(ceilings, kernels, path):
    """Write the roofline plot (log-log GFLOP/s against flop/byte) to ``path`` (PNG, atomically)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("the roofline plot needs matplotlib (pip install 'slmx[plot]')") from e
    fig, ax = plt.subplots(figsize=(9, 6))
    xs = np.logspace(-2, 4, 200)
    bw = ceilings["bandwidth"]
    for kind, style in (("fp32", "-"), ("bf16", "--"), ("int8", "-."), ("amx_bf16", ":"), ("amx_int8", ":")):
        if kind in ceilings:
            ax.plot(xs, np.minimum(ceilings[kind], xs * bw), style, label=f"{kind} peak {ceilings[kind]:.0f}")
    ax.plot(xs, xs * ceilings["bandwidth_cache"], color="0.7", lw=0.8,
            label=f"16 MiB read {ceilings['bandwidth_cache']:.0f} GB/s")
    for k in kernels:
        i = k["flops"] / k["bytes"]
        g = k["flops"] / k["seconds"] / 1e9
        ax.scatter([i], [g], s=25, zorder=3)
        ax.annotate(k["name"], (i, g), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (flop / byte)")
    ax.set_ylabel("GFLOP/s (GOP/s for int8)")
    ax.set_title(f"slmx roofline: memory {bw:.1f} GB/s, {ceilings['threads']} threads")
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = os.fspath(path)
    tmp = path + ".tmp.png"
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def run(threads=2, quick=False, png="roofline.png", out=print):
    """Measure, print the table through ``out``, write the plot; returns (ceilings, kernels)."""
    ceilings = measure_ceilings(threads, quick)
    kernels = measure_kernels(threads, quick)
    for line in report(ceilings, kernels):
        out(line)
    if png:
        out(f"roofline plot: {plot(ceilings, kernels, png)}")
    return ceilings, kernels
