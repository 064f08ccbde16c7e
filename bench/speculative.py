"""Speculative decoding against plain decoding: speed-up and acceptance, greedy, alternating runs.

    python bench/speculative.py -m gemma3-270m --draft ngram --prompt code --rounds 5
    python bench/speculative.py -m runs/target --draft-model runs/draft --prompt stdlib
    python bench/speculative.py -m runs/mtp --draft mtp --num-draft 3 --prompt stdlib

Each round runs plain greedy generation and then speculative greedy generation of the same prompt
(A B A B ...; run it under a lock on a shared machine). Reported: median decode tokens/s of
each (tokens after the first / decode seconds: the first token comes from the prefill in both),
the median of the per-round ratios (speed-up), acceptance rate (accepted / proposed drafts),
tokens per target forward, and (greedy) whether the speculative tokens equal the plain ones
(they must).
"""
import argparse
import json
import os
import statistics
import sys

PROMPTS = {
    "code": ("def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n\n"
             "def factorial(n):\n    if n < 2:\n        return 1\n    return n * factorial(n - 1)\n\n\n"
             "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
             "        self.items.append(item)\n\n    def pop(self):\n        return self.items.pop()\n\n"
             "    def peek(self):\n"),
    "repeat": ("Copy the text exactly.\n\nText: The quick brown fox jumps over the lazy dog. A journey of a "
               "thousand miles begins with a single step. All that glitters is not gold.\n\nCopy: The quick"),
    "generic": "The history of the city of Rome begins",
    "stdlib": ("import os\nimport sys\n\n\ndef main(argv=None):\n    if argv is None:\n        argv = sys.argv[1:]\n"
               "    for name in argv:\n        if os.path.isdir(name):\n            print(name)\n\n\n"
               "def walk(path):\n    for name in os.listdir(path):\n"),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-m", "--model", default="gemma3-270m", help="target: GGUF, name or training folder")
    p.add_argument("--draft-model", default=None, help="draft model (same vocabulary)")
    p.add_argument("--draft", default=None, choices=["model", "ngram", "mtp"])
    p.add_argument("--num-draft", type=int, default=4)
    p.add_argument("--prompt", default="code", help=f"one of {', '.join(PROMPTS)} or literal text")
    p.add_argument("-n", type=int, default=96, help="new tokens per run")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0: greedy (speculative tokens must equal plain ones); > 0: sampling with top-k 40, "
                        "top-p 0.95, seed = round (outputs differ; acceptance is the sampling one)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import slmx

    prompt = PROMPTS.get(a.prompt, a.prompt)
    model = slmx.load(a.model, threads=a.threads)
    draft_model = slmx.load(a.draft_model, threads=a.threads) if a.draft_model else None
    model.generate(prompt, max_new_tokens=4, temperature=0)          # warm-up
    plain, spec, ratios, stats, same = [], [], [], [], True
    acc = prop = 0
    for i in range(a.rounds):
        kw = dict(max_new_tokens=a.n, temperature=a.temperature, top_k=40, top_p=0.95, seed=i)
        r0 = model.generate(prompt, **kw)
        r1 = model.generate(prompt, draft_model=draft_model, draft=a.draft, num_draft=a.num_draft, **kw)
        plain.append(r0.decode_tokens_per_s)
        spec.append(r1.decode_tokens_per_s)
        ratios.append(r1.decode_tokens_per_s / r0.decode_tokens_per_s)
        stats.append(r1.extra["draft"])
        acc += r1.extra["draft"]["accepted"]
        prop += r1.extra["draft"]["proposed"]
        same = same and r0.token_ids == r1.token_ids
    d = dict(stats[-1], accepted=acc, proposed=prop, rate=acc / prop if prop else 0.0,
             tokens_per_round=statistics.median(x["tokens_per_round"] for x in stats))
    if a.temperature > 0:
        same = None
    out = {"model": a.model, "draft": d["kind"], "draft_model": a.draft_model, "num_draft": a.num_draft,
           "prompt": a.prompt, "temperature": a.temperature, "new_tokens": len(r0.token_ids), "threads": model.threads, "rounds": a.rounds,
           "plain_tok_s": statistics.median(plain), "spec_tok_s": statistics.median(spec),
           "speedup": statistics.median(ratios), "acceptance_rate": d["rate"], "proposed": d["proposed"],
           "accepted": d["accepted"], "tokens_per_round": d["tokens_per_round"], "greedy_identical": same}
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{out['model']} <- {out['draft']}{' ' + a.draft_model if a.draft_model else ''} "
              f"(k={a.num_draft}), prompt {a.prompt!r}, temperature {a.temperature:g}, "
              f"{out['new_tokens']} tokens, {a.rounds} rounds, "
              f"{model.threads} threads")
        print(f"  plain {out['plain_tok_s']:.1f} tok/s | speculative {out['spec_tok_s']:.1f} tok/s | "
              f"speed-up x{out['speedup']:.2f} (median of rounds)")
        print(f"  acceptance {out['acceptance_rate']:.3f} ({d['accepted']}/{d['proposed']}, all rounds), "
              f"{d['tokens_per_round']:.2f} tokens per target forward (median), greedy identical: "
              f"{'n/a (sampling)' if same is None else same}")
    return 1 if same is False else 0


if __name__ == "__main__":
    sys.exit(main())
