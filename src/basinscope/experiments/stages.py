"""Stages of a study: each stores its result in a folder named by a hash of its settings
(open_lth style), so running a study again reuses finished stages and a changed setting
recomputes only the stages that depend on it.

Every stage folder is a run folder of format 2 (:mod:`basinscope.store.results`):
``manifest.json`` (kind ``stage`` and the stage's name, its settings as the spec, versions,
status), the result stored by :func:`basinscope.store.save` (an analysis result itself, or
a :class:`~basinscope.experiments.results.StageResult` holding the stage's dict), and the
files a stage writes beside it (weights, trajectories); ``basinscope.load(stage folder)``
returns the typed result. A stage's manifest says ``complete`` only after everything else
is written, so a stage interrupted before that is computed again.

A stage is computed under its folder's lock (:func:`basinscope.store.lock_folder`): a
second process that needs the same unfinished stage (another study sharing ``stages/``)
stops with a message naming the holder, or with ``--wait`` waits and then reuses what the
holder finished. A finished stage is read without a lock. Every file is written atomically.
A stage folder of the layout before format 2 (``settings.json``) is refused with the fix.

Where a stage computes is one of its settings: ``device`` (every stage that runs on the
study's device) and ``dtype`` (every stage that evaluates in the study's precision), from
:func:`placement`. Numbers computed on a GPU, or in another precision, differ in rounding
from the CPU's float32 ones, so such a stage is a different stage with its own folder. At
their defaults (``cpu``, ``float32``) both are recorded in the settings but left out of the
folder's digest (:func:`identity`), so that folders written before they were settings keep
their names and are reused."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from basinscope.spec import EvalOptions
from basinscope.store import RunStore, atomic_write_json, fingerprint_tensors, lock_folder, paths

__all__ = [
    "DEFAULT_DEVICE",
    "DEFAULT_DTYPE",
    "ModelStage",
    "StageLog",
    "TrainedStage",
    "cached_stage",
    "identity",
    "landscape_stage",
    "model_stage",
    "placement",
    "stage_dir",
    "stage_folders",
    "stages_table",
    "train_stage",
    "write_json",
]


# every command's defaults (basinscope.spec.EvalOptions): the CPU, in float32
_DEFAULTS = {f.name: f.default for f in fields(EvalOptions) if f.name in ("device", "dtype")}
DEFAULT_DEVICE: str = _DEFAULTS["device"]
DEFAULT_DTYPE: str = _DEFAULTS["dtype"]


def placement(cfg: Any, *, dtype: bool = True) -> dict[str, str]:
    """The settings that say where a stage computes: the study's ``device`` and, for a stage
    that evaluates in the study's precision (``dtype=True``), its ``dtype``. A stage whose
    precision is pinned (Hessians in float64) or that trains (in the model's float32) takes
    ``dtype=False``."""
    out = {"device": str(getattr(cfg, "device", DEFAULT_DEVICE))}
    if dtype:
        out["dtype"] = str(getattr(cfg, "dtype", DEFAULT_DTYPE))
    return out


def identity(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` without ``device`` and ``dtype`` where they are the defaults (``cpu``,
    ``float32``): what a folder's digest is computed from, so that a stage computed on the
    CPU in float32 has the folder it had before these were settings."""
    return {k: v for k, v in settings.items() if not (k in _DEFAULTS and v == _DEFAULTS[k])}


def stage_dir(root: str | Path, name: str, settings: dict[str, Any]) -> Path:
    """``root/<name>-<hash of settings>`` (:func:`basinscope.store.paths.run_name`); the
    hash is of :func:`identity` (``device`` and ``dtype`` count only when not the defaults)."""
    return Path(root) / paths.run_name(name, paths.digest(identity(settings)))


class StageLog:
    """Which stages a run used, whether each was reused, and how long each took."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []

    def record(self, path: Path, reused: bool, seconds: float) -> None:
        self._rows.append(
            {"stage": Path(path).name, "path": Path(path), "reused": reused, "seconds": seconds}
        )

    def extend(self, other: StageLog) -> None:
        """Append ``other``'s rows (a stage's own log, from the process that ran it)."""
        self._rows.extend(other._rows)

    def rows(self, root: str | Path | None = None) -> list[dict[str, Any]]:
        out = []
        for r in self._rows:
            p = r["path"]
            try:
                p = p.relative_to(root) if root is not None else p
            except ValueError:
                pass
            out.append({**r, "path": str(p), "seconds": round(r["seconds"], 3)})
        return out

    @property
    def computed(self) -> list[str]:
        return [r["stage"] for r in self._rows if not r["reused"]]

    @property
    def reused(self) -> list[str]:
        return [r["stage"] for r in self._rows if r["reused"]]


def write_json(path: Path, obj: Any, what: str = "file") -> None:
    """Write ``obj`` as JSON atomically (see :mod:`basinscope.store.atomic`)."""
    from basinscope.jsonable import jsonable

    atomic_write_json(path, jsonable(obj), what)


STAGE = "stage folder"


def _check_layout(d: Path) -> None:
    """Refuse a stage folder of the layout before run-folder format 2 (before locking it)."""
    from basinscope.store.results import old_layout

    old = old_layout(d)
    if old is not None:
        raise old


def _begin(d: Path, name: str, settings: dict[str, Any]) -> None:
    """Write the manifest of stage folder ``d`` (under its lock, before computing): its
    identity (kind ``stage``, its name, its settings as the spec), versions, the torch
    threads it computes with (in no digest: see :mod:`basinscope.experiments.registry`),
    ``running``."""
    import torch

    from basinscope.jsonable import jsonable
    from basinscope.store.results import FORMAT
    from basinscope.store.run import versions

    manifest = {"format": FORMAT, "kind": "stage", "stage": name, "spec": settings}
    manifest.update(versions=versions(), created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    manifest.update(threads=torch.get_num_threads(), status="running")
    atomic_write_json(
        d / paths.MANIFEST, jsonable(manifest), "stage manifest", indent=2, sort_keys=True
    )


def _finish(d: Path, name: str, value: Any) -> None:
    """Store the stage's value (an analysis result itself, or a dict as a
    :class:`StageResult`); the manifest, written last, then says complete."""
    from basinscope.experiments.results import StageResult
    from basinscope.jsonable import jsonable
    from basinscope.result import Result
    from basinscope.store import save

    save(value if isinstance(value, Result) else StageResult(name, jsonable(value)), d)


def _value(d: Path) -> dict[str, Any]:
    """The stored value of finished stage ``d`` as a JSON-ready dict (a :class:`StageResult`'s
    dict, or the analysis result's ``to_dict()``)."""
    data = json.loads((d / paths.RESULT).read_text())
    return data["value"] if data.get("kind") == "stage" else data


def cached_stage(
    root: str | Path,
    name: str,
    settings: dict[str, Any],
    compute: Callable[[Path], Any],
    *,
    log: StageLog | None = None,
) -> tuple[dict[str, Any], Path]:
    """Run ``compute(stage folder)`` once per ``settings``; returns its value as a
    JSON-ready dict and the folder.

    ``compute`` returns a JSON-ready dict (stored as a
    :class:`~basinscope.experiments.results.StageResult`) or an analysis
    :class:`~basinscope.result.Result` (stored as itself; the value is its ``to_dict()``).
    The folder is ``stage_dir(root, name, settings)``; the manifest says complete only
    after the result is written, so a stage interrupted before that is computed again and
    a finished one is loaded. ``settings`` must name everything the result depends on
    (including the folders of upstream stages).
    """
    d = stage_dir(root, name, settings)
    seconds = None
    if not _complete(d):
        _check_layout(d)
        with lock_folder(d, what=STAGE):
            if not _complete(d):  # else another process finished it while we waited
                _begin(d, name, settings)
                t0 = time.perf_counter()
                _finish(d, name, compute(d))
                seconds = time.perf_counter() - t0
    if log is not None:
        log.record(d, seconds is None, seconds or 0.0)
    return _value(d), d


def landscape_stage(
    root: str | Path,
    name: str,
    settings: dict[str, Any],
    compute: Callable[[Path], Any],
    *,
    log: StageLog | None = None,
) -> Any:
    """Run a landscape analysis, ``compute(stage folder)``, which stores and resumes itself
    chunk by chunk in that folder (a :class:`~basinscope.store.RunStore`), and log whether it
    was already complete (``manifest.json`` status and ``result.json``) before the call."""
    d = stage_dir(root, name, settings)
    done = _complete(d)
    t0 = time.perf_counter()
    # a finished run is loaded, but the stage may still write beside it (a surface's projected
    # trajectories): lock it too, waiting for a holder, which can only be finishing such a write
    with lock_folder(d, what=STAGE, wait=True if done else None):
        out = compute(d)
    if log is not None:
        log.record(d, done, 0.0 if done else time.perf_counter() - t0)
    return out


def _complete(d: Path) -> bool:
    try:
        status = json.loads((d / paths.MANIFEST).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return False
    return status == "complete" and (d / paths.RESULT).exists()


@dataclass(frozen=True)
class ModelStage:
    """A stage that produced a model: its weights, trajectory and JSON info."""

    model: nn.Module
    checkpoints: dict[int, dict[str, Tensor]]
    info: dict[str, Any]
    run_dir: Path
    reused: bool


def model_stage(
    root: str | Path,
    name: str,
    settings: dict[str, Any],
    template: nn.Module,
    compute: Callable[[], tuple[nn.Module, dict[int, dict[str, Tensor]], dict[str, Any]]],
    *,
    log: StageLog | None = None,
) -> ModelStage:
    """Like :func:`cached_stage` for a computation that yields ``(model, checkpoints,
    info)``: the weights go to ``model.safetensors`` (loaded into a copy of ``template``),
    the checkpoints to ``trajectory.safetensors``, ``info`` to the stage's
    :class:`~basinscope.experiments.results.StageResult` (last)."""
    from basinscope.models import load_weights, save_weights
    from basinscope.training import load_trajectory, trajectory_to_safetensors

    d = stage_dir(root, name, settings)
    weights, traj = d / paths.WEIGHTS, d / paths.TRAJECTORY
    if not (_complete(d) and weights.is_file()):
        _check_layout(d)
        with lock_folder(d, what=STAGE):
            if not (_complete(d) and weights.is_file()):  # else finished while we waited
                _begin(d, name, settings)
                t0 = time.perf_counter()
                model, ckpts, info = compute()
                save_weights(model, weights)
                if ckpts:
                    trajectory_to_safetensors(ckpts, traj)
                _finish(d, name, info)  # last: the stage counts as finished
                if log is not None:
                    log.record(d, False, time.perf_counter() - t0)
                return ModelStage(model, ckpts, _value(d), d, False)
    model = load_weights(copy.deepcopy(template), weights)
    ckpts = load_trajectory(traj) if traj.is_file() else {}
    if log is not None:
        log.record(d, True, 0.0)
    return ModelStage(model, ckpts, _value(d), d, True)


@dataclass(frozen=True)
class TrainedStage:
    """A train stage: the trained model, its checkpoints, its history and its record."""

    model: nn.Module
    checkpoints: dict[int, dict[str, Tensor]]
    history: Any  # the record's history (xarray Dataset: loss and lr by step)
    run_dir: Path
    reused: bool
    record: Any = None  # the TrainRun stored in run_dir


def train_stage(
    run_dir: str | Path,
    model: nn.Module,
    data: Any,
    config: Any,
    spec: dict[str, Any] | None = None,
    *,
    progress: bool = False,
    log: StageLog | None = None,
    wait: bool | None = None,
    device: str = DEFAULT_DEVICE,
    dtype: str | None = None,
    task: Any = None,
) -> TrainedStage:
    """Train ``model`` (a copy) on ``data`` with ``config`` in ``run_dir``, or reuse a finished run.

    The run's identity is ``spec`` + the config + the ``device`` and ``dtype`` it trains in
    (only when not the CPU and float32, :func:`identity`) + the task (only when not the
    default classifier) + fingerprints of the initial weights and the data; the
    manifest records the device in any case, and the trained model comes back on the CPU.
    A finished run is loaded (weights, trajectory, its :class:`~basinscope.training.TrainRun`)
    instead of retrained; an unfinished one is trained again from the start (training is fast
    next to the analyses). The folder is a run folder of format 2 (``result.json`` holds the
    TrainRun) with the weights and the trajectory beside it
    (:data:`~basinscope.store.paths.WEIGHTS`, :data:`~basinscope.store.paths.TRAJECTORY`).
    While it trains, the folder is locked; ``wait`` says whether another process writing it
    is waited for (default: :func:`basinscope.store.lock.default_wait`).
    """
    import torch

    from basinscope.models import load_weights, save_weights
    from basinscope.store import load, save
    from basinscope.training import TrainRun, load_trajectory, train, trajectory_to_safetensors

    fps = {"init": fingerprint_tensors(model.state_dict()), "data": _data_fingerprint(data)}
    ident = {**(spec or {}), "device": str(device), "config": config.to_dict()}
    if dtype is not None:
        ident["dtype"] = str(dtype)
    if task is not None and not task.default:
        ident["task"] = task.describe()
    spec = identity(ident)
    run_dir = Path(run_dir)
    weights, traj = run_dir / paths.WEIGHTS, run_dir / paths.TRAJECTORY
    files = (weights, traj, run_dir / paths.RESULT)
    # a finished run is read without a lock; RunStore.open refuses a folder of another run
    finished = RunStore.find_complete(run_dir, "train", spec, fps, files)
    if finished is None:
        with RunStore.open(run_dir, "train", spec, fps, wait=wait) as store:
            if not (store.manifest.get("status") == "complete" and all(map(Path.is_file, files))):
                t0 = time.perf_counter()
                store.update_manifest(device=str(device), threads=torch.get_num_threads())
                result = train(
                    model, data, config, progress=progress, device=device, dtype=dtype, task=task
                )
                result.model.cpu()  # the weights are saved and used from the CPU
                save_weights(result.model, weights)
                trajectory_to_safetensors(result, traj)
                record = TrainRun.of(result, run_dir)
                save(record, run_dir)  # result.json, then the manifest says complete
                if log is not None:
                    log.record(run_dir, False, time.perf_counter() - t0)
                return TrainedStage(
                    result.model, result.checkpoints, record.history, run_dir, False, record
                )
    trained = load_weights(copy.deepcopy(model), weights)
    record = load(run_dir)
    if log is not None:
        log.record(run_dir, True, 0.0)
    return TrainedStage(trained, load_trajectory(traj), record.history, run_dir, True, record)


def _data_fingerprint(data: Any) -> str:
    if hasattr(data, "fingerprint"):
        return data.fingerprint()
    if hasattr(data, "x") and hasattr(data, "y"):
        return fingerprint_tensors({"x": data.x, "y": data.y})
    return fingerprint_tensors({"x": data[0], "y": data[1]})


# -- what every study report shows of its stages ------------------------------------------------
def stage_folders(run_dir: Path, results: dict[str, Any]) -> dict[str, Path]:
    """Each stage's folder by name, from a study's ``results["stages"]`` rows (a relative
    path is relative to the folder that holds the study's run folder)."""
    out = {}
    for s in results["stages"]:
        p = Path(s["path"])
        out[s["stage"]] = p if p.is_absolute() else Path(run_dir).parent / p
    return out


def stages_table(rep: Any, results: dict[str, Any], caption: str = "Stages of this run.") -> None:
    """The report's table of the run's stages: name, reused, seconds."""
    rep.table(
        [
            {"stage": s["stage"], "reused": s["reused"], "seconds": s["seconds"]}
            for s in results.get("stages", [])
        ],
        caption,
    )
