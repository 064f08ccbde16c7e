"""RoPE scaling against transformers: per-dimension frequencies and attention factors of every type
(ROPE_INIT_FUNCTIONS), the rope kernel's rotation with slmx's parameters, and the logits of tiny
Llama models with rope_scaling (HF folders loaded by slmx) within 1e-4; GGUF metadata and options."""
import os
import sys

import numpy as np
import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import slmx
from slmx._kernels import ops_core
from slmx.errors import FormatError
from slmx.model.config import config_from_gguf
from slmx.model.rope import kernel_parameters, normalize_rope_scaling, rope_frequencies

sys.path.insert(0, os.path.dirname(__file__))
from hf_tiny import _tokenizer  # noqa: E402

D, BASE, MAXPOS = 64, 10000.0, 128
LONG = list(np.linspace(1.0, 6.0, D // 2))
SHORT = list(np.linspace(1.0, 1.5, D // 2))

# (name, HF rope_parameters without rope_theta, seq_len given to transformers / n_ctx to slmx)
CASES = [
    ("linear", {"rope_type": "linear", "factor": 4.0}, None),
    ("dynamic", {"rope_type": "dynamic", "factor": 2.0}, 300),
    ("yarn", {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64}, None),
    ("yarn-betas", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                    "beta_fast": 16, "beta_slow": 2}, None),
    ("yarn-mscale", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                     "mscale": 0.707, "mscale_all_dim": 1.0}, None),
    ("yarn-untruncated", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                          "truncate": False}, None),
    ("longrope-short", {"rope_type": "longrope", "long_factor": LONG, "short_factor": SHORT,
                        "original_max_position_embeddings": 32, "factor": 4.0}, 20),
    ("longrope-long", {"rope_type": "longrope", "long_factor": LONG, "short_factor": SHORT,
                       "original_max_position_embeddings": 32, "factor": 4.0}, 100),
    ("llama3", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32}, None),
]


def _hf_config(rp):
    return transformers.LlamaConfig(vocab_size=320, hidden_size=D * 4, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=D, num_hidden_layers=2,
                                    max_position_embeddings=MAXPOS,
                                    rope_parameters=dict(rp, rope_theta=BASE))


def _ours(rp, n_ctx):
    sc = dict(rp)
    if sc["rope_type"] == "dynamic":
        sc["original_max_position_embeddings"] = MAXPOS
    return normalize_rope_scaling(sc, D)


@pytest.mark.parametrize("name,rp,seq", CASES, ids=[c[0] for c in CASES])
def test_frequencies_match_transformers(name, rp, seq):
    inv_hf, af_hf = ROPE_INIT_FUNCTIONS[rp["rope_type"]](_hf_config(rp), "cpu", seq_len=seq)
    inv, af = rope_frequencies(_ours(rp, seq), D, BASE, n_ctx=seq)
    np.testing.assert_allclose(inv, inv_hf.double().numpy(), rtol=2e-6, atol=0)
    assert af == pytest.approx(float(af_hf), rel=1e-6)
    if name == "yarn":
        assert af > 1.2          # the YaRN temperature is in play


def test_ntk_static_matches_transformers_dynamic_at_its_length():
    """static NTK-aware scaling by s is transformers' dynamic NTK at seq_len = L (2s - 1) / s"""
    s = 2.0
    inv_hf, _ = ROPE_INIT_FUNCTIONS["dynamic"](_hf_config({"rope_type": "dynamic", "factor": s}), "cpu",
                                               seq_len=int(MAXPOS * (2 * s - 1) / s))
    inv, af = rope_frequencies(normalize_rope_scaling({"type": "ntk", "factor": s}), D, BASE)
    np.testing.assert_allclose(inv, inv_hf.double().numpy(), rtol=2e-6)
    assert af == 1.0


