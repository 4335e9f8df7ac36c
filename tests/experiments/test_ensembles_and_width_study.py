"""The ensembles-and-width study (Lobacheva et al. 2020 on digits): smoke run, reuse, report.

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
from basinscope.experiments.ensembles_and_width_report import FIGURES, calibration_verdict
from basinscope.experiments.registry import make_config, run_study
from study_checks import opens_in_chromium, rebuild_computing_nothing

STUDY = "ensembles-and-width"


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensembles-and-width")
    cfg = make_config(STUDY, smoke=True)
    results = run_study(STUDY, root, cfg, say=_quiet)
    return root, cfg, results, Path(results["run_dir"])


def test_every_width_and_ensemble_size_is_measured(smoke_run):
    _, cfg, _, run_dir = smoke_run
    saved = json.loads((run_dir / "result.json").read_text())
    assert [r["width"] for r in saved["widths"]] == list(cfg.widths)
    for row in saved["widths"]:
        assert [x["n"] for x in row["by_n"]] == list(range(1, cfg.members + 1))
        assert len(row["members"]) == cfg.members
        for x in row["by_n"]:
            assert 1 <= x["subsets"] <= cfg.resamples
            for key in ("nll", "nll_cal", "error", "ece", "ece_cal", "val_nll", "val_nll_cal"):
                assert math.isfinite(x[f"{key}_mean"]), (row["width"], x["n"], key)
                assert x[f"{key}_lo"] <= x[f"{key}_mean"] <= x[f"{key}_hi"]
            # the temperature is fitted on the validation split: never worse there
            assert x["val_nll_cal_mean"] <= x["val_nll_mean"] + 1e-12
            assert (x["disagreement_mean"] is None) == (x["n"] == 1)
        assert row["by_n"][-1]["subsets"] == 1  # only one subset holds every member
    # every fit has its bootstrap interval, per width and in width
    for w in cfg.widths:
        for key in ("nll", "nll_cal"):
            f = saved["fits"]["n"][str(w)][key]
            assert f["x"] == list(range(1, cfg.members + 1)) and set(f["ci"]) == {"a", "b", "c"}
            assert f["bootstrap"] == cfg.bootstrap and f["resample"] == "samples"
    assert saved["fits"]["width"]["nll_cal"]["x"] == list(cfg.widths)
    rows = saved["memory_split"]["nll_cal"]["rows"]
    assert [r["budget"] for r in rows] == saved["budgets"]
    for r in rows:
        cost = r["measured_n"] * saved["params"][str(r["measured_width"])]
        assert cost <= r["budget"]
    bm = saved["budget_methods"]
    assert [p["n"] for p in bm["fge"]["points"]] == list(range(1, cfg.members + 1))
    assert bm["fge"]["points"][-1]["snapshots"] == (cfg.members - 1) * cfg.fge_cycles_per_member
    assert bm["swa"]["budget"] == cfg.members * cfg.steps == bm["fge"]["budget"]


def test_members_and_stages_are_stored_by_their_settings(smoke_run):
    root, cfg, results, _ = smoke_run
    names = [s["stage"] for s in results["stages"]]
    members = [n for n in names if n.startswith("member-")]
    assert len(members) == len(set(members)) == len(cfg.widths) * cfg.members
    for kind in ("ensembles-w", "fge-w", "swa-w", "power-laws-"):
        assert any(n.startswith(kind) for n in names), kind
    for n in names:
        manifest = json.loads((root / "stages" / n / "manifest.json").read_text())
        assert manifest["status"] == "complete", n


def test_running_again_reuses_every_stage_and_gives_the_same_numbers(smoke_run):
    root, cfg, first, _ = smoke_run
    again = run_study(STUDY, root, cfg, say=_quiet, report=False)
    assert again["run_dir"] == first["run_dir"]
    assert again["stages"] and all(s["reused"] for s in again["stages"])
    assert [s["stage"] for s in again["stages"]] == [s["stage"] for s in first["stages"]]
    for key in ("widths", "fits", "memory_split", "budget_methods", "monotonicity"):
        assert again[key] == first[key], key


def test_more_bootstrap_resamples_refit_only_the_laws(smoke_run):
    root, _, first, _ = smoke_run
    out = run_study(
        STUDY, root, make_config(STUDY, smoke=True, sets=["bootstrap=6"]), say=_quiet, report=False
    )
    for s in out["stages"]:
        assert s["reused"] == (not s["stage"].startswith("power-laws-")), s
    assert out["widths"] == first["widths"]


def test_figures_and_a_self_contained_report(smoke_run):
    _, cfg, results, run_dir = smoke_run
    for stem in FIGURES:
        for ext in cfg.figure_formats:
            assert (run_dir / "figures" / f"{stem}.{ext}").stat().st_size > 1000, (stem, ext)
    html = (run_dir / "report.html").read_text()
    assert Path(results["report"]) == run_dir / "report.html"
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == len(FIGURES)
    assert not re.search(r'<(script|img)[^>]+src="https?://', html)
    assert "The budget table" in html and "Calibration" in html
    assert calibration_verdict(results) in html.replace("&#x27;", "'")


def test_rebuilding_the_report_computes_nothing(smoke_run, monkeypatch):
    rebuild_computing_nothing(
        smoke_run[3],
        monkeypatch,
        (
            "basinscope.analyses.calibration:calibrate_log_probs",
            "basinscope.analyses.calibration:log_probabilities",
            "basinscope.analyses.scaling:fit_power_law",
            "basinscope.analyses.scaling:memory_split",
            "basinscope.analyses.ensembles:fge",
            "basinscope.analyses.ensembles:swa",
            "basinscope.training:train",
        ),
        FIGURES,
    )


def _mono(rises):
    return {"monotone": not rises, "rises": rises, "significant_rises": 0}


def test_the_calibration_sentence_follows_the_numbers():
    rise = [{"from": 8, "to": 16, "rise": 0.01, "se": 0.001, "significant": True}]
    results = {"widths": [{}, {}, {}], "config": {"members": 4}}

    def verdict(u, c):
        mono = {"nll": u, "nll_cal": c, "nll_ensemble": _mono([]), "nll_cal_ensemble": _mono([])}
        return calibration_verdict({**results, "monotonicity": mono})

    u = {**_mono(rise), "significant_rises": 1}
    assert "removes the non-monotonicity" in verdict(u, _mono([]))
    assert "does not remove the non-monotonicity" in verdict(u, u)
    assert "no non-monotonicity for calibration to remove" in verdict(_mono([]), _mono([]))
    assert "introduces one" in verdict(_mono([]), u)


def test_subsets_are_all_of_them_or_distinct_draws():
    from basinscope.experiments.ensembles_and_width import subsets

    assert subsets(4, 2, 10, 0) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    drawn = subsets(8, 3, 5, 0)
    assert len(drawn) == len(set(drawn)) == 5 and all(len(s) == 3 for s in drawn)
    assert drawn == subsets(8, 3, 5, 0) != subsets(8, 3, 5, 1)


def test_mean_replicates_resample_each_mean():
    from basinscope.experiments.ensembles_and_width import mean_replicates

    reps = mean_replicates([[1.0, 1.0], [0.0, 2.0, 4.0]], 400, 0)
    assert reps.shape == (2, 400)
    assert np.all(reps[0] == 1.0)
    assert abs(reps[1].mean() - 2.0) < 0.2 and reps[1].min() >= 0 and reps[1].max() <= 4


def test_invalid_settings_are_refused_clearly():
    with pytest.raises(BasinscopeError, match="at least 3 distinct widths"):
        make_config(STUDY, sets=["widths=[4, 8]"])
    with pytest.raises(BasinscopeError, match="compare_width 5 is not among widths"):
        make_config(STUDY, sets=["compare_width=5"])
    with pytest.raises(BasinscopeError, match="members must be an integer >= 3"):
        make_config(STUDY, sets=["members=2"])
    with pytest.raises(BasinscopeError, match="binning must be one of"):
        make_config(STUDY, sets=["binning=quantile"])


def test_the_report_opens_in_headless_chromium_without_errors(smoke_run):
    opens_in_chromium(smoke_run[3] / "report.html", figures=len(FIGURES), exactly=True)
