"""Speculative decoding: a cheap drafter proposes k tokens, the target checks them in one forward.

Each round, with the committed sequence s (prompt + generated) whose last token s[-1] is not yet
in the target's KV cache:

    d_1..d_k, q_1..q_k = drafter.propose(s, k)              q_i: the draft's distribution of d_i
    logits = target.forward([s[-1], d_1..d_k], all_logits)   (k + 1, vocab): ONE batched forward
    p_i = the sampler's distribution over logits[i]          (temperature, top-k, top-p)
    accept d_i with probability min(1, p_i(d_i) / q_i(d_i)), in order, until a rejection;
    at the first rejection i: sample from norm(max(0, p_i - q_i)); all accepted: sample the
    bonus token from p_{k+1};
    the target's cache (and the draft model's) are truncated back past the rejected tokens.

This rejection rule (Leviathan et al. 2023, Chen et al. 2023) leaves the distribution of the
output exactly the target's, whatever the drafter proposes. A deterministic drafter (n-gram
lookup, greedy draft) has q_i = one-hot(d_i): accept with probability p_i(d_i), on rejection
sample p_i with d_i removed. Greedy sampling (temperature 0): accept while d_i is the argmax of
logits[i]; the output is token for token the target's own greedy output whenever the batched
forward's argmax equals one-token steps' (see tests/test_speculative.py).

Drafters:
    ModelDrafter(language_model)  another slmx model with the same vocabulary (its own KV cache)
    NgramDrafter(n_max, n_min)    prompt lookup: the continuation of the latest earlier occurrence
                                  of the context's last n-gram; no model
    MTPDrafter(heads)             the target's own multi-token-prediction heads (slmx train --mtp)
"""
import time

import numpy as np

from .generate import GenerationResult, check_prompt

DRAFTS = ("model", "ngram", "mtp")
# Verification forwards run in pieces of at most this many rows: below 16 rows the quantized
# linear takes the same path (and sums) as a one-token step; from 16 rows on, AMX tiles.
_EXACT_ROWS = 15


# --- the target's distribution and the acceptance rule ------------------------------------------

def _histories(sampler, seq, drafts, n):
    """Row i's previous ids (seq + drafts[:i]) when the sampler's penalties read them, else None."""
    if not getattr(sampler, "uses_history", False):
        return None
    return [list(seq) + list(drafts[:i]) for i in range(n)]


def sampler_probs(sampler, logits, histories=None):
    """(n, vocab) float64 probabilities the sampler draws from, one row per logits row (n, vocab);
    histories: per row the previous token ids its penalties read (or None).

    Uses sampler.distribution(row, prev_ids) (slmx.infer.Sampler: the whole pipeline --
    penalties, bias, temperature, top-k, top-p, min-p, typical-p); for a sampler without it,
    temperature -> top-k -> top-p. Rows of a greedy sampler are one-hot at the argmax.
    """
    logits = np.asarray(logits, np.float32)
    logits = logits.reshape(-1, logits.shape[-1])
    n, V = logits.shape
    out = np.zeros((n, V), np.float64)
    f = getattr(sampler, "distribution", None)
    if f is not None:
        for r in range(n):
            ids, p = f(logits[r], None if histories is None else histories[r])
            out[r, ids] = p
        return out
    if sampler.greedy:
        out[np.arange(n), np.argmax(logits, axis=1)] = 1.0
        return out
    k = sampler.top_k if 0 < sampler.top_k < V else V
    for r in range(n):
        row = logits[r]
        idx = np.argpartition(row, -k)[-k:] if k < V else np.arange(V)
        cand = row[idx].astype(np.float64)
        cand[~np.isfinite(cand)] = -np.inf
        order = np.argsort(-cand, kind="stable")
        idx, cand = idx[order], cand[order]
        if not np.isfinite(cand[0]):
            raise ValueError("sampling: every logit is -inf or NaN")
        p = np.exp((cand - cand[0]) / sampler.temperature)
        p /= p.sum()
        if sampler.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), sampler.top_p) + 1)
            idx, p = idx[:keep], p[:keep] / p[:keep].sum()
        out[r, idx] = p
    return out


