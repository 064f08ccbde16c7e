"""Byte-level BPE training and HF tokenizer.json, against HF `tokenizers`.

* the Cython GPT-2 pre-tokenizer splits exactly like the ``regex`` module (random strings with
  contractions, Unicode whitespace, digits, marks, emoji, lone surrogates; chunked files);
* training is deterministic, gives the exact vocabulary size and the special tokens at 0, 1, ...;
* the merges and the vocabulary equal those of HF's BpeTrainer on the same texts (GPT-2
  pre-tokenizer on the Cython path, Llama 3's regex on the ``regex`` path);
* save_json writes a file `tokenizers.Tokenizer.from_file` encodes to the same ids as slmx;
* load_json reads tokenizer.json files of the GPT-2 / Llama 3 / Qwen2 / SmolLM kinds (made in
  the test with `tokenizers`) and encodes like `tokenizers` does.

Run as a script for the speed comparison on the standard library:
    python tests/test_train_bpe.py --bench
"""
import collections
import importlib
import inspect
import json
import os
import pathlib
import random
import sys

import numpy as np
import pytest

if __name__ == "__main__":         # run as a script from a checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slmx.errors import FormatError  # noqa: E402
from slmx.tokenizer import (TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_USER_DEFINED, BPETokenizer,
                            Tokenizer, load_json, save_json, train_bpe)
from slmx.tokenizer.base import to_utf8
from slmx.tokenizer.bpe import _GPT2, _LLAMA3, _QWEN2, split_pieces
from slmx.tokenizer.hf_json import HF_GPT2_PATTERN, to_json_dict

# the module (slmx.tokenizer.train_bpe is also the name of the function it exports)
T = importlib.import_module("slmx.tokenizer.train_bpe")
tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

HF_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
HF_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
            r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

MULTILINGUAL = ("Café déjà vu, naïve façade. Привет, как дела? Γειά σου κόσμε. 你好，世界！"
                "こんにちは世界。안녕하세요 세계. مرحبا بالعالم. नमस्ते दुनिया. 😀🚀🔥 🦙 👍🏽 "
                "I'm sure they'll say we've done it, isn't it? 1234567890 3.14159 2024-05-09\n")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus_texts():
    import argparse
    import json.decoder
    import string
    import textwrap
    srcs = [inspect.getsource(m) for m in (textwrap, string, json.decoder, argparse, collections)]
    return srcs + [MULTILINGUAL] * 30


def random_text(rng, n):
    alpha = (list(" \t\n\r\x0b\x0c\x1c\x85\xa0\u2028\u3000'sStrevlmdL0123٣²½aZéßñ\u0301中😀-_.,!?\"#")
             + ["'s", "'re", "'ll", "'ve", " 's", "  ", "\n\n", "'d", "'m", "'t", " 12", "\r\n",
                "'S", "'RE", "'Ll", "'ſ", "ſ", "'\u212a", "\r", " \n ", ")\n", " (x", "1234567",
                "\udc80", "\udcff", "\ud800", "def ", "    "])
    return "".join(rng.choice(alpha) for _ in range(rng.randint(0, n)))


