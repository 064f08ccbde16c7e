"""HF ``tokenizer.json`` for byte-level BPE: write slmx tokenizers, read the common families.

    save_json(tok, "out/tokenizer.json")        # atomic; tokenizers.Tokenizer.from_file reads it
    save_json(tok, "out/tokenizer.json", write_config=True)   # + tokenizer_config.json (bos/eos)
    tok = load_json("tokenizer.json")           # -> BPETokenizer (GPT-2, Llama 3, Qwen2, SmolLM, ...)

What is written: a ``BPE`` model (vocab, merges as pairs, ``ignore_merges``), the
pre-tokenizer as a ``Sequence`` of ``Split`` (one per slmx regex, behaviour ``Isolated``:
text between matches stays a piece, as :func:`slmx.tokenizer.bpe.split_pieces` does) and a
final ``ByteLevel`` without its own regex and without a prefix space, a ``ByteLevel`` decoder,
the control / user-defined tokens as ``added_tokens`` (special / not special), and a
``TemplateProcessing`` post-processor when the tokenizer adds BOS / EOS.

What is read: the same, plus the other ways those families write it: ``ByteLevel`` with its
own (GPT-2) regex, ``Digits``, ``Split`` with a string pattern, an NFC/NFKC/NFD/NFKD
normalizer, merges as "a b" strings, added tokens outside the model's vocabulary, and a
``tokenizer_config.json`` next to the file (bos/eos/unk/pad tokens, add_bos/add_eos, chat
template). SentencePiece-style BPE (``byte_fallback``: Llama 2 / TinyLlama with a Prepend "▁" +
Replace " " -> "▁" normalizer or a Metaspace pre-tokenizer, Gemma with the Replace only) is
read into an :class:`slmx.tokenizer.spm.SPMTokenizer` (token score = minus the rank of the merge
that makes the token). Anything that changes the ids in a way slmx does not model (a prefix
space on byte-level BPE, a ``Split`` that removes or merges its matches, subword prefixes, other
normalizers) raises :class:`slmx.errors.FormatError`.
"""
import json
import os
import tempfile
import unicodedata
import warnings

import regex as _regex

from slmx.errors import FormatError
from slmx.tokenizer.base import (_END_OF_GENERATION_TEXTS, TOKEN_CONTROL, TOKEN_NORMAL,
                                 TOKEN_UNKNOWN, TOKEN_UNUSED, TOKEN_USER_DEFINED)
from slmx.tokenizer.bpe import _PRE_KINDS, BPETokenizer

__all__ = ["save_json", "load_json", "to_json_dict", "config_dict", "from_json_dict",
           "HF_GPT2_PATTERN"]

# the regex of HF's ByteLevel pre-tokenizer when use_regex is true (GPT-2's)
HF_GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_HF_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_HF_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# pre-tokenizer regex lists of known families -> the tokenizer.ggml.pre name llama.cpp uses
_KNOWN_PRE = {
    (HF_GPT2_PATTERN,): "gpt2",
    (_HF_LLAMA3,): "llama-bpe",
    (_HF_QWEN2,): "qwen2",
    (r"\p{N}", HF_GPT2_PATTERN): "smollm",
}
for _name in ("gpt2", "llama3", "qwen2", "starcoder", "gpt4o", "falcon", "default"):
    _KNOWN_PRE.setdefault(tuple(_PRE_KINDS[_name][0]), _name)   # slmx's own regexes
_NORMALIZERS = ("NFC", "NFKC", "NFD", "NFKD")


class NormalizedBPETokenizer(BPETokenizer):
    """A byte-level BPE whose raw text is Unicode-normalized first (Qwen2's NFC normalizer);
    special tokens are matched before normalization, as in HF tokenizers."""

    def __init__(self, *args, normalization="NFC", **kwargs):
        if normalization not in _NORMALIZERS:
            raise FormatError(f"normalizer: unsupported form {normalization!r}")
        super().__init__(*args, **kwargs)
        self.normalization = normalization

    def _encode_raw(self, text, out):
        super()._encode_raw(unicodedata.normalize(self.normalization, text), out)


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------

