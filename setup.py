"""Build the Cython/OpenMP kernels.

Every module under slmx/_kernels/*.pyx becomes one extension. Compiled -O3 -fopenmp for the
baseline x86-64 ISA: SIMD paths (AVX2, AVX-512, VNNI, BF16) live in functions carrying their own
`target` attribute (see simd.h) and are picked at run time, so the build runs on any CPU.
Set SLMX_NATIVE=1 to add -march=native (only for a machine-local build).
"""
import glob
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

compile_args = ["-O3", "-fopenmp", "-fno-math-errno", "-Wno-unused-function",
                "-Wno-unreachable-code", "-Wno-maybe-uninitialized"]
if os.environ.get("SLMX_NATIVE") == "1":
    compile_args.append("-march=native")
link_args = ["-fopenmp"]

# SLMX_ONLY=quant,gemm builds just those modules (development: parallel builds of one module).
only = {m for m in os.environ.get("SLMX_ONLY", "").split(",") if m}
extensions = []
for pyx in sorted(glob.glob("slmx/_kernels/*.pyx")):
    name = pyx[:-4].replace("/", ".")
    if only and name.rsplit(".", 1)[1] not in only:
        continue
    extensions.append(Extension(
        name, [pyx],
        include_dirs=[np.get_include(), "slmx/_kernels"],
        depends=sorted(glob.glob("slmx/_kernels/*.h") + glob.glob("slmx/_kernels/*.pxi")),
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ))

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False,
                             "cdivision": True, "initializedcheck": False},
    ),
)
