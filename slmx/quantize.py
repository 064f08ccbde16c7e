"""Quantize a model file: GGUF (or a Hugging Face folder) in, GGUF out, as llama.cpp does.

    from slmx.quantize import quantize_model
    quantize_model("model-f32.gguf", "model-q4_k_m.gguf", "Q4_K_M")   # llama.cpp's mixed recipe
    quantize_model("model-f32.gguf", "model-q6_k.gguf", "Q6_K")       # every weight matrix Q6_K

Types. A plain tensor type (F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, Q4_K, Q5_K, Q6_K) puts every
quantizable tensor in that type, as ``llama-quantize --pure`` does; a recipe (Q4_K_S, Q4_K_M,
Q5_K_S, Q5_K_M) follows llama.cpp's rules for that file type: ``output.weight`` (or a tied
``token_embd.weight``) at Q6_K, ``attn_v`` and ``ffn_down`` of some layers at Q6_K / Q5_K
(``use_more_bits``), the rest at the base type. ``pure=False`` applies those rules to a plain
type too, so every choice matches ``llama-quantize IN OUT TYPE`` with or without ``--pure``.

Which tensors are quantized (llama.cpp's rules): 2-D and 3-D tensors whose name ends in
``weight``, except norms, MoE router and a few small special tensors; 1-D tensors and the
rest are copied unchanged. A row whose length is not a multiple of the type's block falls back
as llama.cpp does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then F16); where llama.cpp has
none (the 32-block types) it is a ValueError. (llama.cpp's other use of Q4_1/Q5_1, the first
ffn_down layers of Q4_0/Q5_0 files, needs an importance matrix, which slmx does not take.)

Tensors holding NaN or inf are refused (ValueError), as llama.cpp's loader refuses them.
The encoders are slmx's kernels (``slmx.ops.quantize``), bit-exact with llama.cpp's quantizer
without an importance matrix, so for the same F32 input the tensors are byte-identical to
llama.cpp's. Tensors are written in llama.cpp's order (non-layer tensors, then layer by layer,
by name), with the input's metadata and tokenizer plus ``general.file_type`` and
``general.quantization_version``; the file is written atomically.
"""
import os
import re

import numpy as np

from . import qtypes
from .formats import gguf

__all__ = ["quantize_model", "plan_types", "RECIPES", "TYPES"]

# name -> (llama_ftype written as general.file_type, base tensor type, mixed rules by default)
RECIPES = {
    "F32": (0, "F32", False), "F16": (1, "F16", False), "BF16": (32, "BF16", False),
    "Q4_0": (2, "Q4_0", False), "Q5_0": (8, "Q5_0", False), "Q8_0": (7, "Q8_0", False),
    "Q4_1": (3, "Q4_1", False), "Q5_1": (9, "Q5_1", False),
    "Q4_K": (15, "Q4_K", False), "Q5_K": (17, "Q5_K", False), "Q6_K": (18, "Q6_K", False),
    "Q4_K_S": (14, "Q4_K", True), "Q4_K_M": (15, "Q4_K", True),
    "Q5_K_S": (16, "Q5_K", True), "Q5_K_M": (17, "Q5_K", True),
}
TYPES = tuple(RECIPES)
QUANTIZATION_VERSION = 2          # GGML_QNT_VERSION
_FLOAT_TYPES = ("F32", "F16", "BF16")
_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_WRITABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "Q4_1", "Q5_1", "Q4_K", "Q5_K", "Q6_K")
_NOT_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
                  "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
                  "indexer.q_proj.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd",
                  "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook",
                  "mm.a.code_embd")
_RWKV = tuple(f"time_mix_{s}.weight" for s in ("first", "w0", "w1", "w2", "v0", "v1", "v2", "a0", "a1",
                                                "a2", "g1", "g2", "decay_w1", "decay_w2", "lerp_fused"))
_LAYER = re.compile(r"blk\.\s*([+-]?\d+)")


