"""The rotated-digits study end to end in its smoke version: stages, reuse, resume, report.

The smoke configuration (one angle, FT and LP, a few steps, 3x3 grids) exercises every
stage and figure in seconds; its numbers mean nothing. What the study shows is checked on
the quick configuration in the ``science`` tier (tests/experiments/test_studies_science.py).
"""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from basinscope.experiments import rotated_digits
from basinscope.experiments.registry import make_config, rebuild_report, run_study
from study_checks import opens_in_chromium

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
        "basin",
    }
    # one Definition 3.1 basin test stage per angle and seed (every start and strategy)
    assert sum(r["stage"].startswith("basin") for r in res["stages"]) == (
        len(cfg.angles) * cfg.seeds
    )
    # every strategy from the pre-trained start, FT from the shared and the independent
    # random starts, in every seed
    n_runs = len(cfg.strategies) + 2
    assert cfg.seeds == 2
    assert sum(r["stage"].startswith("finetune") for r in res["stages"]) == (
        len(cfg.angles) * n_runs * cfg.copies * cfg.seeds
    )
    assert sum(r["stage"].startswith("pretrain") for r in res["stages"]) == cfg.seeds
    assert len(res["summary"]) == len(cfg.angles) * n_runs
    rows = {(r["angle"], r["start"], r["strategy"]): r for r in res["summary"]}
    big = max(cfg.angles)
    # linear probing leaves the feature layers alone: their CKA to the pre-trained model is 1
    lp = res["angles"][f"{big:g}"]["similarity"]["pre-trained/lp"]
    assert lp["cka"]["tgt_test"]["conv1"] == pytest.approx(1.0, abs=1e-9)
    assert lp["distance"]["per_module"]["conv1"]["l2"] == 0.0
    # random-start rows carry no basin verdict and no forgetting (N/A with the reason);
    # curvature is positive and finite
    for start in ("random", "random-independent"):
        row = rows[(big, start, "FT")]
        assert row["in_pretrained_basin"] is None and row["seeds"] == cfg.seeds
        assert row["forgetting"] is None and row["forgetting_ci"] is None
        assert row["forgetting_note"].startswith("N/A: forgetting is defined for the pre-trained")
    assert "plateau_gain" in rows[(big, "random-independent", "FT")]
    for r in res["summary"]:
        assert np.isfinite(r["lambda_max"]) and np.isfinite(r["trace"])
    for term in (
        "barrier",
        "stayed in the pre-trained basin",
        "lambda_max",
        "cka",
        "basin test (Definition 3.1)",
        "basin test vs. barrier",
    ):
        assert res["definitions"][term]
    assert res["definitions"]["path criterion"].startswith("endpoint-max: ")


def test_rows_are_means_over_seeds_with_cis_and_verdicts_follow_the_path_criterion(quick):
    from basinscope.experiments.rotated_digits import mean_ci, path_excess

    _, cfg, res = quick
    big = f"{max(cfg.angles):g}"
    per = res["angles"][big]["per_seed"]
    rows = {(r["start"], r["strategy"]): r for r in res["summary"]}
    ft = rows[("pre-trained", "FT")]
    seeds = per["pre-trained/ft"]
    assert [r["seed"] for r in seeds] == list(range(cfg.seeds))
    mean, ci = mean_ci([r["barrier_copies"] for r in seeds], 0.0)
    assert ft["barrier_copies"] == mean and ft["barrier_copies_ci"] == ci
    assert ci[0] <= mean <= ci[1] and ci[0] >= 0.0
    # each seed's verdict: the copies barrier and the path excess (over max(f(0), f(1)))
    for k, r in enumerate(seeds):
        conn = res["angles"][big]["seeds"][k]["connectivity"]["pre-trained/ft"]
        assert r["path_excess_target"] == path_excess(conn["path_tgt_test"])
        assert r["in_pretrained_basin"] == (
            max(r["barrier_copies"], r["path_excess_target"]) <= cfg.basin_epsilon
        )
        lo, hi = r["barrier_copies_ci"]  # the bootstrap CI over the test examples
        assert lo <= r["barrier_copies"] <= hi
    assert ft["seeds_in_basin"] == sum(r["in_pretrained_basin"] for r in seeds)
    assert ft["in_pretrained_basin"] == (ft["seeds_in_basin"] == cfg.seeds)
    # a monotone curve has no excess; a bump above both ends does
    curve = {"values": [0.5, 0.4, 0.3], "f0": 0.5, "f1": 0.3}
    assert path_excess(curve) == 0.0
    assert path_excess({"values": [0.3, 0.6, 0.4], "f0": 0.3, "f1": 0.4}) == pytest.approx(0.2)
    assert mean_ci([0.5]) == (0.5, None) and mean_ci([None]) == (None, None)


