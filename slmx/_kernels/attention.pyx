# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Tiled (FlashAttention-style) fp32 attention with an online softmax.

No (T, S) score matrix is formed: a task takes a block of query rows (query positions x the
query heads sharing one KV head) and walks the key tiles of 64 keys that can be visible to it,
keeping per row the running max m, the running sum l and the unnormalised output O in place:
    S = scale * Q K_tile^T  (-> softcap * tanh(S / softcap)),  masked to -inf
    m' = max(m, rowmax S);  P = exp(S - m');  l = l e^(m - m') + rowsum P;  O = O e^(m - m') + P V
and O / l at the end. Tasks run in parallel over (KV heads x head groups x query tiles);
when there are fewer tasks than threads (decode: T = 1, one KV head) the key range is also
split (split-K) and the partial (m, l, O) states are merged afterwards. Key tiles outside the
causal / sliding-window band of a task are never visited, so a sliding-window layer costs
O(T * window), not O(T^2).
"""
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport INFINITY, expf
from libc.stdint cimport uint8_t

include "simd.pxi"

cnp.import_array()

cdef extern from "attention_simd.h" nogil:
    float *slmx_att_scratch(int slot, size_t nfloats)
    int slmx_att_level(int lvl, long D)
    void slmx_att_pack_kt(int dl, const float *K, long ks, int bk, long D, float *Kt)
    void slmx_att_qk(int dl, const float *const *q, int nr, const float *Kt, long D, float *S)
    void slmx_att_softmax(int lvl, float *S, int nr, int bk, float scale, float softcap,
                          const int *lo, const int *hi, float *m, float *l, float *alpha)
    int slmx_att_packs_v(int dl)
    int slmx_att_has_qk_dot(int dl, int nr)
    void slmx_att_qk_dot(int dl, const float *const *q, int nr, const float *K, long ks, int bk,
                         long D, float *S)
    void slmx_att_pack_v(int dl, const float *V, long vs, int bk, long D, float *Vp)
    void slmx_att_pv(int dl, float *const *O, int nr, const float *P, const float *alpha,
                     const float *V, long vs, const float *Vp, int bk, long D)

cdef extern from "kvq_simd.h" nogil:
    long slmx_kvq_row_bytes(int t, long D)
    void slmx_kvq_quant_row(int t, const float *x, long D, uint8_t *dst)
    void slmx_kvq_dequant_rows(int lvl, int t, const uint8_t *src, long rs, int n, long D, float *y)

DEF BK = 64          # keys per tile (the kernels' fixed tile width)
DEF RMAX = 64        # query rows per task (positions x heads of one KV group)
DEF PAR_MIN = 131072 # rows * keys * D below this runs on one thread
# Shared K/V packs larger than this many floats (32 MiB) are not made (tasks then pack their own
# tiles), so attention scratch stays bounded for any context length.
cdef Py_ssize_t _pack_max = 8388608


# Split-K of a lone task (decode) starts at this many visible keys: 2 splits from 128 keys, then
# one split per 128 keys up to 2 per thread.
cdef Py_ssize_t _split_min = 2 * BK


def _set_split_min(Py_ssize_t keys):
    """(tests, benchmarks) the fewest visible keys split across threads; returns the previous value"""
    global _split_min
    old = _split_min
    _split_min = keys
    return old


def _set_pack_limit(Py_ssize_t floats):
    """(tests) the largest shared K/V pack in floats; returns the previous limit"""
    global _pack_max
    old = _pack_max
    _pack_max = floats
    return old


cdef struct AttnArgs:
    const float *q
    const float *k
    const float *v
    const uint8_t *kq    # k, v as rows of kv_type blocks (kv_type != 0), strides in bytes
    const uint8_t *vq
    Py_ssize_t kqs_s, kqs_h, vqs_s, vqs_h
    int kv_type
    Py_ssize_t ring      # > 0: key position j is stored in row j % ring (a ring buffer)
    float *out
    float *partial
    float *kvpack        # packed (Kt, Vp) tiles of keys [tmin*BK, ...) per KV head, or NULL
    Py_ssize_t tmin, ntile
    Py_ssize_t T, Hkv, D, S, G, hsub, nsub, bq, nqt, nbase, nsplit
    Py_ssize_t qs_t, qs_h, ks_s, ks_h, vs_s, vs_h, os_t, os_h
    Py_ssize_t q_offset, window
    float scale, softcap
    bint causal
    int lvl, dl


cdef inline Py_ssize_t _cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline int _clamp_tile(Py_ssize_t x) noexcept nogil:
    if x < 0:
        return 0
    if x > BK:
        return BK
    return <int>x


cdef inline const float *_tile_rows(const AttnArgs *a, bint value, Py_ssize_t j0, Py_ssize_t g,
                                    int bk, float *tmp, Py_ssize_t *stride) noexcept nogil:
    """the bk keys (or values) of KV head g from position j0 on, as fp32 rows `stride` floats apart:
    the cache in place (fp32) or dequantized into tmp (bk, D) (block types); j0 % BK == 0"""
    cdef Py_ssize_t row = j0 % a.ring if a.ring > 0 else j0
    if a.kv_type == 0:
        if value:
            stride[0] = a.vs_s
            return a.v + row * a.vs_s + g * a.vs_h
        stride[0] = a.ks_s
        return a.k + row * a.ks_s + g * a.ks_h
    stride[0] = a.D
    if value:
        slmx_kvq_dequant_rows(a.lvl, a.kv_type, a.vq + row * a.vqs_s + g * a.vqs_h, a.vqs_s, bk, a.D, tmp)
    else:
        slmx_kvq_dequant_rows(a.lvl, a.kv_type, a.kq + row * a.kqs_s + g * a.kqs_h, a.kqs_s, bk, a.D, tmp)
    return tmp


cdef int attn_task(const AttnArgs *a, Py_ssize_t task) noexcept nogil:
    """One (kv head, head group, query tile, key split) task; returns -1 if out of memory"""
    cdef Py_ssize_t base = task // a.nsplit, split = task % a.nsplit
    # heavy (late) query tiles first: tasks are handed out dynamically in this order
    cdef Py_ssize_t qt = a.nqt - 1 - base % a.nqt
    cdef Py_ssize_t grp = base // a.nqt
    cdef Py_ssize_t g = grp // a.nsub, sub = grp % a.nsub
    cdef Py_ssize_t h0 = g * a.G + sub * a.hsub
    cdef Py_ssize_t nh = min(a.hsub, a.G - sub * a.hsub)
    cdef Py_ssize_t t0 = qt * a.bq, t1 = min(a.T, t0 + a.bq)
    cdef Py_ssize_t D = a.D, i, hl, r, d, j0, jb, jend, tb, ntl, b0, b1, tile, pos
    cdef const float *vsrc
    cdef const float *ksrc
    cdef bint dot
    cdef const float *Kt
    cdef const float *Vp
    cdef int nr = <int>((t1 - t0) * nh), bk
    cdef const float *qrow[RMAX]
    cdef float *orow[RMAX]
    cdef Py_ssize_t rpos[RMAX]
    cdef int lo[RMAX]
    cdef int hi[RMAX]
    cdef float m[RMAX]
    cdef float l[RMAX]
    cdef float alpha[RMAX]
    cdef float inv
    cdef float *part = NULL
    cdef Py_ssize_t kst, vst
    cdef float *scratch = slmx_att_scratch(0, <size_t>((4 * D + RMAX) * BK))
    if scratch == NULL:
        return -1
    # scratch: (D, BK) transposed key tile | (RMAX, BK) scores -> probabilities |
    #          (BK, D) value tile in column chunks | (BK, D) dequantized keys | (BK, D) values;
    #          the tiles come from a.kvpack when shared
    cdef float *Sb = scratch + D * BK
    cdef float *kdq = Sb + RMAX * BK + D * BK
    cdef float *vdq = kdq + D * BK
    dot = slmx_att_has_qk_dot(a.dl, nr)
    if a.nsplit > 1:
        part = a.partial + task * RMAX * (D + 2)
    for i in range(t1 - t0):
        for hl in range(nh):
            r = i * nh + hl
            qrow[r] = a.q + (t0 + i) * a.qs_t + (h0 + hl) * a.qs_h
            if part != NULL:
                orow[r] = part + r * (D + 2) + 2
            else:
                orow[r] = a.out + (t0 + i) * a.os_t + (h0 + hl) * a.os_h
            rpos[r] = a.q_offset + t0 + i
            m[r] = -INFINITY
            l[r] = 0.0
            for d in range(D):
                orow[r][d] = 0.0
    # keys any row of this task may see, as whole aligned tiles; this split's share of them
    jend = min(a.S, a.q_offset + t1) if a.causal else a.S
    jb = max(0, a.q_offset + t0 - a.window + 1) if a.window > 0 else 0
    if jend > jb:
        tb = jb // BK
        ntl = _cdiv(jend, BK) - tb
        b0 = tb + (split * ntl) // a.nsplit
        b1 = tb + ((split + 1) * ntl) // a.nsplit
        for tile in range(b0, b1):
            j0 = tile * BK
            bk = <int>min(<Py_ssize_t>BK, a.S - j0)
            for r in range(nr):
                pos = rpos[r]
                lo[r] = _clamp_tile(pos - a.window + 1 - j0) if a.window > 0 else 0
                hi[r] = _clamp_tile(pos + 1 - j0) if a.causal else bk
            if a.kvpack != NULL:
                Kt = a.kvpack + (g * a.ntile + tile - a.tmin) * (2 * D * BK)
                Vp = Kt + D * BK
                if slmx_att_packs_v(a.dl):
                    vsrc = Vp      # not read: pv takes the packed tile
                    vst = D
                else:
                    vsrc = _tile_rows(a, True, j0, g, bk, vdq, &vst)
                slmx_att_qk(a.dl, qrow, nr, Kt, D, Sb)
            else:
                ksrc = _tile_rows(a, False, j0, g, bk, kdq, &kst)
                vsrc = _tile_rows(a, True, j0, g, bk, vdq, &vst)
                if dot:
                    # decode: K and V used in place by a handful of rows
                    Vp = NULL
                    slmx_att_qk_dot(a.dl, qrow, nr, ksrc, kst, bk, D, Sb)
                else:
                    slmx_att_pack_kt(a.dl, ksrc, kst, bk, D, scratch)
                    slmx_att_pack_v(a.dl, vsrc, vst, bk, D, Sb + RMAX * BK)
                    Vp = Sb + RMAX * BK
                    slmx_att_qk(a.dl, qrow, nr, scratch, D, Sb)
            slmx_att_softmax(a.lvl, Sb, nr, bk, a.scale, a.softcap, lo, hi, m, l, alpha)
            slmx_att_pv(a.dl, orow, nr, Sb, alpha, vsrc, vst, Vp, bk, D)
    for r in range(nr):
        if part != NULL:
            (orow[r] - 2)[0] = m[r]
            (orow[r] - 2)[1] = l[r]
        else:
            inv = 1.0 / l[r] if l[r] > 0.0 else (l[r] if l[r] != l[r] else 0.0)   # NaN stays NaN
            for d in range(D):
                orow[r][d] = orow[r][d] * inv
    return 0


cdef void attn_merge(const AttnArgs *a, Py_ssize_t base) noexcept nogil:
    """out rows of base task = merge of its nsplit partial (m, l, O) states"""
    cdef Py_ssize_t qt = a.nqt - 1 - base % a.nqt
    cdef Py_ssize_t grp = base // a.nqt
    cdef Py_ssize_t g = grp // a.nsub, sub = grp % a.nsub
    cdef Py_ssize_t h0 = g * a.G + sub * a.hsub
    cdef Py_ssize_t nh = min(a.hsub, a.G - sub * a.hsub)
    cdef Py_ssize_t t0 = qt * a.bq, t1 = min(a.T, t0 + a.bq)
    cdef Py_ssize_t D = a.D, i, hl, r, s, d
    cdef const float *p
    cdef float *o
    cdef float mx, w, lsum, inv
    for i in range(t1 - t0):
        for hl in range(nh):
            r = i * nh + hl
            o = a.out + (t0 + i) * a.os_t + (h0 + hl) * a.os_h
            mx = -INFINITY
            lsum = 0.0
            for s in range(a.nsplit):
                p = a.partial + ((base * a.nsplit + s) * RMAX + r) * (D + 2)
                if p[0] != p[0] or p[1] != p[1]:
                    lsum = p[0] + p[1]                  # a NaN part (a NaN score) makes the row NaN
                elif p[0] > mx:
                    mx = p[0]
            for d in range(D):
                o[d] = lsum if lsum != lsum else 0.0
            if mx == -INFINITY or lsum != lsum:
                continue
            lsum = 0.0
            for s in range(a.nsplit):
                p = a.partial + ((base * a.nsplit + s) * RMAX + r) * (D + 2)
                if p[0] == -INFINITY:
                    continue
                w = expf(p[0] - mx)
                lsum = lsum + w * p[1]
                for d in range(D):
                    o[d] = o[d] + w * p[2 + d]
            inv = 1.0 / lsum if lsum > 0.0 else 0.0
            for d in range(D):
                o[d] = o[d] * inv


cdef int pack_tile(const AttnArgs *a, Py_ssize_t job) noexcept nogil:
    """pack the shared (Kt, Vp) tile `job` (KV head x tile) into a.kvpack; -1 if out of memory"""
    cdef Py_ssize_t g = job // a.ntile
    cdef Py_ssize_t j0 = (a.tmin + job % a.ntile) * BK
    cdef int bk = <int>min(<Py_ssize_t>BK, a.S - j0)
    cdef Py_ssize_t kst, vst
    cdef const float *src
    cdef float *tmp = NULL
    if a.kv_type != 0:
        tmp = slmx_att_scratch(0, <size_t>(BK * a.D))
        if tmp == NULL:
            return -1
    src = _tile_rows(a, False, j0, g, bk, tmp, &kst)
    slmx_att_pack_kt(a.dl, src, kst, bk, a.D, a.kvpack + job * (2 * a.D * BK))
    if slmx_att_packs_v(a.dl):
        src = _tile_rows(a, True, j0, g, bk, tmp, &vst)
        slmx_att_pack_v(a.dl, src, vst, bk, a.D, a.kvpack + job * (2 * a.D * BK) + a.D * BK)
    return 0


cdef int attention_forward(AttnArgs *a, int nthreads) noexcept nogil:
    """run all tasks (and the split-K merge); -1 if scratch memory could not be had"""
    cdef Py_ssize_t ntasks, t, keys
    cdef int nt = nthreads, err = 0
    cdef int *errp = &err     # shared flag (a plain assignment in prange would be lastprivate)
    keys = min(a.S, a.q_offset + a.T) if a.causal else a.S
    if a.window > 0:
        keys = min(keys, a.window + a.bq)
    if nt < 1 or a.T * a.Hkv * a.G * keys * a.D < PAR_MIN:
        nt = 1
    a.nsplit = 1
    if nt > 1 and a.nbase < 2 * nt and keys >= _split_min:
        a.nsplit = max(1, min(_cdiv(2 * nt, a.nbase), max(2, keys // (2 * BK))))
    a.partial = NULL
    if a.nsplit > 1:
        a.partial = slmx_att_scratch(1, <size_t>(a.nbase * a.nsplit * RMAX * (a.D + 2)))
        if a.partial == NULL:
            return -1
    # key tiles shared by several tasks (prefill: many query tiles) are packed once up front
    a.kvpack = NULL
    a.tmin = a.ntile = 0
    cdef Py_ssize_t jmin, jmax, job
    if a.nqt * a.nsub > 1 and a.S > 0:
        jmax = min(a.S, a.q_offset + a.T) if a.causal else a.S
        jmin = max(0, a.q_offset - a.window + 1) if a.window > 0 else 0
        if jmax > jmin:
            a.tmin = jmin // BK
            a.ntile = _cdiv(jmax, BK) - a.tmin
        if jmax > jmin and a.Hkv * a.ntile * 2 * a.D * BK <= _pack_max:
            a.kvpack = slmx_att_scratch(2, <size_t>(a.Hkv * a.ntile * 2 * a.D * BK))
            if a.kvpack == NULL:
                return -1
            for job in prange(a.Hkv * a.ntile, num_threads=nt, schedule="static"):
                if pack_tile(a, job) != 0:
                    errp[0] = -1
            if err != 0:
                return -1
    ntasks = a.nbase * a.nsplit
    if nt == 1 or ntasks == 1:      # one task: no parallel region
        for t in range(ntasks):
            if attn_task(a, t) != 0:
                return -1
    else:
        for t in prange(ntasks, num_threads=nt, schedule="dynamic"):
            if attn_task(a, t) != 0:
                errp[0] = -1
    if err != 0:
        return -1
    if a.nsplit > 1:
        if nt == 1 or a.nbase == 1:
            for t in range(a.nbase):
                attn_merge(a, t)
        else:
            for t in prange(a.nbase, num_threads=nt, schedule="static"):
                attn_merge(a, t)
    return 0


KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}   # cache formats (ggml type ids)


def kv_row_bytes(int kv_type, Py_ssize_t D):
    """bytes of one cached row of D elements stored as kv_type (F32 0, F16 1, Q4_0 2, Q8_0 8)"""
    _check_kv_type(kv_type, D)
    return slmx_kvq_row_bytes(kv_type, D)


cdef _check_kv_type(int kv_type, Py_ssize_t D):
    if kv_type not in (0, 1, 2, 8):
        raise ValueError(f"kv_type must be one of {KV_TYPES} (ggml type ids), got {kv_type}")
    if kv_type in (2, 8) and D % 32:
        raise ValueError(f"head_dim {D} is not a multiple of the block size 32 of kv_type {kv_type}")


def kv_quantize(x, int kv_type, dst):
    """dst (R, row_bytes) uint8 = rows of x (R, D) float32 stored as kv_type (ggml's quantizers,
    bit-identical to gguf-py's). Both C-contiguous; returns dst."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous:
        raise ValueError("x: expected a C-contiguous float32 array (R, D)")
    cdef Py_ssize_t R = x.shape[0], D = x.shape[1], r
    _check_kv_type(kv_type, D)
    cdef long rb = slmx_kvq_row_bytes(kv_type, D)
    if (not isinstance(dst, np.ndarray) or dst.dtype != np.uint8 or dst.shape != (R, rb)
            or not dst.flags.c_contiguous):
        raise ValueError(f"dst: expected a C-contiguous uint8 array of shape {(R, rb)}")
    if R == 0 or D == 0:
        return dst
    cdef const float[:, ::1] xv = x
    cdef uint8_t[:, ::1] dv = dst
    with nogil:
        for r in range(R):
            slmx_kvq_quant_row(kv_type, &xv[r, 0], D, &dv[r, 0])
    return dst


def kv_dequantize(src, int kv_type, Py_ssize_t D):
    """float32 (R, D) = the rows of src (R, row_bytes) uint8 (row stride free) stored as kv_type"""
    _check_kv_type(kv_type, D)
    cdef long rb = slmx_kvq_row_bytes(kv_type, D)
    if (not isinstance(src, np.ndarray) or src.dtype != np.uint8 or src.ndim != 2 or src.shape[1] != rb
            or (src.shape[1] > 1 and src.strides[1] != 1) or src.strides[0] < 0):
        raise ValueError(f"src: expected a uint8 array (R, {rb}) with contiguous rows")
    cdef Py_ssize_t R = src.shape[0]
    out = np.empty((R, D), np.float32)
    if R == 0 or D == 0:
        return out
    cdef const uint8_t[:, :] sv = src
    cdef float[:, ::1] ov = out
    cdef int lvl = slmx_simd_level()
    with nogil:
        slmx_kvq_dequant_rows(lvl, kv_type, &sv[0, 0], sv.strides[0], <int>R, D, &ov[0, 0])
    return out


cdef object _arr3(object x, str name, object dtype=np.float32, Py_ssize_t item=4):
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)}, got {x.dtype}")
    if x.ndim != 3:
        raise ValueError(f"{name}: expected 3 dimensions, got shape {x.shape}")
    if x.shape[2] > 1 and x.strides[2] != item:
        raise ValueError(f"{name}: the last axis (head_dim) must be contiguous")
    if (x.strides[0] % item) or (x.strides[1] % item) or x.strides[0] < 0 or x.strides[1] < 0:
        raise ValueError(f"{name}: unsupported strides {x.strides}")
    return x


