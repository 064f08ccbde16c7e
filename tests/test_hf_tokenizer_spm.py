"""SentencePiece-style tokenizer.json (byte-fallback BPE with "▁" for spaces): Llama 2 /
TinyLlama (Prepend + Replace normalizer) and Gemma (Replace only). Built here with the
`tokenizers` library; slmx's ids must equal the library's, and after `slmx convert` llama.cpp's
tokenizer must give the same ids from the GGUF file."""
import json
import os

import numpy as np
import pytest

import slmx
from slmx.convert import convert_hf_to_gguf
from slmx.tokenizer.hf_json import load_json
from slmx.tokenizer.spm import SPMTokenizer

TEXT = ["the quick brown fox jumps over the lazy dog", "def f(x):\n    return x + 1\n",
        "Hello world, hello there! Numbers 12345 and more."] * 30
PROBES = ["the quick brown fox", "Hello  world,\n\thello 日本 ünï!", "  leading spaces",
          "zzqqy 12345678", "x<start_of_turn>user hi<end_of_turn>", "def g(y):\n\treturn y*2 # ≠"]


def _spm_style(kind):
    """kind: "llama" (Llama 2's legacy tokenizer.json), "llama-v5" (transformers 5's Llama
    tokenizer: Metaspace, prefix before the first text only), "llama-always" (Metaspace before
    every text between special tokens), "gemma" (Replace normalizer),
    "gemma-v5" (plus transformers 5's Split on " ")."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    v5 = kind.endswith(("-v5", "-always"))
    scheme = "always" if kind.endswith("-always") else "first"
    kind = kind.replace("-v5", "").replace("-always", "")
    if kind == "llama":
        specials = ["<unk>", "<s>", "</s>"]
        norm = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        dec = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                 decoders.Strip(" ", 1, 0)])
        bos = "<s>"
    else:
        specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
        norm = normalizers.Replace(" ", "\u2581")
        dec = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
        bos = "<bos>"
    t = Tokenizer(models.BPE())
    t.normalizer = norm
    t.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                    show_progress=False))
    j = json.loads(t.to_str())
    learned = [p for p, _ in sorted(j["model"]["vocab"].items(), key=lambda kv: kv[1]) if p not in specials]
    order = specials + [f"<0x{b:02X}>" for b in range(256)] + learned     # byte tokens as in Llama 2
    vocab = {p: i for i, p in enumerate(order)}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in j["model"]["merges"]]
    t2 = Tokenizer(models.BPE(vocab, merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    t2.normalizer = norm
    if v5 and kind == "llama":
        t2.normalizer = None
        t2.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=scheme, split=False)
    elif v5:
        t2.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    t2.decoder = dec
    t2.add_special_tokens(specials)
    t2.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    return t2


@pytest.mark.parametrize("kind", ["llama", "llama-v5", "llama-always", "gemma", "gemma-v5"])
def test_ids_match_tokenizers(tmp_path, kind):
    ref = _spm_style(kind)
    ref.save(str(tmp_path / "tokenizer.json"))
    tok = load_json(str(tmp_path / "tokenizer.json"))
    assert isinstance(tok, SPMTokenizer) and tok.add_space_prefix == kind.startswith("llama")
    assert tok.add_bos
    for text in PROBES:
        want = ref.encode(text).ids
        got = tok.encode(text, parse_special=True)
        assert got == want, text
        assert tok.decode(got, skip_special=True) == ref.decode(want, skip_special_tokens=True)


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_converted_vocab_in_llama_cpp(tmp_path, kind):
    """A TinyLlama-style (llama + Llama 2 tokenizer) and a Gemma 3 folder: slmx.load works,
    and llama.cpp tokenizes the converted GGUF exactly as the `tokenizers` library does."""
    import torch
    import transformers
    ref = _spm_style(kind)
    V = ref.get_vocab_size()
    torch.manual_seed(0)
    common = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=64, num_hidden_layers=1)
    if kind == "llama":
        m = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        common["num_hidden_layers"] = 6
        m = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(head_dim=16, query_pre_attn_scalar=16,
                                                                         sliding_window=8, **common))
    folder = str(tmp_path / "hf")
    m.save_pretrained(folder)
    ref.save(os.path.join(folder, "tokenizer.json"))
    model = slmx.load(folder, n_ctx=32, threads=1)
    assert isinstance(model.tokenizer, SPMTokenizer)
    out = str(tmp_path / "m.gguf")
    convert_hf_to_gguf(folder, out, type="F32")
    g = slmx.load(out, n_ctx=32, threads=1)
    for text in PROBES:
        want = ref.encode(text).ids
        assert g.tokenizer.encode(text, parse_special=True) == want
    llama_cpp = pytest.importorskip("llama_cpp")
    L = llama_cpp.Llama(model_path=out, vocab_only=True, verbose=False)
    for text in PROBES:
        assert L.tokenize(text.encode(), add_bos=True, special=True) == ref.encode(text).ids, text
