"""Saving and loading any :class:`~basinscope.result.Result`: one run-folder layout for
every command and every study stage.

Layout (the names come from :mod:`basinscope.store.paths`)::

    manifest.json      format, the run's kind, spec and input fingerprints (its identity), the
                       result's kind and schema, definition, versions, warnings, status
    result.json        Result.to_dict(): what the command printed with --json
    tensors/           the result's parameter dicts (directions, centers) as safetensors
    figures/           PNG/PDF/HTML figures
    journal/           per-point values of a resumable computation (landscapes, maps)

``save(result, run_dir)`` writes a finished result (completing a folder that a resumable
computation opened, or a new one); ``load(run_dir)`` returns the same typed object.
A folder written by basinscope 0.1 (format 1: ``results.zarr`` / ``results.json``), and a
study run folder or stage folder of the layouts before format 2 (``study.json``,
``settings.json``), is refused with the version that wrote it and the fix
(:func:`old_layout`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from basinscope.errors import BasinscopeError
from basinscope.store import paths
from basinscope.store.atomic import atomic_write_bytes, atomic_write_json
from basinscope.store.run import FORMAT, _canonical, versions

__all__ = ["FORMAT", "load", "load_manifest", "old_layout", "save"]


def save(
    result: Any,
    run_dir: str | Path,
    *,
    spec: Mapping[str, Any] | None = None,
    fingerprints: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``result`` into ``run_dir`` (see the module docstring) and mark it complete.

    ``spec`` and ``fingerprints`` identify the run (default: the result's own ``spec`` and
    those already in the folder's manifest); ``extra`` adds manifest fields (the command
    line, warnings). Returns ``run_dir``.
    """
    from safetensors.torch import save as save_bytes

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    mpath = run_dir / paths.MANIFEST
    manifest = _read(mpath) if mpath.is_file() else {}
    if manifest and manifest.get("format") not in (None, FORMAT):
        raise _old_format(run_dir, manifest)
    # a folder a resumable computation opened keeps its identity (kind, spec, fingerprints:
    # what RunStore.open compares on a rerun); a new one takes the result's
    if "spec" not in manifest or spec is not None:
        own = getattr(result, "spec", None)
        manifest["spec"] = _canonical(dict(spec) if spec is not None else _spec_dict(own, {}))
    if fingerprints is not None or "fingerprints" not in manifest:
        manifest["fingerprints"] = _canonical(dict(fingerprints or {}))
    manifest.setdefault("kind", result.kind)
    manifest.update(
        {
            "format": FORMAT,
            "result": {"kind": result.kind, "schema": result.schema},
            "definition": _canonical(getattr(result, "definition", None)),
            "versions": manifest.get("versions") or versions(),
            "created_at": manifest.get("created_at") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **_canonical(dict(extra or {})),
        }
    )
    for name, value in result.tensor_fields().items():
        if value is None:
            continue
        flat = _flatten_tensors(value)
        data = save_bytes(
            {k: v.detach().contiguous().cpu().clone() for k, v in flat.items()},
            metadata={
                "field": name,
                "layout": "list" if isinstance(value, list) else "dict",
                "keys": json.dumps(list(flat)),  # safetensors sorts them; parameter order matters
            },
        )
        atomic_write_bytes(run_dir / paths.TENSORS / f"{name}.safetensors", data, "tensors")
    atomic_write_json(run_dir / paths.RESULT, result.to_dict(), "result", indent=1)
    manifest["status"] = "complete"
    atomic_write_json(mpath, manifest, "run manifest", indent=2, sort_keys=True)
    return run_dir


