"""Tests for CKA: float64 brute-force references, invariances, minibatch convergence."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from basinscope.analyses.similarity import (
    CKAResult,
    MinibatchCKA,
    cka_matrix,
    debiased_cka,
    linear_cka,
    rbf_cka,
    unbiased_hsic,
)
from basinscope.errors import BasinscopeError
from basinscope.models.zoo import mlp


def _data(n=60, p=12, q=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    a = torch.randn(p, q, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ a) + 0.3 * torch.randn(n, q, generator=g, dtype=torch.float64)
    return x, y


def _orthogonal(p, seed=1):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    return q


def _ref_biased(x, y):
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - torch.ones(n, n, dtype=torch.float64) / n
    k, ell = x @ x.T, y @ y.T

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h) / (n - 1) ** 2

    return float(hsic(k, ell) / torch.sqrt(hsic(k, k) * hsic(ell, ell)))


def _ref_unbiased_hsic(k, ell):
    # Song et al. (2012), Eq. (5), written term by term.
    n = k.shape[0]
    kt = k - torch.diag(torch.diag(k))
    lt = ell - torch.diag(torch.diag(ell))
    one = torch.ones(n, 1, dtype=torch.float64)
    t1 = torch.trace(kt @ lt)
    t2 = (one.T @ kt @ one) * (one.T @ lt @ one) / ((n - 1) * (n - 2))
    t3 = 2.0 / (n - 2) * (one.T @ kt @ lt @ one)
    return float((t1 + t2 - t3) / (n * (n - 3)))


ALL = {
    "linear": lambda a, b: linear_cka(a, b),
    "debiased": lambda a, b: linear_cka(a, b, debiased=True),
    "rbf": lambda a, b: rbf_cka(a, b),
    "rbf_debiased": lambda a, b: rbf_cka(a, b, debiased=True),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_self_similarity_is_one(name):
    x, _ = _data()
    assert ALL[name](x, x) == pytest.approx(1.0, abs=1e-12)


def test_minibatch_self_similarity_is_one():
    x, _ = _data(n=64)
    acc = MinibatchCKA(1, 1)
    for chunk in x.split(8):
        acc.update([chunk], [chunk])
    assert acc.result()[0, 0] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", ["linear", "debiased", "rbf"])
def test_invariance_to_orthogonal_transform_and_scaling(name):
    x, y = _data()
    base = ALL[name](x, y)
    q = _orthogonal(x.shape[1])
    assert ALL[name](x @ q, y) == pytest.approx(base, abs=1e-10)
    assert ALL[name](3.7 * x, 0.2 * y) == pytest.approx(base, abs=1e-10)
    assert 0.0 < base < 1.0


@pytest.mark.parametrize(("n", "p", "q"), [(60, 12, 7), (10, 30, 3), (5, 2, 2)])
def test_linear_equals_gram_closed_form(n, p, q):
    x, y = _data(n, p, q, seed=n)
    assert linear_cka(x, y) == pytest.approx(_ref_biased(x, y), abs=1e-10)


def test_float32_input_computed_in_float64():
    x, y = _data()
    assert linear_cka(x.float(), y.float()) == pytest.approx(_ref_biased(x, y), abs=1e-6)


def test_unbiased_hsic_and_debiased_match_formula():
    x, y = _data(n=30)
    k, ell = x @ x.T, y @ y.T
    assert unbiased_hsic(k, ell) == pytest.approx(_ref_unbiased_hsic(k, ell), rel=1e-10)
    ref = _ref_unbiased_hsic(k, ell) / np.sqrt(
        _ref_unbiased_hsic(k, k) * _ref_unbiased_hsic(ell, ell)
    )
    assert debiased_cka(x, y) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(x, y, debiased=True) == pytest.approx(ref, abs=1e-10)


def test_trailing_dims_are_flattened():
    x, y = _data(n=20, p=12)
    assert linear_cka(x.reshape(20, 3, 4), y) == pytest.approx(linear_cka(x, y), abs=1e-12)


def test_minibatch_converges_to_full_data_value():
    x, y = _data(n=2000, p=20, q=10, seed=3)
    full = debiased_cka(x, y)
    acc = MinibatchCKA(2, 1)
    for xb, yb in zip(x.split(100), y.split(100), strict=True):
        acc.update([xb, yb], [yb])
    result = acc.result()
    assert result.shape == (2, 1)
    assert result[0, 0] == pytest.approx(full, rel=0.03)
    assert result[1, 0] == pytest.approx(1.0, abs=1e-12)
    assert acc.num_examples == 2000


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_batch_is_a_clear_error(n):
    x, y = _data(n=n)
    with pytest.raises(BasinscopeError, match="at least 4 examples per batch"):
        MinibatchCKA(1, 1).update([x], [y])
    if n >= 2:
        with pytest.raises(BasinscopeError, match="at least 4 examples"):
            debiased_cka(x, y)


def test_input_errors():
    x, y = _data()
    with pytest.raises(BasinscopeError, match="same examples"):
        linear_cka(x, y[:10])
    with pytest.raises(BasinscopeError, match="self-similarity"):
        linear_cka(torch.ones(10, 3), y[:10])
    with pytest.raises(BasinscopeError, match="before any update"):
        MinibatchCKA(1, 1).result()
    with pytest.raises(BasinscopeError, match="sigma_factor"):
        rbf_cka(x, y, sigma_factor=0.0)


@pytest.fixture(scope="module")
def two_models():
    torch.manual_seed(0)
    a = mlp(hidden=(16, 8))
    b = copy.deepcopy(a)
    a.train()
    b.eval()
    return a, b


@pytest.mark.parametrize("method", ["minibatch", "linear", "debiased", "rbf"])
def test_cka_matrix_copy_has_unit_diagonal(two_models, digits_xy, method):
    a, b = two_models
    x, y = digits_xy
    before = {k: v.clone() for k, v in a.state_dict().items()}
    result = cka_matrix(a, b, (x[:302], y[:302]), batch_size=100, method=method)
    assert result.layers_a == ("fc1", "fc2", "fc3")
    assert result.matrix.shape == (3, 3)
    diag = result.diagonal()
    assert list(diag) == ["fc1", "fc2", "fc3"]
    assert all(v == pytest.approx(1.0, abs=1e-9) for v in diag.values())
    assert np.all(np.isfinite(result.matrix))
    # minibatch drops the final batch of 2 examples
    assert result.num_examples == (300 if method == "minibatch" else 302)
    assert a.training and not b.training
    assert not a._forward_hooks and not any(m._forward_hooks for m in a.modules())
    assert all(torch.equal(before[k], v) for k, v in a.state_dict().items())
    json.dumps(result.to_dict())


def test_cka_matrix_options_and_errors(two_models, digits_xy):
    a, b = two_models
    x, y = digits_xy
    result = cka_matrix(
        a, b, (x, y), layers_a=["relu1", "fc3"], layers_b=["fc1"], max_examples=50, batch_size=20
    )
    assert result.matrix.shape == (2, 1) and result.num_examples == 50
    with pytest.raises(BasinscopeError, match="share no layer names"):
        result.diagonal()
    with pytest.raises(BasinscopeError, match="no modules named"):
        cka_matrix(a, b, (x, y), layers_a=["nope"])
    with pytest.raises(BasinscopeError, match="unknown CKA method"):
        cka_matrix(a, b, (x, y), method="cca")
    with pytest.raises(BasinscopeError, match="at least 4 examples"):
        cka_matrix(a, b, (x, y), batch_size=3)


def test_plot_returns_figure():
    from matplotlib.figure import Figure

    from basinscope.plotting import plot

    result = CKAResult(
        matrix=np.eye(2),
        layers_a=("fc1", "fc2"),
        layers_b=("fc1", "fc2"),
        method="linear",
        num_examples=10,
        batch_size=10,
    )
    fig, ax = plot(result)
    assert isinstance(fig, Figure)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fc1", "fc2"]
    assert len(fig.axes) == 2  # heatmap + colorbar


def test_streaming_linear_cka_equals_the_full_data_value():
    from basinscope.analyses.similarity import StreamingLinearCKA

    g = torch.Generator().manual_seed(3)
    x = torch.randn(500, 7, generator=g)
    y = torch.cat([x @ torch.randn(7, 5, generator=g), torch.randn(500, 4, generator=g)], 1)
    acc = StreamingLinearCKA(1, 2)
    for i in range(0, 500, 64):  # uneven last batch
        acc.update([x[i : i + 64]], [y[i : i + 64], x[i : i + 64] * 3.0])
    got = acc.result()
    assert got[0, 0] == pytest.approx(linear_cka(x, y), rel=1e-10)
    assert got[0, 1] == pytest.approx(1.0, rel=1e-12)
