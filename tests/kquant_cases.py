"""Deterministic float32 inputs for the quantizer tests (shared by the tests and by
tests/tools/kquant_reference.py, which records llama.cpp's bytes for them).

Each case is a (rows, K) float32 array, K a multiple of 256, built from integer-seeded numpy
generators; its sha256 goes into the fixture too, so a changed input is told apart from a changed
quantizer.
"""
import hashlib

import numpy as np


def cases():
    """name -> float32 (rows, K): distributions a quantizer meets, plus the edge cases."""
    rng = np.random.default_rng(20261203)
    out = {}
    out["normal"] = (rng.standard_normal((24, 1024)) * 0.02).astype(np.float32)
    out["heavy_tail"] = (rng.standard_t(2.5, (16, 512)) * 0.05).astype(np.float32)
    w = rng.standard_normal((16, 768)) * 0.01
    w[rng.random(w.shape) < 0.005] *= 300.0                         # rare outliers
    out["outliers"] = w.astype(np.float32)
    out["uniform_pos"] = rng.random((8, 512)).astype(np.float32)       # all >= 0 (min fit at 0)
    out["uniform_neg"] = (-rng.random((8, 512)) - 0.5).astype(np.float32)  # all < 0
    z = np.zeros((6, 512), np.float32)
    z[1] = 0.37                                                       # constant rows
    z[2] = -0.37
    z[3, ::37] = 1.0                                                  # nearly all zero
    z[4] = -0.0
    z[5, 100] = -3.0
    out["zeros_constants"] = z
    s = rng.standard_normal((8, 512))
    s[rng.random(s.shape) < 0.9] = 0.0                                # sparse, whole zero sub-blocks
    out["sparse"] = s.astype(np.float32)
    out["integers"] = rng.integers(-16, 17, (8, 512)).astype(np.float32)   # exact ties after scaling
    out["tiny"] = (rng.standard_normal((4, 512)) * 1e-7).astype(np.float32)  # f16 scales underflow
    out["large"] = (rng.standard_normal((4, 512)) * 3e3).astype(np.float32)
    m = rng.standard_normal((8, 512)).astype(np.float32) * 0.1
    m *= np.exp(rng.standard_normal((8, 1)) * 2).astype(np.float32)     # row scales over decades
    out["row_scales"] = m
    return out


def sha256(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