def test_each_basin_test_is_definition_3_1_on_the_copies_hull_with_the_barrier_threshold(quick):
    """Each seed's stage holds, per (start, strategy), basin_test on the convex hull of the
    copies with epsilon = basin_epsilon on the barrier's metric and split: recomputing one
    from the stored copies gives the same record, and every row and verdict follows it."""
    import basinscope
    from basinscope.analyses.basin import DEFINITION, basin_test
    from basinscope.data import load_digits, rotate
    from basinscope.data.tensordata import TensorData
    from basinscope.experiments.rotated_digits import BASIN_CONDITIONS, basin_record
    from basinscope.models import build_model, load_weights
    from basinscope.store import paths

    root, cfg, res = quick
    big = f"{max(cfg.angles):g}"
    angle = res["angles"][big]
    keys = set(angle["per_seed"])
    assert keys == {"pre-trained/ft", "pre-trained/lp", "random/ft", "random-independent/ft"}
    for sd in angle["seeds"]:
        stage = basinscope.load(root / "stages" / sd["basin_test_stage"])
        assert stage.value == sd["basin_test"] and set(sd["basin_test"]) == keys
        for rec in sd["basin_test"].values():
            assert rec["epsilon"] == cfg.basin_epsilon and rec["delta"] == cfg.basin_delta
            assert rec["definition"] == DEFINITION
            st = rec["settings"]
            assert (st["m"], st["samples"], st["pairs"]) == (
                cfg.copies,
                cfg.basin_samples,
                cfg.basin_pairs,
            )
            assert st["metric"] == cfg.barrier_metric and st["seed"] == sd["seed"]
            assert st["confidence"] == cfg.basin_confidence and st["strategy"] == "loop"
            assert [c["threshold"] for c in rec["conditions"]] == [
                cfg.basin_epsilon,
                2 * cfg.basin_epsilon,
                2 * cfg.basin_epsilon,
            ]
            assert rec["holds"] == all(c["holds"] for c in rec["conditions"])
            assert rec["failed"] == [c["condition"] for c in rec["conditions"] if not c["holds"]]
            assert rec["labels"] == ["copy 0", "copy 1"] and rec["affine_dimension"] == 1
    # the same test from the stored copies of seed 1's FT from the pre-trained start
    names = angle["seeds"][1]["finetune_stages"]["pre-trained/ft"]
    copies = [
        load_weights(
            build_model("lenet", {"width": cfg.width}), root / "stages" / n / paths.WEIGHTS
        )
        for n in names
    ]
    test = load_digits("test")
    tgt = TensorData(rotate(test.x, max(cfg.angles)), test.y, "target test")
    again = basin_test(
        copies,
        tgt,
        epsilon=cfg.basin_epsilon,
        delta=cfg.basin_delta,
        samples=cfg.basin_samples,
        pairs=cfg.basin_pairs,
        seed=1,
        metric=cfg.barrier_metric,
        labels=["copy 0", "copy 1"],
    )
    assert (
        json.loads(json.dumps(basin_record(again)))
        == angle["seeds"][1]["basin_test"]["pre-trained/ft"]
    )
    # each seed's row takes the record's numbers; the summary row counts the seeds
    for key, per in angle["per_seed"].items():
        start, strategy = key.split("/")
        for r in per:
            rec = angle["seeds"][r["seed"]]["basin_test"][key]
            assert r["basin_test_holds"] == rec["holds"]
            assert r["basin_test_supported"] == rec["ci_supports"]
            for col, c in zip(BASIN_CONDITIONS, rec["conditions"], strict=True):
                assert r[col] == c["estimate"] and r[f"{col}_mc_ci"] == c["ci"]
            conn = angle["seeds"][r["seed"]]["connectivity"][key]
            copies_ok = conn["copies"]["value"] <= cfg.basin_epsilon
            assert r["barrier_verdict"] == r.get("in_pretrained_basin", copies_ok)
        row = next(
            x
            for x in res["summary"]
            if f"{x['angle']:g}" == big
            and x["start"] == start
            and x["strategy"] == rotated_digits.STRATEGY_NAMES[strategy]
        )
        n_holds = sum(r["basin_test_holds"] for r in per)
        assert row["basin_test_seeds"] == n_holds
        assert row["basin_test"] == {0: False, cfg.seeds: True}.get(n_holds)
        assert row["tests_agree_seeds"] == sum(
            r["basin_test_holds"] == r["barrier_verdict"] for r in per
        )
        flat = [r["basin_flatness"] for r in per]
        assert row["basin_flatness"] == pytest.approx(np.mean(flat))
        assert row["basin_flatness_ci"][0] >= 0.0


