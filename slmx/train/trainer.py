"""The training loop: sampled windows -> forward/backward -> clip -> optimizer step, with
validation, a JSONL log, a progress bar, warnings, checkpoints and exact resumption.

    cfg = TrainConfig(preset="tiny", max_steps=600)
    result = run_training(cfg, out_dir="runs/tiny")              # stdlib corpus, trains a BPE
    result = run_training(cfg, out_dir=None, resume="runs/tiny")   # continue where it stopped

One optimizer step with grad_accum micro-batches: draw all micro-batches, count their unmasked
targets (targets >= 0) n_total, zero the gradients, run forward_backward on each with
loss_scale = 1 / n_total (the gradients add up to those of one big batch), clip by global norm
(the norm before clipping is logged), step the optimizer with lr = schedule.lr_at(step).
Everything that decides the next losses -- weights, optimizer moments, the sampler's RNG state,
the step (the schedule is a pure function of it) -- goes into each checkpoint, so resuming
reproduces the uninterrupted run's losses exactly.
"""
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import numpy as np

from . import checkpoint as ckpt
from .data import (WindowSampler, build_token_files, resolve_data_files, split_documents, document_ids,
                   unigram_entropy, validation_batches, DEFAULT_MAX_DOC_BYTES, DEFAULT_VAL_FRACTION)
from .diagnostics import (JsonlLog, LossMonitor, current_rss, format_budget, memory_budget, peak_rss,
                          reset_peak_rss, truncate_log)
from .schedules import Schedule, make_schedule

