"""Run folders: a manifest, a resumable journal of finished chunks, results, tensors, figures.

Layout of a run folder::

    manifest.json        the full spec, fingerprints, versions, evaluation strategy, status
    journal/             per-point metric arrays (Zarr), written chunk by chunk, and a
                         ``done`` mask; this is what an interrupted run resumes from
    results.zarr         the labelled xarray Dataset (coordinates alpha/beta, one variable
                         per metric and split), written when the run completes
    tensors/*.safetensors  directions, centers, trajectories
    figures/             PNG/PDF/HTML/VTP figures

A run's *identity* is its spec plus the fingerprints of its model, data and directions.
Opening an existing folder with a different identity is refused with a message that
names the differing settings, so results of two different runs are never mixed.

A store opened for writing holds the folder's lock (:mod:`basinscope.store.lock`) until
:meth:`RunStore.close`; every file is written atomically (:mod:`basinscope.store.atomic`),
and a journal chunk that cannot be read back counts as not done.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from basinscope.errors import BasinscopeError, SpecMismatchError
from basinscope.store.atomic import (
    atomic_folder,
    atomic_write_bytes,
    atomic_write_text,
    is_temp_name,
    output_errors,
)
from basinscope.store.lock import LOCK_NAME, FolderLock, lock_folder
from basinscope.store.paths import safe_component

if TYPE_CHECKING:
    from basinscope.store.journal import Journal

__all__ = ["RunStore", "fingerprint_tensors", "versions"]

MANIFEST = "manifest.json"
FORMAT = 2  # the run-folder format (basinscope.store.results); 0.1.x wrote format 1


def versions() -> dict[str, str]:
    import basinscope

    return {
        "basinscope": basinscope.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def fingerprint_tensors(tensors: Mapping[str, Tensor] | list) -> str:
    """sha256 (first 16 hex digits) of names, shapes, dtypes and raw bytes of tensors.

    Accepts a dict or a list whose items are tensors, nested lists/tuples/dicts of tensors
    (e.g. ``(x, y)`` batches, dict inputs) or strings (e.g. other fingerprints).
    """
    h = hashlib.sha256()
    items = tensors.items() if isinstance(tensors, Mapping) else enumerate(tensors)
    for k, v in items:
        if isinstance(v, (tuple, list)):
            h.update(fingerprint_tensors(list(v)).encode())
            continue
        if isinstance(v, Mapping):  # a batch's dict inputs: {"input_ids": ..., ...}
            h.update(f"{k}|{fingerprint_tensors(v)}|".encode())
            continue
        if isinstance(v, str):
            h.update(f"{k}|{v}|".encode())
            continue
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _canonical(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _read_manifest(mpath: Path, fix: str) -> dict[str, Any]:
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise BasinscopeError(f"{mpath} exists but is not readable JSON ({e}); {fix}") from None
    if not isinstance(manifest, dict):
        raise BasinscopeError(f"{mpath} is not a JSON object; {fix}")
    return manifest


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a:
                out.append(f"{key}: (absent) -> {b[k]!r}")
            elif k not in b:
                out.append(f"{key}: {a[k]!r} -> (absent)")
            else:
                out.extend(_diff(a[k], b[k], key))
        return out
    return [] if a == b else [f"{prefix}: {a!r} -> {b!r}"]


def _foreign(path: Path) -> bool:
    """``path`` holds files, none of them a manifest: not a run folder (our lock file and
    temporary files left by killed writers do not count)."""
    if not path.is_dir():
        return False
    names = [p.name for p in path.iterdir() if p.name != LOCK_NAME and not is_temp_name(p.name)]
    return bool(names) and MANIFEST not in names


class RunStore:
    """A run folder. ``RunStore.open(path, identity)`` creates it or reopens it to resume.

    A store from :meth:`open` holds the folder's lock until :meth:`close` (or the end of a
    ``with`` block, or until it is garbage-collected); one from :meth:`load` is read-only.
    """

    def __init__(
        self, path: Path, manifest: dict[str, Any], resumed: bool, lock: FolderLock | None = None
    ):
        self.path = path
        self.manifest = manifest
        self.resumed = resumed
        self._lock = lock

    # -- opening -------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        kind: str,
        spec: Mapping[str, Any],
        fingerprints: Mapping[str, Any],
        *,
        wait: bool | None = None,
    ) -> RunStore:
        """Create the run folder ``path`` or reopen it to resume, and lock it.

        Another process writing the folder makes this raise
        :class:`~basinscope.store.lock.FolderBusyError`, or wait for it with ``wait=True``
        (default: :func:`~basinscope.store.lock.default_wait`).
        """
        path = Path(path)
        identity = _canonical({"kind": kind, "spec": spec, "fingerprints": fingerprints})
        if _foreign(path):
            raise BasinscopeError(
                f"{path} exists, is not empty and has no {MANIFEST}: it is not a basinscope run folder. "
                "Pass an empty or new --out folder."
            )
        lock = lock_folder(path, wait=wait)
        try:
            store = cls._open_locked(path, identity)
        except BaseException:
            lock.release()
            raise
        store._lock = lock
        if lock.took_over:
            store.update_manifest(lock_taken_over=lock.took_over)
        return store

    @classmethod
    def _open_locked(cls, path: Path, identity: dict[str, Any]) -> RunStore:
        mpath = path / MANIFEST
        if mpath.is_file():
            manifest = _read_manifest(mpath, "choose another --out folder or remove it")
            if manifest.get("format") != FORMAT:
                from basinscope.store.results import _old_format

                raise _old_format(path, manifest)
            old = {k: manifest.get(k) for k in ("kind", "spec", "fingerprints")}
            if old != identity:
                diffs = _diff(old, identity)
                shown = "\n  ".join(diffs[:10]) + ("\n  ..." if len(diffs) > 10 else "")
                raise SpecMismatchError(
                    f"{path} already holds a different run ({len(diffs)} settings differ):\n  {shown}\n"
                    "To resume it, repeat the original command; for a new run pass another --out folder "
                    "(or delete this one)."
                )
            manifest["resumed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            store = cls(path, manifest, resumed=True)
            store._write_manifest()
            return store
        if _foreign(path):  # written by another process before we had the lock
            raise BasinscopeError(
                f"{path} is not empty and has no {MANIFEST}: it is not a basinscope run folder. "
                "Pass an empty or new --out folder."
            )
        manifest = {
            "format": FORMAT,
            **identity,
            "versions": versions(),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "running",
        }
        store = cls(path, manifest, resumed=False)
        store._write_manifest()
        return store

    @classmethod
    def find_complete(
        cls,
        path: str | Path,
        kind: str,
        spec: Mapping[str, Any],
        fingerprints: Mapping[str, Any],
        files: Sequence[str | Path] = (),
    ) -> RunStore | None:
        """A read-only store of the *finished* run with this identity in ``path`` (its
        manifest says complete and ``files`` exist), or ``None``. Takes no lock and writes
        nothing, so finished runs can be read while another process writes elsewhere, or
        from a read-only disk. ``None`` also for a folder of another run: :meth:`open`
        then says what differs."""
        path = Path(path)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        identity = _canonical({"kind": kind, "spec": spec, "fingerprints": fingerprints})
        if not isinstance(manifest, dict) or manifest.get("status") != "complete":
            return None
        if {k: manifest.get(k) for k in identity} != identity:
            return None
        if not all((path / f).exists() for f in files):
            return None
        return cls(path, manifest, resumed=True)

    @classmethod
    def load(cls, path: str | Path) -> RunStore:
        """Open an existing run folder read-only (for plotting and reports)."""
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise BasinscopeError(f"{path} is not a basinscope run folder: it has no {MANIFEST}")
        return cls(path, _read_manifest(mpath, "run the command that wrote it again"), resumed=True)

    def close(self) -> None:
        """Release the folder's lock (once; a store from :meth:`load` holds none)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_manifest(self) -> None:
        text = json.dumps(self.manifest, indent=2, sort_keys=True, default=str)
        atomic_write_text(self.path / MANIFEST, text, "run manifest")

    def update_manifest(self, **fields: Any) -> None:
        self.manifest.update(_canonical(fields))
        self._write_manifest()

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def spec(self) -> dict[str, Any]:
        return self.manifest["spec"]

    # -- journal (the engine's ChunkJournal protocol) -------------------------------
    def journal(self, n_points: int, chunk_size: int, names: list[str] | None = None) -> Journal:
        from basinscope.store.journal import Journal

        return Journal(self, n_points, chunk_size)

    # -- tensors, results, figures --------------------------------------------------
    def save_tensors(
        self, name: str, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
    ) -> Path:
        from safetensors.torch import save

        p = self.path / "tensors" / f"{safe_component(name, 'tensor file name')}.safetensors"
        data = save(
            {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()},
            metadata=dict(metadata or {}),
        )
        return atomic_write_bytes(p, data, "tensors")

    def load_tensors(self, name: str) -> dict[str, Tensor]:
        from safetensors.torch import load_file

        p = self.path / "tensors" / f"{name}.safetensors"
        if not p.is_file():
            raise BasinscopeError(f"{self.path} has no tensors named {name!r}")
        return load_file(str(p))

    def write_results(self, ds) -> Path:
        p = self.path / "results.zarr"
        with atomic_folder(p, "results") as tmp:
            ds.to_zarr(tmp, mode="w", consolidated=False)
        return p

    def read_results(self):
        import xarray as xr

        p = self.path / "results.zarr"
        if not p.exists():
            raise BasinscopeError(
                f"{self.path} has no results yet (status: {self.manifest.get('status')}); "
                "run the original command again to finish it"
            )
        return xr.open_zarr(p, consolidated=False).load()

    @property
    def figures(self) -> Path:
        p = self.path / "figures"
        with output_errors(p, "figures folder"):
            p.mkdir(exist_ok=True)
        return p
