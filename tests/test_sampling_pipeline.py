"""The sampling pipeline: each filter combination's distribution against a plain reference, and the
sampler's draws against it by a chi-square test (scipy.stats.chisquare, fixed seeds); edge cases;
penalties against a hand computation; log-probabilities against a float64 log-softmax."""
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from slmx.infer import Sampler
from slmx.infer.sampling import log_softmax, token_logprobs, top_k_indices

LOGITS = np.array([2.0, 1.6, 1.6, 1.0, 0.5, 0.2, 0.0, -0.5, -1.0, -2.0, -4.0, -7.0], np.float32)
PREV = [3, 3, 7, 0, 3, 9, 11, 0]


def reference(logits, prev=(), temperature=0.8, top_k=40, top_p=0.95, min_p=0.0, typical_p=1.0,
              repeat_penalty=1.0, repeat_last_n=64, frequency_penalty=0.0, presence_penalty=0.0,
              logit_bias=None):
    """The documented pipeline written plainly: float64, full sorts, Python loops. -> probs (V,)."""
    x = np.asarray(logits, np.float64).copy()
    window = list(prev)[-repeat_last_n:] if repeat_last_n > 0 else (list(prev) if repeat_last_n == -1 else [])
    for t, c in Counter(window).items():
        x[t] = x[t] / repeat_penalty if x[t] > 0 else x[t] * repeat_penalty
        x[t] -= c * frequency_penalty + presence_penalty
    for t, b in (logit_bias or {}).items():
        x[int(t)] += b
    out = np.zeros(x.size)
    if temperature == 0 or top_k == 1:
        out[int(np.argmax(x))] = 1.0
        return out
    cand = [i for i in sorted(range(x.size), key=lambda i: (-x[i], i)) if np.isfinite(x[i])]
    if top_k > 0:
        cand = cand[:top_k]

    def probs(c):
        z = np.array([x[i] / temperature for i in c])
        e = np.exp(z - z.max())
        return e / e.sum()

    if top_p < 1:
        p, cum = probs(cand), 0.0
        for j, pj in enumerate(p):
            cum += pj
            if cum >= top_p:
                cand = cand[:j + 1]
                break
    if min_p > 0:
        p = probs(cand)
        cand = [i for i, pj in zip(cand, p) if pj >= min_p * p.max()]
    if typical_p < 1:
        p = probs(cand)
        h = -sum(pj * np.log(pj) for pj in p if pj > 0)
        order = sorted(range(len(cand)), key=lambda j: (abs(-np.log(p[j]) - h), j))
        cum, keep = 0.0, []
        for j in order:
            keep.append(cand[j])
            cum += p[j]
            if cum > typical_p:
                break
        cand = keep
    p = probs(cand)
    out[cand] = p
    return out


COMBOS = [
    dict(temperature=1.0, top_k=0, top_p=1.0),                      # the whole vocabulary
    dict(temperature=0.7, top_k=5, top_p=1.0),
    dict(temperature=1.3, top_k=0, top_p=0.8),
    dict(temperature=0.9, top_k=6, top_p=0.85),
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.1),
    dict(temperature=1.0, top_k=8, top_p=1.0, min_p=0.05),
    dict(temperature=1.0, top_k=0, top_p=1.0, typical_p=0.7),
    dict(temperature=1.2, top_k=10, top_p=1.0, typical_p=0.8),
    dict(temperature=1.0, top_k=0, top_p=1.0, repeat_penalty=1.3, repeat_last_n=6, frequency_penalty=0.4,
         presence_penalty=0.3, logit_bias={2: -np.inf, "5": 1.5}),
    dict(temperature=0.8, top_k=9, top_p=0.95, min_p=0.02, typical_p=0.9, repeat_penalty=1.2,
         repeat_last_n=-1, frequency_penalty=0.1, presence_penalty=0.2, logit_bias={1: 0.7}),
]


