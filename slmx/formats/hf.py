"""Hugging Face model folders: ``config.json`` <-> ModelConfig, HF tensor names <-> GGUF names.

    cfg = config_from_hf(read_json("model/config.json"))      # FormatError on missing/contradictory fields
    weights = safetensors.read_folder("model")                 # mmap'd, zero-copy
    tensors = tensors_from_hf(cfg, weights.tensors)            # GGUF names, for slmx's forward
    tensors = tensors_from_hf(cfg, weights.tensors, layout="gguf")   # + llama.cpp's q/k row order

Architectures: ``llama`` (Llama 2/3, SmolLM, TinyLlama), ``mistral``, ``qwen2``, ``gemma3_text``.

RoPE pairing. HF's Llama/Mistral rotate halves (i, i + D/2) of each head; llama.cpp's ``llama``
GGUFs rotate adjacent pairs (2i, 2i+1) and its converter permutes the rows of q and k to match.
Loaded for slmx's forward (``layout="hf"``) the weights stay as stored and the config says
``rope_neox=True``: no copy. For a GGUF file (``layout="gguf"``) q/k rows are permuted (a copy)
and the config becomes ``rope_neox=False``, as llama.cpp expects. :func:`tensors_to_hf` undoes it.

Zero-copy: 2-D F32, F16 and BF16 weights are the file's bytes (slmx's Linear takes all three).
Norm weights and biases become F32 copies (small; Gemma's norms also get their +1 folded in).
"""
import json
import math
import os

import numpy as np

from .. import qtypes
from ..errors import FormatError
from ..model.config import ModelConfig

__all__ = ["ArrayTensor", "read_json", "config_from_hf", "config_to_hf", "tensors_from_hf",
           "tensors_to_hf", "permute_qk", "unpermute_qk", "HF_MODEL_TYPES", "MAX_JSON"]

MAX_JSON = 64 << 20
# HF model_type -> slmx/GGUF architecture
HF_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "gemma3_text": "gemma3"}
_HF_CLASS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
             "gemma3": "Gemma3ForCausalLM"}
_HF_TYPE = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "gemma3": "gemma3_text"}


class ArrayTensor:
    """A tensor held as a numpy array (a view of a file's mmap or an owned copy):
    ``name``, ``type`` (ggml id), ``shape`` (numpy order), ``data`` (BF16 as uint16)."""
    __slots__ = ("name", "type", "shape", "data")

    def __init__(self, name, type_id, data):
        self.name, self.type, self.data = name, type_id, data
        self.shape = tuple(data.shape)

    @property
    def nbytes(self):
        return self.data.nbytes

    def __repr__(self):
        return f"ArrayTensor({self.name!r}, {qtypes.qtype(self.type).name}, shape={self.shape})"


def read_json(path, required=True):
    """A JSON object file -> dict (None when absent and not required). FormatError when it is
    not UTF-8 JSON, not an object, has a key twice or is larger than MAX_JSON."""
    from .safetensors import parse_json_object
    path = os.fspath(path)
    if not os.path.isfile(path):
        if required:
            raise FormatError(f"{path}: missing")
        return None
    with open(path, "rb") as f:
        raw = f.read(MAX_JSON + 1)
    if len(raw) > MAX_JSON:
        raise FormatError(f"{path}: larger than {MAX_JSON} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not UTF-8 ({e})") from None
    return parse_json_object(text, os.path.basename(path))


# --- config.json -> ModelConfig ----------------------------------------------------------------

def _field(d, key, kind, where, default=None, required=True):
    if key not in d or d[key] is None:
        if required and default is None:
            raise FormatError(f"{where}: missing required field {key!r}")
        return default
    v = d[key]
    if kind is int:
        if not isinstance(v, int) or isinstance(v, bool):
            raise FormatError(f"{where}: {key!r} must be an integer, got {v!r}"[:200])
        return v
    if kind is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise FormatError(f"{where}: {key!r} must be a number, got {v!r}"[:200])
        return float(v)
    if kind is bool:
        if not isinstance(v, bool):
            raise FormatError(f"{where}: {key!r} must be true or false, got {v!r}"[:200])
        return v
    if not isinstance(v, kind):
        raise FormatError(f"{where}: {key!r} has the wrong type ({type(v).__name__})")
    return v


