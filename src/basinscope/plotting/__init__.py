"""Plotting and export of loss landscapes.

Conventions (produced by the landscape engine; see the module docstrings for details):

* A **1D landscape** is an :class:`xarray.Dataset` with coordinate ``alpha`` and variables
  ``<split>_<metric>`` (``train_loss``, ``test_accuracy``, ...); ``attrs`` may hold
  ``kind`` (``"interpolation"`` or ``"random_line"``), ``normalization``, ``title``,
  ``label_a``/``label_b``.
* A **2D landscape** has coordinates ``alpha`` (x axis) and ``beta`` (y axis) and
  variables stored as ``(alpha, beta)``; the plotting functions transpose as needed.
* Values may be NaN or infinite (far extrapolation); they are masked, never fatal, and
  their count is reported in the title.

Matplotlib functions follow the ``plot_x(..., ax=None) -> (fig, ax)`` convention and build
figures from :class:`matplotlib.figure.Figure` directly, so they never touch pyplot or
the user's backend. Save them with :func:`save_figure`.

Names are imported on first use (matplotlib and plotly with them), so importing a light
module of the package (:mod:`basinscope.plotting.run`) costs little.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> its module
_API: dict[str, str] = {
    "Trajectory": "trajectory",
    "draw_trajectory": "trajectory",
    "line_figure": "interactive",
    "plot": "dispatch",
    "plot_contour": "surfaces",
    "plot_line": "lines",
    "plot_per_module": "spectrum",
    "plot_side_by_side": "surfaces",
    "plot_spectral_density": "spectrum",
    "plot_surface3d": "surfaces",
    "plots": "dispatch",
    "save_figure": "io",
    "surface_figure": "interactive",
    "surface_html": "interactive",
    "write_vtp": "vtp",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'basinscope.plotting' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"basinscope.plotting.{_API[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
