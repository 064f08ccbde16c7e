"""The roofline of this machine and where slmx's kernels sit under it (``slmx bench roofline``).

Ceilings (``measure_ceilings``): the read-bandwidth curve, measured once: buffers from half of
each thread's L2 up to beyond the last-level cache in steps of 2x (level "L2", "L3" or "DRAM" by
the size against the caches), each read in interleaved rounds and rated by its best round (a
ceiling: a busy moment only lowers a round), then made non-increasing in size (a larger buffer
that read faster shows what the smaller one can do); and peak rates of fp32 FMA, bf16 dot
products (AVX512_BF16), int8 dot products (VNNI) and AMX tiles (bf16, int8) where the CPU has them
and the OS grants them (loops in ``slmx._kernels.peak``). Kernels (``measure_kernels``): fp32 and
bf16 GEMM and GEMV, quantized GEMV (decode) and GEMM (prefill), flash attention; each gets its
arithmetic intensity I (flops per byte of its operands), its rate, and its roofline
min(peak of its instruction kind, I x the read bandwidth at its working set) where the working set
picks the curve's point of the largest buffer not larger than the kernel's operands (so a matrix the
last-level cache holds is held to the cache's rate, not DRAM's). Memory- or compute-bound is I
against the ridge point peak / bandwidth of that roof.

The ceilings are rated on each thread's CPU time (the loops have no synchronisation, so time a
thread spends descheduled on a shared machine does not count); the kernels on the best wall-clock
time of repeated calls (their threads meet at barriers, where CPU time would count spinning).
On an idle machine both are the wall-clock rates; on a loaded one the kernels' figures drop. A
kernel above its roof is flagged, not printed as a percentage over 100: it means the read
measurement came out below what the kernel reached (see ``assess``).
"""
import os
import time

import numpy as np

from slmx._kernels import peak as _peak

__all__ = ["peak_flops", "measure_bandwidth", "measure_ceilings", "measure_kernels", "assess", "report",
           "to_json", "plot", "run"]


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


def _level(nbytes, threads, caches):
    """'L2', 'L3' or 'DRAM': where a working set of nbytes read by ``threads`` threads lives"""
    _, l2, l3 = caches
    if nbytes <= l2 * threads:
        return "L2"
    return "L3" if nbytes <= l3 else "DRAM"


