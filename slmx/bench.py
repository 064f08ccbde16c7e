"""End-to-end throughput: prefill and decode tokens/s of a model (backs `slmx bench` and asv)."""
import contextlib
import statistics
import time

import numpy as np

BENCH_TEXT = "The quick brown fox jumps over the lazy dog. " * 120


def check_bench_args(n_prompt, n_decode, repeats, names=("n_prompt", "n_decode", "repeats")):
    """(n_prompt, n_decode, repeats) as ints; ValueError naming the option (from ``names``) when one
    is out of range (n_prompt >= 1, n_decode >= 0, repeats >= 1)."""
    out = []
    for name, v, lo in zip(names, (n_prompt, n_decode, repeats), (1, 0, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"bench: {name} must be an integer >= {lo}, got {v!r}")
        out.append(int(v))
    return tuple(out)


# `slmx bench` options that apply to one mode only: (attribute, option); given = not None / not False
MODEL_ONLY_OPTIONS = (("n_prompt", "--n-prompt"), ("n_decode", "--n-decode"), ("repeats", "--repeats"))
ROOFLINE_ONLY_OPTIONS = (("quick", "--quick"), ("png", "--png"), ("clock", "--clock"))


def check_bench_mode(roofline, options):
    """ValueError naming the first option in ``options`` (a dict attribute -> value; None or False
    = not given) that does not apply to this mode of `slmx bench`: a model's throughput
    (``roofline`` False) or the roofline."""
    for attr, opt in (MODEL_ONLY_OPTIONS if roofline else ROOFLINE_ONLY_OPTIONS):
        v = options.get(attr)
        if v is not None and v is not False:
            what = "a model's prefill/decode benchmark, not to `slmx bench roofline`" if roofline else \
                "`slmx bench roofline`, not to a model's benchmark"
            raise ValueError(f"{opt} applies only to {what}")


def model_throughput(model, n_prompt=512, n_decode=64, repeats=3):
    """dict with median prefill and decode tokens/s over `repeats` runs.

    Prefill: one forward over an n_prompt-token prompt (from an empty cache). Decode: n_decode
    single-token forwards that follow it, greedy (argmax of each step's logits).
    """
    n_prompt, n_decode, repeats = check_bench_args(n_prompt, n_decode, repeats)
    if n_prompt + n_decode > model.n_ctx:
        raise ValueError(f"bench: {n_prompt} + {n_decode} tokens exceed n_ctx {model.n_ctx}")
    tok = model.tokenizer
    bos = getattr(tok, "bos_id", None)
    # a BOS only when the vocabulary has one (trained tokenizers need not)
    ids = [int(i) for i in tok.encode(BENCH_TEXT, add_bos=bos is not None)][:n_prompt]
    if not ids:
        ids = [0 if bos is None else int(bos)]
    if len(ids) < n_prompt:
        ids = (ids * (n_prompt // len(ids) + 1))[:n_prompt]
    with getattr(model, "lock", None) or contextlib.nullcontext():     # one call at a time (slmx.api)
        return _throughput(model, ids, n_decode, repeats)


def _throughput(model, ids, n_decode, repeats):
    tr, cache = model.transformer, model.cache
    pre, dec = [], []
    for _ in range(repeats):
        cache.reset()
        t0 = time.perf_counter()
        logits = tr.forward(ids, 0, cache)
        pre.append(len(ids) / (time.perf_counter() - t0))
        tok = int(np.argmax(logits[0]))
        t0 = time.perf_counter()
        for i in range(n_decode):
            logits = tr.forward([tok], len(ids) + i, cache)
            tok = int(np.argmax(logits[0]))
        dec.append(n_decode / (time.perf_counter() - t0))
    wb = tr.weight_bytes
    d = statistics.median(dec)
    return dict(prefill_tokens_per_s=statistics.median(pre), decode_tokens_per_s=d,
                prefill_runs=pre, decode_runs=dec, n_prompt=len(ids), n_decode=n_decode,
                threads=tr.threads, weight_bytes=wb, decode_weight_gb_per_s=d * wb / 1e9)
