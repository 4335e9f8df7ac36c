"""Interval bound propagation against sampled perturbations and closed forms."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from basinscope.analyses.ibp import (
    CertifiedAccuracy,
    CertifiedSpec,
    certified,
    certified_accuracy,
    ibp_loss,
    ibp_schedule,
    ibp_train,
    interval_bounds,
    worst_case_logits,
)
from basinscope.errors import BasinscopeError

N_SAMPLES = 10_000


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3)
    ).double()


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU()),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 5),
        nn.ReLU(),
        nn.Linear(5, 3),
    ).double()


def _samples(x: torch.Tensor, eps: float, n: int, gen: torch.Generator, data_range=None):
    """Half uniform in the ball, half at random corners (clipped like the ball)."""
    shape = (n, *x.shape)
    u = (torch.rand(shape, generator=gen, dtype=x.dtype) * 2 - 1) * eps
    c = (torch.randint(0, 2, shape, generator=gen).to(x.dtype) * 2 - 1) * eps
    pts = x + torch.cat([u[: n // 2], c[n // 2 :]])
    if data_range is not None:
        pts = pts.clamp(*data_range)
    return pts


def _conv_variants(seed: int) -> nn.Module:
    """Grouped, dilated and 'same'-padded convolutions, no biases."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding="same", bias=False),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2),
        nn.ReLU(),
        nn.Identity(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    ).double()


@pytest.mark.parametrize(
    "make, shape, clip",
    [
        (_mlp, (2, 3), None),
        (_cnn, (1, 4, 4), None),
        (_cnn, (1, 4, 4), (0.0, 1.0)),
        (_conv_variants, (2, 4, 4), None),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_bounds_contain_10000_sampled_perturbed_outputs(make, shape, clip, seed):
    model = make(seed)
    gen = torch.Generator().manual_seed(seed)
    for eps in (0.01, 0.1, 0.5):
        x = torch.rand(shape, generator=gen, dtype=torch.float64)
        lo, hi = interval_bounds(model, x[None], eps, data_range=clip)
        with torch.no_grad():
            out = model(_samples(x, eps, N_SAMPLES, gen, clip))
        assert (lo <= hi).all()
        tol = 1e-12
        assert (out >= lo - tol).all() and (out <= hi + tol).all(), (eps, clip)
        # the bounds are not vacuous: the samples come within the bounds' width of them
        assert ((out.amax(0) - out.amin(0)) <= (hi - lo)[0] + tol).all()


def test_a_single_linear_layer_has_the_exact_bounds():
    torch.manual_seed(0)
    lin = nn.Linear(5, 4).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    eps = 0.3
    lo, hi = interval_bounds(lin, x, eps)
    with torch.no_grad():
        center = lin(x)
        rad = eps * lin.weight.abs().sum(1)
        torch.testing.assert_close(lo, center - rad)
        torch.testing.assert_close(hi, center + rad)
        # attained: the corner sign(W_j) * eps maximises output j (brute force over corners)
        corners = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=5)), dtype=torch.float64)
        outs = lin(x[:, None, :] + eps * corners[None])  # (3, 32, 4)
        torch.testing.assert_close(outs.amax(1), hi)
        torch.testing.assert_close(outs.amin(1), lo)


def test_a_single_conv_layer_has_the_exact_bounds():
    torch.manual_seed(1)
    conv = nn.Conv2d(1, 2, 2).double()
    x = torch.rand(1, 1, 2, 2, dtype=torch.float64)
    eps = 0.2
    lo, hi = interval_bounds(conv, x, eps)
    corners = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=4)), dtype=torch.float64)
    with torch.no_grad():
        outs = conv(x + eps * corners.view(16, 1, 2, 2))
    torch.testing.assert_close(outs.amax(0, keepdim=True), hi)
    torch.testing.assert_close(outs.amin(0, keepdim=True), lo)


def test_zero_radius_gives_the_outputs():
    model = _cnn(3)
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    lo, hi = interval_bounds(model, x, 0.0)
    with torch.no_grad():
        torch.testing.assert_close(lo, model(x))
        torch.testing.assert_close(hi, model(x))


