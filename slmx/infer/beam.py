"""Beam search with Hugging Face transformers' semantics (`generate(num_beams=..., length_penalty=...,
early_stopping=...)`, do_sample=False, one prompt).

Each step every running beam's next-token log-probabilities (log-softmax of the model's logits) are
added to its running sum; the best K = max(2, 1 + number of EOS ids) * num_beams continuations over
all beams are kept. A continuation that ends (an EOS token, or the length limit) and ranks among
the first num_beams becomes a finished hypothesis with

    score = sum of its tokens' log-probabilities / generated_length ** length_penalty

(generated_length counts the new tokens, EOS included); the best num_beams finished hypotheses are
kept. The best num_beams continuations that did not end are the next running beams. It stops when
every token of the length budget is used; or, with early_stopping=True, as soon as num_beams
hypotheses are finished; or when the best running beam cannot beat the worst finished hypothesis
(early_stopping=False: judged at the current length; "never": at the longest possible length when
length_penalty > 0). length_penalty > 0 favours longer sequences, < 0 shorter ones.

Every beam has its own KV cache; when beams are reordered, a cache whose beam is continued by one
child is handed over, and extra children of the same parent get a copy of its filled rows. The
beams' next tokens run in one batched forward (Transformer.forward_batch) when the model has one.
num_beams=1 is greedy decoding.
"""
import math
import numbers
import time
from dataclasses import dataclass

import numpy as np

from .sampling import TokenLogprob, log_softmax, top_k_indices

_NEG = -1.0e9


@dataclass
class Beam:
    """One returned hypothesis. token_ids: the new tokens (the EOS that ended it is not included);
    score: sum_logprob / n ** length_penalty with n = len(token_ids) (+1 for the EOS);
    finish_reason: "stop" (EOS) or "length"."""
    token_ids: list
    score: float
    sum_logprob: float
    finish_reason: str
    eos_id: int = None
    text: str = ""
    logprobs: list = None       # with logprobs: a TokenLogprob per token of token_ids

    @property
    def n_scored(self):
        return len(self.token_ids) + (self.finish_reason == "stop")


def check_beam_options(num_beams, length_penalty, early_stopping):
    if isinstance(num_beams, bool) or not isinstance(num_beams, (int, np.integer)) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float, np.floating)) or \
            not np.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")


def _copy_rows(dst, src, length):
    """dst's first `length` positions := src's (a cache may provide copy_from for its own layout)."""
    if hasattr(src, "copy_from"):
        dst.copy_from(src, length)
    else:
        dst.k[:, :length] = src.k[:, :length]
        dst.v[:, :length] = src.v[:, :length]
    dst.length = length


