"""Hugging Face model folders: llama, mistral, qwen2 and gemma3 against transformers.

Each test builds a small randomly initialised model with transformers (fp32), saves it with
save_pretrained (model.safetensors, or shards and an index), adds a byte-level BPE
tokenizer.json trained by the `tokenizers` library, and loads the folder with slmx — directly
(`slmx.load(folder)`) and through `slmx convert` to GGUF (llama.cpp's layout: Llama's q/k rows
permuted, Gemma's norms with +1 folded in). Logits at every position must match transformers'
within 1e-4, on a prompt longer than the sliding window where there is one (gemma3, mistral).
"""
import os

import numpy as np
import pytest

import torch
import transformers

torch.set_num_threads(1)

import slmx
from slmx.convert import convert_hf_to_gguf

V = 320
ARCHS = ["llama", "mistral", "qwen2", "gemma3"]


def _tokenizer(folder):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=V - 8, special_tokens=["<|endoftext|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ["the quick brown fox jumps over the lazy dog", "def f(x):\n    return x + 1\n"] * 20
    tok.train_from_iterator(text, tr)
    tok.save(os.path.join(folder, "tokenizer.json"))
    return tok


def _build(arch):
    torch.manual_seed(0)
    common = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    if arch == "llama":
        m = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            num_hidden_layers=2, tie_word_embeddings=False, **common))
    elif arch == "mistral":
        m = transformers.MistralForCausalLM(transformers.MistralConfig(
            num_hidden_layers=2, sliding_window=8, tie_word_embeddings=False, **common))
    elif arch == "qwen2":
        m = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
            num_hidden_layers=2, tie_word_embeddings=True, **common))
    else:
        m = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
            num_hidden_layers=6, head_dim=16, query_pre_attn_scalar=16, sliding_window=8, **common))
    with torch.no_grad():   # random (not zero) norms and biases, so the test sees them
        for name, p in m.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.2 + (0.0 if arch == "gemma3" else 1.0))
            elif name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.1)
    return m.eval().float()


_CACHE = {}


def _model(arch, tmp_path_factory, sharded=False):
    key = (arch, sharded)
    if key not in _CACHE:
        hf = _build(arch)
        folder = str(tmp_path_factory.mktemp(f"{arch}{'-sharded' if sharded else ''}"))
        hf.save_pretrained(folder, max_shard_size="40KB" if sharded else "5GB")
        _tokenizer(folder)
        ids = np.random.default_rng(1).integers(3, V, 40)   # 40 tokens: past the window of 8
        with torch.no_grad():
            want = hf(torch.tensor(ids[None])).logits[0].numpy()
        _CACHE[key] = (folder, ids, want)
    return _CACHE[key]


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_folder_logits_match_transformers(tmp_path_factory, arch):
    folder, ids, want = _model(arch, tmp_path_factory)
    model = slmx.load(folder, n_ctx=128, threads=1)
    assert model.transformer.numerics == "fp32"          # the default for HF folders
    assert model.config.arch == arch
    got = model.logits(ids.tolist())
    err = np.abs(got - want).max()
    assert err < 1e-4, f"{arch}: max abs logit difference {err}"
    # decode path (one token at a time over the KV cache) agrees too
    model.cache.reset()
    for i, tok in enumerate(ids):
        step = np.array(model.transformer.forward([int(tok)], i, model.cache)[0])
    assert np.abs(step - want[-1]).max() < 1e-4


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_sharded_folder(tmp_path_factory, arch):
    folder, ids, want = _model(arch, tmp_path_factory, sharded=True)
    assert os.path.isfile(os.path.join(folder, "model.safetensors.index.json"))
    assert len([f for f in os.listdir(folder) if f.endswith(".safetensors")]) > 1
    got = slmx.load(folder, n_ctx=128, threads=1).logits(ids.tolist())
    assert np.abs(got - want).max() < 1e-4


def test_weights_are_zero_copy(tmp_path_factory):
    folder, _, _ = _model("llama", tmp_path_factory)
    model = slmx.load(folder, n_ctx=16, threads=1)
    w = model.transformer.layers[0].wq.data
    assert not w.flags.owndata and not w.flags.writeable     # a view of the safetensors mmap
    assert model.config.rope_neox                            # HF's pairing: q/k rows as stored


