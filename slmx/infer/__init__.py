"""Inference: KV cache, sampling and the generation loop."""
from .generate import GenerationResult, generate
from .kv_cache import KVCache
from .sampling import Sampler

__all__ = ["GenerationResult", "KVCache", "Sampler", "generate"]
