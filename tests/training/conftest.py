"""Shared fixtures for the training tests: the digits data and tiny models."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn digits, flattened to (N, 64) in [0, 1], with integer labels."""
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    return x, y


@pytest.fixture(scope="session")
def digits_images(digits) -> tuple[torch.Tensor, torch.Tensor]:
    """The same digits as (N, 1, 8, 8) images."""
    x, y = digits
    return x.reshape(-1, 1, 8, 8), y


def make_mlp(seed: int = 0, hidden: int = 32) -> nn.Module:
    """A 64-hidden-10 MLP with a seeded initialisation."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def make_bn_mlp(seed: int = 0) -> nn.Module:
    """An MLP with BatchNorm1d and dropout."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10)
    )


class TinyCNN(nn.Module):
    """A small CNN for (N, 1, 8, 8) digits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        return self.fc(h.flatten(1))


@pytest.fixture(scope="session")
def models() -> SimpleNamespace:
    """Model factories: ``models.mlp(seed)``, ``models.bn_mlp(seed)``, ``models.cnn(seed)``."""

    def cnn(seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return TinyCNN()

    return SimpleNamespace(mlp=make_mlp, bn_mlp=make_bn_mlp, cnn=cnn)
