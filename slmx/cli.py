"""`slmx <command>`: thin argument parsing over the Python API."""
import argparse
import json
import os
import sys

from .errors import FormatError, ModelNotFoundError
from .registry import DEFAULT_MODEL


def _threads_arg(s):
    """-t/--threads: a positive integer, or 0 / -1 for automatic (as threads=0 / -1 / None in the
    Python API); -1 is returned as 0."""
    try:
        n = int(s)
    except ValueError:
        n = -2
    if n < -1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, or 0 or -1 for automatic, got {s!r}")
    return max(n, 0)


# the help of every -t/--threads: what automatic means (slmx._kernels.cpu.resolve_threads)
_AUTO_THREADS = "; 0 or -1 (the default): automatic, SLMX_NUM_THREADS, else OMP_NUM_THREADS, else the usable cores"


def _stop_arg(s):
    if not s:
        raise argparse.ArgumentTypeError("a stop string must not be empty")
    return s


def _cmd_generate(a):
    from .api import load
    from .cli_generate import check_options, generate_kwargs, print_extras
    if a.n < 0:
        raise ValueError(f"-n/--max-new-tokens must be >= 0, got {a.n}")
    from .cli_context import generate_context_kwargs, load_kwargs
    kw = generate_kwargs(a)
    check_options(kw)                                          # checks before any output
    kw.update(generate_context_kwargs(a))
    model = load(a.model, threads=a.threads, n_ctx=a.ctx, **load_kwargs(a))
    if a.num_draft < 1:
        raise ValueError(f"--num-draft must be >= 1, got {a.num_draft}")
    draft_model = None
    if a.draft_model or a.draft:
        from .infer.speculative import make_drafter
        draft_model = load(a.draft_model, threads=a.threads) if a.draft_model else None
        make_drafter(a.draft, draft_model, model)        # vocabulary / heads checked before any output
        kw.update(draft_model=draft_model, draft=a.draft, num_draft=a.num_draft)
    out = sys.stdout
    pending = [a.prompt] if a.prompt_echo else []      # echoed with the first text: generate checks
                                                       # its arguments against the model before that

    def emit(s):
        out.write("".join(pending) + s)
        pending.clear()
        out.flush()

    r = model.generate(a.prompt, max_new_tokens=a.n, stop=a.stop, on_text=emit, **kw)
    emit("\n")
    print_extras(r, model.tokenizer, sys.stderr)
    print(f"[prompt: {len(r.prompt_ids)} tokens, {r.prompt_tokens_per_s:.1f} tokens/s | "
          f"decode: {len(r.token_ids)} tokens, {r.decode_tokens_per_s:.1f} tokens/s | "
          f"threads: {model.threads} | finish: {r.finish_reason}]", file=sys.stderr)
    d = r.extra.get("draft")
    if d:
        print(f"[draft: {d['kind']}, {d['proposed']} proposed, {d['accepted']} accepted (rate {d['rate']:.3f}), "
              f"{d['tokens_per_round']:.2f} tokens per target forward]", file=sys.stderr)
    return 0


def _info_trained(a):
    """`slmx info` on a folder that is not a Hugging Face one: a `slmx train` output or checkpoint."""
    from .train.checkpoint import CheckpointError, read_state
    try:
        ck, state = read_state(a.model)
    except CheckpointError as e:
        raise ValueError(f"{a.model}: {e}; slmx info takes a GGUF file, a Hugging Face model folder or a "
                         "`slmx train` output / checkpoint folder") from None
    files = state.get("files") or {}
    d = {"path": ck, "kind": "slmx train checkpoint", "step": state.get("step"),
         "model_config": state.get("model_config"), "files": files}
    if a.json:
        print(json.dumps(d, indent=2, default=str))
        return 0
    print(f"folder:        {ck} (slmx train checkpoint, step {d['step']})")
    mc = d["model_config"] or {}
    print("config:        " + ", ".join(f"{k}={v}" for k, v in mc.items()))
    print("files:         " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in files.items()))
    return 0


