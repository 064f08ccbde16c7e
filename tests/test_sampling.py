"""Sampler: greedy, seeded reproducibility, top-k/top-p truncation, and frequencies by chi-square."""
import numpy as np
import pytest

from slmx.infer import Sampler


def test_greedy_is_argmax():
    lg = np.array([0.1, 3.0, -1.0, 2.9], np.float32)
    assert Sampler(temperature=0)(lg) == 1
    assert Sampler(temperature=1.0, top_k=1)(lg) == 1


def test_seeded_reproducible():
    lg = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    a = [Sampler(temperature=1.0, top_k=0, top_p=1.0, seed=7)(lg) for _ in range(1)]
    s1, s2 = Sampler(1.0, 0, 1.0, seed=7), Sampler(1.0, 0, 1.0, seed=7)
    assert [s1(lg) for _ in range(50)] == [s2(lg) for _ in range(50)]
    assert a[0] == Sampler(1.0, 0, 1.0, seed=7)(lg)


def _chi2_ok(counts, probs, n):
    from math import fsum
    exp = probs * n
    stat = fsum(((counts - exp) ** 2 / exp).tolist())
    dof = len(probs) - 1
    # Wilson-Hilferty 99.9% quantile of chi-square(dof)
    z = 3.09
    crit = dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3
    return stat < crit, stat, crit


def test_frequencies_match_softmax_with_temperature_topk_topp():
    lg = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0, -6.0], np.float32)
    T, k, p = 0.7, 5, 0.9
    z = np.exp((lg - lg.max()) / T)
    probs = z / z.sum()
    order = np.argsort(-probs)
    probs_k = np.zeros_like(probs)
    probs_k[order[:k]] = probs[order[:k]]
    probs_k /= probs_k.sum()
    cum = np.cumsum(probs_k[order])
    keep = order[: int(np.searchsorted(cum, p) + 1)]
    target = np.zeros_like(probs)
    target[keep] = probs_k[keep]
    target /= target.sum()
    s = Sampler(temperature=T, top_k=k, top_p=p, seed=123)
    n = 20000
    draws = np.array([s(lg) for _ in range(n)])
    counts = np.bincount(draws, minlength=len(lg)).astype(float)
    assert counts[target == 0].sum() == 0
    ok, stat, crit = _chi2_ok(counts[target > 0], target[target > 0], n)
    assert ok, (stat, crit)


def test_degenerate_inputs_never_nan_or_empty():
    lg = np.full(10, -np.inf, np.float32)
    lg[3] = 0.0
    for kw in [dict(temperature=1e-6), dict(temperature=5.0, top_k=1, top_p=0.1), dict(top_p=1e-9)]:
        assert Sampler(seed=0, **kw)(lg) == 3
    with pytest.raises(ValueError):
        Sampler()(np.full(4, -np.inf, np.float32))
    with pytest.raises(ValueError):
        Sampler(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        Sampler(top_p=-0.1)
    assert Sampler(seed=0, temperature=5.0, top_p=0)(np.arange(10, dtype=np.float32)) == 9   # the top token