def _rope(d, where, kind=None):
    """(rope_theta, linear factor) from rope_parameters (transformers >= 5; per layer kind for
    Gemma 3) or the older rope_theta / rope_scaling fields."""
    rp = d.get("rope_parameters")
    if isinstance(rp, dict) and kind is not None and kind in rp:
        rp = rp[kind]
    if rp is not None and not isinstance(rp, dict):
        raise FormatError(f"{where}: 'rope_parameters' must be an object")
    scaling = d.get("rope_scaling")
    if rp is not None and "rope_theta" in rp:
        theta = _field(rp, "rope_theta", float, where + ".rope_parameters")
        rtype = rp.get("rope_type", rp.get("type", "default"))
        scaling = rp if rtype not in (None, "default") else None
    else:
        theta = _field(d, "rope_theta", float, where, default=10000.0)
    factor = 1.0
    other = None
    if scaling is not None:
        if not isinstance(scaling, dict):
            raise FormatError(f"{where}: 'rope_scaling' must be an object")
        rtype = scaling.get("rope_type", scaling.get("type"))
        if rtype in (None, "default"):
            pass
        elif rtype == "linear":
            factor = _field(scaling, "factor", float, where + ".rope_scaling")
            if factor <= 0:
                raise FormatError(f"{where}: rope scaling factor must be positive, got {factor}")
        else:
            # yarn, dynamic, longrope, llama3: slmx.model.rope (HF keys accepted as they are)
            from ..model.rope import normalize_rope_scaling
            sc = dict(scaling)
            if rtype == "dynamic":      # transformers: relative to max_position_embeddings
                sc["original_max_position_embeddings"] = d.get("max_position_embeddings", 2048)
            if rtype in ("longrope", "yarn") and sc.get("original_max_position_embeddings") is None:
                sc["original_max_position_embeddings"] = d.get("original_max_position_embeddings",
                                                               d.get("max_position_embeddings", 2048))
            if rtype == "longrope" and sc.get("factor") is None and d.get("original_max_position_embeddings"):
                sc["factor"] = d["max_position_embeddings"] / d["original_max_position_embeddings"]
            try:
                other = normalize_rope_scaling(sc)
            except ValueError as e:
                raise FormatError(f"{where}: {e}") from None
    if not theta > 0:
        raise FormatError(f"{where}: rope_theta must be positive, got {theta}")
    if other is not None:
        return theta, other
    return theta, factor