def _cmd_info(a):
    from .convert import describe_hf, is_hf_folder
    from .formats import gguf
    from .registry import resolve
    if is_hf_folder(a.model):
        d = describe_hf(a.model)
        if a.json:
            print(json.dumps(d, indent=2, default=str))
            return 0
        print(f"folder:        {d['path']} (Hugging Face: {', '.join(d['files'])})")
        print(f"architecture:  {d['architecture']}")
        print("config:        " + ", ".join(f"{k}={v}" for k, v in d["config"].items() if k != "arch"))
        for t, row in d["tensors_by_dtype"].items():
            print(f"  {t:<8}{row['count']:>6} tensors  {row['bytes'] / 2**20:10.1f} MiB  "
                  f"{row['elements'] / 1e6:10.2f} M elements")
        print("tokenizer:     " + ", ".join(f"{k}={v}" for k, v in d["tokenizer"].items()))
        return 0
    if os.path.isdir(a.model):
        return _info_trained(a)
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


def _cmd_bench_roofline(a):
    from . import roofline
    from ._kernels.cpu import resolve_threads
    note = (lambda m: print(m, file=sys.stderr)) if a.json else print     # --json: stdout is the JSON
    png = a.png
    if png is None:                      # the default: plot only when matplotlib is there
        png = "roofline.png" if roofline.have_matplotlib() else ""
        if not png:
            note("roofline plot skipped: matplotlib is not installed (pip install 'slmx[plot]')")
    elif png and not roofline.have_matplotlib():
        raise ValueError(f"--png {png!r}: the roofline plot needs matplotlib (pip install 'slmx[plot]'), "
                         "or pass --png '' for the table only")
    if a.clock == "cpu" and a.threads not in (None, 0, -1, 1):
        # the requested count, not the resolved one (a lowered OpenMP limit would turn -t 2 into 1)
        raise ValueError(f"--clock cpu needs 1 thread (-t 1), got -t {a.threads}")
    ceilings, kernels = roofline.run(threads=resolve_threads(a.threads), quick=a.quick, png=png or None,
                                     out=note, table=not a.json, clock=a.clock or "wall")
    if a.json:
        print(json.dumps(roofline.to_json(ceilings, kernels)))
    return 0


def _cmd_bench(a):
    from .bench import check_bench_mode
    check_bench_mode(a.model == "roofline", vars(a))
    if a.model == "roofline":
        return _cmd_bench_roofline(a)
    a.n_prompt = 512 if a.n_prompt is None else a.n_prompt
    a.n_decode = 64 if a.n_decode is None else a.n_decode
    a.repeats = 3 if a.repeats is None else a.repeats
    from .api import load
    from .bench import check_bench_args, model_throughput
    check_bench_args(a.n_prompt, a.n_decode, a.repeats, names=("--n-prompt", "--n-decode", "--repeats"))
    need = a.n_prompt + a.n_decode          # the KV cache the run needs, bounded by the model
    try:
        model = load(a.model, threads=a.threads, n_ctx=need)
    except ValueError as e:
        if "exceeds the model's context length" not in str(e):
            raise
        raise ValueError(f"--n-prompt {a.n_prompt} + --n-decode {a.n_decode} = {need} tokens: "
                         f"{str(e).split(' exceeds ')[1]} is smaller") from None
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


# --- training: slmx train, slmx plot-loss, slmx perplexity -----------------------------------------

_TRAIN_FIELDS = ("preset", "vocab_size", "batch_size", "context", "grad_accum", "max_steps", "max_minutes",
                 "lr", "schedule", "warmup", "min_lr_ratio", "weight_decay", "clip", "optimizer", "bf16",
                 "threads", "eval_every", "eval_tokens", "ckpt_every", "keep_checkpoints", "seed",
                 "val_fraction", "mtp", "mtp_weight")
# what --resume may change: the rest comes from the checkpoint (so the run continues identically)
_RESUME_OVERRIDES = ("threads", "max_minutes", "max_steps", "eval_every", "ckpt_every", "keep_checkpoints")