def sample_strings():
    import json.encoder
    fixed = [
        "", " ", "  ", "\n", "\n\n\n", "\t\tx", " \t a", "a  b   c    d", "trailing   ",
        "Hello world", " Hello world", "HELLO World hello", "I'm sure they'll say we've done it",
        "DON'T WON'T I'M YOU'RE", "12 123 1234 12345 1234567 3.14159 1e-10 0x1F",
        "def f(x):\n    return x**2\n", "if (a<=b && c!=d) { x += 1; }\r\n",
        "Café déjà vu — 123 😊", "你好，世界！", "こんにちは", "안녕하세요", "مرحبا بالعالم",
        "नमस्ते", "👨‍👩‍👧‍👦 🇫🇷 🏳️‍🌈 👍🏽", "🦙.cpp", "\u0301 combining", "\x00\x01\x7f",
        "emoji😀in😃words", "tab\tseparated\tvalues", "ß ẞ ǅ ŉ ﬁ", "¡¿«»„“”‘’", "$ € £ ¥ ₿",
        "<|endoftext|>", "a<|im_start|>user\nhi<|im_end|>\n", "x <|endoftext|> y",
        "\u00a0nbsp\u2003em\u3000ideo", "٣٤٥ ²³ ½", "Ⅻ numerals", MULTILINGUAL * 2,
    ]
    rng = random.Random(11)
    rand = ["".join(rng.choice(["a", "Z", " ", "  ", "\n", "\t", "'s", "1", "23", "é", "中", "😀",
                                "_", "--", ".", "'"]) for _ in range(rng.randint(1, 40)))
            for _ in range(120)]
    return fixed + inspect.getsource(json.encoder).splitlines(keepends=True) + rand


def pieces_bytes(counts):
    out = collections.Counter()
    for w, n in counts.items():
        out[to_utf8(w)] += n
    return out


# =======================================================================================
# pre-tokenization
# =======================================================================================

@pytest.mark.parametrize("pattern", [[_GPT2], [HF_GPT2_PATTERN], [_LLAMA3], [HF_LLAMA3], [_QWEN2],
                                     [HF_QWEN2], [r"\p{N}", _GPT2], [r"\p{N}", HF_GPT2_PATTERN]],
                         ids=["gpt2", "gpt2-hf", "llama3", "llama3-hf", "qwen2", "qwen2-hf",
                              "smollm", "smollm-hf"])
def test_scanner_matches_regex(pattern, monkeypatch):
    """The Cython pre-tokenizers give exactly the pieces of the regex module."""
    import regex
    rx = [regex.compile(p) for p in pattern]
    monkeypatch.setattr(T, "_count_regex", None)        # the Cython path must be taken
    rng = random.Random(3)
    texts = [random_text(rng, 40) for _ in range(1500)] + sample_strings()
    for s in texts:
        fast = T.count_words([s], pattern, threads=1)
        ref = collections.Counter(split_pieces(s, rx))
        assert pieces_bytes(fast) == pieces_bytes(ref), repr(s)
    # the whole list at once, on two threads
    fast = T.count_words(texts, pattern, threads=2)
    ref = collections.Counter()
    for s in texts:
        ref.update(split_pieces(s, rx))
    assert pieces_bytes(fast) == pieces_bytes(ref)


def test_chunked_files_and_strings(tmp_path, monkeypatch):
    import regex
    text = "".join(corpus_texts()) + "tail  \n\n"
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode("utf-8") + b"\xff\xfe bad bytes\r\n end")
    raw = path.read_bytes().decode("utf-8", "surrogateescape")
    for pre, pats in (("gpt2", [_GPT2]), ("llama3", [_LLAMA3])):
        ref = pieces_bytes(collections.Counter(split_pieces(raw, [regex.compile(p) for p in pats])))
        monkeypatch.setattr(T, "CHUNK_CHARS", 1000)
        chunks = list(T._iter_chunks([path]))
        assert len(chunks) > 20 and "".join(chunks) == raw
        assert pieces_bytes(T.count_words([path], pre, threads=2)) == ref
        assert pieces_bytes(T.count_words([raw], pre, threads=2)) == ref       # a long str
        monkeypatch.setattr(T, "CHUNK_CHARS", 1 << 20)
        assert pieces_bytes(T.count_words(path, pre, threads=1)) == ref


def test_inputs_validation():
    with pytest.raises(TypeError, match="bytes"):
        T.count_words([b"abc"])
    with pytest.raises(TypeError, match="int"):
        T.count_words([1])
    with pytest.raises(ValueError, match="regex"):
        train_bpe(["abc"], 300, pre="(unclosed", progress=False)
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["abc"], 100, progress=False)


# =======================================================================================
# training
# =======================================================================================

