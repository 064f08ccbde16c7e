"""Kernel rates: fp32 GEMM GFLOP/s, attention, row kernels (2 threads); quantized products are in
bench_quant.py.

Each `track_` benchmark times its kernel (median of several calls after a warm-up) and reports a
rate, so asv's dashboard shows GFLOP/s or GB/s over commits.
"""
import time

import numpy as np

from slmx._kernels import attention as _attention
from slmx._kernels import gemm as _gemm
from slmx._kernels import ops_core as _core

THREADS = 2


def _median_time(fn, min_time=0.2, max_reps=200):
    fn()
    ts = []
    t_end = time.perf_counter() + min_time
    while len(ts) < 3 or (time.perf_counter() < t_end and len(ts) < max_reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


KN_SIZES = [640, 1024, 2048, 4096]


def _gemm_operands(M, K, N):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((M, K), dtype=np.float32), rng.standard_normal((N, K), dtype=np.float32),
            np.empty((M, N), np.float32))


class GemmF32:
    """out = x @ w.T for x (M, K), w (N, K) fp32 (the linear path of slmx.ops): GFLOP/s, and the
    ratio to numpy's x @ w.T timed alternately in the same process. The shapes of
    ``python bench/gemm_table.py`` (which adds PyTorch)."""
    params = ([1, 16, 128, 512], KN_SIZES, KN_SIZES)
    param_names = ["M", "K", "N"]
    timeout = 600

    def setup(self, M, K, N):
        self.x, self.w, self.out = _gemm_operands(M, K, N)
        self.wt = self.w.T

    def track_gflops(self, M, K, N):
        t = _median_time(lambda: _gemm.linear_f32(self.x, self.w, self.out, THREADS))
        return 2.0 * M * K * N / t / 1e9
    track_gflops.unit = "GFLOP/s"

    def track_ratio_to_numpy(self, M, K, N):
        ts, tn = [], []
        for _ in range(3):
            ts.append(_median_time(lambda: _gemm.linear_f32(self.x, self.w, self.out, THREADS), 0.05))
            tn.append(_median_time(lambda: np.matmul(self.x, self.wt, out=self.out), 0.05))
        return float(np.median(tn) / np.median(ts))
    track_ratio_to_numpy.unit = "x numpy"


class GemmVocab:
    """The vocabulary projection x (M, 640) @ W^T, W (262144, 640) fp32 (671 MB): GFLOP/s."""
    params = ([1, 16, 128, 512],)
    param_names = ["M"]
    timeout = 600

    def setup(self, M):
        self.x, self.w, self.out = _gemm_operands(M, 640, 262144)

    def track_gflops(self, M):
        t = _median_time(lambda: _gemm.linear_f32(self.x, self.w, self.out, THREADS), 0.5, 10)
        return 2.0 * M * 640 * 262144 / t / 1e9
    track_gflops.unit = "GFLOP/s"


class GemmBF16:
    """out = x @ w.T, x and w bf16 (fp32 sums; AMX when granted): GFLOP/s, and the ratio to
    torch.matmul in bfloat16 timed alternately (``python bench/gemm_table.py --dtype bf16``)."""
    params = ([1, 16, 128, 512], [(640, 2048), (2048, 640), (1024, 1024), (2048, 2048), (4096, 4096)])
    param_names = ["M", "K_N"]
    timeout = 600

    def setup(self, M, KN):
        from slmx import ops
        K, N = KN
        x, w, self.out = _gemm_operands(M, K, N)
        self.x, self.w = ops.to_bf16(x), ops.to_bf16(w)
        self._f = (x, w)

    def track_gflops(self, M, KN):
        K, N = KN
        t = _median_time(lambda: _gemm.linear_bf16(self.x, self.w, self.out, THREADS))
        return 2.0 * M * K * N / t / 1e9
    track_gflops.unit = "GFLOP/s"

    def track_ratio_to_torch(self, M, KN):
        import torch
        torch.set_num_threads(THREADS)
        tx = torch.from_numpy(self._f[0]).bfloat16()
        twt = torch.from_numpy(self._f[1]).bfloat16().T
        tout = torch.empty((tx.shape[0], twt.shape[1]), dtype=torch.bfloat16)
        ts, tt = [], []
        for _ in range(3):
            ts.append(_median_time(lambda: _gemm.linear_bf16(self.x, self.w, self.out, THREADS), 0.05))
            tt.append(_median_time(lambda: torch.matmul(tx, twt, out=tout), 0.05))
        return float(np.median(tt) / np.median(ts))
    track_ratio_to_torch.unit = "x torch"


