"""bf16 GEMM (slmx.ops.linear / matmul with dtype="bf16") on every SIMD level, AMX on and off.

References: PyTorch's float32 -> bfloat16 rounding (bit for bit), and the float64 product of the
bf16 values (every path multiplies the bf16 values exactly and sums in fp32)."""
import ml_dtypes
import numpy as np
import pytest
import torch

import slmx.ops as ops
from slmx._kernels import gemm

RNG = np.random.default_rng(11)

# edges in every dimension: M not a multiple of 16/32, K not of 32, N not of 16/32; K beyond
# one AMX depth block (640)
SHAPES = [(1, 1, 1), (1, 64, 32), (3, 70, 45), (16, 640, 256), (17, 33, 17), (33, 100, 48),
          (64, 1030, 100), (130, 2100, 70)]


def torch_bf16_bits(x):
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def bf16_values(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def test_to_bf16_matches_torch():
    x = np.concatenate([RNG.standard_normal(10000).astype(np.float32) * 100,
                        np.array([0.0, -0.0, np.inf, -np.inf, 1e-40, -1e-42, 3.4e38, 1.0 + 2 ** -8,
                                  1.0 + 3 * 2 ** -8, 1.0 + 2 ** -8 + 2 ** -20], np.float32)])
    np.testing.assert_array_equal(ops.to_bf16(x), torch_bf16_bits(x))
    assert np.isnan(ops.from_bf16(ops.to_bf16(np.array([np.nan], np.float32)))[0])
    np.testing.assert_array_equal(ops.from_bf16(ops.to_bf16(x)), bf16_values(torch_bf16_bits(x)))


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("amx", [True, False])
def test_linear_bf16(simd_level, M, K, N, nthreads, amx):
    used = gemm._set_amx(amx)
    try:
        assert used == (amx and gemm.amx_bf16_used())
        x = ops.to_bf16(RNG.standard_normal((M, K)).astype(np.float32))
        w = ops.to_bf16(RNG.standard_normal((N, K)).astype(np.float32))
        out = np.full((M, N), np.nan, np.float32)
        gemm.linear_bf16(x, w, out, nthreads)
        xv, wv = bf16_values(x).astype(np.float64), bf16_values(w).astype(np.float64)
        ref = xv @ wv.T
        tol = 4e-6 * np.sqrt(K) * (np.abs(xv) @ np.abs(wv).T) / np.sqrt(K) + 1e-6
        assert np.all(np.abs(out - ref) <= tol), np.abs(out - ref).max()
    finally:
        gemm._set_amx(True)


def test_ops_api_bf16_matches_torch():
    x = RNG.standard_normal((40, 96)).astype(np.float32)
    w = RNG.standard_normal((50, 96)).astype(np.float32)
    ref = (torch.from_numpy(x).bfloat16().float() @ torch.from_numpy(w).bfloat16().float().T).numpy()
    wb = ops.to_bf16(w)
    for got in (ops.linear(x, wb, dtype="bf16"),                        # x rounded on the fly
                ops.linear(ops.to_bf16(x), wb, dtype="bf16"),
                ops.linear(x.astype(ml_dtypes.bfloat16), w.astype(ml_dtypes.bfloat16), dtype="bf16"),
                ops.matmul(x, w.T, dtype="bf16")):
        assert got.dtype == np.float32 and got.shape == (40, 50)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    v = ops.linear(x[0], wb, dtype="bf16")
    assert v.shape == (50,)
    np.testing.assert_allclose(v, ref[0], rtol=1e-5, atol=1e-4)


def test_bf16_bad_inputs():
    x = ops.to_bf16(np.ones((2, 8), np.float32))
    w = ops.to_bf16(np.ones((3, 8), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        ops.linear(x, w, dtype="int4")
    with pytest.raises(ValueError, match="features"):
        ops.linear(x, ops.to_bf16(np.ones((3, 9), np.float32)), dtype="bf16")
    with pytest.raises(ValueError, match="bf16 operands"):
        ops.linear(x, np.ones((3, 8), np.int32), dtype="bf16")
    with pytest.raises(ValueError, match="out"):
        ops.linear(x, w, out=np.empty((2, 4), np.float32), dtype="bf16")
    with pytest.raises(ValueError, match="uint16"):
        gemm.linear_bf16(x.astype(np.int16), w, np.empty((2, 3), np.float32))
    buf = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        gemm.linear_bf16(buf.view(np.uint16), ops.to_bf16(np.ones((3, 6), np.float32)), buf, 1)


def _check_exact(x, w, out):
    """out against the float64 product of the bf16 values (fp32 sums: error <= ~K ulp of |x||w|)"""
    xv, wv = bf16_values(x).astype(np.float64), bf16_values(w).astype(np.float64)
    ref = xv @ wv.T
    tol = 4e-6 * (np.abs(xv) @ np.abs(wv).T) + 1e-6
    assert np.all(np.abs(out - ref) <= tol), np.abs(out - ref).max()


def _out(M, N, aligned, skew=1):
    """a C-contiguous float32 (M, N) output, its data 64-byte aligned or not (skew floats off)"""
    buf = np.full(M * N + 32, np.nan, np.float32)
    off = (-buf.ctypes.data % 64) // 4
    if not aligned:
        off += skew
    return buf[off:off + M * N].reshape(M, N)


# The AMX path's task grid and writers: several groups of panels (N = 1000, 4133: a ragged last
# panel), 32-row ranges split between threads when N has fewer panels than threads (N = 20),
# depth blocks with a K tail (K = 2300: 4 blocks of 576, the last 572 deep; partial sums in the accumulator), M = 16 (the smallest
# on tiles), the non-temporal writer (forced by a threshold of 0) into an aligned output and a
# misaligned one (N % 16 == 0: panels shifted so that all but the first start on a 64-byte
# boundary; else plain stores); the tile stores into an output 16 bytes off (numpy's alignment
# of large arrays; N % 16 == 0: shifted panels as for the stream, the columns left of the first
# and right of the last full panel in one "wrap" panel of 32 or, N = 80, 16 columns); X over 1 MB
# with few columns (264 x 2100 x 100: 4 depth blocks of 544, the last one 468 deep).
TASK_SHAPES = [(48, 200, 1000), (100, 64, 20), (33, 64, 4133), (64, 2300, 96), (16, 32, 4096), (50, 2300, 80),
               (264, 2100, 100)]


@pytest.mark.parametrize("M,K,N", TASK_SHAPES)
@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("writer", ["tiles", "tiles-misaligned", "stream", "stream-misaligned"])
def test_linear_bf16_amx_tasks(simd_level, M, K, N, nthreads, writer):
    old = gemm._set_bf16_stream_floats(0 if writer.startswith("stream") else 1 << 40)
    try:
        x = ops.to_bf16(RNG.standard_normal((M, K)).astype(np.float32))
        w = ops.to_bf16(RNG.standard_normal((N, K)).astype(np.float32))
        out = _out(M, N, not writer.endswith("misaligned"), 1 if writer.startswith("stream") else 4)
        gemm.linear_bf16(x, w, out, nthreads)
        _check_exact(x, w, out)
    finally:
        gemm._set_bf16_stream_floats(old)


def _amx_case(M, K, N, packed, aligned, nthreads):
    """random bf16 x (M, K), w (N, K): linear_bf16 (w packed or plain, out 64-byte aligned or not)
    equals the exact products summed in float64"""
    x = ops.to_bf16(RNG.standard_normal((M, K)).astype(np.float32))
    w = ops.to_bf16(RNG.standard_normal((N, K)).astype(np.float32))
    out = _out(M, N, aligned, 4)
    gemm.linear_bf16(x, gemm.pack_weight_bf16(w) if packed else w, out, nthreads)
    _check_exact(x, w, out)


# depth blocks forced small (kmax 64: K = 200 in 4 blocks of 64, the last one 8 deep; K = 640 in
# 10), the partial sums kept in the per-thread accumulator or (without it) in C itself, reloaded:
# edge rows and columns, the wrap panel of a misaligned output (N = 80, 96), a packed weight
@pytest.mark.parametrize("M,K,N", [(48, 200, 1000), (33, 200, 80), (64, 640, 96), (100, 200, 20)])
@pytest.mark.parametrize("cacc", [True, False])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("packed", [True, False])
def test_linear_bf16_amx_depth_blocks(simd_level, M, K, N, cacc, aligned, packed):
    old_kc, old_cacc = gemm._set_bf16_kc(64), gemm._set_bf16_cacc(cacc)
    try:
        _amx_case(M, K, N, packed, aligned, 2)
    finally:
        gemm._set_bf16_kc(*old_kc)
        gemm._set_bf16_cacc(old_cacc)
    with pytest.raises(ValueError):
        gemm._set_bf16_kc(48)


# the rows of x split between the threads (each packs and multiplies its own): several groups of
# panels, a row tail (M = 400, 100), a misaligned output (the wrap panel), depth blocks, a packed
# weight; by size (mode 1, M = 400: split at 2 threads) and always (mode 2)
@pytest.mark.parametrize("M,K,N", [(400, 200, 100), (100, 96, 1000), (64, 640, 2048)])
@pytest.mark.parametrize("mode", [1, 2])
@pytest.mark.parametrize("nthreads", [2, 3])
@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("aligned", [True, False])
def test_linear_bf16_amx_row_split(simd_level, M, K, N, mode, nthreads, packed, aligned):
    old_kc, old_ms = gemm._set_bf16_kc(64), gemm._set_bf16_msplit(mode)
    try:
        _amx_case(M, K, N, packed, aligned, nthreads)
    finally:
        gemm._set_bf16_kc(*old_kc)
        gemm._set_bf16_msplit(old_ms)
    with pytest.raises(ValueError):
        gemm._set_bf16_msplit(3)


def test_linear_bf16_amx_reuses_workspace():
    """calls of growing and shrinking size reuse the kept workspace without stale data"""
    for M, K, N in [(64, 640, 96), (512, 96, 64), (32, 2048, 64), (64, 640, 96)]:
        x = ops.to_bf16(RNG.standard_normal((M, K)).astype(np.float32))
        w = ops.to_bf16(RNG.standard_normal((N, K)).astype(np.float32))
        out = np.full((M, N), np.nan, np.float32)
        gemm.linear_bf16(x, w, out, 2)
        _check_exact(x, w, out)


@pytest.mark.parametrize("n", [5, 16, 33, 2 * 65536 + 7])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_f32_to_bf16_levels_match_torch(simd_level, n, nthreads):
    """the vector conversions (AVX-512, AVX2) and their tails round like torch, NaN stays NaN,
    denormals are kept (not flushed as vcvtneps2bf16 would)"""
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 1e-40, -1e-42, 3.4e38, -3.4e38, 0.0, -0.0,
                        1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8], np.float32)
    x = (RNG.standard_normal(n) * 100).astype(np.float32)
    x[RNG.integers(0, n, min(n, len(special)))] = special[:min(n, len(special))]
    got = np.empty(n, np.uint16)
    gemm.f32_to_bf16(x, got, nthreads)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], torch_bf16_bits(x[~nan]))
    assert np.all(np.isnan(bf16_values(got[nan])))


