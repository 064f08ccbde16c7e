"""Perplexity over a token stream.

Method "sliding" (the Hugging Face method): windows of `ctx` tokens start every `stride` tokens;
each window scores only the tokens no earlier window scored, so every token after the first is
scored exactly once, with up to ctx - stride tokens of context before it (all of them in the
first window). stride == ctx gives independent chunks; a small stride gives each token more
context and costs ctx / stride times the compute.

    perplexity = exp( sum of -log p(token | its window before it) / number of scored tokens )

Method "llama.cpp" (llama.cpp's `llama-perplexity`): the text tokenized once (BOS first when the
vocabulary adds one), cut into len // ctx non-overlapping chunks of ctx tokens (the tail is dropped);
the first token of every chunk is replaced by BOS, and each chunk, run from an empty cache, scores
only its second half: the predictions of tokens ctx/2 + 1 .. ctx - 1 (ctx - 1 - ctx/2 per chunk).
It needs at least 2 * ctx tokens; stride does not apply. Its figures are comparable with
llama.cpp's at the same ctx (tested against llama.cpp on Gemma 3 270M).

Bits per byte: the summed negative log-likelihood in bits over the UTF-8 bytes of the scored
tokens (each token's bytes, control tokens none), comparable across tokenizers.

A method is a function (model, ids, ctx, stride, progress) -> (nll_sum, n_scored, n_windows,
scored_ids) registered in METHODS.
"""
import contextlib
import math
import sys
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class PerplexityResult:
    method: str
    nll_sum: float          # nats, summed over the scored tokens
    n_tokens: int           # tokens scored
    n_windows: int
    ctx: int
    stride: int
    n_input_tokens: int = 0  # tokens of the text
    n_text_bytes: int = 0   # UTF-8 bytes of the text (for per-byte measures)
    seconds: float = 0.0
    n_scored_bytes: int = 0  # UTF-8 bytes of the scored tokens

    @property
    def nll(self):
        """Mean negative log-likelihood, nats per token."""
        return self.nll_sum / self.n_tokens if self.n_tokens else float("nan")

    @property
    def bits_per_byte(self):
        """Negative log-likelihood in bits per UTF-8 byte of the scored tokens."""
        return self.nll_sum / math.log(2) / self.n_scored_bytes if self.n_scored_bytes else float("nan")

    @property
    def ppl(self):
        v = self.nll
        return math.exp(v) if v == v and v < 700 else float("inf")


def window_nll(model, ids, first):
    """-log p(ids[j] | ids[:j]) summed over j in [max(first, 1), len(ids)), from one forward of the
    window (model.logits(ids) -> (T, vocab)). Log-softmax in float64, a block of rows at a time."""
    ids = np.asarray(ids, dtype=np.int64)
    logits = model.logits([int(i) for i in ids])
    first = max(1, int(first))
    tot = 0.0
    for r0 in range(first - 1, len(ids) - 1, 64):
        r1 = min(len(ids) - 1, r0 + 64)
        z = np.asarray(logits[r0:r1], dtype=np.float64)
        m = z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z - m).sum(axis=1)) + m[:, 0]
        tgt = ids[r0 + 1:r1 + 1]
        tot += float((lse - z[np.arange(r1 - r0), tgt]).sum())
    return tot


def sliding_window_nll(model, ids, ctx, stride, progress=False):
    """(nll_sum, n_scored, n_windows) of the sliding-window method over token ids."""
    n = len(ids)
    if ctx < 2:
        raise ValueError(f"perplexity: ctx must be at least 2, got {ctx}")
    if not 1 <= stride <= ctx:
        raise ValueError(f"perplexity: stride must be in [1, ctx={ctx}], got {stride}")
    if n < 2:
        raise ValueError(f"perplexity: the text has {n} token(s); at least 2 are needed")
    starts = []
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + ctx, n)
        starts.append((begin, end, prev_end))
        prev_end = end
        if end == n:
            break
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(starts), desc="perplexity", unit="window", file=sys.stderr, mininterval=0.5)
        except ImportError:  # pragma: no cover
            bar = None
    tot, scored = 0.0, 0
    for begin, end, prev in starts:
        first = prev - begin            # window positions before this are context only
        tot += window_nll(model, ids[begin:end], first)
        scored += end - max(prev, begin + 1)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"ppl {math.exp(tot / max(1, scored)):.3f}", refresh=False)
    if bar is not None:
        bar.close()
    return tot, scored, len(starts), np.asarray(ids[1:], dtype=np.int64)


