"""Token sampling: greedy, or temperature -> top-k -> top-p over the logits, seeded.

Order: temperature scales the logits, top-k keeps the k largest, top-p keeps the smallest set
whose probability reaches p (at least one token always survives), then one draw.
Temperature 0 (or top_k 1) is greedy: the argmax, with no randomness.
"""
import numpy as np


class Sampler:
    """Draws token ids from (vocab,) logits. Vectorised numpy over the vocabulary."""

    def __init__(self, temperature=0.8, top_k=40, top_p=0.95, seed=None):
        if temperature is None or temperature < 0 or not np.isfinite(temperature):
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 0):
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k}")
        if seed is not None and (isinstance(seed, bool) or int(seed) != seed or seed < 0):
            raise ValueError(f"seed must be an integer >= 0, got {seed}")
        if top_p is not None and not (0.0 < top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature = float(temperature)
        self.top_k = int(top_k or 0)
        self.top_p = 1.0 if top_p is None else float(top_p)
        self.rng = np.random.default_rng(seed)

    @property
    def greedy(self):
        return self.temperature == 0.0 or self.top_k == 1

    def __call__(self, logits):
        logits = np.asarray(logits).reshape(-1)
        if self.greedy:
            return int(np.argmax(logits))
        finite = np.isfinite(logits)
        if not finite.any():
            raise ValueError("sampling: every logit is -inf or NaN")
        k = self.top_k if 0 < self.top_k < logits.size else logits.size
        if k < logits.size:
            idx = np.argpartition(logits, -k)[-k:]
        else:
            idx = np.arange(logits.size)
        cand = logits[idx].astype(np.float64)
        cand[~np.isfinite(cand)] = -np.inf
        order = np.argsort(-cand, kind="stable")
        idx, cand = idx[order], cand[order]
        z = (cand - cand[0]) / self.temperature
        p = np.exp(z)
        p /= p.sum()
        if self.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), self.top_p) + 1)
            idx, p = idx[:keep], p[:keep] / p[:keep].sum()
        return int(idx[self.rng.choice(p.size, p=p)]) if p.size > 1 else int(idx[0])
