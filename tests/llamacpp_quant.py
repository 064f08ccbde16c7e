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
SIZES = {2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 12: (256, 144), 13: (256, 176), 14: (256, 210)}


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


FTYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16,
          "Q5_K_M": 17, "Q6_K": 18, "BF16": 32}


def model_quantize(src, dst, ftype, pure=False, nthread=2, allow_requantize=False):
    """llama_model_quantize(src, dst) with llama.cpp's file type ftype (name of FTYPES or int)."""
    import llama_cpp
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = FTYPES[ftype] if isinstance(ftype, str) else int(ftype)
    p.nthread = nthread
    p.pure = bool(pure)
    p.allow_requantize = bool(allow_requantize)
    rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(p))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src}, ftype {ftype}) failed: {rc}")