def beam_search(transformer, new_cache, prompt_ids, num_beams=4, max_new_tokens=32, length_penalty=1.0,
                early_stopping=False, eos_ids=(), first_cache=None, logprobs=False, top_logprobs=0,
                timings=None):
    """The num_beams best continuations of prompt_ids (list of ints) -> list of Beam, best first.

    new_cache(n_ctx) makes an empty KV cache (first_cache, if given, is used for the first beam and
    must have the layout new_cache gives: forks copy rows between them);
    transformer.forward(ids, pos, cache) -> (1, vocab) logits. eos_ids end a hypothesis.
    logprobs: each Beam gets .logprobs, a TokenLogprob per token (with top_logprobs alternatives).
    timings: a dict, given -> timings["prompt_seconds"] is set to the prompt's forward time.
    """
    check_beam_options(num_beams, length_penalty, early_stopping)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Real) or \
            not math.isfinite(max_new_tokens) or int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1 for beam search, got {max_new_tokens!r}")
    prompt_ids = [int(i) for i in prompt_ids]
    if not prompt_ids:
        raise ValueError("beam search: the prompt is empty (no tokens)")
    n = int(num_beams)
    P = len(prompt_ids)
    max_len = P + int(max_new_tokens)
    eos = np.array(sorted(set(int(e) for e in eos_ids)), np.int64)
    K = max(2, 1 + eos.size) * n
    cache0 = first_cache if first_cache is not None else new_cache(max_len)
    if cache0.n_ctx < max_len - 1:
        raise ValueError(f"beam search: prompt + max_new_tokens = {max_len} exceeds the context of "
                         f"{cache0.n_ctx} tokens")
    cache0.reset()
    t0 = time.perf_counter()
    logits = transformer.forward(prompt_ids, 0, cache0)
    if timings is not None:
        timings["prompt_seconds"] = time.perf_counter() - t0
    V = logits.shape[-1]
    if K > V:
        raise ValueError(f"num_beams {n} is too large for a vocabulary of {V} tokens")
    caches = [cache0]                    # caches[b] holds running beam b's positions
    seqs = [[]]                          # running beams' new tokens
    tlps = [[]] if logprobs else None    # and their TokenLogprobs
    lps = [log_softmax(logits[0])]       # their next-token log-probabilities
    run_scores = np.zeros(1)
    fin = []                             # finished: (score, sum_logprob, tokens incl. EOS, reason)
    cur = P
    improvable = True
    spare = []                           # caches no longer used by any beam
    tops = {}

    def token_lp(b, t):
        if b not in tops:
            tops[b] = []
            if top_logprobs:
                ids = top_k_indices(lps[b], top_logprobs)
                ids = ids[np.argsort(-lps[b][ids], kind="stable")]
                tops[b] = [(int(i), float(lps[b][i])) for i in ids]
        return TokenLogprob(int(t), float(lps[b][t]), tops[b])

    while True:
        tops.clear()
        acc = (np.stack(lps) + run_scores[:, None]).reshape(-1)   # (beams * V,)
        top = np.argpartition(acc, acc.size - K)[acc.size - K:] if K < acc.size else np.arange(acc.size)
        top = top[np.lexsort((top, -acc[top]))]                   # best first; ties: lower index first
        cand_score, parent, tok = acc[top], top // V, top % V
        new_len = cur + 1
        ends_eos = np.isin(tok, eos)
        hits = ends_eos | (new_len >= max_len)
        # finished hypotheses: only among the first n continuations
        all_done = len(fin) == n
        if improvable and not (all_done and early_stopping is True):
            denom = float(new_len - P) ** length_penalty
            for r in np.flatnonzero(hits[:n]):
                fin.append((cand_score[r] / denom, cand_score[r], seqs[parent[r]] + [int(tok[r])],
                            "stop" if ends_eos[r] else "length",
                            tlps[parent[r]] + [token_lp(parent[r], tok[r])] if logprobs else None))
            fin.sort(key=lambda h: -h[0])
            del fin[n:]
        if hits.all():
            break
        keep = np.flatnonzero(~hits)[:n]                          # the next running beams, best first
        run_scores = cand_score[keep]
        parents = parent[keep]
        # reorder caches: the first child of a parent takes its cache, later children copy it
        used, new_caches = set(), []
        pool = spare + [caches[b] for b in range(len(caches)) if b not in set(parents.tolist())]
        spare = []
        for p in parents.tolist():
            if p not in used:
                used.add(p)
                new_caches.append(caches[p])
            else:
                c = pool.pop() if pool else new_cache(max_len)
                _copy_rows(c, caches[p], cur)
                new_caches.append(c)
        spare = pool
        caches = new_caches
        if logprobs:
            tlps = [tlps[p] + [token_lp(p, t)] for p, t in zip(parents.tolist(), tok[keep].tolist())]
        seqs = [seqs[p] + [int(t)] for p, t in zip(parents.tolist(), tok[keep].tolist())]
        cur = new_len
        # can a running beam still beat the worst finished hypothesis?
        if early_stopping == "never" and length_penalty > 0.0:
            best_len = max_len - P
        else:
            best_len = cur - P
        if len(fin) == n:
            improvable = improvable and run_scores[0] / float(best_len) ** length_penalty > fin[-1][0]
        if not improvable or (len(fin) == n and early_stopping is True):
            break
        batch = getattr(transformer, "forward_batch", None)
        if batch is not None and 1 < len(seqs) <= getattr(transformer, "max_batch", 0):
            # every beam's next token in one pass (each weight read once per step)
            lg = batch([s[-1] for s in seqs], [cur - 1] * len(seqs), caches)
            lps = [log_softmax(lg[b]) for b in range(len(seqs))]
        else:
            lps = [log_softmax(transformer.forward([s[-1]], cur - 1, c)[0]) for s, c in zip(seqs, caches)]
    out = []
    for score, slp, toks, reason, tl in fin:
        stop = reason == "stop"
        out.append(Beam(token_ids=toks[:-1] if stop else toks, score=float(score), sum_logprob=float(slp),
                        finish_reason=reason, eos_id=toks[-1] if stop else None,
                        logprobs=(tl[:-1] if stop else tl) if logprobs else None))
    return out