def _cmd_train(a):
    from .train.trainer import TrainConfig, TrainingDiverged, run_training
    given = {k: getattr(a, k) for k in _TRAIN_FIELDS if getattr(a, k) is not None}
    if a.sample_tokens < 0:                      # checked now, not after the training run
        raise ValueError(f"--sample-tokens must be >= 0 (0: no sample), got {a.sample_tokens}")
    if a.resume:
        ignored = sorted(k for k in given if k not in _RESUME_OVERRIDES)
        if ignored:
            print("slmx train: --resume continues with the checkpoint's settings; ignoring "
                  + ", ".join("--" + k.replace("_", "-") for k in ignored), file=sys.stderr)
        if a.data or a.tokenizer:
            print("slmx train: --resume uses the checkpoint's data and tokenizer; ignoring --data/--tokenizer",
                  file=sys.stderr)
        if a.out:
            import os
            run = os.path.abspath(a.resume)
            if os.path.basename(run).startswith("ckpt-"):
                run = os.path.dirname(run)
            if os.path.abspath(a.out) != run:
                print(f"slmx train: --resume continues in the run's own folder {run}; ignoring --out",
                      file=sys.stderr)
            a.out = None
        config = None
        overrides = {k: v for k, v in given.items() if k in _RESUME_OVERRIDES}
    else:
        if not a.out:
            raise ValueError("slmx train needs --out DIR (or --resume DIR)")
        if a.tokenizer and a.vocab_size is not None:
            print(f"slmx train: --tokenizer {a.tokenizer} brings its own vocabulary; ignoring --vocab-size",
                  file=sys.stderr)
        config = TrainConfig(**given)
        overrides = None
    try:
        run_training(config, out_dir=a.out, data=a.data, tokenizer=a.tokenizer, resume=a.resume,
                     progress=not a.no_progress, sample_prompt=a.sample_prompt, sample_tokens=a.sample_tokens,
                     overrides=overrides)
    except TrainingDiverged as e:
        print("slmx: error: " + str(e), file=sys.stderr)
        return 3
    return 0


def _cmd_plot_loss(a):
    from .train.diagnostics import plot_loss
    import os
    log = a.log
    if os.path.isdir(log):
        log = os.path.join(log, "train.jsonl")
    png = plot_loss(log, a.output)
    print(png)
    return 0


