"""KV-cache formats and layouts: quantized rows (F16, Q8_0, Q4_0) read by the attention kernel a
tile at a time, ring buffers on sliding-window layers; every SIMD level against numpy / gguf-py."""
import os
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf import quants as gq

from slmx._kernels import attention as at

sys.path.insert(0, os.path.dirname(__file__))
from test_attention import ref_attention  # noqa: E402

TYPES = {"f16": (1, GT.F16), "q8_0": (8, GT.Q8_0), "q4_0": (2, GT.Q4_0)}


def _rows(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name", list(TYPES))
def test_kv_quantize_matches_gguf(simd_level, name):
    kt, gt = TYPES[name]
    x = _rows((37, 64), 1) * 3
    x[3] = 0.0                                   # an all-zero block (d = 0)
    x[5, :32] = np.linspace(-1, 1, 32)           # exact ties
    rb = at.kv_row_bytes(kt, 64)
    got = at.kv_quantize(x, kt, np.empty((37, rb), np.uint8))
    ref = gq.quantize(x, gt)
    np.testing.assert_array_equal(got, ref.view(np.uint8).reshape(37, rb))
    # dequantization (every SIMD path) is bit-identical to gguf-py's
    np.testing.assert_array_equal(at.kv_dequantize(got, kt, 64),
                                  gq.dequantize(ref, gt).reshape(37, 64).astype(np.float32))


def _quant_cache(x, kt, gt):
    S, Hkv, D = x.shape
    rb = at.kv_row_bytes(kt, D)
    b = at.kv_quantize(np.ascontiguousarray(x.reshape(-1, D)), kt, np.empty((S * Hkv, rb), np.uint8))
    deq = gq.dequantize(b.view(gq.np.uint8).reshape(S * Hkv, rb), gt).reshape(S, Hkv, D)
    return b.reshape(S, Hkv, rb), deq.astype(np.float64)


# (T, S, q_offset, H, Hkv, D, window): prefill, decode, chunk after a cached prefix, windows
QCASES = [(1, 300, 299, 4, 1, 256, 0), (1, 70, 69, 8, 2, 64, 16), (50, 50, 0, 4, 1, 64, 0),
          (70, 200, 130, 6, 2, 32, 64), (130, 130, 0, 4, 4, 64, 0)]


@pytest.mark.parametrize("name", list(TYPES))
@pytest.mark.parametrize("T,S,off,H,Hkv,D,w", QCASES)
def test_quantized_cache_attention(simd_level, name, T, S, off, H, Hkv, D, w):
    """attention over quantized K, V equals the float64 reference over their dequantized values"""
    kt, gt = TYPES[name]
    q, k, v = _rows((T, H, D), 2), _rows((S, Hkv, D), 3), _rows((S, Hkv, D), 4)
    kb, kd = _quant_cache(k, kt, gt)
    vb, vd = _quant_cache(v, kt, gt)
    scale = 1 / np.sqrt(D)
    ref = ref_attention(q, kd, vd, scale, True, off, w)
    out = np.full_like(q, np.nan)
    at.attention(q, kb, vb, out, scale, True, off, w, 2, S=S, kv_type=kt)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5)


# (T, q_offset, window, ring): decode, chunks wrapping around the ring, ring == window rounded up
RCASES = [(1, 1000, 100, 128), (1, 700, 512, 576), (17, 300, 40, 64), (64, 900, 100, 192),
          (30, 5, 20, 64)]


@pytest.mark.parametrize("kv", ["f32", "q8_0"])
@pytest.mark.parametrize("T,off,w,ring", RCASES)
def test_ring_buffer_attention(simd_level, kv, T, off, w, ring):
    """a ring buffer of `ring` rows holding position j in row j % ring gives the full cache's output"""
    H, Hkv, D = 4, 2, 64
    S = off + T
    q, k, v = _rows((T, H, D), 5), _rows((S, Hkv, D), 6), _rows((S, Hkv, D), 7)
    kt = at.KV_TYPES[kv]
    if kt:
        rb = at.kv_row_bytes(kt, D)
        k = at.kv_quantize(k.reshape(-1, D), kt, np.empty((S * Hkv, rb), np.uint8)).reshape(S, Hkv, rb)
        v = at.kv_quantize(v.reshape(-1, D), kt, np.empty((S * Hkv, rb), np.uint8)).reshape(S, Hkv, rb)
    kr = np.zeros((ring,) + k.shape[1:], k.dtype)
    vr = np.zeros_like(kr)
    for j in range(max(0, S - ring), S):         # the last `ring` positions, as a ring holds them
        kr[j % ring], vr[j % ring] = k[j], v[j]
    full = np.zeros((T, H, D), np.float32)
    got = np.zeros((T, H, D), np.float32)
    at.attention(q, k, v, full, 0.125, True, off, w, 2, S=S, kv_type=kt)
    at.attention(q, kr, vr, got, 0.125, True, off, w, 2, S=S, ring=ring, kv_type=kt)
    np.testing.assert_allclose(got, full, rtol=1e-6, atol=1e-6)


def test_attention_rejects_bad_cache_arguments():
    q = np.zeros((2, 2, 64), np.float32)
    out = np.zeros_like(q)
    kb = np.zeros((64, 1, 68), np.uint8)
    with pytest.raises(ValueError, match="kv_type"):
        at.attention(q, kb, kb, out, 1.0, True, 0, 0, kv_type=3)
    with pytest.raises(ValueError, match="take 68 bytes"):
        at.attention(q, kb[:, :, :34], kb[:, :, :34], out, 1.0, True, 0, 0, kv_type=8)
    k = np.zeros((64, 1, 64), np.float32)
    with pytest.raises(ValueError, match="ring"):
        at.attention(q, k, k, out, 1.0, True, 100, 0, S=102, ring=64)        # no window
    with pytest.raises(ValueError, match="ring"):
        at.attention(q, k, k, out, 1.0, True, 100, 64, S=102, ring=64)       # window + T - 1 > ring
    with pytest.raises(ValueError, match="multiple of 64"):
        at.attention(q, k, k, out, 1.0, True, 100, 8, S=102, ring=32)
    with pytest.raises(ValueError, match="block size"):
        at.kv_row_bytes(8, 48)


@pytest.mark.parametrize("kv", ["f32", "q4_0"])
def test_prefill_without_shared_pack(simd_level, kv):
    """past the shared-pack limit (long contexts) tasks pack their own tiles: same result"""
    T, S, off, H, Hkv, D = 100, 300, 200, 4, 1, 64
    q, k, v = _rows((T, H, D), 8), _rows((S, Hkv, D), 9), _rows((S, Hkv, D), 10)
    kt = at.KV_TYPES[kv]
    if kt:
        k = _quant_cache(k, kt, GT.Q4_0)[0]
        v = _quant_cache(v, kt, GT.Q4_0)[0]
    outs = []
    for limit in (None, 0):
        old = at._set_pack_limit(limit) if limit is not None else None
        try:
            out = np.zeros((T, H, D), np.float32)
            at.attention(q, k, v, out, 0.125, True, off, 0, 2, S=S, kv_type=kt)
            outs.append(out)
        finally:
            if old is not None:
                at._set_pack_limit(old)
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-6)
