"""slmx._kernels.quant against gguf-py (bit-exact decode / encode) and numpy references (linear)."""
import functools
import json
import os
import sys

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as G

from slmx._kernels import cpu, quant

sys.path.insert(0, os.path.dirname(__file__))
import kquant_cases  # noqa: E402
import llamacpp_quant  # noqa: E402

BLOCK_TYPES = [G.Q8_0, G.Q4_0, G.Q5_0, G.Q4_K, G.Q5_K, G.Q6_K]
FLOAT_TYPES = [G.F32, G.F16, G.BF16]
ALL_TYPES = BLOCK_TYPES + FLOAT_TYPES
K_TYPES = (G.Q4_K, G.Q5_K, G.Q6_K)

# where each block type keeps its f16 scales (byte offsets)
F16_FIELDS = {G.Q8_0: (0,), G.Q4_0: (0,), G.Q5_0: (0,), G.Q4_K: (0, 2), G.Q5_K: (0, 2), G.Q6_K: (208,),
              G.Q4_1: (0, 2), G.Q5_1: (0, 2)}


def rand_blocks(t, nblocks, seed, scale=1.0):
    """Random blocks of type t: random bytes, finite f16 scales of either sign in [1e-3, 1] * scale."""
    rng = np.random.default_rng(seed)
    _, ts = gguf.GGML_QUANT_SIZES[t]
    b = rng.integers(0, 256, size=(nblocks, ts), dtype=np.uint8)
    for off in F16_FIELDS[t]:
        d = rng.uniform(1e-3, 1.0, nblocks) * scale * rng.choice([-1.0, 1.0], nblocks)
        b[:, off:off + 2] = d.astype(np.float16).view(np.uint8).reshape(nblocks, 2)
    return b