def test_the_conclusion_says_whether_the_basin_test_and_the_barrier_agree(quick):
    _, cfg, res = quick
    found = res["conclusion"]["findings"]["basin_test"]
    assert set(found) == {"pre-trained", "random", "random-independent"}
    text = " ".join(res["conclusion"]["text"])
    assert f"ε = {cfg.basin_epsilon:g}, δ = {cfg.basin_delta:g}" in text
    for start, g in found.items():
        cases = [
            (a, r)
            for a, angle in res["angles"].items()
            for key, per in angle["per_seed"].items()
            if key.startswith(start + "/")
            for r in per
        ]
        assert g["cases"] == len(cases)
        assert g["agree"] == sum(r["basin_test_holds"] == r["barrier_verdict"] for _, r in cases)
        assert g["agree"] + len(g["barrier_only"]) + len(g["basin_test_only"]) == g["cases"]
        assert g["basin_test"] == sum(r["basin_test_holds"] for _, r in cases)
        assert g["supported"] == sum(r["basin_test_supported"] for _, r in cases)
        for c in g["barrier_only"][:6] + g["basin_test_only"][:6]:  # named, at most 6 each
            assert f"{c['angle']:g}° {c['strategy']} seed {c['seed']}" in text
        for c in g["barrier_only"][6:] + g["basin_test_only"][6:]:
            assert f"{c['angle']:g}° {c['strategy']} seed {c['seed']} (" not in text
        who = rotated_digits.START_NAMES[start]
        n, k = g["cases"], g["agree"]
        verb, count = (
            ("agrees", f"in all {n}")
            if k == n
            else ("disagrees", f"in all {n}")
            if k == 0
            else ("agrees", f"in {k} of {n}")
        )
        sentence = next(t for t in res["conclusion"]["text"] if t.startswith(f"From the {who} "))
        assert f") {verb} with " in sentence or f"test {verb} with " in sentence
        assert f"{count} (angle, strategy, seed) cases" in sentence
        assert (
            f"it finds a basin in {g['basin_test']} and the barrier criterion in {g['barrier']}"
            in sentence
        )


@pytest.mark.parametrize(
    "setting, message",
    [
        ("basin_delta=0", r"basin_delta must be a positive number, got 0\.0; e\.g\. basin_delta=5"),
        ("basin_samples=1", r"basin_samples must be an integer >= 2, got 1 \(a Monte Carlo"),
        ("basin_pairs=100000", r"basin_pairs must be <= 10,000 \(each draw is a pass over"),
        ("basin_confidence=1", r"basin_confidence must be in \(0, 1\), got 1\.0; e\.g\. basin_"),
    ],
)
def test_bad_basin_test_settings_are_refused_with_the_fix(setting, message):
    from basinscope.errors import BasinscopeError

    with pytest.raises(BasinscopeError, match=message):
        make_config(NAME, quick=True, sets=[setting])


