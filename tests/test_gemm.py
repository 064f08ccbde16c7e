"""fp32 GEMM (matmul, linear_f32, packed operands) against numpy float64, every SIMD level."""
import threading

import numpy as np
import pytest

from slmx._kernels import gemm

RNG = np.random.default_rng(7)

# small-M path (M < 8), balanced tiles (M = 16 -> 8 + 8), edges in every dimension,
# K beyond one depth block (256), N beyond one panel group (8 x 32), M beyond MC_OUTER (2048)
SHAPES = [
    (1, 1, 1), (1, 5, 7), (3, 33, 70), (7, 640, 130), (1, 300, 1000),
    (8, 100, 33), (9, 17, 31), (16, 640, 256), (29, 300, 100), (14, 513, 32),
    (64, 257, 300), (130, 64, 17), (2100, 40, 40),
]


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def check(out, ref, K):
    # fp32 accumulation over K terms of unit-variance products: error ~ sqrt(K) * eps * |terms|
    tol = 1e-5 * max(1.0, np.sqrt(K)) * 4
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=tol)


def check_linear(x, w, K, ref=None):
    """linear_f32(x, w) at 1 and 2 threads, into a NaN-filled out, against float64 x @ w.T"""
    if ref is None:
        ref = x.astype(np.float64) @ w.astype(np.float64).T
    for nt in (1, 2):
        out = np.full((x.shape[0], w.shape[0]), np.nan, np.float32)
        gemm.linear_f32(x, w, out, nt)
        check(out, ref, K)
    return ref


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_matmul(simd_level, M, K, N, nthreads):
    a, b = rand(M, K), rand(K, N)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    out = np.full((M, N), np.nan, np.float32)
    gemm.matmul(a, b, out, nthreads)
    check(out, ref, K)


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_linear_f32(simd_level, M, K, N, nthreads):
    x, w = rand(M, K), rand(N, K)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    out = np.full((M, N), np.nan, np.float32)
    gemm.linear_f32(x, w, out, nthreads)
    check(out, ref, K)


@pytest.mark.parametrize("M,K,N", SHAPES[::2])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_packed(simd_level, M, K, N, nthreads):
    a, b = rand(M, K), rand(K, N)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    pb = gemm.pack_b(b, nthreads)
    pw = gemm.pack_weight(np.ascontiguousarray(b.T), nthreads)
    assert pb.shape == (K, N) and pw.shape == (K, N)
    np.testing.assert_array_equal(pb.data, pw.data)       # one layout from either source
    out = np.full((M, N), np.nan, np.float32)
    gemm.matmul_packed(a, pb, out, nthreads)
    check(out, ref, K)
    out[:] = np.nan
    gemm.matmul_packed(a, pw, out, nthreads)
    check(out, ref, K)


def test_packed_layout(simd_level):
    # panel layout documented in PackedB: per depth block, panels of kc x 32, zero past N
    kc = gemm.block_sizes()[0]
    K, N = kc + 44, 40
    b = rand(K, N)
    pk = gemm.pack_b(b)
    assert pk.kc == kc
    d = pk.data
    npad = 64
    first = d[: kc * npad].reshape(2, kc, 32)          # block 0: two panels
    np.testing.assert_array_equal(first[0], b[:kc, :32])
    np.testing.assert_array_equal(first[1][:, :8], b[:kc, 32:])
    assert np.all(first[1][:, 8:] == 0)
    rest = d[kc * npad:].reshape(2, K - kc, 32)
    np.testing.assert_array_equal(rest[0], b[kc:, :32])


def test_packed_across_levels(simd_level):
    # a weight packed once is usable whatever the dispatch level in force
    from slmx._kernels import cpu
    cpu.set_simd_level(0)
    w = rand(70, 90)
    pw = gemm.pack_weight(w)
    cpu.set_simd_level(simd_level)
    x = rand(20, 90)
    out = np.empty((20, 70), np.float32)
    gemm.matmul_packed(x, pw, out)
    check(out, x.astype(np.float64) @ w.T.astype(np.float64), 90)