class AttentionVsNaive:
    """Causal prefill attention (H 4, H_kv 1, D 256) against the naive numpy version of
    ``bench/attention_table.py`` (T x T scores per head): speed-up, and peak memory of each."""
    params = ([512, 2048, 8192],)
    param_names = ["T"]
    timeout = 900

    def setup(self, T):
        import os
        import sys
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        import attention_table
        self.mod = attention_table
        self.q, self.k, self.v, self.out = attention_table._inputs(T)

    def track_speedup(self, T):
        ts, tn = [], []
        for _ in range(3 if T < 8192 else 1):
            t0 = time.perf_counter()
            self.mod.slmx_attention(self.q, self.k, self.v, self.out, THREADS)
            ts.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            self.mod.naive_attention(self.q, self.k, self.v, self.out)
            tn.append(time.perf_counter() - t0)
        return float(np.median(tn) / np.median(ts))
    track_speedup.unit = "x naive"

    def track_slmx_extra_mb(self, T):
        return self.mod.peak_extra_memory("slmx", T, THREADS)["extra"] / 1e6
    track_slmx_extra_mb.unit = "MB"

    def track_naive_extra_mb(self, T):
        return self.mod.peak_extra_memory("naive", T, THREADS)["extra"] / 1e6
    track_naive_extra_mb.unit = "MB"


class Attention:
    """Causal prefill attention, Gemma 3 shapes (H 4, H_kv 1, D 256): GFLOP/s (QK^T and PV)."""
    params = ([512, 2048, 8192],)
    param_names = ["T"]
    timeout = 600

    def setup(self, T):
        rng = np.random.default_rng(0)
        self.q = rng.standard_normal((T, 4, 256), dtype=np.float32)
        self.k = rng.standard_normal((T, 1, 256), dtype=np.float32)
        self.v = rng.standard_normal((T, 1, 256), dtype=np.float32)
        self.out = np.empty_like(self.q)

    def track_gflops(self, T):
        t = _median_time(lambda: _attention.attention(self.q, self.k, self.v, self.out, 1 / 16, True, 0, 0,
                                                      THREADS), min_time=0.5, max_reps=5)
        return 2 * 2 * 4 * 256 * T * T / 2 / t / 1e9
    track_gflops.unit = "GFLOP/s"

    def peakmem_attention(self, T):
        _attention.attention(self.q, self.k, self.v, self.out, 1 / 16, True, 0, 0, THREADS)


class DecodeAttention:
    """One query over a KV cache of S positions (Gemma 3 shapes): KV bytes read GB/s."""
    params = ([512, 4096, 16384],)
    param_names = ["S"]

    def setup(self, S):
        rng = np.random.default_rng(0)
        self.q = rng.standard_normal((1, 4, 256), dtype=np.float32)
        self.k = rng.standard_normal((S, 1, 256), dtype=np.float32)
        self.v = rng.standard_normal((S, 1, 256), dtype=np.float32)
        self.out = np.empty_like(self.q)

    def track_gb_per_s(self, S):
        t = _median_time(lambda: _attention.attention(self.q, self.k, self.v, self.out, 1 / 16, True, S - 1, 0,
                                                      THREADS))
        return (self.k.nbytes + self.v.nbytes) / t / 1e9
    track_gb_per_s.unit = "GB/s"


class RowKernels:
    """RMSNorm, softmax, RoPE over (512, 2048) fp32: GB/s read + written."""
    params = (["rmsnorm", "softmax", "rope", "geglu_f16"],)
    param_names = ["kernel"]

    def setup(self, kernel):
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((512, 2048), dtype=np.float32)
        self.y = np.empty_like(self.x)
        self.w = np.ones(2048, np.float32)
        self.x3 = self.x.reshape(512, 8, 256)
        self.pos = np.arange(512, dtype=np.int32)

    def track_gb_per_s(self, kernel):
        fns = {
            "rmsnorm": lambda: _core.rmsnorm(self.x, self.w, 1e-6, self.y, THREADS),
            "softmax": lambda: _core.softmax(self.x, self.y, THREADS),
            "rope": lambda: _core.rope(self.x3, self.pos, 10000.0, True, THREADS),
            "geglu_f16": lambda: _core.geglu_f16(self.x, self.x, self.y, THREADS),
        }
        t = _median_time(fns[kernel])
        return 2 * self.x.nbytes / t / 1e9
    track_gb_per_s.unit = "GB/s"
