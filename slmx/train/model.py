"""The trainable Llama-style LM: one flat parameter buffer, hand-written forward and backward.

Architecture (GGUF ``llama`` conventions, so a trained model exports without permutation):
pre-norm RMSNorm, RoPE on interleaved pairs (2i, 2i+1), grouped-query causal attention, SwiGLU
FFN, tied token embeddings, no biases. Per layer l, for the N = B*T tokens of a micro-batch:

    h1 = rmsnorm(x, attn_norm)                      (N, C)     saves 1/rms
    qkv = h1 [Wq; Wk; Wv]^T                         (N, (H + 2 Hkv) D)   one GEMM: the three
                                                    weights are adjacent in the flat buffer
    q, k = rope(q, k)                               in place
    a = attention(q, k, v)                          (N, H D)   causal, saves the log-sum-exp
    x' = x + a Wo^T                                 (N, C)     residual add fused into the GEMM
    h2 = rmsnorm(x', ffn_norm)
    gu = h2 [Wg; Wu]^T                              (N, 2F)    one GEMM (adjacent weights)
    f = silu(g) * u                                 (N, F)
    x'' = x' + f Wd^T
logits = rmsnorm(x, output_norm) E^T (N, V); loss = fused softmax + cross-entropy, whose backward
writes dlogits over the logits. The backward walks the same ops in reverse with the kernels of
slmx._kernels.train_ops; every weight gradient is ADDED into ParamBuffer.grads.

Multi-token prediction (mtp = m > 0): m extra heads on the final normed hidden hf; head j
(1..m) predicts the token at offset j + 1 (t+2 .. t+m+1), sharing the unembedding E:
    z_j = hf + hf P_j^T                             (N, C)     P_j: mtp.{j}.proj.weight (C, C)
    logits_j = rmsnorm(z_j, mtp.{j}.norm) E^T       (N, V)
    loss = CE(main) + mtp_weight * sum_j CE(logits_j, targets shifted by j)
The heads are trained jointly with the trunk; at inference they draft tokens for
self-speculative decoding (slmx.infer.speculative).
"""
import math

import numpy as np

from .._kernels import cpu as _cpu
from .._kernels import train_ops as _ops
from ..model.config import ModelConfig

PRESETS = {
    "nano": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, context_length=64),
    "tiny": dict(d_model=384, n_layers=6, n_heads=6, n_kv_heads=2, ffn_dim=1024, context_length=256),
    "small": dict(d_model=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1536, context_length=512),
}


def make_config(preset="tiny", vocab_size=8192, **overrides):
    """ModelConfig of a named preset (PRESETS) for the training model; overrides win."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    kw = dict(PRESETS[preset])
    kw.update(overrides)
    d, h = kw["d_model"], kw["n_heads"]
    if "head_dim" not in kw:
        if d % h:
            raise ValueError(f"d_model {d} is not a multiple of n_heads {h}; give head_dim")
        kw["head_dim"] = d // h
    kw.setdefault("norm_eps", 1e-5)
    kw.setdefault("rope_base", 10000.0)
    return ModelConfig(arch="llama", vocab_size=int(vocab_size), activation="silu", rope_neox=False,
                       tied_embeddings=True, **kw)


def _param_shapes(cfg, mtp=0):
    """[(name, shape)] in buffer order. attn_q/k/v and ffn_gate/up are adjacent (fused GEMMs);
    the mtp heads' parameters come last."""
    C, F = cfg.d_model, cfg.ffn_dim
    out = [("token_embd.weight", (cfg.vocab_size, C))]
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", (C,)),
                (p + "attn_q.weight", (cfg.q_dim, C)),
                (p + "attn_k.weight", (cfg.kv_dim, C)),
                (p + "attn_v.weight", (cfg.kv_dim, C)),
                (p + "attn_output.weight", (C, cfg.q_dim)),
                (p + "ffn_norm.weight", (C,)),
                (p + "ffn_gate.weight", (F, C)),
                (p + "ffn_up.weight", (F, C)),
                (p + "ffn_down.weight", (C, F))]
    out.append(("output_norm.weight", (C,)))
    for j in range(1, int(mtp) + 1):
        out += [(f"mtp.{j}.proj.weight", (C, C)), (f"mtp.{j}.norm.weight", (C,))]
    return out


