"""Stage folders and study run folders are run folders of format 2: ``basinscope.load``
returns their typed results, and folders of the layouts before it are refused with the
version that wrote them and the fix."""

from __future__ import annotations

import json

import pytest
import torch

import basinscope
from basinscope.errors import BasinscopeError
from basinscope.experiments.results import StageResult, StudyResult
from basinscope.experiments.stages import cached_stage, model_stage, stage_dir
from basinscope.store import paths
from user_errors import assert_one_line

OLD_STAGE = r"written by basinscope 0\.1 or an early 0\.2 in the layout before run-folder format 2 \(settings\.json"
OLD_STUDY = r"study run folder written by basinscope 0\.1\.3 in the layout before run-folder format 2 \(study\.json, results\.json\)"
FIX = r"Run the study again with a new --out folder \(or delete"


def _never(*_):
    raise AssertionError("an old stage must not be computed over")


def test_a_stage_folder_holds_a_manifest_and_its_result(tmp_path):
    value, folder = cached_stage(
        tmp_path, "numbers", {"n": 3}, lambda d: {"x": [1.5, float("nan")]}
    )
    assert value == {"x": [1.5, "nan"]}
    assert folder == stage_dir(tmp_path, "numbers", {"n": 3}) and folder.parent == tmp_path
    assert sorted(p.name for p in folder.iterdir()) == [paths.MANIFEST, paths.RESULT]
    manifest = json.loads((folder / paths.MANIFEST).read_text())
    assert manifest["format"] == 2 and manifest["status"] == "complete"
    assert (manifest["kind"], manifest["stage"], manifest["spec"]) == ("stage", "numbers", {"n": 3})
    assert manifest["result"] == {"kind": "stage", "schema": 1}
    assert manifest["versions"]["basinscope"] == basinscope.__version__
    loaded = basinscope.load(folder)
    assert loaded == StageResult("numbers", {"x": [1.5, "nan"]})
    # a finished stage is read back, not computed again
    assert cached_stage(tmp_path, "numbers", {"n": 3}, _never) == (value, folder)


def test_basinscope_report_builds_a_page_for_a_stage_folder(tmp_path, cli):
    _, folder = cached_stage(tmp_path, "numbers", {"n": 3}, lambda d: {"x": 1.5})
    res = cli("report", folder)
    assert res.code == 0, res.err
    assert "numbers" in (folder / paths.REPORT).read_text()


def test_a_stage_that_computes_an_analysis_result_stores_the_result_itself(tmp_path):
    from basinscope.analyses.distance import parameter_distance
    from basinscope.models import build_model

    a, b = build_model("mlp", init_seed=0), build_model("mlp", init_seed=1)
    res = parameter_distance(a, b)
    value, folder = cached_stage(tmp_path, "distance", {"a": 0, "b": 1}, lambda d: res)
    assert value == json.loads(json.dumps(res.to_dict()))
    loaded = basinscope.load(folder)
    assert type(loaded) is type(res) and loaded.to_dict() == value
    assert json.loads((folder / paths.MANIFEST).read_text())["kind"] == "stage"


def test_a_model_stage_stores_weights_trajectory_and_its_info(tmp_path):
    from basinscope.models import build_model

    model = build_model("mlp", init_seed=0)
    ckpts = {0: {k: v.clone() for k, v in model.state_dict().items()}}
    st = model_stage(tmp_path, "ft", {"s": 1}, model, lambda: (model, ckpts, {"acc": 0.5}))
    names = {p.name for p in st.run_dir.iterdir()}
    assert {paths.MANIFEST, paths.RESULT, paths.WEIGHTS, paths.TRAJECTORY} <= names
    assert st.info == {"acc": 0.5} and not st.reused
    assert basinscope.load(st.run_dir) == StageResult("ft", {"acc": 0.5})
    again = model_stage(tmp_path, "ft", {"s": 1}, build_model("mlp", init_seed=5), _never)
    assert again.reused and again.info == {"acc": 0.5}
    for k, v in model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v)