def _chi2(counts, probs, n):
    """Chi-square goodness of fit over the support, bins with expected count < 5 merged."""
    exp = probs * n
    order = np.argsort(exp)
    obs_b, exp_b, acc_o, acc_e = [], [], 0.0, 0.0
    for i in order:
        acc_o += counts[i]
        acc_e += exp[i]
        if acc_e >= 5:
            obs_b.append(acc_o)
            exp_b.append(acc_e)
            acc_o = acc_e = 0.0
    if acc_e and exp_b:
        obs_b[-1] += acc_o
        exp_b[-1] += acc_e
    if len(exp_b) < 2:
        return 1.0
    return stats.chisquare(obs_b, exp_b).pvalue


@pytest.mark.parametrize("kw", COMBOS, ids=[",".join(f"{k}={v}" for k, v in c.items()) for c in COMBOS])
def test_distribution_and_draw_frequencies(kw):
    target = reference(LOGITS, PREV, **kw)
    s = Sampler(seed=1234, **kw)
    ids, p = s.distribution(LOGITS, PREV)
    got = np.zeros(LOGITS.size)
    got[ids] = p
    np.testing.assert_allclose(got, target, rtol=1e-5, atol=1e-9)
    assert len(set(ids.tolist())) == ids.size
    n = 12000
    draws = np.array([s(LOGITS, PREV) for _ in range(n)])
    counts = np.bincount(draws, minlength=LOGITS.size).astype(float)
    assert counts[target == 0].sum() == 0, (counts, target)
    sup = target > 0
    pval = _chi2(counts[sup], target[sup], n)
    assert pval > 1e-3, (pval, counts, target * n)


def test_large_vocab_paths_match_reference():
    """V = 50000: the subsampled top-k threshold, the dense float32 buffers and the partial sorts
    give the reference distribution."""
    rng = np.random.default_rng(5)
    lg = (rng.normal(size=50000) * 2.5).astype(np.float32)
    prev = rng.integers(0, 50000, 100).tolist()
    for kw in [dict(temperature=0.8, top_k=40, top_p=0.95), dict(temperature=1.0, top_k=0, top_p=0.9),
               dict(temperature=0.7, top_k=0, top_p=1.0, min_p=0.02),
               dict(temperature=1.0, top_k=0, top_p=1.0, typical_p=0.5),
               dict(temperature=1.0, top_k=300, top_p=0.97, min_p=0.001, typical_p=0.95, repeat_penalty=1.1,
                    frequency_penalty=0.2, presence_penalty=0.1)]:
        want = reference(lg, prev, **kw)
        ids, p = Sampler(seed=0, **kw).distribution(lg, prev)
        got = np.zeros(lg.size)
        got[ids] = p
        assert set(np.flatnonzero(want).tolist()) == set(ids.tolist()), kw
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-10)
    x = (rng.normal(size=262144)).astype(np.float32)
    for k in (1, 40, 1000):
        np.testing.assert_array_equal(np.sort(top_k_indices(x, k)), np.sort(np.argsort(-x)[:k]))


def test_dense_block_draw_frequencies():
    """No filters at a large vocabulary: the draw by block sums, with mass at block edges."""
    V = 5000
    lg = np.full(V, -40.0, np.float32)
    hot = [0, 511, 512, 1023, 3333, 4999]
    lg[hot] = [1.0, 0.5, 0.0, 1.5, -0.5, 0.8]
    s = Sampler(temperature=1.0, top_k=0, top_p=1.0, seed=3)
    target = reference(lg, temperature=1.0, top_k=0, top_p=1.0)
    n = 8000
    draws = np.array([s(lg) for _ in range(n)])
    assert set(np.unique(draws).tolist()) <= set(hot) | set(np.flatnonzero(target > 1e-6).tolist())
    counts = np.array([(draws == h).sum() for h in hot], float)
    probs = target[hot] / target[hot].sum()
    assert stats.chisquare(counts, probs * counts.sum()).pvalue > 1e-3


