"""Machine ceilings (slmx._kernels.peak) and the roofline report (slmx.roofline)."""
import numpy as np
import pytest

from slmx._kernels import peak


def test_peak_rates(simd_level):
    fp32 = peak.peak("fp32", 1, iters=20000)
    assert fp32 > 0.1                      # GFLOP/s: any CPU does more than 0.1
    for kind in ("bf16", "int8", "amx_bf16", "amx_int8"):
        r = peak.peak(kind, 1, iters=20000)
        assert (r is None) == (not peak.available(kind))
        if r is not None:
            assert r > fp32 / 4            # the wide dot products do more work per instruction
    assert peak.peak("fp32", 2, iters=20000) > 0.1
    with pytest.raises(ValueError, match="kind"):
        peak.peak("fp64")


def test_read_bandwidth(simd_level):
    buf = np.ones(1 << 22, np.uint8)
    assert peak.read_bandwidth(buf, 1, repeats=2) > 0.1
    assert peak.read_bandwidth(buf, 2, repeats=2) > 0.1
    with pytest.raises(ValueError, match="4096"):
        peak.read_bandwidth(np.ones(100, np.uint8))