def config_from_hf(d, where="config.json", tensors=None):
    """ModelConfig of a HF ``config.json`` dict (``layout="hf"``: HF's RoPE pairing, see the module
    docstring). ``tensors`` (HF name -> tensor), when given, decides tied embeddings and checks the
    vocabulary size. Raises FormatError on missing, unsupported or contradictory fields."""
    if not isinstance(d, dict):
        raise FormatError(f"{where}: expected a JSON object")
    mt = d.get("model_type")
    if mt == "gemma3" and isinstance(d.get("text_config"), dict):
        raise FormatError(f"{where}: multimodal Gemma 3 (model_type 'gemma3') is not supported; "
                          "use a text-only Gemma3ForCausalLM checkpoint (model_type 'gemma3_text')")
    if mt not in HF_MODEL_TYPES:
        raise FormatError(f"{where}: model_type {mt!r} is not supported "
                          f"(supported: {', '.join(HF_MODEL_TYPES)})")
    arch = HF_MODEL_TYPES[mt]
    d_model = _field(d, "hidden_size", int, where)
    n_heads = _field(d, "num_attention_heads", int, where)
    n_kv = _field(d, "num_key_value_heads", int, where, default=n_heads)
    if d_model <= 0 or n_heads <= 0 or n_kv <= 0:
        raise FormatError(f"{where}: hidden_size, num_attention_heads and num_key_value_heads must be "
                          f"positive (got {d_model}, {n_heads}, {n_kv})")
    head_dim = _field(d, "head_dim", int, where, required=False)
    if head_dim is None:
        if d_model % n_heads:
            raise FormatError(f"{where}: hidden_size {d_model} is not divisible by num_attention_heads "
                              f"{n_heads} (and no head_dim is given)")
        head_dim = d_model // n_heads
    if n_heads % n_kv:
        raise FormatError(f"{where}: num_attention_heads {n_heads} is not a multiple of "
                          f"num_key_value_heads {n_kv}")
    act_key = "hidden_activation" if arch == "gemma3" else "hidden_act"
    act = d.get(act_key) or d.get("hidden_act")
    acts = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
    if act not in acts:
        raise FormatError(f"{where}: activation {act!r} is not supported (silu, gelu_pytorch_tanh)")
    for key in ("attention_bias", "mlp_bias"):
        if arch != "qwen2" and d.get(key):
            raise FormatError(f"{where}: {key} = true is not supported")
    kw = dict(
        arch=arch, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim,
        vocab_size=_field(d, "vocab_size", int, where),
        n_layers=_field(d, "num_hidden_layers", int, where),
        ffn_dim=_field(d, "intermediate_size", int, where),
        context_length=_field(d, "max_position_embeddings", int, where, default=2048),
        norm_eps=_field(d, "rms_norm_eps", float, where, default=1e-6),
        activation=acts[act], rope_neox=True,
    )
    default_tied = arch == "gemma3"
    tied = _field(d, "tie_word_embeddings", bool, where, default=default_tied, required=False)
    if arch == "gemma3":
        theta, factor = _rope(d, where, "full_attention")
        local = d.get("rope_local_base_freq")
        if isinstance(d.get("rope_parameters"), dict) and "sliding_attention" in d["rope_parameters"]:
            local, lf = _rope(d, where, "sliding_attention")
            if lf != 1.0:
                raise FormatError(f"{where}: RoPE scaling on sliding layers is not supported")
        if isinstance(factor, dict):
            kw["rope_scaling"] = factor
        elif factor != 1.0:
            kw["rope_freq_scale"] = 1.0 / factor      # global layers only (layer_rope_freq_scale)
        kw.update(rope_base=theta, rope_base_local=float(local if local is not None else 10000.0),
                  post_norms=True, qk_norm=True, embed_scale=math.sqrt(d_model),
                  sliding_window=_field(d, "sliding_window", int, where, default=4096),
                  sliding_pattern=_gemma_pattern(d, kw["n_layers"], where))
        q = _field(d, "query_pre_attn_scalar", float, where, default=float(head_dim))
        if q <= 0:
            raise FormatError(f"{where}: query_pre_attn_scalar must be positive, got {q}")
        kw["attn_scale"] = q ** -0.5
        if d.get("attn_logit_softcapping"):
            raise FormatError(f"{where}: attn_logit_softcapping is not supported")
        cap = d.get("final_logit_softcapping")
        if cap:
            kw["final_logit_softcap"] = _field(d, "final_logit_softcapping", float, where)
        if d.get("use_bidirectional_attention"):
            raise FormatError(f"{where}: use_bidirectional_attention is not supported")
    else:
        theta, factor = _rope(d, where)
        if isinstance(factor, dict):
            kw.update(rope_base=theta, rope_scaling=factor)
        else:
            kw.update(rope_base=theta, rope_freq_scale=1.0 / factor)
        if arch == "qwen2":
            kw["qkv_bias"] = True
            if d.get("use_sliding_window"):
                raise FormatError(f"{where}: Qwen2 use_sliding_window = true is not supported")
        elif arch == "mistral" and d.get("sliding_window"):
            w = _field(d, "sliding_window", int, where)
            if w < kw["context_length"]:
                kw.update(sliding_window=w, sliding_pattern=-1)
    if tensors is not None:
        if "model.embed_tokens.weight" not in tensors:
            raise FormatError(f"{where}: the weights have no 'model.embed_tokens.weight'")
        rows = tensors["model.embed_tokens.weight"].shape
        if tuple(rows) != (kw["vocab_size"], d_model):
            raise FormatError(f"{where}: vocab_size {kw['vocab_size']} x hidden_size {d_model} "
                              f"contradicts model.embed_tokens.weight of shape {tuple(rows)}")
        if "lm_head.weight" not in tensors:
            tied = True
    kw["tied_embeddings"] = bool(tied)
    try:
        return ModelConfig(**kw)
    except FormatError as e:
        raise FormatError(f"{where}: {e}") from None


