"""Regenerate the llama.cpp reference in tests/fixtures/gemma3_llamacpp_handed.json (greedy part).

usage: python tests/tools/llamacpp_reference.py MODEL.gguf > out.json
Needs llama-cpp-python (see README, "Peers"). Prints, for each prompt: prompt ids (BOS, special tokens
parsed), 64 greedy ids, and the gap between llama.cpp's two best logits at every step.
"""
import json
import sys

import numpy as np
from llama_cpp import Llama

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three primary colors are", "In 1969, the first human to walk on the Moon was"]


def main(path, n_gen=64):
    llm = Llama(model_path=path, n_ctx=4096, n_threads=2, n_threads_batch=2, verbose=False, n_batch=512)
    out = []
    for p in PROMPTS:
        ids = llm.tokenize(p.encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        greedy, margin = [], []
        for _ in range(n_gen):
            lg = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
            top = np.sort(lg)[-2:]
            tok = int(lg.argmax())
            greedy.append(tok)
            margin.append(float(top[1] - top[0]))
            llm.eval([tok])
        out.append(dict(prompt=p, prompt_ids=ids, greedy=greedy, top2_margin=margin))
    json.dump(dict(prompts=out), sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