def test_temperature_zero_is_argmax_of_processed_logits():
    rng = np.random.default_rng(2)
    for _ in range(20):
        lg = rng.normal(size=300).astype(np.float32)
        assert Sampler(temperature=0)(lg) == int(np.argmax(lg))
        assert Sampler(temperature=0.9, top_k=1, top_p=0.3)(lg) == int(np.argmax(lg))
    lg = np.array([3.0, 2.9, -1.0, 0.5], np.float32)
    # token 0 seen twice: 3.0 / 1.5 - 2 * 0.3 - 0.2 = 1.2 < 2.9 -> argmax moves to token 1
    s = Sampler(temperature=0, repeat_penalty=1.5, frequency_penalty=0.3, presence_penalty=0.2)
    assert s(lg, [0, 0]) == 1
    assert Sampler(temperature=0, logit_bias={3: 10})(lg) == 3


def test_penalties_hand_computed():
    lg = np.array([2.0, -1.0, 0.5, -3.0, 4.0, 0.0], np.float32)
    prev = [5, 0, 1, 1, 3, 0, 1]          # window of the last 5: 1, 3, 0, 1 + the 1 before -> [1, 1, 3, 0, 1]
    s = Sampler(temperature=1.0, repeat_penalty=2.0, repeat_last_n=5, frequency_penalty=0.25,
                presence_penalty=0.5, logit_bias={4: -1.0, 2: 0.125})
    want = np.array([2.0 / 2 - 0.25 - 0.5,        # token 0: once, positive -> divided
                     -1.0 * 2 - 3 * 0.25 - 0.5,   # token 1: three times, negative -> multiplied
                     0.5 + 0.125,                 # token 2: not in the window; bias
                     -3.0 * 2 - 0.25 - 0.5,       # token 3: once
                     4.0 - 1.0,                   # token 4: bias only
                     0.0], np.float32)            # token 5: outside the window (only in prev[0])
    before = lg.copy()
    np.testing.assert_allclose(s.process(lg, prev), want, rtol=1e-6)
    np.testing.assert_array_equal(lg, before)    # the input is not modified
    np.testing.assert_allclose(Sampler(repeat_penalty=2.0, repeat_last_n=0).process(lg, prev), lg)
    allw = Sampler(repeat_penalty=2.0, repeat_last_n=-1).process(lg, prev)
    assert allw[5] == 0.0 and allw[0] == 1.0 and allw[2] == 0.5


def test_seeded_reproducible_and_seed_dependent():
    rng = np.random.default_rng(0)
    lg = rng.normal(size=5000).astype(np.float32)
    for kw in [dict(top_k=0, top_p=1.0), dict(top_k=50, top_p=0.9), dict(top_k=0, min_p=0.01)]:
        a = Sampler(temperature=1.0, seed=7, **kw)
        b = Sampler(temperature=1.0, seed=7, **kw)
        c = Sampler(temperature=1.0, seed=8, **kw)
        sa, sb, sc = ([s(lg) for _ in range(40)] for s in (a, b, c))
        assert sa == sb and sa != sc


@pytest.mark.parametrize("kw", [
    dict(temperature=1e-8), dict(temperature=1e-8, top_k=0, top_p=1.0), dict(temperature=1e-300, top_k=0),
    dict(temperature=5.0, top_k=1, top_p=0.1), dict(top_p=1e-9), dict(temperature=1.0, top_k=0, min_p=1.0),
    dict(temperature=1.0, top_k=0, typical_p=1e-6), dict(temperature=1.0, top_k=3, typical_p=0.01),
    dict(temperature=3.0, top_k=0, top_p=0.5, min_p=0.9, typical_p=0.1),
])
def test_one_finite_logit_always_chosen(kw):
    lg = np.full(10, -np.inf, np.float32)
    lg[3] = -2.0
    s = Sampler(seed=0, **kw)
    assert all(s(lg) == 3 for _ in range(20))
    ids, p = s.distribution(lg)
    assert ids.tolist() == [3] and p.tolist() == [1.0]


