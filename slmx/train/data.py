"""Training data: text files -> one tokenization pass -> memory-mapped token files -> random windows.

    files = resolve_data_files(["corpus/", "*.txt"])      # or stdlib_corpus() (the default)
    data = build_token_files(files, tokenizer, "OUT/data")  # train.bin / val.bin / meta.json
    sampler = WindowSampler(data.train.tokens, batch_size=8, context=256, seed=0)
    inputs, targets = sampler.next_batch()                 # int32 (B, T) each

A *document* is a file, or a piece of about ``max_doc_bytes`` of a larger file (cut after a
newline). Documents are tokenized one at a time and streamed to disk with the EOS token after
each, so the corpus is never in memory whole. Each document goes to the validation split when
a hash of its id (path relative to the corpus root, plus the piece number) falls below
``val_fraction``: the split is deterministic and does not depend on the order of the files.
Token files hold uint16 ids when the vocabulary fits (<= 65535 ids), else uint32.
"""
import glob
import hashlib
import json
import math
import os
import sys
import sysconfig

import numpy as np

META_VERSION = 1
DEFAULT_MAX_DOC_BYTES = 1 << 20
DEFAULT_VAL_FRACTION = 0.015

# folders of the standard library left out of the default corpus
_STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


# --- which files ---------------------------------------------------------------------------------

def stdlib_corpus():
    """The Python standard library's own .py files (no tests, no site-packages), sorted."""
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP_DIRS)
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    if not out:
        raise OSError(f"no .py files found in the standard library folder {root}")
    return out


def _looks_binary(path):
    try:
        with open(path, "rb") as f:
            return b"\0" in f.read(8192)
    except OSError:
        return True


def _walk_text_files(folder):
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            p = os.path.join(dirpath, f)
            if not f.startswith(".") and os.path.isfile(p) and not _looks_binary(p):
                out.append(p)
    return out


def _not_regular(path):
    """What a path that exists but is neither a regular file nor a folder is (None otherwise)."""
    import stat
    try:
        m = os.stat(path).st_mode
    except OSError:
        return None
    for test, what in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket")):
        if test(m):
            return what
    return None


def resolve_data_files(specs=None):
    """Files named by `specs` (files, folders walked recursively for text files, or globs);
    with no specs, the standard-library corpus. Sorted, duplicates removed; OSError naming the
    spec when it matches nothing, is not a regular file or folder (/dev/null), or has no text
    (an empty or binary file; folders and globs whose text files are all empty)."""
    if not specs:
        return stdlib_corpus()
    seen, out = set(), []
    for spec in specs:
        spec = os.path.expanduser(os.fspath(spec))
        if os.path.isdir(spec):
            found = _walk_text_files(spec)
        elif os.path.isfile(spec):
            if os.path.getsize(spec) == 0:
                raise OSError(f"--data {spec}: the file is empty")
            if _looks_binary(spec):
                raise OSError(f"--data {spec}: not a text file (it has NUL bytes)")
            found = [spec]
        elif _not_regular(spec):
            raise OSError(f"--data {spec}: not a regular file or folder ({_not_regular(spec)})")
        elif glob.has_magic(spec):
            found = []
            for p in sorted(glob.glob(spec, recursive=True)):
                if os.path.isdir(p):
                    found.extend(_walk_text_files(p))
                elif os.path.isfile(p) and not _looks_binary(p):
                    found.append(p)
        else:
            raise OSError(f"--data {spec}: no such file or folder")
        if not found:
            raise OSError(f"--data {spec}: matches no text files")
        if not any(os.path.getsize(p) for p in found):
            raise OSError(f"--data {spec}: its {len(found)} text file{'s' * (len(found) > 1)} "
                          f"{'are' if len(found) > 1 else 'is'} empty")
        for p in found:
            a = os.path.abspath(p)
            if a not in seen:
                seen.add(a)
                out.append(a)
    return out


# --- documents and the split ---------------------------------------------------------------------

def _corpus_root(files):
    if len(files) == 1:
        return os.path.dirname(files[0])
    return os.path.commonpath(files)


def document_ids(files, max_doc_bytes=DEFAULT_MAX_DOC_BYTES):
    """[(doc_id, path, piece)] for every document: one per file, or one per piece of
    ``max_doc_bytes`` of a larger file. doc_id is "relpath" or "relpath#piece"."""
    root = _corpus_root(files)
    out = []
    for p in files:
        rel = os.path.relpath(p, root).replace(os.sep, "/")
        n = max(1, math.ceil(os.path.getsize(p) / max_doc_bytes))
        if n == 1:
            out.append((rel, p, 0))
        else:
            out.extend((f"{rel}#{k}", p, k) for k in range(n))
    return out


