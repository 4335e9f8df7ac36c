"""Shared fixtures: tiny data and models, and a brute-force float64 reference evaluator."""

from __future__ import annotations

import os

import pytest
import torch

# Two torch threads on a 2-core machine; one per xdist worker when the workers share them
# (make test runs -n auto), so that workers never oversubscribe the cores.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


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
