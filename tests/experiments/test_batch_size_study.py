"""The flatness-vs-batch-size study, run once in its smoke version (and once more to reuse).

What the study shows (the large-batch minimum is sharper) is checked on the quick
configuration in the ``science`` tier (tests/experiments/test_studies_science.py)."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import make_config, rebuild_report, run_study
from study_checks import forbid, opens_in_chromium

NAME = "flatness-vs-batch-size"
NUMBERS = (
    *("batch_size", "epochs", "train_loss", "train_accuracy", "test_loss", "test_accuracy"),
    *("accuracy_gap", "param_norm", "distance_from_init", "lambda_max", "trace"),
    *("trace_ci_halfwidth", "sharpness_keskar", "sharpness_worst_l2", "sharpness_adaptive"),
    *("sharpness_filter_normalized", "sharpness_filter_normalized_se"),
)
FIGURES = ("training", "interpolation", "surfaces_filter_normalized", "lines_filter_normalized")


def _quiet(m: str) -> None:
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch-size")
    cfg = make_config(NAME, smoke=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = run_study(NAME, root, cfg, say=_quiet)
        second = run_study(NAME, root, cfg, say=_quiet)
    finally:
        torch.set_num_threads(threads)
    return root, cfg, first, second


def test_results_hold_every_number_with_its_definition(runs):
    _, cfg, first, _ = runs
    saved = json.loads((Path(first["run_dir"]) / "result.json").read_text())
    assert saved["study"] == NAME and saved["config"]["steps"] == cfg.steps
    defs = saved["definitions"]
    for key in ("small", "large"):
        sol = saved["solutions"][key]
        assert set(NUMBERS) <= set(sol)
        for k in NUMBERS:
            assert isinstance(sol[k], (int, float)) and math.isfinite(sol[k]), (key, k)
            assert k in defs and len(defs[k]) > 20, k
        assert 0 <= sol["test_accuracy"] <= 1
        assert sol["trace_ci_halfwidth"] > 0
        hs = saved["details"][key]["hessian"]
        assert hs["trace"]["num_samples"] <= cfg.trace_max_probes
        assert hs["semantics"]["num_examples"] == cfg.hessian_subset
    assert saved["solutions"]["small"]["batch_size"] == cfg.small_batch
    assert saved["solutions"]["large"]["epochs"] == pytest.approx(cfg.steps)  # full batch
    # the definitions say what was measured and how
    assert "Lanczos" in defs["lambda_max"] and f"first {cfg.hessian_subset}" in defs["lambda_max"]
    assert "Hutchinson" in defs["trace"] and "95%" in defs["trace"]
    assert (
        "Keskar" in defs["sharpness_keskar"]
        and "filter-normalized" in defs["sharpness_filter_normalized"]
    )
    assert "no BatchNorm" in saved["setup"]["bn_policy"]
    line = saved["interpolation"]
    assert len(line["alpha"]) == cfg.line_points
    assert line["alpha"][0] == pytest.approx(-0.5) and line["alpha"][-1] == pytest.approx(1.5)
    assert {"train_loss", "test_loss", "train_accuracy", "test_accuracy"} <= set(line)
    assert "raw" in line["definition"]
    for s in saved["surfaces"].values():
        assert len(s["slice_train_loss"]) == cfg.grid
        assert "filter-normalized" in s["definition"]


def test_the_ratios_are_of_the_two_solutions(runs):
    sol = runs[2]["solutions"]
    ratios = runs[2]["ratios_large_over_small"]
    assert ratios["lambda_max"] == pytest.approx(
        sol["large"]["lambda_max"] / sol["small"]["lambda_max"]
    )


def test_figures_and_a_self_contained_report(runs):
    run_dir = Path(runs[2]["run_dir"])
    assert runs[1].figure_formats == ("png",)  # the smoke version writes no PDFs
    for stem in FIGURES:
        assert (run_dir / "figures" / f"{stem}.png").stat().st_size > 1000, stem
        assert not (run_dir / "figures" / f"{stem}.pdf").exists()
    html = (run_dir / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert html.count('class="static"><img alt=') == len(FIGURES)
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', html)) == len(FIGURES)
    assert html.count('class="interactive"') == 3
    assert not re.search(r'<script[^>]+src="https?://', html)
    assert not re.search(r'<img[^>]+src="https?://', html)
    assert "Hutchinson" in html and "filter-normalized" in html and "no BatchNorm" in html


def test_running_again_reuses_every_stage_and_gives_identical_numbers(runs):
    root, _, first, second = runs
    assert first["run_dir"] == second["run_dir"]
    assert len(first["stages"]) == len(second["stages"]) == 11
    assert not any(r["reused"] for r in first["stages"])
    assert all(r["reused"] for r in second["stages"])
    assert [r["stage"] for r in first["stages"]] == [r["stage"] for r in second["stages"]]
    for key in ("solutions", "interpolation", "surfaces", "details", "ratios_large_over_small"):
        assert second[key] == first[key], key
    for r in second["stages"]:
        assert (root / r["path"]).is_dir()


def test_the_report_is_rebuilt_without_recomputing(runs, monkeypatch):
    a, c, st = "basinscope.analyses", "basinscope.curvature", "basinscope.experiments.batch_size"
    forbid(
        monkeypatch,
        [
            *(f"{a}:{n}" for n in ("interpolate", "random_surface", "worst_case_sharpness")),
            *(f"{a}:{n}" for n in ("adaptive_sharpness", "filter_normalized_sharpness")),
            f"{a}:compute_landscape",
            *(f"{c}:{n}" for n in ("HessianOperator", "lanczos_eigenpairs", "hutchinson_trace")),
            "basinscope.engine:evaluate_model",
            "basinscope.engine:evaluate_points",
            "basinscope.training:train",
            *(f"{st}:{n}" for n in ("_run", "_train_call", "_measure_calls", "landscape_stage")),
        ],
    )
    run_dir = Path(runs[2]["run_dir"])
    report = run_dir / "report.html"
    before = report.stat().st_mtime_ns
    assert rebuild_report(run_dir) == report
    assert report.stat().st_mtime_ns > before
    assert (run_dir / "figures" / "surfaces_filter_normalized.png").stat().st_size > 1000


def test_a_changed_surface_setting_recomputes_only_the_surfaces(runs):
    root, _, first, _ = runs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        changed = run_study(
            NAME, root, make_config(NAME, smoke=True, sets=["grid=5"]), say=_quiet, report=False
        )
    finally:
        torch.set_num_threads(threads)
    computed = {r["stage"].rsplit("-", 1)[0] for r in changed["stages"] if not r["reused"]}
    assert computed == {"surface"}
    assert changed["solutions"] == first["solutions"]
    assert changed["run_dir"] != first["run_dir"]


def test_bad_settings_are_refused_with_a_clear_message():
    with pytest.raises(BasinscopeError, match="small_batch"):
        make_config(NAME, sets=["small_batch=2048"])
    with pytest.raises(BasinscopeError, match="line_range"):
        make_config(NAME, sets=["line_range=[1.5, -0.5]"])
    with pytest.raises(BasinscopeError, match="model"):
        make_config(NAME, sets=["model=resnet"])
    cfg = make_config(NAME, quick=True, sets=["hessian_subset=none"])
    assert cfg.hessian_subset is None and cfg.steps == 300
    assert make_config(NAME, smoke=True).steps < cfg.steps


def test_the_report_opens_in_headless_chromium_without_errors(runs):
    opens_in_chromium(
        Path(runs[2]["run_dir"]) / "report.html", figures=len(FIGURES) + 3, exactly=True
    )


# -- device and dtype (see also tests/experiments/test_study_device.py) ----------------------


def _run_quietly(root, cfg):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_study(NAME, root, cfg, say=_quiet, report=False)
    finally:
        torch.set_num_threads(threads)


def test_the_default_run_keeps_the_folders_it_had_before_device_and_dtype(runs):
    from study_devices import check_default_names

    root, _, first, _ = runs
    check_default_names(NAME, root, first)


def test_a_float64_run_records_device_and_dtype_and_differs_only_by_them(runs):
    """``--device cpu --dtype float64``: the run's manifest and result and every stage that
    evaluates record both; those stages get folders whose settings differ from the default
    run's by the dtype alone, training and the (float64) Hessians are reused, and the
    losses equal a brute-force float64 evaluation."""
    from basinscope.data import load_digits
    from basinscope.experiments.stages import identity
    from basinscope.models import build_model, load_weights
    from basinscope.store import paths
    from study_devices import kind_of, read, recorded_placement

    root, _, first, _ = runs
    cfg = make_config(NAME, smoke=True, device="cpu", dtype="float64")
    res = _run_quietly(root, cfg)
    manifest = read(Path(res["run_dir"]), paths.MANIFEST)
    for config in (manifest["spec"]["config"], res["config"]):
        assert (config["device"], config["dtype"]) == ("cpu", "float64")
    assert (first["config"]["device"], first["config"]["dtype"]) == ("cpu", "float32")
    assert res["run_dir"] != first["run_dir"]
    assert "sharpness measures in float64 on cpu" in res["definitions"]["precision"]
    assert [kind_of(r["stage"]) for r in res["stages"]] == [
        kind_of(r["stage"]) for r in first["stages"]
    ]
    for a, b in zip(first["stages"], res["stages"], strict=True):
        fa, fb = root / a["path"], root / b["path"]
        if kind_of(a["stage"]) in ("train", "hessian"):  # float32 training, float64 Hessians
            assert b["stage"] == a["stage"] and b["reused"]
            continue
        assert b["stage"] != a["stage"] and not b["reused"]
        assert recorded_placement(fa) == ("cpu", "float32")
        assert recorded_placement(fb) == ("cpu", "float64")
        sa, sb = read(fa, paths.MANIFEST)["spec"], read(fb, paths.MANIFEST)["spec"]
        assert sb == {**sa, "dtype": "float64"}, b["stage"]
        if read(fb, paths.MANIFEST)["kind"] == "stage":  # its folder: digest of its settings
            assert b["stage"] == paths.run_name(kind_of(b["stage"]), paths.digest(identity(sb)))
    # the evaluations ran in float64: a brute-force float64 loss of each trained model
    x, y = load_digits("train").x, load_digits("train").y
    for key in ("small", "large"):
        model = build_model("mlp", {"hidden": list(cfg.hidden)}, init_seed=cfg.init_seed)
        folder = root / "stages" / res["stage_folders"][key]["train"]
        model = load_weights(model, folder / paths.WEIGHTS).double().eval()
        with torch.no_grad():
            loss = float(torch.nn.functional.cross_entropy(model(x.double()), y))
        assert res["solutions"][key]["train_loss"] == pytest.approx(loss, rel=1e-12, abs=0)
        assert first["solutions"][key]["train_loss"] == pytest.approx(loss, rel=1e-5)


def test_a_run_on_another_device_computes_every_stage_there_with_the_same_numbers(runs):
    """``cpu:0`` is the CPU by another name: a device that is not the default, so every
    stage is its own (new folders, each recording the device), and the numbers are the
    default run's."""
    from study_devices import check_device_recorded

    root, _, first, _ = runs
    res = _run_quietly(root, make_config(NAME, smoke=True, device="cpu:0"))
    assert not any(r["reused"] for r in res["stages"])
    assert not {r["stage"] for r in res["stages"]} & {r["stage"] for r in first["stages"]}
    check_device_recorded(root, res, "cpu:0")
    for key in ("solutions", "ratios_large_over_small", "distance_between_solutions"):
        assert res[key] == first[key], key

    def without_stage(d):
        return {k: v for k, v in d.items() if k != "stage"}

    assert without_stage(res["interpolation"]) == without_stage(first["interpolation"])
    for key, surface in res["surfaces"].items():
        assert without_stage(surface) == without_stage(first["surfaces"][key])
