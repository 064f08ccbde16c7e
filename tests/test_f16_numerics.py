"""fp16 rounding kernels (ggml numerics): round_f16 and geglu_f16, against numpy, on every SIMD level."""
import numpy as np

from slmx._kernels import ops_core


def test_round_f16_matches_numpy(simd_level):
    rng = np.random.default_rng(0)
    x = np.concatenate([
        (rng.standard_normal(50_000) * 10.0 ** rng.uniform(-9, 5, 50_000)),
        # every fp16 value and the midpoints between neighbours (ties round to even)
        np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32),
        [65504.0, 65520.0, 70000.0, -70000.0, 2.0 ** -25, 2.0 ** -24 * 1.5, 0.0, -0.0],
    ]).astype(np.float32)
    h = np.arange(0, 0x7bff, dtype=np.uint16).view(np.float16).astype(np.float64)
    mid = ((h[:-1] + h[1:]) / 2).astype(np.float32)
    x = np.concatenate([x, mid, -mid])
    finite = np.isfinite(x)
    x = x[finite]
    want = x.astype(np.float16).astype(np.float32)
    got = x.copy()
    ops_core.round_f16(got, 2)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_geglu_f16_is_gelu_through_fp16(simd_level):
    rng = np.random.default_rng(1)
    g = (rng.standard_normal(40_000) * 4).astype(np.float32)
    g[:4] = [-10.0, 10.0, 12.5, -11.0]
    u = rng.standard_normal(40_000).astype(np.float32)
    x = g.astype(np.float16).astype(np.float64)
    gelu = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    y = gelu.astype(np.float32).astype(np.float16).astype(np.float32)
    y = np.where(g <= -10, 0.0, np.where(g >= 10, g, y)).astype(np.float32)
    ones = np.ones_like(u)
    got = np.empty_like(g)
    ops_core.geglu_f16(g, ones, got, 2)
    # the table is built with float32 tanh (as ggml's): at most one fp16 ulp from the float64
    # value, plus float32's cancellation in 1 + tanh(.) for x < -4 (|gelu| < 2e-6 there)
    ulp = np.abs(np.spacing(y.astype(np.float16))).astype(np.float32)
    assert (np.abs(got - y) <= ulp + 2e-6).all()
    assert (np.abs(got - y) <= ulp)[np.abs(g) < 4].all()
    inner = np.abs(g) < 10   # outside, ggml passes x (or 0) through unrounded
    assert (got.astype(np.float16).astype(np.float32) == got)[inner].all()   # fp16 values
    out = np.empty_like(g)
    ops_core.geglu_f16(g, u, out, 2)
    assert np.array_equal(out, got * u)
    # and it is not the fp32 GELU
    exact = (0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))) * u
    assert np.abs(out - exact).max() > 1e-4
