"""What the subcommands share: grid ranges, model and data loading, output."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import typer

from basinscope._checks import grid_range, safe_name
from basinscope.cli.options import DataOptions  # noqa: F401 - the commands' data options
from basinscope.errors import BasinscopeError
from basinscope.jsonable import jsonable


def parse_range(text: str, flag: str) -> np.ndarray:
    """``"START:STOP:NUM"`` -> ``np.linspace(START, STOP, NUM)`` with a clear error otherwise
    (:func:`basinscope._checks.grid_range`)."""
    return grid_range(text, flag)


def parse_json_kwargs(text: str | None, flag: str = "--model-kwargs") -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise BasinscopeError(
            f"{flag} is not valid JSON ({e.msg} at position {e.pos}): {text!r}; e.g. {flag} '{{\"width\": 2}}'"
        ) from None
    if not isinstance(value, dict):
        found = {list: "list (a JSON array)", str: "str (a JSON string)", type(None): "null"}.get(
            type(value), f"{type(value).__name__} (a JSON number or boolean)"
        )
        raise BasinscopeError(
            f"{flag} must be a JSON object, got {found}: e.g. {flag} '{{\"width\": 2}}'"
        )
    return value


def parse_splits(text: str) -> list[str]:
    splits = [s.strip() for s in text.split(",") if s.strip()]
    if not splits:
        raise BasinscopeError(
            f"--splits needs at least one split name, e.g. --splits train,test; got {text!r}"
        )
    return [safe_name("split name", s) for s in splits]


def load_model(
    spec: str,
    kwargs_json: str | None,
    weights: Path | None,
    init_seed: int | None = 0,
    kwargs_flag: str = "--model-kwargs",
):
    from basinscope.models import build_model, load_weights

    model = build_model(spec, parse_json_kwargs(kwargs_json, kwargs_flag), init_seed=init_seed)
    if weights is not None:
        load_weights(model, weights)
    return model


def model_spec(spec: str, kwargs_json: str | None, weights: Path | None) -> dict[str, Any]:
    return {
        "model": spec,
        "model_kwargs": parse_json_kwargs(kwargs_json),
        "weights": str(weights) if weights is not None else None,
    }


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=_default, allow_nan=False) + "\n")


def _default(o: Any):
    if isinstance(o, (np.floating, np.integer)):
        v = o.item()
        return v if not isinstance(v, float) or np.isfinite(v) else str(v)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


sanitize = jsonable  # the commands' name for it: non-finite floats become strings in --json


def info(msg: str, quiet: bool = False) -> None:
    if not quiet:
        typer.echo(msg, err=True)


def default_out(kind: str) -> Path:
    import time

    return Path("basinscope-runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


# -- locking the output folder ------------------------------------------------------------
# Each command that writes a folder locks it for as long as the command runs (see
# basinscope.store.lock): --wait's callback opens the command's scope of held locks and
# closes it when the command ends, however it ends.
_HELD: list[list[Any]] = []


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
    if _HELD:
        _HELD[-1].append(lock)
    else:  # outside a command's scope: held until this process exits
        _UNSCOPED.append(lock)
    return path


_UNSCOPED: list[Any] = []


def check_out_dir(path: str | Path | None, flag: str = "--out") -> Path | None:
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
        import errno

        from basinscope.errors import os_error_reason

        where = "" if ancestor == target else f" (in {str(ancestor.resolve())!r})"
        code = errno.EROFS if _read_only(ancestor) else errno.EACCES
        reason, fix = os_error_reason(OSError(code, os.strerror(code)))
        default = "" if path is not None else " (the default is under the working folder)"
        raise BasinscopeError(
            f"could not write the run folder {shown!r}{where}: {reason}{default}. To fix: {fix}"
        )
    return None if path is None else Path(path)


def out_callback(value: Path | None) -> Path | None:
    """``--out``'s typer callback: :func:`check_out_dir` while the command line is parsed."""
    return check_out_dir(value)


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False
