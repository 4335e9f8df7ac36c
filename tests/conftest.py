"""Shared fixtures: tiny data and models, and a brute-force float64 reference evaluator."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits_xy():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.int64)
    return x, y


@pytest.fixture
def small_data(digits_xy):
    x, y = digits_xy
    return {"train": (x[:300], y[:300]), "test": (x[300:420], y[300:420])}
