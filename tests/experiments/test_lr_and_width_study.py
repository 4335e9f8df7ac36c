"""The lr-and-width study (Li, Wei & Ma 2019): smoke run end to end, reuse, report rebuild,
the report in headless Chromium.

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
from basinscope.experiments.registry import make_config, run_study
from study_checks import opens_in_chromium, rebuild_computing_nothing

STUDY = "lr-and-width"
RUNS = ("small", "large", "annealed")
FIGURES = (
    "accuracy_over_training",
    "tracked",
    *(f"tracking_{r}" for r in RUNS),
    "paths",
    "surfaces",
    "sharpness",
)


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lr-and-width")
    cfg = make_config(STUDY, smoke=True)
    results = run_study(STUDY, root, cfg, say=_quiet)
    return root, cfg, results, Path(results["run_dir"])


def _numbers(row):
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_results_hold_every_number_with_its_definition(smoke_run):
    _, cfg, _, run_dir = smoke_run
    saved = json.loads((run_dir / "result.json").read_text())
    sol, defs = saved["solutions"], saved["definitions"]
    assert set(sol) == set(RUNS)
    for r, row in sol.items():
        for key, value in _numbers(row).items():
            if key in ("lr",):
                continue
            assert defs.get(key), f"{key} has no definition"
            assert value is None or math.isfinite(value), (r, key, value)
        for key in ("test_accuracy", "patch_only_accuracy", "train_accuracy"):
            assert 0.0 <= row[key] <= 1.0
        assert row["lambda_max"] > 0 and row["weight_norm"] > 0
        assert set(row["stages"]) == {"train", "solution", "surface"}
    assert [(p["a"], p["b"]) for p in saved["paths"]] == [
        ("small", "large"),
        ("small", "annealed"),
        ("large", "annealed"),
    ]
    for p in saved["paths"]:
        assert p["train_loss_barrier"] >= 0 and defs["train_loss_barrier"]
    # the learning rates of the three runs, the same steps and seeds
    assert sol["small"]["lr"] == cfg.small_lr and sol["large"]["lr"] == cfg.large_lr
    f = saved["findings"]
    assert set(f["large_flatter"]) == {
        "sharpness_filter_normalized",
        "sharpness_adaptive",
        "lambda_max",
    }
    assert isinstance(f["annealed_learned_both"], bool)
    assert "BatchNorm" in saved["policies"]["batchnorm"]


def test_each_training_stage_is_a_tracking_with_the_patch_evaluations(smoke_run):
    import basinscope as bs
    from basinscope.analyses.tracking import Tracking
    from basinscope.experiments.lr_and_width import tracked_steps

    root, cfg, results, _ = smoke_run
    tracks = {r: bs.load(root / "stages" / results["tracking"][r]) for r in RUNS}
    for r, t in tracks.items():
        assert isinstance(t, Tracking)
        ds = t.dataset
        assert list(ds["step"].values) == tracked_steps(cfg)
        assert "train_error" in ds and "test_error" in ds and t.definition["loss"]
        for var in ("patch_only_test_error", "train_patch_only_error", "train_image_only_error"):
            assert var in ds and t.definition.get(var), (r, var)
        assert (ds["effective_lr"].values > 0).all()
        assert list(ds["layer"].values) == ["conv1", "conv2"]
    # the same steps and seeds: the annealed run is the large-LR run until it anneals
    lr = {r: tracks[r].dataset["lr"].values for r in RUNS}
    anneal = results["anneal_step"]
    steps = tracks["large"].dataset["step"].values
    assert np.all(lr["small"] == cfg.small_lr) and np.all(lr["large"] == cfg.large_lr)
    assert np.allclose(lr["annealed"], np.where(steps >= anneal, cfg.small_lr, cfg.large_lr))
    before = steps < anneal
    for var in ("weight_norm", "test_error", "train_loss"):
        a, b = tracks["large"].dataset[var].values, tracks["annealed"].dataset[var].values
        assert np.array_equal(a[before], b[before]), var


def test_figures_and_a_self_contained_report(smoke_run):
    _, cfg, results, run_dir = smoke_run
    for stem in FIGURES:
        for ext in cfg.figure_formats:
            assert (run_dir / "figures" / f"{stem}.{ext}").stat().st_size > 1000, (stem, ext)
    html = (run_dir / "report.html").read_text()
    assert Path(results["report"]) == run_dir / "report.html"
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == len(FIGURES)
    assert not re.search(r'<script[^>]+src="https?://', html)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html, flags=re.S)
    assert captions and all("BatchNorm" in c for c in captions)
    assert "ONE log colour scale" in html and "What the numbers show" in html


def test_the_surfaces_share_their_directions_seed_and_one_colour_scale(smoke_run):
    import basinscope as bs
    from basinscope.experiments.lr_and_width_report import _surfaces_figure

    root, _, results, _ = smoke_run
    surfaces = {
        r: bs.load(root / "stages" / results["solutions"][r]["stages"]["surface"]).dataset
        for r in RUNS
    }
    assert {ds.attrs.get("seed") for ds in surfaces.values()} == {0}
    fig = _surfaces_figure(surfaces)
    limits = {
        tuple(np.round(c.get_clim(), 12))
        for ax in fig.axes
        for c in ax.collections
        if c.get_array() is not None
    }
    assert len(limits) == 1  # one colour scale for the three panels (and the colour bar)


def test_running_again_reuses_every_stage_and_gives_the_same_numbers(smoke_run):
    root, cfg, first, _ = smoke_run
    again = run_study(STUDY, root, cfg, say=_quiet, report=False)
    assert again["run_dir"] == first["run_dir"]
    assert again["stages"] and all(s["reused"] for s in again["stages"])
    assert [s["stage"] for s in again["stages"]] == [s["stage"] for s in first["stages"]]
    assert again["solutions"] == first["solutions"] and again["paths"] == first["paths"]


def test_a_new_surface_grid_recomputes_only_the_surfaces(smoke_run):
    root, _, first, _ = smoke_run
    cfg = make_config(STUDY, smoke=True, sets=["span=0.5"])
    out = run_study(STUDY, root, cfg, say=_quiet, report=False)
    assert out["run_dir"] != first["run_dir"]
    for s in out["stages"]:
        assert s["reused"] == (not s["stage"].startswith("surface-")), s
    assert sum(not s["reused"] for s in out["stages"]) == len(RUNS)


def test_rebuilding_the_report_computes_nothing(smoke_run, monkeypatch):
    rebuild_computing_nothing(
        smoke_run[3],
        monkeypatch,
        (
            "basinscope.analyses:random_surface",
            "basinscope.analyses:interpolate",
            "basinscope.analyses:compute_landscape",
            "basinscope.analyses.landscape:compute_landscape",
            "basinscope.analyses.hessian:hessian_analysis",
            "basinscope.engine:evaluate_model",
            "basinscope.training:train",
        ),
        FIGURES,
        min_html=10_000,
    )


def test_invalid_settings_are_refused_clearly():
    with pytest.raises(BasinscopeError, match="large_lr"):
        make_config(STUDY, sets=["large_lr=0.001"])
    with pytest.raises(BasinscopeError, match="patch_only \\+ image_only"):
        make_config(STUDY, sets=["patch_only=0.6", "image_only=0.6"])
    with pytest.raises(BasinscopeError, match="model"):
        make_config(STUDY, sets=["model=resnet"])
    with pytest.raises(BasinscopeError, match="anneal_at"):
        make_config(STUDY, sets=["anneal_at=1.0"])


def test_path_barrier_and_first_reaching():
    from basinscope.experiments.lr_and_width import first_reaching, path_barrier

    al = np.linspace(-0.5, 1.5, 9)
    assert path_barrier(1 + (al - 0.5) ** 2, al) == 0.0  # a valley between the ends
    assert path_barrier(1 - (al - 0.5) ** 2 + 0.25 * 0, al) == pytest.approx(0.25)
    assert first_reaching([10, 20, 30], [0.1, 0.85, 0.9], 0.8) == 20
    assert first_reaching([10, 20], [0.1, 0.2], 0.8) is None


def test_the_report_opens_in_headless_chromium_without_errors(smoke_run):
    opens_in_chromium(smoke_run[3] / "report.html", figures=len(FIGURES))
