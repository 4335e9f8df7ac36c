"""A Ray executor: the engine's chunks on Ray actors, a study's stages as Ray tasks.

``RayExecutor(workers=N)`` starts a local Ray cluster with ``N`` worker slots;
``RayExecutor(address="ray://head:10001")`` (or ``"auto"``) joins an existing cluster and
uses all of it. On the command line: ``--executor ray [--workers N | --address A]``.

**Chunks.** :meth:`RayExecutor.run` puts the evaluation job (model, basis, data, task) in
Ray's object store once per run; one actor per worker slot (started at the first run and
kept until :meth:`RayExecutor.close`) builds it (:meth:`EvalJob.build`: a private model
copy, the data on its device) once, with the strategy the driver chose, and then evaluates
chunks. Each actor has two chunks in flight
so it never waits for the driver. Results come back as they finish and the driver writes
each to the run's journal (:func:`~basinscope.engine.evaluate_points`), so a run whose
driver is killed resumes from the journal, with either executor.

**Failures.** A worker that dies (killed, out of memory, its node lost) fails the chunks it
held; each is queued again and a replacement actor is started, so the run completes with
the same arrays. A chunk that fails ``max_retries`` times is reported with the last cause
(a :class:`~basinscope.errors.BasinscopeError`). An error raised by the computation itself
(bad data, a model that fails) is not retried: it is re-raised on the driver as it was.

**Equality.** Every chunk is the same computation on the same rows as with
:class:`~basinscope.engine.executors.LocalExecutor`: same strategy, same chunk boundaries,
same code. On the CPUs tested, the forward passes of the evaluation (float32 matmuls and
convolutions) give the same bits at 1 and at 2 threads, so the arrays are equal bit for bit
although an actor uses ``threads_per_worker`` threads (``tests/engine/test_ray_executor.py``).
Training is not like that (gradients add in an order that depends on the thread count), so a
study's stage task computes with the driver's thread count
(:meth:`~basinscope.experiments.registry.StudyContext.run_stages`).

**Resources.** Each actor asks Ray for ``threads_per_worker`` CPUs (default 1, and torch
uses that many threads) and, when the job's device is CUDA, one GPU (the actor then sees
that GPU as ``cuda:0``, so a job on ``cuda`` runs on each actor's own GPU).

**Stages.** :meth:`RayExecutor.run_tasks` runs independent callables (a study's stages) as
Ray tasks; the stage folders must be on a filesystem every node sees (one machine, or a
shared mount). A task that fails with anything but a
:class:`~basinscope.errors.BasinscopeError` is retried up to ``task_retries`` times; a worker
that dies is retried by Ray. Then the failure is reported with the stage's name, once the
other tasks have finished (their stages are kept).
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from basinscope.errors import BasinscopeError

if TYPE_CHECKING:
    from basinscope.engine.evaluate import Evaluator

__all__ = ["RAY_HINT", "RayExecutor", "import_ray"]

RAY_HINT = 'pip install "basinscope[ray]" "torch==<your torch version>"'
IN_FLIGHT = 2  # chunks queued on each actor
T = TypeVar("T")


def import_ray() -> Any:
    """``ray``, or a :class:`BasinscopeError` with the install hint."""
    try:
        import ray
    except ImportError:
        raise BasinscopeError(
            "--executor ray needs the ray package, which is not installed here: "
            f"{RAY_HINT} (pinning torch keeps the one you have), or use --executor local"
        ) from None
    return ray


class _Collect:
    """A job's ``per_example`` on an actor: keeps each chunk's per-example values, which
    go back to the driver with the chunk and are handed to the real ``per_example`` there."""

    def __init__(self) -> None:
        self.items: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []

    def __call__(self, coeffs: np.ndarray, values: dict[str, np.ndarray]) -> None:
        self.items.append((coeffs, values))


class _ChunkWorker:
    """The actor: builds each run's job once (:meth:`load`), then evaluates its chunks."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.evaluator: Any = None
        self.collect: Any = None

    def load(self, job: Any, strategy: str, trial: dict[str, Any]) -> int:
        """Build ``job`` with the driver's strategy; returns this worker's process id."""
        self.evaluator = None  # the previous run's model and data are released first
        self.evaluator = job.build()
        self.evaluator.adopt(strategy, trial)  # the driver's strategy (and first-layer path)
        self.collect = getattr(job, "per_example", None)
        return os.getpid()

    def evaluate(
        self, index: int, coeffs: np.ndarray
    ) -> tuple[int, dict[str, np.ndarray], list, float | None]:
        """A chunk's values, its per-example values, and this worker's compile seconds so
        far (strategy ``compiled``; else None)."""
        values = self.evaluator.evaluate_chunk(coeffs)
        items: list = []
        if isinstance(self.collect, _Collect):
            items, self.collect.items = self.collect.items, []
        return index, values, items, self.evaluator.trial.get("compile_seconds")


