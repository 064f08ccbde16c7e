"""Training kernels and the trainable model: every kernel against a numpy reference written here,
every parameter gradient against PyTorch autograd (torch is a test-only dependency), exact
gradient accumulation across micro-batches, bf16 mode. Kernel tests run at every SIMD level."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slmx._kernels import optim as optim_k
from slmx._kernels import train_ops as T
from slmx.train import optim
from slmx.train.model import PRESETS, ParamBuffer, TrainableLM, make_config

torch.set_num_threads(1)


@pytest.fixture
def level(simd_level):
    """The conftest level, applied to the training kernel modules as well."""
    T._set_simd_level(simd_level)
    optim_k._set_simd_level(simd_level)
    yield simd_level
    T._set_simd_level(-1)
    optim_k._set_simd_level(-1)


def rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def bf16_round(x):
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


rng = np.random.default_rng(1234)


def randn(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ----------------------------------------------------------------------------- GEMM

GEMM_SHAPES = [(1, 1, 1), (5, 7, 3), (37, 45, 70), (100, 33, 300), (257, 129, 513), (64, 640, 40)]


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_gemm(level, bf16):
    for M, N, K in GEMM_SHAPES:
        for ta in (False, True):
            for tb in (False, True):
                for acc in (False, True):
                    a = randn(*((K, M) if ta else (M, K)))
                    b = randn(*((N, K) if tb else (K, N)))
                    c0 = randn(M, N)
                    c = c0.copy()
                    T.gemm(a, b, c, ta, tb, acc, bf16, 2)
                    A = (a.T if ta else a)
                    B = (b.T if tb else b)
                    if bf16:
                        A, B = bf16_round(A), bf16_round(B)
                    ref = A.astype(np.float64) @ B.astype(np.float64) + (c0 if acc else 0)
                    err = np.abs(c - ref).max() / max(1.0, np.abs(ref).max())
                    assert err < 2e-5, (M, N, K, ta, tb, acc, err)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_gemm_large_output(level, bf16):
    """outputs of >= 32 MiB are written with streaming stores when 64-byte aligned"""
    from slmx.train.model import _zeros
    M, N, K = 2048, 4096, 40
    a, b = randn(M, K), randn(N, K)
    A, B = (bf16_round(a), bf16_round(b)) if bf16 else (a, b)
    ref = A.astype(np.float64) @ B.astype(np.float64).T
    for aligned in (True, False):
        c = _zeros((M, N)) if aligned else np.zeros(M * N + 1, np.float32)[1:].reshape(M, N)
        c[...] = np.nan
        T.gemm(a, b, c, False, True, False, bf16, 2)
        assert np.abs(c - ref).max() < 1e-4 * np.abs(ref).max(), aligned


def test_gemm_zero_k_and_checks():
    c = np.ones((3, 4), np.float32)
    T.gemm(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32), c)
    assert (c == 0).all()
    with pytest.raises(ValueError):
        T.gemm(randn(3, 4), randn(5, 6), np.zeros((3, 6), np.float32))
    with pytest.raises(ValueError):
        T.gemm(randn(3, 4), randn(4, 6), np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError):
        T.gemm(randn(3, 4).astype(np.float64), randn(4, 6), np.zeros((3, 6), np.float32))
    with pytest.raises(ValueError):
        T.gemm(randn(4, 3).T, randn(4, 6), np.zeros((3, 6), np.float32))
    a = randn(4, 4)
    with pytest.raises(ValueError):
        T.gemm(a, randn(4, 4), a)


def test_linear(level):
    M, K, N = 70, 48, 90
    x, w, dy = randn(M, K), randn(N, K), randn(M, N)
    y = np.zeros((M, N), np.float32)
    T.linear_forward(x, w, y, nthreads=2)
    assert rel(y, x.astype(np.float64) @ w.T) < 1e-6
    y0 = y.copy()
    T.linear_forward(x, w, y, True, nthreads=2)
    assert rel(y, 2 * y0) < 1e-6
    for bf16 in (False, True):
        r = randn(M, N)
        T.linear_forward(x, w, y, False, bf16, 2, r)
        xr, wr = (bf16_round(x), bf16_round(w)) if bf16 else (x, w)
        assert rel(y, r + xr.astype(np.float64) @ wr.T) < 1e-6
    with pytest.raises(ValueError):
        T.linear_forward(x, w, y, True, False, 1, r)
    dx = randn(M, K)
    dx0 = dx.copy()
    dw0 = randn(N, K)
    dw = dw0.copy()
    T.linear_backward(dy, x, w, dx, dw, True, nthreads=2)
    assert rel(dx, dx0 + dy.astype(np.float64) @ w) < 1e-6
    assert rel(dw, dw0 + dy.astype(np.float64).T @ x) < 1e-6
    T.linear_backward(dy, x, w, dx, None, nthreads=2)
    assert rel(dx, dy.astype(np.float64) @ w) < 1e-6
    with pytest.raises(ValueError):
        T.linear_backward(dy, x, w, np.zeros((M, K + 1), np.float32), None)


# ----------------------------------------------------------------------------- row kernels

def test_embedding(level):
    V, C, M = 50, 24, 300
    E = randn(V, C)
    ids = rng.integers(0, V, M).astype(np.int32)
    ids[:40] = 7                         # many repeats of one token
    out = np.zeros((M, C), np.float32)
    T.embedding_forward(ids, E, out, 2)
    assert np.array_equal(out, E[ids])
    d = randn(M, C)
    g0 = randn(V, C)
    g = g0.copy()
    T.embedding_backward(ids, d, g, 2)
    ref = g0.astype(np.float64)
    np.add.at(ref, ids, d.astype(np.float64))
    assert rel(g, ref) < 1e-6
    with pytest.raises(ValueError):
        T.embedding_forward(np.array([V] * M, np.int32), E, out)
    with pytest.raises(ValueError):
        T.embedding_backward(ids.astype(np.int64), d, g)


def test_rmsnorm(level):
    M, C, eps = 33, 100, 1e-5
    x, w, dy = randn(M, C), randn(C), randn(M, C)
    y = np.zeros_like(x)
    r = np.zeros(M, np.float32)
    T.rmsnorm_forward(x, w, eps, y, r, 2)
    x64, w64, dy64 = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    r64 = 1.0 / np.sqrt((x64 ** 2).mean(-1) + eps)
    assert rel(r, r64) < 1e-6
    assert rel(y, x64 * r64[:, None] * w64) < 1e-6
    # backward: y = x r w,  r = (mean x^2 + eps)^-1/2
    dxr = dy64 * w64 * r64[:, None] - x64 * (r64 ** 3 / C)[:, None] * (dy64 * w64 * x64).sum(-1, keepdims=True)
    dwr = (dy64 * x64 * r64[:, None]).sum(0)
    dx0 = randn(M, C)
    dx = dx0.copy()
    dw0 = randn(C)
    dw = dw0.copy()
    T.rmsnorm_backward(dy, x, w, r, dx, dw, True, 2)
    assert rel(dx, dx0 + dxr) < 1e-5
    assert rel(dw, dw0 + dwr) < 1e-5
    T.rmsnorm_backward(dy, x, w, r, dx, dw, False, 2)
    assert rel(dx, dxr) < 1e-5


def test_rope(level):
    M, H, D, W = 40, 3, 16, 3 * 16 + 8
    cos, sin = T.rope_tables(64, D, 10000.0)
    pos = rng.integers(0, 64, M).astype(np.int32)
    x = randn(M, W)
    y = x.copy()
    T.rope_forward(y, H, D, pos, cos, sin, 2)
    theta = pos[:, None].astype(np.float64) * 10000.0 ** (-np.arange(0, D, 2) / D)
    ref = x.astype(np.float64).copy()
    for h in range(H):
        x0 = x[:, h * D:(h + 1) * D:2].astype(np.float64)
        x1 = x[:, h * D + 1:(h + 1) * D:2].astype(np.float64)
        ref[:, h * D:(h + 1) * D:2] = x0 * np.cos(theta) - x1 * np.sin(theta)
        ref[:, h * D + 1:(h + 1) * D:2] = x0 * np.sin(theta) + x1 * np.cos(theta)
    assert rel(y, ref) < 1e-5
    assert np.array_equal(y[:, H * D:], x[:, H * D:])
    # backward is the transpose (rotation by -theta): <dy, R x> == <R^T dy, x>
    dy = randn(M, W)
    dx = dy.copy()
    T.rope_backward(dx, H, D, pos, cos, sin, 2)
    assert abs(np.vdot(dy[:, :H * D].astype(np.float64), y[:, :H * D])
               - np.vdot(dx[:, :H * D].astype(np.float64), x[:, :H * D])) < 1e-3
    with pytest.raises(ValueError):
        T.rope_forward(y, 4, D, pos, cos, sin)


def test_swiglu(level):
    M, Fd = 20, 77
    gu = randn(M, 2 * Fd, scale=3.0)
    out = np.zeros((M, Fd), np.float32)
    T.swiglu_forward(gu, out, 2)
    g, u = gu[:, :Fd].astype(np.float64), gu[:, Fd:].astype(np.float64)
    s = 1 / (1 + np.exp(-g))
    assert rel(out, g * s * u) < 1e-6
    da = randn(M, Fd)
    dgu = gu.copy()
    T.swiglu_backward(da, dgu, dgu, 2)       # in place
    assert rel(dgu[:, :Fd], da * u * s * (1 + g * (1 - s))) < 1e-6
    assert rel(dgu[:, Fd:], da * g * s) < 1e-6


def test_cross_entropy(level):
    M, V = 40, 1000
    logits = randn(M, V, scale=4.0)
    tgt = rng.integers(0, V, M).astype(np.int32)
    tgt[::5] = -1
    x = logits.astype(np.float64)
    lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    valid = tgt >= 0
    ref_loss = (lse - x[np.arange(M), np.maximum(tgt, 0)])[valid].sum()
    s, n = T.cross_entropy_forward(logits, tgt, 2)
    assert n == valid.sum() and abs(s - ref_loss) / ref_loss < 1e-6
    scale = 0.37
    d = logits.copy()
    s2, n2 = T.cross_entropy_forward_backward(d, tgt, scale, 2)
    assert s2 == pytest.approx(s, rel=1e-12) and n2 == n
    p = np.exp(x - lse[:, None])
    p[np.arange(M)[valid], tgt[valid]] -= 1
    p *= scale
    p[~valid] = 0
    assert rel(d, p) < 1e-6
    assert (d[~valid] == 0).all()
    with pytest.raises(ValueError):
        T.cross_entropy_forward(logits, np.full(M, V, np.int32))


# ----------------------------------------------------------------------------- attention

def attention_reference(qkv, B, Tn, H, Hkv, D, scale, dout):
    """float64 causal GQA attention: out, lse and the gradient of <out, dout> wrt qkv"""
    x = qkv.astype(np.float64).reshape(B, Tn, H + 2 * Hkv, D)
    q, k, v = x[:, :, :H], x[:, :, H:H + Hkv], x[:, :, H + Hkv:]
    G = H // Hkv
    k = np.repeat(k, G, axis=2)
    v = np.repeat(v, G, axis=2)
    s = np.einsum("bihd,bjhd->bhij", q, k) * scale
    mask = np.triu(np.ones((Tn, Tn), bool), 1)
    s[:, :, mask] = -np.inf
    m = s.max(-1, keepdims=True)
    e = np.exp(s - m)
    lse = (np.log(e.sum(-1, keepdims=True)) + m)[..., 0]
    p = e / e.sum(-1, keepdims=True)
    out = np.einsum("bhij,bjhd->bihd", p, v)
    do = dout.astype(np.float64).reshape(B, Tn, H, D)
    dv = np.einsum("bhij,bihd->bjhd", p, do)
    dp = np.einsum("bihd,bjhd->bhij", do, v)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = np.einsum("bhij,bjhd->bihd", ds, k) * scale
    dk = np.einsum("bhij,bihd->bjhd", ds, q) * scale
    dk = dk.reshape(B, Tn, Hkv, G, D).sum(3)
    dv = dv.reshape(B, Tn, Hkv, G, D).sum(3)
    dqkv = np.concatenate([dq, dk, dv], axis=2).reshape(B * Tn, -1)
    return out.reshape(B * Tn, H * D), lse, dqkv


@pytest.mark.parametrize("B,Tn,H,Hkv,D", [(2, 64, 4, 2, 16), (1, 100, 6, 2, 24), (2, 70, 4, 1, 8),
                                          (1, 130, 2, 2, 64)])
def test_attention(level, B, Tn, H, Hkv, D):
    qkv = randn(B * Tn, (H + 2 * Hkv) * D)
    scale = 1.0 / np.sqrt(D)
    dout = randn(B * Tn, H * D)
    out = np.zeros((B * Tn, H * D), np.float32)
    lse = np.zeros((B, H, Tn), np.float32)
    T.attention_forward(qkv, out, lse, B, Tn, H, Hkv, D, scale, 2)
    ref_out, ref_lse, ref_d = attention_reference(qkv, B, Tn, H, Hkv, D, scale, dout)
    assert rel(out, ref_out) < 1e-5
    assert rel(lse, ref_lse) < 1e-6
    dqkv = np.full_like(qkv, np.nan)
    T.attention_backward(qkv, out, dout, lse, dqkv, B, Tn, H, Hkv, D, scale, 2)
    assert rel(dqkv, ref_d) < 1e-5


@pytest.mark.parametrize("B,Tn,H,Hkv,D", [(2, 64, 4, 2, 16), (1, 100, 6, 2, 24), (1, 130, 2, 2, 64),
                                          (1, 45, 3, 1, 40)])
def test_attention_bf16(level, B, Tn, H, Hkv, D):
    """bf16 mode: AMX tiles with bf16 operands at level 4 (when granted), else the fp32 kernels"""
    qkv = randn(B * Tn, (H + 2 * Hkv) * D)
    scale = 1.0 / np.sqrt(D)
    dout = randn(B * Tn, H * D)
    out = np.zeros((B * Tn, H * D), np.float32)
    lse = np.zeros((B, H, Tn), np.float32)
    T.attention_forward(qkv, out, lse, B, Tn, H, Hkv, D, scale, 2, True)
    ref_out, ref_lse, ref_d = attention_reference(qkv, B, Tn, H, Hkv, D, scale, dout)
    dqkv = np.full_like(qkv, np.nan)
    T.attention_backward(qkv, out, dout, lse, dqkv, B, Tn, H, Hkv, D, scale, 2, True)
    tol = 2e-2 if T.amx_usable() else 1e-5
    assert rel(out, ref_out) < tol
    assert rel(lse, ref_lse) < tol / 10
    assert rel(dqkv, ref_d) < tol
    for part in (slice(0, H * D), slice(H * D, (H + Hkv) * D), slice((H + Hkv) * D, None)):
        assert rel(dqkv[:, part], ref_d[:, part]) < tol


def test_attention_checks():
    qkv = randn(64, 8 * 16)
    with pytest.raises(ValueError):
        T.attention_forward(qkv, np.zeros((64, 64), np.float32), np.zeros((1, 4, 64), np.float32),
                            1, 64, 4, 3, 16, 0.25)
    with pytest.raises(ValueError):
        T.attention_forward(qkv, np.zeros((64, 64), np.float32), np.zeros((1, 4, 63), np.float32),
                            1, 64, 4, 2, 16, 0.25)


# ----------------------------------------------------------------------------- the model vs PyTorch

def torch_loss_and_grads(cfg, tensors, x, y, scale, mtp=0, mtp_weight=0.0):
    """A straightforward Llama-style module (interleaved-pair RoPE) in PyTorch fp32 autograd;
    with mtp heads j = 1..mtp: logits_j = rms(hf + hf P_j^T, n_j) E^T predicting y shifted by j,
    loss = main + mtp_weight * sum_j loss_j. Returns (main loss, grads, [loss_j])."""
    P = {k: torch.tensor(v, requires_grad=True) for k, v in tensors.items()}
    B, Tn = x.shape
    H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim

    def rms(h, w):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w

    inv = 1.0 / (cfg.rope_base ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    ang = torch.outer(torch.arange(Tn, dtype=torch.float32), inv)
    cos, sin = ang.cos(), ang.sin()

    def rope(t):
        t1, t2 = t[..., 0::2], t[..., 1::2]
        return torch.stack([t1 * cos - t2 * sin, t1 * sin + t2 * cos], -1).flatten(-2)

    h = P["token_embd.weight"][torch.tensor(x, dtype=torch.long)]
    causal = torch.triu(torch.ones(Tn, Tn, dtype=torch.bool), 1)
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        a = rms(h, P[p + "attn_norm.weight"])
        q = (a @ P[p + "attn_q.weight"].T).view(B, Tn, H, D).transpose(1, 2)
        k = (a @ P[p + "attn_k.weight"].T).view(B, Tn, Hkv, D).transpose(1, 2)
        v = (a @ P[p + "attn_v.weight"].T).view(B, Tn, Hkv, D).transpose(1, 2)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(H // Hkv, 1)
        v = v.repeat_interleave(H // Hkv, 1)
        s = (q @ k.transpose(-1, -2)) * cfg.scale
        o = (s.masked_fill(causal, float("-inf")).softmax(-1) @ v).transpose(1, 2).reshape(B, Tn, H * D)
        h = h + o @ P[p + "attn_output.weight"].T
        a = rms(h, P[p + "ffn_norm.weight"])
        h = h + (F.silu(a @ P[p + "ffn_gate.weight"].T) * (a @ P[p + "ffn_up.weight"].T)) @ P[p + "ffn_down.weight"].T
    hf = rms(h, P["output_norm.weight"])
    logits = hf @ P["token_embd.weight"].T
    yt = torch.tensor(y, dtype=torch.long)
    loss = F.cross_entropy(logits.view(-1, cfg.vocab_size), yt.view(-1), ignore_index=-1, reduction="sum")
    total, head_losses = loss, []
    for j in range(1, mtp + 1):
        z = hf + hf @ P[f"mtp.{j}.proj.weight"].T
        lj = rms(z, P[f"mtp.{j}.norm.weight"]) @ P["token_embd.weight"].T
        tj = torch.full_like(yt, -1)
        tj[:, :Tn - j] = yt[:, j:]
        lj = F.cross_entropy(lj.reshape(-1, cfg.vocab_size), tj.reshape(-1), ignore_index=-1, reduction="sum")
        head_losses.append(lj.item())
        total = total + mtp_weight * lj
    (total * scale).backward()
    grads = {k: v.grad.numpy() for k, v in P.items()}
    return (loss.item(), grads, head_losses) if mtp else (loss.item(), grads)


PARITY_CONFIGS = {
    "nano": (dict(preset="nano", vocab_size=256), 2, 64),
    "mqa-odd": (dict(preset="nano", vocab_size=131, d_model=48, n_heads=4, n_kv_heads=1, ffn_dim=80,
                     n_layers=3), 3, 37),
}


def batch(V, B, Tn, seed):
    r = np.random.default_rng(seed)
    x = r.integers(0, V, (B, Tn)).astype(np.int32)
    y = r.integers(0, V, (B, Tn)).astype(np.int32)
    y[r.random((B, Tn)) < 0.2] = -1       # some masked targets
    y[0, :3] = -1
    return x, y


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_gradients_match_pytorch(level, name):
    kw, B, Tn = PARITY_CONFIGS[name]
    cfg = make_config(**kw)
    assert cfg.n_heads != cfg.n_kv_heads
    m = TrainableLM(cfg, seed=3, threads=2)
    # perturb the norms so their gradients are not trivially symmetric
    for n in m.buf.names:
        if n.endswith("norm.weight"):
            m.buf.views(n)[...] += randn(*m.buf.views(n).shape, scale=0.1)
    x, y = batch(cfg.vocab_size, B, Tn, 7)
    n_tgt = int((y >= 0).sum())
    m.zero_grad()
    loss, n = m.forward_backward(x, y, 1.0 / n_tgt)
    ref_loss, ref = torch_loss_and_grads(cfg, m.state_tensors(), x, y, 1.0 / n_tgt)
    assert n == n_tgt
    assert abs(loss - ref_loss) / abs(ref_loss) < 1e-5
    assert set(ref) == set(m.buf.names)
    for p in m.buf.names:
        e = rel(m.buf.grad(p), ref[p])
        assert e < 1e-4, (p, e)
    # .loss is the same forward
    l2, n2 = m.loss(x, y)
    assert n2 == n and abs(l2 - loss) / loss < 1e-6


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_mtp_gradients_match_pytorch(level, name):
    """multi-token-prediction heads (t+2, t+3, t+4) trained jointly: every gradient, the heads'
    and the trunk's (which receives theirs), against PyTorch autograd"""
    kw, B, Tn = PARITY_CONFIGS[name]
    cfg = make_config(**kw)
    m = TrainableLM(cfg, seed=3, threads=2, mtp=3, mtp_weight=0.7)
    for n in m.buf.names:
        if n.endswith("norm.weight"):
            m.buf.views(n)[...] += randn(*m.buf.views(n).shape, scale=0.1)
    assert [n for n in m.buf.names if n.startswith("mtp.")] == [
        f"mtp.{j}.{w}.weight" for j in (1, 2, 3) for w in ("proj", "norm")]
    x, y = batch(cfg.vocab_size, B, Tn, 8)
    n_tgt = int((y >= 0).sum())
    m.zero_grad()
    loss, n = m.forward_backward(x, y, 1.0 / n_tgt)
    ref_loss, ref, ref_heads = torch_loss_and_grads(cfg, m.state_tensors(), x, y, 1.0 / n_tgt, 3, 0.7)
    assert n == n_tgt and abs(loss - ref_loss) / abs(ref_loss) < 1e-5
    assert len(m.mtp_losses) == 3
    for (ls, nj), r, j in zip(m.mtp_losses, ref_heads, (1, 2, 3)):
        assert nj == int((y[:, j:] >= 0).sum())
        assert abs(ls - r) / abs(r) < 1e-5
    assert set(ref) == set(m.buf.names)
    for p in m.buf.names:
        e = rel(m.buf.grad(p), ref[p])
        assert e < 1e-4, (p, e)
    # the heads change the trunk's gradients (they are trained jointly), weight 0 leaves them alone
    m0 = TrainableLM(cfg, seed=3, threads=2, mtp=3, mtp_weight=0.0)
    m0.buf.params[...] = m.buf.params
    m0.zero_grad()
    m0.forward_backward(x, y, 1.0 / n_tgt)
    _, ref0 = torch_loss_and_grads(cfg, {k: v for k, v in m.state_tensors().items() if not k.startswith("mtp.")},
                                   x, y, 1.0 / n_tgt)
    assert rel(m0.buf.grad("blk.0.attn_q.weight"), ref0["blk.0.attn_q.weight"]) < 1e-4
    assert rel(m.buf.grad("blk.0.attn_q.weight"), ref0["blk.0.attn_q.weight"]) > 1e-3
    assert not m0.buf.grad("mtp.1.proj.weight").any()


