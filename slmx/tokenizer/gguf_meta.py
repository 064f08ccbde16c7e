"""A tokenizer -> the ``tokenizer.ggml.*`` GGUF metadata llama.cpp reads (the inverse of
:meth:`slmx.tokenizer.Tokenizer.from_metadata`).

    meta = gguf_metadata(tok, vocab_size=cfg.vocab_size)   # pads to the embedding rows

Byte-level BPE: ``model = "gpt2"``, ``pre`` (llama.cpp's name for the pre-tokenizer), tokens,
token types, merges ("left right"). SPM: ``model = "llama"``, tokens, scores, token types,
``add_space_prefix``. Both: special token ids, add_bos / add_eos, the chat template.
"""
import numpy as np

from slmx.errors import FormatError
from slmx.formats.gguf import typed
from slmx.tokenizer.base import TOKEN_UNUSED
from slmx.tokenizer.bpe import PRE_TOKENIZERS, BPETokenizer
from slmx.tokenizer.spm import SPMTokenizer

__all__ = ["gguf_metadata", "LLAMA_CPP_PRE"]

# slmx pre-tokenizer kind -> the tokenizer.ggml.pre name llama.cpp maps to the same regexes
LLAMA_CPP_PRE = {"default": "default", "gpt2": "gpt-2", "llama3": "llama-bpe", "dbrx": "dbrx",
                 "qwen2": "qwen2", "starcoder": "smollm", "falcon": "falcon", "gpt4o": "gpt-4o"}


def gguf_metadata(tok, vocab_size=None):
    """``tokenizer.ggml.*`` (and ``tokenizer.chat_template``) metadata of ``tok``.

    vocab_size: the model's embedding rows; when larger than the vocabulary the tokens are padded
    with unused ``[PAD{i}]`` entries, as llama.cpp's converter does.
    """
    tokens = list(tok.tokens)
    types = [int(t) for t in tok.token_types]
    n = len(tokens)
    if vocab_size is not None:
        if vocab_size < n:
            raise FormatError(f"tokenizer has {n} tokens but the model only {vocab_size} embedding rows")
        taken = set(tokens)
        for i in range(n, vocab_size):
            t = f"[PAD{i}]"
            while t in taken:
                t = "[" + t + "]"
            tokens.append(t)
            types.append(TOKEN_UNUSED)
    meta = {}
    K = "tokenizer.ggml."
    if isinstance(tok, BPETokenizer):
        kind = PRE_TOKENIZERS.get(tok.pre)
        if kind is None:
            from slmx.tokenizer.hf_json import _KNOWN_PRE
            label = _KNOWN_PRE.get(tuple(rx.pattern for rx in tok._split))
            kind = PRE_TOKENIZERS.get(label)
        if kind is None:
            raise FormatError(f"tokenizer: pre-tokenizer {tok.pre!r} (its regexes) is not one llama.cpp "
                              "knows; a GGUF of it would tokenize differently")
        meta[K + "model"] = "gpt2"
        meta[K + "pre"] = LLAMA_CPP_PRE[kind]
        meta[K + "tokens"] = tokens
        meta[K + "token_type"] = typed(types, "array", "int32")
        meta[K + "merges"] = [a + " " + b for a, b in tok._ranks]
    elif isinstance(tok, SPMTokenizer):
        meta[K + "model"] = "llama"
        meta[K + "tokens"] = tokens
        scores = np.zeros(len(tokens), np.float32)
        scores[:n] = np.asarray(tok.scores, np.float32)
        meta[K + "scores"] = scores
        meta[K + "token_type"] = typed(types, "array", "int32")
        meta[K + "add_space_prefix"] = bool(tok.add_space_prefix)
    else:
        raise TypeError(f"gguf_metadata: unsupported tokenizer {type(tok).__name__}")
    for key, i in (("bos_token_id", tok.bos_id), ("eos_token_id", tok.eos_id),
                   ("unknown_token_id", tok.unk_id), ("padding_token_id", tok.pad_id)):
        if i is not None:
            meta[K + key] = typed(int(i), "uint32")
    meta[K + "add_bos_token"] = bool(tok.add_bos)
    meta[K + "add_eos_token"] = bool(tok.add_eos)
    if tok.chat_template:
        meta["tokenizer.chat_template"] = tok.chat_template
    return meta
