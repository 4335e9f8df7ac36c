"""Run folders: manifest, resumable journal, results (xarray/Zarr), tensors, figures;
atomic writes, folder locks and safe path names."""

from basinscope.store.atomic import (
    OutputWriteError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from basinscope.store.journal import Journal
from basinscope.store.lock import FolderBusyError, FolderLock, lock_folder, waiting
from basinscope.store.paths import safe_component
from basinscope.store.results import load, load_manifest, save
from basinscope.store.run import RunStore, fingerprint_tensors, versions

__all__ = [
    "FolderBusyError",
    "FolderLock",
    "Journal",
    "OutputWriteError",
    "RunStore",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fingerprint_tensors",
    "load",
    "load_manifest",
    "lock_folder",
    "safe_component",
    "save",
    "versions",
    "waiting",
]