@pytest.mark.parametrize("M,K,N", [(16, 640, 256), (33, 100, 70), (100, 2300, 40), (3, 64, 32), (48, 96, 160)])
@pytest.mark.parametrize("amx_at_pack", [True, False])
def test_linear_bf16_packed_weight(simd_level, M, K, N, amx_at_pack):
    """a weight packed once gives the same sums as packing per call (bit for bit: one kernel),
    on tiles or (M < 16, no AMX, or packed while AMX was off) by the dot paths on w itself"""
    x = ops.to_bf16(RNG.standard_normal((M, K)).astype(np.float32))
    w = ops.to_bf16(RNG.standard_normal((N, K)).astype(np.float32))
    gemm._set_amx(amx_at_pack)
    try:
        pk = gemm.pack_weight_bf16(w, 2)
    finally:
        gemm._set_amx(True)
    assert pk.shape == (N, K) and pk.w is w
    assert (pk.data is not None) == (amx_at_pack and gemm.amx_bf16_used())
    out = np.full((M, N), np.nan, np.float32)
    gemm.linear_bf16(x, pk, out, 2)
    _check_exact(x, w, out)
    ref = np.empty_like(out)
    gemm.linear_bf16(x, w, ref, 2)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(ops.linear(x, ops.pack_bf16(w), dtype="bf16"), ref)
    for skew in (1, 4, 12):      # an output off a 64-byte boundary (with N % 16 == 0: W packed per call)
        out2 = _out(M, N, False, skew)
        gemm.linear_bf16(x, pk, out2, 2)
        np.testing.assert_array_equal(out2, ref)