def test_mtp_heads_at_inference_match_training():
    """the exported transformer's mtp heads give the training forward's head logits"""
    from slmx.infer.kv_cache import KVCache
    cfg = make_config("nano", vocab_size=97)
    m = TrainableLM(cfg, seed=2, threads=1, mtp=2)
    m.buf.views("mtp.2.proj.weight")[...] = randn(64, 64, scale=0.1)
    ids = np.random.default_rng(0).integers(0, 97, 20).astype(np.int32)
    tf = m.to_transformer(threads=1)
    assert tf.mtp_heads is not None and len(tf.mtp_heads) == 2
    tf.keep_hidden = True
    tf.forward(ids, 0, KVCache(cfg, 64), all_logits=True)
    heads = tf.mtp_heads(tf.hidden)                      # (2, 20, 97)
    m.loss(ids[None], np.zeros((1, 20), np.int32))
    a = m._acts
    P = m.buf
    for j in (1, 2):
        z = a.hf.astype(np.float64) @ (np.eye(64) + P.views(f"mtp.{j}.proj.weight").T.astype(np.float64))
        h = z / np.sqrt((z ** 2).mean(-1, keepdims=True) + cfg.norm_eps) * P.views(f"mtp.{j}.norm.weight")
        assert rel(heads[j - 1], h @ P.views("token_embd.weight").T.astype(np.float64)) < 1e-3
    with pytest.raises(ValueError):
        TrainableLM(cfg, mtp=-1)
    with pytest.raises(ValueError):
        TrainableLM(cfg).load_state_tensors(m.state_tensors())


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_gradient_accumulation_is_exact(bf16):
    cfg = make_config("nano", vocab_size=256)
    r = np.random.default_rng(5)
    micro = []
    for i, frac in enumerate((0.0, 0.3, 0.7, 0.95)):      # different numbers of unmasked targets
        x, y = batch(cfg.vocab_size, 2, 64, 20 + i)
        y = np.where(r.random(y.shape) < frac, -1, np.abs(y)).astype(np.int32)
        micro.append((x, y))
    counts = [int((y >= 0).sum()) for _, y in micro]
    assert len(set(counts)) == 4
    total = sum(counts)
    a = TrainableLM(cfg, seed=0, threads=2, bf16=bf16)
    b = TrainableLM(cfg, seed=0, threads=2, bf16=bf16)
    a.zero_grad()
    la = 0.0
    for x, y in micro:
        l, _ = a.forward_backward(x, y, 1.0 / total)
        la += l
    X = np.concatenate([x for x, _ in micro])
    Y = np.concatenate([y for _, y in micro])
    b.zero_grad()
    lb, nb = b.forward_backward(X, Y, 1.0 / total)
    assert nb == total
    assert abs(la - lb) / lb < 1e-6
    assert rel(a.buf.grads, b.buf.grads) < 1e-6
    for p in a.buf.names:
        assert rel(a.buf.grad(p), b.buf.grad(p)) < 1e-6, p
    # every token-sum runs sequence by sequence in the same order: the gradients are identical,
    # so is the AdamW update (even where |g| ~ eps, where Adam would amplify rounding noise)
    assert np.array_equal(a.buf.grads, b.buf.grads)
    oa = optim.AdamW(a.buf, 1e-2, threads=2)
    ob = optim.AdamW(b.buf, 1e-2, threads=2)
    for _ in range(2):
        oa.step()
        ob.step()
    assert rel(a.buf.params, b.buf.params) < 1e-6
    assert np.array_equal(a.buf.params, b.buf.params)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_gradients_do_not_depend_on_thread_count(bf16):
    cfg = make_config("nano", vocab_size=300, d_model=96, ffn_dim=160)
    x, y = batch(cfg.vocab_size, 4, 64, 3)
    grads = []
    for threads in (1, 2, 3):
        m = TrainableLM(cfg, seed=1, threads=threads, bf16=bf16)
        m.zero_grad()
        m.forward_backward(x, y, 0.01)
        grads.append(m.buf.grads.copy())
        assert optim.grad_norm(m.buf, threads=threads) == optim.grad_norm(m.buf, threads=1)
    assert np.array_equal(grads[0], grads[1]) and np.array_equal(grads[0], grads[2])


