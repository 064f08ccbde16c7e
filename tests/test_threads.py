"""Thread count resolution: argument, SLMX_NUM_THREADS, OMP_NUM_THREADS, cores; threadpoolctl limits."""
import os
import subprocess
import sys

import pytest
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
    # without OMP_NUM_THREADS, SLMX_NUM_THREADS is capped by the processors, as an argument is
    big = 8 * (os.cpu_count() or 1)
    assert 1 <= _resolve_in_subprocess({"SLMX_NUM_THREADS": str(big)}) <= (os.cpu_count() or 1)


def test_features_and_levels():
    f = cpu.features()
    assert isinstance(f["avx2"], bool)
    levels = cpu.available_levels()
    assert levels[0] == 0 and levels == list(range(cpu.hw_simd_level() + 1))
    assert cpu.set_simd_level(0) == 0
    assert cpu.simd_level_name() == "scalar"
    cpu.set_simd_level(None)
    assert cpu.simd_level_name() == cpu.LEVEL_NAMES[cpu.hw_simd_level()] or os.environ.get("SLMX_SIMD")


def test_threadpoolctl_limits_slmx_under_omp_num_threads():
    """The same limit holds when OMP_NUM_THREADS=1 set OpenMP's start-up value (no lowering to see)."""
    code = ("import warnings; warnings.simplefilter('ignore')\n"
            "from threadpoolctl import threadpool_limits\nfrom slmx._kernels import cpu\n"
            "with threadpool_limits(1):\n    print(cpu.resolve_threads(), cpu.resolve_threads(2))\n")
    e = {k: v for k, v in os.environ.items() if k not in ("SLMX_NUM_THREADS", "OMP_NUM_THREADS")}
    for env in ({}, {"OMP_NUM_THREADS": "1"}):
        assert subprocess.check_output([sys.executable, "-c", code], env={**e, **env}, text=True).split() == ["1", "1"]


def test_bad_thread_settings():
    with pytest.raises(TypeError, match="threads must be an integer.*'two'"):
        cpu.resolve_threads("two")
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        cpu.resolve_threads(-3)
    # In a fresh process: test files that import torch call torch.set_num_threads(1), which lowers the
    # OpenMP ICV this process shares with slmx (then the cap is silent, as under threadpoolctl).
    code = ("import warnings; from slmx._kernels import cpu\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always'); n = cpu.resolve_threads(1000)\n"
            "print(n, sum('threads=1000 capped to' in str(x.message) for x in w))\n")
    e = {k: v for k, v in os.environ.items() if k not in ("SLMX_NUM_THREADS", "OMP_NUM_THREADS")}
    n, warned = map(int, subprocess.check_output([sys.executable, "-c", code], env=e, text=True).split())
    assert 1 <= n <= (os.cpu_count() or 1) and warned == 1
    code = "from slmx._kernels import cpu; cpu.resolve_threads()"
    e = {k: v for k, v in os.environ.items() if k not in ("SLMX_NUM_THREADS", "OMP_NUM_THREADS", "SLMX_SIMD")}
    for env, words in (({"SLMX_NUM_THREADS": "abc"}, "SLMX_NUM_THREADS='abc' ignored"),
                       ({"SLMX_NUM_THREADS": "-3"}, "SLMX_NUM_THREADS='-3' ignored"),
                       ({"SLMX_SIMD": "bogus"}, "SLMX_SIMD='bogus' ignored: accepted values are scalar, avx2")):
        r = subprocess.run([sys.executable, "-c", code], env={**e, **env}, capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr.count(words) == 1, r.stderr


def test_load_threads_not_an_integer(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from hf_tiny import tiny_llama
    import slmx
    _, path = tiny_llama(str(tmp_path / "m"))
    with pytest.raises(TypeError, match="threads must be an integer.*'two'"):
        slmx.load(path, n_ctx=16, threads="two")


def _spin_env(env):
    code = ("import os, slmx._kernels.cpu; "
            "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    r = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_short_openmp_spin_by_default_user_setting_wins():
    """The kernels load libgomp with a short spin (busy machines); the user's own setting is kept."""
    from slmx._kernels import DEFAULT_GOMP_SPINCOUNT
    assert _spin_env({}) == [DEFAULT_GOMP_SPINCOUNT, "None"]
    assert _spin_env({"GOMP_SPINCOUNT": "7"}) == ["7", "None"]
    assert _spin_env({"OMP_WAIT_POLICY": "active"}) == ["None", "active"]
