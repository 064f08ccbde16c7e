"""Token sampling: a pipeline of logit processors and truncation filters, then one seeded draw.

The pipeline, in this order (each stage is skipped when it is off):

1. penalties over the previous tokens (the last `repeat_last_n` of the prompt + generated ids;
   llama.cpp semantics): a token seen `c` times in that window has its logit divided by
   `repeat_penalty` if positive, multiplied by it if negative, then lowered by
   `c * frequency_penalty + presence_penalty`.
2. logit bias: `logit_bias[id]` is added to token id's logit (-inf bans the token).
3. temperature: logits / temperature. Temperature 0 is greedy: the argmax of the logits after
   stages 1-2, no randomness (top_k 1 is greedy too).
4. top-k: keep the k largest.
5. top-p: keep the smallest set of the most likely tokens whose probability (renormalised over
   what top-k kept) reaches p.
6. min-p: keep tokens whose probability is at least min_p times the most likely one's.
7. typical-p: keep the tokens whose information -log p is closest to the entropy of what is
   left until their mass exceeds typical_p (Meister et al., llama.cpp's `typical`).
8. one draw from the renormalised survivors (`numpy.random.Generator(seed)`).

Every filter keeps at least the most likely token, so the candidate set is never empty. Tokens whose
probability is below e^-50 of the most likely one's (their total mass is below float64 rounding for
any vocabulary up to 2^24) are dropped before the filters; that is what keeps the work per token
small at a 262144-token vocabulary without a full sort. NaN logits, +inf logits, or every token at
-inf are ValueErrors.

Log-probabilities (`token_logprobs`) are those of the model's own distribution: the log-softmax of
the raw logits, before penalties, bias, temperature and truncation. They do not depend on the
sampling settings (so greedy, sampled and beam-searched outputs report comparable numbers), sum to
perplexity over a text, and equal what beam search scores.
"""
import math
from dataclasses import dataclass

import numpy as np

PIPELINE_ORDER = ("repeat_penalty/frequency_penalty/presence_penalty", "logit_bias", "temperature",
                  "top_k", "top_p", "min_p", "typical_p")

# Candidates whose logit is more than _CUT * temperature below the best have probability below
# e^-_CUT relative to it; e^-50 * 2^24 < 2^-52, so dropping them all changes no float64 probability.
_CUT = 50.0
_BLOCK = 512      # tokens per block of the dense draw


def _is_int(v):
    if v is None or isinstance(v, bool) or not isinstance(v, (int, np.integer, float, np.floating)):
        return False
    return math.isfinite(v) and int(v) == v


PENALTY_MAX = 1e4      # |frequency_penalty|, |presence_penalty| at most this


def _finite(name, v, lo=None, hi=None, lo_open=False, hi_open=False):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    v = float(v)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {v}")
    return v


