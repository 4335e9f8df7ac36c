"""Progress bars that suit a terminal and a log file alike (private).

Every progress bar of basinscope (training steps, the engine's chunks, Lanczos iterations,
Hutchinson probes, spectral-density steps, per-layer curvature blocks) is made by
:func:`progress_bar`. On a terminal (stderr is a TTY) it is tqdm's bar, redrawn in place.
Elsewhere (stderr redirected to a file, a CI log, ``nohup``) a redrawn bar would fill the
log with carriage returns, so the bar is written as plain lines instead: one when it
starts, at most one every :data:`LOG_INTERVAL` seconds while it runs, and one when it ends,
each a whole line (``lanczos:  40%|####      | 40/100 [00:12<00:18, 3.3it/s]``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

__all__ = ["LOG_INTERVAL", "progress_bar"]

#: Seconds between two lines of a progress bar written to a log (stderr not a TTY).
LOG_INTERVAL = 30.0


class _Lines:
    """A text stream for tqdm that turns each redraw (``\\r`` + the bar + padding) into one
    plain line, and drops the empty redraws with which a bar clears itself."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").replace("\x1b[A", "").rstrip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def _log_bar_class() -> type:
    """tqdm for a log: a new postfix or description waits for the next line instead of
    writing one at once (a bar whose postfix changes every step would write every step)."""
    from tqdm import tqdm

    class LogBar(tqdm):  # type: ignore[misc]
        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            super().set_postfix(ordered_dict, refresh=False, **kwargs)

        def set_postfix_str(self, s="", refresh=True):
            super().set_postfix_str(s, refresh=False)

        def set_description(self, desc=None, refresh=True):
            super().set_description(desc, refresh=False)

    return LogBar


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    leave: bool = False,
    initial: float = 0,
    file: TextIO | None = None,
) -> Any:
    """A tqdm bar on ``file`` (default: stderr as it is at the call): tqdm's own on a TTY,
    plain lines at most every :data:`LOG_INTERVAL` seconds elsewhere (see the module
    docstring). ``leave``: whether a terminal keeps the finished bar (a log always keeps
    its last line). ``disable``: no output at all."""
    from tqdm.auto import tqdm

    stream = file if file is not None else sys.stderr
    kwargs: dict[str, Any] = dict(
        total=total, desc=desc, unit=unit, disable=disable, initial=initial, dynamic_ncols=True
    )
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        return tqdm(iterable, file=stream, leave=leave, **kwargs)
    kwargs.pop("dynamic_ncols")
    return _log_bar_class()(
        iterable,
        file=_Lines(stream),
        leave=True,
        mininterval=LOG_INTERVAL,
        maxinterval=LOG_INTERVAL,
        ncols=80,
        ascii=True,
        **kwargs,
    )
