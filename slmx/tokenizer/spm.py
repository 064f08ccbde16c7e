"""SentencePiece-style BPE tokenizer (GGUF ``tokenizer.ggml.model = "llama"``), as llama.cpp runs it.

Encoding of a raw text (after special tokens were split out):
  1. an optional space prefix (``tokenizer.ggml.add_space_prefix``: before the first text
     and after each special token), then every ' ' becomes U+2581 '▁';
  2. start from one symbol per character; repeatedly merge the adjacent pair whose
     concatenation is a vocabulary token with the highest score (ties: leftmost) — a
     priority queue of candidate pairs, stale entries skipped, O(n log n);
  3. each final symbol is its token, or — when it is a character not in the vocabulary —
     its UTF-8 bytes as ``<0xNN>`` byte tokens.
Decoding maps '▁' back to ' ' and byte tokens to their byte.
"""
import heapq

from slmx.errors import FormatError
from slmx.tokenizer.base import (KEY, TOKEN_BYTE, Tokenizer, meta_bool, meta_scores,
                                 meta_str_list, meta_token_types, to_utf8)

SPACE = "\u2581"


class SPMTokenizer(Tokenizer):
    """llama.cpp's SPM tokenizer (Llama 1/2, Gemma 1-3, ...)."""

    model = "llama"

    def __init__(self, tokens, scores, token_types, *, add_space_prefix=True, **kwargs):
        super().__init__(tokens, token_types, **kwargs)
        self.scores = scores
        self._score = [float(s) for s in scores]   # python floats: fast in the merge loop
        self.add_space_prefix = bool(add_space_prefix)
        # byte -> token id: "<0xNN>" if present, else the one-byte piece, else unk
        get = self._piece_to_id.get
        self._byte_ids = []
        for b in range(256):
            i = get(f"<0x{b:02X}>")
            if i is None and b < 128:
                i = get(chr(b))
            if i is None:
                i = self.unk_id
            self._byte_ids.append(i)
        # byte tokens: id -> byte value
        self._byte_value = {}
        for i in map(int, (self.token_types == TOKEN_BYTE).nonzero()[0]):
            t = tokens[i]
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                try:
                    self._byte_value[i] = int(t[3:5], 16)
                except ValueError:
                    pass
            if i not in self._byte_value:
                raise FormatError(f"{KEY}tokens[{i}]: byte token {t!r} is not of the form <0xNN>")

    @classmethod
    def _from_metadata(cls, meta):
        tokens = meta_str_list(meta, KEY + "tokens")
        n = len(tokens)
        if n == 0:
            raise FormatError(f"{KEY}tokens: the vocabulary is empty")
        scores = meta_scores(meta, KEY + "scores", n)
        types = meta_token_types(meta, KEY + "token_type", n)
        kw = cls._common_kwargs(meta, tokens, types, spm_defaults=True)
        return cls(tokens, scores, types,
                   add_space_prefix=meta_bool(meta, KEY + "add_space_prefix", True),
                   add_bos=meta_bool(meta, KEY + "add_bos_token", True),
                   add_eos=meta_bool(meta, KEY + "add_eos_token", False), **kw)

    # -- encoding -------------------------------------------------------------------------

    def _encode_fragments(self, frags, out):
        prev_special = True
        for f in frags:
            if type(f) is int:
                out.append(f)
                prev_special = True
            else:
                if self.add_space_prefix and prev_special:
                    f = " " + f
                self._encode_raw(f, out)
                prev_special = False

    def _encode_raw(self, text, out):
        """Append the ids of ``text`` (no special tokens in it) to ``out``."""
        text = text.replace(" ", SPACE)
        n = len(text)
        if n == 0:
            return
        get = self._piece_to_id.get
        if n == 1:
            i = get(text)
            if i is None:
                self._bytes_out(text, out)
            else:
                out.append(i)
            return
        score = self._score
        # symbol k covers text[k : k + size[k]]; a merged-away symbol has size 0
        size = [1] * n
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        # heap of (-score, left, right, merged size): highest score first, then leftmost
        heap = []
        for k in range(n - 1):
            i = get(text[k:k + 2])
            if i is not None:
                heap.append((-score[i], k, k + 1, 2))
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            _, left, right, sz = pop(heap)
            sl = size[left]
            sr = size[right]
            if sl == 0 or sr == 0 or sl + sr != sz:
                continue          # one side was merged since this pair was queued
            size[left] = sz
            size[right] = 0
            r = nxt[right]
            nxt[left] = r
            if r >= 0:
                prv[r] = left
            p = prv[left]
            if p >= 0:
                m = size[p] + sz
                i = get(text[p:p + m])
                if i is not None:
                    push(heap, (-score[i], p, left, m))
            if r >= 0:
                m = sz + size[r]
                i = get(text[left:left + m])
                if i is not None:
                    push(heap, (-score[i], left, r, m))
        k = 0
        while k >= 0:
            piece = text[k:k + size[k]]
            i = get(piece)
            if i is None:
                # every merged symbol is a token, so this is one character outside the vocab
                self._bytes_out(piece, out)
            else:
                out.append(i)
            k = nxt[k]

    def _bytes_out(self, piece, out):
        ids = self._byte_ids
        for b in to_utf8(piece):
            i = ids[b]
            if i is None:
                raise ValueError(f"no byte token for 0x{b:02X} and no unknown token in the vocabulary")
            out.append(i)

    # -- decoding -------------------------------------------------------------------------

    def _normal_piece(self, id):
        b = self._byte_value.get(id)
        if b is not None:
            return bytes((b,))
        return to_utf8(self.tokens[id].replace(SPACE, " "))

    def _strip_first_space(self):
        return self.add_space_prefix
