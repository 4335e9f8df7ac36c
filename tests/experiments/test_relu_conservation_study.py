"""The relu-conservation study: the component-counting and reachability rules, the sign
bound, and the smoke run end to end (stages, reuse, report in Chromium).

What the study shows is checked on the quick configuration in the ``science`` tier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import make_config, run_study
from basinscope.experiments.relu_conservation import (
    components,
    find_moves,
    permute,
    reachable,
    rescale,
    rescaled_c,
    sign_lower_bound,
)
from study_checks import opens_in_chromium

STUDY = "relu-conservation"
FIGURES = ("drift", "obstruction", "moves")


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


def _f(w, a, x):
    return np.maximum(x @ w.T, 0.0) @ a


def test_rescaling_keeps_the_function_and_moves_c_as_the_formula_says():
    rng = np.random.default_rng(3)
    w, a = rng.standard_normal((3, 5)), rng.standard_normal(3)
    x = rng.standard_normal((200, 5))
    for j, alpha in ((0, 2.0), (1, 0.37), (2, 5.3)):
        w2, a2 = rescale(w, a, j, alpha)
        assert np.max(np.abs(_f(w2, a2, x) - _f(w, a, x))) < 1e-12
        c2 = (w2**2).sum(1) - a2**2
        assert c2[j] == pytest.approx(rescaled_c(w[j], a[j], alpha), rel=1e-12, abs=1e-12)
        assert c2[j] == pytest.approx(alpha**2 * (w[j] ** 2).sum() - a[j] ** 2 / alpha**2)
        others = [k for k in range(3) if k != j]
        np.testing.assert_array_equal(c2[others], ((w**2).sum(1) - a**2)[others])
    wp, ap = permute(w, a, [2, 0, 1])
    assert np.max(np.abs(_f(wp, ap, x) - _f(w, a, x))) < 1e-12


def test_moves_unlock_a_blocked_component_and_find_the_swaps_between_components():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 4))
    w = 0.5 * w / np.linalg.norm(w, axis=1, keepdims=True)  # c_j = 0.25 - 1 = -0.75
    x = rng.standard_normal((100, 4))
    mv = find_moves({"w": w.tolist(), "a": [1.0, 1.0]}, [1.0, -1.0], x)
    assert mv["pattern"] == "++" and mv["components"] == 4
    for r in mv["rescales"]:
        assert r["alpha"] == pytest.approx(2.0) and r["alpha_threshold"] == pytest.approx(2**0.5)
        assert r["c_after"] == pytest.approx(0.75) and r["c_error"] < 1e-12
        assert r["max_df"] < 1e-12 and r["others_unchanged"]
    assert mv["unlocked_neurons"] == [0] and mv["unlocked_pattern"] == "0+"
    assert mv["unlocked_reachable"] and mv["unlocked_max_df"] < 1e-12
    assert mv["swaps"] == []  # ++ is symmetric: no swap leaves its component
    mv = find_moves({"w": w.tolist(), "a": [1.0, -1.0]}, [1.0, -1.0], x)
    assert [(s["swap"], s["to"], s["reachable_after"]) for s in mv["swaps"]] == [
        ([0, 1], "-+", True)
    ]
    assert mv["swaps"][0]["max_df"] < 1e-12


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
    n_runs = 3 + len(cfg.drift_lrs) + 1 + cfg.random_inits
    assert sum(s["stage"].startswith("relu-") for s in saved["stages"]) == n_runs
    assert set(saved["designed"]) == {"blocked", "reachable"}
    assert saved["designed"]["blocked"]["judged"]["reachable"] is False
    assert saved["designed"]["reachable"]["judged"]["reachable"] is True
    assert len(saved["drift"]["rows"]) == len(cfg.drift_lrs) + 1
    assert len(saved["random"]) == cfg.random_inits
    moves = saved["moves"]
    assert moves["blocked"]["unlocked_reachable"] is True
    assert moves["blocked"]["unlocked_max_df"] < 1e-12
    assert all(r["c_error"] < 1e-12 for r in moves["blocked"]["rescales"])
    unlocked = moves["unlocked_run"]["judged"]
    assert np.isfinite(unlocked["final_loss"])  # reported; the smoke run is too short to assert
    assert any("unlock" in c for c in saved["conclusions"])
    for key in ("c", "drift", "components", "reachable", "sign_bound"):
        assert saved["definitions"][key]
    again = run_study(STUDY, root, cfg, say=_quiet, report=False)
    assert all(s["reused"] for s in again["stages"])
    assert again["drift"] == res["drift"] and again["random"] == res["random"]
    assert again["moves"] == res["moves"]


def test_the_report_has_every_figure_and_opens_in_headless_chromium(smoke_run):
    _, _, _, run_dir = smoke_run
    for stem in FIGURES:
        assert (run_dir / "figures" / f"{stem}.png").stat().st_size > 1000, stem
    html = (run_dir / "report.html").read_text()
    assert "components" in html and "sign bound" in html
    opens_in_chromium(run_dir / "report.html", figures=len(FIGURES))


def test_invalid_settings_are_refused_clearly():
    with pytest.raises(BasinscopeError, match="teacher_signs must be nonzero"):
        make_config(STUDY, sets=["teacher_signs=[1, 0]"])
    with pytest.raises(BasinscopeError, match="in_features"):
        make_config(STUDY, sets=["in_features=1"])
