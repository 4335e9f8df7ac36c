"""A damaged journal (zero-length or truncated chunk files, unreadable metadata) is resumed:
the damaged chunks are computed again and the result is bit for bit an uninterrupted run's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from basinscope.analyses import random_surface

N_CHUNKS = 9  # 7 x 5 points in chunks of 4


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def _surface(data, run_dir, **kw):
    return random_surface(
        _model(),
        data,
        alphas=np.linspace(-1, 1, 7),
        betas=np.linspace(-1, 1, 5),
        chunk_size=4,
        strategy="loop",
        run_dir=run_dir,
        **kw,
    )


def _interrupted(data, run_dir, after: int) -> None:
    def stop(i, n):
        if i == after - 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _surface(data, run_dir, on_chunk=stop)


def _chunk_file(run_dir, array: str, index: int):
    path = run_dir / "journal" / array / "c" / str(index)
    assert path.is_file(), sorted(p.name for p in path.parent.iterdir())
    return path


@pytest.fixture
def full(tmp_path, small_data):
    return _surface(small_data, tmp_path / "full").dataset


@pytest.mark.parametrize(
    "damage",
    ["zero-length values", "truncated values", "zero-length done flag", "truncated done flag"],
)
def test_a_damaged_chunk_is_computed_again(tmp_path, small_data, full, damage):
    run = tmp_path / "cut"
    _interrupted(small_data, run, after=5)
    array = "values/train_loss" if "values" in damage else "done"
    victim = _chunk_file(run, array, 2)
    data = victim.read_bytes()
    victim.write_bytes(b"" if damage.startswith("zero") else data[: len(data) // 2])

    seen = []
    resumed = _surface(small_data, run, on_chunk=lambda i, n: seen.append(i))
    assert seen == [2, 5, 6, 7, 8]  # the damaged chunk, then the ones never finished
    for v in full.data_vars:
        assert resumed.dataset[v].values.tobytes() == full[v].values.tobytes(), v


def test_unreadable_journal_metadata_starts_the_journal_afresh(tmp_path, small_data, full):
    run = tmp_path / "cut"
    _interrupted(small_data, run, after=4)
    (run / "journal" / "values" / "train_accuracy" / "zarr.json").write_bytes(b"")
    seen = []
    resumed = _surface(small_data, run, on_chunk=lambda i, n: seen.append(i))
    assert seen == list(range(N_CHUNKS))
    for v in full.data_vars:
        assert resumed.dataset[v].values.tobytes() == full[v].values.tobytes(), v
