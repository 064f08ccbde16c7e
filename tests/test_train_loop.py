"""The trainer loop: exact gradient accumulation, exact resumption, NaN handling, the log,
schedules and warnings. Runs against a small numpy model that follows the TrainableLM interface
(so the loop is tested on its own), and end to end on the real nano preset when it is built."""
import json
import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import pytest

from slmx.train import checkpoint as ckpt
from slmx.train.data import WindowSampler, validation_batches
from slmx.train.diagnostics import LossMonitor, memory_budget, plot_loss, read_log
from slmx.train.schedules import make_schedule
from slmx.train.trainer import TrainConfig, Trainer, TrainingDiverged


# --- a model and optimizer with the training interface, in numpy -------------------------------

class FakeBuf:
    def __init__(self, shapes):
        self.layout, off = [], 0
        for name, shape in shapes:
            self.layout.append((name, shape, off))
            off += int(np.prod(shape))
        self.n_params = off
        self.params = np.zeros(off, np.float32)
        self.grads = np.zeros(off, np.float32)
        self.decay_mask = np.ones(off, np.uint8)

    def _slice(self, a, name):
        for n, shape, off in self.layout:
            if n == name:
                return a[off:off + int(np.prod(shape))].reshape(shape)
        raise KeyError(name)

    def views(self, name):
        return self._slice(self.params, name)

    def grad(self, name):
        return self._slice(self.grads, name)


@dataclass
class FakeConfig:
    vocab_size: int
    d_model: int
    context_length: int = 64
    n_layers: int = 1
    n_heads: int = 1
    n_kv_heads: int = 1
    ffn_dim: int = 0

    def to_dict(self):
        return asdict(self)


