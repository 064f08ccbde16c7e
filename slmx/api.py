"""The user-facing API: `slmx.load(path_or_name)` -> LanguageModel (generate, logits, tokenizer)."""
import os

import numpy as np

from . import registry
from .formats import gguf
from .infer import KVCache, Sampler, generate as _generate
from .model.config import config_from_gguf
from .model.transformer import Transformer
from .tokenizer import Tokenizer


class LanguageModel:
    """A loaded model: config, tokenizer, weights (mmap'd) and a KV cache of n_ctx positions."""

    def __init__(self, path, file, config, tokenizer, transformer, n_ctx):
        self.path = path
        self.file = file
        self.config = config
        self.tokenizer = tokenizer
        self.transformer = transformer
        self.n_ctx = n_ctx
        self.cache = KVCache(config, n_ctx)

    @property
    def threads(self):
        return self.transformer.threads

    def __repr__(self):
        c = self.config
        return (f"LanguageModel({os.path.basename(self.path)!r}, arch={c.arch}, d_model={c.d_model}, "
                f"n_layers={c.n_layers}, vocab={c.vocab_size}, n_ctx={self.n_ctx}, threads={self.threads})")

    def _ids(self, prompt, add_bos=None):
        if prompt is None:
            raise ValueError("prompt must be a string or a list of token ids, got None")
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_bos=add_bos, parse_special=True)
        ids = [int(i) for i in prompt]
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range [0, {self.config.vocab_size})")
        return ids

    def generate(self, prompt, max_new_tokens=128, temperature=0.8, top_k=40, top_p=0.95, seed=None,
                 stop=None, on_text=None, add_bos=None):
        """Continue `prompt` (a string, or a list of token ids used as they are).

        temperature 0 is greedy. stop: a string or list of strings ending generation.
        on_text(str) is called with text as it is produced (streaming).
        Returns GenerationResult(.text, .token_ids (new only), .prompt_tokens_per_s, .decode_tokens_per_s).
        """
        ids = self._ids(prompt, add_bos)
        sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        return _generate(self.transformer, self.tokenizer, self.cache, ids, max_new_tokens=max_new_tokens,
                         sampler=sampler, stop=stop, on_text=on_text)

    def logits(self, ids, last_only=False):
        """float32 logits (T, vocab) for token ids (T,) from position 0 (or (vocab,) with last_only)."""
        ids = self._ids(ids)
        self.cache.reset()
        if last_only:
            return np.array(self.transformer.forward(ids, 0, self.cache)[0])
        return self.transformer.forward(ids, 0, self.cache, all_logits=True)


def _check_n_ctx(n_ctx, cfg):
    """The KV-cache size: default min(context_length, 4096); bounded by the model and by memory."""
    if n_ctx is None:
        return min(cfg.context_length, 4096)
    if isinstance(n_ctx, bool) or int(n_ctx) != n_ctx or n_ctx <= 0:
        raise ValueError(f"n_ctx must be a positive integer, got {n_ctx}")
    n_ctx = int(n_ctx)
    if n_ctx > cfg.context_length:
        raise ValueError(f"n_ctx {n_ctx} exceeds the model's context length {cfg.context_length}")
    need = 2 * cfg.n_layers * n_ctx * cfg.kv_dim * 4
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = None
    if ram and need > ram:
        raise ValueError(f"n_ctx {n_ctx} needs a {need / 2**30:.1f} GiB KV cache; this machine has "
                         f"{ram / 2**30:.1f} GiB")
    return n_ctx


def load(path_or_name=registry.DEFAULT_MODEL, threads=None, n_ctx=None, numerics=None):
    """Load a GGUF model by path or known name (e.g. "gemma3-270m"), a Hugging Face model
    folder (config.json + model.safetensors or its sharded index + tokenizer.json), or a model
    trained by `slmx train` (its output folder or a checkpoint folder). GGUF and safetensors
    weights stay mmap'd (F32/F16/BF16 matrices are used in place).

    threads: kernel threads (default: SLMX_NUM_THREADS, OMP_NUM_THREADS, usable cores).
    n_ctx: KV-cache positions (default: the model's context length, at most 4096).
    numerics: "ggml" (the default for GGUF files) rounds attention inputs and GELU to fp16 as
    llama.cpp's CPU backend does, so greedy output follows llama.cpp's; "fp32" (the default for
    HF folders, as transformers computes) keeps every activation in fp32.
    """
    from .convert import is_hf_folder
    if is_hf_folder(path_or_name):
        from .convert import load_hf_folder
        cfg, tensors, tok, weights = load_hf_folder(path_or_name)
        n_ctx = _check_n_ctx(n_ctx, cfg)
        tr = Transformer(cfg, tensors, threads=threads, numerics=numerics or "fp32")
        return LanguageModel(os.fspath(path_or_name), weights, cfg, tok, tr, n_ctx)
    if os.path.isdir(os.fspath(path_or_name)):
        # a model trained by `slmx train`: its output folder or one of its ckpt-* folders
        from .train.checkpoint import load_for_inference
        path, cfg, tok, tr = load_for_inference(path_or_name, threads=threads)
        return LanguageModel(path, None, cfg, tok, tr, int(n_ctx or cfg.context_length))
    path = registry.resolve(path_or_name)
    f = gguf.read(path)
    cfg = config_from_gguf(f.metadata, f.tensors)
    tok = Tokenizer.from_metadata(f.metadata)
    if tok.vocab_size != cfg.vocab_size:
        from .errors import FormatError
        raise FormatError(f"{path}: tokenizer has {tok.vocab_size} tokens but token_embd.weight has "
                          f"{cfg.vocab_size} rows")
    n_ctx = _check_n_ctx(n_ctx, cfg)
    tr = Transformer(cfg, f.tensors, threads=threads, numerics=numerics or "ggml")
    return LanguageModel(path, f, cfg, tok, tr, n_ctx)