def attention(q, k, v, out, float scale, bint causal, Py_ssize_t q_offset, Py_ssize_t window,
              int nthreads=1, float softcap=0.0, Py_ssize_t S=-1, Py_ssize_t ring=0, int kv_type=0):
    """out = softmax(scale * q k^T + mask) v, per query head, grouped-query.

    q, out (T, H, D) float32; k, v (S_max, Hkv, D) float32, head_dim contiguous (other strides
    free, so k, v may be views of a preallocated KV cache) — or, with kv_type F16 (1), Q4_0 (2),
    Q8_0 (8), uint8 (S_max, Hkv, row_bytes) rows of that format (`kv_row_bytes`), read a tile at
    a time (dequantized into scratch inside the online softmax; never as a whole).
    Only the first ``S`` key positions are read (default: all S_max).
    Query i sits at position q_offset + i, key j at position j:
    ``causal`` masks j > q_offset + i; ``window`` > 0 also masks q_offset + i - j >= window
    (the last ``window`` positions, itself included, stay visible: Gemma 3's sliding layers).
    ``ring`` > 0 (a multiple of 64, <= S_max): the cache is a ring buffer, position j in row
    j % ring; needs causal, window > 0 and window + T - 1 <= ring (every visible key present).
    Head h reads KV head h // (H // Hkv). ``softcap`` > 0 maps scores s -> softcap*tanh(s/softcap)
    (after ``scale``). A query row that sees no key gets zeros. out must not overlap q, k, v.
    """
    _arr3(q, "q")
    _arr3(out, "out")
    cdef Py_ssize_t T = q.shape[0], H = q.shape[1], D = q.shape[2]
    cdef long rb = 0
    if kv_type == 0:
        _arr3(k, "k")
        _arr3(v, "v")
        if k.shape[2] != D or v.shape[2] != D:
            raise ValueError(f"k, v: head_dim must be {D}, got {k.shape[2]} and {v.shape[2]}")
    else:
        _check_kv_type(kv_type, D)
        rb = slmx_kvq_row_bytes(kv_type, D)
        _arr3(k, "k", np.uint8, 1)
        _arr3(v, "v", np.uint8, 1)
        if k.shape[2] != rb or v.shape[2] != rb:
            raise ValueError(f"k, v: rows of {D} elements of kv_type {kv_type} take {rb} bytes, "
                             f"got {k.shape[2]} and {v.shape[2]}")
    cdef Py_ssize_t Smax = k.shape[0], Hkv = k.shape[1]
    if out.shape != q.shape:
        raise ValueError(f"out: expected shape {q.shape}, got {out.shape}")
    if v.shape[0] != Smax or v.shape[1] != Hkv:
        raise ValueError(f"v: expected shape[:2] {(Smax, Hkv)}, got {v.shape[:2]}")
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"number of query heads {H} is not a multiple of the KV heads {Hkv}")
    if S < 0:
        S = Smax
    if q_offset < 0 or window < 0 or ring < 0:
        raise ValueError("q_offset, window and ring must be >= 0")
    if ring > 0:
        if ring % 64 or ring > Smax:
            raise ValueError(f"ring={ring} must be a multiple of 64 and <= the {Smax} rows of k, v")
        if not causal or window == 0 or window + T - 1 > ring:
            raise ValueError(f"a ring buffer of {ring} rows needs causal attention with a window "
                             f"and window + T - 1 <= ring (window {window}, T {T})")
    elif S > Smax:
        raise ValueError(f"S={S} exceeds the {Smax} rows of k, v")
    if softcap < 0 or softcap != softcap:
        raise ValueError("softcap must be >= 0")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if np.may_share_memory(out, x):
            raise ValueError(f"out must not overlap {name}")
    if T == 0 or H == 0 or D == 0:
        return out
    cdef AttnArgs a
    cdef const float[:, :, :] qv = q
    cdef float[:, :, :] ov = out
    cdef const float[:, :, :] kv_
    cdef const float[:, :, :] vv
    cdef const uint8_t[:, :, :] kb
    cdef const uint8_t[:, :, :] vb
    cdef int rc
    a.G = H // Hkv
    a.hsub = min(a.G, <Py_ssize_t>RMAX)
    a.nsub = _cdiv(a.G, a.hsub)
    a.bq = max(1, RMAX // a.hsub)
    a.nqt = _cdiv(T, a.bq)
    a.nbase = Hkv * a.nsub * a.nqt
    a.T, a.Hkv, a.D, a.S = T, Hkv, D, S
    a.q = &qv[0, 0, 0]
    a.out = &ov[0, 0, 0]
    a.qs_t, a.qs_h = q.strides[0] // 4, q.strides[1] // 4
    a.os_t, a.os_h = out.strides[0] // 4, out.strides[1] // 4
    a.k = a.v = NULL
    a.kq = a.vq = NULL
    a.ks_s = a.ks_h = a.vs_s = a.vs_h = 0
    a.kqs_s = a.kqs_h = a.vqs_s = a.vqs_h = 0
    a.kv_type = kv_type
    a.ring = ring
    if S > 0 and Smax > 0:
        if kv_type == 0:
            kv_ = k
            vv = v
            a.k = &kv_[0, 0, 0]
            a.v = &vv[0, 0, 0]
            a.ks_s, a.ks_h = k.strides[0] // 4, k.strides[1] // 4
            a.vs_s, a.vs_h = v.strides[0] // 4, v.strides[1] // 4
        else:
            kb = k
            vb = v
            a.kq = &kb[0, 0, 0]
            a.vq = &vb[0, 0, 0]
            a.kqs_s, a.kqs_h = k.strides[0], k.strides[1]
            a.vqs_s, a.vqs_h = v.strides[0], v.strides[1]
    a.q_offset, a.window = q_offset, window
    a.scale, a.softcap, a.causal = scale, softcap, causal
    a.lvl = slmx_simd_level()
    a.dl = slmx_att_level(a.lvl, D)
    with nogil:
        rc = attention_forward(&a, nthreads)
    if rc != 0:
        raise MemoryError("attention scratch")
    return out
