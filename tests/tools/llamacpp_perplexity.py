"""Record llama.cpp's `llama-perplexity` figure on a text (tests/fixtures/gemma3_llamacpp_perplexity.json).

usage: python tests/tools/llamacpp_perplexity.py MODEL.gguf TEXT.txt CTX > out.json

llama-cpp-python has no perplexity tool, so this follows llama.cpp's perplexity() through its API:
the whole text tokenized once (BOS added as the vocabulary asks, special tokens not parsed), cut
into len // CTX non-overlapping chunks of CTX tokens, the first token of each chunk replaced by BOS,
each chunk evaluated in one batch from an empty KV cache with logits for every position, and
-log softmax(logits[j])[token j+1] summed for j in [CTX/2, CTX-2] (max in float, sum of expf in
double, as llama.cpp's log_softmax). Perplexity = exp(total / count).
"""
import json
import math
import sys

import numpy as np
from llama_cpp import Llama, __version__


def main(model, text_path, ctx):
    text = open(text_path, encoding="utf-8").read()
    llm = Llama(model_path=model, n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True, n_threads=2,
                n_threads_batch=2, verbose=False)
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    bos = llm.token_bos()
    n_chunk = len(tokens) // ctx
    if n_chunk < 2:
        raise SystemExit(f"{len(tokens)} tokens: at least 2 * ctx = {2 * ctx} are needed")
    first = ctx // 2
    chunk_nll, count = [], 0
    for i in range(n_chunk):
        chunk = list(tokens[i * ctx:(i + 1) * ctx])
        chunk[0] = bos
        llm.reset()
        llm.eval(chunk)
        lg = np.array(llm.scores[:ctx], dtype=np.float32)
        tot = 0.0
        for j in range(first, ctx - 1):
            row = lg[j]
            m = row.max()
            s = float(np.exp(row - m).astype(np.float64).sum())
            tot += -(float(row[chunk[j + 1]] - m) - math.log(s))
        chunk_nll.append(tot)
        count += ctx - 1 - first
    ppl = math.exp(sum(chunk_nll) / count)
    json.dump(dict(
        about=f"llama.cpp's perplexity method via llama-cpp-python {__version__} (AVX-512 build, 2 threads) on "
              f"{model.rsplit('/', 1)[-1]}; produced by tests/tools/llamacpp_perplexity.py",
        text_file=text_path.rsplit("/", 1)[-1], ctx=ctx, tokens=[int(t) for t in tokens], n_chunks=n_chunk,
        chunk_nll=chunk_nll, n_scored=count, ppl=ppl), sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