def measure_bandwidth(threads=2, quick=False, rounds=None, caches=None, sizes=None):
    """The read-bandwidth curve: list of dicts (level, bytes, gbps), sizes ascending in steps of 2x.

    From half of each thread's L2 (``threads`` x L2 / 2) up to 2 x L3 (at most 1 GiB; 256 MiB with
    ``quick``); each round reads every size (>= 3 passes back to back, as a kernel's repeated calls
    find what fits in the caches; every other round with a software prefetch 8 KiB ahead), the rounds
    interleave the sizes (a burst of load from other processes hits all of them alike), and each size
    keeps its best round's GB/s (thread
    CPU time, ``slmx._kernels.peak.read_bandwidth``). Then a point's rate is raised to that of any
    larger buffer that read faster (the caches make the true curve non-increasing). ``sizes``: these
    buffer sizes (bytes, ascending) instead. ``run`` measures the curve again after the kernels and
    keeps the best of both (``merge_curves``)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if caches is None:
        from slmx._kernels.cpu import cache_sizes
        caches = cache_sizes()
    _, l2, l3 = caches
    rounds = rounds or (4 if quick else 16)
    if sizes is None:
        top = min(max(2 * l3, 64 << 20), (256 if quick else 1024) << 20)
        sizes = []
        n = max(threads * l2 // 2, 1 << 16)
        while n < top:
            sizes.append(n)
            n *= 2
        sizes.append(top)
    sizes = [int(n) for n in sizes]
    if not sizes or sizes != sorted(sizes) or sizes[0] < 4096:
        raise ValueError(f"sizes: expected ascending byte counts >= 4096, got {sizes}")
    top = sizes[-1]
    buf = np.ones(top, np.uint8)          # one buffer; each size reads its prefix
    best = [0.0] * len(sizes)
    for r in range(rounds):
        # every other round with a software prefetch 8 KiB ahead (as the GEMV kernels do; it reads
        # faster at some sizes and slower at others): the curve is the better of both loops
        pf = 8192 if r % 2 else 0
        for i, n in enumerate(sizes):
            # >= 3 passes back to back (the first brings what fits into the caches, as a kernel's
            # repeated calls do), >= 64 MiB in all for the small buffers
            reps = max(3, min(32, (64 << 20) // n))
            best[i] = max(best[i], _peak.read_bandwidth(buf[:n], threads, repeats=reps, prefetch=pf))
    del buf
    for i in range(len(sizes) - 2, -1, -1):
        best[i] = max(best[i], best[i + 1])
    return [{"level": _level(n, threads, caches), "bytes": int(n), "gbps": float(g)} for n, g in zip(sizes, best)]


def merge_curves(ceilings, curve):
    """Raise each point of ``ceilings['bandwidth_curve']`` to the same size's rate in ``curve`` (another
    measurement of the same sizes) and refresh 'bandwidth' / 'bandwidth_levels'; returns ceilings."""
    old = ceilings["bandwidth_curve"]
    if [p["bytes"] for p in old] != [p["bytes"] for p in curve]:
        raise ValueError("merge_curves: the curves were measured at different sizes")
    ceilings["bandwidth_curve"] = [dict(p, gbps=max(p["gbps"], q["gbps"])) for p, q in zip(old, curve)]
    ceilings["bandwidth"] = ceilings["bandwidth_curve"][-1]["gbps"]
    ceilings["bandwidth_levels"] = {p["level"]: p["gbps"] for p in ceilings["bandwidth_curve"]}
    return ceilings


def measure_ceilings(threads=2, quick=False):
    """dict: 'threads'; 'bandwidth_curve' (``measure_bandwidth``); 'bandwidth' GB/s of its largest
    buffer (memory); 'bandwidth_levels' {level: GB/s of that level's largest buffer}; and GFLOP/s
    (GOP/s for int8) for each available kind of 'fp32', 'bf16', 'int8', 'amx_bf16', 'amx_int8'."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    curve = measure_bandwidth(threads, quick)
    out = {"threads": threads, "bandwidth_curve": curve, "bandwidth": curve[-1]["gbps"],
           "bandwidth_levels": {p["level"]: p["gbps"] for p in curve}}
    for kind in ("fp32", "bf16", "int8", "amx_bf16", "amx_int8"):
        iters = 50000 if quick else 2000000
        if kind.startswith("amx"):
            iters //= 4
        r = _peak.peak(kind, threads, iters=iters, repeats=2 if quick else 3)
        if r is not None:
            out[kind] = r
    return out


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def _best_time(fn, min_time, clock="wall"):
    """best seconds of one call of fn over calls filling min_time of wall time (at least 3), on the
    wall clock or the calling thread's CPU time (``clock`` 'cpu')"""
    c = CLOCKS[clock]
    fn()
    best, n = float("inf"), 0
    end = time.perf_counter() + min_time
    while n < 3 or time.perf_counter() < end:
        t0 = c()
        fn()
        best = min(best, c() - t0)
        n += 1
    return max(best, 1e-9)


def _check_clock(clock, threads):
    if clock not in CLOCKS:
        raise ValueError(f"clock: expected 'wall' or 'cpu', got {clock!r}")
    if clock == "cpu" and threads != 1:
        raise ValueError(f"--clock cpu needs 1 thread (-t 1), got {threads}: with more threads the kernels' "
                         "CPU time counts their spinning at barriers")


def measure_kernels(threads=2, quick=False, clock="wall"):
    """list of dicts (name, kind, flops, bytes, seconds) for slmx's main kernels at model shapes.

    kind: the ceiling the kernel's instructions run against (fp32 / bf16 / int8 peak). clock:
    'wall', or 'cpu' (1 thread only: the kernel runs on the calling thread, whose CPU time leaves
    out the time it was descheduled, like the ceilings' loops; for a loaded shared machine)."""
    _check_clock(clock, threads)
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
        res.append({"name": name, "kind": kind, "flops": float(flops), "bytes": float(nbytes),
                    "seconds": _best_time(fn, min_time, clock)})

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


def _curve(ceilings):
    """the bandwidth curve of ``ceilings`` (a one-point DRAM curve when only 'bandwidth' is given)"""
    return ceilings.get("bandwidth_curve") or [{"level": "DRAM", "bytes": 0, "gbps": ceilings["bandwidth"]}]


def _mib(n):
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def assess(kernel, ceilings):
    """dict: where ``kernel`` (a ``measure_kernels`` entry) sits under the roofline of ``ceilings``.

    Keys: intensity (flop/B), gflops, gbps (operand bytes / s), level / level_bytes / bandwidth (the
    curve point of the largest buffer not larger than the kernel's operands: its roof's GB/s),
    peak_kind / peak (the compute roof: M = 1 runs on the vector units, no AMX), ridge (peak /
    bandwidth, flop/B), bound ('memory' when intensity < ridge, else 'compute'), roof (GFLOP/s),
    percent (of the roof, None when above it) and above_roof (True when the kernel beat its roof:
    the read measurement came out below what the kernel reached; the percentage would be
    meaningless)."""
    kinds = {"fp32": ["fp32"], "bf16": ["amx_bf16", "bf16", "fp32"], "int8": ["amx_int8", "int8", "fp32"]}
    avail = [k for k in kinds[kernel["kind"]] if k in ceilings]
    if kernel["kind"] != "fp32" and "GEMV" in kernel["name"]:
        # M = 1 runs on the vector units (AMX needs 16 rows): its compute roof is the dot product's
        avail = [k for k in avail if not k.startswith("amx")]
    peak_kind = avail[0]
    curve = _curve(ceilings)
    point = curve[0]
    for p in curve:
        if p["bytes"] <= kernel["bytes"]:
            point = p
    bw = kernel.get("bandwidth", point["gbps"])       # an explicit per-kernel bandwidth wins
    intensity = kernel["flops"] / kernel["bytes"]
    peak = ceilings[peak_kind]
    ridge = peak / bw
    bound = "memory" if intensity < ridge else "compute"
    roof = intensity * bw if bound == "memory" else peak
    g = kernel["flops"] / kernel["seconds"] / 1e9
    above = g > roof
    return {"name": kernel["name"], "intensity": intensity, "gflops": g,
            "gbps": kernel["bytes"] / kernel["seconds"] / 1e9,
            "level": point["level"], "level_bytes": point["bytes"], "bandwidth": bw, "peak_kind": peak_kind,
            "peak": peak, "ridge": ridge, "bound": bound, "roof": roof,
            "percent": None if above else 100 * g / roof, "above_roof": above}


def _roof(kernel, ceilings):
    """(roofline GFLOP/s, bound, peak kind) at the kernel's intensity"""
    a = assess(kernel, ceilings)
    return a["roof"], a["bound"], a["peak_kind"]


def report(ceilings, kernels):
    """The roofline table as text lines (a kernel above its roof: '>100%*' and a note below)."""
    curve = _curve(ceilings)
    lines = [f"machine ({ceilings['threads']} threads): memory read {ceilings['bandwidth']:.1f} GB/s "
             f"({curve[-1]['level']}, {_mib(curve[-1]['bytes'])} buffer)"]
    if len(curve) > 1:
        lines.append("  read GB/s by working set (best of interleaved rounds, thread CPU time): " +
                     ", ".join(f"{p['level']} {_mib(p['bytes'])} {p['gbps']:.0f}" for p in curve))
    for kind, label in (("fp32", "fp32 FMA"), ("bf16", "bf16 dot (AVX512_BF16)"), ("int8", "int8 dot (VNNI)"),
                        ("amx_bf16", "AMX bf16"), ("amx_int8", "AMX int8")):
        if kind in ceilings:
            lines.append(f"  peak {label:24s} {ceilings[kind]:9.0f} G{'OP' if 'int8' in kind else 'FLOP'}/s")
    lines.append("")
    lines.append("kernels: best call on the " + ("calling thread's CPU time" if ceilings.get("clock") == "cpu"
                                                 else "wall clock"))
    hdr = (f"{'kernel':32s} {'flop/B':>8s} {'GFLOP/s':>9s} {'GB/s':>7s} {'read roof':>15s} {'ridge':>7s} "
           f"{'roof':>9s} {'bound':>16s} {'% roof':>7s}")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    notes = []
    for k in kernels:
        a = assess(k, ceilings)
        pct = f"{a['percent']:6.0f}%" if not a["above_roof"] else ">100%*"
        lines.append(f"{k['name']:32s} {a['intensity']:8.2f} {a['gflops']:9.1f} {a['gbps']:7.1f} "
                     f"{a['level'] + ' ' + format(a['bandwidth'], '.1f'):>15s} {a['ridge']:7.1f} {a['roof']:9.1f} "
                     f"{a['bound'] + ('' if a['bound'] == 'memory' else ':' + a['peak_kind']):>16s} {pct:>7s}")
        if a["above_roof"]:
            if a["bound"] == "memory":
                why = (f"it read its operands at {a['gbps']:.2f} GB/s, above the {a['bandwidth']:.2f} GB/s "
                       f"measured for a {_mib(a['level_bytes'])} buffer ({a['level']})")
            else:
                why = f"it ran at {a['gflops']:.0f}, above the measured {a['peak_kind']} peak {a['peak']:.0f}"
            notes.append(f"* {k['name']}: above its roof ({a['roof']:.1f} GFLOP/s): {why}. The roof measurement "
                         "is below the kernel's (the machine was busier while the ceiling was measured, the kernel's "
                         "operands stayed in a closer cache level, or its software prefetch reads faster than "
                         "the plain read loop), so no percentage is given.")
    if notes:
        lines.append("")
        lines.extend(notes)
    return lines


def to_json(ceilings, kernels):
    """The roofline as a JSON-serialisable dict: 'ceilings', 'kernels' (measured entries, each with
    its ``assess`` fields)."""
    return {"ceilings": ceilings, "kernels": [dict(k, **assess(k, ceilings)) for k in kernels]}


def have_matplotlib():
    """Whether matplotlib (needed only for the plot) can be imported."""
    import importlib.util
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):     # a None entry in sys.modules raises ValueError
        return False