def load_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The manifest of a run folder, or a clear error when there is none or it is old."""
    run_dir = Path(run_dir)
    mpath = run_dir / paths.MANIFEST
    if not run_dir.is_dir():
        raise BasinscopeError(
            f"{str(run_dir)!r} is not a folder: pass the run folder (--out) of a basinscope "
            "command, study or demo"
        )
    if not mpath.is_file():
        old = old_layout(run_dir)
        if old is not None:
            raise old
        raise BasinscopeError(
            f"{str(run_dir)!r} is not a basinscope run folder: it has no {paths.MANIFEST}. "
            "Pass the run folder (--out) of a basinscope command, study or demo"
        )
    manifest = _read(mpath)
    if manifest.get("format") != FORMAT:
        raise _old_format(run_dir, manifest)
    return manifest


def load(run_dir: str | Path) -> Any:
    """The typed result stored in ``run_dir`` (the object :func:`save` was given)."""
    from safetensors import safe_open

    from basinscope.result import result_class

    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir)
    rpath = run_dir / paths.RESULT
    if manifest.get("status") != "complete" or not rpath.is_file():
        raise BasinscopeError(
            f"{str(run_dir)!r} holds an unfinished {manifest.get('kind')} run (status "
            f"{manifest.get('status')!r}): run the command that wrote it again to finish it"
        )
    cls = result_class(str((manifest.get("result") or {}).get("kind")))
    tensors: dict[str, Any] = {}
    for f in (run_dir / paths.TENSORS).glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            meta = st.metadata() or {}
            if "field" not in meta:
                continue
            keys = json.loads(meta["keys"]) if "keys" in meta else list(st.keys())
            flat = {k: st.get_tensor(k) for k in keys}
        tensors[meta["field"]] = _unflatten_tensors(flat, meta.get("layout", "dict"))
    return cls.from_dict(_read(rpath), **tensors)


def _spec_dict(spec: Any, manifest: Mapping[str, Any]) -> dict[str, Any]:
    if spec is None:
        return dict(manifest.get("spec") or {})
    return spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BasinscopeError(
            f"{str(path)!r} is not readable JSON ({type(e).__name__}: {e}): the run folder is "
            "damaged; run the command again into a new --out folder"
        ) from None
    if not isinstance(data, dict):
        raise BasinscopeError(f"{str(path)!r} holds {type(data).__name__}, not a JSON object")
    return data


def _old_format(run_dir: Path, manifest: Mapping[str, Any]) -> BasinscopeError:
    wrote = (manifest.get("versions") or {}).get("basinscope", "an older version")
    fmt = manifest.get("format", 1)
    import basinscope

    return BasinscopeError(
        f"{str(run_dir)!r} was written by basinscope {wrote} in run-folder format {fmt}; "
        f"basinscope {basinscope.__version__} reads format {FORMAT}. Run the command again "
        f"into a new --out folder (or read this one with basinscope {wrote})"
    )


def old_layout(folder: str | Path) -> BasinscopeError | None:
    """The error for a study run folder or stage folder of the layouts before run-folder
    format 2 (a study's ``study.json`` and ``results.json``; a stage's ``settings.json`` and
    ``result.json``, without ``manifest.json``), naming the version and the fix; ``None``
    for any other folder."""
    import basinscope

    folder = Path(folder)
    if (folder / paths.MANIFEST).is_file():
        return None
    now = f"basinscope {basinscope.__version__} reads run-folder format {FORMAT}"
    if (folder / paths.OLD_STUDY).is_file():
        try:
            wrote = json.loads((folder / paths.OLD_STUDY).read_text()).get("basinscope")
        except (OSError, ValueError, AttributeError):
            wrote = None
        return BasinscopeError(
            f"{str(folder)!r} is a study run folder written by basinscope {wrote or '0.1'} in "
            f"the layout before run-folder format {FORMAT} ({paths.OLD_STUDY}, results.json); "
            f"{now}. Run the study again with a new --out folder (or delete this folder and "
            f"the {paths.STAGES}/ folder beside it, whose stages are old too)"
        )
    if (folder / paths.OLD_STAGE).is_file():
        return BasinscopeError(
            f"{str(folder)!r} is a study's stage folder written by basinscope 0.1 or an early "
            f"0.2 in the layout before run-folder format {FORMAT} ({paths.OLD_STAGE}, "
            f"{paths.RESULT}, no {paths.MANIFEST}); {now}. Run the study again with a new "
            f"--out folder (or delete the {paths.STAGES}/ folder that holds this stage: "
            "its stages are computed again)"
        )
    return None


def _flatten_tensors(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    return {f"{i}/{k}": v for i, d in enumerate(value) for k, v in d.items()}


def _unflatten_tensors(flat: Mapping[str, Any], layout: str) -> Any:
    if layout == "dict":
        return dict(flat)
    out: dict[int, dict[str, Any]] = {}
    for key, v in flat.items():
        i, _, name = key.partition("/")
        out.setdefault(int(i), {})[name] = v
    return [out[i] for i in sorted(out)]
