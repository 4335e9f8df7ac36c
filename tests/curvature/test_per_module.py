"""Per-module curvature against the diagonal blocks of dense float64 curvature matrices."""

import importlib.util
import json

import numpy as np
import pytest
from matplotlib.figure import Figure
from torch import nn

from basinscope.curvature.operators import GGNOperator
from basinscope.curvature.per_module import ModuleCurvature, module_blocks, per_module_curvature
from basinscope.errors import BasinscopeError
from basinscope.plotting.spectrum import plot_per_module
from curvature_cases import dense_hessian, tiny_models

HAVE_LANCZOS = importlib.util.find_spec("basinscope.curvature.lanczos") is not None
needs_lanczos = pytest.mark.skipif(not HAVE_LANCZOS, reason="curvature.lanczos not available")


@pytest.fixture(scope="module")
def xy(digits_xy):
    x, y = digits_xy
    return x[:90], y[:90]


@pytest.fixture(scope="module")
def cnn_case(xy):
    """The CNN (conv '0': 20 parameters, linear '4': 330) and its dense Hessian."""
    model = tiny_models()["cnn"]
    return model, dense_hessian(model, *xy).numpy()


def block(dense, model, names):
    """The principal sub-matrix of ``dense`` for the parameters ``names``."""
    idx, i = [], 0
    for n, p in model.named_parameters():
        if n in names:
            idx.extend(range(i, i + p.numel()))
        i += p.numel()
    return dense[np.ix_(idx, idx)]


def test_default_blocks_partition_the_parameters():
    model = tiny_models()["bn_eval"]
    blocks = module_blocks(model)
    assert blocks == {
        "0": ["0.weight", "0.bias"],
        "1": ["1.weight", "1.bias"],
        "4": ["4.weight", "4.bias"],
    }
    nested = nn.Sequential(nn.Sequential(nn.Linear(2, 3), nn.Tanh()), nn.Linear(3, 1))
    assert module_blocks(nested, ["0"]) == {"0": ["0.0.weight", "0.0.bias"]}
    assert list(module_blocks(nested)) == ["0.0", "1"]


def test_exact_traces_are_the_diagonal_blocks_and_add_up(cnn_case, xy):
    model, dense = cnn_case
    results = per_module_curvature(model, xy, top=False, method="forward-over-reverse")
    assert [r.module for r in results] == ["0", "4"]
    assert [r.num_params for r in results] == [20, 330]
    for r in results:
        assert r.trace.method == "exact" and r.trace.converged and r.trace.std_error == 0
        assert r.trace.num_matvecs == r.num_params
        ref = np.trace(block(dense, model, r.parameters))
        assert r.trace.estimate == pytest.approx(ref, rel=1e-10, abs=1e-12)
        assert r.top_eigenvalue is None and r.top_converged is None
        assert r.trace.semantics["operator"] == "hessian"
        assert r.trace.semantics["dimension"] == r.num_params
    assert sum(r.trace.estimate for r in results) == pytest.approx(np.trace(dense), rel=1e-10)


def test_large_blocks_use_hutchinson(cnn_case, xy):
    model, dense = cnn_case
    (r,) = per_module_curvature(
        model, xy, modules=["4"], top=False, exact_trace_max_params=100, trace_rtol=0.1, seed=1
    )
    assert r.trace.method == "hutchinson" and r.trace.converged
    ref = np.trace(block(dense, model, r.parameters))
    assert abs(r.trace.estimate - ref) <= 4 * r.trace.std_error


def test_ggn_blocks(xy):
    model = tiny_models()["mlp"]
    full = GGNOperator(model, xy, subset=30).dense().numpy()
    results = per_module_curvature(model, xy, operator="ggn", top=False, subset=30)
    assert [r.module for r in results] == ["1", "3"]
    for r in results:
        ref = np.trace(block(full, model, r.parameters))
        assert r.trace.estimate == pytest.approx(ref, rel=1e-10)
        assert r.trace.semantics["operator"] == "ggn"


@needs_lanczos
def test_top_eigenvalues_are_those_of_the_dense_blocks(cnn_case, xy):
    model, dense = cnn_case
    results = per_module_curvature(model, xy, trace=False, tol=1e-8)
    for r in results:
        ref = np.linalg.eigvalsh(block(dense, model, r.parameters))[-1]
        assert r.top_converged
        assert r.top_eigenvalue == pytest.approx(ref, rel=1e-6)
        assert r.top_residual <= 1e-6 * abs(ref)
        assert r.trace is None
    # block-diagonal restriction: interlacing bounds each block's top by the full top
    assert max(r.top_eigenvalue for r in results) <= np.linalg.eigvalsh(dense)[-1] + 1e-9


@needs_lanczos
def test_to_dict_and_plot(cnn_case, xy, tmp_path):
    model, _ = cnn_case
    results = per_module_curvature(model, xy, exact_trace_max_params=100, trace_rtol=0.2)
    d = json.loads(json.dumps([r.to_dict() for r in results]))
    assert d[0]["module"] == "0" and d[1]["trace"]["method"] == "hutchinson"
    back = [ModuleCurvature.from_dict(x) for x in d]
    assert back == results and [b.to_dict() for b in back] == d
    fig, ax = plot_per_module(results)
    assert isinstance(fig, Figure)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["top eigenvalue", "trace"]
    assert "hessian" in ax.get_title()
    fig.savefig(tmp_path / "per_module.png")
    assert (tmp_path / "per_module.png").stat().st_size > 0


def test_plot_traces_only(cnn_case, xy, tmp_path):
    model, _ = cnn_case
    results = per_module_curvature(model, xy, top=False)
    fig, ax = plot_per_module(results, title="traces")
    assert ax.get_title() == "traces"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["trace"]
    fig.savefig(tmp_path / "traces.png")
    with pytest.raises(BasinscopeError, match="needs at least one ModuleCurvature"):
        plot_per_module([])


def test_bad_options_are_reported(xy):
    model = tiny_models()["mlp"]
    with pytest.raises(BasinscopeError, match="unknown curvature operator 'fisher'"):
        per_module_curvature(model, xy, operator="fisher")
    with pytest.raises(BasinscopeError, match=r"the model has no module 'fc'"):
        per_module_curvature(model, xy, modules=["fc"], top=False)
    with pytest.raises(BasinscopeError, match=r"module '2' \(Tanh\) has no parameters"):
        per_module_curvature(model, xy, modules=["2"], top=False)
    with pytest.raises(BasinscopeError, match=r"pass modules=\[\.\.\.\] instead of params="):
        per_module_curvature(model, xy, params=["1.*"], top=False)
    with pytest.raises(BasinscopeError, match="nothing to compute"):
        per_module_curvature(model, xy, top=False, trace=False)
