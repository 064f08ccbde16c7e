"""Tiny random GGUF language models with a working tokenizer, for the engine and server tests.

``write_tiny_model(path, arch, qtype)`` writes a randomly initialised model (a few layers, d_model
64..128) whose weights are F32 or block-quantized (Q8_0 / Q4_0 / Q5_0 via slmx.ops.quantize) and an
SPM vocabulary with byte fallback (every text encodes), a handful of word pieces and Gemma-style
control tokens (<start_of_turn>, <end_of_turn>). The output is random text; the tests check
plumbing and equalities, not quality.
"""
import numpy as np

from slmx import ops
from slmx.formats import gguf

TOKENS_HEAD = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
TYPES_HEAD = [3, 3, 3, 2, 3, 3]     # control, control, control, unknown, control, control
WORDS = ["\u2581hello", "\u2581world", "\u2581the", "\u2581a", "\u2581model", "\u2581user", "\u2581cat",
         "\u2581dog", "\u2581yes", "\u2581no", "\u2581one", "\u2581two", "\u2581three", "\u2581red",
         "\u2581blue", "\u2581and", "\u2581or", "\u2581is", "\u2581of", "\u2581to"]


def tokenizer_metadata(vocab_size, chat_template=None):
    tokens = list(TOKENS_HEAD) + [f"<0x{i:02X}>" for i in range(256)]
    types = list(TYPES_HEAD) + [6] * 256
    words = list(WORDS) + list("abcdefghijklmnopqrstuvwxyz") + ["\u2581"]
    i = 0
    while len(tokens) < vocab_size:
        tokens.append(words[i] if i < len(words) else f"\u2581w{i}")
        types.append(1)
        i += 1
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens[:vocab_size],
        "tokenizer.ggml.scores": -np.arange(vocab_size, dtype=np.float32) * 0.01,
        "tokenizer.ggml.token_type": gguf.typed(types[:vocab_size], "array", "int32"),
        "tokenizer.ggml.bos_token_id": gguf.typed(2, "uint32"),
        "tokenizer.ggml.eos_token_id": gguf.typed(1, "uint32"),
        "tokenizer.ggml.unknown_token_id": gguf.typed(3, "uint32"),
        "tokenizer.ggml.padding_token_id": gguf.typed(0, "uint32"),
        "tokenizer.ggml.add_bos_token": True,
    }
    if chat_template is not None:
        meta["tokenizer.chat_template"] = chat_template
    return meta


def _weight(rng, n, k, qtype, scale):
    w = (rng.standard_normal((n, k)) * scale).astype(np.float32)
    if qtype == "f32":
        return w
    return (qtype.upper(), (n, k), ops.quantize(w, qtype.upper()))


def write_tiny_model(path, arch="llama", qtype="q8_0", vocab_size=384, d_model=64, n_layers=2,
                     n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=128, context_length=512,
                     sliding_window=8, chat_template=None, embd_std=0.1, seed=0):
    """Write a random `arch` model ("llama" or "gemma3") to `path`; returns the path."""
    rng = np.random.default_rng(seed)
    a = arch + "."
    meta = {
        "general.architecture": arch,
        "general.name": f"tiny-{arch}",
        a + "context_length": context_length,
        a + "embedding_length": d_model,
        a + "block_count": n_layers,
        a + "feed_forward_length": ffn_dim,
        a + "attention.head_count": n_heads,
        a + "attention.head_count_kv": n_kv_heads,
        a + "attention.key_length": head_dim,
        a + "attention.value_length": head_dim,
        a + "attention.layer_norm_rms_epsilon": 1e-6,
        a + "rope.freq_base": 10000.0,
    }
    if arch == "gemma3":
        meta[a + "attention.sliding_window"] = sliding_window
    meta.update(tokenizer_metadata(vocab_size, chat_template))
    qd, kvd = n_heads * head_dim, n_kv_heads * head_dim
    norm = lambda n: (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)
    t = {"token_embd.weight": _weight(rng, vocab_size, d_model, qtype, embd_std),
         "output_norm.weight": norm(d_model)}
    s = 1.0 / np.sqrt(d_model)
    for i in range(n_layers):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = norm(d_model)
        t[p + "attn_q.weight"] = _weight(rng, qd, d_model, qtype, s)
        t[p + "attn_k.weight"] = _weight(rng, kvd, d_model, qtype, s)
        t[p + "attn_v.weight"] = _weight(rng, kvd, d_model, qtype, s)
        t[p + "attn_output.weight"] = _weight(rng, d_model, qd, qtype, 1.0 / np.sqrt(qd))
        t[p + "ffn_norm.weight"] = norm(d_model)
        t[p + "ffn_gate.weight"] = _weight(rng, ffn_dim, d_model, qtype, s)
        t[p + "ffn_up.weight"] = _weight(rng, ffn_dim, d_model, qtype, s)
        t[p + "ffn_down.weight"] = _weight(rng, d_model, ffn_dim, qtype, 1.0 / np.sqrt(ffn_dim))
        if arch == "gemma3":
            t[p + "attn_q_norm.weight"] = norm(head_dim)
            t[p + "attn_k_norm.weight"] = norm(head_dim)
            t[p + "post_attention_norm.weight"] = norm(d_model)
            t[p + "post_ffw_norm.weight"] = norm(d_model)
    gguf.write(path, meta, t)
    return path