LOG_NAME = "train.jsonl"
EOS_TEXT = "<|endoftext|>"


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; training stopped."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in every checkpoint)."""
    preset: str = "tiny"
    vocab_size: int = 8192
    batch_size: int = 8
    context: Optional[int] = None          # default: the preset's context_length
    grad_accum: int = 1
    max_steps: Optional[int] = None        # None: fitted to max_minutes after a few timed steps
    max_minutes: Optional[float] = None
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup: int = 50
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    weight_decay: float = 0.1
    clip: float = 1.0                      # <= 0: no clipping (the norm is still logged)
    optimizer: str = "adamw"
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    momentum: float = 0.9
    bf16: bool = False
    threads: Optional[int] = None
    eval_every: int = 100
    eval_tokens: int = 32768
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    seed: int = 0
    val_fraction: float = DEFAULT_VAL_FRACTION
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES
    mtp: int = 0                           # extra heads predicting tokens t+2 .. t+1+mtp
    mtp_weight: float = 0.3                # their loss weight: loss = main + mtp_weight * sum(heads)

    def validate(self):
        for name in ("batch_size", "grad_accum", "vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.context is not None and self.context <= 0:
            raise ValueError(f"context must be positive, got {self.context}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        if self.optimizer not in ("adamw", "adam", "sgd"):
            raise ValueError(f"unknown optimizer {self.optimizer!r} (adamw, adam or sgd)")
        if int(self.mtp) != self.mtp or not 0 <= self.mtp <= 16:
            raise ValueError(f"mtp must be an integer in 0..16, got {self.mtp}")
        if not (self.mtp_weight >= 0 and math.isfinite(self.mtp_weight)):
            raise ValueError(f"mtp_weight must be a finite number >= 0, got {self.mtp_weight}")
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number >= 0, got {self.lr}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("eval_every", "ckpt_every", "keep_checkpoints", "warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.eval_tokens <= 0:
            raise ValueError(f"eval_tokens must be positive, got {self.eval_tokens}")
        if not (math.isfinite(self.clip) and self.clip >= 0):
            raise ValueError(f"clip must be a finite number >= 0 (0 = off), got {self.clip}")
        make_schedule(self.schedule, self.lr, self.max_steps or 10 ** 9, self.warmup, self.min_lr_ratio,
                      self.decay_fraction)            # raises ValueError on an unknown name or bad values
        return self

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainResult:
    """What a training run ends with."""
    out_dir: Optional[str]
    step: int
    stop_reason: str                        # "max_steps", "time", "stop_step"
    losses: list = field(default_factory=list)        # (step, loss) of this run's steps
    val: list = field(default_factory=list)           # (step, val_loss) of this run's evaluations
    checkpoint: Optional[str] = None
    elapsed_s: float = 0.0                  # seconds of training in this session (not before a resume)
    tokens: int = 0                         # tokens trained in this session

    @property
    def final_loss(self):
        return self.losses[-1][1] if self.losses else float("nan")

    @property
    def final_val_loss(self):
        return self.val[-1][1] if self.val else float("nan")


class _sigint_deferred:
    """Hold SIGINT (Ctrl-C) back for the duration of a `with` block (main thread, POSIX)."""

    def __enter__(self):
        import signal
        import threading
        self._on = (hasattr(signal, "pthread_sigmask")
                    and threading.current_thread() is threading.main_thread())
        if self._on:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        return self

    def __exit__(self, *exc):
        if self._on:
            import signal
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _weight_views(model):
    """name -> the parameter's view of the flat buffer (no copy; state_tensors() when the model
    has no named layout)."""
    buf = model.buf
    if hasattr(buf, "layout") and hasattr(buf, "views"):
        return {name: buf.views(name) for name, _, _ in buf.layout}
    return model.state_tensors()


def _default_clip_grad_norm(buf, max_norm, threads=None):
    from .optim import clip_grad_norm
    return clip_grad_norm(buf, max_norm, threads=threads)


def _grad_norm_numpy(buf):
    g = buf.grads
    return float(np.sqrt(np.dot(g.astype(np.float64), g.astype(np.float64))))


class Trainer:
    """Runs optimizer steps on `model` (the TrainableLM interface) with `optimizer`.

    sampler: a WindowSampler (or anything with next_batch/state_dict/load_state_dict);
    val_batches: fixed list of (inputs, targets) for validation; out_dir: where train.jsonl and
    checkpoints go (None: neither). clip_grad_norm(buf, max_norm) -> norm before clipping
    (default: slmx.train.optim's fused kernel). state_extra: JSON-able dict added to every
    checkpoint's state.json. max_seconds: wall-clock limit of train().
    """

    def __init__(self, model, optimizer, schedule, sampler, val_batches=(), config=None, out_dir=None,
                 tokenizer_path=None, state_extra=None, clip_grad_norm=None, progress=True, max_seconds=None,
                 out=None):
        self.model, self.optimizer, self.schedule, self.sampler = model, optimizer, schedule, sampler
        self.val_batches = list(val_batches)
        self.config = config or TrainConfig(max_steps=schedule.max_steps)
        self.out_dir, self.tokenizer_path = out_dir, tokenizer_path
        self.state_extra = dict(state_extra or {})
        if clip_grad_norm is None:
            threads = self.config.threads
            clip_grad_norm = lambda buf, max_norm: _default_clip_grad_norm(buf, max_norm, threads)  # noqa: E731
        self._clip = clip_grad_norm
        self.progress, self.max_seconds = progress, max_seconds
        self.out = out or sys.stdout
        self.monitor = LossMonitor()
        self.step = 0
        self.tokens_seen = 0
        self.elapsed_before = 0.0           # seconds of training before a resume
        self.stop_at = None                 # end at this step instead of the schedule's max_steps
        self.last_checkpoint = None
        self.saved_step = None              # the step of the newest checkpoint this trainer wrote or restored
        self.last_metrics = {}
        self._log = None
        self._bar = None
        self.fit_steps_to_time = self.config.max_steps is None and max_seconds is not None

    # -- state ----------------------------------------------------------------------------

    @property
    def max_steps(self):
        """The step training ends at: stop_at when set (a resumed run stopping early or going on
        past its schedule), else the schedule's horizon."""
        return self.stop_at if self.stop_at is not None else self.schedule.max_steps

    @property
    def log_path(self):
        return os.path.join(self.out_dir, LOG_NAME) if self.out_dir else None

    def state(self):
        """The JSON part of a checkpoint."""
        cfg = self.config.to_dict()
        return dict(self.state_extra, train_config=cfg, model_config=self.model.cfg.to_dict(),
                    schedule=self.schedule.to_dict(), optimizer={"name": self.config.optimizer},
                    sampler=self.sampler.state_dict(), monitor=self.monitor.state_dict(),
                    metrics=self.last_metrics, tokens_seen=self.tokens_seen,
                    elapsed_s=self.elapsed_before + self._elapsed(),
                    fit_steps_to_time=self.fit_steps_to_time)

    def save_checkpoint(self):
        """Write a checkpoint of the current step (needs out_dir) -> its folder."""
        if not self.out_dir:
            return None
        p = ckpt.save_checkpoint(self.out_dir, self.step, _weight_views(self.model),
                                 self.optimizer.state_dict(), self.state(), self.tokenizer_path,
                                 keep=self.config.keep_checkpoints)
        self.last_checkpoint, self.saved_step = p, self.step
        return p

    def restore(self, checkpoint):
        """Continue from a Checkpoint (slmx.train.checkpoint.load_checkpoint): weights, optimizer
        moments, sampler RNG, schedule, step. The log is cut back to the checkpoint's step."""
        st = checkpoint.state
        self.model.load_state_tensors(checkpoint.tensors)
        self.optimizer.load_state_dict(checkpoint.optimizer_state)
        self.sampler.load_state_dict(st["sampler"])
        self.monitor.load_state_dict(st.get("monitor") or {})
        self.schedule = Schedule.from_dict(st["schedule"])
        self.step = int(st["step"])
        self.tokens_seen = int(st.get("tokens_seen", 0))
        self.elapsed_before = float(st.get("elapsed_s", 0.0))
        self.last_metrics = st.get("metrics") or {}
        self.fit_steps_to_time = bool(st.get("fit_steps_to_time", False)) and self.max_seconds is not None
        self.last_checkpoint, self.saved_step = checkpoint.path, self.step
        if self.log_path:
            truncate_log(self.log_path, self.step)

    # -- one step -------------------------------------------------------------------------

    def train_step(self):
        """One optimizer step -> dict(loss, grad_norm, lr, tokens). Raises TrainingDiverged on a
        non-finite loss or gradient norm (the weights are left as they were before the step)."""
        lr = float(self.schedule.lr_at(self.step))
        batches = [self.sampler.next_batch() for _ in range(self.config.grad_accum)]
        n_total = sum(int(np.count_nonzero(t >= 0)) for _, t in batches)
        if n_total == 0:
            raise ValueError(f"step {self.step + 1}: every target of the batch is masked")
        self.model.zero_grad()
        loss_sum = 0.0
        scale = 1.0 / n_total
        for x, y in batches:
            ls, _ = self.model.forward_backward(x, y, scale)
            loss_sum += float(ls)
        loss = loss_sum / n_total
        mtp = getattr(self.model, "mtp_losses", None)
        if mtp and not math.isfinite(sum(ls for ls, _ in mtp)):
            loss = float("nan")
        if not math.isfinite(loss):
            raise TrainingDiverged(self._diverged_message("loss", loss))
        if self.config.clip and self.config.clip > 0:
            norm = float(self._clip(self.model.buf, float(self.config.clip)))
        else:
            norm = _grad_norm_numpy(self.model.buf)
        if not math.isfinite(norm):
            raise TrainingDiverged(self._diverged_message("gradient norm", norm))
        n_tok = sum(int(x.size) for x, _ in batches)
        with _sigint_deferred():           # the update and the step count change together
            self.optimizer.step(lr)
            self.step += 1
            self.tokens_seen += n_tok
        r = {"loss": loss, "grad_norm": norm, "lr": lr, "tokens": n_tok}
        if mtp:     # the last micro-batch's per-head mean losses
            r["mtp_loss"] = [round(ls / n, 5) if n else None for ls, n in mtp]
        return r

    def _diverged_message(self, what, value):
        last = self.last_checkpoint
        where = (f"the last good checkpoint is {last} (resume with --resume {self.out_dir})" if last
                 else "no checkpoint had been written yet")
        return (f"training stopped at step {self.step + 1}: the {what} is {value} (diverged); "
                f"{where}. Try a lower --lr, more --warmup or --clip.")

    def evaluate(self):
        """(val_loss, val_ppl) over the fixed validation batches; (nan, nan) when there are none."""
        tot, n = 0.0, 0
        for x, y in self.val_batches:
            ls, k = self.model.loss(x, y)
            tot += float(ls)
            n += int(k)
        if n == 0:
            return float("nan"), float("nan")
        v = tot / n
        return v, (math.exp(v) if v < 700 else float("inf"))

    # -- the loop -------------------------------------------------------------------------

    def _elapsed(self):
        t0 = getattr(self, "_t_start", None)
        return 0.0 if t0 is None else time.perf_counter() - t0

    def _write(self, msg):
        if self._bar is not None:
            self._bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def _fit_max_steps(self, sec_per_step, include_eval=True):
        """Set max_steps so that training ends near max_seconds at sec_per_step (plus the share
        of validation when include_eval; measured rates already contain it)."""
        c = self.config
        eval_cost = 0.0
        if include_eval and c.eval_every:
            tok_per_step = c.batch_size * c.grad_accum * getattr(self.sampler, "context", 1)
            n_val = sum(int(x.size) for x, _ in self.val_batches)
            eval_cost = 0.35 * n_val / max(1, tok_per_step) / c.eval_every   # a forward ~ 1/3 of a step
        remaining = self.max_seconds - self._elapsed()
        n = max(self.step + 1, self.step + int(remaining / (sec_per_step * (1.0 + eval_cost))))
        old = self.schedule.max_steps
        self.schedule = Schedule.from_dict(dict(self.schedule.to_dict(), max_steps=n))
        self.config.max_steps = n
        self.fit_steps_to_time = False
        msg = f"timing: {sec_per_step:.3f} s/step -> max_steps {n} to fit {self.max_seconds / 60:.1f} minutes"
        self._write(msg)
        if self._log:
            self._log.write({"event": "fit_max_steps", "step": self.step, "message": msg, "previous": old})
        if self._bar is not None:
            self._bar.total = n
            self._bar.refresh()

    def train(self, stop_step=None):
        """Train until max_steps, the time limit, or stop_step (then a checkpoint is written as
        if the run had been interrupted there) -> TrainResult."""
        c = self.config
        if self.out_dir:
            os.makedirs(self.out_dir, exist_ok=True)
            ckpt.clean_temporaries(self.out_dir)
            self._log = JsonlLog(self.log_path)
        self._t_start = time.perf_counter()
        result = TrainResult(self.out_dir, self.step, "max_steps")
        tokens0 = self.tokens_seen
        self._bar = self._make_bar()
        step_times = []
        refits, fit_t, fit_step = [], 0.0, 0
        reason = "max_steps"
        if self._log and self.step:
            self._log.write({"event": "resume", "step": self.step, "message": f"resumed at step {self.step}"})
        try:
            while self.step < self.max_steps:
                if stop_step is not None and self.step >= stop_step:
                    reason = "stop_step"
                    break
                snapshot, step_before = self.sampler.state_dict(), self.step
                t0 = time.perf_counter()
                try:
                    r = self.train_step()
                except TrainingDiverged as e:
                    if self._log:
                        self._log.write({"event": "diverged", "step": self.step + 1, "message": str(e)})
                    raise
                except KeyboardInterrupt:
                    if self.step == step_before:    # the step did not happen: draw its batches again
                        self.sampler.load_state_dict(snapshot)
                    raise
                dt = time.perf_counter() - t0
                step_times.append(dt)
                if self.fit_steps_to_time and len(step_times) == 4:
                    self._fit_max_steps(float(np.median(step_times[1:])))
                    refits = [0.1, 0.2]    # re-fit while the cosine is still flat (lr changes little)
                    fit_t, fit_step = self._elapsed(), self.step
                elif refits and self._elapsed() >= refits[0] * self.max_seconds and self.step > fit_step:
                    refits.pop(0)
                    self._fit_max_steps((self._elapsed() - fit_t) / (self.step - fit_step), include_eval=False)
                time_up = self.max_seconds is not None and self._elapsed() >= self.max_seconds
                rec = {"step": self.step, "loss": r["loss"], "lr": r["lr"], "grad_norm": r["grad_norm"],
                       "tokens_per_s": r["tokens"] / dt if dt > 0 else 0.0, "tokens": self.tokens_seen,
                       "elapsed_s": round(self.elapsed_before + self._elapsed(), 3)}
                if "mtp_loss" in r:
                    rec["mtp_loss"] = r["mtp_loss"]
                final = self.step >= self.max_steps or time_up
                if self.val_batches and ((c.eval_every and self.step % c.eval_every == 0) or final):
                    vl, vp = self.evaluate()
                    rec["val_loss"], rec["val_ppl"] = vl, vp
                    result.val.append((self.step, vl))
                    self._write(f"step {self.step}: val_loss {vl:.4f}, val_ppl {vp:.2f}")
                for w in self.monitor.update(self.step, r["loss"], r["grad_norm"]):
                    self._write("warning: " + w)
                    if self._log:
                        self._log.write({"event": "warning", "step": self.step, "message": w})
                self.last_metrics = {k: rec[k] for k in ("loss", "grad_norm", "lr", "val_loss", "val_ppl")
                                     if k in rec}
                if self._log:
                    self._log.write(rec)
                result.losses.append((self.step, r["loss"]))
                self._update_bar(rec)
                if c.ckpt_every and self.step % c.ckpt_every == 0 and self.step < self.max_steps:
                    with _sigint_deferred():     # a Ctrl-C now is handled once the checkpoint is complete
                        self.save_checkpoint()
                if time_up:
                    reason = "time"
                    break
            if self.out_dir and self.saved_step != self.step:
                self.save_checkpoint()
        except KeyboardInterrupt:
            if self.out_dir and self.step and self.saved_step == self.step:
                self._write(f"interrupted: step {self.step} is already in {self.last_checkpoint}")
            elif self.out_dir and self.step:
                self._write(f"interrupted: writing a checkpoint of step {self.step}")
                self.save_checkpoint()
            raise
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            if self._log:
                self._log.close()
        result.step, result.stop_reason = self.step, reason
        result.checkpoint, result.elapsed_s = self.last_checkpoint, self._elapsed()
        result.tokens = self.tokens_seen - tokens0          # this session's (elapsed_s is this session's too)
        return result

    def _make_bar(self):
        if not self.progress:
            return None
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover
            return None
        total = None if self.fit_steps_to_time else self.max_steps      # known once the steps are timed
        return tqdm(total=total, initial=self.step, desc="train", unit="step", file=sys.stderr,
                    dynamic_ncols=True, mininterval=0.5)

    def _update_bar(self, rec):
        if self._bar is None:
            return
        self._bar.update(1)
        self._bar.set_postfix_str(f"loss {rec['loss']:.3f} | {rec['tokens_per_s']:,.0f} tok/s | "
                                  f"lr {rec['lr']:.2e} | gnorm {rec['grad_norm']:.2f}", refresh=False)

    # -- memory ---------------------------------------------------------------------------

    def memory_budget(self, baseline_bytes=0, data_bytes=0):
        c = self.config
        T = self.sampler.context if hasattr(self.sampler, "context") else 0
        n = int(self.model.buf.n_params)
        opt = optimizer_state_bytes(self.optimizer, c.optimizer, n, c.momentum)
        return memory_budget(n, opt, self.model.activation_bytes(c.batch_size, T), baseline_bytes, data_bytes)


def optimizer_state_bytes(optimizer, name, n_params, momentum=0.9):
    """Bytes of the optimizer's state arrays (what it holds, or what it will hold after step 1)."""
    have = 0
    try:
        have = sum(v.nbytes for v in optimizer.state_dict().values() if isinstance(v, np.ndarray))
    except Exception:
        pass
    expect = {"adamw": 8, "adam": 8, "sgd": 4 if momentum else 0}.get(name, 0) * n_params
    return max(have, expect)


# --- building the pieces -------------------------------------------------------------------------

def make_optimizer(name, buf, lr, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, momentum=0.9, threads=None):
    """AdamW (decoupled decay where buf.decay_mask) / Adam / SGD with momentum (slmx.train.optim)."""
    from . import optim
    if name == "adamw":
        return optim.AdamW(buf, lr, betas=betas, eps=eps, weight_decay=weight_decay, threads=threads)
    if name == "adam":
        return optim.Adam(buf, lr, betas=betas, eps=eps, threads=threads)
    if name == "sgd":
        return optim.SGD(buf, lr, momentum=momentum, threads=threads)
    raise ValueError(f"unknown optimizer {name!r} (adamw, adam or sgd)")


def check_preset(name):
    """ValueError unless `name` is a model preset of slmx.train.model.PRESETS."""
    from .model import PRESETS
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")


def build_model(config, vocab_size):
    """A TrainableLM for config.preset with the tokenizer's vocabulary and the training context."""
    from .model import TrainableLM, make_config
    over = {"context_length": int(config.context)} if config.context else {}
    cfg = make_config(config.preset, vocab_size=int(vocab_size), **over)
    return TrainableLM(cfg, seed=config.seed, threads=config.threads, bf16=config.bf16,
                       mtp=int(getattr(config, "mtp", 0) or 0), mtp_weight=float(getattr(config, "mtp_weight", 0.3)))


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def load_tokenizer(path):
    """The tokenizer of a tokenizer.json (HF format)."""
    from ..tokenizer import Tokenizer
    if hasattr(Tokenizer, "from_json"):
        return Tokenizer.from_json(path)
    from ..tokenizer import hf_json
    return hf_json.load_json(path)


def check_tokenizer_file(path):
    """A --tokenizer file, read before anything is written: the tokenizer, or a FormatError /
    FileNotFoundError naming the user's path (not the copy in the output folder)."""
    from ..errors import FormatError
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--tokenizer {path}: no such file")
    try:
        return load_tokenizer(path)
    except FormatError as e:
        msg = " ".join(str(e).split())
        if not msg.startswith(os.fspath(path)):
            msg = f"{path}: not a usable tokenizer.json ({msg})"
        raise FormatError(msg) from e


def save_tokenizer(tok, path):
    """Write `tok` as an HF tokenizer.json."""
    if hasattr(tok, "save_json"):
        return tok.save_json(path)
    from ..tokenizer import hf_json
    return hf_json.save_json(tok, path)


def _files_key(files):
    return [[p, os.path.getsize(p), os.stat(p).st_mtime_ns] for p in files]


def prepare_tokenizer(out_dir, files, vocab_size, tokenizer=None, max_doc_bytes=DEFAULT_MAX_DOC_BYTES,
                      val_fraction=DEFAULT_VAL_FRACTION, out=sys.stdout, progress=True):
    """OUT/tokenizer.json: copied from `tokenizer` (a tokenizer.json path) when given, else a
    byte-level BPE of vocab_size trained on the files that hold training documents (reused
    when OUT already has one trained on the same files). Returns (tokenizer, path)."""
    import shutil
    path = os.path.join(out_dir, "tokenizer.json")
    if tokenizer:
        if os.path.abspath(tokenizer) != os.path.abspath(path):
            shutil.copyfile(tokenizer, path)
        return load_tokenizer(path), path
    docs = document_ids(files, max_doc_bytes)
    val = split_documents([d for d, _, _ in docs], val_fraction)
    train_files = sorted({p for d, p, _ in docs if d not in val})
    key = {"files": _files_key(train_files), "vocab_size": int(vocab_size), "special_tokens": [EOS_TEXT]}
    key_path = os.path.join(out_dir, "tokenizer.key.json")
    if os.path.exists(path) and os.path.exists(key_path):
        try:
            with open(key_path) as f:
                if json.load(f) == key:
                    print(f"tokenizer: reusing {path}", file=out, flush=True)
                    return load_tokenizer(path), path
        except (OSError, ValueError):
            pass
    from ..tokenizer.train_bpe import train_bpe
    n_bytes = sum(os.path.getsize(p) for p in train_files)
    print(f"tokenizer: training a byte-level BPE of {vocab_size} tokens on {len(train_files)} files "
          f"({n_bytes / 1e6:.1f} MB)", file=out, flush=True)
    t0 = time.perf_counter()
    import pathlib
    tok = train_bpe([pathlib.Path(p) for p in train_files], vocab_size, special_tokens=[EOS_TEXT],
                    progress=progress)
    tmp = path + f".tmp-{os.getpid()}"
    save_tokenizer(tok, tmp)
    os.replace(tmp, path)
    with open(key_path, "w") as f:
        json.dump(key, f)
    print(f"tokenizer: {tok.vocab_size} tokens in {time.perf_counter() - t0:.1f} s -> {path}", file=out,
          flush=True)
    if tok.vocab_size < vocab_size:
        print(f"note: the vocabulary reached {tok.vocab_size:,} tokens, not --vocab-size {vocab_size:,} (the "
              f"corpus supports no more merges)", file=out, flush=True)
    return load_tokenizer(path), path


def _resolve_threads(threads):
    try:
        from .._kernels import cpu
        return int(cpu.resolve_threads(threads))
    except Exception:
        return int(threads or os.cpu_count() or 1)


def run_training(config, out_dir=None, data=None, tokenizer=None, resume=None, progress=True,
                 sample_prompt="def", sample_tokens=120, overrides=None, out=sys.stdout):
    """The whole of `slmx train`: data, tokenizer, token files, model, loop, checkpoints, sample.

    config: TrainConfig (ignored on resume, where the checkpoint's is used with `overrides`,
    a dict of TrainConfig fields such as threads, max_minutes, max_steps, eval_every);
    data: list of files/folders/globs (None: the stdlib corpus); tokenizer: a tokenizer.json to
    use instead of training one; resume: a checkpoint folder or training output folder.
    Returns TrainResult. Raises TrainingDiverged on NaN/inf.
    """
    t_run = time.perf_counter()
    ck_dir = st = stop_at = None
    if resume:
        ck_dir, st = ckpt.read_state(resume)        # the tensors are loaded once the model exists
        config = TrainConfig.from_dict(st["train_config"])
        overrides = dict(overrides or {})
        if st.get("fit_steps_to_time"):       # the horizon was never fixed: --max-steps fixes it now
            config.max_steps = None
        else:                                 # the run's schedule stays; --max-steps only says where to stop
            stop_at = overrides.pop("max_steps", None)
            horizon = int(st["schedule"]["max_steps"])
            config.max_steps = horizon
        for k, v in overrides.items():
            if v is not None:
                setattr(config, k, v)
        if stop_at is not None and int(stop_at) <= 0:
            raise ValueError(f"max_steps must be positive, got {stop_at}")
        out_dir = out_dir or os.path.dirname(os.path.abspath(ck_dir))
        end = stop_at or config.max_steps or (None if st.get("fit_steps_to_time") else horizon)
        if end is not None and int(st["step"]) >= end:
            raise ValueError(f"nothing to train: {ck_dir} is at step {st['step']} and the run ends at step {end}; "
                             f"give --max-steps N > {st['step']} to train further")
        files = st["data"]["files"]
        missing = [p for p in files if not os.path.exists(p)]
        if missing:
            raise OSError(f"cannot resume: training file {missing[0]} is gone")
        print(f"resuming from {ck_dir} at step {st['step']}", file=out, flush=True)
    else:
        if not out_dir:
            raise ValueError("--out DIR is required (or --resume DIR)")
        if ckpt.latest_checkpoint(out_dir) and os.path.exists(ckpt.latest_checkpoint(out_dir)):
            raise ValueError(f"{out_dir} already holds a training run; continue it with --resume {out_dir} "
                             f"or choose another --out")
        config.validate()                     # options first: nothing is read or written before
        check_preset(config.preset)
        files = resolve_data_files(data)
        if tokenizer:
            check_tokenizer_file(tokenizer)   # before the output folder exists
    config.validate()
    check_preset(config.preset)
    if config.max_steps is None and config.max_minutes is None:
        config.max_minutes = 10.0
        print("no --max-steps or --max-minutes: training for 10 minutes", file=out, flush=True)
    if st is None and config.max_steps and config.warmup >= config.max_steps:
        print(f"warning: --warmup {config.warmup} >= --max-steps {config.max_steps}: the learning rate never "
              f"reaches its peak --lr {config.lr:g}", file=out, flush=True)
    threads = _resolve_threads(config.threads)
    os.makedirs(out_dir, exist_ok=True)
    n_bytes = sum(os.path.getsize(p) for p in files)
    print(f"data: {len(files)} files, {n_bytes / 1e6:.1f} MB" + ("" if data or resume else
          " (the Python standard library's .py files, no tests)"), file=out, flush=True)

    # tokenizer
    if st is not None:
        tok_path = os.path.join(out_dir, "tokenizer.json")
        ck_tok = os.path.join(ck_dir, st.get("tokenizer_file") or ckpt.TOKENIZER)
        if os.path.abspath(ck_tok) != os.path.abspath(tok_path):
            import shutil
            shutil.copyfile(ck_tok, tok_path)
        tok = load_tokenizer(tok_path)
    else:
        tok, tok_path = prepare_tokenizer(out_dir, files, config.vocab_size, tokenizer, config.max_doc_bytes,
                                          config.val_fraction, out, progress)
    tok_sha = _sha256_file(tok_path)

    # token files
    t0 = time.perf_counter()
    data_dir = os.path.join(out_dir, "data")
    td = build_token_files(files, tok, data_dir, config.val_fraction, config.max_doc_bytes, tok_sha,
                           workers=min(threads, 8), progress=progress)
    if st is not None and st["data"].get("fingerprint") != td.fingerprint:
        raise ValueError("cannot resume: the training data or tokenizer changed since the checkpoint "
                         "(token files differ)")
    ratio = n_bytes / max(1, td.train.n_tokens + td.val.n_tokens)
    print(f"tokens: train {td.train.n_tokens:,} ({td.train.n_docs} documents), validation "
          f"{td.val.n_tokens:,} ({td.val.n_docs} documents), {td.meta['dtype']}, {ratio:.2f} bytes/token "
          f"[{time.perf_counter() - t0:.1f} s]", file=out, flush=True)
    H = unigram_entropy(td.train.tokens, tok.vocab_size)
    print(f"unigram entropy of the training tokens: {H:.4f} nats/token (the loss of a model that knows "
          f"only token frequencies)", file=out, flush=True)

    # the model and its optimizer (baseline: the process before them)
    import gc
    gc.collect()
    baseline = current_rss()
    model = build_model(config, tok.vocab_size)
    T = int(config.context or model.cfg.context_length)
    if T > model.cfg.context_length:
        raise ValueError(f"--context {T} exceeds the model's context length {model.cfg.context_length}")
    opt = make_optimizer(config.optimizer, model.buf, config.lr, config.weight_decay,
                         (config.beta1, config.beta2), config.eps, config.momentum, config.threads)
    provisional = config.max_steps or 10 ** 9
    sched = make_schedule(config.schedule, config.lr, provisional, config.warmup, config.min_lr_ratio,
                          config.decay_fraction)
    sampler = WindowSampler(td.train.tokens, config.batch_size, T, seed=config.seed)
    val = validation_batches(td.val.tokens, config.batch_size, T, config.eval_tokens)
    if not val:
        if not config.val_fraction:
            why = "--val-fraction 0: no validation split"
        elif not td.val.n_docs:
            n_docs = td.train.n_docs
            why = ("no validation data (the corpus has a single document)" if n_docs <= 1 else
                   f"no validation data (--val-fraction {config.val_fraction:g} of {n_docs} documents held "
                   f"out none)")
        else:
            why = (f"no validation data (the {td.val.n_docs} held-out document{'s' * (td.val.n_docs > 1)} "
                   f"hold{'s' * (td.val.n_docs == 1)} {td.val.n_tokens:,} tokens, fewer than one window of "
                   f"--context {T} + 1)")
        print(f"note: {why}; validation is skipped", file=out, flush=True)
    extra = {"preset": config.preset,
             "data": {"files": files, "folder": data_dir, "fingerprint": td.fingerprint,
                      "train_tokens": td.train.n_tokens, "val_tokens": td.val.n_tokens},
             "tokenizer": {"sha256": tok_sha, "vocab_size": tok.vocab_size, "eos_id": td.meta["eos_id"]},
             "unigram_entropy": H}
    max_seconds = config.max_minutes * 60.0 if config.max_minutes else None
    trainer = Trainer(model, opt, sched, sampler, val, config, out_dir, tok_path, extra, progress=progress,
                      max_seconds=max_seconds, out=out)
    if st is not None:
        checkpoint = ckpt.load_checkpoint(ck_dir)
        aside, later = ckpt.set_aside_later(out_dir, ck_dir, LOG_NAME)
        if later:
            print(f"note: resuming from {os.path.basename(os.path.normpath(ck_dir))}, an older checkpoint: moved "
                  f"the later {', '.join(later)} and a copy of {LOG_NAME} to {aside} (nothing deleted)",
                  file=out, flush=True)
        trainer.restore(checkpoint)
        del checkpoint                       # free the loaded arrays before peak RSS is measured
        if config.max_steps and config.max_steps != trainer.schedule.max_steps:   # a horizon fixed only now
            trainer.schedule = Schedule.from_dict(dict(trainer.schedule.to_dict(), max_steps=config.max_steps))
        if stop_at is not None and stop_at != trainer.schedule.max_steps:
            trainer.stop_at = int(stop_at)
            H_end = trainer.schedule.max_steps
            if stop_at < H_end:
                print(f"note: stopping at step {stop_at}; the learning-rate schedule keeps the run's horizon of "
                      f"{H_end} steps (resume again to continue it)", file=out, flush=True)
            else:
                print(f"note: training past the schedule's {H_end} steps to {stop_at}: steps after {H_end} run "
                      f"at its final lr {trainer.schedule.lr_at(H_end):.3g}", file=out, flush=True)
    n = model.buf.n_params
    print(f"model: {config.preset}, {n / 1e6:.2f}M parameters, d_model {model.cfg.d_model}, "
          f"{model.cfg.n_layers} layers, {model.cfg.n_heads} heads ({model.cfg.n_kv_heads} KV), ffn "
          f"{model.cfg.ffn_dim}, vocab {model.cfg.vocab_size}, context {T}", file=out, flush=True)
    print(f"training: batch {config.batch_size} x {T} tokens x {config.grad_accum} micro-batches = "
          f"{config.batch_size * T * config.grad_accum:,} tokens/step, {config.optimizer} lr {config.lr:g} "
          f"({sched.name}, warmup {config.warmup}), weight decay {config.weight_decay:g}, clip {config.clip:g}, "
          f"{'bf16' if config.bf16 else 'fp32'}, {threads} threads, seed {config.seed}", file=out, flush=True)
    budget = trainer.memory_budget(baseline, td.train.nbytes + td.val.nbytes)
    print(format_budget(budget), file=out, flush=True)
    gc.collect()
    rss_reset = reset_peak_rss()             # peak RSS from here on measures training

    result = trainer.train()

    peak = peak_rss()
    tot = budget["total"]
    what = "peak RSS while training" if rss_reset else "peak RSS of the process"
    print(f"memory: budget {tot / 2**20:.1f} MiB, {what} {peak / 2**20:.1f} MiB "
          f"(budget/peak {tot / max(1, peak):.3f})", file=out, flush=True)
    print(summary_line(result, H, time.perf_counter() - t_run, has_val=bool(val)), file=out, flush=True)
    print(f"checkpoint: {result.checkpoint}", file=out, flush=True)
    result.memory = {"budget": budget, "peak_rss": peak, "peak_rss_reset": rss_reset}
    result.unigram_entropy = H
    if sample_prompt and sample_tokens:
        try:
            text = sample_text(model, tok, sample_prompt, sample_tokens, seed=config.seed, threads=config.threads)
            print(f"sample (temperature 0.8, prompt {sample_prompt!r}):\n{text}", file=out, flush=True)
            result.sample = text
        except Exception as e:  # a sample is a courtesy; never fail a finished run over it
            print(f"sample: could not generate ({type(e).__name__}: {e})", file=out, flush=True)
    return result


def summary_line(result, unigram_entropy, total_s, has_val=True):
    """The `done:` line of a run: its losses (only what was measured) and this session's tokens/time."""
    parts = [f"done: step {result.step} ({result.stop_reason})"]
    if result.losses:
        parts.append(f", train loss {result.final_loss:.4f}")
    else:
        parts.append(", no training step ran in this session")
    if result.val:
        vl = result.final_val_loss
        ppl = math.exp(vl) if vl == vl and vl < 700 else float("inf")
        parts.append(f", val loss {vl:.4f} (ppl {ppl:.2f})")
    elif not has_val:
        parts.append(", no validation split")
    parts.append(f" vs unigram entropy {unigram_entropy:.4f} nats/token; {result.tokens:,} tokens in "
                 f"{result.elapsed_s:.1f} s of training, {total_s:.1f} s in all")
    return "".join(parts)


def sample_text(model, tokenizer, prompt, n_tokens=120, seed=0, temperature=0.8, threads=None):
    """Generate from the training model through the inference path (to_transformer)."""
    from ..infer import KVCache, Sampler, generate
    tr = model.to_transformer(threads=threads)
    cache = KVCache(model.cfg, model.cfg.context_length)
    ids = tokenizer.encode(prompt, add_bos=False)
    r = generate(tr, tokenizer, cache, ids, max_new_tokens=min(n_tokens, model.cfg.context_length - len(ids) - 1),
                 sampler=Sampler(temperature=temperature, top_k=40, top_p=0.95, seed=seed))
    return prompt + r.text
