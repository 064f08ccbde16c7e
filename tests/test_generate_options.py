"""model.generate's sampling options and log-probabilities (tiny random Llama, fp32), and the
`slmx generate` flags of the same names: reproducible with a seed, logprobs that are the model's
log-softmax, bias and penalties that act, bad values as one-line errors before any output."""
import os
import subprocess
import sys

import numpy as np
import pytest

import slmx
from slmx.infer.sampling import log_softmax

sys.path.insert(0, os.path.dirname(__file__))
from hf_tiny import tiny_llama  # noqa: E402

PROMPT = [1, 17, 200, 33, 45, 101]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    _, path = tiny_llama()
    return slmx.load(path, n_ctx=64, numerics="fp32", threads=1), path


def test_seeded_generate_reproducible_with_every_option(tiny):
    m, _ = tiny
    kw = dict(max_new_tokens=16, temperature=0.9, top_k=50, top_p=0.9, min_p=0.01, typical_p=0.95,
              repeat_penalty=1.3, repeat_last_n=8, frequency_penalty=0.2, presence_penalty=0.1,
              logit_bias={5: 1.0, 7: -np.inf}, seed=11)
    a, b = m.generate(PROMPT, **kw), m.generate(PROMPT, **kw)
    assert a.token_ids == b.token_ids and len(a.token_ids) > 0
    assert 7 not in a.token_ids
    c = m.generate(PROMPT, **{**kw, "seed": 12})
    assert c.token_ids != a.token_ids


def test_logprobs_are_the_models_log_softmax(tiny):
    m, _ = tiny
    r = m.generate(PROMPT, max_new_tokens=10, temperature=1.5, top_k=0, top_p=1.0, repeat_penalty=1.5,
                   seed=3, logprobs=True, top_logprobs=3)
    assert len(r.logprobs) == len(r.token_ids) == 10
    lg = m.logits(PROMPT + r.token_ids)
    for j, t in enumerate(r.logprobs):
        ref = log_softmax(lg[len(PROMPT) - 1 + j])      # raw logits: before penalties and temperature
        assert t.token_id == r.token_ids[j] and abs(t.logprob - ref[t.token_id]) < 1e-4
        assert [i for i, _ in t.top] == np.argsort(-ref)[:3].tolist()
    g = m.generate(PROMPT, max_new_tokens=5, temperature=0, logprobs=True, top_logprobs=1)
    assert all(t.top[0][0] == t.token_id and t.top[0][1] == t.logprob for t in g.logprobs)
    assert m.generate(PROMPT, max_new_tokens=3, temperature=0).logprobs is None


def test_bias_and_penalty_act_on_greedy(tiny):
    m, _ = tiny
    g = m.generate(PROMPT, max_new_tokens=12, temperature=0)
    first = g.token_ids[0]
    banned = m.generate(PROMPT, max_new_tokens=12, temperature=0, logit_bias={first: -np.inf})
    assert banned.token_ids[0] != first and first not in banned.token_ids
    forced = m.generate(PROMPT, max_new_tokens=4, temperature=0, logit_bias={42: 100.0})
    assert forced.token_ids == [42] * 4
    # a huge presence penalty over the whole history: no token repeats (prompt included)
    p = m.generate(PROMPT, max_new_tokens=12, temperature=0, presence_penalty=1e4, repeat_last_n=-1)
    seen = PROMPT + p.token_ids
    assert len(set(seen)) == len(seen)


