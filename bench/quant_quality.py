"""Quality of each quantization type against F32 on one model: file size, perplexity on held-out
text, mean KL(F32 || type) of the next-token distributions, top-1 agreement with F32, and the
relative weight error ||W - W_q|| / ||W|| over the weight matrices.

usage: python bench/quant_quality.py MODEL --data FILES... [--out DIR] [--types Q8_0 Q4_K_M ...]
MODEL: an F32 GGUF file or an `slmx train` output / checkpoint folder (exported to F32 GGUF first).
Each type is written with slmx.quantize.quantize_model into DIR (default: a temp folder).
"""
import argparse
import os
import sys
import tempfile

import numpy as np

TYPES = ["F32", "BF16", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K", "Q5_0", "Q4_K_M", "Q4_K", "Q4_0"]


def _log_softmax(z):
    z = z.astype(np.float64)
    z -= z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def weight_error(ref, path):
    from slmx import ops
    from slmx.formats import gguf
    num = den = 0.0
    with gguf.read(path) as f:
        for n, a in ref.tensors.items():
            if len(a.shape) < 2:
                continue
            b = f.tensors[n]
            w = np.asarray(a.data, np.float64)
            wq = ops.dequantize(np.asarray(b.data).view(np.uint8), b.type_name, b.shape).astype(np.float64)
            num += float(((w - wq) ** 2).sum())
            den += float((w ** 2).sum())
    return (num / den) ** 0.5


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--types", nargs="+", default=TYPES)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--kl-tokens", type=int, default=2048)
    ap.add_argument("-t", "--threads", type=int, default=None)
    a = ap.parse_args()
    import slmx
    from slmx.eval import perplexity
    from slmx.formats import gguf
    from slmx.quantize import quantize_model
    from slmx.train.data import resolve_data_files
    out = a.out or tempfile.mkdtemp(prefix="slmx-qq-")
    os.makedirs(out, exist_ok=True)
    src = a.model
    if os.path.isdir(src):
        from slmx.convert import export_checkpoint
        src = os.path.join(out, "model-F32.gguf")
        export_checkpoint(a.model, src, format="gguf", type="F32")
    text = "\n".join(open(p, encoding="utf-8", errors="replace").read() for p in resolve_data_files(a.data))
    ref_model = slmx.load(src, threads=a.threads)
    ids = ref_model.tokenizer.encode(text)[:a.kl_tokens]
    wins = [ids[i:i + a.ctx] for i in range(0, len(ids) - a.ctx + 1, a.ctx)]
    ref_lp = [_log_softmax(ref_model.logits(w)) for w in wins]
    ref = gguf.read(src)
    print(f"model {a.model}; {len(ids)} tokens for KL, perplexity over {len(text):,} bytes (ctx {a.ctx}, stride {a.ctx})")
    print(f"{'type':7} {'MB':>7} {'ppl':>9} {'ppl vs F32':>10} {'KL nats/tok':>12} {'top-1 agree':>11} {'weight err':>10}")
    base = None
    for t in a.types:
        path = src if t == "F32" else os.path.join(out, f"model-{t}.gguf")
        if t != "F32":
            quantize_model(src, path, t, threads=a.threads)
        m = slmx.load(path, threads=a.threads)
        r = perplexity(m, text, ctx=a.ctx, stride=a.ctx)
        base = r.ppl if base is None else base
        kl, agree, n = 0.0, 0, 0
        for w, lp in zip(wins, ref_lp):
            q = _log_softmax(m.logits(w))
            kl += float((np.exp(lp) * (lp - q)).sum())
            agree += int((lp.argmax(-1) == q.argmax(-1)).sum())
            n += len(w)
        print(f"{t:7} {os.path.getsize(path) / 1e6:7.2f} {r.ppl:9.3f} {100 * (r.ppl / base - 1):+9.3f}% "
              f"{kl / max(n, 1):12.6f} {agree / max(n, 1):11.4f} {weight_error(ref, path) if t != 'F32' else 0:10.5f}",
              flush=True)
    ref.close()


if __name__ == "__main__":
    sys.exit(main())
