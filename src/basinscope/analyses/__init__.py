"""Analyses: each a function that returns a frozen result.

The names below are imported from their modules on first use (PEP 562), so importing one
analysis (``basinscope surface`` imports the landscape modules) does not import the others
and what they need (scipy for alignment and the basin test, ...).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

#: public name -> the module of this package that defines it
_WHERE: dict[str, str] = {
    "AlignSpec": "alignment",
    "AlignmentResult": "alignment",
    "BarrierComparison": "alignment",
    "PermutationSpec": "alignment",
    "activation_matching": "alignment",
    "align": "alignment",
    "apply_permutation": "alignment",
    "barrier_before_after": "alignment",
    "permutation_spec": "alignment",
    "random_permutation": "alignment",
    "repair": "alignment",
    "weight_matching": "alignment",
    "BARRIER_DEFINITIONS": "barrier",
    "BARRIER_METRICS": "barrier",
    "BarrierResult": "barrier",
    "barrier": "barrier",
    "barrier_from_curve": "barrier",
    "barrier_matrix": "barrier",
    "refine_worst": "barrier",
    "BasinResult": "basin",
    "BasinSpec": "basin",
    "ConditionEstimate": "basin",
    "basin_test": "basin",
    "CriticalityResult": "criticality",
    "CriticalitySpec": "criticality",
    "ModuleCriticality": "criticality",
    "RewindResult": "criticality",
    "RewindSpec": "criticality",
    "criticality_along_path": "criticality",
    "module_criticality": "criticality",
    "rewind": "criticality",
    "CURVE_KINDS": "curves",
    "Curve": "curves",
    "CurveEvalSpec": "curves",
    "CurveEvaluation": "curves",
    "CurveResult": "curves",
    "CurveSpec": "curves",
    "evaluate_curve": "curves",
    "init_curve": "curves",
    "load_curve": "curves",
    "save_curve": "curves",
    "train_curve": "curves",
    "DistanceAndMistakes": "distance",
    "DistanceResult": "distance",
    "DistanceSpec": "distance",
    "MistakeResult": "distance",
    "MistakeSpec": "distance",
    "mistake_analysis": "distance",
    "parameter_distance": "distance",
    "CertifiedAccuracy": "ibp",
    "CertifiedSpec": "ibp",
    "certified": "ibp",
    "certified_accuracy": "ibp",
    "ibp_loss": "ibp",
    "ibp_train": "ibp",
    "interval_bounds": "ibp",
    "EnsembleResult": "ensembles",
    "EnsembleSpec": "ensembles",
    "ensemble": "ensembles",
    "ensemble_metrics": "ensembles",
    "fge": "ensembles",
    "independent_ensemble": "ensembles",
    "swa": "ensembles",
    "HessianReport": "hessian",
    "HessianSpec": "hessian",
    "hessian_analysis": "hessian",
    "InstabilityResult": "instability",
    "InstabilitySpec": "instability",
    "InstabilitySweep": "instability",
    "TransferInstabilityResult": "instability",
    "instability": "instability",
    "instability_sweep": "instability",
    "transfer_instability": "instability",
    "InterpolationSpec": "interpolation",
    "OrderParameterSpec": "order_parameters",
    "OrderParameters": "order_parameters",
    "order_parameters": "order_parameters",
    "RandomLineSpec": "interpolation",
    "interpolate": "interpolation",
    "line_from_files": "interpolation",
    "random_line": "interpolation",
    "Landscape": "landscape",
    "LandscapeSpec": "landscape",
    "compute_landscape": "landscape",
    "grid_coeffs": "landscape",
    "SHARPNESS_MEASURES": "sharpness",
    "SharpnessResult": "sharpness",
    "adaptive_sharpness": "sharpness",
    "average_sharpness": "sharpness",
    "filter_normalized_sharpness": "sharpness",
    "m_sharpness": "sharpness",
    "sharpness": "sharpness",
    "worst_case_sharpness": "sharpness",
    "SharpnessMeasures": "sharpness_measures",
    "sharpness_measures": "sharpness_measures",
    "SharpnessSpec": "sharpness_spec",
    "CKAResult": "similarity",
    "CKASpec": "similarity",
    "CKA_ESTIMATORS": "similarity",
    "MinibatchCKA": "similarity",
    "cka_matrix": "similarity",
    "debiased_cka": "similarity",
    "linear_cka": "similarity",
    "rbf_cka": "similarity",
    "MergeDecomposition": "merging",
    "MergeDecompositionSpec": "merging",
    "MergeResult": "merging",
    "MergeSpec": "merging",
    "MERGE_METHODS": "merging",
    "TaskSubspace": "merging",
    "dare_merge": "merging",
    "fisher_merge": "merging",
    "frechet_mean": "merging",
    "merge": "merging",
    "merge_all": "merging",
    "merge_decomposition": "merging",
    "merge_plane": "merging",
    "spectral_merge": "merging",
    "subspace_merge": "merging",
    "subspace_metrics": "merging",
    "task_arithmetic": "merging",
    "task_subspace": "merging",
    "task_vectors": "merging",
    "ties_merge": "merging",
    "uniform_soup": "merging",
    "BINNINGS": "calibration",
    "CalibrationResult": "calibration",
    "CalibrationSpec": "calibration",
    "Temperature": "calibration",
    "apply_temperature": "calibration",
    "calibrate": "calibration",
    "calibrate_log_probs": "calibration",
    "calibration_metrics": "calibration",
    "fit_temperature": "calibration",
    "log_probabilities": "calibration",
    "reliability": "calibration",
    "MemorySplit": "scaling",
    "PowerLawFit": "scaling",
    "fit_power_law": "scaling",
    "memory_split": "scaling",
    "Tracker": "tracking",
    "Tracking": "tracking",
    "scale_invariant_layers": "tracking",
    "PCASurfaceSpec": "surface",
    "PlaneSurfaceSpec": "surface",
    "RandomSurfaceSpec": "surface",
    "SurfaceFiles": "surface",
    "TrajectoryProjection": "surface",
    "pca_surface": "surface",
    "plane_surface": "surface",
    "project_trajectory": "surface",
    "random_surface": "surface",
    "surface_from_files": "surface",
}

#: Names that are also modules of this package: the attribute stays the function (as the
#: eager imports of earlier versions left it), not the module that importing it sets.
_SHADOWED = frozenset(
    ["barrier", "instability", "order_parameters", "rewind", "sharpness", "sharpness_measures"]
)

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def import_all() -> None:
    """Import every analysis module now (what registers each result kind for
    :func:`basinscope.result.result_class`)."""
    for module in sorted(set(_WHERE.values())):
        importlib.import_module(f"{__name__}.{module}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return  # the import system binding a submodule: keep the function's name free
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
