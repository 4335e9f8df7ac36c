"""The relu-conservation study: the component-counting and reachability rules, the sign
bound, and the smoke run end to end (stages, reuse, report in Chromium).

What the study shows is checked on the quick configuration in the ``science`` tier."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import make_config, run_study
from basinscope.experiments.relu_conservation import components, reachable, sign_lower_bound

STUDY = "relu-conservation"
FIGURES = ("drift", "obstruction")


def test_components_count_the_neurons_locked_to_a_sign():
    assert components([0.5, 0.1]) == 1
    assert components([-0.5, 0.1]) == 2
    assert components([-0.5, -0.1, -2.0]) == 8
    assert components([0.0, 0.0]) == 1  # a cone is connected


def test_reachability_is_halls_condition_on_locked_and_free_neurons():
    teacher = [1.0, -1.0]
    assert not reachable([-1, -1], [1, 1], teacher)  # both locked positive
    assert not reachable([-1, -1], [-1, -1], teacher)
    assert reachable([-1, -1], [1, -1], teacher)
    assert reachable([-1, 0.5], [1, 1], teacher)  # the free neuron can turn negative
    assert reachable([0.5, 0.5], [1, 1], teacher)
    assert not reachable([-1, -1, 0.5], [1, 1, 1], [1.0, -1.0, -1.0])
    assert reachable([-1, 0.5, 0.5], [1, 1, 1], [1.0, -1.0, -1.0])
    assert not reachable([0.5], [1], teacher)  # too narrow


def test_the_sign_bound_is_the_loss_of_the_best_one_signed_output():
    y = np.array([1.0, -2.0, 0.5, -1.0])
    # locked positive: the best output is max(y, 0); loss 1/2 mean(min(y, 0)^2)
    assert sign_lower_bound([-1, -1], [1, 2], y) == pytest.approx(0.5 * (4 + 1) / 4)
    assert sign_lower_bound([-1, -1], [-1, -2], y) == pytest.approx(0.5 * (1 + 0.25) / 4)
    assert sign_lower_bound([-1, 0.5], [1, 1], y) is None
    assert sign_lower_bound([-1, -1], [1, -1], y) is None


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("relu")
    cfg = make_config(STUDY, smoke=True)
    results = run_study(STUDY, root, cfg, say=_quiet)
    return root, cfg, results, Path(results["run_dir"])


def test_smoke_run_stores_every_run_and_judges_every_initialisation(smoke_run):
    root, cfg, res, run_dir = smoke_run
    saved = json.loads((run_dir / "result.json").read_text())
    n_runs = 2 + len(cfg.drift_lrs) + 1 + cfg.random_inits
    assert sum(s["stage"].startswith("relu-") for s in saved["stages"]) == n_runs
    assert set(saved["designed"]) == {"blocked", "reachable"}
    assert saved["designed"]["blocked"]["judged"]["reachable"] is False
    assert saved["designed"]["reachable"]["judged"]["reachable"] is True
    assert len(saved["drift"]["rows"]) == len(cfg.drift_lrs) + 1
    assert len(saved["random"]) == cfg.random_inits
    for key in ("c", "drift", "components", "reachable", "sign_bound"):
        assert saved["definitions"][key]
    again = run_study(STUDY, root, cfg, say=_quiet, report=False)
    assert all(s["reused"] for s in again["stages"])
    assert again["drift"] == res["drift"] and again["random"] == res["random"]


def test_the_report_has_every_figure_and_opens_in_headless_chromium(smoke_run):
    from browser import check_report, chromium_path

    _, _, _, run_dir = smoke_run
    for stem in FIGURES:
        assert (run_dir / "figures" / f"{stem}.png").stat().st_size > 1000, stem
    html = (run_dir / "report.html").read_text()
    assert "components" in html and "sign bound" in html
    if chromium_path() is None and os.environ.get("CI") != "true":
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium)")
    out = check_report(run_dir / "report.html", timeout=120)
    assert out["console_errors"] == []
    assert out["n_figures"] >= len(FIGURES)
    assert all(f["ok"] for f in out["figures"]), out["figures"]


def test_invalid_settings_are_refused_clearly():
    with pytest.raises(BasinscopeError, match="teacher_signs must be nonzero"):
        make_config(STUDY, sets=["teacher_signs=[1, 0]"])
    with pytest.raises(BasinscopeError, match="in_features"):
        make_config(STUDY, sets=["in_features=1"])
