"""Compiled kernels (Cython + OpenMP). Pure compute on raw buffers; see docs/architecture.md.

OpenMP waiting: a decoded token passes through a few hundred short parallel regions. With libgomp's
default spin (GOMP_SPINCOUNT 300000 iterations) a thread that waits at a barrier while its partner
is descheduled burns its whole time slice, so on a busy machine 2-thread decode fell to 5-8 tokens/s
(1 thread: ~35). A short spin keeps threads warm between back-to-back regions and sleeps otherwise
(same run, load 3.7 on 2 cores: 51-64 tokens/s). libgomp reads this once, when it is loaded, so it is
set here before any kernel module loads it; a user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
"""
import os as _os

DEFAULT_GOMP_SPINCOUNT = "20000"
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", DEFAULT_GOMP_SPINCOUNT)
