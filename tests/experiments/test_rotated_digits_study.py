"""The rotated-digits study end to end in its smoke version: stages, reuse, resume, report.

The smoke configuration (one angle, FT and LP, a few steps, 3x3 grids) exercises every
stage and figure in seconds; its numbers mean nothing. What the study shows is checked on
the quick configuration in the ``science`` tier (tests/experiments/test_studies_science.py).
"""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from basinscope.experiments import rotated_digits
from basinscope.experiments.registry import make_config, rebuild_report, run_study

NAME = "rotated-digits"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    cfg = make_config(NAME, smoke=True)
    return root, cfg, run_study(NAME, root, cfg, say=lambda m: None)


def _run(root, cfg):
    """Run the study again without drawing the report (the tests of the report draw it)."""
    return run_study(NAME, root, cfg, say=lambda m: None, report=False)


def test_every_stage_ran_and_the_results_hold_every_analysis(quick):
    _, cfg, res = quick
    assert not any(r["reused"] for r in res["stages"])
    kinds = {r["stage"].split("-")[0] for r in res["stages"]}
    assert kinds == {
        "pretrain",
        "finetune",
        "line",
        "surface",
        "connectivity",
        "similarity",
        "criticality",
        "hessian",
    }
    n_runs = len(cfg.strategies) + 1  # every strategy from the pre-trained start, FT from random
    assert sum(r["stage"].startswith("finetune") for r in res["stages"]) == (
        len(cfg.angles) * n_runs * cfg.copies
    )
    assert len(res["summary"]) == len(cfg.angles) * n_runs
    rows = {(r["angle"], r["start"], r["strategy"]): r for r in res["summary"]}
    big = max(cfg.angles)
    # linear probing leaves the feature layers alone: their CKA to the pre-trained model is 1
    lp = res["angles"][f"{big:g}"]["similarity"]["pre-trained/lp"]
    assert lp["cka"]["tgt_test"]["conv1"] == pytest.approx(1.0, abs=1e-9)
    assert lp["distance"]["per_module"]["conv1"]["l2"] == 0.0
    # random-start rows carry no basin verdict; curvature is positive and finite
    assert rows[(big, "random", "FT")]["in_pretrained_basin"] is None
    for r in res["summary"]:
        assert np.isfinite(r["lambda_max"]) and np.isfinite(r["trace"])
    for term in ("barrier", "stayed in the pre-trained basin", "lambda_max", "cka"):
        assert res["definitions"][term]


