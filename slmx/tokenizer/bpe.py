"""Byte-level BPE tokenizer (GGUF ``tokenizer.ggml.model = "gpt2"``): GPT-2, Llama 3, Qwen2, SmolLM, ...

Encoding of a raw text (after special tokens were split out):
  1. pre-tokenize: the regexes of ``tokenizer.ggml.pre`` split the text in turn (each regex
     splits every piece the previous one made; text between matches stays a piece);
  2. each piece's UTF-8 bytes are mapped to printable characters (GPT-2's byte-to-unicode
     table), then merged pairwise by merge rank (lowest first, ties leftmost) — a priority
     queue over the piece's characters; results are cached per piece;
  3. each final symbol is its token id.
Decoding maps the characters of normal tokens back to bytes.

The encoder itself (:class:`BPETokenizer`) takes plain Python data (tokens, token types,
merge pairs, a pre-tokenizer name), so other loaders (e.g. a HF ``tokenizer.json`` loader)
only need to produce those.
"""
import heapq

from slmx.errors import FormatError
from slmx.tokenizer.base import (KEY, TOKEN_BYTE, Tokenizer, meta_bool, meta_str,
                                 meta_str_list, meta_token_types, to_utf8)

try:
    import regex as _regex
except ImportError:  # pragma: no cover - regex is a dependency
    _regex = None


def bytes_to_unicode():
    """GPT-2's byte -> character table: printable Latin-1 bytes map to themselves, the other
    68 bytes (controls, space, ...) to U+0100 onwards, in byte order."""
    keep = (list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100)))
    table = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
# str.translate table: latin-1 char (= raw byte) -> mapped char
_ENCODE_TABLE = {b: c for b, c in BYTE_TO_CHAR.items()}

# --- pre-tokenizer regexes (the ones llama.cpp uses for each tokenizer.ggml.pre) -----------
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
           r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
          r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
          r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# name -> (regexes applied in turn, ignore_merges, default add_bos)
