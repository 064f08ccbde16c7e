# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused optimizer kernels over one flat parameter buffer (float32), OpenMP-parallel.

    adam_step      AdamW (decoupled decay) or Adam (L2 decay), one pass over p, g, m, v
    sgd_step       SGD with momentum (dampening, Nesterov, L2 decay), one pass
    clip_grad_norm global L2 norm of g (float64 partial sums), then g *= max_norm / (norm + 1e-6)
                   when that is < 1; returns the norm before clipping

Weight decay applies only where ``decay_mask`` (uint8, same length) is non-zero. The element
formulas follow torch.optim's single-tensor implementations (see optim_simd.h).
"""
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport uint8_t
from libc.math cimport sqrt

include "simd.pxi"

cnp.import_array()

cdef extern from "optim_simd.h" nogil:
    void opt_adam(int lvl, float *p, const float *g, float *m, float *v, const uint8_t *mask, long n,
                  float decay_mul, float l2, float w1, float b2, float w2, float neg_step,
                  float bc2s, float eps)
    void opt_sgd(int lvl, float *p, const float *g, float *buf, const uint8_t *mask, long n, float wd,
                 float momentum, float damp1, int nesterov, int first, float neg_lr)
    double opt_sumsq(int lvl, const float *g, long n)
    void opt_scale(int lvl, float *g, long n, float c)

DEF CHUNK = 32768        # elements per parallel work item (multiple of 16)
DEF PAR_MIN = 65536      # below this: one thread


cdef object _vec(object a, str name, object dtype, Py_ssize_t n):
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)}, got {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if n >= 0 and a.shape[0] != n:
        raise ValueError(f"{name}: expected {n} elements, got {a.shape[0]}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")
    return a


cdef object _mask(object mask, Py_ssize_t n):
    if mask is None:
        return np.zeros(n, np.uint8)
    if isinstance(mask, np.ndarray) and mask.dtype == np.bool_:
        mask = mask.view(np.uint8)
    return _vec(mask, "decay_mask", np.uint8, n)


cdef inline int _threads(Py_ssize_t n, int nthreads) noexcept nogil:
    return 1 if nthreads < 1 or n < PAR_MIN else nthreads


def adam_step(params, grads, m, v, decay_mask, double lr, double beta1, double beta2, double eps,
              double weight_decay, long step, bint decoupled=True, int nthreads=1):
    """One Adam(W) step in place on params, m, v (all float32 (n,)); step = t >= 1 (bias correction).

    decoupled (AdamW): p *= 1 - lr*wd where decay_mask; else (Adam): g += wd*p where decay_mask.
    """
    _vec(params, "params", np.float32, -1)
    cdef Py_ssize_t n = params.shape[0]
    _vec(grads, "grads", np.float32, n)
    _vec(m, "m", np.float32, n)
    _vec(v, "v", np.float32, n)
    mask = _mask(decay_mask, n)
    if step < 1:
        raise ValueError("step must be >= 1")
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError("betas must be in [0, 1)")
    if n == 0:
        return
    cdef float[::1] pv = params
    cdef float[::1] gv = grads
    cdef float[::1] mv = m
    cdef float[::1] vv = v
    cdef const uint8_t[::1] kv = mask
    cdef double bc1 = 1.0 - beta1 ** step
    cdef double bc2 = 1.0 - beta2 ** step
    cdef float decay_mul = <float>(1.0 - lr * weight_decay) if decoupled else 1.0
    cdef float l2 = 0.0 if decoupled else <float>weight_decay
    cdef float w1 = <float>(1.0 - beta1), b2 = <float>beta2, w2 = <float>(1.0 - beta2)
    cdef float neg_step = <float>(-(lr / bc1)), bc2s = <float>sqrt(bc2), feps = <float>eps
    cdef int lvl = slmx_simd_level()
    cdef Py_ssize_t nchunks = (n + CHUNK - 1) // CHUNK, c, i0, cn
    cdef int nt = _threads(n, nthreads)
    with nogil:
        for c in prange(nchunks, num_threads=nt, schedule="static"):
            i0 = c * CHUNK
            cn = min(<Py_ssize_t>CHUNK, n - i0)
            opt_adam(lvl, &pv[i0], &gv[i0], &mv[i0], &vv[i0], &kv[i0], cn, decay_mul, l2, w1, b2, w2,
                     neg_step, bc2s, feps)


def sgd_step(params, grads, momentum_buf, decay_mask, double lr, double momentum, double dampening,
             double weight_decay, bint nesterov, bint first_step, int nthreads=1):
    """One SGD step in place; momentum_buf (float32 (n,)) may be None when momentum == 0.

    first_step: the momentum buffer is initialised to the (decayed) gradient, as torch does.
    """
    _vec(params, "params", np.float32, -1)
    cdef Py_ssize_t n = params.shape[0]
    _vec(grads, "grads", np.float32, n)
    if momentum != 0.0 or momentum_buf is not None:
        _vec(momentum_buf, "momentum_buf", np.float32, n)
    mask = _mask(decay_mask, n)
    if n == 0:
        return
    cdef float[::1] pv = params
    cdef float[::1] gv = grads
    cdef float[::1] bv = momentum_buf if momentum_buf is not None else params[:0]
    cdef float *bp = &bv[0] if bv.shape[0] > 0 else NULL
    cdef const uint8_t[::1] kv = mask
    cdef float wd = <float>weight_decay, mom = <float>momentum, damp1 = <float>(1.0 - dampening)
    cdef float neg_lr = <float>(-lr)
    cdef int lvl = slmx_simd_level()
    cdef Py_ssize_t nchunks = (n + CHUNK - 1) // CHUNK, c, i0, cn
    cdef int nt = _threads(n, nthreads)
    with nogil:
        for c in prange(nchunks, num_threads=nt, schedule="static"):
            i0 = c * CHUNK
            cn = min(<Py_ssize_t>CHUNK, n - i0)
            opt_sgd(lvl, &pv[i0], &gv[i0], (bp + i0) if bp != NULL else NULL, &kv[i0], cn, wd, mom, damp1, nesterov, first_step,
                    neg_lr)


def grad_norm(grads, int nthreads=1):
    """sqrt(sum(g^2)) over a float32 (n,) buffer, accumulated in float64 (deterministic order)"""
    _vec(grads, "grads", np.float32, -1)
    cdef Py_ssize_t n = grads.shape[0]
    if n == 0:
        return 0.0
    cdef Py_ssize_t nchunks = (n + CHUNK - 1) // CHUNK, c, i0, cn
    part = np.zeros(nchunks, np.float64)
    cdef double[::1] sv = part
    cdef float[::1] gv = grads
    cdef int lvl = slmx_simd_level()
    cdef int nt = _threads(n, nthreads)
    with nogil:
        for c in prange(nchunks, num_threads=nt, schedule="static"):
            i0 = c * CHUNK
            cn = min(<Py_ssize_t>CHUNK, n - i0)
            sv[c] = opt_sumsq(lvl, &gv[i0], cn)
    return float(np.sqrt(part.sum()))


def scale_(grads, float c, int nthreads=1):
    """grads *= c in place (float32 (n,))"""
    _vec(grads, "grads", np.float32, -1)
    cdef Py_ssize_t n = grads.shape[0]
    if n == 0:
        return grads
    cdef float[::1] gv = grads
    cdef int lvl = slmx_simd_level()
    cdef Py_ssize_t nchunks = (n + CHUNK - 1) // CHUNK, k, i0, cn
    cdef int nt = _threads(n, nthreads)
    with nogil:
        for k in prange(nchunks, num_threads=nt, schedule="static"):
            i0 = k * CHUNK
            cn = min(<Py_ssize_t>CHUNK, n - i0)
            opt_scale(lvl, &gv[i0], cn, c)
    return grads


def clip_grad_norm(grads, double max_norm, int nthreads=1):
    """Global-norm clipping in place: norm = ||g||_2; g *= max_norm / (norm + 1e-6) if that is < 1.

    Returns the norm before clipping (as torch.nn.utils.clip_grad_norm_ does). A non-finite norm
    leaves g untouched.
    """
    norm = grad_norm(grads, nthreads)
    if not max_norm > 0:
        raise ValueError("max_norm must be positive")
    cdef float coef = <float>max_norm / (<float>norm + <float>1e-6)
    if np.isfinite(norm) and coef < 1.0:
        scale_(grads, coef, nthreads)
    return norm
