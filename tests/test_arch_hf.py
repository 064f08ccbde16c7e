"""llama, qwen2 and gemma3 forwards against Hugging Face transformers on small random models.

Each test builds a randomly initialised model with transformers (fp32), writes it as an F32 GGUF
the way llama.cpp's converter lays such files out (tensor names; Llama's q/k rows permuted for the
interleaved RoPE pairing; Gemma's norm weights with the +1 folded in), loads that with slmx and
compares logits at every position, on a prompt longer than the sliding window where there is one.
"""
import numpy as np
import pytest

import torch
import transformers

import slmx
from slmx.formats import gguf

V = 320


def _tokenizer_meta():
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"\u2581w{i}" for i in range(V - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (V - 259)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.zeros(V, np.float32),
        "tokenizer.ggml.token_type": gguf.typed(types, "array", "int32"),
        "tokenizer.ggml.bos_token_id": gguf.typed(1, "uint32"),
        "tokenizer.ggml.eos_token_id": gguf.typed(2, "uint32"),
        "tokenizer.ggml.unknown_token_id": gguf.typed(0, "uint32"),
    }


def _permute(w, n_head):
    # HF stores q/k for rotate-half RoPE; GGUF llama uses interleaved pairs.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _to_gguf(hf, arch, path):
    c = hf.config
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in hf.state_dict().items()}
    L = c.num_hidden_layers
    a = arch + "."
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rp = getattr(c, "rope_parameters", None) or {}
    meta = {
        "general.architecture": arch,
        a + "context_length": c.max_position_embeddings,
        a + "embedding_length": c.hidden_size,
        a + "block_count": L,
        a + "feed_forward_length": c.intermediate_size,
        a + "attention.head_count": c.num_attention_heads,
        a + "attention.head_count_kv": c.num_key_value_heads,
        a + "attention.key_length": hd,
        a + "attention.value_length": hd,
        a + "attention.layer_norm_rms_epsilon": float(c.rms_norm_eps),
    }
    if arch == "gemma3":
        meta[a + "rope.freq_base"] = float(rp["full_attention"]["rope_theta"])
        meta[a + "attention.sliding_window"] = c.sliding_window
    else:
        meta[a + "rope.freq_base"] = float(rp.get("rope_theta", 10000.0))
    meta.update(_tokenizer_meta())
    one = 1.0 if arch == "gemma3" else 0.0
    t = {"token_embd.weight": sd["model.embed_tokens.weight"],
         "output_norm.weight": sd["model.norm.weight"] + one}
    if "lm_head.weight" in sd and not c.tie_word_embeddings:
        t["output.weight"] = sd["lm_head.weight"]
    for i in range(L):
        p, q = f"model.layers.{i}.", f"blk.{i}."
        wq, wk = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
        if arch == "llama":
            wq, wk = _permute(wq, c.num_attention_heads), _permute(wk, c.num_key_value_heads)
        t[q + "attn_q.weight"], t[q + "attn_k.weight"] = wq, wk
        t[q + "attn_v.weight"] = sd[p + "self_attn.v_proj.weight"]
        t[q + "attn_output.weight"] = sd[p + "self_attn.o_proj.weight"]
        for b in ("q", "k", "v"):
            if p + f"self_attn.{b}_proj.bias" in sd:
                t[q + f"attn_{b}.bias"] = sd[p + f"self_attn.{b}_proj.bias"]
        t[q + "attn_norm.weight"] = sd[p + "input_layernorm.weight"] + one
        t[q + "ffn_gate.weight"] = sd[p + "mlp.gate_proj.weight"]
        t[q + "ffn_up.weight"] = sd[p + "mlp.up_proj.weight"]
        t[q + "ffn_down.weight"] = sd[p + "mlp.down_proj.weight"]
        if arch == "gemma3":
            t[q + "attn_q_norm.weight"] = sd[p + "self_attn.q_norm.weight"] + one
            t[q + "attn_k_norm.weight"] = sd[p + "self_attn.k_norm.weight"] + one
            t[q + "post_attention_norm.weight"] = sd[p + "post_attention_layernorm.weight"] + one
            t[q + "ffn_norm.weight"] = sd[p + "pre_feedforward_layernorm.weight"] + one
            t[q + "post_ffw_norm.weight"] = sd[p + "post_feedforward_layernorm.weight"] + one
        else:
            t[q + "ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
    gguf.write(path, meta, t)


def _build(arch):
    torch.manual_seed(0)
    common = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    if arch == "llama":
        cfg = transformers.LlamaConfig(num_hidden_layers=2, tie_word_embeddings=False, **common)
        m = transformers.LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = transformers.Qwen2Config(num_hidden_layers=2, tie_word_embeddings=True, **common)
        m = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.Gemma3TextConfig(num_hidden_layers=6, head_dim=16, query_pre_attn_scalar=16,
                                            sliding_window=8, **common)
        m = transformers.Gemma3ForCausalLM(cfg)
    with torch.no_grad():   # random (not zero) norms and biases, so the test sees them
        for name, p in m.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.2 + (0.0 if arch == "gemma3" else 1.0))
            elif name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.1)
    return m.eval().float()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_logits_match_transformers(tmp_path, arch):
    hf = _build(arch)
    path = tmp_path / f"{arch}.gguf"
    _to_gguf(hf, arch, str(path))
    ids = np.random.default_rng(1).integers(3, V, 40)   # 40 tokens: past gemma3's window of 8
    with torch.no_grad():
        want = hf(torch.tensor(ids[None])).logits[0].numpy()
    model = slmx.load(str(path), n_ctx=128, numerics="fp32")
    assert model.config.arch == arch
    got = model.logits(ids.tolist())
    err = np.abs(got - want).max()
    assert err < 1e-4, f"{arch}: max abs logit difference {err}"
    # decode path (one token at a time over the KV cache) agrees too
    model.cache.reset()
    for i, tok in enumerate(ids):
        step = np.array(model.transformer.forward([int(tok)], i, model.cache)[0])
    assert np.abs(step - want[-1]).max() < 1e-4