def accept_draft(p, drafts, q=None, rng=None):
    """The rejection-sampling acceptance of drafted tokens -> (n_accepted, next_token).

    p: (k + 1, vocab) the target's probabilities after each prefix (row i: the distribution of
    the token after d_1..d_i); drafts: (k,) proposed ids; q: (k, vocab) the draft's
    probabilities they were drawn from, or None for a deterministic drafter (one-hot q).
    The returned tokens drafts[:n_accepted] + [next_token] are distributed exactly as k... + 1
    draws from p (the target alone). rng: numpy Generator.
    """
    p = np.asarray(p, np.float64)
    drafts = np.asarray(drafts, np.int64).reshape(-1)
    k = drafts.size
    if p.ndim != 2 or p.shape[0] != k + 1:
        raise ValueError(f"accept_draft: p must be ({k + 1}, vocab) for {k} drafts, got {p.shape}")
    if q is not None:
        q = np.asarray(q, np.float64)
        if q.shape != (k, p.shape[1]):
            raise ValueError(f"accept_draft: q must be ({k}, {p.shape[1]}), got {q.shape}")
    rng = rng if rng is not None else np.random.default_rng()
    if k:
        rows = np.arange(k)
        pd = p[rows, drafts]
        qd = np.ones(k) if q is None else q[rows, drafts]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(qd > 0, pd / np.where(qd > 0, qd, 1.0), 0.0)
        u = rng.random(k)
        rejected = np.flatnonzero(u >= ratio)          # u in [0, 1): ratio >= 1 always accepts
        if rejected.size:
            i = int(rejected[0])
            if q is None:
                res = p[i].copy()
                res[drafts[i]] = 0.0
            else:
                res = np.maximum(p[i] - q[i], 0.0)
            s = res.sum()
            # s > 0 whenever a rejection is possible (p != q); guard rounding anyway
            res = res / s if s > 0 else p[i]
            return i, int(rng.choice(res.size, p=res))
    last = p[k]
    return k, int(rng.choice(last.size, p=last / last.sum()))


def accept_greedy(logits, drafts, best=None):
    """Greedy acceptance -> (n_accepted, next_token): accept while drafts[i] == argmax(logits[i])
    (or best[i]: the greedy choice of each row, e.g. after penalties)."""
    if best is None:
        best = np.argmax(np.asarray(logits).reshape(len(drafts) + 1, -1), axis=1)
    best = np.asarray(best)
    k = len(drafts)
    miss = np.flatnonzero(best[:k] != np.asarray(drafts, np.int64))
    n = int(miss[0]) if miss.size else k
    return n, int(best[n])


# --- drafters ---------------------------------------------------------------------------------

class NgramDrafter:
    """Prompt lookup: find the context's last n-gram (n from n_max down to n_min) earlier in the
    context, latest occurrence first, and propose the up to k tokens that followed it."""

    name = "ngram"

    def __init__(self, n_max=3, n_min=1):
        if not 1 <= int(n_min) <= int(n_max):
            raise ValueError(f"ngram sizes need 1 <= n_min <= n_max, got {n_min}, {n_max}")
        self.n_max, self.n_min = int(n_max), int(n_min)

    def reset(self, prompt_ids):
        pass

    def propose(self, seq, k, sampler):
        a = np.asarray(seq, np.int64)
        L = a.size
        for n in range(min(self.n_max, L - 1), self.n_min - 1, -1):
            pat = a[L - n:]
            # candidate starts j with a[j:j+n] == pat and a continuation a[j+n] inside a[:L-1]...
            hits = np.flatnonzero(a[:L - n] == pat[0])
            for t in range(1, n):
                hits = hits[a[hits + t] == pat[t]]
            if hits.size:
                j = int(hits[-1])
                return [int(x) for x in a[j + n:j + n + k]], None
        return [], None

    def update(self, n_valid, target):
        pass


