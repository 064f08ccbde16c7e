"""One decoder-only transformer forward, configured by ModelConfig, built from slmx's kernels.

Weights are the file's tensors used in place (mmap'd block-quantized bytes, no dequantized copy).
All activations live in a Workspace allocated once per batch size; the KV cache is allocated once
by the caller (slmx.infer.KVCache). Decoding a token allocates no arrays.

Per layer l, for the T new tokens x (T, d_model) at positions pos..pos+T-1:
    h = rmsnorm(x, attn_norm)
    q, k, v = h Wq^T, h Wk^T, h Wv^T                (T, H, D), (T, Hkv, D)  [+ bias: qwen2]
    q, k = rmsnorm per head (q_norm, k_norm)         [gemma3]
    q, k = rope(q, k, pos, base_l)                   base_l: local base on sliding layers [gemma3]
    cache[l][pos:pos+T] = k, v
    a = attention(q, cache[l][:pos+T], causal, window on sliding layers)
    o = a Wo^T; o = rmsnorm(o, post_attention_norm) [gemma3]; x += o
    h = rmsnorm(x, ffn_norm)
    f = (act(h Wg^T) * (h Wu^T)) Wd^T; f = rmsnorm(f, post_ffw_norm) [gemma3]; x += f
logits = rmsnorm(x, output_norm) Wout^T   (Wout = token embedding table when tied)
"""
import threading

import numpy as np

from .. import qtypes
from . import rope as _rope
from .._kernels import cpu as _cpu
from .._kernels import fused as _fused
from .._kernels import gemm as _gemm
from .._kernels import ops_core as _core
from .._kernels import quant as _quant
from ..errors import FormatError


class Linear:
    """y = x W^T (+ b) for a weight W (N, K) stored as F32 or any ggml block type."""

    __slots__ = ("name", "type", "data", "n", "k", "bias")

    def __init__(self, name, tensor, n, k, bias=None):
        t = qtypes.qtype(tensor.type)
        if tuple(tensor.shape) != (n, k):
            raise FormatError(f"tensor {name!r}: shape {tuple(tensor.shape)}, expected {(n, k)}")
        if t.name not in qtypes.SUPPORTED:
            raise FormatError(f"tensor {name!r}: type {t.name} is not supported "
                              f"(supported: {', '.join(qtypes.SUPPORTED)})")
        self.name, self.type, self.n, self.k, self.bias = name, t.id, n, k, bias
        if t.id == qtypes.F32:
            self.data = np.ascontiguousarray(tensor.data, dtype=np.float32).reshape(n, k)
        else:
            self.data = np.asarray(tensor.data).view(np.uint8).reshape(n, qtypes.row_bytes(t.id, k))

    @property
    def nbytes(self):
        return self.data.nbytes

    def __call__(self, x, out, nthreads):
        """out (M, N) = x (M, K) W^T (+ b)."""
        if self.type == qtypes.F32:
            _gemm.linear_f32(x, self.data, out, nthreads)
        else:
            _quant.linear(x, self.data, self.type, out, nthreads)
        if self.bias is not None:
            np.add(out, self.bias, out=out)


def _vector(tensors, name, n):
    if name not in tensors:
        raise FormatError(f"model tensors: {name!r} is missing")
    t = tensors[name]
    if t.type != qtypes.F32 or tuple(t.shape) != (n,):
        raise FormatError(f"tensor {name!r}: expected F32 of shape ({n},), got "
                          f"{qtypes.qtype(t.type).name} {tuple(t.shape)}")
    return np.ascontiguousarray(t.data, dtype=np.float32)


def _linear(tensors, name, n, k, bias_name=None):
    if name not in tensors:
        raise FormatError(f"model tensors: {name!r} is missing")
    bias = _vector(tensors, bias_name, n) if bias_name and bias_name in tensors else None
    return Linear(name, tensors[name], n, k, bias)


