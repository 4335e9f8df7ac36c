"""The double-descent study: smoke run end to end, reuse, report, and the functions that turn
curves into verdicts (threshold, peaks, the memorisation-consolidation check).

What the study shows is checked on the quick configuration in the ``science`` tier
(tests/experiments/test_studies_science.py)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from basinscope.errors import BasinscopeError
from basinscope.experiments.double_descent import (
    epochwise_peak,
    interpolation_threshold,
    memorisation_check,
    modelwise_peak,
    tracked_steps,
)
from basinscope.experiments.registry import make_config, run_study
from study_checks import opens_in_chromium, rebuild_computing_nothing

STUDY = "double-descent"
FIGURES = ("modelwise", "epochwise_0", "epochwise_1", "check_overlay")


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("double-descent")
    cfg = make_config(STUDY, smoke=True)
    results = run_study(STUDY, root, cfg, say=_quiet)
    return root, cfg, results, Path(results["run_dir"])


def test_every_training_is_a_stage_and_every_number_is_defined(smoke_run):
    _, cfg, _, run_dir = smoke_run
    saved = json.loads((run_dir / "result.json").read_text())
    rows = saved["modelwise"]["rows"]
    assert len(rows) == len(cfg.widths) * len(cfg.noise_rates) * len(cfg.batchnorm) * cfg.seeds
    stages = [s["stage"] for s in saved["stages"]]
    assert sum(s.startswith("sweep-") for s in stages) == len(rows)
    runs = saved["epochwise"]["runs"]
    assert sum(s.startswith("epochwise-") for s in stages) == len(runs) == 2
    defs = saved["definitions"]
    for row in rows:
        for key in ("train_error", "test_error", "train_loss", "test_loss", "parameters"):
            assert defs.get(key) and math.isfinite(row[key]), key
        assert (row["memorised"] is None) == (row["noise_rate"] == 0)
    for run in runs:
        steps = run["steps"]
        assert steps == tracked_steps(cfg.epoch_steps, cfg.track_points) == sorted(steps)
        for key in ("test_loss", "weight_norm", "sharpness", "lambda_max", "train_error"):
            assert len(run[key]) == len(steps) and defs.get(key), key
        # a BatchNorm MLP: fc1 feeds bn1, so it is scale-invariant and has an effective LR
        assert run["batchnorm"] and run["scale_invariant_layers"] == ["fc1"]
        assert len(run["effective_lr"]["fc1"]) == len(steps)
        assert run["check"]["tolerance_tracked_steps"] == cfg.coincidence_steps
        assert run["verdict"] in saved["conclusions"]
    # the epoch-wise width is the sweep's threshold (or the widest model) with BatchNorm at 20%
    curve = next(c for c in saved["modelwise"]["curves"] if c["batchnorm"] and c["noise_rate"])
    assert runs[0]["width"] == (curve["interpolation_threshold"] or max(cfg.widths))


def test_an_epochwise_stage_is_a_tracking_result(smoke_run):
    import basinscope
    from basinscope.analyses.tracking import Tracking

    root, _, res, _ = smoke_run
    run = res["epochwise"]["runs"][0]
    tracking = basinscope.load(root / "stages" / run["stage"])
    assert isinstance(tracking, Tracking)
    assert "memorised" in tracking.dataset and "memorised" in tracking.definition
    np.testing.assert_allclose(tracking.dataset["test_loss"].values, run["test_loss"])
    assert (root / "stages" / run["stage"] / "model.safetensors").is_file()


def test_running_again_reuses_every_stage_and_gives_the_same_numbers(smoke_run):
    root, cfg, first, _ = smoke_run
    again = run_study(STUDY, root, cfg, say=_quiet, report=False)
    assert again["run_dir"] == first["run_dir"]
    assert again["stages"] and all(s["reused"] for s in again["stages"])
    assert [s["stage"] for s in again["stages"]] == [s["stage"] for s in first["stages"]]
    assert again["modelwise"] == first["modelwise"]
    assert again["epochwise"] == first["epochwise"]


def test_a_new_epochwise_setting_recomputes_only_the_epochwise_runs(smoke_run):
    root, _, first, _ = smoke_run
    cfg = make_config(STUDY, smoke=True, sets=["track_points=5"])
    out = run_study(STUDY, root, cfg, say=_quiet, report=False)
    for s in out["stages"]:
        assert s["reused"] == s["stage"].startswith("sweep-"), s
    assert out["modelwise"] == first["modelwise"]


def test_figures_and_a_self_contained_report(smoke_run):
    _, cfg, res, run_dir = smoke_run
    for stem in FIGURES:
        for ext in cfg.figure_formats:
            assert (run_dir / "figures" / f"{stem}.{ext}").stat().st_size > 1000, (stem, ext)
    html = (run_dir / "report.html").read_text()
    assert Path(res["report"]) == run_dir / "report.html"
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == len(FIGURES)
    assert not re.search(r'<(script|img)[^>]+src="https?://', html)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html, flags=re.S)
    assert len(captions) == len(FIGURES) and all("BatchNorm" in c for c in captions)
    assert "filter-normalized" in html and "interpolation threshold" in html


def test_rebuilding_the_report_computes_nothing(smoke_run, monkeypatch):
    rebuild_computing_nothing(
        smoke_run[3],
        monkeypatch,
        (
            "basinscope.engine:evaluate_model",
            "basinscope.training:train",
        ),
        FIGURES,
    )


def test_the_report_opens_in_headless_chromium_without_errors(smoke_run):
    opens_in_chromium(smoke_run[3] / "report.html", figures=len(FIGURES))


def test_invalid_settings_are_refused_clearly():
    with pytest.raises(BasinscopeError, match="widths must increase"):
        make_config(STUDY, sets=["widths=[8, 4]"])
    with pytest.raises(BasinscopeError, match="epoch_width=0 takes the width"):
        make_config(STUDY, sets=["noise_rates=[0]"])
    make_config(STUDY, sets=["noise_rates=[0]", "epoch_width=16"])  # a width given: fine
    with pytest.raises(BasinscopeError, match="sharpness"):
        make_config(STUDY, sets=["sharpness=lambda_max"])
    with pytest.raises(BasinscopeError, match="noise_rates"):
        make_config(STUDY, sets=["noise_rates=[0, 1.5]"])


# -- the functions that turn curves into verdicts -------------------------------------------


def test_tracked_steps_are_log_spaced_distinct_and_include_both_ends():
    s = tracked_steps(20000, 30)
    assert s[0] == 1 and s[-1] == 20000 and s == sorted(set(s))
    assert 20 <= len(s) <= 30
    ratios = np.diff(np.log(s[-10:]))
    np.testing.assert_allclose(ratios, ratios.mean(), rtol=0.05)


def test_the_interpolation_threshold_is_where_every_wider_model_fits():
    widths = [2, 4, 8, 16, 32]
    assert interpolation_threshold(widths, [0.5, 0.2, 0.0, 0.0, 0.0], 0.01) == 8
    # a wider model that does not fit moves the threshold past it
    assert interpolation_threshold(widths, [0.5, 0.0, 0.1, 0.0, 0.0], 0.01) == 16
    assert interpolation_threshold(widths, [0.5, 0.2, 0.1, 0.05, 0.02], 0.01) is None
    assert interpolation_threshold(widths, [0.5, 0.2, 0.1, 0.05, 3 / 300], 0.01) == 32


def test_the_modelwise_peak_stands_above_both_sides():
    i, score = modelwise_peak([0.5, 0.3, 0.4, 0.2, 0.1])
    assert i == 2 and score == pytest.approx(0.1)
    i, score = modelwise_peak([0.5, 0.4, 0.3, 0.2])  # monotone: no interior peak
    assert score <= 0
    assert modelwise_peak([0.1, 0.2]) == (None, 0.0)


def test_the_test_loss_peak_is_the_largest_rise_over_an_earlier_minimum():
    assert epochwise_peak([2.0, 1.0, 0.5, 0.9, 1.4, 1.0, 0.8]) == (2, 4)
    assert epochwise_peak([2.0, 1.0, 0.5, 0.4]) is None
    assert epochwise_peak([2.0, 0.5, 0.7, 0.6, 1.5]) == (1, 4)  # still rising at the end


def _series(test_loss, weight_norm, sharpness):
    n = len(test_loss)
    return {
        "test_loss": test_loss,
        "weight_norm": weight_norm,
        "sharpness": sharpness,
        "lambda_max": [1.0] * n,
        "train_error": [0.5] * (n // 2) + [0.0] * (n - n // 2),
    }


def test_the_check_supports_the_hypothesis_only_when_the_numbers_do():
    steps = [1, 10, 100, 1000, 10000, 100000]
    agree = _series(
        [2.0, 0.6, 1.5, 1.2, 0.8, 0.7], [5, 8, 12, 11, 9, 8], [0.1, 0.5, 2.0, 1.5, 1.0, 0.8]
    )
    c = memorisation_check(steps, agree, tolerance=1, drop=0.05, interpolation_tol=0.01)
    assert c["test_loss_peak_step"] == 100 and c["first_descent_end_step"] == 10
    assert c["weight_norm_coincides"] and c["sharpness_coincides"] and c["consolidation"]
    assert c["supported"] is True and c["interpolation_step"] == 1000
    assert c["tolerance_factor"] == pytest.approx(10.0)
    # the weight norm keeps growing: it neither coincides (within 1) nor falls
    grows = _series(
        [2.0, 0.6, 1.5, 1.2, 0.8, 0.7], [5, 8, 9, 10, 11, 12], [0.1, 0.5, 2.0, 1.5, 1.0, 0.8]
    )
    c = memorisation_check(steps, grows, tolerance=1, drop=0.05, interpolation_tol=0.01)
    assert c["weight_norm_max_at_end"] and not c["weight_norm_coincides"]
    assert not c["consolidation"] and c["supported"] is False
    # no rise of the test loss at all: nothing to compare
    flat = _series([2.0, 1.0, 0.8, 0.7, 0.6, 0.5], [5] * 6, [1.0] * 6)
    c = memorisation_check(steps, flat, tolerance=1, drop=0.05, interpolation_tol=0.01)
    assert c["test_loss_peak_step"] is None and c["supported"] is False