def test_an_interrupted_stage_is_computed_again(tmp_path):
    folder = stage_dir(tmp_path, "s", {"k": 1})
    folder.mkdir()
    # killed after the result was written but before the manifest said complete
    (folder / paths.MANIFEST).write_text(json.dumps({"format": 2, "status": "running"}))
    (folder / paths.RESULT).write_text('{"kind": "stage", "schema": 1, "stage": "s", "value": {}}')
    value, _ = cached_stage(tmp_path, "s", {"k": 1}, lambda d: {"done": True})
    assert value == {"done": True}


def _old_stage(root, name, settings):
    folder = stage_dir(root, name, settings)
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps({"stage": name, "settings": settings}))
    (folder / "result.json").write_text('{"mine": 1}')
    return folder


def test_a_stage_folder_of_the_old_layout_is_refused_with_the_fix(tmp_path):
    folder = _old_stage(tmp_path, "hessian", {"k": 1})
    with pytest.raises(BasinscopeError, match=OLD_STAGE) as e:
        cached_stage(tmp_path, "hessian", {"k": 1}, _never)
    assert "delete the stages/ folder" in str(e.value) and "new --out" in str(e.value)
    folder = _old_stage(tmp_path, "finetune", {"k": 2})
    with pytest.raises(BasinscopeError, match=OLD_STAGE):
        model_stage(tmp_path, "finetune", {"k": 2}, torch.nn.Linear(1, 1), _never)
    with pytest.raises(BasinscopeError, match=OLD_STAGE):
        basinscope.load(folder)
    # nothing of the old folder was touched
    assert sorted(p.name for p in folder.iterdir()) == ["result.json", "settings.json"]


def _old_study(root, cfg):
    from basinscope.experiments.registry import config_dict, config_hash

    run_dir = root / f"rotated-digits-{config_hash('rotated-digits', cfg)}"
    run_dir.mkdir(parents=True)
    meta = {"study": "rotated-digits", "config": config_dict(cfg), "basinscope": "0.1.3"}
    (run_dir / "study.json").write_text(json.dumps(meta))
    (run_dir / "results.json").write_text(json.dumps({"study": "rotated-digits"}))
    return run_dir


def test_a_study_folder_of_the_old_layout_is_refused_with_the_fix(tmp_path, cli):
    from basinscope.experiments.registry import make_config, run_study

    cfg = make_config("rotated-digits", smoke=True)
    run_dir = _old_study(tmp_path, cfg)
    with pytest.raises(BasinscopeError, match=OLD_STUDY + r".*" + FIX):
        run_study("rotated-digits", tmp_path, cfg, say=lambda m: None)
    assert not (tmp_path / paths.STAGES).exists()  # refused before any stage ran
    with pytest.raises(BasinscopeError, match=OLD_STUDY):
        basinscope.load(run_dir)
    assert_one_line(cli("report", run_dir), OLD_STUDY, FIX)
    res = cli("demo", "--smoke", "--out", tmp_path, "--no-progress")
    assert_one_line(res, OLD_STUDY, FIX)
    assert sorted(p.name for p in run_dir.iterdir()) == ["results.json", "study.json"]


def test_a_study_result_reads_as_the_study_wrote_it():
    res = StudyResult({"study": "s", "stages": [{"reused": True}], "seconds": 1.0, "x": [1]})
    d = res.to_dict()
    assert d == {
        "kind": "study",
        "schema": 1,
        "study": "s",
        "stages": [{"reused": True}],
        "seconds": 1.0,
        "x": [1],
    }
    assert StudyResult.from_dict(d) == res and res.study == "s"
    assert res.summary()[0] == "1 stages (1 reused) in 1.0 s"
    with pytest.raises(BasinscopeError, match="expected a 'study' result"):
        StudyResult.from_dict({**d, "kind": "barrier"})
