"""Checkpoints: safetensors + state.json round trip, the `latest` pointer, pruning, and that a
kill -9 in the middle of a checkpoint write leaves the previous checkpoint loadable."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from slmx.train import checkpoint as C

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tensors(seed, n=1000):
    rng = np.random.default_rng(seed)
    return {"token_embd.weight": rng.normal(size=(n // 10, 10)).astype(np.float32),
            "output_norm.weight": rng.normal(size=(10,)).astype(np.float32)}


def opt_state(seed, n=1010):
    rng = np.random.default_rng(seed)
    return {"m": rng.normal(size=n).astype(np.float32), "v": rng.random(n).astype(np.float32), "step": seed}


def test_round_trip_and_latest(tmp_path):
    out = str(tmp_path / "run")
    tok = tmp_path / "tokenizer.json"
    tok.write_text('{"model": {}}')
    rng_state = np.random.Generator(np.random.PCG64(7)).bit_generator.state
    p = C.save_checkpoint(out, 5, tensors(1), opt_state(5), {"sampler": {"bit_generator": rng_state}},
                          str(tok))
    assert os.path.basename(p) == "ckpt-000005"
    assert set(os.listdir(p)) == {"model.safetensors", "optimizer.safetensors", "state.json", "tokenizer.json"}
    c = C.load_checkpoint(out)
    assert c.step == 5 and c.path == p
    for k, v in tensors(1).items():
        assert np.array_equal(c.tensors[k], v) and c.tensors[k].dtype == np.float32
    o = opt_state(5)
    assert np.array_equal(c.optimizer_state["m"], o["m"]) and c.optimizer_state["step"] == 5
    assert c.tokenizer_path and open(c.tokenizer_path).read() == '{"model": {}}'
    g = np.random.Generator(np.random.PCG64(0))
    g.bit_generator.state = c.state["sampler"]["bit_generator"]
    assert g.integers(0, 1 << 30) == np.random.Generator(np.random.PCG64(7)).integers(0, 1 << 30)
    # the safetensors files are plain safetensors (readable by the package, GGUF names)
    from safetensors.numpy import load_file
    assert set(load_file(os.path.join(p, "model.safetensors"))) == set(tensors(1))
    # checkpoints beyond `keep` are pruned, latest follows the newest
    for s in (10, 15, 20):
        C.save_checkpoint(out, s, tensors(s), opt_state(s), {}, str(tok), keep=2)
    assert [os.path.basename(x) for x in C.list_checkpoints(out)] == ["ckpt-000015", "ckpt-000020"]
    assert C.load_checkpoint(out).step == 20
    assert C.load_checkpoint(os.path.join(out, "ckpt-000015")).step == 15
    # re-reaching a step never overwrites a checkpoint
    p2 = C.save_checkpoint(out, 20, tensors(99), opt_state(20), {}, str(tok), keep=5)
    assert os.path.basename(p2) == "ckpt-000020.1" and C.load_checkpoint(out).path == p2
    assert np.array_equal(C.load_checkpoint(os.path.join(out, "ckpt-000020")).tensors["output_norm.weight"],
                          tensors(20)["output_norm.weight"])


def test_incomplete_or_missing_checkpoints_are_errors(tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(C.CheckpointError):
        C.load_checkpoint(out)
    os.makedirs(out)
    with pytest.raises(C.CheckpointError, match="no complete checkpoint"):
        C.load_checkpoint(out)
    p = C.save_checkpoint(out, 1, tensors(1), opt_state(1), {})
    with open(os.path.join(p, "optimizer.safetensors"), "r+b") as f:
        f.truncate(100)
    with pytest.raises(C.CheckpointError, match="wrong size"):
        C.load_checkpoint(out)
    with open(os.path.join(p, "state.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(C.CheckpointError, match="JSON"):
        C.load_checkpoint(out)


WRITER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {repo!r})
    from slmx.train import checkpoint as C
    out = sys.argv[1]
    for step in range(1, 1000):
        t = {{"w": np.full((256, 256), step, np.float32)}}
        o = {{"m": np.full(65536, step, np.float32), "step": step}}
        C.save_checkpoint(out, step, t, o, {{"note": "step %d" % step}}, keep=2)
        print(step, flush=True)
""")


@pytest.mark.parametrize("phase", [0.25, 0.75, 1.25, 2.2])
def test_kill_during_write_keeps_previous_checkpoint(tmp_path, phase):
    """The writer pauses 0.5 s after each of its 3 files; SIGKILL it at `phase` seconds into the
    write of checkpoint 2 (inside model, optimizer, state.json, or before the rename)."""
    out = str(tmp_path / "run")
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=REPO))
    env = dict(os.environ, **{C.DELAY_ENV: "0.5"})
    proc = subprocess.Popen([sys.executable, str(script), out], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"          # checkpoint 1 complete
        time.sleep(phase)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    c = C.load_checkpoint(out)
    assert c.step == (1 if phase < 1.5 else 2)      # checkpoint 2 completes ~1.5 s in
    assert np.all(c.tensors["w"] == c.step) and np.all(c.optimizer_state["m"] == c.step)
    assert c.state["note"] == f"step {c.step}"
    # the next write cleans the killed write's temporary folder
    C.save_checkpoint(out, 3, {"w": np.zeros(3, np.float32)}, {}, {})
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]
    assert C.load_checkpoint(out).step == 3


