"""Tiled attention against a naive numpy softmax(q k^T) v with the same masks, every SIMD level."""
import functools

import numpy as np
import pytest

from slmx._kernels import attention as at

RNG = np.random.default_rng(42)


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def ref_attention(q, k, v, scale, causal, q_offset, window, S=None, softcap=0.0):
    """naive float64 reference: full (H, T, S) scores, masks, softmax, weighted sum"""
    T, H, D = q.shape
    S = k.shape[0] if S is None else S
    Hkv = k.shape[1]
    G = H // Hkv
    qd = q.astype(np.float64)
    kd = k[:S].astype(np.float64)
    vd = v[:S].astype(np.float64)
    out = np.zeros((T, H, D))
    pos = q_offset + np.arange(T)[:, None]
    key = np.arange(S)[None, :]
    mask = np.zeros((T, S), bool)
    if causal:
        mask |= key > pos
    if window > 0:
        mask |= (pos - key) >= window
    for h in range(H):
        g = h // G
        s = scale * qd[:, h, :] @ kd[:, g, :].T
        if softcap > 0:
            s = softcap * np.tanh(s / softcap)
        s = np.where(mask, -np.inf, s)
        mx = s.max(axis=1, keepdims=True)
        seen = np.isfinite(mx[:, 0])
        p = np.where(seen[:, None], np.exp(s - np.where(seen[:, None], mx, 0)), 0.0)
        den = p.sum(axis=1, keepdims=True)
        out[:, h, :] = np.where(seen[:, None], (p @ vd[:, g, :]) / np.where(den > 0, den, 1), 0.0)
    return out


@functools.lru_cache(maxsize=None)
def case(T, S, H, Hkv, D, causal, q_offset, window, softcap, qscale):
    """inputs and reference for one parameter set (computed once, shared by every SIMD level)"""
    rng = np.random.default_rng(abs(hash((T, S, H, Hkv, D, causal, q_offset, window))) % 2**32)
    q = (rng.standard_normal((T, H, D)) * qscale).astype(np.float32)
    k = rng.standard_normal((S, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((S, Hkv, D)).astype(np.float32)
    scale = 1.0 / np.sqrt(D)
    ref = ref_attention(q, k, v, scale, causal, q_offset, window, softcap=softcap)
    return q, k, v, scale, ref


def run(T, S, H, Hkv, D, causal, q_offset, window, nthreads=2, softcap=0.0, qscale=1.0,
        rtol=1e-4, atol=2e-5):
    q, k, v, scale, ref = case(T, S, H, Hkv, D, causal, q_offset, window, softcap, qscale)
    out = np.full((T, H, D), np.nan, np.float32)
    at.attention(q, k, v, out, scale, causal, q_offset, window, nthreads, softcap=softcap, S=S)
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol)
    return out, ref


HEADS = [(4, 1), (6, 2), (8, 8)]


# prefill (q_offset = 0, S = T), decode (T = 1 at the end of the cache), chunked prefill
# (a chunk of T queries after q_offset cached positions) with all window settings
SHAPES = [
    (1, 1, 0), (7, 7, 0), (64, 64, 0), (200, 200, 0),       # prefill
    (1, 700, 699), (1, 37, 36),                              # decode
    (7, 300, 293), (64, 600, 536), (200, 700, 500),          # chunked prefill
]
# window 512 only where S > 512 (elsewhere it equals no window)
CAUSAL = [(T, S, off, w) for (T, S, off) in SHAPES for w in (0, 5, 512) if w != 512 or S > 512]


@pytest.mark.parametrize("H,Hkv", HEADS)
@pytest.mark.parametrize("D", [64, 256])
@pytest.mark.parametrize("T,S,q_offset,window", CAUSAL)
def test_causal(simd_level, H, Hkv, D, T, S, q_offset, window):
    run(T, S, H, Hkv, D, True, q_offset, window)


@pytest.mark.parametrize("H,Hkv", HEADS)
@pytest.mark.parametrize("T,S", [(1, 700), (7, 7), (64, 130), (200, 65)])
def test_not_causal(simd_level, H, Hkv, T, S):
    run(T, S, H, Hkv, 64, False, 0, 0)


@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_threads_and_split(simd_level, nthreads):
    # decode over a long cache with one KV head: split-K with merged partial states
    out1, ref = run(1, 700, 4, 1, 256, True, 699, 0, nthreads=nthreads)
    # 128..255 visible keys: two splits (the fewest that pay)
    run(1, 150, 4, 1, 256, True, 149, 0, nthreads=nthreads)
    # sliding window on a long prompt
    run(130, 700, 4, 1, 64, True, 570, 5, nthreads=nthreads)


def test_kv_cache_view(simd_level):
    # k, v are a preallocated cache (S_max rows); only the first S are valid, the rest garbage
    T, H, Hkv, D, S_max = 3, 4, 2, 64, 1000
    S = 300
    q = rand(T, H, D)
    k = rand(S_max, Hkv, D)
    v = rand(S_max, Hkv, D)
    k[S:] = np.nan
    v[S:] = np.inf
    out = np.empty((T, H, D), np.float32)
    at.attention(q, k, v, out, 0.125, True, S - T, 0, 2, S=S)
    ref = ref_attention(q, k, v, 0.125, True, S - T, 0, S=S)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5)
    # a (Hkv, S_max, D) cache viewed as (S_max, Hkv, D), and q/out as strided views
    kc = np.ascontiguousarray(k.transpose(1, 0, 2)).transpose(1, 0, 2)
    vc = np.ascontiguousarray(v.transpose(1, 0, 2)).transpose(1, 0, 2)
    qbig = np.zeros((T, H, D + 32), np.float32)
    qbig[:, :, :D] = q
    obig = np.zeros((T, H, D + 32), np.float32)
    at.attention(qbig[:, :, :D], kc, vc, obig[:, :, :D], 0.125, True, S - T, 0, 1, S=S)
    np.testing.assert_allclose(obig[:, :, :D], ref, rtol=1e-4, atol=2e-5)
    assert np.all(obig[:, :, D:] == 0)


