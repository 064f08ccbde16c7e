"""Speculative decoding: the acceptance rule leaves the target's distribution unchanged (chi-square
tests, on synthetic p/q and end to end on a pair of tiny random models); greedy speculative
output is token for token the target's own greedy output (random tiny models with draft models,
n-gram lookup and multi-token-prediction heads; Gemma 3 270M); drafters and argument checks."""
import numpy as np
import pytest
from scipy import stats

from slmx.infer import KVCache, Sampler, generate
from slmx.infer import speculative as S
from slmx.train.model import TrainableLM, make_config

ALPHA = 1e-3      # each chi-square test fails by chance with probability 1e-3 (fixed seeds: never)


def chi2_p(counts, probs):
    """p-value of observed counts against probabilities (cells with tiny expectation pooled)."""
    counts = np.asarray(counts, np.float64)
    exp = np.asarray(probs, np.float64) * counts.sum()
    big = exp >= 5
    obs = np.append(counts[big], counts[~big].sum())
    ex = np.append(exp[big], exp[~big].sum())
    if ex[-1] == 0:
        assert obs[-1] == 0, "counts where the probability is 0"
        obs, ex = obs[:-1], ex[:-1]
    if obs.size < 2:
        return 1.0 if obs.sum() == ex.sum() else 0.0
    return stats.chisquare(obs, ex).pvalue


def test_acceptance_rule_keeps_the_distribution():
    """position j's token (when the round reaches j) is distributed as p_j, for sampled drafts
    (q) and for deterministic ones (q = one-hot), including drafts the target never emits"""
    rng = np.random.default_rng(0)
    V, k, N = 6, 3, 8000
    p = rng.dirichlet(np.ones(V) * 0.7, k + 1)
    p[1, 2] = 0.0                                  # a token the target cannot emit at position 1
    p[1] /= p[1].sum()
    q = rng.dirichlet(np.ones(V) * 0.7, k)
    for mode in ("sampled", "deterministic"):
        counts = np.zeros((k + 1, V))
        n_acc_hist = np.zeros(k + 1)
        # drafts drawn from q (inverse CDF, vectorised)
        draws = np.stack([np.searchsorted(np.cumsum(q[i]), rng.random(N) * q[i].sum()) for i in range(k)], 1)
        for r in range(N):
            if mode == "sampled":
                d = [int(x) for x in np.minimum(draws[r], V - 1)]
                n, tok = S.accept_draft(p, d, q, rng)
            else:
                d = [int(np.argmax(p[i])) for i in range(k)]   # fixed proposals
                n, tok = S.accept_draft(p, d, None, rng)
            out = d[:n] + [tok]
            for j, t in enumerate(out):
                counts[j, t] += 1
            n_acc_hist[n] += 1
        tested = [j for j in range(k + 1) if counts[j].sum() >= 400]
        assert tested[:2] == [0, 1], (mode, counts.sum(1))
        for j in tested:
            pv = chi2_p(counts[j], p[j])
            assert pv > ALPHA, (mode, j, pv, counts[j] / counts[j].sum(), p[j])
        assert counts[1, 2] == 0
        if mode == "sampled":   # acceptance of d_1: E[min(1, p/q)] = 1 - TV(p_0, q_0)
            acc = 1 - 0.5 * np.abs(p[0] - q[0]).sum()
            assert abs(1 - n_acc_hist[0] / N - acc) < 4 * np.sqrt(acc * (1 - acc) / N)


def test_the_chi_square_check_has_power():
    """the same check rejects a wrong rule (accepting every draft)"""
    rng = np.random.default_rng(1)
    V = 6
    p = rng.dirichlet(np.ones(V), 2)
    q = rng.dirichlet(np.ones(V), 1)
    counts = np.zeros(V)
    for _ in range(5000):
        counts[int(rng.choice(V, p=q[0]))] += 1         # "always accept" outputs q
    assert chi2_p(counts, p[0]) < 1e-6


