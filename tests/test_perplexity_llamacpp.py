"""llama.cpp's perplexity method: on Gemma 3 270M its figure matches llama.cpp's recorded one
(tests/fixtures/gemma3_llamacpp_perplexity.json, from tests/tools/llamacpp_perplexity.py) within 1%;
the chunking, BOS replacement and second-half scoring against a direct computation; bits per byte;
the CLI's `--method llama.cpp` and its last line."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import slmx
from slmx.eval import perplexity
from slmx.infer.sampling import log_softmax

sys.path.insert(0, os.path.dirname(__file__))
from hf_tiny import tiny_llama  # noqa: E402

FIX = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="module")
def ref():
    with open(os.path.join(FIX, "gemma3_llamacpp_perplexity.json")) as f:
        d = json.load(f)
    with open(os.path.join(FIX, d["text_file"]), encoding="utf-8") as f:
        d["text"] = f.read()
    return d


def test_tokens_match_llamacpp(gemma3_path, ref):
    from slmx.tokenizer import Tokenizer
    assert Tokenizer.from_gguf(gemma3_path).encode(ref["text"]) == ref["tokens"]


def test_gemma3_matches_llamacpp_within_1_percent(gemma3_path, ref):
    """The first two chunks of ctx 256 (254 scored tokens) of the recorded text."""
    ctx, n = ref["ctx"], 2
    m = slmx.load(gemma3_path, n_ctx=ctx, threads=2)
    r = perplexity(m, ref["tokens"][:n * ctx], ctx=ctx, method="llama.cpp")
    first = ctx // 2
    assert r.n_windows == n and r.n_tokens == n * (ctx - 1 - first)
    want = math.exp(sum(ref["chunk_nll"][:n]) / r.n_tokens)
    assert abs(r.ppl / want - 1) < 0.01, (r.ppl, want)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("ppl"))
    _, path = tiny_llama()
    return slmx.load(path, n_ctx=64, numerics="fp32", threads=1), path, d


def test_method_against_direct_computation(tiny):
    m, _, _ = tiny
    rng = np.random.default_rng(0)
    ids = rng.integers(3, m.config.vocab_size, 32 * 3 + 7).tolist()
    ctx, first, bos = 32, 16, m.tokenizer.bos_id
    r = perplexity(m, ids, ctx=ctx, method="llama.cpp")
    tot, n, targets = 0.0, 0, []
    for i in range(3):                       # 3 whole chunks; the 7-token tail is dropped
        chunk = ids[i * ctx:(i + 1) * ctx]
        if m.tokenizer.add_bos:
            chunk[0] = bos
        lg = m.logits(chunk)                 # one full forward per chunk
        for j in range(first, ctx - 1):
            tot -= log_softmax(lg[j])[chunk[j + 1]]
            targets.append(chunk[j + 1])
            n += 1
    assert r.n_tokens == n == 3 * 15 and r.n_windows == 3 and r.stride == ctx
    assert abs(r.nll_sum - tot) < 1e-6 * max(1.0, tot)
    nbytes = sum(len(m.tokenizer.token_to_piece(t, special=False)) for t in targets)
    assert r.n_scored_bytes == nbytes and abs(r.bits_per_byte - tot / math.log(2) / nbytes) < 1e-9
    with pytest.raises(ValueError, match="2 \\* ctx"):
        perplexity(m, ids[:63], ctx=32, method="llama.cpp")
    with pytest.raises(ValueError, match="method"):
        perplexity(m, ids, ctx=32, method="llama")
    s = perplexity(m, ids, ctx=32, stride=16)            # the sliding method reports bits per byte too
    assert s.n_scored_bytes > 0 and s.bits_per_byte > 0


def test_cli_llamacpp_method_last_line(tiny):
    _, path, d = tiny
    text = os.path.join(d, "t.txt")
    with open(text, "w") as f:
        f.write("the quick brown fox jumps over the lazy dog. " * 12)
    r = subprocess.run([sys.executable, "-m", "slmx.cli", "perplexity", "-m", path, "-f", text, "--ctx", "32",
                        "--method", "llama.cpp", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1].startswith("perplexity: ") and float(lines[-1].split()[-1]) > 1
    assert any(line.startswith("bits per byte: ") for line in lines) and "llama.cpp" in r.stdout
    r = subprocess.run([sys.executable, "-m", "slmx.cli", "perplexity", "-m", path, "-f", text, "--method", "x"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "method" in r.stderr


def test_zero_or_negative_ctx_stride_are_errors(tiny, capsys):
    """ctx / stride 0 or negative are errors naming them, not a silent default (None is the default)."""
    from slmx.cli import main
    m, path, d = tiny
    ids = list(range(3, 67))
    for kw, name in (({"stride": 0}, "stride"), ({"stride": -4}, "stride"), ({"ctx": 0}, "ctx"),
                     ({"ctx": -1}, "ctx"), ({"stride": True}, "stride"), ({"ctx": 8.5}, "ctx")):
        with pytest.raises(ValueError, match=f"perplexity: {name} must be a positive integer"):
            perplexity(m, ids, **kw)
    text = os.path.join(d, "z.txt")
    with open(text, "w") as f:
        f.write("the quick brown fox jumps over the lazy dog. " * 4)
    capsys.readouterr()
    for args, flag in ((["--stride", "0"], "--stride"), (["--stride", "-3"], "--stride"),
                       (["--ctx", "0"], "--ctx"), (["--ctx", "1"], "--ctx")):
        assert main(["perplexity", "-m", path, "-f", text, "--no-progress", "-t", "1", *args]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith(f"slmx: error: {flag} must be"), err


def test_no_text_is_an_error_naming_the_input(tiny, capsys):
    from slmx.cli import main
    _, path, d = tiny
    for args, msg in ((["-f", "/dev/null"], "perplexity: no text: /dev/null is empty"),
                      (["--data", "/dev/null"], "--data /dev/null: not a regular file or folder")):
        assert main(["perplexity", "-m", path, "--no-progress", "-t", "1", *args]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith("slmx: error: " + msg), err
