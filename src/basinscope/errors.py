"""User-facing errors.

Every problem a user can cause (a bad file, a spec that does not fit, a grid range that
makes no sense) raises :class:`BasinscopeError`, whose message says what was expected,
what was found and how to fix it. The CLI prints the message without a traceback and
exits with status 2; library users get an ordinary exception (a ``ValueError``).
"""

from __future__ import annotations

import errno

__all__ = ["BasinscopeError", "SpecMismatchError", "os_error_reason"]


class BasinscopeError(ValueError):
    """A problem with the user's input, stated with its fix."""


class SpecMismatchError(BasinscopeError):
    """A run folder already holds a run with a different specification."""


# Why a file-system call failed and what the user can do, by errno: the one table behind the
# store's OutputWriteError and the command line's error boundary.
_RESUME = "run the same command again: it resumes where it stopped"
_OS_REASONS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: (
        "no space left on the device",
        f"free some space (or pass --out on another disk) and {_RESUME}",
    ),
    errno.EDQUOT: (
        "the disk quota is exceeded",
        f"free some space in your quota (or pass --out on another disk) and {_RESUME}",
    ),
    errno.EROFS: (
        "the file system is read-only",
        "pass an output folder (--out) on a writable disk",
    ),
    errno.EACCES: (
        "permission denied",
        "pass an output folder (--out) you can write to, or fix its permissions",
    ),
    errno.EPERM: (
        "operation not permitted",
        "pass an output folder (--out) you can write to, or fix its permissions",
    ),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another path"),
    errno.EISDIR: ("it is a folder, but a file was expected", "pass the path of a file"),
    errno.EEXIST: ("a file of that name is in the way", "remove it or choose another path"),
    errno.ENAMETOOLONG: ("the path is too long for the file system", "choose a shorter path"),
    errno.ENOENT: (
        "no such file or folder",
        "check the path (a folder on it may have been removed)",
    ),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or close other programs"),
}


def os_error_reason(e: OSError) -> tuple[str, str] | None:
    """``(what happened, how to fix it)`` for a file-system error a user can fix, e.g.
    ``("the file system is read-only (EROFS)", "pass an output folder (--out) on a writable
    disk")``; ``None`` for any other error (a bug, or nothing the user can do)."""
    if e.errno not in _OS_REASONS:
        return None
    reason, fix = _OS_REASONS[e.errno]
    return f"{reason} ({errno.errorcode[e.errno]})", fix
