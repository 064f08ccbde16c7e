"""Continuous batching: many sequences share one model, one batched forward per decode step.

A scheduler thread owns the model. Each step it
  1. drops cancelled sequences (their KV-cache slot is free for the next request at once),
  2. admits waiting requests into free slots (a pool of `parallel` KV caches allocated once),
  3. runs ONE `Transformer.forward_batch`: the next token of every decoding sequence (one row
     each, at its own position, with its own cache) plus prompt chunks of joining sequences
     (at most `prefill_chunk` rows in all while others decode, so their steps are not starved;
     up to max_batch when nobody decodes) - every weight is read once per step,
  4. samples each decoding row with that sequence's sampler.
Sequences join and leave between any two steps. Results go back through a per-sequence callback
(called on the scheduler thread; the HTTP server forwards them to its event loop).
"""
import collections
import contextlib
import inspect
import itertools
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..infer import KVCache, Sampler
from ..tokenizer import StreamDecoder


class QueueFull(Exception):
    """Every slot is busy and the waiting queue is at its bound."""


@dataclass
class TokenLogprob:
    """A generated token's log-probability under the model and the `top` most likely tokens."""
    token_id: int
    logprob: float
    top: list      # [(token_id, logprob)] most likely first


@dataclass
class Event:
    """What a sequence's callback receives.

    kind "text": new text (possibly ""), with `logprobs` of the tokens decoded since the last event;
    kind "done": the last text, finish_reason ("stop" | "length" | "abort": ended by drain(), the
    server shutting down) and usage;
    kind "error": message (the sequence ended because the engine failed).
    """
    kind: str
    text: str = ""
    logprobs: list = field(default_factory=list)
    finish_reason: str = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    message: str = None


@dataclass
class SamplingParams:
    """Per-request sampling: temperature 0 is greedy; top_k 0 / top_p 1 are off."""
    temperature: float = 1.0
    top_k: int = 40
    top_p: float = 1.0
    seed: int = None
    extra: dict = field(default_factory=dict)     # further Sampler options (penalties, min_p, ...)

    def sampler(self):
        kw = dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed)
        if self.extra:
            accepted = inspect.signature(Sampler).parameters
            unknown = [k for k in self.extra if k not in accepted]
            if unknown:
                raise ValueError(f"sampling option {unknown[0]!r} is not supported")
            kw.update(self.extra)
        return Sampler(**kw)


class _TextStream:
    """Token ids -> text, holding back what could still turn into a stop string."""

    def __init__(self, tokenizer, stop):
        self.decoder = StreamDecoder(tokenizer, skip_special=True)
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.pending = ""
        self.hit = None

    def push(self, tok):
        """-> text safe to emit now; sets .hit (and drops the rest) when a stop string appears."""
        piece = self.decoder.push(tok)
        if not piece:
            return ""
        self.pending += piece
        for s in self.stop:
            j = self.pending.find(s)
            if j >= 0:
                self.hit = s
                out, self.pending = self.pending[:j], ""
                return out
        if len(self.pending) > self.hold:
            cut = len(self.pending) - self.hold
            out, self.pending = self.pending[:cut], self.pending[cut:]
            return out
        return ""

    def finish(self):
        """The text still held back (nothing after a stop string)."""
        if self.hit is not None:
            return ""
        out = self.pending + self.decoder.flush()
        self.pending = ""
        return out


class Sequence:
    """One request's generation state. Created by Engine.submit."""

    _ids = itertools.count(1)

    def __init__(self, prompt_ids, max_tokens, sampler, stop, stop_ids, logprobs, on_event, tokenizer):
        self.id = next(Sequence._ids)
        self.prompt_ids = np.asarray(prompt_ids, dtype=np.int32)
        self.max_tokens = int(max_tokens)
        self.sampler = sampler
        # penalties look at previous ids (prompt + generated), when the sampler has any on
        self.uses_history = bool(getattr(sampler, "uses_history", False))
        self.history = [int(i) for i in prompt_ids] if self.uses_history else None
        self.stop_ids = stop_ids
        self.logprobs = logprobs          # None, or how many top alternatives (0..20)
        self.on_event = on_event
        self.text = _TextStream(tokenizer, stop)
        self.cache = None
        self.slot = None
        self.n_prefilled = 0
        self.next_token = None            # the sampled token fed at the next decode step
        self.n_generated = 0
        self.state = "waiting"            # waiting -> prefill -> decode -> done
        self.cancelled = False
        self.pending_logprobs = []
        self.t_submit = time.monotonic()
        self.t_first = None

    @property
    def pos(self):
        """Position of next_token (tokens already in the cache)."""
        return self.cache.length