def _cmd_perplexity(a):
    from .api import load
    from .eval import METHODS, perplexity
    from .train.data import resolve_data_files
    if a.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {a.method!r}")
    if not a.file and not a.data:
        raise ValueError("perplexity: give the text with -f FILE or --data PATH...")
    for flag, v, lo in (("--ctx", a.ctx, 2), ("--stride", a.stride, 1)):     # omitted = the default; 0 is not
        if v is not None and v < lo:
            raise ValueError(f"{flag} must be an integer >= {lo} (omit it for the default), got {v}")
    files = list(a.file or []) + (resolve_data_files(a.data) if a.data else [])
    texts = []
    for p in files:
        with open(p, encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
    if not any(texts):
        raise ValueError(f"perplexity: no text: {' '.join(list(a.file or []) + list(a.data or []))} "
                         f"{'is' if len(files) == 1 else 'are'} empty")
    model = load(a.model, threads=a.threads, n_ctx=a.ctx, kv_cache_type=a.kv_cache_type)
    r = perplexity(model, "\n".join(texts), ctx=a.ctx, stride=a.stride, method=a.method,
                   progress=not a.no_progress)
    print(f"model: {model.path}")
    print(f"data: {len(files)} file(s), {r.n_text_bytes:,} bytes, {r.n_input_tokens:,} tokens")
    print(f"method: {r.method}, ctx {r.ctx}, stride {r.stride}, {r.n_windows} windows, {r.n_tokens:,} tokens "
          f"scored in {r.seconds:.1f} s")
    print(f"nll: {r.nll:.4f} nats/token")
    print(f"bits per byte: {r.bits_per_byte:.4f} ({r.n_scored_bytes:,} bytes scored)")
    print(f"perplexity: {r.ppl:.4f}")
    return 0


def _refuse_existing(path, force, source, folder=False):
    """Writing OUT must not silently replace the user's files: an existing output file (or a
    non-empty output folder) needs --force. Never, even with --force: OUT being the input SOURCE,
    holding it, or an existing non-GGUF file inside it (the input's own data), OUT being a folder
    where a file is written (or the reverse), or OUT's folder missing."""
    import os
    out, src = os.path.realpath(path), os.path.realpath(source)
    inside = out.startswith(src.rstrip(os.sep) + os.sep)

    def earlier_output(p):                       # a GGUF file in the input folder is not read from it
        with open(p, "rb") as f:
            return f.read(4) == b"GGUF"
    if out == src or src.startswith(out.rstrip(os.sep) + os.sep) \
            or (inside and os.path.isfile(out) and not earlier_output(out)):
        raise ValueError(f"{path}: the output would overwrite the input {source}; write it elsewhere")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise ValueError(f"{path}: the folder {os.path.dirname(path) or parent} does not exist")
    if folder and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{path}: is a file; give a folder for --format hf")
    if not folder and os.path.isdir(path):
        raise ValueError(f"{path}: is a folder; give a file path")
    if force:
        return
    if folder:
        if os.path.isdir(path) and os.listdir(path):
            raise ValueError(f"{path}: the output folder is not empty (its files would be replaced); "
                             "give --force to write into it anyway")
    elif os.path.lexists(path):
        raise ValueError(f"{path}: the output file exists; give --force to replace it")


def _cmd_convert(a):
    from .convert import convert_hf_to_gguf
    _refuse_existing(a.output, a.force, a.input)
    r = convert_hf_to_gguf(a.input, a.output, type=a.type, threads=a.threads)
    print(f"{r['path']}: {r['arch']}, {r['tensors']} tensors, matrices {r['type']}, {r['bytes'] / 2**20:.1f} MiB")
    return 0


def _cmd_export(a):
    from .convert import export_checkpoint
    _refuse_existing(a.output, a.force, a.checkpoint, folder=a.format == "hf")
    r = export_checkpoint(a.checkpoint, a.output, format=a.format, type=a.type, threads=a.threads)
    size = f", {r['bytes'] / 2**20:.1f} MiB" if "bytes" in r else ""
    print(f"{r['path']}: step {r['step']} exported as {r['format']}{size}")
    if r.get("mtp_heads_dropped"):
        n = r["mtp_heads_dropped"]
        print(f"note: the checkpoint's {n} multi-token-prediction head{'s' * (n > 1)} (mtp.*) are not exported "
              f"({r['format']} has no place for them); for --draft mtp use the checkpoint folder itself")
    for what, n in sorted((r.get("fallbacks") or {}).items()):
        print(f"note: {n} tensor{'s' * (n > 1)} fell back {what} (rows not a multiple of the type's block size, "
              f"as llama.cpp does)")
    return 0


def _add_file_parsers(sub):
    c = sub.add_parser("convert", help="convert a Hugging Face model folder to GGUF",
                       description="Convert a Hugging Face model folder (config.json, model.safetensors or a "
                                   "sharded index, tokenizer.json) of a llama, mistral, qwen2 or gemma3 model "
                                   "to a GGUF file llama.cpp and slmx load (written atomically).")
    c.add_argument("input", metavar="IN_DIR", help="the Hugging Face model folder")
    c.add_argument("output", metavar="OUT.gguf", help="the GGUF file to write")
    c.add_argument("--type", default="F32", help="F32, F16, BF16 (weight matrices; norms stay F32), or a "
                                                  "quantized type / recipe of `slmx quantize` (Q8_0, Q4_0, Q5_0, "
                                                  "Q4_K, Q5_K, Q6_K, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M) (F32)")
    c.add_argument("-t", "--threads", type=_threads_arg, default=None, help="quantizer threads" + _AUTO_THREADS)
    c.add_argument("--force", action="store_true", help="replace OUT.gguf if it exists")
    c.set_defaults(func=_cmd_convert)

    e = sub.add_parser("export", help="export an slmx training checkpoint to GGUF or a HF folder",
                       description="Export a checkpoint of `slmx train` (a ckpt-* folder, or the training output "
                                   "folder for its latest) to a GGUF file (llama.cpp loads it) or to a Hugging "
                                   "Face folder (config.json, model.safetensors, tokenizer.json; transformers "
                                   "loads it).")
    e.add_argument("checkpoint", metavar="CKPT_DIR", help="checkpoint folder or training output folder")
    e.add_argument("output", metavar="OUT", help="GGUF file (--format gguf) or folder (--format hf)")
    e.add_argument("--format", default="gguf", choices=["gguf", "hf"], help="(gguf)")
    e.add_argument("--type", default="F32", help="GGUF weight type: F32, F16, BF16 or a quantized type / recipe "
                                                  "of `slmx quantize` (Q8_0, Q4_K_M, ...) (F32)")
    e.add_argument("-t", "--threads", type=_threads_arg, default=None, help="quantizer threads" + _AUTO_THREADS)
    e.add_argument("--force", action="store_true",
                   help="replace an existing GGUF file / write into a non-empty folder (same-named files "
                        "are replaced)")
    e.set_defaults(func=_cmd_export)


def _cmd_quantize(a):
    from .quantize import quantize_model
    _refuse_existing(a.output, a.force, a.input)
    pure = True if a.pure else (False if a.mixed else None)
    r = quantize_model(a.input, a.output, a.type, pure=pure, threads=a.threads,
                       allow_requantize=a.allow_requantize)
    counts = ", ".join(f"{n} {t}" for t, n in sorted(r["counts"].items(), key=lambda kv: -kv[1]))
    print(f"{r['path']}: {r['type']} (file type {r['file_type']}), {r['n_tensors']} tensors ({counts}), "
          f"{r['bytes'] / 1e6:.2f} MB")
    for what, n in sorted((r.get("fallbacks") or {}).items()):
        print(f"note: {n} tensor{'s' * (n > 1)} fell back {what} (rows not a multiple of the type's block size, "
              f"as llama.cpp does)")
    return 0


def _cmd_serve(a):
    import os
    if not 0 <= a.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {a.port}")
    if a.parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {a.parallel}")
    if a.queue is not None and a.queue < 0:
        raise ValueError(f"--queue must be >= 0, got {a.queue}")
    if a.chat_template is not None and not os.path.isfile(a.chat_template):
        raise ValueError(f"--chat-template: no such file: {a.chat_template}")
    api_key = a.api_key or os.environ.get("SLMX_API_KEY") or None
    try:
        from .serve.server import run
    except ImportError as e:
        raise ValueError(f"slmx serve needs the 'serve' extra (pip install 'slmx[serve]'): {e}") from None
    run(a.model, host=a.host, port=a.port, parallel=a.parallel, n_ctx=a.ctx, api_key=api_key,
        threads=a.threads, max_queue=a.queue, chat_template=a.chat_template, alias=a.alias,
        kv_cache_type=a.kv_cache_type)
    return 0


def _add_serve_parser(sub):
    from .infer.kv_cache import KV_CACHE_TYPES
    s = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                       description="Serve MODEL at http://HOST:PORT/v1 (completions, chat completions, "
                                   "models; /health, /metrics). Concurrent requests share the model by "
                                   "continuous batching over --parallel KV-cache slots.")
    s.add_argument("-m", "--model", default=DEFAULT_MODEL,
                   help=f"GGUF file or model name (default: {DEFAULT_MODEL})")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8080, help="TCP port (8080; 0: a free one, printed)")
    s.add_argument("--parallel", type=int, default=4, help="sequences decoded together, one KV cache each (4)")
    s.add_argument("--ctx", type=int, default=None,
                   help="context length per sequence (prompt + completion; default min(model, 4096))")
    s.add_argument("--queue", type=int, default=None,
                   help="requests that may wait for a slot before new ones get 503 (default 4 x --parallel)")
    s.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1 and /metrics (default: $SLMX_API_KEY, else none)")
    s.add_argument("--chat-template", default=None, help="a Jinja2 chat template file (default: the model's)")
    s.add_argument("--alias", default=None, help="model id clients use (default: the file name)")
    s.add_argument("--kv-cache-type", choices=KV_CACHE_TYPES, default="f32",
                   help="KV-cache format of every slot (f32)")
    s.add_argument("-t", "--threads", type=_threads_arg, default=None, help="kernel threads" + _AUTO_THREADS)
    s.set_defaults(func=_cmd_serve)


