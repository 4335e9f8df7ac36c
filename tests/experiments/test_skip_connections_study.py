"""The skip-connections study (Li et al. 2018, Fig. 5-7): smoke run, reuse, report rebuild.

What the study shows is checked on the quick configuration in the ``science`` tier
(tests/experiments/test_studies_science.py)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import make_config, run_study
from study_checks import opens_in_chromium, rebuild_computing_nothing

STUDY = "skip-connections"
FIGURES = ("surfaces", "surfaces_3d_resnet8", "curvature_maps", "summary_vs_depth")
RATIOS = (
    "ratio_center",
    "surface_nonconvex_fraction",
    "map_ratio_mean",
    "map_ratio_median",
    "map_convex_fraction",
    "map_converged_fraction",
    "train_accuracy",
    "test_accuracy",
)


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("skip-connections")
    cfg = make_config(STUDY, smoke=True)
    results = run_study(STUDY, root, cfg, say=_quiet)
    return root, cfg, results, Path(results["run_dir"])


def _numbers(row):
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_results_hold_every_number_with_its_definition(quick_run):
    _, cfg, _, run_dir = quick_run
    saved = json.loads((run_dir / "result.json").read_text())
    rows, defs = saved["models"], saved["definitions"]
    assert {(r["depth"], r["skip"]) for r in rows} == {
        (d, s) for d in cfg.depths for s in (True, False)
    }
    for row in rows:
        for key, value in _numbers(row).items():
            assert defs.get(key), f"{key} has no definition"
            assert math.isfinite(value), (row["label"], key, value)
        for key in RATIOS:
            if row[key] is not None:
                assert 0.0 <= row[key] <= 1.0, (row["label"], key, row[key])
        assert row["lambda_min"] <= row["lambda_max"]
        has_map = row["depth"] == max(cfg.depths)
        assert (row["map_ratio_mean"] is not None) == has_map
        assert ("map" in row["stages"]) == has_map
    assert "BatchNorm" in saved["policies"]["batchnorm"]


def test_figures_and_a_self_contained_report(quick_run):
    _, cfg, results, run_dir = quick_run
    for stem in FIGURES:
        for ext in cfg.figure_formats:
            assert (run_dir / "figures" / f"{stem}.{ext}").stat().st_size > 1000, (stem, ext)
    html = (run_dir / "report.html").read_text()
    assert Path(results["report"]) == run_dir / "report.html"
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == len(FIGURES)
    assert not re.search(r'<script[^>]+src="https?://', html)
    assert not re.search(r'<img[^>]+src="https?://', html)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html, flags=re.S)
    assert captions and all("BatchNorm" in c for c in captions)
    assert all("filter-normalized" in c for c in captions)


def test_surface_and_map_share_the_plane(quick_run):
    from safetensors.torch import load_file

    root, cfg, results, _ = quick_run
    deep = next(r for r in results["models"] if r["depth"] == max(cfg.depths) and not r["skip"])
    a, b = (
        load_file(str(root / "stages" / deep["stages"][k] / "tensors" / "directions.safetensors"))
        for k in ("surface", "map")
    )
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_running_again_reuses_every_stage_and_gives_the_same_numbers(quick_run):
    root, cfg, first, _ = quick_run
    again = run_study(STUDY, root, cfg, say=_quiet, report=False)
    assert again["run_dir"] == first["run_dir"]
    assert again["stages"] and all(s["reused"] for s in again["stages"])
    assert [s["stage"] for s in again["stages"]] == [s["stage"] for s in first["stages"]]
    assert again["models"] == first["models"]


def test_rebuilding_the_report_computes_nothing(quick_run, monkeypatch):
    rebuild_computing_nothing(
        quick_run[3],
        monkeypatch,
        (
            "basinscope.analyses:random_surface",
            "basinscope.analyses:compute_landscape",
            "basinscope.analyses.landscape:compute_landscape",
            "basinscope.analyses.hessian_map:curvature_map",
            "basinscope.analyses.hessian:hessian_analysis",
            "basinscope.engine:evaluate_model",
            "basinscope.training:train",
        ),
        FIGURES,
        min_html=10_000,
    )


def test_a_new_surface_grid_recomputes_only_the_surfaces(quick_run):
    root, _, first, _ = quick_run
    cfg = make_config(STUDY, smoke=True, sets=["grid=5"])
    out = run_study(STUDY, root, cfg, say=_quiet, report=False)
    assert out["run_dir"] != first["run_dir"]
    for s in out["stages"]:
        assert s["reused"] == (not s["stage"].startswith("surface-")), s
    assert sum(not s["reused"] for s in out["stages"]) == len(out["models"])
    for old, new in zip(first["models"], out["models"]):
        assert new["test_accuracy"] == old["test_accuracy"]
        assert new["map_ratio_mean"] == old["map_ratio_mean"]
    saved = json.loads((Path(out["run_dir"]) / "result.json").read_text())
    assert saved["config"]["grid"] == 5


def test_invalid_settings_are_refused_clearly():
    with pytest.raises(BasinscopeError, match="6n\\+2"):
        make_config(STUDY, sets=["depths=[8, 10]"])
    with pytest.raises(BasinscopeError, match="map_depths"):
        make_config(STUDY, sets=["map_depths=[26]"])
    with pytest.raises(BasinscopeError, match="init"):
        make_config(STUDY, sets=["init=xavier"])


def test_nonconvex_fraction_of_simple_surfaces():
    from basinscope.experiments.skip_connections import nonconvex_fraction

    x = np.linspace(-1, 1, 9)
    a, b = np.meshgrid(x, x, indexing="ij")
    assert nonconvex_fraction(a**2 + 3 * b**2, x, x) == 0.0
    assert nonconvex_fraction(a**2 - b**2, x, x) == 1.0
    assert nonconvex_fraction(a * b, x, x) == 1.0


def test_the_report_opens_in_headless_chromium_without_errors(quick_run):
    opens_in_chromium(quick_run[3] / "report.html", figures=len(FIGURES))


def test_the_default_run_keeps_the_folders_it_had_before_device_and_dtype(quick_run):
    from study_devices import check_default_names

    root, _, results, _ = quick_run
    check_default_names(STUDY, root, results)


@pytest.mark.slow  # ~10 s: the smoke study again, every stage on the device string cpu:0
def test_a_run_on_another_device_computes_its_stages_there_with_the_same_numbers(quick_run):
    """``cpu:0`` is the CPU by another name: training, the evaluations, the surfaces and the
    Hessians at the solutions record it (the curvature maps run on the CPU), and the
    numbers are the default run's."""
    from study_devices import check_device_recorded

    root, _, first, _ = quick_run
    res = run_study(
        STUDY, root, make_config(STUDY, smoke=True, device="cpu:0"), say=_quiet, report=False
    )
    assert not any(r["reused"] for r in res["stages"])
    check_device_recorded(root, res, "cpu:0")

    def without_stages(rows):  # and without where each Hessian was computed
        out = [{k: v for k, v in r.items() if k != "stages"} for r in rows]
        for r in out:
            r["hessian_semantics"] = {
                k: v for k, v in r.get("hessian_semantics", {}).items() if k != "device"
            }
        return out

    assert without_stages(res["models"]) == without_stages(first["models"])
