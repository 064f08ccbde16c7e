"""ops_core kernels against numpy references (float64), on every SIMD dispatch level."""
import numpy as np
import pytest

from slmx._kernels import ops_core as oc

RNG = np.random.default_rng(1234)

# odd sizes exercise the vector tails; (300, 640) crosses the parallel threshold
SHAPES = [(1, 1), (3, 7), (5, 33), (2, 3, 640), (300, 640), (4, 1152)]


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def ref_rmsnorm(x, w, eps):
    xd = x.astype(np.float64)
    return xd / np.sqrt((xd * xd).mean(-1, keepdims=True) + eps) * w.astype(np.float64)


def ref_softmax(x):
    xd = x.astype(np.float64)
    e = np.exp(xd - xd.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ref_gelu(x):
    """0.5 x (1 + tanh(y)), y = sqrt(2/pi) (x + 0.044715 x^3), written as x * sigmoid(2y): in
    float64 the tanh form loses everything to cancellation for x < -6."""
    xd = x.astype(np.float64)
    y = np.sqrt(2.0 / np.pi) * (xd + 0.044715 * xd ** 3)
    with np.errstate(over="ignore"):
        return xd / (1.0 + np.exp(-2.0 * y))


def test_gelu_reference_is_the_tanh_form():
    xd = np.linspace(-5, 5, 101)
    tanh_form = 0.5 * xd * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (xd + 0.044715 * xd ** 3)))
    np.testing.assert_allclose(ref_gelu(xd), tanh_form, rtol=1e-9, atol=1e-12)


def ref_silu(x):
    xd = x.astype(np.float64)
    return xd / (1.0 + np.exp(-xd))