def _doc_hash(doc_id):
    return int.from_bytes(hashlib.sha1(doc_id.encode("utf-8", "surrogateescape")).digest()[:8], "big") / 2.0**64


def split_documents(doc_ids, val_fraction=DEFAULT_VAL_FRACTION):
    """The set of doc ids in the validation split: hash(doc_id) < val_fraction. With two or more
    documents the split is never empty on either side (the lowest hash is taken when none falls
    under the fraction); with one document there is no validation split."""
    ids = list(doc_ids)
    if len(ids) < 2 or val_fraction <= 0:
        return set()
    h = {d: _doc_hash(d) for d in ids}
    val = {d for d in ids if h[d] < val_fraction}
    if not val:
        val = {min(ids, key=h.get)}
    if len(val) == len(ids):
        val.discard(max(ids, key=h.get))
    return val


def iter_pieces(path, max_doc_bytes=DEFAULT_MAX_DOC_BYTES):
    """Yield (piece, text, n_bytes) for one file read in pieces of max_doc_bytes, each extended to
    the end of its line (so a piece boundary is a character boundary in UTF-8 text). Invalid UTF-8
    is replaced. An empty file yields nothing."""
    with open(path, "rb") as f:
        k = 0
        while True:
            b = f.read(max_doc_bytes)
            if b and not b.endswith(b"\n"):
                b += f.readline(max_doc_bytes)
            if not b:
                return
            yield k, b.decode("utf-8", errors="replace"), len(b)
            k += 1


# --- token files ---------------------------------------------------------------------------------

def token_dtype(vocab_size):
    """uint16 when every id fits (vocab_size <= 65535), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


class TokenFile:
    """One split's tokens on disk: .path, .dtype, .n_tokens, .n_docs, .tokens (read-only np.memmap)."""

    def __init__(self, path, dtype, n_tokens, n_docs=0):
        self.path, self.dtype, self.n_tokens, self.n_docs = path, np.dtype(dtype), int(n_tokens), int(n_docs)
        size = os.path.getsize(path)
        if size != self.n_tokens * self.dtype.itemsize:
            raise OSError(f"{path}: {size} bytes, expected {self.n_tokens} tokens of {self.dtype.name}")
        self.tokens = (np.memmap(path, dtype=self.dtype, mode="r", shape=(self.n_tokens,))
                       if self.n_tokens else np.zeros(0, self.dtype))

    @property
    def nbytes(self):
        return self.n_tokens * self.dtype.itemsize

    def __len__(self):
        return self.n_tokens


class TokenData:
    """The result of build_token_files: .train and .val TokenFiles, .meta (the meta.json dict)."""

    def __init__(self, folder, meta):
        self.folder, self.meta = folder, meta
        dt = meta["dtype"]
        self.train = TokenFile(os.path.join(folder, meta["train"]["file"]), dt, meta["train"]["n_tokens"],
                               meta["train"]["n_docs"])
        self.val = TokenFile(os.path.join(folder, meta["val"]["file"]), dt, meta["val"]["n_tokens"],
                             meta["val"]["n_docs"])

    @property
    def fingerprint(self):
        """Identifies the token files' contents (sha256 of both)."""
        return self.meta["train"]["sha256"] + ":" + self.meta["val"]["sha256"]


