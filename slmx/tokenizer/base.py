"""Tokenizer base: vocabulary, metadata validation, special-token partition, decoding.

A tokenizer is built from GGUF metadata (``tokenizer.ggml.*`` keys), which come from an
untrusted file: every array is checked for element type and length, every special-token id
for range, and a bad value raises :class:`slmx.errors.FormatError` naming the key.

Token types follow GGUF / llama.cpp: 1 normal, 2 unknown, 3 control, 4 user-defined,
5 unused, 6 byte (0 undefined).
"""
import codecs
import numbers

import numpy as np

from slmx.errors import FormatError

TOKEN_UNDEFINED = 0
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

KEY = "tokenizer.ggml."

# Texts of tokens that end a turn or a generation (llama.cpp keeps the same kind of list);
# they join ``eos_ids`` when present and are treated as control tokens.
_END_OF_GENERATION_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>",
)


def to_utf8(s):
    """UTF-8 bytes of ``s``; lone surrogates from ``surrogateescape`` decoding (invalid UTF-8
    in a vocabulary) become their original bytes, other lone surrogates are encoded as is."""
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return s.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return s.encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------------------
# metadata validation
# ---------------------------------------------------------------------------------------

def _is_int(v):
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def meta_str(meta, key, default=None, required=False):
    """``meta[key]`` as a str (bytes are decoded as UTF-8); FormatError if of another type."""
    if key not in meta or meta[key] is None:
        if required:
            raise FormatError(f"{key}: missing from the metadata")
        return default
    v = meta[key]
    if isinstance(v, (bytes, bytearray, memoryview)):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(f"{key}: not valid UTF-8 ({e})") from None
    if not isinstance(v, str):
        raise FormatError(f"{key}: expected a string, got {type(v).__name__}")
    return str(v)


def meta_bool(meta, key, default):
    """``meta[key]`` as a bool (bool, numpy bool or the ints 0/1)."""
    if key not in meta or meta[key] is None:
        return default
    v = meta[key]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if _is_int(v) and int(v) in (0, 1):
        return bool(v)
    raise FormatError(f"{key}: expected a boolean, got {v!r}")


def meta_token_id(meta, key, n_tokens, default=None):
    """``meta[key]`` as a token id in ``[0, n_tokens)``, or ``default`` when absent."""
    if key not in meta or meta[key] is None:
        return default
    v = meta[key]
    if not _is_int(v):
        raise FormatError(f"{key}: expected an integer token id, got {type(v).__name__} {v!r}")
    v = int(v)
    if not 0 <= v < n_tokens:
        raise FormatError(f"{key}: token id {v} is out of range for a vocabulary of {n_tokens}")
    return v


def meta_str_list(meta, key, required=True):
    """``meta[key]`` as a list of str; every element must be a str (or UTF-8 bytes)."""
    if key not in meta or meta[key] is None:
        if required:
            raise FormatError(f"{key}: missing from the metadata")
        return None
    v = meta[key]
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
        raise FormatError(f"{key}: expected an array of strings, got {type(v).__name__}")
    if isinstance(v, np.ndarray) and v.ndim != 1:
        raise FormatError(f"{key}: expected a 1-D array of strings, got shape {v.shape}")
    out = list(v)
    for i, t in enumerate(out):
        if type(t) is str:
            continue
        if isinstance(t, str):
            out[i] = str(t)
        elif isinstance(t, (bytes, bytearray)):
            try:
                out[i] = bytes(t).decode("utf-8")
            except UnicodeDecodeError:
                raise FormatError(f"{key}[{i}]: not valid UTF-8") from None
        else:
            raise FormatError(f"{key}[{i}]: expected a string, got {type(t).__name__} {t!r}"[:200])
    return out


def _numeric_array(meta, key, n, kinds, what):
    v = meta[key]
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
        raise FormatError(f"{key}: expected an array of {what}, got {type(v).__name__}")
    if isinstance(v, np.ndarray) and v.dtype == object:
        v = list(v)
    if not isinstance(v, np.ndarray):
        # numpy would turn True into 1.0 and a mix of ints and strs into strs: check each type
        ok = float if kinds == "fiu" else int
        for t in set(map(type, v)):
            if t is bool or issubclass(t, np.bool_) or not (
                    issubclass(t, (ok, numbers.Integral, np.number))
                    and (kinds == "fiu" or issubclass(t, (numbers.Integral, np.integer)))):
                bad = next(x for x in v if type(x) is t)
                raise FormatError(f"{key}: expected {what}, found element {bad!r} "
                                  f"of type {t.__name__}"[:200])
    try:
        a = np.asarray(v)
    except (ValueError, TypeError) as e:
        raise FormatError(f"{key}: not an array of {what} ({e})") from None
    if a.ndim != 1:
        raise FormatError(f"{key}: expected a 1-D array of {what}, got shape {a.shape}")
    if a.size and a.dtype.kind not in kinds:
        bad = next((x for x in v if isinstance(x, (bool, np.bool_)) or not isinstance(x, (numbers.Real, np.number))), None)
        raise FormatError(f"{key}: expected {what}, found element {bad!r} "
                          f"(array dtype {a.dtype})"[:200])
    if len(a) != n:
        raise FormatError(f"{key}: has {len(a)} entries but tokenizer.ggml.tokens has {n}")
    return a


