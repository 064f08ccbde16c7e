"""Quantization speed: MB/s of float32 input encoded, slmx against its peers.

Peers: gguf-py's ``gguf.quants.quantize`` (numpy) for Q8_0/Q4_0/Q5_0/F16/BF16, llama.cpp's own
quantizer (ggml_quantize_chunk from llama-cpp-python's libggml-base, one thread, as each of
llama_model_quantize's workers runs it) for every block type, and whole files:
``slmx quantize`` vs llama_model_quantize on the same F32 GGUF (same thread count).

``python bench/benchmarks/bench_quantize.py [--threads N]`` alternates slmx and peer runs in one
process (A B A B ...) and prints medians; the asv class tracks slmx's rates.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from slmx import qtypes
from slmx._kernels import quant

TYPES = ("Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q5_K", "Q6_K", "F16", "BF16")
GGUF_PY = ("Q8_0", "Q4_0", "Q5_0", "F16", "BF16")


def weights(rows=1024, cols=2048, seed=0):
    """A weight-like float32 matrix: normal, per-row scales, rare outliers."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)) * 0.02 * np.exp(rng.standard_normal((rows, 1)) * 0.3)
    w[rng.random(w.shape) < 0.001] *= 30.0
    return w.astype(np.float32)


def _llamacpp_chunk():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
    try:
        import llamacpp_quant
    except ImportError:
        return None
    return llamacpp_quant if llamacpp_quant.available() else None


class Quantize:
    """slmx.ops.quantize rate in MB/s of float32 input (2 threads)."""
    params = list(TYPES)
    param_names = ["type"]

    def setup(self, t):
        self.x = weights(512, 2048)
        quant.quantize(self.x, qtypes.qtype(t).id, 2)

    def track_mb_per_s(self, t):
        tid = qtypes.qtype(t).id
        best = 1e9
        for _ in range(5):
            t0 = time.perf_counter()
            quant.quantize(self.x, tid, 2)
            best = min(best, time.perf_counter() - t0)
        return self.x.nbytes / 1e6 / best
    track_mb_per_s.unit = "MB/s"


def alternate(fa, fb, rounds):
    """Median seconds of fa and fb, run alternately."""
    ta, tb = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fa()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fb()
        tb.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rows", type=int, default=1024)
    a = ap.parse_args()
    import gguf
    x = weights(a.rows, 2048)
    mb = x.nbytes / 1e6
    lq = _llamacpp_chunk()
    print(f"input float32 {x.shape} = {mb:.1f} MB; slmx SIMD level {quant._simd_level()}")
    print(f"{'type':6} {'slmx 1t':>9} {'slmx ' + str(a.threads) + 't':>9} {'gguf-py':>9} {'llama.cpp 1t':>13}  (MB/s)")
    for t in TYPES:
        tid = qtypes.qtype(t).id
        s1, peer = alternate(lambda: quant.quantize(x, tid, 1),
                             (lambda: gguf.quants.quantize(x, getattr(gguf.GGMLQuantizationType, t)))
                             if t in GGUF_PY else (lambda: None), a.rounds)
        sn, lc = alternate(lambda: quant.quantize(x, tid, a.threads),
                           (lambda: lq.quantize(x, tid)) if lq and tid in lq.SIZES else (lambda: None), a.rounds)
        g = f"{mb / peer:9.1f}" if t in GGUF_PY else f"{'-':>9}"
        c = f"{mb / lc:13.1f}" if lq and tid in lq.SIZES else f"{'-':>13}"
        print(f"{t:6} {mb / s1:9.1f} {mb / sn:9.1f} {g} {c}")
    if lq is None:
        return
    # whole files: the same F32 GGUF through both tools
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
    import kquant_cases
    from slmx.formats import gguf as G
    from slmx.quantize import quantize_model
    kw = dict(n_layers=8, d=512, ffn=1536, n_head=8, n_kv=4, vocab=4096)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "in.gguf")
        G.write(src, kquant_cases.llama_metadata(**kw), list(kquant_cases.llama_tensors(**kw).items()))
        fmb = os.path.getsize(src) / 1e6
        for typ, pure in (("Q4_K_M", False), ("Q6_K", True), ("Q8_0", True)):
            ts, tl = alternate(lambda: quantize_model(src, os.path.join(d, "s.gguf"), typ, pure=pure, threads=a.threads),
                               lambda: lq.model_quantize(src, os.path.join(d, "l.gguf"), typ, pure=pure,
                                                         nthread=a.threads), max(3, a.rounds // 2))
            print(f"file {fmb:.0f} MB -> {typ}: slmx quantize {fmb / ts:.1f} MB/s, llama_model_quantize "
                  f"{fmb / tl:.1f} MB/s ({a.threads} threads)")


if __name__ == "__main__":
    main()