@pytest.fixture(scope="module")
def trained():
    return train_bpe(corpus_texts(), 1500, special_tokens=SPECIAL, progress=False, threads=2)


def test_train_deterministic_exact_size(trained):
    tok = trained
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 1500
    again = train_bpe(corpus_texts(), 1500, special_tokens=SPECIAL, progress=False, threads=1)
    assert again.tokens == tok.tokens and list(again._ranks) == list(tok._ranks)
    for i, s in enumerate(SPECIAL):
        assert tok.tokens[i] == s and tok.token_type(i) == TOKEN_CONTROL
    assert all(tok.token_type(i) == TOKEN_NORMAL for i in range(len(SPECIAL), tok.vocab_size))
    assert tok.eos_id == 0 and tok.bos_id is None and not tok.add_bos
    assert len(set(tok.tokens)) == tok.vocab_size
    # every merge makes a token and both its sides come before it
    for a, b in tok._ranks:
        ia, ib, iab = tok.token_id(a), tok.token_id(b), tok.token_id(a + b)
        assert None not in (ia, ib, iab) and max(ia, ib) < iab
    st = tok.train_stats
    assert st["n_words"] > 1000 and st["n_pretokens"] > 10000


def test_train_roundtrip_and_compression(trained):
    tok = trained
    for s in sample_strings():
        ids = tok.encode(s)
        assert tok.decode(ids) == s
        assert tok.decode(tok.encode(s, parse_special=True)) == s
    text = "".join(corpus_texts())
    n = len(tok.encode(text))
    assert n < len(text.encode("utf-8")) / 2.5          # merges were learned
    assert tok.encode("<|im_end|>", parse_special=True) == [2]
    assert 2 not in tok.encode("<|im_end|>")


def test_min_frequency_stops_early():
    texts = ["abc abd abe xyz"]
    tok = train_bpe(texts, 400, special_tokens=(), progress=False, min_frequency=2)
    # "ab" 3 times, then "Ġab" (" ab") twice; every other pair once
    assert tok.vocab_size == 258 and list(tok._ranks) == [("a", "b"), ("Ġ", "ab")]
    tok = train_bpe(texts, 400, special_tokens=(), progress=False, min_frequency=1)
    assert tok.vocab_size > 260
    with pytest.raises(ValueError, match="not one of the special tokens"):
        train_bpe(texts, 400, special_tokens=("<s>",), eos_token="</s>", progress=False)
    tok = train_bpe(texts, 400, special_tokens=("<s>", "</s>"), bos_token="<s>",
                    eos_token="</s>", progress=False)
    assert (tok.bos_id, tok.eos_id) == (0, 1)


def hf_train(texts, vocab_size, pre="gpt2", min_frequency=2, special=SPECIAL):
    hf = tokenizers.Tokenizer(models.BPE())
    if pre == "gpt2":
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(pre), behavior="isolated"),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=list(special), min_frequency=min_frequency,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer)
    d = json.loads(hf.to_str())
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in d["model"]["merges"]]
    return hf, d["model"]["vocab"], merges


@pytest.mark.parametrize("vocab_size,min_frequency", [(1500, 2), (3000, 0)])
def test_merges_equal_hf_bpe_trainer(trained, vocab_size, min_frequency):
    """Same texts, same settings: the same vocabulary (ids included) and the same merges."""
    texts = corpus_texts()
    if (vocab_size, min_frequency) == (1500, 2):
        tok = trained
    else:
        tok = train_bpe(texts, vocab_size, special_tokens=SPECIAL, progress=False,
                        min_frequency=min_frequency)
    _, vocab, merges = hf_train(texts, vocab_size, min_frequency=min_frequency)
    assert {t: i for i, t in enumerate(tok.tokens)} == vocab
    assert list(tok._ranks) == merges