def test_the_conclusion_and_the_criticality_grid_follow_the_numbers(quick):
    from basinscope.experiments.rotated_digits import criticality_sigmas

    _, cfg, res = quick
    sig = criticality_sigmas(cfg)
    assert len(sig) == cfg.criticality_sigmas
    assert sig[0] == pytest.approx(cfg.criticality_sigma_range[0])
    assert np.allclose(np.diff(np.log(sig)), np.log(sig[1] / sig[0]))  # log-spaced
    found = res["conclusion"]["findings"]
    grid = res["angles"][f"{max(cfg.angles):g}"]["criticality_grid"]
    crit = res["angles"][f"{max(cfg.angles):g}"]["criticality"]
    for start, g in grid.items():
        for m, v in g["modules"].items():
            mu = crit[start]["modules"][m]
            if v["on_edge"] == "smallest":
                assert v["sigma_star"] == pytest.approx(sig[0]) and mu["alpha_star"] > 0
            assert v["feasible_points"] == int(np.sum(mu["feasible"]))
    assert found["criticality"]["on_edge"] == sum(g["n_on_edge"] for g in grid.values())
    text = " ".join(res["conclusion"]["text"])
    for name, b in found["basin"].items():
        assert text.count(f"{name} ") >= 1 and sorted(b["in"] + b["out"] + b["mixed"]) == sorted(
            cfg.angles
        )
    assert f"in {found['criticality']['on_edge']} of {found['criticality']['entries']}" in text


def test_result_json_holds_every_number_and_each_barrier_names_its_definition(quick):
    root, cfg, res = quick
    saved = json.loads((root / f"{NAME}-{_hash(cfg)}" / "result.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(res["summary"]))
    conn = saved["angles"][f"{max(cfg.angles):g}"]["connectivity"]["pre-trained/ft"]
    for b in (conn["copies"], conn["path_tgt_test"], conn["path_src_test"]):
        assert b["definition"] == cfg.barrier_definition and b["metric"] == cfg.barrier_metric
        assert b["bootstrap_samples"] == cfg.bootstrap and len(b["ci"]) == 2
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
    # seed 0's barriers, and every seed's in its own stage
    for sd in res["angles"]["60"]["seeds"]:
        stage = basinscope.load(root / "stages" / sd["connectivity_stage"])
        assert stage.value == sd["connectivity"]
    assert res["angles"]["60"]["seeds"][0]["connectivity"] == res["angles"]["60"]["connectivity"]
    assert kinds["criticality"].kind == "criticality"
    assert kinds["pretrain"].kind == "train" and kinds["surface"].kind == "landscape"


def test_the_report_is_self_contained_and_has_every_figure(quick):
    root, cfg, _ = quick
    run_dir = root / f"{NAME}-{_hash(cfg)}"
    html = (run_dir / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r'<(script|img)[^>]+src="https?://', html)
    stems = ["accuracy_vs_angle", "paths", "barriers", "distance_and_cka", "criticality"]
    stems += ["curvature", "basin_test"] + [f"surfaces_angle{a:g}" for a in cfg.angles]
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
    root, cfg, _ = quick
    report = root / f"{NAME}-{_hash(cfg)}" / "report.html"
    opens_in_chromium(report, figures=7 + len(cfg.angles) + 2, exactly=True)


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
    # the basin test's delta recomputes the basin tests only
    res = _run(root, make_config(NAME, smoke=True, sets=[f"basin_delta={2 * cfg.basin_delta}"]))
    computed = {r["stage"].split("-")[0] for r in res["stages"] if not r["reused"]}
    assert computed == {"basin"}
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
    n_keep = cfg.seeds * (1 + (len(cfg.strategies) + 2) * cfg.copies) + 4
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

    def numbers(pre):  # the pre-trained models' numbers, without their stage folders' names
        out = {k: v for k, v in pre.items() if k not in ("stage", "seeds")}
        out["seeds"] = [{k: v for k, v in s.items() if k != "stage"} for s in pre["seeds"]]
        return out

    assert numbers(res["pretrained"]) == numbers(first["pretrained"])