def run(*args):
    return subprocess.run([sys.executable, "-m", "slmx.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_flags(tiny):
    _, path = tiny
    args = ["generate", "-m", path, "-p", "w5 w9", "-n", "6", "--temperature", "0.9", "--seed", "4",
            "--min-p", "0.02", "--repeat-penalty", "1.2", "--presence-penalty", "0.3", "--logit-bias", "300=-inf",
            "--logit-bias", '{"301": 0.5}', "--typical-p", "0.9", "--logprobs", "--top-logprobs", "2"]
    r1, r2 = run(*args), run(*args)
    assert r1.returncode == 0, r1.stderr
    assert r1.stdout == r2.stdout
    assert sum(line.startswith("logprob ") for line in r1.stderr.splitlines()) >= 1
    r = run("generate", "-m", path, "-p", "w5 w9", "-n", "5", "--num-beams", "3", "--length-penalty", "0.8",
            "--early-stopping", "never")
    assert r.returncode == 0, r.stderr
    assert sum(line.startswith("beam ") for line in r.stderr.splitlines()) == 3


@pytest.mark.parametrize("args, word", [
    (["--min-p", "2"], "min_p"), (["--typical-p", "0"], "typical_p"), (["--repeat-penalty", "0"], "repeat_penalty"),
    (["--repeat-last-n", "-5"], "repeat_last_n"), (["--logit-bias", "abc"], "logit-bias"),
    (["--logit-bias", "x=1"], "token id"), (["--logit-bias", "5=inf"], "logit_bias"),
    (["--num-beams", "0"], "num_beams"), (["--early-stopping", "maybe"], "early-stopping"),
    (["--top-logprobs", "-1"], "top_logprobs"), (["--frequency-penalty", "nan"], "frequency_penalty"),
    (["--frequency-penalty", "1e40"], "frequency_penalty must be <= 10000"),
    (["--presence-penalty=-1e40"], "presence_penalty must be >= -10000"),
    (["--rope-scaling", "yarn", "--rope-scale", "0"], "--rope-scale must be a positive"),
    (["--rope-scaling", "yarn", "--rope-scale", "-2"], "--rope-scale must be a positive"),
    (["--rope-scaling", "yarn", "--rope-scale", "1e30"], "--rope-scale must be at most 1024"),
    (["--rope-scaling", "yarn", "--rope-scale", "4", "--rope-original-ctx", "0"], "--rope-original-ctx must be"),
    (["--rope-scaling", "yarn", "--rope-scale", "4", "--yarn-beta-fast", "-1"], "--yarn-beta-fast must be"),
])
def test_cli_bad_flags_one_line_before_output(args, word):
    r = run("generate", "-m", "/nonexistent.gguf", "-p", "hi", *args)
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and word in r.stderr, r.stderr


def test_top_p_zero_is_the_most_likely_token(tiny):
    """top_p 0 (accepted by the server, as OpenAI reads it) keeps only the most likely token, in the
    API and the CLI alike."""
    m, path = tiny
    greedy = m.generate(PROMPT, max_new_tokens=8, temperature=0).token_ids
    assert m.generate(PROMPT, max_new_tokens=8, temperature=1.5, top_p=0.0, seed=1).token_ids == greedy
    r = run("generate", "-m", path, "-p", "hello", "-n", "4", "--temperature", "1", "--top-p", "0", "-t", "1")
    g = run("generate", "-m", path, "-p", "hello", "-n", "4", "--temperature", "0", "-t", "1")
    assert r.returncode == 0 and g.returncode == 0, r.stderr
    assert r.stdout == g.stdout


def test_prompt_and_count_types(tiny):
    """prompt is a str or a sequence of int token ids; anything else is a TypeError saying so."""
    m, _ = tiny
    for bad, word in ((123, "got int"), (b"hi", "got bytes"), ([1.5, 2.0], "token ids must be integers, got 1.5"),
                      ([1, True], "got True"), (np.array([1.0, 2.0]), "dtype float64")):
        with pytest.raises(TypeError, match=word):
            m.generate(bad, max_new_tokens=2)
        with pytest.raises(TypeError, match=word):
            m.logits(bad)
    assert m.generate(np.array(PROMPT, np.int64), max_new_tokens=2, temperature=0).token_ids == \
        m.generate(tuple(PROMPT), max_new_tokens=2, temperature=0).token_ids
    for kw in ({}, {"num_beams": 2}):
        with pytest.raises(ValueError, match="max_new_tokens must be an integer .*got '3'"):
            m.generate(PROMPT, max_new_tokens="3", **kw)


def test_kv_type_block_size_named_and_beam_prompt_rate(tiny):
    m, path = tiny                            # head_dim 16
    for t in ("q4_0", "q8_0"):
        with pytest.raises(ValueError, match=f"kv_cache_type {t}: head_dim 16 is not a multiple of its block size 32"):
            slmx.load(path, n_ctx=16, threads=1, kv_cache_type=t)
    r = m.generate(PROMPT, max_new_tokens=3, num_beams=2)
    assert r.prompt_tokens_per_s > 0 and r.prompt_seconds > 0 and r.decode_tokens_per_s > 0


def test_kv_cache_type_override_is_per_call(tmp_path):
    """generate(kv_cache_type=...) applies to that call; the next call without it uses the
    load-time type again (its tokens equal a fresh model's)."""
    from tiny_model import write_tiny_model
    path = write_tiny_model(str(tmp_path / "m.gguf"), arch="gemma3", qtype="q8_0", head_dim=32, embd_std=1.0)
    m = slmx.load(path, n_ctx=64, threads=1)
    want = m.generate([1, 5, 9, 3], max_new_tokens=12, temperature=0).token_ids
    q4 = m.generate([1, 5, 9, 3], max_new_tokens=12, temperature=0, kv_cache_type="q4_0")
    assert m.cache.kv_cache_type == "q4_0"
    again = m.generate([1, 5, 9, 3], max_new_tokens=12, temperature=0)
    assert m.cache.kv_cache_type == "f32"
    assert again.token_ids == want
    assert len(q4.token_ids) == 12


def test_cli_yarn_without_original_ctx_uses_the_models(tiny):
    """--rope-original-ctx defaults to the model's training context (as --help says)."""
    _, path = tiny
    for kind in ("yarn", "dynamic"):
        r = run("generate", "-m", path, "-p", "hello", "-n", "2", "--temperature", "0", "-t", "1",
                "--rope-scaling", kind, "--rope-scale", "2")
        assert r.returncode == 0, r.stderr