def _second_half_nll(model, chunk, first):
    """-log p(chunk[j+1] | chunk[:j+1]) summed over j in [first, len-2], from an empty cache. With an
    slmx model the first half runs without logits and only the scored rows are projected."""
    tr, cache = getattr(model, "transformer", None), getattr(model, "cache", None)
    if tr is None or cache is None:
        return window_nll(model, chunk, first + 1)
    with getattr(model, "lock", None) or contextlib.nullcontext():     # the model may be shared by threads
        cache.reset()
        tr.forward(chunk[:first], 0, cache)
        logits = tr.forward(chunk[first:], first, cache, all_logits=True)    # rows = positions first..n-1
    tgt = np.asarray(chunk[first + 1:], dtype=np.int64)
    tot = 0.0
    for r0 in range(0, len(tgt), 64):
        r1 = min(len(tgt), r0 + 64)
        z = np.asarray(logits[r0:r1], dtype=np.float64)
        m = z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z - m).sum(axis=1)) + m[:, 0]
        tot += float((lse - z[np.arange(r1 - r0), tgt[r0:r1]]).sum())
    return tot


def llamacpp_nll(model, ids, ctx, stride=None, progress=False):
    """(nll_sum, n_scored, n_chunks, scored ids) of llama.cpp's perplexity method (module docstring)."""
    n = len(ids)
    if ctx < 4:
        raise ValueError(f"perplexity: ctx must be at least 4 for the llama.cpp method, got {ctx}")
    if n < 2 * ctx:
        raise ValueError(f"perplexity: the llama.cpp method needs at least 2 * ctx = {2 * ctx} tokens; "
                         f"the text has {n}")
    bos = getattr(model.tokenizer, "bos_id", None)
    n_chunk = n // ctx
    first = ctx // 2
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=n_chunk, desc="perplexity", unit="chunk", file=sys.stderr, mininterval=0.5)
        except ImportError:  # pragma: no cover
            bar = None
    tot, scored, targets = 0.0, 0, []
    for i in range(n_chunk):
        chunk = [int(t) for t in ids[i * ctx:(i + 1) * ctx]]
        if bos is not None and getattr(model.tokenizer, "add_bos", True):
            chunk[0] = int(bos)
        tot += _second_half_nll(model, chunk, first)
        scored += ctx - 1 - first
        targets.append(chunk[first + 1:])
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"ppl {math.exp(tot / scored):.3f}", refresh=False)
    if bar is not None:
        bar.close()
    return tot, scored, n_chunk, np.asarray(targets, dtype=np.int64).reshape(-1)


METHODS = {"sliding": sliding_window_nll, "llama.cpp": llamacpp_nll}


def _token_bytes(tokenizer, ids):
    """Total UTF-8 bytes of the tokens ids (control tokens count 0)."""
    if tokenizer is None or not len(ids):
        return 0
    uniq, counts = np.unique(np.asarray(ids, dtype=np.int64), return_counts=True)
    lens = np.array([len(tokenizer.token_to_piece(int(t), special=False)) for t in uniq], dtype=np.int64)
    return int((lens * counts).sum())


def perplexity(model, text_or_ids, ctx=None, stride=None, method="sliding", progress=False):
    """Perplexity of `model` (an slmx LanguageModel: .logits, .tokenizer, .n_ctx) over a text (str,
    encoded with the tokenizer's defaults) or token ids -> PerplexityResult.

    ctx: window / chunk length (default: the model's n_ctx, at most 512); stride: default ctx // 2
    (sliding only). method: "sliding" or "llama.cpp" (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"perplexity: unknown method {method!r} (known: {', '.join(METHODS)})")
    for name, v in (("ctx", ctx), ("stride", stride)):      # None is the default; 0 is not
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise ValueError(f"perplexity: {name} must be a positive integer (or None for the default), got {v!r}")
    ctx = min(model.n_ctx, 512) if ctx is None else int(ctx)
    if ctx > model.n_ctx:
        raise ValueError(f"perplexity: ctx {ctx} exceeds the model's context of {model.n_ctx} tokens")
    stride = max(1, ctx // 2) if stride is None else int(stride)
    n_bytes = 0
    if isinstance(text_or_ids, str):
        n_bytes = len(text_or_ids.encode("utf-8", "surrogatepass"))
        ids = model.tokenizer.encode(text_or_ids)
    else:
        ids = [int(i) for i in text_or_ids]
    t0 = time.perf_counter()
    tot, n, w, scored = METHODS[method](model, ids, ctx, stride, progress=progress)
    if method == "llama.cpp":
        stride = ctx
    return PerplexityResult(method, tot, n, w, ctx, stride, len(ids), n_bytes, time.perf_counter() - t0,
                            _token_bytes(getattr(model, "tokenizer", None), scored))
