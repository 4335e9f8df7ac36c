"""Run folders: manifest, resumable journal, results (xarray/Zarr), tensors, figures."""

from basinscope.store.run import Journal, RunStore, fingerprint_tensors, versions

__all__ = ["Journal", "RunStore", "fingerprint_tensors", "versions"]
