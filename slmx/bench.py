"""End-to-end throughput: prefill and decode tokens/s of a model (backs `slmx bench` and asv)."""
import statistics
import time

import numpy as np

BENCH_TEXT = "The quick brown fox jumps over the lazy dog. " * 120


def model_throughput(model, n_prompt=512, n_decode=64, repeats=3):
    """dict with median prefill and decode tokens/s over `repeats` runs.

    Prefill: one forward over an n_prompt-token prompt (from an empty cache). Decode: n_decode
    single-token forwards that follow it, greedy (argmax of each step's logits).
    """
    ids = model.tokenizer.encode(BENCH_TEXT, add_bos=True)[:n_prompt]
    if len(ids) < n_prompt:
        ids = (ids * (n_prompt // max(1, len(ids)) + 1))[:n_prompt]
    if n_prompt + n_decode > model.n_ctx:
        raise ValueError(f"bench: {n_prompt} + {n_decode} tokens exceed n_ctx {model.n_ctx}")
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