def _layer(name):
    m = _LAYER.match(name)
    return int(m.group(1)) if m else -1


def llama_order(names):
    """Names in llama.cpp's tensor order: by layer (``blk.N.``; others first), then by name."""
    return sorted(names, key=lambda n: (_layer(n), n.encode("utf-8", "surrogateescape")))


def _allows_quantization(name, ndim):
    if ndim < 2 or not name.endswith("weight"):
        return False
    if any(s in name for s in _NOT_QUANTIZED + _RWKV):
        return False
    return name not in ("position_embd.weight", "token_types.weight")


def _category(name):
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                     ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                     ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _use_more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


class _State:
    def __init__(self, names, arch, n_layers, n_expert, n_head, n_head_kv):
        self.arch, self.n_layers, self.n_expert = arch, n_layers, n_expert
        self.is_70b = arch == "llama" and n_layers == 80 and n_head != n_head_kv
        self.tied = "output.weight" not in names
        self.n_attn_v = sum(_category(n) == "attn_v" for n in names)
        self.i_attn_v = self.i_ffn_down = 0


def _mixed_type(st, ftype, base, name, cat, ne0):
    """llama.cpp's choice for one tensor under the mixed rules (the branches of its file types
    slmx writes: Q4_0, Q5_0, Q4_1, Q5_1, Q8_0, Q4_K_S/M, Q5_K_S/M, Q6_K)."""
    t = base
    falcon = st.arch == "falcon"
    if cat == "output" or (st.tied and cat == "token_embd"):
        if falcon or ne0 % qtypes.qtype(t).block_size:
            return "Q8_0"
        return "Q6_K" if t != "Q8_0" else t
    if cat == "attn_v":
        if ftype in (15, 17) and _use_more_bits(st.i_attn_v, st.n_attn_v):
            t = "Q6_K"
        elif ftype == 14 and st.i_attn_v < 4:
            t = "Q5_K"
        if st.is_70b and t == "Q4_K":
            t = "Q5_K"
        if st.n_expert == 8:
            t = "Q8_0"
        st.i_attn_v += 1
    elif cat == "attn_k":
        if st.n_expert == 8:
            t = "Q8_0"
    elif cat == "ffn_down":
        i, n = st.i_ffn_down, st.n_layers
        if st.n_expert > 1:
            i = _layer(name)
            if not 0 <= i < n:
                raise ValueError(f"tensor {name}: cannot tell its layer (block_count {n})")
        if ftype == 15:
            if falcon:
                t = "Q6_K" if i < n // 16 else ("Q5_K" if _use_more_bits(i, n) else "Q4_K")
            elif _use_more_bits(i, n):
                t = "Q6_K"
        elif ftype == 17 and _use_more_bits(i, n):
            t = "Q6_K"
        elif ftype == 14 and not falcon and i < n // 8:
            t = "Q5_K"
        st.i_ffn_down += 1
    elif cat == "attn_output":
        if not falcon and st.n_expert == 8 and ftype in (14, 15):
            t = "Q5_K"
    return t


