"""RoPE scaling for long contexts: per-dimension rotation frequencies and the attention factor.

A scaling is a dict (the form `ModelConfig.rope_scaling` keeps, `slmx.load(rope_scaling=...)`
and `--rope-scaling` take; Hugging Face `rope_scaling` / `rope_parameters` keys are accepted):
    type                  "none", "linear", "ntk", "dynamic", "yarn", "longrope", "llama3",
                          "freq_factors" (explicit per-dimension divisors, GGUF rope_freqs.weight)
    factor                context extension factor s
    original_context_length   the pre-training context L (yarn, longrope, llama3, dynamic)
    beta_fast, beta_slow  yarn's ramp bounds in rotations (32, 1)
    attention_factor      yarn / longrope temperature (default from factor; mscale, mscale_all_dim)
    long_factor, short_factor   longrope per-dimension factors (long when n_ctx > L)
    low_freq_factor, high_freq_factor   llama3's smoothing band
    freq_factors          per-dimension divisors of the frequencies

For head size d (rotated dims) and pair i < d/2 the unscaled frequency is w_i = base^(-2i/d):
    linear     w_i / s
    ntk        base' = base * s^(d/(d-2))                      (NTK-aware, static)
    dynamic    base' = base * (s*n/L - (s-1))^(d/(d-2)) at n = max(n_ctx, L)
    yarn       w_i/s * (1 - r_i) + w_i * r_i, r_i = 1 - clamp((i - lo)/(hi - lo), 0, 1),
               lo, hi = floor/ceil of d*ln(L/(2 pi beta))/(2 ln base) for beta_fast, beta_slow;
               attention factor 0.1 ln s + 1
    longrope   w_i / f_i (f = long or short factors); attention factor sqrt(1 + ln s / ln L)
    llama3     w_i / s below the low-frequency band, w_i above the high one, smoothed between
The attention factor a scales cos and sin (so q.k by a^2): slmx multiplies the softmax scale by a^2.
"""
import math

import numpy as np

ROPE_SCALING_TYPES = ("none", "linear", "ntk", "dynamic", "yarn", "longrope", "llama3", "freq_factors")

_HF_KEYS = {"rope_type": "type", "original_max_position_embeddings": "original_context_length"}
_KEYS = {"type", "factor", "original_context_length", "beta_fast", "beta_slow", "attention_factor",
         "mscale", "mscale_all_dim", "long_factor", "short_factor", "low_freq_factor",
         "high_freq_factor", "freq_factors", "truncate"}
_IGNORED = {"rope_theta", "partial_rotary_factor"}   # carried elsewhere in the config


MAX_FACTOR = 1024.0     # context extension factors beyond this are a typo, not a model


def normalize_rope_scaling(scaling, head_dim=None):
    """A checked copy of a scaling dict (slmx or Hugging Face keys), or None for no scaling.

    ValueError names the bad key or value.
    """
    if scaling is None:
        return None
    if isinstance(scaling, str):
        scaling = {"type": scaling}
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling must be a dict or a type name, got {type(scaling).__name__}")
    out = {}
    for k, v in scaling.items():
        k = _HF_KEYS.get(k, k)
        if k in _IGNORED:
            continue
        if k not in _KEYS:
            raise ValueError(f"rope_scaling: unknown key {k!r} (known: {', '.join(sorted(_KEYS))})")
        if v is not None:
            out[k] = v
    t = out.get("type", "linear" if "factor" in out else "none")
    if t == "default":
        t = "none"
    if t not in ROPE_SCALING_TYPES:
        raise ValueError(f"rope_scaling: type must be one of {', '.join(ROPE_SCALING_TYPES)}, got {t!r}")
    out["type"] = t
    if t == "none":
        return None
    for k in ("factor", "beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim",
              "low_freq_factor", "high_freq_factor"):
        if k in out:
            try:
                out[k] = float(out[k])
            except (TypeError, ValueError):
                raise ValueError(f"rope_scaling: {k} must be a number, got {out[k]!r}") from None
            if not (math.isfinite(out[k]) and (out[k] > 0 or k in ("mscale", "mscale_all_dim"))):
                raise ValueError(f"rope_scaling: {k} must be a positive finite number, got {out[k]}")
            if k == "factor" and out[k] > MAX_FACTOR:
                raise ValueError(f"rope_scaling: factor must be at most {MAX_FACTOR:g}, got {out[k]:g}")
    if "original_context_length" in out:
        v = out["original_context_length"]
        if isinstance(v, bool) or int(v) != v or v <= 0:
            raise ValueError(f"rope_scaling: original_context_length must be a positive integer, got {v!r}")
        out["original_context_length"] = int(v)
    need = {"linear": ("factor",), "ntk": ("factor",), "dynamic": ("factor", "original_context_length"),
            "yarn": ("factor", "original_context_length"),
            "longrope": ("long_factor", "short_factor", "original_context_length"),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_context_length"),
            "freq_factors": ("freq_factors",)}[t]
    for k in need:
        if k not in out:
            raise ValueError(f"rope_scaling: type {t!r} needs {k!r}")
    for k in ("long_factor", "short_factor", "freq_factors"):
        if k in out:
            a = np.asarray(out[k], dtype=np.float64).reshape(-1)
            if not np.all(np.isfinite(a)) or np.any(a <= 0):
                raise ValueError(f"rope_scaling: {k} must be positive finite numbers")
            if head_dim is not None and a.size != head_dim // 2:
                raise ValueError(f"rope_scaling: {k} has {a.size} values, expected head_dim/2 = {head_dim // 2}")
            out[k] = tuple(float(x) for x in a)
    if t == "llama3" and out["high_freq_factor"] <= out["low_freq_factor"]:
        raise ValueError("rope_scaling: high_freq_factor must exceed low_freq_factor")
    return out