def mtp_heads_in(names):
    """The number of multi-token-prediction heads among tensor names (mtp.1.*, mtp.2.*, ...)."""
    n = 0
    while f"mtp.{n + 1}.proj.weight" in names:
        n += 1
    return n


class ParamBuffer:
    """All parameters in one flat float32 buffer, their gradients in another, with named views.

    layout: [(name, shape, offset)]; views(name) / grad(name): numpy views of that parameter;
    decay_mask (uint8, same size): 1 where weight decay applies (the matrices of the blocks; not
    norms, not the token embedding unless decay_embeddings).
    """

    def __init__(self, shapes, decay_embeddings=False):
        self.layout = []
        off = 0
        for name, shape in shapes:
            self.layout.append((name, tuple(shape), off))
            off += int(np.prod(shape))
        self.n_params = off
        self.params = np.zeros(off, np.float32)
        self.grads = np.zeros(off, np.float32)
        self.decay_mask = np.zeros(off, np.uint8)
        self._index = {name: (shape, o) for name, shape, o in self.layout}
        for name, shape, o in self.layout:
            if len(shape) == 2 and (decay_embeddings or name != "token_embd.weight"):
                self.decay_mask[o:o + int(np.prod(shape))] = 1
        self._pv = {n: self._view(self.params, n) for n in self._index}
        self._gv = {n: self._view(self.grads, n) for n in self._index}

    def _view(self, flat, name):
        shape, o = self._index[name]
        return flat[o:o + int(np.prod(shape))].reshape(shape)

    @property
    def names(self):
        return [n for n, _, _ in self.layout]

    def views(self, name):
        """The parameter `name` as a view of .params."""
        return self._pv[name]

    def grad(self, name):
        """The gradient of `name` as a view of .grads."""
        return self._gv[name]

    def span(self, first, last, flat=None):
        """(rows, cols) view over the adjacent 2-D parameters first..last (same column count)."""
        s0, o0 = self._index[first]
        s1, o1 = self._index[last]
        if s0[1] != s1[1]:
            raise ValueError(f"{first} and {last} have different column counts")
        n = o1 + int(np.prod(s1)) - o0
        buf = self.params if flat is None else flat
        return buf[o0:o0 + n].reshape(n // s0[1], s0[1])


class _Tensor:
    """A tensor as slmx.model.transformer expects it: .type (ggml id), .shape, .data."""
    __slots__ = ("type", "shape", "data")

    def __init__(self, data):
        self.type = 0          # F32
        self.shape = tuple(data.shape)
        self.data = data


def _zeros(shape, dtype=np.float32):
    """np.zeros(shape) whose data starts on a 64-byte boundary (full-line and streaming stores)."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(n + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off:off + n].view(dtype).reshape(shape)


def _dw_block(T):
    """Rows per block of the weight-gradient sums: T (or its largest divisor <= 1024), so block
    boundaries fall on sequence boundaries whatever the micro-batch size."""
    if T <= 1024:
        return T
    return max(d for d in range(1, 1025) if T % d == 0)


class _Acts:
    """Saved activations and backward scratch for one micro-batch shape (B, T)."""

    def __init__(self, cfg, B, T, positions, mtp=0):
        f = np.float32
        L, C, F, V = cfg.n_layers, cfg.d_model, cfg.ffn_dim, cfg.vocab_size
        N = B * T
        W = cfg.q_dim + 2 * cfg.kv_dim
        self.B, self.T, self.N = B, T, N
        self.dw_block = _dw_block(T)
        self.ids = _zeros(N, np.int32)
        self.tgt = _zeros(N, np.int32)
        self.pos = np.ascontiguousarray(np.tile(positions[:T], B), np.int32)
        self.xs = _zeros((L + 1, N, C), f)       # residual stream entering each layer; [L] final
        self.xmid = _zeros((L, N, C), f)         # after attention
        self.h1 = _zeros((L, N, C), f)
        self.r1 = _zeros((L, N), f)
        self.qkv = _zeros((L, N, W), f)          # q, k after RoPE
        self.att = _zeros((L, N, cfg.q_dim), f)
        self.lse = _zeros((L, B, cfg.n_heads, T), f)
        self.h2 = _zeros((L, N, C), f)
        self.r2 = _zeros((L, N), f)
        self.gu = _zeros((L, N, 2 * F), f)       # [gate | up] pre-activation; dgu in place
        self.act = _zeros((L, N, F), f)
        self.hf = _zeros((N, C), f)
        self.rf = _zeros(N, f)
        self.logits = _zeros((N, V), f)
        # backward scratch
        self.dx = _zeros((N, C), f)
        self.dh = _zeros((N, C), f)
        self.dact = _zeros((N, F), f)
        self.datt = _zeros((N, cfg.q_dim), f)
        self.dqkv = _zeros((N, W), f)
        if mtp:     # one head at a time: its logits (dlogits in place), z, normed z, 1/rms, targets
            self.mlogits = _zeros((N, V), f)
            self.mz = _zeros((N, C), f)
            self.mh = _zeros((N, C), f)
            self.mr = _zeros(N, f)
            self.mtgt = _zeros(N, np.int32)
            self.mdz = _zeros((N, C), f)

    @property
    def nbytes(self):
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))

    @staticmethod
    def bytes_for(cfg, B, T, mtp=0):
        L, C, F, V = cfg.n_layers, cfg.d_model, cfg.ffn_dim, cfg.vocab_size
        N = B * T
        W = cfg.q_dim + 2 * cfg.kv_dim
        floats = ((L + 1) * N * C + L * N * C * 3 + 2 * L * N + L * N * W + L * N * cfg.q_dim
                  + L * B * cfg.n_heads * T + L * N * 3 * F + N * C + N + N * V
                  + 2 * N * C + N * F + N * cfg.q_dim + N * W)
        if mtp:
            floats += N * V + 3 * N * C + 2 * N
        return 4 * floats + 3 * 4 * N


class TrainableLM:
    """The training model over a ParamBuffer (see the module docstring for the forward).

    forward_backward(inputs, targets, loss_scale) adds the gradient of
    loss_scale * sum(per-token cross-entropy over targets >= 0) into buf.grads (plus, with mtp
    heads, mtp_weight * loss_scale * the heads' cross-entropy sums; see the module docstring).
    """

    def __init__(self, cfg, seed=0, threads=None, bf16=False, mtp=0, mtp_weight=0.3):
        if not isinstance(cfg, ModelConfig):
            raise ValueError("cfg must be a slmx.model.config.ModelConfig (see make_config)")
        if cfg.rope_neox or not cfg.tied_embeddings or cfg.activation != "silu" or cfg.qkv_bias \
                or cfg.qk_norm or cfg.post_norms or cfg.sliding_window or cfg.embed_scale != 1.0 \
                or cfg.final_logit_softcap:
            raise ValueError("TrainableLM trains the llama layout: interleaved RoPE, SwiGLU, tied "
                             "embeddings, no biases, norms or soft-caps beyond pre-norm RMSNorm")
        if isinstance(mtp, bool) or int(mtp) != mtp or not 0 <= mtp <= 16:
            raise ValueError(f"mtp (extra prediction heads) must be an integer in 0..16, got {mtp}")
        if not (math.isfinite(mtp_weight) and mtp_weight >= 0):
            raise ValueError(f"mtp_weight must be a finite number >= 0, got {mtp_weight}")
        self.cfg = cfg
        self.threads = _cpu.resolve_threads(threads)
        self.bf16 = bool(bf16)
        self.mtp, self.mtp_weight = int(mtp), float(mtp_weight)
        self.mtp_losses = []        # [(loss_sum, n_targets)] of each head in the last forward_backward
        self.buf = ParamBuffer(_param_shapes(cfg, self.mtp))
        self._init_weights(seed)
        self._cos, self._sin = _ops.rope_tables(cfg.context_length, cfg.head_dim, cfg.rope_base)
        self._positions = np.arange(cfg.context_length, dtype=np.int32)
        self._acts = None
        self._bind()

    # -- parameters -------------------------------------------------------------------------

    def _init_weights(self, seed):
        rng = np.random.default_rng(seed)
        std_resid = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for name, shape, _ in self.buf.layout:
            v = self.buf.views(name)
            if len(shape) == 1:
                v[...] = 1.0
            else:
                std = std_resid if name.endswith(("attn_output.weight", "ffn_down.weight",
                                                  "proj.weight")) else 0.02
                v[...] = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def _bind(self):
        """Views used by the forward/backward: fused [q; k; v] and [gate; up] weights."""
        b = self.buf
        self._layers = []
        for i in range(self.cfg.n_layers):
            p = f"blk.{i}."
            self._layers.append(dict(
                n1=b.views(p + "attn_norm.weight"), dn1=b.grad(p + "attn_norm.weight"),
                wqkv=b.span(p + "attn_q.weight", p + "attn_v.weight"),
                dwqkv=b.span(p + "attn_q.weight", p + "attn_v.weight", b.grads),
                wo=b.views(p + "attn_output.weight"), dwo=b.grad(p + "attn_output.weight"),
                n2=b.views(p + "ffn_norm.weight"), dn2=b.grad(p + "ffn_norm.weight"),
                wgu=b.span(p + "ffn_gate.weight", p + "ffn_up.weight"),
                dwgu=b.span(p + "ffn_gate.weight", p + "ffn_up.weight", b.grads),
                wd=b.views(p + "ffn_down.weight"), dwd=b.grad(p + "ffn_down.weight")))
        self._emb, self._demb = b.views("token_embd.weight"), b.grad("token_embd.weight")
        self._nf, self._dnf = b.views("output_norm.weight"), b.grad("output_norm.weight")
        self._mtp = [dict(p=b.views(f"mtp.{j}.proj.weight"), dp=b.grad(f"mtp.{j}.proj.weight"),
                          n=b.views(f"mtp.{j}.norm.weight"), dn=b.grad(f"mtp.{j}.norm.weight"))
                     for j in range(1, self.mtp + 1)]

    def zero_grad(self):
        self.buf.grads[...] = 0.0

    def state_tensors(self):
        """name -> float32 array (a copy) of every parameter, GGUF names."""
        return {name: self.buf.views(name).copy() for name in self.buf.names}

    def load_state_tensors(self, tensors):
        """Copy tensors (name -> array of the parameter's shape) into the parameter buffer."""
        missing = [n for n in self.buf.names if n not in tensors]
        if missing:
            raise ValueError(f"load_state_tensors: missing {', '.join(missing[:5])}"
                             + (" ..." if len(missing) > 5 else ""))
        extra = [n for n in tensors if n not in self.buf._index]
        if extra and self.mtp == 0 and mtp_heads_in(tensors):
            raise ValueError("load_state_tensors: the tensors have multi-token-prediction heads; "
                             f"build the model with mtp={mtp_heads_in(tensors)}")
        if extra:
            raise ValueError(f"load_state_tensors: unknown tensors {', '.join(sorted(extra)[:5])}")
        for name in self.buf.names:
            a = np.asarray(tensors[name])
            v = self.buf.views(name)
            if a.shape != v.shape:
                raise ValueError(f"load_state_tensors: {name} has shape {a.shape}, expected {v.shape}")
            v[...] = a.astype(np.float32, copy=False)

    def to_transformer(self, threads=None):
        """An slmx.model.transformer.Transformer over (copies of) the current weights; with mtp
        heads, its .mtp_heads (slmx.model.mtp.MTPHeads) draft for self-speculative decoding."""
        from ..model.transformer import Transformer
        tensors = {n: _Tensor(a) for n, a in self.state_tensors().items()}
        tr = Transformer(self.cfg, tensors, threads=self.threads if threads is None else threads)
        if self.mtp:
            from ..model.mtp import MTPHeads
            tr.mtp_heads = MTPHeads(self.cfg, tensors, tr.output, tr.threads)
        return tr

    def activation_bytes(self, batch, T):
        """Bytes of the activations and backward scratch one micro-batch (batch, T) keeps, plus
        the GEMM packing scratch the kernels keep between calls."""
        cfg, T = self.cfg, int(T)
        depths = [(k, 0) for k in (cfg.d_model, cfg.ffn_dim, cfg.q_dim, cfg.vocab_size,
                                   cfg.q_dim + 2 * cfg.kv_dim, 2 * cfg.ffn_dim)]
        depths += [(int(batch) * T, _dw_block(T)), (T, _dw_block(T))]
        scratch = max(_ops.workspace_bytes(self.threads, self.bf16, k, b) for k, b in depths)
        return _Acts.bytes_for(cfg, int(batch), T, self.mtp) + scratch

    # -- forward / backward -----------------------------------------------------------------

    def _check(self, inputs, targets):
        x = np.asarray(inputs)
        y = np.asarray(targets)
        if x.ndim != 2 or y.shape != x.shape:
            raise ValueError(f"inputs and targets must both be (B, T), got {x.shape} and {y.shape}")
        if not (np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer)):
            raise ValueError("inputs and targets must be integer arrays")
        B, T = x.shape
        if B < 1 or T < 1:
            raise ValueError(f"empty batch {x.shape}")
        if T > self.cfg.context_length:
            raise ValueError(f"T = {T} exceeds the context length {self.cfg.context_length}")
        V = self.cfg.vocab_size
        if x.min() < 0 or x.max() >= V:
            raise ValueError(f"inputs must be token ids in [0, {V})")
        if y.max() >= V:
            raise ValueError(f"targets must be < {V} (negative targets are ignored)")
        a = self._acts
        if a is None or a.B != B or a.T != T:
            self._acts = None
            a = self._acts = _Acts(self.cfg, B, T, self._positions, self.mtp)
        a.ids[...] = x.reshape(-1)
        a.tgt[...] = np.where(y.reshape(-1) < 0, -1, y.reshape(-1))
        return a

    def _forward(self, a):
        cfg, nt, bf = self.cfg, self.threads, self.bf16
        H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        eps = cfg.norm_eps
        _ops.embedding_forward(a.ids, self._emb, a.xs[0], nt)
        for l, P in enumerate(self._layers):
            _ops.rmsnorm_forward(a.xs[l], P["n1"], eps, a.h1[l], a.r1[l], nt)
            _ops.linear_forward(a.h1[l], P["wqkv"], a.qkv[l], False, bf, nt)
            _ops.rope_forward(a.qkv[l], H + Hkv, D, a.pos, self._cos, self._sin, nt)
            _ops.attention_forward(a.qkv[l], a.att[l], a.lse[l], a.B, a.T, H, Hkv, D, cfg.scale, nt, bf)
            _ops.linear_forward(a.att[l], P["wo"], a.xmid[l], False, bf, nt, a.xs[l])
            _ops.rmsnorm_forward(a.xmid[l], P["n2"], eps, a.h2[l], a.r2[l], nt)
            _ops.linear_forward(a.h2[l], P["wgu"], a.gu[l], False, bf, nt)
            _ops.swiglu_forward(a.gu[l], a.act[l], nt)
            _ops.linear_forward(a.act[l], P["wd"], a.xs[l + 1], False, bf, nt, a.xmid[l])
        L = cfg.n_layers
        _ops.rmsnorm_forward(a.xs[L], self._nf, eps, a.hf, a.rf, nt)
        _ops.linear_forward(a.hf, self._emb, a.logits, False, bf, nt)

    def _backward(self, a):
        """Gradients in an order that makes micro-batches sum exactly like one big batch: every
        weight-gradient sum over tokens runs sequence by sequence (dW GEMMs in blocks of T rows,
        norm weights row by row), and the tied embedding receives, sequence by sequence, the
        output projection's share and then the lookup's share."""
        cfg, nt, bf = self.cfg, self.threads, self.bf16
        H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        L, T = cfg.n_layers, a.T
        blk = a.dw_block
        # a.logits holds dlogits (written by the fused cross-entropy)
        _ops.linear_backward(a.logits, a.hf, self._emb, a.dh, None, False, bf, nt)
        if self.mtp:
            self._mtp_forward_backward(a)       # adds the heads' share into a.dh
        _ops.rmsnorm_backward(a.dh, a.xs[L], self._nf, a.rf, a.dx, self._dnf, False, nt)
        for l in range(L - 1, -1, -1):
            P = self._layers[l]
            _ops.linear_backward(a.dx, a.act[l], P["wd"], a.dact, P["dwd"], False, bf, nt, blk)
            _ops.swiglu_backward(a.dact, a.gu[l], a.gu[l], nt)
            _ops.linear_backward(a.gu[l], a.h2[l], P["wgu"], a.dh, P["dwgu"], False, bf, nt, blk)
            _ops.rmsnorm_backward(a.dh, a.xmid[l], P["n2"], a.r2[l], a.dx, P["dn2"], True, nt)
            _ops.linear_backward(a.dx, a.att[l], P["wo"], a.datt, P["dwo"], False, bf, nt, blk)
            _ops.attention_backward(a.qkv[l], a.att[l], a.datt, a.lse[l], a.dqkv, a.B, T, H, Hkv, D,
                                    cfg.scale, nt, bf)
            _ops.rope_backward(a.dqkv, H + Hkv, D, a.pos, self._cos, self._sin, nt)
            _ops.linear_backward(a.dqkv, a.h1[l], P["wqkv"], a.dh, P["dwqkv"], False, bf, nt, blk)
            _ops.rmsnorm_backward(a.dh, a.xs[l], P["n1"], a.r1[l], a.dx, P["dn1"], True, nt)
        for b in range(a.B):
            rows = slice(b * T, (b + 1) * T)
            _ops.linear_backward(a.logits[rows], a.hf[rows], self._emb, None, self._demb, False, bf, nt, blk)
            _ops.embedding_backward(a.ids[rows], a.dx[rows], self._demb, nt)

    def _mtp_forward_backward(self, a):
        """Each head in turn: forward, fused cross-entropy (dlogits in place), backward into its
        parameters, the shared embedding and a.dh (the gradient at hf)."""
        nt, bf, eps, T = self.threads, self.bf16, self.cfg.norm_eps, a.T
        scale = self._loss_scale * self.mtp_weight
        tgt = a.tgt.reshape(a.B, T)
        mt = a.mtgt.reshape(a.B, T)
        self.mtp_losses = []
        for j, P in enumerate(self._mtp, start=1):
            mt[:, :T - j] = tgt[:, j:]            # head j at position i predicts target i + j
            mt[:, max(0, T - j):] = -1
            _ops.linear_forward(a.hf, P["p"], a.mz, False, bf, nt, a.hf)
            _ops.rmsnorm_forward(a.mz, P["n"], eps, a.mh, a.mr, nt)
            _ops.linear_forward(a.mh, self._emb, a.mlogits, False, bf, nt)
            ls, n = _ops.cross_entropy_forward_backward(a.mlogits, a.mtgt, scale, nt)
            self.mtp_losses.append((float(ls), int(n)))
            # dlogits -> d(normed z) (in a.mh's place: it is needed for dE first)
            for b in range(a.B):
                rows = slice(b * T, (b + 1) * T)
                _ops.linear_backward(a.mlogits[rows], a.mh[rows], self._emb, None, self._demb, False, bf, nt,
                                     a.dw_block)
            _ops.linear_backward(a.mlogits, a.mh, self._emb, a.dx, None, False, bf, nt)
            _ops.rmsnorm_backward(a.dx, a.mz, P["n"], a.mr, a.mdz, P["dn"], False, nt)
            np.add(a.dh, a.mdz, out=a.dh)          # the residual path z = hf + ...
            _ops.linear_backward(a.mdz, a.hf, P["p"], a.dh, P["dp"], True, bf, nt, a.dw_block)

    def forward_backward(self, inputs, targets, loss_scale):
        """inputs, targets (B, T) int -> (loss_sum, n_targets); grads += d(loss_scale * loss_sum).

        targets < 0 are ignored. With loss_scale = 1 / (unmasked targets of all micro-batches of
        a step), accumulating micro-batches gives exactly the gradient of one big batch.
        """
        a = self._check(inputs, targets)
        self._forward(a)
        self._loss_scale = float(loss_scale)
        loss, n = _ops.cross_entropy_forward_backward(a.logits, a.tgt, float(loss_scale), self.threads)
        self._backward(a)
        return loss, n

    def loss(self, inputs, targets):
        """Forward only: (sum of per-token cross-entropy over targets >= 0, their count)."""
        a = self._check(inputs, targets)
        self._forward(a)
        return _ops.cross_entropy_forward(a.logits, a.tgt, self.threads)
