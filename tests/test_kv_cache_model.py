"""KV caches inside the model: ring buffers on sliding-window layers give the full cache's logits,
chunked prefill equals unchunked, quantized formats stay close, context shift equals a fresh
prefill of the kept tokens; on tiny random gemma3 / llama models and on Gemma 3 270M."""
import numpy as np
import pytest

import slmx
from slmx.formats.hf import ArrayTensor
from slmx.infer import Sampler, generate
from slmx.infer.kv_cache import KVCache
from slmx.model.config import ModelConfig
from slmx.model.transformer import Transformer

V = 97


def _tiny(arch="gemma3", window=16, numerics="fp32", seed=0, n_layers=None, pattern=6, **kw):
    if arch == "gemma3":
        cfg = ModelConfig(arch="gemma3", vocab_size=V, d_model=64, n_layers=n_layers or 6, n_heads=4,
                          n_kv_heads=1, head_dim=32, ffn_dim=96, context_length=1024, norm_eps=1e-6,
                          rope_base=1e6, rope_base_local=1e4, rope_neox=True, activation="gelu_tanh",
                          post_norms=True, qk_norm=True, sliding_window=window, sliding_pattern=pattern,
                          embed_scale=8.0, **kw)
    else:
        cfg = ModelConfig(arch="llama", vocab_size=V, d_model=64, n_layers=n_layers or 2, n_heads=4,
                          n_kv_heads=2, head_dim=32, ffn_dim=96, context_length=1024, **kw)
    rng = np.random.default_rng(seed)
    t = {}

    def w(name, *shape, s=None):
        a = rng.standard_normal(shape).astype(np.float32)
        a *= s if s is not None else shape[-1] ** -0.5
        t[name] = ArrayTensor(name, 0, a)

    def n(name, size):
        t[name] = ArrayTensor(name, 0, (1 + 0.2 * rng.standard_normal(size)).astype(np.float32))
    w("token_embd.weight", V, 64, s=0.5)
    n("output_norm.weight", 64)
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        w(p + "attn_q.weight", cfg.q_dim, 64)
        w(p + "attn_k.weight", cfg.kv_dim, 64)
        w(p + "attn_v.weight", cfg.kv_dim, 64)
        w(p + "attn_output.weight", 64, cfg.q_dim)
        w(p + "ffn_gate.weight", 96, 64)
        w(p + "ffn_up.weight", 96, 64)
        w(p + "ffn_down.weight", 64, 96)
        for nm in ("attn_norm", "ffn_norm"):
            n(p + nm + ".weight", 64)
        if cfg.qk_norm:
            n(p + "attn_q_norm.weight", 32)
            n(p + "attn_k_norm.weight", 32)
        if cfg.post_norms:
            n(p + "post_attention_norm.weight", 64)
            n(p + "post_ffw_norm.weight", 64)
    return cfg, Transformer(cfg, t, threads=1, numerics=numerics, max_batch=64)


def _ids(n, seed=1):
    return np.random.default_rng(seed).integers(0, V, n).astype(np.int32)


def _run(tr, cache, ids, n_prompt, chunk=None):
    """prefill ids[:n_prompt] (logits of every prompt token), then one token at a time"""
    out = [tr.forward(ids[:n_prompt], 0, cache, all_logits=True, chunk=chunk)]
    for p in range(n_prompt, len(ids)):
        out.append(np.array(tr.forward(ids[p:p + 1], p, cache)))
    return np.concatenate(out)


@pytest.mark.parametrize("kv", ["f32", "q8_0"])
def test_ring_buffer_equals_full_cache(kv):
    """sliding layers hold window + chunk rows (rounded to 64); prompt and generation run far past
    the window and the ring wraps several times: logits equal the full-length cache's"""
    cfg, tr = _tiny(window=16)
    ids = _ids(300)
    ring = KVCache(cfg, 512, kv, max_chunk=40, slack=8)
    full = KVCache(cfg, 512, kv, max_chunk=40, ring=False)
    assert ring.ring == [64, 64, 64, 64, 64, 0] and full.ring == [0] * 6
    assert all(ring.k[l].shape[0] == 64 for l in range(5)) and ring.k[5].shape[0] == 512
    assert ring.nbytes < full.nbytes / 3
    assert ring.bytes_for(300) == (5 * 64 + 300) * ring.bytes_per_token // 6
    a = _run(tr, ring, ids, 150)
    b = _run(tr, full, ids, 150)
    np.testing.assert_array_equal(a, b)