def _patterns_of(tok):
    return [rx.pattern for rx in tok._split]


def _merges_of(tok):
    return [list(p) for p in tok._ranks]          # _ranks is ordered by rank


def to_json_dict(tok):
    """The tokenizer.json content (a dict) of a byte-level :class:`BPETokenizer`."""
    if not isinstance(tok, BPETokenizer):
        raise TypeError(f"save_json: expected a BPETokenizer (byte-level BPE), got {type(tok).__name__}")
    tokens, types = tok.tokens, tok.token_types
    vocab = {}
    added = []
    for i, t in enumerate(tokens):
        if not t:
            continue
        ty = int(types[i])
        if ty in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED):
            special = ty != TOKEN_USER_DEFINED
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": not special, "special": special})
        vocab[t] = i
    pre = [{"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False}
           for p in _patterns_of(tok)]
    pre.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                "use_regex": False})
    post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    if tok.add_bos or tok.add_eos:
        single, pair, specials = [], [], {}
        for type_id, seq in ((0, "A"), (1, "B")):
            part = []
            if tok.add_bos:
                part.append({"SpecialToken": {"id": tokens[tok.bos_id], "type_id": type_id}})
            part.append({"Sequence": {"id": seq, "type_id": type_id}})
            if tok.add_eos:
                part.append({"SpecialToken": {"id": tokens[tok.eos_id], "type_id": type_id}})
            pair += part
            if seq == "A":
                single = list(part)
        for i in ([tok.bos_id] if tok.add_bos else []) + ([tok.eos_id] if tok.add_eos else []):
            specials[tokens[i]] = {"id": tokens[i], "ids": [i], "tokens": [tokens[i]]}
        post = {"type": "Sequence", "processors": [
            post, {"type": "TemplateProcessing", "single": single, "pair": pair,
                   "special_tokens": specials}]}
    normalizer = None
    form = getattr(tok, "normalization", None)
    if form:
        normalizer = {"type": form}
    unk = tokens[tok.unk_id] if tok.unk_id is not None else None
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre},
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": bool(tok.ignore_merges), "vocab": vocab,
                  "merges": _merges_of(tok)},
    }


def config_dict(tok):
    """The tokenizer_config.json content HF ``transformers`` reads: special tokens, whether
    BOS / EOS are added, the chat template."""
    out = {}
    for key, i in (("bos_token", tok.bos_id), ("eos_token", tok.eos_id),
                   ("unk_token", tok.unk_id), ("pad_token", tok.pad_id)):
        out[key] = tok.tokens[i] if i is not None else None
    out["add_bos_token"] = bool(tok.add_bos)
    out["add_eos_token"] = bool(tok.add_eos)
    if tok.chat_template:
        out["chat_template"] = tok.chat_template
    out["tokenizer_class"] = "PreTrainedTokenizerFast"
    return out


def _write_atomic(path, text):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tokenizer-", suffix=".json.tmp", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        from slmx.formats.gguf import _umask
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_json(tok, path, write_config=False):
    """Write ``tok`` as a HF tokenizer.json at ``path``, atomically (a temporary file in the
    same directory, then a rename). ``write_config``: also write tokenizer_config.json in the
    same directory (BOS / EOS / pad tokens and the chat template, which tokenizer.json cannot
    hold; :func:`load_json` reads it back). Returns the path."""
    path = os.fspath(path)
    _write_atomic(path, json.dumps(to_json_dict(tok), ensure_ascii=False, indent=2))
    if write_config:
        cfg = os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer_config.json")
        _write_atomic(cfg, json.dumps(config_dict(tok), ensure_ascii=False, indent=2))
    return path


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------

