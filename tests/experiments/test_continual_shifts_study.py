"""The continual-shifts study (issue 17): smoke run end to end, reuse, equal trainable counts,
the forgetting definitions, the verdict and the report.

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
from basinscope.experiments.continual_shifts import (
    average_forgetting,
    equal_count_fraction,
    learning_accuracy,
    method_names,
    verdict,
)
from basinscope.experiments.registry import make_config, run_study
from study_checks import opens_in_chromium, rebuild_computing_nothing

STUDY = "continual-shifts"


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("continual-shifts")
    cfg = make_config(STUDY, smoke=True)
    results = run_study(STUDY, root, cfg, say=_quiet)
    return root, cfg, results, Path(results["run_dir"])


def test_every_method_has_its_matrix_forgetting_sharpness_and_barriers(smoke_run):
    root, cfg, _, run_dir = smoke_run
    saved = json.loads((run_dir / "result.json").read_text())
    t = len(cfg.angles)
    assert list(saved["continual"]) == list(method_names(cfg))
    assert {"ft-sgd", "ft-sam", "ft-cflat", "l2sp", "ewc", "trust-region", "mask"} == set(
        saved["continual"]
    )
    defs = saved["definitions"]
    for key in ("average_forgetting", "learning_accuracy", "sharpness", "barrier", "accuracy"):
        assert defs.get(key), key
    pre = saved["pretrained"]["accuracy"]
    for c in saved["continual"].values():
        assert len(c["runs"]) == cfg.seeds
        for r in c["runs"]:
            acc = r["accuracy"]
            assert len(acc) == t and all(len(row) == t for row in acc)
            assert [row[0] for row in acc] == pre  # stage 0 is the shared pre-trained model
            assert r["average_forgetting"] == pytest.approx(average_forgetting(acc))
            assert r["learning_accuracy"] == pytest.approx(learning_accuracy(acc))
            assert len(r["stages"]) == t
            for st in r["stages"][1:]:
                assert math.isfinite(st["sharpness"]) and st["sharpness"] >= 0
                assert st["barrier"] >= 0 and st["barrier_ci"][0] <= st["barrier_ci"][1]
                # each stage starts from the previous stage's folder
            folders = [st["folders"]["train"] for st in r["stages"]]
            for prev, cur in itertools.pairwise(folders):
                spec = json.loads((root / "stages" / cur / "manifest.json").read_text())["spec"]
                assert spec["start"] == prev
    tr = saved["continual"]["trust-region"]["runs"][0]["stages"][1]
    assert tr["trust_checks"] >= 1
    assert "BatchNorm" in saved["policies"]["batchnorm"]
    assert saved["verdict"]["least_forgetting"] in saved["continual"]


def test_masks_and_surgical_train_equal_counts(smoke_run):
    _, cfg, res, _ = smoke_run
    rows = res["subnetworks"]["rows"]
    assert len(rows) == len(cfg.surgical_blocks) * (1 + len(cfg.mask_signals)) * cfg.seeds
    for block in cfg.surgical_blocks:
        counts = {r["trainable_params"] for r in rows if r["budget"] == block}
        assert counts == {res["setup"]["block_params"][block]}
    summary = res["subnetworks"]["summary"][cfg.surgical_blocks[0]]["methods"]
    assert set(summary) == {"surgical", *cfg.mask_signals}
    assert summary["random"]["target_gain"]["min"] <= summary["random"]["target_gain"]["max"]


def test_equal_count_fraction_keeps_exactly_the_count():
    import torch

    from basinscope.training.constraints import top_mask

    for count, total in [(60, 5750), (120, 21410), (3488, 21410), (1, 7), (7, 7)]:
        scores = {"a": torch.rand(total - total // 3), "b": torch.rand(total // 3)}
        masks = top_mask(scores, equal_count_fraction(count, total))
        assert sum(int(m.sum()) for m in masks.values()) == count
    with pytest.raises(BasinscopeError):
        equal_count_fraction(0, 10)


def test_forgetting_and_learning_accuracy_follow_their_definitions():
    # acc[task][stage]
    acc = [[0.9, 0.8, 0.5], [0.2, 0.95, 0.6], [0.1, 0.3, 0.9]]
    # task 0: best before the last stage 0.9, final 0.5; task 1: best 0.95, final 0.6
    assert average_forgetting(acc) == pytest.approx(((0.9 - 0.5) + (0.95 - 0.6)) / 2)
    assert learning_accuracy(acc) == pytest.approx((0.95 + 0.9) / 2)
    # no forgetting when accuracies only rise
    assert average_forgetting([[0.5, 0.6], [0.1, 0.9]]) == pytest.approx(-0.1)


def _spread(*values):
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def _method(forget, learn, sharp, strategy="ft"):
    return {
        "label": strategy if strategy != "ft" else "ft (?)",
        "strategy": strategy,
        "average_forgetting": _spread(*forget),
        "average_final_accuracy": _spread(0.6, 0.6),
        "learning_accuracy": _spread(*learn),
        "mean_sharpness": _spread(*sharp),
        "mean_barrier": _spread(0.1, 0.1),
        "runs": [{"stages": [{}, {"barrier": 0.0, "barrier_ci": [0.0, 0.01]}]}] * 2,
    }


def _sub(gains):
    return {
        "block_params": 10,
        "fraction": 0.1,
        "methods": {
            s: {"target_gain": _spread(*g), "source_forgetting": _spread(0.1, 0.1)}
            for s, g in gains.items()
        },
    }


def test_the_verdict_follows_the_numbers():
    from basinscope.experiments.continual_shifts_report import findings

    cont = {
        "ft-sgd": _method((0.4, 0.5), (0.9, 0.92), (0.3, 0.35)),
        "ft-sam": _method((0.42, 0.52), (0.9, 0.9), (0.2, 0.25)),
        "ewc": _method((0.1, 0.2), (0.7, 0.75), (0.3, 0.3), "ewc"),
    }
    sub = {
        "conv1": _sub(
            {
                "surgical": (0.3, 0.4),
                "gradient": (0.5, 0.6),
                "fisher": (0.1, 0.2),
                "random": (0.25, 0.35),
            }
        )
    }
    v = verdict(cont, sub)
    assert v["least_forgetting"] == "ewc" and v["forgetting_order"][0] == "ewc"
    assert v["least_forgetting_cost"] == pytest.approx(0.91 - 0.725)
    assert v["methods"]["ewc"]["forgets_less_than_ft_clearly"]
    sam = v["sharpness_aware"]["ft-sam"]
    assert sam["flatter_clearly"] and not sam["forgets_less"]
    m = v["masks"]["conv1"]
    assert m["landscape_beating_random_clearly"] == ["gradient"]
    assert m["landscape_below_random"] == ["fisher"]
    assert not m["signals"]["surgical"]["beats_random_clearly"]
    text = findings(v)
    assert "ewc forgets least" in text and "the price of remembering" in text
    assert "Flatter solutions did not bring less forgetting" in text
    assert "beat random ones in every seed: gradient" in text
    assert "Below random on average: fisher" in text
    assert v["barrier_max"] == 0.0 and "stays linearly connected" in text


def test_running_again_reuses_every_stage_and_gives_the_same_numbers(smoke_run):
    root, cfg, first, _ = smoke_run
    again = run_study(STUDY, root, cfg, say=_quiet, report=False)
    assert again["run_dir"] == first["run_dir"]
    assert again["stages"] and all(s["reused"] for s in again["stages"])
    for key in ("continual", "subnetworks", "verdict"):
        assert again[key] == first[key], key


def test_figures_and_a_self_contained_report(smoke_run):
    from basinscope.experiments.continual_shifts_report import FIGURES

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
    assert "What the numbers show" in html and "Chaudhry et al. 2018" in html


def test_rebuilding_the_report_computes_nothing(smoke_run, monkeypatch):
    rebuild_computing_nothing(
        smoke_run[3],
        monkeypatch,
        (
            "basinscope.analyses:adaptive_sharpness",
            "basinscope.analyses.barrier:barrier",
            "basinscope.engine:evaluate_model",
            "basinscope.training:train",
            "basinscope.training.finetune:finetune",
        ),
        ("matrices",),
    )


@pytest.mark.parametrize(
    "item, message",
    [
        ("angles=[0]", "at least two tasks"),
        ("angles=[0, 30, 30]", "each angle may appear once"),
        ('strategies=["l2sp"]', "must include 'ft'"),
        ('optimizers=["adam"]', "optimizers"),
        ('mask_signals=["gradient"]', "random"),
        ('surgical_blocks=["conv9"]', "surgical_blocks"),
        ("shift_angle=0", "pre-training angle"),
        ('barrier_definition="peak"', "barrier_definition"),
    ],
)
def test_invalid_settings_are_refused_clearly(item, message):
    with pytest.raises(BasinscopeError, match=message):
        make_config(STUDY, sets=[item])


def test_the_report_opens_in_headless_chromium_without_errors(smoke_run):
    from basinscope.experiments.continual_shifts_report import FIGURES

    opens_in_chromium(smoke_run[3] / "report.html", figures=len(FIGURES))
