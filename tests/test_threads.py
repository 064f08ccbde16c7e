"""Thread count resolution: argument, SLMX_NUM_THREADS, OMP_NUM_THREADS, cores; threadpoolctl limits."""
import os
import subprocess
import sys

from threadpoolctl import threadpool_limits

from slmx._kernels import cpu


def test_argument_wins():
    assert cpu.resolve_threads(1) == 1


def test_threadpoolctl_limits_slmx():
    with threadpool_limits(1):
        assert cpu.resolve_threads() == 1
        assert cpu.resolve_threads(2) == 1


def _resolve_in_subprocess(env):
    code = "from slmx._kernels import cpu; print(cpu.resolve_threads())"
    e = dict(os.environ)
    for k in ("SLMX_NUM_THREADS", "OMP_NUM_THREADS"):
        e.pop(k, None)
    e.update(env)
    return int(subprocess.check_output([sys.executable, "-c", code], env=e, text=True))


def test_environment_order():
    n = cpu.usable_cores()
    assert _resolve_in_subprocess({}) == n
    assert _resolve_in_subprocess({"OMP_NUM_THREADS": "1"}) == 1
    # SLMX_NUM_THREADS takes precedence over OMP_NUM_THREADS.
    assert _resolve_in_subprocess({"SLMX_NUM_THREADS": "1", "OMP_NUM_THREADS": str(n)}) == 1
    assert _resolve_in_subprocess({"SLMX_NUM_THREADS": "3", "OMP_NUM_THREADS": "1"}) == 3


def test_features_and_levels():
    f = cpu.features()
    assert isinstance(f["avx2"], bool)
    levels = cpu.available_levels()
    assert levels[0] == 0 and levels == list(range(cpu.hw_simd_level() + 1))
    assert cpu.set_simd_level(0) == 0
    assert cpu.simd_level_name() == "scalar"
    cpu.set_simd_level(None)
    assert cpu.simd_level_name() == cpu.LEVEL_NAMES[cpu.hw_simd_level()] or os.environ.get("SLMX_SIMD")
