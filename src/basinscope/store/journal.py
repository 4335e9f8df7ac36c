"""The journal of a run: per-point metric arrays written one chunk at a time.

``journal/values/<metric>`` holds one float64 array per metric and split (chunked like
the evaluation) and ``journal/done`` one flag per chunk, set after the chunk's values are
written: a chunk counts as finished once its flag is set. This is what an interrupted run
resumes from (the engine's :class:`~basinscope.engine.evaluate.ChunkJournal` protocol).

A journal damaged by a crash or a full disk (a zero-length or truncated chunk file, which
Zarr cannot decode) never stops a run: an unreadable flag or value chunk counts as not
done and is computed again, and an array whose metadata cannot be read is dropped with the
whole journal (every chunk is computed again).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from basinscope.store.atomic import output_errors
from basinscope.store.paths import safe_component

if TYPE_CHECKING:
    from basinscope.store.run import RunStore

__all__ = ["Journal"]


class Journal:
    """Per-point arrays written one chunk at a time; a chunk counts once its ``done`` flag
    is set and every value of it can be read back."""

    def __init__(self, store: RunStore, n_points: int, chunk_size: int):
        self.store = store
        self.root = store.path / "journal"
        self.n_points = n_points
        self.chunk_size = chunk_size
        self.n_chunks = -(-n_points // chunk_size)
        self._values: dict[str, np.ndarray] | None = None
        self._open: dict[str | None, Any] = {}  # arrays opened for writing, kept for later chunks

    def _array(self, name: str, *, dtype, fill, chunks: int, shape: int, create: bool):
        import zarr

        p = self.root / name
        if not create and not p.exists():
            return None
        return zarr.open_array(
            str(p), mode="a", shape=(shape,), chunks=(chunks,), dtype=dtype, fill_value=fill
        )

    def _done_array(self, create: bool):
        return self._array(
            "done", dtype="bool", fill=False, chunks=1, shape=self.n_chunks, create=create
        )

    def _values_array(self, name: str, create: bool):
        return self._array(
            f"values/{name}",
            dtype="float64",
            fill=np.nan,
            chunks=self.chunk_size,
            shape=self.n_points,
            create=create,
        )

    def _read(self, arr, chunk: int, fill) -> tuple[np.ndarray, set[int]]:
        """The whole array, and the chunks that could not be decoded (left at ``fill``)."""
        try:
            return np.asarray(arr[:]), set()
        except Exception:  # a damaged chunk: find which, read the others
            pass
        n = arr.shape[0]
        out = np.full(n, fill, dtype=arr.dtype)
        bad = set()
        for i in range(-(-n // chunk)):
            s = slice(i * chunk, min((i + 1) * chunk, n))
            try:
                out[s] = arr[s]
            except Exception:  # zstd/zarr decode errors have no common exception type
                bad.add(i)
        return out, bad

    def done_chunks(self) -> set[int]:
        """Chunks whose flag is set and whose values all read back (see the module doc)."""
        self._values = {}
        self._open = {}  # the journal may be dropped below: open the arrays afresh
        try:
            done_arr = self._done_array(create=False)
            if done_arr is None:
                return set()
            flags, bad = self._read(done_arr, 1, False)
            base = self.root / "values"
            names = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.exists() else []
            arrays = {name: self._values_array(name, create=False) for name in names}
        except Exception:  # unreadable metadata: start the journal afresh
            with output_errors(self.root, "journal"):
                shutil.rmtree(self.root, ignore_errors=True)
            return set()
        for name, arr in arrays.items():
            values, bad_values = self._read(arr, self.chunk_size, np.nan)
            self._values[name] = values
            bad |= bad_values  # value chunks are aligned with the journal's chunks
        return {int(i) for i in np.flatnonzero(flags)} - bad

    def _writable(self, name: str | None) -> Any:
        """The array of metric ``name`` (``None``: the done flags), opened (or created) once
        per journal: opening reads the array's metadata, most of a chunk's write cost."""
        if name not in self._open:
            self._open[name] = (
                self._done_array(create=True)
                if name is None
                else self._values_array(safe_component(name, "metric name"), create=True)
            )
        return self._open[name]

    def write_chunk(self, index: int, rows: slice, values: Mapping[str, np.ndarray]) -> None:
        with output_errors(self.root, "journal"):
            for name, v in values.items():
                self._writable(name)[rows] = np.asarray(v, dtype=np.float64)
            self._writable(None)[index] = True

    def read_values(self) -> dict[str, np.ndarray]:
        """Every metric's values (NaN where not finished or unreadable)."""
        if self._values is None:
            self.done_chunks()
        return dict(self._values or {})

    def recorded_strategy(self) -> dict[str, Any] | None:
        return self.store.manifest.get("evaluation")

    def record_strategy(self, info: Mapping[str, Any]) -> None:
        self.store.update_manifest(evaluation={**info, "chunk_size": self.chunk_size})
