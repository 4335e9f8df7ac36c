"""Directions on disk as safetensors, so one plane can be reused across models."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from basinscope.errors import BasinscopeError
from basinscope.geometry.params import ParamDict, check_same_keys

__all__ = ["check_checkpoints_fit", "check_directions_fit", "load_directions", "save_directions"]


def save_directions(
    path: str | Path,
    directions: Sequence[Mapping[str, Tensor]],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write directions as ``d0/<param name>``, ``d1/<param name>``, ... with JSON metadata."""
    from safetensors.torch import save

    from basinscope.store.atomic import atomic_write_bytes

    path = Path(path)
    tensors = {
        f"d{i}/{k}": v.detach().contiguous().cpu().clone()
        for i, d in enumerate(directions)
        for k, v in d.items()
    }
    meta = {"basinscope": json.dumps({"n_directions": len(directions), **(metadata or {})})}
    return atomic_write_bytes(path, save(tensors, metadata=meta), "directions")


def load_directions(path: str | Path) -> tuple[list[ParamDict], dict[str, Any]]:
    """Read directions written by :func:`save_directions`; returns (directions, metadata)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise BasinscopeError(
            f"directions file {str(path)!r} does not exist; pass a .safetensors file written by basinscope"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = f.metadata() or {}
            meta_raw = stored.get("basinscope")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise BasinscopeError(
            f"could not read directions file {str(path)!r} ({type(e).__name__}: {e}); "
            "expected a .safetensors file written by `basinscope surface` or save_directions()"
        ) from None
    if meta_raw is None and stored.get("layout") == "list" and "field" in stored:
        # a list of parameter dicts in a run folder (basinscope.store.save: <i>/<name>, in
        # the order of the 'keys' metadata), e.g. RUN/tensors/directions.safetensors
        try:
            keys = json.loads(stored["keys"]) if "keys" in stored else list(tensors)
            out: dict[int, ParamDict] = {}
            for key in keys:
                head, name = key.split("/", 1)
                out.setdefault(int(head), {})[name] = tensors[key]
            dirs = [out[i] for i in range(len(out))]
        except (ValueError, KeyError, TypeError) as e:
            raise BasinscopeError(
                f"{str(path)!r} is a damaged directions file ({type(e).__name__}: {e}): its "
                "tensor names are not <index>/<param>. Recreate it, e.g. with `basinscope "
                "surface` (RUN/tensors/directions.safetensors)."
            ) from None
        return dirs, {"n_directions": len(dirs), "field": stored["field"]}
    if meta_raw is None:
        raise BasinscopeError(
            f"{str(path)!r} is a safetensors file but not a basinscope directions file "
            "(no 'basinscope' metadata); write it with basinscope.geometry.save_directions()"
        )
    try:
        meta = json.loads(meta_raw)
        n = int(meta["n_directions"])
        dirs: list[ParamDict] = [{} for _ in range(n)]
        for key, t in tensors.items():
            head, name = key.split("/", 1)
            dirs[int(head[1:])][name] = t
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise BasinscopeError(
            f"{str(path)!r} is a damaged directions file ({type(e).__name__}: {e}): its metadata "
            "or tensor names are not those save_directions() writes (d0/<param>, d1/<param>, "
            "...). Recreate it, e.g. with `basinscope surface` (RUN/tensors/directions.safetensors)."
        ) from None
    return dirs, meta


def check_directions_fit(
    directions: Sequence[Mapping[str, Tensor]],
    params: Mapping[str, Tensor],
    source: str = "directions",
) -> None:
    """Raise a clear error if the directions' keys or shapes do not match the model."""
    for i, d in enumerate(directions):
        check_same_keys(
            params,
            d,
            f"{source}: direction {i} does not fit the model; its keys and the model's parameters",
            "Directions must be made for the same architecture; recreate them for this model "
            "(drop --directions) or pass the matching --model/--model-kwargs.",
        )


def check_checkpoints_fit(
    checkpoints: Mapping[int, Mapping[str, Tensor]] | Sequence[Mapping[str, Tensor]],
    params: Mapping[str, Tensor],
    source: str = "the trajectory",
) -> None:
    """Raise a clear error if a trajectory's checkpoints do not have the model's parameters.

    Every checkpoint must hold exactly the model's parameter names with the same shapes
    (as ``basinscope train`` writes them); the first that differs is reported with its
    missing keys, unexpected keys and shape mismatches.
    """
    items = (
        [(int(k), checkpoints[k]) for k in sorted(checkpoints)]
        if isinstance(checkpoints, Mapping)
        else list(enumerate(checkpoints))
    )
    if not items:
        raise BasinscopeError(f"{source} holds no checkpoints; it needs at least one")
    for step, ckpt in items:
        check_same_keys(
            params,
            ckpt,
            f"{source}: the checkpoint at step {step} and the model's parameters",
            "Was the trajectory saved from another model? Pass the --model/--model-kwargs it "
            "was trained with, or a trajectory of this model (`basinscope train` writes "
            "RUN/trajectory.safetensors).",
        )
