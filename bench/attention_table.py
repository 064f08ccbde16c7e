"""Attention by sequence length: slmx's tiled flash attention vs a naive numpy attention.

    python bench/attention_table.py                  # T = 512 .. 8192, Gemma 3 270M shapes
    python bench/attention_table.py --T 512 2048 --rounds 3

Causal prefill attention, H = 4 query heads sharing Hkv = 1 key/value head of D = 256 (Gemma 3
270M). Time: slmx (``slmx._kernels.attention.attention``, 2 threads) and the naive version
(per head: scores = q k^T (T x T), causal mask, softmax, scores v; numpy/OpenBLAS, 2 threads)
alternate for ``--rounds`` rounds; medians. Peak extra memory: each variant runs once in a fresh
subprocess, after its inputs and output exist; the peak resident set (VmHWM, reset through
/proc/self/clear_refs) minus the resident set before the call. The inputs (q, k, v, out) take
(2 H + 2 Hkv) T D x 4 bytes: slmx's extra memory stays O(T D) (per-thread tiles), the naive
version's grows as T^2.
"""
import argparse
import json
import os
import subprocess
import sys
import time

H, HKV, D = 4, 1, 256


def _inputs(T):
    import numpy as np
    rng = np.random.default_rng(0)
    q = rng.standard_normal((T, H, D), dtype=np.float32)
    k = rng.standard_normal((T, HKV, D), dtype=np.float32)
    v = rng.standard_normal((T, HKV, D), dtype=np.float32)
    return q, k, v, np.zeros_like(q)


def naive_attention(q, k, v, out):
    """out = softmax(q k^T / sqrt(D) + causal mask) v, one (T, T) score matrix per head"""
    import numpy as np
    T = q.shape[0]
    mask = np.triu(np.ones((T, T), dtype=bool), 1)
    for h in range(q.shape[1]):
        s = (q[:, h, :] @ k[:, h * HKV // H, :].T) * (1.0 / np.sqrt(D))
        s[mask] = -np.inf
        s -= s.max(axis=1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=1, keepdims=True)
        out[:, h, :] = s @ v[:, h * HKV // H, :]
    return out


def slmx_attention(q, k, v, out, threads=2):
    from slmx._kernels import attention
    attention.attention(q, k, v, out, 1.0 / D ** 0.5, True, 0, 0, threads)
    return out


def _rss_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _memory_child(which, T, threads):
    """(run in a subprocess) peak extra resident memory of one call, in bytes"""
    q, k, v, out = _inputs(T)
    fn = slmx_attention if which == "slmx" else naive_attention
    if which == "slmx":
        from slmx._kernels import attention  # noqa: F401  (import before the baseline)
    import numpy as np  # noqa: F401
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                         # reset VmHWM to the current RSS
    base = _rss_kb("VmRSS")
    if which == "slmx":
        fn(q, k, v, out, threads)
    else:
        fn(q, k, v, out)
    peak = _rss_kb("VmHWM")
    print(json.dumps({"extra": (peak - base) * 1024, "inputs": q.nbytes * 2 + k.nbytes + v.nbytes}))


def peak_extra_memory(which, T, threads=2):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", which, str(T), str(threads)],
                       capture_output=True, text=True, env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, nargs="*", default=[512, 1024, 2048, 4096, 8192])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _memory_child(args.child[0], int(args.child[1]), int(args.child[2]))
        return 0
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    import numpy as np
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads, user_api="blas")
    except ImportError:
        pass

    print(f"# causal attention H={H} Hkv={HKV} D={D}, {args.threads} threads; time: median of "
          f"{args.rounds} alternating rounds; memory: peak RSS growth during one call (fresh process)")
    cols = ["T", "slmx ms", "naive ms", "speedup", "inputs MB", "slmx extra MB", "naive extra MB"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for T in args.T:
        q, k, v, out = _inputs(T)
        ref = naive_attention(q, k, v, np.empty_like(out))
        got = slmx_attention(q, k, v, out, args.threads)
        err = float(np.abs(got - ref).max())
        if err > 1e-3:
            raise SystemExit(f"T={T}: slmx and naive differ by {err}")
        ts, tn = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            slmx_attention(q, k, v, out, args.threads)
            ts.append(time.perf_counter() - t0)
            time.sleep(0.05)
            t0 = time.perf_counter()
            naive_attention(q, k, v, out)
            tn.append(time.perf_counter() - t0)
            time.sleep(0.05)
        a, b = float(np.median(ts)), float(np.median(tn))
        if args.no_memory:
            ms = mn = {"extra": float("nan"), "inputs": q.nbytes * 2 + k.nbytes + v.nbytes}
        else:
            ms = peak_extra_memory("slmx", T, args.threads)
            mn = peak_extra_memory("naive", T, args.threads)
        print(f"| {T} | {a * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.1f}x | {ms['inputs'] / 1e6:.1f} | "
              f"{ms['extra'] / 1e6:.1f} | {mn['extra'] / 1e6:.1f} |", flush=True)
        del q, k, v, out, ref
    return 0


if __name__ == "__main__":
    sys.exit(main())
