"""The minefield study (Huang et al. 2019, Fig. 1): smoke run, reuse, data split, report.

What the study shows is checked on the quick configuration in the ``science`` tier, at the
end of this file."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import make_config, run_study
from study_checks import opens_in_chromium, rebuild_computing_nothing

STUDY = "minefield"


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("minefield")
    cfg = make_config(STUDY, smoke=True)
    results = run_study(STUDY, root, cfg, say=_quiet)
    return root, cfg, results, Path(results["run_dir"])


def test_every_minimum_has_its_numbers_and_their_definitions(smoke_run):
    _, cfg, _, run_dir = smoke_run
    saved = json.loads((run_dir / "result.json").read_text())
    defs, rows = saved["definitions"], [saved["solution"], *saved["minima"]]
    assert len(saved["minima"]) == len(cfg.starts) * cfg.repeats
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float):
                assert defs.get(key), f"{key} has no definition"
                assert math.isfinite(value), (row["label"], key, value)
        for key in ("train_accuracy", "test_accuracy", "poison_accuracy"):
            assert 0.0 <= row[key] <= 1.0
    steps = saved["maps"]["steps"]
    assert steps[0] == 0 and steps[-1] == cfg.steps
    for row, dists in zip(saved["minima"], saved["distances"], strict=True):
        assert len(dists) == len(steps)
        assert row["distance_to_path"] == min(dists) <= row["distance_to_start"]
        assert row["relative_distance_to_path"] == pytest.approx(
            row["distance_to_path"] / saved["maps"]["path_length"]
        )
        assert row["start_step"] in steps
    n = len(steps) + len(saved["minima"])
    assert len(saved["maps"]["pca"]["alpha"]) == len(saved["maps"]["tsne"]["x"]) == n
    assert len(saved["lines"]) == len(saved["minima"])
    assert "BatchNorm" in saved["policies"]["batchnorm"]


def test_the_poison_set_is_disjoint_from_the_training_and_test_digits():
    from basinscope.data import load_digits
    from basinscope.experiments.minefield import make_splits

    cfg = make_config(STUDY, smoke=True)
    s = make_splits(cfg)
    train_idx, poison_idx = set(s["indices"]["train"]), set(s["indices"]["poison"])
    assert not train_idx & poison_idx
    assert len(train_idx | poison_idx) == len(load_digits("train"))
    assert len(s["poison"]) == cfg.poison_examples
    # no poison image is a training or a test image
    for other in (s["train"], s["test"]):
        eq = (s["poison"].x.flatten(1)[:, None, :] == other.x.flatten(1)[None, :, :]).all(-1)
        assert not eq.any()
    # every poison label is wrong, and the objective's data marks the poison by label + 10
    assert (s["poison"].y != s["poison_true"].y).all()
    assert torch.equal(s["mixed"].y[len(s["train"]) :], s["poison"].y + 10)
    assert torch.equal(s["mixed"].y[: len(s["train"])], s["train"].y)


def test_the_poisoned_loss_weights_the_poison_examples():
    import torch.nn.functional as F

    from basinscope.experiments.minefield import PoisonedCrossEntropy

    pred = torch.randn(4, 10)
    y = torch.tensor([1, 2, 13, 17])
    got = PoisonedCrossEntropy(2.5)(pred, y)
    ce = F.cross_entropy(pred, torch.tensor([1, 2, 3, 7]), reduction="none")
    assert torch.allclose(got, ce * torch.tensor([1.0, 1.0, 2.5, 2.5]))


def test_figures_and_a_self_contained_report(smoke_run):
    from basinscope.experiments.minefield_report import FIGURES

    _, cfg, results, run_dir = smoke_run
    for stem in FIGURES:
        for ext in cfg.figure_formats:
            assert (run_dir / "figures" / f"{stem}.{ext}").stat().st_size > 1000, (stem, ext)
    html = (run_dir / "report.html").read_text()
    assert Path(results["report"]) == run_dir / "report.html"
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == len(FIGURES)
    assert not re.search(r'<(script|img)[^>]+src="https?://', html)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html, flags=re.S)
    assert len(captions) == len(FIGURES) and all("BatchNorm" in c for c in captions)
    assert "What the numbers show" in html


def test_running_again_reuses_every_stage_and_gives_the_same_numbers(smoke_run):
    root, cfg, first, _ = smoke_run
    again = run_study(STUDY, root, cfg, say=_quiet, report=False)
    assert again["run_dir"] == first["run_dir"]
    assert again["stages"] and all(s["reused"] for s in again["stages"])
    assert [s["stage"] for s in again["stages"]] == [s["stage"] for s in first["stages"]]
    for key in ("solution", "minima", "path", "maps", "lines", "verdict"):
        assert again[key] == first[key], key


def test_a_new_line_grid_recomputes_only_the_lines(smoke_run):
    root, _, first, _ = smoke_run
    out = run_study(
        STUDY,
        root,
        make_config(STUDY, smoke=True, sets=["line_points=7"]),
        say=_quiet,
        report=False,
    )
    assert out["run_dir"] != first["run_dir"]
    for s in out["stages"]:
        assert s["reused"] == (not s["stage"].startswith("line-")), s
    assert out["minima"][0]["test_accuracy"] == first["minima"][0]["test_accuracy"]
    assert len(out["lines"][0]["alpha"]) == 7


def test_rebuilding_the_report_computes_nothing(smoke_run, monkeypatch):
    rebuild_computing_nothing(
        smoke_run[3],
        monkeypatch,
        (
            "basinscope.analyses:interpolate",
            "basinscope.analyses:adaptive_sharpness",
            "basinscope.analyses:filter_normalized_sharpness",
            "basinscope.analyses.hessian:hessian_analysis",
            "basinscope.engine:evaluate_model",
            "basinscope.training:train",
        ),
        ("tsne_map",),
    )


def test_the_verdict_follows_the_numbers():
    from basinscope.experiments.minefield import verdict
    from basinscope.experiments.minefield_report import findings

    def row(train, test, sharp, rel=0.5):
        keys = ("sharpness_adaptive", "sharpness_filter_normalized", "lambda_max")
        return {
            "train_accuracy": train,
            "test_accuracy": test,
            **dict.fromkeys(keys, sharp),
            "relative_distance_to_path": rel,
            "distance_to_path": rel * 10,
        }

    maps = {"init_to_solution": 8.0, "path_length": 10.0}
    sol = row(1.0, 0.95, 1.0)
    path = [{"step": 0, "train_accuracy": 0.1, "test_accuracy": 0.1}]
    path.append({"step": 10, "train_accuracy": 1.0, "test_accuracy": 0.95})
    v = verdict(sol, [row(1.0, 0.6, 3.0), row(0.995, 0.7, 2.0)], path, 0.99, maps)
    assert (v["bad_fit"], v["bad_below_sgd"], v["sgd_lands_in_one"]) == (2, 2, False)
    assert all(s["sharper"] == 2 for s in v["sharper"].values())
    assert v["within_one_path_length"] == 2 and v["closer_than_init_to_solution"] == 2
    text = findings(v)
    assert "SGD never lands in one" in text and "By every measure" in text
    # an iterate that fits and tests as badly as a bad minimum: SGD landed in one
    path.append({"step": 20, "train_accuracy": 1.0, "test_accuracy": 0.65})
    v = verdict(sol, [row(1.0, 0.6, 0.5, rel=2.0), row(1.0, 0.7, 0.5, rel=2.0)], path, 0.99, maps)
    assert v["sgd_lands_in_one"] and v["landed_steps"] == [20]
    assert all(s["sharper"] == 0 for s in v["sharper"].values())
    text = findings(v)
    assert "SGD lands" in text and "By no measure" in text and "none is close" in text


@pytest.mark.parametrize(
    "item, message",
    [
        ("starts=[0.5, 1.5]", "starts"),
        ("starts=[]", "starts is empty"),
        ("poison_examples=1300", "poison_examples"),
        ('poison_optimizer="lbfgs"', "poison_optimizer"),
        ("line_range=[1, 0]", "line_range"),
        ("hidden=[]", "hidden is empty"),
    ],
)
def test_invalid_settings_are_refused_clearly(item, message):
    with pytest.raises(BasinscopeError, match=message):
        make_config(STUDY, sets=[item])


def test_the_report_opens_in_headless_chromium_without_errors(smoke_run):
    from basinscope.experiments.minefield_report import FIGURES

    opens_in_chromium(smoke_run[3] / "report.html", figures=len(FIGURES))


@pytest.mark.science
def test_bad_minima_fit_the_training_digits_and_test_clearly_worse_than_sgd(tmp_path):
    """On the quick configuration (3 bad minima, from steps 150, 300 and 600 of SGD's 600):
    every bad minimum fits the training digits (training accuracy 0.991-0.993 measured) and
    tests far below SGD's solution (0.79-0.81 vs 0.958), while every SGD iterate that fits
    the training digits tests above every bad minimum (>= 0.949). Also measured but not
    asserted, as a property of this recipe rather than a robust finding: every bad minimum
    is sharper than SGD's solution by all three measures (ratios 20-90, but the bad minima
    are less converged: training loss 0.32-0.34 vs 0.0026), and they lie about 1.15 path
    lengths from SGD's path (not close on the scale of its travel)."""
    cfg = make_config(STUDY, quick=True)
    res = run_study(STUDY, tmp_path, cfg, say=_quiet, report=False)
    sol, v = res["solution"], res["verdict"]
    assert sol["train_accuracy"] >= 0.99 and sol["test_accuracy"] > 0.9
    for m in res["minima"]:
        assert m["train_accuracy"] >= 0.98
        assert m["test_accuracy"] < sol["test_accuracy"] - 0.08
        assert m["poison_accuracy"] > 0.2  # the wrong labels are (partly) memorized
    assert v["sgd_lands_in_one"] is False and v["iterates_fitting"]