def test_forward_backward_accumulates():
    cfg = make_config("nano", vocab_size=64)
    m = TrainableLM(cfg, seed=0, threads=1)
    x, y = batch(64, 1, 16, 1)
    m.zero_grad()
    m.forward_backward(x, y, 0.5)
    g1 = m.buf.grads.copy()
    m.forward_backward(x, y, 0.5)
    assert rel(m.buf.grads, 2 * g1) < 1e-6


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_bf16_mode_close_to_fp32(level, name):
    kw, B, Tn = PARITY_CONFIGS[name]
    cfg = make_config(**kw)
    x, y = batch(cfg.vocab_size, B, Tn, 11)
    n = int((y >= 0).sum())
    ref = TrainableLM(cfg, seed=4, threads=2)
    m = TrainableLM(cfg, seed=4, threads=2, bf16=True)
    ref.zero_grad()
    m.zero_grad()
    l_ref, _ = ref.forward_backward(x, y, 1.0 / n)
    l_bf, _ = m.forward_backward(x, y, 1.0 / n)
    assert abs(l_bf - l_ref) / l_ref < 1e-2
    assert rel(m.buf.grads, ref.buf.grads) < 5e-2
    assert rel(m.buf.grads, ref.buf.grads) > 0       # really rounded
    assert m.bf16 and not ref.bf16


