"""Training checkpoints, written atomically.

Layout of a training output folder OUT:
    OUT/latest                     one line: the name of the newest complete checkpoint
    OUT/ckpt-000200/model.safetensors      the weights, GGUF tensor names, float32
    OUT/ckpt-000200/optimizer.safetensors  the optimizer's moment buffers
    OUT/ckpt-000200/tokenizer.json         the tokenizer (HF tokenizer.json)
    OUT/ckpt-000200/state.json             config, step, schedule, optimizer scalars, RNG and
                                           sampler state, data fingerprint, metrics, file sizes

    OUT/superseded/after-step-000200-<time>/  checkpoints past 200 and a copy of the log, moved
                                           there when a run resumes from ckpt-000200 (nothing is deleted)

A checkpoint is written into OUT/.tmp-ckpt-000200-<pid>/ (every file fsynced, state.json last),
the folder is renamed to ckpt-000200, and then `latest` is replaced (temp file, fsync, rename).
A kill at any moment leaves `latest` naming a complete checkpoint. Older checkpoints beyond
`keep` are deleted only after the new one is in place.
"""
import json
import os
import shutil
import time

import numpy as np

FORMAT = "slmx-train-checkpoint"
VERSION = 1
LATEST = "latest"
STATE = "state.json"
MODEL = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
TOKENIZER = "tokenizer.json"
_PREFIX = "ckpt-"
_TMP_PREFIX = ".tmp-ckpt-"
# test hook: seconds to sleep after each file of a checkpoint is written (to kill a slow write)
DELAY_ENV = "SLMX_TEST_CKPT_WRITE_DELAY"


class CheckpointError(OSError):
    """A checkpoint that is missing, incomplete or inconsistent."""


def checkpoint_name(step):
    return f"{_PREFIX}{int(step):06d}"


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path):
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _file_mode():
    """0666 less the umask: the mode open() gives a new file (state.json, tokenizer.json)."""
    from ..formats.gguf import _umask
    return 0o666 & ~_umask()


def _pause():
    d = os.environ.get(DELAY_ENV)
    if d:
        time.sleep(float(d))


