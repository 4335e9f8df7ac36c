"""The merging study: smoke run end to end, reuse, report rebuild, settings.

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

STUDY = "merging"
FIGURES = ("accuracy", "selection", "decomposition", "plane_pre-trained", "plane_random")


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("merging")
    cfg = make_config(STUDY, smoke=True)
    results = run_study(STUDY, root, cfg, say=_quiet)
    return root, cfg, results, Path(results["run_dir"])


def test_every_merge_of_both_families_has_its_numbers(smoke_run):
    _, cfg, _, run_dir = smoke_run
    saved = json.loads((run_dir / "result.json").read_text())
    assert saved["tasks"] == list(cfg.tasks)
    rows = ["uniform", "task_arithmetic", "ties", "dare", "fisher"]
    rows += [f"subspace/{g}" for g in cfg.geometries]
    for family in ("pre-trained", "random"):
        fam = saved["families"][family]
        assert list(fam["merges"]) == rows
        for name, m in fam["merges"].items():
            assert set(m["test"]) == set(cfg.tasks)
            acc = [v["accuracy"] for v in m["test"].values()]
            assert m["test_mean_accuracy"] == pytest.approx(np.mean(acc))
            assert m["test_worst_accuracy"] == pytest.approx(min(acc))
            # matched budget: every method with a lambda scored the same candidates
            if "lam" in m["hyper"]:
                assert m["selected"] == ["lam"] and len(m["selection"]) == cfg.budget
                assert m["hyper"]["lam"] in [r["lam"] for r in m["selection"]]
            else:
                assert m["selected"] == [] and m["selection"] == []
            if name.startswith("subspace/"):  # matched rank: the number of tasks
                assert m["hyper"]["rank"] == len(cfg.tasks)
        v = fam["verdict"]
        assert v["works"] == (
            v["merged_mean_accuracy"] > v["start_mean_accuracy"]
            and v["merged_mean_accuracy"] > v["best_single_mean_accuracy"]
        )
        assert len(fam["single_test"]) == len(cfg.tasks)
        for per_task in fam["barriers"]["values"].values():
            assert all(math.isfinite(b["value"]) for b in per_task.values())
    assert ("merging works" if saved["families"]["random"]["verdict"]["works"] else "fails") in (
        saved["conclusion"]
    )
    for key in ("barrier", "merging works", "matched validation budget", "decomposition"):
        assert saved["definitions"][key]


def test_merged_points_are_the_projections_of_the_merges(smoke_run):
    """The plane's coordinates of a merge are those of θ* − θ0 on the orthonormalized
    task vectors (a merge stored in another key order projects the same)."""
    from safetensors.torch import load_file

    root, cfg, results, _ = smoke_run
    stages = root / "stages"
    fam = results["families"]["pre-trained"]
    pre = load_file(str(stages / results["pretrained"]["stage"] / "model.safetensors"))
    keys = list(pre)

    def flat(d):
        return torch.cat([d[k].double().reshape(-1) for k in keys])

    b = flat(pre)
    i, j = cfg.plane_tasks
    ti, tj = (
        flat(load_file(str(stages / fam["finetune_stages"][q] / "model.safetensors"))) - b
        for q in (i, j)
    )
    e1 = ti / ti.norm()
    e2 = tj - (tj @ e1) * e1
    e2 = e2 / e2.norm()
    merged = load_file(str(stages / fam["stage"] / "merged-uniform.safetensors"))
    d = flat(merged) - b
    x, y = float(d @ e1), float(d @ e2)
    off = float((d - x * e1 - y * e2).norm())
    assert fam["plane"]["merged_points"]["uniform"] == pytest.approx([x, y, off], abs=1e-5)


def test_figures_and_a_self_contained_report(smoke_run):
    _, cfg, results, run_dir = smoke_run
    for stem in FIGURES:
        for ext in cfg.figure_formats:
            assert (run_dir / "figures" / f"{stem}.{ext}").stat().st_size > 1000, (stem, ext)
    html = (run_dir / "report.html").read_text()
    assert Path(results["report"]) == run_dir / "report.html"
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == len(FIGURES)
    assert not re.search(r'<(script|img)[^>]+src="https?://', html)
    assert "Entezari" in html or "Frankle" in html  # the barrier's named definition
    assert "merging works" in html or "merging fails" in html


def test_running_again_reuses_every_stage_and_gives_the_same_numbers(smoke_run):
    root, cfg, first, _ = smoke_run
    again = run_study(STUDY, root, cfg, say=_quiet, report=False)
    assert again["run_dir"] == first["run_dir"]
    assert again["stages"] and all(s["reused"] for s in again["stages"])
    assert [s["stage"] for s in again["stages"]] == [s["stage"] for s in first["stages"]]
    assert again["families"] == first["families"]
    assert again["conclusion"] == first["conclusion"]


def test_a_new_plane_grid_recomputes_only_the_planes(smoke_run):
    root, _, first, _ = smoke_run
    out = run_study(
        STUDY, root, make_config(STUDY, smoke=True, sets=["grid=4"]), say=_quiet, report=False
    )
    assert out["run_dir"] != first["run_dir"]
    for s in out["stages"]:
        assert s["reused"] == (not s["stage"].startswith("merge-plane-")), s
    for f in ("pre-trained", "random"):
        assert out["families"][f]["merges"] == first["families"][f]["merges"]


def test_rebuilding_the_report_computes_nothing(smoke_run, monkeypatch):
    rebuild_computing_nothing(
        smoke_run[3],
        monkeypatch,
        (
            "basinscope.analyses.merging:merge_all",
            "basinscope.analyses.merging:merge_decomposition",
            "basinscope.analyses.merging:merge_plane",
            "basinscope.analyses.barrier:barrier",
            "basinscope.engine:evaluate_model",
            "basinscope.training:train",
        ),
        FIGURES,
    )


@pytest.mark.parametrize(
    "name, kind, arg",
    [
        ("rot30", "rot", 30.0),
        ("rot-45", "rot", -45.0),
        ("block4", "block", 4),
        ("noise0.3", "noise", 0.3),
        ("labels0-4", "labels", (0, 1, 2, 3, 4)),
        ("labels7_1_3", "labels", (1, 3, 7)),
    ],
)
def test_task_names(name, kind, arg):
    from basinscope.experiments.merging import parse_task

    assert parse_task(name) == (kind, arg)


def test_task_splits_are_shifted_and_disjoint():
    from basinscope.data.shifts import block_shuffle
    from basinscope.experiments.merging import source_splits, task_data

    cfg = make_config(STUDY, sets=['tasks=["block4", "noise0.5", "labels0-4"]'])
    source = source_splits(cfg)
    train, val, test = source
    assert len(train) + len(val) == 1347 and len(val) == cfg.val_examples and len(test) == 450
    block, noise, labels = task_data(cfg, source)
    # one tile permutation defines the block task on every split
    assert torch.equal(block.val.x, block_shuffle(val.x, 4, cfg.block_seed))
    assert torch.equal(block.test.x, block_shuffle(test.x, 4, cfg.block_seed))
    # fresh noise per split; the names say what each holds
    assert not torch.equal(noise.val.x - val.x, (noise.train.x - train.x)[: len(val)])
    assert len({noise.train.name, noise.val.name, noise.test.name}) == 3
    assert set(labels.test.y.tolist()) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize(
    "item, message",
    [
        ('tasks=["rot30"]', r"at least two target distributions"),
        ('tasks=["rot30", "spin4"]', r"task 'spin4': expected one of rot<degrees>"),
        ('tasks=["rot30", "block3"]', r"task 'block3' \(the 8x8 digits are cut into tiles"),
        ('tasks=["rot30", "rot30"]', r"each task may appear once"),
        ("plane_tasks=[0, 0]", r"plane_tasks \[0, 0\]: expected two different task indices"),
        ("plane_tasks=[0, 9]", r"plane_tasks must be <= 4 \(there are 5 tasks\), got 9"),
        ('methods=["soup"]', r"methods \['soup'\]: expected a non-empty list"),
        ("rank=9", r"rank must be <= 5 \(the 5 task vectors span at most 5\), got 9"),
        ('curvature="exact"', r"curvature 'exact': expected one of ggn"),
    ],
)
def test_invalid_settings_are_refused_clearly(item, message):
    with pytest.raises(BasinscopeError, match=message):
        make_config(STUDY, sets=[item])


def test_the_report_opens_in_headless_chromium_without_errors(smoke_run):
    opens_in_chromium(smoke_run[3] / "report.html", figures=len(FIGURES))