def meta_scores(meta, key, n):
    """``meta[key]`` as float32 scores, one per token (ints and floats accepted, no NaN)."""
    if key not in meta or meta[key] is None:
        return np.zeros(n, dtype=np.float32)
    a = _numeric_array(meta, key, n, "fiu", "numbers").astype(np.float32)
    if np.isnan(a).any():
        raise FormatError(f"{key}: contains NaN at index {int(np.flatnonzero(np.isnan(a))[0])}")
    return a


def meta_token_types(meta, key, n):
    """``meta[key]`` as int8 token types in 0..6, one per token (all normal when absent)."""
    if key not in meta or meta[key] is None:
        return np.full(n, TOKEN_NORMAL, dtype=np.int8)
    a = _numeric_array(meta, key, n, "iu", "integers")
    if a.size and (a.min() < 0 or a.max() > 6):
        i = int(np.flatnonzero((a < 0) | (a > 6))[0])
        raise FormatError(f"{key}[{i}]: token type {int(a[i])} is not one of 0..6")
    return a.astype(np.int8)


def piece_index(tokens, key=KEY + "tokens"):
    """dict piece -> id; FormatError on a duplicate piece. Empty pieces are left out."""
    index = dict(zip(tokens, range(len(tokens))))
    if len(index) != len(tokens):
        seen = {}
        for i, t in enumerate(tokens):
            if t in seen:
                raise FormatError(f"{key}: duplicate token {t!r} at ids {seen[t]} and {i}")
            seen[t] = i
    index.pop("", None)
    return index


# ---------------------------------------------------------------------------------------
# the tokenizer
# ---------------------------------------------------------------------------------------