@pytest.mark.parametrize("arch", ARCHS)
def test_converted_gguf_logits_match_transformers(tmp_path_factory, tmp_path, arch):
    folder, ids, want = _model(arch, tmp_path_factory)
    out = str(tmp_path / "m.gguf")
    if arch == "mistral":     # llama.cpp's llama architecture has no sliding window: said aloud
        with pytest.warns(UserWarning, match="sliding window"):
            r = convert_hf_to_gguf(folder, out, type="F32")
    else:
        r = convert_hf_to_gguf(folder, out, type="F32")
    assert r["arch"] == arch and os.path.getsize(out) == r["bytes"]
    model = slmx.load(out, n_ctx=128, numerics="fp32", threads=1)
    assert model.config.arch == ("llama" if arch == "mistral" else arch)
    got = model.logits(ids.tolist())
    err = np.abs(got - want).max()
    assert err < 1e-4, f"{arch}: max abs logit difference {err}"


@pytest.mark.parametrize("arch", ARCHS)
def test_tokenizer_ids_match_tokenizers(tmp_path_factory, arch):
    from tokenizers import Tokenizer
    folder, _, _ = _model(arch, tmp_path_factory)
    ref = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    tok = slmx.load(folder, n_ctx=16, threads=1).tokenizer
    for text in ("the quick brown fox", "def g(y):\n\treturn y * 2  # ünïcödé 日本", "<|endoftext|>x"):
        assert tok.encode(text, add_bos=False, parse_special=True) == ref.encode(text).ids


@pytest.mark.parametrize("arch,type", [("llama", "F32"), ("qwen2", "F16"), ("gemma3", "F32"),
                                       ("llama", "Q8_0")])
def test_converted_gguf_runs_in_llama_cpp(tmp_path_factory, tmp_path, arch, type):
    """llama.cpp loads the converted file; its logits and greedy tokens match slmx's on that file."""
    llama_cpp = pytest.importorskip("llama_cpp")
    folder, ids, _ = _model(arch, tmp_path_factory)
    out = str(tmp_path / "m.gguf")
    convert_hf_to_gguf(folder, out, type=type)
    model = slmx.load(out, n_ctx=128, threads=1)        # ggml numerics, as llama.cpp computes
    L = llama_cpp.Llama(model_path=out, n_ctx=128, logits_all=True, vocab_only=False, verbose=False,
                        n_threads=1, n_threads_batch=1)
    text = "the quick brown fox\n    return x"
    assert L.tokenize(text.encode(), add_bos=False, special=False) == model.tokenizer.encode(text, add_bos=False)
    L.eval(ids.tolist())
    lc = np.array(L.scores[:len(ids)])
    got = model.logits(ids.tolist())
    assert np.abs(lc - got).max() < (2e-3 if type in ("F32", "F16") else 2e-2)
    prompt = ids[:10].tolist()
    want = []
    model.cache.reset()
    lg = model.transformer.forward(prompt, 0, model.cache)[0]
    for i in range(16):
        want.append(int(np.argmax(lg)))
        lg = model.transformer.forward([want[-1]], len(prompt) + i, model.cache)[0]
    got_ids = []
    for t in L.generate(prompt, temp=0.0, top_k=1, reset=True):
        got_ids.append(t)
        if len(got_ids) == len(want):
            break
    assert got_ids == want


def _cfg(**kw):
    d = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=96, vocab_size=V, hidden_act="silu")
    d.update(kw)
    return {k: v for k, v in d.items() if v is not None}


