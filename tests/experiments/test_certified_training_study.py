"""The certified-training study (IBP vs standard training on digits): smoke run, reuse,
report rebuild, the computed comparison.

What the study shows is checked on the quick configuration in the ``science`` tier
(tests/experiments/test_studies_science.py)."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import pytest

from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import make_config, run_study
from study_checks import opens_in_chromium, rebuild_computing_nothing

STUDY = "certified-training"
FIGURES = ("certified_accuracy", "training", "surfaces", "curvature_maps", "flatness")


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("certified-training")
    cfg = make_config(STUDY, smoke=True)
    results = run_study(STUDY, root, cfg, say=_quiet)
    return root, cfg, results, Path(results["run_dir"])


def test_results_hold_every_number_with_its_definition(smoke_run):
    _, cfg, _, run_dir = smoke_run
    saved = json.loads((run_dir / "result.json").read_text())
    rows, defs = saved["models"], saved["definitions"]
    assert set(rows) == {"standard", "ibp", "matched"}
    for row in rows.values():
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert defs.get(key) or key == "eps_train", f"{key} has no definition"
                assert math.isfinite(value), (row["model"], key, value)
        assert len(row["certified_accuracy"]) == len(cfg.epsilons)
        # certified accuracy can only fall as the ball grows, and never exceeds accuracy
        cert = row["certified_accuracy"]
        assert all(a >= b for a, b in itertools.pairwise(cert))
        assert cert[0] <= row["test_accuracy"] + 1e-12
        assert row["lambda_min"] <= row["lambda_max"]
        assert "map" in row["stages"]
    assert rows["ibp"]["eps_train"] == cfg.eps_train and rows["standard"]["eps_train"] == 0.0
    hist = rows["ibp"]["history"]
    assert hist["eps"][-1] == pytest.approx(cfg.eps_train) and hist["eps"][0] == 0.0


def test_the_matched_checkpoint_is_the_standard_run_at_the_ibp_loss_level(smoke_run):
    from basinscope.experiments.certified_training import checkpoint_steps, matched_step

    _, cfg, results, _ = smoke_run
    mt = results["matched"]
    assert [int(k) for k in mt["losses"]] == list(checkpoint_steps(cfg))
    gaps = {int(k): abs(math.log(v / mt["target"])) for k, v in mt["losses"].items()}
    assert gaps[mt["step"]] == min(gaps.values())
    assert results["models"]["matched"]["checkpoint_step"] == mt["step"]
    assert matched_step({1: 1.0, 2: 0.1, 3: 0.01}, 0.05) == 2
    assert checkpoint_steps(make_config(STUDY, sets=["checkpoints=4"])) == (250, 500, 750, 1000)
    # the matched model's stages are its own, its training the standard run's
    m, s = results["models"]["matched"]["stages"], results["models"]["standard"]["stages"]
    assert m["train"] == s["train"] and m["center"] != s["center"]


def test_the_comparison_is_computed_from_the_numbers(smoke_run):
    from basinscope.experiments.certified_training import compare

    _, cfg, results, _ = smoke_run
    rows, comp = results["models"], results["comparison"]
    for key, m in comp["measures"].items():
        assert m["standard"] == rows["standard"][key] and m["ibp"] == rows["ibp"][key]
        assert m["ibp_flatter"] == (m["ibp"] < m["standard"])
    assert comp["ibp_flatter_count"] == sum(m["ibp_flatter"] for m in comp["measures"].values())
    # flip the numbers: the verdict follows
    fake = {k: dict(v) for k, v in rows.items()}
    for key in comp["measures"]:
        fake["ibp"][key], fake["standard"][key] = 1.0, 2.0
    flipped = compare(fake, cfg)
    assert flipped["ibp_flatter_overall"] and flipped["ibp_sharper_count"] == 0
    for key in comp["measures"]:
        fake["ibp"][key] = 3.0
    assert not compare(fake, cfg)["ibp_flatter_overall"]
    assert comp["matched"]["measures"]["lambda_max"]["standard"] == rows["matched"]["lambda_max"]


def test_the_findings_say_where_the_measurement_disagrees(smoke_run):
    from basinscope.experiments.certified_training_report import findings

    _, _, results, run_dir = smoke_run
    text = findings(json.loads((run_dir / "result.json").read_text()))
    if results["comparison"]["ibp_flatter_overall"]:
        assert "the direction the talk's smoothness argument predicts" in text
    else:
        assert "does not support the claim" in text


def test_figures_and_a_self_contained_report(smoke_run):
    _, cfg, results, run_dir = smoke_run
    for stem in FIGURES:
        for ext in cfg.figure_formats:
            assert (run_dir / "figures" / f"{stem}.{ext}").stat().st_size > 1000, (stem, ext)
    html = (run_dir / "report.html").read_text()
    assert Path(results["report"]) == run_dir / "report.html"
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == len(FIGURES)
    assert not re.search(r'<script[^>]+src="https?://', html)
    assert "Measured:" in html


def test_running_again_reuses_every_stage_and_gives_the_same_numbers(smoke_run):
    root, cfg, first, _ = smoke_run
    again = run_study(STUDY, root, cfg, say=_quiet, report=False)
    assert again["run_dir"] == first["run_dir"]
    assert again["stages"] and all(s["reused"] for s in again["stages"])
    assert again["models"] == first["models"]


def test_rebuilding_the_report_computes_nothing(smoke_run, monkeypatch):
    rebuild_computing_nothing(
        smoke_run[3],
        monkeypatch,
        (
            "basinscope.analyses:random_surface",
            "basinscope.analyses.hessian_map:curvature_map",
            "basinscope.analyses.hessian:hessian_analysis",
            "basinscope.engine:evaluate_model",
            "basinscope.analyses.ibp:ibp_train",
            "basinscope.analyses.ibp:certified_accuracy",
        ),
        FIGURES,
    )


def test_a_new_surface_grid_recomputes_only_the_surfaces(smoke_run):
    root, _, first, _ = smoke_run
    cfg = make_config(STUDY, smoke=True, sets=["grid=5"])
    out = run_study(STUDY, root, cfg, say=_quiet, report=False)
    for s in out["stages"]:
        assert s["reused"] == (not s["stage"].startswith("surface-")), s
    for name in ("standard", "ibp"):
        assert out["models"][name]["lambda_max"] == first["models"][name]["lambda_max"]


def test_invalid_settings_are_refused_clearly():
    with pytest.raises(BasinscopeError, match="warmup \\+ ramp"):
        make_config(STUDY, sets=["steps=10", "warmup=5", "ramp=10"])
    with pytest.raises(BasinscopeError, match="epsilons"):
        make_config(STUDY, sets=["epsilons=[0.1, 2.0]"])
    with pytest.raises(BasinscopeError, match="eps_train"):
        make_config(STUDY, sets=["eps_train=0"])


def test_the_report_opens_in_headless_chromium_without_errors(smoke_run):
    opens_in_chromium(smoke_run[3] / "report.html", figures=len(FIGURES))
