"""Byte-level BPE training (GPT-2 style), deterministic, with the merges HF ``tokenizers`` makes.

    tok = train_bpe(texts_or_paths, vocab_size=8192)           # -> BPETokenizer
    save_json(tok, "tokenizer.json")                           # slmx.tokenizer.hf_json

Steps:
  1. pre-tokenize: the first regex of the pre-tokenizer splits the corpus into pieces (text
     between matches is a piece too, as :func:`slmx.tokenizer.bpe.split_pieces` does), counted
     by piece; files are streamed in chunks cut at newlines between two non-space characters
     (no pre-tokenizer regex here joins pieces across such a newline). GPT-2's regex (also
     after a digit split, as SmolLM does), Llama 3's and Qwen2's are hand-coded in Cython
     (:class:`slmx._kernels.bpe_train.PieceCounter`, on a code point class table filled from
     the ``regex`` module, so both agree) and run on ``threads`` threads without the GIL; other
     regexes go through ``regex``, and their further regexes split each distinct piece;
  2. the vocabulary starts with the special tokens (ids 0, 1, ...) and the 256 byte symbols of
     GPT-2's byte-to-unicode table, ordered by code point (as HF's BpeTrainer orders its
     alphabet);
  3. merges: :class:`slmx._kernels.bpe_train.BPEMergeState` (Cython) runs HF's merge loop on
     the counted words: the most frequent pair first, ties by the smaller pair of ids; a merge
     whose text is already a token reuses its id. Training stops at ``vocab_size`` tokens (special
     tokens included) or when no pair occurs ``min_frequency`` times.
"""
import collections
import os
import queue
import threading
import time

import numpy as np

from slmx.tokenizer.base import TOKEN_CONTROL, TOKEN_NORMAL, to_utf8
from slmx.tokenizer.bpe import (_GPT2, _LLAMA3, _PRE_KINDS, _QWEN2, BYTE_TO_CHAR, PRE_TOKENIZERS,
                                BPETokenizer, split_pieces)

try:
    import regex as _regex
except ImportError:  # pragma: no cover - regex is a dependency
    _regex = None

__all__ = ["train_bpe", "train_bpe_from_counts", "count_words", "pre_patterns"]

# Chunks of about this many characters are pre-tokenized at a time (files are read in pieces of
# this size; a longer str is cut at the same kind of boundary).
CHUNK_CHARS = 1 << 20

# Patterns equivalent to one of slmx's pre-tokenizers but without gaps between matches, so a
# plain findall gives the pieces: GPT-2's regex leaves a lone whitespace before a non-space
# character unmatched; that character alone is exactly what a final "\s+" matches.
_GAP_FREE = {_GPT2: _GPT2 + r"|\s+"}


def pre_patterns(pre):
    """The regexes of a pre-tokenizer: a ``tokenizer.ggml.pre`` name ("gpt2", "llama3",
    "qwen2", ...), one regex, or a list of regexes applied in turn. Returns (patterns, name) with
    name None for custom regexes."""
    if isinstance(pre, str) and pre in PRE_TOKENIZERS:
        return list(_PRE_KINDS[PRE_TOKENIZERS[pre]][0]), pre
    if isinstance(pre, str):
        pats = [pre]
    else:
        pats = list(pre)
        if not pats or not all(isinstance(p, str) for p in pats):
            raise ValueError("pre: expected a pre-tokenizer name, a regex, or a list of regexes")
    for p in pats:
        try:
            _regex.compile(p)
        except _regex.error as e:
            raise ValueError(f"pre: invalid regex {p!r}: {e}") from None
    return pats, None


# ---------------------------------------------------------------------------------------
# 1. pre-tokenization and word counts
# ---------------------------------------------------------------------------------------

def _cut_point(text, start):
    """An index i >= start with text[i-1] == "\\n", text[i-2] and text[i] not whitespace (a
    place where splitting the text changes no piece), searching forward; -1 if none."""
    n = len(text)
    j = text.find("\n", max(start - 1, 1))
    while 0 <= j < n - 1:
        if not text[j - 1].isspace() and not text[j + 1].isspace():
            return j + 1
        j = text.find("\n", j + 1)
    return -1


def _last_cut_point(text, start):
    """The largest such index >= start (see :func:`_cut_point`), or -1."""
    j = text.rfind("\n", max(start - 1, 1), len(text) - 1)
    while j >= max(start - 1, 1):
        if not text[j - 1].isspace() and not text[j + 1].isspace():
            return j + 1
        j = text.rfind("\n", max(start - 1, 1), j)
    return -1