def _file_sha256(path, chunk=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def _fsync_write_json(path, obj):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


_WORKER_TOKENIZER = None


def _worker_encode(text):
    return np.asarray(_WORKER_TOKENIZER.encode(text, add_bos=False, add_eos=False, parse_special=False),
                      dtype=np.uint32)


def _iter_documents(files, max_doc_bytes):
    """Yield (doc_id, text, n_bytes) for every non-empty document, file by file, streaming."""
    root = _corpus_root(files)
    for p in files:
        rel = os.path.relpath(p, root).replace(os.sep, "/")
        single = os.path.getsize(p) <= max_doc_bytes
        for k, text, nbytes in iter_pieces(p, max_doc_bytes):
            yield (rel if single else f"{rel}#{k}"), text, nbytes


def _start_pool(tokenizer, workers):
    """A fork pool whose workers hold `tokenizer` (None when workers <= 1 or fork is missing).
    Started before any progress-bar thread exists, so no lock is copied held into a child."""
    global _WORKER_TOKENIZER
    if workers <= 1 or "fork" not in _mp_methods():
        return None
    import multiprocessing as mp
    _WORKER_TOKENIZER = tokenizer          # inherited by the forked workers (reset when they end)
    return mp.get_context("fork").Pool(workers)


def _iter_encoded(docs, tokenizer, pool=None, group=32):
    """Yield (doc_id, ids uint32 array, n_bytes) for each document of `docs`, in order; with a
    pool, groups of documents are encoded in parallel (a bounded number in flight)."""
    if pool is not None:
        import itertools
        it = iter(docs)
        while True:
            chunk = list(itertools.islice(it, group))
            if not chunk:
                return
            for (d, _, nb), ids in zip(chunk, pool.map(_worker_encode, [t for _, t, _ in chunk], chunksize=1)):
                yield d, ids, nb
    for d, text, nb in docs:
        ids = tokenizer.encode(text, add_bos=False, add_eos=False, parse_special=False)
        yield d, np.asarray(ids, dtype=np.uint32), nb


def _mp_methods():
    import multiprocessing as mp
    return mp.get_all_start_methods()


def tokenizer_eos_id(tokenizer):
    """The id put between documents: the tokenizer's EOS, else <|endoftext|>; ValueError if none."""
    eos = getattr(tokenizer, "eos_id", None)
    if eos is None and hasattr(tokenizer, "token_id"):
        eos = tokenizer.token_id("<|endoftext|>")
    if eos is None:
        raise ValueError("the tokenizer has no end-of-sequence token to separate documents")
    return int(eos)


def build_token_files(files, tokenizer, folder, val_fraction=DEFAULT_VAL_FRACTION,
                      max_doc_bytes=DEFAULT_MAX_DOC_BYTES, tokenizer_id="", workers=1, progress=True):
    """Tokenize `files` once into FOLDER/train.bin and FOLDER/val.bin (+ meta.json) -> TokenData.

    Reuses existing token files when meta.json records the same files (paths, sizes, mtimes),
    tokenizer_id, split and piece size. Each document's ids are followed by the EOS id. The
    files are written under temporary names, fsynced and renamed, meta.json last.
    """
    os.makedirs(folder, exist_ok=True)
    vocab = int(tokenizer.vocab_size)
    eos = tokenizer_eos_id(tokenizer)
    dtype = token_dtype(vocab)
    files = [os.path.abspath(p) for p in files]
    key = {
        "version": META_VERSION, "dtype": dtype.name, "vocab_size": vocab, "eos_id": eos,
        "tokenizer": tokenizer_id, "val_fraction": float(val_fraction), "max_doc_bytes": int(max_doc_bytes),
        "files": [[p, os.path.getsize(p), os.stat(p).st_mtime_ns] for p in files],
    }
    meta_path = os.path.join(folder, "meta.json")
    if os.path.exists(meta_path):
        try:
            with open(meta_path) as f:
                old = json.load(f)
            if old.get("key") == key:
                return TokenData(folder, old)
        except (OSError, ValueError, KeyError):
            pass

    docs = document_ids(files, max_doc_bytes)
    val_ids = split_documents([d for d, _, _ in docs], val_fraction)
    total_bytes = sum(os.path.getsize(p) for p in files)

    tmp = {s: os.path.join(folder, f"{s}.bin.tmp-{os.getpid()}") for s in ("train", "val")}
    counts = {"train": [0, 0], "val": [0, 0]}     # tokens, docs
    eos_arr = np.array([eos], dtype=dtype)
    pool = _start_pool(tokenizer, workers)
    bar = _progress(total_bytes, "tokenize", progress)
    try:
        with open(tmp["train"], "wb") as ft, open(tmp["val"], "wb") as fv:
            for doc_id, ids, nbytes in _iter_encoded(_iter_documents(files, max_doc_bytes), tokenizer, pool):
                v = doc_id in val_ids
                if ids.size and int(ids.max()) >= vocab:
                    raise ValueError(f"tokenizer produced id {int(ids.max())} >= vocab_size {vocab}")
                s = "val" if v else "train"
                f = fv if v else ft
                ids.astype(dtype).tofile(f)
                eos_arr.tofile(f)
                counts[s][0] += ids.size + 1
                counts[s][1] += 1
                bar.update(nbytes)
            for f in (ft, fv):
                f.flush()
                os.fsync(f.fileno())
    except BaseException as e:
        for p in tmp.values():
            if os.path.exists(p):
                os.remove(p)
        if isinstance(e, OSError) and not getattr(e, "filename", None):
            # numpy's tofile says only "7178 requested and 1242 written" (no errno, no file)
            import errno
            why = ("the disk is full" if e.errno == errno.ENOSPC or "requested and" in str(e)
                   else "write failed")
            err = OSError(f"{folder}: could not write the token files (train.bin/val.bin), {why} "
                          f"({' '.join(str(e.strerror or e).split())})")
            err.errno = e.errno
            raise err from e
        raise
    finally:
        bar.close()
        if pool is not None:
            global _WORKER_TOKENIZER
            pool.terminate()
            pool.join()
            _WORKER_TOKENIZER = None
    meta = {"key": key, "dtype": dtype.name, "vocab_size": vocab, "eos_id": eos,
            "n_documents": counts["train"][1] + counts["val"][1]}
    for s in ("train", "val"):
        os.replace(tmp[s], os.path.join(folder, f"{s}.bin"))
        meta[s] = {"file": f"{s}.bin", "n_tokens": counts[s][0], "n_docs": counts[s][1],
                   "sha256": _file_sha256(os.path.join(folder, f"{s}.bin"))}
    _fsync_write_json(meta_path, meta)
    return TokenData(folder, meta)


def _progress(total, desc, enabled):
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr,
                        dynamic_ncols=True, mininterval=0.5)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            pass

    class _Null:
        def update(self, n):
            pass

        def close(self):
            pass
    return _Null()


