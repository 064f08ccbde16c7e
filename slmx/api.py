"""The user-facing API: `slmx.load(path_or_name)` -> LanguageModel (generate, logits, tokenizer)."""
import contextlib
import functools
import os
import threading

import numpy as np

from . import registry
from .formats import gguf
from .infer import KVCache, Sampler, generate as _generate
from .infer.beam import beam_search, check_beam_options
from .infer.generate import check_logprobs
from .model.config import config_from_gguf
from .model.transformer import Transformer
from .tokenizer import Tokenizer


def _one_at_a_time(method):
    """A LanguageModel method that holds the model's lock for the whole call."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self._exclusive(method.__name__):
            return method(self, *args, **kwargs)
    return call


class LanguageModel:
    """A loaded model: config, tokenizer, weights (mmap'd) and a KV cache of n_ctx positions.

    A model can be shared by threads; calls run one at a time: generate() and logits() hold the
    model's lock (`lock`, an RLock shared with its transformer and with slmx.serve's engine) for
    the whole call, streaming callbacks included, so each gives exactly its sequential result.
    For parallel decoding of many requests use slmx.serve's engine (continuous batching), or
    load the model once per thread. A call on the model from inside its own on_text callback is
    a RuntimeError (it would overwrite the running call's KV cache). Code using `.transformer` or
    `.cache` directly from several threads holds `with model.lock:` around it.
    """

    def __init__(self, path, file, config, tokenizer, transformer, n_ctx, kv_cache_type="f32"):
        self.path = path
        self.file = file
        self.config = config
        self.tokenizer = tokenizer
        self.transformer = transformer
        self.n_ctx = n_ctx
        self.kv_cache_type = kv_cache_type      # the default of calls that do not name one
        self.cache = self.make_cache(kv_cache_type)
        self.lock = getattr(transformer, "lock", None) or threading.RLock()
        self._owner = None                      # the thread inside a call (under lock)

    @contextlib.contextmanager
    def _exclusive(self, what):
        """Hold the lock for one call; a nested call from the same thread (an on_text callback
        calling the model) is refused instead of silently overwriting the running call's cache."""
        with self.lock:
            me = threading.get_ident()
            if self._owner == me:
                raise RuntimeError(f"LanguageModel.{what}() called from inside another call on the same model "
                                   "(e.g. its on_text callback): the running call's KV cache would be "
                                   "overwritten; call it after that call returns")
            self._owner = me
            try:
                yield
            finally:
                self._owner = None

    def make_cache(self, kv_cache_type="f32", n_ctx=None):
        """A new KV cache for this model: kv_cache_type "f32", "f16", "q8_0" or "q4_0"; ring
        buffers on sliding-window layers. `cache.bytes_per_token`, `cache.bytes_for(n)`."""
        return KVCache(self.config, n_ctx or self.n_ctx, kv_cache_type, max_chunk=self.transformer.max_batch)

    def _cache_for(self, kv_cache_type):
        """The cache of a call: of kv_cache_type, or of the load-time type when None (an earlier
        call's override does not carry over)."""
        kv = self.kv_cache_type if kv_cache_type is None else kv_cache_type
        if kv != self.cache.kv_cache_type:
            self.cache = self.make_cache(kv)
        return self.cache

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
        if isinstance(prompt, (bytes, bytearray, memoryview)):
            raise TypeError("prompt must be a string or a sequence of token ids, got bytes "
                            "(decode it to str first)")
        if isinstance(prompt, np.ndarray):
            if prompt.ndim != 1 or not (np.issubdtype(prompt.dtype, np.integer) or prompt.size == 0):
                raise TypeError(f"prompt must be a string or a 1-D array of integer token ids, "
                                f"got an array of shape {prompt.shape} and dtype {prompt.dtype}")
            prompt = prompt.tolist()
        try:
            seq = list(prompt)
        except TypeError:
            raise TypeError(f"prompt must be a string or a sequence of token ids, got "
                            f"{type(prompt).__name__}") from None
        bad = [i for i in seq if isinstance(i, bool) or not isinstance(i, (int, np.integer))]
        if bad:
            raise TypeError(f"token ids must be integers, got {bad[0]!r}")
        ids = [int(i) for i in seq]
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range [0, {self.config.vocab_size})")
        return ids

    @_one_at_a_time
    def generate(self, prompt, max_new_tokens=128, temperature=0.8, top_k=40, top_p=0.95, seed=None,
                 stop=None, on_text=None, add_bos=None, *, min_p=0.0, typical_p=1.0, repeat_penalty=1.0,
                 repeat_last_n=64, frequency_penalty=0.0, presence_penalty=0.0, logit_bias=None,
                 logprobs=False, top_logprobs=0, num_beams=1, length_penalty=1.0, early_stopping=False,
                 kv_cache_type=None, context_shift=False, n_keep=None, draft_model=None, draft=None,
                 num_draft=4):
        """Continue `prompt` (a string, or a list of token ids used as they are).

        Sampling (slmx.infer.sampling, in this order): repeat_penalty / frequency_penalty /
        presence_penalty over the last repeat_last_n tokens (prompt included; 0 = none, -1 = all),
        logit_bias {token id: bias}, temperature (0 = greedy), top_k (0 = off), top_p, min_p,
        typical_p; seed makes the draws reproducible.
        stop: a string or list of strings ending generation. on_text(str) is called with text as it
        is produced (streaming). logprobs / top_logprobs: .logprobs gets a TokenLogprob per new token
        (the model's own log-softmax, before penalties and temperature) with the top_logprobs best
        alternatives.
        num_beams > 1: beam search instead of sampling (slmx.infer.beam: Hugging Face semantics of
        length_penalty and early_stopping True / False / "never"); the sampling options do not apply;
        .beams holds every returned Beam (tokens, score, sum_logprob), best first, and the result
        is the best one; stop strings cut its text, on_text receives it once at the end.
        kv_cache_type: "f32", "f16", "q8_0", "q4_0" (default: the one the model was loaded with).
        context_shift: when the context is full, keep the first n_keep tokens (default: the BOS),
        drop the oldest half of the rest and go on, so generation runs past n_ctx (True: cached
        keys re-rotated, as llama.cpp; "recompute": the kept tokens prefilled again, exact).
        Speculative decoding (the output distribution is unchanged; greedy output is the same
        tokens): draft_model (a LanguageModel or a path/name with this model's vocabulary), or
        draft="ngram" (prompt lookup) or draft="mtp" (the model's multi-token-prediction heads),
        proposes num_draft tokens per round, verified in one forward; result.extra["draft"] has
        proposed / accepted / rate (logprobs, beams and context_shift do not combine with it).
        Returns GenerationResult(.text, .token_ids (new only), .finish_reason, .logprobs, .beams,
        .prompt_tokens_per_s, .decode_tokens_per_s).
        """
        ids = self._ids(prompt, add_bos)
        cache = self._cache_for(kv_cache_type)
        sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, min_p=min_p,
                          typical_p=typical_p, repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                          frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                          logit_bias=logit_bias)
        want_lp, top_n = check_logprobs(logprobs, top_logprobs, self.config.vocab_size)
        check_beam_options(num_beams, length_penalty, early_stopping)
        if draft_model is not None or draft is not None:
            if num_beams > 1 or want_lp or context_shift:
                raise ValueError("speculative decoding (draft_model / draft) does not combine with num_beams, "
                                 "logprobs or context_shift")
            from .infer.speculative import make_drafter, speculative_generate
            if draft_model is not None and not isinstance(draft_model, LanguageModel):
                draft_model = self._load_draft(draft_model)
            if draft_model is self:
                raise ValueError("draft_model must be another model than the one it drafts for (they would "
                                 "share one KV cache); load the file a second time")
            drafter = make_drafter(draft, draft_model, self)
            # the draft model is held too: its cache is this call's
            with draft_model._exclusive("generate") if draft_model is not None else contextlib.nullcontext():
                return speculative_generate(self.transformer, self.tokenizer, cache, ids, drafter,
                                            num_draft=num_draft, max_new_tokens=max_new_tokens, sampler=sampler,
                                            stop=stop, on_text=on_text)
        if num_beams > 1:
            return self._beam_generate(ids, max_new_tokens, num_beams, length_penalty, early_stopping,
                                       stop, on_text, want_lp, top_n)
        return _generate(self.transformer, self.tokenizer, cache, ids, max_new_tokens=max_new_tokens,
                         sampler=sampler, stop=stop, on_text=on_text, logprobs=want_lp, top_logprobs=top_n,
                         context_shift=context_shift, n_keep=n_keep)

    def _beam_generate(self, ids, max_new_tokens, num_beams, length_penalty, early_stopping, stop, on_text,
                       want_lp, top_n):
        import time
        from .infer.generate import GenerationResult
        if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1 for beam search, got {max_new_tokens!r}")
        if len(ids) >= self.n_ctx:
            raise ValueError(f"generate: prompt of {len(ids)} tokens does not fit the context of "
                             f"{self.n_ctx} tokens")
        max_new = min(int(max_new_tokens), self.n_ctx - len(ids))
        timings = {}
        t0 = time.perf_counter()
        # every beam's cache made alike (same size, so the same ring layout on sliding-window layers)
        kv_type = self.cache.kv_cache_type
        beams = beam_search(self.transformer, lambda n: self.make_cache(kv_type, n), ids, num_beams=num_beams,
                            max_new_tokens=max_new, length_penalty=length_penalty,
                            early_stopping=early_stopping, eos_ids=self.tokenizer.eos_ids,
                            logprobs=want_lp, top_logprobs=top_n, timings=timings)
        dt = time.perf_counter() - t0 - timings.get("prompt_seconds", 0.0)   # the search after the prompt
        stops = [s for s in ([stop] if isinstance(stop, str) else (stop or [])) if s]
        hit = None
        for b in beams:
            b.text = self.tokenizer.decode(b.token_ids, skip_special=True)
        best = beams[0]
        text = best.text
        for s in stops:
            j = text.find(s)
            if j >= 0 and (hit is None or j < len(text)):
                text, hit = text[:j], s
        finish = "stop" if best.finish_reason == "stop" or hit else (
            "context" if max_new < max_new_tokens and len(best.token_ids) >= max_new else "length")
        lps = best.logprobs
        if on_text and text:
            on_text(text)
        n_tok = sum(len(b.token_ids) for b in beams)
        tp = timings.get("prompt_seconds", 0.0)
        return GenerationResult(text=text, token_ids=list(best.token_ids), prompt_ids=ids, finish_reason=finish,
                                prompt_tokens_per_s=len(ids) / tp if tp > 0 else 0.0,
                                decode_tokens_per_s=n_tok / dt if dt > 0 else 0.0,
                                prompt_seconds=tp, decode_seconds=dt, stop=hit, logprobs=lps, beams=beams)

    def _load_draft(self, path):
        drafts = self.__dict__.setdefault("_drafts", {})
        key = os.fspath(path)
        if key not in drafts:
            drafts[key] = load(key, threads=self.threads)
        return drafts[key]

    @_one_at_a_time
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
    limit = cfg.context_length
    sc = cfg.rope_scaling
    if sc and sc["type"] in ("dynamic", "ntk", "yarn", "longrope", "llama3") and "factor" in sc:
        # a scaled RoPE reaches factor x its pre-training context
        limit = max(limit, int(sc.get("original_context_length", cfg.context_length) * sc["factor"]))
    if n_ctx > limit:
        raise ValueError(f"n_ctx {n_ctx} exceeds the model's context length {limit}")
    need = 2 * cfg.n_layers * n_ctx * cfg.kv_dim * 4
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = None
    if ram and need > ram:
        raise ValueError(f"n_ctx {n_ctx} needs a {need / 2**30:.1f} GiB KV cache; this machine has "
                         f"{ram / 2**30:.1f} GiB")
    return n_ctx


