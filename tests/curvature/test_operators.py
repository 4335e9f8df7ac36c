import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from basinscope.curvature.operators import EFOperator, GGNOperator, HessianOperator
from basinscope.errors import BasinscopeError
from curvature_cases import dense_hessian, flat_loss, tiny_models


@pytest.fixture(scope="module")
def xy(digits_xy):
    x, y = digits_xy
    return x[:90], y[:90]


@pytest.mark.parametrize("name", ["mlp", "cnn", "bn_eval"])
@pytest.mark.parametrize(
    "method", ["forward-over-reverse", "reverse-over-forward", "double-backward"]
)
def test_hvp_matches_dense_float64_hessian(name, method, xy):
    model = tiny_models()[name]
    x, y = xy
    op = HessianOperator(
        model, (x, y), batch_size=40, method=method
    )  # uneven batches: weighting matters
    ref = dense_hessian(model, x, y)
    torch.testing.assert_close(op.dense(), ref, rtol=1e-10, atol=1e-12)
    assert op.semantics["bn_mode"] == "eval" and op.semantics["method"] == method


@pytest.mark.parametrize("name", ["mlp", "bn_eval"])
@pytest.mark.parametrize(
    "method", ["forward-over-reverse", "reverse-over-forward", "double-backward"]
)
def test_batched_hvps_equal_single_ones(xy, name, method):
    op = HessianOperator(tiny_models()[name], xy, method=method, weight_decay=0.01)
    vs = torch.randn(op.n, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    single = torch.stack([op.matvec(vs[:, i]) for i in range(4)], 1)
    before = op.num_matvecs
    torch.testing.assert_close(op.matmat(vs), single, rtol=1e-12, atol=1e-14)
    assert op.num_matvecs == before + 4


def test_double_backward_falls_back_to_single_products_without_a_batching_rule(xy, monkeypatch):
    op = HessianOperator(tiny_models()["mlp"], xy, method="double-backward")
    vs = torch.randn(op.n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = op.matmat(vs)
    real = torch.autograd.grad

    def no_batching_rule(*args, is_grads_batched=False, **kwargs):
        if is_grads_batched:
            raise RuntimeError("Batching rule not implemented for aten::some_op")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_batching_rule)
    torch.testing.assert_close(op.matmat(vs), expected, rtol=1e-12, atol=1e-14)


def test_hvp_is_symmetric(xy):
    op = HessianOperator(tiny_models()["cnn"], xy)
    g = torch.Generator().manual_seed(1)
    u, v = (
        torch.randn(op.n, dtype=torch.float64, generator=g),
        torch.randn(op.n, dtype=torch.float64, generator=g),
    )
    assert float(u @ op.matvec(v)) == pytest.approx(float(v @ op.matvec(u)), rel=1e-10)


def test_auto_method_is_recorded(xy):
    op = HessianOperator(tiny_models()["mlp"], xy)
    assert op.method in ("forward-over-reverse", "reverse-over-forward", "double-backward")
    assert set(op.trial) == {"forward-over-reverse", "reverse-over-forward", "double-backward"}


@pytest.mark.parametrize("slow_from", range(8))
def test_auto_method_trial_is_not_decided_by_one_slow_moment(slow_from, xy, monkeypatch):
    """A fake clock: double backward takes 1.0, the others 1.3 and 1.6, and a slow moment
    of the machine makes two consecutive timed products 3x slower, wherever it falls.
    The methods take turns, so it slows at most one of double backward's products."""
    import basinscope.curvature.operators as operators
    from basinscope.curvature.loss import EmpiricalLoss

    cost = {"double-backward": 1.0, "reverse-over-forward": 1.3, "forward-over-reverse": 1.6}
    clock = {"now": 0.0, "timed": -3}  # the first 3 products are the warm-ups

    def fake_hvp(self, v, method, batches=None):
        slow = slow_from <= clock["timed"] < slow_from + 2
        clock["now"] += cost[method] * (3 if slow else 1)
        clock["timed"] += 1
        return v

    monkeypatch.setattr(EmpiricalLoss, "hvp", fake_hvp)
    monkeypatch.setattr(operators.time, "perf_counter", lambda: clock["now"])
    op = HessianOperator(tiny_models()["mlp"], xy)
    assert clock["timed"] == 9  # 3 rounds of 3 methods
    assert op.method == "double-backward"
    assert op.trial == pytest.approx(cost)


def test_weight_decay_adds_lambda_identity(xy):
    model = tiny_models()["mlp"]
    plain = HessianOperator(model, xy).dense()
    wd = HessianOperator(model, xy, weight_decay=0.1).dense()
    torch.testing.assert_close(
        wd - plain, 0.1 * torch.eye(plain.shape[0], dtype=torch.float64), rtol=0, atol=1e-12
    )
    assert "weight_decay" in HessianOperator(model, xy, weight_decay=0.1).semantics["loss"]


def test_parameter_subset_is_the_principal_submatrix(xy):
    model = tiny_models()["mlp"]
    op = HessianOperator(model, xy, params=["3.*"])
    ref = dense_hessian(model, xy[0], xy[1], names=["3.weight", "3.bias"])
    torch.testing.assert_close(op.dense(), ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(BasinscopeError, match=r"no parameter matches \['conv\*'\]"):
        HessianOperator(model, xy, params=["conv*"])


def test_ggn_matches_explicit_jacobians(xy):
    model = tiny_models()["mlp"].double()
    x, y = xy
    op = GGNOperator(model, (x, y))
    _, p0 = flat_loss(model, x, y)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def out(flat):
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            ps[n] = flat[i : i + s.numel()].view(s)
            i += s.numel()
        return functional_call(model, ps, (x.double(),))

    jac = torch.func.jacrev(out)(p0)  # (N, C, P)
    probs = F.softmax(out(p0), -1)
    ref = torch.zeros(op.n, op.n, dtype=torch.float64)
    for n in range(len(x)):
        h = torch.diag(probs[n]) - torch.outer(probs[n], probs[n])
        ref += jac[n].T @ h @ jac[n]
    ref /= len(x)
    torch.testing.assert_close(op.dense(), ref, rtol=1e-9, atol=1e-12)
    assert torch.linalg.eigvalsh(op.dense()).min() > -1e-12


def test_empirical_fisher_matches_per_example_gradients(xy):
    model = tiny_models()["mlp"]
    x, y = xy
    op = EFOperator(model, (x, y), batch_size=32)
    ref = torch.zeros(op.n, op.n, dtype=torch.float64)
    for i in range(len(x)):
        loss, p0 = flat_loss(model, x[i : i + 1], y[i : i + 1])
        g = torch.func.grad(loss)(p0)
        ref += torch.outer(g, g)
    torch.testing.assert_close(op.dense(), ref / len(x), rtol=1e-10, atol=1e-13)


def test_subset_and_bad_options(xy):
    model = tiny_models()["mlp"]
    assert HessianOperator(model, xy, subset=25).num_examples == 25
    with pytest.raises(BasinscopeError, match="unknown HVP method 'fast'"):
        HessianOperator(model, xy, method="fast")
    for method in ("forward-over-reverse", "reverse-over-forward"):
        with pytest.raises(
            BasinscopeError,
            match=f"{method} HVPs do not support BatchNorm with batch statistics",
        ):
            HessianOperator(tiny_models()["bn_eval"], xy, bn_mode="train", method=method)
    with pytest.raises(BasinscopeError, match="unknown bn_mode 'batch'"):
        HessianOperator(model, xy, bn_mode="batch")
    op = HessianOperator(tiny_models()["bn_eval"], xy, bn_mode="train")
    assert op.method == "double-backward"


def test_caller_model_untouched(xy):
    model = tiny_models()["bn_eval"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    op = HessianOperator(model, xy, bn_mode="train")
    op.matvec(torch.ones(op.n, dtype=torch.float64))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert next(model.parameters()).dtype == torch.float32


def test_a_bad_method_is_refused_by_the_loss_too(xy):
    from basinscope.curvature.loss import EmpiricalLoss

    loss = EmpiricalLoss(tiny_models()["mlp"], xy)
    v = torch.ones(loss.n, dtype=torch.float64)
    with pytest.raises(BasinscopeError, match="unknown HVP method 'fast': expected one of"):
        loss.hvp(v, "fast")
    with pytest.raises(BasinscopeError, match="unknown HVP method 'fast': expected one of"):
        loss.hvp_batched(torch.stack([v, v], 1), "fast")
