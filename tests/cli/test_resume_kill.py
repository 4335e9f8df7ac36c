"""Resume after a real kill: SIGKILL or Ctrl-C (SIGINT) in the middle of `basinscope surface`,
then the same command again, gives results bit for bit equal to an uninterrupted run.

The commands run in subprocesses (``python -m basinscope``), as a user would run them.
The model (tests/cli/gated_model.py) stops at a gate in its 60th forward pass and says so
through a FIFO: the test interrupts it there, with several chunks finished and one in
flight, without watching a clock.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

# ~15-20 s in all (five subprocess runs) on a busy 2-core machine
pytestmark = pytest.mark.slow

# 15 x 15 = 225 points in chunks of 3: 75 chunks; the gate stops the run in its 11th
N_AXIS = 15
CHUNK = 3
N_CHUNKS = -(-(N_AXIS * N_AXIS) // CHUNK)
GATE_TIMEOUT = 240.0  # a safety net only: the test waits for the gate's message
RUN_TIMEOUT = 300.0
TESTS_CLI = Path(__file__).parent


def command(out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "basinscope",
        "surface",
        "--model",
        "gated_model:gated_mlp",
        "--xrange",
        f"-1:1:{N_AXIS}",
        "--yrange",
        f"-1:1:{N_AXIS}",
        "--chunk-size",
        str(CHUNK),
        "--strategy",
        "loop",
        "--splits",
        "train",
        "--no-progress",
        "--no-plot",
        "--json",
        "--out",
        str(out),
    ]


def _env(gate: Path | None = None) -> dict[str, str]:
    # The same environment, so the same thread count, for every run that is compared. One
    # thread: on a busy 2-core machine, two OpenMP threads per tiny forward pass spin against
    # the other load and make the runs ~30x slower (and a single thread is deterministic).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_CLI), env.get("PYTHONPATH")]))
    env.pop("BASINSCOPE_TEST_GATE", None)
    if gate is not None:
        env["BASINSCOPE_TEST_GATE"] = str(gate)
    return env


def run_to_completion(out: Path) -> dict:
    proc = subprocess.run(
        command(out), capture_output=True, text=True, timeout=RUN_TIMEOUT, env=_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def done_chunks(run: Path) -> int | None:
    """Finished chunks in the run's journal, or None while it cannot be read yet."""
    import zarr

    path = run / "journal" / "done"
    if not (path / "zarr.json").exists() and not (path / ".zarray").exists():
        return None
    try:
        return int(np.count_nonzero(zarr.open_array(str(path), mode="r")[:]))
    except Exception:  # being created right now: try again
        return None


def status(run: Path) -> str | None:
    try:
        return json.loads((run / "manifest.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_and_interrupt(out: Path, sig: int) -> subprocess.CompletedProcess:
    """Start the command, wait until its model stops at the gate, send ``sig``, collect it."""
    gate = out.parent / f"{out.name}-gate"
    gate.mkdir()
    os.mkfifo(gate / "ready")
    proc = subprocess.Popen(
        command(out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(gate),
        # Ctrl-C as a terminal delivers it: a suite started in the background (``make test
        # &``) ignores SIGINT, the child would inherit that, and Python then installs no
        # KeyboardInterrupt handler
        preexec_fn=_default_sigint,
    )
    # non-blocking open: the child opens the FIFO for writing when it reaches the gate
    ready = os.open(gate / "ready", os.O_RDONLY | os.O_NONBLOCK)
    try:
        message = b""
        while not message.endswith(b"\n"):
            readable, _, _ = select.select([ready], [], [], GATE_TIMEOUT)
            if not readable:
                pytest.fail(f"the run did not reach the gate within {GATE_TIMEOUT} s")
            chunk = os.read(ready, 64)
            if not chunk and proc.poll() is not None:
                pytest.fail(f"the run ended (status {proc.returncode}): {proc.stderr.read()}")
            message += chunk
        assert message == b"ready\n"
        assert proc.poll() is None
        assert status(out) == "running"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        os.close(ready)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def assert_interrupted_midway(run: Path) -> int:
    """The journal holds some, not all, chunks; no result; the manifest says running."""
    n = done_chunks(run)
    assert n is not None and 1 <= n < N_CHUNKS, (n, N_CHUNKS)
    assert status(run) == "running"
    assert not (run / "result.json").exists()
    return n


def load(run: Path) -> xr.Dataset:
    from basinscope.store import load as load_result

    return load_result(run).dataset


def assert_bitwise_equal(a: xr.Dataset, b: xr.Dataset) -> None:
    assert set(a.data_vars) == set(b.data_vars) == {"train_loss", "train_accuracy"}
    assert a.attrs == b.attrs
    for name in ("alpha", "beta"):
        assert a[name].values.tobytes() == b[name].values.tobytes()
    for name in a.data_vars:
        x, y = a[name].values, b[name].values
        assert x.shape == y.shape == (N_AXIS, N_AXIS)
        assert x.dtype == y.dtype
        assert np.isfinite(x).all()
        assert x.tobytes() == y.tobytes(), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "uninterrupted"
    summary = run_to_completion(out)
    assert summary["evaluation"]["points_evaluated"] == N_AXIS * N_AXIS
    return load(out)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_resume_after_kill_is_bitwise_equal(uninterrupted, tmp_path, how):
    out = tmp_path / "killed"
    proc = start_and_interrupt(out, getattr(signal, how))
    if how == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        assert "interrupted" in proc.stderr
        assert "run the same command again to resume" in proc.stderr
        assert proc.stdout == ""
    n_done = assert_interrupted_midway(out)

    summary = run_to_completion(out)
    # it resumed: only the chunks that were not finished were evaluated
    evaluation = summary["evaluation"]
    assert evaluation["points"] == N_AXIS * N_AXIS
    assert 0 < evaluation["points_evaluated"] <= N_AXIS * N_AXIS - n_done * CHUNK + CHUNK
    assert evaluation["points_evaluated"] < N_AXIS * N_AXIS
    assert status(out) == "complete"
    assert done_chunks(out) == N_CHUNKS
    assert_bitwise_equal(load(out), uninterrupted)