class ModelDrafter:
    """A draft LanguageModel (slmx.api) with the target's vocabulary; proposes k tokens by
    running its own forward k times (sampling with the target's sampler settings, or greedy)."""

    name = "model"

    def __init__(self, draft, tokenizer=None, vocab_size=None):
        self.model = draft
        self.tr = draft.transformer
        self.cache = draft.cache
        if vocab_size is not None and draft.config.vocab_size != vocab_size:
            raise ValueError(f"draft model vocabulary ({draft.config.vocab_size} tokens) differs from the "
                             f"target's ({vocab_size}): speculative decoding needs the same vocabulary")
        if tokenizer is not None and list(draft.tokenizer.tokens) != list(tokenizer.tokens):
            bad = next((i for i, (a, b) in enumerate(zip(draft.tokenizer.tokens, tokenizer.tokens)) if a != b),
                       min(len(draft.tokenizer.tokens), len(tokenizer.tokens)))
            raise ValueError(f"draft model tokenizer differs from the target's (first at token id {bad}): "
                             "speculative decoding needs the same vocabulary")
        self._seq = []

    def reset(self, prompt_ids):
        self.cache.reset()
        self._seq = []

    def propose(self, seq, k, sampler):
        cached = self.cache.length
        room = self.cache.n_ctx - len(seq) + 1      # positions len(seq)-1+1 .. for the drafts' inputs
        k = min(k, room)
        if k <= 0:
            return [], None
        pending = seq[cached:]
        logits = self.tr.forward(pending, cached, self.cache)
        drafts, qs = [], []
        greedy = sampler.greedy
        hist = list(seq) if getattr(sampler, "uses_history", False) else None
        for i in range(k):
            if greedy:
                t = int(sampler(logits[0], hist)) if hist is not None else int(np.argmax(logits[0]))
            else:
                q = sampler_probs(sampler, logits, None if hist is None else [hist])[0]
                t = int(sampler.rng.choice(q.size, p=q))
                qs.append(q)
            drafts.append(t)
            if hist is not None:
                hist.append(t)
            if i < k - 1:
                logits = self.tr.forward([t], len(seq) + i, self.cache)
        return drafts, (None if greedy else np.stack(qs))

    def update(self, n_valid, target):
        """The committed sequence's first n_valid tokens are what the draft's cache assumed."""
        if self.cache.length > n_valid:
            self.cache.truncate(n_valid)


class MTPDrafter:
    """The target's multi-token-prediction heads: from the final hidden state of the position
    that produced the latest token, head j proposes the token j positions after it."""

    name = "mtp"

    def __init__(self, target):
        heads = getattr(target, "mtp_heads", None)
        if heads is None:
            raise ValueError("draft='mtp' needs a model trained with multi-token-prediction heads "
                             "(slmx train --mtp M)")
        self.heads = heads
        self.target = target
        self._hidden = None

    def reset(self, prompt_ids):
        self._hidden = None
        self.target.keep_hidden = True

    def propose(self, seq, k, sampler):
        if self._hidden is None:
            return [], None
        k = min(k, len(self.heads))
        logits = self.heads(self._hidden)[:k, 0]       # (k, vocab)
        if sampler.greedy:
            return [int(t) for t in np.argmax(logits, axis=1)], None
        q = sampler_probs(sampler, logits, _histories(sampler, seq, [], len(logits)))
        return [int(sampler.rng.choice(q.shape[1], p=row)) for row in q], q

    def update(self, n_valid, row_hidden):
        self._hidden = row_hidden


def make_drafter(draft, draft_model, target_model):
    """The drafter for generate(draft=..., draft_model=...) (see DRAFTS)."""
    if draft is None:
        draft = "model" if draft_model is not None else None
    if draft not in DRAFTS:
        raise ValueError(f"draft must be one of {', '.join(DRAFTS)}, got {draft!r}")
    if draft == "model":
        if draft_model is None:
            raise ValueError("draft='model' needs draft_model (a model or a path)")
        return ModelDrafter(draft_model, target_model.tokenizer, target_model.config.vocab_size)
    if draft_model is not None:
        raise ValueError(f"draft={draft!r} takes no draft_model")
    if draft == "ngram":
        return NgramDrafter()
    return MTPDrafter(target_model.transformer)


# --- the generation loop -------------------------------------------------------------------------

