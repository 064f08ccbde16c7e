"""The KV cache: keys and values of every layer, allocated once for n_ctx positions.

The transformer talks to a cache only through `store` (write the new tokens' k, v of a layer)
and `attend` (attention of the new queries over what is cached), so other cache layouts
(quantized blocks, ring buffers on sliding-window layers, paged) are drop-in replacements.
"""
import numpy as np

from .._kernels import attention as _attention


class KVCache:
    """k, v: float32 (n_layers, n_ctx, n_kv_heads, head_dim); `length` positions are filled."""

    def __init__(self, cfg, n_ctx):
        if n_ctx <= 0:
            raise ValueError(f"n_ctx must be positive, got {n_ctx}")
        shape = (cfg.n_layers, int(n_ctx), cfg.n_kv_heads, cfg.head_dim)
        # np.zeros maps fresh pages lazily: memory is committed as positions are written.
        self.k = np.zeros(shape, np.float32)
        self.v = np.zeros(shape, np.float32)
        self.n_ctx = int(n_ctx)
        self.length = 0

    @property
    def bytes_per_token(self):
        return 2 * self.k.shape[0] * self.k.shape[2] * self.k.shape[3] * self.k.itemsize

    @property
    def nbytes(self):
        return self.k.nbytes + self.v.nbytes

    def reset(self):
        self.length = 0

    def truncate(self, length):
        """Forget every position >= length (e.g. rejected draft tokens); later writes overwrite them."""
        if not 0 <= length <= self.length:
            raise ValueError(f"truncate: length {length} outside 0..{self.length}")
        self.length = int(length)

    def store(self, layer, pos, k, v):
        """Write k, v (T, n_kv_heads, head_dim) of layer `layer` at positions pos..pos+T-1."""
        t = k.shape[0]
        self.k[layer, pos:pos + t] = k
        self.v[layer, pos:pos + t] = v

    def attend(self, layer, q, out, pos, scale, window, nthreads, softcap=0.0):
        """out (T, H, D) = causal attention of queries q (T, H, D) at positions pos..pos+T-1
        over cached positions 0..pos+T-1 of `layer` (only the last `window` when window > 0)."""
        t = q.shape[0]
        _attention.attention(q, self.k[layer], self.v[layer], out, scale, True, pos, window,
                             nthreads, softcap, pos + t)
