"""slmx beside llama.cpp on the same GGUF file, threads and run: decode and prefill tokens/s.

usage: python bench/compare_llamacpp.py [MODEL] [--threads 2] [--rounds 3]
Needs llama-cpp-python (README, "Peers"). The two engines run in alternate subprocesses
(A B A B ...), so both see the same machine load; prints each round and the medians' ratio.
Both measure the same work: a 512-token prompt from an empty cache, then 64 greedy one-token steps.
"""
import argparse
import json
import statistics
import subprocess
import sys

LLAMA = r'''
import json, sys, time
import numpy as np
from llama_cpp import Llama
from slmx.bench import BENCH_TEXT
path, nt, n_prompt, n_dec = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_ctx=1024, n_threads=nt, n_threads_batch=nt, n_batch=512, verbose=False)
ids = llm.tokenize(BENCH_TEXT.encode(), add_bos=True)[:n_prompt]
pre, dec = [], []
for _ in range(3):
    llm.reset(); t = time.perf_counter(); llm.eval(ids); pre.append(len(ids) / (time.perf_counter() - t))
    lg = lambda: np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
    tok = int(lg().argmax()); t = time.perf_counter()
    for _ in range(n_dec):
        llm.eval([tok]); tok = int(lg().argmax())
    dec.append(n_dec / (time.perf_counter() - t))
print(json.dumps(dict(prefill_tokens_per_s=statistics.median(pre), decode_tokens_per_s=statistics.median(dec))))
'''.replace("statistics.median", "__import__('statistics').median")


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="gemma3-270m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--n-decode", type=int, default=64)
    a = ap.parse_args()
    from slmx.registry import resolve
    path = resolve(a.model)
    rows = []
    for r in range(a.rounds):
        s = run([sys.executable, "-m", "slmx.cli", "bench", path, "-t", str(a.threads), "--n-prompt",
                 str(a.n_prompt), "--n-decode", str(a.n_decode), "--json"])
        ll = run([sys.executable, "-c", LLAMA, path, str(a.threads), str(a.n_prompt), str(a.n_decode)])
        rows.append((s, ll))
        print(f"round {r + 1}: decode slmx {s['decode_tokens_per_s']:.1f} llama.cpp {ll['decode_tokens_per_s']:.1f} "
              f"tokens/s | prefill slmx {s['prefill_tokens_per_s']:.1f} llama.cpp "
              f"{ll['prefill_tokens_per_s']:.1f} tokens/s", flush=True)
    for key in ("decode_tokens_per_s", "prefill_tokens_per_s"):
        ratios = [s[key] / ll[key] for s, ll in rows]
        print(f"{key}: slmx median {statistics.median(s[key] for s, _ in rows):.1f}, llama.cpp median "
              f"{statistics.median(ll[key] for _, ll in rows):.1f}, ratio per round "
              f"{', '.join(f'{x:.2f}' for x in ratios)} (median {statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()
