"""Training data: file resolution, the stdlib corpus, streaming tokenization into memmapped token
files with EOS between documents, the document-level split, windows and the unigram entropy."""
import os

import numpy as np
import pytest

from slmx.train import data as D


class CharTokenizer:
    """ids = UTF-8 bytes + 1; 0 is EOS (vocab 257), or a big vocabulary to force uint32."""

    def __init__(self, vocab_size=257):
        self.vocab_size, self.eos_id, self.calls = vocab_size, 0, 0

    def encode(self, text, add_bos=False, add_eos=False, parse_special=False):
        self.calls += 1
        return [b + 1 if self.vocab_size == 257 else 70000 + b for b in text.encode("utf-8")]


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def corpus(tmp_path, n=40):
    files = []
    for i in range(n):
        files.append(write(str(tmp_path / "c" / f"d{i // 10}" / f"f{i:02d}.txt"), f"doc {i}: " + "abc é\n" * (i + 1)))
    return files


def test_resolve_data_files(tmp_path):
    files = corpus(tmp_path, 12)
    with open(tmp_path / "c" / "blob.bin", "wb") as f:
        f.write(b"\0\1\2binary")
    write(str(tmp_path / "c" / ".hidden"), "x")
    got = D.resolve_data_files([str(tmp_path / "c")])
    assert got == sorted(files, key=lambda p: (os.path.dirname(p), p))
    assert D.resolve_data_files([str(tmp_path / "c" / "d0" / "*.txt")]) == sorted(files[:10])
    assert D.resolve_data_files([files[3], str(tmp_path / "c" / "**" / "f03.txt")]) == [files[3]]
    with pytest.raises(OSError, match="no such file"):
        D.resolve_data_files([str(tmp_path / "nope")])
    with pytest.raises(OSError, match="matches no"):
        D.resolve_data_files([str(tmp_path / "*.zzz")])


def test_data_that_is_no_text_is_named_for_what_it_is(tmp_path):
    """/dev/null exists (not "no such file"), an empty or binary file has no text: each said so."""
    os.makedirs(tmp_path / "e")
    write(str(tmp_path / "e" / "a.txt"), "")
    write(str(tmp_path / "e" / "b.txt"), "")
    with open(tmp_path / "blob.bin", "wb") as f:
        f.write(b"\0\1\2binary")
    os.mkfifo(tmp_path / "fifo")
    for spec, msg in (("/dev/null", "/dev/null: not a regular file or folder (a character device)"),
                      (str(tmp_path / "fifo"), "fifo: not a regular file or folder (a pipe)"),
                      (str(tmp_path / "e" / "a.txt"), "a.txt: the file is empty"),
                      (str(tmp_path / "e"), "e: its 2 text files are empty"),
                      (str(tmp_path / "e" / "*.txt"), "*.txt: its 2 text files are empty"),
                      (str(tmp_path / "blob.bin"), "blob.bin: not a text file (it has NUL bytes)")):
        with pytest.raises(OSError) as e:
            D.resolve_data_files([spec])
        assert str(e.value).startswith("--data ") and str(e.value).endswith(msg), (spec, str(e.value))


def test_stdlib_corpus():
    files = D.stdlib_corpus()
    assert len(files) > 300 and all(p.endswith(".py") for p in files)
    parts = [set(p.split(os.sep)) for p in files]
    assert not any({"test", "tests", "idle_test", "site-packages"} & s for s in parts)
    assert any(p.endswith(os.sep + "os.py") for p in files)
    total = sum(os.path.getsize(p) for p in files)
    assert 5e6 < total < 40e6


