"""Learning-rate schedules: lr_at(step) for the 0-based optimizer step.

    s = make_schedule("cosine", lr=1e-3, max_steps=1000, warmup=50, min_lr_ratio=0.1)
    s.lr_at(0) == 1e-3 / 50;  s.lr_at(49) == 1e-3;  s.lr_at(999) == 1e-4

All schedules warm up linearly over `warmup` steps: lr * (step + 1) / warmup. After that:
  constant  lr
  cosine    min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2, p = (step - warmup) / (max_steps - 1 - warmup)
  linear    lr + (min_lr - lr) * p
  wsd       warmup-stable-decay: lr until the last `decay_fraction` of the steps, then linear to min_lr
min_lr = lr * min_lr_ratio; the last step (max_steps - 1) runs at min_lr. A schedule is pure
(no state), so resuming at step k gives the same rates; to_dict()/from_dict() store it.
"""
import math
from dataclasses import asdict, dataclass

SCHEDULES = ("constant", "cosine", "linear", "wsd")
_ALIASES = {"warmup-cosine": "cosine", "warmup_cosine": "cosine", "warmup-stable-decay": "wsd",
            "warmup_stable_decay": "wsd", "const": "constant"}


@dataclass
class Schedule:
    name: str = "cosine"
    lr: float = 1e-3
    max_steps: int = 1000
    warmup: int = 0
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2      # wsd: the share of steps spent decaying

    def __post_init__(self):
        self.name = _ALIASES.get(self.name, self.name)
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r} (choose from {', '.join(SCHEDULES)})")
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            raise ValueError(f"learning rate must be a finite number >= 0, got {self.lr}")
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")

    @property
    def min_lr(self):
        return self.lr * self.min_lr_ratio

    def lr_at(self, step):
        """The learning rate of 0-based optimizer step `step`."""
        step = int(step)
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.name == "constant":
            return self.lr
        last = self.max_steps - 1
        if self.name == "wsd":
            start = max(self.warmup, self.max_steps - max(1, round(self.decay_fraction * self.max_steps)))
            if step < start:
                return self.lr
            q = min(1.0, (step - start + 1) / max(1, last - start + 1))
            return self.lr + (self.min_lr - self.lr) * q
        p = min(1.0, max(0.0, (step - self.warmup) / max(1, last - self.warmup)))
        if self.name == "cosine":
            return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
        return self.lr + (self.min_lr - self.lr) * p          # linear

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


def make_schedule(name="cosine", lr=1e-3, max_steps=1000, warmup=0, min_lr_ratio=0.1, decay_fraction=0.2):
    """A Schedule by name: constant, cosine (warmup + cosine), linear, wsd (warmup-stable-decay)."""
    return Schedule(name, float(lr), int(max_steps), int(warmup), float(min_lr_ratio), float(decay_fraction))