def _get(d, key, types, where, default=None, required=False):
    """d[key] checked to be of ``types`` (a bool is not an int here); FormatError otherwise."""
    if not isinstance(d, dict):
        raise FormatError(f"{where}: expected an object, got {type(d).__name__}")
    if key not in d or d[key] is None:
        if required:
            raise FormatError(f"{where}.{key}: missing")
        return default
    v = d[key]
    if not isinstance(v, types) or (isinstance(v, bool) and types is int):
        raise FormatError(f"{where}.{key}: unexpected {type(v).__name__} {v!r}"[:200])
    return v


def _pre_patterns(node, where="pre_tokenizer"):
    """The regex list of a pre-tokenizer node; ``byte_level`` tells whether a ByteLevel
    step (the byte-to-unicode mapping) was seen, which must come last."""
    out = []
    seen_byte_level = False
    steps = [node]
    if _get(node, "type", str, where, required=True) == "Sequence":
        steps = _get(node, "pretokenizers", list, where, required=True)
    for k, step in enumerate(steps):
        w = f"{where}[{k}]" if len(steps) > 1 or step is not node else where
        kind = _get(step, "type", str, w, required=True)
        if seen_byte_level:
            raise FormatError(f"{w}: a {kind} step after ByteLevel is not supported "
                              f"(it would split the byte-mapped text)")
        if kind == "ByteLevel":
            if _get(step, "add_prefix_space", bool, w, default=False):
                raise FormatError(f"{w}: ByteLevel with add_prefix_space is not supported")
            if _get(step, "use_regex", bool, w, default=True):
                out.append(HF_GPT2_PATTERN)
            seen_byte_level = True
        elif kind == "Split":
            pat = _get(step, "pattern", dict, w, required=True)
            if "Regex" in pat:
                p = _get(pat, "Regex", str, w + ".pattern", required=True)
            elif "String" in pat:
                p = _regex.escape(_get(pat, "String", str, w + ".pattern", required=True))
            else:
                raise FormatError(f"{w}.pattern: expected Regex or String")
            behavior = _get(step, "behavior", str, w, default="Isolated")
            if behavior != "Isolated":
                raise FormatError(f"{w}: Split behavior {behavior!r} is not supported (only Isolated)")
            if _get(step, "invert", bool, w, default=False):
                raise FormatError(f"{w}: Split with invert is not supported")
            try:
                _regex.compile(p)
            except _regex.error as e:
                raise FormatError(f"{w}: regex {p!r} does not compile ({e})"[:300]) from None
            out.append(p)
        elif kind == "Digits":
            out.append(r"\p{N}" if _get(step, "individual_digits", bool, w, default=False)
                       else r"\p{N}+")
        else:
            raise FormatError(f"{w}: pre-tokenizer {kind!r} is not supported for byte-level BPE")
    if not seen_byte_level:
        raise FormatError(f"{where}: no ByteLevel step: not a byte-level BPE tokenizer")
    return out


