"""Argument checks shared by the library, the studies and the command line.

Each check returns the value (converted: ``int``/``float``) or raises
:class:`~basinscope.errors.BasinscopeError` saying what was expected, what was found and,
where one is given, how to fix it. ``name`` is what the user typed: a flag
(``"--steps"``), a setting (``"finetune_lr"``) or an argument (``"num_points"``).

    >>> at_least("--steps", 0, 1)
    Traceback (most recent call last):
    ...
    basinscope.errors.BasinscopeError: --steps must be an integer >= 1, got 0

Upper bounds are not limits of the method; they catch typos (``copies=100000``) and
values that would exhaust memory or run for days before any result, and say so
(``why``), so that a user with a real need knows what to change.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from basinscope.errors import BasinscopeError

__all__ = [
    "MAX_COUNT",
    "MAX_POINTS",
    "MAX_SEED",
    "MAX_STEPS",
    "at_least",
    "check_seed",
    "finite_float",
    "grid_range",
    "in_range",
    "one_of",
    "positive_float",
    "positive_int",
    "safe_name",
    "split_names",
]

#: Largest seed: torch and numpy both accept seeds in [0, 2**63 - 1].
MAX_SEED = 2**63 - 1
#: Largest number of optimizer steps: 10**8 steps of even a tiny model take days on a CPU.
MAX_STEPS = 10**8
#: Largest number of points on one axis of a grid or a line.
MAX_POINTS = 100_000
#: Largest count of anything else (samples, probes, examples, restarts): far above any
#: sensible value, and small enough that sizes computed from it do not overflow int64.
MAX_COUNT = 10**9


_HIGH_REASONS = {
    MAX_COUNT: " (a larger count is refused as a likely typo)",
    MAX_STEPS: " (10**8 steps take days even for a tiny model)",
    MAX_POINTS: " points (the most allowed on one axis)",
}


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _tail(why: str, fix: str) -> str:
    return f"{why}{f'; {fix}' if fix else ''}"


def at_least(
    name: str,
    value: Any,
    low: int,
    *,
    high: int | None = MAX_COUNT,
    why: str = "",
    high_why: str = "",
    fix: str = "",
) -> int:
    """``value`` as an ``int`` with ``low <= value <= high`` (``high=None``: no upper bound).

    ``why`` explains the lower bound (e.g. ``" (a barrier needs two children)"``),
    ``high_why`` the upper one (default: a likely typo); ``fix`` follows a semicolon.
    """
    if not _is_int(value):
        raise BasinscopeError(
            f"{name} must be an integer >= {low}, got {value!r} ({type(value).__name__})"
            + _tail(why, fix)
        )
    if value < low:
        raise BasinscopeError(f"{name} must be an integer >= {low}, got {value!r}{_tail(why, fix)}")
    if high is not None and value > high:
        reason = high_why or _HIGH_REASONS.get(high, "")
        raise BasinscopeError(
            f"{name} must be <= {high:,}{reason}, got {value:,}{f'; {fix}' if fix else ''}"
        )
    return int(value)


def positive_int(
    name: str, value: Any, *, high: int | None = MAX_COUNT, high_why: str = "", fix: str = ""
) -> int:
    """``value`` as an ``int`` >= 1 (and <= ``high``)."""
    if not _is_int(value) or value < 1:
        raise BasinscopeError(f"{name} must be a positive integer, got {value!r}{_tail('', fix)}")
    return at_least(name, value, 1, high=high, high_why=high_why, fix=fix)


def check_seed(name: str, value: Any) -> int:
    """A random seed: an integer in ``[0, 2**63 - 1]`` (what torch and numpy both accept)."""
    return at_least(
        name,
        value,
        0,
        high=MAX_SEED,
        fix="seeds are integers in [0, 2**63 - 1], e.g. 0, 1, 2",
    )


def finite_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    why: str = "",
    fix: str = "",
) -> float:
    """``value`` as a finite ``float`` within the (optional) bounds.

    The bounds are inclusive unless ``low_open``/``high_open``.
    """
    ok_type = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    if not ok_type or not math.isfinite(float(value)):
        raise BasinscopeError(
            f"{name} must be a finite number, got {value!r}{_tail(why, fix or _example(low, high))}"
        )
    v = float(value)
    below = low is not None and (v <= low if low_open else v < low)
    above = high is not None and (v >= high if high_open else v > high)
    if below or above:
        raise BasinscopeError(
            f"{name} must be {_interval(low, high, low_open, high_open)}, got {v!r}"
            + _tail(why, fix)
        )
    return v


def positive_float(name: str, value: Any, *, why: str = "", fix: str = "") -> float:
    """A finite number > 0."""
    try:
        return finite_float(name, value, low=0.0, low_open=True)
    except BasinscopeError:
        raise BasinscopeError(
            f"{name} must be a positive number, got {value!r}{_tail(why, fix)}"
        ) from None


def in_range(
    name: str, value: Any, low: float, high: float, *, why: str = "", fix: str = ""
) -> float:
    """A finite number in the closed interval ``[low, high]``."""
    return finite_float(name, value, low=low, high=high, why=why, fix=fix)


def one_of(name: str, value: Any, choices: Iterable[Any], *, what: str = "value") -> Any:
    """``value`` if it is one of ``choices``; else an error listing them."""
    options: Sequence[Any] = list(choices)
    if value not in options:
        shown = ", ".join(str(c) for c in options)
        raise BasinscopeError(f"unknown {what} {value!r} for {name}: expected one of {shown}")
    return value


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def safe_name(what: str, name: Any) -> str:
    """A name that becomes part of file and variable names (a split, a run label): letters,
    digits, ``_``, ``-`` and ``.``, starting with a letter or digit, without ``..``."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise BasinscopeError(
            f"{what} {name!r} cannot be used: it becomes part of file and variable names, so it "
            "may hold only letters, digits, '_', '-' and '.' (no '/', '..' or spaces), e.g. "
            "train, test or target_rot35"
        )
    return name


_RANGE = re.compile(r"^\s*([-+0-9.eE]+)\s*:\s*([-+0-9.eE]+)\s*:\s*([0-9]+)\s*$")


def grid_range(text: str, flag: str) -> np.ndarray:
    """``"START:STOP:NUM"`` as ``np.linspace(START, STOP, NUM)``: the command line's grid axes
    (``--xrange -1:1:21``), at most :data:`MAX_POINTS` points, ``START < STOP``."""
    m = _RANGE.match(text)
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
    if num > MAX_POINTS:
        raise BasinscopeError(
            f"bad grid range {text!r} for {flag}: {num} points on one axis is more than the "
            f"{MAX_POINTS:,} allowed"
        )
    return np.linspace(start, stop, num)


def split_names(text: str, flag: str = "--splits") -> list[str]:
    """``"train,test"`` -> ``["train", "test"]``, each a safe file name."""
    splits = [s.strip() for s in text.split(",") if s.strip()]
    if not splits:
        raise BasinscopeError(
            f"{flag} needs at least one split name, e.g. {flag} train,test; got {text!r}"
        )
    return [safe_name("split name", s) for s in splits]


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"{'<' if high_open else '<='} {high:g}"


def _example(low: float | None, high: float | None) -> str:
    if low is None and high is None:
        return ""
    return f"expected a number {_interval(low, high, False, False)}"
