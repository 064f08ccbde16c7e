"""ModelConfig: every switch the one transformer forward needs, and the architecture registry.

An architecture is data: how its GGUF metadata maps onto ModelConfig and which switches it sets
(norm placement, activation, RoPE pairing, sliding-window pattern, embedding scale). Llama 2/3,
SmolLM, TinyLlama, Mistral (`llama`), Qwen2 (`qwen2`) and Gemma 3 (`gemma3`) share one forward.
"""
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

from ..errors import FormatError


@dataclass
class ModelConfig:
    """Hyper-parameters and architecture switches of a decoder-only transformer.

    Shapes: embeddings (vocab_size, d_model); q (n_heads * head_dim), k and v (n_kv_heads * head_dim).
    """
    arch: str = "llama"
    vocab_size: int = 32000
    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32
    head_dim: int = 128
    ffn_dim: int = 11008
    context_length: int = 2048
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    rope_base_local: Optional[float] = None   # RoPE base on sliding-window layers (Gemma 3)
    rope_neox: bool = False                   # pairs (i, i+D/2) instead of (2i, 2i+1)
    rope_freq_scale: float = 1.0              # linear RoPE scaling: positions * rope_freq_scale
    rope_scaling: Optional[dict] = None       # long-context RoPE scaling (slmx.model.rope); global
                                              # layers only where sliding layers have their own base
    activation: str = "silu"                  # "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    embed_scale: float = 1.0                  # token embeddings multiplied by this (Gemma: sqrt(d_model))
    post_norms: bool = False                  # RMSNorm after attention and FFN too (Gemma 2/3)
    qk_norm: bool = False                     # RMSNorm of each q and k head (Gemma 3, Qwen3)
    qkv_bias: bool = False                    # biases on q, k, v projections (Qwen2)
    sliding_window: int = 0                   # 0: none
    sliding_pattern: int = 0                  # n > 0: layer l slides unless (l + 1) % n == 0; -1: all slide
    attn_scale: Optional[float] = None        # default 1/sqrt(head_dim)
    final_logit_softcap: float = 0.0
    tied_embeddings: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raise FormatError when the hyper-parameters contradict each other."""
        pos = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim",
               "context_length")
        for name in pos:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise FormatError(f"model config: {name} must be a positive integer, got {v!r}")
        if self.n_heads % self.n_kv_heads:
            raise FormatError(f"model config: n_heads {self.n_heads} is not a multiple of "
                              f"n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise FormatError(f"model config: head_dim {self.head_dim} must be even for RoPE")
        if self.activation not in ("silu", "gelu_tanh"):
            raise FormatError(f"model config: unknown activation {self.activation!r}")
        if not (self.norm_eps > 0 and math.isfinite(self.norm_eps)):
            raise FormatError(f"model config: norm_eps must be positive, got {self.norm_eps}")
        if not (self.rope_base > 0 and math.isfinite(self.rope_base)):
            raise FormatError(f"model config: rope_base must be positive, got {self.rope_base}")
        if self.rope_scaling is not None:
            from .rope import normalize_rope_scaling
            try:
                self.rope_scaling = normalize_rope_scaling(self.rope_scaling, self.head_dim)
            except ValueError as e:
                raise FormatError(f"model config: {e}") from None
        if self.sliding_window < 0:
            raise FormatError(f"model config: sliding_window must be >= 0, got {self.sliding_window}")

    @property
    def q_dim(self):
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self):
        return self.n_kv_heads * self.head_dim

    @property
    def scale(self):
        return self.attn_scale if self.attn_scale is not None else 1.0 / math.sqrt(self.head_dim)

    def is_sliding(self, layer):
        """True when `layer` uses sliding-window attention."""
        if not self.sliding_window or not self.sliding_pattern:
            return False
        if self.sliding_pattern < 0:
            return True
        return (layer + 1) % self.sliding_pattern != 0

    def layer_rope_base(self, layer):
        if self.is_sliding(layer) and self.rope_base_local:
            return self.rope_base_local
        return self.rope_base

    def layer_rope_scaling(self, layer):
        """The RoPE scaling of `layer`: none on sliding layers with their own base (Gemma 3)."""
        if self.is_sliding(layer) and self.rope_base_local:
            return None
        return self.rope_scaling

    def layer_rope_freq_scale(self, layer):
        if self.is_sliding(layer) and self.rope_base_local:
            return 1.0
        return self.rope_freq_scale

    def to_dict(self):
        return asdict(self)


# --- architectures: GGUF metadata -> ModelConfig ------------------------------------------------

@dataclass
class Architecture:
    """How one GGUF architecture maps onto ModelConfig: fixed switches plus metadata defaults."""
    name: str
    switches: dict = field(default_factory=dict)


ARCHITECTURES = {
    "llama": Architecture("llama", dict(activation="silu", rope_neox=False)),
    "mistral": Architecture("mistral", dict(activation="silu", rope_neox=False)),
    "qwen2": Architecture("qwen2", dict(activation="silu", rope_neox=True, qkv_bias=True)),
    "gemma3": Architecture("gemma3", dict(activation="gelu_tanh", rope_neox=True, post_norms=True,
                                          qk_norm=True, sliding_pattern=6, rope_base_local=10000.0)),
}


def _req(meta, key, kind=int):
    if key not in meta:
        raise FormatError(f"model metadata: missing required key {key!r}")
    v = meta[key]
    try:
        if kind is int:
            if isinstance(v, bool) or int(v) != v:
                raise TypeError
            return int(v)
        return float(v)
    except (TypeError, ValueError):
        raise FormatError(f"model metadata: {key!r} must be a {kind.__name__}, got {v!r}") from None


def config_from_gguf(meta, tensors):
    """ModelConfig from a GGUF file's metadata dict and its tensors (name -> tensor with .shape)."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise FormatError("model metadata: missing or non-string 'general.architecture'")
    if arch not in ARCHITECTURES:
        raise FormatError(f"model metadata: architecture {arch!r} is not supported "
                          f"(supported: {', '.join(sorted(ARCHITECTURES))})")
    a = ARCHITECTURES[arch]
    p = arch + "."
    d_model = _req(meta, p + "embedding_length")
    n_heads = _req(meta, p + "attention.head_count")
    n_kv = meta.get(p + "attention.head_count_kv", n_heads)
    if isinstance(n_kv, (list, tuple)):
        raise FormatError(f"model metadata: per-layer {p}attention.head_count_kv is not supported")
    head_dim = int(meta.get(p + "attention.key_length", d_model // n_heads if n_heads else 0))
    if "token_embd.weight" not in tensors:
        raise FormatError("model tensors: 'token_embd.weight' is missing")
    vocab = int(tensors["token_embd.weight"].shape[0])
    kw = dict(a.switches)
    kw.update(
        arch=arch, vocab_size=vocab, d_model=d_model, n_layers=_req(meta, p + "block_count"),
        n_heads=n_heads, n_kv_heads=int(n_kv), head_dim=head_dim,
        ffn_dim=_req(meta, p + "feed_forward_length"),
        context_length=int(meta.get(p + "context_length", 2048)),
        norm_eps=float(meta.get(p + "attention.layer_norm_rms_epsilon", 1e-5)),
        rope_base=float(meta.get(p + "rope.freq_base", 10000.0)),
        tied_embeddings="output.weight" not in tensors,
    )
    kw.update(_gguf_rope_scaling(meta, p, tensors, head_dim))
    if arch == "gemma3":
        kw["embed_scale"] = math.sqrt(d_model)
        kw["sliding_window"] = int(meta.get(p + "attention.sliding_window", 512))
    elif p + "attention.sliding_window" in meta:
        kw["sliding_window"] = int(meta[p + "attention.sliding_window"])
        kw["sliding_pattern"] = -1
    if p + "final_logit_softcapping" in meta:
        kw["final_logit_softcap"] = float(meta[p + "final_logit_softcapping"])
    kw["context_length"] = max(1, kw["context_length"])
    try:
        cfg = ModelConfig(**kw)
    except TypeError as e:
        raise FormatError(f"model metadata: {e}") from None
    return cfg


def _gguf_rope_scaling(meta, p, tensors, head_dim):
    """ModelConfig keywords for {arch}.rope.scaling.* and the rope_freqs.weight tensor."""
    kind = meta.get(p + "rope.scaling.type")
    if kind is not None and not isinstance(kind, str):
        raise FormatError(f"model metadata: {p}rope.scaling.type must be a string, got {kind!r}")
    factor = meta.get(p + "rope.scaling.factor")
    if factor is not None:
        try:
            factor = float(factor)
        except (TypeError, ValueError):
            raise FormatError(f"model metadata: {p}rope.scaling.factor must be a number, got {factor!r}") from None
        if not (factor > 0 and math.isfinite(factor)):
            raise FormatError(f"model metadata: {p}rope.scaling.factor must be positive, got {factor}")
    out = {}
    ff = None
    if "rope_freqs.weight" in tensors:
        t = tensors["rope_freqs.weight"]
        if tuple(t.shape) != (head_dim // 2,) or t.type != 0:
            raise FormatError(f"tensor 'rope_freqs.weight': expected F32 of shape ({head_dim // 2},), "
                              f"got {tuple(t.shape)}")
        ff = tuple(float(x) for x in t.data)
    if kind in (None, "none", "linear"):
        if kind == "linear" and factor and factor != 1.0:
            out["rope_freq_scale"] = 1.0 / factor
        if ff is not None:
            out["rope_scaling"] = {"type": "freq_factors", "freq_factors": ff}
        return out
    if kind == "yarn":
        sc = {"type": "yarn", "factor": factor or 1.0}
        orig = meta.get(p + "rope.scaling.original_context_length")
        if orig is None:
            raise FormatError(f"model metadata: yarn scaling needs {p}rope.scaling.original_context_length")
        sc["original_context_length"] = orig
        for key, name in (("rope.scaling.yarn_beta_fast", "beta_fast"), ("rope.scaling.yarn_beta_slow", "beta_slow")):
            if p + key in meta:
                sc[name] = meta[p + key]
        af = meta.get(p + "rope.scaling.yarn_attn_factor", meta.get(p + "rope.scaling.attn_factor"))
        if af is not None and float(af) != 1.0:
            # ggml: mscale = attn_factor * (1 + 0.1 ln s)
            sc["attention_factor"] = float(af) * (1.0 + 0.1 * math.log(sc["factor"])) if sc["factor"] > 1 else float(af)
        if ff is not None:
            raise FormatError("model metadata: yarn scaling with rope_freqs.weight is not supported")
        out["rope_scaling"] = sc
        return out
    raise FormatError(f"model metadata: {p}rope.scaling.type {kind!r} is not supported "
                      "(supported: none, linear, yarn; per-dimension factors as rope_freqs.weight)")