def speculative_generate(transformer, tokenizer, cache, prompt_ids, drafter, num_draft=4, max_new_tokens=128,
                         sampler=None, stop=None, stop_ids=None, on_text=None):
    """generate() with drafted tokens verified by the target in one forward per round.

    Same arguments and GenerationResult as slmx.infer.generate (plus drafter, num_draft: tokens
    proposed per round). result.extra["draft"]: {"kind", "num_draft", "rounds", "proposed",
    "accepted", "rate" (accepted / proposed), "tokens_per_round"}.
    """
    from ..tokenizer import StreamDecoder
    from .sampling import Sampler

    sampler = sampler or Sampler()
    prompt_ids = check_prompt(prompt_ids, cache, max_new_tokens)
    if isinstance(num_draft, bool) or int(num_draft) != num_draft or not 1 <= num_draft <= 64:
        raise ValueError(f"num_draft must be an integer in 1..64, got {num_draft}")
    num_draft = int(num_draft)
    max_new = min(int(max_new_tokens), cache.n_ctx - len(prompt_ids))
    stop = [s for s in ([stop] if isinstance(stop, str) else (stop or [])) if s]
    stop_ids = set(tokenizer.eos_ids if stop_ids is None else stop_ids)
    decoder = StreamDecoder(tokenizer, skip_special=True)
    mtp = isinstance(drafter, MTPDrafter)
    if mtp and num_draft > len(drafter.heads):
        num_draft = len(drafter.heads)

    cache.reset()
    drafter.reset(prompt_ids)
    t0 = time.perf_counter()
    logits = transformer.forward(prompt_ids, 0, cache)      # the prefill, as generate() runs it
    t_prompt = time.perf_counter() - t0

    seq = list(prompt_ids)
    out_ids, finish, hit = [], "length", None
    st = {"text": "", "pending": ""}
    hold = max((len(s) for s in stop), default=1) - 1
    rounds = proposed = accepted = 0

    def push(tokens):
        """Commit tokens (emit text, check stops) -> True when generation is over."""
        nonlocal finish, hit
        for t in tokens:
            if t in stop_ids:
                finish = "stop"
                return True
            out_ids.append(t)
            seq.append(t)
            piece = decoder.push(t)
            if piece:
                st["pending"] += piece
                for s in stop:
                    j = st["pending"].find(s)
                    if j >= 0:
                        hit, st["pending"], finish = s, st["pending"][:j], "stop"
                        return True
                if len(st["pending"]) > hold:
                    n = len(st["pending"]) - hold
                    emit, st["pending"] = st["pending"][:n], st["pending"][n:]
                    st["text"] += emit
                    if on_text:
                        on_text(emit)
            if len(out_ids) >= max_new:
                return True
        return False

    t0 = time.perf_counter()
    done = max_new == 0 or push([sampler(logits[0], seq if sampler.uses_history else None)])
    transformer.rowwise_attention = True       # verification rows computed as one-token steps
    try:
        while not done:
            tlen = len(seq) - 1                       # the target's cache holds seq[:-1]
            k = min(num_draft, max_new - len(out_ids) - 1, cache.n_ctx - tlen - 1)
            drafts, q = drafter.propose(seq, k, sampler) if k > 0 else ([], None)
            drafts = drafts[:max(k, 0)]
            q = None if q is None else q[:len(drafts)]
            ids = [seq[-1]] + drafts
            # rows of at most _EXACT_ROWS: the quantized linear's AMX path (M >= 16) sums differently
            parts, hidden = [], []
            for c in range(0, len(ids), _EXACT_ROWS):
                parts.append(transformer.forward(ids[c:c + _EXACT_ROWS], tlen + c, cache, all_logits=True))
                if mtp:
                    hidden.append(transformer.hidden)
            logits = parts[0] if len(parts) == 1 else np.concatenate(parts)
            hists = _histories(sampler, seq, drafts, len(ids))
            if sampler.greedy:
                best = None if hists is None and not len(getattr(sampler, "bias_ids", ())) else \
                    [sampler(logits[i], None if hists is None else hists[i]) for i in range(len(ids))]
                n_acc, tok = accept_greedy(logits, drafts, best)
            else:
                n_acc, tok = accept_draft(sampler_probs(sampler, logits, hists), drafts, q, sampler.rng)
            rounds += 1
            proposed += len(drafts)
            accepted += n_acc
            cache.truncate(tlen + 1 + n_acc)
            drafter.update(len(seq) + n_acc, np.concatenate(hidden)[n_acc:n_acc + 1] if mtp else None)
            done = push(drafts[:n_acc] + [tok])
    finally:
        transformer.rowwise_attention = False
        if mtp:
            transformer.keep_hidden = False
    t_decode = time.perf_counter() - t0
    text, pending = st["text"], st["pending"]
    if finish == "length" and len(out_ids) >= max_new and max_new < max_new_tokens:
        finish = "context"
    if hit is None:
        pending += decoder.flush()
    text += pending
    if on_text and pending:
        on_text(pending)
    stats = {"kind": drafter.name, "num_draft": num_draft, "rounds": rounds, "proposed": proposed,
             "accepted": accepted, "rate": accepted / proposed if proposed else 0.0,
             "tokens_per_round": len(out_ids) / rounds if rounds else 0.0}
    return GenerationResult(
        text=text, token_ids=out_ids, prompt_ids=prompt_ids, finish_reason=finish,
        prompt_tokens_per_s=len(prompt_ids) / t_prompt if t_prompt > 0 else float("inf"),
        # as generate() counts: the tokens after the first (which comes from the prefill's logits)
        decode_tokens_per_s=(len(out_ids) - 1) / t_decode if t_decode > 0 and len(out_ids) > 1 else 0.0,
        prompt_seconds=t_prompt, decode_seconds=t_decode, stop=hit, extra={"draft": stats})