def rand_weight(t, n, k, seed):
    """(uint8 (n, row_bytes) bytes, float64 (n, k) decoded by gguf-py)."""
    bs, ts = gguf.GGML_QUANT_SIZES[t]
    if t in FLOAT_TYPES:
        wf = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
        w = np.ascontiguousarray(gguf.quants.quantize(wf, t)).view(np.uint8).reshape(n, -1)
    else:
        w = rand_blocks(t, n * k // bs, seed, scale=0.05).reshape(n, k // bs * ts)
    wd = gguf.quants.dequantize(w, t).reshape(n, k).astype(np.float64)
    return w, wd


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# ----------------------------------------------------------------------------- dequantize

@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_dequantize_random_blocks_bit_exact(t, simd_level):
    bs, ts = gguf.GGML_QUANT_SIZES[t]
    n = 65536 * 2 if t in FLOAT_TYPES else 256 * 37
    if t in FLOAT_TYPES:  # every bit pattern, NaN / inf / subnormal included
        raw = np.random.default_rng(1).integers(0, 256, size=n * ts, dtype=np.uint8)
        if t == G.F16:
            raw[:65536 * 2] = np.arange(65536, dtype=np.uint16).view(np.uint8)
    else:
        raw = rand_blocks(t, n // bs, seed=2).reshape(-1)
    got = quant.dequantize(raw, int(t), n)
    ref = gguf.quants.dequantize(raw, t).reshape(-1)
    assert got.dtype == np.float32 and got.shape == (n,)
    assert np.array_equal(bits(got), bits(ref))


@pytest.mark.parametrize("t", BLOCK_TYPES + [G.F16], ids=lambda t: t.name)
def test_dequantize_large_parallel_and_any_shape(t):
    bs, ts = gguf.GGML_QUANT_SIZES[t]
    nb = 40000 if bs == 32 else 5000
    raw = rand_blocks(t, nb, seed=3) if t != G.F16 else \
        np.random.default_rng(3).standard_normal(nb).astype(np.float16).view(np.uint8).reshape(nb, 2)
    ref = gguf.quants.dequantize(raw, t).reshape(-1)
    for nt in (1, 2):
        got = quant.dequantize(raw, int(t), nb * bs, nthreads=nt)   # 2-D source
        assert np.array_equal(bits(got), bits(ref))


@pytest.fixture(scope="module")
def model_tensors(gemma3_path):
    """{name: (type, (K, N), raw bytes)} for a few tensors of each type of the real model (opening the
    file with GGUFReader takes seconds: once per module)."""
    reader = gguf.GGUFReader(gemma3_path)
    seen, out = {}, {}
    for tensor in reader.tensors:
        t = tensor.tensor_type
        if seen.get(t, 0) >= 3 and not tensor.name.startswith("blk.0."):
            continue
        seen[t] = seen.get(t, 0) + 1
        data = np.asarray(tensor.data)
        if data.ndim == 2 and data.shape[0] > 2048:      # token_embd: a slice of its rows
            data = data[:2048]
        shape = tuple(int(s) for s in tensor.shape)
        out[tensor.name] = (t, shape, np.ascontiguousarray(data).view(np.uint8).copy())
    del reader
    return out


def test_dequantize_real_model_tensors(model_tensors):
    for name, (t, _, raw) in model_tensors.items():
        bs, ts = gguf.GGML_QUANT_SIZES[t]
        n = raw.size // ts * bs
        got = quant.dequantize(raw, int(t), n)
        ref = gguf.quants.dequantize(raw, t).reshape(-1)
        assert np.array_equal(bits(got), bits(ref)), name
    assert {G.Q8_0, G.Q5_0, G.Q4_K, G.Q6_K, G.F32} <= {t for t, _, _ in model_tensors.values()}


def test_dequantize_bad_inputs():
    raw = rand_blocks(G.Q8_0, 4, seed=0)
    with pytest.raises(ValueError):
        quant.dequantize(raw, int(G.Q8_0), 100)          # not a multiple of 32
    with pytest.raises(ValueError):
        quant.dequantize(raw, int(G.Q8_0), 160)          # more elements than bytes
    with pytest.raises(ValueError):
        quant.dequantize(raw.view(np.int8), int(G.Q8_0), 128)
    with pytest.raises(ValueError):
        quant.dequantize(raw[:, ::2], int(G.Q8_0), 64)
    with pytest.raises(ValueError):
        quant.dequantize(raw, 9, 128)                    # Q8_1: unsupported


# ----------------------------------------------------------------------------- quantize

def quant_inputs(k=256):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12, k)).astype(np.float32)
    x[1] = 0.0                                           # a row of zeros
    x[2, :32] = -0.0
    x[3] *= 1e4                                          # large magnitudes
    x[4] *= 3e37
    x[5] *= 1e-6                                         # tiny (f16 scales underflow)
    x[6] = np.round(x[6] * 4) / 4                        # exact ties (.5 after scaling)
    x[7, 5] = 40.0                                       # one outlier per block
    x[8] = rng.uniform(-1, 1, k).astype(np.float32) * 65520.0
    x[9, ::7] = 0.0
    x[10] = np.float32(1.0) + np.arange(k, dtype=np.float32) * np.float32(2 ** -12)
    return x


@pytest.mark.parametrize("t", [G.Q8_0, G.Q4_0, G.Q5_0, G.F16, G.BF16, G.F32], ids=lambda t: t.name)
def test_quantize_bit_exact(t, simd_level):
    x = quant_inputs()
    with np.errstate(over="ignore"):
        ref = np.ascontiguousarray(gguf.quants.quantize(x, t)).view(np.uint8).reshape(x.shape[0], -1)
    got = quant.quantize(x, int(t))
    assert got.dtype == np.uint8 and got.shape == ref.shape
    assert np.array_equal(got, ref)
    flat = quant.quantize(x.reshape(-1), int(t))         # 1-D input: the same bytes
    assert np.array_equal(flat, ref.reshape(-1))


@pytest.mark.parametrize("t", [G.Q8_0, G.Q4_0, G.Q5_0, G.BF16], ids=lambda t: t.name)
def test_quantize_large_parallel(t):
    x = np.random.default_rng(6).standard_normal((256, 1024)).astype(np.float32)
    ref = np.ascontiguousarray(gguf.quants.quantize(x, t)).view(np.uint8).reshape(256, -1)
    for nt in (1, 2):
        assert np.array_equal(quant.quantize(x, int(t), nthreads=nt), ref)