def plan_types(tensors, type="Q4_K_M", pure=None, arch="llama", n_layers=None, n_expert=0,
               n_head=0, n_head_kv=0, fallbacks=None):
    """llama.cpp's tensor types for a model: {name: type name} for every tensor.

    tensors: {name: (current type name, shape)} (numpy shape order; ``ne[0]`` = shape[-1]).
    type: a name of :data:`TYPES`; pure: None = plain types pure, recipes mixed.
    n_layers: ``<arch>.block_count`` (needed by the mixed rules); n_expert: ``<arch>.expert_count``.
    fallbacks: a dict that gets {"Q4_K -> Q5_0": n} for tensors whose rows do not fit their type.
    """
    key = str(type).upper()
    if key not in RECIPES:
        raise ValueError(f"unknown quantization type {type!r}; choose from {', '.join(TYPES)}")
    ftype, base, mixed = RECIPES[key]
    if pure is not None:
        mixed = not pure
    quantized_base = base not in _FLOAT_TYPES
    names = llama_order(tensors)
    if mixed and quantized_base and not n_layers:
        raise ValueError("plan_types: the mixed rules need the model's block count (n_layers)")
    st = _State(set(names), arch, int(n_layers or 0), int(n_expert or 0), n_head, n_head_kv)
    out = {}
    for name in names:
        cur, shape = tensors[name]
        if not _allows_quantization(name, len(shape)):
            out[name] = cur
            continue
        t = base
        if quantized_base:
            ne0 = int(shape[-1])
            if mixed:
                t = _mixed_type(st, ftype, base, name, _category(name), ne0)
            if ne0 % qtypes.qtype(t).block_size:
                if t not in _FALLBACK:
                    raise ValueError(f"tensor {name}: rows of {ne0} are not a multiple of {t}'s block "
                                     f"size {qtypes.qtype(t).block_size} (llama.cpp has no fallback for {t})")
                t0, t = t, _FALLBACK[t]
                if ne0 % qtypes.qtype(t).block_size:
                    t = "F16"
                if fallbacks is not None:
                    k = f"{t0} -> {t}"
                    fallbacks[k] = fallbacks.get(k, 0) + 1
            if t not in _WRITABLE:
                raise ValueError(f"tensor {name}: rows of {ne0} need llama.cpp's fallback type {t}, "
                                 "which slmx does not write; choose Q4_K/Q6_K or a recipe of them")
        out[name] = t
    return out


# --- reading ------------------------------------------------------------------------------