def _template(post, where="post_processor"):
    """(bos token text, eos token text) a TemplateProcessing adds around a single sequence."""
    if post is None:
        return None, None
    kind = _get(post, "type", str, where, required=True)
    if kind == "Sequence":
        bos = eos = None
        for k, p in enumerate(_get(post, "processors", list, where, required=True)):
            b, e = _template(p, f"{where}[{k}]")
            bos, eos = b or bos, e or eos
        return bos, eos
    if kind in ("ByteLevel",):
        return None, None
    if kind != "TemplateProcessing":
        warnings.warn(f"{where}: post-processor {kind!r} ignored")
        return None, None
    single = _get(post, "single", list, where, required=True)
    names = []
    for k, item in enumerate(single):
        if not isinstance(item, dict) or len(item) != 1:
            raise FormatError(f"{where}.single[{k}]: expected one SpecialToken or Sequence")
        (what, body), = item.items()
        if what == "Sequence":
            names.append(None)
        elif what == "SpecialToken":
            names.append(_get(body, "id", str, f"{where}.single[{k}]", required=True))
        else:
            raise FormatError(f"{where}.single[{k}]: unknown item {what!r}")
    if names.count(None) != 1 or len(names) > 3:
        raise FormatError(f"{where}.single: expected one sequence with at most one special "
                          f"token before and after it")
    i = names.index(None)
    before, after = names[:i], names[i + 1:]
    if len(before) > 1 or len(after) > 1:
        raise FormatError(f"{where}.single: more than one special token on one side")
    specials = _get(post, "special_tokens", dict, where, default={})
    out = []
    for name in (before[0] if before else None, after[0] if after else None):
        if name is None:
            out.append(None)
            continue
        spec = specials.get(name)
        ids = spec.get("ids") if isinstance(spec, dict) else None
        if isinstance(ids, list) and len(ids) != 1:
            raise FormatError(f"{where}.special_tokens[{name!r}]: expected one id")
        out.append(name)
    return out[0], out[1]


def _config_token(cfg, key):
    v = cfg.get(key)
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _vocab_tokens(d, model, where, warn_flags):
    """tokenizer.json's model.vocab and added_tokens, checked: (id_of, tokens by id (None for holes),
    added token types by id). warn_flags: warn that single_word/lstrip/rstrip are ignored."""
    vocab = _get(model, "vocab", dict, "model", required=True)
    added = _get(d, "added_tokens", list, where, default=[])
    id_of = {}
    for t, i in vocab.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise FormatError(f"model.vocab[{t!r}]: expected a non-negative integer id, got {i!r}"[:200])
        id_of[t] = i
    added_types = {}
    for k, a in enumerate(added):
        w = f"added_tokens[{k}]"
        i = _get(a, "id", int, w, required=True)
        t = _get(a, "content", str, w, required=True)
        if i < 0 or not t:
            raise FormatError(f"{w}: bad id {i} or empty content")
        if t in id_of and id_of[t] != i:
            raise FormatError(f"{w}: {t!r} has id {i} but the vocabulary gives it {id_of[t]}")
        id_of[t] = i
        added_types[i] = TOKEN_CONTROL if _get(a, "special", bool, w, default=False) else TOKEN_USER_DEFINED
        if warn_flags and any(_get(a, key, bool, w, default=False) for key in ("single_word", "lstrip", "rstrip")):
            warnings.warn(f"{w}: single_word/lstrip/rstrip of {t!r} are ignored by slmx")
    if not id_of:
        raise FormatError("model.vocab: the vocabulary is empty")
    n = max(id_of.values()) + 1
    if n > len(id_of) + 65536:
        raise FormatError(f"token ids go up to {n - 1} for {len(id_of)} tokens (too sparse)")
    tokens = [None] * n
    for t, i in id_of.items():
        if tokens[i] is not None:
            raise FormatError(f"token id {i} is given to both {tokens[i]!r} and {t!r}"[:200])
        tokens[i] = t
    return id_of, tokens, added_types


