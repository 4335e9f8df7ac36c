"""Synthetic landscapes shared by the plotting tests (no model, no training)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr


def make_bowl(n: int = 21, *, nonfinite: bool = False) -> xr.Dataset:
    """Quadratic bowl ``alpha² + 2 beta² + 0.1`` on ``[-1, 1]²``, stored as (alpha, beta)."""
    a = np.linspace(-1.0, 1.0, n)
    b = np.linspace(-1.0, 1.0, n)
    aa, bb = np.meshgrid(a, b, indexing="ij")
    loss = aa**2 + 2.0 * bb**2 + 0.1
    if nonfinite:
        loss[0, 0] = np.nan
        loss[-1, -1] = np.inf
        loss[-1, 0] = -np.inf
    acc = 1.0 - loss / np.nanmax(loss[np.isfinite(loss)])
    return xr.Dataset(
        {
            "train_loss": (("alpha", "beta"), loss),
            "test_loss": (("alpha", "beta"), 1.2 * loss),
            "train_accuracy": (("alpha", "beta"), acc),
        },
        coords={"alpha": a, "beta": b},
        attrs={"normalization": "filter", "strategy": "random", "title": "Quadratic bowl"},
    )


def make_ramp(*, positive: bool = True) -> xr.Dataset:
    """Asymmetric surface ``z = alpha (+ 2)`` on a non-square grid (13 alphas x 7 betas)."""
    a = np.linspace(-1.0, 2.0, 13)
    b = np.linspace(-1.0, 1.0, 7)
    z = np.repeat(a[:, None], b.size, axis=1) + (2.0 if positive else 0.0)
    return xr.Dataset(
        {"train_loss": (("alpha", "beta"), z)}, coords={"alpha": a, "beta": b}, attrs={}
    )


def make_line(kind: str = "interpolation", *, nonfinite: bool = True) -> xr.Dataset:
    """1D parabola-like landscape on [-0.5, 1.5] with NaN/inf at the far ends."""
    x = np.linspace(-0.5, 1.5, 41)
    loss = 10.0 * (x - 0.2) ** 2 * (x - 1.0) ** 2 + 0.05
    acc = 1.0 - loss / loss.max()
    if nonfinite:
        loss[0] = np.nan
        loss[-1] = np.inf
        acc[-1] = np.nan
    return xr.Dataset(
        {
            "train_loss": ("alpha", loss),
            "test_loss": ("alpha", 1.2 * loss + 0.1),
            "train_accuracy": ("alpha", acc),
            "test_accuracy": ("alpha", 0.9 * acc),
        },
        coords={"alpha": x},
        attrs={"kind": kind, "normalization": "filter", "bn_policy": "recompute"},
    )


@pytest.fixture
def bowl() -> xr.Dataset:
    return make_bowl()


@pytest.fixture
def bowl_nonfinite() -> xr.Dataset:
    return make_bowl(nonfinite=True)


@pytest.fixture
def ramp() -> xr.Dataset:
    return make_ramp()


@pytest.fixture
def line() -> xr.Dataset:
    return make_line()
