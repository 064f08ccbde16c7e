# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Byte-level BPE training: the merge loop over a counted word list.

The words are the distinct pre-tokens of a corpus with their counts; each is an int32 array of
symbol ids (initially one id per byte). The loop keeps

* ``pair_counts``: an open-addressing hash (a << 32 | b) -> count, updated incrementally;
* a binary max-heap of *entries* (count, pair, word list) with lazy invalidation: an entry whose
  count no longer equals ``pair_counts[pair]`` is re-pushed with the current count when popped;
* per entry the list of words where the pair was (newly) formed, so a merge only touches the
  words that contain the pair.

The rules follow HF ``tokenizers``' BpeTrainer so that the merges come out the same: order by
count (highest first), ties by the pair's ids (smallest (a, b) first); a merge rewrites the
words of the popped entry only (left to right, non-overlapping) and reports -1 for each pair it
breaks and +1 for each pair it forms; the merged pair's own count is left as it was; every word
where a pair gained an occurrence joins a new entry for that pair, pushed when its count is > 0.

Python drives the loop (``pop_best`` then ``apply_merge``) because it owns the token strings:
a merge whose concatenation already is a token reuses that id.

:class:`PieceCounter` is the counting side: it splits text with GPT-2's, Llama 3's or Qwen2's
pre-tokenizer regex (hand-coded, on a code point -> class table the caller fills from the ``regex`` module) and
counts the pieces' UTF-8 bytes in a hash table, without the GIL.
"""
from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t, uint8_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset
from cpython.unicode cimport PyUnicode_DATA, PyUnicode_GET_LENGTH, PyUnicode_KIND

import numpy as np


cdef struct HeapEntry:
    int64_t count
    uint64_t key        # a << 32 | b
    int64_t pos_off     # word list: pool[pos_off : pos_off + pos_len]
    int64_t pos_len


cdef uint64_t EMPTY = 0xFFFFFFFFFFFFFFFFULL


cdef inline uint64_t pair_key(int32_t a, int32_t b) noexcept nogil:
    return (<uint64_t><uint32_t>a << 32) | <uint64_t><uint32_t>b


cdef inline uint64_t hash_key(uint64_t k) noexcept nogil:
    k ^= k >> 33
    k *= 0xff51afd7ed558ccdULL
    k ^= k >> 33
    k *= 0xc4ceb9fe1a85ec53ULL
    k ^= k >> 33
    return k


cdef int grow(void **p, int64_t *cap, int64_t need, size_t elsize) noexcept nogil:
    """Make the array *p hold at least ``need`` elements (doubling); -1 when out of memory."""
    cdef int64_t c = cap[0]
    cdef void *q
    if need <= c:
        return 0
    if c < 16:
        c = 16
    while c < need:
        c *= 2
    q = realloc(p[0], <size_t>c * elsize)
    if q == NULL:
        return -1
    p[0] = q
    cap[0] = c
    return 0


cdef inline bint better(HeapEntry *x, HeapEntry *y) noexcept nogil:
    """x pops before y: higher count, then the smaller pair (a, b)."""
    return x.count > y.count or (x.count == y.count and x.key < y.key)


cdef class BPEMergeState:
    """State of the BPE merge loop over a counted word list.

    BPEMergeState(data, offsets, counts, byte_to_id)
      data: uint8 (N,) the words' bytes concatenated; offsets: int64 (W+1,) word w is
      data[offsets[w]:offsets[w+1]]; counts: int64 (W,) > 0; byte_to_id: int32 (256,) the
      initial symbol of each byte. Words of one byte never change and are dropped.
    """
    # words
    cdef int32_t *sym
    cdef int64_t *woff
    cdef int32_t *wlen
    cdef int64_t *wcount
    cdef int64_t nwords
    # pair -> count
    cdef uint64_t *pc_keys
    cdef int64_t *pc_vals
    cdef int64_t pc_cap, pc_size
    # heap of entries, and the pool their word lists live in
    cdef HeapEntry *heap
    cdef int64_t hn, hcap
    cdef int32_t *pool
    cdef int64_t pn, pcap
    # one step's new word lists: pair -> group (hash with generation stamps), groups, nodes
    cdef uint64_t *sm_keys
    cdef int64_t *sm_group
    cdef uint32_t *sm_gen
    cdef int64_t sm_cap
    cdef uint32_t gen
    cdef uint64_t *g_key
    cdef int64_t *g_head
    cdef int64_t *g_tail
    cdef int64_t gn, gcap
    cdef int32_t *n_word
    cdef int64_t *n_next
    cdef int64_t nn, ncap
    # the entry popped by pop_best, applied by apply_merge
    cdef HeapEntry cur
    cdef bint has_cur
    cdef public int64_t n_merges

    def __cinit__(self):
        self.sym = NULL; self.woff = NULL; self.wlen = NULL; self.wcount = NULL
        self.pc_keys = NULL; self.pc_vals = NULL; self.heap = NULL; self.pool = NULL
        self.sm_keys = NULL; self.sm_group = NULL; self.sm_gen = NULL
        self.g_key = NULL; self.g_head = NULL; self.g_tail = NULL
        self.n_word = NULL; self.n_next = NULL
        self.pc_cap = self.pc_size = self.hn = self.hcap = self.pn = self.pcap = 0
        self.sm_cap = self.gn = self.gcap = self.nn = self.ncap = 0
        self.gen = 0
        self.has_cur = False
        self.n_merges = 0

    def __dealloc__(self):
        free(self.sym); free(self.woff); free(self.wlen); free(self.wcount)
        free(self.pc_keys); free(self.pc_vals); free(self.heap); free(self.pool)
        free(self.sm_keys); free(self.sm_group); free(self.sm_gen)
        free(self.g_key); free(self.g_head); free(self.g_tail)
        free(self.n_word); free(self.n_next)

    def __init__(self, data, offsets, counts, byte_to_id):
        cdef const uint8_t[::1] d = _as(data, np.uint8, "data")
        cdef const int64_t[::1] off = _as(offsets, np.int64, "offsets")
        cdef const int64_t[::1] cnt = _as(counts, np.int64, "counts")
        cdef const int32_t[::1] b2i = _as(byte_to_id, np.int32, "byte_to_id")
        cdef Py_ssize_t W = off.shape[0] - 1, w, j, nsym = 0, nw = 0, k = 0
        if off.shape[0] < 1:
            raise ValueError("offsets: expected at least one element (W+1 offsets for W words)")
        if cnt.shape[0] != W:
            raise ValueError(f"counts: has {cnt.shape[0]} entries, offsets describe {W} words")
        if b2i.shape[0] != 256:
            raise ValueError(f"byte_to_id: expected 256 entries, got {b2i.shape[0]}")
        if off[0] != 0 or off[W] != d.shape[0]:
            raise ValueError("offsets: must start at 0 and end at len(data)")
        for w in range(W):
            if off[w + 1] < off[w]:
                raise ValueError(f"offsets: decreasing at word {w}")
            if cnt[w] <= 0:
                raise ValueError(f"counts[{w}]: must be positive, got {cnt[w]}")
            if off[w + 1] - off[w] >= 2:
                nsym += off[w + 1] - off[w]
                nw += 1
        for j in range(256):
            if b2i[j] < 0:
                raise ValueError(f"byte_to_id[{j}]: negative id {b2i[j]}")
        self.sym = <int32_t *> malloc(max(nsym, 1) * sizeof(int32_t))
        self.woff = <int64_t *> malloc(max(nw, 1) * sizeof(int64_t))
        self.wlen = <int32_t *> malloc(max(nw, 1) * sizeof(int32_t))
        self.wcount = <int64_t *> malloc(max(nw, 1) * sizeof(int64_t))
        if self.sym == NULL or self.woff == NULL or self.wlen == NULL or self.wcount == NULL:
            raise MemoryError()
        nw = 0
        for w in range(W):
            if off[w + 1] - off[w] < 2:
                continue
            if off[w + 1] - off[w] > 0x7FFFFFFF:
                raise ValueError(f"word {w} is too long ({off[w + 1] - off[w]} bytes)")
            self.woff[nw] = k
            self.wlen[nw] = <int32_t>(off[w + 1] - off[w])
            self.wcount[nw] = cnt[w]
            for j in range(off[w], off[w + 1]):
                self.sym[k] = b2i[d[j]]
                k += 1
            nw += 1
        self.nwords = nw
        with nogil:
            j = self._init_pairs()
        if j < 0:
            raise MemoryError()

    # -- pair counts ------------------------------------------------------------------

    cdef int _pc_grow(self) noexcept nogil:
        cdef int64_t old = self.pc_cap, cap = old * 2 if old else 1024, i, h
        cdef uint64_t *ok = self.pc_keys
        cdef int64_t *ov = self.pc_vals
        cdef uint64_t *nk = <uint64_t *> malloc(cap * sizeof(uint64_t))
        cdef int64_t *nv = <int64_t *> malloc(cap * sizeof(int64_t))
        if nk == NULL or nv == NULL:
            free(nk); free(nv)
            return -1
        memset(nk, 0xFF, cap * sizeof(uint64_t))
        for i in range(old):
            if ok[i] != EMPTY:
                h = <int64_t>(hash_key(ok[i]) & <uint64_t>(cap - 1))
                while nk[h] != EMPTY:
                    h = (h + 1) & (cap - 1)
                nk[h] = ok[i]
                nv[h] = ov[i]
        free(ok); free(ov)
        self.pc_keys, self.pc_vals, self.pc_cap = nk, nv, cap
        return 0

    cdef int _pc_add(self, uint64_t key, int64_t delta) noexcept nogil:
        """pair_counts[key] += delta (inserted at 0 when absent); -1 when out of memory."""
        cdef int64_t h, m
        if 2 * (self.pc_size + 1) > self.pc_cap:
            if self._pc_grow() < 0:
                return -1
        m = self.pc_cap - 1
        h = <int64_t>(hash_key(key) & <uint64_t>m)
        while True:
            if self.pc_keys[h] == key:
                self.pc_vals[h] += delta
                return 0
            if self.pc_keys[h] == EMPTY:
                self.pc_keys[h] = key
                self.pc_vals[h] = delta
                self.pc_size += 1
                return 0
            h = (h + 1) & m

    cdef int64_t _pc_get(self, uint64_t key) noexcept nogil:
        cdef int64_t h, m
        if self.pc_cap == 0:
            return 0
        m = self.pc_cap - 1
        h = <int64_t>(hash_key(key) & <uint64_t>m)
        while True:
            if self.pc_keys[h] == key:
                return self.pc_vals[h]
            if self.pc_keys[h] == EMPTY:
                return 0
            h = (h + 1) & m

    # -- one step's word lists -----------------------------------------------------------

    cdef void _step_begin(self) noexcept nogil:
        self.gn = 0
        self.nn = 0
        self.gen += 1
        if self.gen == 0:          # wrapped: clear the stamps
            if self.sm_cap:
                memset(self.sm_gen, 0, self.sm_cap * sizeof(uint32_t))
            self.gen = 1

    cdef int _sm_grow(self) noexcept nogil:
        cdef int64_t cap = self.sm_cap * 2 if self.sm_cap else 1024, g, h
        free(self.sm_keys); free(self.sm_group); free(self.sm_gen)
        self.sm_keys = <uint64_t *> malloc(cap * sizeof(uint64_t))
        self.sm_group = <int64_t *> malloc(cap * sizeof(int64_t))
        self.sm_gen = <uint32_t *> malloc(cap * sizeof(uint32_t))
        if self.sm_keys == NULL or self.sm_group == NULL or self.sm_gen == NULL:
            self.sm_cap = 0
            return -1
        memset(self.sm_gen, 0, cap * sizeof(uint32_t))
        self.sm_cap = cap
        for g in range(self.gn):
            h = <int64_t>(hash_key(self.g_key[g]) & <uint64_t>(cap - 1))
            while self.sm_gen[h] == self.gen:
                h = (h + 1) & (cap - 1)
            self.sm_gen[h] = self.gen
            self.sm_keys[h] = self.g_key[g]
            self.sm_group[h] = g
        return 0

    cdef int _record(self, uint64_t key, int32_t w) noexcept nogil:
        """Word w gained an occurrence of pair key in this step (once per word and pair)."""
        cdef int64_t h, m, g, node
        if 2 * (self.gn + 1) > self.sm_cap:
            if self._sm_grow() < 0:
                return -1
        m = self.sm_cap - 1
        h = <int64_t>(hash_key(key) & <uint64_t>m)
        while self.sm_gen[h] == self.gen and self.sm_keys[h] != key:
            h = (h + 1) & m
        if self.nn + 1 > self.ncap:
            if self._reserve_nodes(self.nn + 1) < 0:
                return -1
        if self.sm_gen[h] != self.gen:
            if self.gn + 1 > self.gcap:
                if self._reserve_groups(self.gn + 1) < 0:
                    return -1
            g = self.gn
            self.gn += 1
            self.sm_gen[h] = self.gen
            self.sm_keys[h] = key
            self.sm_group[h] = g
            self.g_key[g] = key
            node = self.nn
            self.nn += 1
            self.n_word[node] = w
            self.n_next[node] = -1
            self.g_head[g] = node
            self.g_tail[g] = node
            return 0
        g = self.sm_group[h]
        if self.n_word[self.g_tail[g]] == w:
            return 0
        node = self.nn
        self.nn += 1
        self.n_word[node] = w
        self.n_next[node] = -1
        self.n_next[self.g_tail[g]] = node
        self.g_tail[g] = node
        return 0

    cdef int _reserve_nodes(self, int64_t need) noexcept nogil:
        cdef int64_t c1 = self.ncap, c2 = self.ncap
        if grow(<void **>&self.n_word, &c1, need, sizeof(int32_t)) < 0:
            return -1
        if grow(<void **>&self.n_next, &c2, need, sizeof(int64_t)) < 0:
            return -1
        self.ncap = c1
        return 0

    cdef int _reserve_groups(self, int64_t need) noexcept nogil:
        cdef int64_t c1 = self.gcap, c2 = self.gcap, c3 = self.gcap
        if grow(<void **>&self.g_key, &c1, need, sizeof(uint64_t)) < 0:
            return -1
        if grow(<void **>&self.g_head, &c2, need, sizeof(int64_t)) < 0:
            return -1
        if grow(<void **>&self.g_tail, &c3, need, sizeof(int64_t)) < 0:
            return -1
        self.gcap = c1
        return 0

    cdef int _flush(self) noexcept nogil:
        """Push one heap entry per pair that gained occurrences in this step (count > 0)."""
        cdef int64_t g, node, c, n, off
        cdef HeapEntry e
        for g in range(self.gn):
            c = self._pc_get(self.g_key[g])
            if c <= 0:
                continue
            n = 0
            node = self.g_head[g]
            while node >= 0:
                n += 1
                node = self.n_next[node]
            if grow(<void **>&self.pool, &self.pcap, self.pn + n, sizeof(int32_t)) < 0:
                return -1
            off = self.pn
            node = self.g_head[g]
            while node >= 0:
                self.pool[self.pn] = self.n_word[node]
                self.pn += 1
                node = self.n_next[node]
            e.count = c
            e.key = self.g_key[g]
            e.pos_off = off
            e.pos_len = n
            if self._push(e) < 0:
                return -1
        return 0

    # -- heap ------------------------------------------------------------------------------

    cdef int _push(self, HeapEntry e) noexcept nogil:
        cdef int64_t i, p
        if grow(<void **>&self.heap, &self.hcap, self.hn + 1, sizeof(HeapEntry)) < 0:
            return -1
        i = self.hn
        self.hn += 1
        while i > 0:
            p = (i - 1) >> 1
            if not better(&e, &self.heap[p]):
                break
            self.heap[i] = self.heap[p]
            i = p
        self.heap[i] = e
        return 0

    cdef HeapEntry _pop(self) noexcept nogil:
        cdef HeapEntry top = self.heap[0], last
        cdef int64_t i = 0, c, n
        self.hn -= 1
        n = self.hn
        if n > 0:
            last = self.heap[n]
            while True:
                c = 2 * i + 1
                if c >= n:
                    break
                if c + 1 < n and better(&self.heap[c + 1], &self.heap[c]):
                    c += 1
                if not better(&self.heap[c], &last):
                    break
                self.heap[i] = self.heap[c]
                i = c
            self.heap[i] = last
        return top

    # -- the loop ------------------------------------------------------------------------

    cdef int64_t _init_pairs(self) noexcept nogil:
        cdef int64_t w, j
        cdef int32_t *p
        self._step_begin()
        for w in range(self.nwords):
            p = self.sym + self.woff[w]
            for j in range(self.wlen[w] - 1):
                if self._pc_add(pair_key(p[j], p[j + 1]), self.wcount[w]) < 0:
                    return -1
                if self._record(pair_key(p[j], p[j + 1]), <int32_t>w) < 0:
                    return -1
        return self._flush()

    cdef int _merge_word(self, int32_t w, int32_t a, int32_t b, int32_t r) noexcept nogil:
        """Rewrite (a, b) -> r in word w, left to right; update pair counts and word lists."""
        cdef int32_t *p = self.sym + self.woff[w]
        cdef int64_t n = self.wlen[w], j = 0, k = 0, cnt = self.wcount[w]
        cdef int32_t prev, nxt
        while j < n:
            if p[j] == a and j + 1 < n and p[j + 1] == b:
                if k > 0:
                    prev = p[k - 1]
                    if self._pc_add(pair_key(prev, a), -cnt) < 0:
                        return -1
                    if self._pc_add(pair_key(prev, r), cnt) < 0:
                        return -1
                    if self._record(pair_key(prev, r), w) < 0:
                        return -1
                p[k] = r
                k += 1
                j += 2
                if j < n:
                    nxt = p[j]
                    if self._pc_add(pair_key(b, nxt), -cnt) < 0:
                        return -1
                    if self._pc_add(pair_key(r, nxt), cnt) < 0:
                        return -1
                    if self._record(pair_key(r, nxt), w) < 0:
                        return -1
            else:
                p[k] = p[j]
                k += 1
                j += 1
        self.wlen[w] = <int32_t>k
        return 0

    def pop_best(self, int64_t min_frequency=0):
        """The pair to merge next as (a, b, count), or None when no pair has a count of at
        least max(1, min_frequency). Stale entries are refreshed on the way. The pair is taken
        off the heap for the next apply_merge (calling pop_best again puts it back)."""
        cdef HeapEntry top
        cdef int64_t c
        cdef int rc = 0
        with nogil:
            if self.has_cur:              # popped but not applied: back into the heap
                self.has_cur = False
                rc = self._push(self.cur)
            while rc == 0 and self.hn > 0:
                top = self._pop()
                c = self._pc_get(top.key)
                if top.count != c:
                    top.count = c
                    if self._push(top) < 0:
                        rc = -1
                        break
                    continue
                if top.count < 1 or min_frequency > top.count:
                    rc = 1
                    break
                self.cur = top
                self.has_cur = True
                break
        if rc < 0:
            raise MemoryError()
        if not self.has_cur:
            return None
        return (<int32_t>(self.cur.key >> 32), <int32_t>(self.cur.key & 0xFFFFFFFF), self.cur.count)

    def apply_merge(self, int32_t new_id):
        """Merge the pair returned by the last pop_best into ``new_id`` in its words."""
        if not self.has_cur:
            raise ValueError("apply_merge: call pop_best first (and get a pair)")
        if new_id < 0:
            raise ValueError(f"new_id: negative id {new_id}")
        cdef int32_t a = <int32_t>(self.cur.key >> 32), b = <int32_t>(self.cur.key & 0xFFFFFFFF)
        cdef int64_t i, off = self.cur.pos_off, n = self.cur.pos_len
        cdef int rc = 0
        self.has_cur = False
        with nogil:
            self._step_begin()
            for i in range(n):
                if self._merge_word(self.pool[off + i], a, b, new_id) < 0:
                    rc = -1
                    break
            if rc == 0:
                rc = self._flush()
        if rc < 0:
            raise MemoryError()
        self.n_merges += 1

    @property
    def n_words(self):
        """Number of words of two or more bytes (the ones merges can change)."""
        return self.nwords

    def word_symbols(self, Py_ssize_t w):
        """Current symbol ids of word w (of the words kept: two or more bytes)."""
        if not 0 <= w < self.nwords:
            raise IndexError(f"word {w} out of range ({self.nwords} words)")
        return [self.sym[self.woff[w] + j] for j in range(self.wlen[w])]

    def symbol_count(self):
        """Sum over the words of count x current number of symbols (tokens of the corpus's
        words of two or more bytes, after the merges so far)."""
        cdef int64_t w, t = 0
        for w in range(self.nwords):
            t += self.wcount[w] * self.wlen[w]
        return t


cdef object _as(object a, object dtype, str name):
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)}, got {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")
    return a


# =======================================================================================
# counting pre-tokens
# =======================================================================================

# code point classes of the class table (0 = not classified yet)
CLASS_L = 1         # \p{L}
CLASS_N = 2         # \p{N}
CLASS_WS = 3        # \s
CLASS_OTHER = 4     # [^\s\p{L}\p{N}]
CLASS_PENDING = 255
DEF C_WS = 3
DEF CLASS_L_C = 1
DEF CLASS_N_C = 2
DEF CLASS_OTHER_C = 4
N_CODE_POINTS = 0x110000

ctypedef fused uchar_t:
    uint8_t
    uint16_t
    uint32_t


cdef struct WordTable:
    uint8_t *arena          # the words' UTF-8 bytes, in insertion order
    int64_t an, acap
    int64_t *off            # word w: arena[off[w] : off[w] + len[w]], seen cnt[w] times
    int32_t *len
    int64_t *cnt
    uint64_t *hash
    int64_t nw, wcap, lcap, ccap, hcap
    int64_t *slots          # open addressing over word ids, -1 = empty
    int64_t scap
    uint8_t *tmp            # one piece's UTF-8 bytes
    int64_t tmpcap
    int64_t n_pieces


cdef inline uint64_t fnv1a(const uint8_t *p, int64_t n) noexcept nogil:
    cdef uint64_t h = 0xcbf29ce484222325ULL
    cdef int64_t i
    for i in range(n):
        h = (h ^ p[i]) * 0x100000001b3ULL
    return h


cdef int wt_rehash(WordTable *t) noexcept nogil:
    cdef int64_t cap = t.scap * 2 if t.scap else 4096, w, h
    cdef int64_t *sl = <int64_t *> malloc(cap * sizeof(int64_t))
    if sl == NULL:
        return -1
    memset(sl, 0xFF, cap * sizeof(int64_t))
    for w in range(t.nw):
        h = <int64_t>(t.hash[w] & <uint64_t>(cap - 1))
        while sl[h] >= 0:
            h = (h + 1) & (cap - 1)
        sl[h] = w
    free(t.slots)
    t.slots = sl
    t.scap = cap
    return 0


cdef int wt_add(WordTable *t, const uint8_t *p, int64_t n, int64_t count) noexcept nogil:
    """Count ``count`` more of the word p[:n]; -1 when out of memory."""
    cdef uint64_t hv = fnv1a(p, n)
    cdef int64_t h, w, m
    if 2 * (t.nw + 1) > t.scap:
        if wt_rehash(t) < 0:
            return -1
    m = t.scap - 1
    h = <int64_t>(hv & <uint64_t>m)
    while True:
        w = t.slots[h]
        if w < 0:
            break
        if t.hash[w] == hv and t.len[w] == n and memcmp(t.arena + t.off[w], p, n) == 0:
            t.cnt[w] += count
            return 0
        h = (h + 1) & m
    if grow(<void **>&t.arena, &t.acap, t.an + n, 1) < 0:
        return -1
    if (grow(<void **>&t.off, &t.wcap, t.nw + 1, sizeof(int64_t)) < 0
            or grow(<void **>&t.len, &t.lcap, t.nw + 1, sizeof(int32_t)) < 0
            or grow(<void **>&t.cnt, &t.ccap, t.nw + 1, sizeof(int64_t)) < 0
            or grow(<void **>&t.hash, &t.hcap, t.nw + 1, sizeof(uint64_t)) < 0):
        return -1
    w = t.nw
    t.nw += 1
    memcpy(t.arena + t.an, p, n)
    t.off[w] = t.an
    t.len[w] = <int32_t>n
    t.cnt[w] = count
    t.hash[w] = hv
    t.an += n
    t.slots[h] = w
    return 0


cdef int emit(WordTable *t, const uchar_t *s, Py_ssize_t i, Py_ssize_t j) noexcept nogil:
    """Count the piece s[i:j], as the UTF-8 bytes ``slmx.tokenizer.base.to_utf8`` gives (lone
    surrogates U+DC80..U+DCFF are the bytes ``surrogateescape`` decoded, unless the piece has
    another surrogate: then all are encoded as ``surrogatepass`` does)."""
    cdef Py_ssize_t k
    cdef int64_t n = 0
    cdef uint32_t c
    cdef bint escape = True
    cdef uint8_t *o
    if j - i > 0x1FFFFFFF:
        return -1
    if grow(<void **>&t.tmp, &t.tmpcap, 4 * (j - i), 1) < 0:
        return -1
    o = t.tmp
    t.n_pieces += 1
    if uchar_t is uint8_t:
        for k in range(i, j):
            c = s[k]
            if c < 0x80:
                o[n] = <uint8_t>c
                n += 1
            else:
                o[n] = <uint8_t>(0xC0 | (c >> 6))
                o[n + 1] = <uint8_t>(0x80 | (c & 0x3F))
                n += 2
        return wt_add(t, o, n, 1)
    else:
        while True:
            n = 0
            for k in range(i, j):
                c = s[k]
                if c < 0x80:
                    o[n] = <uint8_t>c
                    n += 1
                elif c < 0x800:
                    o[n] = <uint8_t>(0xC0 | (c >> 6))
                    o[n + 1] = <uint8_t>(0x80 | (c & 0x3F))
                    n += 2
                elif c < 0x10000:
                    if escape and 0xD800 <= c <= 0xDFFF:
                        if 0xDC80 <= c <= 0xDCFF:
                            o[n] = <uint8_t>(c & 0xFF)
                            n += 1
                            continue
                        escape = False
                        break
                    o[n] = <uint8_t>(0xE0 | (c >> 12))
                    o[n + 1] = <uint8_t>(0x80 | ((c >> 6) & 0x3F))
                    o[n + 2] = <uint8_t>(0x80 | (c & 0x3F))
                    n += 3
                else:
                    o[n] = <uint8_t>(0xF0 | (c >> 18))
                    o[n + 1] = <uint8_t>(0x80 | ((c >> 12) & 0x3F))
                    o[n + 2] = <uint8_t>(0x80 | ((c >> 6) & 0x3F))
                    o[n + 3] = <uint8_t>(0x80 | (c & 0x3F))
                    n += 4
            else:
                return wt_add(t, o, n, 1)
            # a surrogate outside U+DC80..U+DCFF: encode the piece again, all surrogates as is


cdef int scan_gpt2(WordTable *t, const uchar_t *s, Py_ssize_t n, const uint8_t *cls,
                   bint digits) noexcept nogil:
    r"""Split s[:n] as the regex
    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    does (alternatives in order at each position, each greedy) and count the pieces.
    digits: split with \p{N} first (each digit a piece, the text between split as above:
    SmolLM / StarCoder), i.e. a digit ends the text for its left part.
    cls: code point -> CLASS_L / CLASS_N / CLASS_WS / CLASS_OTHER for every code point of s."""
    cdef Py_ssize_t i = 0, j
    cdef uint32_t c, d
    cdef uint8_t k
    while i < n:
        c = s[i]
        if c == 39 and i + 1 < n:                            # ' and a contraction
            d = s[i + 1]
            j = 0
            if d == 115 or d == 116 or d == 109 or d == 100:  # 's 't 'm 'd
                j = i + 2
            elif i + 2 < n and ((d == 114 and s[i + 2] == 101) or (d == 118 and s[i + 2] == 101)
                                or (d == 108 and s[i + 2] == 108)):   # 're 've 'll
                j = i + 3
            if j:
                if emit(t, s, i, j) < 0:
                    return -1
                i = j
                continue
        if c == 32 and i + 1 < n:                            # a space before a run
            k = cls[s[i + 1]]
            if k != C_WS and not (digits and k == CLASS_N_C):
                j = i + 2
                while j < n and cls[s[j]] == k:
                    j += 1
                if emit(t, s, i, j) < 0:
                    return -1
                i = j
                continue
        k = cls[c]
        j = i + 1
        if not (digits and k == CLASS_N_C):
            while j < n and cls[s[j]] == k:
                j += 1
        if (k == C_WS and j < n and j - i >= 2              # \s+(?!\S): leave the last one
                and not (digits and cls[s[j]] == CLASS_N_C)):
            j -= 1
        if emit(t, s, i, j) < 0:
            return -1
        i = j
    return 0


cdef inline bint _ci(uint32_t c, uint32_t lower, bint fold_long_s) noexcept nogil:
    """c equals the ASCII letter ``lower`` ignoring case (and U+017F for s when folding)."""
    return c == lower or c == lower - 32 or (fold_long_s and lower == 115 and c == 0x17F)


cdef inline Py_ssize_t _contraction(const uchar_t *s, Py_ssize_t i, Py_ssize_t n,
                                    bint fold_long_s) noexcept nogil:
    """End of (?i:'s|'t|'re|'ve|'m|'ll|'d) at s[i] (== "'"), or 0."""
    cdef uint32_t d, e
    if i + 1 >= n:
        return 0
    d = s[i + 1]
    if _ci(d, 115, fold_long_s) or _ci(d, 116, 0) or _ci(d, 109, 0) or _ci(d, 100, 0):
        return i + 2
    if i + 2 < n:
        e = s[i + 2]
        if ((_ci(d, 114, 0) and _ci(e, 101, 0)) or (_ci(d, 118, 0) and _ci(e, 101, 0))
                or (_ci(d, 108, 0) and _ci(e, 108, 0))):
            return i + 3
    return 0


cdef int scan_llama3(WordTable *t, const uchar_t *s, Py_ssize_t n, const uint8_t *cls,
                     int max_digits, bint fold_long_s) noexcept nogil:
    r"""Split s[:n] as Llama 3's regex (max_digits 3) or Qwen2's (max_digits 1) does:
    (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*
    |\s*[\r\n]+|\s+(?!\S)|\s+
    and count the pieces. fold_long_s: U+017F matches 's' in the contractions (the (?i)
    spelling; slmx's '[sS] spelling does not)."""
    cdef Py_ssize_t i = 0, j, q, last_nl
    cdef uint32_t c
    cdef uint8_t k, k1
    while i < n:
        c = s[i]
        k = cls[c]
        if c == 39:
            j = _contraction(s, i, n, fold_long_s)
            if j:
                if emit(t, s, i, j) < 0:
                    return -1
                i = j
                continue
        # [^\r\n\p{L}\p{N}]?\p{L}+
        if k == CLASS_L_C:
            j = i + 1
            while j < n and cls[s[j]] == CLASS_L_C:
                j += 1
            if emit(t, s, i, j) < 0:
                return -1
            i = j
            continue
        if k != CLASS_N_C and c != 10 and c != 13 and i + 1 < n and cls[s[i + 1]] == CLASS_L_C:
            j = i + 2
            while j < n and cls[s[j]] == CLASS_L_C:
                j += 1
            if emit(t, s, i, j) < 0:
                return -1
            i = j
            continue
        # \p{N}{1,max_digits}
        if k == CLASS_N_C:
            j = i + 1
            while j < n and j - i < max_digits and cls[s[j]] == CLASS_N_C:
                j += 1
            if emit(t, s, i, j) < 0:
                return -1
            i = j
            continue
        # ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        q = -1
        if k == CLASS_OTHER_C:
            q = i
        elif c == 32 and i + 1 < n and cls[s[i + 1]] == CLASS_OTHER_C:
            q = i + 1
        if q >= 0:
            j = q + 1
            while j < n and cls[s[j]] == CLASS_OTHER_C:
                j += 1
            while j < n and (s[j] == 10 or s[j] == 13):
                j += 1
            if emit(t, s, i, j) < 0:
                return -1
            i = j
            continue
        # whitespace: \s*[\r\n]+ up to the run's last newline, else \s+(?!\S), else \s+
        j = i
        last_nl = -1
        while j < n and cls[s[j]] == C_WS:
            if s[j] == 10 or s[j] == 13:
                last_nl = j
            j += 1
        if last_nl >= 0:
            j = last_nl + 1
        elif j < n and j - i >= 2:
            j -= 1
        if emit(t, s, i, j) < 0:
            return -1
        i = j
    return 0


def mark_unclassified(str text, uint8_t[::1] table):
    """Code points of ``text`` whose class in ``table`` is 0, as a list (each once); they are
    set to CLASS_PENDING so the caller classifies each once."""
    if table.shape[0] != N_CODE_POINTS:
        raise ValueError(f"table: expected {N_CODE_POINTS} entries, got {table.shape[0]}")
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text), i
    cdef int kind = PyUnicode_KIND(text)
    cdef void *data = PyUnicode_DATA(text)
    cdef uint32_t c
    out = []
    if kind == 1:
        for i in range(n):
            c = (<const uint8_t *>data)[i]
            if table[c] == 0:
                table[c] = CLASS_PENDING
                out.append(c)
    elif kind == 2:
        for i in range(n):
            c = (<const uint16_t *>data)[i]
            if table[c] == 0:
                table[c] = CLASS_PENDING
                out.append(c)
    else:
        for i in range(n):
            c = (<const uint32_t *>data)[i]
            if table[c] == 0:
                table[c] = CLASS_PENDING
                out.append(c)
    return out