def from_json_dict(d, config=None, where="tokenizer.json"):
    """A :class:`BPETokenizer` from tokenizer.json content (a dict) and optionally the dict of
    a tokenizer_config.json. Raises FormatError on anything unsupported or malformed."""
    if not isinstance(d, dict):
        raise FormatError(f"{where}: expected a JSON object")
    model = _get(d, "model", dict, where, required=True)
    kind = _get(model, "type", str, "model", default="BPE")
    if kind != "BPE":
        raise FormatError(f"model.type: {kind!r} is not supported (byte-level BPE only)")
    if _get(model, "byte_fallback", bool, "model", default=False):
        return _spm_from_json_dict(d, model, config, where)
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if _get(model, key, str, "model", default=""):
            raise FormatError(f"model.{key}: not supported")
    merges_raw = _get(model, "merges", list, "model", default=[])
    id_of, tokens, added_types = _vocab_tokens(d, model, where, warn_flags=True)
    n = len(tokens)
    types = [TOKEN_NORMAL] * n
    for i, ty in added_types.items():
        types[i] = ty
    taken = set(id_of)
    for i in range(n):
        if tokens[i] is None:               # a gap in the ids: an unused placeholder
            t = f"[PAD{i}]"
            while t in taken:
                t = "[" + t + "]"
            tokens[i] = t
            taken.add(t)
            types[i] = TOKEN_UNUSED

    merges = []
    for k, m in enumerate(merges_raw):
        if isinstance(m, str):
            j = m.find(" ", 1)
            pair = (m[:j], m[j + 1:]) if j > 0 else None
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m):
            pair = (m[0], m[1])
        else:
            pair = None
        if pair is None or not pair[1]:
            raise FormatError(f"model.merges[{k}]: {m!r} is not a pair"[:200])
        for part in (pair[0], pair[1], pair[0] + pair[1]):
            if part not in id_of:
                raise FormatError(f"model.merges[{k}]: {m!r} names {part!r}, which is not a token"[:200])
        merges.append(pair)

    pre = _get(d, "pre_tokenizer", dict, where)
    if pre is None:
        raise FormatError(f"{where}.pre_tokenizer: missing: not a byte-level BPE tokenizer")
    patterns = _pre_patterns(pre)
    label = _KNOWN_PRE.get(tuple(patterns), "custom")

    norm = _get(d, "normalizer", dict, where)
    form = None
    if norm is not None:
        nodes = [norm]
        if _get(norm, "type", str, "normalizer", required=True) == "Sequence":
            nodes = _get(norm, "normalizers", list, "normalizer", required=True)
        for k, nd in enumerate(nodes):
            t = _get(nd, "type", str, f"normalizer[{k}]", required=True)
            if t not in _NORMALIZERS or form is not None:
                raise FormatError(f"normalizer: {t!r} is not supported (one of {', '.join(_NORMALIZERS)})")
            form = t

    cfg = config or {}
    bos_t, eos_t = _template(_get(d, "post_processor", dict, where))
    kw = {}
    add_bos, add_eos = bos_t is not None, eos_t is not None
    if isinstance(cfg.get("add_bos_token"), bool):
        add_bos = cfg["add_bos_token"]
    if isinstance(cfg.get("add_eos_token"), bool):
        add_eos = cfg["add_eos_token"]
    names = {"bos": _config_token(cfg, "bos_token") or bos_t,
             "eos": _config_token(cfg, "eos_token") or eos_t,
             "unk": _config_token(cfg, "unk_token") or _get(model, "unk_token", str, "model"),
             "pad": _config_token(cfg, "pad_token")}
    if names["eos"] is None:                # the first end-of-text control token by id
        ends = [id_of[t] for t in _END_OF_GENERATION_TEXTS
                if added_types.get(id_of.get(t)) == TOKEN_CONTROL]
        if ends:
            names["eos"] = tokens[min(ends)]
    for key, t in names.items():
        if t is not None:
            if t not in id_of:
                raise FormatError(f"{key}_token {t!r} is not a token")
            kw[key + "_id"] = id_of[t]
    if add_bos and "bos_id" not in kw:
        add_bos = False
    if add_eos and "eos_id" not in kw:
        add_eos = False
    if isinstance(cfg.get("chat_template"), str):
        kw["chat_template"] = cfg["chat_template"]
    if "unk_id" in kw and types[kw["unk_id"]] == TOKEN_NORMAL:
        types[kw["unk_id"]] = TOKEN_UNKNOWN
    ignore = _get(model, "ignore_merges", bool, "model", default=False)
    cls, extra = (BPETokenizer, {}) if form is None else (NormalizedBPETokenizer, {"normalization": form})
    tok = cls(tokens, types, merges, pre=label, pre_patterns=patterns, ignore_merges=ignore,
              add_bos=add_bos, add_eos=add_eos, **extra, **kw)
    return tok


