"""StudyContext.run_stages with the local executor: values in order, a repeated folder is
computed once and then reused, each stage's log row where the stage says, and a task that
cannot see the run folder (a node without the shared filesystem) refused with the fix.
The same on a Ray cluster: tests/experiments/test_study_on_ray.py."""

from __future__ import annotations

import pytest

from basinscope.engine import LocalExecutor, use_executor
from basinscope.errors import BasinscopeError
from basinscope.experiments.registry import StageCall, StudyContext, _StageTask
from basinscope.experiments.stages import StageLog, cached_stage, stage_dir


class Recording(LocalExecutor):
    """The local executor, recording the task names of each call of run_tasks."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def run_tasks(self, calls, *, names=None, cpus=None):
        self.calls.append(list(names))
        return super().run_tasks(calls, names=names, cpus=cpus)


def _stage(root, n: int, computed: list[int], log=None) -> StageCall:
    settings = {"n": n}

    def compute(_d):
        computed.append(n)
        return {"square": n * n}

    def call(lg):
        return cached_stage(root, "square", settings, compute, log=lg)[0]["square"]

    return StageCall(stage_dir(root, "square", settings), call, log)


def test_run_stages_computes_each_folder_once_and_logs_in_the_order_given(tmp_path):
    run_dir, root = tmp_path / "run", tmp_path / "stages"
    run_dir.mkdir()
    said: list[str] = []
    ctx = StudyContext(run_dir, root, StageLog(), say=said.append)
    other, computed = StageLog(), []
    stages = [_stage(root, 3, computed), _stage(root, 2, computed, other)]
    stages.append(_stage(root, 3, computed))  # the same folder as the first
    executor = Recording()
    with use_executor(executor):
        values = ctx.run_stages(stages, what="squares")
    assert values == [9, 4, 9]
    assert computed == [3, 2]  # the repeat reused the first's folder
    first, second = stages[0].folder.name, stages[1].folder.name
    # the repeat waited for a second wave, so that two tasks never hold one folder
    assert executor.calls == [[f"stage {first}", f"stage {second}"], [f"stage {first}"]]
    assert [(r["stage"], r["reused"]) for r in ctx.log.rows()] == [(first, False), (first, True)]
    assert [(r["stage"], r["reused"]) for r in other.rows()] == [(second, False)]
    # one progress line per stage as it starts: [k/N] and its folder, (reused) when finished
    assert said == [
        "squares: 3 stages",
        f"[1/3] {first}",
        f"[2/3] {second}",
        f"[3/3] {first} (reused)",
    ]

    again = StudyContext(run_dir, root, StageLog(), say=said.append)
    assert again.run_stages(stages[:2]) == [9, 4] and computed == [3, 2]
    assert [r["reused"] for r in again.log.rows()] == [True]  # the second went to `other`


def test_a_stage_task_that_does_not_see_the_run_folder_is_refused_with_the_fix(tmp_path):
    task = _StageTask(lambda log: 1, tmp_path / "elsewhere" / "rotated-digits-0123456789")
    with pytest.raises(
        BasinscopeError,
        match=r"where the study's run folder '.*rotated-digits-0123456789' does not exist: the "
        r"stage folders must be on a filesystem every node of the Ray cluster sees at the same "
        r"path\. Pass --out as an absolute path on a shared filesystem, or run the study with "
        r"--executor local",
    ):
        task()