@pytest.mark.parametrize("name,rp,seq", CASES, ids=[c[0] for c in CASES])
def test_rope_kernel_rotates_by_the_frequencies(simd_level, name, rp, seq):
    """ops_core.rope with kernel_parameters rotates pair i by pos * inv_freq_i (transformers')"""
    inv_hf, _ = ROPE_INIT_FUNCTIONS[rp["rope_type"]](_hf_config(rp), "cpu", seq_len=seq)
    inv_hf = inv_hf.double().numpy()
    base, fs, ff, _ = kernel_parameters(_ours(rp, seq), D, BASE, n_ctx=seq)
    pos = np.arange(0, 512, 7, dtype=np.int32)
    x = np.random.default_rng(0).standard_normal((pos.size, 2, D)).astype(np.float32)
    got = x.copy()
    ops_core.rope(got, pos, base, True, 1, fs, ff)
    ang = pos[:, None, None].astype(np.float64) * inv_hf[None, None, :]
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[..., :D // 2].astype(np.float64), x[..., D // 2:].astype(np.float64)
    want = np.concatenate([a * c - b * s, a * s + b * c], axis=-1)
    np.testing.assert_allclose(got, want, atol=3e-3)


# --- tiny Llama models with rope_scaling: transformers' logits vs slmx's ----------------------

LOGIT_CASES = [c for c in CASES if c[0] in ("linear", "dynamic", "yarn", "yarn-mscale", "longrope-long",
                                            "llama3")]


@pytest.mark.parametrize("name,rp,seq", LOGIT_CASES, ids=[c[0] for c in LOGIT_CASES])
def test_logits_match_transformers(tmp_path, name, rp, seq):
    torch.manual_seed(0)
    T = 48
    maxpos = 24 if name == "dynamic" else MAXPOS          # dynamic acts past max_position_embeddings
    cfg = transformers.LlamaConfig(vocab_size=320, hidden_size=128, intermediate_size=96,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=D,
                                   num_hidden_layers=2, max_position_embeddings=maxpos,
                                   rope_parameters=dict(rp, rope_theta=BASE), tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(cfg).eval().float()
    hf.save_pretrained(str(tmp_path))
    _tokenizer(str(tmp_path))
    ids = np.random.default_rng(1).integers(3, 320, T)
    with torch.no_grad():
        want = hf(torch.tensor(ids[None])).logits[0].numpy()
    n_ctx = T if name == "dynamic" else (100 if name.startswith("longrope") else None)
    m = slmx.load(str(tmp_path), n_ctx=n_ctx, threads=1)
    assert m.config.rope_scaling is not None or name == "linear"
    got = m.logits(ids.tolist())
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_rope_scaling_option_replaces_the_files(tmp_path):
    """load(rope_scaling=...) on a model without scaling equals transformers with that scaling"""
    torch.manual_seed(0)
    rp = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    base = transformers.LlamaConfig(vocab_size=320, hidden_size=128, intermediate_size=96,
                                    num_attention_heads=2, num_key_value_heads=1, head_dim=D,
                                    num_hidden_layers=1, max_position_embeddings=64,
                                    rope_parameters={"rope_type": "default", "rope_theta": BASE})
    plain = transformers.LlamaForCausalLM(base).eval().float()
    plain.save_pretrained(str(tmp_path))
    _tokenizer(str(tmp_path))
    scaled_cfg = transformers.LlamaConfig(**dict(base.to_dict(), rope_parameters=dict(rp, rope_theta=BASE),
                                                 max_position_embeddings=256))
    scaled = transformers.LlamaForCausalLM(scaled_cfg).eval().float()
    scaled.load_state_dict(plain.state_dict())
    ids = np.random.default_rng(2).integers(3, 320, 40)
    with torch.no_grad():
        want = scaled(torch.tensor(ids[None])).logits[0].numpy()
    m = slmx.load(str(tmp_path), threads=1, n_ctx=256,
                  rope_scaling={"type": "yarn", "factor": 4, "original_context_length": 64})
    assert m.config.context_length == 256
    np.testing.assert_allclose(m.logits(ids.tolist()), want, atol=1e-4 * np.abs(want).max())
    with pytest.raises(ValueError, match="type must be one of"):
        slmx.load(str(tmp_path), rope_scaling={"type": "wibble"})
    with pytest.raises(ValueError, match="needs 'original_context_length'|needs"):
        normalize_rope_scaling({"type": "llama3", "factor": 8})


class _T:
    def __init__(self, shape, data=None, type_=0):
        self.shape, self.type, self.data = shape, type_, data


def _meta(**kv):
    m = {"general.architecture": "llama", "llama.embedding_length": 64, "llama.attention.head_count": 2,
         "llama.block_count": 1, "llama.feed_forward_length": 96, "llama.context_length": 4096}
    m.update({"llama." + k: v for k, v in kv.items()})
    return m


def test_gguf_rope_scaling_metadata():
    t = {"token_embd.weight": _T((320, 64))}
    cfg = config_from_gguf(_meta(**{"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
                                    "rope.scaling.original_context_length": 1024,
                                    "rope.scaling.yarn_beta_fast": 16.0}), t)
    assert cfg.rope_scaling["type"] == "yarn" and cfg.rope_scaling["original_context_length"] == 1024
    assert cfg.rope_scaling["beta_fast"] == 16.0
    cfg = config_from_gguf(_meta(**{"rope.scaling.type": "linear", "rope.scaling.factor": 2.0}), t)
    assert cfg.rope_freq_scale == 0.5 and cfg.rope_scaling is None
    ff = np.linspace(1, 8, 16).astype(np.float32)
    cfg = config_from_gguf(_meta(), dict(t, **{"rope_freqs.weight": _T((16,), ff)}))
    assert cfg.rope_scaling["type"] == "freq_factors"
    _, _, kff, _ = kernel_parameters(cfg.rope_scaling, 32, 10000.0)
    np.testing.assert_allclose(kff, ff, rtol=1e-6)
    with pytest.raises(FormatError, match="original_context_length"):
        config_from_gguf(_meta(**{"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0}), t)
    with pytest.raises(FormatError, match="not supported"):
        config_from_gguf(_meta(**{"rope.scaling.type": "wibble"}), t)
    with pytest.raises(FormatError, match="rope_freqs"):
        config_from_gguf(_meta(), dict(t, **{"rope_freqs.weight": _T((7,), ff[:7])}))