def _gemma_pattern(d, n_layers, where):
    """ModelConfig.sliding_pattern from Gemma 3's layer_types (or sliding_window_pattern)."""
    lt = d.get("layer_types")
    if lt is None:
        n = d.get("sliding_window_pattern", d.get("_sliding_window_pattern", 6))
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise FormatError(f"{where}: sliding_window_pattern must be a positive integer, got {n!r}")
        return n
    if not isinstance(lt, list) or len(lt) != n_layers:
        raise FormatError(f"{where}: layer_types must list {n_layers} layers")
    if any(t not in ("sliding_attention", "full_attention") for t in lt):
        raise FormatError(f"{where}: layer_types holds an unknown kind")
    full = [i for i, t in enumerate(lt) if t == "full_attention"]
    n = full[0] + 1 if full else n_layers + 1
    if any((t == "full_attention") != ((i + 1) % n == 0) for i, t in enumerate(lt)):
        raise FormatError(f"{where}: layer_types is not a repeating pattern of sliding layers and one "
                          "full-attention layer")
    return n


def config_to_hf(cfg, bos_id=None, eos_id=None):
    """config.json dict (transformers' fields) for a ModelConfig of arch llama, mistral, qwen2
    or gemma3. The weights it describes are in HF layout (see :func:`tensors_to_hf`)."""
    arch = cfg.arch
    if arch not in _HF_TYPE:
        raise ValueError(f"config_to_hf: architecture {arch!r} has no HF equivalent here")
    if cfg.rope_scaling is not None:
        raise ValueError(f"config_to_hf: RoPE scaling {cfg.rope_scaling['type']!r} is not written to config.json")
    d = {
        "architectures": [_HF_CLASS[arch]], "model_type": _HF_TYPE[arch],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.context_length, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": bool(cfg.tied_embeddings), "torch_dtype": "float32", "dtype": "float32",
        "bos_token_id": bos_id, "eos_token_id": eos_id,
    }
    if arch == "gemma3":
        if cfg.rope_freq_scale != 1.0:
            raise ValueError("config_to_hf: Gemma 3 with RoPE scaling is not supported")
        n = cfg.sliding_pattern
        d.update(hidden_activation="gelu_pytorch_tanh", sliding_window=cfg.sliding_window,
                 query_pre_attn_scalar=1.0 / cfg.scale ** 2, final_logit_softcapping=cfg.final_logit_softcap or None,
                 layer_types=["full_attention" if (i + 1) % n == 0 else "sliding_attention"
                              for i in range(cfg.n_layers)],
                 rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": cfg.rope_base},
                                  "sliding_attention": {"rope_type": "default",
                                                        "rope_theta": cfg.rope_base_local or 10000.0}})
        return d
    if cfg.scale != 1.0 / math.sqrt(cfg.head_dim) or cfg.final_logit_softcap or cfg.post_norms or cfg.qk_norm:
        raise ValueError(f"config_to_hf: this {arch} config has switches HF's {arch} does not have")
    rp = {"rope_type": "default", "rope_theta": cfg.rope_base}
    if cfg.rope_freq_scale != 1.0:
        rp = {"rope_type": "linear", "rope_theta": cfg.rope_base, "factor": 1.0 / cfg.rope_freq_scale}
    d.update(hidden_act="silu", rope_parameters=rp, rope_theta=cfg.rope_base)
    if arch == "qwen2":
        d.update(use_sliding_window=False, sliding_window=None)
    elif arch == "mistral":
        d["sliding_window"] = cfg.sliding_window or None
    else:
        d.update(attention_bias=False, mlp_bias=False)
    return d