def test_token_files_eos_split_and_cache(tmp_path):
    files = corpus(tmp_path)
    tok = CharTokenizer()
    td = D.build_token_files(files, tok, str(tmp_path / "tok"), val_fraction=0.1, progress=False)
    assert td.train.dtype == np.uint16 and td.meta["dtype"] == "uint16"
    assert 0 < td.val.n_docs < td.train.n_docs and td.train.n_docs + td.val.n_docs == 40
    # reference: each document's bytes + 1, then EOS, in file order, per split
    val_ids = D.split_documents([d for d, _, _ in D.document_ids(files)], 0.1)
    ref = {"train": [], "val": []}
    root = os.path.commonpath(files)
    for p in files:
        rel = os.path.relpath(p, root).replace(os.sep, "/")
        with open(p, "rb") as f:
            ids = [b + 1 for b in f.read()] + [0]
        ref["val" if rel in val_ids else "train"].extend(ids)
    assert np.array_equal(np.asarray(td.train.tokens), ref["train"])
    assert np.array_equal(np.asarray(td.val.tokens), ref["val"])
    assert isinstance(td.train.tokens, np.memmap)
    # the split depends on the documents, not on the order the files are given in
    assert D.split_documents(list(reversed([d for d, _, _ in D.document_ids(files)])), 0.1) == val_ids
    # cached: same inputs -> no tokenization
    tok2 = CharTokenizer()
    td2 = D.build_token_files(files, tok2, str(tmp_path / "tok"), val_fraction=0.1, progress=False)
    assert tok2.calls == 0 and td2.fingerprint == td.fingerprint
    # a changed file -> rebuilt
    with open(files[0], "a") as f:
        f.write("more\n")
    td3 = D.build_token_files(files, tok2, str(tmp_path / "tok"), val_fraction=0.1, progress=False)
    assert tok2.calls > 0 and td3.fingerprint != td.fingerprint
    assert not [n for n in os.listdir(tmp_path / "tok") if ".tmp" in n]


def test_large_file_is_streamed_in_pieces(tmp_path):
    line = "héllo wörld ✓ 0123456789\n"
    p = write(str(tmp_path / "big.txt"), line * 2000)            # ~58 KB
    small = write(str(tmp_path / "small.txt"), "x\n")
    tok = CharTokenizer()
    td = D.build_token_files([p, small], tok, str(tmp_path / "t"), val_fraction=0.2, max_doc_bytes=4096,
                             progress=False)
    n_pieces = td.train.n_docs + td.val.n_docs - 1
    assert n_pieces == len(list(D.iter_pieces(p, 4096))) > 10
    # every piece ends at a line end: each document decodes to whole lines
    allt = np.concatenate([np.asarray(td.train.tokens), np.asarray(td.val.tokens)])
    docs = np.split(allt, np.flatnonzero(allt == 0) + 1)[:-1]
    texts = [bytes((d[:-1] - 1).astype(np.uint8)).decode("utf-8") for d in docs]
    assert sorted(texts) == sorted([t for _, t, _ in D.iter_pieces(p, 4096)] + ["x\n"])
    assert all(t.endswith("\n") for t in texts)
    assert tok.calls == n_pieces + 1 and max(len(t) for t in texts) < 4096 + 100


def test_uint32_for_big_vocab_and_parallel_workers(tmp_path):
    files = corpus(tmp_path, 20)
    tok = CharTokenizer(vocab_size=70300)
    a = D.build_token_files(files, tok, str(tmp_path / "a"), progress=False)
    assert a.train.dtype == np.uint32 and int(np.asarray(a.train.tokens).max()) >= 70000
    b = D.build_token_files(files, tok, str(tmp_path / "b"), workers=2, progress=False)
    assert a.fingerprint == b.fingerprint


def test_tokenizer_id_out_of_range_is_an_error(tmp_path):
    files = corpus(tmp_path, 3)
    tok = CharTokenizer()
    tok.vocab_size = 100
    with pytest.raises(ValueError, match="vocab_size"):
        D.build_token_files(files, tok, str(tmp_path / "t"), progress=False)


def test_split_edge_cases():
    assert D.split_documents(["only"], 0.5) == set()
    two = D.split_documents(["a", "b"], 0.0001)
    assert len(two) == 1
    assert len(D.split_documents([f"d{i}" for i in range(10)], 0.9999)) == 9
    many = D.split_documents([f"d{i}" for i in range(10000)], 0.02)
    assert 150 < len(many) < 250


