"""Beam search against transformers' `generate(num_beams=..., length_penalty=..., early_stopping=...)`
on a tiny random Llama (saved by transformers, converted to an F32 GGUF by slmx, fp32 numerics): the
same sequences in the same order with the same scores; scores equal the summed log-probabilities of
the tokens (recomputed from the logits) over length ** length_penalty; one beam is greedy."""
import os
import sys

import numpy as np
import pytest
import torch
import transformers

import slmx
from slmx.infer import KVCache, Sampler, beam_search, generate
from slmx.infer.sampling import log_softmax

sys.path.insert(0, os.path.dirname(__file__))
from hf_tiny import tiny_llama  # noqa: E402

PROMPT = [1, 17, 200, 33, 45, 101]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    hf, path = tiny_llama()
    m = slmx.load(path, n_ctx=64, numerics="fp32", threads=1)
    with torch.no_grad():   # EOS: the 5th token of the best beam without one, so beams end early
        g = hf.generate(torch.tensor([PROMPT]), attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
                        max_new_tokens=6, do_sample=False, num_beams=3, eos_token_id=None, pad_token_id=0)
    eos = int(g[0, len(PROMPT) + 4])
    return hf, m, eos


STOPPED = []


def _new_cache(m):
    return lambda n: KVCache(m.config, n)


@pytest.mark.parametrize("num_beams, length_penalty, early_stopping", [
    (3, 1.0, False), (4, 0.5, True), (2, -1.0, "never"), (4, 2.0, "never"), (5, 0.0, False),
])
def test_matches_transformers(tiny, num_beams, length_penalty, early_stopping):
    hf, m, eos = tiny
    n_new = 12
    with torch.no_grad():
        out = hf.generate(torch.tensor([PROMPT]), attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
                          max_new_tokens=n_new, do_sample=False, num_beams=num_beams,
                          num_return_sequences=num_beams, length_penalty=length_penalty,
                          early_stopping=early_stopping, eos_token_id=eos, pad_token_id=0,
                          output_scores=True, return_dict_in_generate=True)
    hf_seqs = out.sequences[:, len(PROMPT):].tolist()
    hf_scores = out.sequences_scores.numpy()
    beams = beam_search(m.transformer, _new_cache(m), PROMPT, num_beams=num_beams, max_new_tokens=n_new,
                        length_penalty=length_penalty, early_stopping=early_stopping, eos_ids=[eos])
    assert len(beams) == num_beams
    STOPPED.append(sum(b.finish_reason == "stop" for b in beams))
    for b, hs, hsc in zip(beams, hf_seqs, hf_scores):
        toks = b.token_ids + ([eos] if b.finish_reason == "stop" else [])
        # transformers fills after the end with `pad_token_id or eos` (pad 0 is falsy: the EOS)
        assert hs[:len(toks)] == toks and all(t == eos for t in hs[len(toks):]), (hs, toks)
        assert abs(b.score - hsc) < 1e-4 * max(1.0, abs(hsc)), (b.score, hsc)
    assert [b.score for b in beams] == sorted((b.score for b in beams), reverse=True)


def test_eos_was_exercised():
    assert len(STOPPED) == 5 and sum(STOPPED) >= 3, STOPPED


def test_scores_are_summed_logprobs_with_length_penalty(tiny):
    _, m, eos = tiny
    for lp in (1.0, 0.7):
        beams = beam_search(m.transformer, _new_cache(m), PROMPT, num_beams=3, max_new_tokens=10,
                            length_penalty=lp, eos_ids=[eos], logprobs=True, top_logprobs=2)
        for b in beams:
            toks = b.token_ids + ([eos] if b.finish_reason == "stop" else [])
            lg = m.logits(PROMPT + toks)
            tot = sum(log_softmax(lg[len(PROMPT) - 1 + j])[t] for j, t in enumerate(toks))
            assert abs(b.sum_logprob - tot) < 1e-4
            assert abs(b.score - tot / len(toks) ** lp) < 1e-4
            assert b.n_scored == len(toks)
            assert [t.token_id for t in b.logprobs] == b.token_ids
            got = sum(t.logprob for t in b.logprobs)
            eos_lp = tot - got
            assert eos_lp <= 1e-4 and (b.finish_reason == "stop" or abs(eos_lp) < 1e-4)
            assert all(len(t.top) == 2 and t.top[0][1] >= t.top[1][1] for t in b.logprobs)


def test_one_beam_is_greedy(tiny):
    _, m, eos = tiny
    b = beam_search(m.transformer, _new_cache(m), PROMPT, num_beams=1, max_new_tokens=15, eos_ids=[eos])
    g = generate(m.transformer, m.tokenizer, KVCache(m.config, 64), PROMPT, max_new_tokens=15,
                 sampler=Sampler(temperature=0), stop_ids=[eos])
    assert len(b) == 1 and b[0].token_ids == g.token_ids


def test_api_num_beams_and_bad_options(tiny):
    _, m, eos = tiny
    r = m.generate(PROMPT, max_new_tokens=8, num_beams=3, length_penalty=1.0, logprobs=True)
    assert len(r.beams) == 3 and r.token_ids == r.beams[0].token_ids and len(r.logprobs) == len(r.token_ids)
    for kw, word in [(dict(num_beams=0), "num_beams"), (dict(num_beams=2.5), "num_beams"),
                     (dict(num_beams=2, length_penalty=float("nan")), "length_penalty"),
                     (dict(num_beams=2, early_stopping="sometimes"), "early_stopping"),
                     (dict(num_beams=400), "num_beams"), (dict(top_logprobs=-1), "top_logprobs")]:
        with pytest.raises(ValueError, match=word):
            m.generate(PROMPT, max_new_tokens=4, **kw)


def test_batched_and_one_at_a_time_forwards_agree(tiny):
    _, m, eos = tiny

    class OneAtATime:                      # the model without forward_batch
        def forward(self, *a, **k):
            return m.transformer.forward(*a, **k)

    kw = dict(num_beams=4, max_new_tokens=10, length_penalty=0.8, eos_ids=[eos])
    a = beam_search(m.transformer, _new_cache(m), PROMPT, **kw)
    b = beam_search(OneAtATime(), _new_cache(m), PROMPT, **kw)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    np.testing.assert_allclose([x.score for x in a], [x.score for x in b], rtol=1e-5)


def test_gemma3_beams_with_sliding_window_caches(gemma3_path):
    """Gemma 3's sliding-window layers keep ring-buffer caches: beam forks copy them."""
    m = slmx.load(gemma3_path, n_ctx=2048, threads=2)     # > window + chunk: ring layers
    assert any(m.cache.ring)
    r = m.generate("The capital of France is", max_new_tokens=4, num_beams=2, logprobs=True, top_logprobs=2)
    assert len(r.beams) == 2 and r.beams[0].score >= r.beams[1].score and len(r.token_ids) >= 1
    for b in r.beams:
        assert len(b.logprobs) == len(b.token_ids)
        if b.finish_reason == "length":
            assert abs(sum(t.logprob for t in b.logprobs) - b.sum_logprob) < 1e-6
    g = m.generate("The capital of France is", max_new_tokens=4, temperature=0)
    one = beam_search(m.transformer, lambda n: m.make_cache(m.cache.kv_cache_type, n), g.prompt_ids,
                      num_beams=1, max_new_tokens=4, eos_ids=m.tokenizer.eos_ids)
    assert one[0].token_ids == g.token_ids
