"""Transformer.forward_batch (one token for each of B sequences in one pass) and the
continuous-batching Engine against the one-sequence forward / generate they must reproduce."""
import os
import sys
import threading

import numpy as np
import pytest

import slmx
from slmx._kernels import quant
from slmx.infer import KVCache, Sampler, generate
from slmx.serve.engine import Engine, QueueFull, SamplingParams

sys.path.insert(0, os.path.dirname(__file__))
from tiny_model import write_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    out = {}
    for arch in ("llama", "gemma3"):
        for qt in ("f32", "q8_0", "q4_0"):
            p = str(d / f"{arch}_{qt}.gguf")
            # gemma3 with 7 layers: sliding-window layers (window 8) and a global one
            write_tiny_model(p, arch=arch, qtype=qt, n_layers=7 if arch == "gemma3" else 2, seed=len(out))
            out[arch, qt] = p
    return out


@pytest.fixture
def amx(request):
    """Allow or forbid the quantized linear's AMX path (taken for M >= 16 rows when present)."""
    allowed = request.param
    quant._set_amx(allowed)
    yield allowed
    quant._set_amx(True)


def _prefilled(model, rng, B, n_ctx):
    """B pairs of caches (batched, reference) holding the same random prompts of various lengths."""
    caches, refs = [], []
    for _ in range(B):
        ids = rng.integers(0, model.config.vocab_size, int(rng.integers(1, 40)))
        c, r = KVCache(model.config, n_ctx), KVCache(model.config, n_ctx)
        model.transformer.forward(ids, 0, c)
        model.transformer.forward(ids, 0, r)
        caches.append(c)
        refs.append(r)
    return caches, refs


def _steps(model, caches, refs, rng, steps):
    """Run `steps` batched steps and per-sequence reference steps; yields (batched, reference)."""
    t = model.transformer
    for _ in range(steps):
        tok = rng.integers(0, model.config.vocab_size, len(caches))
        pos = [c.length for c in caches]
        got = t.forward_batch(tok, pos, caches).copy()
        want = np.stack([np.array(t.forward([int(tok[b])], pos[b], refs[b])[0]) for b in range(len(caches))])
        assert [c.length for c in caches] == [p + 1 for p in pos]
        yield got, want