def test_merges_equal_hf_llama3_regex():
    """A regex pre-tokenizer (the regex-module path): HF's Llama 3 regex on both sides."""
    texts = corpus_texts()[:3] + [MULTILINGUAL] * 5
    tok = train_bpe(texts, 800, special_tokens=SPECIAL[:1], pre=HF_LLAMA3, progress=False)
    _, vocab, merges = hf_train(texts, 800, pre=HF_LLAMA3, special=SPECIAL[:1])
    assert {t: i for i, t in enumerate(tok.tokens)} == vocab
    assert list(tok._ranks) == merges


# =======================================================================================
# tokenizer.json
# =======================================================================================

def assert_same_ids(tok, hf, strings, add_special_tokens=True):
    hf.encode_special_tokens = False
    with_special = hf.encode_batch(strings, add_special_tokens=add_special_tokens)
    hf.encode_special_tokens = True
    plain = hf.encode_batch(strings, add_special_tokens=add_special_tokens)
    hf.encode_special_tokens = False
    for s, a, b in zip(strings, with_special, plain):
        assert tok.encode(s, parse_special=True) == a.ids, repr(s)
        assert tok.encode(s) == b.ids, repr(s)


def test_save_json_loads_in_hf_tokenizers(trained, tmp_path):
    path = tmp_path / "tokenizer.json"
    assert save_json(trained, path) == str(path)
    assert sorted(os.listdir(tmp_path)) == ["tokenizer.json"]     # no temporary file left
    hf = tokenizers.Tokenizer.from_file(str(path))
    assert hf.get_vocab_size() == trained.vocab_size
    strings = sample_strings()
    assert_same_ids(trained, hf, strings)
    whole = "".join(strings)
    assert trained.encode(whole, parse_special=True) == hf.encode(whole).ids
    assert hf.decode(trained.encode(whole), skip_special_tokens=False) == whole
    # and back: the same tokenizer
    for back in (load_json(path), Tokenizer.from_json(path)):
        assert isinstance(back, BPETokenizer)
        assert back.tokens == trained.tokens and list(back._ranks) == list(trained._ranks)
        assert (back.token_types == trained.token_types).all()
        assert back.pre == "gpt2" and back.eos_ids == trained.eos_ids
        assert_same_ids(back, hf, strings[:80])
    # without tokenizer_config.json EOS is the end-of-text control token of the lowest id
    assert load_json(path).eos_id == 0
    trained.eos_id = 2
    trained.save_json(tmp_path / "tokenizer.json", write_config=True)
    assert sorted(os.listdir(tmp_path)) == ["tokenizer.json", "tokenizer_config.json"]
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["eos_token"] == "<|im_end|>" and cfg["bos_token"] is None
    assert load_json(path).eos_id == 2
    trained.eos_id = 0
    save_json(trained, tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads(path.read_text())


def test_save_json_other_pretokenizers_and_bos(tmp_path):
    texts = corpus_texts()[:2] + [MULTILINGUAL] * 5
    for pre in ("llama3", "qwen2", "smollm"):
        tok = train_bpe(texts, 700, special_tokens=["<s>", "</s>", "<tool>"], pre=pre,
                        bos_token="<s>", eos_token="</s>", progress=False)
        tok.add_bos = True
        (tmp_path / pre).mkdir()
        path = tmp_path / pre / "tokenizer.json"
        save_json(tok, path, write_config=True)
        hf = tokenizers.Tokenizer.from_file(str(path))
        assert_same_ids(tok, hf, sample_strings())        # HF adds BOS from the template
        back = load_json(path)
        assert back.add_bos and back.bos_id == 0 and back.eos_id == 1
        assert back.encode("hi")[0] == 0 and back.pre == {"smollm": "starcoder"}.get(pre, pre)
        assert back.tokens == tok.tokens and list(back._ranks) == list(tok._ranks)


# --- reading the files of the common families ------------------------------------------

@pytest.fixture(scope="module")
def hf_base():
    """vocab and merges of a small byte-level BPE trained by HF."""
    _, vocab, merges = hf_train(corpus_texts(), 2500, special=())
    return vocab, merges


def family(kind, vocab, merges):
    vocab = dict(vocab)
    n = max(vocab.values()) + 1
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=list(merges),
                                         ignore_merges=(kind == "llama3")))
    hf.decoder = decoders.ByteLevel()
    if kind == "gpt2":
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.post_processor = processors.ByteLevel(trim_offsets=False)
        # (slmx makes end-of-turn texts such as <|im_end|> control tokens, as llama.cpp does)
        hf.add_special_tokens(SPECIAL)
    elif kind == "llama3":
        hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(HF_LLAMA3), "isolated"), bl])
        # added tokens beyond the model's vocabulary, with a gap in the ids
        hf.add_special_tokens(["<|begin_of_text|>", "<|eot_id|>"])
        hf.add_special_tokens(["<|reserved_0|>"])
        hf.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                          pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                          special_tokens=[("<|begin_of_text|>", n)])])
    elif kind == "qwen2":
        hf.normalizer = normalizers.NFC()
        hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(HF_QWEN2), "isolated"), bl])
        hf.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        hf.add_tokens(["<tool_call>"])
    elif kind == "smollm":
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        hf.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    return hf