@pytest.mark.parametrize("kw,words", [
    (dict(num_attention_heads=5), "hidden_size 64 is not divisible by num_attention_heads 5"),
    (dict(num_key_value_heads=3), "not a multiple of num_key_value_heads 3"),
    (dict(hidden_size=None), "missing required field 'hidden_size'"),
    (dict(num_hidden_layers="2"), "'num_hidden_layers' must be an integer"),
    (dict(num_hidden_layers=0), "n_layers must be a positive integer"),
    (dict(model_type="bert"), "model_type 'bert' is not supported"),
    (dict(hidden_act="relu"), "activation 'relu' is not supported"),
    (dict(rope_scaling={"rope_type": "proportional", "factor": 4.0}), "rope_scaling: type must be one of"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": -4.0}), "factor must be a positive"),
    (dict(rms_norm_eps=-1.0), "norm_eps must be positive"),
    (dict(attention_bias=True), "attention_bias = true is not supported"),
    (dict(model_type="gemma3_text", hidden_activation="gelu_pytorch_tanh",
          layer_types=["full_attention", "sliding_attention"]), "repeating pattern"),
])
def test_bad_config_json(kw, words):
    from slmx.errors import FormatError
    from slmx.formats.hf import config_from_hf
    with pytest.raises(FormatError, match=words):
        config_from_hf(_cfg(**kw))


def test_bad_folder_files(tmp_path_factory, tmp_path):
    import json
    import shutil
    from slmx.errors import FormatError
    folder, _, _ = _model("llama", tmp_path_factory)
    bad = str(tmp_path / "m")
    shutil.copytree(folder, bad)
    cfg = json.load(open(os.path.join(bad, "config.json")))
    cfg["vocab_size"] = V + 1              # contradicts the embedding's rows
    json.dump(cfg, open(os.path.join(bad, "config.json"), "w"))
    with pytest.raises(FormatError, match="contradicts model.embed_tokens.weight"):
        slmx.load(bad, threads=1)
    with open(os.path.join(bad, "config.json"), "w") as f:
        f.write('{"model_type": "llama", "model_type": "qwen2"}')
    with pytest.raises(FormatError, match="duplicate key 'model_type'"):
        slmx.load(bad, threads=1)
    with open(os.path.join(bad, "config.json"), "w") as f:
        f.write("{nope")
    with pytest.raises(FormatError, match="not valid JSON"):
        slmx.load(bad, threads=1)


@pytest.mark.parametrize("arch,dtype", [("qwen2", "bfloat16"), ("gemma3", "bfloat16"), ("llama", "float16")])
def test_half_folder_used_in_place(tmp_path, arch, dtype):
    """A bfloat16 / float16 save: matrices stay BF16 / F16 views of the file (no copy),
    activations fp32; the reference is transformers in fp32 on the same rounded weights."""
    dt = getattr(torch, dtype)
    hf = _build(arch)
    with torch.no_grad():      # round the parameters only (not RoPE's buffers)
        for p in hf.parameters():
            p.copy_(p.to(dt).float())
    folder = str(tmp_path / dtype)
    hf.to(dt).save_pretrained(folder)
    _tokenizer(folder)
    hf = _build(arch)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.to(dt).float())
    ids = np.random.default_rng(2).integers(3, V, 24)
    with torch.no_grad():
        want = hf(torch.tensor(ids[None])).logits[0].numpy()
    model = slmx.load(folder, n_ctx=64, threads=1)
    w = model.transformer.layers[0].wq
    assert w.type == (30 if dtype == "bfloat16" else 1) and not w.data.flags.owndata
    got = model.logits(ids.tolist())
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize("arch,rope", [
    ("llama", {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
    ("qwen2", {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0,
               "original_max_position_embeddings": 32}),
])
def test_scaled_rope_converts(tmp_path, arch, rope):
    """Long-context RoPE scaling survives `slmx convert`: llama3 as llama.cpp's rope_freqs.weight,
    yarn as rope.scaling.* keys; slmx (and llama.cpp) on the GGUF give transformers' logits."""
    torch.manual_seed(0)
    common = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, num_hidden_layers=2,
                  rope_parameters=rope)
    cls = (transformers.LlamaForCausalLM, transformers.LlamaConfig) if arch == "llama" else \
        (transformers.Qwen2ForCausalLM, transformers.Qwen2Config)
    hf = cls[0](cls[1](**common)).eval()
    folder = str(tmp_path / "hf")
    hf.save_pretrained(folder)
    _tokenizer(folder)
    ids = np.random.default_rng(3).integers(3, V, 64)     # past the original context of 32
    with torch.no_grad():
        want = hf(torch.tensor(ids[None])).logits[0].numpy()
    assert np.abs(slmx.load(folder, n_ctx=128, threads=1).logits(ids.tolist()) - want).max() < 1e-4
    out = str(tmp_path / "m.gguf")
    convert_hf_to_gguf(folder, out, type="F32")
    from slmx.formats import gguf
    with gguf.read(out) as f:
        assert ("rope_freqs.weight" in f.tensors) == (arch == "llama")
    g = slmx.load(out, n_ctx=128, numerics="fp32", threads=1)
    assert np.abs(g.logits(ids.tolist()) - want).max() < 1e-4
    llama_cpp = pytest.importorskip("llama_cpp")
    L = llama_cpp.Llama(model_path=out, n_ctx=128, logits_all=True, verbose=False, n_threads=1,
                        n_threads_batch=1)
    L.eval(ids.tolist())
    got = slmx.load(out, n_ctx=128, threads=1).logits(ids.tolist())
    assert np.abs(np.array(L.scores[:len(ids)]) - got).max() < 2e-3


def test_info_on_folder(tmp_path_factory, capsys):
    import json
    from slmx.cli import main
    folder, _, _ = _model("qwen2", tmp_path_factory, sharded=False)
    assert main(["info", folder, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["architecture"] == "qwen2" and d["config"]["qkv_bias"] and d["tensor_count"] == 2 * 12 + 2
    from tokenizers import Tokenizer
    assert d["tokenizer"]["vocab_size"] == Tokenizer.from_file(os.path.join(folder, "tokenizer.json")).get_vocab_size()
