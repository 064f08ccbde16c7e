"""Multi-token-prediction heads at inference (trained by slmx.train.model with mtp > 0).

Head j (1..m) reads the final normed hidden state hf (1, C) of a position t -- the input of the
unembedding -- and predicts the token at t + 1 + j (the main head predicts t + 1):

    z_j = hf + hf P_j^T;   logits_j = rmsnorm(z_j, n_j) E^T     (E: the shared unembedding)

slmx.infer.speculative uses them to draft tokens for self-speculative decoding.
"""
import numpy as np

from .._kernels import gemm as _gemm
from .._kernels import ops_core as _core
from ..errors import FormatError


class MTPHeads:
    """The m extra heads: __call__(hf (n, C)) -> logits (m, n, vocab)."""

    def __init__(self, cfg, tensors, unembedding, threads=1):
        self.cfg = cfg
        self.output = unembedding              # a transformer Linear (V, C)
        self.threads = threads
        self.proj, self.norm = [], []
        j = 1
        while f"mtp.{j}.proj.weight" in tensors:
            p = np.ascontiguousarray(tensors[f"mtp.{j}.proj.weight"].data, np.float32)
            n = np.ascontiguousarray(tensors[f"mtp.{j}.norm.weight"].data, np.float32)
            C = cfg.d_model
            if p.shape != (C, C) or n.shape != (C,):
                raise FormatError(f"mtp.{j}: expected proj ({C}, {C}) and norm ({C},), got "
                                  f"{p.shape} and {n.shape}")
            self.proj.append(p)
            self.norm.append(n)
            j += 1
        if not self.proj:
            raise FormatError("no multi-token-prediction heads (mtp.1.proj.weight) among the tensors")

    def __len__(self):
        return len(self.proj)

    def __call__(self, hf):
        hf = np.ascontiguousarray(hf, np.float32).reshape(-1, self.cfg.d_model)
        n, nt = hf.shape[0], self.threads
        z = np.empty_like(hf)
        out = np.empty((len(self.proj), n, self.cfg.vocab_size), np.float32)
        for j, (p, w) in enumerate(zip(self.proj, self.norm)):
            _gemm.linear_f32(hf, p, z, nt)
            np.add(z, hf, out=z)
            _core.rmsnorm(z, w, self.cfg.norm_eps, z, nt)
            self.output(z, out[j], nt)
        c = self.cfg.final_logit_softcap
        if c:
            np.multiply(np.tanh(out / c, out=out), c, out=out)
        return out