cdef class PieceCounter:
    """Counts of pre-tokens (as UTF-8 bytes), first-seen order.

    ``add_gpt2(text, table)`` splits with GPT-2's regex and counts, ``add_llama3`` with Llama 3's
    or Qwen2's, without the GIL (one PieceCounter per thread); ``merge(other)`` adds another's counts; ``arrays()`` gives
    (data uint8, offsets int64 (W+1,), counts int64 (W,)) for :class:`BPEMergeState`.
    """
    cdef WordTable t

    def __cinit__(self):
        memset(&self.t, 0, sizeof(WordTable))

    def __dealloc__(self):
        free(self.t.arena); free(self.t.off); free(self.t.len); free(self.t.cnt)
        free(self.t.hash); free(self.t.slots); free(self.t.tmp)

    def __len__(self):
        return self.t.nw

    @property
    def n_pieces(self):
        """Number of pieces counted (with repetitions)."""
        return self.t.n_pieces

    def add_gpt2(self, str text, const uint8_t[::1] table, bint individual_digits=False):
        """Split ``text`` with GPT-2's pre-tokenizer (after splitting off every digit when
        ``individual_digits``) and count the pieces. ``table`` (0x110000,) must hold the class
        of every code point of ``text`` (see mark_unclassified)."""
        if table.shape[0] != N_CODE_POINTS:
            raise ValueError(f"table: expected {N_CODE_POINTS} entries, got {table.shape[0]}")
        cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text)
        cdef int kind = PyUnicode_KIND(text)
        cdef void *data = PyUnicode_DATA(text)
        cdef const uint8_t *cls = &table[0]
        cdef int rc
        with nogil:
            if kind == 1:
                rc = scan_gpt2(&self.t, <const uint8_t *>data, n, cls, individual_digits)
            elif kind == 2:
                rc = scan_gpt2(&self.t, <const uint16_t *>data, n, cls, individual_digits)
            else:
                rc = scan_gpt2(&self.t, <const uint32_t *>data, n, cls, individual_digits)
        if rc < 0:
            raise MemoryError()

    def add_llama3(self, str text, const uint8_t[::1] table, int max_digits=3, bint fold_long_s=False):
        """Split ``text`` with Llama 3's pre-tokenizer (``max_digits`` 3) or Qwen2's (1) and
        count the pieces; ``table`` as for add_gpt2."""
        if table.shape[0] != N_CODE_POINTS:
            raise ValueError(f"table: expected {N_CODE_POINTS} entries, got {table.shape[0]}")
        if max_digits < 1:
            raise ValueError(f"max_digits: must be at least 1, got {max_digits}")
        cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text)
        cdef int kind = PyUnicode_KIND(text)
        cdef void *data = PyUnicode_DATA(text)
        cdef const uint8_t *cls = &table[0]
        cdef int rc
        with nogil:
            if kind == 1:
                rc = scan_llama3(&self.t, <const uint8_t *>data, n, cls, max_digits, fold_long_s)
            elif kind == 2:
                rc = scan_llama3(&self.t, <const uint16_t *>data, n, cls, max_digits, fold_long_s)
            else:
                rc = scan_llama3(&self.t, <const uint32_t *>data, n, cls, max_digits, fold_long_s)
        if rc < 0:
            raise MemoryError()

    def add_word(self, const uint8_t[::1] word, int64_t count=1):
        """Count ``count`` more of one word (its bytes)."""
        if count <= 0:
            raise ValueError(f"count: must be positive, got {count}")
        cdef const uint8_t *p = &word[0] if word.shape[0] else <const uint8_t *>""
        if wt_add(&self.t, p, word.shape[0], count) < 0:
            raise MemoryError()

    def merge(self, PieceCounter other):
        """Add the counts of ``other`` (its words in their order, after this one's)."""
        cdef int64_t w
        cdef int rc = 0
        if other is self:
            raise ValueError("merge: cannot merge a counter into itself")
        with nogil:
            for w in range(other.t.nw):
                rc = wt_add(&self.t, other.t.arena + other.t.off[w], other.t.len[w], other.t.cnt[w])
                if rc < 0:
                    break
            self.t.n_pieces += other.t.n_pieces
        if rc < 0:
            raise MemoryError()

    def arrays(self):
        """(data uint8 (N,), offsets int64 (W+1,), counts int64 (W,)), copies."""
        cdef int64_t w, nw = self.t.nw
        data = np.empty(self.t.an, dtype=np.uint8)
        offsets = np.empty(nw + 1, dtype=np.int64)
        counts = np.empty(nw, dtype=np.int64)
        cdef uint8_t[::1] d = data
        cdef int64_t[::1] o = offsets
        cdef int64_t[::1] c = counts
        if self.t.an:
            memcpy(&d[0], self.t.arena, self.t.an)
        for w in range(nw):
            o[w] = self.t.off[w]
            c[w] = self.t.cnt[w]
        o[nw] = self.t.an
        return data, offsets, counts