def _split_text(text, chunk=CHUNK_CHARS):
    """Cut a long str into pieces of about ``chunk`` characters at safe newlines."""
    pos = 0
    n = len(text)
    while n - pos > 2 * chunk:
        cut = _cut_point(text, pos + chunk)
        if cut < 0:
            break
        yield text[pos:cut]
        pos = cut
    yield text[pos:] if pos else text


def _read_file(path, chunk=CHUNK_CHARS):
    """Stream a UTF-8 text file in chunks cut at safe newlines (undecodable bytes are kept
    through ``surrogateescape``; newlines are not translated)."""
    with open(path, "r", encoding="utf-8", errors="surrogateescape", newline="") as f:
        rest = ""
        while True:
            block = f.read(chunk)
            buf = rest + block if rest else block
            if len(block) < chunk:             # the end of the file
                if buf:
                    yield buf
                return
            cut = _last_cut_point(buf, max(len(rest), 1))
            if cut < 0:
                rest = buf
                continue
            yield buf[:cut]
            rest = buf[cut:]


def _iter_chunks(inputs):
    """Text chunks from an iterable of texts (str) and files (os.PathLike)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    for item in inputs:
        if isinstance(item, os.PathLike):
            yield from _read_file(os.fspath(item), CHUNK_CHARS)
        elif isinstance(item, str):
            if len(item) > 2 * CHUNK_CHARS:
                yield from _split_text(item, CHUNK_CHARS)
            elif item:
                yield item
        elif isinstance(item, (bytes, bytearray)):
            raise TypeError("train_bpe: inputs must be str (text) or os.PathLike (files), "
                            "got bytes; decode them first")
        else:
            raise TypeError(f"train_bpe: inputs must be str (text) or os.PathLike (files), "
                            f"got {type(item).__name__}")


class _RegexCounter:
    """Counts the pieces of chunks with the first regex of a pre-tokenizer."""

    def __init__(self, pattern):
        self.rx = _regex.compile(_GAP_FREE.get(pattern, pattern))
        self.plain = self.rx.groups == 0      # findall gives the whole matches

    def __call__(self, text):
        if self.plain:
            c = collections.Counter(self.rx.findall(text))
            c.pop("", None)
            # without gaps between matches the pieces cover the text exactly
            if sum(len(k) * v for k, v in c.items()) == len(text):
                return c
        return collections.Counter(split_pieces(text, [self.rx]))


def _scanners():
    """pre-tokenizer regex list -> how PieceCounter splits with it (the regexes the Cython
    scanners implement, as slmx and as HF write them)."""
    from slmx.tokenizer.hf_json import _HF_LLAMA3, _HF_QWEN2
    gpt2 = lambda pc, text, table: pc.add_gpt2(text, table)      # noqa: E731
    digits = lambda pc, text, table: pc.add_gpt2(text, table, True)      # noqa: E731
    gpt2_hf = _GPT2 + r"|\s+"
    return {
        (_GPT2,): gpt2, (gpt2_hf,): gpt2,
        (r"\p{N}", _GPT2): digits, (r"\p{N}", gpt2_hf): digits,
        (_LLAMA3,): lambda pc, text, table: pc.add_llama3(text, table, 3, False),
        (_HF_LLAMA3,): lambda pc, text, table: pc.add_llama3(text, table, 3, True),
        (_QWEN2,): lambda pc, text, table: pc.add_llama3(text, table, 1, False),
        (_HF_QWEN2,): lambda pc, text, table: pc.add_llama3(text, table, 1, True),
    }


_class_table = None
_class_lock = threading.Lock()


def _classify(text):
    """Make sure the code point class table covers every character of ``text`` (classes
    from the ``regex`` module itself, so the scanner agrees with the regex)."""
    global _class_table
    from slmx._kernels import bpe_train as K
    with _class_lock:
        if _class_table is None:
            _class_table = np.zeros(K.N_CODE_POINTS, dtype=np.uint8)
        table = _class_table
        new = K.mark_unclassified(text, table)
        if new:
            rl, rn, rs = _regex.compile(r"\p{L}"), _regex.compile(r"\p{N}"), _regex.compile(r"\s")
            for c in new:
                ch = chr(c)
                table[c] = (K.CLASS_L if rl.match(ch) else K.CLASS_N if rn.match(ch)
                            else K.CLASS_WS if rs.match(ch) else K.CLASS_OTHER)
    return table


def _count_scanned(inputs, split, nthreads, bar):
    """PieceCounter of the pieces ``split(counter, text, table)`` makes; chunks go to
    ``nthreads`` workers, each chunk to the least loaded so far (by characters: the word order
    does not depend on timing)."""
    from slmx._kernels.bpe_train import PieceCounter
    counters = [PieceCounter() for _ in range(nthreads)]
    if nthreads == 1:
        for c in _iter_chunks(inputs):
            split(counters[0], c, _classify(c))
            if bar is not None:
                bar.update(len(c))
        return counters[0]
    queues = [queue.Queue(maxsize=4) for _ in range(nthreads)]
    errors = []

    def work(q, counter):
        while True:
            item = q.get()
            if item is None:
                return
            if errors:
                continue
            try:
                split(counter, item[0], item[1])
            except BaseException as e:      # re-raised in the caller
                errors.append(e)

    threads = [threading.Thread(target=work, args=(q, c), daemon=True)
               for q, c in zip(queues, counters)]
    for t in threads:
        t.start()
    load = [0] * nthreads
    try:
        for c in _iter_chunks(inputs):
            if errors:
                break
            w = load.index(min(load))
            load[w] += len(c)
            queues[w].put((c, _classify(c)))
            if bar is not None:
                bar.update(len(c))
    finally:
        for q in queues:
            q.put(None)
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    for other in counters[1:]:
        counters[0].merge(other)
    return counters[0]


def _count_regex(inputs, patterns, bar):
    """dict piece -> count with the regex module (any pre-tokenizer)."""
    counter = _RegexCounter(patterns[0])
    total = collections.Counter()
    for c in _iter_chunks(inputs):
        total.update(counter(c))
        if bar is not None:
            bar.update(len(c))
    if len(patterns) > 1:
        rest = [_regex.compile(p) for p in patterns[1:]]
        out = collections.Counter()
        for w, n in total.items():
            for p in split_pieces(w, rest):
                out[p] += n
        total = out
    return total


def _word_arrays(word_counts):
    """(data, offsets, counts) of a dict str -> count (counts > 0 kept)."""
    words, counts = [], []
    for w, n in word_counts.items():
        if n > 0:
            words.append(to_utf8(w))
            counts.append(n)
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    offsets = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = np.frombuffer(b"".join(words), dtype=np.uint8).copy()
    return data, offsets, np.array(counts, dtype=np.int64)


def _count_arrays(inputs, pre, threads, progress):
    if _regex is None:  # pragma: no cover
        raise ImportError("train_bpe needs the 'regex' package (pip install regex)")
    from slmx._kernels.cpu import resolve_threads
    patterns, _ = pre_patterns(pre)
    bar = _bar(progress, "pre-tokenize", unit="char", unit_scale=True)
    try:
        split = _scanners().get(tuple(patterns))
        if split is not None:
            return _count_scanned(inputs, split, resolve_threads(threads), bar).arrays()
        return _word_arrays(_count_regex(inputs, patterns, bar))
    finally:
        if bar is not None:
            bar.close()


def count_words(inputs, pre="gpt2", threads=None, progress=False):
    """dict pre-token -> count over ``inputs`` (str texts and/or os.PathLike files), split
    with the pre-tokenizer ``pre`` (see :func:`pre_patterns`). Files are streamed; GPT-2's,
    Llama 3's and Qwen2's regexes run in Cython on ``threads`` threads, others with ``regex``."""
    data, offsets, counts = _count_arrays(inputs, pre, threads, progress)
    raw = data.tobytes()
    return {raw[offsets[i]:offsets[i + 1]].decode("utf-8", "surrogateescape"): int(counts[i])
            for i in range(len(counts))}


def _bar(progress, desc, **kw):
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(desc=desc, leave=False, **kw)


# ---------------------------------------------------------------------------------------
# 2-3. vocabulary and merges
# ---------------------------------------------------------------------------------------

def train_bpe_from_counts(word_counts, vocab_size, special_tokens=("<|endoftext|>",),
                          pre="gpt2", min_frequency=2, progress=False, bos_token=None,
                          eos_token=None):
    """Train on counted pre-tokens: a dict str -> count (e.g. from :func:`count_words`), or
    the arrays (data uint8, offsets int64, counts int64) of ``PieceCounter.arrays()``. See
    :func:`train_bpe` for the other arguments. Returns a :class:`BPETokenizer`."""
    from slmx._kernels.bpe_train import BPEMergeState

    vocab_size = int(vocab_size)
    specials = list(dict.fromkeys(special_tokens or ()))
    for s in specials:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special_tokens: expected non-empty strings, got {s!r}")
    if vocab_size < len(specials) + 256:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the {len(specials)} special "
                         f"tokens plus the 256 byte tokens")
    patterns, name = pre_patterns(pre)

    # vocabulary: special tokens, then the byte alphabet by code point (HF's order)
    tokens = list(specials)
    index = {t: i for i, t in enumerate(tokens)}
    for c in sorted(BYTE_TO_CHAR.values()):
        if c not in index:
            index[c] = len(tokens)
            tokens.append(c)
    byte_to_id = np.array([index[BYTE_TO_CHAR[b]] for b in range(256)], dtype=np.int32)

    data, offsets, counts = word_counts if isinstance(word_counts, tuple) else _word_arrays(word_counts)
    state = BPEMergeState(data, offsets, counts, byte_to_id)
    del data, offsets, counts

    merges = []                                   # (a, b, new id), HF's order, may repeat
    bar = _bar(progress, "merges", total=vocab_size - len(tokens))
    try:
        while len(tokens) < vocab_size:
            top = state.pop_best(min_frequency)
            if top is None:
                break
            a, b, _ = top
            s = tokens[a] + tokens[b]
            nid = index.get(s)
            if nid is None:
                nid = len(tokens)
                index[s] = nid
                tokens.append(s)
                if bar is not None:
                    bar.update(1)
            merges.append((a, b, nid))
            state.apply_merge(nid)
    finally:
        if bar is not None:
            bar.close()

    # a pair merged twice keeps its last rank (HF's BPE model does the same)
    last = {}
    for r, (a, b, _) in enumerate(merges):
        last[(a, b)] = r
    pairs = sorted(last, key=last.__getitem__)
    merge_texts = [(tokens[a], tokens[b]) for a, b in pairs]

    types = [TOKEN_NORMAL] * len(tokens)
    for s in specials:
        types[index[s]] = TOKEN_CONTROL
    if eos_token is None and "<|endoftext|>" in index:
        eos_token = "<|endoftext|>"
    ids = {}
    for key, t in (("bos_id", bos_token), ("eos_id", eos_token)):
        if t is not None:
            if t not in specials:
                raise ValueError(f"{key[:3]}_token {t!r} is not one of the special tokens")
            ids[key] = index[t]
    kw = dict(pre=name) if name is not None else dict(pre="custom", pre_patterns=patterns)
    return BPETokenizer(tokens, types, merge_texts, ignore_merges=False, **kw, **ids)


def train_bpe(inputs, vocab_size, special_tokens=("<|endoftext|>",), pre="gpt2",
              min_frequency=2, threads=None, progress=True, bos_token=None, eos_token=None):
    """Train a byte-level BPE tokenizer.

    inputs: texts (str) and/or files (os.PathLike, e.g. pathlib.Path; UTF-8, streamed), or one
      of them; each text or file is pre-tokenized as a whole.
    vocab_size: number of tokens, special tokens and the 256 byte tokens included (fewer when
      the corpus runs out of pairs occurring ``min_frequency`` times).
    special_tokens: control tokens, ids 0, 1, ... in this order (never produced from text
      unless ``parse_special``).
    pre: pre-tokenizer: a ``tokenizer.ggml.pre`` name ("gpt2", "llama3", "qwen2", "smollm",
      ...), a regex, or a list of regexes applied in turn.
    threads: threads for the pre-tokenization (default: ``cpu.resolve_threads``).
    bos_token / eos_token: special tokens to use as BOS / EOS (EOS defaults to
      "<|endoftext|>" when it is a special token).

    Deterministic: the same inputs and arguments give the same tokenizer. Returns a
    :class:`slmx.tokenizer.BPETokenizer`; ``tokenizer.train_stats`` holds timings.
    """
    t0 = time.perf_counter()
    counts = _count_arrays(inputs, pre, threads, progress)
    t1 = time.perf_counter()
    tok = train_bpe_from_counts(counts, vocab_size, special_tokens, pre=pre,
                                min_frequency=min_frequency, progress=progress,
                                bos_token=bos_token, eos_token=eos_token)
    t2 = time.perf_counter()
    tok.train_stats = {"count_s": t1 - t0, "merge_s": t2 - t1, "n_words": len(counts[2]),
                       "n_pretokens": int(counts[2].sum())}
    return tok