class FakeLM:
    """logits = tanh(E[x]) U^T, E and U (V, d): enough to learn bigrams."""

    def __init__(self, vocab=32, d=8, seed=0, nan_at_call=None, interrupt_at_call=None):
        self.cfg = FakeConfig(vocab_size=vocab, d_model=d)
        self.interrupt_at_call = interrupt_at_call
        self.buf = FakeBuf([("token_embd.weight", (vocab, d)), ("output.weight", (vocab, d))])
        self.buf.params[:] = np.random.default_rng(seed).normal(0, 0.5, self.buf.n_params)
        self.calls = 0
        self.nan_at_call = nan_at_call

    def _forward(self, x, y):
        E = self.buf.views("token_embd.weight").astype(np.float64)
        U = self.buf.views("output.weight").astype(np.float64)
        h = np.tanh(E[x])
        z = h @ U.T
        z -= z.max(-1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(-1, keepdims=True)
        mask = y >= 0
        yy = np.where(mask, y, 0)
        nll = -np.log(np.take_along_axis(p, yy[..., None], -1)[..., 0])
        return h, p, mask, yy, float(nll[mask].sum()), int(mask.sum())

    def forward_backward(self, inputs, targets, loss_scale):
        self.calls += 1
        if self.calls == self.interrupt_at_call:
            raise KeyboardInterrupt
        h, p, mask, yy, loss, n = self._forward(inputs, targets)
        if self.nan_at_call is not None and self.calls >= self.nan_at_call:
            return float("nan"), n
        U = self.buf.views("output.weight").astype(np.float64)
        d = p.copy()
        np.put_along_axis(d, yy[..., None], np.take_along_axis(d, yy[..., None], -1) - 1, -1)
        d *= mask[..., None] * loss_scale
        self.buf.grad("output.weight")[:] += (d.reshape(-1, d.shape[-1]).T @ h.reshape(-1, h.shape[-1])
                                              ).astype(np.float32)
        dh = (d @ U) * (1 - h * h)
        dE = np.zeros(self.buf.grad("token_embd.weight").shape)
        np.add.at(dE, inputs.reshape(-1), dh.reshape(-1, dh.shape[-1]))
        self.buf.grad("token_embd.weight")[:] += dE.astype(np.float32)
        return loss, n

    def loss(self, inputs, targets):
        return self._forward(inputs, targets)[4:]

    def zero_grad(self):
        self.buf.grads[:] = 0

    def state_tensors(self):
        return {n: self.buf.views(n) for n, _, _ in self.buf.layout}

    def load_state_tensors(self, d):
        for n, _, _ in self.buf.layout:
            self.buf.views(n)[:] = d[n]

    def activation_bytes(self, batch, T):
        return batch * T * (self.cfg.vocab_size + self.cfg.d_model) * 8


class FakeAdamW:
    def __init__(self, buf, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
        self.buf, self.b1, self.b2, self.eps, self.wd = buf, betas[0], betas[1], eps, weight_decay
        self.m = np.zeros_like(buf.params)
        self.v = np.zeros_like(buf.params)
        self.t = 0

    def step(self, lr):
        self.t += 1
        g = self.buf.grads
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        mh = self.m / (1 - self.b1 ** self.t)
        vh = self.v / (1 - self.b2 ** self.t)
        self.buf.params *= np.float32(1 - lr * self.wd)
        self.buf.params -= (lr * mh / (np.sqrt(vh) + self.eps)).astype(np.float32)

    def state_dict(self):
        return {"m": self.m, "v": self.v, "step": self.t}

    def load_state_dict(self, d):
        self.m = np.array(d["m"], np.float32)
        self.v = np.array(d["v"], np.float32)
        self.t = int(d["step"])


def numpy_clip(buf, max_norm):
    n = float(np.sqrt(np.dot(buf.grads.astype(np.float64), buf.grads.astype(np.float64))))
    if n > max_norm:
        buf.grads *= np.float32(max_norm / (n + 1e-6))
    return n


def bigram_tokens(n=20000, vocab=32, seed=1):
    """A token stream with learnable structure: next = (3 * cur + noise) % vocab."""
    rng = np.random.default_rng(seed)
    t = np.zeros(n, np.uint16)
    for i in range(1, n):
        t[i] = (3 * int(t[i - 1]) + int(rng.integers(0, 2))) % vocab
    return t


def make_trainer(out_dir, max_steps=12, grad_accum=2, eval_every=4, ckpt_every=4, seed=0, model=None, **kw):
    toks = bigram_tokens()
    cfg = TrainConfig(preset="fake", vocab_size=32, batch_size=4, context=16, grad_accum=grad_accum,
                      max_steps=max_steps, lr=0.05, warmup=3, eval_every=eval_every, ckpt_every=ckpt_every,
                      keep_checkpoints=3, seed=seed, **kw)
    model = model or FakeLM(seed=seed)
    opt = FakeAdamW(model.buf, cfg.lr)
    sched = make_schedule("cosine", cfg.lr, max_steps, cfg.warmup)
    sampler = WindowSampler(toks[:16000], cfg.batch_size, cfg.context, seed=seed)
    val = validation_batches(toks[16000:], cfg.batch_size, cfg.context, max_tokens=512)
    return Trainer(model, opt, sched, sampler, val, cfg, out_dir, clip_grad_norm=numpy_clip, progress=False,
                   state_extra={"data": {"fingerprint": "test"}})


def steps_of(log_path):
    return [r for r in read_log(log_path) if "event" not in r]


# --- accumulation ------------------------------------------------------------------------------

class MaskedSampler:
    """Four micro-batches with different numbers of unmasked targets, then repeat."""

    def __init__(self, batches):
        self.batches, self.i, self.context = batches, 0, batches[0][0].shape[1]

    def next_batch(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, d):
        self.i = d["i"]


def test_accumulation_equals_one_big_batch():
    rng = np.random.default_rng(0)
    micro = []
    for k, frac in enumerate([1.0, 0.7, 0.3, 0.1]):
        x = rng.integers(0, 32, (3, 10)).astype(np.int32)
        y = rng.integers(0, 32, (3, 10)).astype(np.int32)
        y[rng.random(y.shape) > frac] = -1
        y[0, 0] = 1                   # at least one target each
        micro.append((x, y))
    counts = [int((y >= 0).sum()) for _, y in micro]
    assert len(set(counts)) == 4
    model = FakeLM(seed=3)
    cfg = TrainConfig(batch_size=3, context=10, grad_accum=4, max_steps=1, clip=0.0)
    t = Trainer(model, FakeAdamW(model.buf, 0.0), make_schedule("constant", 0.0, 1), MaskedSampler(micro), (),
                cfg, None, clip_grad_norm=numpy_clip, progress=False)
    r = t.train_step()
    g_acc = model.buf.grads.copy()

    ref = FakeLM(seed=3)
    X = np.concatenate([x for x, _ in micro])
    Y = np.concatenate([y for _, y in micro])
    ref.zero_grad()
    ls, n = ref.forward_backward(X, Y, 1.0 / sum(counts))
    assert n == sum(counts)
    rel = np.linalg.norm(g_acc - ref.buf.grads) / np.linalg.norm(ref.buf.grads)
    assert rel < 1e-6, rel
    assert abs(r["loss"] - ls / n) < 1e-12
    # and not what averaging the four per-micro-batch means would give
    naive = FakeLM(seed=3)
    for x, y in micro:
        naive.forward_backward(x, y, 1.0 / (4 * int((y >= 0).sum())))
    assert np.linalg.norm(naive.buf.grads - ref.buf.grads) / np.linalg.norm(ref.buf.grads) > 1e-2


# --- the loop, log, resume ---------------------------------------------------------------------

def test_trains_and_logs(tmp_path):
    t = make_trainer(str(tmp_path), max_steps=40, eval_every=10, ckpt_every=20)
    res = t.train()
    assert res.step == 40 and res.stop_reason == "max_steps"
    recs = steps_of(tmp_path / "train.jsonl")
    assert [r["step"] for r in recs] == list(range(1, 41))
    for r in recs:
        for k in ("step", "loss", "lr", "grad_norm", "tokens_per_s"):
            assert k in r and isinstance(r[k], (int, float))
    assert [r["step"] for r in recs if "val_loss" in r] == [10, 20, 30, 40]
    assert all(abs(r["val_ppl"] - math.exp(r["val_loss"])) < 1e-9 * r["val_ppl"] for r in recs if "val_loss" in r)
    assert recs[-1]["loss"] < recs[0]["loss"] - 0.5          # it learns the bigram structure
    assert recs[0]["lr"] == pytest.approx(0.05 / 3)
    assert recs[-1]["lr"] == pytest.approx(0.005)
    assert ckpt.resolve_checkpoint(str(tmp_path)).endswith("ckpt-000040")
    assert os.path.isdir(tmp_path / "ckpt-000020")


def test_resume_reproduces_uninterrupted_run(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    make_trainer(a).train()
    t1 = make_trainer(b)
    r1 = t1.train(stop_step=6)                # stops as if interrupted, checkpoint at 6
    assert r1.stop_reason == "stop_step" and r1.step == 6
    assert ckpt.resolve_checkpoint(b).endswith("ckpt-000006")
    # a log line written after the checkpoint (killed run) is cut on resume
    with open(os.path.join(b, "train.jsonl"), "a") as f:
        f.write(json.dumps({"step": 7, "loss": 123.0}) + "\n" + '{"step": 8, "lo')
    t2 = make_trainer(b, model=FakeLM(seed=99))       # different init: everything must come from the checkpoint
    t2.sampler = WindowSampler(bigram_tokens()[:16000], 4, 16, seed=12345)
    t2.restore(ckpt.load_checkpoint(b))
    t2.train()
    la, lb = steps_of(os.path.join(a, "train.jsonl")), steps_of(os.path.join(b, "train.jsonl"))
    assert [r["step"] for r in lb] == list(range(1, 13))
    for k in ("loss", "lr", "grad_norm", "val_loss"):
        assert [r.get(k) for r in la] == [r.get(k) for r in lb], k
    pa = ckpt.load_checkpoint(a).tensors
    pb = ckpt.load_checkpoint(b).tensors
    for n in pa:
        assert np.array_equal(pa[n], pb[n])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # grad_accum 2: call 2k-1, 2k are step k; NaN on call 11 = step 6; checkpoints every 4
    t = make_trainer(str(tmp_path), model=FakeLM(nan_at_call=11))
    with pytest.raises(TrainingDiverged) as e:
        t.train()
    msg = str(e.value)
    assert "step 6" in msg and "nan" in msg and "ckpt-000004" in msg
    c = ckpt.load_checkpoint(str(tmp_path))
    assert c.step == 4
    ev = [r for r in read_log(tmp_path / "train.jsonl") if r.get("event") == "diverged"]
    assert len(ev) == 1 and ev[0]["step"] == 6


def test_interrupt_right_after_a_checkpoint_writes_no_duplicate(tmp_path):
    # grad_accum 2: call 9 is the first micro-batch of step 5, just after the step-4 checkpoint
    t = make_trainer(str(tmp_path), model=FakeLM(interrupt_at_call=9))
    with pytest.raises(KeyboardInterrupt):
        t.train()
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(str(tmp_path))] == ["ckpt-000004"]
    assert ckpt.resolve_checkpoint(str(tmp_path)).endswith("ckpt-000004")
    # one step later: the interrupt writes the step it reached
    t = make_trainer(str(tmp_path / "b"), model=FakeLM(interrupt_at_call=11))
    with pytest.raises(KeyboardInterrupt):
        t.train()
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(str(tmp_path / "b"))] == ["ckpt-000004",
                                                                                         "ckpt-000005"]


def test_time_limit_fits_max_steps(tmp_path):
    cfg_steps = None
    t = make_trainer(str(tmp_path), max_steps=10 ** 6)
    t.config.max_steps = cfg_steps
    t.max_seconds = 1.0
    t.fit_steps_to_time = True
    res = t.train()
    assert res.stop_reason in ("time", "max_steps")
    assert t.config.max_steps is not None and t.config.max_steps < 10 ** 6
    assert t.schedule.max_steps == t.config.max_steps
    assert res.checkpoint is not None and ckpt.load_checkpoint(str(tmp_path)).step == res.step


# --- schedules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["constant", "cosine", "linear", "wsd"])
def test_schedules(name):
    s = make_schedule(name, lr=1.0, max_steps=100, warmup=10, min_lr_ratio=0.1, decay_fraction=0.2)
    lrs = np.array([s.lr_at(i) for i in range(100)])
    assert np.allclose(lrs[:10], np.arange(1, 11) / 10)
    assert np.all(np.diff(lrs[9:]) <= 1e-15)                 # no increase after warmup
    if name == "constant":
        assert np.all(lrs[9:] == 1.0)
    else:
        assert lrs[-1] == pytest.approx(0.1)
    if name == "cosine":
        assert lrs[10 + 45] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 89)))
    if name == "wsd":
        assert np.all(lrs[10:80] == 1.0) and lrs[80] < 1.0
    if name == "linear":
        assert np.allclose(np.diff(lrs[10:]), -0.9 / 89)
    assert s.to_dict() == type(s).from_dict(s.to_dict()).to_dict()


