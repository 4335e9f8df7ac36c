"""What the commands share besides :mod:`basinscope.cli.generate`: printing, and holding
the output folder's lock for as long as a command runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from basinscope.jsonable import jsonable
from basinscope.store.atomic import check_writable_folder


def emit_json(obj: Any) -> None:
    """``obj`` as one JSON object on stdout (non-finite numbers as strings)."""
    sys.stdout.write(json.dumps(jsonable(obj), default=str, allow_nan=False) + "\n")


def info(msg: str, quiet: bool = False) -> None:
    """A line on stderr (nothing when ``quiet``)."""
    if not quiet:
        typer.echo(msg, err=True)


# -- locking the output folder ------------------------------------------------------------
# Each command that writes a folder locks it for as long as the command runs (see
# basinscope.store.lock): --wait's callback opens the command's scope of held locks and
# closes it when the command ends, however it ends.
_HELD: list[list[Any]] = []
_UNSCOPED: list[Any] = []


def _lock_scope(ctx: typer.Context, value: bool) -> bool:
    held: list[Any] = []
    _HELD.append(held)

    def release() -> None:
        _HELD.remove(held)
        for lock in reversed(held):
            lock.release()

    ctx.call_on_close(release)
    return value


WAIT_OPT = typer.Option(
    False,
    "--wait",
    help="If another process is writing the output folder, wait for it to finish instead "
    "of stopping with an error.",
    callback=_lock_scope,
)


def hold_out_folder(path: Path, wait: bool, what: str = "run folder") -> Path:
    """Lock the command's output folder ``path`` until the command ends (the lock is
    re-entrant: the analyses' own run stores reuse it). Returns ``path``."""
    from basinscope.store import lock_folder

    lock = lock_folder(path, wait=wait, what=what, say=info)
    (_HELD[-1] if _HELD else _UNSCOPED).append(lock)  # unscoped: held until the process exits
    return path


def out_callback(value: Path | None) -> Path | None:
    """``--out``'s typer callback: the folder is checked while the command line is parsed
    (:func:`basinscope.store.atomic.check_writable_folder`)."""
    return check_writable_folder(value)
