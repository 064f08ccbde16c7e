"""slmx.quantize / `slmx quantize` against llama.cpp's llama_model_quantize: the same tensor
types (mixed recipes, --pure, row-length fallbacks) and byte-identical output files.

Reference: tests/fixtures/quantize_llamacpp.json (tests/tools/quantize_reference.py: llama.cpp's
output files for the toy models of tests/kquant_cases.py), and live llama.cpp when importable.
"""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from slmx.formats import gguf
from slmx.quantize import RECIPES, plan_types, quantize_model

sys.path.insert(0, os.path.dirname(__file__))
import kquant_cases  # noqa: E402
import llamacpp_quant  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "quantize_llamacpp.json")
with open(FIXTURE) as _f:
    REF = json.load(_f)["models"]


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    out = {}
    for name in kquant_cases.MODELS:
        p = str(d / f"{name}.gguf")
        t = kquant_cases.write_model(p, name)
        assert kquant_cases.tensors_sha256(t) == REF[name]["tensors_sha256"], f"input model {name} changed"
        out[name] = p
    return out


# the second model is for the fallbacks and tied embeddings: its plain 32-block / float cases add
# nothing over the first model's (kept in the fixture, not re-run, to keep the suite fast)
_SKIP = {("tied4_ffn640", k) for k in ("Q8_0 pure", "Q5_0 pure", "F16 pure", "BF16 pure")}


def _cases():
    for m, e in REF.items():
        for key in e["cases"]:
            if (m, key) not in _SKIP:
                yield m, key


@pytest.mark.parametrize("model,case", list(_cases()), ids=lambda v: v.replace(" ", "-"))
def test_same_file_as_recorded_llamacpp(models, model, case, tmp_path):
    ref = REF[model]["cases"][case]
    typ, pure = case.split(" ")[0], case.endswith(" pure")
    out = str(tmp_path / "q.gguf")
    r = quantize_model(models[model], out, typ, pure=pure)
    with gguf.read(out) as f:
        assert {n: t.type_name for n, t in f.tensors.items()} == ref["types"]
        assert list(f.tensors) == list(ref["types"])                # llama.cpp's tensor order
        assert f.metadata["general.file_type"] == RECIPES[typ][0]
        assert f.metadata["general.quantization_version"] == 2
    assert r["types"] == ref["types"]
    assert _sha(out) == ref["file_sha256"]                           # byte-identical file


@pytest.mark.skipif(not llamacpp_quant.available(), reason="llama-cpp-python is not installed")
@pytest.mark.parametrize("typ,pure,ftype,d", [("Q4_K_M", False, "Q4_K_M", 256), ("Q5_K_S", False, "Q5_K_S", 256),
                                              ("Q4_0", False, "Q4_0", 256), ("Q5_K_M", False, "Q5_K_M", 640),
                                              ("Q5_K_S", False, "Q5_K_S", 640), ("Q4_1", False, "Q4_1", 256)])
def test_same_file_as_live_llamacpp(tmp_path, typ, pure, ftype, d):
    """A model llama.cpp has not seen before (other seed, shapes): quantized by both, compared.
    d = 640 (Gemma 3 270M's width, not a multiple of 256): Q5_K rows fall back to Q5_1."""
    kw = dict(n_layers=9, d=d, ffn=512, n_head=4, n_kv=1, vocab=300)
    t = kquant_cases.llama_tensors(tied=False, seed=11, **kw)
    src = str(tmp_path / "in.gguf")
    gguf.write(src, kquant_cases.llama_metadata(**kw), list(t.items()))
    a, b = str(tmp_path / "llama.gguf"), str(tmp_path / "slmx.gguf")
    llamacpp_quant.model_quantize(src, a, ftype, pure=pure)
    quantize_model(src, b, typ, pure=pure)
    with gguf.read(a) as fa, gguf.read(b) as fb:
        assert list(fa.tensors) == list(fb.tensors)
        for n, ta in fa.tensors.items():
            tb = fb.tensors[n]
            assert ta.type == tb.type, n
            assert np.array_equal(np.asarray(ta.data).view(np.uint8), np.asarray(tb.data).view(np.uint8)), n
    assert _sha(a) == _sha(b)
    if d % 256:
        with gguf.read(b) as fb:
            assert "Q5_1" in {t.type_name for t in fb.tensors.values()}


