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
"""

from basinscope.plotting.dispatch import plot, plots
from basinscope.plotting.interactive import line_figure, surface_figure, surface_html
from basinscope.plotting.io import save_figure
from basinscope.plotting.lines import plot_line
from basinscope.plotting.spectrum import plot_per_module, plot_spectral_density
from basinscope.plotting.surfaces import plot_contour, plot_side_by_side, plot_surface3d
from basinscope.plotting.trajectory import Trajectory, draw_trajectory
from basinscope.plotting.vtp import write_vtp

__all__ = [
    "Trajectory",
    "draw_trajectory",
    "line_figure",
    "plot",
    "plot_contour",
    "plot_line",
    "plot_per_module",
    "plot_side_by_side",
    "plot_spectral_density",
    "plot_surface3d",
    "plots",
    "save_figure",
    "surface_figure",
    "surface_html",
    "write_vtp",
]
