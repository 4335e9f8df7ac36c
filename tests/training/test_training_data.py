"""The trainer's data adapter and minibatch stream."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from basinscope.errors import BasinscopeError
from basinscope.geometry.params import get_params
from basinscope.training import TrainConfig, train
from basinscope.training._data import BatchStream, as_tensors, epoch_permutation


@dataclass(frozen=True)
class _LikeTensorData:
    """Mimics basinscope.data.TensorData (x, y and a batches method)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int | None = None):
        order = torch.randperm(len(self)) if shuffle else torch.arange(len(self))
        for i in range(0, len(self), batch_size):
            idx = order[i : i + batch_size]
            yield self.x[idx], self.y[idx]


class _BatchesOnly:
    """Only a batches method, yielding numpy arrays in small batches."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._x, self._y = x.numpy(), y.numpy()

    def batches(
        self, batch_size: int, *, shuffle: bool = False, seed: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(0, len(self._x), 100):
            yield self._x[i : i + 100], self._y[i : i + 100]


class _PlainDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def test_all_data_forms_give_identical_training(digits, models) -> None:
    x, y = digits[0][:300], digits[1][:300]
    forms = [
        (x, y),
        [x.numpy().astype(np.float64), y.numpy()],  # float64 is cast to the model's dtype
        _LikeTensorData(x, y),
        _BatchesOnly(x, y),
        TensorDataset(x, y),
        _PlainDataset(x, y),
    ]
    model = models.mlp()
    config = TrainConfig(steps=12, batch_size=50, data_seed=5)
    results = [get_params(train(model, data, config).model) for data in forms]
    for r in results[1:]:
        assert all(torch.equal(r[k], results[0][k]) for k in r)


def test_as_tensors_errors() -> None:
    with pytest.raises(BasinscopeError, match="cannot read data of type int"):
        as_tensors(3)
    with pytest.raises(BasinscopeError, match="same first"):
        as_tensors((torch.zeros(4, 2), torch.zeros(5)))
    with pytest.raises(BasinscopeError, match="empty"):
        as_tensors((torch.zeros(0, 2), torch.zeros(0)))
    with pytest.raises(BasinscopeError, match="not \\(x, y\\) pairs"):
        as_tensors(_PlainDatasetOfScalars())


class _PlainDatasetOfScalars(Dataset):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(float(i))


def test_epoch_permutation_depends_only_on_seed_and_epoch() -> None:
    a = epoch_permutation(100, 0, 0)
    assert torch.equal(a, epoch_permutation(100, 0, 0))
    assert sorted(a.tolist()) == list(range(100))
    assert not torch.equal(a, epoch_permutation(100, 1, 0))
    assert not torch.equal(a, epoch_permutation(100, 0, 1))
    assert not torch.equal(epoch_permutation(100, 0, 1), epoch_permutation(100, 1, 0))


def test_batch_stream_equal_sizes_and_epoch_coverage() -> None:
    x = torch.arange(10).float().unsqueeze(1)
    y = torch.arange(10)
    stream = BatchStream(x, y, batch_size=4, data_seed=7)
    batches = [next(stream)[1] for _ in range(5)]  # 20 samples = 2 epochs
    assert all(b.shape == (4,) for b in batches)
    seen = torch.cat(batches)
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(seen[:10], epoch_permutation(10, 7, 0))
    assert stream.epochs_done == 2.0
    full = BatchStream(x, y, batch_size=64, data_seed=0)
    assert sorted(next(full)[1].tolist()) == list(range(10))
