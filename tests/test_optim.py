"""Fused optimizers over the flat buffer against torch.optim on the same parameters and gradients,
at every SIMD level: AdamW (decay mask = two param groups), Adam, SGD (momentum, dampening,
Nesterov, weight decay), global-norm clipping vs torch.nn.utils.clip_grad_norm_, state round trips."""
import numpy as np
import pytest
import torch

from slmx._kernels import optim as optim_k
from slmx.train import optim
from slmx.train.model import ParamBuffer

torch.set_num_threads(1)


@pytest.fixture
def level(simd_level):
    optim_k._set_simd_level(simd_level)
    yield simd_level
    optim_k._set_simd_level(-1)


def rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


SHAPES = [("token_embd.weight", (300, 16)), ("blk.0.attn_norm.weight", (16,)),
          ("blk.0.attn_q.weight", (16, 16)), ("blk.0.ffn_down.weight", (16, 4100)),
          ("output_norm.weight", (16,))]


def make_buf(seed=0):
    buf = ParamBuffer(SHAPES)
    buf.params[:] = np.random.default_rng(seed).standard_normal(buf.n_params).astype(np.float32)
    return buf


def torch_params(buf):
    return {n: torch.tensor(buf.views(n).copy(), requires_grad=True) for n in buf.names}


def groups(buf, tp, wd):
    """torch param groups reproducing buf.decay_mask"""
    dec, nodec = [], []
    for name, shape, off in buf.layout:
        (dec if buf.decay_mask[off] else nodec).append(tp[name])
    return [{"params": dec, "weight_decay": wd}, {"params": nodec, "weight_decay": 0.0}]


def run(buf, tp, opt, topt, steps=5, lrs=None, seed=1):
    r = np.random.default_rng(seed)
    for s in range(steps):
        buf.grads[:] = r.standard_normal(buf.n_params).astype(np.float32) * np.float32(10.0 ** -(s % 3))
        for n in buf.names:
            tp[n].grad = torch.tensor(buf.grad(n).copy())
        lr = None if lrs is None else lrs[s]
        if lr is not None:
            for g in topt.param_groups:
                g["lr"] = lr
        opt.step(lr)
        topt.step()
    return max(rel(buf.views(n), tp[n].detach().numpy()) for n in buf.names)


def test_decay_mask_default():
    buf = make_buf()
    for name, shape, off in buf.layout:
        n = int(np.prod(shape))
        want = len(shape) == 2 and name != "token_embd.weight"
        assert (buf.decay_mask[off:off + n] == want).all(), name


def test_adamw_matches_torch(level):
    buf = make_buf()
    tp = torch_params(buf)
    opt = optim.AdamW(buf, 1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, threads=2)
    topt = torch.optim.AdamW(groups(buf, tp, 0.1), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    assert run(buf, tp, opt, topt, lrs=[1e-2, 3e-3, 1e-3, 2e-2, 5e-3]) < 1e-6
    assert opt.t == 5


def test_adamw_decay_mask_respected(level):
    """zero gradients: masked parameters shrink by (1 - lr wd), the others do not move"""
    buf = make_buf()
    p0 = buf.params.copy()
    opt = optim.AdamW(buf, 0.1, weight_decay=0.5, threads=2)
    buf.grads[:] = 0
    opt.step()
    m = buf.decay_mask.astype(bool)
    assert np.allclose(buf.params[m], p0[m] * np.float32(1 - 0.05), rtol=1e-6)
    assert np.array_equal(buf.params[~m], p0[~m])


def test_adam_matches_torch(level):
    for wd in (0.0, 0.01):
        buf = make_buf(2)
        tp = torch_params(buf)
        opt = optim.Adam(buf, 3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd, threads=2)
        topt = torch.optim.Adam(groups(buf, tp, wd), lr=3e-3, betas=(0.8, 0.99), eps=1e-6, foreach=False)
        assert run(buf, tp, opt, topt) < 1e-6


@pytest.mark.parametrize("kw", [dict(momentum=0.9), dict(momentum=0.0),
                                dict(momentum=0.9, dampening=0.1, weight_decay=0.01),
                                dict(momentum=0.8, nesterov=True, weight_decay=0.02)],
                         ids=["momentum", "plain", "dampening-wd", "nesterov"])
def test_sgd_matches_torch(level, kw):
    buf = make_buf(3)
    tp = torch_params(buf)
    wd = kw.get("weight_decay", 0.0)
    opt = optim.SGD(buf, 0.05, threads=2, **kw)
    tkw = {k: v for k, v in kw.items() if k != "weight_decay"}
    topt = torch.optim.SGD(groups(buf, tp, wd), lr=0.05, foreach=False, **tkw)
    assert run(buf, tp, opt, topt, lrs=[0.05, 0.02, 0.05, 0.01, 0.03]) < 1e-6


@pytest.mark.parametrize("max_norm", [0.5, 1e6], ids=["clips", "no-clip"])
def test_clip_grad_norm_matches_torch(level, max_norm):
    buf = make_buf()
    buf.grads[:] = np.random.default_rng(4).standard_normal(buf.n_params).astype(np.float32)
    tp = torch_params(buf)
    for n in buf.names:
        tp[n].grad = torch.tensor(buf.grad(n).copy())
    g0 = buf.grads.copy()
    norm = optim.clip_grad_norm(buf, max_norm, threads=2)
    tnorm = torch.nn.utils.clip_grad_norm_(list(tp.values()), max_norm)
    assert abs(norm - float(tnorm)) / float(tnorm) < 1e-6
    assert abs(norm - np.linalg.norm(g0.astype(np.float64))) < 1e-9 * norm
    for n in buf.names:
        assert rel(buf.grad(n), tp[n].grad.numpy()) < 1e-6
    if max_norm > norm:
        assert np.array_equal(buf.grads, g0)
    else:
        assert abs(optim.grad_norm(buf) - max_norm) < 1e-5


def test_state_dict_round_trip():
    for make in (lambda b: optim.AdamW(b, 1e-2), lambda b: optim.Adam(b, 1e-2),
                 lambda b: optim.SGD(b, 1e-2, momentum=0.9)):
        a, b = make_buf(), make_buf()
        oa = make(a)
        r = np.random.default_rng(0)
        grads = [r.standard_normal(a.n_params).astype(np.float32) for _ in range(4)]
        for g in grads[:2]:
            a.grads[:] = g
            oa.step()
        st = oa.state_dict()
        b.params[:] = a.params
        ob = make(b)
        ob.load_state_dict({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()})
        for g in grads[2:]:
            a.grads[:] = g
            b.grads[:] = g
            oa.step()
            ob.step()
        assert np.array_equal(a.params, b.params)


def test_kernel_checks():
    p = np.zeros(10, np.float32)
    with pytest.raises(ValueError):
        optim_k.adam_step(p, np.zeros(9, np.float32), p.copy(), p.copy(), None, 1e-3, 0.9, 0.99,
                          1e-8, 0.0, 1)
    with pytest.raises(ValueError):
        optim_k.adam_step(p, p.copy(), p.copy(), p.copy(), None, 1e-3, 0.9, 0.99, 1e-8, 0.0, 0)
    with pytest.raises(ValueError):
        optim_k.sgd_step(p, p.astype(np.float64), p.copy(), None, 0.1, 0.9, 0.0, 0.0, False, True)
    with pytest.raises(ValueError):
        optim_k.clip_grad_norm(p, 0.0)
    with pytest.raises(ValueError):
        optim.AdamW(make_buf(), 1e-3).load_state_dict({"m": np.zeros(3), "v": np.zeros(3), "step": 1})
