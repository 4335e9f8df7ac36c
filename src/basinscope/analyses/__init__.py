"""Analyses: each a function that returns a frozen result."""

from basinscope.analyses.curves import (
    CURVE_KINDS,
    Curve,
    CurveEvaluation,
    CurveResult,
    evaluate_curve,
    init_curve,
    load_curve,
    save_curve,
    train_curve,
)
from basinscope.analyses.interpolation import interpolate, random_line
from basinscope.analyses.landscape import Landscape, compute_landscape, grid_coeffs
from basinscope.analyses.sharpness import (
    SHARPNESS_MEASURES,
    SharpnessResult,
    adaptive_sharpness,
    average_sharpness,
    filter_normalized_sharpness,
    m_sharpness,
    sharpness,
    worst_case_sharpness,
)
from basinscope.analyses.surface import (
    TrajectoryProjection,
    pca_surface,
    plane_surface,
    project_trajectory,
    random_surface,
)

__all__ = [
    "CURVE_KINDS",
    "SHARPNESS_MEASURES",
    "Curve",
    "CurveEvaluation",
    "CurveResult",
    "Landscape",
    "SharpnessResult",
    "TrajectoryProjection",
    "adaptive_sharpness",
    "average_sharpness",
    "compute_landscape",
    "evaluate_curve",
    "filter_normalized_sharpness",
    "grid_coeffs",
    "init_curve",
    "interpolate",
    "load_curve",
    "m_sharpness",
    "pca_surface",
    "plane_surface",
    "project_trajectory",
    "random_line",
    "random_surface",
    "save_curve",
    "sharpness",
    "train_curve",
    "worst_case_sharpness",
]