def test_quantize_roundtrip_through_dequantize():
    x = quant_inputs()[:1]
    for t in (G.Q8_0, G.Q4_0, G.Q5_0):
        q = quant.quantize(x, int(t))
        assert np.array_equal(bits(quant.dequantize(q, int(t), x.size)),
                              bits(gguf.quants.dequantize(q, t).reshape(-1)))


def test_quantize_bad_inputs():
    x = np.zeros((2, 256), np.float32)
    with pytest.raises(ValueError):
        quant.quantize(x.astype(np.float64), int(G.Q8_0))
    with pytest.raises(ValueError):
        quant.quantize(np.zeros((2, 48), np.float32), int(G.Q8_0))
    for t in K_TYPES:                                    # rows must hold whole 256-blocks
        with pytest.raises(ValueError, match="multiple"):
            quant.quantize(np.zeros((2, 384), np.float32), int(t))
    with pytest.raises(ValueError):
        quant.quantize(np.zeros((4, 64), np.float32)[:, ::2], int(G.Q8_0))
    with pytest.raises(ValueError):
        quant.quantize(x, 11)                            # Q3_K: unsupported


# ----------------------------------------------------------------------------- K-quants vs llama.cpp

KQ_FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "kquant_llamacpp.json")


@functools.lru_cache(maxsize=1)
def _kq_cases():
    return kquant_cases.cases()


