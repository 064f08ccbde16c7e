"""How much the logits of a prompt move with the prefill chunk size: slmx beside llama.cpp.

    python bench/chunk_invariance.py [MODEL.gguf] [--tokens 256] [--chunks 1 8 15 16] [--no-amx]

slmx runs the prompt (tests/fixtures/perplexity_text.txt, BOS first) through
``Transformer.forward(all_logits=True, chunk=c)`` for each chunk size c and for the full prompt,
and prints max / mean |logit difference| and the share of positions whose argmax agrees with the
full-prompt run. llama.cpp (llama-cpp-python, if installed) does the same with ``n_ubatch`` = c.
Different chunk sizes change float summation orders (the VNNI row kernels below 16 rows, AMX
tiles from 16, the attention's key split); the 8-bit activation quantization then turns any such
rounding difference into whole quantization steps, so the spread is of the order of the
quantization noise itself (compare the slmx-vs-llama.cpp line; llama.cpp's n_ubatch = 1 moves its
logits as much as slmx's chunk = 1). ``--no-amx`` keeps every linear
on the row kernels (then only the attention differs). A measurement, not a test.
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = os.path.join(HERE, "..", "tests", "fixtures", "perplexity_text.txt")


def _stats(a, b):
    d = np.abs(a - b)
    return f"max|d| {d.max():.3f}  mean|d| {d.mean():.4f}  argmax agree {(a.argmax(-1) == b.argmax(-1)).mean():.4f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="gemma3-270m")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--chunks", type=int, nargs="*", default=[1, 8, 15, 16])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-amx", action="store_true")
    a = p.parse_args()

    import slmx
    from slmx._kernels import quant

    m = slmx.load(a.model, threads=a.threads)
    if a.no_amx:
        quant._set_amx(False)
    text = open(TEXT, encoding="utf-8").read()
    bos = m.tokenizer.bos_id if m.tokenizer.bos_id is not None else 2
    ids = [bos] + list(m.tokenizer.encode(text))[:a.tokens - 1]
    n = len(ids)

    def run(chunk):
        cache = m.make_cache("f32", n)
        return m.transformer.forward(np.array(ids), 0, cache, all_logits=True, chunk=chunk).copy()

    full = run(min(n, m.transformer.max_batch))
    print(f"# {n} tokens of {os.path.basename(TEXT)}; {a.threads} threads; amx {'off' if a.no_amx else 'as available'}")
    for c in a.chunks:
        print(f"slmx      chunk {c:4d} vs {n}: {_stats(run(c), full)}", flush=True)
    try:
        import llama_cpp
    except ImportError:
        print("# llama-cpp-python not installed: no peer lines")
        return

    def run_ll(nb):
        ll = llama_cpp.Llama(m.path, n_ctx=n, n_batch=nb, n_ubatch=nb, n_threads=a.threads, logits_all=True,
                             verbose=False)
        ll.eval(ids)
        out = np.array(ll.scores[:n], np.float32)
        del ll
        return out

    lfull = run_ll(n)
    for c in a.chunks:
        print(f"llama.cpp n_ubatch {c:4d} vs {n}: {_stats(run_ll(c), lfull)}", flush=True)
    print(f"slmx {n} vs llama.cpp {n}: {_stats(full, lfull)}")


if __name__ == "__main__":
    sys.exit(main())
