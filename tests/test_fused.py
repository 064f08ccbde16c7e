"""slmx._kernels.fused against the separate kernels it replaces (bit for bit) and against gguf-py's
dequantized weights in float64 (the product itself)."""
import os
import sys

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as G

import slmx
from slmx._kernels import fused, ops_core, quant
from slmx.infer import KVCache

sys.path.insert(0, os.path.dirname(__file__))
from tiny_model import write_tiny_model  # noqa: E402

EPS = 1e-6


def rand_weight(t, n, k, seed):
    """(uint8 (n, row_bytes) blocks of type t encoding random weights, float64 (n, k) as gguf-py decodes them)."""
    wf = (np.random.default_rng(seed).standard_normal((n, k)) * 0.05).astype(np.float32)
    w = quant.quantize(wf, int(t))
    return w, gguf.quants.dequantize(w, t).reshape(n, k).astype(np.float64)


def separate(x, ws, norm=None, glu=None, post=None, residual=None, nt=2):
    """The unfused sequence: rmsnorm, one quant.linear per weight (+ bias), GLU, post rmsnorm, add."""
    h = x.copy() if norm is None else ops_core.rmsnorm(x, norm, EPS, np.empty_like(x), nt)
    outs = []
    for w, t, b in ws:
        o = quant.linear(h, w, t, np.empty((x.shape[0], w.shape[0]), np.float32), nt)
        if b is not None:
            np.add(o, b, out=o)
        outs.append(o)
    if glu == "geglu_f16":
        ops_core.geglu_f16(outs[0], outs[1], outs[0], nt)
    elif glu == "geglu":
        ops_core.geglu(outs[0], outs[1], outs[0], nt)
    elif glu == "swiglu":
        ops_core.swiglu(outs[0], outs[1], outs[0], nt)
    if post is not None:
        ops_core.rmsnorm(outs[0], post, EPS, outs[0], nt)
    if residual is not None:
        np.add(residual, outs[0], out=residual)
    return outs


def _rows(rng, m, k):
    return (rng.standard_normal((m, k)) * 3).astype(np.float32)


# q, k, v of mixed types sharing x (Gemma 3 270M: Q5_0, Q5_0, Q8_0), with attn_norm and biases
@pytest.mark.parametrize("types", [(G.Q5_0, G.Q5_0, G.Q8_0), (G.Q4_K, G.Q6_K, G.Q4_0), (G.Q8_0, G.Q8_0, G.Q8_0),
                                   (G.Q4_1, G.Q5_1, G.F16), (G.Q5_K, G.BF16, G.Q5_0)],
                         ids=lambda ts: "-".join(t.name for t in ts))
@pytest.mark.parametrize("m", [1, 3])
def test_qkv_group_bit_identical(types, m, simd_level):
    rng = np.random.default_rng(m)
    K = 512
    ws, wds = [], []
    for i, (t, n) in enumerate(zip(types, (256, 64, 80))):
        w, wd = rand_weight(t, n, K, 10 * i + 1)
        b = rng.standard_normal(n).astype(np.float32) if i != 1 else None
        ws.append((w, int(t), b))
        wds.append(wd)
    norm = (1 + rng.random(K)).astype(np.float32)
    x = _rows(rng, m, K)
    g = fused.LinearGroup(ws, norm=norm, eps=EPS)
    for nt in (1, 2):
        outs = [np.full((m, w.shape[0]), np.nan, np.float32) for w, _, _ in ws]
        g(x, outs, nt)
        for o, r in zip(outs, separate(x, ws, norm=norm, nt=nt)):
            np.testing.assert_array_equal(o, r)
    # and the products themselves against gguf-py's decoded weights in float64
    xd = x.astype(np.float64)
    h = xd / np.sqrt((xd ** 2).mean(1, keepdims=True) + EPS) * norm
    for o, wd, (w, t, b) in zip(outs, wds, ws):
        ref = h @ wd.T + (0 if b is None else b)
        np.testing.assert_allclose(o, ref, rtol=0, atol=0.03 * np.abs(ref).max())


@pytest.mark.parametrize("glu", ["geglu_f16", "geglu", "swiglu"])
@pytest.mark.parametrize("m", [1, 2])
def test_gate_up_glu_bit_identical(glu, m, simd_level):
    rng = np.random.default_rng(7)
    K, F = 640, 2048 + 48                      # a row count that is not a multiple of the groups
    wg, _ = rand_weight(G.Q5_0, F, K, 3)
    wu, _ = rand_weight(G.Q8_0, F, K, 4)
    ws = [(wg, int(G.Q5_0), None), (wu, int(G.Q8_0), None)]
    norm = (1 + rng.random(K)).astype(np.float32)
    x = _rows(rng, m, K)
    g = fused.LinearGroup(ws, norm=norm, eps=EPS, glu=glu)
    for nt in (1, 2):
        outs = (np.empty((m, F), np.float32), np.empty((m, F), np.float32))
        g(x, outs, nt)
        np.testing.assert_array_equal(outs[0], separate(x, ws, norm=norm, glu=glu, nt=nt)[0])