@pytest.mark.parametrize("t", K_TYPES, ids=lambda t: t.name)
def test_k_quantize_matches_recorded_llamacpp(t, simd_level):
    """Bytes equal to llama.cpp's (fixture: sha256 per case, tests/tools/kquant_reference.py)."""
    with open(KQ_FIXTURE) as f:
        ref = json.load(f)["cases"]
    cases = _kq_cases()
    assert sorted(ref) == sorted(cases)
    for name, x in cases.items():
        assert kquant_cases.sha256(x) == ref[name]["input_sha256"], f"input {name} changed"
        got = quant.quantize(x, int(t))
        assert got.shape == (x.shape[0], x.shape[1] // 256 * gguf.GGML_QUANT_SIZES[t][1])
        assert kquant_cases.sha256(got) == ref[name][t.name], f"{t.name} {name}"


@pytest.mark.skipif(not llamacpp_quant.available(), reason="llama-cpp-python is not installed")
@pytest.mark.parametrize("t", K_TYPES, ids=lambda t: t.name)
def test_k_quantize_matches_live_llamacpp(t, simd_level):
    """Fresh random inputs against ggml_quantize_chunk (what llama_model_quantize runs per tensor)."""
    rng = np.random.default_rng(int(t) * 1000 + simd_level)
    x = rng.standard_normal((32, 512)).astype(np.float32) * np.float32(0.03)
    x[::5] *= rng.random((7, 512)).astype(np.float32) < 0.3      # sparse rows
    x[3, :256] = 0.0                                             # a zero block
    x[7, ::17] = 25.0                                            # outliers
    ref = llamacpp_quant.quantize(x, int(t))
    got = quant.quantize(x, int(t))
    bad = np.nonzero((got != ref).any(axis=1))[0]
    assert bad.size == 0, f"rows {bad[:8]} differ"


@pytest.mark.parametrize("t", [G.Q8_0, G.Q4_0, G.Q5_0, G.Q4_K, G.Q5_K, G.Q6_K], ids=lambda t: t.name)
def test_quantize_simd_levels_agree_on_edge_inputs(t, simd_level):
    """Each SIMD body gives the portable body's bytes, also where the arithmetic is fragile:
    subnormal block maxima (1/d overflows to inf, 0 * inf = NaN), exact ties, signed zeros."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    x[0] = (rng.standard_normal(512) * 1e-39).astype(np.float32)
    x[0, ::3] = 0.0
    x[1] = np.round(x[1] * 8) / 8
    x[2] = -0.0
    x[3, rng.random(512) < 0.9] = 0.0
    x[4] *= np.float32(1e30)
    got = quant.quantize(x, int(t))
    cpu.set_simd_level(0)
    try:
        ref = quant.quantize(x, int(t))
    finally:
        cpu.set_simd_level(simd_level)
    assert np.array_equal(got, ref)


@pytest.mark.parametrize("t", K_TYPES, ids=lambda t: t.name)
def test_k_quantize_threads_and_roundtrip(t):
    x = np.random.default_rng(9).standard_normal((64, 1024)).astype(np.float32)
    one = quant.quantize(x, int(t), nthreads=1)
    assert np.array_equal(quant.quantize(x, int(t), nthreads=2), one)
    assert np.array_equal(quant.quantize(x.reshape(-1), int(t)), one.reshape(-1))
    y = quant.dequantize(one, int(t), x.size).reshape(x.shape)
    rel = np.linalg.norm(y - x) / np.linalg.norm(x)
    assert rel < {G.Q4_K: 0.12, G.Q5_K: 0.06, G.Q6_K: 0.03}[t], rel


# ----------------------------------------------------------------------------- activations

def q8_0_act_ref(x):
    """x as llama.cpp's Q8_0 activation blocks decode (gguf-py's Q8_0), and the step d per element."""
    xq = gguf.quants.dequantize(gguf.quants.quantize(x, G.Q8_0), G.Q8_0).reshape(x.shape)
    d = np.abs(x.reshape(x.shape[0], -1, 32)).max(-1) / np.float32(127)
    return xq.astype(np.float64), np.repeat(d, 32, axis=1).astype(np.float64)


def q8_K_act_ref(x):
    """ggml's quantize_row_q8_K_ref in numpy: q = rint(x * -127/max) (max: signed, largest |x|)."""
    m, k = x.shape
    blocks = x.reshape(m, k // 256, 256)
    imax = np.abs(blocks).argmax(-1)[..., None]
    mx = np.take_along_axis(blocks, imax, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(mx == 0, np.float32(0), np.float32(-127) / mx).astype(np.float32)
        q = np.minimum(np.rint(blocks * iscale), 127)
        d = np.where(mx == 0, np.float32(0), np.float32(1) / iscale).astype(np.float32)
    xq = (q.astype(np.float64) * d.astype(np.float64)).reshape(m, k)
    return xq, np.repeat(np.abs(d[..., 0]), 256, axis=1).astype(np.float64)


def act_ref(x, t):
    return q8_K_act_ref(x) if t in K_TYPES else q8_0_act_ref(x)


@pytest.mark.parametrize("t", [G.Q8_0, G.Q4_K], ids=lambda t: t.name)
def test_activation_quantization_matches_ggml(t, simd_level):
    x = quant_inputs(512)[[0, 1, 2, 3, 5, 6, 7, 9, 10]]
    q, d = quant.quantize_act(x, int(t))
    blk = 256 if t in K_TYPES else 32
    xq = q.astype(np.float64) * np.repeat(d.astype(np.float64), blk, axis=1)
    ref, _ = act_ref(x, t)
    assert np.array_equal(xq, ref)


# ----------------------------------------------------------------------------- linear

M_SIZES, K_SIZES, N_SIZES = (1, 3, 8, 33), (256, 640, 2048), (1, 7, 64, 300)
K_SIZES_256 = (256, 1024, 2048)                          # K-quants: K a multiple of 256


@functools.lru_cache(maxsize=None)
def weight_case(t, n, k):
    return rand_weight(t, n, k, seed=hash((int(t), n, k)) % 2 ** 32)


@functools.lru_cache(maxsize=None)
def act_case(m, k):
    x = np.random.default_rng(m * 100003 + k).standard_normal((m, k)).astype(np.float32)
    if m > 2:
        x[1] = 0.0
        x[2] *= 50.0
    return x


def linear_refs(t, x, wd):
    """(x @ W.T, |x| @ |W|.T, x_q @ W.T, |x_q| @ |W|.T, rounding bound) in float64."""
    x64 = x.astype(np.float64)
    awd = np.abs(wd).T
    exact, mag = x64 @ wd.T, np.abs(x64) @ awd + 1e-30
    if t in FLOAT_TYPES:
        return exact, mag, None, None, None
    xq, step = act_ref(x, t)
    bound = (0.6 * step) @ awd                           # |x - x_q| <= d/2 (+ f16 rounding of d)
    return exact, mag, xq @ wd.T, np.abs(xq) @ awd + 1e-30, bound


def check_linear(t, x, w, wd, out, refs=None):
    """out against x @ W.T: to ~1e-5 of |x_q| |W| with x as the kernel quantizes it, and within the
    bound of the 8-bit activation rounding (+ 1e-2 of |x| |W|) against the float x."""
    exact, mag, qref, magq, bound = refs if refs is not None else linear_refs(t, x, wd)
    if t in FLOAT_TYPES:
        assert np.all(np.abs(out - exact) <= 1e-5 * mag)
        return
    assert np.all(np.abs(out - qref) <= 1e-5 * magq)
    assert np.all(np.abs(out - exact) <= bound + 1e-5 * mag)
    assert np.all(np.abs(out - exact) <= 1e-2 * mag)


@functools.lru_cache(maxsize=None)
def sweep_refs(t, m, k, n):
    return linear_refs(t, act_case(m, k), weight_case(t, n, k)[1])


def sweep_linear(t, m_sizes, amx_used):
    for k in (K_SIZES_256 if t in K_TYPES else K_SIZES):
        for n in N_SIZES:
            w, wd = weight_case(t, n, k)
            rows = {}
            for m in m_sizes:
                x = act_case(m, k)
                out = np.full((m, n), np.nan, np.float32)
                assert quant.linear(x, w, int(t), out, 2) is out
                check_linear(t, x, w, wd, out, sweep_refs(t, m, k, n))
                rows[m] = out
            # the decode path (M = 1) and the tiled path (M > 1) give the same numbers (to float
            # rounding when M > 1 runs on AMX tiles, which sum each block's products exactly first)
            big = max(m_sizes)
            x = act_case(big, k)
            one = np.empty((1, n), np.float32)
            for i in (0, 5, big - 1):
                quant.linear(x[i:i + 1], w, int(t), one, 1)
                if amx_used and big >= 16 and t not in FLOAT_TYPES:
                    mag = np.abs(x[i].astype(np.float64)) @ np.abs(wd).T
                    assert np.all(np.abs(one[0] - rows[big][i]) <= 1e-6 * mag), (k, n, i)
                else:
                    assert np.array_equal(one[0], rows[big][i]), (k, n, i)


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_linear_against_numpy(t, simd_level):
    sweep_linear(t, M_SIZES, quant._set_amx(True))


@pytest.mark.parametrize("t", BLOCK_TYPES, ids=lambda t: t.name)
def test_linear_tiled_without_amx(t, simd_level):
    # on AMX machines the M = 33 runs above use tiles; this covers the VNNI M > 1 micro-kernels
    # (at levels without AMX it repeats what the test above checks, cheaply)
    quant._set_amx(False)
    try:
        sweep_linear(t, (1, 33), False)
    finally:
        quant._set_amx(True)


def test_q4k_decode_without_gfni(simd_level):
    # the VNNI Q4_K M = 1 kernel splits nibbles with GFNI where the CPU has it and with a masked
    # vpmulhuw otherwise: the fallback too gives the tiled path's numbers bit for bit
    quant._set_amx(False)
    quant._set_gfni(False)
    try:
        sweep_linear(G.Q4_K, (1, 8), False)
    finally:
        quant._set_gfni(True)
        quant._set_amx(True)


@pytest.mark.parametrize("gfni", [True, False], ids=["gfni", "no-gfni"])
def test_q4k_decode_rows_beyond_one_panel(gfni, simd_level):
    # K = 4352: the M = 1 kernel sums two column panels (2048 + 2304) as the tiled path does
    k, n = 4352, 37
    w, wd = weight_case(G.Q4_K, n, k)
    x = act_case(8, k)
    quant._set_amx(False)
    quant._set_gfni(gfni)
    try:
        rows = np.empty((8, n), np.float32)
        quant.linear(x, w, int(G.Q4_K), rows, 2)
        ref = x.astype(np.float64) @ wd.T.astype(np.float64)          # wd: gguf-py's dequantization
        mag = np.abs(x).astype(np.float64) @ np.abs(wd).T.astype(np.float64)
        assert np.all(np.abs(rows - ref) <= 0.01 * mag + 1e-6)          # 8-bit activations: ~1/254 each
        one = np.empty((1, n), np.float32)
        for i in (0, 2, 7):
            quant.linear(x[i:i + 1], w, int(G.Q4_K), one, 2)
            assert np.array_equal(one[0], rows[i]), i
    finally:
        quant._set_gfni(True)
        quant._set_amx(True)


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_linear_long_rows_and_odd_shapes(t, simd_level):
    # K > the panel widths (2048, AMX 1024): partial sums across panels; K with a half-filled
    # 64-chunk or an odd number of blocks; float tails; M and N not multiples of the tiles
    bs = gguf.GGML_QUANT_SIZES[t][0]
    ks = {256: (2304, 4608), 32: (32, 96, 1056, 2080), 1: (1, 7, 100, 2050)}[bs]
    for k in ks:
        for m, n in ((1, 9), (5, 13), (40, 37)):
            w, wd = rand_weight(t, n, k, seed=k + n)
            x = np.random.default_rng(k * m).standard_normal((m, k)).astype(np.float32)
            out = np.empty((m, n), np.float32)
            quant.linear(x, w, int(t), out, 2)
            check_linear(t, x, w, wd, out)


def _guarded(w):
    """A copy of w whose last byte is followed by an unreadable page (reading past it faults)."""
    import ctypes
    import mmap
    page = mmap.PAGESIZE
    total = (w.nbytes + page - 1) // page * page + page
    buf = mmap.mmap(-1, total)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mprotect(ctypes.c_void_p(base + total - page), ctypes.c_size_t(page), 0) == 0
    g = np.frombuffer(buf, np.uint8, count=w.nbytes, offset=total - page - w.nbytes).reshape(w.shape)
    g[...] = w
    return g


@pytest.mark.parametrize("t", [G.Q4_0, G.Q5_0], ids=lambda t: t.name)
def test_linear_b4_groups_tails_and_variants(t, simd_level):
    # VNNI decodes Q4_0 in groups of 4 blocks (Q5_0 in pairs): K/32 = 1..3 mod 4 (a short last
    # group), K over a panel (2048) with a short group; the last row ends at an unreadable page.
    # M = 1 must equal M > 1 (the panel micro-kernel) bit for bit, for every decode variant the CPU
    # has (GFNI or not), and the variants must agree; against numpy as everywhere else.
    quant._set_amx(False)
    try:
        for k in (32, 64, 96, 192, 1056, 2080, 4160):
            n = 13
            w, wd = rand_weight(t, n, k, seed=k)
            w = _guarded(w)
            x = np.random.default_rng(k).standard_normal((3, k)).astype(np.float32)
            x[1] *= 30.0
            ref = None
            for gfni in (False, True):
                quant._set_gfni(gfni)
                many = np.empty((3, n), np.float32)
                quant.linear(x, w, int(t), many, 2)
                check_linear(t, x, w, wd, many)
                for i in range(3):
                    one = np.empty((1, n), np.float32)
                    quant.linear(x[i:i + 1], w, int(t), one, 1)
                    assert np.array_equal(one[0], many[i]), (k, gfni, i)
                if ref is None:
                    ref = many
                assert np.array_equal(many, ref), (k, gfni)
    finally:
        quant._set_gfni(True)
        quant._set_amx(True)


@pytest.mark.parametrize("t", [G.Q8_0, G.Q5_0, G.Q6_K, G.Q4_K], ids=lambda t: t.name)
def test_linear_threads_agree(t, simd_level):
    w, wd = weight_case(t, 300, 640 if t not in K_TYPES else 2048)
    for m in (8, 40):
        x = act_case(m, wd.shape[1])
        outs = []
        for nt in (1, 2, 3):
            out = np.empty((m, 300), np.float32)
            quant.linear(x, w, int(t), out, nt)
            outs.append(out)
        assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_linear_float_weights_as_float_arrays():
    x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    wf = np.random.default_rng(1).standard_normal((5, 40)).astype(np.float32)
    out = np.empty((3, 5), np.float32)
    quant.linear(x, wf, int(G.F32), out, 1)
    assert np.allclose(out, x @ wf.T, rtol=1e-5, atol=1e-5)
    quant.linear(x, wf.astype(np.float16), int(G.F16), out, 1)
    assert np.allclose(out, x @ wf.astype(np.float16).astype(np.float32).T, rtol=1e-5, atol=1e-5)


def test_linear_real_model(model_tensors, simd_level):
    x_rng = np.random.default_rng(9)
    types = set()
    for name in ("blk.0.ffn_up.weight", "blk.0.ffn_down.weight", "blk.0.attn_output.weight",
                 "blk.0.attn_v.weight", "token_embd.weight"):
        t, (k, _), raw = model_tensors[name]
        n = raw.size // (k // gguf.GGML_QUANT_SIZES[t][0] * gguf.GGML_QUANT_SIZES[t][1])
        w = raw.reshape(n, -1)
        wd = gguf.quants.dequantize(w, t).reshape(n, k).astype(np.float64)
        for m in (1, 6):
            x = x_rng.standard_normal((m, k)).astype(np.float32)
            out = np.empty((m, n), np.float32)
            quant.linear(x, w, int(t), out, 2)
            check_linear(t, x, w, wd, out)
        types.add(t)
    assert {G.Q5_0, G.Q4_K, G.Q6_K, G.Q8_0} <= types


def test_linear_bad_inputs():
    t = int(G.Q8_0)
    w, _ = weight_case(G.Q8_0, 7, 256)
    x = np.zeros((3, 256), np.float32)
    out = np.zeros((3, 7), np.float32)
    bad = [
        (x.astype(np.float64), w, t, out),                        # x dtype
        (x[:, :128], w, t, out),                                  # w rows do not match K
        (np.zeros((3, 100), np.float32), w, t, out),              # K not a multiple of 32
        (np.zeros((3, 512), np.float32)[:, ::2], w, t, out),      # x not contiguous
        (x.tolist(), w, t, out),                                  # not an ndarray
        (x, w.view(np.int8), t, out),                             # w dtype
        (x, w[:, :-34], t, out),                                  # w row bytes
        (x, np.zeros((14, 272), np.uint8)[::2], t, out),          # w not contiguous
        (x, w.reshape(-1), t, out),                               # w 1-D
        (x, w, t, np.zeros((3, 8), np.float32)),                  # out shape
        (x, w, t, np.zeros((7, 3), np.float32).T),                # out not contiguous
        (x, w, t, np.zeros((3, 7), np.float64)),                  # out dtype
        (x, w, 10, out),                                          # Q2_K: unsupported
        (x.reshape(3, 256, 1), w, t, out),                        # x 3-D
        (np.zeros((3, 0), np.float32), np.zeros((7, 0), np.uint8), t, out),  # K = 0
    ]
    for args in bad:
        with pytest.raises(ValueError):
            quant.linear(*args, 1)
    with pytest.raises(ValueError):
        quant.linear(np.zeros((3, 256), np.float32), w, int(G.Q4_K), out, 1)   # K-quant K=256 rows: 144 B


def test_read_only_weights():
    # GGUF tensors are read-only memory maps
    for t in (G.Q4_K, G.Q8_0, G.F16):
        w, wd = rand_weight(t, 9, 512, seed=4)
        w = w.copy()
        w.setflags(write=False)
        x = np.random.default_rng(2).standard_normal((2, 512)).astype(np.float32)
        out = np.empty((2, 9), np.float32)
        quant.linear(x, w, int(t), out, 1)
        check_linear(t, x, w, wd, out)
        rows = np.empty((2, 512), np.float32)
        quant.get_rows(w, int(t), np.array([8, 1]), rows)
        assert np.array_equal(bits(rows), bits(wd[[8, 1]].astype(np.float32)))
        assert np.array_equal(bits(quant.dequantize(w, int(t), 9 * 512)), bits(wd.reshape(-1).astype(np.float32)))


def test_linear_empty():
    w, _ = weight_case(G.Q4_0, 7, 256)
    out = np.empty((0, 7), np.float32)
    assert quant.linear(np.zeros((0, 256), np.float32), w, int(G.Q4_0), out, 2) is out


# ----------------------------------------------------------------------------- get_rows

@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_get_rows_bit_exact(t, simd_level):
    v, k = 50, 512
    w, _ = rand_weight(t, v, k, seed=11)
    table = quant.dequantize(w, int(t), v * k).reshape(v, k)
    for dt in (np.int32, np.int64):
        ids = np.array([3, 0, 49, 3, 17], dt)
        out = np.full((5, k), np.nan, np.float32)
        assert quant.get_rows(w, int(t), ids, out) is out
        assert np.array_equal(bits(out), bits(table[ids]))
    ids = np.arange(v)[::-1].copy()                       # parallel path (many rows)
    out = np.empty((v, k), np.float32)
    quant.get_rows(w, int(t), ids, out, nthreads=2)
    assert np.array_equal(bits(out), bits(table[ids]))


def test_get_rows_bad_ids():
    w, _ = rand_weight(G.Q8_0, 10, 64, seed=1)
    out = np.full((2, 64), 7.0, np.float32)
    for ids in ([0, 10], [-1, 2], np.array([0, 2**40], np.int64)):
        with pytest.raises(ValueError, match="ids"):
            quant.get_rows(w, int(G.Q8_0), np.asarray(ids), out)
        assert np.all(out == 7.0)                        # nothing written
    with pytest.raises(ValueError):
        quant.get_rows(w, int(G.Q8_0), np.array([0.0, 1.0]), out)
    with pytest.raises(ValueError):
        quant.get_rows(w, int(G.Q8_0), np.array([[0, 1]]), out)
    with pytest.raises(ValueError):
        quant.get_rows(w, int(G.Q8_0), np.array([0, 1]), np.zeros((2, 32), np.float32))
    with pytest.raises(ValueError):
        quant.get_rows(w[:, :-1], int(G.Q8_0), np.array([0, 1]), out)


@pytest.mark.parametrize("t", ALL_TYPES + [G.Q4_1, G.Q5_1], ids=lambda t: t.name)
def test_linear_nan_row_is_nan(t, simd_level):
    """A NaN in an activation row makes that output row NaN (as float x @ W.T), on the decode, tiled
    and AMX paths; the other rows are untouched. (8-bit activation rounding used to turn the NaN
    into an integer, giving finite outputs as if it were 0.)"""
    k = 512 if t in K_TYPES else 96
    w, _ = rand_weight(t, 37, k, seed=3)
    for m, amx in ((1, True), (5, True), (33, True), (33, False)):
        quant._set_amx(amx)
        try:
            x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
            clean = np.empty((m, 37), np.float32)
            quant.linear(x, w, int(t), clean, 2)
            bad = m // 2
            x[bad, k // 3] = np.nan
            out = np.empty((m, 37), np.float32)
            quant.linear(x, w, int(t), out, 2)
        finally:
            quant._set_amx(True)
        assert np.all(np.isnan(out[bad])), (m, amx)
        keep = np.arange(m) != bad
        np.testing.assert_array_equal(out[keep], clean[keep])