_MARKERS = "osD^vP*Xhp<>"


def figure(ceilings, kernels):
    """The roofline plot as a matplotlib Figure (log-log GFLOP/s against flop/byte).

    Compute peaks and the memory roofs the kernels are held to (their curve points) as lines; each kernel a
    point with its own marker and colour, named in the legend (outside the axes, so no label covers
    a point or another label) with its % of roof."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("the roofline plot needs matplotlib (pip install 'slmx[plot]')") from e
    fig, ax = plt.subplots(figsize=(12, 6.5))
    xs = np.logspace(-2, 4, 200)
    curve = _curve(ceilings)
    # the memory roofs the kernels are held to (each kernel's curve point) and the memory's own
    used = {(a["level"], a["level_bytes"]): a["bandwidth"] for a in (assess(k, ceilings) for k in kernels)}
    used.setdefault((curve[-1]["level"], curve[-1]["bytes"]), curve[-1]["gbps"])
    top = max(ceilings.get(k, 0.0) for k in ("fp32", "bf16", "int8", "amx_bf16", "amx_int8"))
    roofs = sorted(used.items(), key=lambda kv: -kv[1])
    for j, ((lvl, nbytes), gbps) in enumerate(roofs):
        grey = str(round(0.75 - 0.5 * j / max(len(roofs) - 1, 1), 2))
        ax.plot(xs, np.minimum(xs * gbps, top), color=grey, lw=1.0,
                label=f"{lvl} read {gbps:.0f} GB/s ({_mib(nbytes)})")
    for kind, style in (("fp32", "-"), ("bf16", "--"), ("int8", "-."), ("amx_bf16", ":"), ("amx_int8", ":")):
        if kind in ceilings:
            ax.axhline(ceilings[kind], ls=style, lw=1.0, color="tab:red" if "amx" in kind else "tab:blue",
                       label=f"{kind} peak {ceilings[kind]:.0f}")
    cmap = plt.get_cmap("tab10")
    for j, k in enumerate(kernels):
        a = assess(k, ceilings)
        pct = ">100% (roof measured low)" if a["above_roof"] else f"{a['percent']:.0f}% of {a['bound']} roof"
        ax.scatter([a["intensity"]], [a["gflops"]], s=36, zorder=3, marker=_MARKERS[j % len(_MARKERS)],
                   color=cmap(j % 10), edgecolors="black", linewidths=0.4, label=f"{k['name']}: {pct}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (flop / byte)")
    ax.set_ylabel("GFLOP/s (GOP/s for int8)")
    t = ceilings["threads"]
    ax.set_title(f"slmx roofline, {t} thread{'s' if t != 1 else ''}: memory read {ceilings['bandwidth']:.1f} GB/s")
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def plot(ceilings, kernels, path):
    """Write the roofline plot (``figure``) to ``path`` (PNG, atomically); returns the path."""
    fig = figure(ceilings, kernels)
    import matplotlib.pyplot as plt
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


def run(threads=2, quick=False, png="roofline.png", out=print, table=True, clock="wall"):
    """Measure, print the table through ``out`` (not with ``table=False``), write the plot (its path
    printed through ``out``); returns (ceilings, kernels). clock: how the kernels are timed
    (``measure_kernels``); ceilings['clock'] records it."""
    _check_clock(clock, threads)
    ceilings = measure_ceilings(threads, quick)
    ceilings["clock"] = clock
    kernels = measure_kernels(threads, quick, clock=clock)
    # the curve once more after the kernels, best of both: the cache levels' rates depend on what
    # other processes keep in the shared L3 at the time, and the kernels ran in between
    if "bandwidth_curve" in ceilings:
        sizes = [p["bytes"] for p in ceilings["bandwidth_curve"]]
        merge_curves(ceilings, measure_bandwidth(threads, quick, sizes=sizes))
    if table:
        for line in report(ceilings, kernels):
            out(line)
    if png:
        out(f"roofline plot: {plot(ceilings, kernels, png)}")
    return ceilings, kernels