def _mscale(s, m=1.0):
    return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0


def rope_frequencies(scaling, dim, base, n_ctx=None):
    """(inv_freq float64 (dim/2,), attention_factor): pair i rotates by pos * inv_freq[i]."""
    i2 = np.arange(0, dim, 2, dtype=np.float64) / dim
    w = 1.0 / base ** i2
    if scaling is None:
        return w, 1.0
    t = scaling["type"]
    s = scaling.get("factor", 1.0)
    L = scaling.get("original_context_length")
    if t == "linear":
        return w / s, 1.0
    if t == "ntk":
        return 1.0 / (base * s ** (dim / (dim - 2))) ** i2, 1.0
    if t == "dynamic":
        n = max(int(n_ctx or L), L)
        b = base * (s * n / L - (s - 1)) ** (dim / (dim - 2))
        return 1.0 / b ** i2, 1.0
    if t == "yarn":
        af = scaling.get("attention_factor")
        if af is None:
            m, mall = scaling.get("mscale"), scaling.get("mscale_all_dim")
            af = _mscale(s, m) / _mscale(s, mall) if m and mall else _mscale(s)
        bf, bs = scaling.get("beta_fast", 32.0), scaling.get("beta_slow", 1.0)

        def corr(rot):
            return dim * math.log(L / (rot * 2 * math.pi)) / (2 * math.log(base))
        lo, hi = corr(bf), corr(bs)
        if scaling.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - lo) / (hi - lo), 0, 1)
        extra = 1 - ramp
        return w / s * (1 - extra) + w * extra, float(af)
    if t == "longrope":
        s = scaling.get("factor")
        af = scaling.get("attention_factor")
        if af is None:
            af = 1.0 if s is None or s <= 1 else math.sqrt(1 + math.log(s) / math.log(L))
        f = scaling["long_factor"] if n_ctx and n_ctx > L else scaling["short_factor"]
        return w / np.asarray(f, np.float64), float(af)
    if t == "llama3":
        lf, hf = scaling["low_freq_factor"], scaling["high_freq_factor"]
        wl = 2 * math.pi / w
        out = np.where(wl > L / lf, w / s, w)
        smooth = (L / wl - lf) / (hf - lf)
        mid = (wl >= L / hf) & (wl <= L / lf)
        return np.where(mid, (1 - smooth) * out / s + smooth * out, out), 1.0
    if t == "freq_factors":
        return w / np.asarray(scaling["freq_factors"], np.float64) / s, 1.0
    raise ValueError(f"rope_scaling: unknown type {t!r}")


def kernel_parameters(scaling, dim, base, n_ctx=None):
    """(base, freq_scale, freq_factors float32 (dim/2,) or None, attention_factor) for
    `ops_core.rope`, which rotates pair i by pos * freq_scale * base^(-2i/dim) / freq_factors[i].

    none / linear / ntk / dynamic need no per-dimension factors (the unscaled rope stays
    exactly ggml's); the others get factors w_i / inv_freq_i.
    """
    if scaling is None:
        return base, 1.0, None, 1.0
    t = scaling["type"]
    if t == "linear":
        return base, 1.0 / scaling["factor"], None, 1.0
    if t in ("ntk", "dynamic"):
        inv, af = rope_frequencies(scaling, dim, base, n_ctx)
        b = 1.0 / inv[1] ** (dim / 2.0) if dim > 2 else base
        return float(b), 1.0, None, af
    inv, af = rope_frequencies(scaling, dim, base, n_ctx)
    w = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    return base, 1.0, (w / inv).astype(np.float32), af
