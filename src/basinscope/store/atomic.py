"""Atomic file writes, and clear errors when the output cannot be written.

Every file basinscope writes (manifests, results, settings, tensors, figures, reports)
goes through :func:`atomic_path` or one of the ``atomic_write_*`` helpers: the content is
written to a temporary file with a *unique* name in the target's folder, flushed to disk
(``fsync``) and renamed over the target (``os.replace``). A reader, a second writer or a
crash therefore sees either the old file or the new one, never a partial file, and two
processes writing the same file never share a temporary name.

A temporary file is named ``.<name>.<random>.tmp``. One left behind by a killed process is
harmless (it never blocks a rerun) and is removed by :func:`remove_stale_temps` when the
folder's lock is next taken (see :mod:`basinscope.store.lock`).

A full disk (``ENOSPC``, ``EDQUOT``), a read-only file system (``EROFS``), missing
permissions (``EACCES``, ``EPERM``) or an unusable path (``ENOTDIR``, ``ENAMETOOLONG``) raise
:class:`OutputWriteError`: one line saying which file could not be written, why, and how to
fix it; the target is left as it was.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from basinscope.errors import BasinscopeError, os_error_reason

__all__ = [
    "KILL_AT_WRITE_ENV",
    "OutputWriteError",
    "atomic_folder",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_writable_folder",
    "is_temp_name",
    "output_errors",
    "remove_stale_temps",
]

# Test-only fault injection, for the kill-and-resume tests: a process with
# BASINSCOPE_TEST_KILL_AT_WRITE=k sends itself SIGKILL at its k-th atomic write, after the
# temporary file is complete and before it replaces the target (the worst moment for the
# target); with BASINSCOPE_TEST_KILL_AT_WRITE=count it prints "basinscope-test-write <n>
# <path>" on stderr at each write instead. Unset (always, outside tests), it costs nothing.
KILL_AT_WRITE_ENV = "BASINSCOPE_TEST_KILL_AT_WRITE"
_writes = 0

_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
_LEGACY_TEMPS = ("manifest.json.tmp", "result.json.tmp", "results.json.tmp", "settings.json.tmp")


class OutputWriteError(BasinscopeError):
    """An output file could not be written: the disk is full, read-only or not ours."""


@contextmanager
def output_errors(path: str | Path, what: str = "file") -> Iterator[None]:
    """Turn a full disk, a read-only file system or a permission error raised inside the
    block into an :class:`OutputWriteError` that names ``what`` and ``path``."""
    try:
        yield
    except OSError as e:
        reason = os_error_reason(e)
        if reason is None or e.errno in (errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.EMFILE):
            raise
        raise OutputWriteError(
            f"could not write the {what} {str(path)!r}: {reason[0]}; files already written "
            f"are unchanged. To fix: {reason[1]}"
        ) from None


def _fault_point(path: Path) -> None:
    global _writes
    at = os.environ.get(KILL_AT_WRITE_ENV)
    if not at:
        return
    _writes += 1
    if at == "count":
        print(f"basinscope-test-write {_writes} {path}", file=sys.stderr, flush=True)
    elif _writes == int(at):
        os.kill(os.getpid(), signal.SIGKILL)


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _unique_temp(path: Path, create: Callable[[Path], None]) -> Path:
    """Create (with ``create``) and return ``.<name>.<8 random hex digits>.tmp`` beside
    ``path``. Unlike ``tempfile.mkstemp`` the mode follows the umask, as for any file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            create(tmp)
            return tmp
        except FileExistsError:
            continue


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not sync directories
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, what: str = "file") -> Iterator[Path]:
    """A temporary path in ``path``'s folder for a writer that needs a path; on a normal
    exit it is synced and renamed over ``path``, on an error it is removed.

    ::

        with atomic_path(run / "figures" / "surface.png", "figure") as tmp:
            fig.savefig(tmp, format="png")
    """
    path = Path(path)
    with output_errors(path, what):
        tmp = _unique_temp(path, lambda t: os.close(os.open(t, _CREATE, 0o666)))
    try:
        with output_errors(path, what):
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            _fault_point(path)
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (the low-level write, patched by tests)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write_bytes(path: str | Path, data: bytes, what: str = "file") -> Path:
    """Write ``data`` to ``path`` atomically; see the module docstring."""
    path = Path(path)
    with atomic_path(path, what) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    return path


def atomic_write_text(path: str | Path, text: str, what: str = "file") -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), what)


def atomic_write_json(path: str | Path, obj: Any, what: str = "file", **dumps: Any) -> Path:
    """``json.dumps(obj, **dumps)`` written atomically (``indent=1`` unless given)."""
    dumps.setdefault("indent", 1)
    return atomic_write_text(path, json.dumps(obj, **dumps), what)


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`atomic_path` (or of older versions)."""
    return bool(_TEMP_RE.match(name)) or name in _LEGACY_TEMPS or name.endswith(".partial")


def remove_stale_temps(folder: str | Path) -> int:
    """Remove temporary files and folders left in ``folder`` (recursively) by killed writers.

    Only safe while holding the folder's lock: nobody else can be writing them. Returns
    how many were removed.
    """
    import shutil

    removed = 0
    for root, dirs, files in os.walk(folder):
        for d in [d for d in dirs if is_temp_name(d)]:
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)
            dirs.remove(d)
            removed += 1
        for f in files:
            if is_temp_name(f):
                try:
                    os.unlink(os.path.join(root, f))
                    removed += 1
                except OSError:
                    pass
    return removed


@contextmanager
def atomic_folder(path: str | Path, what: str = "folder") -> Iterator[Path]:
    """Like :func:`atomic_path` for a writer that fills a folder (e.g. a Zarr store): the
    temporary folder replaces ``path`` (and whatever was there) when the block succeeds."""
    import shutil

    path = Path(path)
    with output_errors(path, what):
        tmp = _unique_temp(path, lambda t: os.mkdir(t, 0o777))
    try:
        with output_errors(path, what):
            yield tmp
            _fault_point(path)
            if path.exists():  # a crash between these two steps leaves no folder, never
                shutil.rmtree(path)  # a mix of the old and the new one
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_writable_folder(path: str | Path | None, flag: str = "--out") -> Path | None:
    """Refuse an output folder that cannot be one, before any work starts.

    ``None`` stands for the default ``basinscope-runs/...`` in the working folder. Refused:
    a path that is a file (or lies under one), and a folder whose nearest existing
    ancestor is on a read-only file system or not writable by this user.
    """
    target = Path("basinscope-runs") if path is None else Path(path)
    shown = str(target)
    if target.exists() and not target.is_dir():
        raise BasinscopeError(
            f"{flag} {shown!r} is a file, not a folder: a run is written into a folder. Pass "
            f"a new or existing folder, e.g. {flag} {shown}-run"
        )
    ancestor = target
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise BasinscopeError(
            f"{flag} {shown!r} lies under {str(ancestor)!r}, which is a file, not a folder; "
            f"choose another {flag} folder"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        where = "" if ancestor == target else f" (in {str(ancestor.resolve())!r})"
        code = errno.EROFS if _read_only(ancestor) else errno.EACCES
        reason, fix = os_error_reason(OSError(code, os.strerror(code)))
        default = "" if path is not None else " (the default is under the working folder)"
        raise BasinscopeError(
            f"could not write the run folder {shown!r}{where}: {reason}{default}. To fix: {fix}"
        )
    return None if path is None else Path(path)


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False
