"""`slmx <command>`: thin argument parsing over the Python API."""
import argparse
import json
import sys

from .errors import FormatError, ModelNotFoundError
from .registry import DEFAULT_MODEL


def _cmd_generate(a):
    from .api import load
    model = load(a.model, threads=a.threads, n_ctx=a.ctx)
    out = sys.stdout

    def emit(s):
        out.write(s)
        out.flush()

    if a.prompt_echo:
        emit(a.prompt)
    r = model.generate(a.prompt, max_new_tokens=a.n, temperature=a.temperature, top_k=a.top_k,
                       top_p=a.top_p, seed=a.seed, stop=a.stop, on_text=emit)
    emit("\n")
    print(f"[prompt: {len(r.prompt_ids)} tokens, {r.prompt_tokens_per_s:.1f} tokens/s | "
          f"decode: {len(r.token_ids)} tokens, {r.decode_tokens_per_s:.1f} tokens/s | "
          f"threads: {model.threads} | finish: {r.finish_reason}]", file=sys.stderr)
    return 0


def _cmd_info(a):
    from .formats import gguf
    from .registry import resolve
    path = resolve(a.model)
    with gguf.read(path) as f:
        d = gguf.describe(f)
        if a.json:
            print(json.dumps(d, indent=2, default=str))
            return 0
        _print_info(path, f, d)
    return 0


def _print_info(path, f, d):
    from .model.config import config_from_gguf
    print(f"file:          {path}")
    print(f"gguf version:  {f.version}, alignment {f.alignment}, {len(f.tensors)} tensors, "
          f"{len(f.metadata)} metadata keys")
    for k in ("architecture", "name", "file_type_name"):
        if d.get(k):
            print(f"{k.replace('_name', '') + ':':<15}{d[k]}")
    hp = d.get("hyperparameters") or {}
    if hp:
        print("hyper-parameters:")
        for k, v in hp.items():
            print(f"  {k:<36}{v}")
    print("tensors by type:")
    for t, row in d["tensors_by_type"].items():
        print(f"  {t:<8}{row['count']:>6} tensors  {row['bytes'] / 2**20:10.1f} MiB  "
              f"{row['elements'] / 1e6:10.2f} M elements")
    print(f"  {'total':<8}{d['tensor_count']:>6} tensors  {d['tensor_bytes'] / 2**20:10.1f} MiB  "
          f"{d['parameter_count'] / 1e6:10.2f} M parameters")
    tk = d.get("tokenizer") or {}
    if tk:
        print("tokenizer:     " + ", ".join(f"{k}={v}" for k, v in tk.items()))
    try:
        cfg = config_from_gguf(f.metadata, f.tensors)
    except FormatError as e:
        print(f"model:         not runnable by slmx: {e}")
        return
    wbytes = sum(t.nbytes for t in f.tensors.values())
    n_ctx = min(cfg.context_length, 4096)
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 4
    act = 256 * (4 * cfg.d_model + 2 * cfg.q_dim + 2 * cfg.kv_dim + 2 * cfg.ffn_dim) * 4 + cfg.vocab_size * 4
    print(f"memory to run: weights {wbytes / 2**20:.1f} MiB (mmap'd) + KV cache {kv * n_ctx / 2**20:.1f} MiB "
          f"at n_ctx {n_ctx} ({kv / 1024:.1f} KiB/token) + activations {act / 2**20:.1f} MiB "
          f"= {(wbytes + kv * n_ctx + act) / 2**20:.1f} MiB")


def _cmd_bench(a):
    from .api import load
    from .bench import model_throughput
    model = load(a.model, threads=a.threads, n_ctx=max(1024, a.n_prompt + a.n_decode))
    r = model_throughput(model, n_prompt=a.n_prompt, n_decode=a.n_decode, repeats=a.repeats)
    if a.json:
        print(json.dumps(r))
        return 0
    print(f"model:   {model.path}")
    print(f"threads: {r['threads']}")
    print(f"prefill: {r['prefill_tokens_per_s']:8.1f} tokens/s  ({r['n_prompt']}-token prompt, median of "
          f"{a.repeats})")
    print(f"decode:  {r['decode_tokens_per_s']:8.1f} tokens/s  ({r['n_decode']} tokens, median of {a.repeats}; "
          f"weights read {r['decode_weight_gb_per_s']:.1f} GB/s)")
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="slmx", description="Small language models on the CPU, fast.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from a prompt (streams as it goes)",
                       description="Generate a continuation of PROMPT, streaming it to stdout; "
                                   "prompt and decode tokens/s go to stderr.")
    g.add_argument("-m", "--model", default=DEFAULT_MODEL,
                   help=f"GGUF file or model name (default: {DEFAULT_MODEL})")
    g.add_argument("-p", "--prompt", required=True, help="the prompt text")
    g.add_argument("-n", "--max-new-tokens", dest="n", type=int, default=128, help="tokens to generate (128)")
    g.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 is greedy (0.8)")
    g.add_argument("--top-k", type=int, default=40, help="keep the k most likely tokens; 0 = off (40)")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (0.95)")
    g.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling")
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("-t", "--threads", type=int, default=None, help="kernel threads (default: all usable)")
    g.add_argument("--ctx", type=int, default=None, help="context length / KV-cache size (default 4096)")
    g.add_argument("--no-echo", dest="prompt_echo", action="store_false", help="do not print the prompt")
    g.set_defaults(func=_cmd_generate)

    i = sub.add_parser("info", help="describe a GGUF model file",
                       description="Print architecture, hyper-parameters, tensors by type, tokenizer and "
                                   "the memory needed to run.")
    i.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="GGUF file or model name")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=_cmd_info)

    b = sub.add_parser("bench", help="measure prefill and decode tokens/s",
                       description="Measure a model's prefill (prompt) and decode tokens/s.")
    b.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="GGUF file or model name")
    b.add_argument("-t", "--threads", type=int, default=None, help="kernel threads")
    b.add_argument("--n-prompt", type=int, default=512, help="prompt tokens for prefill (512)")
    b.add_argument("--n-decode", type=int, default=64, help="tokens to decode (64)")
    b.add_argument("--repeats", type=int, default=3, help="runs; the median is reported (3)")
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FormatError, ModelNotFoundError, ValueError, OSError) as e:
        print("slmx: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