@pytest.mark.parametrize("kind,pre", [("gpt2", "gpt2"), ("llama3", "llama-bpe"),
                                      ("qwen2", "qwen2"), ("smollm", "smollm")])
def test_load_json_families(hf_base, tmp_path, kind, pre):
    hf = family(kind, *hf_base)
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    if kind == "llama3":                      # leave a gap in the ids of the added tokens
        d = json.loads(path.read_text())
        for a in d["added_tokens"]:
            if a["content"] == "<|reserved_0|>":
                a["id"] += 3
        path.write_text(json.dumps(d))
        hf = tokenizers.Tokenizer.from_file(str(path))
    tok = load_json(path)
    assert tok.pre == pre
    strings = sample_strings() + ["Cafe\u0301 e\u0301 \u212b"]          # NFC matters for Qwen2
    assert_same_ids(tok, hf, strings)
    for s in strings[:60]:
        ids = tok.encode(s, parse_special=True)
        assert tok.decode(ids, skip_special=True) == hf.decode(ids, skip_special_tokens=True)
    if kind == "llama3":
        assert tok.add_bos and tok.token_type(tok.bos_id) == TOKEN_CONTROL
        assert tok.tokens[tok.vocab_size - 2].startswith("[PAD")     # the gap
        assert tok.token_id("<|reserved_0|>") == tok.vocab_size - 1
        assert tok.is_eos(tok.token_id("<|eot_id|>"))
    if kind == "qwen2":
        assert tok.token_type(tok.token_id("<tool_call>")) == TOKEN_USER_DEFINED
        assert tok.encode("Cafe\u0301") == tok.encode("Caf\u00e9")
    # resaved by slmx, read by HF: still the same ids
    save_json(tok, tmp_path / "resaved.json")
    assert_same_ids(tok, tokenizers.Tokenizer.from_file(str(tmp_path / "resaved.json")), strings[:100])


def test_load_json_tokenizer_config(hf_base, tmp_path):
    hf = family("qwen2", *hf_base)
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": None, "eos_token": {"content": "<|im_end|>"}, "pad_token": "<|endoftext|>",
        "add_bos_token": False, "chat_template": "{{ messages }}"}))
    tok = Tokenizer.from_json(tmp_path / "tokenizer.json")
    assert tok.eos_id == tok.token_id("<|im_end|>") and tok.pad_id == tok.token_id("<|endoftext|>")
    assert tok.chat_template == "{{ messages }}" and not tok.add_bos


