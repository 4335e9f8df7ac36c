"""SAM, ASAM and C-Flat steps and the L2-SP and EWC penalties against brute-force float64
single steps on a tiny model; BatchNorm statistics updated by the first pass only; the
config's dict unchanged at the new fields' defaults."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from basinscope.errors import BasinscopeError
from basinscope.training import TrainConfig, train


def tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def data(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(
        0, 2, (n,), generator=g
    )


def flat_loss(model, x, y):
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def f(v):
        ps, i = {}, 0
        for k, s in zip(names, shapes):
            n = s.numel()
            ps[k] = v[i : i + n].view(s)
            i += n
        return F.cross_entropy(torch.func.functional_call(model, ps, (x,)), y)

    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return f, w


def one_step(model, x, y, **cfg):
    config = TrainConfig(steps=1, lr=0.1, momentum=0.0, batch_size=len(y), **cfg)
    out = train(model, (x, y), config)
    return torch.cat([p.detach().reshape(-1) for p in out.model.parameters()])


def grad(f, w):
    w = w.clone().requires_grad_(True)
    return torch.autograd.grad(f(w), w)[0]


def gradnorm_grad(f, w):
    w = w.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(w), w, create_graph=True)
    return torch.autograd.grad(g.norm(), w)[0]


def test_sam_step_is_the_gradient_at_the_ascent_point():
    model, (x, y) = tiny(), data()
    f, w = flat_loss(model, x, y)
    g = grad(f, w)
    ref = w - 0.1 * grad(f, w + 0.05 * g / g.norm())
    torch.testing.assert_close(
        one_step(model, x, y, sharpness_aware="sam", sam_rho=0.05), ref, rtol=1e-10, atol=1e-12
    )


def test_asam_step_scales_the_ball_by_the_weights():
    model, (x, y) = tiny(), data()
    f, w = flat_loss(model, x, y)
    g = grad(f, w)
    t = w.abs() + 0.01
    eps = 0.5 * t * t * g / (t * g).norm()
    ref = w - 0.1 * grad(f, w + eps)
    got = one_step(model, x, y, sharpness_aware="asam", sam_rho=0.5, asam_eta=0.01)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_cflat_step_adds_the_first_order_flatness_gradient():
    model, (x, y) = tiny(), data()
    f, w = flat_loss(model, x, y)
    rho, lam = 0.05, 0.3
    g = grad(f, w)
    sam = grad(f, w + rho * g / g.norm())
    h = gradnorm_grad(f, w)
    h1 = gradnorm_grad(f, w + rho * h / h.norm())
    ref = w - 0.1 * (sam + lam * rho * h1)
    got = one_step(model, x, y, sharpness_aware="cflat", sam_rho=rho, cflat_lambda=lam)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_penalties_pull_toward_the_anchor():
    model, (x, y) = tiny(), data()
    f, w = flat_loss(model, x, y)
    anchor = {k: v.detach() + 0.3 for k, v in model.named_parameters()}
    a = torch.cat([v.reshape(-1) for v in anchor.values()])
    ref = w - 0.1 * (grad(f, w) + 2.0 * (w - a))
    config = TrainConfig(
        steps=1, lr=0.1, momentum=0.0, batch_size=8, penalty="l2sp", penalty_strength=2.0
    )
    out = train(model, (x, y), config, anchor=anchor)
    got = torch.cat([p.detach().reshape(-1) for p in out.model.parameters()])
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-13)
    imp = {k: torch.rand_like(v.detach()) for k, v in model.named_parameters()}
    fi = torch.cat([v.reshape(-1) for v in imp.values()])
    config = TrainConfig(
        steps=1, lr=0.1, momentum=0.0, batch_size=8, penalty="ewc", penalty_strength=3.0
    )
    out = train(model, (x, y), config, importance=imp)
    got = torch.cat([p.detach().reshape(-1) for p in out.model.parameters()])
    # anchor: the starting weights, where the penalty's gradient vanishes at the first step
    torch.testing.assert_close(got, w - 0.1 * grad(f, w), rtol=1e-12, atol=1e-13)
    config2 = TrainConfig(
        steps=2, lr=0.1, momentum=0.0, batch_size=8, penalty="ewc", penalty_strength=3.0
    )
    out2 = train(model, (x, y), config2, importance=imp)
    w1 = got
    ref2 = w1 - 0.1 * (grad(f, w1) + 3.0 * fi * (w1 - w))
    got2 = torch.cat([p.detach().reshape(-1) for p in out2.model.parameters()])
    torch.testing.assert_close(got2, ref2, rtol=1e-12, atol=1e-13)


def test_bn_statistics_come_from_the_first_pass_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    plain = train(model, (x, y), TrainConfig(steps=1, lr=0.1, batch_size=16))
    for kind in ("sam", "asam", "cflat"):
        sam = train(
            model, (x, y), TrainConfig(steps=1, lr=0.1, batch_size=16, sharpness_aware=kind)
        )
        for k, b in plain.model.named_buffers():
            torch.testing.assert_close(dict(sam.model.named_buffers())[k], b, rtol=0, atol=0)


def test_config_dict_keeps_its_digest_at_the_defaults():
    d = TrainConfig().to_dict()
    assert "sharpness_aware" not in d and "penalty" not in d
    c = TrainConfig(sharpness_aware="sam", sam_rho=0.1)
    assert TrainConfig.from_dict(c.to_dict()) == c and c.to_dict()["sam_rho"] == 0.1


def test_bad_settings_are_refused():
    with pytest.raises(BasinscopeError, match="unknown sharpness_aware 'gsam'"):
        TrainConfig(sharpness_aware="gsam")
    with pytest.raises(BasinscopeError, match="sam_rho must be a positive number"):
        TrainConfig(sam_rho=0)
    with pytest.raises(BasinscopeError, match="unknown penalty 'l1'"):
        TrainConfig(penalty="l1")
    model, (x, y) = tiny(), data()
    with pytest.raises(BasinscopeError, match="pass importance="):
        train(model, (x, y), TrainConfig(steps=1, penalty="ewc", penalty_strength=1.0))
    bad = {k: torch.zeros(1) for k, _ in model.named_parameters()}
    with pytest.raises(BasinscopeError, match="anchor does not fit the trained parameters"):
        train(model, (x, y), TrainConfig(steps=1, penalty="l2sp", penalty_strength=1.0), anchor=bad)