class Engine:
    """Continuous-batching generation over one Transformer.

    transformer, tokenizer: the model; n_ctx: KV-cache positions per sequence; parallel: how many
    sequences decode together (KV caches allocated once); max_queue: requests allowed to wait for
    a slot (beyond it submit raises QueueFull); prefill_chunk: prompt tokens per step while other
    sequences are decoding. cache_factory(config, n_ctx) builds one slot's cache.
    """

    def __init__(self, transformer, tokenizer, n_ctx, parallel=4, max_queue=64, prefill_chunk=128,
                 cache_factory=KVCache):
        for name, v, lo in (("n_ctx", n_ctx, 2), ("parallel", parallel, 1), ("max_queue", max_queue, 0),
                            ("prefill_chunk", prefill_chunk, 1)):
            if isinstance(v, bool) or int(v) != v or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if parallel > transformer.max_batch:
            raise ValueError(f"parallel {parallel} exceeds the model's max_batch {transformer.max_batch}")
        self.model = transformer
        self.tokenizer = tokenizer
        self.n_ctx = int(n_ctx)
        self.parallel = int(parallel)
        self.max_queue = int(max_queue)
        self.prefill_chunk = int(prefill_chunk)
        self.caches = [cache_factory(transformer.cfg, self.n_ctx) for _ in range(self.parallel)]
        self.free_slots = list(range(self.parallel))[::-1]
        self.waiting = collections.deque()
        self.running = []                 # sequences holding a slot (prefill or decode)
        self._cv = threading.Condition()
        self._thread = None
        self._stop = False
        self._draining = False
        # statistics (read by /metrics)
        self.stats = collections.Counter()
        self._recent = collections.deque()     # (time, tokens generated in that step)
        self.last_batch = 0
        self.error = None

    # -- public, thread-safe -----------------------------------------------------------------

    def start(self):
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="slmx-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout=10.0):
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, prompt_ids, max_tokens, params=None, stop=(), logprobs=None, on_event=None,
               stop_ids=None):
        """Queue a generation; returns its Sequence. on_event(Event) is called on the engine thread.

        Raises ValueError for a prompt that does not fit (len(prompt) + max_tokens > n_ctx) and
        QueueFull when every slot is busy and max_queue requests already wait.
        """
        prompt_ids = [int(i) for i in prompt_ids]
        if not prompt_ids:
            raise ValueError("the prompt is empty (no tokens)")
        V = self.model.cfg.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= V:
            raise ValueError(f"prompt token ids must be in [0, {V})")
        if len(prompt_ids) >= self.n_ctx:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the context holds {self.n_ctx}")
        if isinstance(max_tokens, bool) or int(max_tokens) != max_tokens or max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        if len(prompt_ids) + max_tokens > self.n_ctx:
            raise ValueError(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds "
                             f"the context of {self.n_ctx} tokens")
        sampler = (params or SamplingParams()).sampler()
        bias_ids = getattr(sampler, "bias_ids", None)
        if bias_ids is not None and len(bias_ids) and int(np.max(bias_ids)) >= V:
            raise ValueError(f"logit_bias: token id {int(np.max(bias_ids))} is out of range [0, {V})")
        stop = [stop] if isinstance(stop, str) else list(stop or ())
        sids = frozenset(self.tokenizer.eos_ids if stop_ids is None else stop_ids)
        seq = Sequence(prompt_ids, max_tokens, sampler, stop, sids, logprobs,
                       on_event or (lambda e: None), self.tokenizer)
        with self._cv:
            if self._stop:
                raise RuntimeError("the engine is stopped")
            if self._draining:
                self.stats["rejected"] += 1
                raise QueueFull("the server is shutting down")
            # waiting requests first take the free slots (the loop admits them at its next step);
            # the rest wait in the queue, whose bound is max_queue (--queue)
            queued = len(self.waiting) - len(self.free_slots)
            if queued >= self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull(f"all {self.parallel} slots are taken and {queued} requests wait for one, "
                                f"the queue's bound (--queue {self.max_queue})")
            self.waiting.append(seq)
            self.stats["submitted"] += 1
            self._cv.notify_all()
        return seq

    def drain(self):
        """Shutting down: end every running and waiting sequence after the current step with the
        text so far and finish_reason "abort" (their callbacks get a normal "done" event), and
        refuse new submissions (QueueFull)."""
        with self._cv:
            self._draining = True
            self._cv.notify_all()

    def cancel(self, seq):
        """Stop a sequence (client gone); its slot is free before the next step."""
        with self._cv:
            if seq.state == "done":
                return
            seq.cancelled = True
            if seq.state == "waiting":
                try:
                    self.waiting.remove(seq)
                except ValueError:
                    pass
                seq.state = "done"
                self.stats["cancelled"] += 1
            self._cv.notify_all()

    def snapshot(self):
        """Counters and gauges for /metrics."""
        with self._cv:
            now = time.monotonic()
            while self._recent and now - self._recent[0][0] > 10.0:
                self._recent.popleft()
            recent = sum(n for _, n in self._recent)
            span = max(1e-9, min(10.0, now - self._recent[0][0])) if self._recent else 1.0
            kv_used = sum(s.cache.length for s in self.running if s.cache is not None)
            return dict(
                stats=dict(self.stats), queue_depth=len(self.waiting), slots_total=self.parallel,
                slots_busy=len(self.running), kv_used_tokens=kv_used,
                kv_capacity_tokens=self.parallel * self.n_ctx,
                tokens_per_s=recent / span if self._recent else 0.0, last_batch=self.last_batch,
                alive=self._thread is not None and self._thread.is_alive())

    # -- the scheduler thread ------------------------------------------------------------------

    def _loop(self):
        while True:
            with self._cv:
                self._abort_if_draining()
                self._reap()
                self._admit()
                while not self.running and not self._stop:
                    self._cv.wait()
                    self._abort_if_draining()
                    self._reap()
                    self._admit()
                if self._stop:
                    for s in list(self.running) + list(self.waiting):
                        self._finish(s, None, error="the server is shutting down")
                    return
                batch = list(self.running)
            try:
                self._step(batch)
            except Exception as e:        # a failed step ends its sequences, not the server
                self.error = f"{type(e).__name__}: {e}"
                self.stats["errors"] += 1
                with self._cv:
                    for s in batch:
                        if s.state != "done":
                            self._finish(s, None, error=self.error)

    def _abort_if_draining(self):
        """(lock held) drain(): end what runs or waits with finish_reason "abort"."""
        if not self._draining:
            return
        for s in list(self.running) + list(self.waiting):
            if not s.cancelled:          # a cancelled one is reaped as such
                self._finish(s, "abort")
        self.waiting.clear()

    def _reap(self):
        """(lock held) free the slots of cancelled or finished sequences."""
        keep = []
        for s in self.running:
            if s.cancelled and s.state != "done":
                s.state = "done"
                self.stats["cancelled"] += 1
            if s.state == "done":
                self._release(s)
            else:
                keep.append(s)
        self.running = keep

    def _release(self, s):
        if s.slot is not None:
            self.free_slots.append(s.slot)
            s.slot, s.cache = None, None

    def _admit(self):
        while self.free_slots and self.waiting:
            s = self.waiting.popleft()
            s.slot = self.free_slots.pop()
            s.cache = self.caches[s.slot]
            s.cache.reset()
            s.state = "prefill"
            self.running.append(s)

    def _step(self, batch):
        """One forward: the next token of every decoding sequence plus prompt chunks of joining
        sequences (FIFO, at most prefill_chunk rows in all while others decode, else up to
        max_batch), all as rows of one forward_batch."""
        decoding = [s for s in batch if s.state == "decode" and not s.cancelled]
        prefilling = [s for s in batch if s.state == "prefill" and not s.cancelled]
        seqs = list(decoding)
        ids = [s.next_token for s in decoding]
        pos = [s.pos for s in decoding]
        budget = min(self.prefill_chunk if decoding else self.model.max_batch,
                     self.model.max_batch - len(decoding))
        joining = []
        for s in prefilling:
            if budget <= 0:
                break
            p0 = s.n_prefilled
            n = min(budget, s.prompt_ids.size - p0, getattr(s.cache, "max_chunk", budget))
            seqs.append(s)
            ids.append(s.prompt_ids[p0:p0 + n])
            pos.append(p0)
            joining.append(s)
            budget -= n
        if not seqs:
            return
        # the model may also be used by other threads (a shared slmx.api.LanguageModel): its
        # workspaces and the returned logits buffer are ours for the step
        with getattr(self.model, "lock", None) or contextlib.nullcontext():
            self._run_step(seqs, ids, pos, decoding, joining)

    def _run_step(self, seqs, ids, pos, decoding, joining):
        logits = self.model.forward_batch(ids, pos, [s.cache for s in seqs])
        self.last_batch = len(seqs)
        self.stats["forward_steps"] += 1               # every batched forward (prompt chunks too)
        if decoding:                                   # those that decoded: rows / steps = mean decode batch
            self.stats["decode_steps"] += 1
            self.stats["decode_rows"] += len(decoding)
        for b, s in enumerate(decoding):
            self._accept(s, logits[b])
        n = len(decoding)
        for j, s in enumerate(joining):
            b = len(decoding) + j
            s.n_prefilled += ids[b].size
            self.stats["prompt_tokens"] += ids[b].size
            if s.n_prefilled == s.prompt_ids.size:
                s.state = "decode"
                self._accept(s, logits[b])
                n += 1
        if n:
            with self._cv:
                self._recent.append((time.monotonic(), n))

    def _logprob(self, s, row, tok):
        row = np.asarray(row, dtype=np.float32)
        m = float(row.max())
        lse = m + float(np.log(np.exp(row - m, dtype=np.float32).sum(dtype=np.float64)))
        top = []
        if s.logprobs:
            k = min(int(s.logprobs), row.size)
            idx = np.argpartition(row, -k)[-k:]
            idx = idx[np.argsort(-row[idx], kind="stable")]
            top = [(int(i), float(row[i]) - lse) for i in idx]
        return TokenLogprob(int(tok), float(row[tok]) - lse, top)

    def _accept(self, s, row):
        """Sample the next token of s from its logits row; emit text; finish when it ends."""
        if s.t_first is None:
            s.t_first = time.monotonic()
        tok = s.sampler(row, s.history) if s.uses_history else s.sampler(row)
        if tok in s.stop_ids:
            self._finish(s, "stop")
            return
        s.n_generated += 1
        if s.uses_history:
            s.history.append(tok)
        self.stats["generated_tokens"] += 1
        if s.logprobs is not None:
            s.pending_logprobs.append(self._logprob(s, row, tok))
        text = s.text.push(tok)
        if s.text.hit is not None:
            self._emit_text(s, text)
            self._finish(s, "stop")
            return
        if s.n_generated >= s.max_tokens or s.pos >= self.n_ctx:
            self._emit_text(s, text)
            self._finish(s, "length")
            return
        if text or s.pending_logprobs:
            self._emit_text(s, text)
        s.next_token = tok

    def _emit_text(self, s, text):
        lp, s.pending_logprobs = s.pending_logprobs, []
        if text or lp:
            s.on_event(Event("text", text=text, logprobs=lp))

    def _finish(self, s, reason, error=None):
        if s.state == "done":
            return
        s.state = "done"
        if error is not None:
            s.on_event(Event("error", message=error))
            return
        tail = s.text.finish()
        lp, s.pending_logprobs = s.pending_logprobs, []
        self.stats["completed"] += 1
        s.on_event(Event("done", text=tail, logprobs=lp, finish_reason=reason,
                         prompt_tokens=int(s.prompt_ids.size), completion_tokens=s.n_generated))
