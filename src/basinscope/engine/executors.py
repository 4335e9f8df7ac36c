"""Executors: where the engine's chunks and a study's independent stages run.

Every chunked computation (surfaces, lines, curvature maps, criticality grids, barriers,
basin Monte Carlo) hands its chunks to an executor through one seam,
:func:`~basinscope.engine.evaluate_points`: ``executor.run(evaluator, tasks)`` receives the
driver's evaluator (whose ``job`` is the picklable description of the work and whose
``strategy`` is already fixed) and ``(chunk index, coefficient rows)`` tasks, and yields
``(index, values)`` in any order. :func:`evaluate_points` writes each result to the run's
journal as it arrives, so out-of-order completion and interruption are both safe, and a
resumed run skips the chunks the journal holds whichever executor computed them.

``executor.run_tasks(calls, cpus=N)`` runs independent no-argument callables (a study's
stages, each computing with ``N`` threads) and returns their results in order.

- :class:`LocalExecutor` runs everything in this process, in order (the default).
- :class:`~basinscope.engine.ray_executor.RayExecutor` runs chunks on Ray actors (each
  builds the model and data once) and stages as Ray tasks, on a local or an existing
  cluster (the ``ray`` extra).

An analysis called without ``executor=`` uses the *current* executor: :class:`LocalExecutor`
unless a ``with use_executor(...)`` block (what the command line's ``--executor`` does)
says otherwise. The executor changes where the numbers are computed, never the numbers:
with the strategy fixed (``auto`` picks it once, on the driver, and records it), every
chunk is the same computation on the same rows in either executor, so results are equal
bit for bit; a run's folder and digest therefore do not depend on it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from basinscope.errors import BasinscopeError

if TYPE_CHECKING:
    from basinscope.engine.evaluate import Evaluator

__all__ = [
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "current_executor",
    "make_executor",
    "use_executor",
]

EXECUTORS = ("local", "ray")
T = TypeVar("T")


class Executor(Protocol):
    """What :func:`~basinscope.engine.evaluate_points` and the studies need of an executor."""

    name: str

    def run(
        self, evaluator: Evaluator, tasks: Iterable[tuple[int, np.ndarray]]
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]: ...

    def run_tasks(
        self,
        calls: Sequence[Callable[[], T]],
        *,
        names: Sequence[str] | None = None,
        cpus: int | None = None,
    ) -> list[T]: ...

    def describe(self) -> dict[str, Any]: ...


class LocalExecutor:
    """Runs chunks and tasks in this process, in order."""

    name = "local"

    def run(
        self, evaluator: Evaluator, tasks: Iterable[tuple[int, np.ndarray]]
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for index, coeffs in tasks:
            yield index, evaluator.evaluate_chunk(coeffs)

    def run_tasks(
        self,
        calls: Sequence[Callable[[], T]],
        *,
        names: Sequence[str] | None = None,
        cpus: int | None = None,
    ) -> list[T]:
        return [call() for call in calls]

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name}

    def close(self) -> None:
        pass


_CURRENT: contextvars.ContextVar[Executor | None] = contextvars.ContextVar(
    "basinscope_executor", default=None
)


def current_executor() -> Executor:
    """The executor of the innermost :func:`use_executor` block (:class:`LocalExecutor`
    outside any)."""
    ex = _CURRENT.get()
    return ex if ex is not None else LocalExecutor()


@contextmanager
def use_executor(executor: Executor | None) -> Iterator[Executor]:
    """Run the chunked computations and study stages of the block on ``executor``::

        with bs.use_executor(bs.RayExecutor(workers=4)):
            bs.random_surface(model, data)

    ``None`` keeps the current one. The executor is closed when the block ends (a Ray
    executor's actors are stopped; a Ray session it started is shut down)."""
    if executor is None:
        yield current_executor()
        return
    token = _CURRENT.set(executor)
    try:
        yield executor
    finally:
        _CURRENT.reset(token)
        close = getattr(executor, "close", None)
        if close is not None:
            close()


def make_executor(
    name: str = "local", *, address: str | None = None, workers: int | None = None
) -> Executor:
    """The executor the command line's ``--executor NAME --address A --workers N`` names."""
    if name not in EXECUTORS:
        raise BasinscopeError(
            f"unknown executor {name!r}: expected one of {', '.join(EXECUTORS)} "
            "(--executor local runs in this process; --executor ray on a Ray cluster)"
        )
    if workers is not None and workers < 1:
        raise BasinscopeError(f"--workers must be at least 1, got {workers}")
    if name == "local":
        if address is not None or workers is not None:
            raise BasinscopeError(
                "--address and --workers are options of --executor ray; the local executor "
                "runs in this process: add --executor ray, or leave them out"
            )
        return LocalExecutor()
    from basinscope.engine.ray_executor import RayExecutor, import_ray

    import_ray()  # not installed: the install hint now, before any work
    return RayExecutor(address=address, workers=workers)
