"""A real full disk and a real read-only disk: small tmpfs mounts (skipped where this
process may not mount one, i.e. when not root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import xarray as xr

from basinscope.store.atomic import is_temp_name
from processes import basinscope_cmd, invoke, run, surface_cmd

pytestmark = pytest.mark.slow  # ~25 s: four runs of `basinscope surface` in subprocesses


def _mount(where, options: str):
    where.mkdir()
    try:
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e})")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    return where


@pytest.fixture
def small_disk(tmp_path):
    disk = _mount(tmp_path / "disk", "size=16m")
    yield disk
    subprocess.run(["umount", str(disk)], check=False, timeout=60)


@pytest.fixture
def read_only_disk(tmp_path):
    disk = _mount(tmp_path / "ro", "size=1m,ro")
    yield disk
    subprocess.run(["umount", str(disk)], check=False, timeout=60)


def _leave_free(disk, free: int):
    """Fill ``disk`` with a filler file until ``free`` bytes are left."""
    st = os.statvfs(disk)
    avail = st.f_bavail * st.f_frsize
    assert avail > free
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * (avail - free))


def _disk_usage(folder, skip: str | None = None) -> int:
    """Bytes the files under ``folder`` (but not under ``skip``) take in 4 KiB pages."""
    total = 0
    for p in folder.rglob("*"):
        if p.is_file() and (skip is None or skip not in p.parts):
            total += -(-p.stat().st_size // 4096) * 4096
    return total


def _error_line(r) -> str:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    (line,) = r.stderr.strip().splitlines()
    return line


def _results(run_dir) -> xr.Dataset:
    from basinscope.store import load

    return load(run_dir).dataset


def test_a_full_disk_stops_with_one_line_and_the_same_command_resumes(tmp_path, small_disk):
    ref = tmp_path / "ref"
    r = run(basinscope_cmd(*surface_cmd(ref, 5)))
    assert r.returncode == 0, r.stderr
    out = small_disk / "run"
    cmd = basinscope_cmd(*surface_cmd(out, 5))

    # 1. almost no space: the run stops while writing its first files
    _leave_free(small_disk, 16 * 1024)
    line = _error_line(run(cmd))
    assert line.startswith("error: could not write the "), line
    assert f"{out}" in line and "no space left on the device (ENOSPC)" in line
    assert "run the same command again" in line
    if (out / "manifest.json").exists():
        json.loads((out / "manifest.json").read_text())  # never a partial manifest

    # 2. room for the grid but not for the figures (the case of the issue)
    (small_disk / "filler").unlink()
    _leave_free(small_disk, _disk_usage(ref, skip="figures") + 256 * 1024)
    line = _error_line(run(cmd))
    assert line.startswith("error: could not write the figure "), line
    assert "no space left on the device (ENOSPC)" in line
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    finished_grid = _results(out)

    # 3. space freed: the same command finishes, with the numbers of a run on a roomy disk
    (small_disk / "filler").unlink()
    r = run(cmd)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "manifest.json").read_text())["evaluation"] == manifest["evaluation"]
    done, expected = _results(out), _results(ref)
    for v in expected.data_vars:
        assert done[v].values.tobytes() == expected[v].values.tobytes(), v
        assert np.array_equal(done[v].values, finished_grid[v].values)
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        p.name for p in (ref / "figures").iterdir()
    )
    assert not [p for p in out.rglob("*") if is_temp_name(p.name)]
    shutil.rmtree(out)


@pytest.mark.parametrize(
    "command",
    [
        ["surface", "--model", "mlp", "--xrange", "-1:1:3", "--yrange", "-1:1:3", "--no-plot"],
        ["train", "--model", "mlp", "--steps", "2", "--no-progress"],
        ["study", "rotated-digits", "--quick", "--no-progress"],
    ],
    ids=["surface", "train", "study"],
)
def test_a_read_only_output_stops_with_one_line(read_only_disk, command):
    code, _, err = invoke(*command, "--out", read_only_disk / "run")
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: could not write the "), line
    assert "the file system is read-only (EROFS)" in line
    assert "pass an output folder (--out) on a writable disk" in line
