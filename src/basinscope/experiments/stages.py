"""Stages of a study: each stores its results in a folder named by a hash of its settings
(open_lth style), so running a study again reuses finished stages and a changed setting
recomputes only the stages that depend on it."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from basinscope.store import RunStore, fingerprint_tensors

__all__ = ["TrainedStage", "stage_dir", "train_stage"]


def stage_dir(root: str | Path, name: str, settings: dict[str, Any]) -> Path:
    """``root/name-<hash of settings>``."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[
        :10
    ]
    return Path(root) / f"{name}-{digest}"


@dataclass(frozen=True)
class TrainedStage:
    model: nn.Module
    checkpoints: dict[int, dict[str, Tensor]]
    history: dict[str, list[float]]
    run_dir: Path
    reused: bool


def train_stage(
    run_dir: str | Path,
    model: nn.Module,
    data: Any,
    config: Any,
    spec: dict[str, Any] | None = None,
    *,
    progress: bool = False,
) -> TrainedStage:
    """Train ``model`` (a copy) on ``data`` with ``config`` in ``run_dir``, or reuse a finished run.

    The run's identity is ``spec`` + the config + fingerprints of the initial weights and the
    data. A finished run is loaded (weights, trajectory, history) instead of retrained; an
    unfinished one is trained again from the start (training is fast next to the analyses).
    """
    from basinscope.models import load_weights, save_weights
    from basinscope.training import load_trajectory, train, trajectory_to_safetensors

    fps = {"init": fingerprint_tensors(model.state_dict()), "data": _data_fingerprint(data)}
    store = RunStore.open(run_dir, "train", {**(spec or {}), "config": config.to_dict()}, fps)
    weights = store.path / "model.safetensors"
    traj = store.path / "trajectory.safetensors"
    hist = store.path / "history.json"
    if store.manifest.get("status") == "complete" and weights.is_file() and traj.is_file():
        trained = load_weights(copy.deepcopy(model), weights)
        history = json.loads(hist.read_text()) if hist.is_file() else {}
        return TrainedStage(trained, load_trajectory(traj), history, store.path, True)
    result = train(model, data, config, progress=progress)
    save_weights(result.model, weights)
    trajectory_to_safetensors(result, traj)
    hist.write_text(json.dumps({k: [float(x) for x in v] for k, v in result.history.items()}))
    store.update_manifest(status="complete")
    return TrainedStage(result.model, result.checkpoints, result.history, store.path, False)


def _data_fingerprint(data: Any) -> str:
    if hasattr(data, "fingerprint"):
        return data.fingerprint()
    if hasattr(data, "x") and hasattr(data, "y"):
        return fingerprint_tensors({"x": data.x, "y": data.y})
    return fingerprint_tensors({"x": data[0], "y": data[1]})
