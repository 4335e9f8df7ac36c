"""The driver of a Ray run killed with SIGKILL in the middle of `basinscope surface
--executor ray`, then the same command again: it resumes from the journal and the arrays
are bit for bit those of an uninterrupted local run.

The model (gated_model.py) stops at a gate in a worker's 60th forward pass and says so
through a FIFO, so the driver is killed with chunks finished and others in flight,
without watching a clock. Ray's own processes of the killed run are removed afterwards
with the process group the test started.
"""

from __future__ import annotations

import importlib.util
import os
import select
import signal
import subprocess
from pathlib import Path

import pytest


def _sibling(name: str):
    """test_resume_kill's command, gate and checks (tests/cli is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"_{name}", Path(__file__).with_name(f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_kill = _sibling("test_resume_kill")
CHUNK, GATE_TIMEOUT, N_AXIS, N_CHUNKS = (
    _kill.CHUNK,
    _kill.GATE_TIMEOUT,
    _kill.N_AXIS,
    _kill.N_CHUNKS,
)
RUN_TIMEOUT, command, _env, status, load = (
    _kill.RUN_TIMEOUT, _kill.command, _kill._env, _kill.status, _kill.load
)  # fmt: skip
assert_bitwise_equal, assert_interrupted_midway = (
    _kill.assert_bitwise_equal, _kill.assert_interrupted_midway
)  # fmt: skip
done_chunks = _kill.done_chunks

if os.environ.get("CI"):  # CI installs the dev extra: there a missing ray fails, not skips
    import ray  # noqa: F401
pytest.importorskip("ray", reason="the ray extra (make test installs it)")

# ~30 s: a local run, a Ray run killed at the gate, the resumed Ray run (each starts Ray)
pytestmark = pytest.mark.slow

RAY = ["--executor", "ray", "--workers", "2"]


def run(out, *extra) -> dict:
    import json

    proc = subprocess.run(
        [*command(out), *extra], capture_output=True, text=True, timeout=RUN_TIMEOUT, env=_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def test_a_killed_ray_driver_resumes_from_the_journal_bit_for_bit(tmp_path):
    reference = tmp_path / "local"
    run(reference)  # uninterrupted, in this process's executor

    out = tmp_path / "ray"
    gate = tmp_path / "gate"
    gate.mkdir()
    os.mkfifo(gate / "ready")
    proc = subprocess.Popen(
        [*command(out), *RAY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(gate),
        start_new_session=True,  # the driver and the Ray processes it starts: one group
    )
    ready = os.open(gate / "ready", os.O_RDONLY | os.O_NONBLOCK)
    try:
        message = b""
        while b"ready\n" not in message:  # a Ray worker reached the gate
            readable, _, _ = select.select([ready], [], [], GATE_TIMEOUT)
            if not readable:
                pytest.fail(f"no worker reached the gate within {GATE_TIMEOUT} s")
            message += os.read(ready, 64)
            if proc.poll() is not None:
                pytest.fail(f"the run ended ({proc.returncode}): {proc.stderr.read()}")
        assert status(out) == "running"
        os.kill(proc.pid, signal.SIGKILL)  # the driver only
        proc.communicate(timeout=RUN_TIMEOUT)
        assert proc.returncode == -signal.SIGKILL
    finally:
        os.close(ready)
        try:  # Ray's processes of the killed session (a worker waits at the gate)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    n_done = assert_interrupted_midway(out)

    summary = run(out, *RAY)
    evaluation = summary["evaluation"]
    assert evaluation["executor"] == "ray"
    assert evaluation["points"] == N_AXIS * N_AXIS
    assert 0 < evaluation["points_evaluated"] <= N_AXIS * N_AXIS - n_done * CHUNK
    assert status(out) == "complete" and done_chunks(out) == N_CHUNKS
    assert_bitwise_equal(load(out), load(reference))
