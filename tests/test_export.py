"""Exporting slmx training checkpoints: to GGUF (slmx and llama.cpp load it; llama.cpp's greedy
tokens equal slmx's on the same file) and to a HF folder (transformers loads it and gives slmx's
logits). The checkpoint is a nano model trained here for a few dozen steps on a small text."""
import os
import subprocess
import sys

import numpy as np
import pytest

import slmx
from slmx.convert import export_checkpoint
from slmx.infer import KVCache
from slmx.train.checkpoint import load_for_inference, save_checkpoint
from slmx.train.model import TrainableLM, make_config
from slmx.train.optim import AdamW

TEXT = ("def add(a, b):\n    return a + b\n\n"
        "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n") * 12


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from slmx.tokenizer import save_json, train_bpe
    d = tmp_path_factory.mktemp("run")
    tok = train_bpe([TEXT], vocab_size=300, progress=False)
    tok_path = str(d / "tokenizer.json")
    save_json(tok, tok_path)
    cfg = make_config("nano", vocab_size=tok.vocab_size, context_length=64)
    model = TrainableLM(cfg, seed=0, threads=1)   # the machine is shared: one thread is fastest
    opt = AdamW(model.buf, lr=3e-3, decay_mask=model.buf.decay_mask, threads=1)
    ids = np.array(tok.encode(TEXT), np.int32)
    rng = np.random.default_rng(0)
    for _ in range(40):
        starts = rng.integers(0, len(ids) - 33, 4)
        x = np.stack([ids[s:s + 32] for s in starts])
        y = np.stack([ids[s + 1:s + 33] for s in starts])
        model.zero_grad()
        model.forward_backward(x, y, 1.0 / y.size)
        opt.step()
    p = save_checkpoint(str(d / "out"), 40, model.state_tensors(), opt.state_dict(),
                        {"model_config": cfg.to_dict()}, tok_path)
    return p, ids


def _slmx_logits(path, ids):
    _, cfg, _, tr = load_for_inference(path, threads=1)
    tr.numerics, tr._f16 = "fp32", False
    return tr.forward(ids, 0, KVCache(cfg, 64), all_logits=True)


def test_export_gguf_loads_in_slmx(ckpt, tmp_path):
    path, ids = ckpt
    out = str(tmp_path / "m.gguf")
    r = export_checkpoint(path, out, format="gguf")
    assert r["step"] == 40 and os.path.getsize(out) == r["bytes"]
    want = _slmx_logits(path, ids[:48])
    m = slmx.load(out, n_ctx=64, numerics="fp32", threads=1)
    assert m.config.arch == "llama" and not m.config.rope_neox
    assert np.abs(m.logits(ids[:48].tolist()) - want).max() < 1e-4
    text = "class Point:\n    def"
    assert m.tokenizer.encode(text) == load_for_inference(path, threads=1)[2].encode(text)
    # quantized export (through slmx.quantize) loads too and stays close
    q = str(tmp_path / "q8.gguf")
    export_checkpoint(path, q, format="gguf", type="Q8_0")
    mq = slmx.load(q, n_ctx=64, numerics="fp32", threads=1)
    assert mq.transformer.layers[0].wq.type == 8
    assert np.abs(mq.logits(ids[:48].tolist()) - want).max() < 0.05
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]     # the F32 temporary is gone


def test_export_hf_matches_transformers(ckpt, tmp_path):
    import torch
    import transformers
    path, ids = ckpt
    out = str(tmp_path / "hf")
    export_checkpoint(path, out, format="hf")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
    hfm = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        want = hfm(torch.tensor(ids[None, :48].astype(np.int64))).logits[0].numpy()
    got = _slmx_logits(path, ids[:48])
    assert np.abs(got - want).max() < 1e-4
    # and the exported folder loads back into slmx
    assert np.abs(slmx.load(out, n_ctx=64, threads=1).logits(ids[:48].tolist()) - want).max() < 1e-4
    # transformers' fast tokenizer reads the exported tokenizer with the same ids
    ht = transformers.AutoTokenizer.from_pretrained(out)
    text = "def add(a, b):\n    return  a+b"
    assert ht(text, add_special_tokens=False)["input_ids"] == slmx.load(out, n_ctx=64, threads=1).tokenizer.encode(text)