# --- tensors --------------------------------------------------------------------------------

def permute_qk(w, n_head):
    """HF rows (per head: first halves, then second halves) -> llama.cpp's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w, n_head):
    """Inverse of :func:`permute_qk`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_f32(t, name):
    """float32 array of a tensor of type F32/F16/BF16/F64 (an owned copy unless already F32)."""
    a = t.data
    if t.type == qtypes.F32:
        return np.asarray(a)
    if t.type == qtypes.BF16:
        return (np.asarray(a).astype(np.uint32) << 16).view(np.float32)
    if t.type in (qtypes.F16, qtypes.BY_NAME["F64"].id):
        return np.asarray(a).astype(np.float32)
    raise FormatError(f"tensor {name!r}: type {qtypes.qtype(t.type).name if t.type is not None else t}"
                      " is not a float type")


_LAYER_MAP = {   # HF suffix -> (GGUF suffix, kind): "w" weight matrix, "v" vector (norm/bias)
    "input_layernorm.weight": ("attn_norm.weight", "n"),
    "self_attn.q_proj.weight": ("attn_q.weight", "w"),
    "self_attn.k_proj.weight": ("attn_k.weight", "w"),
    "self_attn.v_proj.weight": ("attn_v.weight", "w"),
    "self_attn.o_proj.weight": ("attn_output.weight", "w"),
    "self_attn.q_proj.bias": ("attn_q.bias", "b"),
    "self_attn.k_proj.bias": ("attn_k.bias", "b"),
    "self_attn.v_proj.bias": ("attn_v.bias", "b"),
    "self_attn.q_norm.weight": ("attn_q_norm.weight", "n"),
    "self_attn.k_norm.weight": ("attn_k_norm.weight", "n"),
    "mlp.gate_proj.weight": ("ffn_gate.weight", "w"),
    "mlp.up_proj.weight": ("ffn_up.weight", "w"),
    "mlp.down_proj.weight": ("ffn_down.weight", "w"),
}
_LAYER_MAP_LLAMA = {"post_attention_layernorm.weight": ("ffn_norm.weight", "n")}
_LAYER_MAP_GEMMA = {"post_attention_layernorm.weight": ("post_attention_norm.weight", "n"),
                    "pre_feedforward_layernorm.weight": ("ffn_norm.weight", "n"),
                    "post_feedforward_layernorm.weight": ("post_ffw_norm.weight", "n")}
_IGNORED = ("rotary_emb.inv_freq",)


def _name_map(cfg):
    """HF name -> (GGUF name, kind) for a config."""
    m = {"model.embed_tokens.weight": ("token_embd.weight", "e"),
         "model.norm.weight": ("output_norm.weight", "n")}
    if not cfg.tied_embeddings:
        m["lm_head.weight"] = ("output.weight", "w")
    lm = dict(_LAYER_MAP, **(_LAYER_MAP_GEMMA if cfg.arch == "gemma3" else _LAYER_MAP_LLAMA))
    if not cfg.qkv_bias:
        lm = {k: v for k, v in lm.items() if v[1] != "b"}
    if not cfg.qk_norm:
        lm = {k: v for k, v in lm.items() if "_norm." not in k}
    for i in range(cfg.n_layers):
        for k, (g, kind) in lm.items():
            m[f"model.layers.{i}.{k}"] = (f"blk.{i}.{g}", kind)
    return m