def close(got, ref, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(got.astype(np.float64), ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_rmsnorm(simd_level, shape, nthreads):
    x = rand(*shape, scale=3.0)
    w = rand(shape[-1])
    out = np.empty_like(x)
    oc.rmsnorm(x, w, 1e-6, out, nthreads)
    close(out, ref_rmsnorm(x, w, 1e-6))
    # in place, and a large eps that matters
    y = x.copy()
    oc.rmsnorm(y, w, 0.5, y, nthreads)
    close(y, ref_rmsnorm(x, w, 0.5))


@pytest.mark.parametrize("mag", [1e19, 3e19, 1e25, 1e36])
def test_rmsnorm_rows_beyond_float_squares(simd_level, mag):
    # x^2 (or the sum of a row's squares) beyond float: the row is still x / rms(x) * w, as the
    # float64 formula gives (a float sum made it zeros; ggml's double sum then float mean does at
    # a mean square past 3.4e38); ordinary rows of the same call are untouched, inf stays as before
    C = 640
    x = rand(3, C, scale=1.0)
    x[0] *= mag
    w = rand(C)
    out = np.empty_like(x)
    oc.rmsnorm(x, w, 1e-6, out, 1)
    assert np.all(np.isfinite(out))
    close(out, ref_rmsnorm(x, w, 1e-6), rtol=1e-5, atol=1e-6)
    x[2, 5] = np.inf
    oc.rmsnorm(x, w, 1e-6, out, 1)
    assert not np.all(np.isfinite(out[2]))
    close(out[:2], ref_rmsnorm(x[:2], w, 1e-6), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_softmax(simd_level, shape, nthreads):
    x = rand(*shape, scale=5.0)
    out = np.empty_like(x)
    oc.softmax(x, out, nthreads)
    close(out, ref_softmax(x), atol=1e-7)
    y = x.copy()
    oc.softmax(y, y, nthreads)
    close(y, ref_softmax(x), atol=1e-7)


def test_softmax_masked_rows(simd_level):
    x = rand(4, 37)
    x[0, :] = -np.inf                 # fully masked row -> zeros, not NaN
    x[1, 5:] = -np.inf                # partially masked
    x[2, :] += 1000.0                 # large values: max subtraction keeps it finite
    out = np.empty_like(x)
    oc.softmax(x, out)
    assert np.all(out[0] == 0.0)
    assert np.all(np.isfinite(out))
    close(out[1:], ref_softmax(x[1:]), atol=1e-7)
    assert np.all(out[1, 5:] == 0.0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_activations(simd_level, shape, nthreads):
    x = rand(*shape, scale=4.0)
    u = rand(*shape)
    out = np.empty_like(x)
    oc.gelu_tanh(x, out, nthreads)
    close(out, ref_gelu(x))
    oc.silu(x, out, nthreads)
    close(out, ref_silu(x))
    oc.geglu(x, u, out, nthreads)
    close(out, ref_gelu(x) * u)
    oc.swiglu(x, u, out, nthreads)
    close(out, ref_silu(x) * u)
    y = x.copy()
    oc.swiglu(y, u, y, nthreads)     # in place over the gate
    close(y, ref_silu(x) * u)


def test_activation_extremes(simd_level):
    x = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-3, -1e-3, 9.0, -9.0, 30.0, -30.0, 88.0, -88.0,
                  95.0, -95.0, 200.0, -200.0, 1e30, -1e30, np.inf], dtype=np.float32)
    out = np.empty_like(x)
    with np.errstate(over="ignore"):
        oc.gelu_tanh(x, out)
        close(out, ref_gelu(x), atol=1e-30)
        oc.silu(x, out)
        close(out, ref_silu(x), atol=1e-30)
    assert np.isnan(oc.silu(np.array([np.nan], np.float32), np.empty(1, np.float32))[0])


def test_exp_accuracy_through_softmax(simd_level):
    # two-entry rows: softmax([0, d]) = [1/(1+e^d), e^d/(1+e^d)] probes exp over its range
    d = np.linspace(-100, 0, 4001, dtype=np.float32)
    x = np.stack([np.zeros_like(d), d], axis=1)
    out = np.empty_like(x)
    oc.softmax(x, out)
    ref = ref_softmax(x)
    np.testing.assert_allclose(out[:, 1], ref[:, 1], rtol=2e-6, atol=2e-38)  # AVX2 flushes e^x < FLT_MIN to 0


@pytest.mark.parametrize("shape", SHAPES)
def test_add_mul_scale(simd_level, shape):
    a, b = rand(*shape), rand(*shape)
    out = np.empty_like(a)
    oc.add(a, b, out)
    np.testing.assert_array_equal(out, a + b)
    oc.mul(a, b, out)
    np.testing.assert_array_equal(out, a * b)
    oc.scale(a, 0.37, out)
    np.testing.assert_array_equal(out, a * np.float32(0.37))
    c = a.copy()
    oc.add_inplace(c, b)
    np.testing.assert_array_equal(c, a + b)


def test_add_parallel(simd_level):
    a, b = rand(1000, 333), rand(1000, 333)
    out = np.empty_like(a)
    oc.add(a, b, out, 2)
    np.testing.assert_array_equal(out, a + b)
    oc.scale(a, -2.5, out, 2)
    np.testing.assert_array_equal(out, a * np.float32(-2.5))


# ----------------------------------------------------------------------------- RoPE

def ggml_angles(pos, half, n_rot, base, freq_scale, freq_factors=None):
    """(T, half) angles as ggml computes them: float32 theta accumulated by multiplication."""
    # powf(base, -2.0f/n_rot), correctly rounded like glibc's powf (numpy's float32 power is
    # sometimes 1 ulp off, and that ulp grows to ~1e-4 in the angle at position 3000)
    ts = np.float32(np.float64(base) ** np.float64(np.float32(-2.0) / np.float32(n_rot)))
    theta = pos.astype(np.float32)
    out = np.empty((len(pos), half), np.float32)
    for i in range(half):
        t = theta if freq_factors is None else theta / np.float32(freq_factors[i])
        out[:, i] = np.float32(freq_scale) * t
        theta = (theta * ts).astype(np.float32)
    return out.astype(np.float64)


def exact_angles(pos, half, n_rot, base, freq_scale):
    i = np.arange(half, dtype=np.float64)
    return pos[:, None].astype(np.float64) * freq_scale * base ** (-2.0 * i / n_rot)


def ref_rope(x, ang, neox, n_rot, inverse=False):
    x = x.astype(np.float64).copy()
    half = n_rot // 2
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    if inverse:
        s = -s
    if neox:
        a, b = x[..., :half].copy(), x[..., half:n_rot].copy()
        x[..., :half] = a * c - b * s
        x[..., half:n_rot] = a * s + b * c
    else:
        a, b = x[..., 0:n_rot:2].copy(), x[..., 1:n_rot:2].copy()
        x[..., 0:n_rot:2] = a * c - b * s
        x[..., 1:n_rot:2] = a * s + b * c
    return x


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("T,H,D", [(1, 4, 256), (7, 3, 64), (64, 8, 128), (5, 2, 10)])
@pytest.mark.parametrize("pdtype", [np.int32, np.int64])
def test_rope(simd_level, neox, T, H, D, pdtype):
    x = rand(T, H, D)
    pos = (RNG.integers(0, 3000, size=T)).astype(pdtype)
    pos[0] = 0
    y = x.copy()
    oc.rope(y, pos, 10000.0, neox, 2)
    ang = ggml_angles(pos, D // 2, D, 10000.0, 1.0)
    close(y, ref_rope(x, ang, neox, D), rtol=1e-5, atol=2e-6)
    # same as the exact formula up to float rounding of the angle (|theta| < 3000 -> ~2e-4)
    np.testing.assert_allclose(y, ref_rope(x, exact_angles(pos, D // 2, D, 10000.0, 1.0), neox, D),
                               rtol=0, atol=2e-3 * np.abs(x).max())
    # inverse undoes forward
    oc.rope(y, pos, 10000.0, neox, 1, inverse=True)
    close(y, x.astype(np.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("neox", [True, False])
def test_rope_options(simd_level, neox):
    T, H, D, n_rot = 9, 2, 64, 32
    x = rand(T, H, D)
    pos = np.arange(100, 100 + T, dtype=np.int64)
    ff = (1.0 + RNG.random(n_rot // 2) * 7).astype(np.float32)
    y = x.copy()
    oc.rope(y, pos, 500000.0, neox, 1, freq_scale=0.25, freq_factors=ff, n_rot=n_rot)
    ang = ggml_angles(pos, n_rot // 2, n_rot, 500000.0, 0.25, ff)
    close(y, ref_rope(x, ang, neox, n_rot), atol=2e-6)
    np.testing.assert_array_equal(y[..., n_rot:], x[..., n_rot:])


def test_rope_large_parallel(simd_level):
    T, H, D = 300, 4, 256
    x = rand(T, H, D)
    pos = np.arange(T, dtype=np.int32) + 4000
    y1, y2 = x.copy(), x.copy()
    oc.rope(y1, pos, 1000000.0, True, 1)
    oc.rope(y2, pos, 1000000.0, True, 2)
    np.testing.assert_array_equal(y1, y2)
    close(y1, ref_rope(x, ggml_angles(pos, D // 2, D, 1e6, 1.0), True, D), atol=2e-6)


# ----------------------------------------------------------------------------- errors

def test_bad_inputs(simd_level):
    x = rand(4, 8)
    out = np.empty_like(x)
    with pytest.raises(ValueError):
        oc.rmsnorm(x, rand(7), 1e-6, out)              # weight length
    with pytest.raises(ValueError):
        oc.rmsnorm(x, rand(8), 1e-6, np.empty((4, 9), np.float32))
    with pytest.raises(ValueError):
        oc.rmsnorm(x.astype(np.float64), rand(8), 1e-6, out)
    with pytest.raises(ValueError):
        oc.softmax(np.asfortranarray(rand(4, 8)), out)  # not C-contiguous
    with pytest.raises(ValueError):
        oc.softmax(x, out[:, :4])
    with pytest.raises(ValueError):
        oc.gelu_tanh(x, np.empty(32, np.float32))       # shape mismatch
    with pytest.raises(ValueError):
        oc.geglu(x, rand(4, 7), out)
    with pytest.raises(ValueError):
        oc.add(x, rand(8, 4), out)
    with pytest.raises(ValueError):
        oc.scale([1.0, 2.0], 2.0, out)
    with pytest.raises(ValueError):
        oc.rope(rand(4, 8), np.arange(4), 1e4, True)     # not 3-D
    with pytest.raises(ValueError):
        oc.rope(rand(4, 2, 8), np.arange(3), 1e4, True)  # positions length
    with pytest.raises(ValueError):
        oc.rope(rand(4, 2, 8), np.arange(4.0), 1e4, True)  # float positions
    with pytest.raises(ValueError):
        oc.rope(rand(4, 2, 7), np.arange(4), 1e4, True)  # odd D
    with pytest.raises(ValueError):
        oc.rope(rand(4, 2, 8), np.arange(4), 1e4, True, n_rot=10)