class Layer:
    """The weights of one transformer block."""

    def __init__(self, cfg, tensors, i, n_ctx=None):
        p = f"blk.{i}."
        d, qd, kvd, hd = cfg.d_model, cfg.q_dim, cfg.kv_dim, cfg.head_dim
        self.attn_norm = _vector(tensors, p + "attn_norm.weight", d)
        bias = cfg.qkv_bias
        self.wq = _linear(tensors, p + "attn_q.weight", qd, d, p + "attn_q.bias" if bias else None)
        self.wk = _linear(tensors, p + "attn_k.weight", kvd, d, p + "attn_k.bias" if bias else None)
        self.wv = _linear(tensors, p + "attn_v.weight", kvd, d, p + "attn_v.bias" if bias else None)
        self.wo = _linear(tensors, p + "attn_output.weight", d, qd)
        self.q_norm = _vector(tensors, p + "attn_q_norm.weight", hd) if cfg.qk_norm else None
        self.k_norm = _vector(tensors, p + "attn_k_norm.weight", hd) if cfg.qk_norm else None
        self.post_attn_norm = _vector(tensors, p + "post_attention_norm.weight", d) if cfg.post_norms else None
        self.ffn_norm = _vector(tensors, p + "ffn_norm.weight", d)
        self.w_gate = _linear(tensors, p + "ffn_gate.weight", cfg.ffn_dim, d)
        self.w_up = _linear(tensors, p + "ffn_up.weight", cfg.ffn_dim, d)
        self.w_down = _linear(tensors, p + "ffn_down.weight", d, cfg.ffn_dim)
        self.post_ffn_norm = _vector(tensors, p + "post_ffw_norm.weight", d) if cfg.post_norms else None
        self.sliding = cfg.is_sliding(i)
        self.window = cfg.sliding_window if self.sliding else 0
        # RoPE of this layer: base, linear freq_scale, per-dimension divisors, attention factor
        base, fs, ff, af = _rope.kernel_parameters(cfg.layer_rope_scaling(i), hd, cfg.layer_rope_base(i), n_ctx)
        self.rope_base = base
        self.rope_freq_scale = fs * cfg.layer_rope_freq_scale(i)
        self.rope_freq_factors = ff
        self.attn_scale = cfg.scale * af * af     # cos, sin scaled by af: q.k by af^2
        self.fused_rows = 0                       # set by Transformer: rows the fused groups take

    def build_fused(self, cfg, act):
        """The fused groups of this block (slmx._kernels.fused.LinearGroup) for few-row steps:
        attn_norm + q, k, v; o + post-norm + residual; ffn_norm + gate, up + GLU; down +
        post-norm + residual. Skipped (fused_rows = 0) when a weight is F32 (those use gemm)."""
        ws = (self.wq, self.wk, self.wv, self.wo, self.w_gate, self.w_up, self.w_down)
        if any(w.type == qtypes.F32 for w in ws):
            self.fused_rows = 0
            return
        LG, eps = _fused.LinearGroup, cfg.norm_eps
        lw = lambda w: (w.data, w.type, w.bias)
        self.f_qkv = LG([lw(self.wq), lw(self.wk), lw(self.wv)], norm=self.attn_norm, eps=eps)
        self.f_o = LG([lw(self.wo)], eps=eps, post_norm=self.post_attn_norm)
        self.f_ffn = LG([lw(self.w_gate), lw(self.w_up)], norm=self.ffn_norm, eps=eps, glu=act)
        self.f_down = LG([lw(self.w_down)], eps=eps, post_norm=self.post_ffn_norm)
        self.fused_rows = min(g.max_rows for g in (self.f_qkv, self.f_o, self.f_ffn, self.f_down))


class Workspace:
    """Activation buffers for up to `rows` tokens at once, allocated once."""

    def __init__(self, cfg, rows):
        f = np.float32
        self.rows = rows
        self.x = np.zeros((rows, cfg.d_model), f)
        self.h = np.zeros((rows, cfg.d_model), f)
        self.o = np.zeros((rows, cfg.d_model), f)
        self.q = np.zeros((rows, cfg.n_heads, cfg.head_dim), f)
        self.k = np.zeros((rows, cfg.n_kv_heads, cfg.head_dim), f)
        self.v = np.zeros((rows, cfg.n_kv_heads, cfg.head_dim), f)
        self.att = np.zeros((rows, cfg.n_heads, cfg.head_dim), f)
        self.gate = np.zeros((rows, cfg.ffn_dim), f)
        self.up = np.zeros((rows, cfg.ffn_dim), f)
        self.pos = np.zeros(rows, np.int32)
        self.ids = np.zeros(rows, np.int32)
        self.last = np.zeros((1, cfg.d_model), f)
        self.logits = np.zeros((1, cfg.vocab_size), f)
        # Views of the first t rows, made once per t (so a decode step builds no new views).
        self._views = {}

    def views(self, t):
        v = self._views.get(t)
        if v is None:
            names = ("x", "h", "o", "q", "k", "v", "att", "gate", "up", "pos", "ids")
            v = {n: getattr(self, n)[:t] for n in names}
            v["q2"] = v["q"].reshape(t, -1)
            v["k2"] = v["k"].reshape(t, -1)
            v["v2"] = v["v"].reshape(t, -1)
            v["att2"] = v["att"].reshape(t, -1)
            v["qh"] = v["q"].reshape(-1, v["q"].shape[-1])
            v["kh"] = v["k"].reshape(-1, v["k"].shape[-1])
            self._views[t] = v
        return v