def test_softcap(simd_level):
    run(40, 90, 4, 2, 64, True, 50, 0, softcap=5.0, qscale=8.0)


def test_odd_head_dim(simd_level):
    # D not a multiple of the vector width takes the portable kernels
    run(9, 70, 6, 2, 40, True, 61, 0)
    run(5, 5, 2, 1, 3, True, 0, 0)


def test_many_heads_per_kv(simd_level):
    # more query heads per KV head than rows per task: heads are split into sub-groups
    run(3, 50, 96, 1, 16, True, 47, 0)


def test_rows_without_keys(simd_level):
    # S smaller than the query positions: causal rows see keys; non-visible rows give zeros
    q, k, v = rand(4, 2, 64), rand(10, 1, 64), rand(10, 1, 64)
    out = np.full((4, 2, 64), np.nan, np.float32)
    at.attention(q, k, v, out, 0.1, True, 20, 3, 1)     # window 3 at positions 20..23: no key
    assert np.all(out == 0)
    at.attention(q, k, v, out, 0.1, True, 0, 0, 1, S=0)  # empty cache
    assert np.all(out == 0)


def test_large_scores(simd_level):
    # scores of magnitude ~100 (e^100 overflows float32): the running max keeps exp finite.
    # fp32 dot products carry an absolute error ~|q||k| eps ~ 1e-4 in such scores, hence rtol.
    out, _ = run(70, 150, 4, 1, 64, True, 80, 0, qscale=100.0, rtol=2e-3, atol=2e-3)
    assert np.all(np.isfinite(out))


def test_bad_inputs(simd_level):
    q, k, v = rand(4, 4, 64), rand(10, 2, 64), rand(10, 2, 64)
    out = np.empty_like(q)
    with pytest.raises(ValueError):
        at.attention(q, k, v, np.empty((4, 4, 32), np.float32), 0.1, True, 0, 0)
    with pytest.raises(ValueError):
        at.attention(q, rand(10, 3, 64), rand(10, 3, 64), out, 0.1, True, 0, 0)   # 4 % 3
    with pytest.raises(ValueError):
        at.attention(q, k, rand(9, 2, 64), out, 0.1, True, 0, 0)
    with pytest.raises(ValueError):
        at.attention(q, k, rand(10, 2, 32), out, 0.1, True, 0, 0)
    with pytest.raises(ValueError):
        at.attention(q, k, v, out, 0.1, True, 0, 0, S=11)
    with pytest.raises(ValueError):
        at.attention(q, k, v, out, 0.1, True, -1, 0)
    with pytest.raises(ValueError):
        at.attention(q.astype(np.float64), k, v, out, 0.1, True, 0, 0)
    with pytest.raises(ValueError):
        at.attention(q[:, :, ::2], k, v, out, 0.1, True, 0, 0)                    # D strided
    with pytest.raises(ValueError):
        at.attention(q, k, v, q, 0.1, True, 0, 0)                                 # out is q
    with pytest.raises(ValueError):
        at.attention(q[0], k, v, out, 0.1, True, 0, 0)


@pytest.mark.parametrize("T, S, D, nthreads", [(5, 40, 64, 1), (1, 700, 256, 2), (1, 150, 64, 2), (9, 70, 40, 1)])
def test_nan_propagates(simd_level, T, S, D, nthreads):
    # a NaN query row is NaN in the output (it once came out as a masked row's zeros); a NaN key
    # makes exactly the rows that see it NaN; other rows stay finite. Covers the split-K decode
    # merge (S >= 128 with 2 threads) and the portable kernels (D = 40).
    H, Hkv = 4, 2
    q, k, v = rand(T, H, D), rand(S, Hkv, D), rand(S, Hkv, D)
    q[T - 1, 1] = np.nan                                   # one head of the last row
    out = np.empty((T, H, D), np.float32)
    at.attention(q, k, v, out, 0.125, True, S - T, 0, nthreads)
    assert np.all(np.isnan(out[T - 1, 1]))
    rest = np.ones((T, H), bool)
    rest[T - 1, 1] = False
    assert np.all(np.isfinite(out[rest]))
    q[T - 1, 1] = 1.0
    k[S - T, 0, 3] = np.nan                               # key at the first query's position, KV head 0
    at.attention(q, k, v, out, 0.125, True, S - T, 0, nthreads)
    assert np.all(np.isnan(out[:, :2]))                   # heads 0, 1 read KV head 0; every row sees the key
    assert np.all(np.isfinite(out[:, 2:]))
    if T > 1:                                             # a NaN key no row sees changes nothing
        k[S - T, 0, 3] = 1.0
        k[S - 1, 0, 3] = np.nan
        at.attention(q, k, v, out, 0.125, True, S - T, 0, nthreads)
        assert np.all(np.isfinite(out[:T - 1])) and np.all(np.isnan(out[T - 1, :2]))
