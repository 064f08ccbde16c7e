"""CPU facts for the kernels: SIMD features, the dispatch level, thread count, cache sizes.

The thread count used by every parallel kernel is resolved by `resolve_threads` in one place:
an explicit ``threads`` argument, else ``SLMX_NUM_THREADS``, else ``OMP_NUM_THREADS``, else the
cores this process may run on (affinity and cgroup quota). Caps: OpenMP's max-threads ICV once
that is lowered below its start-up value, so ``threadpoolctl.threadpool_limits(1)`` (which sets
it) limits slmx too; and an explicit argument is capped by the current ICV (OMP_NUM_THREADS, or
the machine's processors when that is unset), with a one-line warning when that lowers it: with
OMP_NUM_THREADS=1 the ICV cannot tell a threadpoolctl limit of 1 from the variable, so both cap
(``SLMX_NUM_THREADS``, slmx's own setting, is not capped by OMP_NUM_THREADS, but is capped by the
processors when OMP_NUM_THREADS is unset).
"""
import os
import warnings

include "simd.pxi"

cdef extern from "simd.h" nogil:
    ctypedef struct slmx_cpu_features_t:
        int avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512dq, avx512vnni, avx512bf16
        int avxvnni, amx_tile, amx_int8, amx_bf16, os_avx, os_avx512, os_amx
    const slmx_cpu_features_t *slmx_cpu_features()
    int slmx_simd_hw_level()

cdef extern from "omp.h" nogil:
    int omp_get_max_threads()

# OpenMP's max-threads ICV at import (OMP_NUM_THREADS or the core count): a later drop below it
# means somebody (threadpoolctl) asked for a limit.
_OMP_INITIAL_MAX = omp_get_max_threads()

LEVEL_NAMES = ("scalar", "avx2", "avx512", "vnni", "bf16")

# Every kernel module that dispatches on the SIMD level; set_simd_level reaches them all.
_KERNEL_MODULES = ("cpu", "quant", "gemm", "ops_core", "attention", "train_ops", "optim", "bpe_train", "fused")


def features():
    """dict of CPU feature flags as the kernels see them (OS support included; AMX asked for)."""
    amx = slmx_amx_usable()
    cdef const slmx_cpu_features_t *f = slmx_cpu_features()
    return dict(avx2=bool(f.avx2), fma=bool(f.fma), f16c=bool(f.f16c), avx512f=bool(f.avx512f),
                avx512bw=bool(f.avx512bw), avx512vl=bool(f.avx512vl), avx512dq=bool(f.avx512dq),
                avx512vnni=bool(f.avx512vnni), avx512bf16=bool(f.avx512bf16), avxvnni=bool(f.avxvnni),
                amx_tile=bool(f.amx_tile), amx_int8=bool(f.amx_int8), amx_bf16=bool(f.amx_bf16),
                amx_usable=bool(amx))


def hw_simd_level():
    """Highest dispatch level the hardware and OS support (0..4)."""
    return slmx_simd_hw_level()


def simd_level_name(level=None):
    """Name of a dispatch level (default: the one in force)."""
    return LEVEL_NAMES[slmx_simd_level() if level is None else level]


def available_levels():
    """Every dispatch level this machine can run, lowest first (tests run them all)."""
    return list(range(slmx_simd_hw_level() + 1))


def set_simd_level(level):
    """Force the dispatch level of every kernel module (name or int; None restores the default).

    Returns the level in force, capped at what the hardware supports.
    """
    import importlib
    if level is None:
        lvl = -1
    elif isinstance(level, str):
        lvl = LEVEL_NAMES.index(level)
    else:
        lvl = int(level)
    out = -1
    for name in _KERNEL_MODULES:
        try:
            mod = importlib.import_module("slmx._kernels." + name)
        except ImportError:
            continue
        if hasattr(mod, "_set_simd_level"):
            out = mod._set_simd_level(lvl)
    return out


def _cgroup_cpus():
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            return max(1, int(int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return None


def usable_cores():
    """Cores this process may use: affinity mask, capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    q = _cgroup_cpus()
    return max(1, min(n, q) if q else n)


def resolve_threads(threads=None):
    """Effective thread count: argument, SLMX_NUM_THREADS, OMP_NUM_THREADS, usable cores.

    ``threads=-1`` or ``None`` means "decide". Capped by OpenMP's max-threads ICV when that was
    lowered after start-up, as ``threadpoolctl.threadpool_limits`` does.
    """
    n = None
    explicit = False
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int):
            try:
                import numpy as np
                ok = isinstance(threads, np.integer)
            except ImportError:
                ok = False
            if not ok:
                raise TypeError(f"threads must be an integer (or None / -1 for automatic), got {threads!r}")
        threads = int(threads)
        if threads > 0:
            n, explicit = threads, True
        elif threads not in (0, -1):
            raise ValueError(f"threads must be a positive integer (or None / -1 for automatic), got {threads}")
    if n is None:
        for var in ("SLMX_NUM_THREADS", "OMP_NUM_THREADS"):
            v = os.environ.get(var, "").split(",")[0].strip()
            if v.isdigit() and int(v) > 0:
                n = int(v)
                # SLMX_NUM_THREADS is capped like an argument when OMP_NUM_THREADS is unset
                # (by the processors), never by OMP_NUM_THREADS itself
                explicit = var == "SLMX_NUM_THREADS" and not os.environ.get("OMP_NUM_THREADS")
                break
            if v and var == "SLMX_NUM_THREADS":
                _warn_once(var, f"SLMX_NUM_THREADS={os.environ[var]!r} ignored: it must be a positive integer")
    if n is None:
        n = usable_cores()
    cur = omp_get_max_threads()
    if cur < _OMP_INITIAL_MAX:       # lowered since start-up (threadpoolctl, omp_set_num_threads)
        n = min(n, cur)
    elif explicit and n > cur:
        _warn_once(("threads", n, cur), f"threads={n} capped to {cur}: OpenMP's max threads "
                   f"({'OMP_NUM_THREADS' if os.environ.get('OMP_NUM_THREADS') else 'the processors'})")
        n = cur
    return max(1, n)


_WARNED = set()


def _warn_once(key, msg):
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _check_simd_env():
    v = os.environ.get("SLMX_SIMD", "")
    if v and v not in LEVEL_NAMES + ("none", "0"):
        warnings.warn(f"SLMX_SIMD={v!r} ignored: accepted values are {', '.join(LEVEL_NAMES)}", RuntimeWarning,
                      stacklevel=2)


_check_simd_env()


def cache_sizes():
    """(L1d, L2, L3) data cache sizes in bytes, from sysfs; defaults when unknown."""
    out = {1: 32 * 1024, 2: 1024 * 1024, 3: 8 * 1024 * 1024}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in os.listdir(base):
            p = os.path.join(base, idx)
            try:
                level = int(open(os.path.join(p, "level")).read())
                kind = open(os.path.join(p, "type")).read().strip()
                size = open(os.path.join(p, "size")).read().strip()
            except OSError:
                continue
            if kind == "Instruction":
                continue
            mult = {"K": 1024, "M": 1024 * 1024}.get(size[-1], 1)
            out[level] = int(size.rstrip("KM")) * mult
    except OSError:
        pass
    return out.get(1), out.get(2), out.get(3)