# --- statistics ----------------------------------------------------------------------------------

def unigram_entropy(tokens, vocab_size, chunk=1 << 22):
    """Entropy of the token frequencies in nats/token: -sum p log p (the loss of a model that
    knows only how often each token occurs). Counted in chunks over the memmap."""
    counts = np.zeros(int(vocab_size), dtype=np.int64)
    for i in range(0, len(tokens), chunk):
        counts += np.bincount(np.asarray(tokens[i:i + chunk]), minlength=vocab_size)[:vocab_size]
    n = counts.sum()
    if n == 0:
        return float("nan")
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


# --- sampling ------------------------------------------------------------------------------------

class WindowSampler:
    """Random windows of context+1 tokens from a 1-D token array (memmap), seeded.

    next_batch() -> (inputs, targets), int32 (batch_size, context) each, targets = inputs shifted
    by one. Start offsets are uniform over every window that fits. state_dict() holds the
    generator's bit-generator state and the number of batches drawn, so a resumed sampler
    continues with exactly the windows an uninterrupted one would draw.
    """

    def __init__(self, tokens, batch_size, context, seed=0):
        if batch_size <= 0 or context <= 0:
            raise ValueError(f"batch_size and context must be positive, got {batch_size}, {context}")
        if len(tokens) < context + 1:
            raise ValueError(f"the training split has {len(tokens)} tokens, fewer than one window of "
                             f"context + 1 = {context + 1}; use more data or a shorter --context")
        self.tokens, self.batch_size, self.context = tokens, int(batch_size), int(context)
        self.seed = int(seed)
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self.batches_drawn = 0
        self._offsets = np.arange(self.context + 1, dtype=np.int64)

    def next_batch(self):
        n_starts = len(self.tokens) - self.context     # starts 0 .. len - context - 1
        starts = self.rng.integers(0, n_starts, size=self.batch_size)
        win = np.asarray(self.tokens[(starts[:, None] + self._offsets)], dtype=np.int32)
        self.batches_drawn += 1
        return np.ascontiguousarray(win[:, :-1]), np.ascontiguousarray(win[:, 1:])

    def state_dict(self):
        return {"seed": self.seed, "batches_drawn": self.batches_drawn,
                "bit_generator": _jsonable(self.rng.bit_generator.state)}

    def load_state_dict(self, d):
        self.seed = int(d["seed"])
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self.rng.bit_generator.state = d["bit_generator"]
        self.batches_drawn = int(d["batches_drawn"])


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def validation_batches(tokens, batch_size, context, max_tokens=1 << 16):
    """Fixed validation windows of context+1 tokens: the split cut into non-overlapping windows
    (window w starts at w * context), of which at most max_tokens // context are used, spread
    evenly over the whole split; in batches of batch_size (a smaller last batch only when there
    is less than one batch). Returns a list of (inputs, targets) int32 arrays, the same each call."""
    n_all = (len(tokens) - 1) // context if len(tokens) > context else 0
    n_win = min(n_all, max(1, max_tokens // context))
    if n_win >= batch_size:
        n_win -= n_win % batch_size      # whole batches only: one activation shape for the model
    picked = np.linspace(0, n_all - 1, n_win).round().astype(np.int64) if n_win else []
    out = []
    for b in range(0, n_win, batch_size):
        win = np.stack([np.asarray(tokens[w * context:w * context + context + 1], dtype=np.int32)
                        for w in picked[b:b + batch_size]])
        out.append((np.ascontiguousarray(win[:, :-1]), np.ascontiguousarray(win[:, 1:])))
    return out
