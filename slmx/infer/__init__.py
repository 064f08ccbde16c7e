"""Inference: KV cache, sampling, beam search and the generation loop."""
from .beam import Beam, beam_search
from .generate import GenerationResult, generate
from .kv_cache import KVCache
from .sampling import Sampler, TokenLogprob, token_logprobs

__all__ = ["Beam", "GenerationResult", "KVCache", "Sampler", "TokenLogprob", "beam_search", "generate",
           "token_logprobs"]