def test_special_values(simd_level):
    a, b = rand(9, 40), rand(40, 50)
    a[2, 3] = np.inf
    b[5, 7] = np.nan
    out = np.empty((9, 50), np.float32)
    with np.errstate(invalid="ignore"):
        ref = a.astype(np.float64) @ b.astype(np.float64)
    gemm.matmul(a, b, out)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(ref))


def test_zero_sizes(simd_level):
    out = np.full((3, 4), np.nan, np.float32)
    gemm.matmul(np.empty((3, 0), np.float32), np.empty((0, 4), np.float32), out)
    assert np.all(out == 0)
    gemm.linear_f32(np.empty((0, 5), np.float32), rand(4, 5), np.empty((0, 4), np.float32))
    gemm.matmul(rand(2, 5), np.empty((5, 0), np.float32), np.empty((2, 0), np.float32))


def test_concurrent_calls(simd_level):
    # two Python threads at once: one owns the shared workspace, the other gets its own
    a, b = rand(200, 300), rand(300, 260)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    outs = [np.empty((200, 260), np.float32) for _ in range(4)]
    errors = []

    def run(o):
        try:
            for _ in range(5):
                gemm.matmul(a, b, o, 1)
                check(o, ref, 300)
        except Exception as e:          # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=run, args=(o,)) for o in outs]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors


def test_block_sizes():
    # derived from the caches: a B panel fits L1, an A block a fraction of L2
    assert gemm._block_sizes(48 * 1024, 2 * 1024 * 1024) == (256, 341)
    assert gemm._block_sizes(32 * 1024, 256 * 1024)[0] == 160
    kc, mc, _, nr = gemm.block_sizes()
    assert 128 <= kc <= 512 and kc % 16 == 0 and mc >= 56 and nr == 32


def test_bad_inputs(simd_level):
    a, b = rand(4, 5), rand(5, 6)
    out = np.empty((4, 6), np.float32)
    with pytest.raises(ValueError):
        gemm.matmul(a, rand(4, 6), out)                    # inner dims
    with pytest.raises(ValueError):
        gemm.matmul(a, b, np.empty((4, 7), np.float32))    # out shape
    with pytest.raises(ValueError):
        gemm.matmul(a.astype(np.float64), b, out)           # dtype
    with pytest.raises(ValueError):
        gemm.matmul(np.asfortranarray(a), b, out)           # layout
    with pytest.raises(ValueError):
        gemm.matmul(a[None], b, out)                        # ndim
    with pytest.raises(ValueError):
        gemm.matmul(a, b, out.astype(np.float64))
    with pytest.raises(ValueError):
        gemm.linear_f32(a, rand(6, 4), out)                 # w (N, K) with K != 5
    sq = rand(4, 4)
    with pytest.raises(ValueError):
        gemm.matmul(sq, sq, sq)                             # out aliases an input
    pk = gemm.pack_b(b)
    with pytest.raises(ValueError):
        gemm.matmul_packed(rand(4, 6), pk, out)             # K mismatch
    with pytest.raises(ValueError):
        gemm.matmul_packed(a, pk, np.empty((4, 5), np.float32))
    with pytest.raises((ValueError, TypeError)):
        gemm.matmul_packed(a, b, out)                       # not a PackedB
    with pytest.raises(ValueError):
        gemm.pack_b([[1.0]])


