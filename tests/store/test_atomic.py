"""Atomic writes and the errors of a full, read-only or forbidden output (injected OSErrors)."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest

from basinscope.errors import BasinscopeError
from basinscope.store import atomic
from basinscope.store.atomic import (
    OutputWriteError,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    is_temp_name,
    remove_stale_temps,
)
from processes import invoke, surface_cmd


def _entries(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert _entries(tmp_path) == ["results.json"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_temporary_names_are_unique_and_beside_the_target(tmp_path):
    names = []
    for _ in range(20):
        with atomic_path(tmp_path / "manifest.json") as tmp:
            assert tmp.parent == tmp_path and is_temp_name(tmp.name)
            assert tmp.name.startswith(".manifest.json.") and tmp.name.endswith(".tmp")
            names.append(tmp.name)
            tmp.write_text("{}")
    assert len(set(names)) == 20


@pytest.mark.parametrize(
    ("code", "reason", "fix"),
    [
        (errno.ENOSPC, r"no space left on the device \(ENOSPC\)", "free some space"),
        (errno.EROFS, r"the file system is read-only \(EROFS\)", "on a writable disk"),
        (errno.EACCES, r"permission denied \(EACCES\)", "you can write to"),
    ],
)
def test_a_failed_write_names_the_file_and_the_fix_and_keeps_the_old_content(
    tmp_path, monkeypatch, code, reason, fix
):
    target = tmp_path / "manifest.json"
    atomic_write_json(target, {"status": "running"})

    def half_then_fail(fd, data):
        os.write(fd, data[: len(data) // 2])
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic, "_write_all", half_then_fail)
    with pytest.raises(OutputWriteError, match=reason) as info:
        atomic_write_json(target, {"status": "complete", "pad": "x" * 10_000}, "run manifest")
    msg = str(info.value)
    assert "\n" not in msg
    assert f"the run manifest {str(target)!r}" in msg and fix in msg
    assert "files already written are unchanged" in msg
    assert isinstance(info.value, BasinscopeError)
    # the old file is intact and the partial temporary file is gone
    assert json.loads(target.read_text()) == {"status": "running"}
    assert _entries(tmp_path) == ["manifest.json"]


def test_other_os_errors_are_not_disguised(tmp_path, monkeypatch):
    def fail(fd, data):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(atomic, "_write_all", fail)
    with pytest.raises(OSError, match="I/O error") as info:
        atomic_write_text(tmp_path / "a.txt", "x")
    assert not isinstance(info.value, OutputWriteError)
    assert _entries(tmp_path) == []


def test_a_writer_that_raises_leaves_no_temporary_and_no_target(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), atomic_path(tmp_path / "fig.png") as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert _entries(tmp_path) == []


def test_stale_temporaries_are_recognised_and_removed(tmp_path):
    (tmp_path / "figures").mkdir()
    keep = ["manifest.json", "notes.tmp", ".hidden", "figures"]
    stale = [".manifest.json.0a1b2c3d.tmp", "manifest.json.tmp", "c0.1234abcd.partial"]
    for name in keep[:3] + stale:
        (tmp_path / name).write_text("x")
    (tmp_path / "figures" / ".surface.png.deadbeef.tmp").write_bytes(b"")
    (tmp_path / ".results.zarr.12345678.tmp").mkdir()
    (tmp_path / ".results.zarr.12345678.tmp" / "zarr.json").write_text("{}")
    assert remove_stale_temps(tmp_path) == 5
    assert _entries(tmp_path) == sorted(keep)
    assert _entries(tmp_path / "figures") == []


def test_leftover_temporaries_never_block_a_run(tmp_path, small_data):
    """A killed writer's temporary files (and the fixed name older versions used) in a
    new run folder: the run starts, and the leftovers are cleaned up."""
    import torch
    from torch import nn

    from basinscope.analyses import random_surface

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json.tmp").write_bytes(b"")  # what ENOSPC left behind before
    (run / ".manifest.json.a1b2c3d4.tmp").write_bytes(b"")
    land = random_surface(model, small_data, alphas=np.linspace(-1, 1, 3), betas=[0.0], run_dir=run)
    assert land.run_dir == run
    assert not [p for p in run.rglob("*") if is_temp_name(p.name)]
    assert json.loads((run / "manifest.json").read_text())["status"] == "complete"


def test_enospc_while_writing_figures_is_one_line_and_the_command_then_resumes(
    tmp_path, monkeypatch
):
    """The case reported in the issue: the disk fills up while `basinscope surface` writes
    its figures. The command ends with one line naming the figure; nothing written before is
    damaged; with space again, the same command finishes (without recomputing the grid)."""
    from matplotlib.figure import Figure

    out = tmp_path / "run"
    args = surface_cmd(out, 3)
    real_savefig = Figure.savefig

    def savefig_on_a_full_disk(self, fname, *a, **kw):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig_on_a_full_disk)
    code, _, err = invoke(*args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not write the figure "), err
    # the first figure drawn: the contour of the first loss (the result's own figure, the
    # same image, is copied from it afterwards)
    assert "figures/train_loss_contour.png" in lines[0]
    assert "no space left on the device (ENOSPC)" in lines[0]
    assert "run the same command again" in lines[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"  # the grid was finished before the figures
    assert not [p for p in out.rglob("*") if is_temp_name(p.name)]
    assert not (out / "figures" / "train_loss_contour.png").exists()

    monkeypatch.setattr(Figure, "savefig", real_savefig)
    code, out_text, err = invoke(*args, "--json")
    assert code == 0, err
    assert json.loads(out_text)["definition"] == "surface"
    # the stored grid was loaded, not computed again
    assert json.loads((out / "manifest.json").read_text())["evaluation"] == manifest["evaluation"]
    assert (out / "figures" / "train_loss_contour.png").stat().st_size > 1000
    assert not [p for p in out.rglob("*") if is_temp_name(p.name)]