def test_linear_bf16_packed_bad_inputs():
    w = ops.to_bf16(np.ones((40, 64), np.float32))
    pk = ops.pack_bf16(w)
    with pytest.raises(ValueError, match="features"):
        ops.linear(ops.to_bf16(np.ones((20, 63), np.float32)), pk, dtype="bf16")
    with pytest.raises(ValueError, match="out"):
        ops.linear(ops.to_bf16(np.ones((20, 64), np.float32)), pk, out=np.empty((20, 41), np.float32), dtype="bf16")
    with pytest.raises(ValueError, match="uint16"):
        gemm.pack_weight_bf16(np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        ops.pack_bf16(np.ones(4, np.float32))


def test_linear_bf16_own_output_aligned():
    """ops.linear allocates its bf16 output on a 64-byte boundary (so a packed weight's panels are
    used as they are: an output off a boundary makes the AMX path pack per call)"""
    x = ops.to_bf16(RNG.standard_normal((40, 64)).astype(np.float32))
    w = ops.to_bf16(RNG.standard_normal((96, 64)).astype(np.float32))
    for _ in range(4):
        got = ops.linear(x, ops.pack_bf16(w), dtype="bf16")
        assert got.ctypes.data % 64 == 0 and got.flags.c_contiguous and got.shape == (40, 96)
        _check_exact(x, w, got)