def test_ring_buffer_truncate_rollback():
    """speculative rollback within the slack gives the same logits; beyond it is refused"""
    cfg, tr = _tiny(window=16)
    ids = _ids(120, seed=2)
    ring = KVCache(cfg, 512, max_chunk=8, slack=16)
    full = KVCache(cfg, 512, max_chunk=8, ring=False)
    assert ring.ring[0] == 64
    for c in (ring, full):
        tr.forward(ids[:100], 0, c)
        tr.forward(ids[100:108], 100, c)     # 8 "draft" tokens
        c.truncate(103)                      # 5 rejected
    a = np.array(tr.forward(ids[103:104], 103, ring))
    b = np.array(tr.forward(ids[103:104], 103, full))
    np.testing.assert_array_equal(a, b)
    tr.forward(ids[104:112], 104, ring)
    with pytest.raises(ValueError, match="overwritten"):
        ring.truncate(60)                    # window before 60 is long gone from a 64-row ring
    with pytest.raises(ValueError, match="do not fit the ring"):
        ring.store(0, 112, np.zeros((60, 1, 32), np.float32), np.zeros((60, 1, 32), np.float32))


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_chunked_prefill_equals_unchunked(arch):
    cfg, tr = _tiny(arch)
    ids = _ids(150, seed=3)
    ref = tr.forward(ids, 0, KVCache(cfg, 256, ring=False), all_logits=True)
    for chunk in (1, 7, 64):
        got = tr.forward(ids, 0, KVCache(cfg, 256), all_logits=True, chunk=chunk)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="chunk"):
        tr.forward(ids, 0, KVCache(cfg, 256), chunk=0)


def test_quantized_caches_in_the_model():
    """ggml numerics round k, v to fp16 before the cache: an f16 cache gives the f32 cache's logits
    exactly; q8_0 stays close, q4_0 further (error ordering f16 < q8_0 < q4_0)"""
    cfg, tr = _tiny(numerics="ggml")
    ids = _ids(120, seed=4)
    lg = {t: _run(tr, KVCache(cfg, 256, t), ids, 80) for t in ("f32", "f16", "q8_0", "q4_0")}
    np.testing.assert_array_equal(lg["f16"], lg["f32"])
    err = {t: np.abs(lg[t] - lg["f32"]).max() / np.abs(lg["f32"]).max() for t in ("q8_0", "q4_0")}
    assert 0 < err["q8_0"] < 0.03 and err["q8_0"] < err["q4_0"] < 0.3, err
    sizes = {t: KVCache(cfg, 256, t).bytes_per_token for t in ("f32", "f16", "q8_0", "q4_0")}
    assert sizes == {"f32": 6 * 2 * 32 * 4, "f16": 6 * 2 * 32 * 2, "q8_0": 6 * 2 * 34, "q4_0": 6 * 2 * 18}


# one layer: its keys and values depend on the token alone, so re-rotating the cached keys is
# exactly what a fresh prefill of the kept tokens stores. (Deeper layers' k, v also saw the dropped
# tokens: a shift by re-rotation, as llama.cpp's, is then an approximation; see the next test.)
@pytest.mark.parametrize("arch,pattern,kv,numerics", [
    ("llama", 6, "f32", "fp32"), ("llama", 6, "q8_0", "fp32"),
    ("gemma3", -1, "f32", "fp32"), ("gemma3", -1, "f16", "ggml"), ("gemma3", 1, "f32", "ggml")])
