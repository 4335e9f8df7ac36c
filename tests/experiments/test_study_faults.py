"""A study gives the same numbers on every run, and after SIGKILL at any moment.

Two fresh runs of a tiny rotated-digits configuration in two roots agree on every value of
result.json except the volatile fields (timings, reuse flags, absolute paths:
``registry.VOLATILE_FIELDS``), because every choice that would be made by timing is pinned
in the configuration (``eval_strategy``, ``hvp_method``). A run killed at ten random
moments and run again each time ends with the same numbers.

The moments are events, not times: the child runs with the test-only fault hook
``BASINSCOPE_TEST_KILL_AT_WRITE=k`` (``basinscope.store.atomic``) and SIGKILLs itself at
its k-th atomic write, after the temporary file is written and before it replaces the
target. The ten moments are drawn by a seeded RNG among the N writes of an uninterrupted
run (counted with ``BASINSCOPE_TEST_KILL_AT_WRITE=count``); each rerun starts where the last
one was killed and is killed at the next moment, then a last rerun finishes the study.
"""

from __future__ import annotations

import json
import random
import re
import signal

import pytest

from basinscope.experiments.registry import VOLATILE_FIELDS, reproducible_part
from processes import basinscope_cmd, run

# The smoke version of the rotated-digits study, cut to one angle and one strategy.
TINY = ["angles=[0]", 'strategies=["ft"]']
KILLS = 10
SEED = 20261204
WRITE = re.compile(r"^basinscope-test-write (\d+) (.*)$", re.M)


def study_cmd(out) -> list[str]:
    sets = [a for s in TINY for a in ("--set", s)]
    return basinscope_cmd(
        "study", "rotated-digits", "--smoke", *sets, "--out", out, "--no-progress"
    )


def results(root) -> dict:
    (run_dir,) = [p for p in root.iterdir() if p.name.startswith("rotated-digits-")]
    return json.loads((run_dir / "result.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """An uninterrupted run: its results and the paths of its atomic writes, in order."""
    root = tmp_path_factory.mktemp("study") / "uninterrupted"
    r = run(study_cmd(root), BASINSCOPE_TEST_KILL_AT_WRITE="count")
    assert r.returncode == 0, r.stderr[-3000:]
    writes = [(int(n), path) for n, path in WRITE.findall(r.stderr)]
    assert [n for n, _ in writes] == list(range(1, len(writes) + 1))
    return results(root), [path for _, path in writes]


@pytest.mark.slow  # ~12 s (and ~12 s for the uninterrupted run it shares)
def test_two_fresh_runs_give_identical_results(uninterrupted, tmp_path):
    first, _ = uninterrupted
    r = run(study_cmd(tmp_path / "again"))
    assert r.returncode == 0, r.stderr[-3000:]
    second = results(tmp_path / "again")
    assert reproducible_part(second) == reproducible_part(first)
    # the comparison covers the numbers: only timings, reuse flags and paths are left out
    assert set(VOLATILE_FIELDS) == {"seconds", "chunk_seconds", "points_per_second", "trial"} | {
        "reused",
        "run_dir",
        "report",
    }
    angle = reproducible_part(first)["angles"]["0"]
    assert angle["criticality"]["pre-trained"]["modules"]["fc1"]["loss"]
    # every choice that used to be timed is pinned and recorded per stage
    assert angle["lines"]["ft"]["strategy"] == "loop"
    assert {s["strategy"] for s in angle["surfaces"].values()} == {"loop"}
    assert {c["settings"]["strategy"] for c in angle["criticality"].values()} == {"loop"}
    assert {row["copies"]["evaluation"]["strategy"] for row in angle["connectivity"].values()} == {
        "loop"
    }
    assert {c["hvp_method"] for c in angle["curvature"].values()} == {"double-backward"}


@pytest.mark.slow  # ~55 s: eleven runs of the tiny study in subprocesses
def test_killed_at_ten_random_moments_and_rerun_gives_identical_results(uninterrupted, tmp_path):
    expected, writes = uninterrupted
    moments = sorted(random.Random(SEED).sample(range(1, len(writes) + 1), KILLS))
    out = tmp_path / "killed"
    done = 0
    for moment in moments:
        # this run starts where the last one was killed: kill it (moment - done) writes later
        r = run(study_cmd(out), BASINSCOPE_TEST_KILL_AT_WRITE=str(moment - done))
        assert r.returncode == -signal.SIGKILL, (
            f"the run to be killed at write {moment} ({writes[moment - 1]}) ended with "
            f"{r.returncode}:\n{r.stderr[-3000:]}"
        )
        done = moment
    r = run(study_cmd(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert reproducible_part(results(out)) == reproducible_part(expected)
    # the killed runs' temporary files and lock files were cleaned up when taken over
    leftovers = [p for p in out.rglob("*") if p.name.endswith((".tmp", ".basinscope.lock"))]
    assert leftovers == [], leftovers


@pytest.mark.parametrize("name", ["rotated-digits", "flatness-vs-batch-size", "skip-connections"])
@pytest.mark.parametrize(("key", "bad"), [("eval_strategy", "auto"), ("hvp_method", "auto")])
def test_study_settings_never_leave_a_choice_to_timing(name, key, bad):
    from basinscope.errors import BasinscopeError
    from basinscope.experiments.registry import make_config

    assert getattr(make_config(name), key) in {"loop", "vmap", "double-backward"}
    with pytest.raises(BasinscopeError, match=f"{key} 'auto': expected one of .*choose by timing"):
        make_config(name, sets=[f"{key}={bad}"])