@pytest.mark.parametrize("qt", ["f32", "q8_0", "q4_0"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("B", [1, 3, 7])
def test_forward_batch_equals_forward(tiny_models, arch, qt, B):
    model = slmx.load(tiny_models[arch, qt], n_ctx=96, threads=1)
    rng = np.random.default_rng(B)
    caches, refs = _prefilled(model, rng, B, 96)
    for got, want in _steps(model, caches, refs, rng, 4):
        if qt != "f32" or B <= 4:
            # quantized linear below 16 rows and the fp32 GEMM up to 4 rows compute each row
            # exactly as for one row: the batch changes nothing
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("amx", [False, True], indirect=True, ids=["no-amx", "amx"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_forward_batch_many_rows(tiny_models, arch, amx):
    """B = 20 rows: the quantized linear's M >= 16 path (AMX tiles when the CPU has them)."""
    model = slmx.load(tiny_models[arch, "q8_0"], n_ctx=96, threads=1)
    rng = np.random.default_rng(20)
    caches, refs = _prefilled(model, rng, 20, 96)
    using_amx = quant._set_amx(amx)
    (got, want), = list(_steps(model, caches, refs, rng, 1))
    if not using_amx:
        np.testing.assert_array_equal(got, want)
    else:
        # another rounding order of the per-block scales; through the layers a few 8-bit
        # activations round the other way: close, not bit-identical
        err = np.abs(got - want)
        print("AMX rows: max", err.max(), "mean", err.mean(), "scale", np.abs(want).max())
        assert err.max() < 0.05 * np.abs(want).max() and err.mean() < 2e-3 * np.abs(want).max()


def test_forward_batch_gemma3(gemma3_path):
    model = slmx.load(gemma3_path, n_ctx=64, threads=1)
    rng = np.random.default_rng(4)
    caches, refs = _prefilled(model, rng, 4, 64)
    for got, want in _steps(model, caches, refs, rng, 2):
        np.testing.assert_array_equal(got, want)      # Q4_K/Q5_0/Q6_K/Q8_0 rows: exact


@pytest.mark.parametrize("qt", ["f32", "q4_0"])
def test_forward_batch_mixed_chunks(tiny_models, qt):
    """A prompt chunk of one sequence rides along with the decode tokens of others: each row's
    logits (and the caches it leaves) equal the sequence's own forward."""
    # F32 weights: the 11 batch rows take the packed GEMM and the lone rows the small-M kernel,
    # which sum in different orders; under ggml numerics q/k/v are rounded to fp16, where an
    # fp32 last-bit difference can flip a rounding (2**-11 relative), so the F32 case compares
    # under fp32 numerics. Quantized weights keep ggml numerics and must be bit-identical.
    numerics = "fp32" if qt == "f32" else "ggml"
    model = slmx.load(tiny_models["gemma3", qt], n_ctx=96, threads=1, numerics=numerics)
    t = model.transformer
    rng = np.random.default_rng(3)
    caches, refs = _prefilled(model, rng, 3, 96)
    chunks = [rng.integers(0, 384, n) for n in (1, 9, 1)]      # 11 rows: the per-row kernel paths
    pos = [c.length for c in caches]
    got = t.forward_batch(chunks, pos, caches).copy()
    want = np.stack([np.array(t.forward(ch, p, r)[0]) for ch, p, r in zip(chunks, pos, refs)])
    assert [c.length for c in caches] == [p + len(ch) for p, ch in zip(pos, chunks)]
    np.testing.assert_array_equal(got, want) if qt != "f32" else \
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    # the next decode step over the caches so filled agrees too
    for got, want in _steps(model, caches, refs, rng, 1):
        np.testing.assert_array_equal(got, want) if qt != "f32" else \
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_forward_batch_rejects_bad_arguments(tiny_models):
    model = slmx.load(tiny_models["llama", "q8_0"], n_ctx=16, threads=1)
    t, cfg = model.transformer, model.config
    a, b = KVCache(cfg, 16), KVCache(cfg, 16)
    with pytest.raises(ValueError, match="own cache"):
        t.forward_batch([1, 2], [0, 0], [a, a])
    with pytest.raises(ValueError, match="2 ids but 1 positions"):
        t.forward_batch([1, 2], [0], [a, b])
    with pytest.raises(ValueError, match="outside the context"):
        t.forward_batch([1, 2], [0, 16], [a, b])
    with pytest.raises(ValueError, match="token ids"):
        t.forward_batch([1, cfg.vocab_size], [0, 0], [a, b])
    with pytest.raises(ValueError, match="no sequences"):
        t.forward_batch([], [], [])
    with pytest.raises(ValueError, match="no tokens"):
        t.forward_batch([[1], []], [0, 0], [a, b])
    with pytest.raises(ValueError, match="outside the context"):
        t.forward_batch([[1] * 10, [2]], [10, 0], [a, b])
    with pytest.raises(ValueError, match="max_batch"):
        t.forward_batch([[1] * 200, [2] * 100], [0, 0], [KVCache(cfg, 300), KVCache(cfg, 300)])


# ------------------------------------------------------------------------------ engine

def _collect(engine, prompt, max_tokens, params=None, **kw):
    """Submit and return (seq, done-event holder) gathering text events."""
    box = {"text": [], "done": threading.Event()}

    def on_event(ev):
        box["text"].append(ev.text)
        if ev.kind in ("done", "error"):
            box["event"] = ev
            box["done"].set()
    seq = engine.submit(prompt, max_tokens, params or SamplingParams(temperature=0.0), on_event=on_event, **kw)
    return seq, box


def test_engine_matches_generate_as_sequences_join_and_leave(tiny_models):
    """Greedy sequences of different prompt and output lengths, joining while others decode
    (prefill in chunks of 8 tokens), each give what generate() gives alone."""
    path = tiny_models["gemma3", "q8_0"]
    model = slmx.load(path, n_ctx=128, threads=1)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, model.config.vocab_size, int(n)).tolist() for n in (5, 30, 12, 21, 3, 9)]
    max_new = [20, 7, 25, 3, 16, 11]
    want = []
    for p, n in zip(prompts, max_new):
        r = generate(model.transformer, model.tokenizer, KVCache(model.config, 128), p, max_new_tokens=n,
                     sampler=Sampler(temperature=0.0), stop_ids=())
        want.append(r.text)
    engine = Engine(model.transformer, model.tokenizer, n_ctx=128, parallel=3, max_queue=8, prefill_chunk=8)
    engine.start()
    try:
        boxes = []
        for i, (p, n) in enumerate(zip(prompts, max_new)):
            boxes.append(_collect(engine, p, n, stop_ids=())[1])
            if i == 2:
                boxes[0]["done"].wait(30)     # later ones join a batch already decoding
        for b in boxes:
            assert b["done"].wait(30)
        got = ["".join(b["text"]) for b in boxes]
        assert got == want
        assert [b["event"].finish_reason for b in boxes] == ["length"] * len(prompts)
        assert [b["event"].completion_tokens for b in boxes] == max_new
        snap = engine.snapshot()
        assert snap["stats"]["decode_rows"] > snap["stats"]["decode_steps"]     # batches of > 1 ran
        assert snap["slots_busy"] == 0 and snap["queue_depth"] == 0
    finally:
        engine.stop()


def test_engine_seeded_sampling_independent_of_batch(tiny_models):
    """A seeded request draws the same tokens alone and alongside others."""
    model = slmx.load(tiny_models["llama", "q8_0"], n_ctx=64, threads=1)
    engine = Engine(model.transformer, model.tokenizer, n_ctx=64, parallel=4).start()
    params = lambda seed: SamplingParams(temperature=1.0, top_k=0, top_p=0.9, seed=seed)
    try:
        _, alone = _collect(engine, [2, 50, 60], 24, params(7), stop_ids=())
        assert alone["done"].wait(30)
        boxes = [_collect(engine, [2, 50 + i, 61], 24, params(i), stop_ids=())[1] for i in range(3)]
        _, again = _collect(engine, [2, 50, 60], 24, params(7), stop_ids=())
        for b in boxes + [again]:
            assert b["done"].wait(30)
        assert "".join(again["text"]) == "".join(alone["text"])
        assert len({"".join(b["text"]) for b in boxes}) > 1
    finally:
        engine.stop()


def test_engine_stop_string_and_eos(tiny_models):
    model = slmx.load(tiny_models["llama", "q8_0"], n_ctx=64, threads=1)
    engine = Engine(model.transformer, model.tokenizer, n_ctx=64, parallel=2).start()
    try:
        _, full = _collect(engine, [2, 40, 41], 30, stop_ids=())
        assert full["done"].wait(30)
        text = "".join(full["text"])
        stop = text[10:13]
        j = text.find(stop)
        _, cut = _collect(engine, [2, 40, 41], 30, stop=[stop], stop_ids=())
        assert cut["done"].wait(30)
        assert "".join(cut["text"]) == text[:j] and cut["event"].finish_reason == "stop"
        # the first greedy token as an end-of-sequence id: nothing generated, finish "stop"
        ids = generate(model.transformer, model.tokenizer, KVCache(model.config, 64), [2, 40, 41], 1,
                       sampler=Sampler(temperature=0.0), stop_ids=()).token_ids
        _, eos = _collect(engine, [2, 40, 41], 30, stop_ids=[ids[0]])
        assert eos["done"].wait(30)
        assert eos["event"].completion_tokens == 0 and eos["event"].finish_reason == "stop"
    finally:
        engine.stop()


def test_engine_limits(tiny_models):
    model = slmx.load(tiny_models["llama", "q8_0"], n_ctx=32, threads=1)
    engine = Engine(model.transformer, model.tokenizer, n_ctx=32, parallel=1, max_queue=1)
    with pytest.raises(ValueError, match="context"):
        engine.submit(list(range(3, 35)), 1)
    with pytest.raises(ValueError, match="exceeds the context"):
        engine.submit([2, 5, 6], 30)
    with pytest.raises(ValueError, match="max_tokens"):
        engine.submit([2, 5, 6], 0)
    with pytest.raises(ValueError, match="empty"):
        engine.submit([], 4)
    # not started: one request for the free slot, one for the queue's one place, then refused
    engine.submit([2, 5], 4)
    s2 = engine.submit([2, 6], 4)
    with pytest.raises(QueueFull):
        engine.submit([2, 7], 4)
    engine.cancel(s2)
    engine.submit([2, 8], 4)          # the cancelled one left the queue
    assert engine.snapshot()["stats"]["rejected"] == 1
