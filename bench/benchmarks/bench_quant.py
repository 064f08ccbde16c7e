"""quant.linear on Gemma 3 270M's weight shapes: weight-read GB/s at M=1 (decode, memory bound),
GFLOP/s-equivalent (2*M*N*K / t) at M=512 (prefill), 2 threads; plus the machine's plain read rate
(the roofline for M=1).  ``python bench/benchmarks/bench_quant.py`` prints the same figures.
"""
import time

import numpy as np

from slmx import qtypes
from slmx._kernels import quant

THREADS = 2
# (type, N, K): N output features of K inputs
DECODE_CASES = [("Q8_0", 262144, 640),   # output projection (tied token_embd): 178 MB
                ("Q5_0", 2048, 640),     # ffn_gate / ffn_up
                ("Q6_K", 640, 2048),     # ffn_down
                ("Q4_K", 640, 1024),     # attn_output
                ("Q4_K", 1024, 1024)]
PREFILL_CASES = [("Q5_0", 2048, 640), ("Q8_0", 2048, 640), ("Q4_K", 640, 1024), ("Q6_K", 640, 2048)]


def random_weight(name, n, k, seed=0):
    """Random blocks with small finite f16 scales (any bytes are valid quants)."""
    q = qtypes.qtype(name)
    rng = np.random.default_rng(seed)
    nb = n * k // q.block_size
    b = rng.integers(0, 256, size=(nb, q.type_size), dtype=np.uint8)
    d = lambda: rng.uniform(-0.01, 0.01, nb).astype(np.float16).view(np.uint8).reshape(nb, 2)
    offsets = {"Q8_0": (0,), "Q4_0": (0,), "Q5_0": (0,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}[name]
    for o in offsets:
        b[:, o:o + 2] = d()
    return b.reshape(n, -1)


def _time_linear(name, n, k, m, threads=THREADS, min_time=0.3):
    """Best wall time of quant.linear (seconds) over repeats filling min_time."""
    w = random_weight(name, n, k)
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    out = np.empty((m, n), np.float32)
    tid = qtypes.qtype(name).id
    quant.linear(x, w, tid, out, threads)
    best, total, reps = 1e9, 0.0, 0
    while total < min_time or reps < 5:
        t0 = time.perf_counter()
        quant.linear(x, w, tid, out, threads)
        dt = time.perf_counter() - t0
        best, total, reps = min(best, dt), total + dt, reps + 1
    return best, w.nbytes


def read_bandwidth(nbytes=178 << 20, threads=THREADS):
    """GB/s of reading a buffer once (numpy sum over int64 views, split across threads)."""
    from concurrent.futures import ThreadPoolExecutor
    a = np.ones(nbytes // 8, np.int64)
    parts = np.array_split(a, threads)
    best = 1e9
    with ThreadPoolExecutor(threads) as ex:
        for _ in range(5):
            t0 = time.perf_counter()
            list(ex.map(np.sum, parts))
            best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


class QuantLinearDecode:
    params = [f"{t} {n}x{k}" for t, n, k in DECODE_CASES]
    param_names = ["weight"]
    timeout = 300

    def track_weight_gb_per_s(self, case):
        name, shape = case.split()
        n, k = (int(v) for v in shape.split("x"))
        dt, nbytes = _time_linear(name, n, k, 1)
        return nbytes / dt / 1e9
    track_weight_gb_per_s.unit = "GB/s"


class QuantLinearPrefill:
    params = [f"{t} {n}x{k}" for t, n, k in PREFILL_CASES]
    param_names = ["weight"]
    timeout = 300

    def track_gflop_per_s(self, case):
        name, shape = case.split()
        n, k = (int(v) for v in shape.split("x"))
        dt, _ = _time_linear(name, n, k, 512)
        return 2.0 * 512 * n * k / dt / 1e9
    track_gflop_per_s.unit = "GFLOP/s"


class QuantGemvLarge:
    """M = 1 GEMV per type on an 8192 x 4096 weight (19-36 MB, far beyond L2): weight-read GB/s, and
    the fraction of a plain read of a buffer of the same size (``bench/gemv_table.py``)."""
    params = (["Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q6_K"],)
    param_names = ["type"]
    timeout = 300

    def setup(self, name):
        self.w = random_weight(name, 8192, 4096)
        self.tid = qtypes.qtype(name).id
        self.x = np.random.default_rng(1).standard_normal((1, 4096)).astype(np.float32)
        self.out = np.empty((1, 8192), np.float32)
        self.buf = np.ones(self.w.nbytes, np.uint8)

    def _gemv_time(self):
        quant.linear(self.x, self.w, self.tid, self.out, THREADS)
        ts = []
        for _ in range(20):
            t0 = time.perf_counter()
            quant.linear(self.x, self.w, self.tid, self.out, THREADS)
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    def track_weight_gb_per_s(self, name):
        return self.w.nbytes / self._gemv_time() / 1e9
    track_weight_gb_per_s.unit = "GB/s"

    def track_fraction_of_read(self, name):
        from slmx._kernels import peak
        g, r = [], []
        for _ in range(3):
            g.append(self.w.nbytes / self._gemv_time() / 1e9)
            r.append(peak.read_bandwidth(self.buf, THREADS, repeats=5, wall=True))
        return float(np.median(g) / np.median(r))
    track_fraction_of_read.unit = "x read"


class ReadBandwidth:
    def track_read_gb_per_s(self):
        return read_bandwidth()
    track_read_gb_per_s.unit = "GB/s"


if __name__ == "__main__":
    print(f"plain read ({THREADS} threads): {read_bandwidth():.1f} GB/s")
    for name, n, k in DECODE_CASES:
        dt, nbytes = _time_linear(name, n, k, 1)
        print(f"M=1   {name} N={n:6d} K={k:4d}: {dt * 1e3:8.3f} ms  {nbytes / dt / 1e9:6.1f} GB/s")
    for name, n, k in PREFILL_CASES:
        dt, _ = _time_linear(name, n, k, 512)
        print(f"M=512 {name} N={n:6d} K={k:4d}: {dt * 1e3:8.3f} ms  {2.0 * 512 * n * k / dt / 1e9:6.1f} GFLOP/s")
    print(f"plain read ({THREADS} threads): {read_bandwidth():.1f} GB/s")
