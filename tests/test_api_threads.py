"""One LanguageModel shared by threads: calls run one at a time, each gives its sequential result."""
import os
import sys
import threading

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from tiny_model import write_tiny_model  # noqa: E402

import slmx  # noqa: E402

PROMPTS = ["hello world the model", "one two three red blue and", "the cat is a dog or"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # gemma3: sliding-window layers, the fused path with its RoPE tables, q/k norms
    path = write_tiny_model(str(tmp_path_factory.mktemp("thr") / "tiny.gguf"), arch="gemma3", qtype="q8_0",
                            n_layers=3, context_length=256)
    return slmx.load(path, threads=1, n_ctx=256)


@pytest.fixture
def fast_switching():
    """Thread switches every few microseconds: an unprotected shared workspace is hit at once."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _run_threads(fns):
    out, errs = [None] * len(fns), []
    start = threading.Barrier(len(fns))

    def body(i):
        try:
            start.wait()
            out[i] = fns[i]()
        except BaseException as e:      # noqa: BLE001 - reported below
            errs.append(e)

    ts = [threading.Thread(target=body, args=(i,)) for i in range(len(fns))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts), "a thread hangs"
    assert not errs, errs
    return out


def _greedy(m, p, n=24):
    r = m.generate(p, max_new_tokens=n, temperature=0)
    return r.token_ids, r.text


def test_two_threads_greedy_equal_sequential(model, fast_switching):
    want = [_greedy(model, p) for p in PROMPTS[:2]]
    assert want[0] != want[1]              # the two calls really differ
    for _ in range(4):
        got = _run_threads([lambda p=p: _greedy(model, p) for p in PROMPTS[:2]])
        assert got == want


def test_mixed_calls_equal_sequential(model, fast_switching):
    """generate (sampling with a seed), beam search and logits from three threads at once."""
    ids = model.tokenizer.encode(PROMPTS[2], add_bos=True)
    calls = [lambda: model.generate(PROMPTS[0], max_new_tokens=16, temperature=0.9, seed=7).token_ids,
             lambda: model.generate(PROMPTS[1], max_new_tokens=8, num_beams=3).token_ids,
             lambda: model.logits(ids)]
    want = [c() for c in calls]
    for _ in range(3):
        got = _run_threads(calls)
        assert got[0] == want[0] and got[1] == want[1]
        np.testing.assert_array_equal(got[2], want[2])


def test_streaming_call_interleaved_with_another(model, fast_switching):
    """A streaming generate (on_text) pauses mid-stream while another thread calls the model: the
    other call waits for it, and both give their sequential results."""
    want_a, want_b = _greedy(model, PROMPTS[0], 32), _greedy(model, PROMPTS[1], 12)
    streamed, started, b_done = [], threading.Event(), []

    def on_text(s):
        streamed.append(s)
        if not started.is_set():
            started.set()
            # the other thread now tries its call while this one is mid-stream
            b_done.append(b_finished.wait(0.3))

    b_finished = threading.Event()

    def a():
        r = model.generate(PROMPTS[0], max_new_tokens=32, temperature=0, on_text=on_text)
        return r.token_ids, r.text

    def b():
        started.wait(30)
        r = _greedy(model, PROMPTS[1], 12)
        b_finished.set()
        return r

    got_a, got_b = _run_threads([a, b])
    assert got_a == want_a and got_b == want_b
    assert "".join(streamed) == want_a[1]
    assert b_done == [False]               # b did not run while a was streaming


def test_call_from_own_callback_is_an_error(model):
    """A call on the model from inside its own on_text callback would clobber the running
    generation's KV cache: it is refused with an error naming the problem."""
    seen = []

    def on_text(s):
        if not seen:
            try:
                model.generate("hi", max_new_tokens=2, temperature=0)
            except RuntimeError as e:
                seen.append(str(e))

    r = model.generate(PROMPTS[0], max_new_tokens=8, temperature=0, on_text=on_text)
    assert seen and "from inside" in seen[0], seen
    assert (r.token_ids, r.text) == _greedy(model, PROMPTS[0], 8)
    model.generate("hi", max_new_tokens=2, temperature=0)     # usable afterwards


def test_serve_engine_and_api_share_a_model(model, fast_switching):
    """slmx.serve's engine decoding over the model's transformer while another thread calls
    model.generate: both see their sequential results (the engine holds the model's lock per step)."""
    from slmx.serve.engine import Engine, SamplingParams
    N = 64
    ids = model.tokenizer.encode(PROMPTS[1], add_bos=True)
    want_api = _greedy(model, PROMPTS[0], N)
    want_srv = model.generate(ids, max_new_tokens=N, temperature=0).text
    engine = Engine(model.transformer, model.tokenizer, 256, parallel=2).start()
    try:
        for _ in range(6):
            parts, done = [], threading.Event()

            def on_event(e, parts=parts, done=done):
                parts.append(e.text)
                if e.kind != "text":
                    done.set()

            def srv():
                engine.submit(ids, N, SamplingParams(temperature=0), on_event=on_event)
                assert done.wait(30)
                return "".join(parts)

            got_srv, got_api = _run_threads([srv, lambda: _greedy(model, PROMPTS[0], N)])
            assert got_api == want_api and got_srv == want_srv
    finally:
        engine.stop()


def test_model_cannot_draft_for_itself(model):
    with pytest.raises(ValueError, match="another model"):
        model.generate("hi", max_new_tokens=4, temperature=0, draft_model=model)


def test_perplexity_from_threads(model, fast_switching):
    """perplexity (both methods; llama.cpp's runs the transformer on the model's cache directly)
    from threads while another generates: each equals its sequential value."""
    from slmx.eval import perplexity
    ids = np.random.default_rng(1).integers(3, model.config.vocab_size, 200).tolist()
    calls = [lambda: perplexity(model, ids, ctx=32, method="llama.cpp").nll_sum,
             lambda: perplexity(model, ids, ctx=48, stride=16).nll_sum,
             lambda: _greedy(model, PROMPTS[2], 32)]
    want = [c() for c in calls]
    for _ in range(3):
        assert _run_threads(calls) == want
