"""``plot(result, ax=None) -> (fig, ax)``: one entry point that draws any result.

Each result kind registers its drawing function with :func:`plots` (torchmetrics' pattern:
the function sits beside the plotting code of its kind, not inside the result class)::

    @plots("barrier")
    def plot_barrier(result, ax=None): ...

:func:`plot` dispatches on ``result.kind``; ``basinscope plot RUN_DIR`` and the run report
use it for the result of any command.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from basinscope.errors import BasinscopeError

__all__ = ["PLOTTERS", "plot", "plots"]

#: kind -> function(result, ax=None) -> (fig, ax)
PLOTTERS: dict[str, Callable[..., tuple[Any, Any]]] = {}


def _import_builtin() -> None:
    """Import every module of :mod:`basinscope.plotting.figures` (each registers its kinds)."""
    import importlib
    import pkgutil

    import basinscope.plotting.figures as figures

    for info in pkgutil.iter_modules(figures.__path__):
        importlib.import_module(f"{figures.__name__}.{info.name}")


def plots(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated ``fn(result, ax=None) -> (fig, ax)`` as the plot of ``kind``."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        PLOTTERS[kind] = fn
        return fn

    return register


def plot(result: Any, ax: Any = None) -> tuple[Any, Any]:
    """Draw ``result`` (any :class:`~basinscope.result.Result`) on ``ax`` or a new figure."""
    _import_builtin()
    kind = getattr(result, "kind", None)
    if kind not in PLOTTERS:
        raise BasinscopeError(
            f"no figure is defined for results of kind {kind!r}; kinds with figures: "
            f"{', '.join(sorted(PLOTTERS))}"
        )
    return PLOTTERS[kind](result, ax=ax)
