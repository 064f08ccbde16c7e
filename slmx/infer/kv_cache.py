"""The KV cache: keys and values of every layer, allocated once.

The transformer talks to a cache only through `store` (write the new tokens' k, v of a layer)
and `attend` (attention of the new queries over what is cached), plus `length`, `n_ctx`,
`max_chunk`, `reset()`, `truncate()` and `shift()`, so other cache layouts drop in; a cache that
also has `claim` (and `kv_type`) lets the fused decode kernel write the rows itself.

Formats (`kv_cache_type`): "f32", "f16", "q8_0", "q4_0" — each cached row of head_dim elements
stored in ggml's layout of that type (Q8_0 / Q4_0: blocks of 32 along head_dim with an fp16
scale). The attention kernel reads a quantized cache a tile of 64 positions at a time
(dequantized into scratch inside its online softmax); the cache is never dequantized as a whole.

Sliding-window layers (Gemma 3: 5 of every 6, window 512) keep a ring buffer of
`window + max(max_chunk, slack)` positions (rounded up to 64): position p lives in row p % rows,
so those layers do not grow past the window; global layers keep all n_ctx positions.
"""
import numpy as np

from .._kernels import attention as _attention

KV_CACHE_TYPES = ("f32", "f16", "q8_0", "q4_0")


def check_kv_cache_type(kv_cache_type):
    """kv_cache_type, or ValueError naming the choices."""
    if kv_cache_type not in KV_CACHE_TYPES:
        raise ValueError(f"kv_cache_type must be one of {', '.join(KV_CACHE_TYPES)}, got {kv_cache_type!r}")
    return kv_cache_type


def _round_up(x, m):
    return (x + m - 1) // m * m


