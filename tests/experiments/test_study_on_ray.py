"""A study's independent stages as Ray tasks, on a real local Ray cluster (2 CPUs).

The smoke rotated-digits study runs once with the local executor; with
``RayExecutor(workers=2)`` its fine-tunings, then its analyses, run as Ray tasks and must
leave the same stage folders (tensors equal bit for bit, JSON equal apart from the volatile
fields and the root's path) and the same result.json apart from timings. A stage that fails
once is retried; one that always fails is reported by its folder's name after the other
stages finished, and a rerun reuses them. A stage named twice (a repeated angle) is never
given to two tasks at once. ``basinscope demo --executor ray`` works through the command
line, and the other two studies leave the local folders and results too. Pre-training runs
on the driver with either executor (it is the stage every other one waits for), so the Ray
runs of rotated-digits start from a copy of the local run's pre-training folder; everything
after it is computed in Ray tasks.

Failures are injected on the driver's side of the executor (a task wrapper that raises
``OSError`` before the stage starts), counted in files that the worker processes share.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import make_config, reproducible_part, run_study
from processes import invoke

ray = pytest.importorskip("ray")
from basinscope.engine import use_executor  # noqa: E402
from basinscope.engine.ray_executor import RayExecutor  # noqa: E402

pytestmark = pytest.mark.slow
NAME = "rotated-digits"


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local Ray session for the module; every RayExecutor(workers=2) joins it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cfg():
    return make_config(NAME, smoke=True)


@pytest.fixture(scope="module")
def local(tmp_path_factory, cfg):
    """The smoke study with the local executor: (root, results)."""
    root = tmp_path_factory.mktemp("local")
    return root, run_study(NAME, root, cfg, say=lambda m: None, report=False)


class Spy(RayExecutor):
    """A RayExecutor that records the names of the tasks it was given, and fails those
    named in ``fail`` with an OSError before they start: ``times`` times each."""

    def __init__(self, marks: Path | None = None, fail=(), times: int = 0) -> None:
        super().__init__(workers=2)
        self.names: list[str] = []
        self.waves: list[list[str]] = []  # the names of each call of run_tasks
        self.marks, self.fail, self.times = marks, set(fail), times

    def run_tasks(self, calls, *, names=None, cpus=None):
        self.names += names
        self.waves.append(list(names))
        calls = [
            _failing(c, self.marks / n.split()[-1], self.times) if n.split()[-1] in self.fail else c
            for c, n in zip(calls, names, strict=True)
        ]
        return super().run_tasks(calls, names=names, cpus=cpus)


def _failing(call, mark: Path, times: int):
    """``call``, failing its first ``times`` attempts (counted in the file ``mark``, which
    every worker process sees). A closure, so that cloudpickle ships it by value."""

    def attempt():
        failed = int(mark.read_text()) if mark.exists() else 0
        if failed < times:
            mark.write_text(str(failed + 1))
            raise OSError(f"injected failure {failed + 1} of {times}")
        return call()

    return attempt


def _start_from_pretraining(local_root: Path, root: Path) -> None:
    for d in (local_root / "stages").glob("pretrain-*"):
        shutil.copytree(d, root / "stages" / d.name)


def _stage_files(d: Path) -> dict[str, Path]:
    return {str(p.relative_to(d)): p for p in d.rglob("*") if p.is_file()}


def _content(path: Path):
    """What must agree between two runs: tensors by value, JSON without the volatile fields
    (and with the root's path taken out), other files by their bytes."""
    if path.suffix == ".safetensors":  # its metadata's order is not fixed: compare values
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            return f.metadata(), {k: f.get_tensor(k).tobytes() for k in f.keys()}
    data = path.read_bytes()
    if path.suffix != ".json":
        return data
    # paths to a stage's files name the root (the copied pre-training's: the local run's)
    text = re.sub(r'"[^"]*/stages/', '"ROOT/stages/', data.decode())
    value = reproducible_part(json.loads(text))
    if path.name == "manifest.json":
        value = {k: v for k, v in value.items() if not k.endswith("_at")}
    return value


def assert_same_stages(a: Path, b: Path) -> None:
    names = sorted(p.name for p in (a / "stages").iterdir())
    assert names == sorted(p.name for p in (b / "stages").iterdir())
    for name in names:
        fa, fb = _stage_files(a / "stages" / name), _stage_files(b / "stages" / name)
        assert sorted(fa) == sorted(fb), name
        for f in fa:
            assert _content(fa[f]) == _content(fb[f]), f"{name}/{f}"


def test_stages_as_ray_tasks_give_the_local_folders_and_results(local, cfg, tmp_path):
    local_root, local_res = local
    root = tmp_path / "ray"
    _start_from_pretraining(local_root, root)
    executor = Spy()
    res = run_study(NAME, root, cfg, say=lambda m: None, report=False, executor=executor)

    # every stage after pre-training went to Ray: the fine-tunings, then the analyses
    rows = res["stages"]
    n_pre = cfg.seeds  # one pre-training per seed, in the driver
    assert [r["stage"] for r in rows] == [r["stage"] for r in local_res["stages"]]
    assert sorted(executor.names) == sorted(f"stage {r['stage']}" for r in rows[n_pre:])
    assert [n.split()[-1].split("-")[0] for n in executor.names[:6]] == ["finetune"] * 6
    assert [r["reused"] for r in rows] == [True] * n_pre + [False] * (len(rows) - n_pre)
    assert all(r["seconds"] > 0 for r in rows[n_pre:])  # each task reported its row back
    assert executor.retried == 0
    assert reproducible_part(res) == reproducible_part(local_res)
    assert_same_stages(local_root, root)
    manifest = json.loads(next(root.glob(f"{NAME}-*/manifest.json")).read_text())
    assert manifest["executor"]["executor"] == "ray" and manifest["executor"]["workers"] == 2


def test_a_stage_task_computes_with_the_drivers_torch_threads(tmp_path):
    """float32 training differs in its last bits between one and two threads, so a stage's
    task must take the driver's count for its folder to be the local run's (the suite runs
    with one thread, as a Ray worker does by default: two here)."""
    import torch

    from basinscope.experiments.registry import StageCall, StudyContext
    from basinscope.experiments.stages import StageLog

    ctx = StudyContext(tmp_path, tmp_path / "stages", StageLog(), say=lambda m: None)
    stage = StageCall(tmp_path / "stages" / "threads", lambda log: torch.get_num_threads())
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with use_executor(RayExecutor(workers=2)):
            assert ctx.run_stages([stage]) == [2]
    finally:
        torch.set_num_threads(threads)


def _without(local_root: Path, root: Path, prefixes: tuple[str, ...]) -> list[str]:
    """A copy of the local run's stages under ``root`` without the first stage of each
    kind in ``prefixes``; their names."""
    shutil.copytree(local_root / "stages", root / "stages")
    gone = []
    for prefix in prefixes:
        d = sorted((root / "stages").glob(f"{prefix}-*"))[0]
        shutil.rmtree(d)
        gone.append(d.name)
    return gone


def test_a_stage_that_fails_once_is_retried_and_the_study_completes(local, cfg, tmp_path):
    local_root, local_res = local
    root = tmp_path / "retry"
    finetune, connectivity = _without(local_root, root, ("finetune", "connectivity"))
    executor = Spy(tmp_path, fail=[finetune], times=1)
    res = run_study(NAME, root, cfg, say=lambda m: None, report=False, executor=executor)
    assert (tmp_path / finetune).read_text() == "1"  # it failed once, then ran again
    assert executor.retried == 1
    computed = [r["stage"] for r in res["stages"] if not r["reused"]]
    assert computed == [finetune, connectivity]
    assert reproducible_part(res) == reproducible_part(local_res)
    assert_same_stages(local_root, root)


def test_a_stage_that_always_fails_is_named_and_the_finished_ones_are_kept(local, cfg, tmp_path):
    local_root, local_res = local
    root = tmp_path / "fail"
    bad, good = _without(local_root, root, ("finetune", "finetune"))
    executor = Spy(tmp_path, fail=[bad], times=100)
    message = (
        rf"stage {bad} failed 3 times on the Ray cluster \(last: OSError: injected failure 3 "
        r"of 100\)\. Stages that finished are kept; run the same command again"
    )
    with pytest.raises(BasinscopeError, match=message):
        run_study(NAME, root, cfg, say=lambda m: None, report=False, executor=executor)
    assert (tmp_path / bad).read_text() == "3"  # the first try and task_retries=2 more
    assert (root / "stages" / good / "model.safetensors").is_file()  # finished, kept
    assert not (root / "stages" / bad).exists()  # never started

    again = run_study(NAME, root, cfg, say=lambda m: None, report=False, executor=Spy())
    assert [r["stage"] for r in again["stages"] if not r["reused"]] == [bad]
    assert reproducible_part(again) == reproducible_part(local_res)
    assert_same_stages(local_root, root)


def test_demo_on_ray_through_the_command_line(local, tmp_path):
    local_root, _ = local
    out = tmp_path / "demo"
    similarity, hessian = _without(local_root, out, ("similarity", "hessian"))
    args = ("demo", "--smoke", "--executor", "ray", "--workers", "2", "--out", out)
    code, _, err = invoke(*args, "--no-progress")
    assert code == 0, err
    # seed 0's 13 analyses (2 lines, 2 surfaces, barriers, CKA, 2 criticality, 5 Hessians),
    # seed 1's barriers and both seeds' basin tests
    assert (
        "analyses (lines, surfaces, barriers, CKA, criticality, Hessians, basin tests): 16 "
        "stages, as ray tasks" in err
    )
    (run_dir,) = out.glob(f"{NAME}-*")
    res = json.loads((run_dir / "result.json").read_text())
    assert [r["stage"] for r in res["stages"] if not r["reused"]] == [similarity, hessian]
    (local_dir,) = local_root.glob(f"{NAME}-*")
    stored = json.loads((local_dir / "result.json").read_text())
    assert reproducible_part(res) == reproducible_part(stored)
    assert (run_dir / "report.html").is_file()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["executor"]["executor"] == "ray" and manifest["executor"]["workers"] == 2


def test_study_refuses_workers_without_the_ray_executor(tmp_path):
    code, _, err = invoke("study", NAME, "--smoke", "--workers", "2", "--out", tmp_path / "x")
    assert code != 0
    assert "--address and --workers are options of --executor ray" in err
    assert not (tmp_path / "x").exists()  # refused before anything ran


@pytest.mark.parametrize("name", ["flatness-vs-batch-size", "skip-connections"])
def test_the_other_studies_give_the_local_folders_and_results_on_ray(name, tmp_path):
    cfg = make_config(name, smoke=True)
    local = run_study(name, tmp_path / "local", cfg, say=lambda m: None, report=False)
    executor = Spy()
    res = run_study(
        name, tmp_path / "ray", cfg, say=lambda m: None, report=False, executor=executor
    )
    # every stage went to Ray (the trainings first), and the log is the sequential run's
    assert sorted(executor.names) == sorted(f"stage {r['stage']}" for r in local["stages"])
    assert all(n.split()[-1].startswith("train-") for n in executor.names[:2])
    assert [r["stage"] for r in res["stages"]] == [r["stage"] for r in local["stages"]]
    assert reproducible_part(res) == reproducible_part(local)
    assert_same_stages(tmp_path / "local", tmp_path / "ray")


def test_two_tasks_never_need_one_stage_folder(local, tmp_path):
    """A repeated angle names every stage of the angle twice: the repeats wait for a second
    wave and reuse what the first computed, instead of meeting its folder locks."""
    local_root, local_res = local
    root = tmp_path / "twice"
    shutil.copytree(local_root / "stages", root / "stages")
    finetunes = [r["stage"] for r in local_res["stages"] if r["stage"].startswith("finetune-")]
    for name in finetunes:
        shutil.rmtree(root / "stages" / name)
    cfg = make_config(NAME, smoke=True, sets=["angles=[60, 60]"])
    executor = Spy()
    res = run_study(NAME, root, cfg, say=lambda m: None, report=False, executor=executor)
    assert [r["stage"] for r in res["stages"] if not r["reused"]] == finetunes
    assert [r["stage"] for r in res["stages"]] == [r["stage"] for r in local_res["stages"]] + [
        r["stage"] for r in local_res["stages"][cfg.seeds :]
    ]
    # the fine-tunings, then their repeats in a wave of their own
    assert executor.waves[:2] == [[f"stage {n}" for n in finetunes]] * 2
    assert res["angles"]["60"] == json.loads(json.dumps(local_res["angles"]["60"]))
    assert_same_stages(local_root, root)
