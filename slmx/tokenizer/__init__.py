"""Tokenizers: SentencePiece-style BPE ("llama" in GGUF) and byte-level BPE ("gpt2").

    tok = Tokenizer.from_gguf(path)            # or Tokenizer.from_metadata(gguf_metadata)
    ids = tok.encode("Hello", add_bos=True)
    text = tok.decode(ids)
    stream = StreamDecoder(tok); text = "".join(stream.push(i) for i in ids) + stream.flush()
    tok = train_bpe(texts_or_paths, vocab_size=8192)   # byte-level BPE training
    save_json(tok, "tokenizer.json"); tok = Tokenizer.from_json("tokenizer.json")
"""
from slmx.tokenizer.base import (TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNDEFINED,
                                 TOKEN_UNKNOWN, TOKEN_UNUSED, TOKEN_USER_DEFINED, StreamDecoder,
                                 Tokenizer)
from slmx.tokenizer.bpe import BPETokenizer
from slmx.tokenizer.spm import SPMTokenizer
from slmx.tokenizer.hf_json import load_json, save_json
from slmx.tokenizer.train_bpe import train_bpe

__all__ = ["Tokenizer", "SPMTokenizer", "BPETokenizer", "StreamDecoder",
           "TOKEN_UNDEFINED", "TOKEN_NORMAL", "TOKEN_UNKNOWN", "TOKEN_CONTROL",
           "TOKEN_USER_DEFINED", "TOKEN_UNUSED", "TOKEN_BYTE",
           "train_bpe", "save_json", "load_json"]
