"""User-facing errors.

Every problem a user can cause (a bad file, a spec that does not fit, a grid range that
makes no sense) raises :class:`BasinscopeError`, whose message says what was expected,
what was found and how to fix it. The CLI prints the message without a traceback and
exits with status 2; library users get an ordinary exception (a ``ValueError``).
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "BasinscopeError",
    "SpecMismatchError",
    "internal_error_note",
    "one_line",
    "os_error_reason",
    "user_message",
]


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


# -- the error boundary of the command line -------------------------------------------------
# Which exceptions the user caused, and their one line: BasinscopeError (raised by every input
# check), an OSError of the file system a user can fix (read-only, no permission, disk full,
# a file where a folder is expected, ...) with the path and what to do, and running out of
# memory (MemoryError or PyTorch's allocator error). Anything else is a bug.
_MEMORY_HINT = (
    "reduce the size of the job: fewer grid points (--xrange/--yrange), a smaller "
    "--batch-size or --chunk-size, fewer examples (--subset), or a smaller model"
)


def one_line(message: str) -> str:
    """``message`` on one line: its lines joined (after a colon by a space, else by '; ')."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    out = ""
    for p in parts:
        if not out:
            out = p
        elif out.endswith((":", ";", ",")):
            out += " " + p
        else:
            out += "; " + p
    return out


def _os_message(e: OSError) -> str | None:
    reason = os_error_reason(e)
    if reason is None:
        return None
    where = f"{os.fspath(e.filename)!r}" if e.filename is not None else "a file"
    if e.filename2 is not None:
        where += f" -> {os.fspath(e.filename2)!r}"
    return f"cannot use {where}: {reason[0]}. To fix: {reason[1]}"


def user_message(e: BaseException) -> str | None:
    """The one-line message of a user-caused exception, or ``None`` for an internal error."""
    if isinstance(e, BasinscopeError):
        return one_line(str(e))
    if isinstance(e, OSError):
        msg = _os_message(e)
        return one_line(msg) if msg is not None else None
    if isinstance(e, MemoryError):
        return one_line(f"ran out of memory ({type(e).__name__}: {e}); {_MEMORY_HINT}")
    if isinstance(e, RuntimeError) and _is_allocation_failure(str(e)):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return one_line(f"ran out of memory ({first[:200]}); {_MEMORY_HINT}")
    return None


def _is_allocation_failure(text: str) -> bool:
    text = text.lower()
    return "can't allocate memory" in text or "out of memory" in text


def internal_error_note() -> str:
    import basinscope

    return (
        f"error: internal error in basinscope {basinscope.__version__} (a bug, not a problem "
        "with your input); please report it with the command you ran and the traceback above"
    )
