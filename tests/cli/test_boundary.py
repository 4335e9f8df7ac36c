"""The error boundary of the CLI: one line for what the user caused, a traceback for bugs.

User-caused: a BasinscopeError, a file-system OSError (read-only, no permission, disk
full, a file in the way) and running out of memory; each prints ``error: <one line>``
and exits with 2. Anything else is a bug: the traceback, a line asking to report it with
the version, exit status 1.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

import basinscope
import basinscope.cli.landscape as landscape
import basinscope.store.atomic as atomic
from basinscope.errors import BasinscopeError, one_line
from untrusted import evil_checkpoint
from user_errors import assert_one_line

TINY = ["--model", "mlp", "--xrange", "-1:1:3", "--yrange", "-1:1:3", "--splits", "train"]
QUIET = ["--no-progress", "--no-plot", "--strategy", "loop"]
TRAIN = ["train", "--model", "mlp", "--steps", "2", "--no-progress"]
STUDY = ["study", "flatness-vs-batch-size", "--quick", "--no-progress"]


def test_one_line_joins_the_lines_of_a_message():
    assert one_line("a differs (2):\n  x: 1 -> 2\n  y\nTo resume, repeat") == (
        "a differs (2): x: 1 -> 2; y; To resume, repeat"
    )
    assert one_line("plain") == "plain"


def test_a_bug_shows_the_traceback_and_asks_for_a_report(cli, monkeypatch):
    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug inside basinscope")

    monkeypatch.setattr(landscape, "line_from_files", bug)
    res = cli("interpolate", "--model", "mlp", *QUIET)
    assert res.code == 1
    assert res.err.startswith("Traceback (most recent call last):"), res.err
    assert "ZeroDivisionError: a bug inside basinscope" in res.err
    last = res.err.strip().splitlines()[-1]
    assert last == (
        f"error: internal error in basinscope {basinscope.__version__} (a bug, not a problem "
        "with your input); please report it with the command you ran and the traceback above"
    )


def test_a_multi_line_user_error_prints_one_line(cli, monkeypatch):
    def refuse(*args, **kwargs):
        raise BasinscopeError("first line:\n  second\nthird")

    monkeypatch.setattr(landscape, "line_from_files", refuse)
    assert_one_line(cli("interpolate", "--model", "mlp", *QUIET), "first line: second; third")


@pytest.mark.parametrize(
    "exc, patterns",
    [
        (MemoryError(), [r"ran out of memory \(MemoryError: \)", r"fewer grid points"]),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate "
                "memory: you tried to allocate 80000000000 bytes."
            ),
            [r"ran out of memory \(\[enforce fail", r"a smaller --batch-size or --chunk-size"],
        ),
    ],
    ids=["MemoryError", "torch-allocator"],
)
def test_running_out_of_memory_is_one_line(cli, monkeypatch, exc, patterns):
    def oom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(landscape, "line_from_files", oom)
    assert_one_line(cli("interpolate", "--model", "mlp", *QUIET), *patterns)


# -- output folders -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["surface", *TINY, *QUIET],
        TRAIN,
        ["barrier", "--model", "mlp", "--no-progress"],
        ["hessian", "--model", "mlp", "--no-progress"],
        STUDY,
    ],
    ids=["surface", "train", "barrier", "hessian", "study"],
)
def test_out_that_is_a_file(cli, tmp_path, args):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    assert_one_line(
        cli(*args, "--out", f),
        rf"--out '{re.escape(str(f))}' is a file, not a folder: a run is written into a folder",
        rf"e\.g\. --out {re.escape(str(f))}-run",
    )
    assert f.read_text() == "mine"
    assert_one_line(
        cli(*args, "--out", f / "sub"),
        r"--out '.*notes\.txt/sub' lies under '.*notes\.txt', which is a file, not a folder",
    )


@pytest.mark.parametrize(
    "read_only, reason",
    [
        (
            True,
            r"the file system is read-only \(EROFS\)\. To fix: pass an output folder \(--out\) on a writable disk",
        ),
        (
            False,
            r"permission denied \(EACCES\)\. To fix: pass an output folder \(--out\) you can write to",
        ),
    ],
)
@pytest.mark.parametrize(
    "args", [["surface", *TINY, *QUIET], TRAIN, STUDY], ids=["surface", "train", "study"]
)
def test_unwritable_out_is_refused_before_any_work(
    cli, monkeypatch, tmp_path, args, read_only, reason
):
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: False)
    monkeypatch.setattr(atomic, "_read_only", lambda path: read_only)
    monkeypatch.setattr(landscape, "load_model", _must_not_run)
    out = tmp_path / "runs" / "a"
    assert_one_line(
        cli(*args, "--out", out),
        rf"^error: could not write the run folder '{re.escape(str(out))}' "
        rf"\(in '{re.escape(str(tmp_path))}'\): {reason}",
    )
    assert not (tmp_path / "runs").exists()


def test_show_config_needs_no_writable_folder(cli, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./basinscope-runs, which click would check
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: False)
    res = cli("study", "flatness-vs-batch-size", "--show-config")
    assert res.code == 0, res.err
    assert "grid = 41" in res.out


def _must_not_run(*args, **kwargs):
    raise AssertionError("the model was loaded before the output folder was checked")


def _refuse_mkdir(monkeypatch, under: Path, code: int) -> None:
    """Path.mkdir under ``under`` fails with ``code`` (a read-only mount, a full disk...)."""
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(under)):
            raise OSError(code, os.strerror(code), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)


@pytest.mark.parametrize(
    "code, patterns",
    [
        (errno.EROFS, [r"the file system is read-only \(EROFS\).*To fix: pass an output folder"]),
        (errno.EACCES, [r"permission denied \(EACCES\).*To fix: pass an output folder \(--out\)"]),
        (errno.ENOSPC, [r"no space left on the device \(ENOSPC\).* run the same command again"]),
    ],
    ids=["EROFS", "EACCES", "ENOSPC"],
)
@pytest.mark.parametrize(
    "args", [["surface", *TINY, *QUIET], TRAIN, STUDY], ids=["surface", "train", "study"]
)
def test_file_system_errors_while_writing(cli, monkeypatch, tmp_path, args, code, patterns):
    """The OS refuses a write after the up-front checks passed: still one clear line."""
    out = tmp_path / "out"
    _refuse_mkdir(monkeypatch, out, code)
    assert_one_line(
        cli(*args, "--out", out),
        rf"^error: (could not write the [a-z ]+|cannot use) '{re.escape(str(out))}.*': ",
        *patterns,
    )


def test_an_unexpected_os_error_is_a_bug(cli, monkeypatch, tmp_path):
    out = tmp_path / "out"
    _refuse_mkdir(monkeypatch, out, errno.EBADF)
    res = cli("surface", *TINY, *QUIET, "--out", out)
    assert res.code == 1 and "Traceback" in res.err
    assert "internal error in basinscope" in res.err


def test_align_save_under_a_file(cli, tmp_path):
    from basinscope.models import build_model, save_weights

    a = save_weights(build_model("mlp", init_seed=0), tmp_path / "a.safetensors")
    b = save_weights(build_model("mlp", init_seed=1), tmp_path / "b.safetensors")
    (tmp_path / "f").write_text("x")
    args = ["align", "--model", "mlp", "--weights", a, "--weights", b, "--num-points", "3"]
    assert_one_line(
        cli(
            *args,
            "--no-progress",
            "--save",
            tmp_path / "f" / "x.safetensors",
            "--out",
            tmp_path / "run",
        ),
        r"cannot use '.*/f': a file of that name is in the way \(EEXIST\)\. To fix: remove it",
    )


def test_malicious_checkpoint_through_the_command_line(cli, tmp_path):
    path, marker = evil_checkpoint(tmp_path)
    assert_one_line(
        cli("surface", *TINY, *QUIET, "--weights", path, "--out", tmp_path / "out"),
        r"could not read '.*evil\.pt' as a PyTorch checkpoint \(UnpicklingError: Unsupported "
        r"global",
        "no code in the file runs",
    )
    assert not marker.exists()