def test_kill_at_random_times(tmp_path):
    """Kill a writer with no pauses at random moments: `latest` always names a loadable checkpoint."""
    rng = np.random.default_rng(0)
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=REPO))
    for trial in range(6):
        out = str(tmp_path / f"run{trial}")
        proc = subprocess.Popen([sys.executable, str(script), out], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "1"
        time.sleep(float(rng.uniform(0.0, 0.3)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        c = C.load_checkpoint(out)
        assert np.all(c.tensors["w"] == c.step) and np.all(c.optimizer_state["m"] == c.step)
        assert len(C.list_checkpoints(out)) <= 3


# --- end to end: `slmx train`, kill -9 while it writes a checkpoint, --resume ---------------------

def small_corpus(tmp_path, n=40):
    """n small stdlib modules copied into tmp_path/corpus (~280 KB)."""
    import shutil
    from slmx.train.data import stdlib_corpus
    d = tmp_path / "corpus"
    d.mkdir()
    picked = [p for p in stdlib_corpus() if 2000 < os.path.getsize(p) < 12000][:n]
    for p in picked:
        shutil.copyfile(p, d / os.path.basename(p))
    return str(d)


NANO = ["--preset", "nano", "--vocab-size", "512", "--batch-size", "4", "--context", "32", "--max-steps", "10",
        "--eval-every", "5", "--ckpt-every", "2", "--warmup", "2", "--lr", "3e-3", "--threads", "2",
        "--eval-tokens", "2048", "--no-progress", "--sample-tokens", "0"]


def slmx_cmd(*args):
    return [sys.executable, "-m", "slmx.cli", *args]


def train_steps(out):
    from slmx.train.diagnostics import read_log
    return [r for r in read_log(os.path.join(out, "train.jsonl")) if "event" not in r]


def test_kill9_during_checkpoint_write_then_resume_is_identical(tmp_path):
    data = small_corpus(tmp_path)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    r = subprocess.run(slmx_cmd("train", "--data", data, "--out", a, *NANO), capture_output=True, text=True,
                       timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]

    env = dict(os.environ, **{C.DELAY_ENV: "0.4"})
    proc = subprocess.Popen(slmx_cmd("train", "--data", data, "--out", b, *NANO), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if any(n.startswith(".tmp-ckpt-000006") for n in (os.listdir(b) if os.path.isdir(b) else [])):
                time.sleep(0.3)                   # inside the write of checkpoint 6
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it was killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert any(n.startswith(".tmp-ckpt-000006") for n in os.listdir(b))
    c = C.load_checkpoint(b)                      # the previous checkpoint is intact
    assert c.step == 4 and "token_embd.weight" in c.tensors
    assert train_steps(b)[-1]["step"] == 6        # steps after the checkpoint were logged

    r = subprocess.run(slmx_cmd("train", "--resume", b, "--no-progress", "--sample-tokens", "0"),
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stdout
    la, lb = train_steps(a), train_steps(b)
    assert [x["step"] for x in lb] == list(range(1, 11))
    for k in ("loss", "lr", "grad_norm", "val_loss"):
        assert [x.get(k) for x in la] == [x.get(k) for x in lb], k
    ta, tb = C.load_checkpoint(a).tensors, C.load_checkpoint(b).tensors
    assert all(np.array_equal(ta[n], tb[n]) for n in ta)


@pytest.mark.parametrize("how", ["oserror", "safetensors"])
def test_full_disk_is_a_one_line_error_naming_the_file_and_last_good_checkpoint(tmp_path, monkeypatch, how):
    """ENOSPC while writing (a raw SafetensorError / numpy's 'requested and written' before):
    a CheckpointError (an OSError: the CLI's one-line error) naming the file, the full disk and
    the previous checkpoint, which stays loadable; no temporary folder is left."""
    import errno

    import safetensors.numpy
    from safetensors import SafetensorError
    out = str(tmp_path / "run")
    good = C.save_checkpoint(out, 5, tensors(1), opt_state(5), {})
    real = safetensors.numpy.save_file

    def full(arrays, path, metadata=None):
        if os.path.basename(path) == C.OPTIMIZER:
            if how == "oserror":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(arrays, path, metadata=metadata)
    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    with pytest.raises(C.CheckpointError) as ei:
        C.save_checkpoint(out, 10, tensors(2), opt_state(10), {})
    msg = str(ei.value)
    assert C.OPTIMIZER in msg and "disk is full" in msg and "No space left on device" in msg, msg
    assert good in msg and ei.value.errno == errno.ENOSPC and "\n" not in msg
    assert C.load_checkpoint(out).path == good
    assert sorted(os.listdir(out)) == ["ckpt-000005", "latest"]
    # the CLI prints it as one line
    import slmx.train.trainer as T
    from slmx.cli import main
    monkeypatch.setattr(T, "run_training", lambda *a, **k: C.save_checkpoint(out, 11, tensors(2), opt_state(11), {}))
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["train", "--out", out, "--data", str(tmp_path)])
    assert rc == 1 and err.getvalue().startswith("slmx: error: ") and err.getvalue().count("\n") == 1
    assert good in err.getvalue()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoint_files_follow_the_umask(tmp_path, umask):
    """model/optimizer.safetensors were 0600 (safetensors' temporary), the other files 0644."""
    import stat
    tok = tmp_path / "tokenizer.json"
    tok.write_text('{"model": {}}')
    old = os.umask(umask)
    try:
        p = C.save_checkpoint(str(tmp_path / "run"), 5, tensors(1), opt_state(5), {}, str(tok))
    finally:
        os.umask(old)
    modes = {n: stat.S_IMODE(os.stat(os.path.join(p, n)).st_mode) for n in os.listdir(p)}
    assert set(modes) == {C.MODEL, C.OPTIMIZER, C.STATE, C.TOKENIZER}
    assert all(m == 0o666 & ~umask for m in modes.values()), {n: oct(m) for n, m in modes.items()}