# ---------------------------------------------------------------------------------------
# SentencePiece-style BPE (Llama 2 / TinyLlama, Gemma): byte fallback, "▁" for spaces
# ---------------------------------------------------------------------------------------

_SPACE = "\u2581"


def _is_str_pattern(node, s):
    pat = node.get("pattern") if isinstance(node, dict) else None
    return isinstance(pat, dict) and pat.get("String") == s


def _spm_prefix(d, where):
    """Whether a tokenizer.json of the SentencePiece family adds a "▁" before the text: from its
    normalizer (Prepend "▁" + Replace " " -> "▁": Llama 2) or pre-tokenizer (Metaspace); Gemma
    has only the Replace. Anything else that rewrites the text raises FormatError."""
    norm = d.get("normalizer")
    pre = d.get("pre_tokenizer")
    prefix = False
    replaced = False
    nodes = []
    if norm is not None:
        nodes = norm.get("normalizers", []) if _get(norm, "type", str, "normalizer", required=True) == "Sequence" else [norm]
    for k, nd in enumerate(nodes):
        t = _get(nd, "type", str, f"normalizer[{k}]", required=True)
        if t == "Prepend" and nd.get("prepend") == _SPACE and not replaced:
            prefix = True
        elif t == "Replace" and _is_str_pattern(nd, " ") and nd.get("content") == _SPACE:
            replaced = True
        else:
            raise FormatError(f"normalizer[{k}]: {t} is not supported for SentencePiece-style BPE")
    if pre is not None:
        steps = pre.get("pretokenizers", []) if _get(pre, "type", str, "pre_tokenizer", required=True) == "Sequence" else [pre]
        for k, st in enumerate(steps):
            t = _get(st, "type", str, f"pre_tokenizer[{k}]", required=True)
            if t == "Metaspace" and st.get("replacement", _SPACE) == _SPACE and not st.get("split", False):
                scheme = st.get("prepend_scheme", "always" if st.get("add_prefix_space", True) else "never")
                if scheme not in ("first", "always", "never"):
                    raise FormatError(f"pre_tokenizer[{k}]: Metaspace prepend_scheme {scheme!r} is not supported")
                if scheme != "never" and prefix is not True:
                    prefix = "metaspace-" + scheme
                replaced = True
            elif t == "Split" and _is_str_pattern(st, " ") and replaced:
                pass        # spaces are already "▁" here (Gemma's Split on " "): it splits nothing
            else:
                raise FormatError(f"pre_tokenizer[{k}]: {t} is not supported for SentencePiece-style BPE")
    if not replaced:
        raise FormatError(f"{where}: byte-fallback BPE without the ' ' -> '▁' replacement is not supported")
    return prefix


