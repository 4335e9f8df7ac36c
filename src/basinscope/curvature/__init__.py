"""Curvature of the full-dataset loss: the loss (value, gradient, Hessian-vector products),
operators, eigenpairs, traces, spectral densities."""

from basinscope.curvature.fisher import FISHERS, diagonal_fisher
from basinscope.curvature.lanczos import Eigenpairs, lanczos_both_ends, lanczos_eigenpairs
from basinscope.curvature.loss import EmpiricalLoss
from basinscope.curvature.operators import (
    HVP_METHODS,
    CurvatureOperator,
    EFOperator,
    GGNOperator,
    HessianOperator,
    select_params,
)
from basinscope.curvature.per_module import ModuleCurvature, module_blocks, per_module_curvature
from basinscope.curvature.power import POWER_RULES, power_iteration
from basinscope.curvature.slq import SpectralDensity, spectral_density
from basinscope.curvature.trace import TraceEstimate, hutch_plus_plus_trace, hutchinson_trace

__all__ = [
    "FISHERS",
    "HVP_METHODS",
    "POWER_RULES",
    "CurvatureOperator",
    "EFOperator",
    "Eigenpairs",
    "EmpiricalLoss",
    "GGNOperator",
    "HessianOperator",
    "ModuleCurvature",
    "SpectralDensity",
    "TraceEstimate",
    "diagonal_fisher",
    "hutch_plus_plus_trace",
    "hutchinson_trace",
    "lanczos_both_ends",
    "lanczos_eigenpairs",
    "module_blocks",
    "per_module_curvature",
    "power_iteration",
    "select_params",
    "spectral_density",
]