def test_result_json_holds_every_number_and_each_barrier_names_its_definition(quick):
    root, cfg, res = quick
    saved = json.loads((root / f"{NAME}-{_hash(cfg)}" / "result.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(res["summary"]))
    conn = saved["angles"][f"{max(cfg.angles):g}"]["connectivity"]["pre-trained/ft"]
    for b in (conn["copies"], conn["path_tgt_test"], conn["path_src_test"]):
        assert b["definition"] == cfg.barrier_definition and b["metric"] == cfg.barrier_metric
        assert b["alphas"][0] == 0.0 and b["alphas"][-1] == 1.0
    assert saved["config"]["angles"] == list(cfg.angles)


def test_the_run_folder_and_every_stage_folder_load_as_typed_results(quick):
    """Format 2 everywhere: basinscope.load returns the study's StudyResult and each stage's
    result (the criticality stage stores the CriticalityResult itself)."""
    import basinscope
    from basinscope.experiments.results import StageResult, StudyResult

    root, cfg, res = quick
    run_dir = root / f"{NAME}-{_hash(cfg)}"
    study = basinscope.load(run_dir)
    assert isinstance(study, StudyResult) and study.study == NAME
    assert study.results["summary"] == json.loads(json.dumps(res["summary"]))
    assert study.to_dict() == json.loads((run_dir / "result.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["kind"] == "study" and manifest["status"] == "complete"
    assert manifest["spec"] == {"study": NAME, "config": json.loads(json.dumps(res["config"]))}
    kinds = {}
    for r in res["stages"]:
        folder = root / r["path"]
        assert folder.parent == root / "stages" and (folder / "manifest.json").is_file()
        assert not (folder / "settings.json").exists()
        kinds[r["stage"].split("-")[0]] = basinscope.load(folder)
    assert isinstance(kinds["connectivity"], StageResult)
    assert kinds["connectivity"].value == res["angles"]["60"]["connectivity"]
    assert kinds["criticality"].kind == "criticality"
    assert kinds["pretrain"].kind == "train" and kinds["surface"].kind == "landscape"


def test_the_report_is_self_contained_and_has_every_figure(quick):
    root, cfg, _ = quick
    run_dir = root / f"{NAME}-{_hash(cfg)}"
    html = (run_dir / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r'<(script|img)[^>]+src="https?://', html)
    stems = ["accuracy_vs_angle", "paths", "barriers", "distance_and_cka", "criticality"]
    stems += ["curvature"] + [f"surfaces_angle{a:g}" for a in cfg.angles]
    for stem in stems:
        for ext in cfg.figure_formats:
            assert (run_dir / "figures" / f"{stem}.{ext}").stat().st_size > 1000, stem
    assert sorted(p.suffix for p in (run_dir / "figures").iterdir()) == [".png"] * len(stems)
    assert html.count('class="static"') == len(stems)
    assert html.count('class="interactive"') == 2
    # each figure says how it was measured
    for caption in re.findall(r"<figcaption>(.*?)</figcaption>", html, re.S):
        assert "BatchNorm" in caption, caption[:80]


def test_every_curve_the_report_draws_from_a_stage_is_in_result_json(quick):
    import basinscope

    root, cfg, _ = quick
    saved = json.loads((root / f"{NAME}-{_hash(cfg)}" / "result.json").read_text())
    figures = saved["figures"]
    for a, angle in saved["angles"].items():
        for strategy in cfg.strategies:
            curve = figures["paths"][a][strategy]
            ds = basinscope.load(root / "stages" / angle["lines"][strategy]["stage"]).dataset
            assert curve["alpha"] == ds.alpha.values.tolist() and len(curve["alpha"]) == (
                cfg.line_points
            )
            for var in ("source_loss", "target_loss", "source_accuracy", "target_accuracy"):
                assert curve[var] == ds[var].values.tolist()
        for start in ("random", "pre-trained"):
            trajs = figures["trajectories"][a][start]
            assert [t["label"] for t in trajs][:2] == ["copy 0 (SGD seed 0)", "copy 1 (SGD seed 1)"]
            assert all(len(t["alpha"]) == len(t["beta"]) == len(t["steps"]) > 1 for t in trajs)


def test_the_summary_table_fits_the_page_and_formats_its_numbers(quick):
    root, cfg, _ = quick
    html = (root / f"{NAME}-{_hash(cfg)}" / "report.html").read_text()
    tables = re.findall(r'<div class="table"><table>(.*?)</table></div>', html, re.S)
    summary = tables[0]
    assert "significant digits" in summary and "shown as 0" in summary
    cells = re.findall(r"<td>(.*?)</td>", summary)
    assert cells and "None" not in cells and "nan" not in cells
    assert "—" in cells  # the random start's undefined path numbers
    for c in cells:  # 3 significant digits, and never rounding noise such as 6.9e-18
        if re.fullmatch(r"-?[0-9.]+(e[-+][0-9]+)?", c):
            mantissa = c.split("e")[0].lstrip("-").replace(".", "").lstrip("0")
            assert len(mantissa) <= 3, c
            assert not re.search(r"e-(0[7-9]|[1-9][0-9])", c), c
    assert "overflow-x:auto" in html


def test_the_report_opens_in_headless_chromium_without_errors(quick):
    from browser import check_report, chromium_path

    if chromium_path() is None and os.environ.get("CI") != "true":
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium)")
    root, cfg, _ = quick
    out = check_report(root / f"{NAME}-{_hash(cfg)}" / "report.html", timeout=120)
    assert out["console_errors"] == []
    assert out["n_figures"] == 6 + len(cfg.angles) + 2
    bad = [f for f in out["figures"] if not f["ok"]]
    assert not bad, bad


def test_running_again_reuses_every_stage_and_gives_the_same_numbers(quick):
    root, cfg, first = quick
    again = _run(root, cfg)
    assert all(r["reused"] for r in again["stages"])
    assert [r["stage"] for r in again["stages"]] == [r["stage"] for r in first["stages"]]
    assert again["summary"] == first["summary"]
    assert again["angles"] == first["angles"]


def test_a_changed_setting_recomputes_only_what_depends_on_it(quick):
    root, cfg, first = quick
    changed = make_config(NAME, smoke=True, sets=[f"grid={cfg.grid + 2}"])
    res = _run(root, changed)
    computed = {r["stage"].split("-")[0] for r in res["stages"] if not r["reused"]}
    assert computed == {"surface"}
    assert res["summary"] == first["summary"]
    assert res["run_dir"] != first["run_dir"]  # a new run folder for the new configuration
    # a fine-tuning setting recomputes fine-tuning and everything after it, not pre-training
    changed = make_config(NAME, smoke=True, sets=["finetune_lr=0.03"])
    res = _run(root, changed)
    reused = {r["stage"].split("-")[0] for r in res["stages"] if r["reused"]}
    assert "pretrain" in reused
    assert not any(
        r["reused"]
        for r in res["stages"]
        if r["stage"].startswith(("line", "connectivity", "similarity"))
    )
    # FT from a random start uses its own learning rate: its stages are reused
    assert any(r["reused"] for r in res["stages"] if r["stage"].startswith("finetune"))


def test_an_interrupted_study_resumes_with_the_finished_stages(quick, tmp_path, monkeypatch):
    root, cfg, first = quick
    # copy the pre-training, the fine-tuning and the landscapes only, as if interrupted there
    fresh = tmp_path / "runs"
    (fresh / "stages").mkdir(parents=True)
    n_keep = 1 + (len(cfg.strategies) + 1) * cfg.copies + 4
    kept = [r["path"] for r in first["stages"][:n_keep]]
    assert {Path(p).name.split("-")[0] for p in kept[-4:]} == {"line", "surface"}
    for p in kept:
        shutil.copytree(root / p, fresh / p)
    # and interrupt the resumed run once more, after its connectivity stage
    real = rotated_digits.cached_stage

    def interrupt(*args, **kwargs):
        if args[1] == "similarity":
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rotated_digits, "cached_stage", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(fresh, cfg)
    monkeypatch.setattr(rotated_digits, "cached_stage", real)
    res = _run(fresh, cfg)
    reused = [r["path"] for r in res["stages"] if r["reused"]]
    assert set(kept) <= set(reused)
    # what the interrupted run finished is reused too (its connectivity stage)
    assert len(reused) > len(kept)
    assert res["summary"] == first["summary"]


def test_the_report_is_rebuilt_from_stored_results_without_computing(quick, monkeypatch):
    root, cfg, _ = quick
    run_dir = root / f"{NAME}-{_hash(cfg)}"

    def forbidden(*a, **k):
        raise AssertionError("the report must not recompute")

    monkeypatch.setattr(rotated_digits, "run", forbidden)
    monkeypatch.setattr("basinscope.analyses.interpolate", forbidden)
    (run_dir / "report.html").unlink()
    path = rebuild_report(run_dir)
    assert path == run_dir / "report.html" and path.stat().st_size > 100_000


def test_cli_study_list_show_config_and_report(cli, quick):
    root, cfg, _ = quick
    out = cli("study", "--list")
    assert out.code == 0 and "rotated-digits" in out.out and "skip-connections" in out.out
    out = cli("study", NAME, "--quick", "--show-config", "--set", "grid=9")
    assert "grid = 9" in out.out and "angles = [0.0, 60.0]" in out.out
    out = cli("study", NAME, "--smoke", "--show-config")
    assert f"grid = {cfg.grid}" in out.out and "angles = [60.0]" in out.out
    # `demo --smoke` is the rotated-digits study: with every stage stored it reuses them all
    out = cli("demo", "--smoke", "--out", root, "--json", "--no-progress")
    assert out.code == 0, out.err
    res = json.loads(out.out)
    assert res["study"] == NAME and all(r["reused"] for r in res["stages"])
    out = cli("report", res["run_dir"])
    assert out.code == 0 and "report.html" in out.err


def _hash(cfg):
    from basinscope.experiments.registry import config_hash

    return config_hash(NAME, cfg)


def test_stages_of_different_data_never_share_a_folder(quick):
    # 0 and 90 degrees have the same pixel sums; each angle's Hessian of the pre-trained
    # model must still be its own stage
    root, _, _ = quick
    res = _run(root, make_config(NAME, smoke=True, sets=["angles=[0, 90]"]))
    names = [r["stage"] for r in res["stages"]]
    assert len(names) == len(set(names))
    curv = [res["angles"][a]["curvature"]["pre-trained (start)"] for a in ("0", "90")]
    assert curv[0]["lambda_max"] != curv[1]["lambda_max"]
    # at 0 degrees the target is the source
    same = next(r for r in res["summary"] if r["angle"] == 0 and r["strategy"] == "FT")
    assert same["target_acc_before"] == same["source_acc_before"]


def test_the_default_run_keeps_the_folders_it_had_before_device_and_dtype(quick):
    from study_devices import check_default_names

    root, _, res = quick
    check_default_names(NAME, root, res)


@pytest.mark.slow  # ~10 s: the smoke study again, every stage on the device string cpu:0
def test_a_run_on_another_device_computes_its_stages_there_with_the_same_numbers(quick):
    """``cpu:0`` is the CPU by another name: every stage that runs on the study's device
    records it (fine-tuning and CKA included), and the numbers are the default run's."""
    from study_devices import check_device_recorded

    root, _, first = quick
    res = _run(root, make_config(NAME, smoke=True, device="cpu:0"))
    check_device_recorded(root, res, "cpu:0")
    # every stage computes on the device, fine-tuning included: none is reused
    assert not any(r["reused"] for r in res["stages"])
    assert res["summary"] == first["summary"]
    drop = ("stage",)
    assert {k: v for k, v in res["pretrained"].items() if k not in drop} == {
        k: v for k, v in first["pretrained"].items() if k not in drop
    }
