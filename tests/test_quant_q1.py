"""Q4_1 / Q5_1 in slmx._kernels.quant: decode / encode bit-exact with gguf-py and llama.cpp, linear
against float64 references built from gguf-py's decode, at every SIMD level."""
import os
import sys

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as G

from slmx import ops, qtypes
from slmx._kernels import quant

sys.path.insert(0, os.path.dirname(__file__))
import llamacpp_quant  # noqa: E402
import test_quant as tq  # noqa: E402

Q1_TYPES = [G.Q4_1, G.Q5_1]


def rand_blocks(t, nblocks, seed, scale=1.0):
    """Random blocks: random bytes, finite f16 d and m of either sign, |d| in [1e-3, 1] * scale."""
    rng = np.random.default_rng(seed)
    _, ts = gguf.GGML_QUANT_SIZES[t]
    b = rng.integers(0, 256, size=(nblocks, ts), dtype=np.uint8)
    for off in (0, 2):
        d = rng.uniform(1e-3, 1.0, nblocks) * scale * rng.choice([-1.0, 1.0], nblocks)
        b[:, off:off + 2] = d.astype(np.float16).view(np.uint8).reshape(nblocks, 2)
    return b


def rand_weight(t, n, k, seed):
    w = rand_blocks(t, n * k // 32, seed, scale=0.05).reshape(n, k // 32 * gguf.GGML_QUANT_SIZES[t][1])
    return w, gguf.quants.dequantize(w, t).reshape(n, k).astype(np.float64)


def test_qtypes_table():
    assert qtypes.qtype("Q4_1") == qtypes.QType(3, "Q4_1", 32, 20)
    assert qtypes.qtype("Q5_1") == qtypes.QType(7, "Q5_1", 32, 24)
    assert "Q4_1" in qtypes.SUPPORTED and "Q5_1" in qtypes.SUPPORTED
    assert qtypes.row_bytes("Q5_1", 640) == 480


@pytest.mark.parametrize("t", Q1_TYPES, ids=lambda t: t.name)
def test_dequantize_bit_exact(t, simd_level):
    b = rand_blocks(t, 999, int(t))
    b[:5, 0:2] = np.array([0, 0x7c00, 0xfc00, 0x7e00, 0x0001], np.uint16).view(np.uint8).reshape(5, 2)  # 0 inf nan sub
    with np.errstate(invalid="ignore"):            # inf * 0 in gguf-py
        ref = gguf.quants.dequantize(b, t).reshape(-1)
    got = quant.dequantize(b, int(t), 999 * 32)
    assert np.array_equal(tq.bits(got), tq.bits(ref))
    out = np.empty((4, 32 * 9), np.float32)
    ids = np.array([110, 0, 3, 110])
    quant.get_rows(b[:999 // 9 * 9].reshape(111, -1), int(t), ids, out)
    assert np.array_equal(tq.bits(out), tq.bits(ref[:111 * 288].reshape(111, 288)[ids]))
    assert np.array_equal(tq.bits(ops.dequantize(b, int(t), 999 * 32)), tq.bits(ref))


def q1_inputs():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((40, 640)) * rng.uniform(1e-3, 100.0, (40, 1))).astype(np.float32)
    x[0] = 0.0                                     # d = 0
    x[1, :32] = 2.5                                # constant block
    x[2] = np.round(x[2])                          # ties at .5 after scaling
    x[3, :32] = np.linspace(-1, 1, 32)             # exact grid
    x[4] = -np.abs(x[4])
    x[5] *= np.float32(1e-6)                       # f16 subnormal d
    x[6] *= np.float32(3e4)                        # f16 overflow of the min
    return x


@pytest.mark.parametrize("t", Q1_TYPES, ids=lambda t: t.name)
def test_quantize_bit_exact_gguf_py(t, simd_level):
    x = q1_inputs()
    with np.errstate(all="ignore"):
        ref = gguf.quants.quantize(x, t)
    got = quant.quantize(x, int(t))
    assert got.shape == ref.shape and np.array_equal(got, ref)
    big = np.random.default_rng(1).standard_normal((64, 4096)).astype(np.float32)
    assert np.array_equal(quant.quantize(big, int(t), 2), quant.quantize(big, int(t), 1))
    assert np.array_equal(ops.quantize(big[:3], int(t)), gguf.quants.quantize(big[:3], t))


@pytest.mark.skipif(not llamacpp_quant.available(), reason="llama-cpp-python is not installed")
@pytest.mark.parametrize("t", Q1_TYPES, ids=lambda t: t.name)
def test_quantize_bit_exact_llamacpp(t):
    x = q1_inputs()[:6]                            # llama.cpp and gguf-py part on inf/overflow only
    assert np.array_equal(quant.quantize(x, int(t)), llamacpp_quant.quantize(x, int(t)))


@pytest.mark.parametrize("t", Q1_TYPES, ids=lambda t: t.name)
def test_linear_against_float64(t, simd_level):
    for k in (32, 96, 640, 2080, 4160):            # odd block counts, half-filled chunks, > 1 panel
        for n in (1, 7, 64):
            w, wd = rand_weight(t, n, k, seed=k * 7 + n)
            rows = {}
            for m in (1, 2, 3, 5, 17):
                x = tq.act_case(m, k)
                out = np.full((m, n), np.nan, np.float32)
                assert quant.linear(x, w, int(t), out, 2) is out
                tq.check_linear(t, x, w, wd, out)
                rows[m] = out
            one = np.empty((1, n), np.float32)
            x = tq.act_case(17, k)
            for i in (0, 2, 16):                   # M = 1 and M > 1 give the same numbers
                quant.linear(x[i:i + 1], w, int(t), one, 1)
                assert np.array_equal(one[0], rows[17][i]), (k, n, i)


@pytest.mark.parametrize("t", Q1_TYPES, ids=lambda t: t.name)
def test_linear_never_amx_and_threads_agree(t, simd_level):
    assert quant._amx_for(int(t), 64) is False
    w, wd = rand_weight(t, 100, 640, seed=3)
    x = tq.act_case(40, 640)
    outs = []
    for nt in (1, 2, 3):
        out = np.empty((40, 100), np.float32)
        quant.linear(x, w, int(t), out, nt)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
    tq.check_linear(t, x, w, wd, outs[0])


@pytest.mark.parametrize("t", Q1_TYPES, ids=lambda t: t.name)
def test_activation_blocks_are_q8_0(t, simd_level):
    x = tq.act_case(3, 640)
    q, d = quant.quantize_act(x, int(t))
    xq = q.astype(np.float64) * np.repeat(d.astype(np.float64), 32, axis=1)
    assert np.array_equal(xq, tq.q8_0_act_ref(x)[0])


@pytest.mark.skipif(not llamacpp_quant.available(), reason="llama-cpp-python is not installed")
def test_gemma_q5_k_m_with_q5_1_rows_runs_like_llamacpp(gemma3_path, tmp_path):
    """Gemma 3 270M (d_model 640) at Q5_K_M: its Q5_K rows fall back to Q5_1 (81 tensors); the file
    is llama.cpp's byte for byte and slmx's next-token logits follow llama.cpp's on it."""
    import slmx
    from llama_cpp import Llama
    from slmx.formats import gguf as gguf_format
    from slmx.quantize import quantize_model
    ours, theirs = str(tmp_path / "slmx.gguf"), str(tmp_path / "llama.gguf")
    quantize_model(gemma3_path, ours, "Q5_K_M", allow_requantize=True)
    llamacpp_quant.model_quantize(gemma3_path, theirs, "Q5_K_M", allow_requantize=True)
    with open(ours, "rb") as a, open(theirs, "rb") as b:
        assert a.read() == b.read()
    with gguf_format.read(ours) as f:
        assert sum(t.type_name == "Q5_1" for t in f.tensors.values()) > 0
    m = slmx.load(ours, threads=2, n_ctx=64)
    llm = Llama(model_path=ours, n_ctx=64, n_threads=2, verbose=False)
    ids = llm.tokenize(b"The capital of France is", add_bos=True, special=True)
    llm.eval(ids)
    ref = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float64)
    got = np.asarray(m.logits(ids, last_only=True), np.float64).reshape(-1)[:ref.size]
    assert got.argmax() == ref.argmax()
    assert set(np.argsort(got)[-5:]) == set(np.argsort(ref)[-5:])
    # the original Q4_K_M file differs from llama.cpp by ~1 logit (fp32 vs ggml sum orders)
    assert np.abs(got - ref).max() < 0.05 * np.ptp(ref)