def test_acceptance_edge_cases():
    rng = np.random.default_rng(2)
    p = np.array([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    assert S.accept_draft(p, [1], None, rng)[0] == 1           # p(d) = 1: always accepted
    n, t = S.accept_draft(p, [0], None, rng)                   # p(d) = 0: rejected, the residual is p
    assert (n, t) == (0, 1)
    n, t = S.accept_draft(p[1:], [], None, rng)                # no drafts: one draw from p
    assert n == 0 and t in (0, 1, 2)
    q = np.array([[0.0, 1.0, 0.0]])
    assert S.accept_draft(p, [1], q, rng)[0] == 1              # p == q: always accepted
    assert S.accept_greedy(np.array([[0, 5, 1], [9, 0, 0], [0, 0, 3]]), [1, 0]) == (2, 2)
    assert S.accept_greedy(np.array([[0, 5, 1], [9, 0, 0], [0, 0, 3]]), [2, 0]) == (0, 1)
    with pytest.raises(ValueError):
        S.accept_draft(p, [0, 1], None, rng)
    with pytest.raises(ValueError):
        S.accept_draft(p, [0], np.ones((1, 4)) / 4, rng)


def test_sampler_probs_match_the_sampler():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal(12).astype(np.float32) * 0.6
    for kw in (dict(temperature=0.7, top_k=5, top_p=0.8), dict(temperature=1.3, top_k=0, top_p=1.0),
               dict(temperature=1.0, top_k=3, top_p=0.3)):
        s = Sampler(seed=4, **kw)
        p = S.sampler_probs(s, logits[None])[0]
        counts = np.bincount([s(logits) for _ in range(6000)], minlength=12)
        assert chi2_p(counts, p) > ALPHA, kw
        assert (counts[p == 0] == 0).all()
    g = S.sampler_probs(Sampler(temperature=0), logits[None])[0]
    assert g[np.argmax(logits)] == 1.0 and g.sum() == 1.0


# --- tiny random models --------------------------------------------------------------------------

class _Tok:
    """The least a tokenizer must do for the generation loop (ids as text)."""
    eos_ids = ()
    bos_id = None
    tokens = [f"<{i}>" for i in range(64)]

    def token_to_piece(self, id, special=True):
        return f"<{id}>".encode()

    def _strip_first_space(self):
        return False


def tiny(vocab, seed, sharp=1.0, mtp=0, **kw):
    cfg = make_config("nano", vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                      context_length=128, **kw)
    m = TrainableLM(cfg, seed=seed, threads=1, mtp=mtp)
    m.buf.params[...] *= np.float32(sharp)            # sharper (less uniform) next-token distributions
    for n in m.buf.names:
        if n.endswith("norm.weight"):
            m.buf.views(n)[...] = 1.0
    return cfg, m.to_transformer(threads=1)


class _LM:
    """What ModelDrafter reads of a LanguageModel."""

    def __init__(self, cfg, tr, n_ctx=128):
        self.config, self.transformer, self.cache, self.tokenizer = cfg, tr, KVCache(cfg, n_ctx), _Tok()


def test_end_to_end_distribution_tiny_models():
    """tokens 1-3 after the prompt, sampled through speculative rounds with a different random
    draft model, follow the target's exact distributions (computed from its logits)"""
    V = 8
    cfg, target = tiny(V, 0, sharp=40.0)
    _, draft = tiny(V, 1, sharp=40.0)
    prompt = [1, 2, 3]
    cache = KVCache(cfg, 64)

    def probs(seq):
        c = KVCache(cfg, 64)
        lg = np.array(target.forward(seq, 0, c)[0], np.float64)
        e = np.exp(lg - lg.max())
        return e / e.sum()

    p1 = probs(prompt)
    p12 = np.array([p1[a] * probs(prompt + [a]) for a in range(V)])         # joint (t1, t2)
    p3 = sum(p12[a, b] * probs(prompt + [a, b]) for a in range(V) for b in range(V))
    drafter = S.ModelDrafter(_LM(cfg, draft))
    sampler = Sampler(temperature=1.0, top_k=0, top_p=1.0, seed=5)
    N = 2500
    c12, c3 = np.zeros((V, V)), np.zeros(V)
    acc = prop = 0
    for _ in range(N):
        r = S.speculative_generate(target, _Tok(), cache, prompt, drafter, num_draft=2, max_new_tokens=3,
                                   sampler=sampler, stop_ids=[])
        a, b, c = r.token_ids
        c12[a, b] += 1
        c3[c] += 1
        acc += r.extra["draft"]["accepted"]
        prop += r.extra["draft"]["proposed"]
    assert chi2_p(c12.ravel(), p12.ravel()) > ALPHA
    assert chi2_p(c3, p3) > ALPHA
    assert 0 < acc < prop          # the draft really differs (some rejections) and helps (some accepted)


def _greedy(tr, cfg, prompt, n):
    return generate(tr, _Tok(), KVCache(cfg, 128), prompt, max_new_tokens=n, sampler=Sampler(temperature=0),
                    stop_ids=[]).token_ids


@pytest.mark.parametrize("num_draft", [1, 3, 8, 20])
def test_greedy_is_token_identical_tiny_models(num_draft):
    """with a draft model (random, and the target itself), n-gram lookup and mtp heads; 20 drafts
    make the verification run in two pieces"""
    V = 64
    cfg, target = tiny(V, 0, sharp=8.0)
    _, draft = tiny(V, 1, sharp=8.0)
    cfg_m, target_m = tiny(V, 0, sharp=8.0, mtp=3)
    rng = np.random.default_rng(num_draft)
    for trial in range(3):
        prompt = [int(x) for x in rng.integers(0, V, 5 + 7 * trial)]
        prompt = prompt + prompt[:4]                   # something for the n-gram lookup to find
        ref = _greedy(target, cfg, prompt, 40)
        for name, drafter in (("draft", S.ModelDrafter(_LM(cfg, draft))),
                              ("self", S.ModelDrafter(_LM(cfg, target))),
                              ("ngram", S.NgramDrafter())):
            r = S.speculative_generate(target, _Tok(), KVCache(cfg, 128), prompt, drafter, num_draft=num_draft,
                                       max_new_tokens=40, sampler=Sampler(temperature=0), stop_ids=[])
            assert r.token_ids == ref, (name, trial)
            d = r.extra["draft"]
            assert d["proposed"] >= d["accepted"] >= 0 and d["kind"] == drafter.name
            if name == "self":      # the target drafting for itself: everything accepted
                assert d["accepted"] == d["proposed"] > 0
        ref_m = _greedy(target_m, cfg_m, prompt, 40)
        r = S.speculative_generate(target_m, _Tok(), KVCache(cfg_m, 128), prompt, S.MTPDrafter(target_m),
                                   num_draft=num_draft, max_new_tokens=40, sampler=Sampler(temperature=0),
                                   stop_ids=[])
        assert r.token_ids == ref_m, ("mtp", trial)
        assert r.extra["draft"]["proposed"] > 0
        assert not target_m.keep_hidden and not target_m.rowwise_attention


def test_context_and_stops_tiny_model():
    V = 64
    cfg, target = tiny(V, 0, sharp=8.0)
    prompt = [1, 2, 3, 1, 2]
    ref = generate(target, _Tok(), KVCache(cfg, 20), prompt, max_new_tokens=30, sampler=Sampler(temperature=0),
                   stop_ids=[])
    r = S.speculative_generate(target, _Tok(), KVCache(cfg, 20), prompt, S.NgramDrafter(), num_draft=6,
                               max_new_tokens=30, sampler=Sampler(temperature=0), stop_ids=[])
    assert r.token_ids == ref.token_ids and r.finish_reason == ref.finish_reason == "context"
    stop_tok = ref.token_ids[4]
    r = S.speculative_generate(target, _Tok(), KVCache(cfg, 20), prompt, S.NgramDrafter(), num_draft=6,
                               max_new_tokens=30, sampler=Sampler(temperature=0), stop_ids=[stop_tok])
    assert r.finish_reason == "stop" and r.token_ids == ref.token_ids[:ref.token_ids.index(stop_tok)]
    text = "".join(f"<{t}>" for t in ref.token_ids)
    s = text[text.index(">", 12) + 1:][:7]
    r = S.speculative_generate(target, _Tok(), KVCache(cfg, 20), prompt, S.NgramDrafter(), num_draft=6,
                               max_new_tokens=30, sampler=Sampler(temperature=0), stop_ids=[], stop=s)
    assert r.finish_reason == "stop" and r.stop == s and r.text == text[:text.index(s)]


def test_ngram_drafter():
    d = S.NgramDrafter(n_max=3, n_min=1)
    assert d.propose([5, 6, 7, 8, 9, 5, 6, 7], 3, None) == ([8, 9, 5], None)      # 3-gram 5 6 7
    assert d.propose([1, 2, 3, 1, 2, 4, 1, 2], 2, None) == ([4, 1], None)         # latest occurrence
    assert d.propose([1, 2, 3, 4], 4, None) == ([], None)                         # nothing repeats
    assert d.propose([3, 9, 9, 3], 5, None) == ([9, 9, 3], None)                  # 1-gram fallback
    assert d.propose([7], 3, None) == ([], None)
    with pytest.raises(ValueError):
        S.NgramDrafter(n_max=1, n_min=2)


def test_argument_checks():
    cfg, target = tiny(64, 0)
    cfg2, other = tiny(48, 1)
    with pytest.raises(ValueError, match="vocabulary"):
        S.ModelDrafter(_LM(cfg2, other), vocab_size=64)
    lm = _LM(cfg, other)
    t2 = _Tok()
    t2.tokens = list(t2.tokens)
    t2.tokens[7] = "x"
    with pytest.raises(ValueError, match="token id 7"):
        S.ModelDrafter(lm, tokenizer=t2)
    with pytest.raises(ValueError, match="mtp"):
        S.MTPDrafter(target)
    for bad in (0, 65, 2.5, True):
        with pytest.raises(ValueError, match="num_draft"):
            S.speculative_generate(target, _Tok(), KVCache(cfg, 32), [1, 2], S.NgramDrafter(), num_draft=bad)

    class Target:
        config, tokenizer, transformer = cfg, _Tok(), target
    with pytest.raises(ValueError, match="draft must be"):
        S.make_drafter("medusa", None, Target)
    with pytest.raises(ValueError, match="needs draft_model"):
        S.make_drafter("model", None, Target)
    with pytest.raises(ValueError, match="takes no draft_model"):
        S.make_drafter("ngram", lm, Target)


# --- Gemma 3 270M ----------------------------------------------------------------------------------

GEMMA_PROMPTS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "def factorial(n):",
    "The capital of France is",
]


def test_gemma3_greedy_is_token_identical(gemma3_path):
    """n-gram drafting (4 and 16 drafts: one and two verification pieces) and a draft model
    (the same file loaded again: every draft accepted) against plain greedy decoding"""
    import slmx
    m = slmx.load(gemma3_path, threads=2, n_ctx=256)
    ref = m.generate(GEMMA_PROMPTS[0], max_new_tokens=20, temperature=0)
    for k in (4, 16):
        r = m.generate(GEMMA_PROMPTS[0], max_new_tokens=20, temperature=0, draft="ngram", num_draft=k)
        assert r.token_ids == ref.token_ids, k
        assert r.extra["draft"]["kind"] == "ngram" and r.extra["draft"]["accepted"] > 0
    d = slmx.load(gemma3_path, threads=2, n_ctx=256)
    r = m.generate(GEMMA_PROMPTS[1], max_new_tokens=8, temperature=0, draft_model=d, num_draft=3)
    ref = m.generate(GEMMA_PROMPTS[1], max_new_tokens=8, temperature=0)
    assert r.token_ids == ref.token_ids
    st = r.extra["draft"]
    assert st["accepted"] == st["proposed"] > 0 and st["rate"] == 1.0
    with pytest.raises(ValueError, match="mtp"):
        m.generate("hi", draft="mtp")


def test_cli_draft_flags(gemma3_path):
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "slmx.cli", "generate", "-m", gemma3_path, "-p", "a b a b a",
                               *args], capture_output=True, text=True, timeout=120)
    r = run("-n", "6", "--temperature", "0", "--draft", "ngram", "--num-draft", "3")
    assert r.returncode == 0, r.stderr
    assert "[draft: ngram" in r.stderr and "accepted" in r.stderr
    for args, word in ((["--num-draft", "0"], "num-draft"), (["--draft", "mtp"], "mtp"),
                       (["--draft", "model"], "draft_model")):
        r = run(*args)
        assert r.returncode == 1 and r.stdout == "", r
        assert len(r.stderr.strip().splitlines()) == 1 and word in r.stderr, r.stderr
