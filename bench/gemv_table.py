"""Quantized GEMV (decode, M = 1) weight-read GB/s per type against this machine's read bandwidth.

    python bench/gemv_table.py                       # Q8_0 Q4_0 Q5_0 Q4_K Q6_K, three matrix sizes
    python bench/gemv_table.py --types Q4_K --sizes 8192x4096

For each type and size (N rows x K columns; every size here is far beyond L2: 8192 x 4096 and
65536 x 2048 fit this machine's L3, 262144 x 2048 (300-570 MB) comes from memory), ``slmx.ops.linear``
(out = x @ W^T with W in its ggml block layout, x quantized once to 8 bits) alternates with a plain
read of a buffer of the same byte size (``slmx._kernels.peak.read_bandwidth``, AVX-512 loads split
over the same threads), both on the wall clock; the table quotes the medians of ``--rounds``
rounds (each the mean over 0.1 s of calls) and the ratio, which is the fraction of the reachable bandwidth the GEMV achieves.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks"))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--types", nargs="*", default=["Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q6_K"])
    p.add_argument("--sizes", nargs="*", default=["8192x4096", "65536x2048", "262144x2048"], help="NxK")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: GEMV on process CPU time, the read on thread CPU time (with --threads 1 on a "
                        "loaded shared machine: each one's own work)")
    args = p.parse_args()

    import numpy as np

    from bench_quant import random_weight
    from slmx import qtypes
    from slmx._kernels import peak, quant

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    wall = args.clock == "wall"
    print(f"# quantized GEMV (M=1), {args.threads} threads, {args.clock} clock; median of {args.rounds} alternating rounds; "
          "read = plain read of a buffer of the weight's size")
    cols = ["type", "N x K", "MB", "GEMV ms", "GEMV GB/s", "read GB/s", "GEMV/read"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for size in args.sizes:
        n, k = (int(v) for v in size.split("x"))
        for name in args.types:
            w = random_weight(name, n, k)
            tid = qtypes.qtype(name).id
            x = np.random.default_rng(1).standard_normal((1, k)).astype(np.float32)
            out = np.empty((1, n), np.float32)
            buf = np.ones(w.nbytes, np.uint8)
            quant.linear(x, w, tid, out, args.threads)
            tg, tr = [], []
            for _ in range(args.rounds):
                reps, t0, c0 = 0, time.perf_counter(), clock()
                while reps < 3 or time.perf_counter() - t0 < 0.1:
                    quant.linear(x, w, tid, out, args.threads)
                    reps += 1
                tg.append((clock() - c0) / reps)
                secs, t0 = [], time.perf_counter()
                while len(secs) < 3 or time.perf_counter() - t0 < 0.1:
                    secs.append(1.0 / peak.read_bandwidth(buf, args.threads, repeats=1, wall=wall))
                tr.append(1.0 / float(np.mean(secs)))
            g = w.nbytes / float(np.median(tg)) / 1e9
            r = float(np.median(tr))
            print(f"| {name} | {n} x {k} | {w.nbytes / 1e6:.0f} | {np.median(tg) * 1e3:.2f} | {g:.1f} | {r:.1f} | "
                  f"{100 * g / r:.0f}% |", flush=True)
            del w, buf
    return 0


if __name__ == "__main__":
    sys.exit(main())