def _add_training_parsers(sub):
    t = sub.add_parser("train", help="train a small language model from scratch",
                       description="Train a Llama-style model from scratch on text (default: the Python "
                                   "standard library's .py files). Writes OUT/train.jsonl, OUT/tokenizer.json "
                                   "and checkpoints OUT/ckpt-NNNNNN (OUT/latest names the newest); "
                                   "`slmx generate -m OUT` runs the result.")
    t.add_argument("--data", nargs="+", default=None, metavar="PATH",
                   help="text files, folders or globs (default: the stdlib's .py files without tests)")
    t.add_argument("--out", default=None, metavar="DIR", help="output folder (required unless --resume)")
    t.add_argument("--resume", default=None, metavar="DIR",
                   help="continue a run from DIR (its output folder or a ckpt-* folder)")
    t.add_argument("--tokenizer", default=None, metavar="JSON",
                   help="use this tokenizer.json instead of training a byte-level BPE")
    t.add_argument("--preset", default=None, help="model size: nano, tiny, small (tiny)")
    t.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary to train (8192)")
    t.add_argument("--batch-size", type=int, default=None, help="sequences per micro-batch (8)")
    t.add_argument("--context", type=int, default=None, help="tokens per sequence (the preset's context)")
    t.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step (1)")
    t.add_argument("--max-steps", type=int, default=None,
                   help="optimizer steps (default: fit --max-minutes); with --resume only where to stop: the "
                        "run keeps its learning-rate schedule")
    t.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock limit of the training loop; without --max-steps the schedule is "
                        "fitted to it from the first steps' timing (10 when neither is given)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (1e-3)")
    t.add_argument("--schedule", default=None, help="constant, cosine, linear or wsd (cosine)")
    t.add_argument("--warmup", type=int, default=None, help="linear warm-up steps (50)")
    t.add_argument("--min-lr-ratio", type=float, default=None, help="final lr / peak lr (0.1)")
    t.add_argument("--weight-decay", type=float, default=None, help="AdamW decoupled weight decay (0.1)")
    t.add_argument("--clip", type=float, default=None, help="clip the gradient's global norm; 0 = off (1.0)")
    t.add_argument("--optimizer", default=None, choices=["adamw", "adam", "sgd"], help="(adamw)")
    t.add_argument("--bf16", action="store_const", const=True, default=None,
                   help="bf16 matmuls, fp32 master weights and optimizer state")
    t.add_argument("-t", "--threads", type=_threads_arg, default=None, help="kernel threads" + _AUTO_THREADS)
    t.add_argument("--eval-every", type=int, default=None, help="validate every N steps; 0: only at the end (100)")
    t.add_argument("--eval-tokens", type=int, default=None, help="validation tokens per evaluation (32768)")
    t.add_argument("--ckpt-every", type=int, default=None, help="checkpoint every N steps; 0: only at the end (200)")
    t.add_argument("--keep-checkpoints", type=int, default=None, help="newest checkpoints kept; 0: all (2)")
    t.add_argument("--val-fraction", type=float, default=None, help="share of documents held out (0.015)")
    t.add_argument("--seed", type=int, default=None, help="seed of initialisation and sampling (0)")
    t.add_argument("--mtp", type=int, default=None, metavar="M",
                   help="multi-token prediction: M extra heads predicting tokens t+2..t+M+1, trained jointly; "
                        "they draft for `slmx generate --draft mtp` (0)")
    t.add_argument("--mtp-weight", type=float, default=None, help="loss weight of the mtp heads (0.3)")
    t.add_argument("--sample-prompt", default="def", help="prompt of the sample printed at the end (def)")
    t.add_argument("--sample-tokens", type=int, default=120, help="tokens of that sample; 0 = none (120)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=_cmd_train)

    pl = sub.add_parser("plot-loss", help="plot a training log to PNG",
                        description="PNG of training and validation loss, learning rate and gradient norm "
                                    "from a train.jsonl log (or a training output folder).")
    pl.add_argument("log", help="train.jsonl, or the training output folder")
    pl.add_argument("-o", "--output", default=None, help="PNG path (default: the log's name with .png)")
    pl.set_defaults(func=_cmd_plot_loss)

    pp = sub.add_parser("perplexity", help="perplexity of a model on text",
                        description="Perplexity (and bits per byte) of a model (GGUF file, name, or a training "
                                    "output folder) over text files; the last line is `perplexity: X`.")
    pp.add_argument("-m", "--model", default=DEFAULT_MODEL, help="GGUF file, model name or training folder")
    pp.add_argument("-f", "--file", action="append", default=None, metavar="TEXT",
                    help="a text file (repeatable)")
    pp.add_argument("--data", nargs="+", default=None, metavar="PATH", help="text files, folders or globs")
    pp.add_argument("--ctx", type=int, default=None,
                    help="window / chunk length in tokens (default: the model's context, at most 512; larger values up to "
                         "the model's context length)")
    pp.add_argument("--stride", type=int, default=None, help="window step in tokens, sliding method (ctx / 2)")
    pp.add_argument("--method", default="sliding", metavar="{sliding,llama.cpp}",
                    help="sliding windows (default), or llama.cpp's: chunks of ctx from BOS, second halves scored")
    pp.add_argument("-t", "--threads", type=_threads_arg, default=None, help="kernel threads" + _AUTO_THREADS)
    pp.add_argument("--no-progress", action="store_true", help="no progress bar")
    from .infer.kv_cache import KV_CACHE_TYPES
    pp.add_argument("--kv-cache-type", choices=KV_CACHE_TYPES, default="f32",
                    help="KV-cache storage: f32 (default), f16, q8_0, q4_0")
    pp.set_defaults(func=_cmd_perplexity)


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
    from .cli_generate import add_generate_flags
    add_generate_flags(g)
    from .cli_context import add_context_flags
    add_context_flags(g)
    g.add_argument("--stop", action="append", default=None, type=_stop_arg, help="stop string (repeatable)")
    g.add_argument("-t", "--threads", type=_threads_arg, default=None,
                   help="kernel threads" + _AUTO_THREADS)
    g.add_argument("--ctx", type=int, default=None, help="context length / KV-cache size (default 4096)")
    g.add_argument("--no-echo", dest="prompt_echo", action="store_false", help="do not print the prompt")
    g.add_argument("--draft-model", default=None, metavar="PATH",
                   help="speculative decoding with this draft model (GGUF, name or training folder; same "
                        "vocabulary): it proposes tokens the model verifies in one batched forward")
    g.add_argument("--draft", default=None, choices=["model", "ngram", "mtp"],
                   help="drafter: 'ngram' (prompt lookup, no draft model), 'mtp' (the model's multi-token-"
                        "prediction heads), 'model' (--draft-model; implied by it)")
    g.add_argument("--num-draft", type=int, default=4, metavar="K", help="tokens drafted per round (4)")
    g.set_defaults(func=_cmd_generate)

    i = sub.add_parser("info", help="describe a GGUF model file",
                       description="Print architecture, hyper-parameters, tensors by type, tokenizer and "
                                   "the memory needed to run.")
    i.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="GGUF file, model name or Hugging Face folder")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=_cmd_info)

    b = sub.add_parser("bench", help="measure prefill and decode tokens/s, or the kernels' roofline",
                       description="Measure a model's prefill (prompt) and decode tokens/s. "
                                   "`slmx bench roofline` instead measures this machine's memory bandwidth "
                                   "and peak FLOP/s (fp32 FMA, bf16, int8, AMX where available), runs the "
                                   "kernels, prints each as a percentage of its roofline and writes a plot "
                                   "(a model file named roofline: give it as ./roofline). An option of the "
                                   "other mode (--n-prompt/--n-decode/--repeats with roofline, --quick/--png/--clock "
                                   "with a model) is an error.")
    b.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="GGUF file or model name, or 'roofline'")
    b.add_argument("-t", "--threads", type=_threads_arg, default=None, help="kernel threads" + _AUTO_THREADS)
    b.add_argument("--n-prompt", type=int, default=None, help="prompt tokens for prefill (512; model only)")
    b.add_argument("--n-decode", type=int, default=None, help="tokens to decode (64; model only)")
    b.add_argument("--repeats", type=int, default=None, help="runs; the median is reported (3; model only)")
    b.add_argument("--json", action="store_true", help="machine-readable output (roofline too: ceilings, kernels)")
    b.add_argument("--quick", action="store_true", help="roofline only: small buffers and short runs (seconds)")
    b.add_argument("--png", default=None,
                   help="roofline only: where to write the plot (default roofline.png; '' for none). Without "
                        "matplotlib the default plot is skipped with a note and an explicit --png is an error")
    b.add_argument("--clock", choices=["wall", "cpu"], default=None,
                   help="roofline only: time the kernels on the wall clock (default) or, with -t 1, on the "
                        "thread's CPU time (a loaded shared machine: descheduled time does not count)")
    b.set_defaults(func=_cmd_bench)

    _add_training_parsers(sub)
    _add_file_parsers(sub)

    q = sub.add_parser("quantize", help="quantize a model file to GGUF (llama.cpp's types and recipes)",
                       description="Quantize a GGUF file or a Hugging Face model folder into a GGUF file "
                                   "llama.cpp and slmx load. A tensor type (F32 F16 BF16 Q8_0 Q4_0 Q5_0 "
                                   "Q4_K Q5_K Q6_K) puts every weight matrix in that type (llama-quantize "
                                   "--pure); a recipe (Q4_K_S Q4_K_M Q5_K_S Q5_K_M) keeps sensitive tensors "
                                   "(output/tied embeddings, some attn_v and ffn_down) at higher precision by "
                                   "llama.cpp's rules. Same tensor bytes as llama.cpp for the same input; "
                                   "norms and other vectors stay as they are.")
    q.add_argument("input", help="GGUF file or Hugging Face model folder")
    q.add_argument("output", help="GGUF file to write (atomically)")
    q.add_argument("--type", required=True, type=str.upper, metavar="TYPE",
                   help="Q8_0 Q4_0 Q5_0 Q4_1 Q5_1 Q4_K Q5_K Q6_K F16 BF16 F32, or Q4_K_S Q4_K_M Q5_K_S Q5_K_M")
    mode = q.add_mutually_exclusive_group()
    mode.add_argument("--pure", action="store_true", help="every quantizable tensor at the recipe's base type")
    mode.add_argument("--mixed", action="store_true",
                      help="llama.cpp's rules for a plain type too (e.g. Q4_0 with output.weight Q6_K)")
    q.add_argument("--allow-requantize", action="store_true",
                   help="accept already quantized input tensors (decoded first; loses quality)")
    q.add_argument("-t", "--threads", type=_threads_arg, default=None, help="kernel threads" + _AUTO_THREADS)
    q.add_argument("--force", action="store_true", help="replace the output file if it exists")
    q.set_defaults(func=_cmd_quantize)
    _add_serve_parser(sub)
    p.subcommands = sub.choices          # name -> its parser (main reports unknown flags against it)
    return p


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"slmx: warning: {' '.join(str(message).split())}\n"


def main(argv=None):
    import warnings
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:       # argparse would blame the top-level parser (its usage); the subcommand's is the useful one
        parser.subcommands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    warnings.formatwarning = _one_line_warning      # the CLI prints warnings as one line
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`slmx info ... | head`): not an error. Point stdout at /dev/null so
        # the interpreter's final flush does not raise again.
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (FormatError, ModelNotFoundError, ValueError, OSError) as e:
        print("slmx: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