# "ggml": round q, k, v to fp16 at the attention (the values an fp16 KV cache holds and ggml's fp16
#         dot product sees) and take GELU through an fp16 table, as llama.cpp's CPU backend does;
#         greedy output then follows llama.cpp's. "fp32": every activation stays fp32.
NUMERICS = ("ggml", "fp32")


class _RowCaches:
    """The cache interface over B sequences stacked as rows: sequence b holds rows
    off_b..off_b+lens[b]-1 at positions positions[b].. with its own cache caches[b]. Lets
    forward_batch reuse the layer code: the linear layers see all rows at once, store/attend
    split them per sequence."""

    __slots__ = ("caches", "positions", "rows")

    def __init__(self, caches, positions, lens):
        self.caches = caches
        self.positions = positions
        offs = np.concatenate([[0], np.cumsum(lens)]).tolist()
        self.rows = [slice(offs[b], offs[b + 1]) for b in range(len(caches))]

    def store(self, layer, pos, k, v):
        for c, p, r in zip(self.caches, self.positions, self.rows):
            c.store(layer, p, k[r], v[r])

    def attend(self, layer, q, out, pos, scale, window, nthreads, softcap=0.0):
        for c, p, r in zip(self.caches, self.positions, self.rows):
            c.attend(layer, q[r], out[r], p, scale, window, nthreads, softcap)


