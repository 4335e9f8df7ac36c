"""The command line's error boundary: which exceptions the user caused, and their one line.

:func:`user_message` maps an exception to the line printed after ``error:`` (exit
status 2), or to ``None`` for an internal error (a bug: the traceback is printed with a
request to report it). User-caused are

* :class:`~basinscope.errors.BasinscopeError` (raised by every input check),
* an :class:`OSError` of the file system (read-only, no permission, disk full, a file
  where a folder is expected, ...) with the path and what to do,
* running out of memory (``MemoryError`` or PyTorch's allocator error).
"""

from __future__ import annotations

import os

__all__ = ["internal_error_note", "one_line", "user_message"]

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
    from basinscope.errors import os_error_reason

    reason = os_error_reason(e)
    if reason is None:
        return None
    where = f"{os.fspath(e.filename)!r}" if e.filename is not None else "a file"
    if e.filename2 is not None:
        where += f" -> {os.fspath(e.filename2)!r}"
    return f"cannot use {where}: {reason[0]}. To fix: {reason[1]}"


def user_message(e: BaseException) -> str | None:
    """The one-line message of a user-caused exception, or ``None`` for an internal error."""
    from basinscope.errors import BasinscopeError

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
