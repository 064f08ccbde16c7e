"""Tokenizers: SentencePiece-style BPE ("llama" in GGUF) and byte-level BPE ("gpt2").

    tok = Tokenizer.from_gguf(path)            # or Tokenizer.from_metadata(gguf_metadata)
    ids = tok.encode("Hello", add_bos=True)
    text = tok.decode(ids)
    stream = StreamDecoder(tok); text = "".join(stream.push(i) for i in ids) + stream.flush()
"""
from slmx.tokenizer.base import (TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNDEFINED,
                                 TOKEN_UNKNOWN, TOKEN_UNUSED, TOKEN_USER_DEFINED, StreamDecoder,
                                 Tokenizer)
from slmx.tokenizer.bpe import BPETokenizer
from slmx.tokenizer.spm import SPMTokenizer

__all__ = ["Tokenizer", "SPMTokenizer", "BPETokenizer", "StreamDecoder",
           "TOKEN_UNDEFINED", "TOKEN_NORMAL", "TOKEN_UNKNOWN", "TOKEN_CONTROL",
           "TOKEN_USER_DEFINED", "TOKEN_UNUSED", "TOKEN_BYTE"]
