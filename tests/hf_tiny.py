"""A tiny random Hugging Face Llama (transformers, fp32) saved as a folder with a byte-level BPE
tokenizer.json and converted to an F32 GGUF by slmx's converter: the peer model for the
beam-search and generation-option tests."""
import os

import torch
import transformers

V = 320


def _tokenizer(folder):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=V - 8, special_tokens=["<|endoftext|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog", "def f(x):\n    return x + 1\n"] * 20, tr)
    tok.save(os.path.join(folder, "tokenizer.json"))


_BUILT = {}


def tiny_llama(folder=None, seed=3, initializer_range=0.15):
    """(transformers model, path of its F32 GGUF) in `folder` (default: a temporary folder, and the
    model is built once per process for each (seed, initializer_range)). A large initializer_range
    gives peaked next-token distributions, so fp32 rounding cannot reorder near-tied candidates."""
    from slmx.convert import convert_hf_to_gguf
    key = (seed, initializer_range)
    if folder is None:
        if key in _BUILT:
            return _BUILT[key]
        import tempfile
        folder = tempfile.mkdtemp(prefix="slmx-tiny-llama-")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                   num_key_value_heads=2, num_hidden_layers=2, max_position_embeddings=128,
                                   tie_word_embeddings=False, initializer_range=initializer_range)
    hf = transformers.LlamaForCausalLM(cfg).eval().float()
    hf_dir = os.path.join(folder, "hf")
    hf.save_pretrained(hf_dir)
    _tokenizer(hf_dir)
    path = os.path.join(folder, "tiny-llama.gguf")
    convert_hf_to_gguf(hf_dir, path, type="F32")
    _BUILT[key] = (hf, path)
    return hf, path
