"""The teacher-student study: the Hessian counts against a float64 finite-difference
Hessian, the clustering rule, the fixed second layer, and the smoke run end to end (stages,
reuse, report in Chromium).

What the study shows is checked on the quick configuration in the ``science`` tier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import make_config, run_study
from basinscope.experiments.teacher_student import (
    cluster_minima,
    hessian_modes,
    merge_path,
    merged,
    sharing,
    student_model,
)
from study_checks import opens_in_chromium

STUDY = "teacher-student"
FIGURES = ("minima", "overlaps", "paths")


def test_the_hessian_matches_finite_differences_and_counts_the_split_unit_zero_modes():
    rng = np.random.default_rng(0)
    d, n = 3, 200
    x = rng.standard_normal((n, d)) / np.sqrt(d)
    v = np.eye(d)[:2] * np.sqrt(d)
    y = np.maximum(x @ v.T, 0).sum(1, keepdims=True)

    def loss(w):
        return np.mean((np.maximum(x @ w.T, 0).sum(1, keepdims=True) - y) ** 2)

    # K = M + 1: teacher unit 0 shared 0.3 / 0.7 by two parallel units (zero loss)
    w = np.stack([0.3 * v[0], v[1], 0.7 * v[0]])
    assert loss(w) < 1e-24
    out = hessian_modes(w, x, y, rel_tol=1e-2)
    p, h, eps = w.ravel(), np.zeros((9, 9)), 1e-4
    for i in range(9):
        for j in range(9):
            e_i, e_j = np.eye(9)[i] * eps, np.eye(9)[j] * eps
            f = [
                loss((p + s * e_i + t * e_j).reshape(3, d))
                for s, t in ((1, 1), (1, -1), (-1, 1), (-1, -1))
            ]
            h[i, j] = (f[0] - f[1] - f[2] + f[3]) / (4 * eps**2)
    np.testing.assert_allclose(out["eigenvalues"], np.linalg.eigvalsh(h), atol=1e-5)
    assert out["zero"] == d and out["negative"] == 0  # d (K - M) zero modes
    # K = M at the teacher: none
    assert hessian_modes(v, x, y, rel_tol=1e-2)["zero"] == 0
    assert sharing(np.array([[0.3, 0], [0, 1], [0.7, 0]]), np.eye(2)) == (1, 2)


def test_the_merge_path_folds_parallel_units_at_zero_loss():
    rng = np.random.default_rng(1)
    d = 3
    x = rng.standard_normal((100, d)) / np.sqrt(d)
    v = np.eye(d)[:2] * np.sqrt(d)
    y = np.maximum(x @ v.T, 0).sum(1, keepdims=True)
    wa = np.stack([0.4 * v[0], v[1], 0.6 * v[0]])  # unit 2 shares teacher unit 0
    wb = np.stack([v[0], 0.2 * v[1], 0.8 * v[1]])  # unit 2 shares teacher unit 1
    ra, rb = wa @ v.T / d, wb @ v.T / d
    np.testing.assert_allclose(merged(wa, ra, [0, 1, -1]), np.stack([v[0], v[1], 0 * v[0]]))
    path = merge_path(wa, ra, [0, 1, -1], wb, rb, [0, 1, -1], x, y)
    assert len(path) == 33 and max(path) < 1e-24
    # the straight line between them climbs: the zero-loss set is not convex
    mid = 0.5 * (wa + wb)
    assert np.mean((np.maximum(x @ mid.T, 0).sum(1, keepdims=True) - y) ** 2) > 1e-3


def test_clusters_are_cut_at_the_threshold_in_the_chebyshev_distance():
    v = [[0.0, 0.0], [0.04, 0.0], [0.0, 0.2], [0.01, 0.21]]
    assert cluster_minima(v, 0.05) == [0, 0, 1, 1]
    assert cluster_minima(v, 0.005) == [0, 1, 2, 3]
    assert cluster_minima([[1.0]], 0.05) == [0]


def test_the_student_trains_only_its_first_layer():
    m = student_model(3, 2, [[1.0, 0, 0], [0, 1.0, 0]])
    assert [n for n, _ in m.named_parameters()] == ["fc1.weight"]
    x = torch.tensor([[1.0, -2.0, 0.5]])
    assert float(m(x).detach()) == pytest.approx(1.0)


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ts")
    cfg = make_config(STUDY, smoke=True)
    results = run_study(STUDY, root, cfg, say=_quiet)
    return root, cfg, results, Path(results["run_dir"])


def test_smoke_run_stores_every_student_and_analyses_every_width(smoke_run):
    root, cfg, res, run_dir = smoke_run
    saved = json.loads((run_dir / "result.json").read_text())
    stages = [s["stage"] for s in saved["stages"]]
    assert sum(s.startswith("ts-train-") for s in stages) == len(cfg.widths) * cfg.seeds
    assert sum(s.startswith("ts-minima-") for s in stages) == len(cfg.widths)
    assert [w["width"] for w in saved["widths"]] == list(cfg.widths)
    for w in saved["widths"]:
        assert len(w["minima"]) == cfg.seeds
        assert len(w["pairs"]) == min(cfg.pairs, cfg.seeds - 1) or len(w["pairs"]) >= 1
        for m in w["minima"]:
            assert np.asarray(m["aligned_R"]).shape == (w["width"], cfg.teacher_units)
            assert m["hessian"]["zero"] >= 0 and m["hessian"]["lambda_max"] > 0
        for p in w["pairs"]:
            assert p["barrier"] >= 0 and p["curve"]["max_loss"] >= 0
            assert len(p["merge_path"]) == 33
    for key in ("distinct", "barrier", "curve", "zero_modes"):
        assert saved["definitions"][key]
    assert saved["conclusions"]
    again = run_study(STUDY, root, cfg, say=_quiet, report=False)
    assert all(s["reused"] for s in again["stages"])
    assert again["summary"] == res["summary"]


def test_the_report_has_every_figure_and_opens_in_headless_chromium(smoke_run):
    _, _, _, run_dir = smoke_run
    for stem in FIGURES:
        assert (run_dir / "figures" / f"{stem}.png").stat().st_size > 1000, stem
    html = (run_dir / "report.html").read_text()
    assert "zero modes" in html and "order parameters" in html
    opens_in_chromium(run_dir / "report.html", figures=len(FIGURES))


def test_invalid_settings_are_refused_clearly():
    with pytest.raises(BasinscopeError, match="widths"):
        make_config(STUDY, sets=["widths=[3, 5]"])  # narrower than the teacher
    with pytest.raises(BasinscopeError, match="teacher_units"):
        make_config(STUDY, sets=["teacher_units=9"])