def test_context_shift_equals_fresh_prefill(arch, pattern, kv, numerics):
    """after dropping positions n_keep..n_keep+d-1, the next logits equal a fresh prefill of the
    kept tokens at their new positions (keys re-rotated in the cache, not recomputed); pattern -1:
    a sliding layer with a ring buffer that has wrapped"""
    cfg, tr = _tiny(arch, window=16, numerics=numerics, n_layers=1, pattern=pattern)
    ids = _ids(121, seed=5)
    cache = KVCache(cfg, 512, kv, max_chunk=32, slack=8)
    assert cache.ring[0] == (64 if pattern == -1 else 0)   # pattern 1: a global layer
    tr.forward(ids[:120], 0, cache)
    n_keep, d = 1, 50
    assert tr.shift_cache(cache, n_keep, d)
    assert cache.length == 70
    got = np.array(tr.forward(ids[120:121], 70, cache))
    kept = np.concatenate([ids[:n_keep], ids[n_keep + d:121]])
    want = tr.forward(kept, 0, KVCache(cfg, 512, kv, ring=False))
    tol = 2e-2 if kv == "q8_0" else (2e-3 if numerics == "ggml" else 2e-4)   # q8_0: re-quantized keys
    np.testing.assert_allclose(got, want, atol=tol * np.abs(want).max())


def test_context_shift_deep_model_keys_rotated():
    """6 layers (5 sliding with rings, 1 global): every moved key equals the cached key of its old
    position rotated by -d (float tolerance), values move unchanged, kept tokens stay"""
    cfg, tr = _tiny(window=16, numerics="fp32")
    ids = _ids(120, seed=6)
    cache = KVCache(cfg, 512, max_chunk=32, slack=8)
    tr.forward(ids, 0, cache)
    before = {l: (cache.keys(l, 56, 120), cache.values(l, 56, 120)) for l in range(6)}
    bos = (cache.keys(5, 0, 1), cache.values(5, 0, 1))
    assert tr.shift_cache(cache, 1, 50)
    from slmx._kernels import ops_core
    for l in range(6):
        k0, v0 = before[l]
        k = k0.copy()
        L = tr.layers[l]
        ops_core.rope(k, np.full(64, -50, np.int32), L.rope_base, True, 1, L.rope_freq_scale)
        np.testing.assert_allclose(cache.keys(l, 6, 70), k, atol=1e-4)
        np.testing.assert_array_equal(cache.values(l, 6, 70), v0)
    np.testing.assert_array_equal(cache.keys(5, 0, 1), bos[0])


def test_generate_recompute_shift_equals_fresh_prefill(gemma3_path):
    """context_shift="recompute" re-prefills the kept tokens: the logits are a fresh prefill's"""
    m = slmx.load(gemma3_path, n_ctx=24, threads=1)
    ids = m.tokenizer.encode("The story of the little fox begins", add_bos=True)
    seen = []

    class Recorder(Sampler):
        def __call__(self, logits, *history):
            seen.append(np.array(logits))
            return super().__call__(logits, *history)
    r = generate(m.transformer, m.tokenizer, m.cache, ids, max_new_tokens=20,
                 sampler=Recorder(temperature=0), stop_ids=[], context_shift="recompute")
    assert len(r.token_ids) == 20
    # the first shift happens when position 24 is reached: keep BOS, drop (24 - 1) // 2 = 11
    toks = list(ids) + r.token_ids
    step = 24 - len(ids)          # index (in seen) of the first token sampled after the shift
    kept = toks[:1] + toks[12:24]   # BOS and the 12 most recent tokens
    c = KVCache(m.config, 24)
    m.transformer.forward(kept, 0, c)     # (a prefill of 13 then one step: the same row blocking)
    want = m.transformer.forward(toks[24:25], 13, c)
    np.testing.assert_array_equal(seen[step + 1][None], want)


def test_context_shift_refused_when_ring_lost_kept_tokens():
    """a ring that no longer holds the kept tokens while they would still be in view: shift refuses
    (generate then recomputes)"""
    cfg, tr = _tiny(window=16)
    cache = KVCache(cfg, 512, max_chunk=8, slack=8)     # rings of 64
    tr.forward(_ids(100), 0, cache)
    assert not cache.can_shift(1, 60)                  # new length 40 < 64: BOS in view, but lost
    assert not tr.shift_cache(cache, 1, 60) and cache.length == 100
    assert cache.can_shift(1, 20)


