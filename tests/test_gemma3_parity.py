"""Gemma 3 270M Q4_K_M end to end: slmx's greedy tokens equal llama.cpp's (fixture from llama.cpp).

For each prompt: identical for 32 tokens, or up to the first step where llama.cpp's own top-2
logit gap is below 0.1 (there the two engines' rounding may legitimately pick differently).
"""
import json
import os

import numpy as np
import pytest

import slmx

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "gemma3_llamacpp_handed.json")
CASES = json.load(open(FIXTURE))["prompts"]
N_CHECK = 32
MARGIN = 0.1


@pytest.fixture(scope="module")
def model(gemma3_path):
    return slmx.load(gemma3_path, n_ctx=2048)




@pytest.mark.parametrize("case", CASES, ids=[c["prompt"][:20] for c in CASES])
def test_greedy_matches_llamacpp(model, case):
    ids = model.tokenizer.encode(case["prompt"], add_bos=True, parse_special=True)
    assert ids == case["prompt_ids"]
    r = model.generate(case["prompt_ids"], max_new_tokens=N_CHECK, temperature=0)
    ref = case["greedy"][:N_CHECK]
    margins = case["top2_margin"][:N_CHECK]
    # Compare every step up to (not including) the first near-tie of llama.cpp's top-2 logits.
    n = next((i for i, m in enumerate(margins) if m < MARGIN), N_CHECK)
    got = r.token_ids[:n]
    assert got == ref[:n], f"first difference at step {next(i for i, (a, b) in enumerate(zip(got, ref)) if a != b)}"
    assert len(r.token_ids) >= n


@pytest.mark.parametrize("case", CASES, ids=[c["prompt"][:20] for c in CASES])
def test_teacher_forced_argmax_matches_llamacpp(model, case):
    """All N_CHECK steps, also past a near-tie: fed llama.cpp's greedy tokens in one batch, slmx's
    argmax at each step is llama.cpp's token wherever llama.cpp's top-2 gap exceeds 1.0 (beyond
    the spread llama.cpp's own batched and one-token runs show, see
    test_logits_agree_with_decode_path), and at 80% or more of the steps with a gap in (0.1, 1.0]."""
    p, ref = case["prompt_ids"], case["greedy"][:N_CHECK]
    margins = np.array(case["top2_margin"][:N_CHECK])
    lg = model.logits(p + ref[:-1])[len(p) - 1:]
    hit = lg.argmax(-1) == np.array(ref)
    assert hit[margins > 1.0].all(), np.flatnonzero(~hit & (margins > 1.0))
    mid = (margins > MARGIN) & (margins <= 1.0)
    assert hit[mid].mean() >= 0.8 if mid.any() else True, (hit[mid], margins[mid])


def _rms_rel(a, b):
    return float(np.sqrt(((a - b) ** 2).mean() / (b ** 2).mean()))


def _clear_argmax(a, b, gap=1.0):
    """Argmax of a and b agree wherever b's top-2 gap exceeds `gap` (per row)."""
    top2 = np.sort(b, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > gap
    return bool((a.argmax(-1) == b.argmax(-1))[clear].all()), int(clear.sum())


def test_logits_agree_with_decode_path(model):
    """Batched prefill logits agree with the one-token-at-a-time logits.

    The two paths differ by float rounding (~1e-7), which flips a few 8-bit activation roundings
    downstream, so logits differ within the 8-bit quantization noise (a few percent RMS) but
    never in a clear argmax. llama.cpp itself (tests/tools/llamacpp_prefill_vs_decode.py) moves
    these logits by up to 1.75 between its batched and one-token runs, RMS 3-5%, and flips an
    argmax whose gap is 0.51: "clear" is a top-2 gap above 1.0.
    """
    ids = CASES[1]["prompt_ids"] + CASES[1]["greedy"][:8]
    full = model.logits(ids)
    step = []
    model.cache.reset()
    for i, t in enumerate(ids):
        step.append(np.array(model.transformer.forward([t], i, model.cache)[0]))
    step = np.stack(step)
    assert full.shape == (len(ids), model.config.vocab_size)
    ok, n = _clear_argmax(full, step)
    assert ok and n >= len(ids) // 2
    assert _rms_rel(full, step) < 0.06


def test_past_sliding_window(model):
    """Past the 512-token window: prefill and decode agree at T > 512."""
    text = "The quick brown fox jumps over the lazy dog. " * 70
    ids = model.tokenizer.encode(text, add_bos=True)[:600]
    assert len(ids) == 600
    full = model.logits(ids)
    model.cache.reset()
    model.transformer.forward(ids[:590], 0, model.cache)
    step = []
    for i in range(590, 600):
        step.append(np.array(model.transformer.forward([ids[i]], i, model.cache)[0]))
    step = np.stack(step)
    ok, n = _clear_argmax(full[590:600], step)
    assert ok and n >= 5
    assert _rms_rel(full[590:600], step) < 0.06
    # The model continues the repeated text: the argmax at each position is the next token.
    assert (full[550:599].argmax(-1) == np.array(ids[551:600])).mean() > 0.9