# ----------------------------------------------------------------------------- model API

def test_presets_and_buffer():
    cfg = make_config("tiny", vocab_size=8192)
    m = TrainableLM(cfg, seed=0, threads=1)
    assert m.buf.n_params == 12_587_904 == m.buf.params.size == m.buf.grads.size
    assert set(PRESETS) >= {"nano", "tiny", "small"}
    b = m.buf
    assert b.views("blk.0.attn_q.weight").shape == (384, 384)
    assert b.views("blk.0.attn_k.weight").shape == (128, 384)
    assert b.views("blk.5.ffn_down.weight").shape == (384, 1024)
    assert np.shares_memory(b.views("blk.1.ffn_up.weight"), b.params)
    assert np.shares_memory(b.grad("blk.1.ffn_up.weight"), b.grads)
    for name, shape, off in b.layout:
        dec = b.decay_mask[off:off + int(np.prod(shape))]
        assert dec.all() == (len(shape) == 2 and name != "token_embd.weight"), name
        assert dec.min() == dec.max()
    # init: std 0.02, residual projections 0.02 / sqrt(2 L), norms 1
    assert abs(b.views("blk.0.attn_q.weight").std() - 0.02) < 1e-3
    assert abs(b.views("blk.0.attn_output.weight").std() - 0.02 / np.sqrt(12)) < 5e-4
    assert (b.views("output_norm.weight") == 1).all()
    m2 = TrainableLM(cfg, seed=0, threads=1)
    assert np.array_equal(m2.buf.params, b.params)
    assert m.activation_bytes(8, 256) > 0
    with pytest.raises(ValueError):
        make_config("huge")


