import json

import numpy as np
import pytest
import torch

from basinscope.analyses.hessian import HessianSpec, hessian_analysis
from basinscope.analyses.hessian_map import curvature_map, hessian_map
from basinscope.errors import BasinscopeError
from curvature_cases import dense_hessian, tiny_models


@pytest.fixture(scope="module")
def xy(digits_xy):
    x, y = digits_xy
    return x[:80], y[:80]


def test_report_matches_dense_spectrum_at_both_ends(xy):
    model = tiny_models()["mlp"]
    evals = torch.linalg.eigvalsh(dense_hessian(model, *xy)).numpy()
    rep = hessian_analysis(
        model, xy, k_top=2, k_bottom=2, trace="exact", density=True, density_steps=40
    )
    scale = np.abs(evals).max()
    np.testing.assert_allclose(rep.top.eigenvalues, evals[::-1][:2], atol=1e-6 * scale)
    np.testing.assert_allclose(rep.bottom.eigenvalues, evals[:2], atol=1e-6 * scale)
    assert rep.bottom.eigenvalues[0] < 0  # a tanh MLP away from a minimum is indefinite
    assert rep.trace.estimate == pytest.approx(evals.sum(), rel=1e-9)
    assert rep.density.moment(0) == pytest.approx(1.0)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["ratio_min_max"] == pytest.approx(abs(evals[0] / evals[-1]), rel=1e-5)
    assert d["semantics"]["operator"] == "hessian" and d["semantics"]["bn_mode"] == "eval"


def test_report_saved_and_loaded_with_its_definitions_spec_and_eigenvectors(xy, tmp_path):
    from basinscope.analyses.hessian import HessianReport, HessianSpec
    from basinscope.store import load, save

    model = tiny_models()["mlp"]
    spec = HessianSpec(k_top=2, k_bottom=1, trace="hutchinson", density=True, density_steps=20)
    rep = hessian_analysis(model, xy, spec=spec, per_module=True)
    assert rep.spec == spec.replace(per_module=True)
    assert rep.definition["operator"].startswith("hessian: H = nabla^2 L")
    assert "algebraically largest" in rep.definition["top"]
    assert set(rep.definition) == {"operator", "top", "bottom", "trace", "density", "per_module"}
    back = load(save(rep, tmp_path / "run"))
    assert isinstance(back, HessianReport) and back.to_dict() == rep.to_dict()
    for end in ("top", "bottom"):
        assert torch.equal(getattr(back, end).eigenvectors, getattr(rep, end).eigenvectors)
    assert back.per_module[0].trace == rep.per_module[0].trace


def test_spec_checks_the_settings_once():
    from basinscope.analyses.hessian import HessianSpec

    with pytest.raises(BasinscopeError, match=r"k_top must be <= 1,000 \(Lanczos keeps a full"):
        HessianSpec(k_top=5000)
    with pytest.raises(BasinscopeError, match="unknown operator 'fisher': expected one of"):
        HessianSpec(operator="fisher")
    with pytest.raises(BasinscopeError, match="tol must be a positive number, got 0"):
        HessianSpec(tol=0.0)
    with pytest.raises(BasinscopeError, match="unknown method 'fast'"):
        HessianSpec(method="fast")


def test_report_per_module_and_other_operators(xy):
    model = tiny_models()["cnn"]
    rep = hessian_analysis(
        model, xy, operator="ggn", k_top=1, k_bottom=0, trace="hutchinson", per_module=True
    )
    assert rep.bottom is None and rep.top.eigenvalues[0] > 0
    assert {m.module for m in rep.per_module} == {"0", "4"}
    assert rep.semantics["operator"] == "ggn"


def test_report_errors(xy):
    model = tiny_models()["mlp"]
    with pytest.raises(BasinscopeError, match="unknown curvature operator 'fisher'"):
        hessian_analysis(model, xy, operator="fisher")
    with pytest.raises(BasinscopeError, match="unknown trace method 'fast'"):
        hessian_analysis(model, xy, trace="fast")


def test_curvature_map_center_matches_the_spectrum_and_resumes(xy, tmp_path):
    model = tiny_models()["mlp"]
    kw = dict(
        alphas=np.linspace(-0.5, 0.5, 3),
        betas=np.array([-0.5, 0.0, 0.5]),
        chunk_size=2,
        tol=1e-8,
        max_iter=200,
        hvp_method="double-backward",  # pinned: the resumed map is compared bit for bit
    )
    full = curvature_map(model, xy, run_dir=tmp_path / "full", **kw)
    evals = torch.linalg.eigvalsh(dense_hessian(model, *xy)).numpy()
    ds = full.dataset
    assert ds["train_lambda_max"].values[1, 1] == pytest.approx(evals[-1], rel=1e-6)
    assert ds["train_lambda_min"].values[1, 1] == pytest.approx(evals[0], rel=1e-5)
    assert ds["train_ratio"].values[1, 1] == pytest.approx(abs(evals[0] / evals[-1]), rel=1e-5)
    assert ds.attrs["kind"] == "curvature_map"

    def stop(i, n):
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        curvature_map(model, xy, run_dir=tmp_path / "cut", on_chunk=stop, **kw)
    resumed = curvature_map(model, xy, run_dir=tmp_path / "cut", **kw)
    for v in ds.data_vars:
        assert np.array_equal(ds[v].values, resumed.dataset[v].values), v


def test_hessian_map_takes_the_settings_of_a_hessian_spec(xy):
    model = tiny_models()["mlp"]
    spec = HessianSpec(subset=40, tol=1e-12, max_iter=50, method="double-backward", seed=1)
    grid = dict(alphas=np.array([0.0, 0.5]), betas=np.array([0.0]))
    got = hessian_map(model, xy, spec, **grid)
    want = curvature_map(
        model,
        (xy[0][:40], xy[1][:40]),
        seed=1,
        tol=1e-8,
        max_iter=50,
        hvp_method="double-backward",
        **grid,
    )
    for v in want.dataset.data_vars:
        assert np.array_equal(got.dataset[v].values, want.dataset[v].values), v


def test_report_summary_lines(xy):
    rep = hessian_analysis(tiny_models()["mlp"], xy, k_top=2, k_bottom=1, trace="exact")
    lines = rep.summary()
    assert lines[0].startswith("hessian of the ") and "over 80 examples; BatchNorm eval" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["top", "top", "bottom", "trace"]
    assert all("residual" in line and "converged" in line for line in lines[1:4])
    assert "(exact, 100% CI)" in lines[4]


@pytest.mark.parametrize(
    "trace, kwargs, budget",
    [("hutchinson", {"max_samples": 16}, 16), ("hutch++", {"max_matvecs": 30}, 30)],
)
def test_trace_kwargs_cap_the_estimator(xy, trace, kwargs, budget):
    # an unreachable tolerance: the estimator stops at the budget passed through
    rep = hessian_analysis(
        tiny_models()["mlp"],
        xy,
        k_top=1,
        k_bottom=0,
        trace=trace,
        trace_rtol=1e-12,
        trace_kwargs=kwargs,
    )
    assert not rep.trace.converged
    assert rep.trace.num_matvecs <= budget
