"""Compiled kernels (Cython + OpenMP). Pure compute on raw buffers; see docs/architecture.md."""