def test_plan_types_rules():
    """The recipes' choices on a 16-layer model (llama.cpp's use_more_bits pattern)."""
    n = 16
    t = {"token_embd.weight": ("F32", (100, 256)), "output.weight": ("F32", (100, 256)),
         "output_norm.weight": ("F32", (256,))}
    for i in range(n):
        for k in ("attn_v", "ffn_down", "attn_q"):
            t[f"blk.{i}.{k}.weight"] = ("F32", (256, 256))
    p = plan_types(t, "Q4_K_M", n_layers=n)
    more = [i for i in range(n) if p[f"blk.{i}.attn_v.weight"] == "Q6_K"]
    assert more == [0, 1, 4, 7, 10, 13, 14, 15]                   # i < n/8, i >= 7n/8, every third
    assert all(p[f"blk.{i}.ffn_down.weight"] == ("Q6_K" if i in more else "Q4_K") for i in range(n))
    assert p["output.weight"] == "Q6_K" and p["token_embd.weight"] == "Q4_K"
    assert p["output_norm.weight"] == "F32" and p["blk.3.attn_q.weight"] == "Q4_K"
    s = plan_types(t, "Q4_K_S", n_layers=n)
    assert [i for i in range(n) if s[f"blk.{i}.attn_v.weight"] == "Q5_K"] == [0, 1, 2, 3]
    assert [i for i in range(n) if s[f"blk.{i}.ffn_down.weight"] == "Q5_K"] == [0, 1]
    tied = {k: v for k, v in t.items() if k != "output.weight"}
    assert plan_types(tied, "Q4_K_M", n_layers=n)["token_embd.weight"] == "Q6_K"
    assert set(plan_types(t, "Q4_K", n_layers=n).values()) == {"Q4_K", "F32"}     # pure
    assert plan_types(t, "Q4_0", pure=False, n_layers=n)["output.weight"] == "Q6_K"
    odd = {"blk.0.ffn_down.weight": ("F32", (256, 640)), "blk.0.attn_q.weight": ("F32", (256, 48))}
    assert plan_types(odd, "Q6_K", n_layers=1) == {"blk.0.ffn_down.weight": "Q8_0", "blk.0.attn_q.weight": "F16"}
    with pytest.raises(ValueError, match="no fallback"):
        plan_types(odd, "Q8_0", n_layers=1)
    with pytest.raises(ValueError, match="unknown quantization type"):
        plan_types(t, "Q3_K_M", n_layers=n)


def test_bad_inputs(models, tmp_path):
    src = models["untied8"]
    with pytest.raises(ValueError, match="same file"):
        quantize_model(src, src, "Q8_0")
    q = str(tmp_path / "q.gguf")
    quantize_model(src, q, "Q8_0")
    with pytest.raises(ValueError, match="requantiz"):
        quantize_model(q, str(tmp_path / "r.gguf"), "Q4_K")
    r = quantize_model(q, str(tmp_path / "r.gguf"), "Q4_K", allow_requantize=True)
    assert r["counts"]["Q4_K"] > 0
    t = kquant_cases.llama_tensors(n_layers=1, vocab=64)
    t["blk.0.ffn_up.weight"][3, 7] = np.nan
    nan = str(tmp_path / "nan.gguf")
    gguf.write(nan, kquant_cases.llama_metadata(n_layers=1, vocab=64), list(t.items()))
    with pytest.raises(ValueError, match="blk.0.ffn_up.weight holds NaN"):
        quantize_model(nan, str(tmp_path / "n.gguf"), "Q4_K")
    if llamacpp_quant.available():                                  # llama.cpp refuses it too
        with pytest.raises(RuntimeError):
            llamacpp_quant.model_quantize(nan, str(tmp_path / "n2.gguf"), "Q4_K_M")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(20))
    from slmx.errors import FormatError
    with pytest.raises(FormatError):
        quantize_model(str(bad), str(tmp_path / "x.gguf"), "Q4_K")
    assert not (tmp_path / "x.gguf").exists()