def test_schedule_rejects_bad_values():
    with pytest.raises(ValueError):
        make_schedule("triangle", 1e-3, 10)
    with pytest.raises(ValueError):
        make_schedule("cosine", float("nan"), 10)


# --- diagnostics -------------------------------------------------------------------------------

def test_loss_monitor_warns_on_spike_and_explosion():
    m = LossMonitor(window=20, spike_factor=2.0, explode_factor=10.0, min_history=5)
    for i in range(10):
        assert m.update(i, 3.0 + 0.01 * i, 1.0) == []
    w = m.update(10, 7.0, 1.0)
    assert len(w) == 1 and "loss spike" in w[0]
    w = m.update(11, 3.0, 50.0)
    assert len(w) == 1 and "exploding gradient norm" in w[0]
    assert m.update(12, 3.1, 1.2) == []


def test_memory_budget_sums():
    b = memory_budget(1000, 8000, 500, baseline_bytes=100, data_bytes=20)
    assert b["weights (fp32)"] == 4000 and b["gradients (fp32)"] == 4000
    assert b["total"] == 100 + 4000 + 4000 + 8000 + 500 + 20


def test_plot_loss(tmp_path):
    pytest.importorskip("matplotlib")
    t = make_trainer(str(tmp_path), max_steps=20, eval_every=5, ckpt_every=0)
    t.train()
    png = plot_loss(str(tmp_path / "train.jsonl"), str(tmp_path / "loss.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 10000


# --- perplexity --------------------------------------------------------------------------------

class TableLM:
    """logits[t] = W[ids[t]] + 0.3 * t * B[ids[0]]: depends on the window's start and position,
    so a window offset error changes the result."""

    def __init__(self, vocab=20, n_ctx=64, seed=0):
        rng = np.random.default_rng(seed)
        self.W, self.B, self.n_ctx = rng.normal(size=(vocab, vocab)), rng.normal(size=(vocab, vocab)), n_ctx
        self.tokenizer = None

    def logits(self, ids):
        ids = np.asarray(ids)
        return (self.W[ids] + 0.3 * np.arange(len(ids))[:, None] * self.B[ids[0]]).astype(np.float32)


def hf_reference_nll(model, ids, ctx, stride):
    """The Hugging Face recipe: labels = window with the already-scored prefix set to -100."""
    ids = np.asarray(ids)
    tot, cnt, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + ctx, len(ids))
        trg_len = end - prev_end
        window = ids[begin:end]
        labels = window.copy()
        labels[:-trg_len] = -100
        z = model.logits(window).astype(np.float64)
        logp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
        for t in range(len(window) - 1):
            if labels[t + 1] != -100:
                tot -= logp[t, labels[t + 1]]
                cnt += 1
        prev_end = end
        if end == len(ids):
            break
    return tot, cnt


@pytest.mark.parametrize("ctx,stride", [(16, 8), (16, 16), (16, 1), (16, 5), (64, 32)])
def test_sliding_window_perplexity_matches_reference(ctx, stride):
    from slmx.eval import perplexity
    model = TableLM()
    ids = list(np.random.default_rng(1).integers(0, 20, 100))
    r = perplexity(model, ids, ctx=ctx, stride=stride)
    tot, cnt = hf_reference_nll(model, ids, ctx, stride)
    assert r.n_tokens == cnt
    assert r.nll_sum == pytest.approx(tot, rel=1e-9)
    assert r.ppl == pytest.approx(math.exp(tot / cnt), rel=1e-9)
    if stride < ctx:
        assert r.n_tokens == len(ids) - 1          # every token after the first, once


def test_perplexity_rejects_bad_windows():
    from slmx.eval import perplexity
    with pytest.raises(ValueError):
        perplexity(TableLM(), [1, 2, 3], ctx=8, stride=9)
    with pytest.raises(ValueError):
        perplexity(TableLM(n_ctx=8), [1, 2, 3], ctx=16)
    with pytest.raises(ValueError):
        perplexity(TableLM(), [1], ctx=8)


# --- end to end on the real model (nano preset) ------------------------------------------------

def _small_corpus(tmp_path, n=40):
    import shutil
    from slmx.train.data import stdlib_corpus
    d = tmp_path / "corpus"
    d.mkdir()
    for p in [p for p in stdlib_corpus() if 2000 < os.path.getsize(p) < 12000][:n]:
        shutil.copyfile(p, d / os.path.basename(p))
    return str(d)


def _cli(*args, timeout=600):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "slmx.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cli_train_then_generate_and_perplexity(tmp_path):
    data = _small_corpus(tmp_path)
    out = str(tmp_path / "run")
    r = _cli("train", "--data", data, "--out", out, "--preset", "nano", "--vocab-size", "512", "--batch-size", "4",
             "--context", "64", "--max-steps", "30", "--eval-every", "10", "--ckpt-every", "10", "--lr", "3e-3",
             "--warmup", "5", "--threads", "2", "--eval-tokens", "4096", "--no-progress", "--sample-tokens", "16")
    assert r.returncode == 0, r.stderr[-3000:]
    for s in ("unigram entropy of the training tokens", "memory budget:", "peak RSS", "sample", "val loss"):
        assert s in r.stdout, s
    recs = [x for x in read_log(os.path.join(out, "train.jsonl")) if "event" not in x]
    assert [x["step"] for x in recs] == list(range(1, 31))
    assert [x["step"] for x in recs if "val_loss" in x] == [10, 20, 30]
    assert recs[-1]["val_loss"] < recs[0]["loss"] - 0.5
    assert all(x["grad_norm"] > 0 and x["tokens_per_s"] > 0 for x in recs)
    assert ckpt.load_checkpoint(out).step == 30

    g = _cli("generate", "-m", out, "-p", "def ", "-n", "12", "--temperature", "0")
    assert g.returncode == 0, g.stderr[-3000:]
    assert g.stdout.startswith("def ")
    p = _cli("perplexity", "-m", out, "--data", os.path.join(data, sorted(os.listdir(data))[0]), "--ctx", "64",
             "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("perplexity: ")
    assert 1.0 < float(last.split()[1]) < 512
    png = _cli("plot-loss", out, "-o", str(tmp_path / "loss.png"))
    assert png.returncode == 0, png.stderr[-3000:]
    assert os.path.getsize(tmp_path / "loss.png") > 10000


def test_loaded_model_scores_like_the_training_model(tmp_path):
    """slmx.load(OUT) (to_transformer, the inference path) gives the NLL the training model's
    loss() gives on the same window."""
    import slmx
    from slmx.eval.perplexity import window_nll
    from slmx.train.model import TrainableLM, make_config
    data = _small_corpus(tmp_path, 20)
    out = str(tmp_path / "run")
    r = _cli("train", "--data", data, "--out", out, "--preset", "nano", "--vocab-size", "400", "--batch-size", "2",
             "--context", "64", "--max-steps", "6", "--eval-every", "3", "--threads", "2", "--no-progress",
             "--sample-tokens", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    lm = slmx.load(out, threads=2)
    c = ckpt.load_checkpoint(out, optimizer=False)
    m = TrainableLM(make_config("nano", vocab_size=lm.config.vocab_size, context_length=64), threads=2)
    m.load_state_tensors(c.tensors)
    ids = np.asarray(np.memmap(os.path.join(out, "data", "val.bin"), dtype=np.uint16, mode="r")[:64], np.int32)
    ls, n = m.loss(ids[None, :-1].copy(), ids[None, 1:].copy())
    assert n == 63
    assert window_nll(lm, ids, 0) == pytest.approx(ls, rel=1e-4)
    # n_ctx is bounded by the context it was trained at (as a GGUF's by its context length),
    # for the output folder and a checkpoint folder, before any allocation
    ck = os.path.join(out, sorted(d for d in os.listdir(out) if d.startswith("ckpt-"))[-1])
    for path in (out, ck):
        for n in (65, 1000, 100000000000):
            with pytest.raises(ValueError, match=f"n_ctx {n} exceeds the model's context length 64"):
                slmx.load(path, n_ctx=n, threads=1)
    assert slmx.load(ck, n_ctx=64, threads=1).n_ctx == 64
    i = _cli("info", out)                     # described, as generate accepts it
    assert i.returncode == 0 and "slmx train checkpoint, step 6" in i.stdout and "n_layers=" in i.stdout, i.stderr
    i = _cli("info", str(tmp_path))           # a folder that is no model: what info takes
    assert i.returncode == 1 and "slmx info takes a GGUF file" in i.stderr and i.stderr.count("\n") == 1
    with pytest.raises(ValueError, match="rope_scaling: not supported for a model trained"):   # not ignored
        slmx.load(out, rope_scaling={"type": "linear", "factor": 2}, threads=1)
    with pytest.raises(ValueError, match="rope_scaling: factor must be a positive"):
        slmx.load(out, rope_scaling={"type": "linear", "factor": 0}, threads=1)
    for cmd in (["generate", "-m", out, "-p", "hi"], ["generate", "-m", ck, "-p", "hi"],
                ["perplexity", "-m", out, "-f", os.path.join(data, sorted(os.listdir(data))[0])]):
        r = _cli(*cmd, "--ctx", "100000000000")
        assert r.returncode == 1 and r.stderr.startswith("slmx: error: n_ctx 100000000000 exceeds"), r.stderr
        assert r.stderr.count("\n") == 1


def test_cli_nan_loss_exits_nonzero_and_keeps_checkpoint(tmp_path):
    data = _small_corpus(tmp_path, 20)
    out = str(tmp_path / "run")
    r = _cli("train", "--data", data, "--out", out, "--preset", "nano", "--vocab-size", "400", "--batch-size", "2",
             "--context", "32", "--max-steps", "40", "--ckpt-every", "1", "--optimizer", "sgd", "--lr", "1e6",
             "--warmup", "0", "--clip", "0", "--threads", "2", "--no-progress", "--sample-tokens", "0")
    assert r.returncode == 3, (r.returncode, r.stderr[-3000:])
    assert "diverged" in r.stderr and "last good checkpoint" in r.stderr
    c = ckpt.load_checkpoint(out)
    assert all(np.isfinite(v).all() for v in c.tensors.values())


def test_memory_budget_matches_peak_rss_tiny(tmp_path):
    import re
    data = _small_corpus(tmp_path)
    r = _cli("train", "--data", data, "--out", str(tmp_path / "run"), "--preset", "tiny", "--vocab-size", "2048",
             "--batch-size", "2", "--context", "128", "--max-steps", "2", "--eval-every", "2", "--threads", "2",
             "--eval-tokens", "256", "--no-progress", "--sample-tokens", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"budget/peak ([0-9.]+)", r.stdout)
    assert m, r.stdout
    assert 0.85 <= float(m.group(1)) <= 1.15, r.stdout


# --- run_training (the `slmx train` pipeline) with the fake model --------------------------------

class ByteTokenizer:
    vocab_size, eos_id = 257, 0

    def encode(self, text, add_bos=False, add_eos=False, parse_special=False):
        return [b + 1 for b in text.encode("utf-8")]


def _patch_fakes(monkeypatch):
    from slmx.train import trainer as T

    def prepare_tokenizer(out_dir, files, vocab_size, tokenizer=None, *a, **k):
        p = os.path.join(out_dir, "tokenizer.json")
        with open(p, "w") as f:
            f.write('{"fake": "bytes"}')
        return ByteTokenizer(), p

    monkeypatch.setattr(T, "prepare_tokenizer", prepare_tokenizer)
    monkeypatch.setattr(T, "load_tokenizer", lambda p: ByteTokenizer())
    monkeypatch.setattr(T, "build_model", lambda cfg, V: FakeLM(vocab=V, d=8, seed=cfg.seed))
    monkeypatch.setattr(T, "check_preset", lambda name: None)
    monkeypatch.setattr(T, "make_optimizer", lambda name, buf, lr, *a, **k: FakeAdamW(buf, lr))
    monkeypatch.setattr(T, "_default_clip_grad_norm", lambda buf, mx, threads=None: numpy_clip(buf, mx))


def test_run_training_pipeline_and_resume(tmp_path, monkeypatch):
    import io
    from slmx.train.trainer import run_training
    _patch_fakes(monkeypatch)
    data = tmp_path / "corpus"
    data.mkdir()
    for i in range(30):
        (data / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * (5 + i))
    cfg = dict(preset="fake", batch_size=4, context=32, grad_accum=2, max_steps=12, lr=0.02, warmup=2,
               eval_every=4, ckpt_every=3, keep_checkpoints=10, eval_tokens=1024, val_fraction=0.1)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    buf = io.StringIO()
    ra = run_training(TrainConfig(**cfg), a, data=[str(data)], progress=False, sample_tokens=0, out=buf)
    text = buf.getvalue()
    for s in ("unigram entropy of the training tokens", "memory budget:", "budget/peak", "val loss"):
        assert s in text, text
    assert ra.step == 12 and ra.stop_reason == "max_steps"
    with pytest.raises(ValueError, match="already holds a training run"):
        run_training(TrainConfig(**cfg), a, data=[str(data)], progress=False, sample_tokens=0, out=io.StringIO())
    # b: the same run, then cut back to its step-6 checkpoint as a kill after it would leave it
    run_training(TrainConfig(**cfg), b, data=[str(data)], progress=False, sample_tokens=0, out=io.StringIO())
    import shutil
    for s in (9, 12):
        shutil.rmtree(os.path.join(b, ckpt.checkpoint_name(s)))
    with open(os.path.join(b, "latest"), "w") as f:
        f.write(ckpt.checkpoint_name(6) + "\n")
    rb = run_training(None, None, resume=b, progress=False, sample_tokens=0, out=io.StringIO(),
                      overrides={"threads": 1})
    assert rb.step == 12 and [s for s, _ in rb.losses] == list(range(7, 13))
    la, lb = steps_of(os.path.join(a, "train.jsonl")), steps_of(os.path.join(b, "train.jsonl"))
    for k in ("step", "loss", "lr", "grad_norm", "val_loss"):
        assert [r.get(k) for r in la] == [r.get(k) for r in lb], k
    # changed data -> refuses to resume
    with open(os.path.join(b, "latest"), "w") as f:
        f.write(ckpt.checkpoint_name(6) + "\n")
    (data / "m0.py").write_text("changed\n")
    with pytest.raises(ValueError, match="changed since the checkpoint"):
        run_training(None, None, resume=b, progress=False, sample_tokens=0, out=io.StringIO())


def _fake_corpus(tmp_path):
    data = tmp_path / "corpus"
    data.mkdir()
    for i in range(30):
        (data / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * (5 + i))
    return str(data)


_FAKE_CFG = dict(preset="fake", batch_size=4, context=32, grad_accum=2, max_steps=12, lr=0.02, warmup=2,
                 eval_every=4, ckpt_every=3, keep_checkpoints=10, eval_tokens=1024, val_fraction=0.1)


def test_resume_from_an_older_checkpoint_sets_later_ones_aside(tmp_path, monkeypatch):
    """--resume OUT/ckpt-000006 while ckpt-000009 and ckpt-000012 exist: those and the full log are
    moved to OUT/superseded/..., `latest` follows the run, and the steps redo the same numbers."""
    import io
    from slmx.train.trainer import run_training
    _patch_fakes(monkeypatch)
    data = _fake_corpus(tmp_path)
    a = str(tmp_path / "a")
    run_training(TrainConfig(**_FAKE_CFG), a, data=[data], progress=False, sample_tokens=0, out=io.StringIO())
    first = steps_of(os.path.join(a, "train.jsonl"))
    buf = io.StringIO()
    r = run_training(None, None, resume=os.path.join(a, ckpt.checkpoint_name(6)), progress=False,
                     sample_tokens=0, out=buf)
    assert r.step == 12 and [s for s, _ in r.losses] == list(range(7, 13))
    assert "moved the later ckpt-000009, ckpt-000012 and a copy of train.jsonl" in buf.getvalue()
    names = sorted(os.listdir(a))
    assert not [n for n in names if n.startswith("ckpt-") and "." in n], names     # no ckpt-000009.1
    assert ckpt.resolve_checkpoint(a).endswith(ckpt.checkpoint_name(12))
    (aside,) = os.listdir(os.path.join(a, ckpt.SUPERSEDED))
    aside = os.path.join(a, ckpt.SUPERSEDED, aside)
    assert sorted(os.listdir(aside)) == [ckpt.checkpoint_name(9), ckpt.checkpoint_name(12), "train.jsonl"]
    assert steps_of(os.path.join(aside, "train.jsonl")) == first
    again = steps_of(os.path.join(a, "train.jsonl"))
    assert [x["loss"] for x in again] == [x["loss"] for x in first]
    # the end of the run: nothing to train is an error before any work, and nothing moves
    with pytest.raises(ValueError, match="nothing to train"):
        run_training(None, None, resume=a, progress=False, sample_tokens=0, out=io.StringIO())
    assert len(os.listdir(os.path.join(a, ckpt.SUPERSEDED))) == 1


def test_summary_line_without_steps_or_validation_has_no_nan():
    from slmx.train.trainer import TrainResult, summary_line
    s = summary_line(TrainResult(None, 20, "max_steps"), 3.0, 1.0, has_val=False)
    assert "nan" not in s and "no training step" in s and "no validation split" in s
    s = summary_line(TrainResult(None, 21, "max_steps", losses=[(21, 2.5)], val=[(21, 2.0)]), 3.0, 1.0)
    assert "train loss 2.5000" in s and f"ppl {math.exp(2.0):.2f}" in s


def test_resume_with_max_steps_keeps_the_schedule(tmp_path, monkeypatch):
    """--resume --max-steps K stops at K on the original run's schedule (no refit, no lr cliff);
    resuming again finishes it exactly like the uninterrupted run; past the horizon the lr stays final."""
    import io
    from slmx.train.trainer import run_training
    _patch_fakes(monkeypatch)
    data = _fake_corpus(tmp_path)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run_training(TrainConfig(**_FAKE_CFG), a, data=[data], progress=False, sample_tokens=0, out=io.StringIO())
    cfg = dict(_FAKE_CFG, max_steps=12)
    run_training(TrainConfig(**cfg), b, data=[data], progress=False, sample_tokens=0, out=io.StringIO())
    buf = io.StringIO()
    r = run_training(None, None, resume=os.path.join(b, ckpt.checkpoint_name(6)), progress=False, sample_tokens=0,
                     out=buf, overrides={"max_steps": 8})
    assert r.step == 8 and "keeps the run's horizon of 12" in buf.getvalue()
    assert ckpt.read_state(b)[1]["schedule"]["max_steps"] == 12
    r = run_training(None, None, resume=b, progress=False, sample_tokens=0, out=io.StringIO())
    assert r.step == 12
    la, lb = steps_of(os.path.join(a, "train.jsonl")), steps_of(os.path.join(b, "train.jsonl"))
    for k in ("step", "lr", "loss"):
        assert [x[k] for x in la] == [x[k] for x in lb], k
    r = run_training(None, None, resume=b, progress=False, sample_tokens=0, out=io.StringIO(),
                     overrides={"max_steps": 14})
    lr = [x["lr"] for x in steps_of(os.path.join(b, "train.jsonl"))]
    assert r.step == 14 and lr[12:] == [pytest.approx(0.02 * 0.1)] * 2


def test_resume_reports_this_sessions_tokens(tmp_path, monkeypatch):
    import io
    from slmx.train.trainer import run_training
    _patch_fakes(monkeypatch)
    data = _fake_corpus(tmp_path)
    a = str(tmp_path / "a")
    r = run_training(TrainConfig(**_FAKE_CFG), a, data=[data], progress=False, sample_tokens=0, out=io.StringIO())
    per_step = 4 * 32 * 2
    assert r.tokens == 12 * per_step
    buf = io.StringIO()
    r = run_training(None, None, resume=a, progress=False, sample_tokens=0, out=buf, overrides={"max_steps": 14})
    assert r.tokens == 2 * per_step and f" {2 * per_step:,} tokens in" in buf.getvalue()
    assert ckpt.read_state(a)[1]["tokens_seen"] == 14 * per_step


def test_val_fraction_zero_says_there_is_no_validation_split(tmp_path, monkeypatch):
    import io
    from slmx.train.trainer import run_training
    _patch_fakes(monkeypatch)
    buf = io.StringIO()
    run_training(TrainConfig(**dict(_FAKE_CFG, val_fraction=0.0, max_steps=3)), str(tmp_path / "a"),
                 data=[_fake_corpus(tmp_path)], progress=False, sample_tokens=0, out=buf)
    text = buf.getvalue()
    assert "--val-fraction 0: no validation split" in text and "nan" not in text, text


@pytest.mark.parametrize("args, what", [(["--val-fraction", "1.5"], "val_fraction"),
                                        (["--val-fraction", "-0.1"], "val_fraction"),
                                        (["--preset", "huge"], "preset"), (["--schedule", "bogus"], "schedule"),
                                        (["--warmup", "-1"], "warmup"), (["--eval-every", "-5"], "eval_every")])
def test_cli_train_rejects_bad_options_before_any_work(tmp_path, args, what):
    out = tmp_path / "run"
    (tmp_path / "a.py").write_text("def f(x):\n    return x\n" * 50)
    r = _cli("train", "--data", str(tmp_path / "a.py"), "--out", str(out), "--max-steps", "2", "--no-progress", *args,
             timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slmx: error: ") and what in lines[0], r.stderr
    assert not out.exists() or not os.listdir(out)


@pytest.mark.parametrize("content, what", [("{bad", "not valid JSON"), ("{}", "model: missing"), (None, "no such file")])
def test_cli_train_bad_tokenizer_names_the_users_file_and_writes_nothing(tmp_path, content, what):
    out = tmp_path / "run"
    (tmp_path / "a.py").write_text("def f(x):\n    return x\n" * 50)
    tok = tmp_path / "mytok.json"
    if content is not None:
        tok.write_text(content)
    r = _cli("train", "--data", str(tmp_path / "a.py"), "--tokenizer", str(tok), "--out", str(out),
             "--max-steps", "2", "--no-progress", timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("slmx: error: "), r.stderr
    assert str(tok) in lines[0] and what in lines[0] and "run/tokenizer.json" not in lines[0], lines[0]
    assert not out.exists()


def test_cli_train_notes_ignored_out_and_vocab_size_and_refuses_negative_clip(tmp_path, monkeypatch, capsys):
    import slmx.train.trainer as T
    from slmx.cli import main
    seen = {}
    monkeypatch.setattr(T, "run_training", lambda config, **k: seen.update(k, config=config))
    (tmp_path / "a.py").write_text("x = 1\n")
    assert main(["train", "--resume", str(tmp_path / "run"), "--out", str(tmp_path / "other")]) == 0
    err = capsys.readouterr().err
    assert "ignoring --out" in err and str(tmp_path / "run") in err and seen["out_dir"] is None, err
    assert main(["train", "--resume", str(tmp_path / "run" / "ckpt-000010"), "--out", str(tmp_path / "run")]) == 0
    assert "ignoring" not in capsys.readouterr().err             # --out is the run's own folder
    assert main(["train", "--data", str(tmp_path / "a.py"), "--out", str(tmp_path / "o"),
                 "--tokenizer", str(tmp_path / "t.json"), "--vocab-size", "500"]) == 0
    assert "ignoring --vocab-size" in capsys.readouterr().err
    monkeypatch.undo()                                             # the real run_training: validates first
    assert main(["train", "--data", str(tmp_path / "a.py"), "--out", str(tmp_path / "o"), "--clip", "-1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("slmx: error: clip must be") and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="clip"):
        TrainConfig(clip=-0.5).validate()
    TrainConfig(clip=0).validate()


def test_warmup_not_below_max_steps_warns(tmp_path, monkeypatch):
    import io
    from slmx.train.trainer import run_training
    _patch_fakes(monkeypatch)
    data = [_fake_corpus(tmp_path)]
    for warmup, n, warned in ((3, 3, True), (50, 2, True), (1, 3, False)):
        buf = io.StringIO()
        run_training(TrainConfig(**dict(_FAKE_CFG, warmup=warmup, max_steps=n)), str(tmp_path / f"w{warmup}"),
                     data=data, progress=False, sample_tokens=0, out=buf)
        lines = [ln for ln in buf.getvalue().splitlines() if "never reaches its peak" in ln]
        assert len(lines) == warned and (not warned or f"--warmup {warmup} >= --max-steps {n}" in lines[0])


def test_vocab_size_the_corpus_cannot_reach_is_noted(tmp_path):
    import io
    from slmx.train.trainer import prepare_tokenizer
    (tmp_path / "a.py").write_text("def f(x):\n    return x + 1\n" * 20)
    buf = io.StringIO()
    tok, _ = prepare_tokenizer(str(tmp_path), [str(tmp_path / "a.py")], 70000, val_fraction=0.0, out=buf,
                               progress=False)
    assert tok.vocab_size < 70000
    assert f"note: the vocabulary reached {tok.vocab_size:,} tokens, not --vocab-size 70,000" in buf.getvalue()


def test_validation_shorter_than_the_context_is_named_as_such(tmp_path, monkeypatch):
    """56 files but the held-out document is shorter than --context: not 'a single document'."""
    import io
    from slmx.train.trainer import run_training
    _patch_fakes(monkeypatch)
    buf = io.StringIO()
    data = tmp_path / "corpus"
    data.mkdir()
    for i in range(56):
        (data / f"m{i}.py").write_text(f"x{i} = {i}\n" * 3)
    run_training(TrainConfig(**dict(_FAKE_CFG, context=60, max_steps=1, warmup=0, val_fraction=0.02)),
                 str(tmp_path / "a"), data=[str(data)], progress=False, sample_tokens=0, out=buf)
    text = buf.getvalue()
    note = [ln for ln in text.splitlines() if ln.startswith("note: no validation data")]
    assert note and "single document" not in note[0] and "fewer than one window of --context 60" in note[0], text


def test_full_disk_while_logging_names_the_log(tmp_path):
    from slmx.train.diagnostics import JsonlLog
    import errno

    class FullDisk:                                          # every write: ENOSPC, as on a full disk
        def write(self, s):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            pass
    log = JsonlLog(str(tmp_path / "train.jsonl"))
    log._f.close()
    log._f = FullDisk()
    with pytest.raises(OSError) as ei:
        log.write({"step": 1, "loss": 2.5})
    msg = str(ei.value)
    assert msg.startswith(str(tmp_path / "train.jsonl") + ": could not write the training log, the disk is full")
    assert "No space left on device" in msg, msg
    log._f = open(os.devnull, "w")
    log.close()