def _run_call(call: Callable[[], Any]) -> tuple[bool, Any]:
    """A stage in a Ray task: ``(True, value)``, or ``(False, exception)`` so that the
    driver decides whether to retry (user errors are not retried)."""
    try:
        return True, call()
    except BaseException as e:  # reported on the driver
        return False, e


class RayExecutor:
    """Chunks on Ray actors and stages as Ray tasks (see the module docstring).

    ``address``: an existing cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``);
    ``None`` connects to the session this process already has, or starts a local cluster.
    ``workers``: actors (and task slots); default: as many as the cluster has CPUs (GPUs
    for a CUDA job) divided by ``threads_per_worker``, and never more than it can place now
    (waiting up to ``placement_wait`` seconds for resources being released). ``max_retries``: attempts per chunk
    after a worker dies. ``init_kwargs`` go to ``ray.init`` (e.g. ``object_store_memory``).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        *,
        threads_per_worker: int = 1,
        max_retries: int = 3,
        task_retries: int = 2,
        placement_wait: float = 10.0,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if workers is not None and workers < 1:
            raise BasinscopeError(f"workers must be at least 1, got {workers}")
        if threads_per_worker < 1:
            raise BasinscopeError(
                f"threads_per_worker must be at least 1, got {threads_per_worker}"
            )
        self.address = address
        self.workers = workers
        self.threads_per_worker = threads_per_worker
        self.max_retries = max_retries
        self.task_retries = task_retries
        self.placement_wait = placement_wait
        self.init_kwargs = dict(init_kwargs or {})
        self._started = False
        self.replaced = 0  # actors started again after one died (all runs)
        self.retried = 0  # chunks and tasks run again after a failure (all runs)
        self.actors: list[Any] = []  # the chunk workers, kept between runs
        self.pids: list[int] = []  # their process ids in the last run
        self._gpu: bool | None = None

    # -- the cluster --------------------------------------------------------------------
    def connect(self) -> Any:
        """``ray``, initialised: joins ``address``, reuses this process's session, or starts
        a local cluster with ``workers * threads_per_worker`` CPUs."""
        ray = import_ray()
        if ray.is_initialized():
            return ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": "ERROR",
            **self.init_kwargs,
        }
        if self.address is not None:
            kwargs["address"] = self.address
        elif self.workers is not None:
            kwargs.setdefault("num_cpus", self.workers * self.threads_per_worker)
        try:
            ray.init(**kwargs)
        except ConnectionError as e:
            raise BasinscopeError(
                f"could not connect to the Ray cluster at {self.address!r}: {e}. Start it "
                "(`ray start --head`), check the address, or leave --address out to start a "
                "local cluster"
            ) from None
        self._started = True
        return ray

    def _slots(self, ray: Any, gpu: bool) -> int:
        """Actors for a run: ``workers``, at most what the cluster can place now (an actor
        that cannot be placed would wait forever). Resources of actors just stopped come
        back a moment later, so a shortfall is re-checked for up to ``placement_wait`` s."""
        import time

        key, what = ("GPU", "GPUs") if gpu else ("CPU", "CPUs")
        per = 1 if gpu else self.threads_per_worker
        wanted = self.workers or 1
        deadline = time.monotonic() + self.placement_wait
        while True:
            # free now, plus what this executor's own actors hold (other drivers' and
            # executors' actors keep theirs)
            have = ray.available_resources().get(key, 0) + len(self.actors) * per
            capacity = int(have) // per
            if capacity >= wanted or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if capacity < 1:
            need = "1 GPU" if gpu else f"{self.threads_per_worker} CPUs"
            raise BasinscopeError(
                f"the Ray cluster has {have:g} {what} free, and each worker needs {need}: "
                + (
                    "add GPU nodes, or use --device cpu"
                    if gpu
                    else "add CPUs to the cluster, or lower threads_per_worker"
                )
            )
        if self.workers is None:
            return capacity
        if self.workers > capacity:
            import warnings

            warnings.warn(
                f"--workers {self.workers}, but the Ray cluster holds only {capacity} more "
                f"workers now ({have:g} {what} free): using {capacity}",
                RuntimeWarning,
                stacklevel=3,
            )
            return capacity
        return self.workers

    def describe(self) -> dict[str, Any]:
        return {
            "executor": self.name,
            "address": self.address,
            "workers": self.workers,
            "threads_per_worker": self.threads_per_worker,
        }

    def close(self) -> None:
        """Stop the actors, and shut down the Ray session this executor started (a joined
        cluster stays up)."""
        self._stop_actors()
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    # -- chunks -------------------------------------------------------------------------
    def run(
        self, evaluator: Evaluator, tasks: Iterable[tuple[int, np.ndarray]]
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Evaluate the chunks ``tasks`` on the actors; ``(index, values)`` as they finish.

        The actors stay up between runs (a basin's Monte Carlo or a barrier's refinement
        makes many small runs): each run ships its job once and every actor it uses builds
        it once."""
        pending = deque(tasks)
        if not pending:
            return
        ray = self.connect()
        job = evaluator.job
        per_example = getattr(job, "per_example", None)
        shipped = dataclasses.replace(job, per_example=_Collect()) if per_example else job
        gpu = str(getattr(job, "device", "cpu")).startswith("cuda")
        if self._gpu is not gpu:  # a pool for the other kind of device
            self._stop_actors()
            self._gpu = gpu
        n = min(self._slots(ray, gpu), len(pending))
        job_ref = ray.put(shipped)
        load = (job_ref, evaluator.strategy, evaluator.trial)
        while len(self.actors) < n:
            self.actors.append(self._start_actor(ray, gpu))
        actors = self.actors[:n]
        self.pids = self._load(ray, actors, load)
        generation = [0] * n
        inflight: dict[Any, tuple[int, int, int, np.ndarray]] = {}
        attempts: dict[int, int] = {}

        def submit(slot: int) -> None:
            index, coeffs = pending.popleft()
            ref = actors[slot].evaluate.remote(index, coeffs)
            inflight[ref] = (slot, generation[slot], index, coeffs)

        finished = False
        try:
            for slot in range(n):
                for _ in range(IN_FLIGHT):
                    if pending:
                        submit(slot)
            while inflight:
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                slot, gen, index, coeffs = inflight.pop(ref)
                try:
                    _, values, collected, compiled = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                    attempts[index] = attempts.get(index, 0) + 1
                    if attempts[index] > self.max_retries:
                        raise BasinscopeError(
                            f"chunk {index} failed {attempts[index]} times, each time because "
                            f"its Ray worker died (last: {type(e).__name__}: "
                            f"{' '.join(str(e).split())[:300]}). The chunks finished so far are "
                            "in the run's journal; fix the cause (memory?) and run the same "
                            "command again to resume"
                        ) from None
                    self.retried += 1
                    pending.appendleft((index, coeffs))
                    if gen == generation[slot]:  # the first news of this actor's death
                        ray.kill(actors[slot], no_restart=True)
                        actors[slot] = self.actors[slot] = self._start_actor(ray, gpu)
                        self.pids[slot] = self._load(ray, [actors[slot]], load)[0]
                        generation[slot] += 1
                        self.replaced += 1
                    while pending and sum(v[0] == slot for v in inflight.values()) < IN_FLIGHT:
                        submit(slot)
                    continue
                except ray.exceptions.RayTaskError as e:
                    raise e.as_instanceof_cause() from None
                for rows, per in collected:
                    per_example(rows, per)
                if compiled is not None:  # the slowest worker's compilation, as it waits on it
                    before = evaluator.trial.get("compile_seconds", 0.0)
                    evaluator.trial["compile_seconds"] = max(before, compiled)
                yield index, values
                if pending:
                    submit(slot)
            finished = True
        finally:
            if not finished:  # interrupted: the actors' queued chunks are not wanted
                for ref in inflight:
                    ray.cancel(ref)

    def _start_actor(self, ray: Any, gpu: bool) -> Any:
        cls = ray.remote(num_cpus=self.threads_per_worker, num_gpus=1 if gpu else 0)(_ChunkWorker)
        return cls.remote(self.threads_per_worker)

    def _load(self, ray: Any, actors: list[Any], load: tuple) -> list[int]:
        try:
            return ray.get([a.load.remote(*load) for a in actors])
        except ray.exceptions.RayTaskError as e:  # the job cannot be built there
            raise e.as_instanceof_cause() from None

    def _stop_actors(self) -> None:
        if self.actors:
            import ray

            for actor in self.actors:
                ray.kill(actor, no_restart=True)
        self.actors, self.pids = [], []

    # -- stages -------------------------------------------------------------------------
    def run_tasks(
        self,
        calls: Sequence[Callable[[], T]],
        *,
        names: Sequence[str] | None = None,
        cpus: int | None = None,
    ) -> list[T]:
        """Run ``calls`` as Ray tasks, in parallel; their results in order. When one fails
        for good, the others still run to the end (their stages are kept, and no task is
        left running behind the error) before the failure is raised.

        ``cpus``: the CPUs each task computes with (a study's stage: the driver's torch
        threads), reserved from Ray so that tasks never share cores (default
        ``threads_per_worker``; at most the cluster's CPUs, or a task could never start).
        Lower the driver's threads (``OMP_NUM_THREADS``) to run more stages at once."""
        if not calls:
            return []
        ray = self.connect()
        self._stop_actors()  # idle chunk workers would hold the CPUs the tasks need
        names = list(names) if names is not None else [f"task {i}" for i in range(len(calls))]
        total = max(1, int(ray.cluster_resources().get("CPU", 1)))
        cpus = min(cpus or self.threads_per_worker, total)
        remote = ray.remote(num_cpus=cpus, max_retries=self.task_retries)(_run_call)
        refs = {remote.remote(call): i for i, call in enumerate(calls)}
        tries = [1] * len(calls)
        out: list[Any] = [None] * len(calls)
        failure: BaseException | None = None  # the first task that failed for good
        while refs:
            (ref,), _ = ray.wait(list(refs), num_returns=1)
            i = refs.pop(ref)
            try:
                ok, value = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                ok, value = False, e  # Ray's own retries are spent
                tries[i] = self.task_retries + 1
            if ok:
                out[i] = value
                continue
            if isinstance(value, BasinscopeError):
                failure = failure or value
                continue
            if tries[i] <= self.task_retries:
                tries[i] += 1
                self.retried += 1
                refs[remote.remote(calls[i])] = i
                continue
            if failure is None:
                failure = BasinscopeError(
                    f"{names[i]} failed {tries[i]} times on the Ray cluster (last: "
                    f"{type(value).__name__}: {' '.join(str(value).split())[:300]}). Stages "
                    "that finished are kept; run the same command again to retry the rest"
                )
                failure.__cause__ = value
        if failure is not None:
            raise failure
        return out
