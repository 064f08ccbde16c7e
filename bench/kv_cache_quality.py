"""KV-cache formats on one model: bytes per token, perplexity and greedy agreement against f32.

    PYTHONPATH=. python bench/kv_cache_quality.py [-m MODEL] [--text FILE] [--chars N]
        [--prompts N] [--new N] [--threads N]

For each kv_cache_type (f32, f16, q8_0, q4_0):
  bytes/token        every layer's K and V of one position; the memory at n_ctx with the ring
                     buffers of sliding-window layers
  ppl llama.cpp      llama.cpp's perplexity method at ctx 256 on tests/fixtures/perplexity_text.txt
  ppl sliding        sliding-window perplexity (ctx 1024, stride 512) on --text (first --chars chars),
                     scored rows run 64 at a time (chunked prefill over the cache)
  top-1 (forced)     share of scored rows whose argmax equals the f32 cache's: the ctx-256 rows
                     (as bench/kv_cache_quality_llamacpp.py for llama.cpp) and the sliding run's
  greedy             over --prompts prompts, --new greedy tokens each: share of tokens equal to the
                     f32 cache's at the same position, and the mean length of the common prefix
"""
import argparse
import os
import time

import numpy as np

import slmx
from slmx.eval.perplexity import perplexity

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "tests", "fixtures", "perplexity_text.txt")
PROMPTS = [
    "The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):",
    "The three laws of thermodynamics are", "My favourite recipe for pancakes",
    "In 1969, the first humans", "The best way to learn a new language is", "Photosynthesis is the process",
    "Here is a short poem about the sea:", "To install the package, run", "The history of the Roman Empire",
    "Water boils at", "A good night's sleep", "The stock market", "Machine learning models",
    "The old lighthouse keeper",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default="gemma3-270m")
    ap.add_argument("--text", default=None, help="long text for the sliding perplexity (default: the fixture)")
    ap.add_argument("--chars", type=int, default=24000)
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--types", default="f32,f16,q8_0,q4_0")
    a = ap.parse_args()
    types = a.types.split(",")
    m = slmx.load(a.model, n_ctx=2048, threads=a.threads)
    fixture = open(FIXTURE, encoding="utf-8").read()
    long_text = open(a.text, encoding="utf-8").read()[:a.chars] if a.text else fixture
    rows, ref_argmax, ref_greedy = {}, None, None
    for t in types:
        m.cache = m.make_cache(t)
        c = m.cache
        t0 = time.perf_counter()
        p1 = perplexity(m, fixture, ctx=256, method="llama.cpp")
        # argmax of the rows llama.cpp's method scores (compare bench/kv_cache_quality_llamacpp.py)
        fx = m.tokenizer.encode(fixture, add_bos=True)
        fx_argmax = []
        for i in range(len(fx) // 256):
            chunk = [fx[0]] + list(fx[i * 256 + 1:(i + 1) * 256])
            c.reset()
            m.transformer.forward(chunk[:128], 0, c)
            fx_argmax.append(m.transformer.forward(chunk[128:255], 128, c, all_logits=True).argmax(axis=1))
        fx_argmax = np.concatenate(fx_argmax)
        ids = m.tokenizer.encode(long_text, add_bos=True)
        # sliding perplexity, keeping the argmax of every scored row for the forced agreement
        argmax, nll, n = [], 0.0, 0
        ctx, stride = 1024, 512
        for s in range(0, max(1, len(ids) - 1), stride):
            w = ids[s:s + ctx]
            if len(w) < 2:
                break
            first = 1 if s == 0 else ctx - stride
            c.reset()
            if first > 1:
                m.transformer.forward(w[:first - 1], 0, c)
            for j in range(first - 1, len(w) - 1, 64):      # rows predicting w[j+1 ..]: 64 at a time
                e = min(len(w) - 1, j + 64)
                z = m.transformer.forward(w[j:e], j, c, all_logits=True).astype(np.float64)
                mx = z.max(axis=1, keepdims=True)
                lse = np.log(np.exp(z - mx).sum(axis=1)) + mx[:, 0]
                tgt = np.asarray(w[j + 1:e + 1], np.int64)
                nll += float((lse - z[np.arange(len(tgt)), tgt]).sum())
                n += len(tgt)
                argmax.append(z.argmax(axis=1))
            if s + ctx >= len(ids):
                break
        argmax = np.concatenate(argmax)
        greedy = [m.generate(p, max_new_tokens=a.new, temperature=0, add_bos=True).token_ids
                  for p in PROMPTS[:a.prompts]]
        if ref_argmax is None:
            ref_argmax, ref_greedy, ref_fx = argmax, greedy, fx_argmax
        same = sum(sum(x == y for x, y in zip(g, r)) for g, r in zip(greedy, ref_greedy))
        total = sum(len(r) for r in ref_greedy)
        prefix = []
        for g, r in zip(greedy, ref_greedy):
            k = 0
            while k < min(len(g), len(r)) and g[k] == r[k]:
                k += 1
            prefix.append(k)
        rows[t] = dict(fx_top1=float((fx_argmax == ref_fx).mean()), bpt=c.bytes_per_token, mem=c.bytes_for(m.n_ctx), ppl_lc=p1.ppl,
                       ppl_sl=float(np.exp(nll / n)), n_sl=n, forced=float((argmax == ref_argmax).mean()),
                       greedy=same / max(total, 1), prefix=float(np.mean(prefix)) if prefix else 0.0, secs=time.perf_counter() - t0)
        r = rows[t]
        print(f"{t:5s} bytes/token {r['bpt']:6d}  KV at n_ctx={m.n_ctx}: {r['mem'] / 2**20:6.2f} MiB  "
              f"ppl llama.cpp(ctx 256) {r['ppl_lc']:.4f}  ppl sliding(1024/512, {r['n_sl']} tok) "
              f"{r['ppl_sl']:.4f}  top-1 vs f32 (ctx-256 rows {r['fx_top1']:.4f}, sliding rows {r['forced']:.4f})  greedy tokens = f32 {r['greedy']:.3f}  "
              f"common prefix {r['prefix']:.1f}/{a.new}  ({r['secs']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