class _Source:
    """Model metadata (typed, file order) and tensors {name: (type name, shape, data)}."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._close = []
        if os.path.isdir(self.path):
            self._from_hf()
        else:
            f = gguf.read(self.path)
            self._close.append(f.close)
            self.metadata = f.typed_metadata()
            self.tensors = {n: (t.type_name, t.shape, t) for n, t in f.tensors.items()}

    def _from_hf(self):
        from . import convert
        from .formats import hf
        from .tokenizer.gguf_meta import gguf_metadata
        cfg, tensors, tok, weights = convert.load_hf_folder(self.path, layout="gguf")
        self._close.append(weights.close)
        meta = convert.gguf_model_metadata(cfg, name=os.path.basename(os.path.abspath(self.path)))
        meta.update(gguf_metadata(tok, vocab_size=cfg.vocab_size))
        self.metadata = meta
        self.tensors = {}
        for n, t in tensors.items():
            if len(t.shape) == 1 and t.type != qtypes.F32:    # vectors go F32, as llama.cpp's converter
                t = hf.ArrayTensor(n, qtypes.F32, np.ascontiguousarray(hf.to_f32(t, n), dtype=np.float32))
            self.tensors[n] = (qtypes.qtype(t.type).name, tuple(t.shape), t)

    def value(self, key, default=None):
        v = self.metadata.get(key, default)
        return v.value if isinstance(v, gguf.Typed) else v

    def close(self):
        for c in self._close:
            c()


def _as_f32(name, src_type, t, allow_requantize):
    """float32 array (numpy shape) of a source tensor."""
    from .formats import hf
    from .ops import dequantize
    if isinstance(t, gguf.Tensor):
        if src_type == "F32":
            return np.asarray(t.data)
        if src_type == "F16":
            return np.asarray(t.data).astype(np.float32)
        if src_type not in _FLOAT_TYPES and not allow_requantize:
            raise ValueError(f"tensor {name} is {src_type}: requantizing is off (--allow-requantize / "
                             "allow_requantize=True decodes it first)")
        if src_type not in qtypes.SUPPORTED:
            raise ValueError(f"tensor {name}: cannot convert type {src_type}")
        return dequantize(np.asarray(t.data).view(np.uint8), src_type, t.shape)
    return np.ascontiguousarray(hf.to_f32(t, name), dtype=np.float32)


def _raw(t):
    return np.asarray(t.data)


def _check_finite(name, a, chunk=1 << 20):
    """ValueError if a float array holds NaN or inf (llama.cpp refuses such input tensors too)."""
    flat = np.asarray(a).reshape(-1)
    if flat.dtype == np.uint16:                                     # BF16 bits: exponent all ones
        for i in range(0, flat.size, chunk):
            if ((flat[i:i + chunk] & 0x7f80) == 0x7f80).any():
                raise ValueError(f"tensor {name} holds NaN or inf values")
        return
    if flat.dtype.kind != "f":
        return
    for i in range(0, flat.size, chunk):
        if not np.isfinite(flat[i:i + chunk]).all():
            raise ValueError(f"tensor {name} holds NaN or inf values")


def quantize_model(src, dst, type="Q4_K_M", pure=None, threads=None, allow_requantize=False,
                   progress=None):
    """Quantize the model at ``src`` (GGUF file or HF folder) into the GGUF file ``dst``.

    type: one of :data:`TYPES` (plain tensor types are pure, recipes mixed; see the module
    docstring); pure: override that. threads: kernel threads. allow_requantize: accept already
    quantized input tensors (dequantized first, as llama.cpp's --allow-requantize).
    progress: callable(name, new type, i, n) after each tensor. Returns a summary dict
    (path, type, file_type, bytes, n_tensors, types {name: type}, counts {type: n},
    fallbacks {"Q4_K -> Q5_0": n}: tensors whose rows do not fit the type's blocks).
    """
    from .ops import quantize
    key = str(type).upper()
    if key not in RECIPES:
        raise ValueError(f"unknown quantization type {type!r}; choose from {', '.join(TYPES)}")
    if os.path.abspath(os.fspath(src)) == os.path.abspath(os.fspath(dst)):
        raise ValueError("quantize_model: input and output are the same file")
    ftype = RECIPES[key][0]
    s = _Source(src)
    try:
        arch = s.value("general.architecture")
        if not isinstance(arch, str):
            raise ValueError(f"{s.path}: no general.architecture")
        fallbacks = {}
        types = plan_types({n: (v[0], v[1]) for n, v in s.tensors.items()}, key, pure=pure, arch=arch,
                           n_layers=s.value(f"{arch}.block_count"), n_expert=s.value(f"{arch}.expert_count", 0),
                           n_head=s.value(f"{arch}.attention.head_count", 0),
                           n_head_kv=s.value(f"{arch}.attention.head_count_kv", 0), fallbacks=fallbacks)
        meta = {k: v for k, v in s.metadata.items()
                if k not in ("general.quantization_version", "general.file_type", "split.no", "split.count",
                             "split.tensors.count")}
        meta["general.quantization_version"] = gguf.typed(QUANTIZATION_VERSION, "uint32")
        meta["general.file_type"] = gguf.typed(ftype, "uint32")
        out = []
        names = llama_order(s.tensors)
        for i, name in enumerate(names):
            cur, shape, t = s.tensors[name]
            new = types[name]
            if new == cur:
                raw = _raw(t)
                if cur in _FLOAT_TYPES:
                    _check_finite(name, raw)
                out.append((name, qtypes.qtype(cur).id, shape, raw))
            else:
                x = _as_f32(name, cur, t, allow_requantize)
                _check_finite(name, x)
                out.append((name, qtypes.qtype(new).id, shape, quantize(x, new, threads=threads)))
            if progress is not None:
                progress(name, new, i + 1, len(names))
        size = gguf.write(dst, meta, out)
    finally:
        s.close()
    counts = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    return {"path": os.fspath(dst), "type": key, "file_type": ftype, "bytes": size,
            "n_tensors": len(types), "types": types, "counts": counts, "fallbacks": fallbacks}