@pytest.mark.parametrize("post", [True, False])
def test_down_post_norm_residual_bit_identical(post, simd_level):
    rng = np.random.default_rng(11)
    K, N = 2048, 640
    w, _ = rand_weight(G.Q6_K, N, K, 5)
    ws = [(w, int(G.Q6_K), None)]
    pn = (1 + rng.random(N)).astype(np.float32) if post else None
    x = _rows(rng, 2, K)
    res0 = _rows(rng, 2, N)
    g = fused.LinearGroup(ws, eps=EPS, post_norm=pn)
    for nt in (1, 2):
        res, ref_res = res0.copy(), res0.copy()
        out = np.empty((2, N), np.float32)
        g(x, (out,), nt, res)
        ref = separate(x, ws, post=pn, residual=ref_res, nt=nt)[0]
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(res, ref_res)


@pytest.mark.parametrize("norms", [True, False])
@pytest.mark.parametrize("neox", [True, False])
def test_qk_rope_bit_identical(norms, neox, simd_level):
    rng = np.random.default_rng(3)
    T, H, Hk, D = 3, 4, 2, 64
    q0 = rng.standard_normal((T, H, D)).astype(np.float32)
    k0 = rng.standard_normal((T, Hk, D)).astype(np.float32)
    v0 = rng.standard_normal((T, Hk, D)).astype(np.float32)
    pos = np.array([0, 17, 5000], np.int32)
    qn = (1 + rng.random(D)).astype(np.float32) if norms else None
    kn = (1 + rng.random(D)).astype(np.float32) if norms else None
    ff = (1 + rng.random(D // 2)).astype(np.float32)
    for f16 in (True, False):
        q, k, v = q0.copy(), k0.copy(), v0.copy()
        fused.qk_rope(q, k, v, pos, qn, kn, EPS, fused.rope_table(pos, 10000.0, D, 0.5, ff), neox, f16)
        rq, rk, rv = q0.copy(), k0.copy(), v0.copy()
        if norms:
            ops_core.rmsnorm(rq, qn, EPS, rq)
            ops_core.rmsnorm(rk, kn, EPS, rk)
        ops_core.rope(rq, pos, 10000.0, neox, 1, 0.5, ff)
        ops_core.rope(rk, pos, 10000.0, neox, 1, 0.5, ff)
        if f16:
            for a in (rq, rk, rv):
                ops_core.round_f16(a)
        np.testing.assert_array_equal(q, rq)
        np.testing.assert_array_equal(k, rk)
        np.testing.assert_array_equal(v, rv)


@pytest.mark.parametrize("kv", ["f32", "f16", "q8_0", "q4_0"])
@pytest.mark.parametrize("ring", [0, 64])
def test_qk_rope_writes_cache_rows_as_store(kv, ring):
    """qk_rope's cache write equals KVCache.store of the final k, v (format, ring rows)."""
    from slmx._kernels import attention
    rng = np.random.default_rng(5)
    T, Hk, D, rows = 3, 2, 64, 128
    kt = attention.KV_TYPES[kv]
    k0 = rng.standard_normal((T, Hk, D)).astype(np.float32)
    v0 = rng.standard_normal((T, Hk, D)).astype(np.float32)
    q = rng.standard_normal((T, 4, D)).astype(np.float32)
    pos = np.array([62, 63, 64] if ring else [5, 6, 90], np.int32)
    shape, dt = ((rows, Hk, D), np.float32) if kt == 0 else ((rows, Hk, attention.kv_row_bytes(kt, D)), np.uint8)
    kc, vc = np.zeros(shape, dt), np.zeros(shape, dt)
    k, v = k0.copy(), v0.copy()
    fused.qk_rope(q, k, v, pos, None, None, EPS, fused.rope_table(pos, 1e4, D), True, True, kc, vc, ring, kt)
    rk, rv = np.zeros(shape, dt), np.zeros(shape, dt)
    for t, p in enumerate(pos):
        r = p % ring if ring else p
        if kt == 0:
            rk[r], rv[r] = k[t], v[t]
        else:
            attention.kv_quantize(k[t], kt, rk[r])
            attention.kv_quantize(v[t], kt, rv[r])
    np.testing.assert_array_equal(kc, rk)
    np.testing.assert_array_equal(vc, rv)


def test_bad_arguments():
    w, _ = rand_weight(G.Q8_0, 32, 64, 1)
    with pytest.raises(ValueError, match="1 to 3 weights"):
        fused.LinearGroup([])
    with pytest.raises(ValueError, match="not a block-quantized"):
        fused.LinearGroup([(np.zeros((4, 256), np.uint8), int(G.F32), None)])
    with pytest.raises(ValueError, match="K="):
        fused.LinearGroup([(w, int(G.Q8_0), None), (np.zeros((4, 68 * 2), np.uint8), int(G.Q8_0), None)])
    with pytest.raises(ValueError, match="glu needs two weights"):
        fused.LinearGroup([(w, int(G.Q8_0), None)], glu="swiglu")
    with pytest.raises(ValueError, match="glu must be"):
        fused.LinearGroup([(w, int(G.Q8_0), None)], glu="relu")
    g = fused.LinearGroup([(w, int(G.Q8_0), None)])
    with pytest.raises(ValueError, match="rows; 1 to"):
        g(np.zeros((g.max_rows + 1, 64), np.float32), (np.zeros((g.max_rows + 1, 32), np.float32),), 1)
    with pytest.raises(ValueError, match="columns"):
        g(np.zeros((1, 32), np.float32), (np.zeros((1, 32), np.float32),), 1)
    with pytest.raises(ValueError, match=r"outs\[0\] must be"):
        g(np.zeros((1, 64), np.float32), (np.zeros((1, 31), np.float32),), 1)
    with pytest.raises(ValueError, match="float32"):
        g(np.zeros((1, 64), np.float64), (np.zeros((1, 32), np.float32),), 1)
    with pytest.raises(ValueError, match="positions"):
        z = np.zeros((1, 1, 8), np.float32)
        fused.qk_rope(z, z.copy(), z.copy(), np.zeros(2, np.int32), None, None, EPS, np.zeros((2, 2, 4), np.float32),
                      True)
    z, p = np.zeros((1, 1, 32), np.float32), np.array([70], np.int32)
    tab = fused.rope_table(p, 1e4, 32)
    with pytest.raises(ValueError, match="outside the cache"):
        fused.qk_rope(z, z.copy(), z.copy(), p, None, None, EPS, tab, True, False,
                      np.zeros((64, 1, 32), np.float32), np.zeros((64, 1, 32), np.float32))
    with pytest.raises(ValueError, match="cache array"):
        fused.qk_rope(z, z.copy(), z.copy(), p, None, None, EPS, tab, True, False,
                      np.zeros((64, 1, 32), np.float32), np.zeros((64, 1, 34), np.uint8), 64, 8)


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("fused")
    return {(a, q): write_tiny_model(str(d / f"{a}-{q}.gguf"), arch=a, qtype=q, n_layers=3 if a == "llama" else 7)
            for a in ("llama", "gemma3") for q in ("q8_0", "q5_0", "f32")}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("qt", ["q8_0", "q5_0", "f32"])
@pytest.mark.parametrize("numerics", ["ggml", "fp32"])
def test_transformer_fused_equals_unfused(tiny_paths, arch, qt, numerics):
    """Decode steps, a 3-row forward_batch and a rowwise 4-token step: the same logits with the
    fused path on and off (F32 weights: the fused path is not taken)."""
    model = slmx.load(tiny_paths[arch, qt], n_ctx=64, threads=2, numerics=numerics)
    tr = model.transformer
    assert all(L.fused_rows == 0 for L in tr.layers) == (qt == "f32")
    runs = {}
    for f in (False, True):
        tr.fused = f
        caches = [KVCache(tr.cfg, 64) for _ in range(3)]
        out = [tr.forward(list(range(5, 25)), 0, caches[0]).copy()]
        for i in range(4):
            out.append(tr.forward([7 + i], 20 + i, caches[0]).copy())
        tr.forward([3, 4], 0, caches[1])
        tr.forward([9], 0, caches[2])
        out.append(tr.forward_batch([11, [12, 13], 14], [24, 2, 1], caches).copy())
        tr.rowwise_attention = True
        out.append(tr.forward([15, 16, 17, 18], 25, caches[0], all_logits=True))
        tr.rowwise_attention = False
        runs[f] = out
    for a, b in zip(runs[False], runs[True]):
        np.testing.assert_array_equal(a, b)


def test_group_scratch_reused_across_calls_and_threads():
    """One group called with varying rows and thread counts (its scratch is kept between calls and
    grown for more threads), and from several Python threads at once (a call that finds the
    scratch in use takes its own): every result equals the separate kernels."""
    import threading
    rng = np.random.default_rng(7)
    K = 256
    ws = [(rand_weight(t, n, K, s)[0], int(t), None) for t, n, s in ((G.Q4_K, 96, 1), (G.Q8_0, 96, 2))]
    norm = (1 + rng.random(K)).astype(np.float32)
    g = fused.LinearGroup(ws, norm=norm, eps=EPS, glu="swiglu")
    xs = [_rows(rng, m, K) for m in (1, 15, 3, 7, 1)]
    want = [separate(x, ws, norm=norm, glu="swiglu", nt=1)[0] for x in xs]
    for nt in (1, 2, 1, 2):
        for x, w in zip(xs, want):
            outs = [np.full((x.shape[0], 96), np.nan, np.float32) for _ in ws]
            g(x, outs, nt)
            np.testing.assert_array_equal(outs[0], w)
    bad = []

    def run(seed):
        r = np.random.default_rng(seed)
        for _ in range(50):
            i = int(r.integers(len(xs)))
            outs = [np.empty((xs[i].shape[0], 96), np.float32) for _ in ws]
            g(xs[i], outs, 2)
            if not np.array_equal(outs[0], want[i]):
                bad.append(i)

    th = [threading.Thread(target=run, args=(s,)) for s in range(4)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    assert bad == []
