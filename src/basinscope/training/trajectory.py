"""Save and load a training trajectory (parameter checkpoints by step) as safetensors.

One file holds every checkpoint, keyed ``"step=000100/conv1.weight"``; the metadata
records the steps and the parameter names in ``named_parameters()`` order, so a loaded
trajectory flattens exactly like the model (e.g. to fit a PCA plane through it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import safe_open, save
from torch import Tensor

from basinscope.errors import BasinscopeError

FORMAT = "basinscope.trajectory"
VERSION = "1"

__all__ = ["load_trajectory", "trajectory_to_safetensors"]


def _key(step: int, name: str, width: int) -> str:
    return f"step={step:0{width}d}/{name}"


def trajectory_to_safetensors(
    result: Any, path: str | os.PathLike[str], *, metadata: Mapping[str, str] | None = None
) -> None:
    """Write the checkpoints of ``result`` to a safetensors file at ``path``.

    Args:
        result: a :class:`~basinscope.training.TrainResult` (its ``checkpoints`` are saved
            and its config goes into the metadata) or a plain ``{step: {name: tensor}}``.
        path: the file to write (overwritten).
        metadata: extra string metadata to store.
    """
    checkpoints: Mapping[int, Mapping[str, Tensor]] = getattr(result, "checkpoints", result)
    if not isinstance(checkpoints, Mapping) or not checkpoints:
        raise BasinscopeError(
            "there are no checkpoints to save: train with TrainConfig(checkpoint_steps=(...)) "
            "to record the parameters at some steps."
        )
    steps = sorted(int(s) for s in checkpoints)
    names = list(checkpoints[steps[0]])
    for s in steps:
        if list(checkpoints[s]) != names:
            raise BasinscopeError(
                f"checkpoint at step {s} has different parameter names than at step {steps[0]}; "
                "a trajectory must come from one architecture."
            )
    width = max(6, len(str(steps[-1])))
    tensors = {
        _key(s, name, width): checkpoints[s][name].detach().cpu().contiguous()
        for s in steps
        for name in names
    }
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "steps": json.dumps(steps),
        "names": json.dumps(names),
    }
    config = getattr(result, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        meta["config"] = json.dumps(config.to_dict())
    if metadata:
        meta.update({str(k): str(v) for k, v in metadata.items()})
    from basinscope.store.atomic import atomic_write_bytes

    atomic_write_bytes(os.fspath(path), save(tensors, metadata=meta), "trajectory")


def load_trajectory(path: str | os.PathLike[str]) -> dict[int, dict[str, Tensor]]:
    """Read a file written by :func:`trajectory_to_safetensors`.

    Returns:
        ``{step: {name: tensor}}`` with steps ascending and names in the saved
        (``named_parameters()``) order; tensors on the CPU.
    """
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise BasinscopeError(
                    f"{os.fspath(path)} is not a basinscope trajectory (metadata format is "
                    f"{meta.get('format')!r}, expected {FORMAT!r}); write it with "
                    "trajectory_to_safetensors."
                )
            steps = [int(s) for s in json.loads(meta["steps"])]
            names = list(json.loads(meta["names"]))
            keys = set(f.keys())
            width = max(6, len(str(max(steps))))
            out: dict[int, dict[str, Tensor]] = {}
            for s in steps:
                out[s] = {}
                for name in names:
                    key = _key(s, name, width)
                    if key not in keys:
                        raise BasinscopeError(f"{os.fspath(path)} lacks the tensor {key!r}.")
                    out[s][name] = f.get_tensor(key)
    except (SafetensorError, OSError) as e:
        raise BasinscopeError(f"cannot read trajectory {os.fspath(path)}: {e}") from e
    except (KeyError, ValueError, TypeError) as e:  # metadata edited or written by other code
        raise BasinscopeError(
            f"{os.fspath(path)} has broken trajectory metadata ({type(e).__name__}: {e}): it "
            "needs 'steps' and 'names' as JSON lists. Write it with trajectory_to_safetensors "
            "(`basinscope train` does)."
        ) from e
    return out
