"""Optimizers over a ParamBuffer: each step is one fused kernel pass over the flat buffers.

    opt = AdamW(model.buf, lr=3e-4)          # decay where buf.decay_mask (matrices, not norms/embeddings)
    norm = clip_grad_norm(model.buf, 1.0)    # the norm before clipping
    opt.step(lr)                             # lr from the schedule (default: the constructor's)

State (moments, momentum buffer, step count) is float32 / int and round-trips through
state_dict() / load_state_dict() for checkpoints.
"""
import numpy as np

from .._kernels import cpu as _cpu
from .._kernels import optim as _k


def _threads(threads):
    return _cpu.resolve_threads(threads)


def _decay_mask(buf, decay_mask):
    if decay_mask is None:
        decay_mask = getattr(buf, "decay_mask", None)
    if decay_mask is None:
        return np.zeros(buf.params.size, np.uint8)
    m = np.ascontiguousarray(decay_mask)
    if m.dtype == np.bool_:
        m = m.view(np.uint8)
    if m.dtype != np.uint8 or m.shape != buf.params.shape:
        raise ValueError(f"decay_mask: expected {buf.params.shape} uint8/bool, got {m.shape} {m.dtype}")
    return m


def _state_array(d, key, n):
    if key not in d:
        raise ValueError(f"optimizer state: missing {key!r}")
    a = np.asarray(d[key], dtype=np.float32).reshape(-1)
    if a.size != n:
        raise ValueError(f"optimizer state: {key!r} has {a.size} elements, expected {n}")
    return np.ascontiguousarray(a)


class _Adam:
    decoupled = True
    kind = "adamw"

    def __init__(self, buf, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, decay_mask=None, threads=None):
        self.buf = buf
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.decay_mask = _decay_mask(buf, decay_mask)
        self.threads = _threads(threads)
        n = buf.params.size
        self.m = np.zeros(n, np.float32)
        self.v = np.zeros(n, np.float32)
        self.t = 0

    def step(self, lr=None):
        """One update of buf.params from buf.grads (lr: this step's rate; default self.lr)."""
        lr = self.lr if lr is None else float(lr)
        self.t += 1
        _k.adam_step(self.buf.params, self.buf.grads, self.m, self.v, self.decay_mask, lr,
                     self.betas[0], self.betas[1], self.eps, self.weight_decay, self.t,
                     self.decoupled, self.threads)

    def state_dict(self):
        return {"kind": self.kind, "step": self.t, "m": self.m, "v": self.v, "lr": self.lr,
                "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def load_state_dict(self, state):
        n = self.buf.params.size
        self.m = _state_array(state, "m", n)
        self.v = _state_array(state, "v", n)
        self.t = int(state.get("step", 0))
        for key in ("lr", "eps", "weight_decay"):
            if key in state:
                setattr(self, key, float(state[key]))
        if "betas" in state:
            self.betas = tuple(float(b) for b in state["betas"])


class AdamW(_Adam):
    """AdamW (decoupled weight decay, applied where decay_mask): torch.optim.AdamW's update."""


class Adam(_Adam):
    """Adam (L2 weight decay added to the gradient where decay_mask; default none)."""
    decoupled = False
    kind = "adam"

    def __init__(self, buf, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, decay_mask=None, threads=None):
        super().__init__(buf, lr, betas, eps, weight_decay, decay_mask, threads)


class SGD:
    """SGD with momentum (torch.optim.SGD's update; L2 weight decay where decay_mask)."""

    def __init__(self, buf, lr, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False,
                 decay_mask=None, threads=None):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and zero dampening")
        self.buf = buf
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.dampening = float(dampening)
        self.weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)
        self.decay_mask = _decay_mask(buf, decay_mask)
        self.threads = _threads(threads)
        self.buf_m = np.zeros(buf.params.size if self.momentum else 0, np.float32)
        self.t = 0

    def step(self, lr=None):
        lr = self.lr if lr is None else float(lr)
        mb = self.buf_m if self.momentum else None
        _k.sgd_step(self.buf.params, self.buf.grads, mb, self.decay_mask, lr, self.momentum,
                    self.dampening, self.weight_decay, self.nesterov, self.t == 0, self.threads)
        self.t += 1

    def state_dict(self):
        return {"kind": "sgd", "step": self.t, "momentum_buffer": self.buf_m, "lr": self.lr,
                "momentum": self.momentum, "dampening": self.dampening,
                "weight_decay": self.weight_decay, "nesterov": self.nesterov}

    def load_state_dict(self, state):
        self.t = int(state.get("step", 0))
        if self.momentum:
            self.buf_m = _state_array(state, "momentum_buffer", self.buf.params.size)
        for key in ("lr", "dampening", "weight_decay"):
            if key in state:
                setattr(self, key, float(state[key]))


def clip_grad_norm(buf, max_norm, threads=None):
    """Scale buf.grads so the global L2 norm is at most max_norm; returns the norm before clipping."""
    return _k.clip_grad_norm(buf.grads, float(max_norm), _threads(threads))


def grad_norm(buf, threads=None):
    """Global L2 norm of buf.grads (float64 accumulation)."""
    return _k.grad_norm(buf.grads, _threads(threads))
