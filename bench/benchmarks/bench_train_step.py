"""Training throughput: tokens/s of full steps (forward_backward + clip + AdamW) of the "tiny"
preset (vocab 8192) at batch 8 x 256 with 2 threads, fp32 and bf16 (AMX when the OS grants it).

``python bench/benchmarks/bench_train_step.py`` prints slmx beside PyTorch eager on the same
architecture (../shared/tools/torch_train_ref.py when present), alternating the runs so both see
the same machine load, and the per-kernel time of one slmx step.
"""
import collections
import json
import os
import subprocess
import sys
import time

import numpy as np

THREADS = 2
B, T = 8, 256
TORCH_REF = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "tools", "torch_train_ref.py")


def train_step_throughput(bf16=False, steps=5, warmup=2, threads=THREADS, profile=False):
    """dict(tokens_per_s, step_s[, kernels_ms]) of tiny at (B, T) = (8, 256)."""
    from slmx._kernels import train_ops
    from slmx.train import optim
    from slmx.train.model import TrainableLM, make_config
    model = TrainableLM(make_config("tiny", vocab_size=8192), seed=0, threads=threads, bf16=bf16)
    opt = optim.AdamW(model.buf, 3e-4, weight_decay=0.1, threads=threads)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 8192, (B, T)).astype(np.int32)
    y = rng.integers(0, 8192, (B, T)).astype(np.int32)
    spent = collections.defaultdict(float)
    originals = {}
    if profile:
        for name in dir(train_ops):
            f = getattr(train_ops, name)
            if callable(f) and name.endswith(("_forward", "_backward")):
                def timed(*a, _f=f, _n=name, **k):
                    t0 = time.perf_counter()
                    r = _f(*a, **k)
                    spent[_n] += time.perf_counter() - t0
                    return r
                originals[name] = f
                setattr(train_ops, name, timed)

    def step():
        model.zero_grad()
        model.forward_backward(x, y, 1.0 / (B * T))
        t0 = time.perf_counter()
        optim.clip_grad_norm(model.buf, 1.0, threads=threads)
        opt.step()
        spent["clip + adamw"] += time.perf_counter() - t0

    try:
        for _ in range(warmup):
            step()
        spent.clear()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        dt = (time.perf_counter() - t0) / steps
    finally:
        for name, f in originals.items():
            setattr(train_ops, name, f)
    out = dict(impl="slmx", bf16=bf16, threads=threads, tokens_per_s=B * T / dt, step_s=dt,
               amx=bool(bf16 and train_ops.amx_usable()))
    if profile:
        out["kernels_ms"] = {k: round(v / steps * 1e3, 1) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
    return out


def torch_reference(bf16=False, threads=THREADS):
    """The PyTorch eager reference (same architecture, batch, threads) in a subprocess, or None."""
    if not os.path.exists(TORCH_REF):
        return None
    arg = json.dumps({"threads": threads, "bf16": bool(bf16)})
    r = subprocess.run([sys.executable, TORCH_REF, arg], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


class TrainStep:
    timeout = 900
    number = 1
    repeat = 1

    def setup_cache(self):
        return {"fp32": train_step_throughput(False), "bf16": train_step_throughput(True)}

    def track_fp32_tokens_per_s(self, r):
        return r["fp32"]["tokens_per_s"]
    track_fp32_tokens_per_s.unit = "tokens/s"

    def track_bf16_tokens_per_s(self, r):
        return r["bf16"]["tokens_per_s"]
    track_bf16_tokens_per_s.unit = "tokens/s"


if __name__ == "__main__":
    # The machine may be shared: alternate the two implementations and report each one's best
    # round (the least disturbed), plus every round.
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for bf16 in (False, True):
        mode = "bf16" if bf16 else "fp32"
        ours, theirs = [], []
        for i in range(rounds):
            s = train_step_throughput(bf16, profile=(i == rounds - 1))
            t = torch_reference(bf16)
            ours.append(s["tokens_per_s"])
            theirs.append(t["tokens_per_s"] if t else float("nan"))
        best_s, best_t = max(ours), max(theirs)
        print(f"{mode}: slmx {best_s:7.0f} tokens/s   torch eager {best_t:7.0f} tokens/s   ratio "
              f"{best_s / best_t:5.2f}   (best of {rounds}; rounds: slmx "
              f"{', '.join(f'{v:.0f}' for v in ours)} / torch {', '.join(f'{v:.0f}' for v in theirs)})"
              + ("   AMX" if s["amx"] else ""), flush=True)
        print(f"  {mode} step kernels (ms, last round): {json.dumps(s['kernels_ms'])}", flush=True)