@pytest.mark.parametrize("M", [1, 2, 7])
@pytest.mark.parametrize("K", [3, 16, 17, 40, 100])
def test_linear_small_m_alignment(simd_level, M, K):
    # the small-M dot products start with a step to the next 64-byte boundary of each row of w:
    # every offset of w's data from a cache line (views into a larger buffer), a K shorter than
    # that step, rows of W in groups of R plus a remainder (N = 13)
    N = 13
    x = rand(M, K)
    buf = rand(N * K + 16)
    base = (-(buf.ctypes.data % 64) // 4) % 16         # floats to the first 64-byte boundary
    for off in range(16):
        start = (base + off) % 16
        w = buf[start:start + N * K].reshape(N, K)
        check_linear(x, w, K)


@pytest.mark.parametrize("kmax", [64, 96])
def test_linear_depth_blocks(simd_level, kmax):
    # linear_f32 with 16 <= M <= 3 MC_ROWS takes depth blocks of up to LINEAR_KC_MAX (forced small
    # here): K of one block, of exactly two, and of uneven multiples of 16 with a short tail; M at
    # the edges of the rule (15: the general rule, 16, beyond 3 MC_ROWS: the general rule)
    mc = gemm.block_sizes()[1]
    prev = gemm._set_linear_kc_max(kmax)
    try:
        for K in (kmax, 2 * kmax, 3 * kmax + 21):
            for M, N in ((15, 40), (16, 33), (45, 300), (3 * mc + 1, 40)):
                check_linear(rand(M, K), rand(N, K), K)
    finally:
        gemm._set_linear_kc_max(prev)
    with pytest.raises(ValueError):
        gemm._set_linear_kc_max(40)


@pytest.mark.parametrize("K", [1024, 2500])
def test_linear_panel_groups(simd_level, K):
    # X W^T packs W in groups of 4096 / kc panels (here 4 of 32 rows, and a short last group),
    # each tile of X against a whole group: sums as one panel at a time
    check_linear(rand(20, K), rand(300, K), K)


@pytest.mark.parametrize("dk", [-1, 0, 1, 2 * 256 + 37])
def test_depth_blocks_per_call(simd_level, dk):
    # unpacked calls take all of K as one depth block up to 3 KC, beyond that equal blocks of at
    # most 2 KC: K on both sides of the switch and a K split into uneven multiples of 16
    kc = gemm.block_sizes()[0]
    K = 3 * kc + dk
    for M, N in ((9, 45), (40, 70)):
        a, w = rand(M, K), rand(N, K)
        ref = a.astype(np.float64) @ w.astype(np.float64).T
        for nt in (1, 2):
            out = np.full((M, N), np.nan, np.float32)
            gemm.linear_f32(a, w, out, nt)
            check(out, ref, K)
            out[:] = np.nan
            gemm.matmul(a, np.ascontiguousarray(w.T), out, nt)
            check(out, ref, K)


@pytest.mark.parametrize("M,K,N", [(1, 300, 1013), (3, 100, 1013), (1, 17, 70000)])
def test_linear_small_m_direction(simd_level, M, K, N):
    # successive calls on one weight walk its rows in alternating direction (cache reuse):
    # every call, at 1 or 2 threads, gives the same bits (chunks of 64 rows plus a tail of 13)
    x, w = rand(M, K), rand(N, K)
    outs = []
    for nt in (2, 2, 2, 1, 1, 2):
        out = np.full((M, N), np.nan, np.float32)
        gemm.linear_f32(x, w, out, nt)
        outs.append(out)
    check(outs[0], x.astype(np.float64) @ w.astype(np.float64).T, K)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    v = rand(N, K)                     # calls on another weight in between: w's bits unchanged
    for nt in (2, 2, 1):
        out, o2 = np.full((M, N), np.nan, np.float32), np.full((M, N), np.nan, np.float32)
        gemm.linear_f32(x, v, o2, nt)
        gemm.linear_f32(x, w, out, nt)
        np.testing.assert_array_equal(out, outs[0])


@pytest.mark.parametrize("K", [64, 640, 17, 100])
def test_linear_m1_streaming_kernel(simd_level, K):
    # M = 1 over a weight from STREAM_MIN_BYTES on runs the streaming kernel (2 rows at a time,
    # prefetch); forced on here for a small weight. Rows of K % 16 == 0 give the bits of the
    # regular kernel (every row of W starts at the same offset from a cache line); any K gives
    # the same bits at 1 and 2 threads and in both directions.
    N = 64 * 250 + 5                   # beyond the one-thread size at every K here
    x, w = rand(1, K), rand(N, K)
    base = np.full((1, N), np.nan, np.float32)
    gemm.linear_f32(x, w, base, 1)
    prev = gemm._set_stream_min_bytes(0)
    try:
        outs = []
        for nt in (1, 2, 2, 1):
            out = np.full((1, N), np.nan, np.float32)
            gemm.linear_f32(x, w, out, nt)
            outs.append(out)
    finally:
        gemm._set_stream_min_bytes(prev)
    check(outs[0], x.astype(np.float64) @ w.astype(np.float64).T, K)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    if K % 16 == 0:
        np.testing.assert_array_equal(outs[0], base)
    with pytest.raises(ValueError):
        gemm._set_stream_min_bytes(-1)
