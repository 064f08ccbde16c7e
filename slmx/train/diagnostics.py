"""Training diagnostics: the JSONL step log, loss-spike / gradient-explosion warnings, the memory
budget against the measured peak RSS, and the loss-curve plot (`slmx plot-loss`).

Log lines (one JSON object per optimizer step):
    {"step": 10, "loss": 5.31, "lr": 0.0002, "grad_norm": 1.7, "tokens_per_s": 2410.5, "tokens": 20480,
     "elapsed_s": 8.4, "val_loss": 5.2, "val_ppl": 181.3}        # val_* only when evaluated
plus event lines {"event": "...", "step": ..., "message": "..."} for warnings, resumes and errors.
"""
import json
import math
import os
import resource
import sys
from collections import deque

import numpy as np


# --- the JSONL log -------------------------------------------------------------------------------

class JsonlLog:
    """Append-only JSONL file, flushed after each line."""

    def __init__(self, path):
        self.path = path
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record):
        try:
            self._f.write(json.dumps(_finite_or_str(record), allow_nan=False) + "\n")
            self._f.flush()
        except OSError as e:        # a full disk: name the log (the bare error named no file)
            import errno
            why = "the disk is full" if e.errno == errno.ENOSPC else "write failed"
            err = OSError(f"{self.path}: could not write the training log, {why} ({e.strerror or e})")
            err.errno = e.errno
            raise err from e

    def close(self):
        if not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _finite_or_str(rec):
    out = {}
    for k, v in rec.items():
        if isinstance(v, (float, np.floating)) and not math.isfinite(v):
            v = str(float(v))          # "nan" / "inf": JSON has no such numbers
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def read_log(path):
    """The records of a JSONL log (lines that do not parse are skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def truncate_log(path, last_step):
    """Keep only the lines of steps <= last_step (a resumed run rewrites what follows), atomically."""
    if not os.path.exists(path):
        return
    keep = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue              # a line cut by a kill
            if rec.get("step", 0) <= last_step:
                keep.append(line if line.endswith("\n") else line + "\n")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- warnings ------------------------------------------------------------------------------------

class LossMonitor:
    """Warns about loss spikes (loss > spike_factor x the running median of the last `window`
    losses) and exploding gradient norms (> explode_factor x their running median, or above
    max_grad_norm), once at least `min_history` steps are known."""

    def __init__(self, window=50, spike_factor=2.0, explode_factor=10.0, max_grad_norm=1e4, min_history=10):
        self.window, self.spike_factor, self.explode_factor = int(window), float(spike_factor), float(explode_factor)
        self.max_grad_norm, self.min_history = float(max_grad_norm), int(min_history)
        self.losses = deque(maxlen=self.window)
        self.norms = deque(maxlen=self.window)

    def update(self, step, loss, grad_norm):
        """Record one step; returns a list of warning strings (empty when all is well)."""
        out = []
        if len(self.losses) >= self.min_history:
            med = float(np.median(self.losses))
            if loss > self.spike_factor * med:
                out.append(f"step {step}: loss spike: {loss:.4g} is {loss / med:.1f}x the running median "
                           f"{med:.4g}")
        if grad_norm > self.max_grad_norm:
            out.append(f"step {step}: exploding gradient norm {grad_norm:.4g} (> {self.max_grad_norm:g})")
        elif len(self.norms) >= self.min_history:
            med = float(np.median(self.norms))
            if med > 0 and grad_norm > self.explode_factor * med:
                out.append(f"step {step}: exploding gradient norm: {grad_norm:.4g} is "
                           f"{grad_norm / med:.1f}x the running median {med:.4g}")
        self.losses.append(float(loss))
        self.norms.append(float(grad_norm))
        return out

    def state_dict(self):
        return {"losses": list(self.losses), "norms": list(self.norms)}

    def load_state_dict(self, d):
        self.losses = deque(d.get("losses", []), maxlen=self.window)
        self.norms = deque(d.get("norms", []), maxlen=self.window)


# --- memory --------------------------------------------------------------------------------------

def current_rss():
    """Resident set size of this process now, in bytes (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss():
    """Peak resident set size of this process in bytes.

    Linux: VmHWM from /proc/self/status (this address space's own high-water mark, which
    reset_peak_rss() resets). getrusage's ru_maxrss is not used there: after fork + exec it starts
    from the parent's peak, so a child of a large process would report its parent's memory.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def reset_peak_rss():
    """Reset the kernel's peak-RSS mark to the current RSS (Linux: write 5 to /proc/self/clear_refs),
    so peak_rss() afterwards measures only what follows. Returns True when it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_budget(n_params, optimizer_bytes, activation_bytes, baseline_bytes=0, data_bytes=0,
                  extra=None):
    """The memory training needs, as an ordered dict name -> bytes, with "total".

    weights and gradients: 4 bytes per parameter each (fp32 flat buffers); optimizer state: the
    bytes of its moment buffers; activations: what one micro-batch saves for backward;
    baseline: the process before the model existed (interpreter, libraries, tokenizer);
    token data: the memory-mapped token files (pages become resident as windows are read).
    """
    b = {"baseline (interpreter, libraries, tokenizer)": int(baseline_bytes),
         "weights (fp32)": 4 * int(n_params),
         "gradients (fp32)": 4 * int(n_params),
         "optimizer state": int(optimizer_bytes),
         "activations per micro-batch": int(activation_bytes),
         "token data (mmap)": int(data_bytes)}
    for k, v in (extra or {}).items():
        b[k] = int(v)
    b["total"] = sum(b.values())
    return b


def format_budget(budget):
    w = max(len(k) for k in budget)
    lines = ["memory budget:"]
    for k, v in budget.items():
        if k == "total":
            lines.append("  " + "-" * (w + 12))
        lines.append(f"  {k:<{w}} {v / 2**20:9.1f} MiB")
    return "\n".join(lines)


# --- plot ----------------------------------------------------------------------------------------

def plot_loss(log_path, png_path=None):
    """Write a PNG of training / validation loss, learning rate and gradient norm against the step
    from a JSONL training log. Returns the PNG path (default: the log's path with .png)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OSError("slmx plot-loss needs matplotlib: pip install matplotlib") from None
    recs = [r for r in read_log(log_path) if "loss" in r and "step" in r and "event" not in r]
    if not recs:
        raise ValueError(f"{log_path}: no training steps in the log")
    png_path = png_path or os.path.splitext(log_path)[0] + ".png"

    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return float("nan")

    steps = np.array([r["step"] for r in recs])
    loss = np.array([num(r["loss"]) for r in recs])
    lr = np.array([num(r.get("lr")) for r in recs])
    gn = np.array([num(r.get("grad_norm")) for r in recs])
    vrec = [r for r in recs if "val_loss" in r]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True, gridspec_kw={"height_ratios": [3, 1, 1.3]})
    ax = axes[0]
    ax.plot(steps, loss, lw=0.6, alpha=0.45, color="C0", label="train loss")
    if len(loss) >= 10:
        k = max(5, len(loss) // 50)
        sm = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], sm, lw=1.5, color="C0", label=f"train loss ({k}-step mean)")
    if vrec:
        ax.plot([r["step"] for r in vrec], [num(r["val_loss"]) for r in vrec], "o-", color="C3", ms=3,
                label="validation loss")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    a = os.path.abspath(log_path)
    ax.set_title(os.path.join(os.path.basename(os.path.dirname(a)), os.path.basename(a)))
    axes[1].plot(steps, lr, color="C2")
    axes[1].set_ylabel("lr")
    axes[1].grid(alpha=0.3)
    axes[2].plot(steps, gn, color="C1", lw=0.8)
    axes[2].set_ylabel("grad norm\n(before clip)")
    if np.all(gn[np.isfinite(gn)] > 0):
        axes[2].set_yscale("log")
    axes[2].set_xlabel("step")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
