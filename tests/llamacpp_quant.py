"""llama.cpp's own quantizer, called through llama-cpp-python's bundled libggml-base (test helper).

``quantize(x, type_id)`` runs ggml's public ``ggml_quantize_chunk`` with no importance matrix: the
function llama_model_quantize applies to each tensor of an F32 GGUF. ``available()`` says whether
llama-cpp-python is importable (it is not in the `test` extra: its build takes minutes).
"""
import ctypes
import os

import numpy as np

_fn = None
# ggml type id -> (block size, bytes per block)
SIZES = {2: (32, 18), 6: (32, 22), 8: (32, 34), 12: (256, 144), 13: (256, 176), 14: (256, 210)}


def available():
    try:
        import llama_cpp  # noqa: F401
    except Exception:
        return False
    return True


def _chunk():
    global _fn
    if _fn is None:
        import llama_cpp
        lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
        f = lib.ggml_quantize_chunk
        f.restype = ctypes.c_size_t
        f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                      ctypes.c_int64, ctypes.c_void_p]
        _fn = f
    return _fn


def quantize(x, type_id):
    """uint8 (rows, row_bytes) = llama.cpp's encoding of float32 x (rows, K)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, k = x.shape
    bs, ts = SIZES[type_id]
    out = np.zeros((rows, k // bs * ts), np.uint8)
    n = _chunk()(type_id, x.ctypes.data, out.ctypes.data, 0, rows, k, None)
    assert n == out.size
    return out