def test_generate_past_n_ctx_with_context_shift(gemma3_path):
    m = slmx.load(gemma3_path, n_ctx=24, threads=1)
    ids = m.tokenizer.encode("Once upon a time", add_bos=True)

    def gen(**kw):
        return generate(m.transformer, m.tokenizer, m.cache, ids, max_new_tokens=40,
                        sampler=Sampler(temperature=0), stop_ids=[], **kw)
    r = gen(context_shift=True)
    assert len(r.token_ids) == 40 and r.finish_reason == "length"
    r2 = gen()
    assert r2.finish_reason == "context" and len(r2.token_ids) < 24
    assert r.token_ids[:len(r2.token_ids)] == r2.token_ids      # identical until the first shift


def test_real_model_ring_equals_full_cache(gemma3_path):
    """Gemma 3 270M, a prompt of 600 tokens (> window 512): ring and full caches agree"""
    m = slmx.load(gemma3_path, n_ctx=1024, threads=1)
    tr = m.transformer
    text = " ".join(f"item {i} is {i * 7 % 13}." for i in range(120))
    ids = np.array(m.tokenizer.encode(text, add_bos=True)[:600], np.int32)
    assert len(ids) == 600
    ring, full = m.make_cache("f32"), KVCache(m.config, 1024, ring=False)
    assert ring.ring[0] == 768 and ring.ring[5] == 0
    outs = []
    for c in (ring, full):
        lg = [np.array(tr.forward(ids, 0, c))]
        tok = int(lg[0].argmax())
        for p in range(600, 603):
            lg.append(np.array(tr.forward([tok], p, c)))
            tok = int(lg[-1].argmax())
        outs.append(np.concatenate(lg))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert ring.nbytes < 0.8 * full.nbytes


def test_copy_from_ring_cache():
    """a forked cache (beam search) continues exactly like the original"""
    cfg, tr = _tiny(window=16)
    ids = _ids(110, seed=7)
    a = KVCache(cfg, 512, "q8_0", max_chunk=32, slack=8)
    tr.forward(ids[:100], 0, a)
    b = KVCache(cfg, 512, "q8_0", max_chunk=32, slack=8)
    b.copy_from(a, 100)
    x = np.array(tr.forward(ids[100:110], 100, a, all_logits=True))
    y = np.array(tr.forward(ids[100:110], 100, b, all_logits=True))
    np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="differ"):
        KVCache(cfg, 512, "f32").copy_from(a, 10)


def _cli(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "slmx.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_kv_cache_and_context_flags(gemma3_path):
    r = _cli("generate", "-m", gemma3_path, "-p", "Hello there", "-n", "24", "--temperature", "0",
             "-t", "1", "--ctx", "16", "--kv-cache-type", "q8_0", "--context-shift", "--no-echo")
    assert r.returncode == 0, r.stderr
    assert "decode: 24 tokens" in r.stderr and "finish: length" in r.stderr
    r = _cli("generate", "-m", gemma3_path, "-p", "x", "--rope-scale", "2")
    assert r.returncode != 0 and "need --rope-scaling" in r.stderr and "Traceback" not in r.stderr
    r = _cli("generate", "-m", gemma3_path, "-p", "x", "--rope-scaling", "yarn")
    assert r.returncode != 0 and "needs --rope-scale" in r.stderr
    r = _cli("generate", "-m", gemma3_path, "-p", "x", "--kv-cache-type", "q5_0")
    assert r.returncode != 0 and "invalid choice" in r.stderr


def test_prefill_chunk_option(gemma3_path):
    """load(prefill_chunk=N): prompts run N tokens at a time; the rings are sized by it"""
    a = slmx.load(gemma3_path, n_ctx=1024, threads=1, prefill_chunk=64)
    b = slmx.load(gemma3_path, n_ctx=1024, threads=1)
    assert a.cache.ring[0] == 576 and b.cache.ring[0] == 768
    ids = a.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 15, add_bos=True)
    assert len(ids) > 130
    la, lb = a.logits(ids), b.logits(ids)
    # Q4_K weights: different row blocks quantize activations alike, but the AMX/VNNI paths sum
    # in different orders; the predictions agree
    assert (la.argmax(axis=1) == lb.argmax(axis=1)).mean() > 0.97
    np.testing.assert_allclose(la, lb, atol=0.05 * np.abs(lb).max())
    with pytest.raises(ValueError, match="prefill_chunk"):
        slmx.load(gemma3_path, prefill_chunk=0)