def test_cli(models, tmp_path):
    out = tmp_path / "cli.gguf"
    run = lambda *a: subprocess.run([sys.executable, "-m", "slmx", "quantize", *a],  # noqa: E731
                                    capture_output=True, text=True)
    p = run(models["untied8"], str(out), "--type", "q4_k_m")
    assert p.returncode == 0, p.stderr
    assert "Q4_K_M" in p.stdout and _sha(out) == REF["untied8"]["cases"]["Q4_K_M"]["file_sha256"]
    p = run(models["untied8"], str(out), "--type", "Q4_0", "--mixed")
    assert p.returncode == 1 and "--force" in p.stderr         # the output exists
    p = run(models["untied8"], str(out), "--type", "Q4_0", "--mixed", "--force")
    assert p.returncode == 0 and _sha(out) == REF["untied8"]["cases"]["Q4_0"]["file_sha256"]
    p = run(models["tied4_ffn640"], str(out), "--type", "Q5_K", "--force")      # rows of 640: Q5_1 fallback
    assert p.returncode == 0 and _sha(out) == REF["tied4_ffn640"]["cases"]["Q5_K pure"]["file_sha256"]
    p = run(models["untied8"], str(tmp_path / "y.gguf"), "--type", "Q2_K")
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "unknown quantization type" in p.stderr


def _hf_folder(folder, n_layers=2, d=256, ffn=512, n_head=4, n_kv=2):
    """A random Llama as a Hugging Face folder: config.json, model.safetensors, tokenizer.json."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    os.makedirs(folder, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tr = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog", "def f(x): return x"] * 20, tr)
    tok.save(os.path.join(folder, "tokenizer.json"))
    vocab = tok.get_vocab_size()
    t = kquant_cases.llama_tensors(n_layers=n_layers, d=d, ffn=ffn, n_head=n_head, n_kv=n_kv, vocab=vocab, seed=3)
    hf = {"model.embed_tokens.weight": t["token_embd.weight"], "lm_head.weight": t["output.weight"],
          "model.norm.weight": t["output_norm.weight"]}
    names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    for i in range(n_layers):
        for g, h in names.items():
            hf[f"model.layers.{i}.{h}.weight"] = t[f"blk.{i}.{g}.weight"]
    save_file(hf, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d,
           "intermediate_size": ffn, "num_hidden_layers": n_layers, "num_attention_heads": n_head,
           "num_key_value_heads": n_kv, "vocab_size": vocab, "max_position_embeddings": 128,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float32",
           "hidden_act": "silu"}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return folder


def test_hf_folder_input_equals_converted_gguf(tmp_path):
    """HF folder in = the F32 GGUF `slmx convert` writes for it, quantized (same bytes); with
    llama.cpp installed, llama_model_quantize on that GGUF gives the same file again."""
    from slmx.convert import convert_hf_to_gguf
    folder = _hf_folder(str(tmp_path / "hf"))
    f32 = str(tmp_path / "f32.gguf")
    convert_hf_to_gguf(folder, f32, type="F32", name="hf")
    a, b = str(tmp_path / "from_hf.gguf"), str(tmp_path / "from_gguf.gguf")
    r = quantize_model(folder, a, "Q4_K_M")
    quantize_model(f32, b, "Q4_K_M")
    assert r["types"]["output.weight"] == "Q6_K" and r["counts"]["Q4_K"] > 0
    assert _sha(a) == _sha(b)
    if llamacpp_quant.available():
        c = str(tmp_path / "llama.gguf")
        llamacpp_quant.model_quantize(f32, c, "Q4_K_M")
        assert _sha(c) == _sha(a)
