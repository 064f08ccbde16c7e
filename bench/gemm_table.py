"""fp32 GEMM table: slmx vs numpy vs PyTorch at transformer shapes, GFLOP/s.

    python bench/gemm_table.py                 # every shape (M x K x N grid + vocabulary projection)
    python bench/gemm_table.py --m 1 16        # a subset of M
    python bench/gemm_table.py --vocab-only    # only the 262144 x 640 projection
    python bench/gemm_table.py --dtype bf16    # bf16 inputs, fp32 accumulation (slmx vs torch)
    python bench/gemm_table.py --dtype bf16 --packed   # slmx's weight packed once (ops.pack_bf16)

bf16: slmx's output starts on a 64-byte boundary, as ``ops.linear`` allocates it (and torch
its own); ``--numpy-out`` gives it a plain ``np.empty`` array instead (16-byte aligned: the AMX
path then shifts its panels, and a packed weight is packed again per call).

The product is a linear layer, out (M, N) = x (M, K) @ W^T with W (N, K) as model files store
it: ``slmx.ops.linear`` (fp32: the packed GEMM; bf16: ``slmx.ops.linear(x, w, dtype="bf16")``),
``x @ W.T`` in numpy (OpenBLAS) and ``torch.matmul(x, W.T)`` (MKL / oneDNN). The three run
alternately (slmx, numpy, torch, slmx, ...) for ``--rounds`` rounds; each round times enough
calls to fill ``--round-time`` seconds, after a ``--pause`` that lets the previous library's
spinning worker threads go idle (on 2 cores they would otherwise steal the next one's); the table quotes the median round. Threads: ``--threads``
(default 2) for all three. ``% peak``: of the fp32 FMA peak (cores x 2 FMA ports x 16 lanes x 2
flops x clock, the clock measured by ``slmx.roofline``) or, for bf16, of the measured bf16 peak.
"""
import argparse
import os
import sys
import time

THREADS_DEFAULT = 2


def _parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, nargs="*", default=[1, 16, 128, 512])
    p.add_argument("--kn", type=int, nargs="*", default=[640, 1024, 2048, 4096],
                   help="K and N values (the grid is every K x every N)")
    p.add_argument("--vocab-only", action="store_true", help="only the 262144 x 640 projection")
    p.add_argument("--no-vocab", action="store_true", help="skip the 262144 x 640 projection")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--packed", action="store_true",
                   help="bf16: slmx multiplies by the weight packed once into its tile layout (ops.pack_bf16, "
                        "outside the timing); default: the plain (N, K) array, packed in each call")
    p.add_argument("--numpy-out", action="store_true",
                   help="bf16: slmx writes into a plain np.empty output (numpy aligns large arrays to 16 bytes) "
                        "instead of one on a 64-byte boundary, as ops.linear allocates it (and torch its own)")
    p.add_argument("--threads", type=int, default=THREADS_DEFAULT)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--round-time", type=float, default=0.05)
    p.add_argument("--pause", type=float, default=0.1,
                   help="seconds of sleep before each round, so the previous library's idle threads "
                        "(OpenBLAS, OpenMP runtimes spin-wait after a call) have gone to sleep")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall (default), or process CPU time: with --threads 1 on a loaded shared machine "
                        "it times each library's own work (with more threads it counts spin-waiting)")
    p.add_argument("--no-numpy", action="store_true")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--peak", type=float, default=None, help="peak GFLOP/s for the %% column (default: measured)")
    return p.parse_args()


def _time_round(fn, round_time, clock=time.perf_counter):
    fn()
    n = 0
    w0, t0 = time.perf_counter(), clock()
    while True:
        fn()
        n += 1
        if time.perf_counter() - w0 >= round_time:
            return (clock() - t0) / n


def main():
    args = _parse()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    import numpy as np

    import slmx.ops as ops

    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            torch = None
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads, user_api="blas")
    except ImportError:
        pass

    if args.peak is None:
        try:
            from slmx import roofline
            peak = roofline.peak_flops(args.dtype, args.threads)
        except ImportError:
            peak = 380.0
    else:
        peak = args.peak

    shapes = []
    if not args.vocab_only:
        shapes += [(m, k, n) for m in args.m for k in args.kn for n in args.kn]
    if not args.no_vocab:
        shapes += [(m, 640, 262144) for m in args.m]

    bf16 = args.dtype == "bf16"
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rng = np.random.default_rng(0)
    print(f"# {args.dtype}{' (slmx: weight packed once)' if bf16 and args.packed else ''} linear out = x (M,K) @ W^T, W (N,K); {args.threads} threads; "
          f"median of {args.rounds} alternating rounds ({args.clock} clock); peak {peak:.0f} GFLOP/s")
    cols = ["M", "K", "N", "slmx", "numpy", "torch", "slmx/np", "slmx/torch", "%peak"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    worst_np, worst_t = None, None
    for (m, k, n) in shapes:
        x = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((n, k), dtype=np.float32) * 0.05
        out = np.empty((m, n), np.float32)
        if bf16 and not args.numpy_out:
            buf = np.empty(m * n + 16, np.float32)
            off = (-buf.ctypes.data % 64) // 4
            out = buf[off:off + m * n].reshape(m, n)
        runners = {}
        if bf16:
            wb = ops.to_bf16(w)
            if args.packed:
                wb = ops.pack_bf16(wb)
            xb = ops.to_bf16(x)
            runners["slmx"] = lambda: ops.linear(xb, wb, out=out, threads=args.threads, dtype="bf16")
        else:
            runners["slmx"] = lambda: ops.linear(x, w, out=out, threads=args.threads)
        if not args.no_numpy and not bf16:
            wt = w.T
            runners["numpy"] = lambda: np.matmul(x, wt, out=out)
        if torch is not None:
            dt = torch.bfloat16 if bf16 else torch.float32
            tx = torch.from_numpy(x).to(dt)
            tw = torch.from_numpy(w).to(dt)
            tout = torch.empty((m, n), dtype=dt)
            twt = tw.T
            runners["torch"] = lambda: torch.matmul(tx, twt, out=tout)
        times = {k_: [] for k_ in runners}
        for _ in range(args.rounds):
            for name, fn in runners.items():
                time.sleep(args.pause)
                times[name].append(_time_round(fn, args.round_time, clock))
        flop = 2.0 * m * k * n
        g = {name: flop / float(np.median(ts)) / 1e9 for name, ts in times.items()}
        r_np = g["slmx"] / g["numpy"] if "numpy" in g else None
        r_t = g["slmx"] / g["torch"] if "torch" in g else None
        if r_np is not None:
            worst_np = r_np if worst_np is None else min(worst_np, r_np)
        if r_t is not None:
            worst_t = r_t if worst_t is None else min(worst_t, r_t)
        fmt = lambda v: "-" if v is None else f"{v:.1f}"
        fr = lambda v: "-" if v is None else f"{v:.2f}x"
        print(f"| {m} | {k} | {n} | {fmt(g['slmx'])} | {fmt(g.get('numpy'))} | {fmt(g.get('torch'))} | "
              f"{fr(r_np)} | {fr(r_t)} | {100 * g['slmx'] / peak:.0f}% |", flush=True)
        del w, x, out, runners
        buf = None
    if worst_np is not None:
        print(f"# worst slmx/numpy: {worst_np:.2f}x")
    if worst_t is not None:
        print(f"# worst slmx/torch: {worst_t:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
