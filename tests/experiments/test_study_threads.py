"""``run_study(threads=N)`` / ``--threads``: the torch threads a study computes with are set
for the run and restored, recorded in the run's and each stage's manifest, and in no digest
(the same folders at any count). Studies that pin ``threads`` in their settings refuse
another count with the fix."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from basinscope.errors import BasinscopeError
from basinscope.experiments import registry
from basinscope.experiments.registry import Study, default_threads, run_study
from basinscope.experiments.stages import cached_stage, stage_dir

NAME = "threads-probe"


@dataclass(frozen=True)
class ProbeConfig:
    n: int = 3


def _run(cfg, ctx):
    def compute(_d):
        return {"square": cfg.n * cfg.n, "threads_seen": torch.get_num_threads()}

    settings = {"n": cfg.n}
    (value,) = ctx.run_stages(
        [
            registry.StageCall(
                stage_dir(ctx.stages_root, "square", settings),
                lambda lg: cached_stage(ctx.stages_root, "square", settings, compute, log=lg)[0],
            )
        ]
    )
    return {"square": value["square"], "threads_seen": value["threads_seen"]}


@pytest.fixture
def probe():
    study = Study(NAME, "a probe", ProbeConfig, _run, lambda d, r: d / "report.html", quick={})
    registry.STUDIES[NAME] = study
    yield study
    registry.STUDIES.pop(NAME, None)


def test_threads_are_set_for_the_run_recorded_and_in_no_digest(probe, tmp_path):
    before = torch.get_num_threads()
    res = run_study(NAME, tmp_path, ProbeConfig(), say=lambda m: None, report=False, threads=2)
    assert res["threads_seen"] == 2 and torch.get_num_threads() == before
    run_dir = tmp_path / res["run_dir"].split("/")[-1]
    assert json.loads((run_dir / "manifest.json").read_text())["threads"] == 2
    stage = tmp_path / "stages" / res["stages"][0]["path"].split("/")[-1]
    assert json.loads((stage / "manifest.json").read_text())["threads"] == 2
    # another count: the same run folder and stage, reused
    again = run_study(NAME, tmp_path, ProbeConfig(), say=lambda m: None, report=False, threads=1)
    assert again["run_dir"] == res["run_dir"] and again["stages"][0]["reused"]
    assert json.loads((run_dir / "manifest.json").read_text())["threads"] == 1
    # None: the current count
    torch.set_num_threads(1)
    try:
        out = run_study(NAME, tmp_path, ProbeConfig(n=4), say=lambda m: None, report=False)
        assert out["threads_seen"] == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -1, 2000, 1.5, True])
def test_a_thread_count_that_is_no_positive_whole_number_is_refused(probe, tmp_path, bad):
    with pytest.raises(BasinscopeError, match=r"threads must be a whole number from 1 to 1,024"):
        run_study(NAME, tmp_path, ProbeConfig(), say=lambda m: None, threads=bad)
    assert not tmp_path.joinpath("stages").exists()


def test_a_study_that_pins_its_threads_refuses_another_count_with_the_fix(tmp_path):
    cfg = registry.make_config("flatness-vs-batch-size", smoke=True)
    with pytest.raises(
        BasinscopeError,
        match=r"study 'flatness-vs-batch-size' sets its threads in its settings \(threads=1, "
        r"part of its folders' digest\), so --threads 3 does not apply to it; use --set "
        r"threads=3 instead",
    ):
        run_study("flatness-vs-batch-size", tmp_path, cfg, threads=3)


def test_the_default_is_omp_num_threads_else_the_usable_cores_capped(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert default_threads() == registry.MAX_DEFAULT_THREADS
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")  # not a number: ignored
    assert default_threads() == 2


def test_study_and_demo_pass_threads_default_to_default_threads(cli, monkeypatch, tmp_path):
    seen: list[dict] = []

    def fake_run_study(*args, **kwargs):
        seen.append(kwargs)
        raise BasinscopeError("stopped by the test")

    monkeypatch.setattr(registry, "run_study", fake_run_study)
    monkeypatch.setattr(registry, "default_threads", lambda: 3)
    out = tmp_path / "runs"
    assert cli("demo", "--smoke", "--threads", "2", "--out", out).code == 2  # the fake stopped it
    assert cli("demo", "--smoke", "--out", out).code == 2  # the fake stopped it
    assert (
        cli("study", "skip-connections", "--smoke", "--out", out).code == 2
    )  # the fake stopped it
    # a study with its own threads setting keeps it
    assert (
        cli("study", "flatness-vs-batch-size", "--smoke", "--out", out).code == 2
    )  # the fake stopped it
    assert [k["threads"] for k in seen] == [2, 3, 3, None]