def _write_text_atomic(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _write_error(path, exc, out_dir):
    """A failed checkpoint write (a full disk: OSError ENOSPC, or safetensors' SafetensorError
    '... No space left on device (os error 28)') -> a CheckpointError naming the file, the cause
    and the last good checkpoint (which is left untouched)."""
    import errno
    msg = " ".join(str(getattr(exc, "strerror", None) or exc).split())
    code = getattr(exc, "errno", None)
    if code is None and "os error 28" in msg:
        code = errno.ENOSPC
    why = "the disk is full" if code == errno.ENOSPC else "write failed"
    last = latest_checkpoint(out_dir)
    last = f"the last good checkpoint is {last}" if last and os.path.isdir(last) else "no checkpoint was saved before"
    err = CheckpointError(f"{path}: could not write the checkpoint, {why} ({msg}); {last}")
    err.errno = code
    return err


def split_optimizer_state(sd):
    """An optimizer state_dict -> (arrays for safetensors, JSON-able scalars)."""
    arrays, scalars = {}, {}
    for k, v in sd.items():
        if isinstance(v, np.ndarray) and v.ndim > 0:
            arrays[k] = np.ascontiguousarray(v)
        elif isinstance(v, np.ndarray):
            scalars[k] = v.item()
        elif isinstance(v, np.generic):
            scalars[k] = v.item()
        else:
            scalars[k] = v
    return arrays, scalars


def save_checkpoint(out_dir, step, tensors, optimizer_state, state, tokenizer_path=None, keep=2):
    """Write checkpoint `step` into OUT_DIR atomically and point OUT_DIR/latest at it.

    tensors: name -> float32 array (the model's state_tensors()); optimizer_state: the
    optimizer's state_dict() (arrays go to optimizer.safetensors, the rest to state.json);
    state: a JSON-able dict stored in state.json (with step, files and format added);
    tokenizer_path: a tokenizer.json copied into the checkpoint. Returns the checkpoint folder.
    """
    from safetensors.numpy import save_file

    os.makedirs(out_dir, exist_ok=True)
    clean_temporaries(out_dir)
    name = checkpoint_name(step)
    k = 0
    while os.path.exists(os.path.join(out_dir, name)):   # a step re-reached after resuming an older one:
        k += 1                                             # never overwrite, add a suffix
        name = f"{checkpoint_name(step)}.{k}"
    final = os.path.join(out_dir, name)
    tmp = os.path.join(out_dir, f"{_TMP_PREFIX}{int(step):06d}-{os.getpid()}")
    os.makedirs(tmp)
    cur = [tmp]             # the file being written (named in an error)
    try:
        meta = {"format": FORMAT, "step": str(int(step))}
        cur[0] = os.path.join(tmp, MODEL)
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(tmp, MODEL),
                  metadata=meta)
        _fsync_file(os.path.join(tmp, MODEL))
        os.chmod(os.path.join(tmp, MODEL), _file_mode())      # safetensors creates it 0600
        _pause()
        arrays, scalars = split_optimizer_state(optimizer_state)
        cur[0] = os.path.join(tmp, OPTIMIZER)
        save_file(arrays, os.path.join(tmp, OPTIMIZER), metadata=meta)
        _fsync_file(os.path.join(tmp, OPTIMIZER))
        os.chmod(os.path.join(tmp, OPTIMIZER), _file_mode())
        _pause()
        if tokenizer_path:
            cur[0] = os.path.join(tmp, TOKENIZER)
            shutil.copyfile(tokenizer_path, os.path.join(tmp, TOKENIZER))
            _fsync_file(os.path.join(tmp, TOKENIZER))
        st = dict(state)
        st.update(format=FORMAT, version=VERSION, step=int(step), optimizer_scalars=scalars,
                  tokenizer_file=TOKENIZER if tokenizer_path else None)
        st["files"] = {f: os.path.getsize(os.path.join(tmp, f)) for f in sorted(os.listdir(tmp))}
        cur[0] = os.path.join(tmp, STATE)
        with open(os.path.join(tmp, STATE), "w", encoding="utf-8") as f:
            json.dump(st, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        _pause()
        cur[0] = final
        os.replace(tmp, final)
        _fsync_dir(out_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) or type(e).__name__ == "SafetensorError":
            raise _write_error(cur[0], e, out_dir) from e
        raise
    try:
        _write_text_atomic(os.path.join(out_dir, LATEST), name + "\n")
    except OSError as e:
        try:
            os.unlink(f"{os.path.join(out_dir, LATEST)}.tmp-{os.getpid()}")
        except OSError:
            pass
        raise _write_error(os.path.join(out_dir, LATEST), e, out_dir) from e
    prune_checkpoints(out_dir, keep)
    return final


def clean_temporaries(out_dir):
    """Remove the temporary folders of checkpoint writes that were killed."""
    if not os.path.isdir(out_dir):
        return
    for n in os.listdir(out_dir):
        if n.startswith(_TMP_PREFIX):
            shutil.rmtree(os.path.join(out_dir, n), ignore_errors=True)


def list_checkpoints(out_dir):
    """Complete checkpoint folders of OUT_DIR (with a state.json), oldest first."""
    if not os.path.isdir(out_dir):
        return []
    out = [n for n in os.listdir(out_dir)
           if n.startswith(_PREFIX) and os.path.isfile(os.path.join(out_dir, n, STATE))]
    return [os.path.join(out_dir, n) for n in sorted(out)]


def prune_checkpoints(out_dir, keep):
    """Delete all but the newest `keep` checkpoints (never the one `latest` names)."""
    if keep is None or keep <= 0:
        return
    latest = latest_checkpoint(out_dir)
    ck = list_checkpoints(out_dir)
    for p in ck[:-keep]:
        if latest is None or os.path.abspath(p) != os.path.abspath(latest):
            shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(out_dir):
    """The checkpoint OUT_DIR/latest names, or None when there is none."""
    p = os.path.join(out_dir, LATEST)
    try:
        with open(p, encoding="utf-8") as f:
            name = f.read().strip()
    except OSError:
        return None
    if not name or os.sep in name or "/" in name:
        return None
    return os.path.join(out_dir, name)


def checkpoint_step(path):
    """The step in a checkpoint folder's name (ckpt-000200 or ckpt-000200.1 -> 200), or None."""
    n = os.path.basename(os.path.normpath(os.fspath(path)))
    if not n.startswith(_PREFIX):
        return None
    try:
        return int(n[len(_PREFIX):].split(".")[0])
    except ValueError:
        return None


SUPERSEDED = "superseded"


def set_aside_later(out_dir, resumed, log_name="train.jsonl"):
    """Before a run in OUT_DIR continues from the checkpoint RESUMED: move every other checkpoint of
    OUT_DIR at its step or later, and a copy of the log, into OUT_DIR/superseded/after-step-N-<time>/
    (nothing is deleted), and point OUT_DIR/latest at RESUMED when it is one of OUT_DIR's.
    Returns (folder, [moved checkpoint names]); folder is None when nothing was later."""
    step = checkpoint_step(resumed)
    later = [p for p in list_checkpoints(out_dir)
             if os.path.abspath(p) != os.path.abspath(resumed) and step is not None
             and (checkpoint_step(p) or 0) >= step]
    dest = None
    if later:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest = os.path.join(out_dir, SUPERSEDED, f"after-step-{step:06d}-{stamp}")
        k = 0
        while os.path.exists(dest):
            k += 1
            dest = os.path.join(out_dir, SUPERSEDED, f"after-step-{step:06d}-{stamp}.{k}")
        os.makedirs(dest)
        log = os.path.join(out_dir, log_name)
        if os.path.exists(log):
            shutil.copy2(log, os.path.join(dest, log_name))
        for p in later:
            os.rename(p, os.path.join(dest, os.path.basename(p)))
        _fsync_dir(out_dir)
    if os.path.abspath(os.path.dirname(os.path.abspath(resumed))) == os.path.abspath(out_dir):
        cur = latest_checkpoint(out_dir)
        if cur is None or os.path.abspath(cur) != os.path.abspath(resumed):
            _write_text_atomic(os.path.join(out_dir, LATEST), os.path.basename(os.path.normpath(resumed)) + "\n")
    return dest, [os.path.basename(p) for p in later]


def resolve_checkpoint(path):
    """A checkpoint folder from PATH: a checkpoint folder itself (has state.json) or a training
    output folder (follows its `latest`). Raises CheckpointError."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, STATE)):
        return path
    if os.path.isdir(path):
        c = latest_checkpoint(path)
        if c and os.path.isfile(os.path.join(c, STATE)):
            return c
        raise CheckpointError(f"{path}: no complete checkpoint (no state.json, no valid 'latest')")
    raise CheckpointError(f"{path}: no such checkpoint folder")


def is_checkpoint(path):
    try:
        resolve_checkpoint(path)
        return True
    except CheckpointError:
        return False


class Checkpoint:
    """A loaded checkpoint: .path, .state (state.json), .tensors (model), .optimizer_state
    (arrays and scalars merged, as given to save_checkpoint), .tokenizer_path (or None)."""

    def __init__(self, path, state, tensors, optimizer_state):
        self.path, self.state, self.tensors, self.optimizer_state = path, state, tensors, optimizer_state

    @property
    def step(self):
        return self.state["step"]

    @property
    def tokenizer_path(self):
        f = self.state.get("tokenizer_file")
        return os.path.join(self.path, f) if f else None


def read_state(path):
    """state.json of the checkpoint PATH resolves to, checked for format and file sizes."""
    ck = resolve_checkpoint(path)
    try:
        with open(os.path.join(ck, STATE), encoding="utf-8") as f:
            state = json.load(f)
    except ValueError as e:
        raise CheckpointError(f"{ck}/{STATE}: not valid JSON ({e})") from None
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{ck}/{STATE}: not an slmx training checkpoint")
    for fname, size in (state.get("files") or {}).items():
        p = os.path.join(ck, fname)
        if not os.path.isfile(p) or os.path.getsize(p) != size:
            raise CheckpointError(f"{ck}: {fname} is missing or has the wrong size (incomplete checkpoint)")
    return ck, state


def load_checkpoint(path, optimizer=True):
    """Load the checkpoint PATH resolves to -> Checkpoint. optimizer=False skips the moments."""
    from safetensors.numpy import load_file

    ck, state = read_state(path)
    try:
        tensors = load_file(os.path.join(ck, MODEL))
        opt = {}
        if optimizer and os.path.exists(os.path.join(ck, OPTIMIZER)):
            opt = dict(load_file(os.path.join(ck, OPTIMIZER)))
        opt.update(state.get("optimizer_scalars") or {})
    except Exception as e:          # safetensors raises its own error types on bad files
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{ck}: cannot read tensors ({e})") from None
    return Checkpoint(ck, state, tensors, opt)


def load_for_inference(path, threads=None):
    """A trained model for generation: (checkpoint folder, ModelConfig, tokenizer, transformer).

    PATH is a checkpoint folder or a training output folder (its `latest`). The weights go into
    a TrainableLM, whose to_transformer() gives the inference forward; the tokenizer comes from
    the checkpoint's tokenizer.json. Multi-token-prediction heads (mtp.* tensors) become the
    transformer's .mtp_heads."""
    from ..model.config import ModelConfig
    from .model import TrainableLM, mtp_heads_in
    from .trainer import load_tokenizer

    c = load_checkpoint(path, optimizer=False)
    mc = c.state.get("model_config")
    if not mc:
        raise CheckpointError(f"{c.path}: state.json has no model_config")
    cfg = ModelConfig(**mc)
    if not c.tokenizer_path or not os.path.isfile(c.tokenizer_path):
        raise CheckpointError(f"{c.path}: the checkpoint has no tokenizer.json")
    tok = load_tokenizer(c.tokenizer_path)
    model = TrainableLM(cfg, seed=0, threads=threads, mtp=mtp_heads_in(c.tensors))
    model.load_state_tensors(c.tensors)
    return c.path, cfg, tok, model.to_transformer(threads=threads)