def tensors_from_hf(cfg, tensors, layout="hf"):
    """HF tensors (name -> tensor with .type, .shape, .data) -> GGUF-named :class:`ArrayTensor` s.

    layout "hf": for slmx's forward with ``cfg`` from :func:`config_from_hf` (rope_neox): weight
    matrices are the file's bytes. layout "gguf": llama.cpp's layout (q/k rows permuted for
    llama/mistral); returns (config with rope_neox False, tensors). Every tensor must be known.
    """
    if layout not in ("hf", "gguf"):
        raise ValueError(f"layout must be 'hf' or 'gguf', got {layout!r}")
    names = _name_map(cfg)
    one = 1.0 if cfg.arch == "gemma3" else 0.0
    permute = layout == "gguf" and cfg.arch in ("llama", "mistral")
    out = {}
    for hf_name, t in tensors.items():
        if hf_name not in names:
            if hf_name.endswith(_IGNORED) or (hf_name == "lm_head.weight" and cfg.tied_embeddings):
                continue
            raise FormatError(f"tensor {hf_name!r} is not part of a {cfg.arch} model with "
                              f"{cfg.n_layers} layers (not used by slmx)")
        g, kind = names[hf_name]
        if t.type is None or qtypes.qtype(t.type).name not in ("F32", "F16", "BF16", "F64"):
            raise FormatError(f"tensor {hf_name!r}: dtype {getattr(t, 'dtype', t.type)} is not a float type")
        if kind in ("n", "b"):
            if len(t.shape) != 1:
                raise FormatError(f"tensor {hf_name!r}: expected a vector, got shape {tuple(t.shape)}")
            v = to_f32(t, hf_name)
            if kind == "n" and one:
                v = v + np.float32(one)
            elif v.dtype != np.float32 or not v.flags.c_contiguous:
                v = np.ascontiguousarray(v, np.float32)
            if permute and g.endswith(("attn_q.bias", "attn_k.bias")):
                v = permute_qk(v, cfg.n_heads if "attn_q" in g else cfg.n_kv_heads)
            out[g] = ArrayTensor(g, qtypes.F32, v)
            continue
        if len(t.shape) != 2:
            raise FormatError(f"tensor {hf_name!r}: expected a matrix, got shape {tuple(t.shape)}")
        ty, a = t.type, t.data
        if ty == qtypes.BY_NAME["F64"].id:
            ty, a = qtypes.F32, a.astype(np.float32)
        if permute and g.endswith(("attn_q.weight", "attn_k.weight")):
            a = np.ascontiguousarray(permute_qk(a, cfg.n_heads if "attn_q" in g else cfg.n_kv_heads))
        out[g] = ArrayTensor(g, ty, a)
    missing = [hf for hf, (g, _) in names.items() if g not in out]
    if missing:
        raise FormatError(f"model tensors: {missing[0]!r} is missing"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if layout == "gguf":
        from dataclasses import replace
        return replace(cfg, rope_neox=cfg.arch not in ("llama", "mistral")), out
    return out


def tensors_to_hf(cfg, tensors):
    """GGUF-named float tensors (name -> numpy float32 array, or tensor objects) of a ModelConfig in
    llama.cpp's layout -> HF name -> float32 array (q/k rows un-permuted for llama/mistral when
    ``cfg.rope_neox`` is false; Gemma's norms minus 1)."""
    names = {g: hf for hf, (g, _) in _name_map(cfg).items()}
    unperm = cfg.arch in ("llama", "mistral") and not cfg.rope_neox
    if cfg.arch not in ("llama", "mistral") and not cfg.rope_neox:
        raise ValueError(f"tensors_to_hf: a {cfg.arch} model with interleaved RoPE has no HF form")
    one = 1.0 if cfg.arch == "gemma3" else 0.0
    kinds = {g: k for _, (g, k) in _name_map(cfg).items()}
    out = {}
    for g, t in tensors.items():
        if g not in names:
            raise ValueError(f"tensors_to_hf: tensor {g!r} has no HF name")
        a = t if isinstance(t, np.ndarray) else to_f32(t, g)
        a = np.asarray(a, np.float32)
        if unperm and g.endswith(("attn_q.weight", "attn_k.weight", "attn_q.bias", "attn_k.bias")):
            a = unpermute_qk(a, cfg.n_heads if ".attn_q." in g else cfg.n_kv_heads)
        if one and kinds[g] == "n":
            a = a - np.float32(one)
        out[names[g]] = np.ascontiguousarray(a)
    return out