def test_certified_implies_correct_under_every_sample():
    model = _mlp(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 2, 3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(-1)  # the clean predictions: many examples are certifiable
    eps = 0.02
    cert = certified(model, x, y, eps)
    assert cert.any()
    for i in torch.nonzero(cert)[:, 0]:
        with torch.no_grad():
            pred = model(_samples(x[i], eps, 2000, gen)).argmax(-1)
        assert (pred == y[i]).all()
    # a wrong label is never certified
    assert not certified(model, x, (y + 1) % 3, eps).any()


def test_ibp_loss_bounds_the_sampled_cross_entropy_and_equals_it_at_zero():
    model = _mlp(2)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(1, 2, 3, generator=gen, dtype=torch.float64)
    y = torch.tensor([1])
    bound = ibp_loss(model, x, y, 0.1)
    with torch.no_grad():
        pts = _samples(x[0], 0.1, 2000, gen)
        ce = nn.functional.cross_entropy(model(pts), y.expand(2000), reduction="none")
        assert ce.max() <= bound + 1e-12
        torch.testing.assert_close(
            ibp_loss(model, x, y, 0.0), nn.functional.cross_entropy(model(x), y)
        )
    lo, hi = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[3.0, 4.0, 5.0]])
    assert worst_case_logits(lo, hi, torch.tensor([1])).tolist() == [[3.0, 1.0, 5.0]]


def test_other_modules_are_refused_by_name():
    with pytest.raises(BasinscopeError, match="BatchNorm1d"):
        interval_bounds(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), torch.zeros(2, 2), 0.1)
    with pytest.raises(BasinscopeError, match="Tanh"):
        interval_bounds(nn.Tanh(), torch.zeros(2, 2), 0.1)
    with pytest.raises(BasinscopeError, match="circular"):
        conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular")
        interval_bounds(conv, torch.zeros(1, 1, 4, 4), 0.1)
    with pytest.raises(BasinscopeError, match="eps"):
        interval_bounds(nn.Linear(2, 2), torch.zeros(1, 2), -0.1)


def test_certified_accuracy_result_and_spec():
    model = _mlp(0).float()
    x = torch.rand(30, 2, 3)
    with torch.no_grad():
        y = model(x).argmax(-1)
    res = certified_accuracy(model, (x, y), epsilons=(0.0, 0.01, 1.0), batch_size=7)
    assert isinstance(res, CertifiedAccuracy)
    assert res.natural_accuracy == 1.0 and res.examples == 30
    # eps 0 certifies what is strictly correct; the certified fraction falls with eps
    assert res.certified_accuracy[0] == 1.0
    assert res.certified_accuracy[0] >= res.certified_accuracy[1] >= res.certified_accuracy[2]
    assert list(res.ibp_loss) == sorted(res.ibp_loss)
    mask = certified(model, x, y, 0.01, data_range=(0.0, 1.0))
    assert res.certified_accuracy[1] == pytest.approx(float(mask.double().mean()))
    again = CertifiedAccuracy.from_dict(res.to_dict())
    assert again.certified_accuracy == res.certified_accuracy
    assert res.summary()
    with pytest.raises(BasinscopeError, match="epsilons"):
        CertifiedSpec(epsilons=(-1.0,))


def test_schedule_and_training():
    assert ibp_schedule(0, eps=0.1, kappa=0.5, warmup=2, ramp=4) == (0.0, 1.0)
    e, k = ibp_schedule(3, eps=0.1, kappa=0.5, warmup=2, ramp=4)
    assert e == pytest.approx(0.05) and k == pytest.approx(0.75)
    assert ibp_schedule(100, eps=0.1, kappa=0.5, warmup=2, ramp=4) == (0.1, 0.5)
    torch.manual_seed(0)
    x, y = torch.rand(64, 2, 3), torch.randint(0, 3, (64,))

    def run(eps):
        model = _mlp(0).float()
        h = ibp_train(model, x, y, steps=30, batch_size=16, lr=0.01, eps=eps, warmup=5, ramp=10)
        return model, h

    (m0, h0), (m0b, _) = run(0.0), run(0.0)
    ckpts: dict = {}
    short = _mlp(0).float()
    ibp_train(short, x, y, steps=10, batch_size=16, lr=0.01, eps=0.0, warmup=5, ramp=10)
    again = _mlp(0).float()
    ibp_train(
        again,
        x,
        y,
        steps=12,
        batch_size=16,
        lr=0.01,
        eps=0.0,
        warmup=5,
        ramp=10,
        checkpoint_steps=(0, 10, 12),
        checkpoints=ckpts,
    )
    assert sorted(ckpts) == [0, 10, 12]
    assert all(torch.equal(v, short.state_dict()[k]) for k, v in ckpts[10].items())
    assert all(torch.equal(v, _mlp(0).float().state_dict()[k]) for k, v in ckpts[0].items())
    assert all(torch.equal(a, b) for a, b in zip(m0.parameters(), m0b.parameters()))
    m1, h1 = run(0.1)
    assert h1["eps"][-1] == pytest.approx(0.1) and h0["eps"][-1] == 0.0
    # IBP training lowers the robust loss relative to standard training
    assert ibp_loss(m1, x, y, 0.1) < ibp_loss(m0, x, y, 0.1)