def test_export_gguf_llama_cpp_greedy(ckpt, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    path, ids = ckpt
    out = str(tmp_path / "m.gguf")
    export_checkpoint(path, out, format="gguf")
    m = slmx.load(out, n_ctx=64, threads=1)              # ggml numerics, as llama.cpp computes
    L = llama_cpp.Llama(model_path=out, n_ctx=64, vocab_only=False, verbose=False, n_threads=1, n_threads_batch=1)
    text = "class Point:\n    def __init__(self"
    assert L.tokenize(text.encode(), add_bos=False, special=False) == m.tokenizer.encode(text, add_bos=False)
    for start in (0, 20):
        prompt = ids[start:start + 12].tolist()
        r = m.generate(prompt, max_new_tokens=24, temperature=0)
        want = r.token_ids
        got = []
        for t in L.generate(prompt, temp=0.0, top_k=1, reset=True):
            if len(got) == len(want):
                break
            got.append(t)
        assert len(want) > 0 and got == want


def test_cli_export_and_errors(ckpt, tmp_path):
    path, _ = ckpt
    env = None      # conftest points subprocesses at the slmx under test (installed or built in place)
    out = str(tmp_path / "c.gguf")
    r = subprocess.run([sys.executable, "-m", "slmx", "export", path, out, "--type", "F16"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert slmx.load(out, n_ctx=16, threads=1).transformer.layers[0].wq.type == 1
    bad = subprocess.run([sys.executable, "-m", "slmx", "export", str(tmp_path / "nope"), out, "--force"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "no such checkpoint" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "slmx", "convert", str(tmp_path), out, "--force"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "config.json" in bad.stderr and bad.stderr.count("\n") == 1


def test_cli_export_refuses_to_replace_the_users_files(ckpt, tmp_path):
    """An existing output file, or a non-empty output folder, needs --force (the user's own
    config.json / model.safetensors were silently replaced)."""
    from slmx.cli import main
    path, _ = ckpt
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text("users own")
    gg = tmp_path / "old.gguf"
    gg.write_bytes(b"users own")
    for argv, victim in ((["export", path, str(folder), "--format", "hf"], folder / "config.json"),
                         (["export", path, str(gg)], gg),
                         (["quantize", str(gg), str(gg) + ".q", "--type", "Q8_0"], None),
                         (["convert", str(folder), str(gg)], gg)):
        if victim is None:
            (tmp_path / "old.gguf.q").write_bytes(b"users own")
            victim = tmp_path / "old.gguf.q"
        r = subprocess.run([sys.executable, "-m", "slmx", *argv], capture_output=True, text=True)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, (argv, r.stderr)
        assert "--force" in r.stderr and str(victim if victim != folder / "config.json" else folder) in r.stderr
        assert victim.read_text() == "users own"
    assert main(["export", path, str(folder), "--format", "hf", "--force"]) == 0
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").read_text() != "users own"
    assert main(["export", path, str(gg), "--force"]) == 0
    assert slmx.load(str(gg), n_ctx=16, threads=1).config.vocab_size > 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", path, str(empty), "--format", "hf"]) == 0     # an empty folder is fine



def test_cli_output_never_overwrites_the_input(ckpt, tmp_path):
    """--force replaces the user's older output, never the input being read (a checkpoint's
    model.safetensors, a file inside an input folder), and a folder / file mix-up or a missing
    parent folder is a one-line error naming it, not a raw errno with a temporary's name."""
    path, _ = ckpt
    weights = os.path.join(path, "model.safetensors")
    before = open(weights, "rb").read()
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    gg = tmp_path / "x.gguf"
    gg.write_bytes(b"old")
    cases = [(["export", path, weights, "--force"], "overwrite the input"),
             (["export", path, path, "--format", "hf", "--force"], "overwrite the input"),
             (["convert", str(hf), str(hf / "config.json"), "--force"], "overwrite the input"),
             (["quantize", str(gg), str(gg), "--type", "Q8_0", "--force"], "overwrite the input"),
             (["export", path, str(tmp_path), "--force"], "is a folder"),
             (["export", path, str(gg), "--format", "hf", "--force"], "is a file"),
             (["export", path, str(tmp_path / "no" / "x.gguf")], "does not exist")]
    for argv, words in cases:
        r = subprocess.run([sys.executable, "-m", "slmx", *argv], capture_output=True, text=True)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and words in r.stderr, (argv, r.stderr)
        assert ".tmp" not in r.stderr, r.stderr
    assert open(weights, "rb").read() == before and gg.read_bytes() == b"old"


def test_cli_export_notes_dropped_mtp_heads_and_type_fallbacks(ckpt, tmp_path):
    """An MTP checkpoint exports without its mtp.* heads (llama.cpp refuses unknown tensors) and
    says so; Q4_K on 64-wide rows says how many tensors fell back to Q5_0 (gguf-py reads the types)."""
    import gguf
    from slmx.tokenizer import save_json, train_bpe
    tok = train_bpe([TEXT], vocab_size=300, progress=False)
    tok_path = str(tmp_path / "tokenizer.json")
    save_json(tok, tok_path)
    cfg = make_config("nano", vocab_size=tok.vocab_size, context_length=64)
    model = TrainableLM(cfg, seed=0, threads=1, mtp=2)
    opt = AdamW(model.buf, lr=3e-3, decay_mask=model.buf.decay_mask, threads=1)
    p = save_checkpoint(str(tmp_path / "out"), 1, model.state_tensors(), opt.state_dict(),
                        {"model_config": cfg.to_dict()}, tok_path)
    out = str(tmp_path / "mtp.gguf")
    r = subprocess.run([sys.executable, "-m", "slmx", "export", p, out, "--type", "Q4_K"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stdout.splitlines() if ln.startswith("note: ")]
    assert any("2 multi-token-prediction heads" in ln and "not exported" in ln for ln in notes), r.stdout
    rd = gguf.GGUFReader(out)
    assert not [t.name for t in rd.tensors if t.name.startswith("mtp.")]
    n_q5 = sum(1 for t in rd.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q5_0)
    assert n_q5 > 0
    assert f"note: {n_q5} tensors fell back Q4_K -> Q5_0" in r.stdout, r.stdout
    assert slmx.load(out, n_ctx=16, threads=1).config.vocab_size == tok.vocab_size
    try:
        import llama_cpp
    except ImportError:
        return
    llama_cpp.Llama(model_path=out, n_ctx=16, verbose=False, n_threads=1)    # raises if it refuses the file