def _bad(tmp_path, d):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d) if not isinstance(d, str) else d)
    return p


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["model"].update(type="WordPiece"), "model.type"),
    (lambda d: d["model"].update(byte_fallback=True), "byte_fallback"),
    (lambda d: d["model"]["merges"].append(["Ġ", "zzzz"]), "not a token"),
    (lambda d: d["model"]["merges"].append("nospace"), "not a pair"),
    (lambda d: d["model"]["vocab"].update({"x1": -3}), "non-negative"),
    (lambda d: d["model"]["vocab"].update({"x1": 10 ** 9}), "sparse"),
    (lambda d: d.update(pre_tokenizer={"type": "ByteLevel", "add_prefix_space": True}), "add_prefix_space"),
    (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "not supported"),
    (lambda d: d.update(pre_tokenizer={"type": "Split", "pattern": {"Regex": "a"},
                                       "behavior": "Removed", "invert": False}), "behavior"),
    (lambda d: d.update(pre_tokenizer=None), "pre_tokenizer"),
    (lambda d: d.update(normalizer={"type": "Lowercase"}), "normalizer"),
    (lambda d: d["added_tokens"].append({"id": 5, "content": "<|endoftext|>", "special": True}), "id"),
    (lambda d: d["added_tokens"].append({"id": "7", "content": "x"}), "added_tokens"),
])
def test_load_json_rejects_malformed(trained, tmp_path, mutate, match):
    d = json.loads(json.dumps(to_json_dict(trained)))
    mutate(d)
    with pytest.raises(FormatError, match=match):
        load_json(_bad(tmp_path, d))


def test_load_json_not_json(tmp_path):
    with pytest.raises(FormatError, match="JSON"):
        load_json(_bad(tmp_path, "{not json"))
    with pytest.raises(FormatError, match="object"):
        load_json(_bad(tmp_path, "[1, 2]"))


# =======================================================================================
# the kernel's checks
# =======================================================================================

def test_kernel_rejects_bad_arguments():
    from slmx._kernels.bpe_train import BPEMergeState, PieceCounter
    b2i = np.arange(256, dtype=np.int32)
    data = np.frombuffer(b"abab", dtype=np.uint8).copy()
    off = np.array([0, 2, 4], dtype=np.int64)
    cnt = np.array([1, 2], dtype=np.int64)
    with pytest.raises(ValueError, match="dtype"):
        BPEMergeState(data, off.astype(np.int32), cnt, b2i)
    with pytest.raises(ValueError, match="counts"):
        BPEMergeState(data, off, cnt[:1], b2i)
    with pytest.raises(ValueError, match="byte_to_id"):
        BPEMergeState(data, off, cnt, b2i[:10])
    with pytest.raises(ValueError, match="offsets"):
        BPEMergeState(data, np.array([0, 3, 2], dtype=np.int64), cnt, b2i)
    with pytest.raises(ValueError, match="offsets"):
        BPEMergeState(data, np.array([0, 2, 5], dtype=np.int64), cnt, b2i)
    with pytest.raises(ValueError, match="positive"):
        BPEMergeState(data, off, np.array([1, 0], dtype=np.int64), b2i)
    with pytest.raises(ValueError, match="numpy"):
        BPEMergeState(b"abab", off, cnt, b2i)
    st = BPEMergeState(data, off, cnt, b2i)
    with pytest.raises(ValueError, match="pop_best"):
        st.apply_merge(300)
    assert st.pop_best() == (ord("a"), ord("b"), 3)
    assert st.pop_best() == (ord("a"), ord("b"), 3)         # not applied: still the best
    st.apply_merge(256)
    assert st.word_symbols(0) == [256] and st.word_symbols(1) == [256]
    assert st.pop_best() is None
    pc = PieceCounter()
    with pytest.raises(ValueError, match="table"):
        pc.add_gpt2("abc", np.zeros(10, dtype=np.uint8))
    with pytest.raises(ValueError, match="itself"):
        pc.merge(pc)