def test_window_sampler():
    toks = np.arange(1000, dtype=np.uint16)
    s = D.WindowSampler(toks, 4, 16, seed=5)
    x, y = s.next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == np.int32
    assert np.array_equal(y[:, :-1], x[:, 1:]) and np.all(y[:, -1] == x[:, -1] + 1)
    assert np.all(np.diff(x, axis=1) == 1)                         # contiguous windows
    st = s.state_dict()
    nxt = [s.next_batch() for _ in range(3)]
    s2 = D.WindowSampler(toks, 4, 16, seed=0)
    s2.load_state_dict(st)
    for a, b in zip(nxt, [s2.next_batch() for _ in range(3)]):
        assert np.array_equal(a[0], b[0])
    starts = np.concatenate([D.WindowSampler(toks, 64, 16, seed=k).next_batch()[0][:, 0] for k in range(50)])
    assert starts.min() == 0 and starts.max() == 1000 - 17         # every window that fits
    assert not np.array_equal(D.WindowSampler(toks, 4, 16, seed=6).next_batch()[0], x)
    with pytest.raises(ValueError, match="fewer than one window"):
        D.WindowSampler(toks[:10], 1, 16)


def test_validation_batches_fixed():
    toks = np.arange(300, dtype=np.uint16)
    v = D.validation_batches(toks, 3, 16, max_tokens=1000)
    assert sum(x.shape[0] for x, _ in v) == 18 and all(x.shape == (3, 16) for x, _ in v)   # 18 of 18
    assert [x.shape[0] for x, _ in D.validation_batches(toks, 4, 16, 1000)] == [4] * 4    # 16 of 18
    assert [x.shape[0] for x, _ in D.validation_batches(toks[:60], 8, 16, 1000)] == [3]   # < one batch
    assert v[0][0][1, 0] == 16 and v[0][1][0, -1] == 16
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(v, D.validation_batches(toks, 3, 16, 1000)))
    few = D.validation_batches(toks, 4, 16, max_tokens=64)
    assert sum(x.size for x, _ in few) == 64
    assert list(few[0][0][:, 0]) == [0, 6 * 16, 11 * 16, 17 * 16]        # spread over the split
    assert D.validation_batches(toks[:5], 3, 16) == []


def test_unigram_entropy():
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 50, 100000).astype(np.uint16)
    c = np.bincount(toks, minlength=50) / toks.size
    ref = -(c[c > 0] * np.log(c[c > 0])).sum()
    assert D.unigram_entropy(toks, 50, chunk=7777) == pytest.approx(ref, rel=1e-12)
    assert D.unigram_entropy(np.zeros(10, np.uint16), 5) == 0.0


def test_full_disk_while_writing_token_files_names_the_folder(tmp_path, monkeypatch):
    """numpy's tofile on a full disk says only '7178 requested and 1242 written': the error names
    the token folder and the full disk (the writes go to /dev/full here); no temporary is left."""
    assert os.path.exists("/dev/full"), "this test writes to Linux's /dev/full (every write: ENOSPC)"
    import builtins
    real = builtins.open

    def fake_open(path, mode="r", *a, **k):
        if ".bin.tmp-" in os.fspath(path) and "w" in mode:
            real(path, mode).close()            # the temporary exists (and must be removed)
            return real("/dev/full", mode)
        return real(path, mode, *a, **k)
    monkeypatch.setattr(D, "open", fake_open, raising=False)
    folder = str(tmp_path / "tok")
    with pytest.raises(OSError) as ei:
        D.build_token_files([write(str(tmp_path / "c" / "big.txt"), "abc\n" * 10000)], CharTokenizer(), folder,
                            val_fraction=0.1, progress=False)
    msg = str(ei.value)
    assert msg.startswith(folder + ": could not write the token files") and "disk is full" in msg, msg
    assert "requested and" in msg and "\n" not in msg
    assert not [n for n in os.listdir(folder) if ".tmp" in n]
