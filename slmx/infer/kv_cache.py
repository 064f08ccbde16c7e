"""The KV cache: keys and values of every layer, allocated once for n_ctx positions."""
import numpy as np


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
