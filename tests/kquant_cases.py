"""Deterministic float32 inputs for the quantizer tests (shared by the tests and by
tests/tools/kquant_reference.py, which records llama.cpp's bytes for them).

Each case is a (rows, K) float32 array, K a multiple of 256, built from integer-seeded numpy
generators; its sha256 goes into the fixture too, so a changed input is told apart from a changed
quantizer.
"""
import hashlib

import numpy as np


def cases():
    """name -> float32 (rows, K): distributions a quantizer meets, plus the edge cases."""
    rng = np.random.default_rng(20261203)
    out = {}
    out["normal"] = (rng.standard_normal((24, 1024)) * 0.02).astype(np.float32)
    out["heavy_tail"] = (rng.standard_t(2.5, (16, 512)) * 0.05).astype(np.float32)
    w = rng.standard_normal((16, 768)) * 0.01
    w[rng.random(w.shape) < 0.005] *= 300.0                         # rare outliers
    out["outliers"] = w.astype(np.float32)
    out["uniform_pos"] = rng.random((8, 512)).astype(np.float32)       # all >= 0 (min fit at 0)
    out["uniform_neg"] = (-rng.random((8, 512)) - 0.5).astype(np.float32)  # all < 0
    z = np.zeros((6, 512), np.float32)
    z[1] = 0.37                                                       # constant rows
    z[2] = -0.37
    z[3, ::37] = 1.0                                                  # nearly all zero
    z[4] = -0.0
    z[5, 100] = -3.0
    out["zeros_constants"] = z
    s = rng.standard_normal((8, 512))
    s[rng.random(s.shape) < 0.9] = 0.0                                # sparse, whole zero sub-blocks
    out["sparse"] = s.astype(np.float32)
    out["integers"] = rng.integers(-16, 17, (8, 512)).astype(np.float32)   # exact ties after scaling
    out["tiny"] = (rng.standard_normal((4, 512)) * 1e-7).astype(np.float32)  # f16 scales underflow
    out["large"] = (rng.standard_normal((4, 512)) * 3e3).astype(np.float32)
    m = rng.standard_normal((8, 512)).astype(np.float32) * 0.1
    m *= np.exp(rng.standard_normal((8, 1)) * 2).astype(np.float32)     # row scales over decades
    out["row_scales"] = m
    return out


def sha256(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def llama_tensors(n_layers=8, d=256, ffn=256, n_head=4, n_kv=2, vocab=512, tied=False, seed=7):
    """{name: float32 array} of a small random Llama in GGUF naming (numpy shapes), with the value
    patterns of real weights (row scales, rare outliers) and a zero and a constant row."""
    rng = np.random.default_rng(seed)
    hd = d // n_head

    def mat(rows, cols, scale):
        w = rng.standard_normal((rows, cols)) * scale
        w *= np.exp(rng.standard_normal((rows, 1)) * 0.3)
        w[rng.random(w.shape) < 0.001] *= 50.0
        return w.astype(np.float32)

    t = {"token_embd.weight": mat(vocab, d, 0.02), "output_norm.weight": np.ones(d, np.float32)}
    t["token_embd.weight"][3] = 0.0
    t["token_embd.weight"][5] = 0.125
    if not tied:
        t["output.weight"] = mat(vocab, d, 0.05)
    for i in range(n_layers):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        t[p + "ffn_norm.weight"] = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        t[p + "attn_q.weight"] = mat(n_head * hd, d, 0.06)
        t[p + "attn_k.weight"] = mat(n_kv * hd, d, 0.06)
        t[p + "attn_v.weight"] = mat(n_kv * hd, d, 0.06)
        t[p + "attn_output.weight"] = mat(d, n_head * hd, 0.06)
        t[p + "ffn_gate.weight"] = mat(ffn, d, 0.06)
        t[p + "ffn_up.weight"] = mat(ffn, d, 0.06)
        t[p + "ffn_down.weight"] = mat(d, ffn, 0.04)
    return t


def llama_metadata(n_layers=8, d=256, ffn=256, n_head=4, n_kv=2, vocab=512):
    """GGUF metadata llama.cpp's loader accepts for llama_tensors(...) (a toy BPE vocabulary)."""
    from slmx.formats import gguf
    u32 = lambda v: gguf.typed(v, "uint32")  # noqa: E731
    toks = [f"t{i}" for i in range(vocab)]
    return {"general.architecture": "llama", "general.name": "toy", "general.file_type": u32(0),
            "llama.context_length": u32(128), "llama.embedding_length": u32(d),
            "llama.block_count": u32(n_layers), "llama.feed_forward_length": u32(ffn),
            "llama.attention.head_count": u32(n_head), "llama.attention.head_count_kv": u32(n_kv),
            "llama.rope.dimension_count": u32(d // n_head),
            "llama.attention.layer_norm_rms_epsilon": gguf.typed(1e-5, "float32"),
            "llama.vocab_size": u32(vocab), "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": toks,
            "tokenizer.ggml.token_type": gguf.typed([1] * vocab, "array", "int32"),
            "tokenizer.ggml.merges": ["t 1"], "tokenizer.ggml.bos_token_id": u32(1),
            "tokenizer.ggml.eos_token_id": u32(2)}


# the models the quantize tests use: name -> llama_tensors / llama_metadata keyword arguments
MODELS = {
    "untied8": dict(n_layers=8, tied=False),
    "tied4_ffn640": dict(n_layers=4, ffn=640, tied=True),    # ffn_down rows of 640: K-quant fallbacks
}


def write_model(path, name):
    """Write MODELS[name] as an F32 GGUF at path; returns the tensors."""
    from slmx.formats import gguf
    kw = dict(MODELS[name])
    tied = kw.pop("tied")
    t = llama_tensors(tied=tied, **kw)
    gguf.write(path, llama_metadata(**kw), [(n, a) for n, a in t.items()])
    return t


def tensors_sha256(tensors):
    """One hash over names and float bytes (independent of the GGUF writer)."""
    h = hashlib.sha256()
    for n in sorted(tensors):
        h.update(n.encode())
        h.update(np.ascontiguousarray(tensors[n]).tobytes())
    return h.hexdigest()
