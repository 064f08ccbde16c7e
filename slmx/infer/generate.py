"""The generation loop: prefill the prompt in batches, then one token at a time over the KV cache."""
import math
import numbers
import time
from dataclasses import dataclass, field

import numpy as np

from .sampling import Sampler, token_logprobs


@dataclass
class GenerationResult:
    """What generate() returns. token_ids are the new tokens only."""
    text: str
    token_ids: list
    prompt_ids: list
    finish_reason: str               # "stop" (EOS or a stop string), "length" (max_new_tokens) or "context"
    prompt_tokens_per_s: float
    decode_tokens_per_s: float
    prompt_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop: str = None
    extra: dict = field(default_factory=dict)
    logprobs: list = None            # with logprobs=True: a TokenLogprob per token of token_ids
    beams: list = None               # with num_beams > 1: every returned Beam, best first

    def __str__(self):
        return self.text


def check_logprobs(logprobs, top_logprobs, vocab_size):
    """(want logprobs, top n) from the options; top_logprobs > 0 implies logprobs."""
    if top_logprobs is None:
        top_logprobs = 0
    if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, (int, np.integer)) or \
            not 0 <= top_logprobs <= vocab_size:
        raise ValueError(f"top_logprobs must be an integer in [0, {vocab_size}], got {top_logprobs!r}")
    return bool(logprobs) or top_logprobs > 0, int(top_logprobs)



def check_prompt(prompt_ids, cache, max_new_tokens):
    """The prompt as a list of ints, after checking it fits `cache` and max_new_tokens is a count."""
    prompt_ids = [int(i) for i in prompt_ids]
    if not prompt_ids:
        raise ValueError("generate: the prompt is empty (no tokens)")
    if len(prompt_ids) >= cache.n_ctx:
        raise ValueError(f"generate: prompt of {len(prompt_ids)} tokens does not fit the context of "
                         f"{cache.n_ctx} tokens")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Real) or \
            not math.isfinite(max_new_tokens) or int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    return prompt_ids

def generate(transformer, tokenizer, cache, prompt_ids, max_new_tokens=128, sampler=None, stop=None,
             stop_ids=None, on_text=None, logprobs=False, top_logprobs=0, context_shift=False,
             n_keep=None):
    """Continue `prompt_ids` with up to max_new_tokens tokens.

    stop: strings that end generation (not included in .text); stop_ids: token ids that end it
    (default: the tokenizer's end-of-sequence ids). on_text(str) receives text as it is decoded.
    logprobs / top_logprobs: record a TokenLogprob (log-softmax of the model's raw logits, before
    penalties and temperature) for each new token, with the top_logprobs most likely alternatives.
    The sampler's penalties see the prompt and the generated ids.
    context_shift: when the cache is full, keep the first n_keep tokens (default: 1 when the
    prompt starts with BOS, else 0), drop half of the rest (the oldest) and go on — the cached
    keys are re-rotated to their new positions (`transformer.shift_cache`, as llama.cpp: fast;
    the deeper layers' cached k, v still carry what the dropped tokens contributed), or the kept
    tokens recomputed — always with context_shift="recompute" (exactly a fresh prefill), else
    when a ring buffer no longer holds them.
    """
    if context_shift not in (False, True, "recompute"):
        raise ValueError(f"context_shift must be False, True or 'recompute', got {context_shift!r}")
    from ..tokenizer import StreamDecoder

    sampler = sampler or Sampler()
    prompt_ids = check_prompt(prompt_ids, cache, max_new_tokens)
    room = cache.n_ctx - len(prompt_ids)
    max_new = int(max_new_tokens) if context_shift else min(int(max_new_tokens), room)
    if n_keep is None:
        bos = getattr(tokenizer, "bos_id", None)
        n_keep = 1 if bos is not None and prompt_ids[0] == bos else 0
    if isinstance(n_keep, bool) or int(n_keep) != n_keep or not 0 <= n_keep < cache.n_ctx - 1:
        raise ValueError(f"n_keep must be an integer in [0, {cache.n_ctx - 1}), got {n_keep}")
    n_keep = int(n_keep)
    ctx = list(prompt_ids) if context_shift else None    # the tokens the cache holds
    stop = [s for s in ([stop] if isinstance(stop, str) else (stop or [])) if s]
    stop_ids = set(tokenizer.eos_ids if stop_ids is None else stop_ids)
    want_lp, top_n = check_logprobs(logprobs, top_logprobs, getattr(tokenizer, "vocab_size", 1 << 30))
    lps = [] if want_lp else None
    history = list(prompt_ids) if sampler.uses_history else None
    decoder = StreamDecoder(tokenizer, skip_special=True)   # control tokens are not text

    cache.reset()
    t0 = time.perf_counter()
    logits = transformer.forward(prompt_ids, 0, cache)
    t_prompt = time.perf_counter() - t0

    out_ids, text, finish, hit = [], "", "length", None
    pending = ""            # text held back while it could be the start of a stop string
    hold = max((len(s) for s in stop), default=1) - 1
    t0 = time.perf_counter()
    pos = len(prompt_ids)
    n_forward = 0           # decode forwards timed (the first new token comes from the prefill)
    for step in range(max_new):
        tok = sampler(logits[0], history)
        if tok in stop_ids:
            finish = "stop"
            break
        out_ids.append(tok)
        if history is not None:
            history.append(tok)
        if lps is not None:
            lps.append(token_logprobs(logits[0], tok, top_n))
        piece = decoder.push(tok)
        if piece:
            pending += piece
            for s in stop:
                j = pending.find(s)
                if j >= 0:
                    hit, pending, finish = s, pending[:j], "stop"
                    break
            if hit is None and len(pending) > hold:
                emit, pending = pending[:len(pending) - hold], pending[len(pending) - hold:]
                text += emit
                if on_text:
                    on_text(emit)
        if hit is not None or step == max_new - 1:
            break
        if pos >= cache.n_ctx:                   # only with context_shift
            n_discard = max(1, (pos - n_keep) // 2)
            ctx = ctx[:n_keep] + ctx[n_keep + n_discard:]
            if context_shift == "recompute" or not transformer.shift_cache(cache, n_keep, n_discard):
                cache.reset()
                transformer.forward(ctx, 0, cache)
            pos -= n_discard
        logits = transformer.forward([tok], pos, cache)
        if ctx is not None:
            ctx.append(tok)
        pos += 1
        n_forward += 1
    t_decode = time.perf_counter() - t0
    if finish == "length" and len(out_ids) >= max_new and max_new < max_new_tokens:
        finish = "context"      # the KV cache (n_ctx) ran out before max_new_tokens
    if hit is None:
        pending += decoder.flush()
    text += pending
    if on_text and pending:
        on_text(pending)
    return GenerationResult(
        text=text, token_ids=out_ids, prompt_ids=prompt_ids, finish_reason=finish,
        prompt_tokens_per_s=len(prompt_ids) / t_prompt if t_prompt > 0 else float("inf"),
        decode_tokens_per_s=n_forward / t_decode if t_decode > 0 and n_forward else 0.0,
        prompt_seconds=t_prompt, decode_seconds=t_decode, stop=hit, logprobs=lps)