def _with_rope_scaling(cfg, rope_scaling):
    """cfg with a RoPE scaling given as an option (it replaces the file's); the context length
    grows to original_context_length * factor."""
    import dataclasses

    from .model.rope import normalize_rope_scaling
    if rope_scaling is None:
        return cfg
    if isinstance(rope_scaling, dict):
        rope_scaling = dict(rope_scaling)
        kind = rope_scaling.get("type", rope_scaling.get("rope_type"))
        if kind in ("dynamic", "yarn", "longrope", "llama3") and \
                rope_scaling.get("original_context_length", rope_scaling.get("original_max_position_embeddings")) is None:
            rope_scaling["original_context_length"] = cfg.context_length
    sc = normalize_rope_scaling(rope_scaling, cfg.head_dim)
    if sc is None:
        return dataclasses.replace(cfg, rope_scaling=None, rope_freq_scale=1.0)
    ctx = cfg.context_length
    if "factor" in sc and sc["type"] != "freq_factors":
        ctx = max(ctx, int(sc.get("original_context_length", cfg.context_length) * sc["factor"]))
    return dataclasses.replace(cfg, rope_scaling=sc, rope_freq_scale=1.0, context_length=ctx)


def load(path_or_name=registry.DEFAULT_MODEL, threads=None, n_ctx=None, numerics=None,
         kv_cache_type="f32", rope_scaling=None, prefill_chunk=256):
    """Load a GGUF model by path or known name (e.g. "gemma3-270m"), a Hugging Face model
    folder (config.json + model.safetensors or its sharded index + tokenizer.json), or a model
    trained by `slmx train` (its output folder or a checkpoint folder). GGUF and safetensors
    weights stay mmap'd (F32/F16/BF16 matrices are used in place).

    threads: kernel threads (default: SLMX_NUM_THREADS, OMP_NUM_THREADS, usable cores).
    n_ctx: KV-cache positions (default: the model's context length, at most 4096).
    numerics: "ggml" (the default for GGUF files) rounds attention inputs and GELU to fp16 as
    llama.cpp's CPU backend does, so greedy output follows llama.cpp's; "fp32" (the default for
    HF folders, as transformers computes) keeps every activation in fp32.
    kv_cache_type: "f32" (default), "f16", "q8_0" or "q4_0" — the KV cache's storage format.
    rope_scaling: long-context RoPE scaling replacing the file's, e.g. {"type": "yarn",
    "factor": 4, "original_context_length": 2048} (see slmx.model.rope; types linear, ntk,
    dynamic, yarn, longrope, llama3, freq_factors; Hugging Face rope_scaling keys accepted).
    prefill_chunk: prompts run in chunks of this many tokens (activation memory and the ring
    buffers of sliding-window layers are sized by it).
    """
    if isinstance(prefill_chunk, bool) or int(prefill_chunk) != prefill_chunk or prefill_chunk < 1:
        raise ValueError(f"prefill_chunk must be a positive integer, got {prefill_chunk!r}")
    prefill_chunk = int(prefill_chunk)
    from .infer.kv_cache import check_kv_cache_type
    check_kv_cache_type(kv_cache_type)
    from .convert import is_hf_folder
    if is_hf_folder(path_or_name):
        from .convert import load_hf_folder
        cfg, tensors, tok, weights = load_hf_folder(path_or_name)
        cfg = _with_rope_scaling(cfg, rope_scaling)
        n_ctx = _check_n_ctx(n_ctx, cfg)
        tr = Transformer(cfg, tensors, threads=threads, numerics=numerics or "fp32", n_ctx=n_ctx,
                         max_batch=prefill_chunk)
        return LanguageModel(os.fspath(path_or_name), weights, cfg, tok, tr, n_ctx, kv_cache_type)
    if os.path.isdir(os.fspath(path_or_name)):
        # a model trained by `slmx train`: its output folder or one of its ckpt-* folders
        from .train.checkpoint import load_for_inference
        if rope_scaling is not None:
            from .model.rope import normalize_rope_scaling
            if normalize_rope_scaling(rope_scaling) is not None:   # a bad value is named first
                raise ValueError("rope_scaling: not supported for a model trained by `slmx train` "
                                 "(it runs at the context it was trained at)")
        path, cfg, tok, tr = load_for_inference(path_or_name, threads=threads)
        n_ctx = _check_n_ctx(n_ctx, cfg)       # bounded by the context length it was trained at
        return LanguageModel(path, None, cfg, tok, tr, n_ctx, kv_cache_type)
    path = registry.resolve(path_or_name)
    f = gguf.read(path)
    cfg = config_from_gguf(f.metadata, f.tensors)
    tok = Tokenizer.from_metadata(f.metadata)
    if tok.vocab_size != cfg.vocab_size:
        from .errors import FormatError
        raise FormatError(f"{path}: tokenizer has {tok.vocab_size} tokens but token_embd.weight has "
                          f"{cfg.vocab_size} rows")
    cfg = _with_rope_scaling(cfg, rope_scaling)
    n_ctx = _check_n_ctx(n_ctx, cfg)
    tr = Transformer(cfg, f.tensors, threads=threads, numerics=numerics or "ggml", n_ctx=n_ctx,
                     max_batch=prefill_chunk)
    return LanguageModel(path, f, cfg, tok, tr, n_ctx, kv_cache_type)
