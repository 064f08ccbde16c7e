"""The peer figures for bench/kv_cache_quality.py: llama.cpp (llama-cpp-python) with its KV cache as
F16, Q8_0, Q4_0 (flash attention on, as llama.cpp requires for a quantized V), llama.cpp's perplexity
method at ctx 256 on tests/fixtures/perplexity_text.txt, and the share of scored rows whose argmax
equals the F16 cache's.

    python bench/kv_cache_quality_llamacpp.py MODEL.gguf [TEXT [CHARS]]
"""
import math
import os
import sys

import numpy as np
from llama_cpp import Llama

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = os.path.join(HERE, "..", "tests", "fixtures", "perplexity_text.txt")


def run(model, type_kv, ctx=256, text_path=TEXT, chars=None):
    llm = Llama(model_path=model, n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True, n_threads=1,
                n_threads_batch=1, verbose=False, flash_attn=True, type_k=type_kv, type_v=type_kv)
    text = open(text_path, encoding="utf-8").read()[:chars]
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    bos, first = llm.token_bos(), ctx // 2
    nll, count, argmax = 0.0, 0, []
    for i in range(len(tokens) // ctx):
        chunk = list(tokens[i * ctx:(i + 1) * ctx])
        chunk[0] = bos
        llm.reset()
        llm.eval(chunk)
        lg = np.array(llm.scores[:ctx], dtype=np.float64)
        for j in range(first, ctx - 1):
            row = lg[j]
            m = row.max()
            nll += -(row[chunk[j + 1]] - m - math.log(np.exp(row - m).sum()))
            count += 1
            argmax.append(int(row.argmax()))
    return math.exp(nll / count), np.array(argmax)


def main(model, text_path=TEXT, chars=None):
    ref = None
    for name, t in (("f16", 1), ("q8_0", 8), ("q4_0", 2)):
        ppl, am = run(model, t, text_path=text_path, chars=chars)
        ref = am if ref is None else ref
        print(f"llama.cpp {name:5s} ppl(ctx 256) {ppl:.4f}  top-1 vs f16 {float((am == ref).mean()):.4f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], *(sys.argv[2:3] or [TEXT]), *(int(x) for x in sys.argv[3:4]))