def test_extreme_temperatures_no_nan():
    lg = np.array([1.0, 1.0, 0.5, -np.inf, -3.0], np.float32)
    for kw in [dict(top_k=0, top_p=1.0), dict(top_k=4, top_p=1.0)]:
        ids, p = Sampler(temperature=1e-8, seed=0, **kw).distribution(lg)   # the two tied maxima
        assert sorted(ids[p > 0].tolist()) == [0, 1] and np.allclose(p[p > 0], 0.5)
        ids, p = Sampler(temperature=1e30, seed=0, **kw).distribution(lg)   # uniform, -inf excluded
        assert 3 not in ids.tolist() and np.allclose(p, 0.25) and not np.isnan(p).any()
        for t in (1e-300, 1e300):
            s = Sampler(temperature=t, seed=0, **kw)
            assert all(s(lg) != 3 for _ in range(50))


def test_bad_logits_are_value_errors():
    for s in (Sampler(seed=0), Sampler(temperature=0), Sampler(temperature=1.0, top_k=0, top_p=1.0)):
        with pytest.raises(ValueError, match="NaN"):
            s(np.array([0.0, np.nan, 1.0], np.float32))
        with pytest.raises(ValueError, match="inf"):
            s(np.array([0.0, np.inf, 1.0], np.float32))
        with pytest.raises(ValueError, match="-inf"):
            s(np.full(4, -np.inf, np.float32))
        with pytest.raises(ValueError):
            s(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="banned"):
        Sampler(logit_bias={0: -np.inf, 1: -np.inf})(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="logit_bias"):
        Sampler(logit_bias={7: 1.0})(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="previous token"):
        Sampler(repeat_penalty=1.1)(np.zeros(4, np.float32), [9])


@pytest.mark.parametrize("kw, word", [
    (dict(temperature=-1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_k=2.5), "top_k"),
    (dict(top_p=-0.5), "top_p"), (dict(top_p=1.5), "top_p"), (dict(min_p=-0.1), "min_p"), (dict(min_p=2), "min_p"),
    (dict(typical_p=0), "typical_p"), (dict(repeat_penalty=0), "repeat_penalty"),
    (dict(repeat_penalty=float("inf")), "repeat_penalty"), (dict(repeat_last_n=-2), "repeat_last_n"),
    (dict(frequency_penalty=float("nan")), "frequency_penalty"), (dict(presence_penalty="x"), "presence_penalty"),
    (dict(logit_bias=[1, 2]), "logit_bias"), (dict(logit_bias={"a": 1}), "logit_bias"),
    (dict(logit_bias={-1: 1}), "logit_bias"), (dict(logit_bias={1: float("inf")}), "logit_bias"),
    (dict(logit_bias={1: float("nan")}), "logit_bias"), (dict(logit_bias={1: 1, "1": 2}), "logit_bias"),
    (dict(logit_bias={1: 1e300}), "logit_bias"),
    (dict(seed=-3), "seed"), (dict(seed=1.5), "seed"),
])
def test_bad_options_name_the_option(kw, word):
    with pytest.raises(ValueError, match=word):
        Sampler(**kw)


def test_token_logprobs_match_float64_log_softmax():
    rng = np.random.default_rng(9)
    lg = (rng.normal(size=262144) * 3).astype(np.float32)
    ref = log_softmax(lg)
    want = np.log(np.exp(lg.astype(np.float64) - lg.max()) / np.exp(lg.astype(np.float64) - lg.max()).sum())
    np.testing.assert_allclose(ref, want, atol=1e-9)
    tl = token_logprobs(lg, 1234, top_n=5)
    assert tl.token_id == 1234 and abs(tl.logprob - ref[1234]) < 1e-5
    top_ids = np.argsort(-ref)[:5]
    assert [t for t, _ in tl.top] == top_ids.tolist()
    np.testing.assert_allclose([v for _, v in tl.top], ref[top_ids], atol=1e-5)
    assert token_logprobs(lg, 0).top == []
