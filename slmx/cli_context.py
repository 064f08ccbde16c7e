"""`slmx generate` flags for the KV cache and long contexts: --kv-cache-type, --rope-scaling,
--rope-scale, --rope-original-ctx, --yarn-beta-fast/--yarn-beta-slow, --context-shift, --n-keep, --prefill-chunk.
Names follow the API: slmx.load(kv_cache_type=, rope_scaling=), generate(context_shift=, n_keep=)."""
from .infer.kv_cache import KV_CACHE_TYPES

CLI_ROPE_TYPES = ("none", "linear", "ntk", "dynamic", "yarn")


def add_context_flags(g):
    g.add_argument("--kv-cache-type", choices=KV_CACHE_TYPES, default="f32",
                   help="KV-cache storage: f32 (default), f16, q8_0, q4_0 (blocks of 32 along head_dim)")
    g.add_argument("--rope-scaling", choices=CLI_ROPE_TYPES, default=None,
                   help="RoPE scaling replacing the model file's (default: the file's)")
    g.add_argument("--rope-scale", type=float, default=None, metavar="FACTOR",
                   help="context extension factor of --rope-scaling (e.g. 4)")
    g.add_argument("--rope-original-ctx", type=int, default=None, metavar="N",
                   help="pre-training context of yarn / dynamic scaling (default: the model's)")
    g.add_argument("--yarn-beta-fast", type=float, default=None, help="YaRN ramp bound in rotations (32)")
    g.add_argument("--yarn-beta-slow", type=float, default=None, help="YaRN ramp bound in rotations (1)")
    g.add_argument("--context-shift", nargs="?", const="rerotate", choices=("rerotate", "recompute"),
                   default=None, help="when the context is full, drop the oldest half (after --n-keep) and go "
                                      "on, re-rotating the cached keys ('recompute': prefill the kept tokens "
                                      "again, exact); without this flag generation stops there (finish: context)")
    g.add_argument("--prefill-chunk", type=int, default=256, metavar="N",
                   help="run the prompt in chunks of N tokens (256)")
    g.add_argument("--n-keep", type=int, default=None,
                   help="tokens kept at the start on a context shift (default: the BOS)")


def load_kwargs(a):
    """slmx.load keywords from the parsed flags (ValueError on a bad combination)."""
    kw = {"kv_cache_type": a.kv_cache_type, "prefill_chunk": a.prefill_chunk}
    if a.rope_scaling is None:
        if any(v is not None for v in (a.rope_scale, a.rope_original_ctx, a.yarn_beta_fast, a.yarn_beta_slow)):
            raise ValueError("--rope-scale, --rope-original-ctx and --yarn-beta-* need --rope-scaling")
        return kw
    sc = {"type": a.rope_scaling}
    if a.rope_scaling != "none":
        if a.rope_scale is None:
            raise ValueError(f"--rope-scaling {a.rope_scaling} needs --rope-scale FACTOR")
        sc["factor"] = a.rope_scale
    for k, v in (("original_context_length", a.rope_original_ctx), ("beta_fast", a.yarn_beta_fast),
                 ("beta_slow", a.yarn_beta_slow)):
        if v is not None:
            sc[k] = v
    from .model.rope import normalize_rope_scaling
    check = dict(sc)
    if a.rope_scaling in ("yarn", "dynamic") and a.rope_original_ctx is None:
        check["original_context_length"] = 1     # slmx.load fills in the model's own context length
    try:
        normalize_rope_scaling(check)   # checked before the model loads, named as the flag
    except ValueError as e:
        msg = str(e)
        for key, flag in (("original_context_length", "--rope-original-ctx"), ("factor", "--rope-scale"),
                          ("beta_fast", "--yarn-beta-fast"), ("beta_slow", "--yarn-beta-slow")):
            if msg.startswith(f"rope_scaling: {key} "):
                msg = flag + msg[len(f"rope_scaling: {key}"):]
                break
        raise ValueError(msg) from None
    kw["rope_scaling"] = sc
    return kw


def generate_context_kwargs(a):
    shift = {None: False, "rerotate": True, "recompute": "recompute"}[a.context_shift]
    return {"context_shift": shift, "n_keep": a.n_keep}
