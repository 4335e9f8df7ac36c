"""One writer per folder: an OS advisory lock on ``<folder>/.basinscope.lock``.

A process that writes a run folder (or a study's stage or run folder) holds an exclusive
``fcntl.flock`` lock on the folder's lock file for as long as it writes. A second process
aimed at the same folder gets a :class:`FolderBusyError` naming the holder (PID, host,
start time and command, which the holder records in the lock file), or, with
``wait=True`` (the commands' ``--wait``), waits until the holder is done.

The operating system releases the lock when its holder exits for any reason, SIGKILL
included, so a killed process never blocks the folder. A holder that finishes in good
order removes the lock file; a lock file found with a record in it was left by a killed
holder, and the process that takes the lock over records whom it replaced in
:attr:`FolderLock.took_over`. Taking the lock also removes the temporary files that killed
writers left in the folder (see :mod:`basinscope.store.atomic`).

Locks are re-entrant within a process: taking a lock this process already holds only
counts a reference, and the lock is released when the last reference is.
"""

from __future__ import annotations

import contextvars
import errno
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from basinscope.errors import BasinscopeError
from basinscope.store.atomic import output_errors, remove_stale_temps

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; folders are not protected there
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "FolderBusyError", "FolderLock", "default_wait", "lock_folder", "waiting"]

LOCK_NAME = ".basinscope.lock"


class FolderBusyError(BasinscopeError):
    """Another process is writing the folder."""


class _Held:
    def __init__(self, fd: int | None, path: Path | None, took_over: dict[str, Any] | None):
        self.fd = fd
        self.path = path
        self.count = 0
        self.took_over = took_over
        self.created: list[Path] = []  # folders the lock made, innermost first

    def remove_empty_created(self) -> None:
        """Remove the folders the lock made if nothing was written into them (a command
        refused after taking the lock leaves no empty run folder behind)."""
        for folder in self.created:
            try:
                folder.rmdir()  # only an empty folder
            except OSError:
                return


_HELD: dict[str, _Held] = {}
_MUTEX = threading.RLock()  # re-entrant: a lock may be released by the garbage collector
_WAIT: contextvars.ContextVar[bool] = contextvars.ContextVar("basinscope_wait", default=False)


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder or "pid" not in holder:
        return "another process (it has not recorded its PID yet)"
    where = f" on {holder['host']}" if holder.get("host") else ""
    since = f", started {holder['started']}" if holder.get("started") else ""
    cmd = f", running `{holder['command']}`" if holder.get("command") else ""
    return f"PID {holder['pid']}{where}{since}{cmd}"


def _read_record(fd: int) -> dict[str, Any] | None:
    try:
        data = os.pread(fd, 4096, 0)
        record = json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _record() -> dict[str, Any]:
    argv = list(sys.argv) or [""]
    prog = Path(argv[0])  # `python -m basinscope` runs basinscope/__main__.py
    argv[0] = prog.parent.name if prog.name == "__main__.py" else prog.name
    cmd = " ".join(argv)
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": cmd[:300],
    }


class FolderLock:
    """One reference to the lock of a folder; :meth:`release` (or leaving a ``with``
    block) gives it back. ``took_over`` is the record of a killed holder whose lock file
    this process took over (``None`` when there was none)."""

    def __init__(self, key: str, held: _Held):
        self._key: str | None = key
        self.took_over = held.took_over
        self.path = Path(key)

    def release(self) -> None:
        with _MUTEX:
            if self._key is None:
                return
            key, self._key = self._key, None
            held = _HELD[key]
            held.count -= 1
            if held.count > 0:
                return
            del _HELD[key]
            if held.fd is not None:
                # released in good order: no lock file is left behind (a waiter that opened
                # this file sees it is gone and locks a new one)
                if held.path is not None and _same_file(held.fd, held.path):
                    try:
                        held.path.unlink()
                    except OSError:
                        pass
                os.close(held.fd)  # closing the descriptor releases the flock
            held.remove_empty_created()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # interpreter shutdown
            pass


def default_wait() -> bool:
    """The ``wait`` of :func:`lock_folder` calls that do not pass one (see :func:`waiting`)."""
    return _WAIT.get()


@contextmanager
def waiting(wait: bool) -> Iterator[None]:
    """Within the block, locks taken without an explicit ``wait`` use this one (a study
    passes its ``wait`` to the locks of all its stages this way)."""
    token = _WAIT.set(bool(wait))
    try:
        yield
    finally:
        _WAIT.reset(token)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def lock_folder(
    folder: str | Path,
    *,
    wait: bool | None = None,
    what: str = "run folder",
    say: Callable[[str], None] | None = None,
) -> FolderLock:
    """Take the lock of ``folder`` (created if missing) for writing.

    Raises :class:`FolderBusyError` if another process holds it, unless ``wait`` is true
    (default: :func:`default_wait`): then it blocks until the holder is done, after telling
    ``say`` (default: stderr) whom it waits for.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BasinscopeError(
            f"{str(folder)!r} exists and is not a folder: the {what} must be a folder. "
            "Choose another output folder (--out)"
        )
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    with output_errors(folder, what):
        folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder)
    with _MUTEX:
        held = _HELD.get(key)
        if held is None:
            held = _acquire(folder, default_wait() if wait is None else wait, what, say or _stderr)
            held.created = missing
            _HELD[key] = held
        held.count += 1
        return FolderLock(key, held)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _acquire(folder: Path, wait: bool, what: str, say: Callable[[str], None]) -> _Held:
    if fcntl is None:
        return _Held(None, None, None)
    path = folder / LOCK_NAME
    while True:
        with output_errors(path, f"lock file of the {what}"):
            # (again: a holder we waited for removes the folder if it made it and left it empty)
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(_read_record(fd))
                if not wait:
                    raise FolderBusyError(
                        f"the {what} {str(folder)!r} is being written by {holder}. Wait for "
                        "it to finish and run the command again, pass --wait to wait for it, "
                        "or choose another output folder (--out)"
                    ) from None
                say(f"waiting for {holder} to finish writing {folder}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:  # e.g. ENOLCK on a network file system without locks
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                os.close(fd)
                return _Held(None, None, None)
            if not _same_file(fd, path):
                # the holder we waited for removed the lock file when it was done: lock anew
                os.close(fd)
                continue
            stale = _read_record(fd)  # a record left behind: its holder was killed
            with output_errors(path, f"lock file of the {what}"):
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(_record()).encode("utf-8"), 0)
            remove_stale_temps(folder)
            return _Held(fd, path, stale)
        except BaseException:
            os.close(fd)
            raise