def _spm_from_json_dict(d, model, config, where):
    """An :class:`SPMTokenizer` for a byte-fallback BPE tokenizer.json. HF merges pairs by rank;
    slmx's SPM merges by token score, so each token scores minus the rank of the first merge that
    makes it (the order sentencepiece's own scores give these vocabularies)."""
    from slmx.tokenizer.base import TOKEN_BYTE
    from slmx.tokenizer.spm import SPMTokenizer
    import numpy as np
    merges_raw = _get(model, "merges", list, "model", default=[])
    id_of, tokens, added_types = _vocab_tokens(d, model, where, warn_flags=False)
    n = len(tokens)
    types = [TOKEN_NORMAL] * n
    for i in range(n):
        t = tokens[i]
        if t is None:
            tokens[i], types[i] = f"[PAD{i}]", TOKEN_UNUSED
        elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            try:
                int(t[3:5], 16)
                types[i] = TOKEN_BYTE
            except ValueError:
                pass
    for i, ty in added_types.items():
        if types[i] != TOKEN_BYTE:
            types[i] = ty
    scores = np.full(n, -1e9, np.float32)
    for k, m in enumerate(merges_raw):
        if isinstance(m, str):
            j = m.find(" ", 1)
            pair = (m[:j], m[j + 1:]) if j > 0 else None
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m):
            pair = (m[0], m[1])
        else:
            pair = None
        if pair is None or not pair[1]:
            raise FormatError(f"model.merges[{k}]: {m!r} is not a pair"[:200])
        i = id_of.get(pair[0] + pair[1])
        if i is None or pair[0] not in id_of or pair[1] not in id_of:
            raise FormatError(f"model.merges[{k}]: {m!r} names a piece that is not a token"[:200])
        if scores[i] == -1e9:
            scores[i] = -float(k)
    try:
        prefix = _spm_prefix(d, where)
    except FormatError as e:
        raise FormatError(f"model.byte_fallback is set (SentencePiece-style BPE) but {e}") from None
    cfg = config or {}
    bos_t, eos_t = _template(_get(d, "post_processor", dict, where))
    add_bos = cfg["add_bos_token"] if isinstance(cfg.get("add_bos_token"), bool) else bos_t is not None
    add_eos = cfg["add_eos_token"] if isinstance(cfg.get("add_eos_token"), bool) else eos_t is not None
    kw = {}
    names = {"bos": _config_token(cfg, "bos_token") or bos_t,
             "eos": _config_token(cfg, "eos_token") or eos_t,
             "unk": _config_token(cfg, "unk_token") or _get(model, "unk_token", str, "model"),
             "pad": _config_token(cfg, "pad_token")}
    for key, t in names.items():
        if t is not None:
            if t not in id_of:
                raise FormatError(f"{key}_token {t!r} is not a token")
            kw[key + "_id"] = id_of[t]
    if "unk_id" in kw and types[kw["unk_id"]] == TOKEN_NORMAL:
        types[kw["unk_id"]] = TOKEN_UNKNOWN
    if isinstance(cfg.get("chat_template"), str):
        kw["chat_template"] = cfg["chat_template"]
    extra = {}
    if isinstance(prefix, str):          # a Metaspace pre-tokenizer
        cls = _metaspace_class()
        extra["first_only"] = prefix == "metaspace-first"
    else:
        cls = SPMTokenizer
    return cls(tokens, scores, types, add_space_prefix=bool(prefix), **extra,
               add_bos=add_bos and "bos_id" in kw, add_eos=add_eos and "eos_id" in kw, **kw)


def _metaspace_class():
    from slmx.tokenizer.spm import SPMTokenizer

    class MetaspaceSPMTokenizer(SPMTokenizer):
        """SPM with HF's Metaspace prefix rule: "▁" goes before a text that does not already
        start with a space — the first text only (prepend_scheme "first", transformers' Llama
        tokenizer) or every text between special tokens ("always"). llama.cpp prefixes every
        text after a special token, whatever it starts with."""

        def __init__(self, *args, first_only=True, **kwargs):
            super().__init__(*args, **kwargs)
            self.first_only = first_only

        def _encode_fragments(self, frags, out):
            first = True
            for f in frags:
                if type(f) is int:
                    out.append(f)
                else:
                    if (first or not self.first_only) and not f.startswith(" "):
                        f = " " + f
                    self._encode_raw(f, out)
                first = False

    return MetaspaceSPMTokenizer


def load_json(path):
    """Read a HF tokenizer.json (byte-level BPE) into a :class:`BPETokenizer`; a
    tokenizer_config.json in the same directory supplies bos/eos tokens and the chat template."""
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None
    config = None
    cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer_config.json")
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path, "r", encoding="utf-8") as f:
                config = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FormatError(f"{cfg_path}: not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise FormatError(f"{cfg_path}: expected a JSON object")
    return from_json_dict(d, config, where=os.path.basename(path))