class KVCache:
    """k[l], v[l]: (rows_l, n_kv_heads, head_dim) float32, or (rows_l, n_kv_heads, row_bytes) uint8
    rows of the block format; rows_l = n_ctx, or the ring size on sliding-window layers.

    cfg: ModelConfig (n_layers, n_kv_heads, head_dim, sliding_window, is_sliding(l)).
    n_ctx: positions the cache holds. max_chunk: most tokens one forward call stores (the
    transformer splits longer inputs; sizes the rings). slack: positions a ring keeps beyond the
    window, so `truncate` can roll back that many (speculative decoding). ring=False keeps
    sliding layers at full length too.
    """

    def __init__(self, cfg, n_ctx, kv_cache_type="f32", max_chunk=256, slack=64, ring=True):
        if isinstance(n_ctx, bool) or int(n_ctx) != n_ctx or n_ctx <= 0:
            raise ValueError(f"n_ctx must be a positive integer, got {n_ctx}")
        if isinstance(max_chunk, bool) or int(max_chunk) != max_chunk or max_chunk <= 0:
            raise ValueError(f"max_chunk must be a positive integer, got {max_chunk}")
        if isinstance(slack, bool) or int(slack) != slack or slack < 0:
            raise ValueError(f"slack must be an integer >= 0, got {slack}")
        self.kv_cache_type = check_kv_cache_type(kv_cache_type)
        self.kv_type = _attention.KV_TYPES[kv_cache_type]
        if kv_cache_type in ("q8_0", "q4_0") and cfg.head_dim % 32:
            raise ValueError(f"kv_cache_type {kv_cache_type}: head_dim {cfg.head_dim} is not a multiple of "
                             f"its block size 32 (use f32 or f16 for this model)")
        self.n_ctx = int(n_ctx)
        self.n_layers, self.n_kv_heads, self.head_dim = cfg.n_layers, cfg.n_kv_heads, cfg.head_dim
        self.row_bytes = _attention.kv_row_bytes(self.kv_type, cfg.head_dim)   # one head's row
        self.max_chunk = int(max_chunk)
        self.slack = int(slack)
        self.window = [cfg.sliding_window if cfg.is_sliding(l) else 0 for l in range(cfg.n_layers)]
        self.ring = []          # ring rows per layer (0: linear, position p in row p)
        self.k, self.v = [], []
        for l in range(cfg.n_layers):
            rows, rg = self.n_ctx, 0
            w = self.window[l]
            if ring and w > 0:
                r = _round_up(w + max(self.max_chunk, self.slack), 64)
                if r < self.n_ctx:
                    rows = rg = r
            self.ring.append(rg)
            if self.kv_type == 0:
                shape, dt = (rows, cfg.n_kv_heads, cfg.head_dim), np.float32
            else:
                shape, dt = (rows, cfg.n_kv_heads, self.row_bytes), np.uint8
            # np.zeros maps fresh pages lazily: memory is committed as positions are written.
            self.k.append(np.zeros(shape, dt))
            self.v.append(np.zeros(shape, dt))
        self.length = 0
        # per layer: the lowest position whose rows are intact (a ring overwrites older ones)
        self._valid_from = [0] * cfg.n_layers

    # ---------------------------------------------------------------- sizes
    @property
    def bytes_per_token(self):
        """Bytes one cached position takes over all layers (K and V) in this format."""
        return 2 * self.n_layers * self.n_kv_heads * self.row_bytes

    def bytes_for(self, n_tokens):
        """Bytes n_tokens cached positions occupy (ring layers hold at most their ring)."""
        per_layer = 2 * self.n_kv_heads * self.row_bytes
        return sum(per_layer * (min(n_tokens, r) if r else n_tokens) for r in self.ring)

    @property
    def nbytes(self):
        """Bytes allocated (pages are committed as positions are written)."""
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v)

    # ---------------------------------------------------------------- state
    def reset(self):
        self.length = 0
        self._valid_from = [0] * self.n_layers

    def truncate(self, length):
        """Forget every position >= length (e.g. rejected draft tokens); later writes overwrite them.

        A ring layer can roll back at most its slack beyond the chunk it holds: positions still
        needed (the window before `length`) must not have been overwritten.
        """
        if isinstance(length, bool) or int(length) != length or not 0 <= length <= self.length:
            raise ValueError(f"truncate: length {length} outside 0..{self.length}")
        length = int(length)
        for l, (r, w) in enumerate(zip(self.ring, self.window)):
            if r and max(0, length - w) < self._valid_from[l]:
                raise ValueError(f"truncate: rolling back to {length} needs positions the ring buffer "
                                 f"of {r} rows (window {w}) has overwritten (it keeps positions from "
                                 f"{self._valid_from[l]} on)")
        self.length = length

    def copy_from(self, src, length):
        """Positions 0..length-1 := those of `src` (a KVCache of the same model, format and
        layout; e.g. forking a beam). Ring layers copy their whole ring."""
        if (src.kv_cache_type != self.kv_cache_type or src.ring != self.ring
                or [a.shape[1:] for a in src.k] != [a.shape[1:] for a in self.k]):
            raise ValueError("copy_from: the caches differ in format or layout")
        if not 0 <= length <= min(src.length, self.n_ctx):
            raise ValueError(f"copy_from: length {length} outside 0..{min(src.length, self.n_ctx)}")
        for l, r in enumerate(self.ring):
            n = r if r else length
            self.k[l][:n] = src.k[l][:n]
            self.v[l][:n] = src.v[l][:n]
        self._valid_from = list(src._valid_from)
        self.length = int(length)

    # ---------------------------------------------------------------- the two methods
    def _rows(self, layer, pos, t):
        """[(row0, row1, src0)] row ranges of positions pos..pos+t-1 (two when a ring wraps)"""
        r = self.ring[layer]
        if not r:
            return [(pos, pos + t, 0)]
        s = pos % r
        if s + t <= r:
            return [(s, s + t, 0)]
        return [(s, r, 0), (0, s + t - r, r - s)]

    def claim(self, layer, pos, t):
        """Check and record a write of positions pos..pos+t-1 of `layer`, for a kernel that writes
        the rows itself (fused.qk_rope): returns (k, v, ring) — the layer's arrays and its ring
        rows (0: position p in row p, else row p % ring), rows in the format of `kv_type`."""
        if pos < 0 or pos + t > self.n_ctx:
            raise ValueError(f"store: positions {pos}..{pos + t - 1} outside the cache of {self.n_ctx}")
        r = self.ring[layer]
        if r and self.window[layer] + t - 1 > r:
            raise ValueError(f"store: {t} tokens at once do not fit the ring buffer of {r} rows "
                             f"(window {self.window[layer]}); run at most {r - self.window[layer] + 1}")
        if r and pos + t - r > self._valid_from[layer]:
            self._valid_from[layer] = pos + t - r
        return self.k[layer], self.v[layer], r

    def store(self, layer, pos, k, v):
        """Write k, v (T, n_kv_heads, head_dim) float32 of layer `layer` at positions pos..pos+T-1."""
        t = k.shape[0]
        K, V, r = self.claim(layer, pos, t)
        for r0, r1, s0 in self._rows(layer, pos, t):
            n = r1 - r0
            if self.kv_type == 0:
                K[r0:r1] = k[s0:s0 + n]
                V[r0:r1] = v[s0:s0 + n]
            else:
                rb = self.row_bytes
                _attention.kv_quantize(np.ascontiguousarray(k[s0:s0 + n]).reshape(-1, self.head_dim),
                                       self.kv_type, K[r0:r1].reshape(-1, rb))
                _attention.kv_quantize(np.ascontiguousarray(v[s0:s0 + n]).reshape(-1, self.head_dim),
                                       self.kv_type, V[r0:r1].reshape(-1, rb))

    def attend(self, layer, q, out, pos, scale, window, nthreads, softcap=0.0):
        """out (T, H, D) = causal attention of queries q (T, H, D) at positions pos..pos+T-1
        over cached positions 0..pos+T-1 of `layer` (only the last `window` when window > 0)."""
        t = q.shape[0]
        r = self.ring[layer]
        if r and window != self.window[layer]:
            raise ValueError(f"attend: layer {layer} is a ring buffer for window {self.window[layer]}, "
                             f"got window {window}")
        _attention.attention(q, self.k[layer], self.v[layer], out, scale, True, pos, window,
                             nthreads, softcap, pos + t, ring=r, kv_type=self.kv_type)

    # ---------------------------------------------------------------- context shift
    def keys(self, layer, p0, p1):
        """float32 (p1 - p0, n_kv_heads, head_dim): the cached keys of positions p0..p1-1."""
        return self._read(self.k[layer], layer, p0, p1)

    def values(self, layer, p0, p1):
        return self._read(self.v[layer], layer, p0, p1)

    def _read(self, arr, layer, p0, p1):
        r = self.ring[layer]
        if p0 < self._valid_from[layer]:
            raise ValueError(f"positions from {p0} are no longer in layer {layer}'s ring buffer")
        idx = np.arange(p0, p1) % r if r else np.arange(p0, p1)
        x = arr[idx]
        if self.kv_type == 0:
            return x
        return _attention.kv_dequantize(x.reshape(-1, self.row_bytes), self.kv_type,
                                        self.head_dim).reshape(p1 - p0, self.n_kv_heads, self.head_dim)

    def _shift_start(self, layer, n_keep, new_len):
        """first new position layer `layer` keeps moved rows for (its ring holds the last rows)"""
        r = self.ring[layer]
        return max(n_keep, new_len - r) if r else n_keep

    def can_shift(self, n_keep, n_discard):
        """Whether shift(n_keep, n_discard) can move the cached rows (else: recompute the prompt)."""
        L = self.length
        if not (0 <= n_keep and n_discard > 0 and n_keep + n_discard <= L):
            return False
        new_len = L - n_discard
        for l in range(self.n_layers):
            lo = self._shift_start(l, n_keep, new_len)
            if lo == n_keep and n_keep > 0 and self._valid_from[l] > 0:
                return False        # the kept tokens are still in view but the ring lost them
            if lo < new_len and lo + n_discard < self._valid_from[l]:
                return False
        return True

    def shift(self, n_keep, n_discard, rotate):
        """Drop positions n_keep..n_keep+n_discard-1; later positions move down by n_discard.

        rotate(layer, keys) re-rotates float32 keys (n, n_kv_heads, head_dim) in place by
        -n_discard positions (RoPE is a rotation), and rounds them as the model stores them.
        Quantized formats are dequantized, rotated and quantized again.
        """
        if not self.can_shift(n_keep, n_discard):
            raise ValueError(f"shift: cannot drop {n_discard} positions after {n_keep} "
                             f"from a cache of {self.length}")
        L = self.length
        new_len = L - n_discard
        for l in range(self.n_layers):
            lo = self._shift_start(l, n_keep, new_len)
            if lo < new_len:
                k = self.keys(l, lo + n_discard, L)
                v = self.values(l, lo + n_discard, L)
                rotate(l, k)
                self._put(l, lo, k, v)
            if self.ring[l]:
                self._valid_from[l] = lo if lo > n_keep else self._valid_from[l]
        self.length = new_len

    def _put(self, layer, pos, k, v):
        """write float32 rows at positions pos.. (any count: rows of a ring written by position)"""
        n = k.shape[0]
        r = self.ring[layer]
        idx = np.arange(pos, pos + n) % r if r else np.arange(pos, pos + n)
        if self.kv_type == 0:
            self.k[layer][idx] = k
            self.v[layer][idx] = v
            return
        rb, D = self.row_bytes, self.head_dim
        kq = _attention.kv_quantize(np.ascontiguousarray(k).reshape(-1, D), self.kv_type,
                                    np.empty((n * self.n_kv_heads, rb), np.uint8))
        vq = _attention.kv_quantize(np.ascontiguousarray(v).reshape(-1, D), self.kv_type,
                                    np.empty((n * self.n_kv_heads, rb), np.uint8))
        self.k[layer][idx] = kq.reshape(n, self.n_kv_heads, rb)
        self.v[layer][idx] = vq.reshape(n, self.n_kv_heads, rb)