def test_kernel_merge_counts_match_naive():
    """pair counts and word rewriting against a direct Python BPE on a tiny corpus."""
    from slmx._kernels.bpe_train import BPEMergeState
    rng = random.Random(5)
    words = {"".join(rng.choice("aab") for _ in range(rng.randint(2, 9))): rng.randint(1, 5)
             for _ in range(60)}
    data, off, cnt = T._word_arrays(words)
    st = BPEMergeState(data, off, cnt, np.arange(256, dtype=np.int32))
    seqs = [[ord(c) for c in w] for w in words]
    counts = list(words.values())
    nxt = 256
    for _ in range(12):
        top = st.pop_best(1)
        if top is None:
            break
        a, b, c = top
        pairs = collections.Counter()
        for s, n in zip(seqs, counts):
            for x, y in zip(s, s[1:]):
                pairs[(x, y)] += n
        best = max(pairs.values())
        assert pairs[(a, b)] == best == c and (a, b) == min(p for p, v in pairs.items() if v == best)
        st.apply_merge(nxt)
        for k, s in enumerate(seqs):
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(nxt)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[k] = out
        nxt += 1
    kept = [s for w, s in zip(words, seqs) if len(w) >= 2]
    assert [st.word_symbols(i) for i in range(st.n_words)] == kept


# =======================================================================================
# speed against HF tokenizers (python tests/test_train_bpe.py --bench)
# =======================================================================================

def stdlib_py_files():
    """The standard library's .py files, without test directories or site-packages."""
    import sysconfig
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in ("test", "tests", "idle_test", "site-packages",
                                                       "dist-packages", "__pycache__"))
        out += [os.path.join(d, f) for f in sorted(files) if f.endswith(".py")]
    return out


def bench(vocab_size=8192, threads=2, repeats=3):
    import statistics
    import time
    files = stdlib_py_files()
    mb = sum(os.path.getsize(f) for f in files) / 1e6

    def read_all():
        for f in files:
            with open(f, encoding="utf-8", errors="surrogateescape", newline="") as fh:
                yield fh.read()

    def run_hf(mode):
        hf = tokenizers.Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tr = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, min_frequency=2,
                                 special_tokens=["<|endoftext|>"],
                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        t = time.perf_counter()
        if mode == "files":
            hf.train(files, tr)
        else:
            hf.train_from_iterator(read_all(), tr)
        return time.perf_counter() - t, hf

    def run_slmx():
        t = time.perf_counter()
        tok = train_bpe([pathlib.Path(f) for f in files], vocab_size, threads=threads, progress=False)
        return time.perf_counter() - t, tok

    times = collections.defaultdict(list)
    for _ in range(repeats):
        t, tok = run_slmx()
        times["slmx"].append(t)
        t, hf_docs = run_hf("docs")
        times["hf_docs"].append(t)
        t, _ = run_hf("files")
        times["hf_files"].append(t)
    d = json.loads(hf_docs.to_str())
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in d["model"]["merges"]]
    same = list(tok._ranks) == merges and {t: i for i, t in enumerate(tok.tokens)} == d["model"]["vocab"]
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"corpus: {len(files)} stdlib .py files, {mb:.1f} MB; vocab {vocab_size}; {threads} threads "
          f"(RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS')}); median of {repeats}")
    print(f"  slmx train_bpe                      {med['slmx']:6.2f} s  "
          f"(last run: pre-tokenize+count {tok.train_stats['count_s']:.2f} s, merges {tok.train_stats['merge_s']:.2f} s)")
    print(f"  tokenizers BpeTrainer, whole files  {med['hf_docs']:6.2f} s  ({med['hf_docs'] / med['slmx']:.1f}x slmx)")
    print(f"  tokenizers BpeTrainer, train(files) {med['hf_files']:6.2f} s  (line by line; "
          f"{med['hf_files'] / med['slmx']:.1f}x slmx)")
    print(f"  merges and vocabulary identical to tokenizers (whole files): {same}")


if __name__ == "__main__":
    if "--bench" in sys.argv:
        threads = 2
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
        bench(threads=threads)
    else:
        sys.exit(pytest.main([__file__, "-q"]))