class Tokenizer:
    """Base of the SPM and byte-level BPE tokenizers.

    Build one with :meth:`from_metadata` (a GGUF metadata dict) or :meth:`from_gguf` (a path).
    Subclasses implement ``_encode_raw(text, out)`` (append the ids of a text without special
    tokens) and ``_normal_piece(id)`` (the bytes of a normal token).

    Attributes: ``vocab_size``, ``bos_id``, ``eos_id``, ``unk_id``, ``pad_id`` (None when
    absent), ``eos_ids`` (frozenset: eos plus end-of-turn tokens such as Gemma's
    ``<end_of_turn>``), ``add_bos``, ``add_eos`` (metadata defaults), ``chat_template``.
    """

    model = None  # "llama" (SPM) or "gpt2" (byte-level BPE)

    def __init__(self, tokens, token_types, *, bos_id=None, eos_id=None, unk_id=None,
                 pad_id=None, eot_id=None, eom_id=None, add_bos=False, add_eos=False,
                 chat_template=None, piece_to_id=None):
        n = len(tokens)
        self.tokens = tokens
        self.token_types = np.array(token_types, dtype=np.int8)
        if len(self.token_types) != n:
            raise FormatError(f"{KEY}token_type: has {len(self.token_types)} entries, tokens has {n}")
        self._piece_to_id = piece_index(tokens) if piece_to_id is None else piece_to_id
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = bos_id, eos_id, unk_id, pad_id
        if add_bos and bos_id is None:
            raise FormatError(f"{KEY}add_bos_token is true but {KEY}bos_token_id is not set")
        if add_eos and eos_id is None:
            raise FormatError(f"{KEY}add_eos_token is true but {KEY}eos_token_id is not set")
        self.add_bos, self.add_eos = bool(add_bos), bool(add_eos)
        self.chat_template = chat_template

        eos_ids = {i for i in (eos_id, eot_id, eom_id) if i is not None}
        for text in _END_OF_GENERATION_TEXTS:
            i = self._piece_to_id.get(text)
            if i is not None:
                eos_ids.add(i)
                if self.token_types[i] in (TOKEN_NORMAL, TOKEN_USER_DEFINED, TOKEN_UNDEFINED):
                    self.token_types[i] = TOKEN_CONTROL   # as llama.cpp does
        self.eos_ids = frozenset(eos_ids)

        # Tokens split out of raw text before the model runs: control and unknown tokens
        # only with parse_special, user-defined tokens always. Longest first (llama.cpp).
        types = self.token_types
        special = np.flatnonzero((types == TOKEN_CONTROL) | (types == TOKEN_UNKNOWN)
                                 | (types == TOKEN_USER_DEFINED))
        special = [int(i) for i in special if tokens[i]]
        special.sort(key=lambda i: (-len(tokens[i]), i))
        self._special_all = [(tokens[i], i) for i in special]
        self._special_user = [(tokens[i], i) for i in special if types[i] == TOKEN_USER_DEFINED]
        self._pieces = [None] * n      # token id -> bytes (special tokens rendered), lazily

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_metadata(cls, meta):
        """Build the tokenizer a GGUF metadata dict describes (``tokenizer.ggml.model``:
        "llama" = SPM, "gpt2" = byte-level BPE). Raises FormatError on bad metadata."""
        if not hasattr(meta, "get") or not hasattr(meta, "__contains__"):
            raise FormatError(f"tokenizer metadata: expected a dict, got {type(meta).__name__}")
        model = meta_str(meta, KEY + "model", required=True)
        if model == "llama":
            from slmx.tokenizer.spm import SPMTokenizer
            return SPMTokenizer._from_metadata(meta)
        if model == "gpt2":
            from slmx.tokenizer.bpe import BPETokenizer
            return BPETokenizer._from_metadata(meta)
        raise FormatError(f"{KEY}model: unsupported tokenizer model {model!r} "
                          f"(supported: 'llama' (SPM), 'gpt2' (byte-level BPE))")

    @classmethod
    def from_gguf(cls, path):
        """Read the tokenizer of a GGUF file (via ``slmx.formats.gguf.read(path).metadata``)."""
        from slmx.formats import gguf
        return cls.from_metadata(gguf.read(path).metadata)

    @classmethod
    def from_json(cls, path):
        """Read a HF ``tokenizer.json`` (byte-level BPE; see :func:`slmx.tokenizer.hf_json.load_json`)."""
        from slmx.tokenizer.hf_json import load_json
        return load_json(path)

    @staticmethod
    def _common_kwargs(meta, tokens, token_types, spm_defaults=False):
        n = len(tokens)
        ids = {}
        # llama.cpp's defaults for SPM vocabularies when the keys are absent: bos 1, eos 2, unk 0.
        defaults = {"bos": 1, "eos": 2, "unk": 0} if spm_defaults else {}
        for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"),
                          ("unk", "unknown_token_id"), ("pad", "padding_token_id"),
                          ("eot", "eot_token_id"), ("eom", "eom_token_id")):
            d = defaults.get(name)
            if d is not None and d >= n:
                d = None
            ids[name + "_id"] = meta_token_id(meta, KEY + key, n, d)
        chat_template = meta_str(meta, "tokenizer.chat_template")
        return dict(ids, chat_template=chat_template)

    # -- properties -----------------------------------------------------------------------

    @property
    def vocab_size(self):
        return len(self.tokens)

    def __len__(self):
        return len(self.tokens)

    def token_id(self, piece):
        """Id of the token whose text is ``piece`` (vocabulary form, e.g. '▁the'), or None."""
        return self._piece_to_id.get(piece)

    def token_type(self, id):
        return int(self.token_types[self._check_id(id)])

    def is_control(self, id):
        """True for control tokens (``<bos>``, ``<end_of_turn>``, ...)."""
        return self.token_types[self._check_id(id)] == TOKEN_CONTROL

    def is_special(self, id):
        """True for control and unknown tokens (the ones ``skip_special`` drops)."""
        return self.token_types[self._check_id(id)] in (TOKEN_CONTROL, TOKEN_UNKNOWN)

    def is_eos(self, id):
        return id in self.eos_ids

    def _check_id(self, id):
        if not _is_int(id):
            raise TypeError(f"token id must be an int, got {type(id).__name__}")
        id = int(id)
        if not 0 <= id < len(self.tokens):
            raise ValueError(f"token id {id} is out of range for a vocabulary of {len(self.tokens)}")
        return id

    # -- encoding -------------------------------------------------------------------------

    def _partition(self, text, parse_special):
        """Split ``text`` into raw-text pieces and special-token ids.

        Returns a list of ``str`` (raw text) and ``int`` (token id) items. For each special
        token, longest first, every raw piece is split at each occurrence (llama.cpp's
        tokenizer_st_partition). Control/unknown tokens only when ``parse_special``.
        """
        frags = [text]
        specials = self._special_all if parse_special else self._special_user
        for tok, tid in specials:
            if tok not in text:
                continue
            new = []
            for f in frags:
                if type(f) is int or tok not in f:
                    new.append(f)
                    continue
                start = 0
                while True:
                    j = f.find(tok, start)
                    if j < 0:
                        break
                    if j > start:
                        new.append(f[start:j])
                    new.append(tid)
                    start = j + len(tok)
                if start < len(f):
                    new.append(f[start:])
            frags = new
        return frags

    def encode(self, text, add_bos=None, parse_special=False, add_eos=None):
        """Token ids of ``text``.

        add_bos / add_eos: None = the metadata default (``tokenizer.ggml.add_bos_token`` ...).
        parse_special: split control tokens written in the text (``<start_of_turn>``) into
        their ids; user-defined tokens are always split out.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        add_bos = self.add_bos if add_bos is None else bool(add_bos)
        add_eos = self.add_eos if add_eos is None else bool(add_eos)
        if add_bos and self.bos_id is None:
            raise ValueError("this tokenizer has no BOS token")
        if add_eos and self.eos_id is None:
            raise ValueError("this tokenizer has no EOS token")
        out = [self.bos_id] if add_bos else []
        if text:
            self._encode_fragments(self._partition(text, parse_special), out)
        if add_eos:
            out.append(self.eos_id)
        return out

    def encode_segments(self, segments, add_bos=None):
        """Token ids of the concatenation of ``segments``: [(text, parse_special), ...].

        Control tokens are split out only in the segments marked ``parse_special`` (a chat
        template's own markup), never in the others (message content, which may contain the
        text ``<end_of_turn>``). Adjacent raw text of neighbouring segments is tokenized as one
        piece, so without control-token text in the plain segments the ids equal
        ``encode("".join(texts), parse_special=True)``.
        """
        add_bos = self.add_bos if add_bos is None else bool(add_bos)
        if add_bos and self.bos_id is None:
            raise ValueError("this tokenizer has no BOS token")
        frags = []
        for text, parse_special in segments:
            if not isinstance(text, str):
                raise TypeError(f"encode_segments() takes str texts, got {type(text).__name__}")
            for f in (self._partition(text, parse_special) if text else ()):
                if type(f) is str and frags and type(frags[-1]) is str:
                    frags[-1] += f
                else:
                    frags.append(f)
        out = [self.bos_id] if add_bos else []
        self._encode_fragments(frags, out)
        return out

    def _encode_fragments(self, frags, out):
        for f in frags:
            if type(f) is int:
                out.append(f)
            else:
                self._encode_raw(f, out)

    def _encode_raw(self, text, out):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- decoding -------------------------------------------------------------------------

    def _normal_piece(self, id):  # pragma: no cover - abstract
        raise NotImplementedError

    def token_to_piece(self, id, special=True):
        """The bytes token ``id`` stands for. Control and unknown tokens give their text, or
        b"" when ``special`` is false; unused/undefined tokens give b""."""
        id = self._check_id(id)
        p = self._pieces[id]
        if p is None:
            t = self.token_types[id]
            if t in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED):
                p = to_utf8(self.tokens[id])
            elif t == TOKEN_NORMAL or t == TOKEN_BYTE:
                p = self._normal_piece(id)
            else:
                p = b""
            self._pieces[id] = p
        if not special and self.token_types[id] in (TOKEN_CONTROL, TOKEN_UNKNOWN):
            return b""
        return p

    def _strip_first_space(self):
        """Whether decoding removes one leading space (SPM models that add a space prefix)."""
        return False

    def decode_bytes(self, ids, skip_special=False):
        """The bytes of ``ids`` joined (see :meth:`decode`)."""
        parts = []
        strip = self._strip_first_space()
        for id in ids:
            p = self.token_to_piece(id, not skip_special)
            if strip:
                if id == self.bos_id:
                    parts.append(p)
                    continue
                strip = False
                if p[:1] == b" ":
                    p = p[1:]
            parts.append(p)
        return b"".join(parts)

    def decode(self, ids, skip_special=False):
        """Text of ``ids``. Control tokens render as their text (``<bos>``) unless
        ``skip_special``; byte tokens join into UTF-8 (invalid sequences become U+FFFD)."""
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")


class StreamDecoder:
    """Incremental detokenizer: ``push(id)`` returns only complete UTF-8 text.

    A character split over several byte-fallback tokens is held back until its last byte
    arrives. The concatenation of every ``push`` and the final ``flush`` equals
    ``tokenizer.decode(ids, skip_special)``.
    """

    def __init__(self, tokenizer, skip_special=False):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip = tokenizer._strip_first_space()

    def push(self, id):
        tok = self.tokenizer
        p = tok.token_to_piece(id, not self.skip_special)
        if self._strip and id != tok.bos_id:
            self._strip = False
            if p[:1] == b" ":
                p = p[1:]
        return self._decoder.decode(p)

    def flush(self):
        """Text still held (an incomplete sequence at the end becomes U+FFFD); resets."""
        out = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        self._strip = self.tokenizer._strip_first_space()
        return out
