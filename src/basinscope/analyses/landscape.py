"""What 1D and 2D landscapes share: a grid of coefficients, the engine, the run store.

A landscape is the engine's metric values on a grid :math:`\\theta^* + \\sum_d c_d v_d`,
returned as a :class:`Landscape` result: a labelled :class:`xarray.Dataset` (coordinates
``alpha`` and, for planes, ``beta``; one variable ``<split>_<metric>`` per split and metric)
with every setting that produced the numbers in its attributes (``attrs["kind"]`` names the
landscape: interpolation, random_line, surface, pca_surface, plane_surface, curvature_map),
the directions and the center, how it was evaluated and the spec.

With a run folder, :func:`compute_landscape` journals the values chunk by chunk (an
interrupted run resumes bit for bit) and completes the folder with
:func:`basinscope.store.save`; a finished run is loaded with :func:`basinscope.store.load`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from basinscope._checks import at_least, grid_range, safe_name, split_names
from basinscope._memory import check_memory
from basinscope.engine import (
    EvalJob,
    Executor,
    PointBasis,
    StreamingBatches,
    as_batches,
    current_executor,
    evaluate_points,
    num_examples,
)
from basinscope.engine.metrics import Metric
from basinscope.engine.precision import storage_dtype, to_dtype
from basinscope.engine.task import Task, as_task, inputs_to
from basinscope.errors import BasinscopeError
from basinscope.geometry import ParamDict, get_buffers
from basinscope.geometry.normalization import BIAS_POLICIES, NORMALIZATIONS
from basinscope.result import Result, fmt, tensors
from basinscope.spec import EvalOptions, Spec, group, option
from basinscope.store import RunStore, fingerprint_tensors, paths, safe_component

__all__ = [
    "LANDSCAPE_DEFINITIONS",
    "Landscape",
    "LandscapeSpec",
    "TrajectoryProjection",
    "as_splits",
    "basis_on",
    "batches_on",
    "bias_policy_option",
    "check_grid_memory",
    "compute_landscape",
    "dtype_name",
    "eval_batches",
    "fingerprint_batches",
    "grid_coeffs",
    "grid_option",
    "normalization_option",
    "splits_option",
]

#: What each kind of landscape evaluates (``attrs["kind"]`` -> its formula and source).
LANDSCAPE_DEFINITIONS: dict[str, str] = {
    "interpolation": "f(alpha) = L((1 - alpha) theta_A + alpha theta_B): the line between two "
    "models (Goodfellow et al. 2015), extrapolated outside [0, 1]",
    "random_line": "f(alpha) = L(theta + alpha d), d a normalized random direction "
    "(Li et al. 2018)",
    "surface": "f(alpha, beta) = L(theta* + alpha delta + beta eta), delta and eta normalized "
    "random (or given) directions (Li et al. 2018)",
    "pca_surface": "f(alpha, beta) = L(theta* + alpha delta + beta eta), delta and eta the top "
    "two PCA directions of a training trajectory (Li et al. 2018, Sec. 7)",
    "plane_surface": "f(alpha, beta) = L(theta_A + alpha delta + beta eta): the plane through "
    "three models (Garipov et al. 2018)",
}


def _grid_parser(flag: str) -> Callable[[str], tuple[float, ...]]:
    def parse(text: str) -> tuple[float, ...]:
        return tuple(grid_range(text, flag).tolist())

    return parse


def grid_option(help: str, flag: str, **kw: Any) -> Any:
    """A grid axis of a landscape spec: ``None`` (the function's default grid) or the
    coordinates; typed on the command line as ``START:STOP:NUM`` (``flag``)."""
    return option(None, help, flag=flag, parse=_grid_parser(flag), metavar="START:STOP:NUM", **kw)


def normalization_option() -> Any:
    """How a landscape's random directions are normalized (lines and surfaces alike)."""
    return option(
        "filter",
        "Random directions: filter (Li et al.), layer, model or none.",
        choices=NORMALIZATIONS,
    )


def bias_policy_option() -> Any:
    """What a landscape's random directions do with 1-D parameters (lines and surfaces)."""
    return option(
        "zero",
        "1-D parameters (biases, norm layers) of random directions: zero, include or as_weights.",
        choices=BIAS_POLICIES,
    )


def _split_names(text: str) -> tuple[str, ...]:
    return tuple(split_names(text))


def splits_option() -> Any:
    """The splits a landscape is evaluated on, in one run; typed on the command line as
    comma-separated names (``--splits train,test``). Empty (the default): the data's train
    and test splits, those it has (:meth:`basinscope.inputs.DataOptions.splits`)."""
    return option(
        (),
        "Comma-separated splits to evaluate on, in one run (default: train,test, or those of "
        "the two the data has).",
        parse=_split_names,
        metavar="SPLITS",
    )


def _metric_names(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


@dataclass(frozen=True)
class LandscapeSpec(Spec):
    """What a landscape evaluates at each point (metrics) and how (the engine's options).

    The spec of each landscape function extends it with that function's settings
    (:class:`~basinscope.analyses.interpolation.InterpolationSpec`, ...); a result of
    :func:`compute_landscape` called directly records a plain ``LandscapeSpec``.
    """

    metrics: tuple[str, ...] = option(
        ("loss", "accuracy"),
        "Comma-separated metrics: loss, accuracy, error (default loss,accuracy).",
        parse=_metric_names,
        metavar="METRICS",
    )
    eval: EvalOptions = group(EvalOptions)

    def check(self) -> None:
        # counts, also from above: a chunk of 10**20 points is a typo, not a plan
        for name in ("batch_size", "bn_batches", "chunk_size"):
            at_least(self.eval.name_of(name), getattr(self.eval, name), 1)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Spec:
        """The spec of ``data``; on ``LandscapeSpec`` itself, the landscape spec whose
        settings are exactly ``data``'s keys (a result's ``spec`` may be any of them)."""
        if cls is LandscapeSpec and isinstance(data, Mapping):
            from basinscope.analyses import import_all

            import_all()  # the subclasses live in modules imported on first use
            todo = list(cls.__subclasses__())
            while todo:
                sub = todo.pop()
                todo += sub.__subclasses__()
                if {f.name for f in dataclasses.fields(sub)} == set(data):
                    return sub.from_dict(data)
        return super().from_dict(data)


@dataclass(frozen=True)
class TrajectoryProjection(Result, kind="trajectory_projection"):
    """A trajectory in a landscape's plane: the coordinates of each checkpoint (least
    squares), its distance from the plane, the checkpoints' steps and a label."""

    label: str
    steps: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    distance: np.ndarray


@dataclass(frozen=True)
class Landscape(Result, kind="landscape"):
    """A computed 1D or 2D landscape and how it was computed.

    ``dataset`` holds the values (see the module docstring); ``directions`` and ``center``
    the parameter dicts of the grid (stored as safetensors); ``evaluation`` the engine's
    strategy, speed and counts, the device and the task (``evaluation["task"]``: how the
    model was run and what its loss is, :meth:`~basinscope.engine.Task.describe`); ``run_dir`` the run folder (``None`` without one);
    ``trajectories`` paths projected onto a plane (``basinscope surface --trajectory``).
    ``definition`` is the kind of landscape (``dataset.attrs["kind"]``) and
    ``definition_formula`` what it evaluates (:data:`LANDSCAPE_DEFINITIONS`).
    """

    dataset: xr.Dataset
    directions: list[ParamDict] = tensors()
    center: ParamDict = tensors()
    evaluation: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    trajectories: tuple[TrajectoryProjection, ...] = ()
    spec: LandscapeSpec | None = None
    definition: str = ""
    definition_formula: str = ""

    def __post_init__(self) -> None:
        attrs = self.dataset.attrs
        name = str(attrs.get("kind", ""))
        if not self.definition:
            object.__setattr__(self, "definition", name)
        if not self.definition_formula:
            formula = attrs.get("definition") or LANDSCAPE_DEFINITIONS.get(name, "")
            object.__setattr__(self, "definition_formula", str(formula))

    def summary(self) -> list[str]:
        """What the command line prints after a run: the kind, the number of points, the
        strategy and the speed, a note per variable with non-finite values (recorded as
        they are), and each variable's range."""
        ev = self.evaluation
        compiled = (ev.get("trial") or {}).get("compile_seconds")
        how = f" (compiled in {compiled:.1f} s)" if compiled is not None else ""
        lines = [
            f"{self.definition}: {ev.get('points')} points, strategy {ev.get('strategy')}"
            f"{how}, {ev.get('points_per_second', float('nan')):.1f} points/s"
        ]
        for name, count in (ev.get("nonfinite") or {}).items():
            lines.append(
                f"note: {count} non-finite values of {name} recorded as they are (NaN/inf)"
            )
        for name in self.dataset.data_vars:
            v = self.dataset[name].values
            lines.append(f"  {name}: min {fmt(v.min())}, max {fmt(v.max())}")
        return lines


def as_splits(data: Any) -> dict[str, Any]:
    """``{"train": data}`` unless ``data`` is already a mapping of split name to data.

    A dict of tensors (``{"x": ..., "y": ...}``, ``{"input_ids": ..., "labels": ...}``) is
    one dataset, not a mapping of splits."""
    if (
        isinstance(data, Mapping)
        and data
        and all(isinstance(k, str) for k in data)
        and not ({"x", "y"} <= set(data) or {"input", "target"} <= set(data))
        and not any(isinstance(v, Tensor) for v in data.values())
    ):
        return dict(data)
    return {"train": data}


def dtype_name(dtype: Any) -> str:
    """The name of an evaluation precision given by name or as a ``torch.dtype``
    (``"float32"``, ``"float64"``, or ``"bfloat16"``/``"float16"``: autocast over float32
    parameters, :mod:`basinscope.engine.precision`); an unknown one is refused."""
    return str(to_dtype(dtype)).removeprefix("torch.")


def batches_on(
    batches: Any, device: Any, dtype: Any = "float32", limit: int | None = None
) -> list | StreamingBatches:
    """Batches of :func:`~basinscope.engine.as_batches` prepared for an evaluation on
    ``device`` in ``dtype``: batches in memory are moved there once, floating inputs in
    the dtype parameters are stored in (float32 for the autocast precisions); streamed
    batches stay streamed (each pass moves one batch at a time). ``limit`` keeps the first
    batches only."""
    storage, _ = storage_dtype(dtype)
    if isinstance(batches, StreamingBatches):
        stream = StreamingBatches(batches.source, device=device, dtype=storage, task=batches.task)
        limit = batches.limit if limit is None else limit
        return stream if limit is None else stream[:limit]
    chosen = batches if limit is None else batches[:limit]
    return [(inputs_to(x, device, storage), y.to(device)) for x, y in chosen]


def eval_batches(
    data: Any,
    *,
    batch_size: int,
    device: Any = "cpu",
    dtype: Any = "float32",
    task: Task | None = None,
    limit: int | None = None,
) -> list | StreamingBatches:
    """``data`` read once for the engine: data in memory as a list of batches on
    ``device`` (:func:`batches_on`), a DataLoader (or any re-iterable of batches) streamed
    batch by batch on every pass, never held in memory whole."""
    return batches_on(
        as_batches(data, batch_size=batch_size, task=as_task(task)), device, dtype, limit
    )


def fingerprint_batches(batches: Any) -> str:
    """:func:`~basinscope.store.fingerprint_tensors` of a list of ``(inputs, targets)``
    batches, read one batch at a time (streamed batches are read once); dict inputs are
    fingerprinted by their keys and tensors."""
    h = hashlib.sha256()
    for x, y in batches:
        h.update(
            fingerprint_tensors(
                [fingerprint_tensors(x) if isinstance(x, Mapping) else x, y]
            ).encode()
        )
    return h.hexdigest()[:16]


def grid_coeffs(coords: Mapping[str, np.ndarray]) -> np.ndarray:
    """Row-major (``indexing="ij"``) coefficient matrix for the given axes."""
    axes = [np.asarray(v, dtype=np.float64) for v in coords.values()]
    for name, a in zip(coords, axes):
        if a.ndim != 1 or len(a) == 0:
            raise BasinscopeError(
                f"coordinate {name!r} must be a non-empty 1-D array, got shape {a.shape}"
            )
    check_grid_memory({name: len(a) for name, a in zip(coords, axes)})
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=1)


#: Bytes per grid point planned for: the coefficient matrix and its meshgrid temporaries
#: (16 bytes per axis), the journal and result arrays (8 bytes for each of up to 8 values)
#: and the labelled dataset built from them (as much again).
_BYTES_PER_VALUE = 8
_VALUES_PER_POINT = 8


def check_grid_memory(sizes: Mapping[str, int]) -> None:
    """Refuse a grid whose coefficients and results would not fit in memory (up front).

    ``sizes`` maps each axis name to its number of points. The estimate is
    :data:`_BYTES_PER_VALUE` x (2 per axis + 2 x :data:`_VALUES_PER_POINT`) per point; see
    :func:`basinscope._memory.check_memory` for the rule.
    """
    points = int(np.prod([int(n) for n in sizes.values()], dtype=object))
    per_point = _BYTES_PER_VALUE * (2 * len(sizes) + 2 * _VALUES_PER_POINT)
    shape = " x ".join(f"{n:,}" for n in sizes.values())
    side = max(2, int((1e6) ** (1 / max(1, len(sizes)))))
    check_memory(
        points * per_point,
        f"a grid of {shape} = {points:,} points",
        f"use fewer points per axis (e.g. {side} per axis: NUM in START:STOP:NUM), or split the "
        "range into several runs",
    )


def compute_landscape(
    model: nn.Module,
    center: Mapping[str, Tensor],
    directions: Sequence[Mapping[str, Tensor]],
    coords: Mapping[str, np.ndarray],
    data: Any,
    *,
    kind: str,
    attrs: Mapping[str, Any] | None = None,
    center_buffers: Mapping[str, Tensor] | None = None,
    buffer_directions: Sequence[Mapping[str, Tensor]] | None = None,
    metrics: Sequence[str | Metric | Callable] = ("loss", "accuracy"),
    bn_policy: str = "stored",
    bn_data: Any = None,
    bn_batches: int = 10,
    batch_size: int = 1024,
    dtype: str = "float32",
    device: str = "cpu",
    chunk_size: int = 64,
    strategy: str = "auto",
    run_dir: str | Path | None = None,
    spec: Mapping[str, Any] | None = None,
    identity: Mapping[str, Any] | None = None,
    settings: LandscapeSpec | None = None,
    extra_tensors: Mapping[str, Mapping[str, Tensor]] | None = None,
    executor: Executor | None = None,
    progress: bool = False,
    on_chunk: Callable[[int, int], None] | None = None,
    make_job: Callable[[PointBasis], Any] | None = None,
    task: Task | None = None,
) -> Landscape:
    """Evaluate ``metrics`` on the grid ``center + sum_d coords_d * directions_d``.

    With ``run_dir`` the run is stored there (and resumed if interrupted); a finished run
    with the same identity is loaded instead of recomputed. The identity is the grid, the
    metrics, the evaluation options, ``attrs`` and ``identity`` (further settings that
    identify the inputs, e.g. the command line's model and files; ``spec`` is its older
    name), with fingerprints of the center, the directions and the data.

    ``settings`` is the calling function's spec, recorded as the result's ``spec`` with the
    metrics and evaluation options filled in (default: a plain :class:`LandscapeSpec`).
    ``make_job(basis)`` replaces the metric evaluation by any other per-point computation
    with the engine's job protocol (e.g. Hessian eigenvalues), keeping the grid, chunks,
    resume and storage.

    ``task`` (:class:`~basinscope.engine.Task`) says how the model is called on a batch and
    what ``loss`` is (default: ``model(x)`` and cross-entropy); it is recorded in
    ``evaluation["task"]``. ``data`` (and ``bn_data``) in memory is put on ``device`` once;
    a DataLoader is streamed batch by batch on every pass. ``dtype`` is ``"float32"``,
    ``"float64"``, or ``"bfloat16"``/``"float16"`` (autocast over float32 parameters).
    """
    dtype, device = dtype_name(dtype), str(device)  # "cuda:0" for torch.device("cuda:0")
    task = as_task(task)
    if len(directions) != len(coords):
        raise ValueError(f"{len(directions)} directions but {len(coords)} coordinates")
    coeffs = grid_coeffs(coords)  # first: a grid too large for memory is refused up front
    # the data as given (views, for the fingerprints), then once on the evaluation device;
    # a job of its own (make_job) reads its own data: these are for the fingerprints only
    read = {
        safe_name("split name", name): as_batches(d, batch_size=batch_size, task=task)
        for name, d in as_splits(data).items()
    }
    for name in read:
        safe_component(name, "split name")
    bn_read = as_batches(bn_data, batch_size=128, task=task) if bn_data is not None else None
    splits, bn_list = read, bn_read
    if make_job is None:
        splits = {name: batches_on(b, device, dtype) for name, b in read.items()}
        # the statistics' batches on the device when they are re-estimated, the first only
        recompute = bn_read is not None and bn_policy == "recompute"
        bn_list = batches_on(bn_read, device, dtype, limit=bn_batches) if recompute else None
    buffers = dict(center_buffers) if center_buffers is not None else get_buffers(model)
    basis = PointBasis(
        origin={k: v.detach() for k, v in center.items()},
        basis=tuple({k: v.detach() for k, v in d.items()} for d in directions),
        buffers={k: v.detach() for k, v in buffers.items()},
        buffer_basis=tuple(buffer_directions) if buffer_directions is not None else None,
    )
    if make_job is None:
        _, first_targets = next(iter(next(iter(splits.values()))))
        metric_objs = task.resolve_metrics(metrics, first_targets)
    else:
        metric_objs = []
    for m in metric_objs:
        safe_component(m.name, "metric name")
    engine_basis = basis_on(basis, device)
    job = (
        make_job(engine_basis)
        if make_job is not None
        else EvalJob(
            model=model,
            basis=engine_basis,
            datasets=splits,
            metrics=tuple(metric_objs),
            batch_size=batch_size,
            dtype=to_dtype(dtype),
            device=device,
            bn_policy=bn_policy,
            bn_data=bn_list,
            bn_batches=bn_batches,
            strategy=strategy,
            task=task,
        )
    )
    # after the engine's own checks: the spec names the settings the run was made with
    result_spec = (settings or LandscapeSpec()).replace(
        metrics=tuple(m.name for m in metric_objs),
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        bn_policy=bn_policy,
        bn_batches=bn_batches,
        strategy=strategy,
        chunk_size=chunk_size,
    )
    base_attrs = {
        "kind": kind,
        "bn_policy": bn_policy,
        "bn_batches": bn_batches if bn_policy == "recompute" else 0,
        "dtype": dtype,
        **{f"metric_{m.name}": m.definition for m in metric_objs},
    }
    store = None
    try:
        if run_dir is not None:
            full_spec = {
                "kind": kind,
                "coords": {k: np.asarray(v, dtype=np.float64).tolist() for k, v in coords.items()},
                "metrics": [m.name for m in metric_objs],
                "bn_policy": bn_policy,
                "bn_batches": bn_batches,
                "batch_size": batch_size,
                "dtype": dtype,
                "chunk_size": chunk_size,
                "strategy": strategy,
                "attrs": dict(attrs or {}),
                # a task other than the default identifies the run (older runs stay found)
                **({} if task.default else {"task": task.describe()}),
                **(spec or {}),
                **(identity or {}),
            }
            fps = {
                "center": fingerprint_tensors(
                    {**basis.origin, **{f"buffer/{k}": v for k, v in basis.buffers.items()}}
                ),
                "directions": fingerprint_tensors([fingerprint_tensors(d) for d in basis.basis]),
                "data": {s: fingerprint_batches(b) for s, b in read.items()},
            }
            if bn_read is not None and bn_policy == "recompute":
                fps["bn_data"] = fingerprint_batches(bn_read)
            done = RunStore.find_complete(run_dir, "landscape", full_spec, fps, [paths.RESULT])
            if done is not None:  # finished: loaded without a lock, nothing is written
                return _finished(done.path)
            store = RunStore.open(run_dir, "landscape", full_spec, fps)
            if store.manifest.get("status") == "complete" and (store.path / paths.RESULT).exists():
                return _finished(store.path)  # finished by another process while we waited
            for name, t in (extra_tensors or {}).items():
                store.save_tensors(name, t)
        journal = store.journal(len(coeffs), chunk_size) if store is not None else None
        executor = executor or current_executor()
        t0 = time.perf_counter()
        result = evaluate_points(
            job,
            coeffs,
            chunk_size=chunk_size,
            executor=executor,
            journal=journal,
            progress=progress,
            on_chunk=on_chunk,
        )
        shape = tuple(len(np.asarray(v)) for v in coords.values())
        # the example counts after the evaluation: a streamed split has been read by then
        counts = {f"n_{s}": num_examples(b) for s, b in splits.items()}
        ds = xr.Dataset(
            {name: (tuple(coords), v.reshape(shape)) for name, v in result.values.items()},
            coords={k: np.asarray(v, dtype=np.float64) for k, v in coords.items()},
            attrs={
                **base_attrs,
                **counts,
                **(attrs or {}),
                "strategy": result.strategy,
                "chunk_size": chunk_size,
            },
        )
        evaluation = {
            "strategy": result.strategy,
            "trial": result.trial,
            "chunk_size": chunk_size,
            "points": len(coeffs),
            "points_evaluated": result.points_evaluated,
            "seconds": round(time.perf_counter() - t0, 4),
            "points_per_second": result.points_per_second,
            "nonfinite": result.nonfinite,
            **executor.describe(),  # "executor": local or ray (and the Ray workers)
            "device": str(device),
            "task": task.describe(),
        }
        if store is not None:
            evaluation = {**store.manifest.get("evaluation", {}), **evaluation}
            store.update_manifest(evaluation=evaluation)
            evaluation = store.manifest["evaluation"]  # as stored (JSON types)
        land = Landscape(
            ds,
            list(basis.basis),
            basis.origin,
            evaluation,
            store.path if store else None,
            spec=result_spec,
        )
        if store is not None:
            from basinscope.store import save

            save(land, store.path)  # result.json, tensors/, and the manifest says complete
        return land
    finally:
        if store is not None:
            store.close()  # the folder's lock (a caller that holds it keeps it)


def basis_on(basis: PointBasis, device: Any) -> PointBasis:
    """``basis`` with its tensors on ``device`` (the engine combines them there chunk by
    chunk; nothing moves back and forth per point)."""
    if torch.device(device).type == "cpu":
        return basis

    def move(d: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(device) for k, v in d.items()}

    return PointBasis(
        origin=move(basis.origin),
        basis=tuple(move(d) for d in basis.basis),
        buffers=move(basis.buffers),
        buffer_basis=tuple(move(d) for d in basis.buffer_basis)
        if basis.buffer_basis is not None
        else None,
    )


def _finished(run_dir: Path) -> Landscape:
    """The finished landscape stored in ``run_dir`` (:func:`basinscope.store.load`)."""
    from basinscope.store import load

    land = load(run_dir)
    if not isinstance(land, Landscape):
        raise BasinscopeError(
            f"{str(run_dir)!r} holds a {land.kind!r} result, not a landscape: pass another "
            "run folder"
        )
    return dataclasses.replace(land, run_dir=Path(run_dir), trajectories=())