def test_state_tensors_and_transformer_export():
    cfg = make_config("nano", vocab_size=97)
    m = TrainableLM(cfg, seed=2, threads=1)
    st = m.state_tensors()
    m2 = TrainableLM(cfg, seed=9, threads=1)
    m2.load_state_tensors(st)
    assert np.array_equal(m2.buf.params, m.buf.params)
    with pytest.raises(ValueError):
        m2.load_state_tensors({k: v for k, v in st.items() if k != "output_norm.weight"})
    # the exported model's logits equal the training forward's
    from slmx.infer.kv_cache import KVCache
    ids = np.random.default_rng(0).integers(0, 97, 20).astype(np.int32)
    tf = m.to_transformer(threads=1)
    lg = tf.forward(ids, 0, KVCache(cfg, 64), all_logits=True)
    m.loss(ids[None], np.zeros((1, 20), np.int32))
    assert rel(lg, m._acts.logits) < 1e-4


def test_model_input_checks():
    cfg = make_config("nano", vocab_size=50)
    m = TrainableLM(cfg, threads=1)
    x = np.zeros((2, 8), np.int32)
    with pytest.raises(ValueError):
        m.forward_backward(x, np.zeros((2, 7), np.int32), 1.0)
    with pytest.raises(ValueError):
        m.forward_backward(x + 50, x, 1.0)
    with pytest.raises(ValueError):
        m.forward_backward(x, x + 50, 1.0)
    with pytest.raises(ValueError):
        m.loss(np.zeros((1, 65), np.int32), np.zeros((1, 65), np.int32))
    # all targets masked: zero loss, zero gradient
    m.zero_grad()
    loss, n = m.forward_backward(x, x - 1, 1.0)
    assert n == 0 and loss == 0 and not m.buf.grads.any()
