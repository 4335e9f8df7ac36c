"""Analyses: each a function that returns a frozen result."""

from basinscope.analyses.interpolation import interpolate, random_line
from basinscope.analyses.landscape import Landscape, compute_landscape, grid_coeffs
from basinscope.analyses.surface import (
    TrajectoryProjection,
    pca_surface,
    plane_surface,
    project_trajectory,
    random_surface,
)

__all__ = [
    "Landscape",
    "TrajectoryProjection",
    "compute_landscape",
    "grid_coeffs",
    "interpolate",
    "pca_surface",
    "plane_surface",
    "project_trajectory",
    "random_line",
    "random_surface",
]
