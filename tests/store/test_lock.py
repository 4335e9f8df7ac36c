"""One writer per folder, tested with real second processes.

Every test synchronises on events (a line a child prints, a child's exit), never on the
clock.
"""

from __future__ import annotations

import json
import signal

import pytest

from basinscope.errors import BasinscopeError
from basinscope.experiments.stages import StageLog, cached_stage, stage_dir
from basinscope.store import FolderBusyError, lock_folder, waiting
from basinscope.store import lock as lock_module
from basinscope.store.lock import LOCK_NAME
from processes import (
    basinscope_cmd,
    finish,
    python_cmd,
    read_until,
    run,
    start,
    surface_cmd,
)

# A process that holds a folder's lock until it reads a line on stdin.
HOLDER = """
import sys
from basinscope.store import lock_folder
lock = lock_folder(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
"""


@pytest.fixture
def holder(tmp_path):
    """``holder(folder) -> Popen``: a second process that has locked ``folder``."""
    procs = []

    def hold(folder):
        proc = start([*python_cmd(HOLDER), str(folder)])
        procs.append(proc)
        read_until(proc.stdout, "locked")
        return proc

    yield hold
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, holder):
    out = tmp_path / "run"
    proc = holder(out)
    r = run(basinscope_cmd(*surface_cmd(out, 3, "--no-plot")))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: the run folder {str(out)!r} is being written by PID {proc.pid}")
    assert "started 20" in line and "running `" in line
    assert "pass --wait to wait for it" in line
    assert not (out / "manifest.json").exists()  # nothing was written


def test_wait_waits_for_the_holder_and_then_runs(tmp_path, holder):
    out = tmp_path / "run"
    proc = holder(out)
    waiter = start(basinscope_cmd(*surface_cmd(out, 3, "--no-plot", "--wait", "--json")))
    read_until(waiter.stderr, f"waiting for PID {proc.pid}")
    assert waiter.poll() is None  # blocked on the lock, which the holder still has
    assert not (out / "manifest.json").exists()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    read_until(proc.stdout, "released")
    code, stdout, stderr = finish(waiter)
    assert code == 0, stderr
    assert json.loads(stdout)["evaluation"]["points"] == 9
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    assert not (out / LOCK_NAME).exists()  # released in good order: no lock file left


def test_the_lock_of_a_killed_holder_is_taken_over(tmp_path, holder):
    out = tmp_path / "run"
    proc = holder(out)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    record = json.loads((out / LOCK_NAME).read_text())  # left behind by the killed holder
    assert record["pid"] == proc.pid
    r = run(basinscope_cmd(*surface_cmd(out, 3, "--no-plot")))
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["lock_taken_over"]["pid"] == proc.pid
    assert manifest["status"] == "complete"
    assert not (out / LOCK_NAME).exists()


def test_a_study_run_folder_is_locked(tmp_path, holder):
    from basinscope.experiments.registry import config_hash, make_config, run_study

    cfg = make_config("rotated-digits", quick=True, sets=["angles=[0]"])
    run_dir = tmp_path / f"rotated-digits-{config_hash('rotated-digits', cfg)}"
    proc = holder(run_dir)
    with pytest.raises(FolderBusyError, match=rf"study run folder .* PID {proc.pid}"):
        run_study("rotated-digits", tmp_path, cfg, say=lambda m: None)
    assert not (run_dir / "manifest.json").exists()
    assert not (tmp_path / "stages").exists()  # refused before any stage ran


STAGE_HOLDER = """
import sys
from basinscope.experiments.stages import cached_stage

def compute(d):
    print("computing", flush=True)
    sys.stdin.readline()
    return {"by": "holder"}

cached_stage(sys.argv[1], "shared", {"k": 1}, compute)
print("done", flush=True)
"""


def test_a_stage_another_process_computes_is_refused_or_waited_for_and_reused(
    tmp_path, monkeypatch
):
    """Two studies sharing ``stages/``: the second finds a stage the first is computing."""
    proc = start([*python_cmd(STAGE_HOLDER), str(tmp_path)])
    try:
        read_until(proc.stdout, "computing")
        calls = []

        def compute(d):
            calls.append(d)
            return {"by": "me"}

        with pytest.raises(FolderBusyError, match=rf"stage folder .* PID {proc.pid}"):
            cached_stage(tmp_path, "shared", {"k": 1}, compute)

        def release_holder(msg: str) -> None:  # called once we wait for the lock
            assert f"waiting for PID {proc.pid}" in msg
            proc.stdin.write("go\n")
            proc.stdin.flush()

        monkeypatch.setattr(lock_module, "_stderr", release_holder)
        log = StageLog()
        with waiting(True):
            result, folder = cached_stage(tmp_path, "shared", {"k": 1}, compute, log=log)
        assert result == {"by": "holder"} and calls == []  # reused what the holder computed
        assert folder == stage_dir(tmp_path, "shared", {"k": 1})
        assert log.reused == [folder.name]
    finally:
        code, _out, err = finish(proc)
    assert code == 0, err


WRITER = """
import json, sys
from basinscope.store.atomic import atomic_write_json
path, me = sys.argv[1], sys.argv[2]
print("ready", flush=True)
sys.stdin.readline()
failed = bad_reads = 0
for i in range(300):
    try:
        atomic_write_json(path, {"writer": me, "i": i, "pad": "x" * 4000})
    except Exception:
        failed += 1
    try:
        json.loads(open(path).read())
    except Exception:
        bad_reads += 1
print(json.dumps({"failed": failed, "bad_reads": bad_reads}), flush=True)
"""


def test_two_processes_updating_one_manifest_never_fail_or_read_invalid_json(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("{}")
    writers = [start([*python_cmd(WRITER), str(target), str(i)]) for i in range(2)]
    for w in writers:
        read_until(w.stdout, "ready")
    for w in writers:  # both start writing at once
        w.stdin.write("go\n")
        w.stdin.flush()
    counts = []
    for w in writers:
        code, out, err = finish(w)
        assert code == 0, err
        counts.append(json.loads(out.strip().splitlines()[-1]))
    assert counts == [{"failed": 0, "bad_reads": 0}] * 2
    assert json.loads(target.read_text())["i"] == 299
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no temporaries


def test_locks_are_reentrant_within_a_process_and_released_with_the_last_reference(tmp_path):
    a = lock_folder(tmp_path / "f")
    b = lock_folder(tmp_path / "f")
    assert (tmp_path / "f" / LOCK_NAME).exists()
    a.release()
    a.release()  # once per reference
    assert (tmp_path / "f" / LOCK_NAME).exists()
    b.release()
    assert not (tmp_path / "f" / LOCK_NAME).exists()


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(BasinscopeError, match="exists and is not a folder"):
        lock_folder(tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_command_that_fails_in_this_process_releases_its_lock(tmp_path):
    """The CLI's lock lives as long as the command, however it ends."""
    from processes import invoke

    out = tmp_path / "run"
    code, _, err = invoke(*surface_cmd(out, 3, "--no-plot", "--metrics", "loss,nonsense"))
    assert code == 2 and "nonsense" in err, err
    assert not out.exists()  # made for the lock, removed with it: nothing was written there
    assert not (out / LOCK_NAME).exists()
    assert not lock_module._HELD
