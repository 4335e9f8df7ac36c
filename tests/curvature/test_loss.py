"""EmpiricalLoss, the loss object curvature and sharpness share: value, gradient and
Hessian-vector products against brute-force float64 references."""

import pytest
import torch

from basinscope.curvature.loss import EmpiricalLoss, first_examples
from basinscope.errors import BasinscopeError
from curvature_cases import dense_hessian, flat_loss, tiny_models


@pytest.fixture(scope="module")
def xy(digits_xy):
    x, y = digits_xy
    return x[:90], y[:90]


@pytest.mark.parametrize("name", ["mlp", "bn_eval"])
def test_value_gradient_and_hvp_match_float64_references(name, xy):
    model = tiny_models()[name]
    x, y = xy
    loss = EmpiricalLoss(model, (x, y), batch_size=40)  # uneven batches: weighting matters
    ref_loss, p0 = flat_loss(model, x, y)
    torch.testing.assert_close(loss.theta, p0, rtol=0, atol=0)
    assert loss.value() == pytest.approx(float(ref_loss(p0)), rel=1e-12)
    # at a perturbed point, as the sharpness ascent asks
    point = p0 + 0.05 * torch.randn(p0.shape, generator=torch.Generator().manual_seed(1)).double()
    value, g = loss.value_and_grad(point)
    assert value == pytest.approx(float(ref_loss(point)), rel=1e-12)
    torch.testing.assert_close(g, torch.func.grad(ref_loss)(point), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(
        loss.gradient(), torch.func.grad(ref_loss)(p0), rtol=1e-10, atol=1e-13
    )
    assert loss.num_evaluations == 3
    h = dense_hessian(model, x, y)
    v = torch.randn(loss.n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for method in ("forward-over-reverse", "reverse-over-forward", "double-backward"):
        torch.testing.assert_close(loss.hvp(v, method), h @ v, rtol=1e-10, atol=1e-12)
        vs = torch.stack([v, 2 * v, -v], 1)
        torch.testing.assert_close(loss.hvp_batched(vs, method), h @ vs, rtol=1e-10, atol=1e-12)


def test_weight_decay_and_given_batches(xy):
    model = tiny_models()["mlp"]
    x, y = xy
    plain = EmpiricalLoss(model, (x, y))
    wd = EmpiricalLoss(model, (x, y), weight_decay=0.1)
    theta = plain.theta
    assert wd.value() == pytest.approx(plain.value() + 0.05 * float((theta**2).sum()), rel=1e-12)
    torch.testing.assert_close(wd.gradient(), plain.gradient() + 0.1 * theta)
    v = torch.ones(plain.n, dtype=torch.float64)
    torch.testing.assert_close(wd.hvp(v), plain.hvp(v) + 0.1 * v)
    assert "weight_decay" in wd.semantics["loss"] and "weight_decay" not in plain.semantics["loss"]
    # over other batches: their own mean (what m-sharpness asks for each batch of m examples)
    part = [(x[:10].double(), y[:10])]
    ref_loss, p0 = flat_loss(model, x[:10], y[:10])
    assert plain.value(batches=part) == pytest.approx(float(ref_loss(p0)), rel=1e-12)


def test_subset_options_and_the_callers_model(xy):
    model = tiny_models()["bn_eval"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = EmpiricalLoss(model, xy, subset=25, bn_mode="train", dtype=torch.float32)
    assert loss.num_examples == 25 and loss.semantics["bn_mode"] == "train"
    assert loss.theta.dtype == torch.float32 and loss.semantics["dtype"] == "float32"
    loss.value_and_grad()
    loss.hvp(torch.ones(loss.n), "double-backward")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(BasinscopeError, match="unknown bn_mode 'batch'"):
        EmpiricalLoss(model, xy, bn_mode="batch")
    with pytest.raises(BasinscopeError, match="unknown HVP method 'fast'"):
        loss.hvp(torch.ones(loss.n), "fast")
    with pytest.raises(BasinscopeError, match="subset must be at least 1 example, got 0"):
        EmpiricalLoss(model, xy, subset=0)
    one = EmpiricalLoss(model, xy, params=["4.*"])
    assert one.names == ["4.weight", "4.bias"] and one.n == 10 * 128 + 10


def test_first_examples_of_every_form_of_data(xy):
    from basinscope.data import TensorData

    x, y = xy
    assert first_examples(xy, None) is xy
    fx, fy = first_examples(xy, 25)
    assert torch.equal(fx, x[:25]) and torch.equal(fy, y[:25])
    ds = first_examples(TensorData(x, y, "d"), 25)
    assert isinstance(ds, TensorData) and torch.equal(ds.x, x[:25]) and len(ds) == 25
    assert len(first_examples(TensorData(x, y, "d"), 1000)) == len(y)
    batches = first_examples([(x[:20], y[:20]), (x[20:40], y[20:40])], 25)
    assert [len(b[1]) for b in batches] == [20, 5] and torch.equal(batches[1][0], x[20:25])