class Transformer:
    """The forward pass of a decoder-only LM over its weights (tensors: name -> tensor).

    forward(ids, pos, cache) runs T = len(ids) tokens at positions pos.. and returns the logits of
    the last one (1, vocab) — or of every token with all_logits=True (T, vocab).
    forward_batch(ids, positions, caches) runs one token for each of B sequences in one pass. With
    keep_hidden set, an all_logits forward also leaves .hidden (T, d_model): the final normed
    hidden states (the unembedding's input; multi-token-prediction heads read them).
    Not thread-safe by itself (shared workspaces): threads sharing it hold `.lock` (an RLock).
    """
    keep_hidden = False
    hidden = None
    mtp_heads = None
    # rowwise_attention: a T > 1 forward attends row by row, each row exactly as a one-token step
    # (the batched kernel's tiles sum in another order: ~1e-7 apart, which int8 activation
    # quantization can amplify into a different argmax). Speculative verification sets it, so
    # its logits are bit-identical to one-token decoding (linear: the same sums for M < 16).
    rowwise_attention = False
    # fused: steps of up to Layer.fused_rows rows go through the fused kernels (slmx._kernels.fused:
    # fewer calls and parallel regions, the same numbers); False runs the separate kernels.
    fused = True

    def __init__(self, cfg, tensors, threads=None, max_batch=256, numerics="ggml", n_ctx=None):
        if numerics not in NUMERICS:
            raise ValueError(f"numerics must be one of {NUMERICS}, got {numerics!r}")
        self.cfg = cfg
        self.numerics = numerics
        self._f16 = numerics == "ggml"
        self.threads = _cpu.resolve_threads(threads)
        self.max_batch = max_batch
        self.token_embd = _linear(tensors, "token_embd.weight", cfg.vocab_size, cfg.d_model)
        self.n_ctx = n_ctx    # context the RoPE scaling is set up for (dynamic NTK, longrope)
        self.layers = [Layer(cfg, tensors, i, n_ctx) for i in range(cfg.n_layers)]
        self.output_norm = _vector(tensors, "output_norm.weight", cfg.d_model)
        if cfg.tied_embeddings:
            self.output = self.token_embd
        else:
            self.output = _linear(tensors, "output.weight", cfg.vocab_size, cfg.d_model)
        act = ("geglu_f16" if self._f16 else "geglu") if cfg.activation == "gelu_tanh" else "swiglu"
        for L in self.layers:
            L.build_fused(cfg, act)
        self._f_out = None
        if self.output.type != qtypes.F32:
            self._f_out = _fused.LinearGroup([(self.output.data, self.output.type, self.output.bias)],
                                             norm=self.output_norm, eps=cfg.norm_eps)
        self._rope_tabs = {}       # (base, freq_scale, factors) -> rope_table of this step's positions
        self._ws = {}
        self._batch_logits = None   # (B, vocab) logits of forward_batch, grown to the largest B
        # The workspaces, RoPE tables, fused-group scratch and returned logits buffers above are
        # shared by every call: whoever shares this transformer between threads holds `lock` over
        # a forward and the use of what it returns (slmx.api.LanguageModel, slmx.serve's engine).
        self.lock = threading.RLock()

    @property
    def weight_bytes(self):
        n = self.token_embd.nbytes + (0 if self.output is self.token_embd else self.output.nbytes)
        for L in self.layers:
            n += sum(w.nbytes for w in (L.wq, L.wk, L.wv, L.wo, L.w_gate, L.w_up, L.w_down))
        return n

    def workspace(self, rows):
        rows = 1 if rows == 1 else self.max_batch
        ws = self._ws.get(rows)
        if ws is None:
            ws = self._ws[rows] = Workspace(self.cfg, rows)
        return ws

    def _embed(self, ids, out, nt):
        if self.token_embd.type == qtypes.F32:
            np.take(self.token_embd.data, ids, axis=0, out=out)
        else:
            _quant.get_rows(self.token_embd.data, self.token_embd.type, ids, out)
        if self.cfg.embed_scale != 1.0:
            np.multiply(out, np.float32(self.cfg.embed_scale), out=out)

    def _attend(self, L, li, v, t, pos, cache, nt):
        if self.rowwise_attention and t > 1:
            q, att = v["q"], v["att"]
            for i in range(t):
                cache.attend(li, q[i:i + 1], att[i:i + 1], pos + i, L.attn_scale, L.window, nt)
        else:
            cache.attend(li, v["q"], v["att"], pos, L.attn_scale, L.window, nt)

    def _block_fused(self, L, li, v, t, pos, cache, nt):
        """_block in 6 kernel calls (t <= L.fused_rows; 7 when the cache has no `claim`): the same numbers."""
        x, o = v["x"], v["o"]
        L.f_qkv(x, (v["q2"], v["k2"], v["v2"]), nt)
        key = (L.rope_base, L.rope_freq_scale, id(L.rope_freq_factors))
        tab = self._rope_tabs.get(key)
        if tab is None:         # one cos/sin table per step for the layers sharing RoPE parameters
            tab = self._rope_tabs[key] = _fused.rope_table(v["pos"], L.rope_base, self.cfg.head_dim,
                                                           L.rope_freq_scale, L.rope_freq_factors)
        claim = getattr(cache, "claim", None)
        kc = vc = None
        ring = kv_type = 0
        if claim is not None:   # RoPE'd keys (and values) written straight into the cache rows
            kc, vc, ring = claim(li, pos, t)
            kv_type = cache.kv_type
        _fused.qk_rope(v["q"], v["k"], v["v"], v["pos"], L.q_norm, L.k_norm, self.cfg.norm_eps, tab,
                       self.cfg.rope_neox, self._f16, kc, vc, ring, kv_type)
        if claim is None:
            cache.store(li, pos, v["k"], v["v"])
        self._attend(L, li, v, t, pos, cache, nt)
        L.f_o(v["att2"], (o,), nt, x)
        L.f_ffn(x, (v["gate"], v["up"]), nt)
        L.f_down(v["gate"], (o,), nt, x)

    def _block(self, L, li, v, t, pos, cache, nt):
        if t <= L.fused_rows and self.fused:
            return self._block_fused(L, li, v, t, pos, cache, nt)
        cfg = self.cfg
        eps = cfg.norm_eps
        x, h, o = v["x"], v["h"], v["o"]
        _core.rmsnorm(x, L.attn_norm, eps, h, nt)
        L.wq(h, v["q2"], nt)
        L.wk(h, v["k2"], nt)
        L.wv(h, v["v2"], nt)
        if L.q_norm is not None:
            _core.rmsnorm(v["qh"], L.q_norm, eps, v["qh"], nt)
            _core.rmsnorm(v["kh"], L.k_norm, eps, v["kh"], nt)
        _core.rope(v["q"], v["pos"], L.rope_base, cfg.rope_neox, nt, L.rope_freq_scale, L.rope_freq_factors)
        _core.rope(v["k"], v["pos"], L.rope_base, cfg.rope_neox, nt, L.rope_freq_scale, L.rope_freq_factors)
        if self._f16:
            _core.round_f16(v["q"], nt)
            _core.round_f16(v["k"], nt)
            _core.round_f16(v["v"], nt)
        cache.store(li, pos, v["k"], v["v"])
        self._attend(L, li, v, t, pos, cache, nt)
        L.wo(v["att2"], o, nt)
        if L.post_attn_norm is not None:
            _core.rmsnorm(o, L.post_attn_norm, eps, o, nt)
        np.add(x, o, out=x)
        _core.rmsnorm(x, L.ffn_norm, eps, h, nt)
        L.w_gate(h, v["gate"], nt)
        L.w_up(h, v["up"], nt)
        if cfg.activation == "gelu_tanh":
            if self._f16:
                _core.geglu_f16(v["gate"], v["up"], v["gate"], nt)
            else:
                _core.geglu(v["gate"], v["up"], v["gate"], nt)
        else:
            _core.swiglu(v["gate"], v["up"], v["gate"], nt)
        L.w_down(v["gate"], o, nt)
        if L.post_ffn_norm is not None:
            _core.rmsnorm(o, L.post_ffn_norm, eps, o, nt)
        np.add(x, o, out=x)

    def forward(self, ids, pos, cache, all_logits=False, chunk=None):
        """Run tokens `ids` (T,) at positions pos..pos+T-1, filling `cache`; returns logits.

        Returns a (1, vocab) view of a reused buffer (copy it to keep it), or a new (T, vocab)
        array with all_logits=True. Long inputs run in chunks of `chunk` tokens (default and
        at most max_batch, and at most the cache's max_chunk): activations and attention
        scratch stay bounded by the chunk, whatever the prompt length.
        """
        ids = np.asarray(ids, dtype=np.int32).reshape(-1)
        T = ids.size
        if T == 0:
            raise ValueError("forward: no tokens")
        if ids.min() < 0 or ids.max() >= self.cfg.vocab_size:
            raise ValueError(f"forward: token ids must be in [0, {self.cfg.vocab_size})")
        if pos < 0 or pos + T > cache.n_ctx:
            raise ValueError(f"forward: positions {pos}..{pos + T - 1} exceed the context of {cache.n_ctx} "
                             "tokens (load the model with a larger n_ctx)")
        if chunk is not None and (isinstance(chunk, bool) or int(chunk) != chunk or chunk <= 0):
            raise ValueError(f"forward: chunk must be a positive integer, got {chunk}")
        nt = self.threads
        outs = [] if all_logits else None
        hid = []
        ws = self.workspace(T)
        step = ws.rows
        for lim in (chunk, getattr(cache, "max_chunk", None)):
            if lim:
                step = min(step, int(lim))
        for c0 in range(0, T, step):
            t = min(step, T - c0)
            v = ws.views(t)
            v["ids"][:] = ids[c0:c0 + t]
            np.add(np.arange(t, dtype=np.int32), np.int32(pos + c0), out=v["pos"])
            self._embed(v["ids"], v["x"], nt)
            self._rope_tabs = {}
            for li, L in enumerate(self.layers):
                self._block(L, li, v, t, pos + c0, cache, nt)
            if all_logits:
                h = v["h"]
                _core.rmsnorm(v["x"], self.output_norm, self.cfg.norm_eps, h, nt)
                lg = np.empty((t, self.cfg.vocab_size), np.float32)
                self.output(h, lg, nt)
                outs.append(lg)
                if self.keep_hidden:
                    hid.append(h.copy())
        cache.length = pos + T
        if all_logits:
            if self.keep_hidden:
                self.hidden = hid[0] if len(hid) == 1 else np.concatenate(hid)
            lg = outs[0] if len(outs) == 1 else np.concatenate(outs)
            return self._softcap(lg)
        if self._f_out is not None and self.fused:
            self._f_out(v["x"][t - 1:t], (ws.logits,), nt)
        else:
            _core.rmsnorm(v["x"][t - 1:t], self.output_norm, self.cfg.norm_eps, ws.last, nt)
            self.output(ws.last, ws.logits, nt)
        return self._softcap(ws.logits)

    def forward_batch(self, ids, positions, caches):
        """New tokens for each of B independent sequences, in one batched pass.

        ids: B entries, entry b the token (an int) or tokens (a 1-D sequence of T_b >= 1, e.g. a
        prompt chunk) of sequence b; positions (B,): the position of its first token; caches: B
        caches, one per sequence (distinct objects). The R = sum T_b rows (R <= max_batch) go
        through embeddings, norms, RoPE (per-row positions) and every linear layer together (each
        weight is read once per step); the attention runs per sequence over its own cache.
        Sets caches[b].length = positions[b] + T_b.
        Returns (B, vocab) logits of each sequence's last token: a view of a reused buffer (copy
        rows to keep them). Row b equals forward(ids[b], positions[b], caches[b]) up to float
        rounding (bit-identical while the linear kernels take their per-row path: R < 16 rows for
        block-quantized weights, R <= 4 for F32).
        """
        caches = list(caches)
        segs = [np.asarray(t, dtype=np.int32).reshape(-1) for t in ids]
        positions = [int(p) for p in np.asarray(positions).reshape(-1)]
        B = len(segs)
        if B == 0:
            raise ValueError("forward_batch: no sequences")
        if len(positions) != B or len(caches) != B:
            raise ValueError(f"forward_batch: {B} ids but {len(positions)} positions and {len(caches)} caches")
        if len({id(c) for c in caches}) != B:
            raise ValueError("forward_batch: every sequence needs its own cache (a cache appears twice)")
        lens = [s.size for s in segs]
        R = sum(lens)
        if min(lens) == 0:
            raise ValueError("forward_batch: a sequence has no tokens")
        if R > self.max_batch:
            raise ValueError(f"forward_batch: {R} rows exceed max_batch {self.max_batch}")
        flat = segs[0] if B == 1 else np.concatenate(segs)
        if flat.min() < 0 or flat.max() >= self.cfg.vocab_size:
            raise ValueError(f"forward_batch: token ids must be in [0, {self.cfg.vocab_size})")
        for p, n, c in zip(positions, lens, caches):
            if p < 0 or p + n > c.n_ctx:
                raise ValueError(f"forward_batch: positions {p}..{p + n - 1} are outside the context of "
                                 f"{c.n_ctx} tokens")
        nt = self.threads
        ws = self.workspace(R)
        v = ws.views(R)
        v["ids"][:] = flat
        if R == B:
            v["pos"][:] = positions
        else:
            v["pos"][:] = np.concatenate([np.arange(p, p + n, dtype=np.int32) for p, n in zip(positions, lens)])
        rc = _RowCaches(caches, positions, lens)
        self._embed(v["ids"], v["x"], nt)
        self._rope_tabs = {}
        for li, L in enumerate(self.layers):
            self._block(L, li, v, R, 0, rc, nt)
        for p, n, c in zip(positions, lens, caches):
            c.length = p + n
        lg = self._batch_logits
        if lg is None or lg.shape[0] < B:
            lg = self._batch_logits = np.zeros((B, self.cfg.vocab_size), np.float32)
        lg, h = lg[:B], v["h"][:B]
        x = v["x"] if R == B else v["x"][np.cumsum(lens) - 1]      # each sequence's last row
        _core.rmsnorm(x, self.output_norm, self.cfg.norm_eps, h, nt)
        self.output(h, lg, nt)
        return self._softcap(lg)

    def shift_cache(self, cache, n_keep, n_discard):
        """Context shift: drop cached positions n_keep..n_keep+n_discard-1 and move the later ones
        down by n_discard, re-rotating their keys by -n_discard (RoPE is a rotation). Returns
        False (cache untouched) when the cache cannot (a ring buffer lost tokens still in view):
        then recompute the kept tokens instead."""
        if not cache.can_shift(n_keep, n_discard):
            return False
        cfg, nt = self.cfg, self.threads
        delta = None

        def rotate(li, k):
            nonlocal delta
            L = self.layers[li]
            if delta is None or delta.shape[0] != k.shape[0]:
                delta = np.full(k.shape[0], n_discard, np.int32)
            _core.rope(k, delta, L.rope_base, cfg.rope_neox, nt, L.rope_freq_scale, L.rope_freq_factors,
                       inverse=True)
            if self._f16:
                _core.round_f16(k, nt)

        cache.shift(n_keep, n_discard, rotate)
        return True

    def _softcap(self, lg):
        c = self.cfg.final_logit_softcap
        if c:
            np.multiply(np.tanh(lg / c, out=lg), c, out=lg)
        return lg
