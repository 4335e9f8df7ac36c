"""What the subcommands share: grid ranges, model and data loading, output."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer

from basinscope.errors import BasinscopeError
from basinscope.jsonable import jsonable

RANGE_RE = re.compile(r"^\s*([-+0-9.eE]+)\s*:\s*([-+0-9.eE]+)\s*:\s*([0-9]+)\s*$")


def parse_range(text: str, flag: str) -> np.ndarray:
    """``"START:STOP:NUM"`` -> ``np.linspace(START, STOP, NUM)`` with a clear error otherwise."""
    m = RANGE_RE.match(text)
    hint = f"expected {flag} START:STOP:NUM, e.g. {flag} -1:1:21 (21 points from -1 to 1)"
    if not m:
        raise BasinscopeError(f"bad grid range {text!r} for {flag}: {hint}")
    try:
        start, stop, num = float(m.group(1)), float(m.group(2)), int(m.group(3))
    except ValueError:
        raise BasinscopeError(f"bad grid range {text!r} for {flag}: {hint}") from None
    if not (np.isfinite(start) and np.isfinite(stop)):
        raise BasinscopeError(
            f"bad grid range {text!r} for {flag}: START and STOP must be finite numbers"
        )
    if num < 1:
        raise BasinscopeError(
            f"bad grid range {text!r} for {flag}: NUM must be at least 1, got {num}"
        )
    if num > 1 and not start < stop:
        raise BasinscopeError(
            f"bad grid range {text!r} for {flag}: START must be smaller than STOP ({start} >= {stop})"
        )
    if num > 100_000:
        raise BasinscopeError(
            f"bad grid range {text!r} for {flag}: {num} points on one axis is more than the 100,000 allowed"
        )
    return np.linspace(start, stop, num)


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
        raise BasinscopeError(
            f"{flag} must be a JSON object, got {type(value).__name__}: e.g. {flag} '{{\"width\": 2}}'"
        )
    return value


@dataclass(frozen=True)
class DataOptions:
    spec: str
    rotation: float = 0.0
    block_shuffle: int | None = None
    noise: float = 0.0
    shift_seed: int = 0

    def load(self, split: str):
        from basinscope.data import resolve_data

        return resolve_data(
            self.spec,
            split,
            rotation=self.rotation,
            block_shuffle=self.block_shuffle,
            noise=self.noise,
            seed=self.shift_seed,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.spec,
            "rotation": self.rotation,
            "block_shuffle": self.block_shuffle,
            "noise": self.noise,
            "shift_seed": self.shift_seed,
        }


def parse_splits(text: str) -> list[str]:
    splits = [s.strip() for s in text.split(",") if s.strip()]
    if not splits:
        raise BasinscopeError(
            f"--splits needs at least one split name, e.g. --splits train,test; got {text!r}"
        )
    return splits


def load_model(spec: str, kwargs_json: str | None, weights: Path | None, init_seed: int | None = 0):
    from basinscope.models import build_model, load_weights

    model = build_model(spec, parse_json_kwargs(kwargs_json), init_seed=init_seed)
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