_PRE_KINDS = {
    "default": ([r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"], False, False),
    "gpt2": ([_GPT2], False, False),
    "llama3": ([_LLAMA3], True, True),
    "dbrx": ([_LLAMA3], False, False),
    "qwen2": ([_QWEN2], False, False),
    "starcoder": ([r"\p{N}", _GPT2], False, False),
    "falcon": ([r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"], False, False),
    "gpt4o": ([_GPT4O], False, False),
}
PRE_TOKENIZERS = {
    "default": "default",
    "gpt2": "gpt2", "gpt-2": "gpt2", "phi-2": "gpt2", "mpt": "gpt2", "olmo": "gpt2",
    "jais": "gpt2", "trillion": "gpt2", "exaone4": "gpt2", "roberta-bpe": "gpt2",
    "llama3": "llama3", "llama-v3": "llama3", "llama-bpe": "llama3", "falcon3": "llama3",
    "falcon-h1": "llama3", "pixtral": "llama3",
    "dbrx": "dbrx", "smaug-bpe": "dbrx", "chatglm-bpe": "dbrx", "glm4": "dbrx",
    "qwen2": "qwen2", "deepseek-r1-qwen": "qwen2", "stablelm2": "qwen2", "megrez": "qwen2",
    "hunyuan": "qwen2",
    "starcoder": "starcoder", "smollm": "starcoder", "refact": "starcoder",
    "command-r": "starcoder", "codeshell": "starcoder", "exaone": "starcoder",
    "minerva-7b": "starcoder",
    "falcon": "falcon",
    "gpt-4o": "gpt4o", "llama4": "gpt4o",
}


def _compile(patterns):
    if _regex is None:  # pragma: no cover
        raise ImportError("the byte-level BPE tokenizer needs the 'regex' package (pip install regex)")
    return [_regex.compile(p) for p in patterns]


def split_pieces(text, compiled):
    """Split ``text`` with each regex in turn; the text between matches is kept as a piece."""
    pieces = [text]
    for rx in compiled:
        out = []
        for p in pieces:
            pos = 0
            for m in rx.finditer(p):
                a, b = m.span()
                if a == b:
                    continue
                if a > pos:
                    out.append(p[pos:a])
                out.append(p[a:b])
                pos = b
            if pos < len(p):
                out.append(p[pos:])
        pieces = out
    return pieces


class BPETokenizer(Tokenizer):
    """Byte-level BPE. ``merges`` is a sequence of (left, right) token-text pairs, rank = order."""

    model = "gpt2"
    _CACHE_MAX = 65536

    def __init__(self, tokens, token_types, merges, *, pre="default", pre_patterns=None,
                 ignore_merges=None, **kwargs):
        """tokens: list of str (byte-to-unicode form; special tokens raw); token_types: ints;
        merges: (left, right) pairs by rank; pre: a ``tokenizer.ggml.pre`` name, or
        ``pre_patterns``: the regexes to split with (e.g. from a HF tokenizer.json)."""
        super().__init__(tokens, token_types, **kwargs)
        if pre_patterns is not None:
            patterns, default_ignore = list(pre_patterns), False
        else:
            kind = PRE_TOKENIZERS.get(pre)
            if kind is None:
                raise FormatError(f"{KEY}pre: unsupported pre-tokenizer {pre!r} "
                                  f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})")
            patterns, default_ignore, _ = _PRE_KINDS[kind]
        self.pre = pre
        self._split = _compile(patterns)
        self.ignore_merges = default_ignore if ignore_merges is None else bool(ignore_merges)
        ranks = {}
        for r, pair in enumerate(merges):
            ranks.setdefault(pair, r)
        self._ranks = ranks
        self._cache = {}

    @classmethod
    def _from_metadata(cls, meta):
        tokens = meta_str_list(meta, KEY + "tokens")
        n = len(tokens)
        if n == 0:
            raise FormatError(f"{KEY}tokens: the vocabulary is empty")
        types = meta_token_types(meta, KEY + "token_type", n)
        pre = meta_str(meta, KEY + "pre", default="default") or "default"
        if pre not in PRE_TOKENIZERS:
            raise FormatError(f"{KEY}pre: unsupported pre-tokenizer {pre!r} "
                              f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})")
        merges = cls.parse_merges(meta_str_list(meta, KEY + "merges"), tokens)
        kw = cls._common_kwargs(meta, tokens, types)
        default_bos = _PRE_KINDS[PRE_TOKENIZERS[pre]][2]
        return cls(tokens, types, merges, pre=pre,
                   add_bos=meta_bool(meta, KEY + "add_bos_token", default_bos),
                   add_eos=meta_bool(meta, KEY + "add_eos_token", False), **kw)

    @staticmethod
    def parse_merges(merges, tokens, key=KEY + "merges"):
        """["a b", ...] -> [("a", "b"), ...]; both sides and their concatenation must be tokens."""
        vocab = set(tokens)
        out = []
        for i, m in enumerate(merges):
            j = m.find(" ", 1)
            if j < 0:
                raise FormatError(f"{key}[{i}]: {m!r} is not a pair 'left right'"[:200])
            a, b = m[:j], m[j + 1:]
            if not b:
                raise FormatError(f"{key}[{i}]: {m!r} is not a pair 'left right'"[:200])
            for part in (a, b, a + b):
                if part not in vocab:
                    raise FormatError(f"{key}[{i}]: {m!r} names {part!r}, which is not a token"[:200])
            out.append((a, b))
        return out

    # -- encoding -------------------------------------------------------------------------

    def _encode_raw(self, text, out):
        cache = self._cache
        for piece in split_pieces(text, self._split):
            ids = cache.get(piece)
            if ids is None:
                word = to_utf8(piece).decode("latin-1").translate(_ENCODE_TABLE)
                ids = self._bpe_word(word)
                if len(cache) >= self._CACHE_MAX:
                    cache.clear()
                cache[piece] = ids
            out.extend(ids)

    def _bpe_word(self, word):
        """Token ids of one pre-token (already in byte-to-unicode form)."""
        get = self._piece_to_id.get
        if self.ignore_merges:
            i = get(word)
            if i is not None:
                return (i,)
        n = len(word)
        if n == 1:
            return self._symbol_ids(word)
        ranks = self._ranks
        size = [1] * n
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []
        for k in range(n - 1):
            r = ranks.get((word[k], word[k + 1]))
            if r is not None:
                heap.append((r, k, k + 1, 2))
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            _, left, right, sz = pop(heap)
            sl = size[left]
            sr = size[right]
            if sl == 0 or sr == 0 or sl + sr != sz:
                continue
            size[left] = sz
            size[right] = 0
            r = nxt[right]
            nxt[left] = r
            if r >= 0:
                prv[r] = left
            p = prv[left]
            if p >= 0:
                rk = ranks.get((word[p:left], word[left:left + sz]))
                if rk is not None:
                    push(heap, (rk, p, left, size[p] + sz))
            if r >= 0:
                rk = ranks.get((word[left:left + sz], word[r:r + size[r]]))
                if rk is not None:
                    push(heap, (rk, left, r, sz + size[r]))
        ids = []
        k = 0
        while k >= 0:
            sym = word[k:k + size[k]]
            i = get(sym)
            if i is None:
                ids.extend(self._symbol_ids(sym))
            else:
                ids.append(i)
            k = nxt[k]
        return tuple(ids)

    def _symbol_ids(self, sym):
        """Ids of a symbol character by character: a character missing from the vocabulary
        becomes the unknown token, or is dropped when there is none."""
        get = self._piece_to_id.get
        ids = []
        for c in sym:
            i = get(c)
            if i is None:
                i = self.unk_id
            if i is not None:
                ids.append(i)
        return tuple(ids)

    # -- decoding -------------------------------------------------------------------------

    def _normal_piece(self, id):
        text = self.tokens[id]
        if self.token_types[id] == TOKEN_BYTE and len(text) == 6 and text.startswith("<0x") \
                and text.endswith(">"):
            try:
                return bytes((int(text[3:5], 16),))
            except ValueError:
                pass
        try:
            return bytes([CHAR_TO_BYTE[c] for c in text])
        except KeyError:
            # a character outside the byte table: keep it as UTF-8
            return b"".join(bytes((CHAR_TO_BYTE[c],)) if c in CHAR_TO_BYTE else to_utf8(c)
                            for c in text)

    # -- HF tokenizer.json ----------------------------------------------------------------

    def save_json(self, path, write_config=False):
        """Write this tokenizer as a HF ``tokenizer.json`` (see :func:`slmx.tokenizer.hf_json.save_json`)."""
        from slmx.tokenizer.hf_json import save_json
        return save_json(self, path, write_config)