def top_k_indices(x, k):
    """Indices (k,) of the k largest values of x (V,), in no particular order. Exact, without a
    full argpartition in the common case: a threshold from a strided subsample selects a few hundred
    candidates, which are partitioned; if fewer than k pass, the full argpartition runs."""
    V = x.size
    k = int(k)
    if k >= V:
        return np.arange(V)
    if k * 8 >= V or V < 8192:
        return np.argpartition(x, V - k)[V - k:]
    stride = V // 4096
    sub = x[::stride]
    r = min(sub.size, 4 * (k // stride + 2))
    thr = np.partition(sub, sub.size - r)[sub.size - r]
    cand = np.flatnonzero(x >= thr)
    if cand.size < k:
        return np.argpartition(x, V - k)[V - k:]
    if cand.size > k:
        cand = cand[np.argpartition(x[cand], cand.size - k)[cand.size - k:]]
    return cand


def _descending_prefix(p, mass, strict=False, key=None):
    """Positions, in order of `key` descending (default: p), of the shortest prefix whose cumulative
    p reaches `mass` (>= mass, or > mass with strict), at least one. Sorts only as much as needed."""
    key = p if key is None else key
    n = p.size
    m = 64
    while True:
        if m >= n:
            order = np.argsort(-key, kind="stable")
        else:
            part = np.argpartition(-key, m - 1)[:m]
            order = part[np.argsort(-key[part], kind="stable")]
        cs = np.cumsum(p[order], dtype=np.float64)
        if m >= n or cs[-1] > mass or (not strict and cs[-1] >= mass):
            keep = int(np.searchsorted(cs, mass, side="right" if strict else "left")) + 1
            return order[:min(keep, order.size)]
        m *= 16


class Sampler:
    """Chooses the next token id from (vocab,) logits through the pipeline in the module docstring.

    temperature: >= 0 (0 = greedy); top_k: >= 0 (0 = off); top_p: [0, 1] (1 = off, 0 = the most likely token only);
    min_p: [0, 1] (0 = off); typical_p: (0, 1] (1 = off); repeat_penalty: > 0 (1 = off);
    repeat_last_n: how many previous tokens the penalties look at (0 = none, -1 = all);
    frequency_penalty, presence_penalty: in [-1e4, 1e4] (0 = off); logit_bias: {token id: bias} (ids as
    ints or decimal strings; bias finite or -inf); seed: int >= 0 for a reproducible stream of draws.

    `sampler(logits, prev_ids)` -> token id; `sampler.distribution(logits, prev_ids)` -> the
    candidate ids and their probabilities the draw is made from.
    """

    def __init__(self, temperature=0.8, top_k=40, top_p=0.95, seed=None, *, min_p=0.0, typical_p=1.0,
                 repeat_penalty=1.0, repeat_last_n=64, frequency_penalty=0.0, presence_penalty=0.0,
                 logit_bias=None):
        if temperature is None:
            raise ValueError("temperature must be >= 0, got None")
        self.temperature = _finite("temperature", temperature, lo=0.0)
        if top_k is not None and not (_is_int(top_k) and top_k >= 0):
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k}")
        self.top_k = int(top_k or 0)
        self.top_p = 1.0 if top_p is None else _finite("top_p", top_p, 0.0, 1.0)
        if self.top_p == 0.0:     # nothing but the most likely token (as the server and OpenAI read it)
            self.top_p, self.top_k = 1.0, 1
        self.min_p = 0.0 if min_p is None else _finite("min_p", min_p, 0.0, 1.0)
        self.typical_p = 1.0 if typical_p is None else _finite("typical_p", typical_p, 0.0, 1.0, lo_open=True)
        self.repeat_penalty = 1.0 if repeat_penalty is None else _finite("repeat_penalty", repeat_penalty, 0.0,
                                                                         lo_open=True)
        if repeat_last_n is None:
            repeat_last_n = 64
        if not (_is_int(repeat_last_n) and repeat_last_n >= -1):
            raise ValueError(f"repeat_last_n must be an integer >= -1 (0 = none, -1 = all), got {repeat_last_n}")
        self.repeat_last_n = int(repeat_last_n)
        # bounded so count x penalty stays far inside float32 (|1e4 x n_ctx| << 3e38)
        self.frequency_penalty = _finite("frequency_penalty", frequency_penalty or 0.0, -PENALTY_MAX, PENALTY_MAX)
        self.presence_penalty = _finite("presence_penalty", presence_penalty or 0.0, -PENALTY_MAX, PENALTY_MAX)
        if seed is not None and not (_is_int(seed) and seed >= 0):
            raise ValueError(f"seed must be an integer >= 0, got {seed}")
        self.seed = None if seed is None else int(seed)
        self.bias_ids, self.bias_values = self._check_bias(logit_bias)
        self.logit_bias = dict(zip(self.bias_ids.tolist(), self.bias_values.tolist()))
        self._bias_max = int(self.bias_ids.max()) if self.bias_ids.size else -1
        self.rng = np.random.default_rng(self.seed)
        self._work = None

    @staticmethod
    def _check_bias(logit_bias):
        if not logit_bias:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if not isinstance(logit_bias, dict):
            raise ValueError(f"logit_bias must be a dict {{token id: bias}}, got {type(logit_bias).__name__}")
        ids, vals = [], []
        for k, v in logit_bias.items():
            try:
                i = int(k) if not isinstance(k, (bool, float)) else None
            except (TypeError, ValueError):
                i = None
            if i is None or i < 0 or (isinstance(k, str) and k.strip() != str(i)):
                raise ValueError(f"logit_bias: token id {k!r} is not an integer >= 0")
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or \
                    math.isnan(v) or v == math.inf or (v != -math.inf and abs(v) > 1e30):
                raise ValueError(f"logit_bias[{k!r}] must be a finite number (|bias| <= 1e30) or -inf, got {v!r}")
            if i in ids:
                raise ValueError(f"logit_bias: token id {i} is given twice")
            ids.append(i)
            vals.append(float(v))
        return np.asarray(ids, np.int64), np.asarray(vals, np.float32)

    @property
    def greedy(self):
        """True when the choice is the argmax (temperature 0 or top_k 1): no draw is made."""
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def uses_history(self):
        """True when the penalties need the previous token ids."""
        return self.repeat_last_n != 0 and (self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0
                                            or self.presence_penalty != 0.0)

    def process(self, logits, prev_ids=None):
        """Stages 1-2: float32 logits (V,) after penalties and bias. The input is not modified: the
        result is a buffer reused across calls, or the input itself when nothing applies."""
        x = np.asarray(logits).reshape(-1)
        V = x.size
        if V == 0:
            raise ValueError("sampling: empty logits")
        window = None
        if self.uses_history and prev_ids is not None and len(prev_ids):
            n = self.repeat_last_n
            window = np.asarray(prev_ids[-n:] if n > 0 else prev_ids, dtype=np.int64).reshape(-1)
        if self._bias_max >= V:
            raise ValueError(f"logit_bias: token id {self._bias_max} is out of range [0, {V})")
        if (window is None or not window.size) and not self.bias_ids.size and x.dtype == np.float32:
            return x
        self._buffers(V)
        w = self._w
        np.copyto(w, x, casting="unsafe")
        if window is not None and window.size:
            ids, counts = np.unique(window, return_counts=True)
            if ids[0] < 0 or ids[-1] >= V:
                raise ValueError(f"sampling: previous token id out of range [0, {V})")
            v = w[ids]
            if self.repeat_penalty != 1.0:
                v = np.where(v > 0, v / np.float32(self.repeat_penalty), v * np.float32(self.repeat_penalty))
            w[ids] = v - (counts * self.frequency_penalty + self.presence_penalty).astype(np.float32)
        if self.bias_ids.size:
            w[self.bias_ids] += self.bias_values
        return w

    def _buffers(self, V):
        """Per-vocabulary buffers, allocated once: w (processed logits), z (scaled logits) and e
        (unnormalised probabilities, padded with zeros to whole blocks of _BLOCK)."""
        if self._work is None or self._work[0] != V:
            vp = -(-V // _BLOCK) * _BLOCK
            self._w = np.empty(V, np.float32)
            self._z = np.empty(V, np.float32)
            self._s = np.empty(V, np.float32)
            self._e_pad = np.zeros(vp, np.float32)
            self._e = self._e_pad[:V]
            self._work = (V,)

    def _max(self, w):
        m = float(w.max())
        if m != m:
            raise ValueError("sampling: the logits contain NaN")
        if m == math.inf:
            raise ValueError("sampling: the logits contain +inf")
        if m == -math.inf:
            raise ValueError("sampling: every token has logit -inf (all banned)")
        return m

    def _candidates(self, logits, prev_ids):
        """Run the pipeline. Returns ("greedy", token), ("sparse", ids, z) with z float64 the scaled
        logits of the survivors (max 0), or ("dense", None, None) when every token survives with
        p proportional to self._e."""
        w = self.process(logits, prev_ids)
        m = self._max(w)
        if self.greedy:
            return "greedy", int(np.argmax(w)), None
        T = self.temperature
        V = w.size
        if 0 < self.top_k < V:
            idx = top_k_indices(w, self.top_k)
            z = (w[idx].astype(np.float64) - m) / T          # <= 0; the best token has 0
            ok = z > -math.inf
            if not ok.all():
                idx, z = idx[ok], z[ok]
            if self.top_p < 1.0 and idx.size > 1:
                p = np.exp(z)
                p /= p.sum()
                keep = _descending_prefix(p, self.top_p)
                idx, z = idx[keep], z[keep]
        else:
            # the whole vocabulary, in float32 buffers: z = (w - m) / T, e = exp(z) (0 for -inf)
            self._buffers(V)
            z32, e = self._z, self._e
            np.subtract(w, np.float32(m), out=z32)
            # 1/T kept inside float32's normal range: never 0 * -inf or 0 * inf (NaN) at extreme T
            np.multiply(z32, np.float32(min(max(1.0 / T, 1.2e-38), 1e30)), out=z32)
            np.exp(z32, out=e)                                # exp(-inf) = 0: banned tokens stay out
            if self.top_p < 1.0:
                total = float(e.sum(dtype=np.float64))
                tau = -1.0
                while True:     # a threshold whose survivors hold >= top_p of the mass, then exact
                    mask = z32 >= tau
                    if tau <= -_CUT or float(np.add.reduce(e, where=mask, dtype=np.float64)) >= self.top_p * total:
                        break
                    tau *= 2.0
                idx = np.flatnonzero(mask)
                p = e[idx].astype(np.float64) / total
                keep = _descending_prefix(p, self.top_p)
                idx = idx[keep]
                z = z32[idx].astype(np.float64)
            elif self.min_p > 0.0:
                idx = np.flatnonzero(z32 >= np.float32(math.log(self.min_p)))
                z = z32[idx].astype(np.float64)
            elif self.typical_p < 1.0:
                # entropy H = log(total) - sum(e z) / total; keep by |-log p - H| ascending
                total = float(e.sum(dtype=np.float64))
                zc = self._s
                np.maximum(z32, np.float32(-110.0), out=zc)    # e is exactly 0 there; no 0 * -inf
                h = math.log(total) - float(np.dot(e, zc)) / total
                np.subtract(np.float32(math.log(total) - h), zc, out=zc)   # = -log p - H
                np.abs(zc, out=zc)
                np.negative(zc, out=zc)
                zc[e == 0] = -np.inf
                target = self.typical_p * total
                width = 0.25
                while True:     # a score band holding > typical_p of the mass, then exact inside it
                    mask = zc >= np.float32(-width)
                    if width > 1e4 or float(np.add.reduce(e, where=mask, dtype=np.float64)) > target:
                        break
                    width *= 2.0
                cand = np.flatnonzero(mask & (e > 0))
                sel = cand[_descending_prefix(e[cand].astype(np.float64) / total, self.typical_p, strict=True,
                                              key=zc[cand])]
                return "sparse", sel, z32[sel].astype(np.float64)
            else:
                return "dense", None, None
        if self.min_p > 0.0 and idx.size > 1:
            keep = z >= math.log(self.min_p)             # p_i >= min_p * p_max; p_max has z = 0
            idx, z = idx[keep], z[keep]
        if self.typical_p < 1.0 and idx.size > 1:
            p = np.exp(z)
            p /= p.sum()
            with np.errstate(divide="ignore", invalid="ignore"):
                logp = np.log(p)
                ent = -float(np.sum(np.where(p > 0, p * logp, 0.0)))
                score = np.abs(-logp - ent)
            order = np.argsort(score, kind="stable")
            cs = np.cumsum(p[order])
            keep = int(np.searchsorted(cs, self.typical_p, side="right")) + 1
            sel = order[:min(keep, order.size)]
            idx, z = idx[sel], z[sel]
        return "sparse", idx, z

    def distribution(self, logits, prev_ids=None):
        """(ids int64 (n,), probs float64 (n,)): the candidates the next token is drawn from and their
        probabilities (summing to 1). Greedy: ([argmax], [1.0])."""
        kind, idx, z = self._candidates(logits, prev_ids)
        if kind == "greedy":
            return np.array([idx], np.int64), np.ones(1)
        if kind == "dense":
            idx = np.flatnonzero(self._e > 0)
            p = self._e[idx].astype(np.float64)
        else:
            p = np.exp(z)
        return idx, p / p.sum()

    def __call__(self, logits, prev_ids=None):
        """The next token id (int) for logits (V,) after previous ids prev_ids (prompt + generated;
        only read when penalties are on)."""
        kind, idx, z = self._candidates(logits, prev_ids)
        if kind == "greedy":
            return idx
        if kind == "sparse":
            if idx.size == 1:
                return int(idx[0])
            cs = np.cumsum(np.exp(z))
            j = int(np.searchsorted(cs, self.rng.random() * cs[-1], side="right"))
            return int(idx[min(j, idx.size - 1)])
        # dense: find the block by block sums, then the token inside the block
        blocks = self._e_pad.reshape(-1, _BLOCK)
        cb = np.cumsum(blocks.sum(axis=1, dtype=np.float64))
        u = self.rng.random() * cb[-1]
        j = min(int(np.searchsorted(cb, u, side="right")), cb.size - 1)
        inner = np.cumsum(blocks[j], dtype=np.float64)
        k = min(int(np.searchsorted(inner, u - (cb[j - 1] if j else 0.0), side="right")), _BLOCK - 1)
        if blocks[j, k] == 0.0:          # rounding at a block edge: the nearest token with mass
            nz = np.flatnonzero(blocks[j])
            k = int(nz[np.searchsorted(nz, k) - 1]) if nz[0] < k else int(nz[0])
        return j * _BLOCK + k


@dataclass
class TokenLogprob:
    """Log-probability of a chosen token under the model's distribution (log-softmax of the raw
    logits), with the top-n alternatives as (token id, logprob) pairs, most likely first."""
    token_id: int
    logprob: float
    top: list


def log_softmax(logits):
    """float64 (V,) log-softmax of logits (V,)."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    m = z.max()
    if not math.isfinite(m):
        if m != m:
            raise ValueError("log_softmax: the logits contain NaN")
        if m == -math.inf:
            raise ValueError("log_softmax: every logit is -inf")
    return z - (m + math.log(np.exp(z - m).sum()))


def token_logprobs(logits, token_id, top_n=0, _buf=None):
    """TokenLogprob of token_id under softmax(logits (V,)), with the top_n most likely tokens.
    Computed in float32 exp / float64 sums, no full-vocabulary float64 copy."""
    x = np.asarray(logits).reshape(-1)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    m = float(x.max())
    if not math.isfinite(m):
        raise ValueError("logprobs: the logits are NaN, +inf or all -inf")
    buf = _buf if _buf is not None and _buf.size == x.size else np.empty_like(x)
    np.subtract(x, np.float32(m), out=buf)
    np.exp(buf, out=buf)
    log_z = m + math.log(float(buf.sum(dtype=np.float64)))
    top = []
    if top_n:
        ids = top_k_indices(x, min(int(top_n), x.size))
        ids = ids[np.argsort(-x[ids], kind="stable")]
        top = [(int(i), float(x[i]) - log_z) for i in ids]
    return TokenLogprob(int(token_id), float(x[int(token_id)]) - log_z, top)
